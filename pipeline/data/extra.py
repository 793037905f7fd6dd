"""Extra training digits with soft targets (`TrainConfig.extra`: pseudo-labels, a teacher's
probabilities): an `.npz` of `images` uint8 [N,(1,)28,28] and `targets` float32 [N,10]. Its
digest is of the arrays, not of the file: numpy's zip records the time it was written, and the
same digits written again must stay the same run."""

import hashlib
import io
from pathlib import Path

import numpy as np

from pipeline import config
from pipeline.common.errors import PipelineError
from pipeline.common.files import atomic_path

MAX_EXTRA = 100_000  # digits: room for the 28,000 test digits several times over
SIDE, CLASSES = config.IMAGE_SIDE, config.N_CLASSES


def extra_digest(images: np.ndarray, targets: np.ndarray) -> str:
    """sha256 of the images [N,1,28,28] and targets: what `TrainConfig.extra_sha256` holds."""
    digest = hashlib.sha256()
    for array in (images.reshape(-1, 1, SIDE, SIDE), targets):
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def save_extra(images: np.ndarray, targets: np.ndarray, path: Path) -> str:
    """Write `path` atomically (or with its set, in `written_together`); returns its digest."""
    buffer, targets = io.BytesIO(), targets.astype(np.float32)
    np.savez(buffer, images=images, targets=targets)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())
    return extra_digest(images, targets)


def _problem(arrays: dict[str, np.ndarray]) -> str | None:
    if set(arrays) != {"images", "targets"}:
        return f"holds {sorted(arrays)}, expected exactly images and targets"
    images, targets = arrays["images"], arrays["targets"]
    if images.dtype != np.uint8 or images.shape[1:] not in ((SIDE, SIDE), (1, SIDE, SIDE)):
        return f"images are {images.dtype} {list(images.shape)}, expected uint8 [N,{SIDE},{SIDE}]"
    if targets.dtype != np.float32 or targets.shape != (len(images), CLASSES):
        return f"targets are {targets.dtype} {list(targets.shape)}, expected float32 [N,{CLASSES}]"
    if len(images) > MAX_EXTRA:
        return f"holds {len(images):,} digits, more than {MAX_EXTRA:,}"
    sums = targets.sum(1, dtype=np.float64)
    if not np.isfinite(targets).all() or (targets < 0).any() or (abs(sums - 1) > 1e-3).any():
        return "targets must be finite, non-negative rows that sum to 1"
    return None


def load_extra(path: Path, sha256: str | None) -> tuple[np.ndarray, np.ndarray]:
    """The extra digits (images [N,1,28,28], targets [N,10]), checked whole and by `sha256`."""
    try:
        with np.load(io.BytesIO(path.read_bytes()), allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
        problem = _problem(arrays)
    except OSError as exc:
        raise PipelineError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except Exception:  # not a zip of .npy arrays, an object array, a damaged member
        problem = "not an .npz of images and targets"
    if problem is None and extra_digest(arrays["images"], arrays["targets"]) != sha256:
        problem = "not the file this run's config names (its digest differs); write it again"
    if problem:
        raise PipelineError(f"{path}: extra training digits: {problem}")
    return arrays["images"].reshape(-1, 1, SIDE, SIDE), arrays["targets"]
