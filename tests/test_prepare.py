"""Parsing, validation, splitting and caching of the Kaggle CSVs."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from pipeline import config
from pipeline.common.errors import PipelineError
from pipeline.common.exits import Stopped
from pipeline.common.files import file_sha256
from pipeline.data import prepare as prepare_module
from pipeline.data import raw_csv
from pipeline.data.datasets import load_split, processed_fingerprint
from pipeline.data.prepare import prepare, split_train_val
from pipeline.data.raw_csv import read_digits_csv


def test_parses_pixels_row_major_as_uint8(raw_dir):
    frame = pd.read_csv(raw_dir / config.TRAIN_CSV)
    parsed = read_digits_csv(raw_dir / config.TRAIN_CSV, has_labels=True)
    assert parsed.pixels.dtype == np.uint8 and parsed.pixels.shape == (4000, 784)
    assert parsed.labels.dtype == np.int64
    np.testing.assert_array_equal(parsed.labels, frame["label"].to_numpy())
    np.testing.assert_array_equal(parsed.pixels, frame.iloc[:, 1:].to_numpy())
    # pixel{x} sits at row x // 28, column x % 28
    image = parsed.pixels[7].reshape(28, 28)
    assert image[100 // 28, 100 % 28] == frame.loc[7, "pixel100"]
    assert image[500 // 28, 500 % 28] == frame.loc[7, "pixel500"]


def test_prepare_writes_uint8_tensors_and_metadata(raw_dir, tmp_path):
    out = tmp_path / "processed"
    result = prepare(raw_dir, out, seed=0)
    assert result.counts == {"train": 3600, "val": 400, "test": 1000} and result.is_sample
    train, val, test = (load_split(out, s) for s in config.SPLITS)
    assert train.images.dtype == torch.uint8 and train.images.shape == (3600, 1, 28, 28)
    assert train.labels.dtype == torch.int64
    assert test.labels is not None  # the sample ships its test labels
    assert test.ids.tolist() == list(range(1, 1001))
    rows = torch.cat([train.ids, val.ids]).sort().values
    assert rows.tolist() == list(range(1, 4001))  # disjoint and complete
    source = pd.read_csv(raw_dir / config.TRAIN_CSV)
    row = int(val.ids[3]) - 1
    assert val.labels[3] == source.loc[row, "label"]
    assert val.images[3].flatten().tolist() == source.iloc[row, 1:].tolist()
    for split in (train, val):
        assert split.images.is_contiguous()
        expected = source.iloc[split.ids.numpy() - 1, 1:].to_numpy()
        np.testing.assert_array_equal(split.images.reshape(len(split), -1).numpy(), expected)
    test_source = pd.read_csv(raw_dir / config.TEST_CSV).to_numpy()
    np.testing.assert_array_equal(test.images.reshape(len(test), -1).numpy(), test_source)
    meta = json.loads((out / config.META_JSON).read_text())
    assert meta["sources"] == {
        name: file_sha256(raw_dir / name) for name in ("train.csv", "test.csv", "test_labels.csv")
    }
    assert meta["seed"] == 0 and meta["counts"]["val"] == 400


def test_split_is_stratified_and_deterministic():
    labels = np.repeat(np.arange(10), 100)
    a_train, a_val = split_train_val(labels, 0.1, seed=3)
    b_train, b_val = split_train_val(labels, 0.1, seed=3)
    c_train, c_val = split_train_val(labels, 0.1, seed=4)
    np.testing.assert_array_equal(a_val, b_val)
    assert not np.array_equal(a_val, c_val)
    assert np.bincount(labels[a_val]).tolist() == [10] * 10
    assert len(np.intersect1d(a_train, a_val)) == 0 and len(a_train) + len(a_val) == 1000


def test_same_seed_same_split_across_runs(raw_dir, tmp_path):
    prepare(raw_dir, tmp_path / "a", seed=5)
    prepare(raw_dir, tmp_path / "b", seed=5)
    assert torch.equal(
        load_split(tmp_path / "a", "val").ids, load_split(tmp_path / "b", "val").ids
    )


def test_cache_is_reused_then_rebuilt_when_the_csv_changes(raw_dir, tmp_path):
    out = tmp_path / "processed"
    assert not prepare(raw_dir, out).skipped
    before = processed_fingerprint(out)
    assert prepare(raw_dir, out).skipped
    assert not prepare(raw_dir, out, seed=1).skipped  # other split options: rebuild
    frame = pd.read_csv(raw_dir / config.TRAIN_CSV).iloc[:3000]
    frame.to_csv(raw_dir / config.TRAIN_CSV, index=False)
    result = prepare(raw_dir, out, seed=0)
    assert not result.skipped and result.counts["train"] + result.counts["val"] == 3000
    assert processed_fingerprint(out) != before


def test_limit_rows_reads_a_prefix(raw_dir, tmp_path):
    result = prepare(raw_dir, tmp_path / "p", limit_rows=500)
    assert result.counts["train"] + result.counts["val"] == 500


def test_png_export_matches_tensors(sample_png_dir):
    out = sample_png_dir  # the session's prepare(..., fmt="both", limit_rows=800) of the sample
    val = load_split(out, "val")
    for image, label, image_id in zip(val.images, val.labels, val.ids, strict=True):  # all 80
        png = out / "images" / "val" / str(int(label)) / f"{int(image_id)}.png"
        assert np.array_equal(np.array(Image.open(png)), image[0].numpy()), png
    assert len(list((out / "images" / "test").glob("*.png"))) == 800
    assert len(list((out / "images" / "train").rglob("*.png"))) == 720


TRAIN_HEADER = ",".join(config.TRAIN_HEADER)


def _row(label, value=0):
    return ",".join([str(label)] + [str(value)] * 784)


BAD_TRAIN_FILES = {
    "empty": ("", "empty"),
    "header only": (TRAIN_HEADER + "\n", "no data rows"),
    "wrong header": ("a,b,c\n1,2,3\n", "header must be"),
    "test header": (",".join(config.TEST_HEADER) + "\n" + ",".join(["0"] * 784), "test.csv"),
    "too many values": (TRAIN_HEADER + "\n" + _row(1) + ",7\n", "line 2 has 786 values"),
    "too few values": (TRAIN_HEADER + "\n" + _row(1) + "\n" + "3,0,0\n", "line 3 has 3 values"),
    "pixel 256": (TRAIN_HEADER + "\n" + _row(1, 256) + "\n", "256 is not an integer 0-255"),
    "negative": (TRAIN_HEADER + "\n" + _row(1, -1) + "\n", "-1 is not an integer 0-255"),
    "fraction": (TRAIN_HEADER + "\n" + _row(1, 0.5) + "\n", "0.5 is not an integer 0-255"),
    "text": (TRAIN_HEADER + "\n" + _row(1, "x") + "\n", "'x' is not a number"),
    "empty cell": (TRAIN_HEADER + "\n" + _row(1, "") + "\n", "'' is not a number"),
    "label 10": (TRAIN_HEADER + "\n" + _row(4) + "\n" + _row(10) + "\n", "line 3: label 10"),
    "a tail of NULs": (
        (TRAIN_HEADER + "\n" + _row(1) + "\n").encode() + bytes(5000),
        f"not a text CSV file: a NUL byte at offset {len(TRAIN_HEADER) + len(_row(1)) + 2:,} "
        "(line 3)",
    ),
    "a NUL mid-file": (
        (TRAIN_HEADER + "\n" + _row(1) + "\n" + _row(2, "1\0")).encode(),
        "(line 3)",
    ),
    "a 200,000-digit cell": (
        TRAIN_HEADER + "\n" + _row(1) + "\n" + _row(2, "7" * 200_000) + "\n",
        "line 3 is longer than 65,536 bytes",
    ),
    "a 5,000-digit pixel": (
        TRAIN_HEADER + "\n" + _row(1).replace(",0", ",9" + "9" * 4999, 1) + "\n",
        "column pixel0: 999999999999... (5,000 characters) is not an integer 0-255",
    ),
    "a non-UTF-8 header": (
        b"label,pixel0,pix\xe9l1" + TRAIN_HEADER[19:].encode() + b"\n" + _row(1).encode(),
        "the header is not UTF-8 text (byte 0xe9 at offset 16)",
    ),
    "a non-UTF-8 cell": (
        (TRAIN_HEADER + "\n" + _row(1) + "\n").encode() + b"2,0,\xff" + b",0" * 782,
        "line 3, column pixel1: not UTF-8 text",
    ),
    "a control character in the header": (
        "label,\x01pixel0" + TRAIN_HEADER[12:] + "\n" + _row(1) + "\n",
        "not a text CSV file (control character 0x01 in the header)",
    ),
}


@pytest.fixture(params=["pyarrow", "pandas"])
def parser(request, monkeypatch):
    """Run the test with pyarrow's reader first (as installed), then with pandas' alone."""
    if request.param == "pyarrow":
        pytest.importorskip("pyarrow")
    else:
        monkeypatch.setattr(raw_csv, "_read_with_arrow", lambda path, header: None)
    return request.param


def _write(path, content):
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)


@pytest.mark.parametrize("case", BAD_TRAIN_FILES)
def test_malformed_train_csv_is_refused_with_file_and_problem(case, parser, raw_dir, tmp_path):
    content, problem = BAD_TRAIN_FILES[case]
    _write(raw_dir / config.TRAIN_CSV, content)
    out = tmp_path / "processed"
    with pytest.raises(PipelineError) as error:
        prepare(raw_dir, out)
    message = str(error.value)
    assert str(raw_dir / config.TRAIN_CSV) in message and problem in message
    assert "\n" not in message
    assert not out.exists() or not any(out.iterdir())  # nothing written


CELLS = ["0x1", "0XFF", "+5", " 5", "05", "1.0", "1e2", "0b1", "\u0663", "\uff15", "1_0", '"5"']
CELLS += ["-0", "", "256", "nan", "1,2"]


@pytest.mark.parametrize("cell", CELLS)
def test_pyarrow_and_pandas_read_every_cell_alike(cell, tmp_path, monkeypatch):
    """The same pixels or the same error, whichever parser reads the file (pyarrow alone would
    take `0x1` for 1, where pandas refuses it)."""
    pytest.importorskip("pyarrow")
    path = tmp_path / config.TRAIN_CSV
    path.write_text(f"{TRAIN_HEADER}\n{_row(1)}\n{_row(2).replace(',0', ',' + cell, 1)}\n")
    outcomes = []
    for _ in ("pyarrow", "pandas"):
        try:
            outcomes.append(read_digits_csv(path, has_labels=True).pixels.tolist())
        except PipelineError as exc:
            outcomes.append(str(exc))
        monkeypatch.setattr(raw_csv, "_read_with_arrow", lambda path, header: None)
    assert outcomes[0] == outcomes[1]


@pytest.mark.parametrize("bad", ["300", "0x1", "1e3"])
def test_a_bad_cell_on_the_last_line_is_found_and_named(bad, parser, raw_dir, tmp_path):
    """The first bad line is found past 4,000 good ones (read by a fast path), exactly."""
    path = raw_dir / config.TRAIN_CSV
    text = path.read_text().rstrip("\n")
    path.write_text(text[: text.rindex(",") + 1] + bad + "\n")
    with pytest.raises(PipelineError) as error:
        prepare(raw_dir, tmp_path / "p")
    assert str(error.value).startswith(f"{path}: line 4001, column pixel783: ")
    assert bad in str(error.value) and str(error.value).endswith(("0-255", "not a number"))


def test_sizes_and_lines_are_bounded_before_anything_is_parsed(raw_dir, tmp_path, monkeypatch):
    """A file past the size or line bound is refused before it is hashed or parsed."""

    def never(*args):
        raise AssertionError("parsed or hashed a file past the bounds")

    for name in ("_read_with_arrow", "_read_with_pandas"):
        monkeypatch.setattr(raw_csv, name, never)
    monkeypatch.setattr(prepare_module, "fingerprint_sources", never)
    size = (raw_dir / config.TRAIN_CSV).stat().st_size
    monkeypatch.setattr(raw_csv, "MAX_CSV_BYTES", size - 1)
    with pytest.raises(PipelineError) as error:
        prepare(raw_dir, tmp_path / "p")
    assert str(error.value) == (
        f"{raw_dir / config.TRAIN_CSV}: {size:,} bytes, more than the {size - 1:,} allowed "
        "(Kaggle's train.csv is 77 MB): not one of the competition's files"
    )
    monkeypatch.setattr(raw_csv, "MAX_CSV_BYTES", size)
    monkeypatch.setattr(raw_csv, "MAX_ROWS", 3999)
    with pytest.raises(PipelineError, match=r"train.csv: more than 4,000 lines \(Kaggle's"):
        prepare(raw_dir, tmp_path / "p", force=True)
    assert not (tmp_path / "p").exists()


def _cut_test_csv(raw_dir, rows):
    lines = (raw_dir / config.TEST_CSV).read_text().splitlines(keepends=True)
    (raw_dir / config.TEST_CSV).write_text("".join(lines[: rows + 1]))


@pytest.mark.parametrize("rows", [999, 1001])
def test_a_test_set_other_than_sample_submission_lists_is_refused(rows, raw_dir, tmp_path):
    if rows > 1000:  # one digit too many: the first one again
        text = (raw_dir / config.TEST_CSV).read_text()
        (raw_dir / config.TEST_CSV).write_text(text + text.splitlines(keepends=True)[1])
    else:
        _cut_test_csv(raw_dir, rows)
    with pytest.raises(PipelineError) as error:
        prepare(raw_dir, tmp_path / "p")
    assert str(error.value) == (
        f"{raw_dir / config.TEST_CSV}: has {rows:,} digits, sample_submission.csv lists 1,000: "
        "the test set is incomplete or not this competition's; download it again"
    )
    assert not (tmp_path / "p").exists()
    assert prepare(raw_dir, tmp_path / "p", limit_rows=500).counts["test"] == 500  # a prefix


def test_without_sample_submission_the_test_set_is_taken_as_it_is(raw_dir, tmp_path):
    """The check needs sample_submission.csv (and the sample's answers, which list the same)."""
    _cut_test_csv(raw_dir, 999)
    (raw_dir / config.SAMPLE_SUBMISSION_CSV).unlink()
    (raw_dir / config.TEST_LABELS_CSV).unlink()
    result = prepare(raw_dir, tmp_path / "p")
    assert result.counts["test"] == 999 and not result.is_sample


@pytest.mark.parametrize(
    "text, problem",
    [
        ("ImageId,Label\n1,0\n3,0\n", "must list ImageId 1..N in order"),
        ("ImageId,Label\n1,0\n1,0\n", "must list ImageId 1..N in order"),
        ("ImageId,Label\n1,0,4\n", "line 2 has 3 fields, expected 2"),
        ("ImageId,Label\n1,x\n", "line 2: '1,x' is not two integers written in ASCII digits"),
        ("ImageId,Label\n1," + "9" * 5000 + "\n", "line 2: '1,99999"),
        ("ImageId,Label\n1,\uff10\n", "is not two integers written in ASCII digits"),
        (b"ImageId,Label\n1,0\n2,\xff\n", "line 3: '2,\ufffd' is not two integers"),
        ("ImageId,Label\n1,12\n", "labels must be digits 0-9"),
        ("Id,Label\n1,0\n", "header must be ImageId,Label (2 columns)"),
        ("ImageId,Label\n1,0\n\0\0\0", "a NUL byte at offset 18 (line 3)"),
    ],
)
def test_a_foreign_sample_submission_is_one_line(text, problem, raw_dir, tmp_path):
    _write(raw_dir / config.SAMPLE_SUBMISSION_CSV, text)
    with pytest.raises(PipelineError) as error:
        prepare(raw_dir, tmp_path / "p")
    assert str(error.value).startswith(f"{raw_dir / config.SAMPLE_SUBMISSION_CSV}: ")
    assert problem in str(error.value) and "\n" not in str(error.value)


def test_binary_and_missing_files_are_refused(raw_dir, tmp_path):
    (raw_dir / config.TEST_CSV).write_bytes(bytes(range(256)) * 40)
    with pytest.raises(PipelineError, match="test.csv: not a text CSV"):
        prepare(raw_dir, tmp_path / "p")
    (raw_dir / config.TEST_CSV).unlink()
    with pytest.raises(PipelineError, match="test.csv: no such file"):
        prepare(raw_dir, tmp_path / "p")


def test_a_bad_input_leaves_the_previous_cache_untouched(raw_dir, tmp_path):
    out = tmp_path / "processed"
    prepare(raw_dir, out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    (raw_dir / config.TRAIN_CSV).write_text(TRAIN_HEADER + "\n" + _row(1, 300) + "\n")
    with pytest.raises(PipelineError):
        prepare(raw_dir, out, force=True)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def _replace_split(processed_dir, name, arrays):
    """Swap a split file and record its hash in meta.json, as a tampering user could."""
    path = config.split_path(processed_dir, name)
    with open(path, "wb") as handle:
        if isinstance(arrays, dict):
            np.savez(handle, **arrays)
        else:
            handle.write(arrays)
    meta_path = processed_dir / config.META_JSON
    meta = json.loads(meta_path.read_text())
    meta["files"][path.name] = file_sha256(path)
    meta_path.write_text(json.dumps(meta))


def test_a_changed_split_file_is_refused_against_meta(processed_dir):
    np.savez(config.split_path(processed_dir, "val"), images=np.zeros((3, 784), np.uint8))
    with pytest.raises(PipelineError, match="val.npz: does not match meta.json"):
        load_split(processed_dir, "val")


IMAGES = np.zeros((3, 1, 28, 28), np.uint8)
IDS = np.arange(3)


@pytest.mark.parametrize(
    "change",
    [
        {"images": np.zeros((3, 784), np.uint8), "ids": IDS},
        {"images": np.zeros((3, 1, 28, 28)), "ids": IDS},
        {"images": IMAGES, "ids": IDS, "labels": np.array([1, 2, 10])},
        {"images": IMAGES, "ids": IDS, "labels": np.array([1.0, 2.0, 3.0])},
        {"images": IMAGES, "ids": IDS[:2]},
        {"images": IMAGES, "ids": IDS, "labels": np.array([1, 2, None])},
        {"images": IMAGES, "ids": IDS, "extra": IDS},
        b"PK\x03\x04 not really a zip",
        bytes(64),
    ],
    ids=[
        "flat images",
        "float images",
        "label 10",
        "float labels",
        "short ids",
        "object labels",
        "an extra array",
        "a broken zip",
        "raw bytes",
    ],
)
def test_a_foreign_split_is_refused_even_when_meta_lists_it(change, processed_dir):
    _replace_split(processed_dir, "val", change)
    with pytest.raises(PipelineError, match="val.npz: not a split written by"):
        load_split(processed_dir, "val")


def test_prepare_writes_numpy_splits_without_importing_torch(raw_dir, tmp_path):
    """The cache is plain .npz: `prepare` never pays for torch's import (1.5 s a process)."""
    out = tmp_path / "processed"
    code = (
        "import sys; from pathlib import Path; from pipeline.data.prepare import prepare; "
        f"prepare(Path({str(raw_dir)!r}), Path({str(out)!r})); "
        "assert 'torch' not in sys.modules, 'prepare imported torch'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    with np.load(config.split_path(out, "train"), allow_pickle=False) as archive:
        assert sorted(archive.files) == ["ids", "images", "labels"]
        assert archive["images"].dtype == np.uint8 and archive["images"].shape[1:] == (1, 28, 28)
    with np.load(config.split_path(out, "test"), allow_pickle=False) as archive:
        assert sorted(archive.files) == ["ids", "images", "labels"]  # the sample's test labels


def _disjoint_or_refused(processed_dir):
    """Either the splits load and share no row, or loading refuses in one line."""
    try:
        train, val = load_split(processed_dir, "train"), load_split(processed_dir, "val")
    except PipelineError:
        return "refused"
    assert not set(train.ids.tolist()) & set(val.ids.tolist()), "validation rows leaked"
    return "disjoint"


ROWS = 400  # per CSV: every digit still on both sides of the split, few PNGs to write


@pytest.mark.parametrize(
    "interrupt", [KeyboardInterrupt(), Stopped(signal.SIGTERM)], ids=["sigint", "sigterm"]
)
def test_a_prepare_stopped_while_writing_pngs_leaves_nothing_taken_as_current(
    interrupt, raw_dir, tmp_path, monkeypatch
):
    """As below, with the stop injected half-way through the PNGs instead of a timed signal
    (Stopped(SIGTERM) is what the CLI's SIGTERM handler raises), on the first 400 rows."""
    out = tmp_path / "processed"
    prepare(raw_dir, out, fmt="both", seed=0, limit_rows=ROWS)
    write_pngs = prepare_module._write_pngs

    def stopped_half_way(splits, target):
        write_pngs({"val": splits["val"]}, target)
        raise interrupt

    monkeypatch.setattr(prepare_module, "_write_pngs", stopped_half_way)
    with pytest.raises(type(interrupt)):
        prepare(raw_dir, out, fmt="both", seed=1, limit_rows=ROWS)
    monkeypatch.undo()
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")], "temp files left"
    assert _disjoint_or_refused(out) == "refused"  # meta.json went first: nothing current
    again = prepare(raw_dir, out, fmt="both", seed=0, limit_rows=ROWS)
    assert not again.skipped
    assert _disjoint_or_refused(out) == "disjoint"


@pytest.mark.slow  # real signals to a real process: the injected test above is the fast twin
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_prepare_leaves_nothing_taken_as_current(
    signum, raw_dir, tmp_path, sigint_as_at_a_terminal
):
    """prepare --seed 1 over a seed-0 cache, stopped while it writes its PNGs: the tensors are
    already seed 1's, so the folder must never pass for the seed-0 cache afterwards."""
    out = tmp_path / "processed"
    prepare(raw_dir, out, fmt="both", seed=0)
    command = [sys.executable, "-m", "pipeline", "prepare", "--raw-dir", str(raw_dir)]
    command += ["--processed-dir", str(out), "--format", "both", "--seed", "1"]
    proc = subprocess.Popen(
        command, stderr=subprocess.PIPE, text=True, preexec_fn=sigint_as_at_a_terminal
    )
    deadline = time.monotonic() + 60
    while not list(out.glob(".images-*")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, "prepare ended before it was interrupted"
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode in (130, 143), stderr
    assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")], "temp files left"
    assert _disjoint_or_refused(out) == "refused"  # meta.json went first: nothing current
    again = prepare(raw_dir, out, fmt="both", seed=0)
    assert not again.skipped
    assert _disjoint_or_refused(out) == "disjoint"


def test_a_truncated_split_file_is_rebuilt_not_called_up_to_date(raw_dir, processed_dir):
    out = processed_dir  # prepared from these very CSVs
    assert prepare(raw_dir, out).skipped
    train_file = config.split_path(out, "train")
    train_file.write_bytes(train_file.read_bytes()[:1000])
    with pytest.raises(PipelineError, match="train.npz: does not match meta.json"):
        load_split(out, "train")
    assert not prepare(raw_dir, out).skipped
    assert len(load_split(out, "train")) == 3600
    assert prepare(raw_dir, out).skipped


@pytest.mark.parametrize(
    "meta", ["[1, 2]", "{}", '{"version": 2}', "not json"], ids=["list", "empty", "keys", "text"]
)
def test_a_damaged_meta_json_is_one_line_and_rebuilt(meta, raw_dir, processed_dir):
    out = processed_dir  # prepared from these very CSVs
    assert prepare(raw_dir, out).skipped
    (out / config.META_JSON).write_text(meta)
    with pytest.raises(PipelineError, match="meta.json"):
        load_split(out, "val")
    assert not prepare(raw_dir, out).skipped


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_val_fraction_must_leave_digits_on_both_sides(fraction, raw_dir, tmp_path):
    with pytest.raises(PipelineError) as error:
        prepare(raw_dir, tmp_path / "p", val_fraction=fraction)
    assert str(error.value).startswith(f"--val-fraction {fraction}: must be more than 0")
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf", "1e400"])
@pytest.mark.parametrize("column", ["label", "pixel5"])
def test_non_finite_cells_are_one_line(bad, column, raw_dir, tmp_path):
    cells = ["3"] + ["0"] * 784
    cells[config.TRAIN_HEADER.index(column)] = bad
    (raw_dir / config.TRAIN_CSV).write_text(TRAIN_HEADER + "\n" + ",".join(cells) + "\n")
    with pytest.raises(PipelineError, match=f"line 2, column {column}: {bad} is not"):
        prepare(raw_dir, tmp_path / "p")


def test_pyarrow_and_pandas_parse_the_same_pixels(raw_dir):
    """The fast parse (pyarrow) and the one that diagnoses (pandas' C parser) agree, to the
    layout (column-major, as `_to_split` expects)."""
    pytest.importorskip("pyarrow")
    from pipeline.data.raw_csv import _read_with_arrow, _read_with_pandas

    for name, header in ((config.TRAIN_CSV, config.TRAIN_HEADER), (config.TEST_CSV, None)):
        header = header or config.TEST_HEADER
        fast = _read_with_arrow(raw_dir / name, header)
        exact = _read_with_pandas(raw_dir / name, header, None)
        assert fast is not None and fast.dtype == exact.dtype == np.uint8
        np.testing.assert_array_equal(fast, exact)
        assert fast.flags.f_contiguous
