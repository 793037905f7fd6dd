"""Experiment tracking with MLflow as a side channel (off: `--no-track`, PIPELINE_TRACK=0).
MLflow takes seconds to import, so a command notes its runs in memory and leaves one record
that `recorder` logs in its own process."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline import config
from pipeline.common.errors import PipelineError
from pipeline.common.files import atomic_path, file_sha256
from pipeline.experiments import recorder
from pipeline.experiments.recorder import check_store, runs_dir, tracking_uri
from pipeline.training.callbacks import Callback
from pipeline.training.recipes import cli_settings

SWITCH = "PIPELINE_TRACK"  # 0/false/no/off turn tracking off where --no-track is not given
# Per-epoch record keys (train's history) -> the metric names runs are compared by.
EPOCH_METRICS = {"val_accuracy": "val_acc", "val_loss": "val_loss", "train_loss": "train_loss",
                 "lr": "lr", "epoch_seconds": "epoch_seconds"}  # fmt: skip


def wanted(flag: bool | None = None) -> bool:
    """--track/--no-track when given, else PIPELINE_TRACK, else on."""
    env = os.environ.get(SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")
    return env if flag is None else flag


def git_commit() -> str:
    """The checkout's commit, `-dirty` when tracked files changed; `unknown` outside git."""
    try:
        done = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=40"],
            cwd=config.ROOT, capture_output=True, text=True, timeout=10, check=True,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return done.stdout.strip()


def train_params(cfg) -> dict[str, Any]:
    """A TrainConfig as params under the command line's names (arch_args as JSON)."""
    return {k: json.dumps(v) if isinstance(v, dict) else v for k, v in cli_settings(cfg).items()}


def data_tags(processed_dir: Path) -> dict[str, str]:
    """The data a run used: `kaggle` or `sample`, `:<rows>` when cut by --limit-rows."""
    from pipeline.data.processed import read_meta

    try:
        meta = read_meta(processed_dir)
    except PipelineError:
        return {}
    data = "sample" if config.TEST_LABELS_CSV in meta["sources"] else "kaggle"
    return {"dataset": data + (f":{rows}" if (rows := meta.get("limit_rows")) else "")}


def open_client(uri: str | None = None):
    """(MlflowClient, experiment id) for reading runs, the pending records logged first."""
    uri = uri or tracking_uri()
    check_store(uri)
    for warning in recorder.record_pending(uri, wait=recorder.READER_WAIT):
        print(f"warning: {warning}", file=sys.stderr)
    return recorder.connect(uri)


def _now_ms() -> int:
    return int(time.time() * 1000)


class Session:
    """One command's runs, kept in memory until `close` writes them as one pending record;
    `record` (PIPELINE_TRACK_RECORDER): "inline" logs it at once, "pending" leaves it."""

    def __init__(self, uri: str | None = None, record: str | None = None):
        self.uri = uri or tracking_uri()
        check_store(self.uri)
        self.mode = record or os.environ.get("PIPELINE_TRACK_RECORDER", "detached")
        self.record_id = uuid.uuid4().hex
        self.runs: list[dict] = []

    def start_run(self, name: str, command: str, params: dict, tags=None, parent=None):
        entry = {
            "id": uuid.uuid4().hex, "parent": parent and parent.id(), "name": name,
            "params": {k: str(v) for k, v in params.items()},
            "tags": {"command": command, "mlflow.source.name": f"pipeline {command}",
                     **{k: str(v) for k, v in (tags or {}).items()}},
            "metrics": [], "start_ms": _now_ms(), "end_ms": None, "status": None,
        }  # fmt: skip
        self.runs.append(entry)
        return TrackedRun(self, entry)

    def close(self) -> str | None:
        """Write the record and hand it to the recorder; a warning sentence if that failed."""
        if not self.runs:
            return None
        commit = git_commit()
        for entry in self.runs:
            entry["tags"] |= {"git_commit": commit, "mlflow.source.git.commit": commit}
        try:
            recorder.write_pending(self.uri, self.record_id, self.runs)
        except OSError as exc:
            failure = " ".join(str(exc).split())[:200]
            return f"tracking failed ({failure}); this command's runs were not recorded"
        try:  # a store that is away: the record waits for the next reader
            if self.mode == "inline":
                return "; ".join(recorder.record_pending(self.uri)) or None
            if self.mode != "pending":
                recorder.start_detached(self.uri)
        except OSError as exc:
            return f"tracking: {exc}; this command's runs stay pending for the next reader"
        return None


class TrackedRun(Callback):
    """One run of a session, in memory; as a training callback, its epochs and result."""

    def __init__(self, session: Session, entry: dict):
        self.session, self.entry = session, entry

    def id(self) -> str:
        return self.entry["id"]

    def kept(self) -> str | None:
        return self.entry["tags"].get("checkpoint")

    def child(self, name: str, command: str, params: dict, tags: dict | None = None):
        return self.session.start_run(name, command, params, tags, parent=self)

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        now = _now_ms()
        self.entry["metrics"] += [[k, float(v), now, step] for k, v in metrics.items()]

    def log_epoch(self, record: dict[str, float]) -> None:
        names = {EPOCH_METRICS[k]: v for k, v in record.items() if k in EPOCH_METRICS}
        self.log_metrics(names, step=int(record["epoch"]))

    epoch_end = log_epoch

    def set_tags(self, tags: dict[str, Any]) -> None:
        self.entry["tags"] |= {k: str(v) for k, v in tags.items()}

    def keep_checkpoint(self, checkpoint: Path) -> None:
        """A copy in the run's folder, made before anything rewrites the checkpoint."""
        kept = runs_dir(self.session.uri) / self.id() / checkpoint.name
        for source in (checkpoint, config.sidecar_path(checkpoint)):
            if source.is_file():
                with atomic_path(kept.parent / source.name) as tmp:
                    shutil.copyfile(source, tmp)
        tags = {"checkpoint": kept, "checkpoint_sha256": file_sha256(kept)}
        if (sidecar := config.sidecar_path(kept)).is_file():
            tags["data_fingerprint"] = json.loads(sidecar.read_text()).get("data_fingerprint")
        self.set_tags(tags)

    def train_end(self, result) -> None:
        if result.skipped:
            return self.end("DELETED")
        summary = {"best_val_acc": result.best_accuracy, "train_seconds": result.train_seconds,
                   "images_per_second": result.images_per_second}  # fmt: skip
        if result.seconds_to_target is not None:
            summary["seconds_to_99"] = result.seconds_to_target
        self.log_metrics(summary, step=len(result.history))
        self.keep_checkpoint(result.checkpoint)
        self.end()

    def train_stop(self, error: BaseException) -> None:
        self.end(stop_status(error))

    def end(self, status: str = "FINISHED") -> None:
        """The first status given stays (DELETED: a run that trained nothing)."""
        if self.entry["status"] is None:
            self.entry |= {"status": status, "end_ms": _now_ms()}


class NoRun(Callback):
    """What stages get with tracking off: every call does nothing."""

    def child(self, *args, **kwargs) -> "NoRun":
        return self

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args, **kwargs: None


NO_RUN = NoRun()


def stop_status(exc: BaseException) -> str:
    """KILLED for a signal or a pruned trial (matched by name: no optuna import), else FAILED."""
    from pipeline.training.run_state import TrainingInterrupted

    on_purpose = isinstance(exc, KeyboardInterrupt | TrainingInterrupted)
    return "KILLED" if on_purpose or type(exc).__name__ == "TrialPruned" else "FAILED"


@contextmanager
def command_run(
    track: bool, name: str, command: str, params: dict, tags: dict | None = None,
    warn: Callable[[str], None] | None = None,
) -> Iterator[TrackedRun | NoRun]:  # fmt: skip
    """The tracked run of one command (NO_RUN when `track` is false), ended as the block ends;
    a store that failed midway is one warning, never an error."""
    warn = warn or (lambda message: print(message, file=sys.stderr))
    if track and importlib.util.find_spec("mlflow") is None:  # found without importing it
        warn("warning: tracking is off: mlflow is not installed (pip install -e '.[track]')")
        track = False
    if not track:
        yield NO_RUN
        return
    session = Session()
    run = session.start_run(name, command, params, tags)
    try:
        yield run
        run.end()
    except BaseException as exc:
        run.end(stop_status(exc))
        raise
    finally:
        if (warning := session.close()) is not None:
            warn(f"warning: {warning}")
