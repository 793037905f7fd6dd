"""Stage 3: train a classifier on the prepared digits; keep best and last checkpoints.

Optimiser and schedule, the step, one epoch, then `train`. Batches are cut by index from uint8
tensors already on the device and normalised (and augmented) there; the loss is read once per
epoch. Under `torchrun` each rank takes its slice of every global batch (DDP).
"""

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from pipeline import config
from pipeline.common import plots
from pipeline.common.device import DeviceTimer, seed_everything, use_free_cores
from pipeline.common.errors import PipelineError
from pipeline.common.files import check_writable, write_csv_rows, written_together
from pipeline.common.progress import EpochProgress
from pipeline.common.timings import phase
from pipeline.data import augmentation, datasets, extra, folds
from pipeline.inference.predictor import score
from pipeline.training import calibration, distributed, run_state
from pipeline.training.callbacks import Callback
from pipeline.training.checkpoints import all_finite, save_checkpoint
from pipeline.training.compiling import CompiledOrEager, compile_for
from pipeline.training.distributed import Ranks, process_group, ranks_from_env, training_device
from pipeline.training.models import build_model
from pipeline.training.recipes import TARGET_ACCURACY, TrainConfig, check_config


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Weight decay on weights only (decaying BatchNorm scales and biases only hurts); on CUDA
    the fused Adam/AdamW kernels update every parameter in one launch."""
    params = list(model.parameters())
    groups = [
        {"params": [p for p in params if p.dim() > 1], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() <= 1], "weight_decay": 0.0},
    ]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True)
    adam = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    return adam(groups, lr=cfg.lr, fused=params[0].device.type == "cuda")


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int):
    """Stepped once per batch. Smoke runs too short to warm up (< 8 steps) use a constant LR."""
    if cfg.schedule == "onecycle" and total_steps >= 8:
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=cfg.lr, total_steps=total_steps, pct_start=0.25
        )
    if cfg.schedule == "cosine" and total_steps >= 8:
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)


def batch_inputs(dataset, indices, cfg: TrainConfig, ranks: Ranks, device, augment_gen):
    """This rank's share of one global batch, on the device, augmented and normalised."""
    share = len(indices) // ranks.world
    lo, hi = ranks.rank * share, (ranks.rank + 1) * share
    images, labels = dataset.get_batch(indices[lo:hi])
    x = datasets.to_unit(images.to(device, non_blocking=True))
    if cfg.augment:
        settings = augmentation.training_augmentation(cfg.elastic, cfg.augment_strength)
        params = augmentation.draw(len(indices), x.shape[-1], settings, augment_gen, device)
        x = augmentation.apply(x, params.rows(lo, hi))
    x = datasets.standardize(x)
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


@dataclass
class Run:
    """One training run in progress: what every part of the loop reads and updates."""

    cfg: TrainConfig
    ranks: Ranks
    device: torch.device
    train_set: datasets.TensorDigits | datasets.PngDigits
    val_set: datasets.TensorDigits | datasets.PngDigits
    model: nn.Module  # the plain module: checkpoints save its state_dict
    step_model: nn.Module | CompiledOrEager  # what the step calls: DDP- and/or compiled
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    shuffle_gen: torch.Generator
    augment_gen: torch.Generator
    state: run_state.TrainState
    steps_per_epoch: int
    total_steps: int
    out: Path
    data_fingerprint: str
    ema: AveragedModel | None = None  # the weights' moving average, when cfg.ema
    bag: dict | None = None  # a bagged member's bag record (pipeline.data.folds)

    @property
    def steps_done(self) -> int:
        return self.state.epoch * self.steps_per_epoch + self.state.step

    @property
    def kept_model(self) -> nn.Module:
        """The weights validated and saved: the moving average if there is one."""
        return self.model if self.ema is None else self.ema.module

    def meta(self, finished: bool | None = None) -> dict:
        meta = run_state.run_meta(self.cfg, self.state, self.data_fingerprint, finished)
        if self.device.type == "cpu":  # float sums differ in the last bits between counts
            meta["cpu_threads"] = torch.get_num_threads()
        return meta if self.bag is None else meta | {"bag": self.bag}


def train_one_epoch(run: Run, stop: run_state.StopSignals, log: Callable | None) -> float:
    """Train until the epoch ends, max_steps or a stop signal; returns the device seconds."""
    state, cfg = run.state, run.cfg
    if state.order is None:
        state.order = torch.randperm(len(run.train_set), generator=run.shuffle_gen)
    run.model.train()
    loss_sum = torch.tensor(state.loss_sum, device=run.device)
    steps_left = min(run.steps_per_epoch, state.step + run.total_steps - run.steps_done)
    description = f"epoch {state.epoch + 1}/{cfg.epochs}"
    progress = EpochProgress(description, steps_left, state.step, run.ranks.is_main, log)
    on_device = run.device if cfg.data_source == "tensors" else None  # one copy per epoch
    batches = datasets.index_batches(
        len(run.train_set), cfg.batch_size, state.order, True, on_device
    )
    timer = DeviceTimer(run.device)
    for step, indices in enumerate(batches):
        if step < state.step:
            continue
        x, labels = batch_inputs(
            run.train_set, indices, cfg, run.ranks, run.device, run.augment_gen
        )
        loss_sum += train_step(run.step_model, run.optimizer, run.scheduler, x, labels, cfg)
        if run.ema is not None:
            run.ema.update_parameters(run.model)
        state.step = step + 1
        progress.step(lambda total=loss_sum: total.item() / state.step)
        if stop.requested(run.ranks, run.device, run.steps_done):
            break
        if run.steps_done >= run.total_steps:
            break
    stop.requested(run.ranks, run.device)  # every rank leaves the epoch knowing of a stop
    seconds = timer.seconds()
    progress.close()
    state.loss_sum = float(loss_sum)
    if not math.isfinite(state.loss_sum):
        raise PipelineError(
            f"{run.out}: training diverged in epoch {state.epoch + 1} (the loss is "
            f"{state.loss_sum}); nothing was saved from it: lower --lr (now {cfg.lr:g})"
        )
    return seconds


def save_last(run: Run, finished: bool = False) -> None:
    """The resumable state, written atomically beside the best weights (rank 0 only)."""
    if run.ranks.is_main:
        optimisation = run.optimizer, run.scheduler, run.shuffle_gen, run.augment_gen
        path = config.last_checkpoint_path(run.out)
        meta = run.meta(finished=finished)
        run_state.save_resumable(path, meta, run.state, run.model, *optimisation, run.ema)


def end_epoch(run: Run, seconds: float, start_step: int, log: Callable[[str], None]) -> None:
    """Validate, record the epoch, keep the best weights (with the temperature that calibrates
    them, fitted on the validation logits) and write the resumable state."""
    state = run.state
    metrics = score(run.kept_model, run.val_set)
    images = (state.step - start_step) * run.cfg.batch_size
    state.train_seconds += seconds
    record = {
        "epoch": state.epoch + 1,
        "train_loss": state.loss_sum / max(state.step, 1),
        "val_loss": metrics.loss,
        "val_accuracy": metrics.accuracy,
        "lr": run.optimizer.param_groups[0]["lr"],
        "epoch_seconds": seconds,
        "train_seconds": state.train_seconds,
        "images_per_second": images / seconds if seconds > 0 else 0.0,
    }
    state.history.append(record)
    if state.seconds_to_target is None and metrics.accuracy >= TARGET_ACCURACY:
        state.seconds_to_target = state.train_seconds
    state.next_epoch()
    log(
        f"epoch {record['epoch']:>3}/{run.cfg.epochs}  loss {record['train_loss']:.4f}  "
        f"val_loss {metrics.loss:.4f}  val_acc {metrics.accuracy:.2%}  "
        f"{seconds:.1f} s  {record['images_per_second']:,.0f} img/s"
    )
    with phase("write"), written_together():  # best, sidecar, metrics, resume state: all or none
        if run.ranks.is_main:
            # A bagged member keeps its last weights: choosing by its out-of-bag digits
            # would make them a worse estimate of unseen digits.
            if metrics.accuracy > state.best_accuracy or run.bag is not None:
                if not all_finite(run.kept_model):
                    raise PipelineError(
                        f"{run.out}: the weights became NaN or infinite; lower --lr"
                    )
                state.best_accuracy = metrics.accuracy
                # calibrated on the validation logits just computed: no second pass
                temperature = calibration.fit_temperature(metrics.logits, run.val_set.labels)
                save_checkpoint(run.out, run.kept_model, run.meta() | {"temperature": temperature})
            write_csv_rows(state.history, config.metrics_path(run.out))
        finished = state.epoch >= run.cfg.epochs or run.steps_done >= run.total_steps
        save_last(run, finished=finished)
        if finished and run.ranks.is_main:  # published with the rest: a late signal leaves none
            plots.plot_training_curves(state.history, config.curves_path(run.out))


def load_sets(cfg: TrainConfig, processed_dir: Path, fingerprint: str, device):
    """Training and validation digits on the device, and a bagged member's bag record (it
    validates on its out-of-bag digits). Extra digits join training only; every target is then
    a probability row (labels one-hot), which `F.cross_entropy` takes."""
    bag, splits = None, ("train", "val")
    if cfg.data_source == "images":  # never bagged (check_config)
        train_set, val_set = (datasets.PngDigits.load(processed_dir, s) for s in splits)
    elif cfg.folds is None:
        tensors = (datasets.TensorDigits.load(processed_dir, s).to(device) for s in splits)
        train_set, val_set = tensors
    else:
        digits = folds.labelled_digits(processed_dir)
        drawn = folds.member_bag(digits.labels, cfg.folds, cfg.fold, cfg.fold_seed)
        train_set, val_set = (
            datasets.TensorDigits(digits.images[rows], digits.labels[rows]).to(device)
            for rows in (drawn.train, drawn.oob)
        )
        bag = drawn.record(fingerprint)
    if cfg.extra is not None:
        loaded = extra.load_extra(Path(cfg.extra), cfg.extra_sha256)
        images, targets = (torch.from_numpy(array).to(device) for array in loaded)
        one_hot = F.one_hot(train_set.labels, config.N_CLASSES).float()
        train_set = datasets.TensorDigits(
            torch.cat([train_set.images, images]), torch.cat([one_hot, targets])
        )
    return train_set, val_set, bag


def new_run(
    cfg, train_set, val_set, ranks, device, out: Path, fingerprint="", payload=None, bag=None
) -> Run:
    """Build model, optimiser and schedule over loaded data; restore a resume's `payload`."""
    seed_everything(cfg.seed)
    if device.type == "cpu":  # threads on busy cores stall every op; meta records the count
        use_free_cores()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
    if len(train_set) < cfg.batch_size:
        raise PipelineError(
            f"--batch-size {cfg.batch_size} exceeds the {len(train_set)} training images"
        )
    model = build_model(cfg.model, **cfg.arch_args).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    steps_per_epoch = len(train_set) // cfg.batch_size
    total_steps = min(cfg.epochs * steps_per_epoch, cfg.max_steps or math.inf)
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg, total_steps)
    shuffle_gen = torch.Generator().manual_seed(cfg.seed)
    augment_gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    state = run_state.TrainState()
    ema = None
    if cfg.ema is not None:
        # A horizon of at most a tenth of the run: else a short run's average is its first steps.
        decay = min(cfg.ema, max(0.0, 1 - 10 / total_steps))
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    if payload is not None:
        parts = model, optimizer, scheduler, shuffle_gen, augment_gen, ema
        bounds = dict(
            epochs=cfg.epochs, steps_per_epoch=steps_per_epoch, total_steps=int(total_steps),
            train_images=len(train_set),
        )  # fmt: skip
        state = run_state.restore(payload, config.last_checkpoint_path(out), parts, bounds)
    step_model: nn.Module | CompiledOrEager = model
    if ranks.world > 1:
        ids = [device.index] if device.type == "cuda" else None
        step_model = DistributedDataParallel(model, device_ids=ids)
    if cfg.compile:
        step_model = compile_for(step_model, device)
    return Run(
        cfg, ranks, device, train_set, val_set, model, step_model, optimizer, scheduler,
        shuffle_gen, augment_gen, state, steps_per_epoch, int(total_steps), out, fingerprint,
        ema, bag,
    )  # fmt: skip


def train(
    cfg: TrainConfig,
    processed_dir: Path = config.PROCESSED_DIR,
    out: Path | None = None,
    resume: bool = False,
    log: Callable[[str], None] | None = None,
    progress: bool = True,
    force: bool = False,
    stop: run_state.StopSignals | None = None,
    callbacks: Sequence[Callback] = (),
) -> run_state.TrainResult:
    """Train `cfg` on processed_dir's train split, validating on val after every epoch, into
    `out` and its run files (`config.run_files`), holding `out`'s lock. SIGINT/SIGTERM save a
    resumable state and raise TrainingInterrupted (`stop` replaces that StopSignals). A
    finished run of the same config on the same data is returned as is unless `force`."""
    main = ranks_from_env().is_main
    try:
        check_config(cfg)
        out = out or config.checkpoint_path(cfg.model)
        check_writable(out)
        run_state.check_out(out)
        with run_state.writing(out, ranks_from_env()):
            result = train_locked(
                cfg, processed_dir, out, resume, log, progress, force, stop, callbacks
            )
    except BaseException as error:
        for callback in callbacks if main else ():
            callback.train_stop(error)
        raise
    for callback in callbacks if main else ():
        callback.train_end(result)
    return result


def train_locked(
    cfg, processed_dir, out, resume, log, progress, force, stop, callbacks=()
) -> run_state.TrainResult:
    """`train` once its `out` is checked and locked."""
    last = config.last_checkpoint_path(out)
    fingerprint = datasets.processed_fingerprint(processed_dir, whole=cfg.folds is not None)
    payload = run_state.resume_payload(last, cfg, fingerprint) if resume else None
    if not (resume or force) and (done := run_state.finished_run(cfg, out, fingerprint)):
        return done
    ranks = ranks_from_env()
    if cfg.batch_size % ranks.world:
        raise PipelineError(f"--batch-size {cfg.batch_size} must divide by {ranks.world} ranks")
    device = training_device(cfg.device, ranks)
    say = log if (log and ranks.is_main) else (lambda message: None)
    with process_group(ranks, device):
        with phase("load"):
            train_set, val_set, bag = load_sets(cfg, processed_dir, fingerprint, device)
        run = new_run(cfg, train_set, val_set, ranks, device, out, fingerprint, payload, bag)
        if payload is not None:
            say(f"resumed {last} at epoch {run.state.epoch + 1}, step {run.state.step}")
        with stop or run_state.StopSignals() as stop, phase("work"):
            while run.state.epoch < cfg.epochs and run.steps_done < run.total_steps:
                start_step = run.state.step
                seconds = train_one_epoch(run, stop, log if progress else None)
                if stop.signum is not None:
                    run.state.train_seconds += seconds
                    save_last(run)
                    where = run.state.epoch, run.state.step, stop.signum
                    raise run_state.TrainingInterrupted(last, *where)
                end_epoch(run, seconds, start_step, say)
                for callback in callbacks if ranks.is_main else ():
                    callback.epoch_end(run.state.history[-1])
        distributed.wait_for_all(ranks)
    curves = config.curves_path(out) if ranks.is_main and run.state.history else None
    return run_state.TrainResult.of(run.state, cfg, out, curves)
