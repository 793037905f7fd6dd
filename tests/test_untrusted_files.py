"""Every file read back is checked whole before use: a tampered resume state, meta.json, split
or checkpoint is one line naming the file and what is wrong, never a traceback, a silent
wrong answer, or a run that "finishes" without training."""

import hashlib
import json
import math
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from pipeline import config
from pipeline.cli import app
from pipeline.common.errors import PipelineError
from pipeline.data.datasets import load_split, read_meta
from pipeline.data.prepare import prepare
from pipeline.experiments.crossval import score_split
from pipeline.inference.evaluate import evaluate
from pipeline.inference.predict import predict
from pipeline.training.checkpoints import load_checkpoint, save_checkpoint
from pipeline.training.models import build_model
from pipeline.training.recipes import recipe_config
from pipeline.training.run_state import TrainingInterrupted
from pipeline.training.train import train

from conftest import StopAtStep


def _cfg(**changes):
    settings = dict(model="cnn", epochs=2, batch_size=64, device="cpu", seed=0)
    return recipe_config("fast", **(settings | changes))


def _one_line(error: pytest.ExceptionInfo, path) -> str:
    message = str(error.value)
    assert message.startswith(f"{path}: ") and "\n" not in message, message
    return message


# ----------------------------------------------------------------------- resume states


@pytest.fixture(scope="module")
def interrupted_run(small_processed_dir, tmp_path_factory):
    """Read-only: a run stopped by a Ctrl-C in the middle of its second epoch."""
    out = tmp_path_factory.mktemp("interrupted") / "run.pt"
    steps_per_epoch = 720 // 64  # the first 800 digits, 720 for training
    stop = StopAtStep(steps_per_epoch + 3)
    with pytest.raises(TrainingInterrupted):
        train(_cfg(), small_processed_dir, out, progress=False, stop=stop)
    saved = torch.load(config.last_checkpoint_path(out), weights_only=True)
    loop = saved["training_state"]["loop"]
    assert (loop["epoch"], loop["step"]) == (1, 3) and loop["order"] is not None
    return out


def _state(p):
    return p["training_state"]


def _group(p):
    return _state(p)["optimizer"]["param_groups"][0]


def _moments(p):
    return _state(p)["optimizer"]["state"][0]


TAMPERING = {
    "no scheduler": lambda p: _state(p).pop("scheduler"),
    "weights of another shape": lambda p: p["state_dict"].update(
        {"classifier.weight": torch.zeros(10, 5)}
    ),
    "NaN weights": lambda p: p["state_dict"]["classifier.bias"].fill_(math.nan),
    "moment of another shape": lambda p: _moments(p).update(exp_avg=torch.zeros(3)),
    "moment renamed": lambda p: _moments(p).update(moment=_moments(p).pop("exp_avg")),
    "moment infinite": lambda p: _moments(p)["exp_avg_sq"].fill_(math.inf),
    "optimizer step 1e9": lambda p: _moments(p).update(step=torch.tensor(1e9)),
    "lr as text": lambda p: _group(p).update(lr="fast"),
    "params of another model": lambda p: _group(p).update(params=[0, 1, 99]),
    "one param group": lambda p: _state(p)["optimizer"]["param_groups"].pop(),
    "state of a missing parameter": lambda p: _state(p)["optimizer"]["state"].update(
        {99: _moments(p)}
    ),
    "optimizer as a list": lambda p: _state(p).update(optimizer=[1, 2]),
    "scheduler at 1e9": lambda p: _state(p)["scheduler"].update(last_epoch=10**9),
    "scheduler of another kind": lambda p: _state(p)["scheduler"].update(total_steps="x"),
    "scheduler phases": lambda p: _state(p)["scheduler"]["_schedule_phases"][0].update(
        start_lr="lr"
    ),
    "scheduler as a list": lambda p: _state(p).update(scheduler=[1]),
    "rng too short": lambda p: _state(p)["rng"].update(torch=torch.zeros(10, dtype=torch.uint8)),
    "rng of another dtype": lambda p: _state(p)["rng"].update(
        shuffle=_state(p)["rng"]["shuffle"].long()
    ),
    "rng without augment": lambda p: _state(p)["rng"].pop("augment"),
    "loop step 1e9": lambda p: _state(p)["loop"].update(step=10**9),
    "loop epoch -1": lambda p: _state(p)["loop"].update(epoch=-1),
    "loop epoch as float": lambda p: _state(p)["loop"].update(epoch=1.0),
    "loop order of 5": lambda p: _state(p)["loop"].update(order=torch.arange(5)),
    "loop order repeats": lambda p: _state(p)["loop"]["order"].fill_(0),
    "loop history of text": lambda p: _state(p)["loop"].update(history=["x"]),
    "loop history missing": lambda p: _state(p)["loop"].update(history=[]),
    "loop loss NaN": lambda p: _state(p)["loop"].update(loss_sum=math.nan),
    "loop accuracy 7": lambda p: _state(p)["loop"].update(best_accuracy=7.0),
    "loop extra key": lambda p: _state(p)["loop"].update(extra=1),
}


@pytest.mark.parametrize("damage", TAMPERING.values(), ids=TAMPERING.keys())
def test_a_tampered_resume_state_is_one_line_and_trains_nothing(
    damage, interrupted_run, small_processed_dir, tmp_path
):
    shutil.copytree(interrupted_run.parent, tmp_path / "run")
    out = tmp_path / "run" / interrupted_run.name
    last = config.last_checkpoint_path(out)
    payload = torch.load(last, weights_only=True)
    damage(payload)
    torch.save(payload, last)
    before = {p.name: p.read_bytes() for p in out.parent.iterdir()}
    with pytest.raises(PipelineError) as refused:
        train(_cfg(), small_processed_dir, out, resume=True, progress=False)
    message = _one_line(refused, last)
    assert "training state is damaged" in message or "does not fit" in message, message
    assert {p.name: p.read_bytes() for p in out.parent.iterdir()} == before


def test_flipped_bytes_are_reported_as_corrupt_not_as_divergence(
    interrupted_run, small_processed_dir, tmp_path
):
    shutil.copytree(interrupted_run.parent, tmp_path / "run")
    out = tmp_path / "run" / interrupted_run.name
    last = config.last_checkpoint_path(out)
    data = bytearray(last.read_bytes())
    weights = torch.load(last, weights_only=True)["state_dict"]["classifier.weight"]
    at = data.find(weights.numpy().tobytes()[:64])
    assert at > 0
    data[at + 3] ^= 0x7F  # one weight's exponent: a huge but finite number
    last.write_bytes(bytes(data))
    with pytest.raises(PipelineError) as refused:
        train(_cfg(), small_processed_dir, out, resume=True, progress=False)
    assert "corrupt" in _one_line(refused, last) and "CRC" in str(refused.value)
    out.write_bytes(bytes(data))  # the same damage in a checkpoint to predict with
    with pytest.raises(PipelineError, match="corrupt: .* fails its CRC check"):
        load_checkpoint(out)


def test_a_tampered_resume_state_through_the_command_line(
    interrupted_run, small_processed_dir, tmp_path
):
    shutil.copytree(interrupted_run.parent, tmp_path / "run")
    out = tmp_path / "run" / interrupted_run.name
    last = config.last_checkpoint_path(out)
    payload = torch.load(last, weights_only=True)
    payload["training_state"]["loop"]["step"] = 10**9
    torch.save(payload, last)
    args = ["train", "--resume", "--out", str(out), "--processed-dir", str(small_processed_dir)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    assert result.output.startswith(f"error: {last}: its training state is damaged")
    assert "step 1000000000" in result.output and result.output.count("\n") == 1


# ----------------------------------------------------------------------- meta.json and splits


def _write_meta(processed, change):
    path = processed / config.META_JSON
    meta = json.loads(path.read_text())
    path.write_text(change(meta) if callable(change) else json.dumps(meta | change))
    return path


META_TAMPERING = {
    "files as a list": ({"files": ["train.pt"]}, "field files: input should be an object"),
    "files as text": ({"files": "train.pt"}, "field files: input should be an object"),
    "files null": ({"files": None}, "field files: input should be an object"),
    "counts as text": ({"counts": "3600"}, "field counts: input should be an object"),
    "a count as text": (
        {"counts": {"train": "3600", "val": 400, "test": 1000}},
        "field counts.train: input should be a valid integer",
    ),
    "an empty split counted": (
        {"counts": {"train": 3600, "val": 0, "test": 1000}},
        "field counts.val: input should be greater than or equal to 1",
    ),
    "a list for a string": ({"format": ["tensors"]}, "field format: input should be 'tensors'"),
    "a file outside": ({"files": {"../x.pt": "0" * 64}}, "field files.../x.pt.[key]"),
    "version as text": ({"version": "3"}, "field version: input should be 3"),
    "unknown key": ({"extra": 1}, "field extra: extra inputs are not permitted"),
    "absurd nesting": (
        lambda meta: '{"files": ' + '{"a": ' * 100_000 + "1" + "}" * 100_001,
        "field (the document): not valid JSON (recursion limit exceeded",
    ),
}


@pytest.mark.parametrize("change, problem", META_TAMPERING.values(), ids=META_TAMPERING.keys())
def test_a_meta_json_of_wrong_types_is_one_line_naming_the_field(change, problem, processed_dir):
    path = _write_meta(processed_dir, change)
    with pytest.raises(PipelineError) as refused:
        load_split(processed_dir, "val")
    assert _one_line(refused, path).startswith(f"{path}: {problem}")


def test_a_wrong_meta_json_through_train_and_prepare(processed_dir, raw_dir, tmp_path):
    path = _write_meta(processed_dir, {"files": None})
    args = ["train", "--processed-dir", str(processed_dir), "--out", str(tmp_path / "m.pt")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    assert result.output == (
        f"error: {path}: field files: input should be an object; run `pipeline prepare --force`\n"
    )
    assert not prepare(raw_dir, processed_dir).skipped  # prepare rebuilds such a folder
    assert read_meta(processed_dir)["counts"]["val"] == 400


def _rewrite_split(processed, name, change):
    """Replace one split file (and its sha256 and count in meta.json, as if prepare had)."""
    path = config.split_path(processed, name)
    with np.load(path) as archive:
        payload = change({key: archive[key] for key in ("images", "labels", "ids")})
    with open(path, "wb") as handle:
        np.savez(handle, **{k: v for k, v in payload.items() if v is not None})
    meta = json.loads((processed / config.META_JSON).read_text())
    meta["files"][path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
    meta["counts"][name] = max(len(payload["ids"]), 1)
    (processed / config.META_JSON).write_text(json.dumps(meta))
    return path


def _empty(payload):
    return {k: None if v is None else v[:0] for k, v in payload.items()}


@pytest.mark.parametrize(
    "name, change, problem",
    [
        ("train", lambda p: p | {"labels": None}, "the train split has no labels"),
        ("val", lambda p: p | {"labels": None}, "the val split has no labels"),
        ("val", _empty, "holds 0 digits, meta.json counts 1"),
        ("test", _empty, "holds 0 digits, meta.json counts 1"),
    ],
)
def test_a_split_without_labels_or_digits_is_one_line(name, change, problem, processed_dir):
    path = _rewrite_split(processed_dir, name, change)
    with pytest.raises(PipelineError) as refused:
        load_split(processed_dir, name)
    assert _one_line(refused, path).startswith(f"{path}: {problem}")


def test_training_on_an_unlabelled_train_split_stops_before_training(processed_dir, tmp_path):
    path = _rewrite_split(processed_dir, "train", lambda p: p | {"labels": None})
    with pytest.raises(PipelineError, match="the train split has no labels") as refused:
        train(_cfg(max_steps=2), processed_dir, tmp_path / "m.pt", progress=False)
    _one_line(refused, path)
    assert not (tmp_path / "m.pt").exists()


# ----------------------------------------------------------------------- architecture bounds


def _checkpoint_asking_for(tmp_path, name, arch_args):
    """A checkpoint whose metadata asks for `arch_args` (its weights are a default net's)."""
    path = tmp_path / f"{name}.pt"
    save_checkpoint(path, build_model(name), {"model": name, "arch_args": arch_args})
    return path


@pytest.mark.parametrize(
    "name, arch_args, problem",
    [
        ("fastnet", {"widths": [30_000] * 3}, "must be whole numbers 1 to 2048"),
        ("mlp", {"hidden": 10**9}, "hidden 1000000000 must be a whole number"),
        ("deepcnn", {"dropout": 5}, "dropout 5 must be a number in [0, 1)"),
        ("fastnet", {"widths": ["16"]}, "must be whole numbers"),
        ("fastnet", {"widths": [16] * 17}, "widths must be a list of 1 to 16 sizes"),
        ("cnn", {"depth": 3}, "'depth' is not an argument of 'cnn'"),
        ("cnn", {"channels": [4, 4, 4]}, "they do not build a 'cnn'"),
        ("fastnet", {"widths": [2048] * 4}, "parameters (at most 50,000,000)"),
    ],
)
def test_architecture_arguments_out_of_bounds_are_refused_before_allocating(
    name, arch_args, problem, tmp_path
):
    path = _checkpoint_asking_for(tmp_path, name, arch_args)
    with pytest.raises(PipelineError) as refused:
        load_checkpoint(path)
    message = _one_line(refused, path)
    assert "arch_args are out of bounds" in message and problem in message, message
    with pytest.raises(PipelineError, match="arch_args of"):
        recipe_config("fast", model=name, arch_args=arch_args, device="cpu")


# ----------------------------------------------------------------------- non-finite outputs


@pytest.fixture
def overflowing_checkpoint(tmp_path):
    """Finite weights so large that the logits overflow to inf (and softmax to NaN)."""
    model = build_model("mlp")
    with torch.no_grad():
        for layer in (model.net[1], model.net[3]):
            layer.weight.mul_(1e30)
    path = tmp_path / "overflow.pt"
    save_checkpoint(path, model, {"model": "mlp", "arch_args": {}})
    assert load_checkpoint(path)  # every weight is finite: the load check cannot see it
    return path


def test_non_finite_outputs_are_an_error_in_every_stage(
    overflowing_checkpoint, sample_processed_dir, tmp_path
):
    expected = f"{overflowing_checkpoint}: its outputs are NaN or infinite"
    out = tmp_path / "submission.csv"
    with pytest.raises(PipelineError, match=expected):
        predict([overflowing_checkpoint], sample_processed_dir, out, device="cpu")
    assert not out.exists()
    with pytest.raises(PipelineError, match=expected):
        evaluate(overflowing_checkpoint, sample_processed_dir, device="cpu", figures_dir=tmp_path)
    with pytest.raises(PipelineError, match=expected):
        score_split([overflowing_checkpoint], sample_processed_dir, "cpu")
    args = ["predict", "--checkpoint", str(overflowing_checkpoint), "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--processed-dir", str(sample_processed_dir)])
    assert result.exit_code == 1 and result.output.startswith(f"error: {expected}")
    assert not out.exists()
