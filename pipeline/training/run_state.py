"""A run's saved state: the loop's state, stop signals, resuming, and skipping finished runs.
A resume continues only the same run (give or take the device) on the same prepared data."""

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch

from pipeline import config
from pipeline.common import exits
from pipeline.common.errors import PipelineError
from pipeline.common.files import remove_dead_temps, run_lock
from pipeline.training.checkpoints import read_payload, save_checkpoint
from pipeline.training.distributed import Ranks, first_line, max_over_ranks
from pipeline.training.models import resolved_arch_args, width_args
from pipeline.training.recipes import Overrides, TrainConfig, recipe_config
from pipeline.training.state_schema import check_training_state

# Settings a resumed run may change without becoming another run.
MAY_CHANGE_ON_RESUME = {f.name for f in fields(TrainConfig) if f.metadata.get("resume_may_change")}


@dataclass
class TrainState:
    """Everything beyond the model/optimizer/scheduler that a resumed run must restore."""

    epoch: int = 0  # epochs finished
    step: int = 0  # steps finished within the current epoch
    order: torch.Tensor | None = None  # this epoch's shuffled indices, drawn at its start
    loss_sum: float = 0.0  # this epoch's summed batch losses so far
    train_seconds: float = 0.0
    seconds_to_target: float | None = None
    best_accuracy: float = -1.0
    history: list[dict[str, float]] = field(default_factory=list)

    def next_epoch(self) -> None:
        self.epoch, self.step, self.order, self.loss_sum = self.epoch + 1, 0, None, 0.0


class TrainingInterrupted(PipelineError):
    """SIGINT/SIGTERM stopped training after a resumable state was saved; exit 130/143."""

    def __init__(self, checkpoint: Path, epoch: int, step: int, signum: int):
        self.checkpoint, self.epoch, self.step, self.signum = checkpoint, epoch, step, signum
        self.exit_code = exits.exit_code(signum)
        name = signal.Signals(signum).name
        super().__init__(f"{name} at epoch {epoch + 1}, step {step}: state saved to {checkpoint}")


# Signals a process received before training began (see `record_early_signals`).
EARLY_SIGNALS: list[int] = []


def record_early_signals() -> None:
    """Note SIGINT/SIGTERM for the next run to stop at its first step (an ensemble member's
    process starts with both blocked)."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: EARLY_SIGNALS.append(signum))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})


class StopSignals:
    """A first SIGINT/SIGTERM is a flag the loop checks between steps; a second stops at once."""

    DDP_CHECK_EVERY = 20  # the ranks' all_reduce on a stop waits for the device: not every step

    def __init__(self) -> None:
        self.signum: int | None = EARLY_SIGNALS.pop() if EARLY_SIGNALS else None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            exits.stop(signum)
        self.signum = signum

    def __enter__(self) -> "StopSignals":
        exits.raise_if_stopped()
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def requested(self, ranks: Ranks, device: torch.device, step: int | None = None) -> bool:
        """Whether to stop after global step `step` (None: an epoch's end); all ranks agree."""
        if ranks.world > 1 and step is not None and step % self.DDP_CHECK_EVERY:
            return False
        self.signum = max_over_ranks(self.signum or 0, ranks, device) or None
        return self.signum is not None


def check_out(out: Path) -> None:
    """Refuse an --out whose run files would overwrite each other or be taken for others."""
    if out.suffix != config.CHECKPOINT_SUFFIX or config.is_resume_state(out):
        raise PipelineError(
            f"--out {out}: a checkpoint's name must end in {config.CHECKPOINT_SUFFIX} and not in "
            f"{config.RESUME_SUFFIX} (its sidecar, resume state, metrics and curves are named "
            "after it)"
        )
    seen: dict[Path, str] = {}
    for what, path in config.run_files(out).items():
        if path in seen:
            raise PipelineError(f"--out {out}: its {what} would overwrite its {seen[path]}")
        seen[path] = what


@contextmanager
def writing(out: Path, ranks: Ranks) -> Iterator[None]:
    """Hold `out`'s lock (on rank 0, which writes), after removing a killed run's temp files."""
    if not ranks.is_main:
        yield
        return
    with run_lock(out, config.lock_path(out)):
        for path in config.run_files(out).values():
            remove_dead_temps(path.parent, path.name)
        yield


def rng_state(shuffle_gen: torch.Generator, augment_gen: torch.Generator) -> dict:
    state = {
        "torch": torch.get_rng_state(),
        "shuffle": shuffle_gen.get_state(),
        "augment": augment_gen.get_state(),
    }
    if torch.cuda.is_available() and augment_gen.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(augment_gen.device)
    return state


def restore(payload: dict, last: Path, run_parts: tuple, bounds: dict[str, int]) -> TrainState:
    """Check a resume state whole against this run, then load it into the run's parts."""
    model, optimizer, scheduler, shuffle_gen, augment_gen, ema = run_parts
    check_training_state(payload, last, run_parts, rng_state(shuffle_gen, augment_gen), bounds)
    saved = payload["training_state"]
    try:
        model.load_state_dict(payload["state_dict"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        rng = saved["rng"]
        torch.set_rng_state(rng["torch"])
        shuffle_gen.set_state(rng["shuffle"])
        augment_gen.set_state(rng["augment"])
        if "cuda" in rng and augment_gen.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], augment_gen.device)
        if ema is not None:
            ema.load_state_dict(saved["ema"])
    except (RuntimeError, ValueError, TypeError, KeyError) as exc:
        raise PipelineError(
            f"{last}: its saved state does not fit this run ({first_line(exc)[:100]})"
        ) from None
    return TrainState(**saved["loop"])


def run_meta(
    cfg: TrainConfig, state: TrainState, data_fingerprint: str, finished: bool | None = None
) -> dict:
    """A checkpoint's metadata; with `finished`, the resumable file's extras too."""
    meta = {
        "data_fingerprint": data_fingerprint,
        "model": cfg.model,
        "arch_args": resolved_arch_args(cfg.model, cfg.arch_args),
        "train_config": asdict(cfg),
        "seed": cfg.seed,
        "epochs_trained": state.epoch,
        "val_accuracy": state.best_accuracy,
        "history": state.history,
    }
    if finished is not None:
        meta |= {
            "finished": finished,
            "train_seconds": state.train_seconds,
            "seconds_to_target": state.seconds_to_target,
            "images_per_second": images_per_second(state.history),
        }
    return meta


def save_resumable(path: Path, meta: dict, state: TrainState, model, *parts) -> None:
    """`parts`: optimizer, scheduler, shuffle and augment generators, EMA or None."""
    optimizer, scheduler, shuffle_gen, augment_gen, ema = parts
    training_state = {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "loop": asdict(state),
        "rng": rng_state(shuffle_gen, augment_gen),
    }
    if ema is not None:
        training_state["ema"] = ema.state_dict()
    save_checkpoint(path, model, meta, training_state, sidecar=False)


def images_per_second(history: list[dict[str, float]]) -> float:
    images = sum(r["images_per_second"] * r["epoch_seconds"] for r in history)
    seconds = sum(r["epoch_seconds"] for r in history)
    return images / seconds if seconds else 0.0


def saved_config(meta: dict, path: Path) -> TrainConfig:
    try:
        return TrainConfig(**meta["train_config"])
    except (KeyError, TypeError):
        raise PipelineError(f"{path}: its train_config is missing or not this version's") from None


def run_config(
    recipe: str | None, overrides: Overrides, out: Path | None, resume: bool
) -> tuple[TrainConfig, Path]:
    """A `train` run's config and --out; with `resume`, the saved run's config with the
    overrides, so that `resume_payload` refuses only what was asked to change."""
    given = dict(overrides)
    cfg = recipe_config(recipe or "fast", **given)
    out = out or config.checkpoint_path(cfg.model)
    if resume:
        last = config.last_checkpoint_path(out)
        saved = saved_config(read_payload(last)["meta"], last)
        if (width := given.pop("width", None)) is not None:
            given["arch_args"] = width_args(given.get("model", saved.model), width)
        cfg = replace(saved, **given, **({"recipe": recipe} if recipe else {}))
    return cfg, out


def resume_payload(last: Path, cfg: TrainConfig, data_fingerprint: str) -> dict:
    """The saved state of this very run on this very data, or a one-line refusal."""
    payload = read_payload(last)
    meta = payload["meta"]
    ours, theirs = asdict(cfg), asdict(saved_config(meta, last))
    changed = [k for k in ours if k not in MAY_CHANGE_ON_RESUME and ours[k] != theirs[k]]
    if changed:
        differences = ", ".join(f"{k} {ours[k]!r} (saved {theirs[k]!r})" for k in changed)
        raise PipelineError(
            f"{last}: --resume continues the same run, but {differences} differ; "
            "drop those options, or train afresh with --force"
        )
    if meta.get("data_fingerprint") != data_fingerprint:
        raise PipelineError(
            f"{last}: was trained on other prepared data (other sources, split or "
            "--limit-rows); prepare that data again, or train afresh with --force"
        )
    return payload


@dataclass(frozen=True)
class TrainResult:
    checkpoint: Path  # best weights by validation accuracy
    curves: Path | None  # the training-curves figure
    config: TrainConfig
    best_accuracy: float
    history: list[dict[str, float]]
    train_seconds: float  # device time in training steps, validation excluded
    seconds_to_target: float | None  # training seconds until val accuracy >= 99.0%
    skipped: bool = False  # an identical finished run was already there

    @classmethod
    def of(
        cls, state: TrainState, cfg: TrainConfig, out: Path, curves: Path | None, skipped=False
    ):
        kept = ("best_accuracy", "history", "train_seconds", "seconds_to_target")
        return cls(out, curves, cfg, **{k: getattr(state, k) for k in kept}, skipped=skipped)

    @property
    def final_accuracy(self) -> float:
        return self.history[-1]["val_accuracy"] if self.history else float("nan")

    @property
    def images_per_second(self) -> float:
        return images_per_second(self.history)


def finished_run(cfg: TrainConfig, out: Path, data_fingerprint: str) -> TrainResult | None:
    """The result of an earlier, finished run of exactly this config on exactly this data."""
    last, curves = config.last_checkpoint_path(out), config.curves_path(out)
    try:
        saved, best = read_payload(last)["meta"], read_payload(out)["meta"]
        # defaults fill options newer than the checkpoint, so an upgrade does not retrain
        if not (
            saved_config(saved, last) == cfg
            and saved.get("data_fingerprint") == data_fingerprint
            and saved.get("finished")
            and saved["history"]
        ):
            return None
        state = TrainState(
            train_seconds=float(saved["train_seconds"]),
            seconds_to_target=saved.get("seconds_to_target"),
            best_accuracy=float(best["val_accuracy"]),
            history=saved["history"],
        )
        return TrainResult.of(state, cfg, out, curves if curves.is_file() else None, True)
    except (PipelineError, KeyError, IndexError, TypeError, ValueError):
        return None
