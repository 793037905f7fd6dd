"""Every architecture maps [B,1,28,28] to [B,10] logits and learns from gradients."""

import pytest
import torch
import torch.nn.functional as F

from pipeline.training.models import MODELS, build_model, resolved_arch_args


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
    assert resolved == {"widths": [16, 32, 64], "dropout": 0.2, "kernel": 3, "convs": 1}
    model = build_model("fastnet", **resolved_arch_args("fastnet", {"widths": (8, 16, 32)}))
    assert model.classifier[1].in_features == 32 * 3 * 3


@pytest.mark.parametrize("name", MODELS)
def test_inference_models_fold_batchnorm_and_keep_their_logits(name):
    from pipeline.inference.predictor import inference_model

    torch.manual_seed(0)
    model = build_model(name).train()
    with torch.no_grad():
        for _ in range(3):  # running statistics and affine parameters other than the defaults
            model(torch.randn(16, 1, 28, 28) * 2 + 0.5)
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        expected = model.eval()(x)
        folded = inference_model(model)
        got = folded(x.contiguous(memory_format=torch.channels_last))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert torch.allclose(expected, got, atol=1e-4), (expected - got).abs().max()


@pytest.mark.slow  # importing torch._dynamo takes about 20 s on a busy 2-core machine
def test_a_failing_compile_runs_eagerly_without_touching_dynamos_global_config():
    import torch._dynamo  # only to read its process-global flag

    from pipeline.training.compiling import compile_for

    def broken_backend(graph, example_inputs):
        raise RuntimeError("no C++ compiler here")

    torch.manual_seed(0)
    model = build_model("mlp")
    x = torch.randn(2, 1, 28, 28)
    before = torch._dynamo.config.suppress_errors
    step_model = compile_for(model, torch.device("cpu"), backend=broken_backend)
    with pytest.warns(UserWarning, match="torch.compile failed, running eagerly: .*no C\\+\\+"):
        out = step_model(x)
    assert torch.equal(out, model(x))
    assert torch.equal(step_model(x), model(x))  # and eagerly from then on, without a warning
    assert torch._dynamo.config.suppress_errors == before
