"""The whole flow, through the CLI, on the offline sample and on Kaggle's real data."""

import shutil

import pandas as pd
import pytest
from typer.testing import CliRunner

from pipeline import config
from pipeline.cli import app
from pipeline.data import kaggle_api
from pipeline.inference.evaluate import evaluate
from pipeline.inference.predict import predict
from pipeline.inference.submission import read_submission
from pipeline.training.recipes import recipe_config
from pipeline.training.train import train

runner = CliRunner()


def run(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


def test_offline_sample_flow_scores_its_own_submission(tmp_path, monkeypatch, fast_run):
    monkeypatch.setattr(kaggle_api, "credential_source", lambda: None)
    raw, processed, models = tmp_path / "raw", tmp_path / "processed", tmp_path / "models"
    downloaded = run("download", "--raw-dir", raw)  # no credentials, no zip: the sample
    assert "download [sample]" in downloaded.stdout and "OFFLINE SAMPLE" in downloaded.stderr
    assert (raw / config.TEST_LABELS_CSV).is_file()  # its answers, for scoring below
    run("prepare", "--raw-dir", raw, "--processed-dir", processed)
    # The session already trained this very run (same sample, split and recipe): with its
    # files in place, `train` recognises the finished run instead of training it again.
    shutil.copytree(fast_run.checkpoint.parent, models)
    trained = run("train", "--processed-dir", processed, "--out", models / "fastnet.pt",
                  "--device", "cpu")  # fmt: skip
    assert "is up to date" in trained.stdout
    sub = tmp_path / "submission.csv"
    run(
        "predict",
        "--checkpoint",
        models / "fastnet.pt",
        "--processed-dir",
        processed,
        "--out",
        sub,
        "--device",
        "cpu",
    )
    scored = run("evaluate", "--submission", sub, "--processed-dir", processed)
    accuracy = float(scored.stdout.split("scores ")[1].split("%")[0]) / 100
    assert accuracy >= 0.93, scored.stdout  # 1,000 held-out real digits


@pytest.mark.slow
def test_fast_recipe_on_kaggle_data_reaches_99_percent_and_a_valid_submission(
    kaggle_processed_dir, tmp_path
):
    result = train(
        recipe_config("fast", device="cpu"),
        kaggle_processed_dir,
        tmp_path / "fastnet.pt",
        progress=False,
    )
    assert result.best_accuracy >= 0.99, result.history  # 4,200 validation digits
    sub = tmp_path / "submission.csv"
    predicted = predict([result.checkpoint], kaggle_processed_dir, sub, device="cpu")
    frame = read_submission(sub)  # Kaggle's rules: header, 28,000 rows, ids 1..28000, digits
    assert predicted.rows == len(frame) == config.KAGGLE_TEST_ROWS
    assert not predicted.from_sample  # Kaggle's hidden test labels: no sample warning
    assert min(predicted.label_counts.values()) > 2000  # every digit is predicted plausibly
    report = evaluate(
        result.checkpoint, kaggle_processed_dir, device="cpu", figures_dir=tmp_path / "figures"
    )
    assert report.metrics.accuracy == pytest.approx(result.best_accuracy, abs=1e-6)
    assert report.confusion_png.stat().st_size > 10_000
    labels = pd.read_csv(sub)["Label"]
    assert labels.nunique() == 10
