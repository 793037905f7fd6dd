"""The `pipeline` command line: thin typer commands over each stage's plain function.

- `errors`: the root group that turns every error into one `error:` line and an exit code.
- `data`: download, prepare. `training`: train, ensemble, crossval (one `Overrides` built from
  their options). `results`: evaluate, predict, submit. `serving`: serve, bench.

Nothing heavy is imported before the command line is parsed: each command imports its stage
(and so torch, pandas, scikit-learn) inside its body, so `--help` and usage errors answer at
once.
"""

import atexit
import os
import signal
import sys
from typing import NoReturn

import typer

from pipeline.baselines import app as baselines_app
from pipeline.bench import timings
from pipeline.cli.data import download_command, prepare_command
from pipeline.cli.errors import (
    INTERRUPTED,
    TERMINATED,
    OneLineErrors,
    Terminated,
    raise_terminated,
)
from pipeline.cli.results import evaluate_command, predict_command, submit_command
from pipeline.cli.serving import bench_command, serve_command
from pipeline.cli.training import crossval_command, ensemble_command, train_command

app = typer.Typer(
    cls=OneLineErrors,
    help="Kaggle Digit Recognizer: download -> prepare -> train -> evaluate -> predict -> submit.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)
app.command("download")(download_command)
app.command("prepare")(prepare_command)
app.command("train")(train_command)
app.command("ensemble")(ensemble_command)
app.command("crossval")(crossval_command)
app.command("evaluate")(evaluate_command)
app.command("predict")(predict_command)
app.command("submit")(submit_command)
app.command("serve")(serve_command)
app.command("bench")(bench_command)
app.add_typer(baselines_app, name="baselines")


def exit_now(code: int | str | None) -> NoReturn:
    """Exit as `sys.exit(code)` would, without tearing down every module torch loaded.

    The atexit handlers still run and the standard streams are flushed; what is skipped
    (garbage-collecting and freeing the interpreter's objects one by one) took 0.3-0.6 s
    of every command (issue 11). Files are all closed by then: each stage writes through
    `with` blocks.
    """
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing left to say there
            pass
    os._exit(code or 0)


def main() -> None:
    """The `pipeline` script: SIGTERM and a Ctrl-C during start-up end in one line, too."""
    signal.signal(signal.SIGTERM, raise_terminated)
    code: int | str | None = 0
    try:
        app()
    except SystemExit as exc:
        code = exc.code
    except KeyboardInterrupt:
        typer.echo("error: interrupted", err=True)
        code = INTERRUPTED
    except Terminated:
        typer.echo("error: terminated", err=True)
        code = TERMINATED
    finally:
        timings.write_requested()  # only under `pipeline bench` (PIPELINE_TIMINGS=<path>)
    exit_now(code)
