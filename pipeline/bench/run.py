"""What `pipeline bench` runs: `BenchOptions` in, every section measured, `BenchReport` out."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path

from pipeline import config
from pipeline.bench import end_to_end, models, training
from pipeline.bench.serve_load import UPLOADS, run_load_test
from pipeline.common.device import resolve_device
from pipeline.common.errors import PipelineError
from pipeline.common.files import expand_checkpoints
from pipeline.data.datasets import load_split
from pipeline.data.prepare import prepare
from pipeline.data.raw_csv import read_digits_csv


@dataclass(frozen=True)
class BenchOptions:
    """What to measure, and where the data is; `processed_dir` must already be prepared."""

    raw_dir: Path = config.RAW_DIR
    processed_dir: Path = config.PROCESSED_DIR
    device: str = "auto"
    models: tuple[str, ...] = ("fastnet", "cnn", "lenet", "mlp", "deepcnn")
    steps: int = 40  # timed steps per loop
    batch_size: int = 128  # of our loop in the per-model table
    best_net: bool = True
    best_batch_sizes: tuple[int, ...] = ()  # empty: the best recipe's own
    compile_model: bool | None = None  # None: the recipe's choice on this device
    fast_recipe: bool = True
    ddp: bool = True
    busy_core: bool = True  # CPU training with another process spinning on one core
    end_to_end: bool = True
    end_to_end_repeats: int = 1
    serve_checkpoint: Path | None = None  # None: no load test of `pipeline serve`


@dataclass
class BenchReport:
    device: str
    parse_csvs_s: float
    prepare_s: float
    load_cache_s: float
    models: list[models.ModelBench] = field(default_factory=list)
    best_net: list[models.BestNetBench] = field(default_factory=list)
    fast_recipe: training.FastRecipeBench | None = None
    ddp: training.DdpBench | None = None
    ensemble: training.EnsembleBench | None = None
    busy_core: training.BusyCoreBench | None = None
    end_to_end: end_to_end.EndToEnd | None = None
    serve: str | None = None  # the load tests' summary lines, or why they did not run


def bench_serve(checkpoint: Path, processed_dir: Path) -> str:
    """`checkpoint` served by torch (small requests, then large uploads), then by onnxruntime."""
    if not checkpoint.is_file():
        return f"skipped: {checkpoint} does not exist (run `make train` first)"
    runs = run_load_test([checkpoint], processed_dir, uploads=UPLOADS)
    lines = [run.summary() for run in runs]
    if missing := [m for m in ("onnx", "onnxruntime", "onnxscript") if not find_spec(m)]:
        return "\n".join([*lines, f"skipped ONNX: {missing[0]} is not installed (the extras)"])
    from pipeline.inference.export import export_onnx

    with tempfile.TemporaryDirectory() as tmp:
        graph = export_onnx([checkpoint], Path(tmp) / f"{checkpoint.stem}.onnx", processed_dir)
        (by_onnx,) = run_load_test([graph.path], processed_dir)
    lines += [
        "the same model on torch and exported to ONNX (onnxruntime, no torch):",
        f"torch ({checkpoint.name}), {runs[0].summary()}",
        f"onnxruntime ({graph.bytes / 1024:,.0f} KB .onnx), {by_onnx.summary()}",
    ]
    return "\n".join(lines + bench_distilled(runs[0], checkpoint.parent, processed_dir))


def bench_distilled(fast, models_dir: Path, processed_dir: Path) -> list[str]:
    """`make best`'s distilled model and the ensemble it distils, sent the same small requests as
    the fast model (`fast`): the latency one model at the ensemble's accuracy saves."""
    distilled, members = models_dir / config.DISTILLED_PATH.name, []
    with suppress(PipelineError):  # none there
        members = expand_checkpoints([config.members_glob("best", models_dir)])
    if not distilled.is_file() or not members:
        return [f"skipped the distilled model: {distilled} or best-*.pt missing (`make best`)"]
    (one,), (all_,) = (run_load_test(paths, processed_dir) for paths in ([distilled], members))
    ratio = lambda run: f"p50 {run.percentile(50) / fast.percentile(50):.2f}x fast's"  # noqa: E731
    return [
        "the distilled model and the ensemble it distils, the same requests:",
        f"{distilled.name}, {one.summary()}; {ratio(one)}",
        f"{len(members)} members (best-*.pt), {all_.summary()}; {ratio(all_)}",
    ]


def run_bench(options: BenchOptions, log: Callable[[str], None]) -> BenchReport:
    target, names = resolve_device(options.device), list(options.models)
    processed, raw, steps = options.processed_dir, options.raw_dir, options.steps
    log("parsing the CSVs ...")
    csvs = ((raw / config.TRAIN_CSV, True), (raw / config.TEST_CSV, False))
    with tempfile.TemporaryDirectory() as tmp:
        report = BenchReport(
            str(target),
            models.median_seconds(lambda: [read_digits_csv(*csv) for csv in csvs]),
            models.median_seconds(lambda: prepare(raw, Path(tmp), force=True), repeats=1),
            models.median_seconds(lambda: [load_split(processed, s) for s in config.SPLITS]),
        )
    log("timing training and prediction per model ...")
    report.models = models.bench_models(processed, target, names, steps, options.batch_size)
    if options.best_net:
        log("timing the best recipe's net with augmentation ...")
        sizes, compile_model = options.best_batch_sizes, options.compile_model
        report.best_net = models.bench_best_net(processed, target, sizes, steps, compile_model)
    if options.fast_recipe:
        log("training the fast recipe to 99% ...")
        report.fast_recipe = training.bench_fast_recipe(processed, target, options.compile_model)
    if options.ddp:
        log("one process against two under torchrun ...")
        report.ddp = training.bench_ddp(processed, target.type, names[0], steps)
        log("the best ensemble's members, one at a time and side by side ...")
        report.ensemble = training.bench_ensemble(processed, target, steps)
    if options.busy_core:
        log("training on the CPU, quiet and with one core kept busy ...")
        report.busy_core = training.bench_busy_core(processed, names[0], steps, options.batch_size)
    if options.end_to_end:
        log("prepare, train and predict as processes against the tutorial's script ...")
        report.end_to_end = end_to_end.bench_end_to_end(raw, options.end_to_end_repeats)
    if options.serve_checkpoint is not None:
        log(f"load test of `pipeline serve` on {options.serve_checkpoint} (127.0.0.1 only) ...")
        report.serve = bench_serve(options.serve_checkpoint, processed)
    return report
