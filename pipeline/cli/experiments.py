"""`pipeline tune`, `distill` and `runs`: searching training options, distilling an ensemble
into one net, and what was tried."""

from pathlib import Path
from typing import Annotated

import typer

from pipeline import config
from pipeline.cli.options import DeviceOpt, ForceOpt, ProcessedOpt, SeedOpt, TrackOpt
from pipeline.cli.training import tracked_as, warn
from pipeline.common.choices import Device, ModelName, RunSort, plain


def tune_command(
    ctx: typer.Context,
    trials: Annotated[int | None, typer.Option(min=1, help="Stop once the study holds N.")] = None,
    timeout: Annotated[float | None, typer.Option(min=1, help="Start no trial after S s.")] = None,
    study: Annotated[str, typer.Option(help="Name; an existing study resumes.")] = "tune",
    model: Annotated[ModelName, typer.Option(help="Architecture to tune.")] = ModelName.fastnet,
    max_epochs: Annotated[int, typer.Option(min=1, help="Most epochs a trial may take.")] = 4,
    seed: SeedOpt = 0,
    device: DeviceOpt = Device.auto,
    processed_dir: ProcessedOpt = config.PROCESSED_DIR,
    work_dir: Annotated[Path, typer.Option(help="The trials' checkpoints.")] = config.TUNE_DIR,
    storage: Annotated[
        str | None,
        typer.Option(
            help="sqlite:///<file> (experiments/optuna.db), a database URL every worker reaches "
            "(postgresql+psycopg2://...) or journal:///<file on a shared disk>."
        ),
    ] = None,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes here.")] = 1,
    track: TrackOpt = None,
) -> None:
    """Search lr, weight decay, epochs, width, batch size and augmentation with Optuna (TPE),
    pruning trials that fall behind per epoch; print the best as a `pipeline train` command.
    The same command on other machines, with one --storage, adds their trials to the study."""
    import os

    from pipeline.common.errors import PipelineError
    from pipeline.experiments import tracking
    from pipeline.experiments.tune import WORKER_ENV, SearchSpace, tune

    if trials is None and timeout is None:
        raise PipelineError("give --trials N, --timeout S or both")
    space = SearchSpace(model=plain(model), epochs=(1, max_epochs))
    params = {"trials": trials, "timeout": timeout, "study": study, "seed": seed}
    helpers = (same_command(ctx, without="workers"),) * (workers - 1)
    with tracking.command_run(tracking.wanted(track), study, "tune", params, warn=warn) as run:
        result = tune(
            study, trials, timeout, space, processed_dir, work_dir, storage, seed=seed,
            device=plain(device), parent=run, log=typer.echo, helpers=helpers,
        )  # fmt: skip
    if os.environ.get(WORKER_ENV):  # the worker that started this one says what was found
        return
    counts = ", ".join(f"{n} {state.lower()}" for state, n in sorted(result.states.items()))
    typer.echo(
        f"tune: study {result.study} ({counts}); best trial {result.best_trial} "
        f"val_acc {result.best_value:.2%}"
    )
    if result.timed_out_after is not None:
        after = f"{result.timed_out_after} trial(s)"
        typer.echo(f"tune: --timeout {timeout:g} s ended the search after {after}; run it again")
    if said := tracked_as(run):
        typer.echo(f"tune: {said}; `--run` on it means its best trial's model")
    if result.running:
        typer.echo(
            f"tune: {result.running} trial(s) still running on other workers; the last one to "
            "end prints the best trial's command"
        )
    else:
        typer.echo(f"reproduce: {result.command}")


def same_command(ctx: typer.Context, without: str) -> list[str]:
    """This command line as given, less option `without`: another worker's."""
    import sys

    words = [sys.executable, "-m", "pipeline", ctx.info_name]
    for param in ctx.command.params:
        value = ctx.params[param.name]
        if param.name == without or value is None:
            continue
        if param.is_flag:
            words.append(param.opts[0] if value else param.secondary_opts[0])
        else:
            words += [param.opts[0], str(plain(value))]
    return words


def runs_command(
    sort: Annotated[RunSort, typer.Option(help="Newest or best first.")] = RunSort.start,
    limit: Annotated[int | None, typer.Option(min=1, help="Show at most N runs.")] = None,
) -> None:
    """The tracked runs: id, command, model, recipe, epochs, val accuracy, training seconds,
    start, status, parent run and kept checkpoint (`--run RUN_ID` takes the id or 6+ chars)."""
    from pipeline.experiments.runs import format_table, list_runs

    typer.echo(format_table(list_runs(plain(sort), limit)))


def distill_command(
    teachers: Annotated[str, typer.Option(help="Members' glob.")] = str(
        config.members_glob("best")
    ),
    out: Annotated[Path, typer.Option(help="The student's checkpoint.")] = config.DISTILLED_PATH,
    fold: Annotated[int, typer.Option(min=0, help="Held out: its teachers teach, it scores.")] = 0,
    epochs: Annotated[int | None, typer.Option(min=1, help="The student's (6).")] = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = Device.auto,
    processed_dir: ProcessedOpt = config.PROCESSED_DIR,
    force: ForceOpt = False,
) -> None:
    """Distil an ensemble into one FastNet, scored on a fold no teacher saw.

    The teachers are the bagged members that hold out --fold; the student trains on the
    labelled digits outside it and on the test digits with the teachers' probabilities."""
    from tqdm import tqdm

    from pipeline.common.files import expand_checkpoints
    from pipeline.experiments.distill import distill, format_distilled

    paths = expand_checkpoints([Path(teachers)])
    result = distill(
        paths, out, fold, epochs, seed, plain(device), processed_dir, tqdm.write, force
    )
    typer.echo(format_distilled(result))
