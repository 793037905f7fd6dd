"""The schema a resume state (`<out>.last.pt`'s `training_state`) must meet before any of it
is used. The reference is the run being resumed: its fresh optimizer and scheduler give the
keys, types and fixed values, its parameters the shapes, its data and config the loop's bounds.
"""

import math
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from pipeline.common.errors import PipelineError

# What each optimizer keeps per parameter (`step` is a scalar, the rest shaped like it).
PARAM_STATE_KEYS = {
    torch.optim.AdamW: {"step", "exp_avg", "exp_avg_sq"},
    torch.optim.Adam: {"step", "exp_avg", "exp_avg_sq"},
    torch.optim.SGD: {"momentum_buffer"},
}
# Values the schedule moves as it steps, or that follow the device: checked by type only.
MOVING_GROUP_KEYS = {"lr", "betas", "momentum", "fused", "foreach", "capturable"}
MOVING_SCHEDULER_KEYS = {"last_epoch", "_step_count", "_last_lr", "_is_initial"}
MOVING_SCHEDULER_KEYS |= {"_get_lr_called_within_step"}
RNG_KEYS = ("torch", "shuffle", "augment")
PARTS = ("optimizer", "scheduler", "loop", "rng")


class Damaged(ValueError):
    """What is wrong, and where in the training state."""


def like(saved: Any, reference: Any, where: str, moving=frozenset(), exact=True) -> None:
    """`saved` has `reference`'s structure and types; tensors match in dtype and shape, and
    other values are equal, except under `moving` keys, whose numbers need only be finite."""
    if isinstance(reference, dict):
        if not isinstance(saved, dict) or set(saved) != set(reference):
            raise Damaged(f"{where} has other keys than this run's")
        for key, value in reference.items():
            like(saved[key], value, f"{where}.{key}", moving, exact and key not in moving)
    elif isinstance(reference, list | tuple):
        if type(saved) is not type(reference) or len(saved) != len(reference):
            raise Damaged(f"{where} is not a {type(reference).__name__} of {len(reference)}")
        for index, (a, b) in enumerate(zip(saved, reference, strict=True)):
            like(a, b, f"{where}[{index}]", moving, exact)
    elif isinstance(reference, torch.Tensor):
        if not isinstance(saved, torch.Tensor):
            raise Damaged(f"{where} is not a tensor")
        if saved.dtype != reference.dtype or saved.shape != reference.shape:
            raise Damaged(
                f"{where} is a {saved.dtype} tensor of shape {list(saved.shape)}, expected "
                f"{reference.dtype} {list(reference.shape)}"
            )
        if saved.is_floating_point() and not bool(torch.isfinite(saved).all()):
            raise Damaged(f"{where} is not finite")
    elif exact:
        if type(saved) is not type(reference) or saved != reference:
            raise Damaged(f"{where} is {saved!r:.40}, this run's is {reference!r:.40}")
    elif not (
        type(saved) is type(reference)
        or (saved is None and type(reference) is bool)  # flags that follow the device
        or (type(saved), type(reference)) == (int, float)
    ):
        raise Damaged(f"{where} is a {type(saved).__name__}, expected {type(reference).__name__}")
    elif isinstance(saved, float) and not math.isfinite(saved):
        raise Damaged(f"{where} is not finite")


def check_optimizer(saved: Any, optimizer: torch.optim.Optimizer, steps_done: int) -> None:
    reference = optimizer.state_dict()
    if set(saved) != set(reference):
        raise Damaged("optimizer is not an optimizer state")
    groups = saved["param_groups"]
    like(groups, reference["param_groups"], "optimizer.param_groups", MOVING_GROUP_KEYS)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state = saved["state"]
    if not isinstance(state, dict) or not set(state) <= set(range(len(params))):
        raise Damaged("optimizer.state is not keyed by this model's parameters")
    for index, entry in state.items():
        where = f"optimizer.state[{index}]"
        expected = dict.fromkeys(PARAM_STATE_KEYS[type(optimizer)], params[index].detach().cpu())
        if "step" in expected:
            expected["step"] = torch.tensor(0.0)
        like(entry, expected, where)
        if "step" in entry and float(entry["step"]) != steps_done:
            raise Damaged(f"{where}.step is {float(entry['step']):g}, not the {steps_done} done")


class HistoryRecord(BaseModel):
    """One epoch's line of a run's history (more keys may follow)."""

    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)
    epoch: int
    train_loss: float
    val_loss: float
    val_accuracy: float
    lr: float
    epoch_seconds: float
    train_seconds: float
    images_per_second: float


class LoopState(BaseModel):
    """`run_state.TrainState` as saved: its fields exactly, plain finite numbers."""

    model_config = ConfigDict(
        extra="forbid", strict=True, allow_inf_nan=False, arbitrary_types_allowed=True
    )
    epoch: int
    step: int
    order: torch.Tensor | None
    loss_sum: float
    train_seconds: float
    seconds_to_target: float | None
    best_accuracy: float
    history: list[HistoryRecord]


def check_loop(saved: Any, bounds: dict[str, int]) -> int:
    """The steps done, once the loop's position, `order` and history fit inside this run."""
    try:
        loop = LoopState.model_validate(saved)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        where = ".".join(["loop", *map(str, error["loc"])])
        problem = error["msg"].removeprefix("Value error, ")[:80]
        raise Damaged(f"{where}: {problem[:1].lower()}{problem[1:]}") from None
    spe, n = bounds["steps_per_epoch"], bounds["train_images"]
    if not 0 <= loop.epoch <= bounds["epochs"] or not 0 <= loop.step <= spe:
        raise Damaged(f"loop is at epoch {loop.epoch}, step {loop.step}: outside this run")
    position, total = loop.epoch * spe + loop.step, bounds["total_steps"]
    cut_short = loop.step == 0 and (loop.epoch - 1) * spe < total  # --max-steps ended an epoch
    if position > total and not cut_short:
        raise Damaged(f"loop is at epoch {loop.epoch}, step {loop.step}: past this run's end")
    if len(loop.history) != loop.epoch:
        raise Damaged(f"loop.history has {len(loop.history)} epochs, not {loop.epoch}")
    if loop.order is None:
        if loop.step:
            raise Damaged("loop.order is missing mid-epoch")
    elif not (
        loop.order.dtype == torch.int64
        and loop.order.shape == (n,)
        and torch.equal(loop.order.sort().values, torch.arange(n))
    ):
        raise Damaged(f"loop.order is not an order of the {n} training images")
    if not (loop.best_accuracy == -1 or 0 <= loop.best_accuracy <= 1):
        raise Damaged(f"loop.best_accuracy {loop.best_accuracy} is not an accuracy")
    return min(position, total)


def check_training_state(payload: dict, last: Path, run_parts: tuple, rng: dict, bounds) -> None:
    """Check every part of the saved state against this run (`rng`: its generators' states)."""
    model, optimizer, scheduler, *_, ema = run_parts
    ts = payload.get("training_state")
    if ts is None:
        raise PipelineError(f"{last}: holds no training state to resume from")
    try:
        if not isinstance(ts, dict):
            raise Damaged("it is not a mapping")
        parts = PARTS if ema is None else (*PARTS, "ema")
        if bad := [part for part in parts if not isinstance(ts.get(part), dict)]:
            raise Damaged(f"{', '.join(bad)}: missing or not a mapping")
        weights = {k: v.cpu() for k, v in model.state_dict().items()}
        like(payload["state_dict"], weights, "state_dict")
        steps = check_loop(ts["loop"], bounds)
        check_optimizer(ts["optimizer"], optimizer, steps)
        like(ts["scheduler"], scheduler.state_dict(), "scheduler", MOVING_SCHEDULER_KEYS)
        if ts["scheduler"]["last_epoch"] != steps or ts["scheduler"]["_step_count"] != steps + 1:
            raise Damaged(f"scheduler.last_epoch is {ts['scheduler']['last_epoch']}, not {steps}")
        if not set(RNG_KEYS) <= set(ts["rng"]) <= {*RNG_KEYS, "cuda"}:
            raise Damaged("rng has other keys than torch, shuffle, augment (and cuda)")
        for key in RNG_KEYS:
            like(ts["rng"][key], rng[key], f"rng.{key}")
    except Damaged as exc:
        raise PipelineError(
            f"{last}: its training state is damaged or not this version's ({exc}); "
            "train afresh with --force"
        ) from None
