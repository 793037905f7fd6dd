"""GPU-only paths (bf16 autocast, CUDA events, torch.compile); they run where CUDA exists."""

import pytest
import torch

from pipeline.experiments.bagging import score_out_of_bag
from pipeline.experiments.ensemble import train_members
from pipeline.training.checkpoints import load_checkpoint
from pipeline.training.recipes import best_members, recipe_config
from pipeline.training.train import train

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.mark.parametrize("compile_model", [False, True])
def test_cuda_training_with_bf16_and_compile(kaggle_processed_dir, tmp_path, compile_model):
    cfg = recipe_config("best", epochs=1, max_steps=30, device="cuda", compile=compile_model)
    result = train(cfg, kaggle_processed_dir, tmp_path / "gpu.pt", progress=False)
    assert result.history and result.images_per_second > 0
    loaded = load_checkpoint(result.checkpoint, "cpu")  # saved from the uncompiled module
    assert next(loaded.model.parameters()).device.type == "cpu"
    assert all(not k.startswith("_orig_mod") for k in loaded.model.state_dict())


def test_cuda_best_members_train_bagged_with_ema_and_cover_every_digit(
    kaggle_processed_dir, tmp_path
):
    configs = best_members(5, device="cuda", epochs=1, max_steps=20)  # folds 0-4, 5 nets
    assert len({(c.model, str(c.arch_args)) for c in configs}) == 5
    results = train_members(configs, kaggle_processed_dir, tmp_path, progress=False)
    assert [r.val_digits for r in results] == [8400] * 5
    estimate, members = score_out_of_bag([r.checkpoint for r in results], kaggle_processed_dir)
    assert estimate.covered == 42_000 and estimate.mean_voters == 1.0 and len(members) == 5
