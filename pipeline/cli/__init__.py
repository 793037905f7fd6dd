"""The command line: thin typer commands, each importing its stage (torch...) only when it runs."""

import typer

from pipeline.cli.baselines import app as baselines_app
from pipeline.cli.data import download_command, prepare_command
from pipeline.cli.errors import OneLineErrors
from pipeline.cli.experiments import distill_command, runs_command, tune_command
from pipeline.cli.results import evaluate_command, predict_command, submit_command
from pipeline.cli.serving import bench_command, export_command, serve_command
from pipeline.cli.training import crossval_command, ensemble_command, train_command
from pipeline.common import timings

app = typer.Typer(
    cls=OneLineErrors,
    help="Kaggle Digit Recognizer: download -> prepare -> train -> evaluate -> predict -> submit.",
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)
COMMANDS = (download_command, prepare_command, train_command, ensemble_command, crossval_command,
            tune_command, distill_command, runs_command, evaluate_command, predict_command,
            submit_command, serve_command, export_command, bench_command)  # fmt: skip
for command in COMMANDS:  # `pipeline <name>` runs <name>_command
    app.command(command.__name__.removesuffix("_command"))(command)
app.add_typer(baselines_app, name="baselines")


def run() -> int | str | None:
    """Run the command line and return its exit code; `pipeline.__main__` ends the process."""
    try:
        app()
    except SystemExit as exc:
        return exc.code
    finally:
        timings.write_requested()  # only under `pipeline bench` (PIPELINE_TIMINGS=<path>)
    return 0
