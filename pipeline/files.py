"""Atomic writes and fingerprints shared by every stage that produces files."""

import csv
import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; rename it over `path` only if the block succeeds.

    A crash, kill or exception leaves either the old file or the new one, never half a file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as written:
            os.fsync(written.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def check_writable(path: Path, option: str = "--out") -> None:
    """Fail before any work if `path` cannot be written (a folder, a file in the way, a
    read-only place), without creating anything."""
    if path.is_dir():
        raise PipelineError(f"{option} {path}: is a folder; give a file name")
    existing = path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise PipelineError(f"{option} {path}: cannot write there ({existing} is a file)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PipelineError(f"{option} {path}: cannot write there ({existing} is read-only)")


def write_json(data: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_csv_rows(rows: list[dict[str, float]], path: Path) -> None:
    """A CSV of numbers with the first row's keys as header (training metrics)."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def file_sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
