"""GPU-only paths (bf16 autocast, CUDA events, torch.compile); they run where CUDA exists."""

import pytest
import torch

from pipeline.checkpoints import load_checkpoint
from pipeline.recipes import recipe_config
from pipeline.train import train

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
