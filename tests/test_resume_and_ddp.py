"""Long runs: a signal mid-training saves a resumable state; torchrun DDP equals one process."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from pipeline import config
from pipeline.training.checkpoints import read_payload
from pipeline.training.recipes import recipe_config
from pipeline.training.train import train

TRAIN = [sys.executable, "-m", "pipeline", "train", "--model", "cnn", "--device", "cpu"]


# `torchrun --standalone --nproc-per-node 2 -m pipeline`, through this interpreter
TORCHRUN_TWO = [
    sys.executable,
    "-m",
    "torch.distributed.run",
    "--standalone",
    "--nproc-per-node",
    "2",
    "-m",
    "pipeline",
]


def _env():
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    if sys.platform.startswith("linux"):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    return env


def _weights(path):
    return read_payload(path)["state_dict"]


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_then_resume_gives_the_uninterrupted_weights(signum, processed_dir, tmp_path):
    torch.set_num_threads(1)  # the subprocess runs with OMP_NUM_THREADS=1: same kernels
    options = ["--epochs", "2", "--batch-size", "32", "--processed-dir", processed_dir]
    out = tmp_path / "cut.pt"
    proc = subprocess.Popen(
        [*map(str, TRAIN + options), "--out", str(out)],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    last = config.last_checkpoint_path(out)
    deadline = time.monotonic() + 120
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signum)  # epoch 1 is saved: we are inside epoch 2
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, stderr  # SIGTERM: 143, not 130
    assert "interrupted" in stderr and "--resume" in stderr and "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1 and signal.Signals(signum).name in stderr
    loop = read_payload(last)["training_state"]["loop"]
    assert loop["epoch"] == 1 and loop["step"] > 0

    resumed = subprocess.run(
        [*map(str, TRAIN + options), "--out", str(out), "--resume"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    cfg = recipe_config("fast", model="cnn", epochs=2, batch_size=32, device="cpu")
    whole = train(cfg, processed_dir, tmp_path / "whole.pt", progress=False)
    expected, got = _weights(whole.last_checkpoint), _weights(last)
    assert all(torch.equal(expected[k], got[k]) for k in expected)


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_with_the_same_global_batch(processed_dir, tmp_path):
    options = [
        "--epochs",
        "1",
        "--max-steps",
        "12",
        "--batch-size",
        "64",
        "--augment",
        "--processed-dir",
        str(processed_dir),
    ]
    ddp_out = tmp_path / "ddp.pt"
    launch = [*TORCHRUN_TWO, "train"]
    ddp = subprocess.run(
        [*launch, "--model", "cnn", "--device", "cpu", *options, "--out", str(ddp_out)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    reports = [line for line in ddp.stdout.splitlines() if line.startswith("train: ")]
    assert len(reports) == 2 and "val_acc" in reports[0]  # rank 0 alone reports (+ its curves)
    single_out = tmp_path / "single.pt"
    single = subprocess.run(
        [*map(str, TRAIN), *options, "--out", str(single_out)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert single.returncode == 0, single.stderr
    a, b = (
        _weights(config.last_checkpoint_path(ddp_out)),
        _weights(config.last_checkpoint_path(single_out)),
    )
    assert set(a) == set(b)
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-5, rtol=1e-4), name


@pytest.mark.slow
def test_ensemble_members_spread_one_per_process(processed_dir, tmp_path):
    launch = [*TORCHRUN_TWO, "ensemble", "--recipe", "fast"]  # best runs its own processes
    result = subprocess.run(
        [
            *launch,
            "--members",
            "3",
            "--model",
            "cnn",
            "--max-steps",
            "4",
            "--device",
            "cpu",
            "--processed-dir",
            str(processed_dir),
            "--out-dir",
            str(tmp_path),
        ],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    seeds = sorted(read_payload(tmp_path / f"fast-{k}.pt")["meta"]["seed"] for k in range(3))
    assert seeds == [0, 1, 2]
    assert result.stdout.count("ensemble: ") == 3  # each member reported once, by its process
