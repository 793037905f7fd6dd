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
def three_runs(tracking_store, fast_checkpoint, sample_processed_dir):
    session = tracking.Session()
    first = record(session, "a", {"model": "mlp", "epochs": 2}, [0.90, 0.93])
    second = record(session, "b", {"model": "fastnet", "epochs": 4}, [0.95, 0.97], fast_checkpoint)
    second.set_tags(tracking.data_tags(sample_processed_dir))
    parent = session.start_run("best", "ensemble", {"members": 1})
    parent.end()
    assert session.close() is None
    ids = [r.id() for r in (first, second, parent)]
    return tracking_store, ids


def test_the_table_lists_runs_newest_first_or_by_accuracy(three_runs):
    uri, (first, second, parent) = three_runs
    rows = runs.list_runs(uri=uri)
    assert [runs.run_key(r) for r in rows] == [parent, second, first]
    by_acc = runs.list_runs("val_acc", uri=uri)
    assert [runs.run_key(r) for r in by_acc] == [second, first, parent]
    table = runs.format_table(rows).splitlines()
    assert table[0].split()[:9] == [
        "run", "command", "model", "recipe", "epochs", "data", "val_acc", "train_s", "started"
    ]  # fmt: skip
    cells = table[2].split()
    assert cells[0] == second[:8] and cells[2:4] == ["fastnet", "-"] and cells[4] == "4"
    assert cells[5] == "sample" and cells[6] == "97.00%" and cells[7] == "3.5"
    assert cells[-1].endswith("fastnet.pt")
    assert table[1].split()[0] == parent[:8] and "-" in table[1].split()[6]


def test_a_run_id_or_its_prefix_resolves_to_the_kept_checkpoint(three_runs, fast_checkpoint):
    uri, (_, second, _) = three_runs
    for key in (second, second[:8]):
        (path,) = runs.run_checkpoints(key, uri)
        assert path != fast_checkpoint and path.read_bytes() == fast_checkpoint.read_bytes()
        assert read_payload(path)["meta"]["model"] == "fastnet"


def test_a_kept_checkpoint_replaced_since_is_refused_in_one_line(three_runs, fast_checkpoint):
    uri, (first, second, _) = three_runs
    (path,) = runs.run_checkpoints(second, uri)
    payload = bytearray(path.read_bytes())
    payload[-100] ^= 0xFF  # a copied-over or damaged file of the same size
    path.write_bytes(bytes(payload))
    with pytest.raises(PipelineError, match="sha256 differs") as caught:
        runs.run_checkpoints(second[:8], uri)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


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
