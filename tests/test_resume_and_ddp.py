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
def test_best_members_spread_over_torchrun_ranks_as_trained_in_one_process(
    processed_dir, tmp_path
):
    """Member k trains on rank k % 2, bit for bit as in one process; rank 0 alone scores the
    ensemble, once every member exists; a rerun trains only the members missing."""
    import re

    from typer.testing import CliRunner

    from pipeline.cli import app

    options = ["ensemble", "--recipe", "best", "--members", "4", "--epochs", "1"]
    options += ["--max-steps", "3", "--device", "cpu", "--processed-dir", str(processed_dir)]
    launch = [*TORCHRUN_TWO[:-2], "--tee", "3", "-m", "pipeline", *options, "--no-track"]
    spread = tmp_path / "spread"

    def torchrun():
        done = subprocess.run(
            [*launch, "--out-dir", str(spread)], env=_env(), capture_output=True, text=True,
            timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    stdout = torchrun()
    trained = re.findall(r"^\[default(\d)\]:member (\d)/4 ", stdout, flags=re.M)
    assert sorted(trained) == [("0", "1"), ("0", "3"), ("1", "2"), ("1", "4")]
    (summary,) = [line for line in stdout.splitlines() if "ensemble: 4 members in" in line]
    assert summary.startswith("[default0]:") and "on 3,200 of 4,000 labelled digits" in summary
    one = tmp_path / "one"
    reply = CliRunner().invoke(app, [*options, "--jobs", "1", "--no-track", "--out-dir", str(one)])
    assert reply.exit_code == 0, reply.output
    assert summary.split("min); ")[1] == reply.output.splitlines()[-1].split("min); ")[1]
    for k in range(4):
        a, b = read_payload(spread / f"best-{k}.pt"), read_payload(one / f"best-{k}.pt")
        assert a["meta"]["seed"] == b["meta"]["seed"] == k
        assert all(torch.equal(v, b["state_dict"][name]) for name, v in a["state_dict"].items())
    weights = _weights(spread / "best-3.pt")
    for path in spread.glob("best-3.*"):  # member 4 lost with its machine
        path.unlink()
    again = torchrun()
    assert again.count("(kept: trained earlier)") == 3 and "[default1]:member 4/4 " in again
    assert all(torch.equal(v, _weights(spread / "best-3.pt")[k]) for k, v in weights.items())
