"""`ensemble --budget` on a CPU: each net's speed measured in the slots its members will use,
every member's epochs scaled by one factor so that training, scoring and predict fit, and the
plan kept to while the members train."""

import heapq
import math
import multiprocessing
import signal
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path

import torch

from pipeline import config
from pipeline.common.errors import PipelineError
from pipeline.data.datasets import TensorDigits, read_meta
from pipeline.data.extra import load_extra
from pipeline.experiments.ensemble import _digits, describe, member_slots
from pipeline.inference.predictor import score
from pipeline.training.checkpoints import read_payload
from pipeline.training.distributed import Ranks
from pipeline.training.recipes import lengthened
from pipeline.training.run_state import StopSignals, saved_config
from pipeline.training.train import new_run, train_one_epoch

MAX_SCALE = 3  # a member trains at most this many times its table's epochs
MEMBER_START_S = 4.0  # a member's process start, data load and writes, besides its epochs
AFTER_START_S = 20.0  # the scoring's and predict's own start: imports, data, loading members
PROBE_WARMUP, PROBE_STEPS = 5, 30


@dataclass(frozen=True)
class Cost:
    epochs: int  # the table's
    epoch_s: float  # on a slot
    after_s: float = 0.0  # its share of the scoring and predict after training
    kept: bool = False  # an earlier run trained it: free

    def seconds(self, epochs: int) -> float:
        return 0.0 if self.kept else epochs * self.epoch_s + MEMBER_START_S


@dataclass(frozen=True)
class Plan:
    epochs: tuple[int, ...]  # per member
    train_s: float  # training's wall time, members dealt in order to the first free slot
    after_s: float  # the out-of-bag scoring and predict
    fallback: bool = False  # one member per fold: all of them do not fit even at 1 epoch


def makespan(seconds: Sequence[float], slots: int, busy: Sequence[float] = ()) -> float:
    """When the last job ends, each started in order on the first free slot (some `busy`)."""
    free = sorted([*busy, *[0.0] * (slots - len(busy))])
    for s in seconds:
        heapq.heapreplace(free, free[0] + s)
    return max(free)


def _scaled(costs: Sequence[Cost], factor: float) -> list[int]:
    clamp = lambda c: min(max(1, round(c.epochs * factor)), MAX_SCALE * c.epochs)  # noqa: E731
    return [c.epochs if c.kept else clamp(c) for c in costs]


def _train_s(costs, epochs, slots, busy=()) -> float:
    return makespan([c.seconds(e) for c, e in zip(costs, epochs, strict=True)], slots, busy)


def _fit(costs, slots, limit_s, top, busy=()) -> list[int] | None:
    """The epochs of the largest factor up to `top` whose training ends within `limit_s`."""

    def fits(factor: float) -> bool:
        return _train_s(costs, _scaled(costs, factor), slots, busy) <= limit_s

    if not fits(0.0):
        return None
    low, high = (top, top) if fits(top) else (0.0, top)
    for _ in range(30):
        middle = (low + high) / 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return _scaled(costs, low)


def size_plan(
    costs: Sequence[Cost], slots: int, budget_s: float, reserve_s: float = 0.0, folds: int = 5,
    least: float | None = None,
) -> Plan | None:  # fmt: skip
    """Every member's epochs scaled by one factor (up to MAX_SCALE times the table's) to end
    `reserve_s` before `budget_s`; else one member per fold; else a refusal naming the need.
    With `least`, None where the factor would be below it (no fallback, no refusal)."""
    for count in dict.fromkeys((len(costs), min(folds, len(costs)))):
        part = costs[:count]
        after_s = AFTER_START_S + sum(c.after_s for c in part)
        limit_s = budget_s - reserve_s - after_s
        if least is not None and _train_s(part, _scaled(part, least), slots) > limit_s:
            return None
        if epochs := _fit(part, slots, limit_s, MAX_SCALE):
            return Plan(tuple(epochs), _train_s(part, epochs, slots), after_s, count < len(costs))
    need = reserve_s + after_s + _train_s(part, [1] * count, slots)
    raise PipelineError(
        f"--budget {budget_s / 60:g} min: too short for this machine; the smallest plan ({count} "
        f"members of 1 epoch, then scoring and predict) needs {math.ceil(need / 60)} min"
    )


def replan(plan, costs, slots, walls: dict[int, float], running: dict[int, float], left_s):
    """When the members that finished (`walls`: seconds by index) ran slower than planned, those
    not started get fewer epochs (at least 1) so that training ends within `left_s`."""
    planned = sum(costs[k].seconds(plan.epochs[k]) for k in walls)
    slow = sum(walls.values()) / planned if planned else 1.0
    waiting = [k for k, c in enumerate(costs) if k not in walls | running and not c.kept]
    if slow <= 1.0 or not waiting:
        return plan
    busy = [max(0.0, slow * costs[k].seconds(plan.epochs[k]) - ran) for k, ran in running.items()]
    base = [
        replace(costs[k], epochs=plan.epochs[k], epoch_s=costs[k].epoch_s * slow) for k in waiting
    ]
    shrunk = _fit(base, slots, left_s, 1.0, busy) or [1] * len(waiting)
    shrunk = dict(zip(waiting, shrunk, strict=True))
    return replace(plan, epochs=tuple(shrunk.get(k, e) for k, e in enumerate(plan.epochs)))


_barrier = None  # a probe process's meeting point with the other slots'


def _start_probe(barrier) -> None:
    global _barrier
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops the pool
    torch.set_num_threads(1)
    _barrier = barrier


def _probe(cfg) -> tuple[float, float]:
    """(training, scoring) images/s of `pipeline train`'s steps on random digits."""
    count, generator = cfg.batch_size * (PROBE_WARMUP + PROBE_STEPS), torch.Generator()
    images = torch.randint(0, 256, (count, 1, 28, 28), dtype=torch.uint8, generator=generator)
    data = TensorDigits(images, torch.randint(0, 10, (count,), generator=generator))
    cpu, cfg = torch.device("cpu"), replace(cfg, device="cpu", epochs=1, max_steps=None)
    run = new_run(cfg, data, data, Ranks(), cpu, out=Path("probe.pt"))
    never = StopSignals()  # not entered: no handler, nothing stops the steps
    run.total_steps = PROBE_WARMUP
    train_one_epoch(run, never, None)
    _barrier.wait(timeout=120)
    run.total_steps = PROBE_WARMUP + PROBE_STEPS
    train_s = train_one_epoch(run, never, None)
    start = time.perf_counter()
    score(run.kept_model, TensorDigits(images[:1024], data.labels[:1024]))
    return PROBE_STEPS * cfg.batch_size / train_s, 1024 / (time.perf_counter() - start)


def probe(configs, slots: int) -> dict[tuple, tuple[float, float]]:
    """Each net's (training, scoring) images/s, on every slot at once: contention included."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(slots, context, _start_probe, (context.Barrier(slots),)) as pool:
        return {
            net: tuple(map(statistics.mean, zip(*pool.map(_probe, [cfg] * slots), strict=True)))
            for net, cfg in {_net(cfg): cfg for cfg in configs}.items()
        }


def _net(cfg) -> tuple:
    return describe(cfg), cfg.batch_size


def _clock(seconds_from_now: float) -> str:
    return f"{datetime.now() + timedelta(seconds=seconds_from_now):%H:%M}"


def _earlier(configs: list, models_dir: Path) -> tuple[list, set[int]]:
    """The configs with the epochs an earlier run gave its members, and those it finished."""
    configs, finished, name = list(configs), set(), configs[0].recipe or configs[0].model
    for k, cfg in enumerate(configs):
        last = config.last_checkpoint_path(config.member_checkpoint_path(name, k, models_dir))
        with suppress(PipelineError, KeyError, TypeError):  # none there, or not ours: afresh
            meta = read_payload(last)["meta"]
            if replace(saved := saved_config(meta, last), epochs=cfg.epochs) == cfg:
                configs[k] = saved
                finished |= {k} if meta.get("finished") else set()
    return configs, finished


class Pace:
    """`train_members`' `pace`: after each member, replans when the run falls behind; without
    a plan (a GPU, or --epochs/--members given) it says the ETA at the pace so far."""

    def __init__(self, budget_s, start, slots, plan=None, costs=(), reserve_s=0.0):
        self.budget_s, self.start, self.slots, self.plan = budget_s, start, slots, plan
        self.costs, self.reserve_s = costs, reserve_s

    def __call__(self, member, train) -> str | None:
        now, n = time.perf_counter(), len(train.configs)
        walls = {k: r.wall_seconds for k, r in train.results.items() if r.wall_seconds}
        if self.plan is None:  # the members' mean wall time so far, times the rounds left
            left = math.ceil((n - len(train.results)) / self.slots)
            return f"budget: ETA {_clock(left * statistics.mean(walls.values()))}" * bool(walls)
        running = {k: now - t for k, t in train.started.items() if k not in train.results}
        left_s = self.start + self.budget_s - self.reserve_s - self.plan.after_s - now
        new = replan(self.plan, self.costs, self.slots, walls, running, left_s)
        if not (changed := [k for k in range(n) if new.epochs[k] != self.plan.epochs[k]]):
            return None
        for k in changed:
            train.configs[k] = replace(train.configs[k], epochs=new.epochs[k])
        planned, self.plan = self.costs[member.index].seconds(self.plan.epochs[member.index]), new
        shrunk = ", ".join(f"{k + 1}: {new.epochs[k]}" for k in changed)
        return (
            f"budget: behind the plan (member {member.index + 1} took {member.wall_seconds:.0f} "
            f"s, planned {planned:.0f} s); epochs of members not started now {shrunk}"
        )

    def closing(self) -> str:
        spent = time.perf_counter() - self.start
        after = f", predict's ~{self.plan.after_s / 60:.1f} min to follow" if self.plan else ""
        return f"budget: {spent / 60:.1f} min of the {self.budget_s / 60:g}-min budget{after}"


def _cost(cfg, speed: tuple[float, float], counts: dict, slots: int, kept: bool) -> Cost:
    train_ips, score_ips = speed
    fit, held = _digits(cfg, counts["train"], counts["val"])
    fit += len(load_extra(Path(cfg.extra), cfg.extra_sha256)[1]) if cfg.extra else 0
    epoch_s = fit // cfg.batch_size * cfg.batch_size / train_ips + held / score_ips
    return Cost(cfg.epochs, epoch_s, (held + counts["test"]) / (score_ips * slots), kept)


def fit_budget(configs, budget_s, processed_dir, models_dir, jobs, sized, reserve_s, log, start):
    """The configs sized to the budget begun at `start` (less `reserve_s`) and their Pace; on a
    GPU, or unless `sized`, the configs as they are and an ETA-only Pace."""
    where = member_slots(configs[0].device, jobs)
    slots = min(len(where), len(configs))
    if where[0].type != "cpu" or not sized:
        why = "--epochs/--members given" if not sized else f"on {where[0].type}"
        log(f"budget: {budget_s / 60:g} min; {why}, the members train as they are (no probe)")
        return configs, Pace(budget_s, start, slots)
    counts = read_meta(processed_dir)["counts"]
    tables = [t for t in (lengthened(configs), configs) if t]  # the long table where it fits
    speeds = probe([cfg for table in tables for cfg in table], slots)
    for table in tables:
        configs, finished = _earlier(table, models_dir)
        costs = [_cost(cfg, speeds[_net(cfg)], counts, slots, k in finished) for k, cfg in
                 enumerate(configs)]  # fmt: skip
        least = 1.0 if table is not tables[-1] else None
        spent = time.perf_counter() - start
        folds = configs[0].folds or len(costs)
        if plan := size_plan(costs, slots, budget_s, reserve_s + spent, folds, least):
            break
    configs = [replace(c, epochs=e) for c, e in zip(configs, plan.epochs, strict=False)]
    nets = Counter((describe(c), c.epochs, speeds[_net(c)][0]) for c in configs)
    said = ", ".join(f"{k}x {n} {e} epochs ({s:,.0f} img/s)" for (n, e, s), k in nets.items())
    eta = plan.train_s + plan.after_s
    log(
        f"budget: {len(configs)} members{' (one per fold: more do not fit)' * plan.fallback}: "
        f"{said} on {slots} slot(s); ETA {_clock(eta)} ({(spent + eta) / 60:.1f} min with "
        f"scoring and predict) of the {budget_s / 60:g}-min budget"
    )
    return configs, Pace(budget_s, start, slots, plan, costs[: len(configs)], reserve_s)


class Budget:
    """`--budget` across an ensemble's rounds: `fit(configs, models_dir, later)` sizes one round
    to what is left of it, keeping the share `later` of that for later rounds."""

    def __init__(self, minutes, reserve_minutes, processed_dir, jobs, sized, log, start):
        self.seconds, self.reserve_s, self.start = minutes * 60, reserve_minutes * 60, start
        self.processed_dir, self.jobs, self.sized, self.log = processed_dir, jobs, sized, log
        self.paces: list[Pace] = []

    def fit(self, configs, models_dir, later=0.0):
        left_s = self.seconds - self.reserve_s - (time.perf_counter() - self.start)
        reserve_s = self.reserve_s + later * max(0.0, left_s)
        fitted = fit_budget(configs, self.seconds, self.processed_dir, models_dir, self.jobs,
                            self.sized, reserve_s, self.log, self.start)  # fmt: skip
        self.paces.append(fitted[1])
        return fitted
