"""Temperature calibration: fitted after training, kept in the checkpoint, honest probabilities."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from pipeline import config
from pipeline.common.errors import PipelineError
from pipeline.data.datasets import TensorDigits
from pipeline.inference.predictor import predict_logits
from pipeline.training.calibration import (
    calibrated_probabilities,
    expected_calibration_error,
    fit_temperature,
    temperature_of,
)
from pipeline.training.checkpoints import load_checkpoint, read_payload, save_checkpoint
from pipeline.training.models import build_model


def test_fit_temperature_recovers_the_temperature_labels_were_drawn_with():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(20_000, 10, generator=gen) * 3
    for true_t in (0.5, 2.0):
        labels = torch.multinomial((logits / true_t).softmax(1), 1, generator=gen).squeeze(1)
        fitted = fit_temperature(logits, labels)
        assert fitted == pytest.approx(true_t, rel=0.05)
        nll = [F.cross_entropy(logits / t, labels).item() for t in (fitted, 1.0)]
        assert nll[0] < nll[1]


def test_training_stores_a_temperature_that_makes_held_out_probabilities_honest(
    fast_checkpoint, sample_processed_dir
):
    """The fast recipe smooths its labels, so its raw softmax is under-confident on clean
    digits; the stored temperature (fitted on val) fixes that on the sample's labelled test
    split, which the fit never saw."""
    checkpoint = load_checkpoint(fast_checkpoint)
    sidecar = json.loads(config.sidecar_path(fast_checkpoint).read_text())
    temperature = temperature_of(checkpoint.meta)
    assert sidecar["temperature"] == temperature
    assert 0.05 < temperature < 1.0  # label smoothing: sharpen
    test = TensorDigits.load(sample_processed_dir, "test")
    logits = predict_logits(checkpoint.model, test)
    raw, calibrated = (calibrated_probabilities(logits, t) for t in (1.0, temperature))
    assert torch.equal(raw.argmax(1), calibrated.argmax(1))  # the labels never change
    assert expected_calibration_error(calibrated, test.labels) < expected_calibration_error(
        raw, test.labels
    )
    nll = [F.nll_loss(p.log(), test.labels).item() for p in (calibrated, raw)]
    assert nll[0] < nll[1]
    sure = [(p.max(1).values > 0.99).float().mean().item() for p in (calibrated, raw)]
    assert sure[1] < 0.05 and sure[0] > 0.5  # smoothed: almost never above 99%


def test_expected_calibration_error_of_known_cases():
    labels = torch.tensor([0, 0, 1, 1])
    confident_right = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    assert expected_calibration_error(confident_right, labels) == 0.0
    # 75% sure of the first class for every row, right half of the time: off by 0.25
    three_quarters = torch.tensor([[0.75, 0.25]] * 4)
    assert expected_calibration_error(three_quarters, labels) == pytest.approx(0.25)


def test_checkpoints_without_a_temperature_load_as_uncalibrated(tmp_path):
    path = tmp_path / "old.pt"
    save_checkpoint(path, build_model("mlp"), {"model": "mlp", "arch_args": {}})
    meta = load_checkpoint(path).meta
    assert "temperature" not in meta and temperature_of(meta) == 1.0


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf, "0.5", True])
def test_a_checkpoint_with_a_bad_temperature_is_refused(tmp_path, bad):
    path = tmp_path / "bad.pt"
    save_checkpoint(
        path, build_model("mlp"), {"model": "mlp", "arch_args": {}, "temperature": bad}
    )
    with pytest.raises(PipelineError, match=r"bad\.pt: its temperature .* not a positive number"):
        read_payload(path)
