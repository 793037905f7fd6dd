"""Ensembles: several members, one checkpoint each (`<name>-<k>.pt`), and their progress.

`train_ensemble` trains K copies of one recipe with seeds seed..seed+K-1; under torchrun the
members are spread over the processes (member k on rank k % world), each process training
whole models on its own device, so no process group is needed.

`train_members` trains a list of differing member configs (the `best` recipe): on a CPU one
member per core, each in its own process with one torch thread (small nets use two cores far
better as two runs than as one run with two threads, and a member's weights then never depend
on the machine's core count or load); on a GPU one after another in this process. A member
already trained with the same config on the same digits is kept as it is; Ctrl-C (or
SIGTERM) lets the members in flight save a resumable state, keeps every finished member, and
the next run continues from there.
"""

import os
import queue as queue_module
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from pipeline import config
from pipeline.common.errors import PipelineError
from pipeline.data import datasets
from pipeline.experiments.tracking import NO_RUN, tracked_train, train_params
from pipeline.training import run_state
from pipeline.training.distributed import ranks_from_env, single_process
from pipeline.training.recipes import TrainConfig, check_member_seeds
from pipeline.training.run_state import TrainResult
from pipeline.training.train import train


def train_ensemble(
    cfg: TrainConfig,
    members: int,
    processed_dir: Path = config.PROCESSED_DIR,
    models_dir: Path = config.MODELS_DIR,
    name: str | None = None,
    log: Callable[[str], None] | None = None,
    progress: bool = True,
    parent=NO_RUN,
    tags: dict | None = None,
) -> list[TrainResult]:
    """Train this rank's share of `members` into `<models_dir>/<name>-<k>.pt`, each member a
    tracked run under `parent` (tagged `member` and `tags`)."""
    check_member_seeds(cfg.seed, members)
    ranks = ranks_from_env()
    name = name or cfg.recipe or cfg.model
    results = []
    for member in range(ranks.rank, members, ranks.world):
        member_cfg = replace(cfg, seed=cfg.seed + member)
        if cfg.device in ("auto", "cuda") and torch.cuda.is_available():
            member_cfg = replace(member_cfg, device=f"cuda:{ranks.local_rank}")
        if log:
            log(f"member {member + 1}/{members} (seed {member_cfg.seed})")
        out = config.member_checkpoint_path(name, member, models_dir)
        member_tags = {"member": member, **(tags or {})}
        run = parent.child(out.stem, "ensemble", train_params(member_cfg), member_tags)
        with single_process():
            result = tracked_train(
                train,
                run,
                member_cfg,
                out,
                processed_dir=processed_dir,
                log=log,
                progress=progress,
            )
        results.append(result)
    return results


@dataclass(frozen=True)
class MemberResult:
    index: int
    checkpoint: Path
    config: TrainConfig
    accuracy: float  # validation (out-of-bag for a bagged member) accuracy of the kept weights
    val_digits: int
    train_seconds: float
    wall_seconds: float  # this run's wall time for the member; 0 for a member kept as it was
    kept: bool  # trained by an earlier run, left untouched
    finished_at: float  # when it was done (seconds since the epoch): its tracked run's end


class EnsembleInterrupted(PipelineError):
    """Ctrl-C/SIGTERM stopped `train_members`; finished members are kept. Exit code 130."""

    exit_code = 130


def describe(cfg: TrainConfig) -> str:
    """`fastnet(kernel=5)`: a member's net in a few characters."""
    args = ",".join(f"{k}={v}" for k, v in cfg.arch_args.items()).replace(" ", "")
    return f"{cfg.model}({args})" if args else cfg.model


def member_images(cfg: TrainConfig, n_train: int) -> int:
    """Training images a member sees in all: what the overall progress bar counts."""
    steps = cfg.epochs * (n_train // cfg.batch_size)
    return min(steps, cfg.max_steps or steps) * cfg.batch_size


def _training_digits(cfg: TrainConfig, processed_dir: Path) -> tuple[int, int]:
    """(training digits, validation digits) of a member, without loading any images."""
    counts = datasets.read_meta(processed_dir)["counts"]
    if cfg.folds is None:
        return counts["train"], counts["val"]
    n = counts["train"] + counts["val"]
    held_out = n // cfg.folds + (cfg.fold < n % cfg.folds)  # the fold's size, to within one
    return n - held_out, held_out


def _worker(index: int, cfg: TrainConfig, processed_dir: Path, out: Path, resume: bool, queue):
    """One member in a process of its own: reports epochs and the result through `queue`.

    In a process group of its own, so a terminal's Ctrl-C reaches only the parent, which
    passes exactly one signal on (a second one would abort the save). The process starts
    with SIGINT/SIGTERM blocked, so one that arrives while it is still starting up waits
    and then stops training at its first step.
    """
    os.setpgrp()
    run_state.record_early_signals()
    torch.set_num_threads(1)
    try:
        result = train(
            cfg,
            processed_dir,
            out,
            resume=resume,
            force=not resume,
            log=lambda line: queue.put(("log", index, line)),
            progress=False,
        )
        queue.put(("done", index, (result.final_accuracy, result.train_seconds)))
    except run_state.TrainingInterrupted as exc:
        queue.put(("interrupted", index, str(exc)))
    except PipelineError as exc:
        queue.put(("error", index, str(exc)))
    except BaseException as exc:  # noqa: BLE001 - the parent reports it in one line
        queue.put(("error", index, f"{type(exc).__name__}: {exc}"))


def _resumable(cfg: TrainConfig, out: Path, fingerprint: str) -> bool:
    last = config.last_checkpoint_path(out)
    if not last.is_file():
        return False
    try:
        run_state.resume_payload(last, cfg, fingerprint)
    except PipelineError:
        return False
    return True


def train_members(
    configs: list[TrainConfig],
    processed_dir: Path = config.PROCESSED_DIR,
    models_dir: Path = config.MODELS_DIR,
    name: str = "best",
    jobs: int | None = None,
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> list[MemberResult]:
    """Train every member config into `<models_dir>/<name>-<k>.pt`; keep finished ones.

    `jobs` members train at once (default: one per core on a CPU, one on a GPU), each in a
    process of its own with one thread. Logs one line per member (net, time, accuracy, the
    estimated time left) and draws an overall bar on a terminal. Raises EnsembleInterrupted
    after a SIGINT/SIGTERM once the members in flight have saved their state.
    """
    from tqdm import tqdm

    from pipeline.training.recipes import device_kind

    if not configs:
        raise PipelineError("--members must be at least 1")
    outs = [config.member_checkpoint_path(name, k, models_dir) for k in range(len(configs))]
    results: dict[int, MemberResult] = {}
    pending, images = [], {}
    for k, (cfg, out) in enumerate(zip(configs, outs, strict=True)):
        n_train, n_val = _training_digits(cfg, processed_dir)
        fingerprint = datasets.processed_fingerprint(processed_dir, whole=cfg.folds is not None)
        if done := run_state.finished_run(cfg, out, fingerprint):
            results[k] = MemberResult(
                k,
                out,
                cfg,
                done.final_accuracy,
                n_val,
                done.train_seconds,
                0.0,
                True,
                out.stat().st_mtime,
            )
            log(member_line(results[k], len(configs)) + " (kept: trained earlier)")
        else:
            pending.append((k, _resumable(cfg, out, fingerprint)))
            images[k] = (member_images(cfg, n_train), n_val)
    if jobs is None:
        cpu = all(device_kind(cfg.device) == "cpu" for cfg in configs)
        jobs = (os.cpu_count() or 1) if cpu else 1
    total = sum(n for n, _ in images.values())
    # On a terminal only (disable=None): elsewhere the member lines carry the time left.
    bar = tqdm(
        total=total, unit="img", unit_scale=True, desc=name, disable=None if progress else True
    )
    clock = Progress(total, time.perf_counter())
    try:
        runner = _run_in_processes if jobs > 1 or not pending else _run_here
        runner(configs, outs, pending, images, processed_dir, jobs, results, bar, clock, log)
    finally:
        bar.close()
    return [results[k] for k in sorted(results)]


@dataclass
class Progress:
    """Images trained so far against the total: the time left in each member's line."""

    total: int
    start: float
    done: int = 0

    def left(self) -> str:
        if not self.done or self.done >= self.total:
            return ""
        seconds = (time.perf_counter() - self.start) / self.done * (self.total - self.done)
        return (
            f", about {seconds / 60:.0f} min left" if seconds >= 90 else f", {seconds:.0f} s left"
        )


def member_line(result: MemberResult, count: int, left: str = "") -> str:
    cfg = result.config
    held_out = f"fold {cfg.fold} held out" if cfg.folds is not None else "val"
    what = "out-of-bag" if cfg.folds is not None else "val"
    seconds = result.wall_seconds or result.train_seconds
    return (
        f"member {result.index + 1}/{count} {describe(cfg)} ({cfg.epochs} epochs, {held_out}): "
        f"{seconds:.0f} s, {what} accuracy {result.accuracy:.2%} on {result.val_digits:,} "
        f"digits{left}"
    )


def _finish(k, cfg, out, accuracy, train_seconds, start, images, results, bar, clock, log, n):
    wall = time.perf_counter() - start
    results[k] = MemberResult(
        k, out, cfg, accuracy, images[k][1], train_seconds, wall, False, time.time()
    )
    log(member_line(results[k], n, clock.left()))


def _advance(k: int, line: str, configs, images, bar, clock) -> None:
    if line.startswith("epoch"):
        step = images[k][0] // configs[k].epochs
        bar.update(step)
        clock.done += step


def _run_here(configs, outs, pending, images, processed_dir, jobs, results, bar, clock, log):
    """One member after another in this process (a GPU, or a single core).

    With one torch thread, as in a worker process: a CPU member's weights do not depend on
    how many were trained at once.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _train_each(configs, outs, pending, images, processed_dir, results, bar, clock, log)
    finally:
        torch.set_num_threads(threads)


def _train_each(configs, outs, pending, images, processed_dir, results, bar, clock, log):
    n = len(configs)
    for k, resume in pending:
        cfg, start = configs[k], time.perf_counter()
        try:
            with single_process():
                result = train(
                    cfg,
                    processed_dir,
                    outs[k],
                    resume=resume,
                    force=not resume,
                    log=lambda line, k=k: _advance(k, line, configs, images, bar, clock),
                    progress=False,
                )
        except run_state.TrainingInterrupted as exc:
            raise EnsembleInterrupted(_interrupted_message(results, n, str(exc))) from None
        args = result.final_accuracy, result.train_seconds, start
        _finish(k, cfg, outs[k], *args, images, results, bar, clock, log, n)


def _interrupted_message(results: dict, n: int, detail: str) -> str:
    kept = ", ".join(str(k + 1) for k in sorted(results)) or "none"
    return (
        f"interrupted ({detail}); finished members kept: {kept} of {n}; run the same command "
        "again to continue"
    )


def _run_in_processes(
    configs, outs, pending, images, processed_dir, jobs, results, bar, clock, log
):
    """Up to `jobs` members at once, each in a spawned process; signals passed on once."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    messages = context.Queue()
    running: dict[int, multiprocessing.process.BaseProcess] = {}
    started: dict[int, float] = {}
    waiting = list(pending)
    stopped: list[int] = []  # the signals received
    errors: list[str] = []
    interrupted: list[str] = []

    def on_signal(signum, frame):
        stopped.append(signum)
        for process in running.values():
            if process.pid is not None:
                os.kill(process.pid, signum)

    handlers = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while waiting or running:
            while waiting and len(running) < jobs and not stopped and not errors:
                k, resume = waiting.pop(0)
                args = (k, configs[k], processed_dir, outs[k], resume, messages)
                running[k] = context.Process(target=_worker, args=args, daemon=True)
                stops = {signal.SIGINT, signal.SIGTERM}
                mask = signal.pthread_sigmask(signal.SIG_BLOCK, stops)  # inherited: blocked
                try:
                    running[k].start()
                finally:
                    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
                started[k] = time.perf_counter()
            if not running:
                break
            try:
                kind, k, payload = messages.get(timeout=1.0)
            except queue_module.Empty:
                for k, process in list(running.items()):
                    if process.exitcode is not None:  # ended without a word: killed
                        errors.append(f"member {k + 1}: its process ended ({process.exitcode})")
                        del running[k]
                continue
            if kind == "log":
                _advance(k, payload, configs, images, bar, clock)
                continue
            running.pop(k).join()
            if kind == "done":
                _finish(k, configs[k], outs[k], *payload, started[k], images, results, bar,
                        clock, log, len(configs))  # fmt: skip
            elif kind == "interrupted":
                interrupted.append(f"member {k + 1}: {payload}")
            else:
                errors.append(f"member {k + 1}: {payload}")
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        for process in running.values():
            process.kill()
    if errors:
        raise PipelineError("; ".join(errors))
    if stopped:
        detail = signal.Signals(stopped[0]).name
        raise EnsembleInterrupted(_interrupted_message(results, len(configs), detail))
