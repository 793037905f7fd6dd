"""Training learns, is reproducible on CPU, skips finished runs, and resumes exactly."""

import os
import signal
import threading

import pytest
import torch

from pipeline import config
from pipeline.checkpoints import load_checkpoint, read_payload
from pipeline.errors import PipelineError
from pipeline.train import (
    RECIPES,
    TrainingInterrupted,
    member_path,
    recipe_config,
    train,
    train_ensemble,
)


def _cfg(**changes):
    settings = dict(model="cnn", epochs=1, batch_size=64, device="cpu", seed=0)
    return recipe_config("fast", **(settings | changes))


def _weights(path):
    return load_checkpoint(path).model.state_dict()


def test_the_fast_recipe_learns_real_digits(processed_dir, tmp_path):
    result = train(
        recipe_config("fast", device="cpu"),
        processed_dir,
        tmp_path / "m.pt",
        progress=False,
        figures_dir=tmp_path,
    )
    assert result.best_accuracy >= 0.93, result.history  # 3,600 digits: 95.75% on torch 2.14
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    saved = load_checkpoint(result.checkpoint)
    assert saved.meta["model"] == "fastnet" and saved.meta["val_accuracy"] == result.best_accuracy
    assert saved.meta["train_config"]["epochs"] == 4 and saved.meta["seed"] == 0
    assert config.metrics_path(result.checkpoint).read_text().startswith("epoch,train_loss")
    assert (tmp_path / "m_curves.png").stat().st_size > 10_000


def test_same_seed_same_weights_other_seed_other_weights(processed_dir, tmp_path):
    a = train(
        _cfg(max_steps=15), processed_dir, tmp_path / "a.pt", progress=False, figures_dir=tmp_path
    )
    b = train(
        _cfg(max_steps=15), processed_dir, tmp_path / "b.pt", progress=False, figures_dir=tmp_path
    )
    c = train(
        _cfg(max_steps=15, seed=1),
        processed_dir,
        tmp_path / "c.pt",
        progress=False,
        figures_dir=tmp_path,
    )
    wa, wb, wc = (_weights(r.checkpoint) for r in (a, b, c))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


def test_augmented_training_is_reproducible_too(processed_dir, tmp_path):
    cfg = _cfg(max_steps=8, augment=True, elastic=True)
    a = train(cfg, processed_dir, tmp_path / "a.pt", progress=False, figures_dir=tmp_path)
    b = train(cfg, processed_dir, tmp_path / "b.pt", progress=False, figures_dir=tmp_path)
    wa, wb = _weights(a.checkpoint), _weights(b.checkpoint)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_finished_run_is_skipped_unless_forced(processed_dir, tmp_path):
    out = tmp_path / "m.pt"
    first = train(_cfg(max_steps=5), processed_dir, out, progress=False, figures_dir=tmp_path)
    again = train(_cfg(max_steps=5), processed_dir, out, progress=False, figures_dir=tmp_path)
    assert not first.skipped and again.skipped
    assert again.best_accuracy == first.best_accuracy
    assert not train(
        _cfg(max_steps=6), processed_dir, out, progress=False, figures_dir=tmp_path
    ).skipped
    assert not train(
        _cfg(max_steps=6), processed_dir, out, progress=False, figures_dir=tmp_path, force=True
    ).skipped


def test_training_from_png_folders(processed_dir, tmp_path):
    result = train(
        _cfg(data="images", max_steps=10),
        processed_dir,
        tmp_path / "png.pt",
        progress=False,
        figures_dir=tmp_path,
    )
    assert result.history and 0.0 < result.best_accuracy <= 1.0


def test_recipes_are_wired():
    assert recipe_config("fast") == recipe_config()
    best = recipe_config("best")
    assert best.model == "deepcnn" and best.augment and best.epochs == RECIPES["best"]["epochs"]
    assert recipe_config("best", augment=False, epochs=3).augment is False
    with pytest.raises(PipelineError, match="--recipe huge"):
        recipe_config("huge")
    with pytest.raises(PipelineError, match="--optimizer lbfgs"):
        recipe_config(optimizer="lbfgs")


def test_on_cuda_the_recipes_take_their_gpu_settings_and_options_still_win(monkeypatch):
    import pipeline.train as train_module

    monkeypatch.setattr(train_module, "resolve_device", lambda name: torch.device("cuda"))
    fast = recipe_config("fast", device="cuda")
    assert (fast.batch_size, fast.epochs, fast.compile) == (512, 5, True)
    assert fast.arch_args == {"widths": [24, 48, 96]}
    assert recipe_config("best", device="cuda").compile is True
    overridden = recipe_config("fast", device="cuda", batch_size=64, compile=False)
    assert (overridden.batch_size, overridden.compile) == (64, False)
    monkeypatch.undo()
    cpu = recipe_config("fast", device="cpu")
    assert (cpu.batch_size, cpu.compile, cpu.arch_args) == (128, False, {})


def test_ensemble_members_get_their_own_seed_and_file(processed_dir, tmp_path):
    results = train_ensemble(
        _cfg(max_steps=5), 2, processed_dir, tmp_path, name="ens", progress=False
    )
    assert [r.checkpoint for r in results] == [member_path(tmp_path, "ens", k) for k in (0, 1)]
    assert [load_checkpoint(r.checkpoint).meta["seed"] for r in results] == [0, 1]


def test_interrupt_then_resume_matches_an_uninterrupted_run(processed_dir, tmp_path):
    cfg = _cfg(epochs=2, batch_size=32)
    whole = train(cfg, processed_dir, tmp_path / "whole.pt", progress=False, figures_dir=tmp_path)

    def interrupt_when_epoch_one_is_saved():
        last = config.last_checkpoint_path(tmp_path / "cut.pt")
        while not last.exists():
            threading.Event().wait(0.005)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt_when_epoch_one_is_saved, daemon=True).start()
    with pytest.raises(TrainingInterrupted) as stopped:
        train(cfg, processed_dir, tmp_path / "cut.pt", progress=False, figures_dir=tmp_path)
    loop = read_payload(stopped.value.checkpoint)["training_state"]["loop"]
    assert loop["epoch"] == 1 and 0 < loop["step"] < 3600 // 32  # stopped mid-epoch 2
    resumed = train(
        cfg, processed_dir, tmp_path / "cut.pt", resume=True, progress=False, figures_dir=tmp_path
    )
    final_whole = read_payload(whole.last_checkpoint)["state_dict"]
    final_resumed = read_payload(resumed.last_checkpoint)["state_dict"]
    assert all(torch.equal(final_whole[k], final_resumed[k]) for k in final_whole)
    learned = ("epoch", "train_loss", "val_loss", "val_accuracy", "lr")
    assert [{k: r[k] for k in learned} for r in resumed.history] == [
        {k: r[k] for k in learned} for r in whole.history
    ]


def test_resume_without_saved_state_is_a_clear_error(processed_dir, tmp_path):
    with pytest.raises(PipelineError, match="no such checkpoint"):
        train(_cfg(), processed_dir, tmp_path / "never.pt", resume=True, progress=False)
