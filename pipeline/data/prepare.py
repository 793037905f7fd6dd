"""Stage 2: validate and parse the raw CSVs, split train/validation, cache uint8 arrays in the
format `pipeline.data.processed` describes (PNGs too with `--format images`). A cache is reused
only when its meta matches the sources and options and every file its recorded sha256."""

import math
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import config
from pipeline.common.choices import CacheFormat
from pipeline.common.errors import PipelineError
from pipeline.common.files import file_sha256, remove_dead_temps, temp_dir, write_json
from pipeline.common.timings import phase
from pipeline.data.processed import (
    META_VERSION,
    DigitSplit,
    current_cache,
    images_digest,
    save_split,
)
from pipeline.data.raw_csv import check_size, read_raw


@dataclass(frozen=True)
class PrepareResult:
    processed_dir: Path
    skipped: bool
    counts: dict[str, int]
    is_sample: bool


def check_val_fraction(val_fraction: float) -> None:
    if not 0.0 < val_fraction < 1.0:
        raise PipelineError(
            f"--val-fraction {val_fraction}: must be more than 0 and less than 1 "
            "(both splits need digits)"
        )


def split_train_val(
    labels: np.ndarray, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """The rows, sorted, that the tutorial's stratified `train_test_split` keeps and holds out."""
    from sklearn.model_selection import train_test_split  # 0.7 s: only when splitting

    check_val_fraction(val_fraction)
    n_val = math.ceil(val_fraction * len(labels))
    classes, counts = np.unique(labels, return_counts=True)
    if len(classes) and counts.min() < 2:
        raise PipelineError(
            f"cannot stratify a validation split: digit {classes[counts.argmin()]} has only "
            "one row"
        )
    if min(len(labels) - n_val, n_val) < len(classes):
        raise PipelineError(
            f"cannot stratify a validation split: {len(labels) - n_val} training and {n_val} "
            f"validation rows cannot both hold all {len(classes)} digits"
        )
    rows = np.arange(len(labels))
    train, val = train_test_split(rows, test_size=n_val, stratify=labels, random_state=seed)
    return np.sort(train), np.sort(val)


def _to_split(pixels: np.ndarray, labels: np.ndarray | None, rows: np.ndarray) -> DigitSplit:
    """Gather the rows (also turning pandas' column-major pixels into row-major images)."""
    side = config.IMAGE_SIDE
    return DigitSplit(
        images=np.ascontiguousarray(pixels[rows]).reshape(-1, 1, side, side),
        labels=None if labels is None else labels[rows],
        ids=(rows + 1).astype(np.int64),
    )


def _write_pngs(splits: dict[str, DigitSplit], target: Path) -> None:
    """images/<split>/<label>/<id>.png for labelled splits, images/test/<id>.png for test."""
    from PIL import Image

    jobs: list[tuple[np.ndarray, Path]] = []
    for name, split in splits.items():
        for index, image_id in enumerate(split.ids.tolist()):
            folder = target / name
            if name != "test" and split.labels is not None:
                folder = folder / str(int(split.labels[index]))
            jobs.append((split.images[index, 0], folder / f"{image_id}.png"))
    for folder in {path.parent for _, path in jobs}:
        folder.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor() as pool:  # zlib releases the GIL, so threads scale
        list(pool.map(lambda job: Image.fromarray(job[0], mode="L").save(job[1]), jobs))


def fingerprint_sources(raw_dir: Path) -> dict[str, str]:
    names = [config.TRAIN_CSV, config.TEST_CSV, config.TEST_LABELS_CSV]
    return {n: file_sha256(raw_dir / n) for n in names if (raw_dir / n).is_file()}


def prepare(
    raw_dir: Path = config.RAW_DIR,
    processed_dir: Path = config.PROCESSED_DIR,
    fmt: str = "tensors",
    val_fraction: float = 0.1,
    seed: int = 0,
    force: bool = False,
    limit_rows: int | None = None,
) -> PrepareResult:
    """Parse train.csv and test.csv, split, and write the cache unless it is current; meta.json
    goes first and comes back last, so an interrupted run leaves a folder readers refuse."""
    fmt = CacheFormat(fmt).value
    check_val_fraction(val_fraction)
    remove_dead_temps(processed_dir)  # what a killed run left: its temp files and PNG folder
    options = {"version": META_VERSION, "val_fraction": val_fraction, "seed": seed}
    options |= {"limit_rows": limit_rows, "sources": None}
    if not force and (raw_dir / config.TRAIN_CSV).is_file():
        for name in (config.TRAIN_CSV, config.TEST_CSV):  # before hashing them
            check_size(raw_dir / name)
        options["sources"] = fingerprint_sources(raw_dir)
        if (meta := current_cache(processed_dir, options, fmt)) is not None:
            is_sample = (raw_dir / config.TEST_LABELS_CSV).is_file()
            return PrepareResult(processed_dir, True, meta["counts"], is_sample)

    with phase("load"):
        raw = read_raw(raw_dir, limit_rows)
    with phase("work"), ThreadPoolExecutor(max_workers=1) as pool:  # a free core hashes
        hashing = pool.submit(fingerprint_sources, raw_dir) if not options["sources"] else None
        train, test = raw.train, raw.test
        try:
            train_rows, val_rows = split_train_val(train.labels, val_fraction, seed)
        except PipelineError as exc:
            raise PipelineError(f"{raw_dir / config.TRAIN_CSV}: {exc}") from None
        splits = {
            "train": _to_split(train.pixels, train.labels, train_rows),
            "val": _to_split(train.pixels, train.labels, val_rows),
            "test": _to_split(test.pixels, raw.test_labels, np.arange(len(test.pixels))),
        }
        options["sources"] = options["sources"] or hashing.result()
    with phase("write"):
        processed_dir.mkdir(parents=True, exist_ok=True)
        (processed_dir / config.META_JSON).unlink(missing_ok=True)
        files = {}
        if fmt in ("tensors", "both"):
            for name, split in splits.items():
                path = config.split_path(processed_dir, name)
                files[path.name] = save_split(split, path)
        if fmt in ("images", "both"):
            target = config.images_dir(processed_dir)
            with temp_dir(processed_dir, "images") as tmp:
                _write_pngs(splits, Path(tmp) / config.IMAGES_DIR)
                shutil.rmtree(target, ignore_errors=True)
                (Path(tmp) / config.IMAGES_DIR).replace(target)
            files[config.IMAGES_DIR] = images_digest(target)
        counts = {name: len(split) for name, split in splits.items()}
        meta = options | {"format": fmt, "counts": counts, "files": files}
        write_json(meta, processed_dir / config.META_JSON)
    return PrepareResult(processed_dir, False, counts, raw.test_labels is not None)
