"""Checkpoints that rebuild themselves: weights plus the primitive metadata to use them,
tensors and plain values only (`weights_only=True` loads them), written atomically."""

import io
import pickle
import platform
import zipfile
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline import config
from pipeline.common.errors import PipelineError
from pipeline.common.files import atomic_path, write_json, written_together
from pipeline.training.calibration import temperature_of
from pipeline.training.distributed import first_line
from pipeline.training.models import MODELS, arch_args_problem, build_model

FORMAT = "digit-recognizer-checkpoint"
VERSION = 1


@dataclass
class Checkpoint:
    model: nn.Module  # in eval mode, on the requested device
    meta: dict[str, Any]  # model, arch_args, normalization, train_config, val_accuracy, ...


def save_checkpoint(
    path: Path,
    model: nn.Module,
    meta: dict[str, Any],
    training_state: dict[str, Any] | None = None,
    sidecar: bool = True,
) -> None:
    """Write `path` atomically (and its JSON twin); `meta` must hold `model` and `arch_args`."""
    try:
        torchvision_version = version("torchvision")  # importing it would cost ~1.5 s
    except PackageNotFoundError:
        torchvision_version = "absent"
    meta = {
        **meta,
        "format": FORMAT,
        "version": VERSION,
        "normalization": {"mean": config.PIXEL_MEAN, "std": config.PIXEL_STD},
        "versions": {
            "python": platform.python_version(),
            "torch": str(torch.__version__),  # a str subclass weights_only refuses
            "torchvision": torchvision_version,
        },
    }
    payload = {"meta": meta, "state_dict": model.state_dict()}
    if training_state is not None:
        payload["training_state"] = training_state
    buffer = io.BytesIO()  # torch's own file writer turns a full disk into a RuntimeError
    torch.save(payload, buffer)
    with written_together():  # the weights and their sidecar: both new or both old
        with atomic_path(path) as tmp:
            tmp.write_bytes(buffer.getbuffer())
        if sidecar:
            write_json(meta, config.sidecar_path(path))


def read_payload(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Load and check a checkpoint file whole, with a one-line error for anything else."""
    if not path.is_file():
        raise PipelineError(f"{path}: no such checkpoint (run `pipeline train` first)")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PipelineError(f"{path}: cannot be read ({exc.strerror})") from None
    try:  # torch.load does not check the records' CRC-32
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            failed = archive.testzip()
    except (zipfile.BadZipFile, EOFError, ValueError, OSError, NotImplementedError):
        failed = None  # not a zip at all: torch.load says what it is
    if failed:
        raise PipelineError(
            f"{path}: not a readable checkpoint (corrupt: {failed} fails its CRC check, so "
            "bytes changed after it was written)"
        )
    try:
        payload = torch.load(io.BytesIO(data), map_location=device, weights_only=True)
    except Exception as exc:
        if isinstance(exc, pickle.UnpicklingError) and "unsupported global" in str(exc).lower():
            raise PipelineError(
                f"{path}: refused for unsafe content: it holds Python objects beyond tensors "
                "and plain values, and only weights_only=True files are loaded"
            ) from None
        raise PipelineError(
            f"{path}: not a readable checkpoint (truncated or corrupt: {type(exc).__name__})"
        ) from None
    meta = payload.get("meta") if isinstance(payload, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise PipelineError(f"{path}: not a checkpoint written by `pipeline train`")
    if meta.get("version") != VERSION:
        raise PipelineError(f"{path}: checkpoint version {meta.get('version')!r} != {VERSION}")
    if not isinstance(meta.get("model"), str) or meta["model"] not in MODELS:
        raise PipelineError(f"{path}: unknown architecture {meta.get('model')!r}")
    if not isinstance(meta.get("arch_args", {}), dict):
        raise PipelineError(f"{path}: its arch_args are not a mapping")
    temperature_of(meta, path)
    if problem := arch_args_problem(meta["model"], meta.get("arch_args", {})):
        raise PipelineError(f"{path}: its arch_args are out of bounds: {problem}")
    state_dict = payload.get("state_dict")
    if not isinstance(state_dict, dict) or not all(
        isinstance(v, torch.Tensor) for v in state_dict.values()
    ):
        raise PipelineError(f"{path}: its state_dict is not a mapping of tensors")
    return payload


def all_finite(model: nn.Module) -> bool:
    """No NaN or inf in any parameter or buffer (a diverged run writes such weights)."""
    tensors = [*model.parameters(), *model.buffers()]
    return all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> Checkpoint:
    """Rebuild the model a checkpoint describes and load its weights."""
    payload = read_payload(path, device)
    meta = payload["meta"]
    try:
        model = build_model(meta["model"], **meta.get("arch_args", {}))
        model.load_state_dict(payload["state_dict"])
    except (RuntimeError, TypeError, ValueError) as exc:
        problem = first_line(exc)[:120]
        raise PipelineError(f"{path}: weights do not fit {meta['model']!r} ({problem})") from None
    if not all_finite(model):
        raise PipelineError(f"{path}: its weights hold NaN or infinite values (a diverged run)")
    return Checkpoint(model.to(device).eval(), meta)
