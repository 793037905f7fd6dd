"""Checkpoints rebuild their model, refuse anything else, and are never half-written."""

import signal
import subprocess
import sys
import time

import pytest
import torch

from pipeline import config
from pipeline.checkpoints import load_checkpoint, read_payload, save_checkpoint
from pipeline.errors import PipelineError
from pipeline.models import build_model


def _saved(tmp_path, name="lenet"):
    torch.manual_seed(0)
    model = build_model(name).eval()
    path = tmp_path / f"{name}.pt"
    save_checkpoint(path, model, {"model": name, "arch_args": {}, "val_accuracy": 0.5})
    return model, path


def test_round_trip_restores_the_same_function(tmp_path):
    model, path = _saved(tmp_path)
    loaded = load_checkpoint(path)
    x = torch.randn(4, 1, 28, 28)
    assert torch.equal(model(x), loaded.model(x))
    assert not loaded.model.training
    assert loaded.meta["normalization"] == {"mean": 0.1307, "std": 0.3081}
    assert loaded.meta["versions"]["torch"] == torch.__version__
    assert config.sidecar_path(path).read_text().count('"val_accuracy": 0.5') == 1


def test_missing_truncated_and_garbage_files_get_one_line(tmp_path):
    _, path = _saved(tmp_path)
    with pytest.raises(PipelineError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "absent.pt")
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(PipelineError, match="truncated or corrupt"):
        load_checkpoint(path)
    path.write_text("not a checkpoint at all")
    with pytest.raises(PipelineError, match="truncated or corrupt"):
        load_checkpoint(path)


def test_foreign_checkpoints_are_refused(tmp_path):
    bare = tmp_path / "bare.pt"
    torch.save(build_model("cnn").state_dict(), bare)
    with pytest.raises(PipelineError, match="not a checkpoint written by `pipeline train`"):
        load_checkpoint(bare)
    pickled = tmp_path / "pickled.pt"
    torch.save(build_model("cnn"), pickled)  # a whole module: needs unpickling code
    with pytest.raises(PipelineError, match="refused"):
        load_checkpoint(pickled)


def test_weights_that_do_not_fit_the_architecture_are_refused(tmp_path):
    path = tmp_path / "swapped.pt"
    save_checkpoint(path, build_model("cnn"), {"model": "lenet", "arch_args": {}})
    with pytest.raises(PipelineError, match="weights do not fit 'lenet'"):
        load_checkpoint(path)


WRITER = """
import sys, torch
from pathlib import Path
from pipeline.checkpoints import save_checkpoint
from pipeline.models import build_model
path = Path(sys.argv[1]); model = build_model("mlp", hidden=4000)  # ~13 MB per write
print("ready", flush=True)
step = 0
while True:
    step += 1
    torch.nn.init.constant_(model.net[1].bias, float(step))
    save_checkpoint(path, model, {"model": "mlp", "arch_args": {"hidden": 4000}, "step": step})
"""


def test_a_killed_write_never_leaves_a_loadable_partial_checkpoint(tmp_path):
    path = tmp_path / "live.pt"
    for delay in (0.3, 0.7, 1.1):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if path.exists():
            loaded = load_checkpoint(path)  # whatever is there is whole and consistent
            step = loaded.meta["step"]
            assert torch.all(loaded.model.net[1].bias == float(step))
    assert path.exists(), "the writer never finished a single checkpoint"
    leftovers = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    for leftover in leftovers:  # a killed write leaves only a temp file, never read as valid
        with pytest.raises(PipelineError):
            read_payload(leftover.with_name("absent.pt"))
