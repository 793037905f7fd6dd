"""The root command group that turns every error into one `error:` line and an exit code.

A PipelineError, an OS error, Ctrl-C or SIGTERM inside any command becomes one line on stderr
and a non-zero exit, with no traceback; so does a usage error (typer's message, made one line).
"""

import sys

import typer
from typer.core import TyperGroup
from typer.exceptions import TyperException

from pipeline.errors import PipelineError

INTERRUPTED = 130  # the shell's code for SIGINT (128 + 2)
TERMINATED = 143  # and for SIGTERM (128 + 15)


class Terminated(BaseException):
    """SIGTERM as an exception, so `finally` blocks remove temporary files as Ctrl-C does."""


def raise_terminated(signum, frame) -> None:
    raise Terminated


def error_line(message: str, code: int) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def os_error_message(exc: OSError) -> str:
    where = exc.filename if exc.filename is not None else "a file"
    return f"{where}: {exc.strerror or exc}"


def usage_error_line(exc: TyperException) -> str:
    """typer's usage error as one line, without pydantic's 'Value error,' residue."""
    message = " ".join(exc.format_message().replace("Value error, ", "").split())
    ctx = getattr(exc, "ctx", None)
    hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
    return f"error: {message[:1].lower()}{message[1:]}{hint}"


class OneLineErrors(TyperGroup):
    """The root group: any command's error becomes one line on stderr and an exit code."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except TyperException as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":  # `pipeline` alone: the help
                exc.show()
            else:
                typer.echo(usage_error_line(exc), err=True)
            sys.exit(exc.exit_code)
        sys.exit(code if isinstance(code, int) else 0)

    def make_context(self, *args, **kwargs):
        # Parsing the root's options lazily imports pydantic (typer's coercion): a Ctrl-C
        # then would otherwise end in typer's silent Exit(130).
        try:
            return super().make_context(*args, **kwargs)
        except KeyboardInterrupt:
            raise error_line("interrupted", INTERRUPTED) from None

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except PipelineError as exc:
            raise error_line(str(exc), exc.exit_code) from None
        except OSError as exc:
            raise error_line(os_error_message(exc), 1) from None
        except KeyboardInterrupt:
            message = "interrupted; nothing half-written was left behind"
            raise error_line(message, INTERRUPTED) from None
        except Terminated:
            message = "terminated; nothing half-written was left behind"
            raise error_line(message, TERMINATED) from None
