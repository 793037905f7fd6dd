"""Stage 4: how good is a checkpoint? Accuracy, per-class report, confusions, worst mistakes.

Kaggle hides the test labels, so models are judged on the validation split. The offline
sample ships its test labels, so there a submission file can be scored too.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import config
from pipeline.common import plots
from pipeline.common.choices import Split
from pipeline.common.device import resolve_device
from pipeline.common.errors import PipelineError
from pipeline.data.datasets import TensorDigits, load_split
from pipeline.inference.predictor import Metrics, load_for_inference, score
from pipeline.inference.submission import read_submission


@dataclass(frozen=True)
class Evaluation:
    checkpoint: Path
    split: str
    metrics: Metrics
    report: str  # sklearn's per-class precision/recall/F1 table
    confusion_png: Path
    mistakes_png: Path


def evaluate(
    checkpoint: Path,
    processed_dir: Path = config.PROCESSED_DIR,
    split: str = "val",
    device: str = "auto",
    tta: bool = False,
    figures_dir: Path = config.FIGURES_DIR,
    gallery_size: int = 24,
) -> Evaluation:
    """Score a checkpoint on a labelled split and draw its confusion matrix and mistakes."""
    from sklearn.metrics import classification_report, confusion_matrix  # slow import

    split = Split(split).value  # only a split name: never a path that leads elsewhere
    target = resolve_device(device)
    (loaded,) = load_for_inference([checkpoint], target)
    digits = load_split(processed_dir, split)
    if digits.labels is None:
        raise PipelineError(
            f"{config.split_path(processed_dir, split)}: labels are hidden (Kaggle's test set); "
            "evaluate on val, or submit to Kaggle for a test score"
        )
    metrics = score(loaded.model, TensorDigits.from_split(digits).to(target), tta=tta)
    truth, predicted = digits.labels.numpy(), metrics.predictions.numpy()
    report = classification_report(truth, predicted, digits=4, zero_division=0)
    matrix = confusion_matrix(truth, predicted, labels=np.arange(config.N_CLASSES))
    confusion_png = config.evaluation_figure_path(checkpoint, split, "confusion", figures_dir)
    plots.plot_confusion_matrix(matrix, confusion_png, f"{checkpoint.name} on {split}")
    wrong = np.flatnonzero(predicted != truth)
    worst = wrong[np.argsort(-metrics.confidences.numpy()[wrong])][:gallery_size]
    mistakes_png = config.evaluation_figure_path(checkpoint, split, "mistakes", figures_dir)
    plots.plot_mistakes(
        digits.images[worst, 0].numpy(),
        truth[worst],
        predicted[worst],
        metrics.confidences.numpy()[worst],
        digits.ids[worst].numpy(),
        mistakes_png,
    )
    return Evaluation(checkpoint, split, metrics, report, confusion_png, mistakes_png)


def score_submission(submission: Path, processed_dir: Path = config.PROCESSED_DIR) -> float:
    """Accuracy of a submission file against known test labels (the offline sample only)."""
    digits = load_split(processed_dir, "test")
    if digits.labels is None:
        raise PipelineError(
            f"{submission}: Kaggle's test labels are hidden; `pipeline submit` scores it"
        )
    frame = read_submission(submission, n_rows=len(digits)).sort_values("ImageId")
    return float((frame["Label"].to_numpy() == digits.labels.numpy()).mean())
