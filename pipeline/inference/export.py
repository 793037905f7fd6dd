"""`pipeline export`: a checkpoint (or an ensemble of them) as one self-contained ONNX file.

Normalisation, each member's temperature and the mean (`predictor.mean_calibrated`) are inside
the graph (its signature: `onnx_runtime`). Before anything is written it passes `onnx.checker`
and our own loader, and must match torch on real validation digits.
"""

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline import __version__, config
from pipeline.common.errors import PipelineError
from pipeline.common.files import atomic_path, check_writable, expand_checkpoints
from pipeline.data.datasets import TensorDigits, load_split, normalize, processed_fingerprint
from pipeline.inference import onnx_runtime, predictor
from pipeline.training.calibration import temperature_of

PARITY_DIGITS = 1_000  # validation digits the ONNX graph must reproduce before it is written
TOLERANCE = 1e-4  # max |p_onnx - p_torch| over those digits


@dataclass(frozen=True)
class ExportResult:
    path: Path
    members: int
    bytes: int
    digits_compared: int
    max_abs_diff: float  # probabilities, ONNX Runtime vs torch
    metadata: dict[str, str]


class ProbabilityGraph(nn.Module):
    """uint8 digits -> the members' probabilities by the one rule, `mean_calibrated`."""

    def __init__(self, members: list[predictor.LoadedModel]):
        super().__init__()
        self.members = nn.ModuleList([m.model for m in members])
        self.register_buffer("temperature", torch.tensor([m.temperature for m in members]))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = normalize(images)
        return predictor.mean_calibrated([member(x) for member in self.members], self.temperature)


def metadata(
    paths: list[Path], metas: list[dict[str, Any]], ensemble_accuracy: float | None
) -> dict[str, str]:
    """The metadata props (numbers and structures as JSON); an ensemble's `model` joins the
    names with "+", its `val_accuracy` is the ensemble's when its data was at hand."""
    names = sorted({m["model"] for m in metas})
    fingerprints = {m.get("data_fingerprint") for m in metas}
    kept = ("model", "val_accuracy", "data_fingerprint", "seed", "normalization")
    members = [
        {key: m.get(key) for key in kept}
        | {
            "checkpoint": path.name,
            "arch_args": m.get("arch_args", {}),
            "temperature": temperature_of(m),
        }
        for path, m in zip(paths, metas, strict=True)
    ]
    single = len(metas) == 1
    props: dict[str, Any] = {
        "format": onnx_runtime.FORMAT,
        "format_version": onnx_runtime.FORMAT_VERSION,
        "pipeline_version": __version__,
        "torch_version": str(torch.__version__),
        "model": "+".join(names),
        "arch_args": members[0]["arch_args"] if single else [m["arch_args"] for m in members],
        "members": members,
    }
    accuracy = metas[0].get("val_accuracy") if single else ensemble_accuracy
    if isinstance(accuracy, (int, float)):
        props["val_accuracy"] = float(accuracy)
    if len(fingerprints) == 1 and isinstance(next(iter(fingerprints)), str):
        props["data_fingerprint"] = next(iter(fingerprints))
    return {
        k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in props.items()
    }


def default_out(checkpoints: list[Path], models_dir: Path = config.MODELS_DIR) -> Path:
    """models/<name>.onnx: the checkpoint's stem, or a glob's fixed part ('best-*.pt' -> best)."""
    stem = Path(checkpoints[0]).stem if len(checkpoints) == 1 else ""
    name = re.split(r"[*?\[]", stem)[0].rstrip("-_.") or "ensemble"
    return models_dir / f"{name}{config.ONNX_SUFFIX}"


def export_onnx(
    checkpoints: list[Path],
    out: Path,
    processed_dir: Path = config.PROCESSED_DIR,
) -> ExportResult:
    """The checkpoints as one graph in `out`, checked first on `processed_dir`'s val split."""
    if not onnx_runtime.is_onnx(out):
        raise PipelineError(f"--out {out}: give a file name ending in .onnx")
    check_writable(out)
    paths = expand_checkpoints(list(checkpoints))
    if graphs := [p for p in paths if onnx_runtime.is_onnx(p)]:
        raise PipelineError(f"{graphs[0]}: is already an ONNX file")
    members = predictor.load_for_inference(paths, torch.device("cpu"))
    metas = [m.meta for m in members]
    val = load_split(processed_dir, "val")
    if len(val) == 0:
        raise PipelineError(f"{processed_dir}: its validation split is empty; nothing to compare")
    import onnx
    import onnxscript  # noqa: F401  (the exporter's own import error is less clear)

    try:
        proto = torch.onnx.export(
            ProbabilityGraph(members).eval(),
            (torch.zeros(2, *onnx_runtime.INPUT_SHAPE, dtype=torch.uint8),),
            dynamo=True,  # the torch.export-based exporter, the supported one
            input_names=[onnx_runtime.INPUT],
            output_names=[onnx_runtime.OUTPUT],
            dynamic_shapes={onnx_runtime.INPUT: {0: torch.export.Dim("batch", min=1)}},
            verbose=False,
        ).model_proto
    except Exception as exc:
        first = " ".join(str(exc).strip().split("\n")[0].split())[:160] or type(exc).__name__
        names = ", ".join(str(p) for p in paths)
        raise PipelineError(f"{names}: cannot be exported to ONNX ({first})") from None
    fingerprint = processed_fingerprint(processed_dir)
    same_data = {m.get("data_fingerprint") for m in metas} == {fingerprint}
    scored = len(paths) > 1 and same_data and val.labels is not None  # the ensemble's accuracy
    images = val.images if scored else val.images[:PARITY_DIGITS]
    probs = predictor.ensemble_probabilities(members, TensorDigits(images)).numpy()
    ensemble_accuracy = float((probs.argmax(1) == val.labels.numpy()).mean()) if scored else None
    props = metadata(paths, metas, ensemble_accuracy)
    onnx.helper.set_model_props(proto, props)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        first = " ".join(str(exc).split())[:160]
        raise PipelineError(
            f"{paths[0]}: the exported graph fails onnx.checker ({first})"
        ) from None
    data = proto.SerializeToString()
    images = val.images[:PARITY_DIGITS].numpy()
    answer = onnx_runtime.open_onnx(data, out).predict(images)  # as a user will run it
    reference = probs[: len(images)]
    diff = float(np.abs(answer - reference).max())
    if not diff < TOLERANCE or not np.array_equal(answer.argmax(1), reference.argmax(1)):
        raise PipelineError(
            f"{out}: the ONNX graph differs from torch on {len(images)} validation digits "
            f"(max |dp| {diff:.2e}, tolerance {TOLERANCE:.0e}); nothing written"
        )
    with atomic_path(out) as tmp:
        tmp.write_bytes(data)
    return ExportResult(out, len(paths), len(data), len(images), diff, props)
