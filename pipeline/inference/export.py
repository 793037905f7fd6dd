"""`pipeline export`: a checkpoint (or an ensemble of them) as one self-contained ONNX file.

The graph takes `images`, uint8 [N, 1, 28, 28] exactly as the CSV holds the digits (N is
dynamic), and returns `probabilities`, float32 [N, 10]: the cast, the /255, each member's
stored normalisation and calibration temperature (`softmax(logits / T)`, T = 1 when absent)
are inside, so a caller needs nothing but ONNX Runtime and the pixels.

An ensemble (several checkpoints, or a quoted glob) becomes ONE graph that averages its
members' probabilities, the same mean `predict` and `serve` take: one file to copy, one
session to open, one answer per digit, and no manifest that could drift from the files it
lists. Metadata props record the architecture, arch args, validation accuracy, data
fingerprint, the project's version and every member's details (see `metadata`).

Export uses `torch.onnx.export(..., dynamo=True)`, the torch.export-based exporter: it has been
the default since torch 2.9 and the only one documented as supported (the TorchScript one
warns that it is legacy and deprecated); it needs `onnx` and `onnxscript` (the `export`
extra). Before anything is written the graph passes `onnx.checker.check_model` and is run on
ONNX Runtime against the torch models on real validation digits (max absolute difference of
probabilities under `TOLERANCE`, the same labels); the file is then written atomically.
"""

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline import __version__, config
from pipeline.common.errors import PipelineError
from pipeline.common.files import atomic_path, check_writable, expand_checkpoints
from pipeline.data.datasets import TensorDigits, load_split, processed_fingerprint
from pipeline.inference.onnx_runtime import (
    FORMAT,
    FORMAT_VERSION,
    INPUT,
    OUTPUT,
    is_onnx,
    open_onnx,
)
from pipeline.inference.predictor import inference_model, predict_logits
from pipeline.training.checkpoints import load_checkpoint

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
    """uint8 digits -> mean over members of softmax(member(standardised) / temperature)."""

    def __init__(self, members: list[nn.Module], metas: list[dict[str, Any]]):
        super().__init__()
        self.members = nn.ModuleList(members)
        # One row per member, broadcast over [members, N, 10] and [N, 1, 28, 28].
        stats = [(m["normalization"]["mean"], m["normalization"]["std"]) for m in metas]
        self.register_buffer("mean", torch.tensor([s[0] for s in stats]).view(-1, 1, 1, 1))
        self.register_buffer("std", torch.tensor([s[1] for s in stats]).view(-1, 1, 1, 1))
        self.register_buffer("temperature", torch.tensor([temperature(m) for m in metas]))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255.0
        logits = torch.stack(
            [
                member((x - self.mean[k]) / self.std[k]) / self.temperature[k]
                for k, member in enumerate(self.members)
            ]
        )
        return logits.softmax(-1).mean(0)


def temperature(meta: dict[str, Any]) -> float:
    """The calibration temperature a checkpoint carries (1.0 when it has none)."""
    value = meta.get("temperature", 1.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise PipelineError(f"its temperature {value!r} is not a number > 0")
    if not math.isfinite(value):
        raise PipelineError(f"its temperature {value!r} is not finite")
    return float(value)


def _normalization(path: Path, meta: dict[str, Any]) -> None:
    stats = meta.get("normalization")
    ok = isinstance(stats, dict) and all(
        isinstance(stats.get(k), (int, float)) and math.isfinite(stats[k]) for k in ("mean", "std")
    )
    if not ok or not stats["std"] > 0:
        raise PipelineError(f"{path}: its normalization is missing or not two numbers (std > 0)")


def metadata(
    paths: list[Path], metas: list[dict[str, Any]], ensemble_accuracy: float | None
) -> dict[str, str]:
    """The metadata props (strings; numbers and structures as JSON).

    `model` is the architecture (names joined with "+" for a mixed ensemble); `arch_args` is
    the member's mapping, or a list of them for an ensemble; `val_accuracy` is the member's
    own, or the ensemble's on the validation split it was trained beside (absent when that
    data was not at hand); `members` lists each checkpoint's details.
    """
    names = sorted({m["model"] for m in metas})
    fingerprints = {m.get("data_fingerprint") for m in metas}
    members = [
        {
            "checkpoint": path.name,
            "model": m["model"],
            "arch_args": m.get("arch_args", {}),
            "val_accuracy": m.get("val_accuracy"),
            "data_fingerprint": m.get("data_fingerprint"),
            "seed": m.get("seed"),
            "temperature": temperature(m),
            "normalization": m["normalization"],
        }
        for path, m in zip(paths, metas, strict=True)
    ]
    single = len(metas) == 1
    props: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
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


def torch_probabilities(models: list[nn.Module], metas: list[dict], images: torch.Tensor):
    """What torch answers, the way predict and serve run it: [N, 10] numpy float32."""
    data = TensorDigits(images)
    probs = [
        (predict_logits(model, data, batch_size=len(images)) / temperature(meta)).softmax(1)
        for model, meta in zip(models, metas, strict=True)
    ]
    return torch.stack(probs).mean(0).cpu().numpy()


def _export_graph(graph: ProbabilityGraph, paths: list[Path]):
    """torch.onnx's ModelProto of `graph`, or a one-line PipelineError."""
    import onnx  # noqa: F401  (the exporter's own import error is less clear)
    import onnxscript  # noqa: F401

    example = torch.zeros(2, 1, config.IMAGE_SIDE, config.IMAGE_SIDE, dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1)
    try:
        program = torch.onnx.export(
            graph,
            (example,),
            dynamo=True,
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_shapes={INPUT: {0: batch}},
            verbose=False,
        )
        return program.model_proto
    except Exception as exc:
        first = " ".join(str(exc).strip().split("\n")[0].split())[:160] or type(exc).__name__
        names = ", ".join(str(p) for p in paths)
        raise PipelineError(f"{names}: cannot be exported to ONNX ({first})") from None


def default_out(checkpoints: list[Path], models_dir: Path = config.MODELS_DIR) -> Path:
    """models/<name>.onnx: the checkpoint's stem, or a glob's fixed part ('best-*.pt' -> best)."""
    if len(checkpoints) == 1:
        stem = Path(checkpoints[0]).stem
        name = stem.split("*")[0].split("?")[0].split("[")[0].rstrip("-_.") or "ensemble"
    else:
        name = "ensemble"
    return config.onnx_path(name, models_dir)


def export_onnx(
    checkpoints: list[Path],
    out: Path,
    processed_dir: Path = config.PROCESSED_DIR,
) -> ExportResult:
    """Export the checkpoints (quoted globs expand) as one graph to `out`, checked first.

    Reads the validation split of `processed_dir` for the comparison (and, for an ensemble
    whose members were trained on that data, its accuracy); writes only `out`.
    """
    if not is_onnx(out):
        raise PipelineError(f"--out {out}: give a file name ending in .onnx")
    check_writable(out)
    paths = expand_checkpoints(list(checkpoints))
    if any(is_onnx(p) for p in paths):
        raise PipelineError(f"{next(p for p in paths if is_onnx(p))}: is already an ONNX file")
    loaded = [load_checkpoint(path, "cpu") for path in paths]
    metas = [each.meta for each in loaded]
    for path, meta in zip(paths, metas, strict=True):
        _normalization(path, meta)
        try:
            temperature(meta)
        except PipelineError as exc:
            raise PipelineError(f"{path}: {exc}") from None
    val = load_split(processed_dir, "val")
    if len(val) == 0:
        raise PipelineError(f"{processed_dir}: its validation split is empty; nothing to compare")

    graph = ProbabilityGraph([each.model for each in loaded], metas).eval()
    proto = _export_graph(graph, paths)
    images = val.images[:PARITY_DIGITS]
    reference = torch_probabilities([inference_model(e.model) for e in loaded], metas, images)

    # Run the graph as a user will, from its bytes through our own loader, before writing.
    model = open_onnx(_with_props(proto, paths, metas, None), out)
    answer = model.predict(images.numpy())
    diff = float(np.abs(answer - reference).max())
    if not diff < TOLERANCE or not np.array_equal(answer.argmax(1), reference.argmax(1)):
        raise PipelineError(
            f"{out}: the ONNX graph differs from torch on {len(images)} validation digits "
            f"(max |dp| {diff:.2e}, tolerance {TOLERANCE:.0e}); nothing written"
        )
    ensemble_accuracy = None
    same_data = {m.get("data_fingerprint") for m in metas} == {
        processed_fingerprint(processed_dir)
    }
    if len(paths) > 1 and same_data and val.labels is not None:
        predicted = model.predict(val.images.numpy()).argmax(1)
        ensemble_accuracy = float((predicted == val.labels.numpy()).mean())
    data = _with_props(proto, paths, metas, ensemble_accuracy)
    with atomic_path(out) as tmp:
        tmp.write_bytes(data)
    props = metadata(paths, metas, ensemble_accuracy)
    return ExportResult(out, len(paths), len(data), len(images), diff, props)


def _with_props(proto, paths: list[Path], metas: list[dict], ensemble_accuracy) -> bytes:
    """The graph's bytes with our metadata props, after `onnx.checker` passes them."""
    import onnx

    onnx.helper.set_model_props(proto, metadata(paths, metas, ensemble_accuracy))
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        first = " ".join(str(exc).split())[:160]
        raise PipelineError(
            f"{paths[0]}: the exported graph fails onnx.checker ({first})"
        ) from None
    return proto.SerializeToString()
