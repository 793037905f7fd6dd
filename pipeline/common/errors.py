"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


class PipelineError(Exception):
    """A problem the user can fix, never a bug: one line naming the file and the problem."""

    exit_code = 1
