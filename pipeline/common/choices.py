"""The named choices of the command line and the seed range, in one light module.

Each is a `StrEnum`, so typer shows `<a|b|c>` in `--help` and rejects other values as a usage
error, and the stages compare them with plain strings. Importing this module costs nothing,
which keeps `pipeline --help` instant (torch loads only inside the command that needs it).
"""

from enum import StrEnum

from pipeline.common.errors import PipelineError

MAX_SEED = 2**32 - 1  # numpy's and scikit-learn's seeds are 32-bit unsigned


def check_seed(seed: int, option: str = "--seed") -> int:
    """`seed` if numpy can seed with it (0..2**32-1), else a one-line PipelineError.

    The one definition of a valid seed: typer's bounds on --seed use MAX_SEED too.
    """
    if not 0 <= seed <= MAX_SEED:
        raise PipelineError(f"{option} {seed}: expected an integer from 0 to {MAX_SEED}")
    return seed


class ModelName(StrEnum):
    cnn = "cnn"
    lenet = "lenet"
    mlp = "mlp"
    fastnet = "fastnet"
    deepcnn = "deepcnn"
    nopool = "nopool"


class Recipe(StrEnum):
    fast = "fast"
    best = "best"


class Optimizer(StrEnum):
    sgd = "sgd"
    adam = "adam"
    adamw = "adamw"


class Schedule(StrEnum):
    onecycle = "onecycle"
    cosine = "cosine"
    constant = "constant"


class DataSource(StrEnum):
    """What training reads: the cached uint8 tensors, or the PNG folders."""

    tensors = "tensors"
    images = "images"


class CacheFormat(StrEnum):
    """What `prepare` writes."""

    tensors = "tensors"
    images = "images"
    both = "both"


class Device(StrEnum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    mps = "mps"


class RawSource(StrEnum):
    """Where `download` takes the raw CSVs from."""

    auto = "auto"
    kaggle = "kaggle"
    zip = "zip"
    sample = "sample"


class Split(StrEnum):
    """The labelled splits `evaluate` can score (test has labels only in the offline sample)."""

    train = "train"
    val = "val"
    test = "test"


class RunSort(StrEnum):
    """How `pipeline runs` orders the table."""

    start = "start"  # newest first
    val_acc = "val_acc"  # best first


def plain(value):
    """An enum member as its plain value: checkpoints must hold plain `str` for weights_only."""
    return value.value if isinstance(value, StrEnum) else value
