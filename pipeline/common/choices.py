"""The named choices of the command line and the seed range, in one light module.

Each is a `StrEnum` (typer shows `<a|b|c>` in `--help` and refuses other values; the stages
compare plain strings); importing it costs nothing, so `pipeline --help` stays instant.
"""

from enum import StrEnum

from pipeline.common.errors import PipelineError

MAX_SEED = 2**32 - 1  # numpy's and scikit-learn's seeds are 32-bit unsigned


def check_seed(seed: int, option: str = "--seed") -> int:
    """`seed` if numpy can seed with it, else a one-line PipelineError."""
    if not 0 <= seed <= MAX_SEED:
        raise PipelineError(f"{option} {seed}: expected an integer from 0 to {MAX_SEED}")
    return seed


# StrEnum's functional form: each member's value is its name.
ModelName = StrEnum("ModelName", "cnn lenet mlp fastnet deepcnn nopool")
Recipe = StrEnum("Recipe", "fast best")
Optimizer = StrEnum("Optimizer", "sgd adam adamw")
Schedule = StrEnum("Schedule", "onecycle cosine constant")
DataSource = StrEnum("DataSource", "tensors images")  # what training reads: tensors or PNGs
CacheFormat = StrEnum("CacheFormat", "tensors images both")  # what `prepare` writes
Device = StrEnum("Device", "auto cpu cuda mps")
RawSource = StrEnum("RawSource", "auto kaggle zip sample")  # where `download` takes the CSVs
Split = StrEnum("Split", "train val test")  # what `evaluate` scores (test: the sample's only)
RunSort = StrEnum("RunSort", "start val_acc")  # `pipeline runs`: newest first or best first


def plain(value):
    """An enum member as its plain value: checkpoints must hold plain `str` for weights_only."""
    return value.value if isinstance(value, StrEnum) else value
