"""`pipeline bench`: every figure it prints is measured, and its ratios follow from its figures.

Also what the end-to-end section stands on: the tutorial's single script, the phase timings
the commands report, and the thread count that keeps a busy machine from stalling torch.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from pipeline import config
from pipeline.baselines.tutorial import tutorial_split
from pipeline.bench import run
from pipeline.bench.end_to_end import EndToEnd, ProcessTiming, bench_end_to_end
from pipeline.bench.report import format_end_to_end, format_report
from pipeline.bench.training import bench_ddp, bench_ensemble, spinning_core
from pipeline.cli import app
from pipeline.common import device, timings
from pipeline.common.errors import PipelineError
from pipeline.data.datasets import load_split
from pipeline.data.prepare import split_train_val
from pipeline.inference.submission import read_submission
from pipeline.training.train import train

from conftest import tiny_config

runner = CliRunner()

NUMBER = r"([\d,]+(?:\.\d+)?)"
MODEL_ROW = re.compile(r"^(\w+)" + rf"\s+{NUMBER}" * 4 + rf"\s+{NUMBER}x\s+{NUMBER}\s")
# "pipeline train  3.62  1.35  0.01  0.67  0.54  1.05": wall, import, load, work, write, other
PROCESS_ROW = re.compile(r"^(pipeline \w+|tutorial script|lean tutorial)" + r"\s+(-?\d+\.\d+)" * 6)


def number(text: str) -> float:
    return float(text.replace(",", ""))


def test_bench_prints_measured_figures_and_consistent_ratios(
    sample_raw_dir, processed_dir, tmp_path
):
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
            "--no-end-to-end",
            "--serve-checkpoint", str(tmp_path / "none.pt"),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    out = result.stdout
    parse = re.search(r"parse train.csv \+ test.csv\s+(\d+\.\d+) s", out)
    assert parse and 0 < float(parse.group(1)) < 30
    rows = {m.group(1): m for line in out.splitlines() if (m := MODEL_ROW.match(line))}
    assert set(rows) == {"mlp", "lenet"}
    for row in rows.values():
        train, _, ours_at_50, tutorial_at_50, _, predict = map(number, row.groups()[1:])
        assert min(train, ours_at_50, tutorial_at_50, predict) > 0
    best = re.search(r"best recipe's net \(fastnet, augmentation on, batch 16\): ([\d,]+)", out)
    assert best and number(best.group(1)) > 0
    assert "fast recipe" not in out and "torchrun" not in out and "end to end" not in out
    busy = re.search(rf"cpu training \(mlp, (\d+) cores\): quiet {NUMBER} img/s at (\d+) "
                     rf"threads, one core busy {NUMBER} img/s at (\d+)", out)  # fmt: skip
    assert busy and number(busy[2]) > 0 and number(busy[4]) > 0
    assert int(busy[5]) <= int(busy[3])  # never more threads with a core taken
    assert f"skipped: {tmp_path / 'none.pt'} does not exist" in out  # no model, no load test


def check_end_to_end_section(out: str) -> None:
    """Each process's wall time is measured and splits into its phases; totals and ratio add up."""
    rows = {
        m[1]: list(map(float, m.groups()[1:]))
        for m in map(PROCESS_ROW.match, out.splitlines())
        if m
    }
    assert set(rows) == {
        "pipeline prepare",
        "pipeline train",
        "pipeline predict",
        "tutorial script",
        "lean tutorial",
    }
    for name, (wall, imports, load, work, write, _) in rows.items():
        assert wall > 0 and imports > 0 and work > 0 and min(load, write) >= 0, name
        assert imports + load + work + write < wall + 0.05, name  # phases never overlap
    ours = re.search(r"^ours, 3 commands\s+(\d+\.\d+)\s+val accuracy (\d+\.\d+)%", out, re.M)
    tutorial_accuracy = re.search(r"^tutorial script .* val accuracy (\d+\.\d+)%", out, re.M)
    assert ours and 80 < float(ours[2]) <= 100
    assert tutorial_accuracy and 80 < float(tutorial_accuracy[1])
    agree = re.search(r"submissions agree on (\d+\.\d+)%", out)
    assert agree and 80 < float(agree[1]) <= 100
    lean_agree = re.search(r"lean tutorial: .* agree on (\d+\.\d+)%", out)
    assert lean_agree and 80 < float(lean_agree[1]) <= 100


@pytest.mark.slow  # four processes and the tutorial's per-image loop: about 15 s
def test_end_to_end_runs_our_three_commands_and_the_tutorial_script(sample_raw_dir, tmp_path):
    e2e = bench_end_to_end(sample_raw_dir, work_dir=tmp_path)
    assert [c.name for c in e2e.commands] == ["prepare", "train", "predict"]
    for csv in ("submission.csv", "tutorial.csv", "lean.csv"):  # valid, a label per test digit
        assert len(read_submission(tmp_path / csv, n_rows=1000)) == 1000
    check_end_to_end_section("\n".join(format_end_to_end(e2e)))


def test_the_end_to_end_section_is_printed_from_its_figures(
    sample_raw_dir, processed_dir, monkeypatch
):
    """(Its absence with --no-end-to-end is checked by the test above.)"""
    timing = ProcessTiming("x", 2.0, {"import": 1.0, "load": 0.2, "work": 0.5, "write": 0.1})
    ours = [replace(timing, name=name) for name in ("prepare", "train", "predict")]
    tutorial, lean = (replace(timing, name=name, wall_s=9.0) for name in ("tutorial", "lean"))
    canned = EndToEnd(ours, [tutorial, replace(lean, wall_s=12.0)], [0.99, 0.98], 0.98, 0.97, 1)
    fake = lambda raw_dir, repeats: canned  # noqa: E731
    monkeypatch.setattr("pipeline.bench.end_to_end.bench_end_to_end", fake)
    result = runner.invoke(
        app,
        [
            "bench",
            "--raw-dir", str(sample_raw_dir),
            "--processed-dir", str(processed_dir),
            "--device", "cpu",
            "--models", "mlp",
            "--steps", "5",
            "--best-batch-sizes", "8",
            "--no-best-net",
            "--no-fast-recipe",
            "--no-ddp",
            "--no-busy-core",
            "--no-serve",
            "--end-to-end",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    check_end_to_end_section(result.stdout)
    assert "tutorial script: 1.50x as fast (9.00 s / 6.00 s;" in result.stdout
    assert "lean tutorial: 2.00x as fast (12.00 s / 6.00 s;" in result.stdout


# ------------------------------------------------------------------ the tutorial's script


def test_the_tutorial_holds_out_the_rows_prepare_holds_out(sample_raw_dir, processed_dir):
    frame = pd.read_csv(sample_raw_dir / config.TRAIN_CSV)
    train_part, val_part = tutorial_split(frame, seed=0)
    for part, name in ((train_part, "train"), (val_part, "val")):
        ids = np.sort(part.index.to_numpy()) + 1  # prepare's ids are 1-based CSV rows
        assert np.array_equal(ids, load_split(processed_dir, name).ids.numpy()), name
        assert np.array_equal(part["label"].sort_index(), load_split(processed_dir, name).labels)


def test_prepare_draws_scikit_learns_stratified_split_and_refuses_what_it_refuses():
    """`prepare` holds out exactly the rows of the tutorial's `train_test_split`, errors too."""
    from sklearn.model_selection import train_test_split

    rng = np.random.default_rng(0)
    for _ in range(60):
        n, k = int(rng.integers(20, 2000)), int(rng.integers(2, 11))
        labels = rng.choice(k, size=n, p=rng.dirichlet(np.full(k, rng.uniform(0.3, 5))))
        fraction = float(rng.choice([0.1, 0.25, 1 / 3, 0.5, 0.05, 0.9, rng.uniform(0.01, 0.99)]))
        seed = int(rng.integers(0, 2**32))
        try:
            expected = train_test_split(
                np.arange(n), test_size=fraction, stratify=labels, random_state=seed
            )
        except ValueError:  # a digit with one row, or too few rows for every digit
            with pytest.raises(PipelineError, match="cannot stratify"):
                split_train_val(labels, fraction, seed)
            continue
        got = split_train_val(labels, fraction, seed)
        for rows, sklearn_rows in zip(got, expected, strict=True):
            assert np.array_equal(rows, np.sort(sklearn_rows)), (n, k, fraction, seed)


# ------------------------------------------------------------------ phase timings


def test_phases_add_up_without_overlapping(monkeypatch):
    clock = [100.0]  # a clock the test moves by hand: exact, whatever the machine's load
    monkeypatch.setattr(timings.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(timings, "PHASES", {})
    with timings.phase("work"):
        clock[0] += 2
        with timings.phase("write"):  # taken out of the enclosing "work"
            clock[0] += 3
        clock[0] += 2
    with timings.phase("write"):
        clock[0] += 1
    assert timings.PHASES == {"work": 4, "write": 4}


def test_a_command_writes_its_phases_where_pipeline_timings_says(processed_dir, tmp_path):
    path = tmp_path / "timings.json"
    command = [sys.executable, "-m", "pipeline", "prepare", "--raw-dir", str(tmp_path / "none"),
               "--processed-dir", str(tmp_path / "processed")]  # fmt: skip
    started = time.time()
    done = subprocess.run(
        command, env=dict(os.environ, PIPELINE_TIMINGS=str(path)), capture_output=True, text=True
    )
    assert done.returncode == 1 and "no such file" in done.stderr  # a failed run reports too
    figures = json.loads(path.read_text())
    assert started < figures[timings.FIRST_PHASE_AT] < time.time() and figures["load"] >= 0
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically, nothing left beside it


# ------------------------------------------------------------------ threads on a busy machine


def test_torch_gets_the_cores_other_processes_leave_free(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(device, "_THREADS", {})
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(4)  # torch's default on this pretend 4-core machine
        for busy, threads in [(3, 1), (9, 1), (1, 3), (0, 4)]:
            monkeypatch.setattr(device, "busy_cores_elsewhere", lambda busy=busy: busy)
            assert device.use_free_cores() == threads == torch.get_num_threads(), busy
        torch.set_num_threads(2)  # the caller's own choice is kept
        assert device.use_free_cores() == 2 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def test_cpu_training_takes_the_free_cores_and_records_its_count(
    sample_processed_dir, tmp_path, monkeypatch
):
    """Two threads with the other core busy ran 5x slower than one: a CPU run takes one
    thread per free core, and its checkpoint says how many (float sums depend on it)."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(device, "_THREADS", {})
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)  # torch's default on this pretend 2-core machine
        for busy, threads in [(1, 1), (0, 2)]:
            monkeypatch.setattr(device, "busy_cores_elsewhere", lambda busy=busy: busy)
            out = tmp_path / f"busy{busy}.pt"
            train(tiny_config(), sample_processed_dir, out, progress=False)
            meta = torch.load(out, weights_only=True)["meta"]
            assert meta["cpu_threads"] == threads == torch.get_num_threads(), busy
    finally:
        torch.set_num_threads(before)


def test_a_process_spinning_on_a_core_is_seen_as_busy():
    with spinning_core(60):
        assert device.busy_cores_elsewhere() >= 1


def test_a_process_spinning_at_the_lowest_priority_is_seen_as_giving_way():
    """Tracking's recorder runs at nice 19: predict still takes every core it leaves."""
    with spinning_core(60, setup="import os; os.nice(19)"):
        assert device.yielding_processes() >= 1


@pytest.mark.slow
def test_bench_ddp_compares_one_and_two_torchrun_processes(processed_dir):
    figures = bench_ddp(processed_dir, "cpu", "mlp", steps=5)
    assert figures.one_process > 0 and figures.two_processes > 0


@pytest.mark.slow
def test_bench_ensemble_trains_the_best_members_one_at_a_time_and_two_at_once(processed_dir):
    figures = bench_ensemble(processed_dir, torch.device("cpu"), steps=2, members=2)
    report = run.BenchReport("cpu", 0.0, 0.0, 0.0, ensemble=figures)
    line = re.search(
        rf"^best ensemble \(2 members of 2 steps\): 1 at a time {NUMBER} members/min, "
        rf"2 at once {NUMBER} members/min \({NUMBER}x\)$",
        format_report(report),
        re.M,
    )
    assert line, format_report(report)
    one, two, ratio = map(number, line.groups())
    assert 0 < one < 6000 and 0 < two < 6000  # a member takes more than 10 ms
    assert ratio == pytest.approx(two / one, rel=0.1 / min(one, two), abs=0.01)  # rounded


SERVE_LINE = re.compile(
    r"  (small JSON digits: 2,000|5000x5000 PNG uploads: 32) requests, 8 clients: "
    r"p50 (\d+\.\d) ms, p95 (\d+\.\d) ms, p99 (\d+\.\d) ms, ([\d,]+) requests/s, (\d+) errors, "
    r"(\d+) busy \(503\); /api/health p50 (\d+\.\d) ms, p99 (\d+\.\d) ms, max (\d+\.\d) ms "
    r"over (\d+) probes; server memory ([\d,]+) MB after loading, ([\d,]+) MB peak"
)
MEMORY = re.compile(r"server memory ([\d,]+) MB after loading, ([\d,]+) MB peak")


def _bench_serve_only(sample_raw_dir, processed_dir, checkpoint):
    return runner.invoke(
        app,
        [
            "bench", "--raw-dir", str(sample_raw_dir), "--processed-dir", str(processed_dir),
            "--device", "cpu", "--models", "mlp", "--steps", "5", "--best-batch-sizes", "8",
            "--no-fast-recipe", "--no-ddp", "--no-busy-core", "--no-end-to-end", "--no-best-net",
            "--serve-checkpoint", str(checkpoint),
        ],
    )  # fmt: skip


@pytest.mark.slow
def test_the_serve_load_test_prints_ordered_percentiles(
    sample_raw_dir, processed_dir, fast_checkpoint
):
    result = _bench_serve_only(sample_raw_dir, processed_dir, fast_checkpoint)
    assert result.exit_code == 0, result.output
    assert "pipeline serve under load (cpu, 127.0.0.1):" in result.stdout
    small, uploads = SERVE_LINE.findall(result.stdout)
    for figures in (small, uploads):
        p50, p95, p99, per_second, errors, busy, h50, h99, hmax, probes, loaded, peak = (
            number(g) for g in figures[1:]
        )
        assert 0 < p50 <= p95 <= p99 and per_second > 0 and errors == 0, figures
        assert 0 < h50 <= h99 <= hmax and probes > 0 and 0 < loaded <= peak, figures
    assert number(uploads[-1]) >= number(small[-1])  # VmHWM only grows
    # The same small load on torch and on the checkpoint exported to ONNX, with memory.
    rows = result.stdout.splitlines()
    torch_row = next(row for row in rows if row.startswith("  torch ("))
    onnx_row = next(row for row in rows if row.startswith("  onnxruntime ("))
    for row in (torch_row, onnx_row):
        assert "2,000 requests, 8 clients: p50 " in row and " 0 errors" in row, row
    memory = [MEMORY.search(row) for row in (torch_row, onnx_row)]
    assert all(memory), result.stdout
    (torch_rss, torch_peak), (onnx_rss, onnx_peak) = (
        [number(g) for g in found.groups()] for found in memory
    )
    assert 20 < torch_rss <= torch_peak and 20 < onnx_rss <= onnx_peak
    assert onnx_rss < torch_rss  # torch alone holds hundreds of MB


@pytest.mark.slow
def test_the_distilled_model_is_load_tested_beside_the_ensemble_it_distils(
    processed_dir, fast_checkpoint, tmp_path
):
    from pipeline.bench.run import bench_distilled
    from pipeline.bench.serve_load import run_load_test

    assert bench_distilled(None, tmp_path, processed_dir)[0].startswith("skipped the distilled")
    for name in ("distilled", "best-0", "best-1"):
        shutil.copy(fast_checkpoint, tmp_path / f"{name}.pt")
    (fast,) = run_load_test([fast_checkpoint], processed_dir, requests=200)
    title, one, members = bench_distilled(fast, tmp_path, processed_dir)
    assert one.startswith("distilled.pt, ") and members.startswith("2 members (best-*.pt), ")
    for row in (one, members):
        assert " 0 errors" in row and re.search(r"p50 \d+\.\d\dx fast's$", row), row
