"""`pipeline runs`: the tracked runs as a table, and `--run RUN_ID` turned into checkpoints.

Reads the MLflow store `tracking` writes (experiments/mlflow.db, or MLFLOW_TRACKING_URI), and
the records a recorder is still logging (status `pending`). A run id may be shortened to any
unique prefix of 6 or more characters, as the table shows them.
"""

import datetime
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from pipeline.common.errors import PipelineError
from pipeline.common.files import file_sha256
from pipeline.experiments import recorder, tracking
from pipeline.experiments.recorder import PARENT_RUN_TAG, RUN_TAG

SHORT_ID = 8  # characters of a run id the table shows
MIN_PREFIX = 6
MAX_RUNS = 10_000  # read at most this many runs from the store
# What a run's "val acc" is: a trained model's best; crossval's ensemble mean; tune's best trial.
SCORE_METRICS = ("best_val_acc", "ensemble_acc_mean")


@dataclass(frozen=True)
class RunRow:
    run_id: str
    command: str
    name: str
    model: str
    recipe: str
    epochs: str
    data: str  # kaggle, or sample (the offline sample); `:<rows>` when cut by --limit-rows
    val_acc: float | None
    train_seconds: float | None
    started: datetime.datetime
    status: str
    checkpoint: str
    parent: str


def _row(run) -> RunRow:
    params, tags, metrics = run.data.params, run.data.tags, run.data.metrics
    score = next((metrics[k] for k in SCORE_METRICS if k in metrics), None)
    return RunRow(
        run_id=run_key(run),
        command=tags.get("command", "?"),
        name=run.info.run_name or "",
        model=params.get("model", "-"),
        recipe=params.get("recipe", "-"),
        epochs=params.get("epochs", "-"),
        data=tags.get("dataset", "-"),
        val_acc=score,
        train_seconds=metrics.get("train_seconds"),
        started=datetime.datetime.fromtimestamp(run.info.start_time / 1000),
        status=run.info.status,
        checkpoint=tags.get("checkpoint", ""),
        parent=tags.get(PARENT_RUN_TAG) or tags.get(recorder.PARENT_TAG, ""),
    )


def run_key(run) -> str:
    """The id a run is known by: the one its command printed (its kept checkpoint's folder),
    MLflow's own for runs recorded before commands named their runs."""
    return run.data.tags.get(RUN_TAG) or run.info.run_id


def is_child(run, parent) -> bool:
    tags = run.data.tags
    return tags.get(recorder.PARENT_TAG) == parent.info.run_id or (
        PARENT_RUN_TAG in tags and tags[PARENT_RUN_TAG] == parent.data.tags.get(RUN_TAG)
    )


def _pending(entry: dict):
    """A run whose record is still being logged, shaped as MLflow's runs are."""
    tags = entry["tags"] | {RUN_TAG: entry["id"], PARENT_RUN_TAG: entry["parent"] or ""}
    metrics = {name: value for name, value, _, _ in entry["metrics"]}  # the latest of each
    info = SimpleNamespace(run_id=entry["id"], run_name=entry["name"], status="PENDING",
                           start_time=entry["start_ms"])  # fmt: skip
    return SimpleNamespace(info=info, data=SimpleNamespace(params=entry["params"], tags=tags,
                                                           metrics=metrics))  # fmt: skip


def _all_runs(uri: str | None):
    """Every run of the store, newest first: those MLflow holds and those still pending."""
    client, experiment = tracking.open_client(uri)
    order = ["attributes.start_time DESC"]
    logged = client.search_runs([experiment], max_results=MAX_RUNS, order_by=order)
    pending = [_pending(e) for e in recorder.pending_runs(uri or tracking.tracking_uri())]
    ids = {run.info.run_id for run in pending}
    runs = pending + [run for run in logged if run.data.tags.get(RUN_TAG) not in ids]
    return client, sorted(runs, key=lambda run: -run.info.start_time)


def list_runs(sort: str = "start", limit: int | None = None, uri: str | None = None):
    """The recorded runs, newest first, or (`val_acc`, choices.RunSort) best first."""
    rows = [_row(run) for run in _all_runs(uri)[1]]
    if sort == "val_acc":
        rows.sort(key=lambda r: (r.val_acc is None, -(r.val_acc or 0.0)))
    return rows[:limit] if limit else rows


HEADER = "run command model recipe epochs data val_acc train_s started status parent checkpoint"


def _cells(r: RunRow) -> tuple[str, ...]:
    what = r.run_id[:SHORT_ID], r.command, r.model, r.recipe, r.epochs, r.data
    val_acc = "-" if r.val_acc is None else f"{r.val_acc:.2%}"
    train_s = "-" if r.train_seconds is None else f"{r.train_seconds:.1f}"
    when = r.started.strftime("%Y-%m-%d %H:%M"), r.status.lower()
    return (*what, val_acc, train_s, *when, r.parent[:SHORT_ID] or "-", r.checkpoint or "-")


def format_table(rows: list[RunRow]) -> str:
    """One line per run, aligned; members, trials and splits name their parent run."""
    if not rows:
        return "no runs recorded yet: `pipeline train` records one"
    lines = [tuple(HEADER.split()), *map(_cells, rows)]
    widths = [max(map(len, column)) for column in zip(*lines, strict=True)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def find_run(run_id: str, uri: str | None = None):
    """The run `run_id` names (the whole id or a unique prefix), with every run of the store."""
    client, runs = _all_runs(uri)
    key = run_id.strip().lower()
    matches = [
        run for run in runs if run_key(run).startswith(key) or run.info.run_id.startswith(key)
    ]
    where = uri or tracking.tracking_uri()
    if len(key) < MIN_PREFIX or not matches:
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
    paths = [Path(path) for path, _ in tags]
    if not paths:
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
    return paths
