"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


class PipelineError(Exception):
    """A problem the user can fix (bad file, missing input, wrong option); never a bug. The
    message names the file and the problem on one line; the CLI prints it, no traceback."""

    exit_code = 1
