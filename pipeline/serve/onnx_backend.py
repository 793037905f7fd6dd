"""The ONNX Runtime backend of `pipeline serve`: exported `.onnx` graphs, no torch at all. Each
graph returns calibrated probabilities; one intra-op thread per session, as torch keeps one."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.inference.onnx_runtime import OnnxModel, load_onnx_models, mean_probabilities
from pipeline.serve.backend import CheckpointInfo

DEVICE = "cpu (onnxruntime)"


@dataclass
class OnnxBackend:
    """The exported graphs a server answers with; see `backend.Backend`."""

    models: list[OnnxModel]
    checkpoints: list[CheckpointInfo]
    device: str = DEVICE

    def predict(self, images: np.ndarray) -> np.ndarray:
        """uint8 [N, 1, 28, 28] -> float32 [N, 10], the mean of the graphs' probabilities."""
        return mean_probabilities(self.models, images)


def graph_temperature(meta: dict) -> float:
    """The calibration temperature baked into a one-member graph, as /api/model shows it (an
    ensemble's members each carry their own inside the graph: 1.0 stands for "see members")."""
    (member, *others) = meta["members"] or [{}]  # a list: checked at load
    value = member.get("temperature") if isinstance(member, dict) and not others else None
    return float(value) if type(value) in (int, float) and value > 0 else 1.0


def load_models(paths: list[Path]) -> OnnxBackend:
    """Open and check every graph (one-line PipelineError if one is not ours), warmed up."""
    models = load_onnx_models(paths, threads=1)
    info = [
        CheckpointInfo.of(m.path, m.model, m.val_accuracy, graph_temperature(m.meta))
        for m in models
    ]
    return OnnxBackend(models, info)  # already warm: loading ran a blank digit through each
