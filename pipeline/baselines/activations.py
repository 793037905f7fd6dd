"""The activation functions, written from their formulas and drawn over [-5, 5]; the result
says how far each lies from torch's built-in, so a wrong formula shows at once."""

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from pipeline.common.device import resolve_device
from pipeline.common.plots import new_figure, save_figure


def relu(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x > 0, x, torch.zeros_like(x))


def sigmoid(x: torch.Tensor) -> torch.Tensor:
    return 1 / (1 + torch.exp(-x))


def tanh(x: torch.Tensor) -> torch.Tensor:
    return (torch.exp(x) - torch.exp(-x)) / (torch.exp(x) + torch.exp(-x))


def softplus(x: torch.Tensor) -> torch.Tensor:  # a smooth ReLU
    return torch.log1p(torch.exp(x))


def gelu(x: torch.Tensor) -> torch.Tensor:  # the exact form, not the tanh approximation
    return x * 0.5 * (1 + torch.erf(x / math.sqrt(2)))


def silu(x: torch.Tensor) -> torch.Tensor:  # also called swish
    return x * sigmoid(x)


Activation = Callable[[torch.Tensor], torch.Tensor]
# name -> (the formula above, torch's built-in)
ACTIVATIONS: dict[str, tuple[Activation, Activation]] = {
    "relu": (relu, torch.relu),
    "sigmoid": (sigmoid, torch.sigmoid),
    "tanh": (tanh, torch.tanh),
    "softplus": (softplus, F.softplus),
    "gelu": (gelu, F.gelu),
    "silu": (silu, F.silu),
}


@dataclass(frozen=True)
class ActivationsResult:
    x: list[float]
    values: dict[str, list[float]]  # each activation at every x
    deviation: dict[str, float]  # largest |formula - torch's built-in| over x
    figure: Path


def draw_activations(
    out: Path, device: str = "auto", points: int = 201, limit: float = 5.0
) -> ActivationsResult:
    """Every activation at `points` evenly spaced x in [-limit, limit], plotted."""
    x = torch.linspace(-limit, limit, points, device=resolve_device(device))
    values = {name: formula(x).cpu() for name, (formula, _) in ACTIVATIONS.items()}
    deviation = {
        name: (values[name] - built_in(x).cpu()).abs().max().item()
        for name, (_, built_in) in ACTIVATIONS.items()
    }
    x = x.cpu()
    fig = new_figure(figsize=(9, 5.5))
    axes = fig.subplots(2, 3).ravel()
    for ax, (name, y) in zip(axes, values.items(), strict=True):
        ax.plot(x, y, "C3", lw=2)
        ax.axhline(0, color="0.7", lw=0.8)
        ax.axvline(0, color="0.7", lw=0.8)
        ax.set(title=name, xlabel="x")
        ax.grid(alpha=0.3)
    values = {name: v.tolist() for name, v in values.items()}
    return ActivationsResult(x.tolist(), values, deviation, save_figure(fig, out))
