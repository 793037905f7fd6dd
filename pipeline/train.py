"""Stage 3: train a classifier on the prepared digits; keep best and last checkpoints.

Read top to bottom: recipes and config, data, optimiser and schedule, one training step, one
epoch, the loop with validation/checkpointing/resume, then ensembles. Batches are cut by index
from uint8 tensors already on the device and normalised (and augmented) there; the loss is
summed on the device and read once per epoch. The same code runs one process or many under
`torchrun` (DistributedDataParallel: each rank takes its slice of every global batch).
"""

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from pipeline import augment, config, plots
from pipeline.checkpoints import read_payload, save_checkpoint
from pipeline.datasets import PngDigits, TensorDigits, index_batches, standardize, to_unit
from pipeline.device import resolve_device, seed_everything
from pipeline.errors import PipelineError
from pipeline.evaluate import evaluate_model
from pipeline.files import atomic_path
from pipeline.models import MODELS, build_model, resolved_arch_args
from pipeline.prepare import data_fingerprint

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("onecycle", "cosine", "constant")
DATA_SOURCES = ("tensors", "images")
TARGET_ACCURACY = 0.99


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides the trained weights; stored in every checkpoint."""

    model: str = "fastnet"
    arch_args: dict = field(default_factory=dict)
    epochs: int = 4
    batch_size: int = 128  # global: split across ranks under torchrun
    lr: float = 4e-3  # peak learning rate of the schedule
    optimizer: str = "adamw"
    weight_decay: float = 5e-4
    schedule: str = "onecycle"
    label_smoothing: float = 0.1
    augment: bool = False
    elastic: bool = False
    seed: int = 0
    device: str = "auto"
    data: str = "tensors"
    channels_last: bool = True
    amp: bool = True  # bf16 autocast, on CUDA only
    compile: bool = False
    max_steps: int | None = None  # stop early: smoke runs and tests
    recipe: str | None = None


# Named recipes: overrides of TrainConfig's defaults. `fast` is the defaults themselves:
# >= 99% validation accuracy in about 30 s of training on a 2-core CPU (4 epochs of a 16-32-64
# FastNet with label smoothing). `best` is the competition recipe: an ensemble member (DeepCNN)
# trained for many epochs on per-sample augmented digits; `make best` trains several.
RECIPES: dict[str, dict[str, Any]] = {
    "fast": {},
    "best": dict(model="deepcnn", epochs=40, batch_size=256, lr=4e-3, augment=True),
}

# On a CUDA GPU small batches leave the GPU waiting on Python and kernel launches, so the
# recipes capture the step in CUDA graphs (torch.compile, mode reduce-overhead), and `fast`
# takes a wider FastNet, batches 4x larger, a higher peak learning rate and one epoch more
# (measured on an H100: 4 epochs at batch 512 missed 99.0% for one seed in three; 5 epochs
# reached it for all three).
GPU_RECIPES: dict[str, dict[str, Any]] = {
    "fast": dict(
        arch_args={"widths": [24, 48, 96]}, epochs=5, batch_size=512, lr=8e-3, compile=True
    ),
    "best": dict(compile=True),
}


def recipe_config(recipe: str = "fast", **overrides: Any) -> TrainConfig:
    """A recipe's settings (its GPU variant on CUDA) with every non-None override on top."""
    if recipe not in RECIPES:
        raise PipelineError(f"--recipe {recipe}: expected one of {', '.join(RECIPES)}")
    settings = {**RECIPES[recipe], "recipe": recipe}
    if resolve_device(overrides.get("device") or "auto").type == "cuda":
        settings.update(GPU_RECIPES.get(recipe, {}))
    settings.update({k: v for k, v in overrides.items() if v is not None})
    cfg = TrainConfig(**settings)
    check_config(cfg)
    return cfg


def check_config(cfg: TrainConfig) -> None:
    choices = {
        "model": MODELS,
        "optimizer": OPTIMIZERS,
        "schedule": SCHEDULES,
        "data": DATA_SOURCES,
    }
    for name, allowed in choices.items():
        if getattr(cfg, name) not in allowed:
            raise PipelineError(
                f"--{name} {getattr(cfg, name)}: expected one of {', '.join(allowed)}"
            )
    if cfg.epochs < 1 or cfg.batch_size < 1 or cfg.lr <= 0:
        raise PipelineError("--epochs, --batch-size and --lr must be positive")


# ---------------------------------------------------------------- processes and devices


@dataclass(frozen=True)
class Ranks:
    """This process's place among torchrun's workers (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def ranks_from_env() -> Ranks:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Ranks()
    return Ranks(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


@contextmanager
def process_group(ranks: Ranks, device: torch.device) -> Iterator[None]:
    """Join torchrun's process group (nccl on GPU, gloo on CPU) for the duration."""
    if ranks.world == 1 or dist.is_initialized():
        yield
        return
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


def training_device(name: str, ranks: Ranks) -> torch.device:
    device = resolve_device(name)
    if device.type == "cuda" and ranks.world > 1:
        device = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(device)
    return device


# ---------------------------------------------------------------- data, optimiser, schedule


def load_training_data(cfg: TrainConfig, processed_dir: Path, device: torch.device):
    """Train and validation datasets; cached tensors move to the device once, up front."""
    if cfg.data == "images":
        return PngDigits.load(processed_dir, "train"), PngDigits.load(processed_dir, "val")
    train = TensorDigits.load(processed_dir, "train").to(device)
    return train, TensorDigits.load(processed_dir, "val").to(device)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Weight decay on weights only: decaying BatchNorm scales and biases only hurts.

    On CUDA the fused Adam/AdamW kernels update every parameter in one launch.
    """
    fused = next(model.parameters()).device.type == "cuda"
    decay = [p for p in model.parameters() if p.dim() > 1]
    no_decay = [p for p in model.parameters() if p.dim() <= 1]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, fused=fused)
    return torch.optim.AdamW(groups, lr=cfg.lr, fused=fused)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int):
    """Stepped once per batch. Smoke runs too short to warm up (< 8 steps) use a constant LR."""
    if cfg.schedule == "onecycle" and total_steps >= 8:
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=cfg.lr, total_steps=total_steps, pct_start=0.25
        )
    if cfg.schedule == "cosine" and total_steps >= 8:
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)


def compile_for(model: nn.Module, device: torch.device) -> nn.Module:
    """torch.compile; on CUDA with CUDA graphs (one replay per step instead of ~100 launches).

    Where compiling fails (no compiler, an unsupported op) the model runs eagerly instead.
    """
    import torch._dynamo as dynamo

    dynamo.config.suppress_errors = True
    return torch.compile(model, mode="reduce-overhead" if device.type == "cuda" else None)


# Elastic strength: the largest displacement per axis, in pixels; the mean is about 0.4 of it.
# 8 px (mean 3.4 px) cost the best recipe a whole point on an H100 (98.5% against 99.65% on
# the same 5 splits); 2 px keeps the mean near the ~1 px of Simard et al.
ELASTIC_MAX_SHIFT_PX = 2.0


def augment_config(cfg: TrainConfig) -> augment.AugmentConfig:
    return augment.AugmentConfig(elastic_alpha=ELASTIC_MAX_SHIFT_PX if cfg.elastic else 0.0)


# ---------------------------------------------------------------- state, signals, timing


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


class TrainingInterrupted(PipelineError):
    """SIGINT/SIGTERM stopped training after a resumable state was saved; exit code 130."""

    exit_code = 130

    def __init__(self, checkpoint: Path, epoch: int, step: int, signum: int):
        self.checkpoint, self.epoch, self.step, self.signum = checkpoint, epoch, step, signum
        name = signal.Signals(signum).name
        super().__init__(f"{name} at epoch {epoch + 1}, step {step}: state saved to {checkpoint}")


class StopSignals:
    """Turn the first SIGINT/SIGTERM into a flag the loop checks between steps.

    A second Ctrl-C interrupts at once (KeyboardInterrupt), as Python normally does.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def stop_requested(stop: StopSignals, ranks: Ranks, device: torch.device) -> bool:
    """True on every rank as soon as any rank got a signal, so all stop at the same step."""
    if ranks.world == 1:
        return stop.signum is not None
    flag = torch.tensor([0 if stop.signum is None else stop.signum], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    stop.signum = int(flag.item()) or None
    return stop.signum is not None


class DeviceTimer:
    """Seconds of device work: CUDA events on GPU, the wall clock elsewhere."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def start(self) -> None:
        if self.cuda:
            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._t0 = time.perf_counter()

    def seconds(self) -> float:
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            end.synchronize()
            return self._start.elapsed_time(end) / 1000
        return time.perf_counter() - self._t0


# ---------------------------------------------------------------- the step and the epoch


def batch_inputs(
    data,
    indices: torch.Tensor,
    cfg: TrainConfig,
    ranks: Ranks,
    device: torch.device,
    augment_gen: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's share of one global batch, on the device, augmented and normalised."""
    share = len(indices) // ranks.world
    lo, hi = ranks.rank * share, (ranks.rank + 1) * share
    images, labels = data.get_batch(indices[lo:hi])
    x = to_unit(images.to(device, non_blocking=True))
    if cfg.augment:
        params = augment.draw(len(indices), x.shape[-1], augment_config(cfg), augment_gen, device)
        x = augment.apply(x, params.rows(lo, hi))
    x = standardize(x)
    if cfg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, labels.to(device, non_blocking=True)


def train_step(model, optimizer, scheduler, x, labels, cfg: TrainConfig) -> torch.Tensor:
    """One optimisation step; returns the batch loss as a device tensor (no sync)."""
    use_amp = cfg.amp and x.device.type == "cuda"
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=use_amp):
        loss = F.cross_entropy(model(x), labels, label_smoothing=cfg.label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
    return loss.detach()


# ---------------------------------------------------------------- checkpoints


def _rng_state(shuffle_gen: torch.Generator, augment_gen: torch.Generator) -> dict:
    state = {
        "torch": torch.get_rng_state(),
        "shuffle": shuffle_gen.get_state(),
        "augment": augment_gen.get_state(),
    }
    if torch.cuda.is_available() and augment_gen.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(augment_gen.device)
    return state


def _restore_rng(state: dict, shuffle_gen: torch.Generator, augment_gen: torch.Generator):
    torch.set_rng_state(state["torch"])
    shuffle_gen.set_state(state["shuffle"])
    augment_gen.set_state(state["augment"])
    if "cuda" in state and augment_gen.device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], augment_gen.device)


def checkpoint_meta(cfg: TrainConfig, state: TrainState, accuracy: float, data: str) -> dict:
    return {
        "data_fingerprint": data,
        "model": cfg.model,
        "arch_args": resolved_arch_args(cfg.model, cfg.arch_args),
        "train_config": asdict(cfg),
        "seed": cfg.seed,
        "epochs_trained": state.epoch,
        "val_accuracy": accuracy,
        "history": state.history,
    }


def write_metrics_csv(history: list[dict[str, float]], path: Path) -> None:
    if not history:
        return
    columns = list(history[0])
    lines = [",".join(columns)]
    lines += [",".join(f"{row[c]:.6g}" for c in columns) for row in history]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def _resume_config(last: Path, cfg: TrainConfig) -> tuple[TrainConfig, dict]:
    payload = read_payload(last)
    if "training_state" not in payload:
        raise PipelineError(f"{last}: holds no training state to resume from")
    saved = payload["meta"]["train_config"]
    known = {f.name for f in fields(TrainConfig)}
    resumed = TrainConfig(**{k: v for k, v in saved.items() if k in known})
    # The device may change on resume (the run is then no longer bit-identical).
    return replace(resumed, device=cfg.device), payload


# ---------------------------------------------------------------- the loop


@dataclass(frozen=True)
class TrainResult:
    checkpoint: Path  # best weights by validation accuracy
    last_checkpoint: Path  # resumable state after the final epoch
    config: TrainConfig
    best_accuracy: float
    final_accuracy: float
    history: list[dict[str, float]]
    train_seconds: float  # device time in training steps, validation excluded
    seconds_to_target: float | None  # training seconds until val accuracy >= 99.0%
    images_per_second: float
    skipped: bool = False  # an identical finished run was already there


def finished_run(cfg: TrainConfig, out: Path, last: Path, data: str) -> TrainResult | None:
    """The result of an earlier run of exactly this config on exactly this data, if any."""
    try:
        saved = read_payload(last)["meta"]
        best = read_payload(out)["meta"]
    except PipelineError:
        return None
    same = saved.get("train_config") == asdict(cfg) and saved.get("data_fingerprint") == data
    if not (same and saved.get("finished")):
        return None
    history = saved["history"]
    return TrainResult(
        checkpoint=out,
        last_checkpoint=last,
        config=cfg,
        best_accuracy=best["val_accuracy"],
        final_accuracy=history[-1]["val_accuracy"],
        history=history,
        train_seconds=saved["train_seconds"],
        seconds_to_target=saved.get("seconds_to_target"),
        images_per_second=saved["images_per_second"],
        skipped=True,
    )


def train(
    cfg: TrainConfig,
    processed_dir: Path = config.PROCESSED_DIR,
    out: Path | None = None,
    resume: bool = False,
    log: Callable[[str], None] | None = None,
    progress: bool = True,
    figures_dir: Path = config.FIGURES_DIR,
    force: bool = False,
) -> TrainResult:
    """Train `cfg` on processed_dir's train split, validating on val after every epoch.

    Writes `out` (best weights, with a JSON sidecar), `<out stem>.last.pt` (resumable
    state), `<out stem>.metrics.csv` and a curves figure. With `resume`, continues from the
    last state with its saved config. SIGINT/SIGTERM save a resumable state and raise
    TrainingInterrupted. Under torchrun (WORLD_SIZE > 1) trains one model with DDP. A finished
    run of the same config on the same data is returned as is unless `force`.
    """
    out = out or config.checkpoint_path(cfg.model)
    last_path = config.last_checkpoint_path(out)
    data = data_fingerprint(processed_dir)
    payload = None
    if resume:
        cfg, payload = _resume_config(last_path, cfg)
    check_config(cfg)
    if not (resume or force) and (done := finished_run(cfg, out, last_path, data)):
        return done
    ranks = ranks_from_env()
    if cfg.batch_size % ranks.world:
        raise PipelineError(f"--batch-size {cfg.batch_size} must divide by {ranks.world} ranks")
    device = training_device(cfg.device, ranks)
    with process_group(ranks, device):
        return _train(
            cfg,
            processed_dir,
            out,
            last_path,
            payload,
            ranks,
            device,
            log,
            progress,
            figures_dir,
            data,
        )


def _train(
    cfg, processed_dir, out, last_path, payload, ranks, device, log, progress, figures_dir, data
) -> TrainResult:
    say = log if (log and ranks.is_main) else (lambda message: None)
    seed_everything(cfg.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
    train_data, val_data = load_training_data(cfg, processed_dir, device)
    if len(train_data) < cfg.batch_size:
        raise PipelineError(
            f"--batch-size {cfg.batch_size} exceeds the {len(train_data)} training images"
        )
    model = build_model(cfg.model, **cfg.arch_args).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    steps_per_epoch = len(train_data) // cfg.batch_size
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg, total_steps)
    shuffle_gen = torch.Generator().manual_seed(cfg.seed)
    augment_gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    state = TrainState()
    if payload is not None:
        model.load_state_dict(payload["state_dict"])
        ts = payload["training_state"]
        optimizer.load_state_dict(ts["optimizer"])
        scheduler.load_state_dict(ts["scheduler"])
        state = TrainState(**ts["loop"])
        _restore_rng(ts["rng"], shuffle_gen, augment_gen)
        say(f"resumed {last_path} at epoch {state.epoch + 1}, step {state.step}")

    step_model: nn.Module = model
    if ranks.world > 1:
        step_model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if cfg.compile:
        step_model = compile_for(step_model, device)

    def save_last(finished: bool = False) -> None:
        if ranks.is_main:
            training_state = {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "loop": asdict(state),
                "rng": _rng_state(shuffle_gen, augment_gen),
            }
            meta = checkpoint_meta(cfg, state, state.best_accuracy, data) | {
                "finished": finished,
                "train_seconds": state.train_seconds,
                "seconds_to_target": state.seconds_to_target,
                "images_per_second": _images_per_second(state.history),
            }
            save_checkpoint(last_path, model, meta, training_state, sidecar=False)

    timer = DeviceTimer(device)
    steps_done = state.epoch * steps_per_epoch + state.step
    with StopSignals() as stop:
        while state.epoch < cfg.epochs and steps_done < total_steps:
            if state.order is None:
                state.order = torch.randperm(len(train_data), generator=shuffle_gen)
            model.train()
            loss_sum = torch.tensor(state.loss_sum, device=device)
            start_step = state.step
            bar = tqdm(
                total=steps_per_epoch,
                initial=start_step,
                leave=False,
                desc=f"epoch {state.epoch + 1}/{cfg.epochs}",
                disable=None if (progress and ranks.is_main) else True,
            )
            timer.start()
            batches = index_batches(
                len(train_data),
                cfg.batch_size,
                state.order,
                drop_last=True,
                device=device if cfg.data == "tensors" else None,  # one copy per epoch
            )
            for step, indices in enumerate(batches):
                if step < start_step:
                    continue
                x, labels = batch_inputs(train_data, indices, cfg, ranks, device, augment_gen)
                loss_sum += train_step(step_model, optimizer, scheduler, x, labels, cfg)
                state.step, steps_done = step + 1, steps_done + 1
                bar.update()
                if state.step % 25 == 0 and not bar.disable:
                    bar.set_postfix(loss=f"{loss_sum.item() / state.step:.4f}")
                if stop_requested(stop, ranks, device) or steps_done >= total_steps:
                    break
            seconds = timer.seconds()
            bar.close()
            state.train_seconds += seconds
            state.loss_sum = float(loss_sum)
            if stop.signum is not None:
                save_last()
                raise TrainingInterrupted(last_path, state.epoch, state.step, stop.signum)

            metrics = evaluate_model(model, val_data)
            images = (state.step - start_step) * cfg.batch_size
            record = {
                "epoch": state.epoch + 1,
                "train_loss": state.loss_sum / max(state.step, 1),
                "val_loss": metrics.loss,
                "val_accuracy": metrics.accuracy,
                "lr": optimizer.param_groups[0]["lr"],
                "epoch_seconds": seconds,
                "train_seconds": state.train_seconds,
                "images_per_second": images / seconds if seconds > 0 else 0.0,
            }
            state.history.append(record)
            if state.seconds_to_target is None and metrics.accuracy >= TARGET_ACCURACY:
                state.seconds_to_target = state.train_seconds
            state.epoch, state.step, state.order, state.loss_sum = state.epoch + 1, 0, None, 0.0
            say(
                f"epoch {record['epoch']:>3}/{cfg.epochs}  loss {record['train_loss']:.4f}  "
                f"val_loss {metrics.loss:.4f}  val_acc {metrics.accuracy:.2%}  "
                f"{seconds:.1f} s  {record['images_per_second']:,.0f} img/s"
            )
            if ranks.is_main:
                if metrics.accuracy > state.best_accuracy:
                    state.best_accuracy = metrics.accuracy
                    meta = checkpoint_meta(cfg, state, metrics.accuracy, data)
                    save_checkpoint(out, model, meta)
                write_metrics_csv(state.history, config.metrics_path(out))
            save_last(finished=state.epoch >= cfg.epochs or steps_done >= total_steps)
    if ranks.world > 1:
        dist.barrier()
    if ranks.is_main and state.history:
        plots.plot_training_curves(
            state.history, config.figure_path(f"{out.stem}_curves", figures_dir)
        )
    return TrainResult(
        checkpoint=out,
        last_checkpoint=last_path,
        config=cfg,
        best_accuracy=state.best_accuracy,
        final_accuracy=state.history[-1]["val_accuracy"] if state.history else float("nan"),
        history=state.history,
        train_seconds=state.train_seconds,
        seconds_to_target=state.seconds_to_target,
        images_per_second=_images_per_second(state.history),
    )


def _images_per_second(history: list[dict[str, float]]) -> float:
    images = sum(r["images_per_second"] * r["epoch_seconds"] for r in history)
    seconds = sum(r["epoch_seconds"] for r in history)
    return images / seconds if seconds else 0.0


# ---------------------------------------------------------------- ensembles


def member_path(out_dir: Path, name: str, member: int) -> Path:
    return out_dir / f"{name}-{member}.pt"


def train_ensemble(
    cfg: TrainConfig,
    members: int,
    processed_dir: Path = config.PROCESSED_DIR,
    out_dir: Path = config.MODELS_DIR,
    name: str | None = None,
    log: Callable[[str], None] | None = None,
    progress: bool = True,
) -> list[TrainResult]:
    """Train `members` copies of `cfg` with seeds seed, seed+1, ...; one file per member.

    Under torchrun the members are spread over the processes (member k on rank k % world),
    each process training whole models on its own device: no process group is needed.
    """
    ranks = ranks_from_env()
    name = name or cfg.recipe or cfg.model
    results = []
    for member in range(ranks.rank, members, ranks.world):
        member_cfg = replace(cfg, seed=cfg.seed + member)
        if cfg.device in ("auto", "cuda") and torch.cuda.is_available():
            member_cfg = replace(member_cfg, device=f"cuda:{ranks.local_rank}")
        if log:
            log(f"member {member + 1}/{members} (seed {member_cfg.seed})")
        with _single_process():
            results.append(
                train(
                    member_cfg,
                    processed_dir,
                    member_path(out_dir, name, member),
                    log=log,
                    progress=progress,
                )
            )
    return results


@contextmanager
def _single_process() -> Iterator[None]:
    """Hide torchrun's WORLD_SIZE so each ensemble member trains as a single process."""
    saved = os.environ.pop("WORLD_SIZE", None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ["WORLD_SIZE"] = saved
