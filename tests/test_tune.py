"""`pipeline tune`: Optuna trials as tracked runs, pruning, resuming a study, refusing another."""

import pytest

from pipeline.common.errors import PipelineError
from pipeline.experiments import runs, tracking
from pipeline.experiments.tune import SearchSpace, train_command, tune
from pipeline.training.checkpoints import read_payload

# Tiny trials: 4-8-16 FastNets, 2 epochs of 14 batches on the 3,600 sample digits.
SPACE = SearchSpace(lr=(1e-6, 2e-2), epochs=(2, 2), widths=(4,), batch_sizes=(256,))
GOOD = dict(lr=4e-3, weight_decay=5e-4, epochs=2, width=4, batch_size=256, augment=False)


@pytest.mark.slow  # trains tiny models and opens MLflow and Optuna stores
def test_three_trials_one_pruned_a_resumed_study_and_another_space_refused(
    tracking_store, sample_processed_dir, tmp_path
):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    common = dict(
        space=SPACE, processed_dir=sample_processed_dir, work_dir=tmp_path / "tune",
        storage=storage, device="cpu", study_name="tiny",
    )  # fmt: skip
    session = tracking.Session()
    parent = session.start_run("tiny", "tune", {"trials": 2})
    first = tune(trials=2, enqueue=(GOOD, GOOD | {"weight_decay": 1e-5}), parent=parent, **common)
    assert first.states == {"COMPLETE": 2}
    # resumed by name to a budget of 3: a learning rate too small to learn is pruned after
    # epoch 2 (the median of the first two trials there is far above it); never the best
    lines = []
    again = tune(
        trials=3, enqueue=(GOOD | {"lr": 1e-6},), parent=parent, log=lines.append, **common
    )
    parent.end()
    assert session.close() is None
    assert again.states == {"COMPLETE": 2, "PRUNED": 1}
    pruned = [line for line in lines if "pruned" in line]
    assert pruned == [f"trial 2: pruned at epoch 2 {pruned[0].split('epoch 2 ')[1]}"]
    progress = [line.split()[:4] for line in lines if line not in pruned]  # as each epoch ends
    assert progress == [["trial", "2:", "epoch", "1/2"], ["trial", "2:", "epoch", "2/2"]]
    assert again.best_trial in (0, 1) and again.best_value > 0.5
    assert again.command.startswith("pipeline train --model fastnet --epochs 2 --batch-size 256")
    assert "--width 4 --no-augment --seed 0 --device cpu" in again.command

    rows = runs.list_runs(uri=tracking_store)
    trials = {r.info.run_name: r for r in rows if r.data.tags["command"] == "tune"}
    trials.pop("tiny")  # the study's own run
    assert sorted(trials) == ["trial-0", "trial-1", "trial-2"]
    assert {r.data.tags["pipeline.parent"] for r in trials.values()} == {parent.id()}
    states = [trials[f"trial-{n}"].info.status for n in range(3)]
    assert states == ["FINISHED", "FINISHED", "KILLED"]
    best_kept = runs.run_checkpoints(parent.id(), tracking_store)
    assert best_kept == [runs.Path(trials[f"trial-{again.best_trial}"].data.tags["checkpoint"])]
    assert read_payload(best_kept[0])["meta"]["val_accuracy"] == pytest.approx(again.best_value)

    with pytest.raises(PipelineError, match="another search space") as caught:
        tune(trials=1, **(common | {"space": SearchSpace(widths=(8,))}))
    assert "\n" not in str(caught.value)


@pytest.mark.slow  # trains tiny models and opens an Optuna store
def test_a_resumed_study_reproduces_its_best_trial_with_that_trials_own_seed_and_device(
    sample_processed_dir, tmp_path
):
    common = dict(space=SPACE, processed_dir=sample_processed_dir, work_dir=tmp_path / "tune",
                  storage=f"sqlite:///{tmp_path / 'optuna.db'}", study_name="s")  # fmt: skip
    first = tune(trials=1, enqueue=(GOOD,), seed=7, device="cpu", **common)
    assert tune(trials=1, seed=9, **common).states == {"COMPLETE": 1}  # the budget is spent
    again = tune(trials=2, enqueue=(GOOD | {"lr": 1e-6},), seed=9, **common)
    assert again.best_trial == first.best_trial == 0
    assert again.command == first.command and "--seed 7 --device cpu" in again.command
    assert first.timed_out_after is None


@pytest.mark.slow
def test_a_time_budget_that_ends_the_search_is_said(sample_processed_dir, tmp_path):
    result = tune(trials=50, timeout=0.01, enqueue=(GOOD,), space=SPACE, study_name="t",
                  processed_dir=sample_processed_dir, work_dir=tmp_path / "tune",
                  storage=f"sqlite:///{tmp_path / 'optuna.db'}", device="cpu")  # fmt: skip
    assert result.timed_out_after == 1 and result.states == {"COMPLETE": 1}


@pytest.mark.slow
def test_a_trial_whose_process_was_killed_is_marked_failed_by_the_next_run(
    sample_processed_dir, tmp_path, monkeypatch
):
    """Optuna's heartbeat: a trial silent for the grace period is a dead process's."""
    import subprocess
    import sys
    import time

    import optuna

    from pipeline.experiments import tune as tune_module

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    worker = (
        "import sys, time, optuna\n"
        f"s = optuna.storages.RDBStorage({storage!r}, heartbeat_interval=1, grace_period=2)\n"
        "study = optuna.create_study(study_name='k', storage=s, direction='maximize')\n"
        "study.optimize(lambda t: print('running', flush=True) or time.sleep(600), n_trials=1)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", worker], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline() == "running\n"
    time.sleep(1.5)  # its first heartbeat is in
    process.kill()
    process.wait()
    monkeypatch.setattr(tune_module, "GRACE_S", 2)
    time.sleep(2.5)  # past the grace period
    result = tune(
        trials=1,
        enqueue=(GOOD,),
        space=SPACE,
        study_name="k",
        storage=storage,
        processed_dir=sample_processed_dir,
        work_dir=tmp_path / "tune",
        device="cpu",
    )
    assert result.states == {"FAIL": 1, "COMPLETE": 1}
    study = optuna.load_study(study_name="k", storage=storage)
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE"]


def test_the_reproducing_command_names_every_sampled_option():
    options = dict(GOOD, augment=True, augment_strength=0.5, lr=0.0012345678901234)
    command = train_command(options, "fastnet", 3, {})
    assert command == (
        "pipeline train --model fastnet --epochs 2 --batch-size 256 --lr 0.0012345678901234 "
        "--weight-decay 0.0005 --width 4 --augment --augment-strength 0.5 --seed 3"
    )


def test_neither_trials_nor_timeout_is_one_line(sample_processed_dir):
    with pytest.raises(PipelineError, match="--trials N, --timeout S"):
        tune(trials=None, timeout=None, processed_dir=sample_processed_dir)
