"""Loading `.onnx` digit readers with ONNX Runtime, torch-free: answers, checks, one-line errors.

These use a small hand-built graph (the `linear_onnx` fixture) so they stay in the fast tier;
the graphs `pipeline export` writes are tested in test_export.py.
"""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from pipeline.common.errors import PipelineError
from pipeline.data.datasets import load_split
from pipeline.inference import onnx_runtime
from pipeline.inference.onnx_runtime import load_onnx


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_a_graph_answers_real_digits_in_any_batch(linear_onnx, sample_processed_dir, tmp_path):
    model = load_onnx(linear_onnx(tmp_path / "linear.onnx"))
    test = load_split(sample_processed_dir, "test")
    images = test.images.numpy()
    assert images.shape == (1000, 1, 28, 28) and images.dtype == np.uint8

    probs = model.predict(images)
    expected = softmax(images.reshape(1000, -1) / 255.0 @ linear_onnx.weights + linear_onnx.bias)
    assert probs.shape == (1000, 10) and probs.dtype == np.float32
    assert np.abs(probs - expected).max() < 1e-5
    assert np.array_equal(probs.argmax(1), expected.argmax(1))
    assert (probs.argmax(1) == test.labels.numpy()).mean() > 0.8  # it reads digits
    one = model.predict(images[:1])
    assert one.shape == (1, 10) and np.allclose(one[0], probs[0], atol=1e-6)
    assert model.model == "linear" and model.val_accuracy == 0.85
    assert model.meta["members"] == [{"checkpoint": "linear.pt", "model": "linear"}]
    with pytest.raises(ValueError, match=r"uint8 \[N, 1, 28, 28\]"):
        model.predict(images[:, 0])


def _one_line_error(path) -> str:
    with pytest.raises(PipelineError) as caught:
        load_onnx(path)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(str(path)), message
    return message


def test_damaged_and_foreign_files_get_one_line(linear_onnx, tmp_path):
    good = linear_onnx(tmp_path / "good.onnx").read_bytes()
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(good[: len(good) // 2])
    assert "not a readable ONNX model" in _one_line_error(truncated)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"PK\x03\x04 this is a zip, not a graph" * 10)
    assert "not a readable ONNX model" in _one_line_error(garbage)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    assert "not a readable ONNX model" in _one_line_error(empty)
    assert "no such ONNX file" in _one_line_error(tmp_path / "absent.onnx")
    # The right signature but not ours: nothing says what it computes.
    foreign = linear_onnx(tmp_path / "foreign.onnx", props=None)
    assert "not an ONNX file written by `pipeline export`" in _one_line_error(foreign)
    newer = linear_onnx(tmp_path / "newer.onnx", props={"format": "digit-recognizer-onnx"})
    assert "export format None != 1" in _one_line_error(newer)


def test_other_inputs_and_outputs_are_refused(linear_onnx, tmp_path):
    from onnx import TensorProto  # 1.5 s to import: not at collection

    renamed = linear_onnx(tmp_path / "renamed.onnx", input_name="input")
    assert "input must be one tensor `images`, not input tensor(uint8)" in _one_line_error(renamed)
    floats = linear_onnx(tmp_path / "floats.onnx", input_type=TensorProto.FLOAT)
    assert "must be uint8 [N, 1, 28, 28] with a dynamic N, not tensor(float)" in (
        _one_line_error(floats)
    )
    fixed = linear_onnx(tmp_path / "fixed.onnx", input_shape=(1, 1, 28, 28))
    assert "with a dynamic N, not tensor(uint8) [1, 1, 28, 28]" in _one_line_error(fixed)
    flat = linear_onnx(tmp_path / "flat.onnx", input_shape=("batch", 28, 28))
    assert "not tensor(uint8) ['batch', 28, 28]" in _one_line_error(flat)
    output = linear_onnx(tmp_path / "output.onnx", output_name="logits_out")
    assert "output must be one tensor `probabilities`, not logits_out" in _one_line_error(output)


def test_a_file_over_the_size_limit_is_not_read(linear_onnx, tmp_path, monkeypatch):
    path = linear_onnx(tmp_path / "linear.onnx")
    monkeypatch.setattr(onnx_runtime, "MAX_ONNX_BYTES", 1000)
    assert "bytes, over the 1,000 allowed" in _one_line_error(path)


def test_loading_and_running_needs_no_torch(linear_onnx, sample_processed_dir, tmp_path, no_torch):
    path = linear_onnx(tmp_path / "linear.onnx")
    images = load_split(sample_processed_dir, "test").images[:50].numpy()
    np.save(tmp_path / "digits.npy", images)
    code = no_torch + textwrap.dedent(
        f"""
        import numpy as np
        from pipeline.inference.onnx_runtime import load_onnx

        model = load_onnx({str(path)!r})
        probs = model.predict(np.load({str(tmp_path / "digits.npy")!r}))
        assert "torch" not in sys.modules
        print(" ".join(map(str, probs.argmax(1))))
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    expected = load_onnx(path).predict(images).argmax(1)
    labels, check = done.stdout.strip().splitlines()
    assert labels.split() == [str(label) for label in expected]
    assert check == "torch-check: attempts=[] loaded=False"


def test_predict_on_an_onnx_file_needs_no_torch(
    linear_onnx, sample_processed_dir, tmp_path, no_torch
):
    """`pipeline predict --checkpoint x.onnx` reads the NumPy split and never imports torch."""
    path = linear_onnx(tmp_path / "linear.onnx")
    out = tmp_path / "submission.csv"
    code = no_torch + (
        "from pipeline.__main__ import main\n"
        "sys.argv = ['pipeline', 'predict', '--checkpoint', sys.argv[1],\n"
        "            '--processed-dir', sys.argv[2], '--out', sys.argv[3]]\n"
        "main()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(path), str(sample_processed_dir), str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "torch-check: attempts=[] loaded=False"
    test = load_split(sample_processed_dir, "test")
    expected = load_onnx(path).predict(test.images.numpy()).argmax(1)
    rows = out.read_text().splitlines()
    assert rows[0] == "ImageId,Label" and len(rows) == len(expected) + 1
    assert [int(row.split(",")[1]) for row in rows[1:]] == expected.tolist()
