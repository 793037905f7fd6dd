"""Device selection and seeding, shared by training, evaluation and the baselines."""

import random

import numpy as np
import torch

from pipeline.errors import PipelineError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def _mps_available() -> bool:
    return hasattr(torch.backends, "mps") and torch.backends.mps.is_available()


def resolve_device(name: str = "auto") -> torch.device:
    """Map `auto|cpu|cuda|mps` (or `cuda:1`) to a device, preferring a GPU under `auto`."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    kind = name.split(":")[0]
    if kind not in DEVICE_CHOICES:
        raise PipelineError(f"--device {name}: expected one of {', '.join(DEVICE_CHOICES)}")
    if kind == "cuda" and not torch.cuda.is_available():
        raise PipelineError(f"--device {name}: no CUDA GPU is visible to torch; use auto or cpu")
    if kind == "mps" and not _mps_available():
        raise PipelineError(f"--device {name}: Apple MPS is not available; use auto or cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so a CPU run is repeatable bit for bit."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
