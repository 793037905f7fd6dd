"""SGD, Momentum, RMSprop, Adam (and Adagrad) race on the regression baseline's parabola.

Every optimizer gets its own copy of one initial net and sees the very same batches in the same
order, so the curves differ only by the update rule.
"""

import copy
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pipeline.baselines.regression import make_net, make_parabola, shuffled_batches
from pipeline.common.device import resolve_device, seed_everything
from pipeline.common.plots import new_figure, save_figure

OptimizerFactory = Callable[[Iterable[nn.Parameter], float], torch.optim.Optimizer]

# The names are also in `cli.OPTIMIZER_NAMES` (light, for --help); a test keeps them equal.
OPTIMIZERS: dict[str, OptimizerFactory] = {
    "sgd": lambda params, lr: torch.optim.SGD(params, lr=lr),
    "momentum": lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.8),
    "rmsprop": lambda params, lr: torch.optim.RMSprop(params, lr=lr, alpha=0.9),
    "adam": lambda params, lr: torch.optim.Adam(params, lr=lr, betas=(0.9, 0.99)),
    "adagrad": lambda params, lr: torch.optim.Adagrad(params, lr=lr),
}


@dataclass(frozen=True)
class OptimizersResult:
    initial_loss: float  # MSE of the shared initial net on all the data
    step_losses: dict[str, list[float]]  # batch MSE after each step
    final_losses: dict[str, float]  # MSE on all the data after training
    ranking: list[str]  # best (lowest final loss) first
    figure: Path


def rank_by_loss(final_losses: dict[str, float]) -> list[str]:
    return sorted(final_losses, key=final_losses.__getitem__)


def compare_optimizers(
    out: Path,
    names: Sequence[str],
    seed: int = 0,
    device: str = "auto",
    epochs: int = 12,
    batch_size: int = 32,
    lr: float = 0.01,
) -> OptimizersResult:
    """Train one copy of the same net per optimizer, all on identical batches."""
    target = resolve_device(device)
    generator = seed_everything(seed)
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
    figure = plot_losses(step_losses, lr, batch_size, out)
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
