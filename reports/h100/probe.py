"""GPU probe (not committed): throughput of the best net per batch size and compile mode,
and the fast recipe's seconds to 99% for a few batch sizes. Prints one line per result."""

import functools
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch._dynamo

from pipeline import bench, config
from pipeline.datasets import TensorDigits
from pipeline.train import recipe_config, train

device = torch.device("cuda")
processed = config.PROCESSED_DIR
train_data = TensorDigits.load(processed, "train").to(device)
which = sys.argv[1] if len(sys.argv) > 1 else "all"
real_compile = torch.compile


def throughput(batch, mode, model="deepcnn", steps=60):
    torch._dynamo.reset()
    compiled = mode != "eager"
    if compiled:
        torch.compile = functools.partial(real_compile, mode=None if mode == "default" else mode)
    try:
        t0 = time.perf_counter()
        per_s, warm = bench.project_images_per_second(
            model, train_data, device, batch, steps, warmup=12 if compiled else 3,
            augment=True, compile_model=compiled,
        )
        print(f"THROUGHPUT {model} aug batch {batch:5d} {mode:16s} {per_s:12,.0f} img/s  "
              f"warm-up {warm:.1f} s (total {time.perf_counter() - t0:.1f} s)", flush=True)
    except Exception as e:  # noqa: BLE001
        print(f"THROUGHPUT {model} batch {batch} {mode} FAILED {type(e).__name__}: {e}"[:300],
              flush=True)
    finally:
        torch.compile = real_compile


def fast(batch, lr, epochs, compile_model, mode="default"):
    torch._dynamo.reset()
    if compile_model and mode != "default":
        torch.compile = functools.partial(real_compile, mode=mode)
    cfg = recipe_config("fast", batch_size=batch, lr=lr, epochs=epochs, device="cuda",
                        compile=compile_model)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            train(replace(cfg, max_steps=20), processed, Path(tmp) / "w.pt", progress=False,
                  figures_dir=Path(tmp), force=True)
            warm = time.perf_counter() - t0
            r = train(cfg, processed, Path(tmp) / "f.pt", progress=False,
                      figures_dir=Path(tmp), force=True)
        curve = [round(h["val_accuracy"], 4) for h in r.history]
        secs = [round(h["train_seconds"], 3) for h in r.history]
        print(f"FAST batch {batch} lr {lr} epochs {epochs} compile {compile_model} {mode}: "
              f"to99 {r.seconds_to_target} best {r.best_accuracy:.4f} curve {curve} "
              f"cum_s {secs} {r.images_per_second:,.0f} img/s warm {warm:.1f}", flush=True)
    finally:
        torch.compile = real_compile


if which in ("all", "throughput"):
    for b in (128, 256, 512, 1024):
        throughput(b, "eager")
    for b in (128, 512):
        throughput(b, "default")
    for b in (128, 512):
        throughput(b, "reduce-overhead")
if which in ("all", "fast"):
    fast(128, 4e-3, 4, False)
    fast(128, 4e-3, 4, True)
    fast(256, 6e-3, 4, True)
    fast(512, 8e-3, 4, True)
    fast(128, 4e-3, 4, True, "reduce-overhead")
    fast(256, 6e-3, 3, True, "reduce-overhead")
