"""Training learns, is reproducible on CPU, skips finished runs, and resumes exactly."""

import signal

import pytest
import torch

from pipeline import config
from pipeline.common.errors import PipelineError
from pipeline.data.prepare import prepare
from pipeline.experiments.ensemble import seed_members, train_members
from pipeline.training.checkpoints import load_checkpoint, read_payload
from pipeline.training.models import build_model
from pipeline.training.recipes import RECIPES, recipe_config
from pipeline.training.run_state import StopSignals, TrainingInterrupted
from pipeline.training.train import train

from conftest import StopAtStep, tiny_config


def _cfg(**changes):
    settings = dict(model="cnn", epochs=1, batch_size=64, device="cpu", seed=0)
    return recipe_config("fast", **(settings | changes))


def _weights(path):
    return load_checkpoint(path).model.state_dict()


def test_the_fast_recipe_learns_real_digits(fast_run):
    result = fast_run  # the session's one run of the fast recipe on the sample (conftest)
    assert result.best_accuracy >= 0.93, result.history  # 3,600 digits: 95.75% on torch 2.14
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    saved = load_checkpoint(result.checkpoint)
    assert saved.meta["model"] == "fastnet" and saved.meta["val_accuracy"] == result.best_accuracy
    assert saved.meta["train_config"]["epochs"] == 4 and saved.meta["seed"] == 0
    assert config.metrics_path(result.checkpoint).read_text().startswith("epoch,train_loss")
    assert config.curves_path(result.checkpoint).stat().st_size > 10_000


def test_same_seed_same_weights_other_seed_other_weights(processed_dir, tmp_path):
    a = train(_cfg(max_steps=15), processed_dir, tmp_path / "a.pt", progress=False)
    b = train(_cfg(max_steps=15), processed_dir, tmp_path / "b.pt", progress=False)
    c = train(
        _cfg(max_steps=15, seed=1),
        processed_dir,
        tmp_path / "c.pt",
        progress=False,
    )
    wa, wb, wc = (_weights(r.checkpoint) for r in (a, b, c))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


def test_augmented_training_is_reproducible_too(processed_dir, tmp_path):
    cfg = _cfg(max_steps=8, augment=True, elastic=True)
    a = train(cfg, processed_dir, tmp_path / "a.pt", progress=False)
    b = train(cfg, processed_dir, tmp_path / "b.pt", progress=False)
    wa, wb = _weights(a.checkpoint), _weights(b.checkpoint)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_finished_run_is_skipped_unless_forced(processed_dir, tmp_path):
    out = tmp_path / "m.pt"
    first = train(_cfg(max_steps=5), processed_dir, out, progress=False)
    again = train(_cfg(max_steps=5), processed_dir, out, progress=False)
    assert not first.skipped and again.skipped
    assert again.best_accuracy == first.best_accuracy
    assert not train(_cfg(max_steps=6), processed_dir, out, progress=False).skipped
    assert not train(_cfg(max_steps=6), processed_dir, out, progress=False, force=True).skipped


def test_training_from_png_folders(sample_png_dir, tmp_path):
    result = train(
        _cfg(data_source="images", max_steps=10),
        sample_png_dir,
        tmp_path / "png.pt",
        progress=False,
    )
    assert result.history and 0.0 < result.best_accuracy <= 1.0


def test_recipes_are_wired():
    assert recipe_config("fast") == recipe_config()
    best = recipe_config("best", device="cpu")  # alone: the first member of best's CPU table
    assert best.model == RECIPES["best"]["model"] and best.augment and best.ema == 0.999
    assert best.epochs == RECIPES["best"]["epochs"] and best.folds is None
    assert recipe_config("best", augment=False, epochs=3).augment is False
    with pytest.raises(PipelineError, match="--recipe huge"):
        recipe_config("huge")
    with pytest.raises(PipelineError, match="--optimizer lbfgs"):
        recipe_config(optimizer="lbfgs")


def test_on_cuda_the_recipes_take_their_gpu_settings_and_options_still_win(monkeypatch):
    import pipeline.common.device

    monkeypatch.setattr(
        pipeline.common.device, "resolve_device", lambda name: torch.device("cuda")
    )
    fast = recipe_config("fast", device="cuda")
    assert (fast.batch_size, fast.epochs, fast.compile) == (512, 5, False)  # eager: faster once
    assert fast.arch_args == {"widths": [24, 48, 96]}
    assert recipe_config("best", device="cuda").compile is True
    overridden = recipe_config("fast", device="cuda", batch_size=64, compile=True)
    assert (overridden.batch_size, overridden.compile) == (64, True)
    other_model = recipe_config("fast", device="cuda", model="cnn")
    assert other_model.arch_args == {} and other_model.batch_size == 512
    build_model(other_model.model, **other_model.arch_args)  # the widths were FastNet's only
    monkeypatch.undo()
    cpu = recipe_config("fast", device="cpu")
    assert (cpu.batch_size, cpu.compile, cpu.arch_args) == (128, False, {})


def test_ensemble_members_get_their_own_seed_and_file(processed_dir, tmp_path):
    configs = seed_members(_cfg(max_steps=5), 2)
    results = train_members(configs, processed_dir, tmp_path, "ens", jobs=1, progress=False)
    expected = [config.member_checkpoint_path("ens", k, tmp_path) for k in (0, 1)]
    assert [r.checkpoint for r in results] == expected
    assert [load_checkpoint(r.checkpoint).meta["seed"] for r in results] == [0, 1]


def test_interrupt_then_resume_matches_an_uninterrupted_run(small_processed_dir, tmp_path):
    data = small_processed_dir  # 720 training digits: two epochs in a few dozen steps
    steps_per_epoch = 720 // 32
    cfg = _cfg(epochs=2, batch_size=32, max_steps=steps_per_epoch + 8)  # into epoch 2
    whole = train(cfg, data, tmp_path / "whole.pt", progress=False)
    stop_at = steps_per_epoch + 5
    with pytest.raises(TrainingInterrupted) as stopped:
        train(cfg, data, tmp_path / "cut.pt", progress=False, stop=StopAtStep(stop_at))
    loop = read_payload(stopped.value.checkpoint)["training_state"]["loop"]
    assert (loop["epoch"], loop["step"]) == (1, stop_at - steps_per_epoch)  # mid-epoch 2
    assert len(whole.history) == 2
    resumed = train(cfg, data, tmp_path / "cut.pt", resume=True, progress=False)
    final_whole = read_payload(config.last_checkpoint_path(whole.checkpoint))["state_dict"]
    final_resumed = read_payload(config.last_checkpoint_path(resumed.checkpoint))["state_dict"]
    assert all(torch.equal(final_whole[k], final_resumed[k]) for k in final_whole)
    learned = ("epoch", "train_loss", "val_loss", "val_accuracy", "lr")
    assert [{k: r[k] for k in learned} for r in resumed.history] == [
        {k: r[k] for k in learned} for r in whole.history
    ]


def test_resume_without_saved_state_is_a_clear_error(processed_dir, tmp_path):
    with pytest.raises(PipelineError, match="no such checkpoint"):
        train(_cfg(), processed_dir, tmp_path / "never.pt", resume=True, progress=False)


def test_resume_refuses_other_prepared_data(tiny_run, raw_dir, tmp_path):
    """A re-prepare with another seed moves validation rows into train: resuming would leak.
    (tiny_run was trained on these CSVs prepared with seed 0.)"""
    processed = tmp_path / "processed"
    for other in (dict(seed=1), dict(seed=0, limit_rows=2000)):
        prepare(raw_dir, processed, **other)
        with pytest.raises(PipelineError, match="trained on other prepared data"):
            train(tiny_config(), processed, tiny_run, resume=True, progress=False)
    prepare(raw_dir, processed, seed=0)
    resumed = train(tiny_config(), processed, tiny_run, resume=True, progress=False)
    assert resumed.checkpoint == tiny_run


@pytest.mark.parametrize(
    "change", [dict(lr=1e-3), dict(epochs=2), dict(model="lenet"), dict(augment=True)]
)
def test_resume_refuses_options_that_make_another_run(change, tiny_run, processed_dir):
    name = next(iter(change))
    with pytest.raises(PipelineError, match=f"{name} .* differ"):
        train(tiny_config(**change), processed_dir, tiny_run, resume=True, progress=False)


def test_resume_may_change_the_device_only(tiny_run, processed_dir):
    resumed = train(tiny_config(device="auto"), processed_dir, tiny_run, resume=True)
    assert resumed.config.device == "auto"


@pytest.mark.parametrize(
    "damage",
    [
        lambda ts: ts.pop("optimizer"),
        lambda ts: ts["loop"].pop("epoch"),
        lambda ts: ts["loop"].update(epoch="one"),
        lambda ts: ts["rng"].update(shuffle=[1, 2]),
        lambda ts: ts.update(loop=[0, 0]),
    ],
    ids=["no optimizer", "no epoch", "epoch text", "rng list", "loop list"],
)
def test_a_tampered_resumable_state_is_one_line(damage, tiny_run, processed_dir):
    last = config.last_checkpoint_path(tiny_run)
    payload = torch.load(last, weights_only=True)
    damage(payload["training_state"])
    torch.save(payload, last)
    with pytest.raises(PipelineError, match="training state is damaged"):
        train(tiny_config(), processed_dir, tiny_run, resume=True, progress=False)


@pytest.mark.parametrize("lr", [float("inf"), float("nan"), -1.0, 0.0])
def test_a_learning_rate_that_cannot_train_is_refused_up_front(lr):
    with pytest.raises(PipelineError, match="--lr"):
        _cfg(lr=lr)


def test_a_diverging_run_stops_with_one_line_and_saves_nothing(processed_dir, tmp_path):
    out = tmp_path / "diverged.pt"
    with pytest.raises(PipelineError, match="diverged|NaN or infinite"):
        train(_cfg(lr=1e30, optimizer="sgd", max_steps=20), processed_dir, out, progress=False)
    assert not out.exists()


def test_out_that_is_a_folder_fails_before_any_training(processed_dir, tmp_path):
    (tmp_path / "folder.pt").mkdir()
    with pytest.raises(PipelineError, match="is a folder"):
        train(_cfg(max_steps=3), processed_dir, tmp_path / "folder.pt", progress=False)
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    with pytest.raises(PipelineError, match="cannot write there"):
        train(_cfg(max_steps=3), processed_dir, blocked / "m.pt", progress=False)


def test_the_curves_figure_is_named_after_the_checkpoint_beside_it(processed_dir, tmp_path):
    a = train(_cfg(max_steps=3), processed_dir, tmp_path / "a" / "fastnet.pt", progress=False)
    b = train(_cfg(max_steps=3), processed_dir, tmp_path / "b" / "fastnet.pt", progress=False)
    assert a.curves == tmp_path / "a" / "fastnet.curves.png" and a.curves.stat().st_size
    assert b.curves == tmp_path / "b" / "fastnet.curves.png" and a.curves != b.curves


def test_training_curves_tick_whole_epochs_only():
    from pipeline.common.plots import training_curves_figure

    history = [
        {"epoch": e, "train_loss": 1 / e, "val_loss": 1 / e, "val_accuracy": 0.9 + e / 100}
        for e in (1, 2, 3)
    ]
    figure = training_curves_figure(history)
    figure.canvas.draw()
    for ax in figure.axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks


def test_progress_off_a_terminal_prints_lines_with_the_step_and_loss(monkeypatch):
    from pipeline.common import progress

    monkeypatch.setattr(progress, "LINE_SECONDS", 0.0)
    lines = []
    bar = progress.EpochProgress("epoch 1/2", total=3, initial=0, enabled=True, log=lines.append)
    for _ in range(3):
        bar.step(lambda: 0.25)
    bar.close()
    assert lines == [f"epoch 1/2: step {k}/3  loss 0.2500" for k in (1, 2, 3)]


def test_the_bar_counts_only_the_steps_max_steps_allows(processed_dir, tmp_path, monkeypatch):
    from pipeline.common import progress

    totals = []
    real = progress.EpochProgress.__init__

    def spy(self, description, total, initial, enabled, log):
        totals.append(total)
        real(self, description, total, initial, enabled, log)

    monkeypatch.setattr(progress.EpochProgress, "__init__", spy)
    train(_cfg(max_steps=7), processed_dir, tmp_path / "m.pt", log=print)
    assert totals == [7]


def test_under_ddp_the_ranks_agree_on_a_stop_every_n_steps_and_at_epoch_end(monkeypatch):
    from pipeline.training import run_state
    from pipeline.training.distributed import Ranks

    collectives = []

    def all_reduce_max(value, ranks, device):  # what the other rank holds: no signal
        collectives.append(value)
        return value

    monkeypatch.setattr(run_state, "max_over_ranks", all_reduce_max)
    stop, cpu, every = StopSignals(), torch.device("cpu"), StopSignals.DDP_CHECK_EVERY
    stop.signum = signal.SIGTERM  # arrived on this rank at step 1
    answers = [stop.requested(Ranks(0, 2), cpu, step) for step in range(1, 2 * every + 1)]
    assert [step for step, yes in enumerate(answers, 1) if yes] == [every, 2 * every]
    assert len(collectives) == 2  # no all_reduce (and no device sync) in between
    assert stop.requested(Ranks(0, 2), cpu) and len(collectives) == 3  # the epoch's end
    assert all(stop.requested(Ranks(), cpu, step) for step in (1, 2, 3))  # one process: always
