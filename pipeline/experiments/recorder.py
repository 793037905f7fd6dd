"""Logs the commands' tracking records into MLflow, off the commands' critical path.

A tracked command (`pipeline.experiments.tracking.Session`) writes its runs as one JSON record,
atomically, into `<store folder>/pending/<record id>.json` and starts
`python -m pipeline.experiments.recorder URI` at the lowest priority, its output in
`pending/recorder.log`, then exits. Whatever reads the store calls `record_pending` first.
Both hold `pending/.lock` while they record, so a record is logged by one of them: each of its
runs is tagged with the record's id, and a record found half logged (a recorder killed midway)
has those runs deleted and is logged again whole; the file goes only once all of it is in.
"""

import fcntl
import json
import logging
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

from pipeline import config
from pipeline.common.errors import PipelineError
from pipeline.experiments.tracking import PARENT_TAG, check_store, runs_dir, tracking_uri

RECORD_TAG = "pipeline.record"  # the id of the record a run came from
RUN_TAG = "pipeline.run"  # the run's own id, the one the command printed
PARENT_RUN_TAG = "pipeline.parent"  # its parent's id of that kind
CURVE_KEYS = {"epoch", "train_loss", "val_loss", "val_accuracy"}  # what plots draws
RECORDER_NICE = 19  # the lowest priority: a stage running beside it gets the cores first
RUN_KEYS = {"id", "parent", "name", "params", "tags", "metrics", "start_ms", "end_ms", "status",
            "deleted"}  # fmt: skip


def pending_dir(uri: str) -> Path:
    return runs_dir(uri).parent / config.PENDING_DIR_NAME


def write_pending(uri: str, record_id: str, runs: list[dict]) -> Path:
    """One command's runs as `pending/<record id>.json`, written atomically."""
    path = pending_dir(uri) / f"{record_id}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not files.atomic_path: a run a Ctrl-C stopped must still be recorded (KILLED).
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as handle:
            handle.write(json.dumps({"record": record_id, "runs": runs}) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def start_detached(uri: str, path: Path) -> subprocess.Popen:
    """Start the recorder for the pending records; it holds none of the caller's pipes."""
    with open(path.parent / config.RECORDER_LOG, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "pipeline.experiments.recorder", uri],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, close_fds=True,
        )  # fmt: skip


def connect(uri: str):
    """An MlflowClient on `uri`, quiet, with the digit experiment's id (created on first use),
    or a one-line error."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    try:
        from mlflow.tracking import MlflowClient
    except ImportError as exc:
        raise PipelineError(
            f"mlflow is not installed ({exc}): pip install -e '.[track]'"
        ) from None
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name(config.TRACKING_EXPERIMENT)
        if experiment is not None:
            return client, experiment.experiment_id
        location = runs_dir(uri).as_uri()
        return client, client.create_experiment(config.TRACKING_EXPERIMENT, location)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise PipelineError(f"tracking store {uri}: {type(exc).__name__}: {first}") from None


@contextmanager
def _locked(folder: Path):
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / config.RECORDER_LOCK, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _valid_curves(curves) -> bool:
    """A figure left to the recorder: its path and train's per-epoch history (numbers)."""
    if curves is None:
        return True
    history = curves.get("history") if isinstance(curves, dict) else None
    return (
        set(curves) == {"path", "history"}
        and isinstance(curves["path"], str)
        and isinstance(history, list)
        and all(isinstance(epoch, dict) for epoch in history)
        and all(isinstance(v, int | float) for epoch in history for v in epoch.values())
        and all(CURVE_KEYS <= set(epoch) for epoch in history)
    )


def draw_curves(record: dict) -> list[str]:
    """Draw the training-curves figures a record's train runs left to the recorder (beside
    checkpoints that are still there); what could not be drawn, one sentence each."""
    from pipeline.common.plots import plot_training_curves

    problems = []
    for run in record["runs"]:
        curves = run.get("curves")
        if curves is None or not Path(curves["path"]).parent.is_dir():
            continue
        try:
            plot_training_curves(curves["history"], Path(curves["path"]))
        except (OSError, ValueError) as exc:
            problems.append(f"{curves['path']}: curves not drawn ({exc})")
    return problems


def read_record(path: Path) -> dict:
    """A pending record, checked whole, or a one-line error naming the file."""
    try:
        record = json.loads(path.read_text())
        runs = record["runs"]
        ok = isinstance(record["record"], str) and isinstance(runs, list)
        ok = ok and all(
            isinstance(run, dict) and set(run) - {"curves"} == RUN_KEYS for run in runs
        )
        ok = ok and all(_valid_curves(run.get("curves")) for run in runs)
        ok = ok and all(isinstance(m, list) and len(m) == 4 for r in runs for m in r["metrics"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PipelineError(f"{path}: not a tracking record ({type(exc).__name__})") from None
    if not ok:
        raise PipelineError(f"{path}: not a tracking record (fields missing or of wrong type)")
    return record


def log_record(client, experiment: str, record: dict) -> None:
    """Log one record's runs; runs a killed attempt left of it are deleted first."""
    from mlflow.entities import Metric, Param

    left = client.search_runs([experiment], f"tags.`{RECORD_TAG}` = '{record['record']}'")
    for run in left:
        client.delete_run(run.info.run_id)
    ids: dict[str, str] = {}
    for entry in record["runs"]:
        tags = dict(entry["tags"], **{RECORD_TAG: record["record"], RUN_TAG: entry["id"]})
        if entry["parent"] in ids:
            tags |= {PARENT_TAG: ids[entry["parent"]], PARENT_RUN_TAG: entry["parent"]}
        run = client.create_run(
            experiment, start_time=entry["start_ms"], tags=tags, run_name=entry["name"]
        )
        run_id = ids[entry["id"]] = run.info.run_id
        params = [Param(k, v) for k, v in entry["params"].items()]
        for start in range(0, len(params), 100):  # log_batch takes at most 100 params
            client.log_batch(run_id, params=params[start : start + 100])
        metrics = [Metric(k, float(v), int(t), int(s)) for k, v, t, s in entry["metrics"]]
        for start in range(0, len(metrics), 1000):
            client.log_batch(run_id, metrics=metrics[start : start + 1000])
    for entry in record["runs"]:  # ended last: a FINISHED run is a whole one
        if entry["deleted"]:
            client.delete_run(ids[entry["id"]])
        else:
            status = entry["status"] or "KILLED"  # never ended: its command was killed
            client.set_terminated(ids[entry["id"]], status, entry["end_ms"] or entry["start_ms"])


def record_pending(uri: str | None = None) -> list[str]:
    """Log every pending record of the store into MLflow, each exactly once; what could not be
    logged, one sentence each (a corrupt record is moved aside to `<name>.corrupt`)."""
    uri = uri or tracking_uri()
    folder = pending_dir(uri)
    if not folder.is_dir() or not any(folder.glob("*.json")):
        return []
    problems = []
    with _locked(folder):
        paths = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime_ns)
        if not paths:
            return []
        client, experiment = connect(uri)
        for path in paths:
            try:
                record = read_record(path)
            except PipelineError as exc:
                path.replace(path.with_name(path.name + ".corrupt"))
                problems.append(f"{exc}; moved aside to {path.name}.corrupt, not recorded")
                continue
            log_record(client, experiment, record)
            path.unlink()
            problems += draw_curves(record)
    return problems


def main() -> None:
    """`python -m pipeline.experiments.recorder URI`: record the store's pending records."""
    os.nice(RECORDER_NICE)
    uri = sys.argv[1] if len(sys.argv) > 1 else tracking_uri()
    try:
        check_store(uri)
        problems = record_pending(uri)
    except PipelineError as exc:
        problems = [str(exc)]
    for problem in problems:
        print(f"recorder: {problem}", file=sys.stderr)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
