"""Stage 5: label the test digits with one checkpoint or an ensemble; write submission.csv.
Checkpoints run on torch, `.onnx` graphs on ONNX Runtime (torch never imported), both by the
one averaging rule (`predictor.mean_calibrated`)."""

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import config
from pipeline.common.errors import PipelineError
from pipeline.common.files import check_writable
from pipeline.common.timings import phase
from pipeline.data.processed import load_split_arrays
from pipeline.inference.onnx_runtime import load_onnx, mean_probabilities, onnx_only
from pipeline.inference.submission import write_source_record, write_submission


@dataclass(frozen=True)
class PredictResult:
    path: Path
    rows: int
    label_counts: dict[int, int]
    seconds: float  # inference only: loading and writing excluded
    from_sample: bool  # the test digits are the offline sample's, not Kaggle's


@dataclass(frozen=True)
class Models:
    """Loaded models as one function: uint8 digits [N, 1, 28, 28] -> probabilities [N, 10]."""

    members: list  # `predictor.LoadedModel`s or `onnx_runtime.OnnxModel`s: path, meta, temperature
    device: str  # where they run, e.g. "cpu" or "cuda:0"
    predict: Callable[[np.ndarray], np.ndarray]


def load_models(
    paths: list[Path], device="auto", tta=False, batch_size=256, threads: int | None = None
) -> Models:
    """`.onnx` graphs on ONNX Runtime, else checkpoints on torch; `threads` caps CPU threads."""
    if onnx_only(paths, device, tta):
        graphs = [load_onnx(path, threads) for path in paths]
        return Models(graphs, "cpu (onnxruntime)", lambda x: mean_probabilities(graphs, x))
    import torch

    from pipeline.common.device import resolve_device
    from pipeline.data.datasets import TensorDigits
    from pipeline.inference.predictor import ensemble_probabilities, load_for_inference

    target = resolve_device(device)
    members = load_for_inference(paths, target)
    if threads and target.type == "cpu":
        torch.set_num_threads(threads)

    def probabilities(images: np.ndarray) -> np.ndarray:
        data = TensorDigits(torch.from_numpy(np.ascontiguousarray(images, np.uint8))).to(target)
        return ensemble_probabilities(members, data, batch_size, tta).numpy()

    return Models(members, str(target), probabilities)


def check_out(out: Path, inputs: list[Path], processed_dir: Path) -> None:
    """A submission is a `.csv` that replaces nothing predict reads: the models, the data."""
    if out.suffix.lower() != ".csv":
        raise PipelineError(f"--out {out}: a submission is a .csv file; give a name ending .csv")
    target, folders = out.resolve(), (processed_dir.resolve(), config.RAW_DIR.resolve())
    if target in {p.resolve() for p in inputs} or any(map(target.is_relative_to, folders)):
        raise PipelineError(
            f"--out {out}: would replace an input of predict (a model or the "
            "data); write the submission elsewhere, such as submissions/"
        )
    check_writable(out)


def predict(
    checkpoints: list[Path],
    processed_dir: Path = config.PROCESSED_DIR,
    out: Path = config.DEFAULT_SUBMISSION,
    batch_size: int = 256,
    device: str = "auto",
    tta: bool = False,
) -> PredictResult:
    """Label the processed test split; write the submission CSV and, last, its source record."""
    check_out(out, checkpoints, processed_dir)
    config.submission_source_path(out).unlink(missing_ok=True)  # never beside another file
    with phase("load"):
        models = load_models(checkpoints, device, tta, batch_size)
        split = load_split_arrays(processed_dir, "test")
    start = time.perf_counter()
    with phase("work"):
        labels = models.predict(split.images).argmax(1)
    seconds = time.perf_counter() - start
    with phase("write"):
        write_submission(labels, split.ids, out)
        write_source_record(out, checkpoints, tta)
    counts = np.bincount(labels, minlength=config.N_CLASSES).tolist()
    from_sample = split.labels is not None  # Kaggle's test labels are hidden
    return PredictResult(out, len(labels), dict(enumerate(counts)), seconds, from_sample)
