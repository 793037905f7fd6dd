"""A 1-20-1 ReLU net learns y = x^2 from 1,000 noisy points: the smallest regression there is.

The noise has variance 0.01, so a net that has learned the curve (and not the noise) ends with
an MSE near 0.01 on the data and near 0 against the noiseless parabola.
"""

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pipeline.common.device import resolve_device, seed_everything
from pipeline.common.plots import new_figure, save_figure

N_POINTS = 1_000
NOISE_STD = 0.1
HIDDEN = 20


@dataclass(frozen=True)
class Parabola:
    x: torch.Tensor  # [N, 1] in [-1, 1]
    y: torch.Tensor  # [N, 1], x^2 plus noise
    clean: torch.Tensor  # [N, 1], x^2


@dataclass(frozen=True)
class RegressionResult:
    mse: float  # against the noisy targets it was trained on
    clean_mse: float  # against the noiseless x^2
    noise_variance: float
    figure: Path


def make_parabola(generator: torch.Generator, n: int = N_POINTS) -> Parabola:
    """Drawn on the CPU from `generator`, so a seed gives the same points on every device."""
    x = torch.linspace(-1, 1, n).unsqueeze(1)
    clean = x.pow(2)
    return Parabola(x, clean + NOISE_STD * torch.randn(x.shape, generator=generator), clean)


def make_net() -> nn.Sequential:
    return nn.Sequential(nn.Linear(1, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 1))


def shuffled_batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    return list(torch.randperm(n, generator=generator).split(batch_size))


def fit_regression(
    out: Path,
    seed: int = 0,
    device: str = "auto",
    epochs: int = 100,
    batch_size: int = 32,
    lr: float = 0.01,
) -> RegressionResult:
    """Train with Adam on shuffled mini-batches of MSE; draw the data and the fitted curve."""
    target = resolve_device(device)
    generator = seed_everything(seed)
    data = make_parabola(generator)
    x, y = data.x.to(target), data.y.to(target)
    net = make_net().to(target)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    for _ in range(epochs):
        for batch in shuffled_batches(len(x), batch_size, generator):
            batch = batch.to(target)
            loss = nn.functional.mse_loss(net(x[batch]), y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        fitted = net(x).cpu()
    mse = nn.functional.mse_loss(fitted, data.y).item()
    clean_mse = nn.functional.mse_loss(fitted, data.clean).item()
    figure = plot_fit(data, fitted, out)
    return RegressionResult(mse, clean_mse, NOISE_STD**2, figure)


def plot_fit(data: Parabola, fitted: torch.Tensor, path: Path) -> Path:
    fig = new_figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.scatter(data.x, data.y, s=4, alpha=0.4, label="data: x² + noise")
    ax.plot(data.x, data.clean, "k--", lw=1, label="x²")
    ax.plot(data.x, fitted, "C3", lw=2, label="1-20-1 ReLU net")
    ax.set(xlabel="x", ylabel="y", title="regression")
    ax.legend()
    return save_figure(fig, path)
