"""What decides a trained model: `TrainConfig`, and the named recipes that fill it in.

Options given on the command line override a recipe; a recipe has a GPU variant that applies
when the run resolves to CUDA. The whole config is stored in every checkpoint.
"""

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any

from pipeline.common.choices import (
    MAX_SEED,
    DataSource,
    Device,
    ModelName,
    Optimizer,
    Recipe,
    Schedule,
    plain,
)
from pipeline.common.errors import PipelineError

# What `seconds_to_target` in a run's result measures the time to.
TARGET_ACCURACY = 0.99


def setting(default: Any, help: str, **option: Any) -> Any:
    """A TrainConfig field the command line sets (pipeline.cli.options reads it): its help,
    `choices`, `min`/`max`, `name` (the option's, if not the field's), `resume_may_change`."""
    return field(default=default, metadata={"help": help, **option})


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides the trained weights; stored in every checkpoint."""

    model: str = setting("fastnet", "Architecture (the recipe's).", choices=ModelName)
    arch_args: dict = field(default_factory=dict)
    epochs: int = setting(4, "Passes over the training digits.", min=1)
    batch_size: int = setting(128, "Global batch size, split across torchrun processes.", min=1)
    lr: float = setting(4e-3, "Peak learning rate of the schedule.")
    optimizer: str = setting("adamw", "Optimizer (the recipe's).", choices=Optimizer)
    weight_decay: float = setting(5e-4, "Weight decay on weights (not BN/bias).")
    schedule: str = setting("onecycle", "Learning-rate schedule, per step.", choices=Schedule)
    label_smoothing: float = setting(0.1, "Label smoothing of the loss, 0 to <1.")
    augment: bool = setting(False, "Random rotation, scale and shift per image.")
    augment_strength: float = setting(
        1.0, "Scale --augment's rotation (10 deg), zoom and shift (10%): >0 to 3 (1)."
    )
    elastic: bool = setting(False, "Add elastic distortion (2 px) to --augment.")
    seed: int = setting(
        0, "Seed of initialisation, order and augmentation (0).", min=0, max=MAX_SEED
    )
    device: str = setting(
        "auto", "auto picks CUDA, then Apple MPS, then the CPU.", choices=Device,
        resume_may_change=True,
    )  # fmt: skip
    data_source: str = setting(
        "tensors", "Train from cached tensors or the PNGs.", choices=DataSource, name="data"
    )
    channels_last: bool = True
    amp: bool = True  # bf16 autocast, on CUDA only
    compile: bool = setting(False, "torch.compile; CUDA graphs on a GPU (the recipe's).")
    max_steps: int | None = setting(None, "Stop after N steps (smoke runs).", min=1)
    recipe: str | None = None
    # The decay per step of the weights' moving average, what is validated and saved (None: none)
    ema: float | None = None
    # Bagging (pipeline.data.folds): hold out fold `fold` of `folds` dealt by `fold_seed`,
    # validate on it and keep the last weights. None: the prepared split.
    folds: int | None = None
    fold: int = 0
    fold_seed: int = 0
    # Extra training digits with probability targets (pipeline.data.extra): .npz and digest.
    extra: str | None = None
    extra_sha256: str | None = None


CLI_SETTINGS = tuple(f for f in fields(TrainConfig) if "help" in f.metadata)


def cli_settings(cfg: TrainConfig) -> dict[str, Any]:
    """Every setting of `cfg` under the command line's name for it (tracking's params)."""
    return {f.metadata.get("name", f.name): getattr(cfg, f.name) for f in fields(cfg)}


# Settings given on the command line over a recipe, by TrainConfig field name, plus `width`
# (sets arch_args: see models.width_args); only the given ones (not None).
Overrides = dict[str, Any]


# Named recipes over TrainConfig's defaults. `fast` is the defaults: >= 99% validation accuracy
# in about 30 s on a 2-core CPU. `best` is what every member of the `best` ensemble shares, with
# the first row of the device's table as its model when trained alone.
BEST_SHARED: dict[str, Any] = dict(augment=True, ema=0.999)

# The `best` ensemble per device: differing nets, since members that differ only in their seed
# make the same mistakes. Members k and k + folds hold out fold k % folds and are different
# nets, so each digit's out-of-bag vote comes from two architectures. The CPU table fits
# `make best` in 15 minutes on two cores.
BEST_FOLDS: dict[str, int] = {"cpu": 5, "cuda": 5}
_FAST16_K3 = dict(model="fastnet", epochs=11)
_FAST16_K5 = dict(model="fastnet", arch_args={"kernel": 5}, epochs=8)
_DEEP = dict(model="deepcnn")
_NOPOOL_K5_BIG = dict(model="nopool", arch_args={"kernel": 5, "widths": [32, 64, 96, 128, 160]})
_NOPOOL_K7_BIG = dict(model="nopool", arch_args={"kernel": 7, "widths": [48, 96, 144, 192]})
_NOPOOL_K3_BIG = dict(model="nopool", arch_args={"kernel": 3, "widths": list(range(32, 177, 16))})
_FAST_BIG = dict(model="fastnet", arch_args={"widths": [64, 128, 256], "convs": 2})
# `ensemble --budget` on a CPU trains LONG_CPU's wider nets when they fit at their epochs or
# more. On fold 0 (2 cores): the small nets at 3x their epochs scored 99.43% and 99.46%, voting
# 99.52%; these at 16 and 24 epochs (1.6 times the small pair's time) 99.51% and 99.52%, voting
# 99.60%. Kernel 5 at widths 32-128 (1.5 times slower) scored no better: 99.60/99.62% on folds
# 0/1 at 16 epochs against these 99.52/99.67% at 24 (docs/accuracy.md).
_WIDE_K3 = dict(model="fastnet", arch_args={"widths": [32, 64, 128]}, epochs=12)
_WIDE_K5 = dict(model="fastnet", arch_args={"kernel": 5, "widths": [24, 48, 96]}, epochs=12)
LONG_CPU = [_WIDE_K3, _WIDE_K5] * 5
BEST_MEMBERS: dict[str, list[dict[str, Any]]] = {
    "cpu": [_FAST16_K3, _FAST16_K5] * 5,
    # An et al.'s no-pooling nets (kernels 3, 5, 7) and Deotte's DeepCNN at full size.
    "cuda": [
        *(_DEEP, _NOPOOL_K5_BIG, _NOPOOL_K7_BIG, _NOPOOL_K3_BIG, _FAST_BIG),
        *(_NOPOOL_K5_BIG, _NOPOOL_K7_BIG, _NOPOOL_K3_BIG, _FAST_BIG, _DEEP),
    ],
}
CUDA_MEMBER = dict(epochs=40, batch_size=256, compile=True)  # what a CUDA row does not set

RECIPES: dict[str, dict[str, Any]] = {
    "fast": {},
    "best": {**BEST_SHARED, **BEST_MEMBERS["cpu"][0]},
}

# On CUDA `fast` takes a wider FastNet and 4x the batch (on an H100 4 epochs at batch 512 missed
# 99.0% for one seed in three; 5 reached it for all three), eager: compiling took 15.8 s of its
# 28.8 s on an H200, eager it ends in 12 s. `best`'s 40-epoch members capture the step in CUDA
# graphs (torch.compile), where the compile is a small part of the run.
GPU_RECIPES: dict[str, dict[str, Any]] = {
    "fast": dict(arch_args={"widths": [24, 48, 96]}, epochs=5, batch_size=512, lr=8e-3),
    "best": {**CUDA_MEMBER, "arch_args": {}, **BEST_MEMBERS["cuda"][0]},
}


# The most --augment-strength may scale the transforms by (3: 30 degrees, 30% zoom and shift).
MAX_AUGMENT_STRENGTH = 3.0


def device_kind(device: str) -> str:
    """`cuda` where the run resolves to a CUDA GPU, else `cpu`: which sizing applies."""
    from pipeline.common.device import resolve_device  # imports torch: only once a run is set up

    return "cuda" if resolve_device(plain(device) or "auto").type == "cuda" else "cpu"


def check_member_seeds(seed: int, members: int) -> None:
    """Refuse member seeds (seed .. seed + members - 1) past the range before any trains."""
    if members < 1:
        raise PipelineError(f"--members {members}: must be at least 1")
    last = seed + members - 1
    if seed < 0 or last > MAX_SEED:
        raise PipelineError(
            f"--seed {seed} with --members {members}: member seeds run to {last}, past the "
            f"largest seed {MAX_SEED}; use --seed {MAX_SEED - members + 1} or lower"
        )


def _built(settings: dict[str, Any], overrides: dict[str, Any]) -> TrainConfig:
    """`settings` with every non-None override on top, checked; `width` widens the model and
    keeps its other arch_args (a member's kernel)."""
    from pipeline.training.models import width_args

    settings = settings | {k: plain(v) for k, v in overrides.items() if v is not None}
    if (width := settings.pop("width", None)) is not None:
        model = settings.get("model", TrainConfig.model)
        settings["arch_args"] = settings.get("arch_args", {}) | width_args(model, width)
    cfg = TrainConfig(**settings)
    check_config(cfg)
    return cfg


def best_members(
    members: int | None = None, seed: int = 0, bagged: bool = True, **overrides: Any
) -> list[TrainConfig]:
    """The `best` ensemble's member configs for the device `overrides` name (default auto):
    member k is row k (cycled) of the device's table, seed `seed + k`, holding out fold
    k % folds when bagged; options given (`epochs`, `width`, ...) override every member."""
    kind = device_kind(overrides.get("device") or "auto")
    table = BEST_MEMBERS[kind]
    count = len(table) if members is None else members
    check_member_seeds(seed, count)
    folds = BEST_FOLDS[kind] if bagged else None
    configs = []
    for k in range(count):
        cuda = CUDA_MEMBER if kind == "cuda" else {}
        settings = {**BEST_SHARED, **cuda, **table[k % len(table)]}
        settings |= {"seed": seed + k, "recipe": "best"}
        if folds is not None:
            settings |= {"folds": folds, "fold": k % folds, "fold_seed": seed}
        configs.append(_built(settings, overrides))
    return configs


def lengthened(configs: list[TrainConfig]) -> list[TrainConfig] | None:
    """`configs` with LONG_CPU's nets and epochs in place of the CPU table's (seeds, folds and
    extra digits kept); None unless they are that table's rows as the recipe gives them."""
    out = []
    for k, cfg in enumerate(configs):
        row, long = ({"arch_args": {}} | t[k % len(t)] for t in (BEST_MEMBERS["cpu"], LONG_CPU))
        if any(getattr(cfg, key) != value for key, value in row.items()):
            return None
        out.append(replace(cfg, **long))
    return out


def recipe_config(recipe: str = "fast", **overrides: Any) -> TrainConfig:
    """A recipe's settings (its GPU variant on CUDA) with every non-None override on top;
    `width` sets the model's widths (see `models.width_args`)."""
    recipe = plain(recipe)
    settings = {**RECIPES.get(recipe, {}), "recipe": recipe}  # check_config refuses others
    if device_kind(overrides.get("device") or "auto") == "cuda":
        gpu = dict(GPU_RECIPES.get(recipe, {}))
        own_model = settings.get("model", TrainConfig.model)
        if plain(overrides.get("model")) not in (None, own_model):
            gpu.pop("arch_args", None)  # the recipe's widths are its own model's, not another's
        settings.update(gpu)
    return _built(settings, overrides)


def _choice(allowed) -> tuple:
    return lambda v: v in list(allowed), f"expected one of {', '.join(allowed)}"


# What each setting must be: the API's one-line refusals (typer checks the command line's).
_RULES: dict[str, tuple] = {
    "model": _choice(ModelName),
    "optimizer": _choice(Optimizer),
    "schedule": _choice(Schedule),
    "data_source": _choice(DataSource),
    "recipe": (lambda v: v is None or v in list(Recipe), f"expected one of {', '.join(Recipe)}"),
    "epochs": (lambda v: v >= 1, "must be positive"),
    "batch_size": (lambda v: v >= 1, "must be positive"),
    "lr": (lambda v: 0 < v < math.inf, "must be a positive finite number"),
    "weight_decay": (lambda v: 0 <= v < math.inf, "must be a finite number, not negative"),
    "label_smoothing": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "augment_strength": (
        lambda v: 0 < v <= MAX_AUGMENT_STRENGTH,
        f"must be above 0 and at most {MAX_AUGMENT_STRENGTH:g}",
    ),
    "max_steps": (lambda v: v is None or v >= 1, "must be positive"),
    "seed": (lambda v: 0 <= v <= MAX_SEED, f"expected an integer from 0 to {MAX_SEED}"),
    "ema": (lambda v: v is None or 0 < v < 1, "the decay must be between 0 and 1"),
}


def check_config(cfg: TrainConfig) -> None:
    """Refuse, in one line, settings no run can use."""
    for name, (ok, rule) in _RULES.items():
        if not ok(value := getattr(cfg, name)):
            raise PipelineError(f"--{name.replace('_', '-')} {value}: {rule}")
    from pipeline.training.models import arch_args_problem  # imports torch: once a run is set up

    if not isinstance(cfg.arch_args, dict):
        raise PipelineError(f"arch_args {cfg.arch_args!r:.40}: must be a mapping")
    if problem := arch_args_problem(cfg.model, cfg.arch_args):
        raise PipelineError(f"arch_args of {cfg.model}: {problem}")
    if cfg.folds is not None:
        if cfg.folds < 2 or not 0 <= cfg.fold < cfg.folds:
            raise PipelineError(f"--folds {cfg.folds}: needs at least 2 folds, fold 0 to folds-1")
        if cfg.data_source != "tensors":
            raise PipelineError("bagged members (--folds) train on the cached tensors only")
    if cfg.extra is not None and (cfg.data_source != "tensors" or cfg.extra_sha256 is None):
        raise PipelineError(f"extra {cfg.extra}: needs its digest and the cached tensors")
