"""Kaggle's CSVs read as untrusted input: train.csv, test.csv and the ImageId,Label files.
Before any parser sees a file, its size, line count and line length are bounded and its bytes
scanned for NULs (what a crash leaves), so a damaged or foreign file costs a bounded second."""

import csv
import io
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import config
from pipeline.common.errors import PipelineError

# Kaggle's train.csv is 77 MB of 42,000 digits: room of 2.6x, a parse within about 1 GB.
MAX_CSV_BYTES = 200_000_000
MAX_ROWS = 100_000
MAX_LINE_BYTES = 65_536  # Kaggle's longest line is train.csv's header: 7 KB
SHOWN = 20  # characters of a bad cell quoted in a message


@dataclass(frozen=True)
class ParsedCsv:
    pixels: np.ndarray  # uint8 [N, 784], column-major as pandas builds it; read-only
    labels: np.ndarray | None  # int64 [N]


@dataclass(frozen=True)
class RawData:
    train: ParsedCsv
    test: ParsedCsv
    test_labels: np.ndarray | None  # the offline sample's answers for test.csv


def check_size(path: Path) -> None:
    if not path.is_file():
        raise PipelineError(f"{path}: no such file (run `pipeline download` first)")
    size = path.stat().st_size
    if size > MAX_CSV_BYTES:
        raise PipelineError(
            f"{path}: {size:,} bytes, more than the {MAX_CSV_BYTES:,} allowed (Kaggle's "
            "train.csv is 77 MB): not one of the competition's files"
        )


def check_bounds(path: Path) -> bool:
    """Refuse a file past the size, line count or line length bound, or holding a NUL byte;
    returns whether all rows are ASCII digits and commas, for pyarrow (it reads `0x1f` as 31)."""
    check_size(path)
    offset, plain = 0, True
    with open(path, "rb") as handle:
        for number, line in enumerate(iter(lambda: handle.readline(MAX_LINE_BYTES + 1), b""), 1):
            if (nul := line.find(b"\0")) >= 0:
                raise PipelineError(
                    f"{path}: not a text CSV file: a NUL byte at offset {offset + nul:,} (line "
                    f"{number:,}); a file cut short by a crash ends in NULs, download it again"
                )
            if len(line) > MAX_LINE_BYTES:
                raise PipelineError(
                    f"{path}: line {number:,} is longer than {MAX_LINE_BYTES:,} bytes (Kaggle's "
                    "longest line, train.csv's header, is 7 KB): not a row of pixels"
                )
            if number > MAX_ROWS + 1:
                raise PipelineError(
                    f"{path}: more than {MAX_ROWS + 1:,} lines (Kaggle's train.csv has "
                    "42,001): not one of the competition's files"
                )
            plain = plain and (number == 1 or not line.translate(None, b"0123456789,\r\n"))
            offset += len(line)
    return plain


def _check_header(path: Path, header: list[str]) -> None:
    with open(path, "rb") as handle:
        first_line = handle.readline(1 << 16)
    if not first_line.strip():
        raise PipelineError(f"{path}: not a readable CSV file (it is empty)")
    try:
        text = first_line.decode().removeprefix("\ufeff").strip()
    except UnicodeDecodeError as exc:
        raise PipelineError(
            f"{path}: the header is not UTF-8 text (byte 0x{first_line[exc.start]:02x} at "
            f"offset {exc.start:,})"
        ) from None
    control = next((i for i, char in enumerate(text) if ord(char) < 32 and char != "\t"), None)
    if control is not None:
        raise PipelineError(
            f"{path}: not a text CSV file (control character 0x{ord(text[control]):02x} in "
            "the header)"
        )
    found = text.split(",")
    if found != header:
        expected = ",".join(header[:2]) + (f",...,{header[-1]}" if len(header) > 2 else "")
        hint = ""
        if found == config.TEST_HEADER:
            hint = " (this looks like test.csv: it has no label column)"
        elif found == config.TRAIN_HEADER:
            hint = " (this looks like train.csv: it has a label column)"
        raise PipelineError(
            f"{path}: header must be {expected} ({len(header)} columns), found "
            f"{','.join(found[:3])[:40]}... ({len(found)} columns){hint}"
        )


def _shown(cell: str) -> str:
    cell = cell.strip()
    return cell if len(cell) <= SHOWN else f"{cell[:12]}... ({len(cell):,} characters)"


def _diagnose(path: Path, header: list[str]) -> str:
    """The first bad line, once the fast parse failed (a regex passes the plain lines fast)."""
    pixel = "(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
    first = "[0-9]" if header[0] == "label" else pixel
    plain = re.compile(f"{first}(?:,{pixel}){{{len(header) - 1}}}\r?\n?")
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as handle:
        next(handle, None)
        for number, line in enumerate(handle, 2):
            if plain.fullmatch(line) or not line.strip():
                continue
            if problem := _bad_row(next(csv.reader([line])), header):
                return f"line {number}{problem}"
    return "could not be parsed as integer pixels"


def _bad_row(row: list[str], header: list[str]) -> str | None:
    if len(row) != len(header):
        return f" has {len(row)} values, expected {len(header)}"
    for name, cell in zip(header, row, strict=True):
        if "\ufffd" in cell:
            return f", column {name}: not UTF-8 text"
        try:
            value = float(cell)
        except ValueError:
            return f", column {name}: {_shown(cell)!r} is not a number"
        allowed, top = ("a digit 0-9", 9) if name == "label" else ("an integer 0-255", 255)
        if not math.isfinite(value) or value != int(value) or not 0 <= value <= top:
            return f", column {name}: {_shown(cell)} is not {allowed}"
    return None


def read_digits_csv(path: Path, has_labels: bool, limit_rows: int | None = None) -> ParsedCsv:
    """A Kaggle train/test CSV as uint8 pixels (and labels), or a one-line error. pyarrow, if
    installed, reads a file of only digits and commas; pandas decides the rest and `limit_rows`."""
    plain = check_bounds(path)
    header = config.TRAIN_HEADER if has_labels else config.TEST_HEADER
    _check_header(path, header)
    table = _read_with_arrow(path, header) if plain and limit_rows is None else None
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
    """The file as uint8 [N, columns] by pyarrow (on every core); None for pandas to decide."""
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
    for index, column in enumerate(parsed.columns):  # buffers as is: `to_numpy` imports pandas
        parts = [np.frombuffer(c.buffers()[1], np.uint8, len(c), c.offset) for c in column.chunks]
        table[:, index] = np.concatenate(parts)
    return table


def _read_with_pandas(path: Path, header: list[str], limit_rows: int | None) -> np.ndarray:
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


def read_id_labels(path: Path) -> np.ndarray:
    """An ImageId,Label file as int64 [N, 2], as strictly as Kaggle reads one: the exact header,
    two fields a line, ASCII digits only (int() also takes "1_0", " 7", "٣", "３")."""
    check_bounds(path)
    _check_header(path, config.SUBMISSION_HEADER)
    text = path.read_text(encoding="utf-8", errors="replace")  # U+FFFD is no digit: refused
    reader = csv.reader(io.StringIO(text, newline=""))
    next(reader)
    rows = []
    for row in reader:
        where = f"{path}: line {reader.line_num}"
        if len(row) != 2:
            raise PipelineError(f"{where} has {len(row)} fields, expected 2")
        if not all(cell.isascii() and cell.isdigit() and len(cell) <= 18 for cell in row):
            raise PipelineError(
                f"{where}: {','.join(row)[:30]!r} is not two integers written in ASCII digits 0-9"
            )
        rows.append(row)
    return np.array(rows, dtype=str).astype(np.int64).reshape(-1, 2)


def read_raw(raw_dir: Path, limit_rows: int | None = None) -> RawData:
    """train.csv and test.csv parsed; test.csv's length checked against the files listing it."""
    train = read_digits_csv(raw_dir / config.TRAIN_CSV, True, limit_rows)
    test_path = raw_dir / config.TEST_CSV
    test = read_digits_csv(test_path, False, limit_rows)
    n_test, test_labels = len(test.pixels), None
    for path in (raw_dir / config.SAMPLE_SUBMISSION_CSV, raw_dir / config.TEST_LABELS_CSV):
        if not path.is_file():
            continue
        table = read_id_labels(path)
        if not np.array_equal(table[:, 0], np.arange(1, len(table) + 1)):
            raise PipelineError(f"{path}: must list ImageId 1..N in order, one row each")
        labels = table[:, 1]
        if not ((labels >= 0) & (labels <= 9)).all():
            raise PipelineError(f"{path}: labels must be digits 0-9")
        if len(labels) < n_test or (len(labels) != n_test and limit_rows is None):
            raise PipelineError(
                f"{test_path}: has {n_test:,} digits, {path.name} lists {len(labels):,}: the "
                "test set is incomplete or not this competition's; download it again"
            )
        test_labels = labels[:n_test] if path.name == config.TEST_LABELS_CSV else None
    return RawData(train, test, test_labels)
