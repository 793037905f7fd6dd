"""The `best` ensemble: members trained in processes of their own, kept across a Ctrl-C."""

import hashlib
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from pipeline import config
from pipeline.training.checkpoints import read_payload
from pipeline.training.recipes import best_members
from pipeline.training.train import train

# Three bagged members, two at a time in processes of their own; the first one is short, so
# it finishes while the other two are still training.
TRAIN_THREE = """
import sys
from pathlib import Path
from pipeline.experiments.ensemble import train_members
from pipeline.common.errors import PipelineError
from pipeline.training.recipes import best_members

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
    # Member 3 may have started, and even finished, beside member 2 before the signal landed.
    assert re.search(r"finished members kept: 1(, 3)? of 3", stderr), stderr
    assert "Traceback" not in stderr
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


@pytest.mark.slow
def test_ensemble_command_trains_bagged_members_and_prints_the_out_of_bag_estimate(
    processed_dir, tmp_path
):
    from typer.testing import CliRunner

    from pipeline.cli import app
    from pipeline.experiments.runs import is_child, list_runs, run_checkpoints

    options = ["--members", "2", "--epochs", "1", "--max-steps", "3", "--device", "cpu"]
    where = ["--processed-dir", str(processed_dir), "--out-dir", str(tmp_path)]
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {"PIPELINE_TRACK": "1", "MLFLOW_TRACKING_URI": store}
    reply = CliRunner().invoke(app, ["ensemble", *options, "--jobs", "1", *where], env=env)
    assert reply.exit_code == 0, reply.output
    # Tracked: one parent run with the out-of-bag estimate, a child run per member whose
    # kept checkpoint is that member's weights; `--run` on the parent means all members.
    runs = list_runs(uri=store)
    (parent,) = [run for run in runs if "pipeline.parent" not in run.data.tags]
    children = [run for run in runs if is_child(run, parent)]
    assert parent.data.tags["command"] == "ensemble" and len(children) == 2
    assert all(run.info.status == "FINISHED" for run in runs)
    for child in children:  # recorded after both trained, dated when each one ran
        finished = (tmp_path / f"{child.info.run_name}.pt").stat().st_mtime * 1000
        assert parent.info.start_time <= child.info.start_time <= finished
    kept = run_checkpoints(parent.info.run_id, uri=store)
    assert sorted(path.read_bytes() for path in kept) == sorted(
        (tmp_path / f"best-{k}.pt").read_bytes() for k in range(2)
    )
    lines = reply.output.splitlines()
    assert lines[0].startswith("ensemble: best, 2 members on cpu (1 at once)")
    assert lines[1].startswith("member 1/2 fastnet (1 epochs, fold 0 held out): ")
    assert lines[2].startswith("member 2/2 fastnet(kernel=5) (1 epochs, fold 1 held out): ")
    assert "out-of-bag accuracy" in lines[1] and "on 800 digits" in lines[1]
    assert lines[-1].startswith("ensemble: tracked as run ")
    summary = lines[-2]
    assert "out-of-bag accuracy" in summary and "on 1,600 of 4,000 labelled digits" in summary
    assert "(1.0 voters per digit" in summary
    assert sorted(p.name for p in tmp_path.glob("best-?.pt")) == ["best-0.pt", "best-1.pt"]
    again = CliRunner().invoke(app, ["ensemble", *options, "--jobs", "1", *where], env=env)
    assert again.exit_code == 0 and again.output.count("(kept: trained earlier)") == 2


@pytest.mark.slow
def test_crossval_of_best_trains_its_differing_members_on_each_split(sample_raw_dir, tmp_path):
    from typer.testing import CliRunner

    from pipeline.cli import app

    reply = CliRunner().invoke(
        app,
        [
            "crossval", "--splits", "1", "--members", "2", "--epochs", "1", "--max-steps", "5",
            "--device", "cpu", "--raw-dir", str(sample_raw_dir),
            "--work-dir", str(tmp_path / "models"), "--processed-dir", str(tmp_path / "data"),
        ],
    )  # fmt: skip
    assert reply.exit_code == 0, reply.output
    assert "crossval: recipe best (fastnet x1 epochs, fastnet(kernel=5) x1 epochs)" in reply.output
    members = sorted(p.name for p in (tmp_path / "models" / "split-0").glob("best-?.pt"))
    assert members == ["best-0.pt", "best-1.pt"]
    meta = torch.load(tmp_path / "models" / "split-0" / "best-1.pt", weights_only=True)["meta"]
    assert "bag" not in meta and meta["train_config"]["folds"] is None  # the split's train set
