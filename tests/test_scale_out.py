"""Outgrowing one machine: many tuning workers on one Optuna study (a journal file, a real
PostgreSQL, `--workers`), and tracking to a real `mlflow server` that may go away."""

import hashlib
import os
import subprocess
import sys
import uuid

import pytest

from pipeline import config
from pipeline.experiments import recorder, runs, tracking
from pipeline.experiments.tune import SearchSpace, open_storage, over_budget, suggest

from conftest import assert_one_line_error, invoke

# The CLI's search space with --max-epochs 2: trials of 1-2 epochs on the 3,600 sample digits.
TUNE = ["--max-epochs", "2", "--device", "cpu", "--no-track"]
SPACE = SearchSpace(epochs=(1, 2))
GOOD = dict(lr=4e-3, weight_decay=5e-4, epochs=2, width=8, batch_size=256, augment=False)
BAD = GOOD | {"lr": 1e-6}  # learns nothing in 2 epochs: below any learning trial's median
LAST_LINES = ("reproduce: ", "tune: 1 trial(s) still running", "tune: 2 trial(s) still running")


def start_tune(processed_dir, tmp_path, storage, study, *extra):
    command = [
        sys.executable,
        "-m",
        "pipeline",
        "tune",
        "--storage",
        storage,
        "--study",
        study,
        "--processed-dir",
        processed_dir,
        "--work-dir",
        tmp_path / "tune",
        *TUNE,
        *extra,
    ]
    return subprocess.Popen(  # fmt: skip
        [str(word) for word in command],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finished(process) -> list[str]:
    output = process.communicate(timeout=600)[0]
    assert process.returncode == 0, output
    assert "Traceback" not in output and "error:" not in output, output
    ends = [line for line in output.splitlines() if line.startswith(LAST_LINES)]
    assert len(ends) == 1, output  # the best trial's command, or that another worker prints it
    return output.splitlines()


def the_trials(study):
    """The study's trials, less any a worker asked for past the budget and ended unrun."""
    trials = [t for t in study.get_trials() if not t.user_attrs.get("over_budget")]
    assert all(not t.params for t in study.get_trials() if t.user_attrs.get("over_budget"))
    return trials


def test_the_budget_is_the_first_trials_by_number_whoever_asked():
    import optuna
    from optuna.trial import TrialState

    study = optuna.create_study()
    asked = [study.ask() for _ in range(4)]  # four workers, each asking at once
    study.tell(asked[0], state=TrialState.FAIL)  # killed: its place goes to a later trial
    study.tell(asked[1], 0.5)
    assert [over_budget(study, t.number, 2) for t in asked] == [False, False, False, True]
    assert [over_budget(study, t.number, 3) for t in asked] == [False, False, False, False]


@pytest.mark.parametrize(
    ("storage", "fragment"),
    [("redis://127.0.0.1/0", "expected sqlite:///<file>"),
     ("journal:///no/such/folder/optuna.log", "FileNotFoundError"),
     ("postgresql+psycopg2://me:secret@127.0.0.1:1/db", "OperationalError")],
)  # fmt: skip
def test_an_unknown_or_unusable_storage_is_one_line_before_any_trial(
    sample_processed_dir, tmp_path, storage, fragment
):
    pytest.importorskip("optuna")
    result = invoke("tune", "--trials", "1", "--storage", storage, "--processed-dir",
                    sample_processed_dir, "--work-dir", tmp_path / "tune", *TUNE)  # fmt: skip
    assert_one_line_error(result, "--storage", fragment)
    assert "secret" not in result.output and not (tmp_path / "tune").exists()


@pytest.mark.slow  # two tune processes train 4 small models
def test_two_tune_commands_on_one_journal_share_the_studys_budget(sample_processed_dir, tmp_path):
    import optuna

    storage = f"journal://{tmp_path / 'optuna.log'}"
    workers = [start_tune(sample_processed_dir, tmp_path, storage, "j", "--trials", 4)
               for _ in range(2)]  # fmt: skip
    for worker in workers:
        finished(worker)
    study = optuna.load_study(study_name="j", storage=open_storage(storage))
    trials = the_trials(study)
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert {t.state.name for t in trials} <= {"COMPLETE", "PRUNED"}
    assert len({t.params["lr"] for t in trials}) == 4  # each drew its own: no repeats
    assert len({t.user_attrs["worker"] for t in trials}) == 2


@pytest.mark.slow  # a real PostgreSQL; three workers train 6 small models
def test_workers_on_one_machine_and_another_share_a_postgres_study_and_prune_across(
    postgres_url, sample_processed_dir, tmp_path
):
    """Two trials another process finished set the bar; the two queued trials that cannot
    learn are pruned at epoch 2 by whichever worker runs them, and the budget is the study's."""
    import optuna

    name = f"cluster-{uuid.uuid4().hex}"
    study = optuna.create_study(study_name=name, storage=postgres_url, direction="maximize")
    for _ in range(2):  # the bar: as two learning 2-epoch trials report
        study.enqueue_trial(GOOD)
        trial = study.ask()
        suggest(trial, SPACE)
        trial.report(0.90, 1)
        trial.report(0.95, 2)
        study.tell(trial, 0.95)
    study.enqueue_trial(BAD)
    study.enqueue_trial(BAD)

    here = start_tune(sample_processed_dir, tmp_path, postgres_url, name, "--trials", 8,
                      "--workers", 2)  # fmt: skip
    elsewhere = start_tune(sample_processed_dir, tmp_path, postgres_url, name, "--trials", 8)
    lines = finished(here) + finished(elsewhere)

    shared = optuna.load_study(study_name=name, storage=postgres_url)
    trials = {t.number: t for t in the_trials(shared)}
    assert sorted(trials) == list(range(8))
    assert {t.state.name for t in trials.values()} <= {"COMPLETE", "PRUNED"}
    assert [trials[n].state.name for n in (2, 3)] == ["PRUNED", "PRUNED"]
    assert [trials[n].last_step for n in (2, 3)] == [2, 2]
    assert len({trials[n].params["lr"] for n in range(4, 8)} - {GOOD["lr"], BAD["lr"]}) == 4
    assert len({trials[n].user_attrs["worker"] for n in range(2, 8)}) == 3
    said = sorted(line.split(":")[0] for line in lines if ": pruned at epoch" in line)
    assert said == sorted(f"trial {n}" for n, t in trials.items() if t.state.name == "PRUNED")


@pytest.mark.slow  # one command, two processes, 3 small models
def test_workers_on_one_machine_share_the_default_sqlite_study(sample_processed_dir, tmp_path):
    import optuna

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    lines = finished(
        start_tune(sample_processed_dir, tmp_path, storage, "w", "--trials", 3, "--workers", 2)
    )
    trials = the_trials(optuna.load_study(study_name="w", storage=storage))
    assert sorted(t.number for t in trials) == [0, 1, 2]
    assert len({t.user_attrs["worker"] for t in trials}) == 2
    (summary,) = [line for line in lines if line.startswith("tune: study w")]
    counts = summary.split("(")[1].split(")")[0].split(", ")  # e.g. 2 complete, 1 pruned
    assert sum(int(count.split()[0]) for count in counts) == 3, summary
    assert sum(line.startswith("reproduce: ") for line in lines) == 1


@pytest.fixture
def tracked_to(mlflow_server, tmp_path, monkeypatch):
    """Tracking on, into the test server, in an experiment of this test's own; kept copies and
    pending records under tmp_path; MLflow gives up at once on a server that is away."""
    monkeypatch.setattr(config, "TRACKING_EXPERIMENT", f"scale-out-{uuid.uuid4().hex}")
    monkeypatch.setattr(config, "RUNS_DIR", tmp_path / "experiments" / "runs")
    for name, value in {"PIPELINE_TRACK": "1", "MLFLOW_TRACKING_URI": mlflow_server.url,
                        "PIPELINE_TRACK_RECORDER": "inline", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
                        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
                        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    return mlflow_server


def train_args(processed_dir, out):
    return ["train", "--model", "fastnet", "--width", "4", "--batch-size", "256", "--epochs", "2",
            "--device", "cpu", "--processed-dir", processed_dir, "--out", out]  # fmt: skip


def server_runs(url, run_id):
    client, experiment = recorder.connect(url)
    found = client.search_runs([experiment], f"tags.`{recorder.RUN_TAG}` = '{run_id}'")
    return client, found


@pytest.mark.slow  # a real mlflow server
def test_a_tracked_train_reaches_the_server_with_its_metrics_and_checkpoint(
    tracked_to, sample_processed_dir, tmp_path
):
    result = invoke(*train_args(sample_processed_dir, tmp_path / "m.pt"))
    assert result.exit_code == 0 and result.stderr == "", result.output
    (row,) = runs.list_runs(uri=tracked_to.url)
    client, (run,) = server_runs(tracked_to.url, runs.run_key(row))
    assert run.info.status == "FINISHED" and run.data.params["model"] == "fastnet"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")] == [1, 2]
    assert sorted(a.path for a in client.list_artifacts(run.info.run_id)) == ["m.json", "m.pt"]
    copy = client.download_artifacts(run.info.run_id, "m.pt", str(tmp_path / "download"))
    sha = hashlib.sha256(open(copy, "rb").read()).hexdigest()  # noqa: SIM115
    assert sha == run.data.tags["checkpoint_sha256"] == runs.file_sha256(tmp_path / "m.pt")
    assert not list(recorder.pending_dir(tracked_to.url).glob("*.json"))


@pytest.mark.slow  # a real mlflow server, stopped and started again
def test_a_server_that_vanishes_midway_keeps_the_run_pending_and_it_is_logged_once_back(
    tracked_to, sample_processed_dir, tmp_path, monkeypatch
):
    def check_then_vanish(uri):  # the server answers the command's check, then goes away
        check(uri)
        tracked_to.stop()

    check = tracking.check_store
    try:
        with monkeypatch.context() as patch:
            patch.setattr(tracking, "check_store", check_then_vanish)
            result = invoke(*train_args(sample_processed_dir, tmp_path / "m.pt"))
        assert result.exit_code == 0, result.output
        (warning,) = result.stderr.splitlines()
        assert warning.startswith("warning: tracking store ") and "stay pending" in warning
        (pending,) = recorder.pending_dir(tracked_to.url).glob("*.json")
        assert_one_line_error(invoke("runs"), tracked_to.url, "unreachable")  # away: said
        assert pending.exists()
    finally:
        tracked_to.start()
    (row,) = runs.list_runs(uri=tracked_to.url)  # the next reader records it
    assert row.info.status == "FINISHED" and not pending.exists()
    assert [r.info.run_id for r in runs.list_runs(uri=tracked_to.url)] == [row.info.run_id]
    client, found = server_runs(tracked_to.url, runs.run_key(row))
    assert len(found) == 1 and "m.pt" in [
        a.path for a in client.list_artifacts(found[0].info.run_id)
    ]
    assert os.path.isfile(row.data.tags["checkpoint"])
