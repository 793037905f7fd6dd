"""What the app needs from a model backend (`torch_backend`, `onnx_backend`): probabilities
for digits, NumPy in and out, and what to show; so the app never imports torch."""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import config


@dataclass(frozen=True)
class CheckpointInfo:
    """One checkpoint that answers, as /api/model shows it."""

    name: str
    path: str  # never absolute: see `of`
    model: str | None  # the architecture's name
    val_accuracy: float | None
    temperature: float = 1.0  # probabilities are softmax(logits / temperature); see calibration

    @classmethod
    def of(cls, path: Path, model: str | None, val_accuracy, temperature: float):
        """With `path` relative to the project inside it (such as `models/best-0.pt`), else the
        file name alone, so no absolute path leaves the server."""
        resolved = path.resolve()
        inside = resolved.is_relative_to(config.ROOT)
        shown = str(resolved.relative_to(config.ROOT)) if inside else path.name
        return cls(path.name, shown, model, val_accuracy, temperature)


@dataclass(frozen=True)
class Backend:
    """Loaded models, ready to answer from any thread."""

    checkpoints: list[CheckpointInfo]
    device: str  # where the models run, e.g. "cpu" or "cuda:0"
    models: list  # torch modules or ONNX Runtime sessions
    # uint8 [N, 1, 28, 28] MNIST-style digits -> float32 [N, 10], the one predictor's rule:
    # the mean of the members' calibrated probabilities
    predict: Callable[[np.ndarray], np.ndarray]
