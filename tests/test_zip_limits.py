"""Untrusted zips: the member Kaggle ships at the top level is the one taken, copies elsewhere
are noted or refused, and no member may inflate past the size and ratio bounds."""

import os
import re
import signal
import stat
import struct
import zipfile
from contextlib import nullcontext
from pathlib import Path

import pytest

from pipeline import config
from pipeline.common.choices import RawSource
from pipeline.common.errors import PipelineError
from pipeline.common.exits import Stopped
from pipeline.data import download, zip_members
from pipeline.data.download import extract_competition_zip


def _csvs(raw_dir, rows=40):
    """The sample's three CSVs cut to `rows` rows, as name -> text."""
    texts = {}
    for name in config.COMPETITION_FILES:
        lines = (raw_dir / name).read_text().splitlines(keepends=True)
        texts[name] = "".join(lines[: rows + 1])
    return texts


def _zip(path, members, compression=zipfile.ZIP_DEFLATED):
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, text in members:
            archive.writestr(name, text)
    return path


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _set_declared_size(zip_path, name, size):
    """Make the zip's central directory claim `size` inflated bytes for member `name`."""
    data = bytearray(zip_path.read_bytes())
    start = data.find(b"PK\x01\x02")
    while start != -1:
        (name_len,) = struct.unpack_from("<H", data, start + 28)
        if data[start + 46 : start + 46 + name_len].decode() == name:
            struct.pack_into("<I", data, start + 24, size)
        start = data.find(b"PK\x01\x02", start + 4)
    zip_path.write_bytes(data)


def test_a_copy_outside_the_top_level_is_ignored_and_said(raw_dir, tmp_path):
    texts = _csvs(raw_dir)
    junk = "label,pixel0\n9,9\n"  # what macOS or an old folder might add
    archive = _zip(
        tmp_path / "digit-recognizer.zip",
        [*texts.items(), ("__MACOSX/train.csv", junk)],
    )
    result = download.download(RawSource.zip, raw_dir, zip_path=archive)
    assert (raw_dir / config.TRAIN_CSV).read_text() == texts[config.TRAIN_CSV]
    assert "took the top-level train.csv, ignored __MACOSX/train.csv" in result.detail


def test_a_zip_of_one_folder_still_works(raw_dir, tmp_path):
    texts = _csvs(raw_dir)
    archive = _zip(tmp_path / "z.zip", [(f"digits/{n}", t) for n, t in texts.items()])
    extract_competition_zip(archive, raw_dir)
    assert (raw_dir / config.TEST_CSV).read_text() == texts[config.TEST_CSV]


@pytest.mark.parametrize(
    "extra_names, problem",
    [
        (
            ["a/train.csv", "b/train.csv"],
            "holds 2 files named train.csv (a/train.csv, b/train.csv)",
        ),
        (["train.csv", "train.csv"], "holds 2 files named train.csv (train.csv, train.csv)"),
    ],
    ids=["two folders", "two top-level entries"],
)
def test_ambiguous_copies_are_refused_in_one_line(extra_names, problem, raw_dir, tmp_path):
    texts = _csvs(raw_dir)
    members = [(n, t) for n, t in texts.items() if n != config.TRAIN_CSV]
    members += [(name, texts[config.TRAIN_CSV]) for name in extra_names]
    duplicate = extra_names[0] == extra_names[1]
    with pytest.warns(UserWarning, match="Duplicate") if duplicate else nullcontext():
        archive = _zip(tmp_path / "z.zip", members)
    before = _snapshot(raw_dir)
    with pytest.raises(PipelineError) as caught:
        download.download(RawSource.zip, raw_dir, zip_path=archive)
    assert str(caught.value).startswith(f"{archive}: {problem}")
    assert "\n" not in str(caught.value)
    assert _snapshot(raw_dir) == before


def test_a_zip_bomb_is_refused_from_its_directory_before_inflating(raw_dir, tmp_path):
    texts = _csvs(raw_dir)
    bomb = config.TRAIN_CSV, ",".join(config.TRAIN_HEADER) + "\n" + "0," * 3_000_000
    archive = _zip(tmp_path / "bomb.zip", [bomb, *list(texts.items())[1:]])
    with zipfile.ZipFile(archive) as opened:
        info = opened.getinfo(config.TRAIN_CSV)
    assert info.file_size > zip_members.MAX_RATIO * info.compress_size  # deflate packs it 1000:1
    before = _snapshot(raw_dir)
    with pytest.raises(
        PipelineError, match=rf"train.csv inflates [0-9,]+ times .* {zip_members.MAX_RATIO}x"
    ):
        download.download(RawSource.zip, raw_dir, zip_path=archive)
    assert _snapshot(raw_dir) == before


def test_a_member_declaring_more_than_the_limit_is_refused(raw_dir, tmp_path):
    archive = _zip(tmp_path / "big.zip", _csvs(raw_dir).items(), zipfile.ZIP_STORED)
    _set_declared_size(archive, config.TEST_CSV, 300_000_000)
    before = _snapshot(raw_dir)
    expected = (
        f"test.csv inflates to 300,000,000 bytes, more than the {zip_members.MAX_CSV_BYTES:,}"
    )
    with pytest.raises(PipelineError, match=re.escape(expected)):
        download.download(RawSource.zip, raw_dir, zip_path=archive)
    assert _snapshot(raw_dir) == before


def test_a_member_lying_about_its_size_is_one_line_and_writes_nothing(raw_dir, tmp_path):
    archive = _zip(tmp_path / "liar.zip", _csvs(raw_dir, rows=100).items())
    _set_declared_size(archive, config.TRAIN_CSV, 1000)  # really about 160 KB
    before = _snapshot(raw_dir)
    with pytest.raises(PipelineError, match="train.csv is damaged|train.csv inflates past"):
        download.download(RawSource.zip, raw_dir, zip_path=archive)
    assert _snapshot(raw_dir) == before


def test_the_limit_holds_while_inflating_whatever_the_directory_said(
    raw_dir, tmp_path, monkeypatch
):
    archive = _zip(tmp_path / "z.zip", _csvs(raw_dir, rows=100).items())
    monkeypatch.setattr(zip_members, "MAX_CSV_BYTES", 50_000)
    target = tmp_path / "out.csv"
    with zipfile.ZipFile(archive) as opened:
        info = opened.getinfo(config.TRAIN_CSV)
        assert info.file_size > 50_000
        with pytest.raises(PipelineError, match="train.csv inflates past 50,000 bytes"):
            zip_members.copy_member(opened, info, archive, target)
    assert target.stat().st_size <= 50_000


def test_kaggles_real_zip_is_within_the_bounds_with_room(kaggle_zip):
    with zipfile.ZipFile(kaggle_zip) as archive:
        members, notes = zip_members.pick_members(archive, kaggle_zip)
    assert set(members) == set(config.COMPETITION_FILES) and notes == []
    for info in members.values():
        zip_members.check_member_size(info, kaggle_zip)
        assert info.file_size * 2 < zip_members.MAX_CSV_BYTES
        assert info.file_size < zip_members.MAX_RATIO / 10 * info.compress_size


@pytest.fixture
def kaggle_like_raw(raw_dir, tmp_path):
    """raw_dir holding Kaggle-format CSVs from a zip (no sample marker), and that zip's texts."""
    texts = _csvs(raw_dir)
    extract_competition_zip(_zip(tmp_path / "good.zip", texts.items()), raw_dir)
    assert not (raw_dir / config.TEST_LABELS_CSV).exists()
    return raw_dir, texts


@pytest.mark.parametrize(
    "mode, kind",
    [
        (stat.S_IFLNK | 0o777, "a symbolic link"),
        (stat.S_IFDIR | 0o755, "a folder"),
        (stat.S_IFIFO | 0o644, "a special file"),
    ],
    ids=["symlink", "folder", "fifo"],
)
def test_a_member_that_is_not_a_plain_file_is_refused(mode, kind, kaggle_like_raw, tmp_path):
    """A symbolic link entry holds its target's path (`/etc/passwd`): never the CSV."""
    raw_dir, texts = kaggle_like_raw
    link = zipfile.ZipInfo(config.TRAIN_CSV)
    link.create_system, link.external_attr = 3, mode << 16  # 3: Unix, the mode's high half
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as opened:
        opened.writestr(link, "/etc/passwd")
        for name in config.COMPETITION_FILES[1:]:
            opened.writestr(name, texts[name])
    before = _snapshot(raw_dir)
    with pytest.raises(PipelineError) as caught:
        download.download(RawSource.zip, raw_dir, zip_path=archive)
    assert str(caught.value) == (
        f"{archive}: train.csv is {kind}, not a plain file: not Kaggle's zip"
    )
    assert _snapshot(raw_dir) == before


def _with_nul_tail(text):
    return text + "\0" * 1000


@pytest.mark.parametrize(
    "name, change, problem",
    [
        (config.TRAIN_CSV, lambda text: "root:x:0:0:root:/root:/bin/bash\n", "header must be"),
        (config.TRAIN_CSV, _with_nul_tail, "not a text CSV file: a NUL byte"),
        (config.TEST_CSV, lambda text: text[: text.rindex("\n", 0, -1) + 1], "has 39 digits"),
        (config.SAMPLE_SUBMISSION_CSV, lambda text: text.replace("\n2,", "\n3,"), "ImageId 1..N"),
        (config.TEST_CSV, lambda text: text.replace(",0,", ",300,", 1), "not an integer 0-255"),
    ],
    ids=["foreign train", "nul tail", "short test", "wrong ids", "pixel 300"],
)
def test_csvs_that_are_not_kaggles_never_replace_the_raw_ones(
    name, change, problem, kaggle_like_raw, tmp_path
):
    """Each CSV is checked as `prepare` will read it, in the staging folder, before any of the
    three replaces raw_dir's: the error names the zip and the member."""
    raw_dir, texts = kaggle_like_raw
    archive = _zip(tmp_path / "bad.zip", (texts | {name: change(texts[name])}).items())
    before = _snapshot(raw_dir)
    with pytest.raises(PipelineError) as caught:
        download.download(RawSource.zip, raw_dir, zip_path=archive)
    message = str(caught.value)
    assert message.startswith(f"{archive}: {name}: ") and problem in message, message
    assert "\n" not in message and ".download-" not in message
    assert _snapshot(raw_dir) == before


def test_a_signal_while_the_csvs_move_in_leaves_all_three_new(raw_dir, tmp_path, monkeypatch):
    """SIGTERM between two renames waits for the last one: all old or all new, never mixed."""
    texts = _csvs(raw_dir, rows=30)
    archive = _zip(tmp_path / "z.zip", texts.items())
    rename = Path.replace

    def signalled_first(self, target):
        if target.name == config.TRAIN_CSV:  # the first of the three
            os.kill(os.getpid(), signal.SIGTERM)
        return rename(self, target)

    def stop(signum, frame):
        raise Stopped(signum)

    monkeypatch.setattr(Path, "replace", signalled_first)
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        with pytest.raises(Stopped):
            download.download(RawSource.zip, raw_dir, zip_path=archive)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert {n: (raw_dir / n).read_text() for n in config.COMPETITION_FILES} == texts
    assert not (raw_dir / config.TEST_LABELS_CSV).exists()
