"""The `best` ensemble: members trained in processes of their own, kept across a Ctrl-C."""

import hashlib
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from pipeline import config
from pipeline.checkpoints import read_payload
from pipeline.recipes import best_members
from pipeline.train import train

# Three bagged members, two at a time in processes of their own; the first one is short, so
# it finishes while the other two are still training.
TRAIN_THREE = """
import sys
from pathlib import Path
from pipeline.ensemble import train_members
from pipeline.errors import PipelineError
from pipeline.recipes import best_members

configs = best_members(3, device="cpu", epochs=3, batch_size=32)
configs[0] = best_members(1, device="cpu", epochs=1, batch_size=32, max_steps=5)[0]
try:
    train_members(configs, Path(sys.argv[1]), Path(sys.argv[2]), jobs=2, progress=False)
except PipelineError as exc:
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(getattr(exc, "exit_code", 1))
"""


def _sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_ctrl_c_keeps_finished_members_and_the_rerun_continues(
    processed_dir, tmp_path, sigint_as_at_a_terminal
):
    models = tmp_path / "models"
    command = [sys.executable, "-c", TRAIN_THREE, str(processed_dir), str(models)]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=sigint_as_at_a_terminal,
    )
    first_line = proc.stdout.readline()  # blocks until member 1 reports
    assert first_line.startswith("member 1/3 fastnet"), first_line
    proc.send_signal(signal.SIGINT)
    rest, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "finished members kept: 1 of 3" in stderr and "Traceback" not in stderr
    first = models / "best-0.pt"
    kept = _sha256(first), first.stat().st_mtime_ns
    second_last = config.last_checkpoint_path(models / "best-1.pt")
    assert second_last.is_file()  # member 2 saved where it was
    loop = read_payload(second_last)["training_state"]["loop"]
    assert loop["epoch"] * 100 + loop["step"] < 300  # stopped part-way (100 steps an epoch)
    assert not (models / "best-2.pt").is_file() or "member 3/3" in rest

    time.sleep(0.01)
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    lines = again.stdout.splitlines()
    assert lines[0].startswith("member 1/3") and lines[0].endswith("(kept: trained earlier)")
    assert any(line.startswith("member 2/3") for line in lines[1:])
    assert (_sha256(first), first.stat().st_mtime_ns) == kept  # untouched
    # The resumed member ends with the weights of one trained without a break (one thread).
    torch.set_num_threads(1)
    cfg = best_members(3, device="cpu", epochs=3, batch_size=32)[1]
    whole = train(cfg, processed_dir, tmp_path / "whole.pt", progress=False)
    expected, got = read_payload(whole.checkpoint), read_payload(models / "best-1.pt")
    assert expected["state_dict"].keys() == got["state_dict"].keys()
    assert all(torch.equal(v, got["state_dict"][k]) for k, v in expected["state_dict"].items())
