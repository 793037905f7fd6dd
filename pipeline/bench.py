"""`pipeline bench`: the speed figures, each with a baseline measured in the same run.

- CSV parse and full prepare seconds; cached-tensor load seconds.
- Per model: training images/s of the project's loop (uint8 tensors on the device, batches cut
  by index, normalised on the device, channels_last) against the tutorial's loop (a per-image
  Dataset over the CSV rows with ToTensor + Normalize, DataLoader(batch_size=50), `.item()` every
  step), for the same model and batch size; prediction images/s over the test set.
- Seconds of training until the fast recipe passes 99.0% validation accuracy.
- Optionally one process against two gloo/nccl DDP processes under torchrun.
- End to end: `pipeline prepare`, `train --model cnn --epochs 1 --batch-size 50` and `predict`
  as three processes, wall clock including start-up, against the tutorial's single script
  (`pipeline.baselines.tutorial`) doing the same work on the same CSVs; each command's time
  split into start-up and imports, load, work and write (`pipeline.timings`).
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd
import torch

from pipeline import config, timings
from pipeline.baselines.tutorial import (
    RESULT_LINE,
    TUTORIAL_BATCH,
    tutorial_frame,
    tutorial_images_per_second,
)
from pipeline.datasets import TensorDigits, load_split, read_meta
from pipeline.device import resolve_device, seed_everything, synchronize
from pipeline.distributed import Ranks
from pipeline.errors import PipelineError
from pipeline.inference import inference_model, predict_logits
from pipeline.models import build_model
from pipeline.prepare import prepare, read_digits_csv
from pipeline.recipes import recipe_config
from pipeline.submission import read_submission
from pipeline.train import (
    batch_inputs,
    compile_for,
    make_optimizer,
    make_scheduler,
    train,
    train_step,
)


def median_seconds(work: Callable[[], object], repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def project_images_per_second(
    model_name: str,
    train_data: TensorDigits,
    device: torch.device,
    batch_size: int,
    steps: int,
    warmup: int = 3,
    augment: bool = False,
    compile_model: bool = False,
) -> tuple[float, float]:
    """(images/s, warm-up seconds) of the project's step on device-resident tensors.

    The warm-up steps absorb cuDNN's kernel search and, with `compile_model`, compilation.
    """
    cfg = recipe_config(
        model=model_name,
        batch_size=batch_size,
        schedule="constant",
        augment=augment,
        device=str(device),
    )
    seed_everything(0)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    model = build_model(model_name).to(device).to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, cfg)
    if compile_model:
        import torch._dynamo as dynamo  # heavy: only when compiling

        dynamo.reset()  # a fresh compile per batch size, as a real run would have
    step_model = compile_for(model, device) if compile_model else model
    scheduler = make_scheduler(optimizer, cfg, warmup + steps)
    generator = torch.Generator(device=device).manual_seed(0)
    order = torch.randperm(len(train_data), device=device)
    n_batches = len(train_data) // batch_size

    def run(first: int, count: int) -> float:
        synchronize(device)
        start = time.perf_counter()
        for step in range(first, first + count):
            at = (step % n_batches) * batch_size
            x, labels = batch_inputs(
                train_data, order[at : at + batch_size], cfg, Ranks(), device, generator
            )
            train_step(step_model, optimizer, scheduler, x, labels, cfg)
        synchronize(device)
        return time.perf_counter() - start

    warm = run(0, warmup)
    return steps * batch_size / run(warmup, steps), warm


@dataclass
class ModelBench:
    model: str
    train_images_per_s: float
    warmup_s: float
    tutorial_images_per_s: float  # same model, batch 50
    project_images_per_s_at_50: float
    predict_images_per_s: float
    predict_test_s: float

    @property
    def speedup(self) -> float:
        return self.project_images_per_s_at_50 / self.tutorial_images_per_s


@dataclass
class BenchReport:
    device: str
    parse_csvs_s: float
    prepare_s: float
    load_cache_s: float
    models: list[ModelBench] = field(default_factory=list)
    best_net: list[dict] = field(default_factory=list)
    fast_recipe: dict | None = None
    ddp: dict | None = None
    end_to_end: "EndToEnd | None" = None
    serve: str | None = None  # the load test's summary line, or why it did not run


def bench_models(
    processed_dir: Path, device: torch.device, models: list[str], steps: int, batch_size: int
) -> list[ModelBench]:
    train_split = load_split(processed_dir, "train")
    frame = tutorial_frame(train_split)
    train_data = TensorDigits.from_split(train_split).to(device)
    test_data = TensorDigits.load(processed_dir, "test").to(device)
    results = []
    for name in models:
        per_s, warm = project_images_per_second(name, train_data, device, batch_size, steps)
        at_50, _ = project_images_per_second(name, train_data, device, TUTORIAL_BATCH, steps)
        tutorial = tutorial_images_per_second(name, frame, device, steps)
        model = inference_model(build_model(name).to(device).to(memory_format=torch.channels_last))
        predict_logits(model, test_data)  # warm-up
        predict_s = median_seconds(lambda m=model: predict_logits(m, test_data).argmax(1).cpu())
        results.append(
            ModelBench(name, per_s, warm, tutorial, at_50, len(test_data) / predict_s, predict_s)
        )
    return results


def bench_best_net(
    processed_dir: Path,
    device: torch.device,
    batch_sizes: list[int] | None,
    steps: int,
    compile_model: bool | None = None,
) -> list[dict]:
    """Training images/s of the best recipe's net with its augmentation on, per batch size.

    Defaults (batch size, compiling) are the recipe's on this device.
    """
    cfg = recipe_config("best", device=str(device), compile=compile_model)
    train_data = TensorDigits.load(processed_dir, "train").to(device)
    rows = []
    for batch_size in batch_sizes or [cfg.batch_size]:
        per_s, warm = project_images_per_second(
            cfg.model,
            train_data,
            device,
            batch_size,
            steps,
            warmup=10 if cfg.compile else 3,
            augment=True,
            compile_model=cfg.compile,
        )
        rows.append(
            {
                "model": cfg.model,
                "batch_size": batch_size,
                "compiled": cfg.compile,
                "images_per_second": per_s,
                "warmup_s": warm,
            }
        )
    return rows


def bench_fast_recipe(
    processed_dir: Path, device: torch.device, compile_model: bool | None = None, seed: int = 0
) -> dict:
    """Train the default recipe from scratch; its validation curve and seconds to 99%.

    On a GPU a short throwaway run first pays for cuDNN's kernel search and compilation, and
    its wall time is reported as the warm-up; training time is CUDA-event time of the steps.
    """
    cfg = recipe_config(device=str(device), compile=compile_model, seed=seed)
    warmup_s = 0.0
    if device.type == "cuda":
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            train(
                replace(cfg, max_steps=20),
                processed_dir,
                Path(tmp) / "warmup.pt",
                progress=False,
                force=True,
            )
            warmup_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        result = train(
            cfg,
            processed_dir,
            Path(tmp) / "fast.pt",
            progress=False,
            force=True,
        )
    return {
        "val_accuracy": result.best_accuracy,
        "train_seconds": result.train_seconds,
        "seconds_to_99": result.seconds_to_target,
        "images_per_second": result.images_per_second,
        "curve": [round(r["val_accuracy"], 4) for r in result.history],
        "warmup_s": warmup_s,
        "compiled": cfg.compile,
        "batch_size": cfg.batch_size,
    }


def _torchrun_images_per_second(
    nproc: int, processed_dir: Path, device: str, model: str, steps: int
) -> float:
    """Images/s (global) of `pipeline train` under torchrun with `nproc` processes."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ddp.pt"
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={nproc}",
            "-m",
            "pipeline",
            "train",
            "--model",
            model,
            "--epochs",
            "1",
            "--max-steps",
            str(steps),
            "--device",
            device,
            "--processed-dir",
            str(processed_dir),
            "--out",
            str(out),
        ]
        env = dict(os.environ, OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 1) // nproc)))
        subprocess.run(command, check=True, capture_output=True, env=env, timeout=600)
        history = json.loads(config.sidecar_path(out).read_text())["history"]
    return history[-1]["images_per_second"]


def bench_ddp(processed_dir: Path, device: str, model: str, steps: int) -> dict:
    one = _torchrun_images_per_second(1, processed_dir, device, model, steps)
    two = _torchrun_images_per_second(2, processed_dir, device, model, steps)
    return {"model": model, "one_process": one, "two_processes": two, "ratio": two / one}


def run_bench(
    raw_dir: Path = config.RAW_DIR,
    processed_dir: Path = config.PROCESSED_DIR,
    device: str = "auto",
    models: list[str] | None = None,
    steps: int = 40,
    batch_size: int = 128,
    fast_recipe: bool = True,
    ddp: bool = True,
    log: Callable[[str], None] = lambda message: None,
    compile_model: bool | None = None,
    best_batch_sizes: list[int] | None = None,
    best_net: bool = True,
    end_to_end: bool = True,
    end_to_end_repeats: int = 1,
    serve_checkpoint: Path | None = None,
) -> BenchReport:
    """Measure everything `make bench` prints; processed_dir must already be prepared."""
    target = resolve_device(device)
    models = models or ["fastnet", "cnn", "lenet", "mlp", "deepcnn"]
    log("parsing the CSVs ...")
    parse = median_seconds(
        lambda: (
            read_digits_csv(raw_dir / config.TRAIN_CSV, True),
            read_digits_csv(raw_dir / config.TEST_CSV, False),
        )
    )
    with tempfile.TemporaryDirectory() as tmp:
        prepare_s = median_seconds(lambda: prepare(raw_dir, Path(tmp), force=True), repeats=1)
    load = median_seconds(lambda: [load_split(processed_dir, s) for s in config.SPLITS])
    report = BenchReport(str(target), parse, prepare_s, load)
    log("timing training and prediction per model ...")
    report.models = bench_models(processed_dir, target, models, steps, batch_size)
    if best_net:
        log("timing the best recipe's net with augmentation ...")
        report.best_net = bench_best_net(
            processed_dir, target, best_batch_sizes, steps, compile_model
        )
    if fast_recipe:
        log("training the fast recipe to 99% ...")
        report.fast_recipe = bench_fast_recipe(processed_dir, target, compile_model)
    if ddp:
        log("one process against two under torchrun ...")
        report.ddp = bench_ddp(processed_dir, target.type, models[0], steps)
    if end_to_end:
        log("prepare, train and predict as processes against the tutorial's script ...")
        report.end_to_end = bench_end_to_end(raw_dir, end_to_end_repeats)
    if serve_checkpoint is not None:
        log(f"load test of `pipeline serve` on {serve_checkpoint} (127.0.0.1 only) ...")
        report.serve = bench_serve(serve_checkpoint, processed_dir)
    return report


def bench_serve(checkpoint: Path, processed_dir: Path) -> str:
    """2,000 API requests from 8 clients to a live `pipeline serve` on the CPU, on loopback."""
    from pipeline.loadtest import run_load_test

    if not checkpoint.is_file():
        return f"skipped: {checkpoint} does not exist (run `make train` first)"
    return run_load_test([checkpoint], processed_dir, device="cpu").summary()


# ------------------------------------------------------------------ end to end, as processes

PHASES = (timings.IMPORT, "load", "work", "write")
E2E_DEVICE = "cpu"  # the tutorial's setting; the recipes' GPU variants do not apply


@dataclass
class ProcessTiming:
    """One command run as its own process: wall clock from spawn to exit, and its phases."""

    name: str
    wall_s: float
    phases: dict[str, float]  # import (process start to first phase), load, work, write

    @property
    def other_s(self) -> float:
        """Wall time outside the phases: spawning, interpreter exit, gaps between phases."""
        return self.wall_s - sum(self.phases.values())


@dataclass
class EndToEnd:
    commands: list[ProcessTiming]  # ours: prepare, train, predict
    tutorial: ProcessTiming
    val_accuracy: float  # ours: the trained checkpoint's
    tutorial_val_accuracy: float
    agreement: float  # share of test digits both submissions label alike
    repeats: int

    @property
    def ours_s(self) -> float:
        return sum(c.wall_s for c in self.commands)

    @property
    def ratio(self) -> float:
        """How many times faster our three commands are than the tutorial's script."""
        return self.tutorial.wall_s / self.ours_s


def run_timed(name: str, args: list[str], timings_path: Path) -> tuple[ProcessTiming, str]:
    """Run `python -m <args>` with PIPELINE_TIMINGS set; its timing and its stdout."""
    env = dict(os.environ, **{timings.ENV_VAR: str(timings_path)})
    timings_path.unlink(missing_ok=True)
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, env=env, timeout=3600
    )
    wall = time.perf_counter() - start
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise PipelineError(f"bench: `{' '.join(args)}` exited {done.returncode}: {last}")
    phases = json.loads(timings_path.read_text())
    return ProcessTiming(name, wall, {k: phases.get(k, 0.0) for k in PHASES}), done.stdout


def _median_run(runs: list[ProcessTiming]) -> ProcessTiming:
    return sorted(runs, key=lambda run: run.wall_s)[len(runs) // 2]


def bench_end_to_end(
    raw_dir: Path, repeats: int = 1, work_dir: Path | None = None, seed: int = 0
) -> EndToEnd:
    """Our three commands against the tutorial's script on raw_dir's CSVs, `repeats` times.

    Each figure is the median run's; the two sides alternate which goes first. Everything is
    written under `work_dir` (a temporary folder by default).
    """
    with nullcontext(work_dir) if work_dir else tempfile.TemporaryDirectory() as work:
        work = Path(work)
        processed, checkpoint = work / "processed", work / "cnn.pt"
        ours_csv, tutorial_csv = work / "submission.csv", work / "tutorial.csv"
        clock = work / "timings.json"
        commands = {
            "prepare": ["pipeline", "prepare", "--raw-dir", str(raw_dir),
                        "--processed-dir", str(processed), "--seed", str(seed), "--force"],
            "train": ["pipeline", "train", "--model", "cnn", "--epochs", "1",
                      "--batch-size", str(TUTORIAL_BATCH), "--device", E2E_DEVICE,
                      "--seed", str(seed), "--processed-dir", str(processed),
                      "--out", str(checkpoint), "--force"],
            "predict": ["pipeline", "predict", "--checkpoint", str(checkpoint),
                        "--processed-dir", str(processed), "--out", str(ours_csv),
                        "--device", E2E_DEVICE],
        }  # fmt: skip
        tutorial_args = ["pipeline.baselines.tutorial", "--raw-dir", str(raw_dir),
                         "--out", str(tutorial_csv), "--device", E2E_DEVICE,
                         "--seed", str(seed)]  # fmt: skip
        ours: dict[str, list[ProcessTiming]] = {name: [] for name in commands}
        tutorial: list[ProcessTiming] = []
        tutorial_out = ""

        def run_ours() -> None:
            for name, args in commands.items():
                ours[name].append(run_timed(name, args, clock)[0])

        def run_tutorial() -> None:
            nonlocal tutorial_out
            timing, tutorial_out = run_timed("tutorial", tutorial_args, clock)
            tutorial.append(timing)

        for repeat in range(repeats):
            for side in (run_ours, run_tutorial) if repeat % 2 == 0 else (run_tutorial, run_ours):
                side()
        found = RESULT_LINE.search(tutorial_out)
        if found is None:
            raise PipelineError(f"bench: the tutorial script printed no result: {tutorial_out}")
        n_test = read_meta(processed)["counts"]["test"]
        ours_labels = read_submission(ours_csv, n_test)["Label"].to_numpy()
        tutorial_labels = read_submission(tutorial_csv, n_test)["Label"].to_numpy()
        sidecar = json.loads(config.sidecar_path(checkpoint).read_text())
        return EndToEnd(
            commands=[_median_run(runs) for runs in ours.values()],
            tutorial=_median_run(tutorial),
            val_accuracy=sidecar["val_accuracy"],
            tutorial_val_accuracy=float(found.group(1)) / 100,
            agreement=float((ours_labels == tutorial_labels).mean()),
            repeats=repeats,
        )


def format_end_to_end(e2e: EndToEnd) -> list[str]:
    def row(timing: ProcessTiming, label: str) -> str:
        phases = " ".join(f"{timing.phases[k]:6.2f}" for k in PHASES)
        return f"{label:18} {timing.wall_s:7.2f} {phases} {timing.other_s:6.2f}"

    return [
        "",
        f"end to end on {E2E_DEVICE} (cnn, batch {TUTORIAL_BATCH}, 1 epoch; each command a "
        f"process, wall clock, median of {e2e.repeats}):",
        f"{'seconds':18} {'wall':>7} {'import':>6} {'load':>6} {'work':>6} {'write':>6} "
        f"{'other':>6}",
        *(row(c, f"pipeline {c.name}") for c in e2e.commands),
        f"{'ours, 3 commands':18} {e2e.ours_s:7.2f}  val accuracy {e2e.val_accuracy:.2%}",
        row(e2e.tutorial, "tutorial script") + f"  val accuracy {e2e.tutorial_val_accuracy:.2%}",
        f"ours vs the tutorial: {e2e.ratio:.2f}x as fast ({e2e.tutorial.wall_s:.2f} s / "
        f"{e2e.ours_s:.2f} s; target >= 1.50x); the submissions agree on {e2e.agreement:.1%} "
        "of the test digits",
        "(import: from the process's start to its first phase; load, work, write: the "
        "stage's phases, imports made inside them included; other: spawn, exit and the "
        "untimed gaps between phases)",
    ]


def format_report(report: BenchReport) -> str:
    lines = [
        f"device: {report.device}  (torch {torch.__version__}, {torch.get_num_threads()} threads)",
        f"parse train.csv + test.csv      {report.parse_csvs_s:6.2f} s  (median of 3, "
        f"pandas {pd.__version__})",
        f"prepare (parse, split, save)    {report.prepare_s:6.2f} s",
        f"load cached tensors             {report.load_cache_s:6.2f} s",
        "",
        f"{'model':8} {'train img/s':>12} {'warm-up s':>10} {'ours@50':>9} {'tutorial@50':>12} "
        f"{'ratio':>6} {'predict img/s':>14} {'28k test s':>10}",
    ]
    for m in report.models:
        lines.append(
            f"{m.model:8} {m.train_images_per_s:12,.0f} {m.warmup_s:10.2f} "
            f"{m.project_images_per_s_at_50:9,.0f} {m.tutorial_images_per_s:12,.0f} "
            f"{m.speedup:5.2f}x {m.predict_images_per_s:14,.0f} {m.predict_test_s:10.2f}"
        )
    for row in report.best_net:
        lines.append(
            f"best recipe's net ({row['model']}, augmentation on, batch {row['batch_size']}"
            f"{', compiled' if row['compiled'] else ''}): {row['images_per_second']:,.0f} "
            f"img/s (warm-up {row['warmup_s']:.1f} s)"
        )
    if report.fast_recipe:
        f = report.fast_recipe
        to_99 = "not reached" if f["seconds_to_99"] is None else f"{f['seconds_to_99']:.2f} s"
        warm = f"; warm-up run {f['warmup_s']:.1f} s" if f["warmup_s"] else ""
        lines += [
            "",
            f"fast recipe (batch {f['batch_size']}{', compiled' if f['compiled'] else ''}): "
            f"val accuracy {f['val_accuracy']:.2%} after {f['train_seconds']:.2f} s of "
            f"training; 99.0% after {to_99}{warm}; curve {f['curve']}",
        ]
    if report.ddp:
        d = report.ddp
        lines += [
            f"torchrun {d['model']}: 1 process {d['one_process']:,.0f} img/s, "
            f"2 processes {d['two_processes']:,.0f} img/s ({d['ratio']:.2f}x)"
        ]
    if report.end_to_end:
        lines += format_end_to_end(report.end_to_end)
    if report.serve:
        lines += ["", f"pipeline serve under load (cpu, 127.0.0.1): {report.serve}"]
    return "\n".join(lines)
