"""Every architecture maps [B,1,28,28] to [B,10] logits and learns from gradients."""

import pytest
import torch
import torch.nn.functional as F

from pipeline.models import MODELS, build_model, resolved_arch_args


@pytest.mark.parametrize("name", MODELS)
def test_logits_shape_and_gradients(name):
    model = build_model(name)
    x = torch.randn(5, 1, 28, 28)
    logits = model(x)
    assert logits.shape == (5, 10) and logits.dtype == torch.float32
    F.cross_entropy(logits, torch.arange(5)).backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", MODELS)
def test_channels_last_gives_the_same_logits(name):
    torch.manual_seed(0)
    model = build_model(name).eval()
    x = torch.randn(3, 1, 28, 28)
    expected = model(x)
    model = model.to(memory_format=torch.channels_last)
    got = model(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(expected, got, atol=1e-5)


def test_the_tutorial_cnn_and_lenet_have_their_published_shapes():
    cnn = build_model("cnn")
    assert [m.out_channels for m in cnn.features if hasattr(m, "out_channels")] == [16, 32]
    assert cnn.classifier.in_features == 32 * 7 * 7
    lenet = build_model("lenet")
    sizes = [m.out_features for m in lenet.classifier if hasattr(m, "out_features")]
    assert sizes == [120, 84, 10]
    assert build_model("mlp").net[1].out_features == 200


def test_arch_args_are_applied_and_unknown_names_refused():
    assert build_model("fastnet", widths=[8, 16, 32]).classifier[1].in_features == 32 * 3 * 3
    with pytest.raises(ValueError, match="unknown model"):
        build_model("resnet9000")


def test_checkpoints_record_every_architecture_argument_so_default_changes_cannot_break_them():
    resolved = resolved_arch_args("fastnet", {"dropout": 0.2})
    assert resolved == {"widths": [16, 32, 64], "dropout": 0.2}
    model = build_model("fastnet", **resolved_arch_args("fastnet", {"widths": (8, 16, 32)}))
    assert model.classifier[1].in_features == 32 * 3 * 3
