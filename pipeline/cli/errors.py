"""The root command group: a PipelineError, an OS error, a usage error, Ctrl-C or SIGTERM in any
command becomes one `error:` line on stderr and a non-zero exit, never a traceback."""

import signal
import sys

import typer
from typer.core import TyperGroup
from typer.exceptions import TyperException

from pipeline.common import exits
from pipeline.common.errors import PipelineError


def error_line(message: str, code: int) -> typer.Exit:
    exits.say(message)
    return typer.Exit(code)


def stop_line(signum: int) -> typer.Exit:
    return error_line(exits.stop_message(signum), exits.exit_code(signum))


class FullHelp(TyperGroup):
    """A group whose --help lists each command's first sentence whole, wrapped (click cuts
    it with "..." at the terminal's width)."""

    def format_commands(self, ctx, formatter) -> None:
        commands = [(name, self.get_command(ctx, name)) for name in self.list_commands(ctx)]
        rows = [(name, cmd.get_short_help_str(200)) for name, cmd in commands if not cmd.hidden]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


class OneLineErrors(FullHelp):
    """The root group: any command's error becomes one line on stderr and an exit code."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        args = sys.argv[1:] if args is None else list(args)
        if not args:  # `pipeline` alone: the help on stderr and exit 2, as a usage error
            ctx = self.make_context(prog_name or "pipeline", [], resilient_parsing=True)
            typer.echo(ctx.get_help(), err=True)
            sys.exit(2)
        # A Ctrl-C while the root parses (pydantic loads lazily then) ends in typer's silent
        # Exit(130): exits.finish says the line, from the signal it noted.
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except TyperException as exc:  # one line, without pydantic's 'Value error,' residue
            message = " ".join(exc.format_message().replace("Value error, ", "").split())
            ctx = getattr(exc, "ctx", None)
            hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
            typer.echo(f"error: {message[:1].lower()}{message[1:]}{hint}", err=True)
            sys.exit(exc.exit_code)
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except PipelineError as exc:
            raise error_line(str(exc), exc.exit_code) from None
        except OSError as exc:
            where = exc.filename if exc.filename is not None else "a file"
            raise error_line(f"{where}: {exc.strerror or exc}", 1) from None
        except KeyboardInterrupt as exc:  # exits.Stopped: SIGINT or SIGTERM
            raise stop_line(getattr(exc, "signum", signal.SIGINT)) from None
        except Exception:
            # A signal whose exception an import swallowed half-way (numpy's C init, a weakref
            # callback) shows up later as a broken import: the stop, not a traceback.
            if (signum := exits.stopped()) is None:
                raise
            raise stop_line(signum) from None
