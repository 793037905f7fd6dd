"""`pipeline train`, `ensemble` and `crossval`: the training commands, whose training options
are TrainConfig's settings (`options.with_settings`)."""

import functools
import time
from pathlib import Path
from typing import Annotated

import typer

from pipeline import config
from pipeline.cli.errors import error_line
from pipeline.cli.options import ForceOpt, ProcessedOpt, RawOpt, RecipeOpt, TrackOpt, with_settings
from pipeline.common.choices import Recipe, plain
from pipeline.training.recipes import Overrides

warn = functools.partial(typer.echo, err=True)


def tracked_as(run) -> str | None:
    """`tracked as run <id>` of a tracked run or its id (None with tracking off)."""
    run_id = run if run is None or isinstance(run, str) else run.id()
    return f"tracked as run {run_id} (`pipeline runs` lists it)" if run_id else None


@with_settings
def train_command(
    recipe: RecipeOpt = None,
    *,
    settings: Overrides,
    processed_dir: ProcessedOpt = config.PROCESSED_DIR,
    out: Annotated[Path | None, typer.Option(help="Checkpoint (models/<model>.pt).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from <out>.last.pt.")] = False,
    force: ForceOpt = False,
    track: TrackOpt = None,
) -> None:
    """Train one model; keep the best (by validation accuracy) and the last, resumable state.
    Under `torchrun --nproc-per-node N -m pipeline train` it trains one model with DDP."""
    from tqdm import tqdm

    from pipeline.experiments import tracking
    from pipeline.training.distributed import ranks_from_env
    from pipeline.training.run_state import TrainingInterrupted, run_config
    from pipeline.training.train import train

    cfg, out = run_config(plain(recipe), settings, out, resume)
    params = tracking.train_params(cfg) | ({"width": w} if (w := settings.get("width")) else {})
    tags = {"out": out.resolve(), "resumed": resume, **tracking.data_tags(processed_dir)}
    is_main = ranks_from_env().is_main
    on = tracking.wanted(track) and is_main
    try:
        with tracking.command_run(on, out.stem, "train", params, tags, warn) as run:
            result = train(
                cfg, processed_dir, out, resume, tqdm.write, force=force, callbacks=[run]
            )
    except TrainingInterrupted as stopped:
        hint = f"continue with `pipeline train --resume --out {out}`"
        raise error_line(f"interrupted: {stopped}; {hint}", stopped.exit_code) from None
    if not is_main:
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
        typer.echo(
            f"train: curves {result.curves}, metrics {config.metrics_path(result.checkpoint)}"
        )
    if (said := tracked_as(run)) and not result.skipped:
        typer.echo(f"train: {said}")


MembersOpt = Annotated[
    int | None, typer.Option(min=1, help="Members: best's table (cycled), else 5 seeds.")
]


@with_settings
def ensemble_command(
    members: MembersOpt = None,
    recipe: RecipeOpt = Recipe.best,
    *,
    settings: Overrides,
    processed_dir: ProcessedOpt = config.PROCESSED_DIR,
    out_dir: Annotated[Path, typer.Option(help="Folder for <recipe>-<k>.pt.")] = config.MODELS_DIR,
    jobs: Annotated[
        int | None, typer.Option(min=1, help="Members at once (per core/GPU).")
    ] = None,
    track: TrackOpt = None,
    budget: Annotated[
        float | None,
        typer.Option(min=0.1, help="Minutes for it and predict; on a CPU it sizes the epochs."),
    ] = None,
    reserve: Annotated[float, typer.Option(min=0.0, help="Minutes kept after predict.")] = 0.0,
    pseudo_label: Annotated[bool, typer.Option(help="Round 2 adds sure test digits.")] = False,
    pseudo_threshold: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Top probability a pseudo-label needs.")
    ] = 0.99,
) -> None:
    """Train an ensemble. `best`: the device's differing members, each on its own bag of all
    labelled digits, then the out-of-bag accuracy. Other recipes: K seeds. The members spread
    over the GPUs, CPU cores or torchrun's processes; tracked as one run unless --no-track.
    Ctrl-C keeps the finished members; the same command continues from there. --pseudo-label:
    round 1 (in <out-dir>/round1/) labels the test digits it is sure of for round 2.
    """
    from tqdm import tqdm

    from pipeline.experiments.ensemble import member_configs, run_ensemble
    from pipeline.experiments.pseudo import pseudo_label_rounds

    start = time.perf_counter()
    configs = member_configs(plain(recipe), members, bagged=True, **settings)
    fit, paces = (lambda configs, *_: (configs, None)), []
    if budget is not None:
        from pipeline.experiments.budget import Budget

        sized = members is None and "epochs" not in settings
        plan = Budget(budget, reserve, processed_dir, jobs, sized, typer.echo, start)
        fit, paces = plan.fit, plan.paces
    if pseudo_label:
        summary, run = pseudo_label_rounds(
            configs, processed_dir, out_dir, jobs, track, tqdm.write, warn, pseudo_threshold, fit
        )
    else:
        configs, pace = fit(configs, out_dir)
        summary, run = run_ensemble(
            configs, processed_dir, out_dir, jobs, track, tqdm.write, warn, pace
        )
    if summary:
        typer.echo(summary + (f"\n{paces[-1].closing()}" if paces else ""))
        if said := tracked_as(run):
            typer.echo(f"ensemble: {said}; `--run` on it means all its members")


@with_settings
def crossval_command(
    splits: Annotated[int, typer.Option(min=1, help="Validation splits (seeds 0..N-1).")] = 3,
    members: MembersOpt = None,
    recipe: RecipeOpt = Recipe.best,
    *,
    settings: Overrides,
    raw_dir: RawOpt = config.RAW_DIR,
    work_dir: Annotated[Path, typer.Option(help="Splits' members.")] = config.CROSSVAL_MODELS_DIR,
    processed_dir: Annotated[Path, typer.Option(help="Splits' data.")] = config.CROSSVAL_DATA_DIR,
    track: TrackOpt = None,
) -> None:
    """Score a recipe's ensemble (alone, averaged, with TTA) as mean and spread over splits;
    tracked as one run with every member a child run unless --no-track."""
    from tqdm import tqdm

    from pipeline.experiments import tracking
    from pipeline.experiments.crossval import cross_validate, format_summary
    from pipeline.experiments.ensemble import member_configs

    # best: the differing members, each on the split's train digits (not bagged)
    configs = member_configs(plain(recipe), members, bagged=False, **settings)
    result = cross_validate(
        configs, len(configs), list(range(splits)), raw_dir, work_dir, processed_dir,
        log=tqdm.write, track=tracking.wanted(track), warn=warn,
    )  # fmt: skip
    typer.echo(format_summary(result))
    if said := tracked_as(result.run_id):
        typer.echo(f"crossval: {said}")
