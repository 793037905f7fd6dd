"""The test servers themselves, driven with the libraries directly: one Optuna study that two
processes share in PostgreSQL, and an MLflow tracking server that keeps its runs over a restart."""

import os
import subprocess
import sys
import uuid

import pytest

from conftest import require

# A tuning worker as a cluster runs it: its own process, the study found by name in the database.
WORKER = """
import os, sys
import optuna
study = optuna.load_study(study_name=sys.argv[2], storage=sys.argv[1])
def objective(trial):
    trial.set_user_attr("pid", os.getpid())
    return trial.suggest_float("x", 0, 1) ** 2
study.optimize(objective, n_trials=3)
"""


@pytest.mark.slow
def test_two_processes_add_distinct_trials_to_one_study_in_postgres(postgres_url):
    optuna = require("optuna", "track")
    psycopg2 = require("psycopg2", "track")
    name = f"shared-{uuid.uuid4().hex}"
    study = optuna.create_study(study_name=name, storage=postgres_url)
    workers = [
        subprocess.Popen([sys.executable, "-c", WORKER, postgres_url, name]) for _ in range(2)
    ]
    assert [worker.wait(timeout=120) for worker in workers] == [0, 0]

    trials = study.get_trials()
    assert sorted(trial.number for trial in trials) == list(range(6))
    assert {trial.state for trial in trials} == {optuna.trial.TrialState.COMPLETE}
    pids = [trial.user_attrs["pid"] for trial in trials]
    assert sorted(pids.count(pid) for pid in set(pids)) == [3, 3]
    assert os.getpid() not in pids
    # The trials are rows on the server, not in some local file.
    with psycopg2.connect(postgres_url.replace("+psycopg2", "")) as db, db.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM trials JOIN studies USING (study_id) WHERE study_name = %s",
            (name,),
        )
        assert cursor.fetchone() == (6,)


@pytest.mark.slow
def test_mlflow_server_keeps_a_run_over_a_restart(mlflow_server, tmp_path, monkeypatch):
    mlflow = require("mlflow", "track")
    # Fail at once while the server is away, rather than after MLflow's retries and back-off.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    client = mlflow.MlflowClient(mlflow_server.url)
    experiment = client.create_experiment(f"services-{uuid.uuid4().hex}")
    run_id = client.create_run(experiment).info.run_id
    client.log_metric(run_id, "val_accuracy", 0.75, step=2)
    (tmp_path / "note.txt").write_text("a checkpoint stand-in")
    client.log_artifact(run_id, str(tmp_path / "note.txt"))

    with mlflow_server.stopped():
        assert not mlflow_server.healthy()
        with pytest.raises(mlflow.exceptions.MlflowException):
            client.get_run(run_id)

    run = client.get_run(run_id)
    assert run.data.metrics == {"val_accuracy": 0.75}
    assert [m.step for m in client.get_metric_history(run_id, "val_accuracy")] == [2]
    assert [a.path for a in client.list_artifacts(run_id)] == ["note.txt"]
    # The artifact went through the server into its artifact folder.
    stored = list((mlflow_server.folder / "artifacts").rglob("note.txt"))
    assert [path.read_text() for path in stored] == ["a checkpoint stand-in"]
