"""Stage 2: validate and parse the raw CSVs, split train/validation, cache uint8 arrays.

Writes the processed-data format `pipeline.data.processed` describes: three NumPy split files,
PNGs with `--format images`, and `meta.json` last. An existing cache is reused only when its
meta matches the sources and options and every file still matches its recorded sha256.
"""

import csv
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
    SplitArrays,
    images_digest,
    read_meta,
    save_split,
    stale_files,
)


@dataclass(frozen=True)
class ParsedCsv:
    pixels: np.ndarray  # uint8 [N, 784], column-major as pandas builds it; read-only
    labels: np.ndarray | None  # int64 [N]


@dataclass(frozen=True)
class PrepareResult:
    processed_dir: Path
    skipped: bool
    counts: dict[str, int]
    is_sample: bool


def _diagnose(path: Path, header: list[str]) -> str:
    """Find the first bad line the slow, exact way; only runs after the fast parse failed."""
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as handle:
        reader = csv.reader(handle)
        next(reader, None)
        for line_no, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                return f"line {line_no} has {len(row)} values, expected {len(header)}"
            for name, cell in zip(header, row, strict=True):
                try:
                    value = float(cell)
                except ValueError:
                    return f"line {line_no}, column {name}: {cell.strip()[:20]!r} is not a number"
                allowed = "a digit 0-9" if name == "label" else "an integer 0-255"
                top = 9 if name == "label" else 255
                if not math.isfinite(value) or value != int(value) or not 0 <= value <= top:
                    return f"line {line_no}, column {name}: {cell.strip()[:20]} is not {allowed}"
    return "could not be parsed as integer pixels"


def _check_header(path: Path, header: list[str]) -> None:
    with open(path, "rb") as handle:
        first_line = handle.readline(1 << 16)
    if not first_line.strip():
        raise PipelineError(f"{path}: the file is empty")
    try:
        text = first_line.decode("utf-8-sig").strip()
    except UnicodeDecodeError:
        text = "\x00"
    if any(ord(char) < 32 and char not in "\t\r\n" for char in text):
        raise PipelineError(f"{path}: not a text CSV file (binary content)")
    found = text.split(",")
    if found != header:
        expected = f"{header[0]},{header[1]},...,{header[-1]}"
        hint = ""
        if found == config.TEST_HEADER:
            hint = " (this looks like test.csv: it has no label column)"
        elif found == config.TRAIN_HEADER:
            hint = " (this looks like train.csv: it has a label column)"
        raise PipelineError(
            f"{path}: header must be {expected} ({len(header)} columns), found "
            f"{','.join(found[:3])[:40]}... ({len(found)} columns){hint}"
        )


def read_digits_csv(path: Path, has_labels: bool, limit_rows: int | None = None) -> ParsedCsv:
    """Parse a Kaggle train/test CSV into uint8 pixels (and labels), or raise a one-line error.

    pyarrow's CSV reader parses it where it is installed (mlflow, the tracking extra, brings it;
    pandas' `pyarrow` extra too): typed uint8
    columns take only integers 0-255. Whatever it refuses, and `limit_rows` (which it cannot
    do), goes to pandas' C parser: with `dtype=uint8` it rejects anything that is not an
    integer 0-255, and `na_filter=False` skips missing-value detection (an empty cell then
    fails as a non-integer); its failure is diagnosed line by line. Both use every core, so
    nothing else should run beside them: the fingerprint is hashed later, by `prepare`.
    """
    if not path.is_file():
        raise PipelineError(f"{path}: no such file (run `pipeline download` first)")
    header = config.TRAIN_HEADER if has_labels else config.TEST_HEADER
    _check_header(path, header)
    table = None if limit_rows is not None else _read_with_arrow(path, header)
    if table is None:
        table = _read_with_pandas(path, header, limit_rows)
    labels = None
    if has_labels:
        labels = table[:, 0].astype(np.int64)
        bad = np.flatnonzero(labels > 9)
        if len(bad):
            raise PipelineError(
                f"{path}: line {bad[0] + 2}: label {labels[bad[0]]} is not a digit 0-9"
            )
        table = table[:, 1:]
    return ParsedCsv(table, labels)


def _read_with_arrow(path: Path, header: list[str]) -> np.ndarray | None:
    """The whole file as uint8 [N, columns] with pyarrow's CSV reader (the faster parse, on
    every core); None where pyarrow is absent or refuses anything, for pandas to decide.

    Every cell must convert to uint8: no empty cell (no null values), nothing out of range,
    no fraction, every row as many values as the header (checked before this)."""
    try:
        import pyarrow as pa
        from pyarrow import csv as arrow_csv
    except ImportError:
        return None
    try:
        parsed = arrow_csv.read_csv(
            path,
            read_options=arrow_csv.ReadOptions(skip_rows=1, column_names=header),
            convert_options=arrow_csv.ConvertOptions(
                column_types={name: pa.uint8() for name in header},
                null_values=[],
                quoted_strings_can_be_null=False,
            ),
        )
    except (pa.ArrowException, ValueError, OSError):
        return None
    if parsed.num_rows == 0:
        return None
    table = np.empty((parsed.num_rows, len(header)), np.uint8, order="F")  # as pandas' is
    for index, column in enumerate(parsed.columns):
        if column.null_count:
            return None
        row = 0
        for chunk in column.chunks:  # the values buffer as is: `to_numpy` would import pandas
            table[row : row + len(chunk), index] = np.frombuffer(
                chunk.buffers()[1], np.uint8, len(chunk), chunk.offset
            )
            row += len(chunk)
    return table


def _read_with_pandas(path: Path, header: list[str], limit_rows: int | None) -> np.ndarray:
    """The file (or its first `limit_rows` rows) as uint8 with pandas' C parser, or the
    one-line error that names the first bad line."""
    import pandas as pd  # here only: the pyarrow parse needs none of its 0.3 s import

    try:
        # A non-finite cell ("inf", "1e400") parses as a float whose cast to uint8 is invalid:
        # make that cast fail here (and be diagnosed) instead of warning and failing later.
        with np.errstate(invalid="raise"):
            frame = pd.read_csv(path, dtype=np.uint8, na_filter=False, nrows=limit_rows)
    except (ValueError, pd.errors.ParserError, OverflowError, FloatingPointError):
        raise PipelineError(f"{path}: {_diagnose(path, header)}") from None
    # Extra values on the first data row make pandas infer an index instead of failing.
    if not isinstance(frame.index, pd.RangeIndex) or frame.shape[1] != len(header):
        raise PipelineError(f"{path}: {_diagnose(path, header)}")
    if len(frame) == 0:
        raise PipelineError(f"{path}: has a header but no data rows")
    return frame.to_numpy()


def read_test_labels(path: Path, n_test: int, limited: bool = False) -> np.ndarray:
    """The offline sample's answers for test.csv, in ImageId order (a prefix if `limited`)."""
    import pandas as pd

    try:
        frame = pd.read_csv(path, dtype=np.int64)
    except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise PipelineError(f"{path}: not an ImageId,Label CSV of integers ({exc})") from None
    if list(frame.columns) != config.SUBMISSION_HEADER:
        raise PipelineError(f"{path}: header must be ImageId,Label")
    if not np.array_equal(frame["ImageId"], np.arange(1, len(frame) + 1)):
        raise PipelineError(f"{path}: must list ImageId 1..N in order, one row each")
    if len(frame) < n_test or (len(frame) != n_test and not limited):
        raise PipelineError(f"{path}: has {len(frame)} labels for {n_test} test rows")
    if not frame["Label"].between(0, 9).all():
        raise PipelineError(f"{path}: labels must be digits 0-9")
    return frame["Label"].to_numpy()[:n_test]


def check_val_fraction(val_fraction: float) -> None:
    if not 0.0 < val_fraction < 1.0:
        raise PipelineError(
            f"--val-fraction {val_fraction}: must be more than 0 and less than 1 "
            "(both splits need digits)"
        )


def _approximate_mode(counts: np.ndarray, draws: int, rng: np.random.RandomState) -> np.ndarray:
    """scikit-learn's `_approximate_mode`: how many of `draws` each class gets, ties broken
    at random in the same order, so `rng` is left in the same state.

    Kept as a port: scikit-learn's is private, and importing it cost 0.7 s of every `prepare`;
    tests/test_bench.py pins `split_train_val` to the public `train_test_split(stratify=)`.
    """
    continuous = counts / counts.sum() * draws
    floored = np.floor(continuous)
    need_to_add = int(draws - floored.sum())
    if need_to_add > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (tied,) = np.where(remainder == value)
            add_now = min(len(tied), need_to_add)
            floored[rng.choice(tied, size=add_now, replace=False)] += 1
            need_to_add -= add_now
            if need_to_add == 0:
                break
    return floored.astype(int)


def split_train_val(
    labels: np.ndarray, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split: the same seed gives the same rows on every machine.

    The rows scikit-learn's `train_test_split(rows, test_size=val_fraction, stratify=labels,
    random_state=seed)` holds out (the tutorial's split), drawn with its algorithm
    (StratifiedShuffleSplit) and the same NumPy RandomState, without importing
    scikit-learn: that took 0.7 s of every `prepare`. tests/test_bench.py checks that both
    give the same rows.
    """
    check_val_fraction(val_fraction)
    n_val = math.ceil(val_fraction * len(labels))
    n_train = len(labels) - n_val
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    if len(classes) and counts.min() < 2:
        raise PipelineError(
            f"cannot stratify a validation split: digit {classes[counts.argmin()]} has only "
            "one row"
        )
    if min(n_train, n_val) < len(classes):
        raise PipelineError(
            f"cannot stratify a validation split: {n_train} training and {n_val} validation "
            f"rows cannot both hold all {len(classes)} digits"
        )
    by_class = np.split(np.argsort(inverse, kind="stable"), np.cumsum(counts)[:-1])
    rng = np.random.RandomState(seed)
    n_i = _approximate_mode(counts, n_train, rng)
    t_i = _approximate_mode(counts - n_i, n_val, rng)
    train, val = [], []
    for rows, count, n_train_i, n_val_i in zip(by_class, counts, n_i, t_i, strict=True):
        shuffled = rows.take(rng.permutation(count), mode="clip")
        train.append(shuffled[:n_train_i])
        val.append(shuffled[n_train_i : n_train_i + n_val_i])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def _to_split(pixels: np.ndarray, labels: np.ndarray | None, rows: np.ndarray) -> SplitArrays:
    """Gather the rows; the gather also turns pandas' column-major pixels into row-major images."""
    side = config.IMAGE_SIDE
    return SplitArrays(
        images=np.ascontiguousarray(pixels[rows]).reshape(-1, 1, side, side),
        labels=None if labels is None else labels[rows],
        ids=(rows + 1).astype(np.int64),
    )


def _write_pngs(splits: dict[str, SplitArrays], target: Path) -> None:
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


def _options(sources: dict[str, str], val_fraction: float, seed: int, limit: int | None) -> dict:
    return {
        "version": META_VERSION,
        "sources": sources,
        "val_fraction": val_fraction,
        "seed": seed,
        "limit_rows": limit,
    }


def current_cache(processed_dir: Path, options: dict, fmt: str) -> dict | None:
    """The meta of a cache built from these sources with these options, if every file checks."""
    try:
        meta = read_meta(processed_dir)
    except PipelineError:
        return None
    wanted = {"tensors": {"tensors", "both"}, "images": {"images", "both"}, "both": {"both"}}
    same = all(meta.get(k) == v for k, v in options.items())
    if not same or meta["format"] not in wanted[fmt] or stale_files(processed_dir, meta):
        return None
    return meta


def prepare(
    raw_dir: Path = config.RAW_DIR,
    processed_dir: Path = config.PROCESSED_DIR,
    fmt: str = "tensors",
    val_fraction: float = 0.1,
    seed: int = 0,
    force: bool = False,
    limit_rows: int | None = None,
) -> PrepareResult:
    """Parse train.csv and test.csv, split, and write the cache; skip if it is current.

    Everything is validated before anything is written. meta.json goes first and comes back
    last, listing each file's sha256, so an interrupted run leaves a folder that is never
    taken as current (and that every reader refuses) until a later run completes it.
    """
    fmt = CacheFormat(fmt).value
    check_val_fraction(val_fraction)
    remove_dead_temps(processed_dir)  # what a killed run left: its temp files and PNG folder
    labels_path = raw_dir / config.TEST_LABELS_CSV
    sources = None
    if not force and (raw_dir / config.TRAIN_CSV).is_file():
        sources = fingerprint_sources(raw_dir)
        options = _options(sources, val_fraction, seed, limit_rows)
        if (meta := current_cache(processed_dir, options, fmt)) is not None:
            return PrepareResult(processed_dir, True, meta["counts"], labels_path.is_file())

    with phase("load"):
        train_csv = read_digits_csv(raw_dir / config.TRAIN_CSV, True, limit_rows)
        test_csv = read_digits_csv(raw_dir / config.TEST_CSV, False, limit_rows)
    # Splitting and gathering the rows use one core, so the other is free to hash.
    with phase("work"), ThreadPoolExecutor(max_workers=1) as pool:
        hashing = pool.submit(fingerprint_sources, raw_dir) if sources is None else None
        test_labels = None
        if labels_path.is_file():
            limited = limit_rows is not None
            test_labels = read_test_labels(labels_path, len(test_csv.pixels), limited)
        try:
            train_rows, val_rows = split_train_val(train_csv.labels, val_fraction, seed)
        except PipelineError as exc:
            raise PipelineError(f"{raw_dir / config.TRAIN_CSV}: {exc}") from None
        splits = {
            "train": _to_split(train_csv.pixels, train_csv.labels, train_rows),
            "val": _to_split(train_csv.pixels, train_csv.labels, val_rows),
            "test": _to_split(test_csv.pixels, test_labels, np.arange(len(test_csv.pixels))),
        }
        sources = sources if hashing is None else hashing.result()
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
        meta = _options(sources, val_fraction, seed, limit_rows)
        meta |= {"format": fmt, "counts": counts, "files": files}
        write_json(meta, processed_dir / config.META_JSON)
    return PrepareResult(processed_dir, False, counts, test_labels is not None)
