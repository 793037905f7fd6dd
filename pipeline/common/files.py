"""Atomic writes, fingerprints, checkpoint globs (torch-free), run locks, dead runs' temp files.

Every temporary file or folder beside an output carries the writing process's id in its name,
so a later run tells a SIGKILLed run's leftovers (removed) from a live run's work (left alone).
"""

import contextvars
import csv
import glob
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from pipeline import config
from pipeline.common.errors import PipelineError
from pipeline.common.exits import raise_if_stopped

# `.<name>.<pid>.tmp` (atomic_path) and `.<prefix>-<pid>-<random>` (temp_dir): nothing else.
TEMP_FILE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>[0-9]+)\.tmp$")
TEMP_DIR = re.compile(r"^\.(?P<prefix>[a-z]+)-(?P<pid>[0-9]+)-[A-Za-z0-9_]+$")

# The (temp, path) renames a `written_together` block holds back until all its files are written.
_pending = contextvars.ContextVar("pending_renames", default=None)


def process_alive(pid: int) -> bool:
    """Whether process `pid` exists (one we may not signal counts as alive)."""
    try:
        return pid > 0 and os.kill(pid, 0) is None
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True


def remove_dead_temps(folder: Path, name: str | None = None) -> None:
    """Delete the temp files and folders (our patterns only) of dead processes in `folder`, or
    only those of output `name`. A live run's work is never touched."""
    try:
        entries = list(folder.iterdir()) if folder.is_dir() else []
    except OSError:
        return
    for entry in entries:
        folder_match = TEMP_DIR.match(entry.name)
        match = folder_match or TEMP_FILE.match(entry.name)
        is_folder = entry.is_dir() and not entry.is_symlink()
        if match is None or is_folder != bool(folder_match):  # not ours, or the wrong kind
            continue
        if name not in (None, match.groupdict().get("name")) or process_alive(int(match["pid"])):
            continue
        try:
            with suppress(FileNotFoundError):
                (shutil.rmtree if is_folder else Path.unlink)(entry)
        except OSError as exc:
            message = f"{entry}: cannot remove a dead run's temp file ({exc.strerror})"
            raise PipelineError(message) from None


def temp_dir(folder: Path, prefix: str) -> tempfile.TemporaryDirectory:
    """A temp folder `.<prefix>-<pid>-<random>` in `folder` (same file system, so its
    contents move into place by renaming); a dead run's ones are removed first."""
    remove_dead_temps(folder)
    return tempfile.TemporaryDirectory(
        dir=folder, prefix=f".{prefix}-{os.getpid()}-", ignore_cleanup_errors=True
    )


def unwritable(path: Path, exc: OSError) -> PipelineError:
    return PipelineError(f"{path}: cannot be written ({exc.strerror or exc})")


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; rename it over `path` only if the block succeeds
    and no signal came (inside `written_together`: with the set). An OS error is one line."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_dead_temps(path.parent, path.name)
    except OSError as exc:
        raise unwritable(path, exc) from None
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pending = _pending.get()
    keep = False
    try:
        yield tmp
        with open(tmp, "rb+") as written:
            os.fsync(written.fileno())
        raise_if_stopped()
        if pending is None:
            os.replace(tmp, path)
        else:
            pending.append((tmp, path))
            keep = True
    except OSError as exc:
        raise unwritable(path, exc) from None
    finally:
        if not keep:
            tmp.unlink(missing_ok=True)


@contextmanager
def written_together() -> Iterator[None]:
    """Files written by `atomic_path` inside the block replace their old versions together,
    after every one of them is written: a failure (a full disk) leaves all the old ones."""
    if _pending.get() is not None:  # already inside a set
        yield
        return
    pending: list[tuple[Path, Path]] = []
    token = _pending.set(pending)
    try:
        yield
        try:
            for tmp, path in pending:
                os.replace(tmp, path)
        except OSError as exc:
            raise unwritable(path, exc) from None
    finally:
        _pending.reset(token)
        for tmp, _ in pending:
            tmp.unlink(missing_ok=True)


@contextmanager
def run_lock(out: Path, lock_file: Path) -> Iterator[None]:
    """Hold `filelock`'s lock on `lock_file` for the block, or fail at once in one line. The
    kernel releases it when the holder dies; the holder's pid in the file is for the message."""
    from filelock import FileLock, Timeout

    lock = FileLock(lock_file, timeout=0)
    try:
        lock_file.parent.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except Timeout:
        holder = "unknown"
        with suppress(OSError):
            holder = lock_file.read_text().strip() or holder
        raise PipelineError(
            f"another run is writing {out} (pid {holder}); wait for it or stop it"
        ) from None
    except OSError as exc:
        raise PipelineError(f"{lock_file}: cannot take the lock ({exc.strerror})") from None
    try:
        with suppress(OSError):  # the pid is only for the message: a full disk must not stop us
            lock_file.write_text(f"{os.getpid()}\n")
        yield
    finally:
        lock_file.unlink(missing_ok=True)  # while still held: no one else holds this inode
        lock.release()


def check_writable(path: Path) -> None:
    """Fail before any work, creating nothing, if `path` cannot be written."""
    if path.is_dir():
        raise PipelineError(f"--out {path}: is a folder; give a file name")
    existing = next((p for p in path.parents if p.exists()), path.parents[-1])
    if not existing.is_dir():
        raise PipelineError(f"--out {path}: cannot write there ({existing} is a file)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PipelineError(f"--out {path}: cannot write there ({existing} is read-only)")
    # room for the temporary `.<stem>.metrics.csv.<pid>.tmp`, 22 bytes longer than `<stem>.pt`
    room = os.pathconf(existing, "PC_NAME_MAX") - 24
    if len(os.fsencode(path.name)) > room:
        raise PipelineError(
            f"--out {path.name[:40]}...: the file name is too long (at most "
            f"{room} bytes here, leaving room for the files written beside it)"
        )


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


def expand_checkpoints(
    patterns: list[Path], log: Callable[[str], None] | None = None
) -> list[Path]:
    """Plain paths as given (a folder refused); quoted globs ('models/best-*.pt') expanded,
    sorted, to checkpoints (not resume states) not named before; `log` gets a line per glob."""
    paths: list[Path] = []
    for pattern in patterns:
        if Path(pattern).is_dir():
            raise PipelineError(f"{pattern}: is a folder; give a model file or a quoted glob")
        if not any(char in str(pattern) for char in "*?["):
            paths.append(pattern)
            continue
        matches = [Path(m) for m in sorted(glob.glob(str(pattern)))]
        taken = {p.resolve() for p in paths}
        suffixes = (config.CHECKPOINT_SUFFIX, config.ONNX_SUFFIX)
        chosen = [m for m in matches if m.suffix in suffixes and m.resolve() not in taken]
        chosen = [m for m in chosen if not config.is_resume_state(m)]
        skipped = len(matches) - len(chosen)
        others = f"{skipped} resume states, other files or ones given before"
        if not chosen:
            found = f" (only {others})" if skipped else ""
            raise PipelineError(f"{pattern}: no checkpoint matches{found}")
        if log:
            names = ", ".join(m.name for m in chosen) + (f"; skipped {others}" if skipped else "")
            log(f"{pattern}: {len(chosen)} checkpoint(s): {names}")
        paths += chosen
    if not paths:
        raise PipelineError("give at least one --checkpoint")
    return paths
