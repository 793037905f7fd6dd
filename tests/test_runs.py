"""`pipeline runs` and `--run RUN_ID`: the table of recorded runs and their kept checkpoints."""

import time

import pytest

from pipeline.common.errors import PipelineError
from pipeline.experiments import runs, tracking
from pipeline.training.checkpoints import read_payload

pytestmark = pytest.mark.slow  # MLflow's import and SQLite store: seconds


def record(session, name, params, metrics=None, checkpoint=None):
    run = session.start_run(name, "train", params)
    for epoch, acc in enumerate(metrics or [], start=1):
        run.log_epoch({"epoch": epoch, "val_accuracy": acc, "val_loss": 1 - acc})
    if metrics:
        run.log_metrics({"best_val_acc": max(metrics), "train_seconds": 3.5})
    if checkpoint is not None:
        run.keep_checkpoint(checkpoint)
    run.end()
    time.sleep(0.01)  # distinct start times
    return run


@pytest.fixture
def three_runs(tracking_store, fast_checkpoint):
    session = tracking.Session()
    first = record(session, "a", {"model": "mlp", "epochs": 2}, [0.90, 0.93])
    second = record(session, "b", {"model": "fastnet", "epochs": 4}, [0.95, 0.97], fast_checkpoint)
    parent = session.start_run("best", "ensemble", {"members": 1})
    parent.end()
    assert session.close() is None
    ids = [r.id() for r in (first, second, parent)]
    return tracking_store, ids


def test_the_table_lists_runs_newest_first_or_by_accuracy(three_runs):
    uri, (first, second, parent) = three_runs
    rows = runs.list_runs(uri=uri)
    assert [r.run_id for r in rows] == [parent, second, first]
    assert [r.run_id for r in runs.list_runs("val_acc", uri=uri)] == [second, first, parent]
    table = runs.format_table(rows).splitlines()
    assert table[0].split()[:8] == [
        "run", "command", "model", "recipe", "epochs", "val_acc", "train_s", "started"
    ]  # fmt: skip
    cells = table[2].split()
    assert cells[0] == second[:8] and cells[2:4] == ["fastnet", "-"] and cells[4] == "4"
    assert cells[5] == "97.00%" and cells[6] == "3.5" and cells[-1].endswith("fastnet.pt")
    assert table[1].split()[0] == parent[:8] and "-" in table[1].split()[5]


def test_a_run_id_or_its_prefix_resolves_to_the_kept_checkpoint(three_runs, fast_checkpoint):
    uri, (_, second, _) = three_runs
    for key in (second, second[:8]):
        (path,) = runs.run_checkpoints(key, uri)
        assert path != fast_checkpoint and path.read_bytes() == fast_checkpoint.read_bytes()
        assert read_payload(path)["meta"]["model"] == "fastnet"


@pytest.mark.parametrize(
    ("key", "fragment"),
    [("0123456789abcdef", "no such run"), ("abc", "no such run"), (None, "kept no checkpoint")],
)
def test_unknown_or_checkpointless_runs_are_one_line(three_runs, key, fragment):
    uri, (first, _, _) = three_runs
    with pytest.raises(PipelineError, match=fragment) as caught:
        runs.run_checkpoints(key or first, uri)
    assert "\n" not in str(caught.value)


def test_an_empty_store_says_how_to_fill_it(tracking_store):
    assert "no runs recorded yet" in runs.format_table(runs.list_runs(uri=tracking_store))
