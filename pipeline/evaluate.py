"""Stage 4: how good is a checkpoint? Accuracy, per-class report, confusions, worst mistakes.

Kaggle hides the test labels, so models are judged on the validation split. The offline
sample ships its test labels, so there a submission file can be scored too.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline import config, plots
from pipeline.checkpoints import load_checkpoint
from pipeline.datasets import TensorDigits
from pipeline.device import resolve_device
from pipeline.errors import PipelineError
from pipeline.predict import inference_model, predict_logits, read_submission
from pipeline.prepare import load_split


@dataclass(frozen=True)
class Metrics:
    accuracy: float
    loss: float
    predictions: torch.Tensor  # int64 [N], on the CPU
    confidences: torch.Tensor  # float [N]: softmax probability of the predicted class


def evaluate_model(model: nn.Module, data, batch_size: int = 256, tta: bool = False) -> Metrics:
    """Accuracy and mean cross-entropy of `model` on a labelled dataset."""
    if data.labels is None:
        raise PipelineError("cannot evaluate on unlabelled data")
    logits = predict_logits(model, data, batch_size, tta)
    labels = data.labels.to(logits.device)
    probs = logits.softmax(1)
    confidences, predictions = probs.max(1)
    return Metrics(
        accuracy=(predictions == labels).float().mean().item(),
        loss=F.cross_entropy(logits, labels).item(),
        predictions=predictions.cpu(),
        confidences=confidences.cpu(),
    )


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

    target = resolve_device(device)
    model = inference_model(load_checkpoint(checkpoint, target).model)
    digits = load_split(processed_dir, split)
    if digits.labels is None:
        raise PipelineError(
            f"{config.split_path(processed_dir, split)}: labels are hidden (Kaggle's test set); "
            "evaluate on val, or submit to Kaggle for a test score"
        )
    metrics = evaluate_model(model, TensorDigits.from_split(digits).to(target), tta=tta)
    truth = digits.labels.numpy()
    predicted = metrics.predictions.numpy()
    report = classification_report(truth, predicted, digits=4, zero_division=0)
    matrix = confusion_matrix(truth, predicted, labels=np.arange(config.N_CLASSES))
    stem = f"{checkpoint.stem}_{split}"
    confusion_png = config.figure_path(f"{stem}_confusion", figures_dir)
    plots.plot_confusion_matrix(matrix, confusion_png, f"{checkpoint.name} on {split}")
    wrong = np.flatnonzero(predicted != truth)
    worst = wrong[np.argsort(-metrics.confidences.numpy()[wrong])][:gallery_size]
    mistakes_png = config.figure_path(f"{stem}_mistakes", figures_dir)
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
