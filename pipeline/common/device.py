"""Device selection, seeding and timing, shared by training, evaluation and the baselines."""

import os
import random
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.common.choices import Device, plain
from pipeline.common.errors import PipelineError


def resolve_device(name: str) -> torch.device:
    """Map `auto|cpu|cuda|mps` (or `cuda:1`) to a device, preferring a GPU under `auto`."""
    name = plain(name)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if torch.backends.mps.is_available() else torch.device("cpu")
    kind = name.split(":")[0]
    if kind not in {d.value for d in Device}:
        raise PipelineError(f"--device {name}: expected one of {', '.join(Device)}")
    if kind == "cuda" and not torch.cuda.is_available():
        raise PipelineError(f"--device {name}: no CUDA GPU is visible to torch; use auto or cpu")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise PipelineError(f"--device {name}: Apple MPS is not available; use auto or cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise PipelineError(f"--device {name}: not a device name torch knows") from None


YIELDING_NICE = 5  # processes this much nicer than ours count as idle to use_free_cores


def _runnable(stat_files: str, min_nice: int | None = None) -> int:
    """How many /proc `stat_files` are in state R (running or waiting), at nice >= `min_nice`."""
    count = 0
    for stat in Path("/proc").glob(stat_files):
        try:
            text = stat.read_text()
        except OSError:  # it has just ended
            continue
        fields = text[text.rindex(")") + 2 :].split()  # from field 3, the state; 19 is nice
        count += fields[0] == "R" and (min_nice is None or int(fields[16]) >= min_nice)
    return count


def yielding_processes() -> int:
    """Processes running (or waiting to) at least YIELDING_NICE nicer than this one."""
    return _runnable("[0-9]*/stat", min_nice=os.nice(0) + YIELDING_NICE)


def busy_cores_elsewhere() -> int:
    """Other processes' threads running or waiting for a core (Linux; elsewhere 0), less those
    YIELDING_NICE nicer (tracking's recorder): the median of three looks at /proc/loadavg."""

    def look() -> int:
        time.sleep(0.001)
        runnable = int(Path("/proc/loadavg").read_text().split()[3].split("/")[0])
        return max(0, runnable - _runnable("self/task/*/stat") - yielding_processes())

    try:
        return sorted(look() for _ in range(3))[1]
    except (OSError, ValueError, IndexError):
        return 0


def usable_cores() -> int:
    """The cores this process may run on (its affinity where the OS has one)."""
    return (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    )


_THREADS: dict[str, int] = {}  # torch's own count ("default") and the one set here last


def use_free_cores() -> int:
    """Give torch one thread per core other processes leave free (1 to torch's default) unless
    OMP_NUM_THREADS or the caller set a count; return it. OpenMP threads wait for a partner
    kept off its core at every op: a step ran 4-10x slower on a shared machine."""
    current = torch.get_num_threads()
    if os.environ.get("OMP_NUM_THREADS") or current != _THREADS.setdefault("ours", current):
        return current
    default = _THREADS.setdefault("default", current)
    threads = max(1, min(default, usable_cores() - busy_cores_elsewhere()))
    if threads != current:
        torch.set_num_threads(threads)
    _THREADS["ours"] = threads
    return threads


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch so a CPU run is repeatable bit for bit; return a CPU
    generator seeded alike, for draws that must not depend on the device."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


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
