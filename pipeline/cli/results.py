"""`pipeline evaluate`, `predict` and `submit`: what the trained models say, and sending it."""

from pathlib import Path
from typing import Annotated

import typer

from pipeline import config
from pipeline.cli.data import GET_REAL_DATA
from pipeline.cli.options import CheckpointsOpt, DeviceOpt, ProcessedOpt, RunOpt, TrackOpt, TtaOpt
from pipeline.common.choices import Device, Split, plain
from pipeline.common.errors import PipelineError
from pipeline.common.files import expand_checkpoints


def chosen_checkpoints(
    checkpoints: list[Path], run_id: str | None, command: str, one: bool = False
) -> list[Path]:
    """`--run RUN_ID`'s checkpoints (one model only where `one`), else --checkpoint's, expanded."""
    from pipeline.experiments.runs import run_checkpoints

    if run_id is None:
        return expand_checkpoints(checkpoints, log=lambda line: typer.echo(f"{command}: {line}"))
    paths = run_checkpoints(run_id)
    if one and len(paths) > 1:
        raise PipelineError(
            f"--run {run_id}: is an ensemble of {len(paths)} models; this command takes one "
            "(give one member's run id, as `pipeline runs` lists them)"
        )
    return paths


def evaluate_command(
    checkpoint: Annotated[
        Path, typer.Option(help="Checkpoint to use.")
    ] = config.DEFAULT_CHECKPOINT,
    processed_dir: ProcessedOpt = config.PROCESSED_DIR,
    split: Annotated[Split, typer.Option(help="test: the offline sample's only.")] = Split.val,
    device: DeviceOpt = Device.auto,
    tta: TtaOpt = False,
    figures_dir: Annotated[Path, typer.Option(help="Folder for the PNGs.")] = config.FIGURES_DIR,
    submission: Annotated[
        Path | None, typer.Option(help="Score it against the offline sample's answers.")
    ] = None,
    run: RunOpt = None,
) -> None:
    """Validation accuracy, per-class report, confusion-matrix and mistakes PNGs."""
    from pipeline.inference.evaluate import evaluate, score_submission

    if run is not None:
        (checkpoint,) = chosen_checkpoints([], run, "evaluate", one=True)
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


def predict_command(
    checkpoints: CheckpointsOpt = [config.DEFAULT_CHECKPOINT],  # noqa: B006
    processed_dir: ProcessedOpt = config.PROCESSED_DIR,
    out: Annotated[Path, typer.Option(help="Submission CSV.")] = config.DEFAULT_SUBMISSION,
    batch_size: Annotated[int, typer.Option(min=1, help="Digits per forward pass.")] = 256,
    device: DeviceOpt = Device.auto,
    tta: TtaOpt = False,
    run: RunOpt = None,
) -> None:
    """Label test.csv's digits and write ImageId,Label (probabilities averaged over models),
    and beside it `<name>.source.json`: which checkpoints wrote it, for `submit` to credit."""
    from pipeline.inference.predict import predict

    paths = chosen_checkpoints(checkpoints, run, "predict")
    result = predict(paths, processed_dir, out, batch_size, plain(device), tta)
    typer.echo(
        f"predict: {result.rows:,} labels from {len(paths)} model(s) in {result.seconds:.2f} s"
        f" -> {result.path}"
    )
    if result.from_sample:  # the last line `make all` prints, after pip's and torch's output
        sample = "WARNING: this submission is from 5,000 sample digits, not Kaggle's"
        typer.echo(f"{sample}: for smoke runs only. {GET_REAL_DATA}", err=True)


def submit_command(
    file: Annotated[Path, typer.Option(help="Submission CSV.")] = config.DEFAULT_SUBMISSION,
    message: Annotated[str, typer.Option(help="Submission description.")] = "pipeline submission",
    competition: Annotated[str, typer.Option(help="Kaggle's slug.")] = config.COMPETITION,
    wait: Annotated[float, typer.Option(min=0, max=600, help="Seconds for the score.")] = 60,
    track: TrackOpt = None,
) -> None:
    """Check the file against Kaggle's rules, submit it through the kaggle package, wait a
    little for the public score and record it on the tracked runs whose models made the file."""
    from pipeline.experiments import tracking
    from pipeline.experiments.submit import submit

    done = submit(file, message, competition, wait=wait, track=tracking.wanted(track))
    typer.echo(f"submit: {done.reply}.")
    see = f"see `kaggle competitions submissions {competition}`"
    if done.status == "complete":
        typer.echo(f"submit: public score {done.public_score or '(not published)'}")
    elif done.status == "pending":
        typer.echo(f"submit: not scored within {wait:g} s; {see}")
    else:
        typer.echo(f"submit: {done.status}; {see}")
    if done.runs:
        typer.echo(f"submit: recorded on run(s) {', '.join(done.runs)}")
    if done.warning:
        typer.echo(f"warning: {done.warning}", err=True)
