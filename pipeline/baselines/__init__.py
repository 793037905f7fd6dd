"""The tutorial systems as runnable, tested baselines: `pipeline baselines <name>`."""

import typer

app = typer.Typer(
    help="The small tutorial systems, each with a figure in reports/figures/.",
    no_args_is_help=True,
)
