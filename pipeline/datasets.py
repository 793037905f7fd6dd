"""The processed-data format: what `prepare` writes and every later stage reads.

`data/processed/{train,val,test}.pt` each hold `images` uint8[N,1,28,28], `labels` int64[N]
(None for Kaggle's hidden test labels) and `ids`, the 1-based row in the source CSV (Kaggle's
ImageId for test). `meta.json` is written last and records the source fingerprints, the split
options and the sha256 of every file beside it, so a folder whose files do not all belong to
its meta (an interrupted `prepare`, a truncated file) is never taken for current data.

Images stay uint8 until they reach the training device. Both datasets answer
`get_batch(indices)` (also `__getitems__`, so a `DataLoader` given `collate_fn=keep_batch`
fetches a whole batch in one call); the tensor-backed one does it with one indexing op, the
PNG-backed one decodes file by file, as the original tutorial did.
"""

import hashlib
import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from torch.utils.data import Dataset

from pipeline import config
from pipeline.choices import CacheFormat
from pipeline.errors import PipelineError
from pipeline.files import atomic_path, file_sha256, sha256_text

META_VERSION = 2
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Count = Annotated[int, Field(ge=1)]


class SplitCounts(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    train: Count
    val: Count
    test: Count


class Meta(BaseModel):
    """meta.json, whole: every field `prepare` writes, of the type it writes, nothing else."""

    model_config = ConfigDict(extra="forbid", strict=True)
    version: Literal[META_VERSION]
    sources: dict[Literal[config.TRAIN_CSV, config.TEST_CSV, config.TEST_LABELS_CSV], Sha256]
    val_fraction: Annotated[float, Field(gt=0, lt=1)]
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)]
    format: Literal[tuple(f.value for f in CacheFormat)]
    limit_rows: Count | None
    counts: SplitCounts
    files: dict[Literal[*(f"{s}.pt" for s in config.SPLITS), config.IMAGES_DIR], Sha256]


Batch = tuple[torch.Tensor, torch.Tensor | None]


@dataclass(frozen=True)
class DigitSplit:
    images: torch.Tensor  # uint8 [N, 1, 28, 28], 0 = background, 255 = ink
    labels: torch.Tensor | None  # int64 [N], None where the labels are hidden
    ids: torch.Tensor  # int64 [N], 1-based row in the source CSV

    def __len__(self) -> int:
        return len(self.ids)


# ---------------------------------------------------------------- meta.json and fingerprints


def read_meta(processed_dir: Path) -> dict:
    """meta.json as `prepare` wrote it (checked whole against `Meta`), or a one-line error
    naming the file and the first field that is wrong."""
    path = processed_dir / config.META_JSON
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise PipelineError(f"{path}: no such file (run `pipeline prepare` first)") from None
    except OSError as exc:
        raise PipelineError(
            f"{path}: unreadable ({exc.strerror}); run `pipeline prepare`"
        ) from None
    try:
        return Meta.model_validate_json(text).model_dump()
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in error["loc"]) or "(the document)"
        problem = " ".join(error["msg"].split())[:80]
        if error["type"] == "json_invalid":
            problem = problem.removeprefix("Invalid JSON: ")
            where, problem = "(the document)", f"not valid JSON ({problem})"
        raise PipelineError(
            f"{path}: field {where}: {problem[:1].lower()}{problem[1:]}; run "
            "`pipeline prepare --force`"
        ) from None


def data_fingerprint(meta: dict) -> str:
    """Identifies the prepared data (source CSVs and split), recorded in every checkpoint."""
    keys = ("sources", "val_fraction", "seed", "limit_rows")
    return sha256_text(json.dumps({k: meta.get(k) for k in keys}, sort_keys=True))


def processed_fingerprint(processed_dir: Path) -> str:
    return data_fingerprint(read_meta(processed_dir))


def images_digest(root: Path) -> str:
    """A fingerprint of a PNG tree: every file's relative path and size."""
    listing = sorted(
        f"{p.relative_to(root).as_posix()}:{p.stat().st_size}" for p in root.rglob("*.png")
    )
    return sha256_text("\n".join(listing))


def stale_files(processed_dir: Path, meta: dict) -> list[str]:
    """Files meta.json lists that are missing or differ from what it recorded."""
    stale = []
    for name, recorded in meta["files"].items():
        path = processed_dir / name
        if name == config.IMAGES_DIR:
            current = images_digest(path) if path.is_dir() else None
        else:
            current = file_sha256(path) if path.is_file() else None
        if current != recorded:
            stale.append(name)
    return stale


# ---------------------------------------------------------------- the split files


def save_split(split: DigitSplit, path: Path) -> str:
    """Write one split atomically; returns the sha256 meta.json records for it."""
    buffer = io.BytesIO()
    torch.save({"images": split.images, "labels": split.labels, "ids": split.ids}, buffer)
    data = buffer.getvalue()
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def _valid_split(payload) -> bool:
    if not isinstance(payload, dict):
        return False
    images, labels, ids = payload.get("images"), payload.get("labels"), payload.get("ids")
    side = config.IMAGE_SIDE
    return (
        isinstance(images, torch.Tensor)
        and images.dtype == torch.uint8
        and images.dim() == 4
        and tuple(images.shape[1:]) == (1, side, side)
        and isinstance(ids, torch.Tensor)
        and ids.dtype == torch.int64
        and ids.shape == (len(images),)
        and (
            labels is None
            or (
                isinstance(labels, torch.Tensor)
                and labels.dtype == torch.int64
                and labels.shape == ids.shape
                and (len(labels) == 0 or 0 <= int(labels.min()) <= int(labels.max()) <= 9)
            )
        )
    )


def load_split(processed_dir: Path, name: str) -> DigitSplit:
    """Load one cached split, checking it is the file meta.json recorded and well-formed."""
    path = config.split_path(processed_dir, name)
    meta = read_meta(processed_dir)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PipelineError(f"{path}: no such file (run `pipeline prepare` first)") from None
    if hashlib.sha256(data).hexdigest() != meta["files"].get(path.name):
        raise PipelineError(
            f"{path}: does not match {config.META_JSON} (changed or from an interrupted "
            "`pipeline prepare`); run `pipeline prepare --force`"
        )
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise PipelineError(f"{path}: not a readable tensor file ({type(exc).__name__})") from None
    if not _valid_split(payload):
        raise PipelineError(f"{path}: not a split written by `pipeline prepare`; run it again")
    split = DigitSplit(payload["images"], payload["labels"], payload["ids"])
    check_split(split, name, meta["counts"].get(name), path)
    return split


def check_split(split: DigitSplit, name: str, count: int | None, path: Path) -> None:
    """A split holds the digits meta.json counted, at least one, labelled unless it is test."""
    if len(split) == 0:
        raise PipelineError(f"{path}: the {name} split holds no digits; run `pipeline prepare`")
    if count is not None and len(split) != count:
        raise PipelineError(
            f"{path}: holds {len(split)} digits, {config.META_JSON} counts {count}; "
            "run `pipeline prepare --force`"
        )
    if split.labels is None and name != "test":
        raise PipelineError(
            f"{path}: the {name} split has no labels (only Kaggle's test digits may lack "
            "them); run `pipeline prepare --force`"
        )


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


class TensorDigits(Dataset):
    """Digits held as one uint8 tensor (on any device); a batch is one indexing op."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor | None = None):
        if labels is not None and len(labels) != len(images):
            raise ValueError("images and labels differ in length")
        self.images, self.labels = images, labels

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

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        label = -1 if self.labels is None else int(self.labels[index])
        return self.images[index], label

    def get_batch(self, indices: torch.Tensor | Sequence[int]) -> Batch:
        indices = torch.as_tensor(indices, device=self.images.device)
        labels = None if self.labels is None else self.labels[indices]
        return self.images[indices], labels

    __getitems__ = get_batch


class PngDigits(Dataset):
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

    def _read(self, index: int) -> torch.Tensor:
        with Image.open(self.files[index]) as image:
            return torch.from_numpy(np.array(image.convert("L"))).unsqueeze(0)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        label = -1 if self.labels is None else int(self.labels[index])
        return self._read(index), label

    def get_batch(self, indices: torch.Tensor | Sequence[int]) -> Batch:
        indices = torch.as_tensor(indices).cpu()
        images = torch.stack([self._read(i) for i in indices.tolist()])
        return images, None if self.labels is None else self.labels[indices]

    __getitems__ = get_batch


def load_train_val(processed_dir: Path, source: str, device: torch.device):
    """Training and validation sets; cached tensors move to the device once, up front."""
    if source == "images":
        return PngDigits.load(processed_dir, "train"), PngDigits.load(processed_dir, "val")
    train = TensorDigits.load(processed_dir, "train").to(device)
    return train, TensorDigits.load(processed_dir, "val").to(device)


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
