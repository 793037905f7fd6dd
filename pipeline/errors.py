"""The one exception type the CLI turns into a one-line message and a non-zero exit."""

import functools

import typer


class PipelineError(Exception):
    """A problem the user can fix (bad file, missing input, wrong option); never a bug.

    The message names the file and the problem on one line; the CLI prints it without a
    traceback, and the process exits with `exit_code`.
    """

    exit_code = 1


def positive_ints(text: str, option: str, allow_empty: bool = False) -> list[int]:
    """Parse a comma-separated option such as `16,64,256`, or raise a one-line error."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        values = None
    if values is None or (not values and not allow_empty) or any(v < 1 for v in values):
        raise PipelineError(f"{option} {text}: expected positive integers such as 16,64,256")
    return values


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print `error: message` on stderr; raise the returned Exit to end with `code`."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def one_line_errors(command):
    """Decorate a typer command: a PipelineError becomes one stderr line and its exit code."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except PipelineError as exc:
            raise fail(str(exc), exc.exit_code) from None

    return wrapper
