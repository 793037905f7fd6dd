"""`pipeline bench`: every figure it prints is measured, and its ratios follow from its figures."""

import re

import pytest
from typer.testing import CliRunner

from pipeline.bench import bench_ddp
from pipeline.cli import app

runner = CliRunner()

NUMBER = r"([\d,]+(?:\.\d+)?)"
MODEL_ROW = re.compile(r"^(\w+)" + rf"\s+{NUMBER}" * 4 + rf"\s+{NUMBER}x\s+{NUMBER}\s")


def number(text: str) -> float:
    return float(text.replace(",", ""))


def test_bench_prints_measured_figures_and_consistent_ratios(sample_raw_dir, processed_dir):
    result = runner.invoke(
        app,
        [
            "bench",
            "--raw-dir", str(sample_raw_dir),
            "--processed-dir", str(processed_dir),
            "--device", "cpu",
            "--models", "mlp,lenet",
            "--steps", "5",
            "--batch-size", "64",
            "--best-batch-sizes", "16",
            "--no-fast-recipe",
            "--no-ddp",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    out = result.stdout
    parse = re.search(r"parse train.csv \+ test.csv\s+(\d+\.\d+) s", out)
    assert parse and 0 < float(parse.group(1)) < 30
    rows = {m.group(1): m for line in out.splitlines() if (m := MODEL_ROW.match(line))}
    assert set(rows) == {"mlp", "lenet"}
    for row in rows.values():
        train, _, ours_at_50, tutorial_at_50, ratio, predict = map(number, row.groups()[1:])
        assert min(train, ours_at_50, tutorial_at_50, predict) > 0
        assert ratio == pytest.approx(ours_at_50 / tutorial_at_50, abs=0.02)
    best = re.search(r"best recipe's net \(deepcnn, augmentation on, batch 16\): ([\d,]+)", out)
    assert best and number(best.group(1)) > 0
    assert "fast recipe" not in out and "torchrun" not in out


@pytest.mark.slow
def test_bench_ddp_compares_one_and_two_torchrun_processes(processed_dir):
    figures = bench_ddp(processed_dir, "cpu", "mlp", steps=5)
    assert figures["one_process"] > 0 and figures["two_processes"] > 0
    assert figures["ratio"] == pytest.approx(figures["two_processes"] / figures["one_process"])
