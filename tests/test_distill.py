"""Distillation: one FastNet from the bagged members that hold out a fold, scored on that fold
(which neither it nor its teachers saw), written as an ordinary checkpoint."""

import numpy as np
import pytest
import torch

from pipeline import config
from pipeline.common.errors import PipelineError
from pipeline.data.datasets import TensorDigits
from pipeline.experiments.bagging import score_out_of_bag
from pipeline.experiments.distill import distill
from pipeline.inference.predictor import ensemble_probabilities, load_for_inference
from pipeline.training.checkpoints import load_checkpoint, read_payload
from pipeline.training.recipes import best_members
from pipeline.training.train import train

from conftest import assert_one_line_error, invoke


@pytest.fixture(scope="module")
def teachers(small_processed_dir, tmp_path_factory):
    """Three tiny bagged members of `best`: holding out folds 0, 1 and 0 (members 0, 1, 5)."""
    folder = tmp_path_factory.mktemp("teachers")
    configs = best_members(6, device="cpu", epochs=1, max_steps=3, batch_size=64)
    for k in (0, 1, 5):
        train(configs[k], small_processed_dir, folder / f"best-{k}.pt", progress=False)
    return folder


@pytest.mark.slow
def test_the_student_learns_from_its_folds_teachers_only(teachers, small_processed_dir, tmp_path):
    out = tmp_path / "distilled.pt"
    result = invoke(
        "distill", "--teachers", config.members_glob("best", teachers), "--out", out,
        "--fold", 0, "--epochs", 1, "--seed", 3, "--device", "cpu",
        "--processed-dir", small_processed_dir,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    line = result.stdout.strip().splitlines()[-1]
    assert line.startswith(f"distill: {out} (fastnet, ") and "on fold 0's 160 digits" in line
    assert "its teachers saw (the teachers, best-0.pt, best-5.pt: " in line

    # the soft targets are the fold's teachers' calibrated mean over every test digit
    cpu = torch.device("cpu")
    test = TensorDigits.load(small_processed_dir, "test")
    fold0 = [teachers / "best-0.pt", teachers / "best-5.pt"]
    fold0 = ensemble_probabilities(load_for_inference(fold0, cpu), test)
    every = ensemble_probabilities(
        load_for_inference(sorted(teachers.glob("best-?.pt")), cpu), test
    )
    with np.load(config.soft_targets_path(out), allow_pickle=False) as soft:
        assert np.array_equal(soft["images"], test.images.numpy())
        assert np.allclose(soft["targets"], fold0.numpy(), atol=1e-6)
        assert not np.allclose(soft["targets"], every.numpy(), atol=1e-3)

    # an ordinary, bagged checkpoint: the normal loader reads it and the one predictor runs it
    meta = read_payload(out)["meta"]
    cfg = meta["train_config"]
    assert (cfg["model"], cfg["augment"], cfg["folds"], cfg["fold"], cfg["seed"]) == (
        "fastnet", True, 5, 0, 3
    )  # fmt: skip
    assert cfg["extra"] == str(config.soft_targets_path(out)) and "temperature" in meta
    (student,) = load_for_inference([out], cpu)
    probs = ensemble_probabilities([student], test)
    assert probs.shape == (800, 10) and torch.allclose(probs.sum(1), torch.ones(800))
    parameters = sum(p.numel() for p in load_checkpoint(out).model.parameters())
    assert f"{parameters:,} parameters" in line and parameters < 100_000
    estimate, _ = score_out_of_bag([out], small_processed_dir, "cpu")  # its fold, scored apart
    assert estimate.covered == 160 and f"held-out accuracy {estimate.accuracy:.2%}" in line


def test_refusals_are_one_line(teachers, tiny_run_files, small_processed_dir, tmp_path):
    args = ("--out", tmp_path / "d.pt", "--device", "cpu", "--processed-dir", small_processed_dir)
    result = invoke(
        "distill", "--teachers", config.members_glob("best", teachers), "--fold", 3, *args
    )
    assert_one_line_error(result, "--fold 3: no teacher holds it out (they hold out 0, 1)")
    result = invoke("distill", "--teachers", tiny_run_files, *args)
    assert_one_line_error(result, f"{tiny_run_files}: not a bagged member")
    result = invoke("distill", "--teachers", tmp_path / "none-*.pt", *args)
    assert_one_line_error(result, "no checkpoint matches")
    assert not list(tmp_path.iterdir())
    with pytest.raises(PipelineError, match="is a folder"):
        distill([teachers / "best-0.pt"], tmp_path, 0, processed_dir=small_processed_dir)
