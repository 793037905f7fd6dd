"""What the app needs from a model backend: probabilities for digits, and what to show.

The app never imports torch: a backend (today `torch_backend`; an ONNX Runtime one can sit
beside it) loads the checkpoints and answers `predict`. Plain NumPy in and out.
"""

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class CheckpointInfo:
    """One checkpoint that answers, as /api/model shows it."""

    name: str
    path: str
    model: str | None  # the architecture's name
    val_accuracy: float | None


class Backend(Protocol):
    """Loaded models, ready to answer. `predict` may be called from any thread."""

    checkpoints: list[CheckpointInfo]
    device: str  # where the models run, e.g. "cpu" or "cuda:0"

    def predict(self, images: np.ndarray) -> np.ndarray:
        """uint8 [N, 1, 28, 28] MNIST-style digits -> float32 [N, 10] probabilities."""
        ...
