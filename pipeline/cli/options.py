"""Command-line option types shared by several commands, and the text-list parsers; choices are
`pipeline.common.choices`' StrEnums, which typer shows in `--help` and checks itself."""

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, get_args

import typer

from pipeline.common.choices import MAX_SEED, Device, Recipe, plain
from pipeline.common.errors import PipelineError
from pipeline.training.recipes import CLI_SETTINGS


def positive_ints(text: str, option: str, allow_empty: bool = False) -> list[int]:
    """A comma-separated option such as `16,64,256` as ints, or a one-line error."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not (parts or allow_empty) or not all(p.isdecimal() and int(p) > 0 for p in parts):
        raise PipelineError(f"{option} {text}: expected positive integers such as 16,64,256")
    return [int(part) for part in parts]


def chosen_names(text: str, option: str, choices) -> list[str]:
    """`--models fastnet,cnn` as known names, lower-cased, repeats dropped; or a one-line error."""
    names = list(dict.fromkeys(name.strip().lower() for name in text.split(",") if name.strip()))
    if not names or any(name not in choices for name in names):
        expected = f"expected a comma-separated subset of {', '.join(choices)}"
        raise PipelineError(f"{option} {text}: {expected}")
    return names


SeedOpt = Annotated[int, typer.Option(min=0, max=MAX_SEED, help="Seed of every random draw.")]
DeviceOpt = Annotated[Device, typer.Option(help="auto picks CUDA, then Apple MPS, then the CPU.")]
ProcessedOpt = Annotated[Path, typer.Option(help="Folder of the prepared data.")]
RawOpt = Annotated[Path, typer.Option(help="Folder of the raw CSVs.")]
FigureOpt = Annotated[Path, typer.Option(help="Where to write the figure (PNG).")]

# Training options: None means "the recipe's value".
RecipeOpt = Annotated[
    Recipe | None, typer.Option(help="Named settings (fast); the options below override them.")
]
WidthOpt = Annotated[
    int | None,
    typer.Option(min=1, max=1024, help="First width, doubled per stage (16: 16-32-64)."),
]


def setting_option(name: str) -> Any:
    """The option of TrainConfig's setting `name`, as its field declares it."""
    (f,) = [f for f in CLI_SETTINGS if f.name == name]
    kind = f.metadata.get("choices") or next(
        t for t in get_args(f.type) or [f.type] if t is not type(None)
    )
    flag = "--" + f.metadata.get("name", f.name).replace("_", "-")
    flags = f"{flag}/--no-{flag[2:]}" if kind is bool else flag
    limits = {k: f.metadata[k] for k in ("min", "max") if k in f.metadata}
    return Annotated[kind | None, typer.Option(flags, help=f.metadata["help"], **limits)]


def with_settings(command: Callable) -> Callable:
    """`command` takes TrainConfig's command-line settings and --width as options where its
    `settings` parameter stands (in the signature typer reads), and gets one `Overrides`."""
    keyword = inspect.Parameter.KEYWORD_ONLY
    added = [inspect.Parameter(f.name, keyword, default=None, annotation=setting_option(f.name))
             for f in CLI_SETTINGS]  # fmt: skip
    added.append(inspect.Parameter("width", keyword, default=None, annotation=WidthOpt))

    def run(**options: Any) -> Any:
        given = {p.name: plain(options.pop(p.name)) for p in added}
        return command(settings={k: v for k, v in given.items() if v is not None}, **options)

    params = []
    for param in inspect.signature(command).parameters.values():
        params += added if param.name == "settings" else [param.replace(kind=keyword)]
    run.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    run.__name__, run.__doc__ = command.__name__, command.__doc__
    return run


CompileOpt = setting_option("compile")
TrackOpt = Annotated[
    bool | None,
    typer.Option(
        help="Record in MLflow (MLFLOW_TRACKING_URI or experiments/); on unless PIPELINE_TRACK=0."
    ),
]
RunOpt = Annotated[
    str | None,
    typer.Option(metavar="RUN_ID", help="A tracked run's checkpoint(s) (see `pipeline runs`)."),
]
ForceOpt = Annotated[bool, typer.Option(help="Redo it even if its outputs are current.")]
CheckpointsOpt = Annotated[
    list[Path],
    typer.Option(
        "--checkpoint",
        metavar="PATH",
        help="Checkpoint (.pt) or graph (.onnx); repeat it or quote a glob for an ensemble.",
    ),
]
TtaOpt = Annotated[bool, typer.Option(help="Average over the image and four 1-px shifts.")]
