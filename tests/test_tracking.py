"""MLflow tracking as a side channel: what a run records, kept checkpoints, and bad stores.

Every store here lives under tmp_path (the `tracking_store` fixture); MLflow's import and
SQLite store make the recording tests seconds long, so they are marked slow.
"""

import json
import os
import re
import sqlite3

import pytest

from pipeline import config
from pipeline.common.errors import PipelineError
from pipeline.experiments import recorder, tracking
from pipeline.training.checkpoints import read_payload
from pipeline.training.recipes import recipe_config
from pipeline.training.train import train

TINY = dict(device="cpu", arch_args={"widths": [4, 8, 8]}, batch_size=256)


def runs_of(uri):
    client, experiment = tracking.open_client(uri)
    return client, client.search_runs([experiment], order_by=["attributes.start_time ASC"])


@pytest.mark.parametrize(
    ("flag", "env", "expected"),
    [(None, None, True), (None, "0", False), (None, "off", False), (True, "0", True),
     (False, None, False), (None, "1", True)],
)  # fmt: skip
def test_tracking_is_on_unless_turned_off(monkeypatch, flag, env, expected):
    monkeypatch.delenv(tracking.SWITCH, raising=False)
    if env is not None:
        monkeypatch.setenv(tracking.SWITCH, env)
    assert tracking.wanted(flag) is expected


def test_the_default_store_is_the_projects_and_the_ecosystem_variable_overrides(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert tracking.tracking_uri() == f"sqlite:///{config.TRACKING_DB}"
    assert tracking.runs_dir(tracking.tracking_uri()) == config.RUNS_DIR
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////elsewhere/m.db")
    assert tracking.tracking_uri() == "sqlite:////elsewhere/m.db"


def test_params_use_the_command_lines_names():
    cfg = recipe_config("fast", device="cpu", epochs=2)
    params = tracking.train_params(cfg)
    for name in ("epochs", "lr", "model", "recipe", "batch_size", "seed", "weight_decay"):
        assert name in params
    assert params["data"] == "tensors" and "data_source" not in params
    assert params["epochs"] == 2 and json.loads(params["arch_args"]) == {}


@pytest.mark.parametrize(
    ("content", "fragment"),
    [(b"this is not a database, just text" * 40, "corrupt or not SQLite"), (None, "not MLflow's")],
)
def test_a_bad_store_is_one_line_before_any_work(tmp_path, content, fragment):
    db = tmp_path / "m.db"
    if content is None:
        with sqlite3.connect(db) as connection:
            connection.execute("CREATE TABLE songs (title TEXT)")
    else:
        db.write_bytes(content)
    with pytest.raises(PipelineError, match=fragment) as caught:
        tracking.Session(f"sqlite:///{db}")
    assert str(db) in str(caught.value) and "--no-track" in str(caught.value)
    assert "\n" not in str(caught.value)


def corrupt_past_page_one(db):
    """An MLflow store whose first page (the schema) is intact and whose tables are not."""
    data = bytearray(db.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    data[page:] = b"\xa5" * (len(data) - page)
    db.write_bytes(bytes(data))


def test_stores_mlflow_cannot_use_are_one_line_before_any_work(tmp_path, empty_tracking_store):
    broken = tmp_path / "mlflow.db"
    broken.write_bytes(empty_tracking_store.read_bytes())
    corrupt_past_page_one(broken)
    cases = {
        f"file://{tmp_path}/mlruns": "sqlite:///<file>",
        str(tmp_path / "mlruns"): "sqlite:///<file>",
        "postgresql://me@127.0.0.1:5/runs": "unusable (ModuleNotFoundError",
        f"sqlite:///{broken}": "corrupt or not SQLite",
    }
    for uri, fragment in cases.items():
        with pytest.raises(PipelineError, match=re.escape(fragment)) as caught:
            tracking.Session(uri)
        assert uri.removeprefix("sqlite:///") in str(caught.value)
        assert "--no-track" in str(caught.value) and "\n" not in str(caught.value)


def test_an_unreachable_server_is_one_line(tmp_path):
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(PipelineError, match="unreachable"):
        tracking.check_store(f"http://127.0.0.1:{port}")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into read-only folders")
def test_a_store_in_a_read_only_folder_is_one_line(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(PipelineError, match="cannot be written"):
            tracking.check_store(f"sqlite:///{folder / 'm.db'}")
    finally:
        folder.chmod(0o700)


@pytest.mark.slow
def test_two_runs_to_one_out_are_both_recorded_with_both_checkpoints(
    tracking_store, sample_processed_dir, tmp_path
):
    out = tmp_path / "models" / "fastnet.pt"
    for epochs in (1, 2):
        cfg = recipe_config("fast", epochs=epochs, **TINY)
        with tracking.command_run(True, out.stem, "train", tracking.train_params(cfg)) as run:
            train(cfg, sample_processed_dir, out, callbacks=[run])
    client, runs = runs_of(tracking_store)
    assert [r.data.params["epochs"] for r in runs] == ["1", "2"]
    kept = [read_payload(config.Path(r.data.tags["checkpoint"])) for r in runs]
    assert [p["meta"]["epochs_trained"] for p in kept] == [1, 2]  # the first was not overwritten
    assert len({r.data.tags["checkpoint_sha256"] for r in runs}) == 2
    for run, payload in zip(runs, kept, strict=True):
        assert run.info.status == "FINISHED"
        assert run.data.params["model"] == "fastnet" and run.data.params["recipe"] == "fast"
        assert run.data.params["batch_size"] == "256" and run.data.params["lr"] == "0.004"
        assert run.data.tags["data_fingerprint"] == payload["meta"]["data_fingerprint"]
        assert len(run.data.tags["git_commit"]) >= 7 and run.data.tags["command"] == "train"
        history = payload["meta"]["history"]
        val_acc = client.get_metric_history(run.info.run_id, "val_acc")
        val_loss = client.get_metric_history(run.info.run_id, "val_loss")
        assert [(m.step, m.value) for m in val_acc] == [
            (r["epoch"], pytest.approx(r["val_accuracy"])) for r in history
        ]
        assert [m.step for m in val_loss] == [r["epoch"] for r in history]
        assert run.data.metrics["train_seconds"] > 0
        assert run.data.metrics["best_val_acc"] == pytest.approx(payload["meta"]["val_accuracy"])
        folder = tracking.runs_dir(tracking_store) / run.data.tags["pipeline.run"]
        assert config.sidecar_path(folder / "fastnet.pt").is_file()


@pytest.mark.slow
def test_a_skipped_identical_run_leaves_no_record_and_a_failed_one_is_marked(
    tracking_store, sample_processed_dir, tmp_path
):
    out = tmp_path / "m.pt"
    cfg = recipe_config("fast", epochs=1, **TINY)
    for _ in range(2):  # the second finds the finished run and trains nothing
        with tracking.command_run(True, "m", "train", tracking.train_params(cfg)) as run:
            train(cfg, sample_processed_dir, out, callbacks=[run])
    with pytest.raises(PipelineError):
        with tracking.command_run(True, "m", "train", {}) as run:
            train(cfg, tmp_path / "nothing", out, callbacks=[run])
    _, runs = runs_of(tracking_store)
    assert [r.info.status for r in runs] == ["FINISHED", "FAILED"]


@pytest.mark.slow
def test_ensemble_members_are_children_of_the_ensembles_run(
    tracking_store, sample_processed_dir, tmp_path
):
    from pipeline.experiments.ensemble import seed_members, train_members

    cfg = recipe_config("fast", epochs=1, **TINY)
    with tracking.command_run(True, "fast", "ensemble", {"members": 2}) as parent:
        configs = seed_members(cfg, 2)
        train_members(
            configs, sample_processed_dir, tmp_path, jobs=1, progress=False, parent=parent
        )
    _, runs = runs_of(tracking_store)
    top = [r for r in runs if recorder.PARENT_TAG not in r.data.tags]
    members = [r for r in runs if recorder.PARENT_TAG in r.data.tags]
    assert len(top) == 1 and top[0].data.params == {"members": "2"}
    assert {r.data.tags[recorder.PARENT_TAG] for r in members} == {top[0].info.run_id}
    assert sorted(r.data.params["seed"] for r in members) == ["0", "1"]
    assert all(config.Path(r.data.tags["checkpoint"]).is_file() for r in members)


def test_tracking_off_opens_no_store(tmp_path, monkeypatch, sample_processed_dir):
    uri = f"sqlite:///{tmp_path / 'never' / 'm.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with tracking.command_run(tracking.wanted(False), "x", "train", {}) as run:
        run.log_epoch({"epoch": 1, "val_accuracy": 0.5})
        assert run is tracking.NO_RUN
    assert not (tmp_path / "never").exists()


def pending_record(uri, name="m", status="FINISHED"):
    """A session's record, written and left pending (as a command leaves it for its recorder)."""
    session = tracking.Session(uri, record="pending")
    run = session.start_run(name, "train", {"epochs": 1})
    run.log_epoch({"epoch": 1, "val_accuracy": 0.5, "val_loss": 1.0})
    run.end(status)
    assert session.close() is None
    (path,) = recorder.pending_dir(uri).glob(f"{session.record_id}.json")
    return session, run, path


def files_under(folder):
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_a_pending_record_is_logged_once_when_the_recorder_and_a_reader_race(
    tracking_store, tmp_path
):
    session, run, path = pending_record(tracking_store)
    before = files_under(tmp_path)
    process = recorder.start_detached(tracking_store)
    assert recorder.record_pending(tracking_store) == []  # the reader: waits or records itself
    assert process.wait(timeout=120) == 0
    _, runs = runs_of(tracking_store)
    assert [r.data.tags["pipeline.run"] for r in runs] == [run.id()]
    assert runs[0].info.status == "FINISHED" and runs[0].data.metrics["val_acc"] == 0.5
    assert not path.exists() and recorder.record_pending(tracking_store) == []
    # a recorder writes its store and nothing else (a test run beside it minds only those)
    changed = {p for p, t in files_under(tmp_path).items() if before.get(p) != t}
    assert changed and all(p.name.startswith("mlflow.db") or p.parent == path.parent
                           for p in changed)  # fmt: skip


@pytest.mark.slow
def test_a_reader_never_waits_on_a_recorder_and_lists_its_runs_as_pending(
    tracking_store, monkeypatch
):
    from filelock import FileLock

    from pipeline.experiments import runs

    _, run, path = pending_record(tracking_store)
    monkeypatch.setattr(recorder, "READER_WAIT", 0.05)
    with FileLock(recorder.pending_dir(tracking_store) / config.RECORDER_LOCK):  # a recorder
        (row,) = runs.list_runs(uri=tracking_store)
    assert (runs.run_key(row), row.info.status, row.data.params["epochs"]) == (
        run.id(),
        "PENDING",
        "1",
    )
    assert path.exists()
    (row,) = runs.list_runs(uri=tracking_store)  # the lock free: logged, then listed
    assert (runs.run_key(row), row.info.status) == (run.id(), "FINISHED") and not path.exists()


@pytest.mark.slow
def test_a_record_a_killed_recorder_left_half_logged_is_logged_whole_once(tracking_store):
    session, run, path = pending_record(tracking_store)
    client, experiment = recorder.connect(tracking_store)
    half = client.create_run(experiment, tags={recorder.RECORD_TAG: path.stem})
    assert recorder.record_pending(tracking_store) == []
    _, runs = runs_of(tracking_store)
    assert [r.data.tags["pipeline.run"] for r in runs] == [run.id()]
    assert client.get_run(half.info.run_id).info.lifecycle_stage == "deleted"


@pytest.mark.slow
def test_records_mlflow_refuses_are_one_line_each_moved_aside_and_the_others_logged(
    tracking_store,
):
    _, good, good_path = pending_record(tracking_store)
    folder = recorder.pending_dir(tracking_store)
    record = json.loads(good_path.read_text())
    entry = record["runs"][0]
    bad = {
        "0123.json": '{"record": "0123", "runs": [{"id": 3}]}',
        "0124.json": "not json {",
        "0125.json": json.dumps({"runs": [entry | {"id": "x1", "status": "BOGUS"}]}),
        "0126.json": json.dumps({"runs": [entry | {"id": "x2", "metrics": [["a", "b", 0, 0]]}]}),
    }
    for name, text in bad.items():
        (folder / name).write_text(text)
    problems = recorder.record_pending(tracking_store)
    assert len(problems) == len(bad) and all("\n" not in p for p in problems)
    for name in bad:
        (problem,) = [p for p in problems if str(folder / name) in p]
        assert "not recorded" in problem and f"{name}.rejected" in problem
        assert not (folder / name).exists() and (folder / f"{name}.rejected").is_file()
    _, runs = runs_of(tracking_store)  # a later reader: no warning, no traceback
    assert [r.data.tags["pipeline.run"] for r in runs] == [good.id()]
    assert recorder.record_pending(tracking_store) == []


def test_a_tracked_command_imports_no_mlflow(tmp_path):
    """The recording happens in the recorder's process: the command never pays MLflow's
    import (a fresh interpreter, so that no other test's import hides it)."""
    import subprocess
    import sys

    code = (
        "import sys; from pipeline.experiments import tracking\n"
        "with tracking.command_run(True, 'm', 'train', {'epochs': 1}) as run:\n"
        "    run.log_epoch({'epoch': 1, 'val_accuracy': 0.5})\n"
        "assert 'mlflow' not in sys.modules, 'mlflow imported'\n"
        "print(run.id())\n"
    )
    env = dict(
        os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'm.db'}",
        PIPELINE_TRACK_RECORDER="pending",
    )  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    (pending,) = (tmp_path / "pending").glob("*.json")
    assert json.loads(pending.read_text())["runs"][0]["id"] == done.stdout.strip()


@pytest.mark.slow
def test_a_tracked_train_draws_its_own_curves_and_is_recorded(
    tracking_store, sample_processed_dir, tmp_path
):
    """The figure is train's output, whatever tracking does: a recorder never writes models/."""
    from typer.testing import CliRunner

    from pipeline.cli import app

    out = tmp_path / "models" / "m.pt"
    args = ["train", "--model", "cnn", "--epochs", "1", "--max-steps", "3", "--device", "cpu",
            "--processed-dir", str(sample_processed_dir), "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    curves = config.curves_path(out)
    assert f"curves {curves}" in result.stdout
    assert curves.read_bytes().startswith(b"\x89PNG") and curves.stat().st_size > 10_000
    _, runs = runs_of(tracking_store)
    assert [r.data.params["model"] for r in runs] == ["cnn"]
    assert runs[0].data.tags["dataset"] == "sample"


def test_tracking_without_mlflow_is_one_warning_and_the_command_runs_untracked(
    tmp_path, monkeypatch
):
    """Nothing is noted that nobody could record: the run is untracked (so `train` draws its
    own curves figure) and the store is never opened."""
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "mlflow" else find_spec(name, *a),
    )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'never' / 'm.db'}")
    warnings = []
    with tracking.command_run(True, "x", "train", {}, warn=warnings.append) as run:
        assert run is tracking.NO_RUN
    assert warnings == [
        "warning: tracking is off: mlflow is not installed (pip install -e '.[track]')"
    ]
    assert not (tmp_path / "never").exists()
