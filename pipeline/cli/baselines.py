"""`pipeline baselines <name>`: one thin typer command per baseline, importing it (and torch)
only once its options are checked, so `--help` and bad input answer at once."""

from pathlib import Path
from typing import Annotated

import typer

from pipeline import config
from pipeline.cli.errors import FullHelp
from pipeline.cli.options import DeviceOpt, FigureOpt, SeedOpt, chosen_names, positive_ints
from pipeline.common.choices import Device

# `regression.OPTIMIZERS`' keys, here so that --help needs no torch (a test keeps them equal)
OPTIMIZER_NAMES = ("sgd", "momentum", "rmsprop", "adam", "adagrad")
DEFAULT_OPTIMIZERS = "sgd,momentum,rmsprop,adam"
BASELINES = ("regression", "optimizers", "linear", "classification", "mlp", "gan", "activations")
FIGURES = {name: config.figure_path(name) for name in BASELINES}  # reports/figures/<name>.png

app = typer.Typer(
    cls=FullHelp,
    help="The small tutorial systems, each with a figure in reports/figures/.",
    no_args_is_help=True,
)


@app.command("regression")
def regression_command(
    seed: SeedOpt = 0,
    device: DeviceOpt = Device.auto,
    out: FigureOpt = FIGURES["regression"],
    epochs: Annotated[int, typer.Option(min=1, help="Passes over the 1,000 points.")] = 100,
) -> None:
    """Fit y = x^2 + noise with a 1-20-1 ReLU net; plot the data and the fitted curve."""
    from pipeline.baselines.regression import fit_regression

    result = fit_regression(out, seed, device, epochs)
    typer.echo(
        f"regression: 1-20-1 ReLU net learned y = x^2 with MSE {result.mse:.4f} on the noisy "
        f"data (noise floor {result.noise_variance:.4f}) and {result.clean_mse:.4f} against "
        f"the noiseless curve -> {result.figure}"
    )


@app.command("optimizers")
def optimizers_command(
    optimizers: Annotated[
        str, typer.Option(help=f"Of {','.join(OPTIMIZER_NAMES)}.")
    ] = DEFAULT_OPTIMIZERS,
    seed: SeedOpt = 0,
    device: DeviceOpt = Device.auto,
    out: FigureOpt = FIGURES["optimizers"],
    epochs: Annotated[int, typer.Option(min=1, help="Passes over the 1,000 points.")] = 12,
) -> None:
    """Compare optimizers on the same net, data and batches; plot the loss of every step."""
    names = chosen_names(optimizers, "--optimizers", OPTIMIZER_NAMES)
    from pipeline.baselines.regression import compare_optimizers, format_summary

    result = compare_optimizers(out, names, seed, device, epochs)
    typer.echo(format_summary(result))


@app.command("linear")
def linear_command(
    seed: SeedOpt = 0,
    device: DeviceOpt = Device.auto,
    out: FigureOpt = FIGURES["linear"],
    epochs: Annotated[int, typer.Option(min=1, help="Full-batch steps.")] = 3_000,
    lr: Annotated[float, typer.Option(min=0.0, help="Diverges above ~0.023.")] = 0.02,
) -> None:
    """Fit y = w x + b with autograd and a hand-written gradient step; plot the line."""
    from pipeline.baselines.linear import fit_linear

    result = fit_linear(out, seed, device, epochs, lr)
    typer.echo(
        f"linear: learned y = {result.w:.4f} x + {result.b:.4f} (least squares "
        f"{result.exact_w:.4f} x + {result.exact_b:.4f}), MSE {result.losses[-1]:.4f} "
        f"-> {result.figure}"
    )


@app.command("classification")
def classification_command(
    seed: SeedOpt = 0,
    device: DeviceOpt = Device.auto,
    out: FigureOpt = FIGURES["classification"],
    steps: Annotated[int, typer.Option(min=1, help="Full-batch SGD steps.")] = 100,
) -> None:
    """Separate two Gaussian clouds with a 2-10-2 net; plot the points by predicted class."""
    from pipeline.baselines.classification import fit_classifier

    result = fit_classifier(out, seed, device, steps)
    typer.echo(
        f"classification: 2-10-2 net separates the two clouds with accuracy "
        f"{result.accuracy:.1%} ({result.held_out_accuracy:.1%} on 200 fresh points, "
        f"cross-entropy {result.loss:.4f}) -> {result.figure}"
    )


@app.command("mlp")
def mlp_command(
    batch_sizes: Annotated[str, typer.Option(help="One run each.")] = "16,64,256",
    processed_dir: Annotated[Path, typer.Option(help="Else the sample.")] = config.PROCESSED_DIR,
    epochs: Annotated[int, typer.Option(min=1, help="Passes over the images.")] = 3,
    limit: Annotated[int, typer.Option(min=1, help="Training images used.")] = 10_000,
    lr: Annotated[float, typer.Option(min=0.0, help="SGD learning rate.")] = 0.1,
    seed: SeedOpt = 0,
    device: DeviceOpt = Device.auto,
    out: FigureOpt = FIGURES["mlp"],
) -> None:
    """Train a 784-200-10 MLP with hand-written SGD per batch size; compare loss and speed."""
    sizes = positive_ints(batch_sizes, "--batch-sizes")
    from pipeline.baselines.mlp import compare_batch_sizes, format_table

    result = compare_batch_sizes(out, sizes, processed_dir, seed, device, epochs, limit, lr)
    typer.echo(format_table(result))
    accuracies = ", ".join(f"{r.val_accuracy:.1%} (batch {r.batch_size})" for r in result.runs)
    typer.echo(
        f"mlp: 784-200-10 MLP, {result.train_images:,} images x {result.epochs} epochs from "
        f"{result.source}: val accuracy {accuracies} on {result.val_images:,} -> {result.figure}"
    )


@app.command("gan")
def gan_command(
    seed: SeedOpt = 0,
    device: DeviceOpt = Device.auto,
    out: FigureOpt = FIGURES["gan"],
    steps: Annotated[int, typer.Option(min=1, help="Discriminator + generator steps.")] = 5_000,
) -> None:
    """Train the painter GAN; plot generated curves between the bounds of the real ones."""
    from pipeline.baselines.gan import BAND_TOLERANCE, EVAL_CURVES, train_gan

    result = train_gan(out, seed, device, steps)
    typer.echo(
        f"gan: {result.inside_share:.1%} of {EVAL_CURVES:,} generated curves lie inside the "
        f"band x^2..2x^2+1 (±{BAND_TOLERANCE}); discriminator says real {result.real_score:.2f}"
        f" on real, {result.fake_score:.2f} on generated -> {result.figure}"
    )


@app.command("activations")
def activations_command(
    device: DeviceOpt = Device.auto, out: FigureOpt = FIGURES["activations"]
) -> None:
    """Plot ReLU, sigmoid, tanh, softplus, GELU and SiLU over [-5, 5]."""
    from pipeline.baselines.activations import draw_activations

    result = draw_activations(out, device)
    worst = max(result.deviation, key=result.deviation.__getitem__)
    typer.echo(
        f"activations: {', '.join(result.values)} from their formulas over [-5, 5] differ "
        f"from torch's built-ins by at most {result.deviation[worst]:.1e} ({worst}) "
        f"-> {result.figure}"
    )
