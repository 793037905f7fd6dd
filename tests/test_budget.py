"""`ensemble --budget`: the plan sized from measured speeds, kept to time while members train."""

import time
from dataclasses import replace
from types import SimpleNamespace

import pytest

from pipeline.common.errors import PipelineError
from pipeline.data.datasets import read_meta
from pipeline.experiments import budget
from pipeline.experiments.budget import (
    MAX_SCALE,
    Cost,
    Pace,
    _earlier,
    makespan,
    probe,
    replan,
    size_plan,
)
from pipeline.training.recipes import LONG_CPU, best_members, lengthened

from conftest import assert_one_line_error, invoke

# The CPU table's shape: two nets of 11 and 8 epochs, five of each, on two slots.
TABLE = [Cost(11, 8.0, 1.0), Cost(8, 9.0, 1.0)] * 5


def _train_s(costs, epochs, slots=2):
    return makespan([c.seconds(e) for c, e in zip(costs, epochs, strict=True)], slots)


def test_twice_the_speed_gives_about_twice_the_epochs_and_the_plan_fills_the_budget():
    plan = size_plan(TABLE, 2, budget_s=600)
    faster = size_plan([replace(c, epoch_s=c.epoch_s / 2) for c in TABLE], 2, budget_s=600)
    assert not plan.fallback and len(plan.epochs) == 10
    assert plan.epochs == plan.epochs[:2] * 5 and plan.epochs[0] > 11  # one factor, above 1
    assert all(1.8 <= f / e <= 2.2 for e, f in zip(plan.epochs, faster.epochs, strict=True))
    for sized in (plan, faster):
        assert sized.train_s + sized.after_s <= 600
    # the largest factor that fits: one epoch more for every member overruns
    assert _train_s(TABLE, [e + 1 for e in plan.epochs]) + plan.after_s > 600


def test_a_long_budget_stops_at_the_cap_and_a_reserve_shortens_the_plan():
    assert size_plan(TABLE, 2, 10 * 3600).epochs == tuple(MAX_SCALE * c.epochs for c in TABLE)
    plan, reserved = size_plan(TABLE, 2, 600), size_plan(TABLE, 2, 600, reserve_s=120)
    assert all(r < e for r, e in zip(reserved.epochs, plan.epochs, strict=True))
    assert reserved.train_s + reserved.after_s <= 600 - 120


def test_a_small_budget_falls_back_to_one_member_per_fold_then_refuses_naming_the_minimum():
    # 10 members of 1 epoch: 63 s of training + 30 s after; 5 members: 36 s + 25 s
    assert _train_s(TABLE, [1] * 10) + 30 > 80
    plan = size_plan(TABLE, 2, budget_s=80, folds=5)
    assert plan.fallback and len(plan.epochs) == 5 and min(plan.epochs) >= 1
    assert plan.train_s + plan.after_s <= 80
    with pytest.raises(PipelineError, match=r"--budget 0\.8333.* min: too short .*needs 2 min"):
        size_plan(TABLE, 2, budget_s=50, folds=5)
    with pytest.raises(PipelineError, match="needs 3 min"):  # 61 s + a 70 s reserve
        size_plan(TABLE, 2, budget_s=100, reserve_s=70, folds=5)


def test_a_table_that_must_keep_its_epochs_is_sized_up_or_left_out():
    long = [replace(c, epoch_s=3 * c.epoch_s) for c in TABLE]  # nets three times slower
    at_table = _train_s(long, [c.epochs for c in long]) + size_plan(long, 2, 10**6).after_s
    assert size_plan(long, 2, at_table - 1, least=1.0) is None  # no fallback, no refusal
    plan = size_plan(long, 2, 1.5 * at_table, least=1.0)
    assert all(e > c.epochs for e, c in zip(plan.epochs, long, strict=True))
    assert plan.train_s + plan.after_s <= 1.5 * at_table


def test_lengthened_swaps_only_the_cpu_tables_own_rows_for_the_long_nets():
    configs = best_members(device="cpu", seed=3)
    extra = [replace(c, extra="x.npz", extra_sha256="0" * 64) for c in configs]
    long = lengthened(extra)
    assert [(c.model, c.arch_args, c.epochs) for c in long] == [
        (r["model"], r["arch_args"], r["epochs"]) for r in LONG_CPU
    ]
    keep = ("seed", "fold", "folds", "fold_seed", "extra", "extra_sha256", "augment", "ema")
    assert all(
        getattr(c, k) == getattr(o, k) for c, o in zip(long, extra, strict=True) for k in keep
    )
    assert lengthened(best_members(device="cpu", epochs=3)) is None  # --epochs given
    assert lengthened(best_members(device="cpu", width=2)) is None  # --width given
    assert lengthened(best_members(12, device="cpu"))[11].arch_args == LONG_CPU[1]["arch_args"]


@pytest.mark.parametrize("share, wide", [(0.5, False), (2.0, True)])
def test_a_budget_takes_the_long_nets_only_where_they_fit_at_their_epochs(
    processed_dir, tmp_path, monkeypatch, share, wide
):
    long_nets = {budget._net(c) for c in lengthened(best_members(device="cpu"))}
    speeds = lambda configs, slots: {  # noqa: E731
        budget._net(c): (50.0 if budget._net(c) in long_nets else 10**6, 10**6) for c in configs
    }
    monkeypatch.setattr(budget, "probe", speeds)
    counts = read_meta(processed_dir)["counts"]
    epoch_s = (counts["train"] + counts["val"]) * 4 // 5 // 128 * 128 / 50.0
    budget_s = share * (budget.AFTER_START_S + 5 * (12 * epoch_s + budget.MEMBER_START_S))
    said = []
    configs, pace = budget.fit_budget(
        best_members(device="cpu"), budget_s, processed_dir, tmp_path, 2, True, 0.0,
        said.append, time.perf_counter(),
    )  # fmt: skip
    assert [c.arch_args == r["arch_args"] for c, r in zip(configs, LONG_CPU, strict=True)] == [
        wide
    ] * 10
    assert not wide or all(c.epochs > 12 for c in configs)  # sized up to fill the budget
    assert pace.plan.train_s + pace.plan.after_s <= budget_s
    assert ("widths=[32,64,128]" in said[-1]) is wide


def test_replan_shrinks_only_the_members_not_started_when_one_ran_slow():
    plan = size_plan(TABLE, 2, budget_s=600)
    planned = [c.seconds(e) for c, e in zip(TABLE, plan.epochs, strict=True)]
    left = 600 - plan.after_s - planned[0]
    # on time (or faster): nothing changes, nothing grows
    assert replan(plan, TABLE, 2, {0: planned[0]}, {1: 20.0}, left) == plan
    assert replan(plan, TABLE, 2, {0: planned[0] / 2}, {1: 20.0}, left + 60) == plan
    # member 0 took twice its time; member 1 started beside it
    slow = replan(plan, TABLE, 2, {0: 2 * planned[0]}, {1: planned[0]}, 600 - 2 * planned[0])
    assert slow.epochs[:2] == plan.epochs[:2]  # finished and started ones keep their epochs
    assert all(1 <= s <= e for s, e in zip(slow.epochs[2:], plan.epochs[2:], strict=True))
    assert sum(slow.epochs) < sum(plan.epochs)
    # what is left, at the slow pace, fits in the time left
    busy = [2 * planned[1] - planned[0]]
    rest = [2 * TABLE[k].seconds(slow.epochs[k]) - TABLE[k].seconds(0) for k in range(2, 10)]
    assert makespan(rest, 2, busy) <= 600 - 2 * planned[0] + 1e-6


def test_pace_changes_the_unstarted_members_configs_and_says_so():
    configs = best_members(4, device="cpu", epochs=6)
    costs = [Cost(6, 10.0, 1.0)] * 4
    plan = size_plan(costs, 2, budget_s=200, folds=2)
    start = 1000.0  # the budget began long ago: behind from the first member on
    member = SimpleNamespace(index=0, wall_seconds=3 * costs[0].seconds(plan.epochs[0]))
    results = {0: member}
    train = SimpleNamespace(configs=list(configs), results=results, started={0: 0.0, 1: 0.0})
    said = Pace(200, start, 2, plan, costs)(member, train)
    assert said.startswith("budget: behind the plan (member 1 took")
    assert train.configs[:2] == configs[:2]
    assert all(c.epochs < plan.epochs[k + 2] for k, c in enumerate(train.configs[2:]))


@pytest.mark.slow  # trains a member for two steps: seconds
def test_earlier_members_keep_their_epochs_so_a_rerun_keeps_them(processed_dir, tmp_path):
    from pipeline.training.train import train

    trained = best_members(2, device="cpu", epochs=1, batch_size=32, max_steps=2)
    train(trained[0], processed_dir, tmp_path / "best-0.pt", progress=False)
    configs, finished = _earlier(best_members(2, device="cpu", epochs=5, batch_size=32,
                                              max_steps=2), tmp_path)  # fmt: skip
    assert finished == {0} and configs[0] == trained[0] and configs[1].epochs == 5


@pytest.mark.slow  # starts a process with torch: seconds
def test_probe_measures_positive_speeds_for_each_net():
    cfg = best_members(1, device="cpu", batch_size=16)[0]
    speeds = probe([cfg, replace(cfg, seed=7)], slots=1)  # one net, whatever the seed
    ((train_ips, score_ips),) = speeds.values()
    assert train_ips > 0 and score_ips > 0


def _budget_command(processed_dir, models, minutes):
    return invoke(
        "ensemble", "--recipe", "best", "--budget", minutes, "--device", "cpu", "--jobs", "2",
        "--processed-dir", processed_dir, "--out-dir", models, "--no-track",
    )  # fmt: skip


def test_a_budget_too_small_for_the_measured_speed_refuses_in_one_line(
    processed_dir, tmp_path, monkeypatch
):
    # the fixture's digits at 200 training images/s: 1 epoch of 5 members is about 1.5 min
    speeds = lambda configs, slots: {budget._net(c): (200.0, 2000.0) for c in configs}  # noqa: E731
    monkeypatch.setattr(budget, "probe", speeds)
    result = _budget_command(processed_dir, tmp_path / "models", 0.5)
    assert_one_line_error(result, "--budget 0.5 min: too short for this machine", "needs 2 min")
    assert not (tmp_path / "models").exists()


@pytest.mark.slow
def test_budget_measures_this_machine_then_refuses_in_one_line(processed_dir, tmp_path):
    result = _budget_command(processed_dir, tmp_path / "models", 0.1)
    assert_one_line_error(result, "--budget 0.1 min: too short for this machine", "needs")
    assert not (tmp_path / "models").exists()
