"""Figures for training, evaluation and the baselines, written atomically as PNGs; matplotlib's
object API (`Figure`, no pyplot) touches no global backend state and needs no display."""

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.common.files import atomic_path


def new_figure(**kwargs):
    """A matplotlib Figure; matplotlib (0.4 s to import) loads only when a figure is drawn."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def save_figure(fig, path: Path) -> Path:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return path


def training_curves_figure(history: Sequence[dict[str, float]]):
    """Loss (train and validation) and validation accuracy per epoch, on whole-epoch ticks."""
    from matplotlib.ticker import MaxNLocator

    epochs = [int(row["epoch"]) for row in history]
    fig = new_figure(figsize=(9, 3.5))
    loss_ax, acc_ax = fig.subplots(1, 2)
    loss_ax.plot(epochs, [r["train_loss"] for r in history], "o-", label="train")
    loss_ax.plot(epochs, [r["val_loss"] for r in history], "o-", label="validation")
    loss_ax.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    loss_ax.legend()
    acc_ax.plot(epochs, [100 * r["val_accuracy"] for r in history], "o-", color="C2")
    acc_ax.set(xlabel="epoch", ylabel="%", title="validation accuracy")
    acc_ax.grid(alpha=0.3)
    for ax in (loss_ax, acc_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig


def plot_training_curves(history: Sequence[dict[str, float]], path: Path) -> Path:
    return save_figure(training_curves_figure(history), path)


def plot_confusion_matrix(matrix: np.ndarray, path: Path, title: str) -> Path:
    from sklearn.metrics import ConfusionMatrixDisplay

    ax = new_figure(figsize=(6.5, 5.5)).subplots()
    ConfusionMatrixDisplay(matrix).plot(ax=ax, colorbar=False, values_format="d")
    ax.set_title(title)
    return save_figure(ax.figure, path)


def plot_mistakes(images, truth, predicted, conf, ids, path: Path) -> Path:
    """A grid of misclassified digits, most confident first: 'id: true -> predicted (p)'."""
    columns = 8
    rows = max(1, -(-len(images) // columns))
    fig = new_figure(figsize=(columns * 1.3, rows * 1.5))
    axes = np.atleast_1d(fig.subplots(rows, columns)).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, image, t, p, c, i in zip(axes, images, truth, predicted, conf, ids, strict=False):
        ax.imshow(image, cmap="gray_r")
        ax.set_title(f"#{i}: {t}\u2192{p} ({c:.2f})", fontsize=7)
    if len(images) == 0:
        axes[0].set_title("no mistakes")
    fig.suptitle("most confident mistakes (true\u2192predicted)", fontsize=9)
    return save_figure(fig, path)
