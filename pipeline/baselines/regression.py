"""A 1-20-1 ReLU net learns y = x^2 from 1,000 noisy points, then optimizers race on it.

Having learned the curve and not the noise, the net's MSE is near the noise's variance (0.01) on
the data and near 0 against the clean parabola. In the race every optimizer gets a copy of one
initial net and the same batches, so the curves differ only by the update rule.
"""

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import nn

from pipeline.common.device import resolve_device, seed_everything
from pipeline.common.plots import new_figure, save_figure

N_POINTS = 1_000
NOISE_STD = 0.1
HIDDEN = 20
BATCH = 32
LR = 0.01
# also in `cli.baselines.OPTIMIZER_NAMES` (for a torch-free --help); a test keeps them equal
OPTIMIZERS = {
    "sgd": partial(torch.optim.SGD, lr=LR),
    "momentum": partial(torch.optim.SGD, lr=LR, momentum=0.8),
    "rmsprop": partial(torch.optim.RMSprop, lr=LR, alpha=0.9),
    "adam": partial(torch.optim.Adam, lr=LR, betas=(0.9, 0.99)),
    "adagrad": partial(torch.optim.Adagrad, lr=LR),
}


@dataclass(frozen=True)
class RegressionResult:
    mse: float  # against the noisy targets it was trained on
    clean_mse: float  # against the noiseless x^2
    noise_variance: float
    figure: Path


@dataclass(frozen=True)
class OptimizersResult:
    initial_loss: float  # MSE of the shared initial net on all the data
    step_losses: dict[str, list[float]]  # batch MSE after each step
    final_losses: dict[str, float]  # MSE on all the data after training
    ranking: list[str]  # best (lowest final loss) first
    figure: Path


def make_parabola(generator: torch.Generator):
    """x, x^2 + noise and x^2, [N_POINTS, 1] each; drawn on the CPU, the same on every device."""
    x = torch.linspace(-1, 1, N_POINTS).unsqueeze(1)
    return x, x.pow(2) + NOISE_STD * torch.randn(x.shape, generator=generator), x.pow(2)


def make_net() -> nn.Sequential:
    return nn.Sequential(nn.Linear(1, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 1))


def train_nets(
    nets: dict[str, tuple[nn.Module, torch.optim.Optimizer]],
    x: torch.Tensor,
    y: torch.Tensor,
    epochs: int,
    generator: torch.Generator,
) -> dict[str, list[float]]:
    """MSE steps for every (net, optimizer) on the same shuffled batches; each step's loss."""
    losses: dict[str, list[torch.Tensor]] = {name: [] for name in nets}
    for _ in range(epochs):
        for batch in torch.randperm(len(x), generator=generator).split(BATCH):
            batch = batch.to(x.device)
            for name, (net, optimizer) in nets.items():
                loss = nn.functional.mse_loss(net(x[batch]), y[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses[name].append(loss.detach())
    return {name: torch.stack(values).tolist() for name, values in losses.items()}


def fit_regression(
    out: Path, seed: int = 0, device: str = "auto", epochs: int = 100
) -> RegressionResult:
    target, generator = resolve_device(device), seed_everything(seed)
    x, y, clean = make_parabola(generator)
    net = make_net().to(target)
    adam = torch.optim.Adam(net.parameters(), lr=LR)
    train_nets({"adam": (net, adam)}, x.to(target), y.to(target), epochs, generator)
    with torch.no_grad():
        fitted = net(x.to(target)).cpu()
    mse = nn.functional.mse_loss(fitted, y).item()
    clean_mse = nn.functional.mse_loss(fitted, clean).item()
    ax = new_figure(figsize=(6, 4)).subplots()
    ax.scatter(x, y, s=4, alpha=0.4, label="data: x² + noise")
    ax.plot(x, clean, "k--", lw=1, label="x²")
    ax.plot(x, fitted, "C3", lw=2, label="1-20-1 ReLU net")
    ax.set(xlabel="x", ylabel="y", title="regression")
    ax.legend()
    return RegressionResult(mse, clean_mse, NOISE_STD**2, save_figure(ax.figure, out))


def compare_optimizers(
    out: Path, names: Sequence[str], seed: int = 0, device: str = "auto", epochs: int = 12
) -> OptimizersResult:
    target, generator = resolve_device(device), seed_everything(seed)
    x, y, _ = (t.to(target) for t in make_parabola(generator))
    initial = make_net().to(target)
    nets = {name: copy.deepcopy(initial) for name in names}
    runs = {name: (net, OPTIMIZERS[name](net.parameters())) for name, net in nets.items()}
    step_losses = train_nets(runs, x, y, epochs, generator)
    with torch.no_grad():
        initial_loss = nn.functional.mse_loss(initial(x), y).item()
        finals = {name: nn.functional.mse_loss(net(x), y).item() for name, net in nets.items()}
    fig = new_figure(figsize=(7, 4))
    ax = fig.subplots()
    for name, values in step_losses.items():
        ax.plot(values, lw=1, label=name)
    title = f"optimizers on y = x² (lr {LR}, batch {BATCH})"
    ax.set(xlabel="step", ylabel="batch MSE", yscale="log", title=title)
    ax.legend()
    ranking = sorted(finals, key=finals.__getitem__)
    return OptimizersResult(initial_loss, step_losses, finals, ranking, save_figure(fig, out))


def format_summary(result: OptimizersResult) -> str:
    finals = ", ".join(f"{name} {loss:.4f}" for name, loss in result.final_losses.items())
    return (
        f"optimizers: final MSE {finals} (from {result.initial_loss:.4f}); "
        f"ranking {' < '.join(result.ranking)} -> {result.figure}"
    )
