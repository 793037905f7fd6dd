"""`pipeline runs`: the tracked runs (those still pending too) as a table, and `--run RUN_ID`
(or a unique prefix of 6+ characters) turned into checkpoints."""

import datetime
import json
from contextlib import suppress
from pathlib import Path
from types import SimpleNamespace

from pipeline.common.errors import PipelineError
from pipeline.common.files import file_sha256
from pipeline.experiments import recorder, tracking
from pipeline.experiments.recorder import PARENT_RUN_TAG, RUN_TAG

SHORT_ID = 8  # characters of a run id the table shows


def score(run) -> float | None:
    """A run's val accuracy: a model's best, crossval's ensemble mean, tune's best trial."""
    metrics = run.data.metrics
    return next((metrics[k] for k in ("best_val_acc", "ensemble_acc_mean") if k in metrics), None)


def run_key(run) -> str:
    """The id a run is known by: the one its command printed (its kept checkpoint's folder)."""
    return run.data.tags.get(RUN_TAG) or run.info.run_id


def is_child(run, parent) -> bool:
    return run.data.tags.get(PARENT_RUN_TAG) == run_key(parent)


def _pending(entry: dict):
    """A run whose record is still being logged, shaped as MLflow's runs are."""
    tags = entry["tags"] | {RUN_TAG: entry["id"], PARENT_RUN_TAG: entry["parent"] or ""}
    metrics = {name: value for name, value, _, _ in entry["metrics"]}  # the latest of each
    info = SimpleNamespace(run_id=entry["id"], run_name=entry["name"], status="PENDING",
                           start_time=entry["start_ms"])  # fmt: skip
    return SimpleNamespace(info=info, data=SimpleNamespace(params=entry["params"], tags=tags,
                                                           metrics=metrics))  # fmt: skip


def all_runs(uri: str | None = None):
    """(client, every run of the store newest first: those MLflow holds and those pending)."""
    client, experiment = tracking.open_client(uri)
    runs = client.search_runs([experiment], max_results=10_000, order_by=["start_time DESC"])
    for path in recorder.pending_dir(uri or tracking.tracking_uri()).glob("*.json"):
        with suppress(OSError, ValueError, KeyError, TypeError):  # a record being written
            pending = [_pending(entry) for entry in json.loads(path.read_text())["runs"]]
            ids = {run.info.run_id for run in pending}
            runs = pending + [run for run in runs if run.data.tags.get(RUN_TAG) not in ids]
    return client, sorted(runs, key=lambda run: -run.info.start_time)


def list_runs(sort: str = "start", limit: int | None = None, uri: str | None = None):
    """The recorded runs, newest first, or (`val_acc`, choices.RunSort) best first."""
    runs = all_runs(uri)[1]
    if sort == "val_acc":
        runs.sort(key=lambda run: (score(run) is None, -(score(run) or 0.0)))
    return runs[:limit] if limit else runs


HEADER = "run command model recipe epochs data val_acc train_s started status parent checkpoint"


def format_table(runs: list) -> str:
    """One line per run, aligned; members, trials and splits name their parent run."""
    if not runs:
        return "no runs recorded yet: `pipeline train` records one"
    lines = [HEADER.split()]
    for run in runs:
        params, tags, acc = run.data.params, run.data.tags, score(run)
        seconds = run.data.metrics.get("train_seconds")
        started = datetime.datetime.fromtimestamp(run.info.start_time / 1000)
        lines.append([
            run_key(run)[:SHORT_ID], tags.get("command", "?"),
            *(params.get(k, "-") for k in ("model", "recipe", "epochs")), tags.get("dataset", "-"),
            "-" if acc is None else f"{acc:.2%}", "-" if seconds is None else f"{seconds:.1f}",
            f"{started:%Y-%m-%d %H:%M}", run.info.status.lower(),
            tags.get(PARENT_RUN_TAG, "")[:SHORT_ID] or "-", tags.get("checkpoint", "-"),
        ])  # fmt: skip
    widths = [max(map(len, column)) for column in zip(*lines, strict=True)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def find_run(run_id: str, uri: str | None = None):
    """The run `run_id` names (the whole id or a unique prefix), with every run of the store."""
    runs = all_runs(uri)[1]
    key = run_id.strip().lower()
    matches = [r for r in runs if run_key(r).startswith(key) or r.info.run_id.startswith(key)]
    where = uri or tracking.tracking_uri()
    if len(key) < 6 or not matches:
        raise PipelineError(f"--run {run_id}: no such run in {where} (see `pipeline runs`)")
    if len(matches) > 1:
        raise PipelineError(f"--run {run_id}: matches {len(matches)} runs; give more characters")
    return matches[0], runs


def run_checkpoints(run_id: str, uri: str | None = None) -> list[Path]:
    """The kept checkpoint of a run, or of its members for an ensemble's or study's run, each
    checked against the sha256 the run recorded."""
    run, runs = find_run(run_id, uri)
    kept = [run] if "checkpoint" in run.data.tags else [r for r in runs if is_child(r, run)]
    tags = sorted((r.data.tags["checkpoint"], r.data.tags.get("checkpoint_sha256"))
                  for r in kept if "checkpoint" in r.data.tags)  # fmt: skip
    if not tags:
        raise PipelineError(
            f"--run {run_id}: run {run_key(run)} kept no checkpoint (status "
            f"{run.info.status.lower()}); `pipeline runs` lists those that did"
        )
    for path, sha in tags:
        if not Path(path).is_file():
            raise PipelineError(f"--run {run_id}: its checkpoint {path} is gone")
        if sha is not None and file_sha256(Path(path)) != sha:
            raise PipelineError(
                f"--run {run_id}: its checkpoint {path} is not the file the run kept (its "
                "sha256 differs): it was replaced or damaged since"
            )
    return [Path(path) for path, _ in tags]
