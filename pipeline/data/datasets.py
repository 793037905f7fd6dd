"""The processed data as torch tensors and Datasets: what train, evaluate and predict read.

Images stay uint8 until they reach the training device. Both datasets answer
`get_batch(indices)` (also `__getitems__`, for a `DataLoader` with `collate_fn=keep_batch`):
the tensor-backed one in one indexing op, the PNG-backed one file by file, as the tutorial did.
"""

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from pipeline import config
from pipeline.common.errors import PipelineError
from pipeline.data.processed import (  # noqa: F401  (re-exported: the stages read them from here)
    DigitSplit,
    load_split_arrays,
    processed_fingerprint,
    read_meta,
)

Batch = tuple[torch.Tensor, torch.Tensor | None]


def load_split(processed_dir: Path, name: str) -> DigitSplit:
    """One cached split as tensors, checked against meta.json and for shape, dtype and range."""
    arrays = load_split_arrays(processed_dir, name)
    labels = None if arrays.labels is None else torch.from_numpy(arrays.labels)
    return DigitSplit(torch.from_numpy(arrays.images), labels, torch.from_numpy(arrays.ids))


# ---------------------------------------------------------------- on the device


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B,1,28,28] -> float32 in [0, 1] on the images' device (augmentation works here)."""
    return images.float() / 255.0


def standardize(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] floats -> zero mean, unit spread with MNIST's statistics."""
    return (x - config.PIXEL_MEAN) / config.PIXEL_STD


def normalize(images: torch.Tensor) -> torch.Tensor:
    return standardize(to_unit(images))


def keep_batch(batch: Batch) -> Batch:
    """A `collate_fn` for datasets whose `__getitems__` already returns a stacked batch."""
    return batch


# ---------------------------------------------------------------- the two Datasets


class _Digits(Dataset):
    """A batch is `images_at(indices)` and their labels (None: test); an item, a batch of one."""

    device = torch.device("cpu")  # where indices must be

    def get_batch(self, indices: torch.Tensor | Sequence[int]) -> Batch:
        indices = torch.as_tensor(indices, device=self.device)
        return self.images_at(indices), None if self.labels is None else self.labels[indices]

    __getitems__ = get_batch

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        images, labels = self.get_batch([index])
        return images[0], -1 if labels is None else int(labels[0])


class TensorDigits(_Digits):
    """Digits held as one uint8 tensor (on any device); a batch is one indexing op."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor | None = None):
        if labels is not None and len(labels) != len(images):
            raise ValueError("images and labels differ in length")
        self.images, self.labels, self.device = images, labels, images.device

    @classmethod
    def from_split(cls, split: DigitSplit) -> "TensorDigits":
        return cls(split.images, split.labels)

    @classmethod
    def load(cls, processed_dir: Path, split: str) -> "TensorDigits":
        return cls.from_split(load_split(processed_dir, split))

    def to(self, device: torch.device) -> "TensorDigits":
        labels = None if self.labels is None else self.labels.to(device)
        return TensorDigits(self.images.to(device), labels)

    def __len__(self) -> int:
        return len(self.images)

    def images_at(self, indices: torch.Tensor) -> torch.Tensor:
        return self.images[indices]


class PngDigits(_Digits):
    """Digits read from `images/<split>/<label>/<id>.png` (or `images/test/<id>.png`)."""

    def __init__(self, root: Path):
        files = sorted(root.rglob("*.png"), key=lambda p: int(p.stem)) if root.is_dir() else []
        if not files:
            raise PipelineError(
                f"{root}: no PNG digits (run `pipeline prepare --format images` first)"
            )
        self.files = files
        labelled = all(p.parent != root for p in files)
        self.labels = torch.tensor([int(p.parent.name) for p in files]) if labelled else None

    @classmethod
    def load(cls, processed_dir: Path, split: str) -> "PngDigits":
        return cls(config.images_dir(processed_dir) / split)

    def __len__(self) -> int:
        return len(self.files)

    def images_at(self, indices: torch.Tensor) -> torch.Tensor:
        images = []
        for i in indices.tolist():
            with Image.open(self.files[i]) as image:
                images.append(torch.from_numpy(np.array(image.convert("L"))).unsqueeze(0))
        return torch.stack(images)


def index_batches(
    n: int,
    batch_size: int,
    order: torch.Tensor | None = None,
    drop_last: bool = False,
    device: torch.device | None = None,
) -> Iterator[torch.Tensor]:
    """Slices of `order` (default 0..n-1) of `batch_size`; indices live on `device`."""
    order = torch.arange(n, device=device) if order is None else order.to(device)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        yield order[start : start + batch_size]
