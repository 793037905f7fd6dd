"""`pipeline evaluate`, `predict` and `submit`: what the trained models say, and sending it."""

from pathlib import Path
from typing import Annotated

import typer

from pipeline import config
from pipeline.choices import Device, Split, plain
from pipeline.options import CheckpointOpt, CheckpointsOpt, DeviceOpt, ProcessedOpt, TtaOpt


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
