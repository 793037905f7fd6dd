"""Command-line option types shared by several commands, and the one text-list parser.

Choices are `StrEnum`s from `pipeline.common.choices`, so typer itself shows them in `--help` and
refuses other values as usage errors. Nothing here imports torch.
"""

from pathlib import Path
from typing import Annotated

import typer

from pipeline.common.choices import (
    MAX_SEED,
    DataSource,
    Device,
    ModelName,
    Optimizer,
    Recipe,
    Schedule,
)
from pipeline.common.errors import PipelineError


def positive_ints(text: str, option: str, allow_empty: bool = False) -> list[int]:
    """Parse a comma-separated option such as `16,64,256`, or raise a one-line error."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        values = None
    if values is None or (not values and not allow_empty) or any(v < 1 for v in values):
        raise PipelineError(f"{option} {text}: expected positive integers such as 16,64,256")
    return values


SeedOpt = Annotated[
    int,
    typer.Option(min=0, max=MAX_SEED, help="Seed of every random draw; the same seed repeats."),
]
DeviceOpt = Annotated[Device, typer.Option(help="auto picks CUDA, then Apple MPS, then the CPU.")]
ProcessedOpt = Annotated[Path, typer.Option(help="Folder of the prepared data.")]
RawOpt = Annotated[Path, typer.Option(help="Folder of the raw CSVs.")]
FigureOpt = Annotated[Path, typer.Option(help="Where to write the figure (PNG).")]

# Training options: None means "the recipe's value".
RecipeOpt = Annotated[
    Recipe | None, typer.Option(help="Named settings (fast); the options below override them.")
]
ModelOpt = Annotated[ModelName | None, typer.Option(help="Architecture (the recipe's).")]
EpochsOpt = Annotated[int | None, typer.Option(min=1, help="Passes over the training digits.")]
BatchOpt = Annotated[
    int | None, typer.Option(min=1, help="Global batch size, split across torchrun processes.")
]
LrOpt = Annotated[float | None, typer.Option(help="Peak learning rate of the schedule.")]
OptimizerOpt = Annotated[Optimizer | None, typer.Option(help="Optimizer (the recipe's).")]
DecayOpt = Annotated[float | None, typer.Option(help="Weight decay on weights (not BN/bias).")]
ScheduleOpt = Annotated[Schedule | None, typer.Option(help="Learning-rate schedule, per step.")]
SmoothOpt = Annotated[float | None, typer.Option(help="Label smoothing of the loss, 0 to <1.")]
AugmentOpt = Annotated[
    bool | None,
    typer.Option("--augment/--no-augment", help="Random rotation, scale and shift per image."),
]
AugmentStrengthOpt = Annotated[
    float | None,
    typer.Option(help="Scale --augment's rotation (10 deg), zoom and shift (10%): >0 to 3 (1)."),
]
WidthOpt = Annotated[
    int | None,
    typer.Option(
        min=1, max=1024, help="First layer's width, doubling per stage (fastnet 16: 16-32-64)."
    ),
]
TrackOpt = Annotated[
    bool | None,
    typer.Option(
        "--track/--no-track",
        help="Record the run in MLflow (experiments/mlflow.db or MLFLOW_TRACKING_URI); "
        "default on unless PIPELINE_TRACK=0.",
    ),
]
RunOpt = Annotated[
    str | None,
    typer.Option(
        "--run",
        metavar="RUN_ID",
        help="A tracked run's kept checkpoint(s) instead of --checkpoint (see `pipeline runs`).",
    ),
]
ElasticOpt = Annotated[
    bool | None,
    typer.Option("--elastic/--no-elastic", help="Add elastic distortion (2 px) to --augment."),
]
TrainSeedOpt = Annotated[
    int | None,
    typer.Option(min=0, max=MAX_SEED, help="Seed of initialisation, order and augmentation (0)."),
]
DataSourceOpt = Annotated[
    DataSource | None, typer.Option("--data", help="Train from cached tensors or the PNGs.")
]
CompileOpt = Annotated[
    bool | None,
    typer.Option(
        "--compile/--no-compile", help="torch.compile; CUDA graphs on a GPU (the recipe's)."
    ),
]
StepsOpt = Annotated[int | None, typer.Option(min=1, help="Stop after N steps (smoke runs).")]

# Models to use.
CheckpointOpt = Annotated[Path, typer.Option(help="Checkpoint to use.")]
CheckpointsOpt = Annotated[
    list[Path],
    typer.Option(
        "--checkpoint",
        metavar="PATH",
        help="Checkpoint (.pt) or exported graph (.onnx); repeat it (or quote a glob) to "
        "average an ensemble.",
    ),
]
TtaOpt = Annotated[bool, typer.Option(help="Average over the image and four 1-px shifts.")]
