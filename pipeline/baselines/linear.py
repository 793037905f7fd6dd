"""Linear regression by hand: autograd computes the gradients, the update is written out
(no nn.Module, no optimizer) and converges to the closed-form least-squares line. x runs from
2 to 11, so the learning rate must stay below 2 / (largest curvature) ~ 0.023.
"""

from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.common.device import resolve_device, seed_everything
from pipeline.common.plots import new_figure, save_figure

# pytorch-tutorial's linear_regression points
X = (3.3, 4.4, 5.5, 6.71, 6.93, 4.168, 9.779, 6.182, 7.59, 2.167, 7.042, 10.791, 5.313, 7.997, 3.1)
Y = (1.7, 2.76, 2.09, 3.19, 1.694, 1.573, 3.366, 2.596, 2.53, 1.221, 2.827, 3.465, 1.65, 2.904,
     1.3)  # fmt: skip


@dataclass(frozen=True)
class LinearResult:
    w: float
    b: float
    exact_w: float  # the closed-form least-squares line
    exact_b: float
    losses: list[float]  # mean squared error before each update
    figure: Path


def fit_linear(
    out: Path, seed: int = 0, device: str = "auto", epochs: int = 3_000, lr: float = 0.02
) -> LinearResult:
    target, generator = resolve_device(device), seed_everything(seed)
    x, y = torch.tensor(X, device=target), torch.tensor(Y, device=target)
    w, b = (v.clone().to(target).requires_grad_() for v in torch.randn(2, generator=generator))
    losses = []
    for _ in range(epochs):
        loss = (w * x + b - y).pow(2).mean()
        loss.backward()
        with torch.no_grad():
            w -= lr * w.grad
            b -= lr * b.grad
        w.grad = b.grad = None
        losses.append(loss.detach())
    w, b = w.item(), b.item()
    design = torch.tensor([X, [1.0] * len(X)], dtype=torch.float64).T
    exact = torch.linalg.lstsq(design, torch.tensor(Y, dtype=torch.float64)[:, None]).solution
    ax = new_figure(figsize=(6, 4)).subplots()
    ax.scatter(X, Y, label="data")
    ends = torch.tensor([min(X), max(X)])
    ax.plot(ends, w * ends + b, "C3", label=f"y = {w:.3f} x + {b:.3f}")
    ax.set(xlabel="x", ylabel="y", title="linear regression by hand")
    ax.legend()
    figure = save_figure(ax.figure, out)
    return LinearResult(w, b, *exact.squeeze(1).tolist(), torch.stack(losses).tolist(), figure)
