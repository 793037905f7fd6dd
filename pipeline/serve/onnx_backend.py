"""The ONNX Runtime backend of `pipeline serve`: exported `.onnx` graphs, no torch at all. Each
graph returns calibrated probabilities; one intra-op thread per session, as torch keeps one."""

from pathlib import Path

from pipeline.inference.onnx_runtime import load_onnx, mean_probabilities
from pipeline.serve.backend import Backend, CheckpointInfo

DEVICE = "cpu (onnxruntime)"


def graph_temperature(meta: dict) -> float:
    """The calibration temperature baked into a one-member graph, as /api/model shows it (an
    ensemble's members each carry their own inside the graph: 1.0 stands for "see members")."""
    (member, *others) = meta["members"] or [{}]  # a list: checked at load
    value = member.get("temperature") if isinstance(member, dict) and not others else None
    return float(value) if type(value) in (int, float) and value > 0 else 1.0


def load_models(paths: list[Path]) -> Backend:
    """Open and check every graph (one-line PipelineError if one is not ours), warmed up."""
    models = [load_onnx(path, threads=1) for path in paths]
    info = [
        CheckpointInfo.of(m.path, m.model, m.val_accuracy, graph_temperature(m.meta))
        for m in models
    ]
    # Already warm: loading ran a blank digit through each graph.
    return Backend(info, DEVICE, models, lambda images: mean_probabilities(models, images))
