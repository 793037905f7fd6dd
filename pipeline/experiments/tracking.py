"""Experiment tracking with MLflow, as a side channel: a stage works the same with it off.

On by default for train, ensemble, crossval and tune; `--no-track` or `PIPELINE_TRACK=0` turn it
off. The store is `experiments/mlflow.db` (SQLite) unless `MLFLOW_TRACKING_URI` names another.
Each run records its options as params (the command line's names), the data fingerprint and git
commit as tags, val_acc/val_loss per epoch (step = epoch) and its training seconds, and keeps a
copy of its finished checkpoint in `<store>/runs/<run id>/`, named by its `checkpoint` tag, so a
later run writing the same `--out` loses nothing.

MLflow takes seconds to import and to open a SQLite store: more than a `train` of one epoch
spends beyond its loop. So a command never imports it: the store is checked up front with the
standard library (a bad store is one line before any work), the runs are noted in memory, and
on the way out written as one JSON record that `experiments.recorder` logs into MLflow in a
process of its own (the way wandb logs through a service process). Whatever reads the store
(`pipeline runs`, `--run`, `submit`) records what is still pending first.
"""

import importlib.util
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pipeline import config
from pipeline.common.errors import PipelineError
from pipeline.common.files import atomic_path, file_sha256

SWITCH = "PIPELINE_TRACK"  # 0/false/no/off turn tracking off where --no-track is not given
OFF = ("0", "false", "no", "off")
# Command-line names of the TrainConfig fields whose option is spelled differently.
CLI_NAMES = {"data_source": "data"}
# Per-epoch record keys (train's history) -> the metric names runs are compared by.
EPOCH_METRICS = {
    "val_accuracy": "val_acc",
    "val_loss": "val_loss",
    "train_loss": "train_loss",
    "lr": "lr",
    "epoch_seconds": "epoch_seconds",
}
PARENT_TAG = "mlflow.parentRunId"
RECORDER_SWITCH = "PIPELINE_TRACK_RECORDER"  # "inline": log before the command ends (tests)


def wanted(flag: bool | None = None) -> bool:
    """--track/--no-track when given, else PIPELINE_TRACK, else on."""
    if flag is not None:
        return flag
    return os.environ.get(SWITCH, "1").strip().lower() not in OFF


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{config.TRACKING_DB}"


def _sqlite_file(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def runs_dir(uri: str) -> Path:
    """Where runs' checkpoints are kept: beside a SQLite or file store, else experiments/runs."""
    if (db := _sqlite_file(uri)) is not None:
        return db.resolve().parent / "runs"
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return Path(parsed.path).resolve() / "runs"
    return config.RUNS_DIR


def check_store(uri: str) -> None:
    """A one-line error for a store that cannot work, found in milliseconds without MLflow."""
    hint = "fix MLFLOW_TRACKING_URI, or run with --no-track (PIPELINE_TRACK=0)"
    if (db := _sqlite_file(uri)) is not None:
        where = db.parent if db.parent != Path("") else Path(".")
        existing = where
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            raise PipelineError(f"tracking store {db}: its folder cannot be written; {hint}")
        if db.is_dir():
            raise PipelineError(f"tracking store {db}: is a folder, not a SQLite file; {hint}")
        if db.is_file() and db.stat().st_size > 0:
            try:
                with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as connection:
                    rows = connection.execute("SELECT name FROM sqlite_master").fetchall()
            except sqlite3.DatabaseError as exc:
                message = f"tracking store {db}: corrupt or not SQLite ({exc}); {hint}"
                raise PipelineError(message) from None
            tables = {row[0] for row in rows}
            if tables and not {"alembic_version", "runs"} <= tables:
                raise PipelineError(f"tracking store {db}: a SQLite file but not MLflow's; {hint}")
        return
    parsed = urlparse(uri)
    if parsed.scheme in ("http", "https"):
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            socket.create_connection((parsed.hostname or "", port), timeout=3).close()
        except OSError as exc:
            raise PipelineError(f"tracking store {uri}: unreachable ({exc}); {hint}") from None
    elif parsed.scheme in ("", "file"):
        path = Path(parsed.path)
        if path.exists() and not path.is_dir():
            raise PipelineError(f"tracking store {uri}: not a folder; {hint}")


def git_commit() -> str:
    """The checkout's commit, `-dirty` when tracked files changed; `unknown` outside git."""
    try:
        done = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=40"],
            cwd=config.ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return done.stdout.strip() if done.returncode == 0 else "unknown"


def train_params(cfg) -> dict[str, Any]:
    """A TrainConfig as params under the command line's names (arch_args as JSON)."""
    params = {}
    for name, value in asdict(cfg).items():
        params[CLI_NAMES.get(name, name)] = json.dumps(value) if isinstance(value, dict) else value
    return params


def open_client(uri: str | None = None):
    """(MlflowClient, experiment id) for reading runs, or a one-line error for a bad store.

    Records the runs still pending first, so a reader sees every finished command's run."""
    from pipeline.experiments import recorder

    uri = uri or tracking_uri()
    check_store(uri)
    for warning in recorder.record_pending(uri):
        _stderr(f"warning: {warning}")
    return recorder.connect(uri)


class Session:
    """The tracking of one command, kept in memory: runs, params, tags and metrics in the order
    they were given. `close` writes it as one JSON record into the store's pending folder and
    starts `recorder` to log it into MLflow in a process of its own, so the command
    neither imports MLflow nor waits for its store. `record` (default: PIPELINE_TRACK_RECORDER,
    else "detached") may instead be "inline", logging it before `close` returns, or "pending",
    leaving it for the next command that reads the store."""

    def __init__(self, uri: str | None = None, record: str | None = None):
        self.uri = uri or tracking_uri()
        check_store(self.uri)
        self.runs_dir = runs_dir(self.uri)
        self.mode = record or os.environ.get(RECORDER_SWITCH, "detached")
        self.record_id = uuid.uuid4().hex
        self.runs: list[dict] = []
        self._failure: str | None = None

    def start_run(
        self, name: str, command: str, params: dict, tags: dict | None = None, parent=None
    ) -> "TrackedRun":
        run_tags = {
            "command": command,
            "mlflow.source.name": f"pipeline {command}",
            **{k: str(v) for k, v in (tags or {}).items()},
        }
        entry = {
            "id": uuid.uuid4().hex,
            "parent": None if parent is None else parent.id(),
            "name": name,
            "params": {k: str(v) for k, v in params.items()},
            "tags": run_tags,
            "metrics": [],
            "start_ms": _now_ms(),
            "end_ms": None,
            "status": None,
            "deleted": False,
        }
        self.runs.append(entry)
        return TrackedRun(self, entry)

    def close(self) -> str | None:
        """Write the record (atomically) and hand it to the recorder; a warning sentence if
        that failed."""
        from pipeline.experiments import recorder

        if self.runs:
            commit = git_commit()
            for entry in self.runs:
                entry["tags"] |= {"git_commit": commit, "mlflow.source.git.commit": commit}
            try:
                path = recorder.write_pending(self.uri, self.record_id, self.runs)
                if self.mode == "inline":
                    if problems := recorder.record_pending(self.uri):
                        self._failure = "; ".join(problems)
                elif self.mode != "pending":  # pending: the next reader of the store records it
                    recorder.start_detached(self.uri, path)
            except (OSError, PipelineError) as exc:
                self._failure = " ".join(str(exc).split())[:200]
        if self._failure is None:
            return None
        return f"tracking failed ({self._failure}); this command's runs were not all recorded"


def _now_ms() -> int:
    return int(time.time() * 1000)


class TrackedRun:
    """One run of a session: every method notes what to record and returns at once."""

    def __init__(self, session: Session, entry: dict):
        self.session, self.entry = session, entry
        self.ended = False

    def id(self) -> str:
        """The run's id: `pipeline runs` lists it and `--run` takes it (MLflow's own id works
        too, once recorded); its kept checkpoint lives in `<runs dir>/<id>/`."""
        return self.entry["id"]

    def child(self, name: str, command: str, params: dict, tags: dict | None = None):
        return self.session.start_run(name, command, params, tags, parent=self)

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        now = _now_ms()
        self.entry["metrics"] += [[k, float(v), now, step] for k, v in metrics.items()]

    def log_epoch(self, record: dict[str, float]) -> None:
        """train's per-epoch record as one batch of metrics at step = epoch."""
        names = {EPOCH_METRICS[k]: v for k, v in record.items() if k in EPOCH_METRICS}
        self.log_metrics(names, step=int(record["epoch"]))

    def set_tags(self, tags: dict[str, Any]) -> None:
        self.entry["tags"] |= {k: str(v) for k, v in tags.items()}

    def keep_checkpoint(self, checkpoint: Path) -> None:
        """Copy the finished checkpoint (and its JSON sidecar) into the run's own folder now,
        before anything may rewrite it, and tag the run with the copy's path, its sha256 and
        the data fingerprint."""
        folder = config.run_dir(self.id(), self.session.runs_dir)
        kept = folder / checkpoint.name
        for source in (checkpoint, config.sidecar_path(checkpoint)):
            if source.is_file():
                with atomic_path(folder / source.name) as tmp:
                    shutil.copyfile(source, tmp)
        tags = {"checkpoint": kept, "checkpoint_sha256": file_sha256(kept)}
        sidecar = config.sidecar_path(kept)
        if sidecar.is_file():
            meta = json.loads(sidecar.read_text())
            tags["data_fingerprint"] = meta.get("data_fingerprint", "unknown")
        self.set_tags(tags)

    def finish_training(self, result) -> None:
        """A finished `train` run: its summary metrics and its kept checkpoint."""
        summary = {"best_val_acc": result.best_accuracy, "train_seconds": result.train_seconds}
        summary["images_per_second"] = result.images_per_second
        if result.seconds_to_target is not None:
            summary["seconds_to_99"] = result.seconds_to_target
        self.log_metrics(summary, step=len(result.history))
        self.keep_checkpoint(result.checkpoint)
        if result.curves is None and result.history:  # train left the figure to the recorder
            path = config.curves_path(result.checkpoint)
            self.entry["curves"] = {"path": str(path.resolve()), "history": result.history}
        self.end()

    def set_span(self, start_s: float, end_s: float) -> None:
        """When the run really ran (seconds since the epoch), for one recorded after the fact."""
        self.entry["start_ms"], self.entry["end_ms"] = int(start_s * 1000), int(end_s * 1000)

    def end(self, status: str = "FINISHED") -> None:
        self.ended = True
        self.entry["status"] = status
        self.entry["end_ms"] = self.entry["end_ms"] or _now_ms()

    def delete(self) -> None:
        self.ended = True
        self.entry["deleted"] = True


class NoRun:
    """What stages get with tracking off: every call does nothing."""

    def child(self, *args, **kwargs) -> "NoRun":
        return self

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args, **kwargs: None


NO_RUN = NoRun()


def tracked_train(train: Callable, run, cfg, out: Path, on_epoch_end=None, **kwargs):
    """Call `train(cfg, out=out, on_epoch_end=..., **kwargs)` as the tracked run `run`: metrics
    per epoch (`on_epoch_end` replaces run.log_epoch and must call it), summary and kept
    checkpoint at the end, KILLED/FAILED if it stops early, and no record at all for a
    finished identical run that train skipped."""
    try:
        result = train(cfg, out=out, on_epoch_end=on_epoch_end or run.log_epoch, **kwargs)
    except BaseException as exc:
        run.end(stop_status(exc))
        raise
    if result.skipped:
        run.delete()
    else:
        run.finish_training(result)
    return result


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def stop_status(exc: BaseException) -> str:
    """KILLED for a run stopped on purpose (Ctrl-C, SIGTERM, a pruned trial), else FAILED.

    SIGTERM arrives as `exits.Stopped`, a KeyboardInterrupt; optuna is matched by name so
    that tracking never imports it."""
    from pipeline.training.run_state import TrainingInterrupted

    on_purpose = isinstance(exc, KeyboardInterrupt | TrainingInterrupted)
    return "KILLED" if on_purpose or type(exc).__name__ == "TrialPruned" else "FAILED"


@contextmanager
def command_run(
    track: bool,
    name: str,
    command: str,
    params: dict,
    tags: dict | None = None,
    warn: Callable[[str], None] | None = None,
) -> Iterator[TrackedRun | NoRun]:
    """The tracked run of one command (NO_RUN when `track` is false): ended FINISHED, FAILED
    or KILLED as the block ends; a store that failed midway is one warning, never an error."""
    if track and importlib.util.find_spec("mlflow") is None:  # found without importing it
        (warn or _stderr)(
            "warning: tracking is off: mlflow is not installed (pip install -e '.[track]')"
        )
        track = False
    if not track:
        yield NO_RUN
        return
    session = Session()
    run = session.start_run(name, command, params, tags)
    try:
        yield run
    except BaseException as exc:
        if not run.ended:
            run.end(stop_status(exc))
        raise
    else:
        if not run.ended:
            run.end()
    finally:
        if (warning := session.close()) is not None:
            (warn or _stderr)(f"warning: {warning}")
