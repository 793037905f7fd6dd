"""Stage 5: label the test digits with one checkpoint or an ensemble; write submission.csv.

Several checkpoints average their softmax probabilities; `--tta` also averages over a few
small fixed shifts of each image. Exported `.onnx` graphs run on ONNX Runtime instead, without
importing torch (the cached splits are NumPy files). The file is checked against Kaggle's
rules before it is written (atomically), with the same checks `submit` runs.
"""

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import config
from pipeline.common.files import check_writable
from pipeline.common.timings import phase
from pipeline.inference.onnx_runtime import (
    default_threads,
    load_onnx_models,
    mean_probabilities,
    onnx_only,
)
from pipeline.inference.submission import write_source_record, write_submission


@dataclass(frozen=True)
class PredictResult:
    path: Path
    rows: int
    label_counts: dict[int, int]
    seconds: float  # inference only: loading and writing excluded
    from_sample: bool  # the test digits are the offline sample's, not Kaggle's


def predict(
    checkpoints: list[Path],
    processed_dir: Path = config.PROCESSED_DIR,
    out: Path = config.DEFAULT_SUBMISSION,
    batch_size: int = 256,
    device: str = "auto",
    tta: bool = False,
) -> PredictResult:
    """Load the checkpoints, label the processed test split, write the submission CSV and, last,
    its `<stem>.source.json`: the checkpoints (by sha256) that wrote it, for `submit` to credit."""
    check_writable(out)
    config.submission_source_path(out).unlink(missing_ok=True)  # never beside another file
    if onnx_only(checkpoints, device, tta):
        return _predict_onnx(checkpoints, processed_dir, out)
    import torch

    from pipeline.common.device import resolve_device
    from pipeline.data.datasets import TensorDigits, load_split
    from pipeline.inference.predictor import ensemble_probabilities, load_for_inference

    target = resolve_device(device)
    with phase("load"):
        models = [loaded.model for loaded in load_for_inference(checkpoints, target)]
        split = load_split(processed_dir, "test")
    start = time.perf_counter()
    with phase("work"):
        data = TensorDigits.from_split(split).to(target)
        labels = ensemble_probabilities(models, data, batch_size, tta).argmax(1)
    seconds = time.perf_counter() - start
    with phase("write"):
        write_submission(labels.numpy(), split.ids.numpy(), out)
        write_source_record(out, checkpoints, tta)
    counts = torch.bincount(labels, minlength=config.N_CLASSES).tolist()
    # Only the offline sample ships answers for its test digits (Kaggle's are hidden).
    from_sample = split.labels is not None
    return PredictResult(out, len(labels), dict(enumerate(counts)), seconds, from_sample)


def _predict_onnx(graphs: list[Path], processed_dir: Path, out: Path) -> PredictResult:
    """`predict` with exported graphs on ONNX Runtime; torch is never imported."""
    from pipeline.data.processed import load_split_arrays

    with phase("load"):
        models = load_onnx_models(graphs, default_threads())
        split = load_split_arrays(processed_dir, "test")
    start = time.perf_counter()
    with phase("work"):
        labels = mean_probabilities(models, split.images).argmax(1)
    seconds = time.perf_counter() - start
    with phase("write"):
        write_submission(labels, split.ids, out)
        write_source_record(out, graphs, tta=False)
    counts = np.bincount(labels, minlength=config.N_CLASSES).tolist()
    from_sample = split.labels is not None
    return PredictResult(out, len(labels), dict(enumerate(counts)), seconds, from_sample)
