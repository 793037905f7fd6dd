"""Ensembles: K seeds of one recipe or `best`'s differing nets, one checkpoint each
(`<name>-<k>.pt`), trained by one runner: under torchrun member k on rank k % world, else over
the local GPUs or one process per core with one torch thread each (a member's weights never
depend on where it trained). Finished members are kept; Ctrl-C leaves a resumable state."""

import multiprocessing
import os
import signal
import statistics
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import suppress
from dataclasses import dataclass, replace
from functools import cache, partial
from pathlib import Path

import torch

from pipeline import config
from pipeline.common import exits
from pipeline.common.device import resolve_device
from pipeline.common.errors import PipelineError
from pipeline.common.progress import ImagesLeft
from pipeline.data import datasets
from pipeline.experiments import tracking
from pipeline.training import distributed, run_state
from pipeline.training.callbacks import Callback
from pipeline.training.distributed import ranks_from_env, single_process
from pipeline.training.recipes import TrainConfig, best_members, check_member_seeds, recipe_config
from pipeline.training.run_state import TrainResult
from pipeline.training.train import train

STOPS = {signal.SIGINT, signal.SIGTERM}


def seed_members(cfg: TrainConfig, members: int) -> list[TrainConfig]:
    """`members` copies of `cfg` with seeds cfg.seed, cfg.seed + 1, ..."""
    check_member_seeds(cfg.seed, members)
    return [replace(cfg, seed=cfg.seed + k) for k in range(members)]


def member_configs(recipe: str | None, members: int | None, bagged: bool, **settings):
    """`best`'s differing members (on bags when `bagged`), else `members` (5) seeds of one."""
    if recipe == "best":
        return best_members(members, settings.pop("seed", 0), bagged, **settings)
    return seed_members(recipe_config(recipe or "fast", **settings), members or 5)


@dataclass(frozen=True)
class MemberResult:
    index: int
    result: TrainResult  # skipped: trained earlier (or by another rank), left untouched
    val_digits: int  # what its accuracy is measured on (out-of-bag digits when bagged)
    wall_seconds: float = 0.0  # this run's wall time for it; 0 for a member kept as it was

    @property
    def checkpoint(self) -> Path:
        return self.result.checkpoint


class EnsembleInterrupted(PipelineError):
    """A signal stopped members; the finished ones are kept. Exits 128 + the signal."""

    def __init__(self, message: str, exit_code: int = 130):
        super().__init__(message)
        self.exit_code = exit_code  # pickled with the instance, so it crosses processes


def describe(cfg: TrainConfig) -> str:
    """`fastnet(kernel=5)`: a member's net in a few characters."""
    args = ",".join(f"{k}={v}" for k, v in cfg.arch_args.items()).replace(" ", "")
    return f"{cfg.model}({args})" if args else cfg.model


def member_line(member: MemberResult, count: int, left: str = "") -> str:
    cfg, result = member.result.config, member.result
    bagged = cfg.folds is not None
    held_out, what = (f"fold {cfg.fold} held out", "out-of-bag") if bagged else ("val", "val")
    return (
        f"member {member.index + 1}/{count} {describe(cfg)} ({cfg.epochs} epochs, {held_out}): "
        f"{member.wall_seconds or result.train_seconds:.0f} s, {what} accuracy "
        f"{result.best_accuracy:.2%} on {member.val_digits:,} digits{left}"
    )


def member_slots(device: str, jobs: int | None = None) -> list[torch.device]:
    """The devices members train on at once in this process: the rank's own under torchrun,
    else `jobs` slots (default: one per local GPU, or per core) dealt round the GPUs."""
    ranks, target = ranks_from_env(), resolve_device(device)
    if ranks.world > 1:
        return [torch.device("cuda", ranks.local_rank) if target.type == "cuda" else target]
    if target.type == "cuda" and target.index is None:
        gpus = torch.cuda.device_count()
        return [torch.device("cuda", k % gpus) for k in range(jobs or gpus)]
    return [target] * (jobs or ((os.cpu_count() or 1) if target.type == "cpu" else 1))


def _train_member(k, cfg, processed_dir, out, resume, emit) -> tuple[TrainResult, float]:
    """Member k's result and wall seconds; what stops it is one line, an exception that pickles."""
    emit({"member": k})
    start, epochs = time.perf_counter(), Callback()  # its epochs as plain dicts: they pickle
    epochs.epoch_end = lambda record: emit({"member": k, "epoch": record})
    try:
        with single_process():
            result = train(
                cfg, processed_dir, out, resume=resume, force=not resume, progress=False,
                callbacks=[epochs],
            )  # fmt: skip
    except run_state.TrainingInterrupted as exc:
        raise EnsembleInterrupted(f"member {k + 1}: {exc}", exc.exit_code) from None
    except Exception as exc:
        detail = str(exc) if isinstance(exc, PipelineError) else f"{type(exc).__name__}: {exc}"
        raise PipelineError(f"member {k + 1}: {detail}") from None
    return result, time.perf_counter() - start


_events = None  # a pool process's queue to the parent


def _start_worker(slots, events) -> None:
    """A pool process: a process group of its own (the parent passes each signal on, once), a
    signal blocked while it started stops its first member, one torch thread, its own device."""
    global _events
    os.setpgrp()
    run_state.record_early_signals()
    _use(torch.device(slots.get()))
    _events = events


def _use(slot: torch.device) -> None:
    """One torch thread (small nets use two cores far better as two runs) and `slot`'s GPU."""
    torch.set_num_threads(1)
    if slot.type == "cuda":
        torch.cuda.set_device(slot)


def _in_worker(*args):
    return _train_member(*args, _events.put)


class _Members:
    """One call of `train_members`: each member's digits, fingerprint, tracked run and outcome."""

    def __init__(self, configs, processed_dir, outs, parent, tags, log, pace):
        self.configs, self.processed_dir, self.outs, self.log = configs, processed_dir, outs, log
        self.parent, self.tags = parent, tags or {}
        self.pace = pace  # called after each member; may change the unstarted members' configs
        counts = datasets.read_meta(processed_dir)["counts"]
        self.digits = [_digits(cfg, counts["train"], counts["val"]) for cfg in configs]
        fingerprint = cache(datasets.processed_fingerprint)  # a bag draws from every digit
        self.fingerprint = lambda k: fingerprint(processed_dir, configs[k].folds is not None)
        # by member: its TrackedRun, MemberResult and when it started in this call
        self.runs, self.results, self.started = {}, {}, {}
        self.stops, self.errors = [], []  # EnsembleInterrupted, the error lines

    def finished(self, k: int) -> TrainResult | None:
        return run_state.finished_run(self.configs[k], self.outs[k], self.fingerprint(k))

    def resumable(self, k: int) -> bool:
        last = config.last_checkpoint_path(self.outs[k])
        with suppress(PipelineError):
            return bool(run_state.resume_payload(last, self.configs[k], self.fingerprint(k)))
        return False

    def images(self, k: int) -> int:
        """Training images member k sees in all: what the overall bar counts."""
        cfg = self.configs[k]
        steps = cfg.epochs * (self.digits[k][0] // cfg.batch_size)
        return min(steps, cfg.max_steps or steps) * cfg.batch_size

    def _run(self, k: int, **tags):
        out, params = self.outs[k], tracking.train_params(self.configs[k])
        tags = {"member": k, "out": out.resolve(), **self.tags, **tags}
        return self.parent.child(out.stem, "train", params, tags)

    def event(self, event: dict) -> None:
        """A member started (`{"member": k}`) or ended an epoch (`"epoch"`: train's record)."""
        k = event["member"]
        if "epoch" not in event:
            self.runs[k] = self._run(k)
            return
        self.runs[k].log_epoch(event["epoch"])
        self.bar.update(self.images(k) // self.configs[k].epochs)

    def keep(self, k: int, result: TrainResult, wall: float = 0.0) -> MemberResult:
        """A finished member's run ends; a kept one gets a run too: the ensemble's holds all."""
        (self.runs.pop(k, None) or self._run(k, kept=True)).train_end(result)
        self.results[k] = MemberResult(k, result, self.digits[k][1], wall)
        return self.results[k]

    def done(self, k: int, outcome: Callable[[], tuple[TrainResult, float]]) -> None:
        """Member k's outcome: its line, or the stop or the error it raised."""
        try:
            member = self.keep(k, *outcome())
            self.log(member_line(member, len(self.configs), self.bar.left()))
            if self.pace and (said := self.pace(member, self)):
                self.log(said)
        except EnsembleInterrupted as exc:
            self.stops.append(exc)
            self.runs.pop(k, tracking.NO_RUN).end("KILLED")
        except Exception as exc:  # PipelineError, or BrokenProcessPool for a killed process
            self.errors.append(
                str(exc) if isinstance(exc, PipelineError) else f"member {k + 1}: {exc}"
            )
            self.runs.pop(k, tracking.NO_RUN).end("FAILED")

    def start(self, k: int, resume: bool) -> tuple:
        """`_train_member`'s arguments but `emit`, noting when member k started."""
        self.started[k] = time.perf_counter()
        return k, self.configs[k], self.processed_dir, self.outs[k], resume

    def train_here(self, todo: list[tuple[int, bool]], slots: list[torch.device]) -> None:
        """One member after another in this process (on its one slot), set up as a pool's."""
        threads = torch.get_num_threads()
        _use(slots[0])
        try:
            for k, resume in todo:
                self.done(k, partial(_train_member, *self.start(k, resume), self.event))
                if self.stops or self.errors:
                    break
        finally:
            torch.set_num_threads(threads)

    def train_in_pool(self, todo: list[tuple[int, bool]], slots: list[torch.device]) -> None:
        """Up to one member per slot at once, each in a spawned process of the pool."""
        context = multiprocessing.get_context("spawn")
        events, free = context.SimpleQueue(), context.SimpleQueue()
        for slot in slots:
            free.put(str(slot))

        # Our own handling: the workers sit in process groups of their own, so a terminal's
        # Ctrl-C reaches them once (a second aborts their save) and our SIGTERM reaches them.
        def forward(signum, frame):
            name = signal.Signals(signum).name
            self.stops.append(EnsembleInterrupted(name, exits.exit_code(signum)))
            for child in multiprocessing.active_children():
                with suppress(ProcessLookupError):
                    os.kill(child.pid, signum)

        handlers = {sig: signal.signal(sig, forward) for sig in STOPS}
        pool = ProcessPoolExecutor(len(slots), context, _start_worker, (free, events))
        try:
            running = {}
            while todo or running:
                while todo and len(running) < len(slots) and not (self.stops or self.errors):
                    k, resume = todo.pop(0)
                    mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOPS)  # a new worker's
                    try:
                        running[pool.submit(_in_worker, *self.start(k, resume))] = k
                    finally:
                        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
                if not running:
                    break
                finished, _ = wait(running, timeout=1.0, return_when=FIRST_COMPLETED)
                while not events.empty():  # put before their results: all here by now
                    self.event(events.get())
                for future in finished:
                    self.done(running.pop(future), future.result)
        finally:
            pool.shutdown(cancel_futures=True)
            for sig, handler in handlers.items():
                signal.signal(sig, handler)


def _digits(cfg: TrainConfig, train: int, val: int) -> tuple[int, int]:
    """(training digits, validation digits) of a member of prepared data with those counts."""
    if cfg.folds is None:
        return train, val
    held_out = (train + val) // cfg.folds + (cfg.fold < (train + val) % cfg.folds)  # its fold
    return train + val - held_out, held_out


def train_members(
    configs: list[TrainConfig],
    processed_dir: Path = config.PROCESSED_DIR,
    models_dir: Path = config.MODELS_DIR,
    name: str | None = None,
    jobs: int | None = None,
    log: Callable[[str], None] = print,
    progress: bool = True,
    parent=tracking.NO_RUN,
    tags: dict | None = None,
    pace: Callable | None = None,
) -> list[MemberResult]:
    """Train member k of `configs` into `<models_dir>/<name>-<k>.pt`, keeping finished ones,
    each a tracked run under `parent`; one line per member. Under torchrun each rank trains its
    share and rank 0 waits for all (a rank gone silent is an error, not a hang)."""
    if not configs:
        raise PipelineError("--members must be at least 1")
    name = name or configs[0].recipe or configs[0].model
    ranks, n = ranks_from_env(), len(configs)
    outs = [config.member_checkpoint_path(name, k, models_dir) for k in range(n)]
    members = _Members(configs, processed_dir, outs, parent, tags, log, pace)
    mine = range(ranks.rank, n, ranks.world)
    kept = {k: done for k in mine if (done := members.finished(k))}
    todo = [(k, members.resumable(k)) for k in mine if k not in kept]
    members.bar = ImagesLeft(sum(members.images(k) for k, _ in todo), name, progress)
    for k, done in kept.items():
        log(member_line(members.keep(k, done), n) + " (kept: trained earlier)")
    slots = member_slots(configs[0].device, jobs)[: len(todo)] or [torch.device("cpu")]
    with distributed.independent_ranks(ranks) as meet:
        try:
            train_all = members.train_here if len(slots) == 1 else members.train_in_pool
            train_all(todo, slots)
        finally:
            members.bar.close()
        if members.errors:
            raise PipelineError("; ".join(members.errors))
        if stops := members.stops:
            done = ", ".join(str(k + 1) for k in sorted(members.results)) or "none"
            raise EnsembleInterrupted(
                f"interrupted ({stops[0]}); finished members kept: {done} of {n}; run the "
                "same command again to continue",
                stops[0].exit_code,
            )
        try:
            meet()
        except PipelineError as exc:
            raise PipelineError(
                f"{exc}; finished members kept: run the same command again to train the rest"
            ) from None
    for k in sorted(set(range(n)) - set(mine)) if ranks.is_main else ():  # the other ranks'
        if (done := members.finished(k)) is None:
            raise PipelineError(
                f"{outs[k]}: member {k + 1} is missing after every rank finished (several "
                "machines need one shared --out-dir)"
            )
        members.keep(k, done)
    return [members.results[k] for k in sorted(members.results)]


def run_ensemble(configs, processed_dir, models_dir, jobs, track, log, warn, pace):
    """Train the members, then (rank 0) score them: the out-of-bag vote of bagged members,
    else their mean val accuracy. Returns the closing line (None on other ranks) and the run."""
    from pipeline.experiments.bagging import format_oob, score_out_of_bag

    start, ranks, first = time.perf_counter(), ranks_from_env(), configs[0]
    name, slots = first.recipe or first.model, member_slots(first.device, jobs)
    where = f"rank {ranks.rank} of {ranks.world}" if ranks.world > 1 else f"{len(slots)} at once"
    log(f"ensemble: {name}, {len(configs)} members on {slots[0].type} ({where})")
    params = tracking.train_params(first) | {"members": len(configs)}
    on = tracking.wanted(track) and ranks.is_main
    tags = tracking.data_tags(processed_dir)
    with tracking.command_run(on, name, "ensemble", params, tags, warn) as run:
        try:
            members = train_members(
                configs, processed_dir, models_dir, name, jobs, log, True, run, pace=pace
            )
        except EnsembleInterrupted:
            run.end("KILLED")
            raise
        if not ranks.is_main:
            return None, run
        if first.folds is None:
            mean = statistics.mean(member.result.best_accuracy for member in members)
            run.log_metrics({"member_acc_mean": mean})
            score = f"the members' mean val accuracy {mean:.2%}"
        else:
            checkpoints = [member.checkpoint for member in members]
            estimate, _ = score_out_of_bag(checkpoints, processed_dir, first.device)
            run.log_metrics({"oob_acc": estimate.accuracy, "oob_digits": estimate.covered})
            score = format_oob(estimate)
    minutes = (time.perf_counter() - start) / 60
    where = f"{models_dir}/{name}-*.pt"
    return f"ensemble: {len(members)} members in {where} ({minutes:.1f} min); {score}", run
