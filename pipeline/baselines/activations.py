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

ACTIVATIONS: dict[str, tuple[Callable, Callable]] = {  # name: (formula, torch's built-in)
    "relu": (lambda x: torch.where(x > 0, x, torch.zeros_like(x)), torch.relu),
    "sigmoid": (lambda x: 1 / (1 + torch.exp(-x)), torch.sigmoid),
    "tanh": (lambda x: (x.exp() - (-x).exp()) / (x.exp() + (-x).exp()), torch.tanh),
    "softplus": (lambda x: torch.log1p(torch.exp(x)), F.softplus),  # a smooth ReLU
    "gelu": (lambda x: x * 0.5 * (1 + torch.erf(x / math.sqrt(2))), F.gelu),  # exact, not tanh's
    "silu": (lambda x: x / (1 + torch.exp(-x)), F.silu),  # x * sigmoid(x), also called swish
}


@dataclass(frozen=True)
class ActivationsResult:
    x: list[float]
    values: dict[str, list[float]]  # each activation at every x
    deviation: dict[str, float]  # largest |formula - torch's built-in| over x
    figure: Path


def draw_activations(out: Path, device: str = "auto") -> ActivationsResult:
    x = torch.linspace(-5.0, 5.0, 201, device=resolve_device(device))
    values = {name: formula(x).cpu() for name, (formula, _) in ACTIVATIONS.items()}
    deviation = {
        name: (values[name] - built_in(x).cpu()).abs().max().item()
        for name, (_, built_in) in ACTIVATIONS.items()
    }
    x = x.cpu()
    axes = new_figure(figsize=(9, 5.5)).subplots(2, 3).ravel()
    for ax, (name, y) in zip(axes, values.items(), strict=True):
        ax.plot(x, y, "C3", lw=2)
        ax.axhline(0, color="0.7", lw=0.8)
        ax.axvline(0, color="0.7", lw=0.8)
        ax.set(title=name, xlabel="x")
        ax.grid(alpha=0.3)
    values = {name: v.tolist() for name, v in values.items()}
    return ActivationsResult(x.tolist(), values, deviation, save_figure(axes[0].figure, out))
