"""What decides a trained model: `TrainConfig`, and the named recipes that fill it in.

Options given on the command line override a recipe; a recipe has a GPU variant that applies
when the run resolves to CUDA. The whole config is stored in every checkpoint.
"""

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from pipeline.choices import (
    DataSource,
    ModelName,
    Optimizer,
    Recipe,
    Schedule,
    check_seed,
    plain,
)
from pipeline.errors import PipelineError

# What `seconds_to_target` in a run's result measures the time to.
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
    data_source: str = "tensors"
    channels_last: bool = True
    amp: bool = True  # bf16 autocast, on CUDA only
    compile: bool = False
    max_steps: int | None = None  # stop early: smoke runs and tests
    recipe: str | None = None


@dataclass(frozen=True)
class Overrides:
    """Settings given on the command line over a recipe, as plain values.

    None keeps the recipe's value (or, with --resume, the saved run's).
    """

    model: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    optimizer: str | None = None
    weight_decay: float | None = None
    schedule: str | None = None
    label_smoothing: float | None = None
    augment: bool | None = None
    elastic: bool | None = None
    seed: int | None = None
    device: str | None = None
    data_source: str | None = None
    compile: bool | None = None
    max_steps: int | None = None

    def given(self) -> dict[str, Any]:
        """The settings that were given (not None), by TrainConfig field name."""
        return {name: value for name, value in asdict(self).items() if value is not None}


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
    from pipeline.device import resolve_device  # imports torch: only once a run is set up

    recipe = plain(recipe)
    if recipe not in RECIPES:
        raise PipelineError(f"--recipe {recipe}: expected one of {', '.join(RECIPES)}")
    settings = {**RECIPES[recipe], "recipe": recipe}
    if resolve_device(plain(overrides.get("device")) or "auto").type == "cuda":
        gpu = dict(GPU_RECIPES.get(recipe, {}))
        own_model = settings.get("model", TrainConfig.model)
        if plain(overrides.get("model")) not in (None, own_model):
            gpu.pop("arch_args", None)  # the recipe's widths are its own model's, not another's
        settings.update(gpu)
    settings.update({k: plain(v) for k, v in overrides.items() if v is not None})
    cfg = TrainConfig(**settings)
    check_config(cfg)
    return cfg


def check_config(cfg: TrainConfig) -> None:
    """Refuse, in one line, settings no run can use (typer checks the CLI; this the API)."""
    choices = {
        "model": ModelName,
        "optimizer": Optimizer,
        "schedule": Schedule,
        "data_source": DataSource,
    }
    for name, allowed in choices.items():
        if getattr(cfg, name) not in {member.value for member in allowed}:
            raise PipelineError(
                f"--{name} {getattr(cfg, name)}: expected one of {', '.join(allowed)}"
            )
    if cfg.recipe is not None and cfg.recipe not in {r.value for r in Recipe}:
        raise PipelineError(f"--recipe {cfg.recipe}: expected one of {', '.join(Recipe)}")
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise PipelineError("--epochs and --batch-size must be positive")
    numbers = {
        "lr": cfg.lr,
        "weight-decay": cfg.weight_decay,
        "label-smoothing": cfg.label_smoothing,
    }
    for name, value in numbers.items():
        if not math.isfinite(value):
            raise PipelineError(f"--{name} {value}: must be a finite number")
    if cfg.lr <= 0 or cfg.weight_decay < 0 or not 0 <= cfg.label_smoothing < 1:
        raise PipelineError(
            "--lr must be positive, --weight-decay not negative, --label-smoothing in [0, 1)"
        )
    if cfg.max_steps is not None and cfg.max_steps < 1:
        raise PipelineError(f"--max-steps {cfg.max_steps}: must be positive")
    check_seed(cfg.seed)
