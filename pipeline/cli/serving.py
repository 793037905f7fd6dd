"""`pipeline serve`, `export` and `bench`: the page and API, the ONNX file, the speed figures."""

from pathlib import Path
from typing import Annotated

import typer

from pipeline import config
from pipeline.cli.options import (
    CheckpointsOpt,
    CompileOpt,
    DeviceOpt,
    ProcessedOpt,
    RawOpt,
    RunOpt,
    chosen_names,
    positive_ints,
)
from pipeline.cli.results import chosen_checkpoints
from pipeline.common.choices import Device, ModelName, plain


def serve_command(
    checkpoints: CheckpointsOpt = [config.DEFAULT_CHECKPOINT],  # noqa: B006
    host: Annotated[str, typer.Option(help="Other machines need 0.0.0.0.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="0 picks a free one.")] = 8000,
    device: DeviceOpt = Device.auto,
    run: RunOpt = None,
) -> None:
    """Serve a draw-a-digit page and a JSON API on the checkpoint(s) until Ctrl-C."""
    from pipeline.serve.server import serve

    serve(chosen_checkpoints(checkpoints, run, "serve"), host, port, plain(device))


def export_command(
    checkpoints: CheckpointsOpt = [config.DEFAULT_CHECKPOINT],  # noqa: B006
    out: Annotated[Path | None, typer.Option(help="ONNX file (models/<checkpoint>.onnx).")] = None,
    processed_dir: ProcessedOpt = config.PROCESSED_DIR,
) -> None:
    """Export the checkpoint(s) as one ONNX graph, checked against torch before it is written."""
    from pipeline.inference.export import default_out, export_onnx

    result = export_onnx(checkpoints, out or default_out(checkpoints), processed_dir)
    typer.echo(
        f"export: {result.members} model(s) -> {result.path} ({result.bytes:,} bytes); "
        f"ONNX Runtime matches torch on {result.digits_compared:,} validation digits "
        f"(max |dp| {result.max_abs_diff:.1e})"
    )


def bench_command(
    raw_dir: RawOpt = config.RAW_DIR,
    processed_dir: ProcessedOpt = config.PROCESSED_DIR,
    device: DeviceOpt = Device.auto,
    models: Annotated[str, typer.Option(help="Models to time.")] = "fastnet,cnn,lenet,mlp,deepcnn",
    steps: Annotated[int, typer.Option(min=5, help="Timed steps per loop.")] = 40,
    batch_size: Annotated[int, typer.Option(min=1, help="Batch size of our loop.")] = 128,
    fast_recipe: Annotated[bool, typer.Option(help="Time the fast recipe to 99%.")] = True,
    ddp: Annotated[bool, typer.Option(help="Time DDP and 2-process ensembles.")] = True,
    busy_core: Annotated[bool, typer.Option(help="Time CPU training beside a busy core.")] = True,
    compile_model: CompileOpt = None,
    best_batch_sizes: Annotated[str, typer.Option(help="Batch sizes for the best net.")] = "",
    best_net: Annotated[bool, typer.Option(help="Time the best recipe's net.")] = True,
    end_to_end: Annotated[
        bool,
        typer.Option(
            help="Time prepare, train (cnn, 1 epoch) and predict as processes against the "
            "tutorial's script and its lean version."
        ),
    ] = True,
    serve: Annotated[
        bool,
        typer.Option(help="Load-test `pipeline serve` of --serve-checkpoint, then ONNX vs torch."),
    ] = True,
    serve_checkpoint: Annotated[
        Path, typer.Option(help="The load test's model.")
    ] = config.DEFAULT_CHECKPOINT,
) -> None:
    """Print speed figures, each against a baseline measured in the same run."""
    from pipeline.bench.report import format_report
    from pipeline.bench.run import BenchOptions, run_bench

    options = BenchOptions(
        raw_dir=raw_dir,
        processed_dir=processed_dir,
        device=plain(device),
        models=tuple(chosen_names(models, "--models", list(ModelName))),
        steps=steps,
        batch_size=batch_size,
        best_net=best_net,
        best_batch_sizes=tuple(
            positive_ints(best_batch_sizes, "--best-batch-sizes", allow_empty=True)
        ),
        compile_model=compile_model,
        fast_recipe=fast_recipe,
        ddp=ddp,
        busy_core=busy_core,
        end_to_end=end_to_end,
        serve_checkpoint=serve_checkpoint if serve else None,
    )
    report = run_bench(options, log=lambda message: typer.echo(message, err=True))
    typer.echo(format_report(report))
