"""`pipeline export`: parity with torch on real digits, dynamic batches, metadata, bad input.

The exporter takes a few seconds per graph (torch.export, then ONNX Script), so every test
that exports is marked slow, and they share one exported fastnet per session.
"""

import io
import json

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from pipeline import __version__, config
from pipeline.cli import app
from pipeline.common.errors import PipelineError
from pipeline.data.datasets import TensorDigits, load_split
from pipeline.inference.export import PARITY_DIGITS, TOLERANCE, default_out, export_onnx
from pipeline.inference.onnx_runtime import load_onnx
from pipeline.inference.predictor import load_for_inference, predict_logits
from pipeline.training import models
from pipeline.training.checkpoints import save_checkpoint


@pytest.fixture(scope="session")
def fast_onnx(fast_checkpoint, sample_processed_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("fast_onnx") / "fastnet.onnx"
    return export_onnx([fast_checkpoint], out, sample_processed_dir)


def torch_probabilities(checkpoint, images: torch.Tensor, temperature: float = 1.0):
    (loaded,) = load_for_inference([checkpoint], torch.device("cpu"))
    logits = predict_logits(loaded.model, TensorDigits(images), batch_size=len(images))
    return (logits / temperature).softmax(1).numpy()


def with_meta(checkpoint, path, **changes):
    """A copy of `checkpoint` at `path` with its metadata changed."""
    payload = torch.load(io.BytesIO(checkpoint.read_bytes()), weights_only=True)
    payload["meta"].update(changes)
    torch.save(payload, path)
    return path


@pytest.mark.slow
def test_onnx_runtime_matches_torch_on_1000_real_digits(
    fast_onnx, fast_checkpoint, sample_processed_dir, record_property
):
    images = load_split(sample_processed_dir, "test").images  # 1,000 real digits
    assert len(images) == 1000
    onnx_probs = load_onnx(fast_onnx.path).predict(images.numpy())
    temperature = json.loads(fast_checkpoint.with_suffix(".json").read_text())["temperature"]
    torch_probs = torch_probabilities(fast_checkpoint, images, temperature)
    diff = float(np.abs(onnx_probs - torch_probs).max())
    record_property("max_abs_diff", diff)
    assert diff < 1e-4
    assert np.array_equal(onnx_probs.argmax(1), torch_probs.argmax(1))
    assert np.allclose(onnx_probs.sum(1), 1.0, atol=1e-5)
    # The export itself compared on the validation digits before writing.
    assert fast_onnx.digits_compared == min(PARITY_DIGITS, 400)
    assert fast_onnx.max_abs_diff < TOLERANCE


@pytest.mark.slow
def test_dynamic_batch_sizes_1_and_1000(fast_onnx, sample_processed_dir):
    model = load_onnx(fast_onnx.path)
    shapes = {i.name: i.shape for i in model.session.get_inputs()}
    assert isinstance(shapes["images"][0], str) and shapes["images"][1:] == [1, 28, 28]
    images = load_split(sample_processed_dir, "test").images.numpy()
    thousand = model.session.run(None, {"images": images})[0]  # one call, no batching of ours
    assert thousand.shape == (1000, 10) and thousand.dtype == np.float32
    singles = np.concatenate(
        [model.session.run(None, {"images": x[None]})[0] for x in images[:20]]
    )
    assert singles.shape == (20, 10)
    assert np.abs(singles - thousand[:20]).max() < 1e-5


@pytest.mark.slow
def test_the_metadata_describes_the_checkpoint(fast_onnx, fast_checkpoint):
    meta = json.loads(fast_checkpoint.with_suffix(".json").read_text())
    model = load_onnx(fast_onnx.path)
    props = dict(model.session.get_modelmeta().custom_metadata_map)
    assert props == fast_onnx.metadata
    assert props["format"] == "digit-recognizer-onnx" and props["pipeline_version"] == __version__
    assert props["model"] == "fastnet" == meta["model"]
    assert json.loads(props["arch_args"]) == meta["arch_args"]
    assert json.loads(props["val_accuracy"]) == pytest.approx(meta["val_accuracy"])
    assert props["data_fingerprint"] == meta["data_fingerprint"]
    (member,) = json.loads(props["members"])
    assert member["checkpoint"] == fast_checkpoint.name
    assert member["temperature"] == meta["temperature"] != 1.0  # calibrated, baked in
    assert member["normalization"] == meta["normalization"]
    assert fast_onnx.bytes == fast_onnx.path.stat().st_size
    assert 50_000 < fast_onnx.bytes < 400_000  # fastnet's ~33k weights as float32, and the graph


@pytest.mark.slow
def test_temperature_and_ensembles_go_into_the_graph(
    fast_checkpoint, sample_processed_dir, tmp_path
):
    images = load_split(sample_processed_dir, "test").images[:300]
    hot = with_meta(fast_checkpoint, tmp_path / "member-0.pt", temperature=2.5)
    cold = with_meta(fast_checkpoint, tmp_path / "member-1.pt", temperature=0.5)
    result = export_onnx([tmp_path / "member-*.pt"], tmp_path / "pair.onnx", sample_processed_dir)
    assert result.members == 2
    probs = load_onnx(result.path).predict(images.numpy())
    expected = (torch_probabilities(hot, images, 2.5) + torch_probabilities(cold, images, 0.5)) / 2
    assert np.abs(probs - expected).max() < 1e-4
    assert np.abs(probs - torch_probabilities(fast_checkpoint, images)).max() > 0.01
    meta = load_onnx(result.path).meta
    assert [m["temperature"] for m in meta["members"]] == [2.5, 0.5]
    assert meta["model"] == "fastnet" and len(meta["arch_args"]) == 2
    assert 0.9 < meta["val_accuracy"] <= 1.0  # the ensemble's, on the validation split


class DataDependent(nn.Module):
    """A net torch.export cannot capture: Python branches on a value of the input."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(784, 10)

    def forward(self, x):
        if float(x.mean()) > 0:
            return self.linear(x.flatten(1))
        return -self.linear(x.flatten(1))


@pytest.mark.slow
def test_bad_checkpoints_get_one_line_and_no_file(
    fast_checkpoint, sample_processed_dir, tmp_path, monkeypatch
):
    monkeypatch.setitem(models.MODELS, "branchy", DataDependent)
    branchy = tmp_path / "branchy.pt"
    save_checkpoint(branchy, DataDependent(), {"model": "branchy", "arch_args": {}})
    out = tmp_path / "branchy.onnx"
    with pytest.raises(PipelineError) as caught:
        export_onnx([branchy], out, sample_processed_dir)
    message = str(caught.value)
    assert message.startswith(f"{branchy}: cannot be exported to ONNX (") and "\n" not in message
    assert not out.exists() and list(tmp_path.glob("*.onnx*")) == []

    cold = with_meta(fast_checkpoint, tmp_path / "cold.pt", temperature=-1.0)
    with pytest.raises(
        PipelineError, match=r"cold.pt: its temperature -1.0 is not a positive number"
    ):
        export_onnx([cold], out, sample_processed_dir)
    with pytest.raises(PipelineError, match=r"--out .*model.pt: give a file name ending in .onnx"):
        export_onnx([fast_checkpoint], tmp_path / "model.pt", sample_processed_dir)
    with pytest.raises(PipelineError, match="no such checkpoint"):
        export_onnx([tmp_path / "absent.pt"], out, sample_processed_dir)
    assert not out.exists()


@pytest.mark.slow
def test_predict_on_the_onnx_file_writes_the_same_submission(
    fast_onnx, fast_checkpoint, sample_processed_dir, tmp_path
):
    from pipeline.inference.predict import predict

    by_torch = predict(
        [fast_checkpoint], sample_processed_dir, tmp_path / "torch.csv", device="cpu"
    )
    by_onnx = predict([fast_onnx.path], sample_processed_dir, tmp_path / "onnx.csv", device="cpu")
    assert by_onnx.rows == by_torch.rows == 1000
    assert (tmp_path / "onnx.csv").read_bytes() == (tmp_path / "torch.csv").read_bytes()
    assert by_onnx.label_counts == by_torch.label_counts
    with pytest.raises(PipelineError, match=r"either checkpoints \(.pt\) or exported graphs"):
        predict([fast_onnx.path, fast_checkpoint], sample_processed_dir, tmp_path / "x.csv")
    with pytest.raises(PipelineError, match="--tta needs checkpoints"):
        predict([fast_onnx.path], sample_processed_dir, tmp_path / "x.csv", tta=True)
    assert not (tmp_path / "x.csv").exists()


def test_the_default_out_is_models_name_onnx(tmp_path):
    assert default_out([tmp_path / "fastnet.pt"]) == config.MODELS_DIR / "fastnet.onnx"
    assert default_out([tmp_path / "best-*.pt"]) == config.MODELS_DIR / "best.onnx"
    assert (
        default_out([tmp_path / "a.pt", tmp_path / "b.pt"]) == config.MODELS_DIR / "ensemble.onnx"
    )


def test_export_refuses_a_bad_out_and_a_missing_checkpoint_in_one_line(tmp_path):
    runner = CliRunner()
    result = runner.invoke(
        app,
        ["export", "--checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path / "x.onnx")],
    )
    assert result.exit_code == 1 and result.stdout == ""
    assert (
        result.stderr.strip()
        == f"error: {tmp_path / 'none.pt'}: no such checkpoint (run `pipeline train` first)"
    )
    result = runner.invoke(app, ["export", "--out", str(tmp_path / "x.csv")])
    assert result.exit_code == 1
    assert (
        result.stderr.strip()
        == f"error: --out {tmp_path / 'x.csv'}: give a file name ending in .onnx"
    )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_the_export_and_predict_commands(fast_checkpoint, sample_processed_dir, tmp_path):
    runner = CliRunner()
    out = tmp_path / "graphs" / "fast.onnx"
    args = ["--checkpoint", str(fast_checkpoint), "--processed-dir", str(sample_processed_dir)]
    result = runner.invoke(app, ["export", *args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    size = out.stat().st_size
    assert result.stdout.strip() == (
        f"export: 1 model(s) -> {out} ({size:,} bytes); ONNX Runtime matches torch on 400 "
        f"validation digits (max |dp| {float(result.stdout.split('|dp| ')[1][:7]):.1e})"
    )
    result = runner.invoke(
        app,
        ["predict", "--checkpoint", str(out), "--processed-dir", str(sample_processed_dir),
         "--out", str(tmp_path / "onnx.csv")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "1,000 labels from 1 model(s)" in result.stdout
    result = runner.invoke(
        app,
        ["predict", *args, "--out", str(tmp_path / "torch.csv")],
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "onnx.csv").read_text() == (tmp_path / "torch.csv").read_text()
