"""One predictor: every consumer of a trained ensemble averages its members' calibrated
probabilities, softmax(logits / T), the same way: predict on the checkpoints, predict on the
exported `.onnx`, and the out-of-bag vote.

A 2-member bagged ensemble of the fast recipe, 30 steps each (about a second per member):
half-trained nets are under-confident, so calibration gives them temperatures far from 1,
where raw and calibrated averaging part ways.
"""

import json

import numpy as np
import pytest
import torch

from pipeline.data import folds
from pipeline.data.datasets import TensorDigits, load_split
from pipeline.experiments import bagging
from pipeline.inference.predictor import load_for_inference, predict_logits
from pipeline.training.recipes import recipe_config
from pipeline.training.train import train

from conftest import invoke


@pytest.fixture(scope="module")
def pair(sample_processed_dir, tmp_path_factory):
    """The two members' checkpoints, each holding out one of 2 folds, and their temperatures."""
    folder = tmp_path_factory.mktemp("pair")
    for k in range(2):
        cfg = recipe_config(
            "fast", device="cpu", folds=2, fold=k, fold_seed=0, seed=k, epochs=1, max_steps=30
        )
        train(cfg, sample_processed_dir, folder / f"pair-{k}.pt", progress=False)
    paths = [folder / f"pair-{k}.pt" for k in range(2)]
    temperatures = [json.loads(p.with_suffix(".json").read_text())["temperature"] for p in paths]
    assert all(abs(t - 1) > 0.2 for t in temperatures)  # calibration matters here
    return paths, temperatures


def by_hand(paths, temperatures, images: torch.Tensor, temperature_one: bool = False):
    """Each member's softmax(logits / T) [N, 10], T from its JSON sidecar (1 if asked)."""
    members = load_for_inference(paths, torch.device("cpu"))
    probs = []
    for member, t in zip(members, temperatures, strict=True):
        logits = predict_logits(member.model, TensorDigits(images))
        probs.append((logits / (1.0 if temperature_one else t)).softmax(1))
    return probs


def labels_of(csv) -> np.ndarray:
    return np.array([int(row.split(",")[1]) for row in csv.read_text().splitlines()[1:]])


@pytest.mark.slow
def test_predict_on_the_checkpoints_and_on_their_onnx_gives_the_same_labels(
    pair, sample_processed_dir, tmp_path
):
    paths, temperatures = pair
    data = ["--processed-dir", sample_processed_dir]
    glob = str(paths[0].parent / "pair-*.pt")
    onnx = tmp_path / "pair.onnx"
    exported = invoke("export", "--checkpoint", glob, "--out", onnx, *data)
    assert exported.exit_code == 0, exported.output
    for model, name in ((glob, "torch.csv"), (onnx, "onnx.csv")):
        done = invoke("predict", "--checkpoint", model, "--out", tmp_path / name, *data)
        assert done.exit_code == 0, done.output
    by_torch, by_onnx = labels_of(tmp_path / "torch.csv"), labels_of(tmp_path / "onnx.csv")
    assert len(by_torch) == 1000 and np.array_equal(by_torch, by_onnx)  # every test digit
    # Both are the calibrated rule, not the raw softmax's mean.
    images = load_split(sample_processed_dir, "test").images
    calibrated = torch.stack(by_hand(paths, temperatures, images)).mean(0).argmax(1)
    raw = torch.stack(by_hand(paths, temperatures, images, True)).mean(0).argmax(1)
    assert np.array_equal(by_torch, calibrated.numpy())
    assert not np.array_equal(by_torch, raw.numpy())


def test_the_out_of_bag_vote_averages_calibrated_probabilities(
    pair, sample_processed_dir, monkeypatch
):
    paths, temperatures = pair
    votes = []
    original = bagging.oob_estimate
    monkeypatch.setattr(
        bagging, "oob_estimate", lambda v, labels: votes.extend(v) or original(v, labels)
    )
    estimate, members = bagging.score_out_of_bag(paths, sample_processed_dir, "cpu")
    digits = folds.labelled_digits(sample_processed_dir)
    hand_votes = []
    for (rows, probs), path, t in zip(votes, paths, temperatures, strict=True):
        calibrated, raw = (
            by_hand([path], [t], digits.images[rows], one)[0] for one in (False, True)
        )
        assert torch.allclose(probs, calibrated, atol=1e-6)
        assert not torch.allclose(probs, raw, atol=1e-3)  # T != 1: the rule shows
        hand_votes.append((rows, calibrated))
    assert estimate == original(hand_votes, digits.labels)
    assert estimate.covered == len(digits.labels) and estimate.mean_voters == 1.0
