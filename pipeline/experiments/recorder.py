"""Logs the commands' tracking records into MLflow, off the commands' critical path.

A tracked command writes its runs as `pending/<record id>.json` and starts this module at the
lowest priority; any reader of the store logs what is pending first, under `pending/.lock`.
Runs carry their record's id, so a half-logged record is logged again whole.
"""

import hashlib
import json
import logging
import os
import socket
import sqlite3
import subprocess
import sys
from contextlib import closing, suppress
from pathlib import Path
from urllib.parse import urlparse

from filelock import FileLock, Timeout

from pipeline import config
from pipeline.common.errors import PipelineError

PARENT_TAG = "mlflow.parentRunId"
RECORD_TAG = "pipeline.record"  # the id of the record a run came from
RUN_TAG = "pipeline.run"  # the run's own id, the one the command printed
PARENT_RUN_TAG = "pipeline.parent"  # its parent's id of that kind
BACKGROUND = "--background"  # the recorder a command starts: at the lowest priority
READER_WAIT = 5.0  # seconds a reader waits for the lock before listing records as pending
NETWORK_PORTS = {"http": 80, "https": 443, "postgresql": 5432, "mysql": 3306, "mssql": 1433}


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{config.TRACKING_DB}"


def _sqlite_file(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def runs_dir(uri: str) -> Path:
    """Where runs' checkpoints are kept: beside a SQLite store, else experiments/runs."""
    db = _sqlite_file(uri)
    return config.RUNS_DIR if db is None else db.resolve().parent / "runs"


def check_store(uri: str) -> None:
    """A one-line error for a store that cannot work, found in milliseconds without MLflow."""
    hint = "fix MLFLOW_TRACKING_URI, or run with --no-track (PIPELINE_TRACK=0)"
    if (db := _sqlite_file(uri)) is not None:
        existing = next(folder for folder in db.absolute().parents if folder.exists())
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            raise PipelineError(f"tracking store {db}: its folder cannot be written; {hint}")
        if db.is_dir():
            raise PipelineError(f"tracking store {db}: is a folder, not a SQLite file; {hint}")
        if not db.is_file() or db.stat().st_size == 0:
            return
        try:  # quick_check reads every page, not only the schema on page 1
            with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as connection:
                tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
                verdict = connection.execute("PRAGMA quick_check(1)").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            verdict = str(exc)
        if verdict != "ok":
            raise PipelineError(f"tracking store {db}: corrupt or not SQLite ({verdict}); {hint}")
        if tables and not {"alembic_version", "runs"} <= tables:
            raise PipelineError(f"tracking store {db}: a SQLite file but not MLflow's; {hint}")
        return
    parsed = urlparse(uri)
    scheme = parsed.scheme.split("+")[0]
    if scheme not in NETWORK_PORTS:
        raise PipelineError(
            f"tracking store {uri}: MLflow keeps runs in sqlite:///<file>, a database URL "
            f"(postgresql://, mysql://, mssql://) or an http(s):// server; {hint}"
        )
    if not is_server(uri):
        try:  # loads the dialect and its driver, connects to nothing
            import sqlalchemy

            sqlalchemy.create_engine(uri)
        except Exception as exc:
            why = first_line(exc)
            raise PipelineError(f"tracking store {uri}: unusable ({why}); {hint}") from None
    try:
        port = parsed.port or NETWORK_PORTS[scheme]
        socket.create_connection((parsed.hostname or "localhost", port), timeout=3).close()
    except (OSError, ValueError) as exc:
        raise PipelineError(f"tracking store {uri}: unreachable ({exc}); {hint}") from None


def is_server(uri: str) -> bool:
    return urlparse(uri).scheme in ("http", "https")


def pending_dir(uri: str) -> Path:
    """Beside a SQLite store; else a folder per store URI, so a record waits for its store."""
    folder = runs_dir(uri).parent / config.PENDING_DIR_NAME
    if _sqlite_file(uri) is None:
        return folder / hashlib.sha256(uri.encode()).hexdigest()[:16]
    return folder


def write_pending(uri: str, record_id: str, runs: list[dict]) -> None:
    """Atomically, but not by atomic_path, which a Ctrl-C aborts: a stopped run is recorded."""
    path = pending_dir(uri) / f"{record_id}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"record": record_id, "runs": runs}) + "\n")
    os.replace(tmp, path)


def start_detached(uri: str) -> subprocess.Popen:
    """Its own process group (a Ctrl-C is not for it), not session (an autogroup ignores nice)."""
    with open(pending_dir(uri) / config.RECORDER_LOG, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "pipeline.experiments.recorder", uri, BACKGROUND],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            process_group=0,
        )  # fmt: skip


def first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:200] if text else ''}"


def connect(uri: str):
    """(MlflowClient, the digit experiment's id, created on first use), or a one-line error."""
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
        if found := client.get_experiment_by_name(config.TRACKING_EXPERIMENT):
            return client, found.experiment_id
        location = None if is_server(uri) else runs_dir(uri).as_uri()  # a server's own store
        return client, client.create_experiment(config.TRACKING_EXPERIMENT, location)
    except Exception as exc:
        raise PipelineError(f"tracking store {uri}: {first_line(exc)}") from None


def _delete_runs_of(client, experiment: str, record_id: str) -> None:
    for run in client.search_runs([experiment], f"tags.`{RECORD_TAG}` = '{record_id}'"):
        client.delete_run(run.info.run_id)


def log_record(client, experiment: str, record_id: str, record: dict, upload: bool) -> None:
    """Log one record's runs, ended last (a FINISHED run is a whole one); `upload`: the kept
    checkpoints and sidecars as the runs' artifacts (on a server)."""
    from mlflow.entities import Metric, Param

    _delete_runs_of(client, experiment, record_id)  # what a killed attempt left of it
    ids: dict[str, str] = {}
    for entry in record["runs"]:
        tags = entry["tags"] | {RECORD_TAG: record_id, RUN_TAG: entry["id"]}
        if entry["parent"] in ids:
            tags |= {PARENT_TAG: ids[entry["parent"]], PARENT_RUN_TAG: entry["parent"]}
        run = client.create_run(experiment, entry["start_ms"], tags, entry["name"])
        ids[entry["id"]] = run_id = run.info.run_id
        params = [Param(k, str(v)) for k, v in entry["params"].items()]
        metrics = [Metric(k, float(v), int(t), int(s)) for k, v, t, s in entry["metrics"]]
        client.log_batch(run_id, metrics, params)  # in batches of MLflow's limits
        kept = entry["tags"].get("checkpoint") if upload else None
        for path in (Path(kept), config.sidecar_path(Path(kept))) if kept else ():
            if path.is_file():  # the tag still names a copy deleted since
                client.log_artifact(run_id, str(path))
    for entry in record["runs"]:
        if entry["status"] == "DELETED":
            client.delete_run(ids[entry["id"]])
        else:  # never ended: its command was killed
            end = entry["end_ms"] or entry["start_ms"]
            client.set_terminated(ids[entry["id"]], entry["status"] or "KILLED", end)


def record_pending(uri: str | None = None, wait: float = -1) -> list[str]:
    """Log every pending record once; a sentence per record not logged. Waits `wait` seconds
    at most (-1: for ever) for another process logging them, then leaves them to it."""
    folder = pending_dir(uri := uri or tracking_uri())
    if not any(folder.glob("*.json")):
        return []
    with suppress(Timeout), FileLock(folder / config.RECORDER_LOCK, timeout=wait):
        if not (paths := sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime)):
            return []
        try:
            client, experiment = connect(uri)
        except PipelineError as exc:
            return [f"{exc}; {len(paths)} record(s) stay pending in {folder} for the next "
                    "reader (`pipeline runs`)"]  # fmt: skip
        problems = []
        for path in paths:
            try:
                record = json.loads(path.read_text())
                log_record(client, experiment, path.stem, record, is_server(uri))
            except Exception as exc:
                try:  # a store that still answers: the record is at fault
                    _delete_runs_of(client, experiment, path.stem)
                except Exception:
                    return [*problems, f"tracking store {uri}: {first_line(exc)}; records stay "
                            "pending"]  # fmt: skip
                path.replace(path.with_name(path.name + ".rejected"))
                problems.append(f"{path}: not recorded ({first_line(exc)}); moved aside to "
                                f"{path.name}.rejected")  # fmt: skip
                continue
            path.unlink()
        return problems
    return []  # another process is logging them


def main() -> None:
    """`python -m pipeline.experiments.recorder [URI] [--background]` (`make ui`: foreground)."""
    if BACKGROUND in sys.argv:
        os.nice(19)  # the lowest priority: a stage running beside it gets the cores first
    uri = next((arg for arg in sys.argv[1:] if arg != BACKGROUND), tracking_uri())
    try:
        check_store(uri)
        import mlflow.tracking  # noqa: F401  (imported before the lock: readers wait less)

        problems = record_pending(uri)
    except PipelineError as exc:
        problems = [str(exc)]
    for problem in problems:
        print(f"recorder: {problem}", file=sys.stderr)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
