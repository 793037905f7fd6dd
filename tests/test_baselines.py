"""Each tutorial baseline really learns what it claims, writes its figure, runs from the CLI."""

import math

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from pipeline import config
from pipeline.baselines import activations, classification, gan, linear, mlp, optimizers
from pipeline.baselines import regression as regression_baseline
from pipeline.cli import app
from pipeline.errors import PipelineError

BASELINES = ("regression", "optimizers", "linear", "classification", "mlp", "gan", "activations")
runner = CliRunner()


def assert_png(path):
    with Image.open(path) as image:
        assert image.format == "PNG" and min(image.size) >= 200


def test_help_lists_all_seven_baselines():
    result = runner.invoke(app, ["baselines", "--help"])
    assert result.exit_code == 0
    for name in BASELINES:
        assert name in result.stdout


def test_regression_reaches_the_noise_floor(tmp_path):
    result = regression_baseline.fit_regression(seed=0, device="cpu", out=tmp_path / "r.png")
    assert result.noise_variance == pytest.approx(0.01)
    assert result.mse < 1.3 * result.noise_variance  # the noise is all that is left
    assert result.clean_mse < 0.003  # and the curve underneath is x^2
    assert_png(result.figure)


def test_regression_is_reproducible_per_seed(tmp_path):
    runs = [
        regression_baseline.fit_regression(seed=s, device="cpu", out=tmp_path / "r.png", epochs=3)
        for s in (5, 5, 6)
    ]
    assert runs[0].mse == runs[1].mse != runs[2].mse


def test_every_optimizer_lowers_the_loss_and_the_ranking_matches(tmp_path):
    names = ["sgd", "momentum", "rmsprop", "adam", "adagrad"]
    result = optimizers.compare_optimizers(names, seed=0, device="cpu", out=tmp_path / "o.png")
    assert list(result.final_losses) == names
    for name in names:
        assert result.final_losses[name] < 0.5 * result.initial_loss, name
        steps = result.step_losses[name]
        assert len(steps) == 12 * math.ceil(1000 / 32)
        assert sum(steps[-30:]) < sum(steps[:30]), name
    losses = [result.final_losses[name] for name in result.ranking]
    assert losses == sorted(losses) and set(result.ranking) == set(names)
    summary = optimizers.format_summary(result)
    assert " < ".join(result.ranking) in summary
    for name in names:
        assert f"{name} {result.final_losses[name]:.4f}" in summary
    assert_png(result.figure)


def test_optimizers_share_the_initial_net_and_batches(tmp_path):
    result = optimizers.compare_optimizers(
        ["sgd", "adam"], seed=0, device="cpu", out=tmp_path / "o.png", epochs=1
    )
    assert result.step_losses["sgd"][0] == result.step_losses["adam"][0]  # same net, same batch


def test_unknown_optimizer_is_refused():
    with pytest.raises(PipelineError, match="lbfgs"):
        optimizers.parse_optimizers("adam,lbfgs")
    assert optimizers.parse_optimizers(" Adam, sgd ,adam") == ["adam", "sgd"]


def test_linear_converges_to_the_least_squares_line(tmp_path):
    result = linear.fit_linear(seed=0, device="cpu", out=tmp_path / "l.png")
    x, y = torch.tensor(linear.X, dtype=torch.float64), torch.tensor(linear.Y, dtype=torch.float64)
    slope = ((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum()
    assert result.exact_w == pytest.approx(slope.item(), rel=1e-6)
    assert result.exact_b == pytest.approx((y.mean() - slope * x.mean()).item(), rel=1e-6)
    assert result.w == pytest.approx(result.exact_w, abs=2e-3)
    assert result.b == pytest.approx(result.exact_b, abs=2e-2)
    assert_png(result.figure)


def test_linear_loss_is_monotone_with_a_small_learning_rate(tmp_path):
    result = linear.fit_linear(seed=1, device="cpu", out=tmp_path / "l.png", epochs=500, lr=0.005)
    assert all(b <= a + 1e-7 for a, b in zip(result.losses, result.losses[1:], strict=False))
    assert result.losses[-1] < 0.1 * result.losses[0]


def test_linear_diverges_with_too_large_a_learning_rate(tmp_path):
    result = linear.fit_linear(seed=0, device="cpu", out=tmp_path / "l.png", epochs=200, lr=0.03)
    assert not result.losses[-1] < result.losses[0]  # grows (or overflows to inf/nan)


def test_classification_separates_the_clouds(tmp_path):
    result = classification.fit_classifier(seed=0, device="cpu", out=tmp_path / "c.png")
    assert result.accuracy >= 0.97
    assert result.held_out_accuracy >= 0.95
    assert_png(result.figure)


def test_mlp_learns_digits_well_above_chance(processed_dir, tmp_path):
    result = mlp.compare_batch_sizes(
        [32, 128], processed_dir, seed=0, device="cpu", out=tmp_path / "m.png", epochs=3
    )
    assert result.train_images == 3_600 and result.val_images == 400
    assert [run.batch_size for run in result.runs] == [32, 128]
    assert [run.steps for run in result.runs] == [3 * math.ceil(3600 / 32), 3 * 29]
    for run in result.runs:
        assert run.val_accuracy >= 0.7, run  # chance is 0.10
        assert sum(run.losses[-10:]) < 0.5 * sum(run.losses[:10])
    assert "batch size" in mlp.format_table(result)
    assert_png(result.figure)


def test_mlp_falls_back_to_the_offline_sample(tmp_path):
    result = mlp.compare_batch_sizes(
        [64],
        tmp_path / "nothing-prepared",
        seed=0,
        device="cpu",
        out=tmp_path / "m.png",
        epochs=1,
        limit=2_000,
    )
    assert result.source.endswith("mnist_5k.csv.gz")
    assert result.train_images == 2_000 and result.val_images == mlp.SAMPLE_VAL_ROWS
    assert result.runs[0].val_accuracy >= 0.6


def test_mlp_sgd_step_is_the_hand_written_update():
    net = torch.nn.Linear(3, 1)
    before = [p.detach().clone() for p in net.parameters()]
    net(torch.ones(2, 3)).sum().backward()
    grads = [p.grad.clone() for p in net.parameters()]
    mlp.sgd_step(net, lr=0.5)
    for parameter, old, grad in zip(net.parameters(), before, grads, strict=True):
        assert torch.equal(parameter.detach(), old - 0.5 * grad)
        assert parameter.grad is None


@pytest.mark.parametrize("text", ["", "16,x", "0,64"])
def test_bad_batch_sizes_are_refused(text):
    with pytest.raises(PipelineError, match="--batch-sizes"):
        mlp.parse_batch_sizes(text)


def test_gan_band_check_accepts_real_curves_and_rejects_others():
    x = gan.curve_x()
    real = gan.real_curves(500, x, torch.Generator().manual_seed(0))
    assert gan.inside_band(real, x, tolerance=0.0).all()
    assert not gan.inside_band(real + 1.5, x).any()
    assert not gan.inside_band(torch.zeros(3, gan.N_POINTS) + x, x).any()  # a line, not a parabola


def test_gan_paints_curves_inside_the_band(tmp_path):
    result = gan.train_gan(seed=0, device="cpu", out=tmp_path / "g.png", steps=3_000)
    assert result.inside_share >= 0.8
    assert 0.3 < result.fake_score < 0.7  # the discriminator can no longer tell
    assert_png(result.figure)


def test_gan_before_training_paints_nothing_inside_the_band(tmp_path):
    result = gan.train_gan(seed=0, device="cpu", out=tmp_path / "g.png", steps=1)
    assert result.inside_share < 0.1


def test_activations_match_torch_at_sample_points(tmp_path):
    result = activations.draw_activations(device="cpu", out=tmp_path / "a.png")
    assert set(result.values) == {"relu", "sigmoid", "tanh", "softplus", "gelu", "silu"}
    x = torch.tensor(result.x)
    assert x[0] == -5 and x[-1] == 5
    for name, function in activations.BUILT_INS.items():
        assert torch.allclose(torch.tensor(result.values[name]), function(x), atol=1e-6), name
    at = {v: min(range(len(x)), key=lambda i: abs(result.x[i] - v)) for v in (-5.0, 0.0, 5.0)}
    assert result.values["relu"][at[-5.0]] == 0 and result.values["relu"][at[5.0]] == 5
    assert result.values["sigmoid"][at[0.0]] == pytest.approx(0.5)
    assert result.values["softplus"][at[0.0]] == pytest.approx(math.log(2))
    assert_png(result.figure)


@pytest.mark.parametrize(
    "name, extra, summary",
    [
        ("regression", ["--epochs", "5"], "regression: 1-20-1 ReLU net learned y = x^2"),
        ("optimizers", ["--epochs", "1", "--optimizers", "adam,sgd"], "ranking"),
        ("linear", ["--epochs", "50"], "linear: learned y ="),
        ("classification", ["--steps", "20"], "classification: 2-10-2 net"),
        ("mlp", ["--epochs", "1", "--limit", "500", "--batch-sizes", "64"], "mlp: 784-200-10"),
        ("gan", ["--steps", "20"], "gan: "),
        ("activations", [], "activations: relu, sigmoid"),
    ],
)
def test_each_command_prints_its_summary_and_writes_its_figure(
    name, extra, summary, tmp_path, processed_dir
):
    figure = tmp_path / f"{name}.png"
    args = ["baselines", name, *extra, "--device", "cpu", "--out", str(figure)]
    if name == "mlp":
        args += ["--processed-dir", str(processed_dir)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert summary in result.stdout and str(figure) in result.stdout
    assert_png(figure)


def test_bad_option_is_one_line_error(tmp_path):
    result = runner.invoke(app, ["baselines", "optimizers", "--optimizers", "nope"])
    assert result.exit_code == 1
    assert (
        result.stderr.strip().splitlines() == [result.stderr.strip()]
        and "--optimizers nope" in result.stderr
    )
    assert "Traceback" not in result.output


def test_default_figures_live_under_reports_figures():
    for module in (regression_baseline, optimizers, linear, classification, mlp, gan, activations):
        assert module.FIGURE == config.FIGURES_DIR / f"{module.NAME}.png"
