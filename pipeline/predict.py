"""Stage 5: label the test digits with one checkpoint or an ensemble; write submission.csv.

Several checkpoints average their softmax probabilities; `--tta` also averages over a few
small fixed shifts of each image. The submission is checked against Kaggle's rules before it
is written (atomically), with the same checks `submit` runs.
"""

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from pipeline import augment, config
from pipeline.checkpoints import load_checkpoint
from pipeline.datasets import TensorDigits, index_batches, standardize, to_unit
from pipeline.device import resolve_device
from pipeline.errors import PipelineError
from pipeline.files import atomic_path
from pipeline.prepare import load_split

# Test-time views: identity and one-pixel shifts (in grid_sample's [-1, 1] coordinates).
PIXEL = 2 / config.IMAGE_SIDE
TTA_SHIFTS = [(0.0, 0.0), (PIXEL, 0.0), (-PIXEL, 0.0), (0.0, PIXEL), (0.0, -PIXEL)]


def tta_views(x: torch.Tensor) -> list[torch.Tensor]:
    """The image batch under each TTA shift; x is float in [0, 1]."""
    views = []
    for dx, dy in TTA_SHIFTS:
        theta = torch.tensor([[1.0, 0.0, dx], [0.0, 1.0, dy]], device=x.device)
        views.append(augment.apply(x, augment.AugmentDraw(theta.expand(len(x), 2, 3), None)))
    return views


def inference_model(model: nn.Module) -> nn.Module:
    """An eval-mode copy with BatchNorm folded into the convolutions, in channels_last.

    Falls back to the model itself if torch.fx cannot trace it.
    """
    from torch.fx.experimental.optimization import fuse

    model = model.eval()
    try:
        model = fuse(model)
    except Exception:
        pass
    # Checkpoints load contiguous; with a 1-channel input only channels_last weights make the
    # whole net run channels_last, where CPU pooling is several times faster.
    return model.to(memory_format=torch.channels_last)


@torch.inference_mode()
def predict_logits(
    model: nn.Module, data: TensorDigits, batch_size: int = 256, tta: bool = False
) -> torch.Tensor:
    """Logits [N,10] in dataset order (mean logits over views with `tta`), on model's device."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    outputs = []
    for idx in index_batches(len(data), batch_size):
        images, _ = data.get_batch(idx)
        x = to_unit(images.to(device, non_blocking=True))
        views = tta_views(x) if tta else [x]
        with torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
            logits = [
                model(standardize(v).contiguous(memory_format=torch.channels_last)) for v in views
            ]
        outputs.append(torch.stack(logits).float().mean(0))
    model.train(was_training)
    return torch.cat(outputs)


def ensemble_probabilities(
    models: list[nn.Module], data: TensorDigits, batch_size: int = 256, tta: bool = False
) -> torch.Tensor:
    """Mean of each model's softmax probabilities: [N, 10] on the CPU."""
    probs = [predict_logits(m, data, batch_size, tta).softmax(1).cpu() for m in models]
    return torch.stack(probs).mean(0)


def check_submission(frame: pd.DataFrame, n_rows: int, name: str) -> None:
    """Kaggle's rules for this competition: exact header, ids 1..n once each, digit labels."""
    if list(frame.columns) != config.SUBMISSION_HEADER:
        raise PipelineError(
            f"{name}: header must be ImageId,Label, found {','.join(map(str, frame.columns))}"
        )
    if len(frame) != n_rows:
        raise PipelineError(f"{name}: has {len(frame)} rows, Kaggle expects {n_rows}")
    for column in config.SUBMISSION_HEADER:
        if frame[column].isna().any() or not pd.api.types.is_integer_dtype(frame[column]):
            raise PipelineError(f"{name}: column {column} must hold integers only")
    if not np.array_equal(np.sort(frame["ImageId"].to_numpy()), np.arange(1, n_rows + 1)):
        raise PipelineError(f"{name}: ImageId must be 1..{n_rows}, each exactly once")
    if not frame["Label"].between(0, 9).all():
        raise PipelineError(f"{name}: Label must be a digit 0-9")


def read_submission(path: Path, n_rows: int = config.KAGGLE_TEST_ROWS) -> pd.DataFrame:
    """Read and check a submission file; raises a one-line PipelineError on any problem."""
    if not path.is_file():
        raise PipelineError(f"{path}: no such file (run `pipeline predict` first)")
    try:
        frame = pd.read_csv(path)
    except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        raise PipelineError(f"{path}: not a readable CSV file") from None
    check_submission(frame, n_rows, str(path))
    return frame


def write_submission(labels: torch.Tensor, image_ids: torch.Tensor, path: Path) -> pd.DataFrame:
    frame = pd.DataFrame({"ImageId": image_ids.numpy(), "Label": labels.numpy()})
    check_submission(frame, len(image_ids), str(path))
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    return frame


@dataclass(frozen=True)
class PredictResult:
    path: Path
    rows: int
    label_counts: dict[int, int]
    seconds: float


def predict(
    checkpoints: list[Path],
    processed_dir: Path = config.PROCESSED_DIR,
    out: Path = config.DEFAULT_SUBMISSION,
    batch_size: int = 256,
    device: str = "auto",
    tta: bool = False,
) -> PredictResult:
    """Load the checkpoints, label processed test.pt, write the submission CSV."""
    if not checkpoints:
        raise PipelineError("give at least one --checkpoint")
    target = resolve_device(device)
    models = [inference_model(load_checkpoint(path, target).model) for path in checkpoints]
    split = load_split(processed_dir, "test")
    start = time.perf_counter()
    data = TensorDigits.from_split(split).to(target)
    labels = ensemble_probabilities(models, data, batch_size, tta).argmax(1)
    seconds = time.perf_counter() - start
    write_submission(labels, split.ids, out)
    counts = torch.bincount(labels, minlength=config.N_CLASSES).tolist()
    return PredictResult(out, len(labels), dict(enumerate(counts)), seconds)
