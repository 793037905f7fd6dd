"""The command line's named choices as StrEnums (typer shows and checks them; the stages compare
plain strings) and the seed range, in a module light enough for an instant `--help`."""

from enum import StrEnum

from pipeline.common.errors import PipelineError

MAX_SEED = 2**32 - 1  # numpy's and scikit-learn's seeds are 32-bit unsigned


def check_seed(seed: int, option: str = "--seed") -> int:
    if not 0 <= seed <= MAX_SEED:
        raise PipelineError(f"{option} {seed}: expected an integer from 0 to {MAX_SEED}")
    return seed


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
