"""The tutorial systems as runnable, tested baselines: `pipeline baselines <name>`."""

import typer

from pipeline.baselines.activations import activations_command
from pipeline.baselines.classification import classification_command
from pipeline.baselines.gan import gan_command
from pipeline.baselines.linear import linear_command
from pipeline.baselines.mlp import mlp_command
from pipeline.baselines.optimizers import optimizers_command
from pipeline.baselines.regression import regression_command

app = typer.Typer(
    help="The small tutorial systems, each with a figure in reports/figures/.",
    no_args_is_help=True,
)

app.command("regression")(regression_command)
app.command("optimizers")(optimizers_command)
app.command("linear")(linear_command)
app.command("classification")(classification_command)
app.command("mlp")(mlp_command)
app.command("gan")(gan_command)
app.command("activations")(activations_command)
