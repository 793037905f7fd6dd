"""Whole training runs: the fast recipe's seconds to 99%, one torchrun process against two, the
best ensemble's members one at a time against side by side, CPU training quiet and busy."""

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from pipeline import config
from pipeline.bench.models import project_images_per_second
from pipeline.common.device import usable_cores
from pipeline.data.datasets import TensorDigits
from pipeline.training.recipes import recipe_config
from pipeline.training.train import train


@dataclass(frozen=True)
class FastRecipeBench:
    val_accuracy: float
    train_seconds: float
    seconds_to_99: float | None  # None: 99% was not reached
    curve: list[float]  # validation accuracy after each epoch
    warmup_s: float  # a throwaway run's wall time on a GPU (kernel search, compiling); else 0
    compiled: bool
    batch_size: int


def bench_fast_recipe(
    processed_dir: Path, device: torch.device, compile_model: bool | None = None, seed: int = 0
) -> FastRecipeBench:
    """The default recipe from scratch; on a GPU a throwaway run first pays the warm-up."""
    cfg = recipe_config(device=str(device), compile=compile_model, seed=seed)
    warmup_s = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        if device.type == "cuda":
            start = time.perf_counter()
            warmup = replace(cfg, max_steps=20)
            train(warmup, processed_dir, Path(tmp) / "warmup.pt", progress=False, force=True)
            warmup_s = time.perf_counter() - start
        result = train(cfg, processed_dir, Path(tmp) / "fast.pt", progress=False, force=True)
    curve = [round(r["val_accuracy"], 4) for r in result.history]
    found = result.best_accuracy, result.train_seconds, result.seconds_to_target
    return FastRecipeBench(*found, curve, warmup_s, cfg.compile, cfg.batch_size)


@dataclass(frozen=True)
class DdpBench:
    model: str
    one_process: float  # images/s, global
    two_processes: float


def bench_ddp(processed_dir: Path, device: str, model: str, steps: int) -> DdpBench:
    """Global images/s of `pipeline train` under torchrun with one process, then two."""
    rates = []
    for nproc in (1, 2):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "ddp.pt"
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                       f"--nproc-per-node={nproc}", "-m", "pipeline", "train", "--model", model,
                       "--epochs", "1", "--max-steps", str(steps), "--device", device,
                       "--processed-dir", str(processed_dir), "--out", str(out)]  # fmt: skip
            env = dict(os.environ, OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 1) // nproc)))
            subprocess.run(command, check=True, capture_output=True, env=env, timeout=600)
            history = json.loads(config.sidecar_path(out).read_text())["history"]
        rates.append(history[-1]["images_per_second"])
    return DdpBench(model, *rates)


@dataclass(frozen=True)
class EnsembleBench:
    members: int
    steps: int  # per member
    slots: int  # members trained at once in the wider run: 2 on the CPU, else every GPU
    one: float  # members per minute, one at a time
    many: float  # members per minute, `slots` at once


def bench_ensemble(
    processed_dir: Path, device: torch.device, steps: int, members: int = 4
) -> EnsembleBench:
    """The best recipe's first members cut to `steps` steps, one at a time, then on 2 CPU
    processes or every GPU: members per minute, process start-up included."""
    from pipeline.experiments.ensemble import member_configs, train_members

    configs = member_configs("best", members, True, device=str(device), epochs=1, max_steps=steps)
    slots = 2 if device.type == "cpu" else torch.cuda.device_count()
    rates = []
    for jobs in (1, slots):
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            train_members(
                configs, processed_dir, Path(tmp), jobs=jobs, log=lambda _: None, progress=False
            )
            rates.append(members / ((time.perf_counter() - start) / 60))
    return EnsembleBench(members, steps, slots, *rates)


@dataclass(frozen=True)
class BusyCoreBench:
    model: str
    cores: int
    quiet: float  # images/s
    busy: float  # images/s while another process spins on one core
    quiet_threads: int
    busy_threads: int


@contextmanager
def spinning_core(seconds: float = 600, setup: str = "") -> Iterator[None]:
    """Another process spinning on one core (at most `seconds`, after running `setup`)."""
    code = (
        f"import sys, time\n{setup}\nend = time.monotonic() + float(sys.argv[1])\n"
        "print(flush=True)\nwhile time.monotonic() < end: pass\n"
    )
    spinner = subprocess.Popen([sys.executable, "-c", code, str(seconds)], stdout=subprocess.PIPE)
    try:
        spinner.stdout.readline()
        yield
    finally:
        spinner.kill()
        spinner.wait()


def bench_busy_core(processed_dir: Path, model: str, steps: int, batch_size: int) -> BusyCoreBench:
    """The same steps on a quiet CPU, then with one core busy: torch's thread count follows the
    free cores (`use_free_cores`), so the run keeps about its fair share."""
    cpu = torch.device("cpu")
    data = TensorDigits.load(processed_dir, "train")
    quiet, _ = project_images_per_second(model, data, cpu, batch_size, steps)
    quiet_threads = torch.get_num_threads()
    with spinning_core():
        busy, _ = project_images_per_second(model, data, cpu, batch_size, steps)
        busy_threads = torch.get_num_threads()
    return BusyCoreBench(model, usable_cores(), quiet, busy, quiet_threads, busy_threads)
