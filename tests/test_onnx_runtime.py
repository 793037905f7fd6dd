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
    assert model.meta["model"] == "linear" and model.meta["val_accuracy"] == 0.85
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


def _altered(path, change):
    """The graph at `path` with `change(model)` applied, saved back: a damaged export."""
    import onnx

    model = onnx.load(path)
    change(model)
    onnx.save_model(model, path)
    return path


def _overflowing_weights(model):
    """A few weights' exponent bytes flipped to ~3e38: fine on a blank digit (0 x w), NaN on
    any digit with ink in the middle (inf - inf in the softmax)."""
    from onnx import numpy_helper

    (init,) = [i for i in model.graph.initializer if i.name == "weights"]
    weights = numpy_helper.to_array(init).copy()
    weights[14 * 28 + 10 : 14 * 28 + 18] = 3e38
    init.CopyFrom(numpy_helper.from_array(weights, "weights"))


def _scaled_output(factor: float):
    """The softmax's answer multiplied by `factor`: rows that sum to `factor`."""
    from onnx import helper, numpy_helper

    def change(model):
        softmax = model.graph.node[-1]
        softmax.output[0] = "softmax"
        model.graph.initializer.append(numpy_helper.from_array(np.array(factor, np.float32), "f"))
        model.graph.node.append(helper.make_node("Mul", ["softmax", "f"], ["probabilities"]))

    return change


@pytest.mark.parametrize(
    "change, problem",
    [
        (_overflowing_weights, "NaN, infinite"),
        (_scaled_output(-1.0), "outside [0, 1]"),
        (_scaled_output(0.5), "rows not summing to 1"),
    ],
)
def test_outputs_that_are_not_probabilities_stop_predict_in_one_line(
    change, problem, linear_onnx, sample_processed_dir, tmp_path
):
    from conftest import assert_one_line_error, invoke

    path = _altered(linear_onnx(tmp_path / "damaged.onnx"), change)
    out = tmp_path / "submission.csv"
    result = invoke(
        "predict", "--checkpoint", path, "--processed-dir", sample_processed_dir, "--out", out
    )
    assert_one_line_error(result, str(path), "not probabilities", problem)
    assert not out.exists() and not out.with_name("submission.source.json").exists()


def test_every_batch_is_checked_not_only_the_blank_digit(linear_onnx, tmp_path, monkeypatch):
    path = _altered(linear_onnx(tmp_path / "damaged.onnx"), _overflowing_weights)
    model = load_onnx(path)  # the blank digit at load time passes: 0 x 3e38 = 0
    digits = np.zeros((3000, 1, 28, 28), np.uint8)
    digits[2500, 0, 14, 10:18] = 255  # one digit with ink, in the third batch
    monkeypatch.setattr(onnx_runtime, "BATCH", 1024)
    assert np.isfinite(model.predict(digits[:2048])).all()
    with pytest.raises(PipelineError, match=r"damaged.onnx: its outputs are not probabilities"):
        model.predict(digits)


def test_evaluate_scores_an_onnx_file_by_its_probabilities(
    linear_onnx, sample_processed_dir, tmp_path
):
    from pipeline.inference.evaluate import evaluate

    path = linear_onnx(tmp_path / "linear.onnx")
    result = evaluate(path, sample_processed_dir, figures_dir=tmp_path / "figures")
    val = load_split(sample_processed_dir, "val")
    probs = load_onnx(path).predict(val.images.numpy())
    truth = val.labels.numpy()
    assert result.metrics.accuracy == pytest.approx((probs.argmax(1) == truth).mean())
    nll = -np.log(probs[np.arange(len(truth)), truth]).mean()
    assert result.metrics.loss == pytest.approx(nll, rel=1e-5)
    assert result.confusion_png.stat().st_size > 0 and result.mistakes_png.stat().st_size > 0
    assert 0.8 < result.metrics.accuracy < 1.0
