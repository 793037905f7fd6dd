"""Checkpoints rebuild their model, refuse anything else, and are never half-written."""

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline import config
from pipeline.common.errors import PipelineError
from pipeline.training.checkpoints import load_checkpoint, read_payload, save_checkpoint
from pipeline.training.models import build_model


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
from pipeline.training.checkpoints import save_checkpoint
from pipeline.training.models import build_model
path = Path(sys.argv[1]); model = build_model("mlp", hidden=4000)  # ~13 MB per write
print("ready", flush=True)
step = 0
while True:
    step += 1
    torch.nn.init.constant_(model.net[1].bias, float(step))
    save_checkpoint(path, model, {"model": "mlp", "arch_args": {"hidden": 4000}, "step": step})
    print(step, flush=True)  # saved; the next write starts at once
"""


def test_a_write_stopped_half_way_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    """The fast twin of the SIGKILL test below: the stop is injected mid-write."""
    model, path = _saved(tmp_path, "mlp")
    before = path.read_bytes()
    real_write = Path.write_bytes

    def half_then_interrupt(target, data):
        real_write(target, bytes(data)[:10_000])
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_bytes", half_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, build_model("mlp"), {"model": "mlp", "arch_args": {}})
    monkeypatch.undo()
    assert path.read_bytes() == before and load_checkpoint(path).meta["val_accuracy"] == 0.5
    assert {p.name for p in tmp_path.iterdir()} == {path.name, config.sidecar_path(path).name}


@pytest.mark.slow  # three processes each importing torch, killed while they write
def test_a_killed_write_never_leaves_a_loadable_partial_checkpoint(tmp_path):
    path = tmp_path / "live.pt"
    for saves in (1, 2, 3):  # killed in the middle of the write after `saves` whole ones
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout.readline().strip() == "ready"
        while int(proc.stdout.readline()) < saves:
            pass
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        loaded = load_checkpoint(path)  # what is there is whole and consistent
        step = loaded.meta["step"]
        assert step >= saves and torch.all(loaded.model.net[1].bias == float(step))
    leftovers = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    for leftover in leftovers:  # a killed write leaves only a temp file, never read as valid
        if leftover.stat().st_size < path.stat().st_size:  # cut short by the kill
            with pytest.raises(PipelineError):
                read_payload(leftover)


class Evil:
    """Unpickling this would run a shell command; weights_only must refuse it."""

    def __reduce__(self):
        return (print, ("this line must never be printed",))


def test_code_in_a_checkpoint_is_refused_as_unsafe_not_as_corrupt(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"meta": {"format": "digit-recognizer-checkpoint"}, "payload": Evil()}, path)
    with pytest.raises(PipelineError, match="refused for unsafe content") as error:
        load_checkpoint(path)
    assert "corrupt" not in str(error.value)
    assert "never be printed" not in capsys.readouterr().out


@pytest.mark.parametrize(
    "meta_change, problem",
    [
        ({"model": ["cnn"]}, "unknown architecture"),
        ({"model": {"name": "cnn"}}, "unknown architecture"),
        ({"arch_args": [1, 2]}, "arch_args are not a mapping"),
        ({"version": "1"}, "checkpoint version"),
    ],
)
def test_tampered_metadata_is_one_line(tmp_path, meta_change, problem):
    _, path = _saved(tmp_path, "cnn")
    payload = torch.load(path, weights_only=True)
    payload["meta"].update(meta_change)
    torch.save(payload, path)
    with pytest.raises(PipelineError, match=problem):
        load_checkpoint(path)


def test_a_state_dict_of_non_tensors_is_refused(tmp_path):
    _, path = _saved(tmp_path, "cnn")
    payload = torch.load(path, weights_only=True)
    payload["state_dict"] = {"weight": [1.0, 2.0]}
    torch.save(payload, path)
    with pytest.raises(PipelineError, match="state_dict is not a mapping of tensors"):
        load_checkpoint(path)


def test_nan_weights_are_refused_instead_of_predicting_zeros(tmp_path):
    model = build_model("mlp")
    with torch.no_grad():
        model.net[1].weight[0, 0] = float("nan")
    path = tmp_path / "diverged.pt"
    save_checkpoint(path, model, {"model": "mlp", "arch_args": {}})
    with pytest.raises(PipelineError, match="NaN or infinite"):
        load_checkpoint(path)
