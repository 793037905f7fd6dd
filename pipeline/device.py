"""Device selection, seeding and timing, shared by training, evaluation and the baselines."""

import random
import time

import numpy as np
import torch

from pipeline.choices import Device, plain
from pipeline.errors import PipelineError


def _mps_available() -> bool:
    return hasattr(torch.backends, "mps") and torch.backends.mps.is_available()


def resolve_device(name: str = "auto") -> torch.device:
    """Map `auto|cpu|cuda|mps` (or `cuda:1`) to a device, preferring a GPU under `auto`."""
    name = plain(name)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    kind = name.split(":")[0]
    if kind not in {d.value for d in Device}:
        raise PipelineError(f"--device {name}: expected one of {', '.join(Device)}")
    if kind == "cuda" and not torch.cuda.is_available():
        raise PipelineError(f"--device {name}: no CUDA GPU is visible to torch; use auto or cpu")
    if kind == "mps" and not _mps_available():
        raise PipelineError(f"--device {name}: Apple MPS is not available; use auto or cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise PipelineError(f"--device {name}: not a device name torch knows") from None


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so a CPU run is repeatable bit for bit."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class DeviceTimer:
    """Seconds of device work since construction: CUDA events on GPU, the wall clock elsewhere."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        if self.cuda:
            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._t0 = time.perf_counter()

    def seconds(self) -> float:
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            end.synchronize()
            return self._start.elapsed_time(end) / 1000
        return time.perf_counter() - self._t0


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so wall-clock timings cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
