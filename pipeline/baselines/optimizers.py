"""SGD, Momentum, RMSprop, Adam (and Adagrad) race on the regression baseline's parabola.

Every optimizer gets its own copy of one initial net and sees the very same batches in the same
order, so the curves differ only by the update rule.
"""

import copy
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import torch
import typer
from torch import nn

from pipeline import config
from pipeline.baselines.options import DeviceOption, FigureOption
from pipeline.baselines.regression import make_net, make_parabola, shuffled_batches
from pipeline.device import resolve_device, seed_everything
from pipeline.errors import PipelineError, one_line_errors
from pipeline.plots import new_figure, save_figure

NAME = "optimizers"
FIGURE = config.figure_path(NAME)

OptimizerFactory = Callable[[Iterable[nn.Parameter], float], torch.optim.Optimizer]

OPTIMIZERS: dict[str, OptimizerFactory] = {
    "sgd": lambda params, lr: torch.optim.SGD(params, lr=lr),
    "momentum": lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.8),
    "rmsprop": lambda params, lr: torch.optim.RMSprop(params, lr=lr, alpha=0.9),
    "adam": lambda params, lr: torch.optim.Adam(params, lr=lr, betas=(0.9, 0.99)),
    "adagrad": lambda params, lr: torch.optim.Adagrad(params, lr=lr),
}
DEFAULT_OPTIMIZERS = ("sgd", "momentum", "rmsprop", "adam")


@dataclass(frozen=True)
class OptimizersResult:
    initial_loss: float  # MSE of the shared initial net on all the data
    step_losses: dict[str, list[float]]  # batch MSE after each step
    final_losses: dict[str, float]  # MSE on all the data after training
    ranking: list[str]  # best (lowest final loss) first
    figure: Path


def parse_optimizers(names: str) -> list[str]:
    chosen = [name.strip().lower() for name in names.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in OPTIMIZERS]
    if unknown or not chosen:
        raise PipelineError(
            f"--optimizers {names}: expected a comma-separated subset of {', '.join(OPTIMIZERS)}"
        )
    return list(dict.fromkeys(chosen))


def rank_by_loss(final_losses: dict[str, float]) -> list[str]:
    return sorted(final_losses, key=final_losses.__getitem__)


def compare_optimizers(
    names: Sequence[str] = DEFAULT_OPTIMIZERS,
    seed: int = 0,
    device: str = "auto",
    out: Path | None = None,
    epochs: int = 12,
    batch_size: int = 32,
    lr: float = 0.01,
) -> OptimizersResult:
    """Train one copy of the same net per optimizer, all on identical batches."""
    target = resolve_device(device)
    seed_everything(seed)
    generator = torch.Generator().manual_seed(seed)
    data = make_parabola(generator)
    x, y = data.x.to(target), data.y.to(target)
    initial = make_net().to(target)
    nets = {name: copy.deepcopy(initial) for name in names}
    optimizers = {name: OPTIMIZERS[name](net.parameters(), lr) for name, net in nets.items()}
    losses: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    for _ in range(epochs):
        for batch in shuffled_batches(len(x), batch_size, generator):
            batch = batch.to(target)
            for name, net in nets.items():
                loss = nn.functional.mse_loss(net(x[batch]), y[batch])
                optimizers[name].zero_grad(set_to_none=True)
                loss.backward()
                optimizers[name].step()
                losses[name].append(loss.detach())
    with torch.no_grad():
        initial_loss = nn.functional.mse_loss(initial(x), y).item()
        final_losses = {
            name: nn.functional.mse_loss(net(x), y).item() for name, net in nets.items()
        }
    step_losses = {name: torch.stack(values).tolist() for name, values in losses.items()}
    figure = plot_losses(step_losses, lr, batch_size, out or FIGURE)
    return OptimizersResult(
        initial_loss, step_losses, final_losses, rank_by_loss(final_losses), figure
    )


def plot_losses(step_losses: dict[str, list[float]], lr: float, batch_size: int, path: Path):
    fig = new_figure(figsize=(7, 4))
    ax = fig.subplots()
    for name, values in step_losses.items():
        ax.plot(values, lw=1, label=name)
    ax.set(
        xlabel="step",
        ylabel="batch MSE",
        yscale="log",
        title=f"optimizers on y = x² (lr {lr}, batch {batch_size})",
    )
    ax.legend()
    return save_figure(fig, path)


def format_summary(result: OptimizersResult) -> str:
    finals = ", ".join(f"{name} {loss:.4f}" for name, loss in result.final_losses.items())
    return (
        f"optimizers: final MSE {finals} (from {result.initial_loss:.4f}); "
        f"ranking {' < '.join(result.ranking)} -> {result.figure}"
    )


@one_line_errors
def optimizers_command(
    optimizers: Annotated[
        str, typer.Option(help=f"Comma-separated subset of {','.join(OPTIMIZERS)}.")
    ] = ",".join(DEFAULT_OPTIMIZERS),
    seed: Annotated[int, typer.Option(help="Seed of the noise, initialisation and order.")] = 0,
    device: DeviceOption = "auto",
    out: FigureOption = FIGURE,
    epochs: Annotated[int, typer.Option(min=1)] = 12,
) -> None:
    """Compare optimizers on the same net, data and batches; plot the loss of every step."""
    result = compare_optimizers(parse_optimizers(optimizers), seed, device, out, epochs)
    typer.echo(format_summary(result))
