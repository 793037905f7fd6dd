"""The processed-data format: `{train,val,test}.npz` of plain `.npy` members (`images`, `labels`
unless hidden, `ids`: 1-based CSV rows), read with `allow_pickle=False`; `meta.json`, written
last, records every file's sha256, so files that do not belong to it are never taken as current.
"""

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from pipeline import config
from pipeline.common.choices import CacheFormat
from pipeline.common.errors import PipelineError
from pipeline.common.files import atomic_path, file_sha256, sha256_text

META_VERSION = 3  # 3: NumPy .npz splits (2 held torch .pt files)
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Count = Annotated[int, Field(ge=1)]


class SplitCounts(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    train: Count
    val: Count
    test: Count


class Meta(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    version: Literal[META_VERSION]
    sources: dict[Literal[config.TRAIN_CSV, config.TEST_CSV, config.TEST_LABELS_CSV], Sha256]
    val_fraction: Annotated[float, Field(gt=0, lt=1)]
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)]
    format: Literal[tuple(f.value for f in CacheFormat)]
    limit_rows: Count | None
    counts: SplitCounts
    files: dict[Literal[*(f"{s}.npz" for s in config.SPLITS), config.IMAGES_DIR], Sha256]


@dataclass(frozen=True)
class DigitSplit:
    """One split's digits: NumPy arrays as stored, torch tensors once `datasets` loads them."""

    images: Any  # uint8 [N, 1, 28, 28], 0 = background, 255 = ink
    labels: Any | None  # int64 [N]
    ids: Any  # int64 [N]

    def __len__(self) -> int:
        return len(self.ids)


def read_meta(processed_dir: Path) -> dict:
    """meta.json checked whole against `Meta`, or a one-line error naming the first bad field."""
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


def processed_fingerprint(processed_dir: Path, whole: bool = False) -> str:
    """The data a run trains on: the sources and split, or with `whole` (bagged members) every
    labelled digit, whatever the split."""
    keys = ["sources", "limit_rows"] + ([] if whole else ["val_fraction", "seed"])
    meta = read_meta(processed_dir)
    return sha256_text(json.dumps({k: meta.get(k) for k in keys}, sort_keys=True))


def images_digest(root: Path) -> str:
    """A PNG tree's every relative path and size."""
    listing = sorted(
        f"{p.relative_to(root).as_posix()}:{p.stat().st_size}" for p in root.rglob("*.png")
    )
    return sha256_text("\n".join(listing))


def current_cache(processed_dir: Path, options: dict, fmt: str) -> dict | None:
    """The meta of a cache of these sources and options, if every file it lists is as recorded."""
    try:
        meta = read_meta(processed_dir)
    except PipelineError:
        return None

    def current(path: Path) -> str | None:
        if path.name == config.IMAGES_DIR:
            return images_digest(path) if path.is_dir() else None
        return file_sha256(path) if path.is_file() else None

    if any(meta.get(k) != v for k, v in options.items()) or meta["format"] not in (fmt, "both"):
        return None
    files = meta["files"].items()
    return meta if all(current(processed_dir / name) == sha for name, sha in files) else None


def save_split(split: DigitSplit, path: Path) -> str:
    """Write one split atomically; returns the sha256 meta.json records for it."""
    buffer = io.BytesIO()
    np.savez(buffer, **{k: v for k, v in vars(split).items() if v is not None})
    data = buffer.getvalue()
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def load_split_arrays(processed_dir: Path, name: str) -> DigitSplit:
    """One split as meta.json recorded and counted it (labelled unless test), or an error."""
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
    side = config.IMAGE_SIDE
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            arrays = dict(archive)
        n = len(arrays["ids"])
        wanted = {"images": (np.uint8, (n, 1, side, side)), "ids": (np.int64, (n,))}
        wanted["labels"] = wanted["ids"]
        split = DigitSplit(arrays["images"], arrays.get("labels"), arrays["ids"])
        valid = all((a.dtype, a.shape) == wanted[k] for k, a in arrays.items()) and (
            split.labels is None or ((split.labels >= 0) & (split.labels <= 9)).all()
        )
    except Exception:  # not a zip, a damaged member, an object array, a missing one: foreign
        valid = False
    if not valid:
        raise PipelineError(f"{path}: not a split written by `pipeline prepare`; run it again")
    if len(split) != meta["counts"][name]:
        raise PipelineError(
            f"{path}: holds {len(split)} digits, {config.META_JSON} counts "
            f"{meta['counts'][name]}; run `pipeline prepare --force`"
        )
    if split.labels is None and name != "test":
        raise PipelineError(
            f"{path}: the {name} split has no labels (only Kaggle's test digits may lack "
            "them); run `pipeline prepare --force`"
        )
    return split
