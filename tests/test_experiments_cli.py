"""The experiment commands through typer: tracked train, `runs`, `--run`, `--no-track`, `tune`."""

import json
import shlex

import pytest

from pipeline import config
from pipeline.training.checkpoints import read_payload

from conftest import assert_one_line_error, invoke

TINY = ["--width", "4", "--batch-size", "256", "--device", "cpu"]


def tracked_id(result) -> str:
    assert result.exit_code == 0, result.output
    (line,) = [line for line in result.stdout.splitlines() if "tracked as run" in line]
    return line.split("tracked as run ")[1].split()[0]


@pytest.mark.slow  # trains four tiny models and opens MLflow's store
def test_train_runs_predict_by_run_and_no_track(
    tracking_store, sample_processed_dir, tmp_path, monkeypatch
):
    out = tmp_path / "models" / "fastnet.pt"
    common = ["--processed-dir", sample_processed_dir, "--out", out, *TINY]
    first = tracked_id(invoke("train", "--epochs", 1, *common))
    second = tracked_id(invoke("train", "--epochs", 2, *common))

    table = invoke("runs").stdout.splitlines()
    assert [line.split()[0] for line in table[1:]] == [second[:8], first[:8]]
    assert table[1].split()[1:5] == ["train", "fastnet", "fast", "2"]
    by_acc = invoke("runs", "--sort", "val_acc")
    assert by_acc.exit_code == 0 and len(by_acc.stdout.splitlines()) == 3

    submission = tmp_path / "sub.csv"
    predicted = invoke("predict", "--run", first[:8], "--processed-dir", sample_processed_dir,
                       "--out", submission, "--device", "cpu")  # fmt: skip
    assert predicted.exit_code == 0, predicted.output
    record = json.loads(config.submission_source_path(submission).read_text())
    (used,) = [config.Path(c["path"]) for c in record["checkpoints"]]
    assert used.parent.name == first and read_payload(used)["meta"]["epochs_trained"] == 1
    assert_one_line_error(
        invoke("predict", "--run", "deadbeef00", "--out", submission), "no such run"
    )
    assert_one_line_error(invoke("evaluate", "--run", "dead"), "--run dead", "no such run")

    # off: neither --no-track nor PIPELINE_TRACK=0 records or opens anything
    never = tmp_path / "never" / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{never}")
    off = invoke("train", "--epochs", 1, "--force", "--no-track", *common)
    assert off.exit_code == 0 and "tracked" not in off.stdout
    monkeypatch.setenv("PIPELINE_TRACK", "0")
    assert invoke("train", "--epochs", 2, "--force", *common).exit_code == 0
    assert not never.parent.exists()

    # a corrupt store: one line before any training, and no checkpoint written
    monkeypatch.setenv("PIPELINE_TRACK", "1")
    never.parent.mkdir()
    never.write_bytes(b"not a database " * 100)
    fresh = tmp_path / "fresh.pt"
    bad = invoke("train", "--epochs", 1, "--processed-dir", sample_processed_dir, "--out", fresh)
    assert_one_line_error(bad, str(never), "corrupt or not SQLite", "--no-track")
    assert not fresh.exists()


@pytest.mark.slow  # two tiny trials, then the printed command trains the best one again
def test_tune_prints_a_train_command_that_reproduces_its_best_trial(
    tracking_store, sample_processed_dir, tmp_path
):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    result = invoke("tune", "--trials", 2, "--max-epochs", 1, "--study", "cli",
                    "--processed-dir", sample_processed_dir, "--work-dir", tmp_path / "tune",
                    "--storage", storage, "--device", "cpu")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "tune: study cli (2 complete); best trial" in result.stdout
    (command,) = [line for line in result.stdout.splitlines() if line.startswith("reproduce: ")]
    words = shlex.split(command.removeprefix("reproduce: "))
    assert words[:2] == ["pipeline", "train"]
    again = tmp_path / "again.pt"
    retrained = invoke(*words[1:], "--out", again, "--no-track")
    assert retrained.exit_code == 0, retrained.output
    best = float(result.stdout.split("val_acc ")[-1].split("%")[0]) / 100
    assert read_payload(again)["meta"]["val_accuracy"] == pytest.approx(best, abs=5e-5)
    study_run = tracked_id(result)
    assert invoke("runs").stdout.count(study_run[:8]) == 3  # its row, and its two trials'


def test_runs_and_tune_refuse_bad_input_in_one_line(tmp_path, monkeypatch):
    garbage = tmp_path / "m.db"
    garbage.write_bytes(b"garbage " * 200)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{garbage}")
    assert_one_line_error(invoke("runs"), "corrupt or not SQLite")
    assert_one_line_error(invoke("tune", "--processed-dir", tmp_path), "--trials N, --timeout S")
    assert invoke("runs", "--sort", "speed").exit_code == 2


@pytest.mark.slow  # a fresh interpreter: Optuna's logging writes to the real stderr
def test_a_failing_trial_is_one_line_without_optunas_warning(sample_processed_dir, tmp_path):
    import os
    import subprocess
    import sys

    work = tmp_path / "a-file"
    work.write_text("not a folder")
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "tune", "--trials", "1", "--max-epochs", "1",
         "--processed-dir", sample_processed_dir, "--work-dir", work, "--device", "cpu",
         "--storage", f"sqlite:///{tmp_path / 'o.db'}", "--no-track"],
        capture_output=True, text=True, timeout=300, env=dict(os.environ),
    )  # fmt: skip
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert str(work) in lines[0] and "Trial 0 failed" not in done.stderr


def test_an_interrupted_trial_is_one_line_that_points_at_no_resume_state(
    sample_processed_dir, tmp_path, monkeypatch
):
    import signal

    from pipeline.training import train as train_module
    from pipeline.training.run_state import TrainingInterrupted

    def interrupted(cfg, processed_dir, out, **kwargs):
        raise TrainingInterrupted(out.with_suffix(".last.pt"), 0, 3, signal.SIGINT)

    monkeypatch.setattr(train_module, "train", interrupted)
    result = invoke("tune", "--trials", 1, "--processed-dir", sample_processed_dir,
                    "--work-dir", tmp_path / "tune", "--storage", f"sqlite:///{tmp_path / 'o.db'}",
                    "--no-track")  # fmt: skip
    assert result.exit_code == 130
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: interrupted: trial 0 stopped") and ".last.pt" not in line
