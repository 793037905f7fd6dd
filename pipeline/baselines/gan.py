"""The 1-D "painter" GAN (Morvan Zhou's tutorial): a generator learns to draw parabolas.

Real curves are a*x^2 + (a - 1) at 15 points of x in [-1, 1], a uniform in [1, 2]: between x^2
and 2x^2 + 1. A generated curve is inside that band when all its points are within
BAND_TOLERANCE of it: small wiggles pass, a wrong shape or level does not.
"""

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pipeline.common.device import resolve_device, seed_everything
from pipeline.common.plots import new_figure, save_figure

N_IDEAS = 5  # random numbers the generator starts from
N_POINTS = 15  # points per curve
HIDDEN = 128
BATCH = 64
BAND_TOLERANCE = 0.1
EVAL_CURVES = 1_000


@dataclass(frozen=True)
class GanResult:
    inside_share: float  # share of EVAL_CURVES generated curves inside the band (with tolerance)
    real_score: float  # mean discriminator probability "real" on real curves, last step
    fake_score: float  # the same on generated curves
    figure: Path


def curve_x(device: torch.device | None = None) -> torch.Tensor:
    return torch.linspace(-1, 1, N_POINTS, device=device)


def band(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x.pow(2), 2 * x.pow(2) + 1


def real_curves(n: int, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    a = 1 + torch.rand(n, 1, generator=generator)
    return a.to(x.device) * x.pow(2) + (a.to(x.device) - 1)


def inside_band(curves: torch.Tensor, x: torch.Tensor, tolerance: float = BAND_TOLERANCE):
    """One bool per curve: every point within the band widened by `tolerance`."""
    lower, upper = band(x)
    return ((curves >= lower - tolerance) & (curves <= upper + tolerance)).all(dim=1)


def train_gan(out: Path, seed: int = 0, device: str = "auto", steps: int = 5_000) -> GanResult:
    """One discriminator and one generator Adam step per batch of BATCH; sample and plot."""
    target, rng = resolve_device(device), seed_everything(seed)
    x = curve_x(target)
    painter = nn.Sequential(nn.Linear(N_IDEAS, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, N_POINTS))
    critic = nn.Sequential(nn.Linear(N_POINTS, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 1))
    painter, critic = painter.to(target), critic.to(target)
    painter_opt = torch.optim.Adam(painter.parameters(), lr=1e-4)
    critic_opt = torch.optim.Adam(critic.parameters(), lr=1e-4)
    real_label = torch.ones(BATCH, 1, device=target)
    fake_label = torch.zeros(BATCH, 1, device=target)
    bce = nn.functional.binary_cross_entropy_with_logits  # on logits: the stabler form
    for _ in range(steps):
        real = real_curves(BATCH, x, rng)
        fake = painter(torch.randn(BATCH, N_IDEAS, generator=rng).to(target))
        real_logits, fake_logits = critic(real), critic(fake.detach())
        critic_loss = bce(real_logits, real_label) + bce(fake_logits, fake_label)
        critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        critic_opt.step()
        painter_loss = bce(critic(fake), real_label)
        painter_opt.zero_grad(set_to_none=True)
        painter_loss.backward()
        painter_opt.step()
    with torch.no_grad():
        samples = painter(torch.randn(EVAL_CURVES, N_IDEAS, generator=rng).to(target))
        inside_share = inside_band(samples, x).float().mean().item()
        real_score = real_logits.sigmoid().mean().item()
        fake_score = fake_logits.sigmoid().mean().item()
    x = x.cpu()
    lower, upper = band(x)
    ax = new_figure(figsize=(6, 4)).subplots()
    ax.fill_between(x, lower, upper, color="0.9", label="band of real curves")
    ax.plot(x, upper, "C3", lw=2, label="upper bound 2x² + 1")
    ax.plot(x, lower, "C0", lw=2, label="lower bound x²")
    for index, curve in enumerate(samples[:20].cpu()):
        ax.plot(x, curve, color="C2", lw=0.8, alpha=0.7, label="generated" if index == 0 else None)
    ax.set(xlabel="x", ylabel="y", title=f"GAN painter: {inside_share:.0%} of curves in the band")
    ax.legend(loc="upper center", fontsize=8)
    return GanResult(inside_share, real_score, fake_score, save_figure(ax.figure, out))
