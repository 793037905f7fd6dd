"""Stage 4: how good is a model? Accuracy, per-class report, confusions, worst mistakes, on
the validation split (Kaggle hides the test labels; the offline sample's score a submission)."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import config
from pipeline.common import plots
from pipeline.common.choices import Split
from pipeline.common.errors import PipelineError
from pipeline.common.files import expand_checkpoints
from pipeline.data.processed import load_split_arrays
from pipeline.inference.predict import load_models
from pipeline.inference.predictor import Metrics
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
    """Score a checkpoint or `.onnx` on a labelled split; draw its confusions and mistakes."""
    from sklearn.metrics import classification_report, confusion_matrix  # slow import

    split = Split(split).value  # only a split name: never a path that leads elsewhere
    paths = expand_checkpoints([checkpoint])
    if len(paths) > 1:
        raise PipelineError(f"{checkpoint}: matches {len(paths)} models; evaluate scores one")
    models = load_models(paths, device, tta)
    digits = load_split_arrays(processed_dir, split)
    if digits.labels is None:
        raise PipelineError(
            f"{config.split_path(processed_dir, split)}: labels are hidden (Kaggle's test set); "
            "evaluate on val, or submit to Kaggle for a test score"
        )
    probs, truth = models.predict(digits.images), digits.labels
    predicted, confidences = probs.argmax(1), probs.max(1)
    nll = -np.log(np.maximum(probs[np.arange(len(truth)), truth], 1e-12)).mean()
    metrics = Metrics(float((predicted == truth).mean()), float(nll), predicted, confidences)
    report = classification_report(truth, predicted, digits=4, zero_division=0)
    matrix = confusion_matrix(truth, predicted, labels=np.arange(config.N_CLASSES))
    confusion_png = config.evaluation_figure_path(checkpoint, split, "confusion", figures_dir)
    plots.plot_confusion_matrix(matrix, confusion_png, f"{checkpoint.name} on {split}")
    wrong = np.flatnonzero(predicted != truth)
    worst = wrong[np.argsort(-confidences[wrong])][:gallery_size]
    mistakes_png = config.evaluation_figure_path(checkpoint, split, "mistakes", figures_dir)
    plots.plot_mistakes(
        digits.images[worst, 0],
        truth[worst],
        predicted[worst],
        confidences[worst],
        digits.ids[worst],
        mistakes_png,
    )
    return Evaluation(checkpoint, split, metrics, report, confusion_png, mistakes_png)


def score_submission(submission: Path, processed_dir: Path = config.PROCESSED_DIR) -> float:
    """Accuracy of a submission file against known test labels (the offline sample only)."""
    digits = load_split_arrays(processed_dir, "test")
    if digits.labels is None:
        raise PipelineError(
            f"{submission}: Kaggle's test labels are hidden; `pipeline submit` scores it"
        )
    frame = read_submission(submission, n_rows=len(digits)).sort_values("ImageId")
    return float((frame["Label"].to_numpy() == digits.labels).mean())
