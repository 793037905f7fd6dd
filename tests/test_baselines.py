"""Each tutorial baseline really learns what it claims, writes its figure, runs from the CLI.

Every figure goes under tmp_path. The unmarked tests train with small settings; the `slow` ones
run the commands' full lengths.
"""

import json
import math
import shutil
import subprocess
import sys

import pytest
import torch
import typer
from PIL import Image
from typer.testing import CliRunner

from pipeline import config
from pipeline.baselines import activations, classification, gan, linear, mlp
from pipeline.baselines import regression as regression_baseline
from pipeline.cli import baselines as cli
from pipeline.cli.baselines import app as baselines_app
from pipeline.common.errors import PipelineError

BASELINES = ("regression", "optimizers", "linear", "classification", "mlp", "gan", "activations")
HEAVY = ("torch", "numpy", "pandas", "matplotlib", "sklearn")
runner = CliRunner()


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """These nets are tiny: a second thread only waits for the first, badly on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def assert_png(path):
    with Image.open(path) as image:
        assert image.format == "PNG" and min(image.size) >= 200


def commands() -> dict:
    return typer.main.get_command(baselines_app).commands


# ------------------------------------------------------------------------------- the CLI


def test_the_group_has_the_seven_baselines_and_help_lists_them():
    assert tuple(commands()) == BASELINES == cli.BASELINES
    result = runner.invoke(baselines_app, ["--help"])
    assert result.exit_code == 0
    for name in BASELINES:
        assert name in result.stdout


def test_every_option_says_what_it_does_and_figures_default_to_reports_figures():
    for name, command in commands().items():
        options = {param.name: param for param in command.params}
        for param in options.values():
            assert param.help, f"{name} --{param.name}"
        assert options["out"].default == config.FIGURES_DIR / f"{name}.png"
        assert options["device"].default == "auto"


def test_importing_the_cli_and_refusing_bad_input_load_nothing_heavy(tmp_path):
    """`--help` and usage errors must answer at once: no torch, numpy, pandas, matplotlib."""
    figure = str(tmp_path / "never.png")
    script = f"""
import json, sys
from typer.testing import CliRunner
import pipeline.cli.baselines
codes = [CliRunner().invoke(pipeline.cli.baselines.app, args).exit_code for args in (
    ["--help"],
    ["gan", "--help"],
    ["gan", "--seed", "-1", "--out", {figure!r}],
    ["gan", "--device", "gpu", "--out", {figure!r}],
    ["optimizers", "--optimizers", "nope", "--out", {figure!r}],
    ["mlp", "--batch-sizes", "0", "--out", {figure!r}],
)]
print(json.dumps({{"codes": codes, "heavy": [m for m in {HEAVY!r} if m in sys.modules]}}))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"codes": [0, 0, 2, 2, 1, 1], "heavy": []}
    assert not (tmp_path / "never.png").exists()


@pytest.mark.parametrize(
    "args, problem",
    [
        (["gan", "--seed", "-1"], "--seed"),
        (["gan", "--seed", str(2**32)], "--seed"),
        (["regression", "--device", "gpu"], "--device"),
        (["linear", "--epochs", "0"], "--epochs"),
    ],
)
def test_out_of_range_options_are_usage_errors(args, problem, tmp_path):
    result = runner.invoke(baselines_app, [*args, "--out", str(tmp_path / "f.png")])
    assert result.exit_code == 2 and problem in result.output
    assert not (tmp_path / "f.png").exists()


@pytest.mark.parametrize(
    "name, extra, summary",
    [
        ("regression", ["--epochs", "5"], "regression: 1-20-1 ReLU net learned y = x^2"),
        ("optimizers", ["--epochs", "1", "--optimizers", "adam,sgd"], "final MSE adam "),
        ("linear", ["--epochs", "50"], "linear: learned y ="),
        ("classification", ["--steps", "20"], "classification: 2-10-2 net"),
        (
            "mlp",
            ["--epochs", "1", "--limit", "500", "--batch-sizes", "64,128"],
            "mlp: 784-200-10 MLP, 500 images x 1 epochs from",
        ),
        ("gan", ["--steps", "20"], "gan: "),
        ("activations", [], "activations: relu, sigmoid"),
    ],
)
def test_each_command_prints_its_summary_and_writes_its_figure(
    name, extra, summary, tmp_path, sample_processed_dir
):
    figure = tmp_path / f"{name}.png"
    args = [name, *extra, "--device", "cpu", "--out", str(figure)]
    if name == "mlp":
        args += ["--processed-dir", str(sample_processed_dir)]
    result = runner.invoke(baselines_app, args)
    assert result.exit_code == 0, result.output
    assert summary in result.stdout and result.stdout.rstrip().endswith(f"-> {figure}")
    assert_png(figure)


def test_command_passes_its_options_to_the_function(tmp_path):
    expected = regression_baseline.fit_regression(tmp_path / "f.png", seed=5, epochs=2)
    args = ["regression", "--seed", "5", "--epochs", "2", "--out", str(tmp_path / "c.png")]
    result = runner.invoke(baselines_app, args)
    assert result.exit_code == 0, result.output
    assert f"MSE {expected.mse:.4f} on the noisy data" in result.stdout
    assert f"and {expected.clean_mse:.4f} against" in result.stdout


def test_bad_option_is_one_line_error_from_the_root_cli(tmp_path):
    from pipeline.cli import app

    figure = tmp_path / "o.png"
    args = ["baselines", "optimizers", "--optimizers", "nope", "--out", str(figure)]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "error: --optimizers nope: expected a comma-separated subset of "
        "sgd, momentum, rmsprop, adam, adagrad"
    ]
    assert not figure.exists()


# ----------------------------------------------------------------- regression and optimizers


def test_regression_reaches_the_noise_floor(tmp_path):
    result = regression_baseline.fit_regression(tmp_path / "r.png", device="cpu", epochs=20)
    assert result.noise_variance == pytest.approx(0.01)
    assert result.mse < 1.3 * result.noise_variance  # the noise is all that is left
    assert result.clean_mse < 0.003  # and the curve underneath is x^2 (variance 0.089)
    assert_png(result.figure)


@pytest.mark.slow
def test_regression_at_full_length_fits_the_curve_closely(tmp_path):
    result = regression_baseline.fit_regression(tmp_path / "r.png", device="cpu")
    assert result.mse < 1.1 * result.noise_variance
    assert result.clean_mse < 0.001


def test_regression_is_reproducible_per_seed(tmp_path):
    runs = [
        regression_baseline.fit_regression(tmp_path / "r.png", seed=s, device="cpu", epochs=1)
        for s in (5, 5, 6)
    ]
    assert runs[0].mse == runs[1].mse != runs[2].mse


def test_every_optimizer_lowers_the_loss_and_the_ranking_matches(tmp_path):
    names = list(cli.OPTIMIZER_NAMES)
    result = regression_baseline.compare_optimizers(
        tmp_path / "o.png", names, device="cpu", epochs=4
    )
    assert list(result.final_losses) == names
    for name in names:
        assert result.final_losses[name] < 0.5 * result.initial_loss, name
        steps = result.step_losses[name]
        assert len(steps) == 4 * math.ceil(1000 / 32)
        assert sum(steps[-30:]) < sum(steps[:30]), name
    losses = [result.final_losses[name] for name in result.ranking]
    assert losses == sorted(losses) and set(result.ranking) == set(names)
    summary = regression_baseline.format_summary(result)
    assert " < ".join(result.ranking) in summary
    for name in names:
        assert f"{name} {result.final_losses[name]:.4f}" in summary
    assert_png(result.figure)


def test_optimizers_share_the_initial_net_and_batches(tmp_path):
    result = regression_baseline.compare_optimizers(
        tmp_path / "o.png", ["sgd", "adam"], device="cpu", epochs=1
    )
    assert result.step_losses["sgd"][0] == result.step_losses["adam"][0]  # same net, same batch
    assert result.step_losses["sgd"][1:] != result.step_losses["adam"][1:]


def test_the_cli_knows_every_optimizer_and_refuses_others():
    assert cli.OPTIMIZER_NAMES == tuple(regression_baseline.OPTIMIZERS)
    from pipeline.cli.options import chosen_names

    def parse(text):
        return chosen_names(text, "--optimizers", cli.OPTIMIZER_NAMES)

    assert parse(cli.DEFAULT_OPTIMIZERS) == ["sgd", "momentum", "rmsprop", "adam"]
    assert parse(" Adam, sgd ,adam") == ["adam", "sgd"]
    for text in ("adam,lbfgs", "", " , "):
        with pytest.raises(PipelineError, match="--optimizers"):
            parse(text)


# ------------------------------------------------------------------------- linear regression


def test_linear_converges_to_the_least_squares_line(tmp_path):
    result = linear.fit_linear(tmp_path / "l.png", device="cpu")
    x, y = torch.tensor(linear.X, dtype=torch.float64), torch.tensor(linear.Y, dtype=torch.float64)
    slope = ((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum()
    assert result.exact_w == pytest.approx(slope.item(), rel=1e-6)
    assert result.exact_b == pytest.approx((y.mean() - slope * x.mean()).item(), rel=1e-6)
    assert result.w == pytest.approx(result.exact_w, abs=2e-3)
    assert result.b == pytest.approx(result.exact_b, abs=2e-2)
    assert_png(result.figure)


def test_linear_loss_is_monotone_with_a_small_learning_rate(tmp_path):
    result = linear.fit_linear(tmp_path / "l.png", seed=1, device="cpu", epochs=500, lr=0.005)
    assert len(result.losses) == 500
    assert all(b <= a + 1e-7 for a, b in zip(result.losses, result.losses[1:], strict=False))
    assert result.losses[-1] < 0.1 * result.losses[0]


def test_linear_diverges_with_too_large_a_learning_rate(tmp_path):
    result = linear.fit_linear(tmp_path / "l.png", device="cpu", epochs=200, lr=0.03)
    assert not result.losses[-1] < result.losses[0]  # grows (or overflows to inf/nan)


# ------------------------------------------------------------------------------ classification


def test_classification_separates_the_clouds(tmp_path):
    untrained = classification.fit_classifier(tmp_path / "c0.png", device="cpu", steps=1)
    result = classification.fit_classifier(tmp_path / "c.png", device="cpu")
    assert untrained.loss > 2 * result.loss
    assert result.accuracy >= 0.97
    assert result.held_out_accuracy >= 0.95
    assert_png(result.figure)


# ------------------------------------------------------------------------------------- mlp


def test_mlp_learns_digits_well_above_chance(sample_processed_dir, tmp_path):
    result = mlp.compare_batch_sizes(
        tmp_path / "m.png", [32, 128], sample_processed_dir, device="cpu", epochs=3
    )
    assert result.source == str(sample_processed_dir)
    assert result.train_images == 3_600 and result.val_images == 400
    assert [run.batch_size for run in result.runs] == [32, 128]
    assert [run.steps for run in result.runs] == [3 * math.ceil(3600 / 32), 3 * 29]
    for run in result.runs:
        assert run.val_accuracy >= 0.7, run  # chance is 0.10
        assert sum(run.losses[-10:]) < 0.5 * sum(run.losses[:10])
    table = mlp.format_table(result).splitlines()
    assert table[0].split() == ["batch", "size", "steps", "val", "accuracy", "seconds"]
    assert [row.split()[:2] for row in table[1:]] == [["32", "339"], ["128", "87"]]
    assert_png(result.figure)


def test_mlp_falls_back_to_the_offline_sample(tmp_path):
    result = mlp.compare_batch_sizes(
        tmp_path / "m.png",
        [64],
        tmp_path / "nothing-prepared",
        device="cpu",
        epochs=1,
        limit=2_000,
    )
    assert result.source.endswith("mnist_5k.csv.gz")
    assert result.train_images == 2_000 and result.val_images == mlp.SAMPLE_VAL_ROWS
    assert result.runs[0].val_accuracy >= 0.6


def copy_splits(source, target, with_meta: bool):
    target.mkdir()
    names = [config.split_path(source, split).name for split in ("train", "val")]
    names += [config.META_JSON] if with_meta else []
    for name in names:
        shutil.copy(source / name, target / name)
    return target


def test_mlp_reads_prepared_digits_only_under_a_valid_meta(sample_processed_dir, tmp_path):
    assert mlp.has_prepared_digits(sample_processed_dir)
    no_meta = copy_splits(sample_processed_dir, tmp_path / "no-meta", with_meta=False)
    assert not mlp.has_prepared_digits(no_meta)
    train, val, source = mlp.load_digits(no_meta, seed=0)
    assert source.endswith("mnist_5k.csv.gz")
    assert (len(train), len(val)) == (5_000 - mlp.SAMPLE_VAL_ROWS, mlp.SAMPLE_VAL_ROWS)
    broken = copy_splits(sample_processed_dir, tmp_path / "broken-meta", with_meta=True)
    (broken / config.META_JSON).write_text("[]")
    assert not mlp.has_prepared_digits(broken)
    images_only = copy_splits(sample_processed_dir, tmp_path / "images-only", with_meta=True)
    meta = json.loads((images_only / config.META_JSON).read_text())
    meta["files"] = {name: meta["files"][name] for name in meta["files"] if "val" not in name}
    (images_only / config.META_JSON).write_text(json.dumps(meta))
    assert not mlp.has_prepared_digits(images_only)


def test_mlp_refuses_prepared_digits_that_do_not_match_their_meta(sample_processed_dir, tmp_path):
    tampered = copy_splits(sample_processed_dir, tmp_path / "tampered", with_meta=True)
    with open(config.split_path(tampered, "train"), "ab") as file:
        file.write(b"\0")
    assert mlp.has_prepared_digits(tampered)
    with pytest.raises(PipelineError, match="train.npz: does not match"):
        mlp.load_digits(tampered, seed=0)


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
def test_bad_batch_sizes_are_refused_before_training(text, tmp_path):
    figure = tmp_path / "m.png"
    result = runner.invoke(baselines_app, ["mlp", "--batch-sizes", text, "--out", str(figure)])
    assert result.exit_code == 1
    assert isinstance(result.exception, PipelineError)
    assert str(result.exception).startswith(f"--batch-sizes {text}: expected positive integers")
    assert not figure.exists()


# ------------------------------------------------------------------------------------- gan


def test_gan_band_check_accepts_real_curves_and_rejects_others():
    x = gan.curve_x()
    real = gan.real_curves(500, x, torch.Generator().manual_seed(0))
    assert gan.inside_band(real, x, tolerance=0.0).all()
    assert not gan.inside_band(real + 1.5, x).any()
    assert not gan.inside_band(torch.zeros(3, gan.N_POINTS) + x, x).any()  # a line, not a parabola


def test_gan_learns_to_paint_inside_the_band(tmp_path):
    untrained = gan.train_gan(tmp_path / "g0.png", device="cpu", steps=1)
    result = gan.train_gan(tmp_path / "g.png", device="cpu", steps=500)
    assert untrained.inside_share < 0.1
    assert result.inside_share >= 0.6
    assert_png(result.figure)


@pytest.mark.slow
def test_gan_at_full_length_paints_curves_inside_the_band(tmp_path):
    result = gan.train_gan(tmp_path / "g.png", device="cpu")
    assert result.inside_share >= 0.8
    assert 0.3 < result.fake_score < 0.7  # the discriminator can no longer tell


# ----------------------------------------------------------------------------- activations


def test_activations_match_torch_at_sample_points(tmp_path):
    result = activations.draw_activations(tmp_path / "a.png", device="cpu")
    assert set(result.values) == {"relu", "sigmoid", "tanh", "softplus", "gelu", "silu"}
    assert max(result.deviation.values()) < 1e-5
    x = torch.tensor(result.x)
    assert x[0] == -5 and x[-1] == 5
    for name, (_, function) in activations.ACTIVATIONS.items():
        assert torch.allclose(torch.tensor(result.values[name]), function(x), atol=1e-6), name
    at = {v: min(range(len(x)), key=lambda i: abs(result.x[i] - v)) for v in (-5.0, 0.0, 5.0)}
    assert result.values["relu"][at[-5.0]] == 0 and result.values["relu"][at[5.0]] == 5
    assert result.values["sigmoid"][at[0.0]] == pytest.approx(0.5)
    assert result.values["softplus"][at[0.0]] == pytest.approx(math.log(2))
    assert_png(result.figure)


@pytest.mark.slow  # a process with two loader workers training the CNN on 4,000 digits
def test_the_lean_tutorial_script_learns_from_every_row_and_writes_a_submission(
    sample_raw_dir, tmp_path
):
    from pipeline.baselines.tutorial import LEAN_RESULT_LINE
    from pipeline.inference.submission import read_submission

    out = tmp_path / "lean.csv"
    command = [sys.executable, "-m", "pipeline.baselines.tutorial", "--lean"]
    command += ["--raw-dir", str(sample_raw_dir), "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    found = LEAN_RESULT_LINE.search(done.stdout)
    assert found and found[1] == "4,000", done.stdout  # all of train.csv, no hold-out
    predicted = read_submission(out, 1_000)["Label"].to_numpy()
    answers = (sample_raw_dir / config.TEST_LABELS_CSV).read_text().splitlines()[1:]
    truth = [int(line.split(",")[1]) for line in answers]
    assert (predicted == truth).mean() > 0.8  # one epoch of the CNN on 4,000 real digits
