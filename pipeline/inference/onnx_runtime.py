"""Running an exported `.onnx` digit reader on ONNX Runtime, without torch (NumPy only).
A file is checked whole before use (size, `pipeline export`'s signature and metadata, a blank
digit), and every batch's answer after."""

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import config
from pipeline.common.errors import PipelineError

FORMAT = "digit-recognizer-onnx"
FORMAT_VERSION = "1"
INPUT = "images"
OUTPUT = "probabilities"
INPUT_SHAPE = (1, config.IMAGE_SIDE, config.IMAGE_SIDE)  # after the batch dimension
MAX_ONNX_BYTES = 512 * 1024 * 1024  # ours are 0.1-10 MB; anything absurd is refused unread
BATCH = 1024  # digits per ONNX Runtime call: bounds the activations on a whole test split
TOLERANCE = 1e-3  # on each probability and on each row's sum
REQUIRED_PROPS = ("format", "format_version", "pipeline_version", "model", "members")


def is_onnx(path: Path) -> bool:
    return Path(path).suffix.lower() == config.ONNX_SUFFIX


@dataclass(frozen=True)
class OnnxModel:
    """One exported graph in an ONNX Runtime session, checked and warmed up."""

    path: Path
    session: Any  # onnxruntime.InferenceSession
    meta: dict[str, Any]  # the metadata props, JSON values decoded

    @property
    def temperature(self) -> float:
        """A one-member graph's baked-in temperature; 1.0 for an ensemble (one per member)."""
        (member, *others) = self.meta["members"] or [{}]  # a list: checked at load
        value = member.get("temperature") if isinstance(member, dict) and not others else None
        return float(value) if type(value) in (int, float) and value > 0 else 1.0

    def predict(self, images: np.ndarray) -> np.ndarray:
        """uint8 [N, 1, 28, 28] digits -> float32 [N, 10], in batches, each checked: damaged
        weights can answer NaN on real digits and fine on a blank one."""
        images = np.ascontiguousarray(images, dtype=np.uint8)
        if images.ndim != 4 or images.shape[1:] != INPUT_SHAPE:
            raise ValueError(f"expected uint8 [N, 1, 28, 28] digits, got {images.shape}")
        out = np.empty((len(images), config.N_CLASSES), np.float32)
        for start in range(0, len(images), BATCH):
            chunk = images[start : start + BATCH]
            probs = self.session.run([OUTPUT], {INPUT: chunk})[0]
            if probs.shape != (len(chunk), config.N_CLASSES) or not np.isfinite(probs).all():
                problem = "NaN, infinite or not ten per digit"
            elif probs.min() < -TOLERANCE or probs.max() > 1 + TOLERANCE:
                problem = "outside [0, 1]"
            elif np.abs(probs.sum(1) - 1).max() > TOLERANCE:
                problem = "rows not summing to 1"
            else:
                out[start : start + len(chunk)] = probs
                continue
            raise PipelineError(
                f"{self.path}: its outputs are not probabilities on these digits ({problem}); "
                "export it again"
            )
        return out


def _decode(value: str) -> Any:
    """A metadata prop: numbers and structures are written as JSON."""
    try:
        return json.loads(value)
    except ValueError:
        return value


def _check_signature(path: Path, session: Any) -> None:
    for kind, found, name in (
        ("input", session.get_inputs(), INPUT),
        ("output", session.get_outputs(), OUTPUT),
    ):
        if len(found) != 1 or found[0].name != name:
            listed = ", ".join(f"{t.name} {t.type} {t.shape}" for t in found) or "none"
            raise PipelineError(
                f"{path}: the graph's {kind} must be one tensor `{name}`, not {listed}"
            )
    (images,), (probs,) = session.get_inputs(), session.get_outputs()
    shape = list(images.shape)
    # A fixed batch size (an int) will not do: serve and predict need any N.
    if images.type != "tensor(uint8)" or tuple(shape[1:]) != INPUT_SHAPE or type(shape[0]) is int:
        raise PipelineError(
            f"{path}: the input `images` must be uint8 [N, 1, 28, 28] with a dynamic N, "
            f"not {images.type} {shape}"
        )
    shape = list(probs.shape)
    if probs.type != "tensor(float)" or shape[1:] != [config.N_CLASSES]:
        raise PipelineError(
            f"{path}: the output `probabilities` must be float32 [N, 10], not {probs.type} {shape}"
        )


def _check_meta(path: Path, meta: dict[str, Any]) -> None:
    if meta.get("format") != FORMAT:
        raise PipelineError(f"{path}: not an ONNX file written by `pipeline export`")
    if str(meta.get("format_version")) != FORMAT_VERSION:
        raise PipelineError(
            f"{path}: export format {meta.get('format_version')!r} != {FORMAT_VERSION}; "
            "export it again"
        )
    missing = [key for key in REQUIRED_PROPS if key not in meta]
    if missing or not isinstance(meta["members"], list) or not isinstance(meta["model"], str):
        raise PipelineError(
            f"{path}: its metadata is incomplete ({', '.join(missing) or 'types'})"
        )
    accuracy = meta.get("val_accuracy")
    if accuracy is not None and not isinstance(accuracy, (int, float)):
        raise PipelineError(f"{path}: its metadata val_accuracy is not a number")


def load_onnx(path: Path, threads: int | None = None) -> OnnxModel:
    """Open an exported graph on ONNX Runtime's CPU provider and check it is one of ours;
    `threads` caps the intra-op threads (None: OMP_NUM_THREADS if set, else one per core)."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: no such ONNX file (run `pipeline export` first)")
    size = path.stat().st_size
    if size > MAX_ONNX_BYTES:
        raise PipelineError(f"{path}: {size:,} bytes, over the {MAX_ONNX_BYTES:,} allowed")
    return open_onnx(str(path), path, threads)


def open_onnx(source: str | bytes, path: Path, threads: int | None = None) -> OnnxModel:
    """`load_onnx` on a file or on bytes (`pipeline export` checks before it writes)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise PipelineError(
            f"{path}: ONNX files need onnxruntime (pip install onnxruntime)"
        ) from None
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: they come back to us as exceptions anyway
    asked = os.environ.get("OMP_NUM_THREADS", "")  # a count asked for, as for torch
    if threads := threads or (int(asked) if asked.isdigit() and int(asked) > 0 else None):
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own pybind types for every failure
        reason = " ".join(str(exc).split())[:120]
        raise PipelineError(
            f"{path}: not a readable ONNX model (damaged or foreign: {reason})"
        ) from None
    _check_signature(path, session)
    meta = {k: _decode(v) for k, v in session.get_modelmeta().custom_metadata_map.items()}
    _check_meta(path, meta)
    model = OnnxModel(path, session, meta)
    try:
        model.predict(np.zeros((1, *INPUT_SHAPE), np.uint8))
    except PipelineError:
        raise
    except Exception as exc:
        reason = " ".join(str(exc).split())[:120]
        raise PipelineError(f"{path}: the graph fails on a blank digit ({reason})") from None
    return model


def onnx_only(paths: list[Path], device: str = "auto", tta: bool = False) -> bool:
    """Whether the models are `.onnx` files; mixing them with checkpoints is refused (a graph
    already averages its members: weighing it against checkpoints would be a guess)."""
    kinds = {is_onnx(path) for path in paths}
    if kinds != {True}:
        if True in kinds:
            raise PipelineError(
                "give either checkpoints (.pt) or exported graphs (.onnx), not both"
            )
        return False
    if str(device) not in ("auto", "cpu"):
        raise PipelineError(f"--device {device}: .onnx files run on the CPU; use auto or cpu")
    if tta:
        raise PipelineError(
            "--tta needs checkpoints (.pt): an .onnx graph reads the digits as given"
        )
    return True


def mean_probabilities(models: list[OnnxModel], images: np.ndarray) -> np.ndarray:
    """The mean over all members: each graph weighs as many members as it averages."""
    answers = [model.predict(images) for model in models]
    weights = [len(model.meta["members"]) or 1 for model in models]
    return np.average(answers, axis=0, weights=weights).astype(np.float32)
