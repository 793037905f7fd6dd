"""Stage 5: label the test digits with one checkpoint or an ensemble; write submission.csv.

Several checkpoints average their softmax probabilities; `--tta` also averages over a few
small fixed shifts of each image. The file is checked against Kaggle's rules before it is
written (atomically), with the same checks `submit` runs.
"""

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline import config
from pipeline.bench.timings import phase
from pipeline.datasets import TensorDigits, load_split
from pipeline.device import resolve_device
from pipeline.files import check_writable
from pipeline.inference import ensemble_probabilities, load_for_inference
from pipeline.submission import write_submission


@dataclass(frozen=True)
class PredictResult:
    path: Path
    rows: int
    label_counts: dict[int, int]
    seconds: float  # inference only: loading and writing excluded


def predict(
    checkpoints: list[Path],
    processed_dir: Path = config.PROCESSED_DIR,
    out: Path = config.DEFAULT_SUBMISSION,
    batch_size: int = 256,
    device: str = "auto",
    tta: bool = False,
) -> PredictResult:
    """Load the checkpoints, label processed test.pt, write the submission CSV."""
    check_writable(out)
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
    counts = torch.bincount(labels, minlength=config.N_CLASSES).tolist()
    return PredictResult(out, len(labels), dict(enumerate(counts)), seconds)
