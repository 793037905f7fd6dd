"""The ONNX Runtime backend of `pipeline serve`: exported `.onnx` graphs, no torch at all.

Each graph (see `pipeline.export`) takes the uint8 digits as they are and returns calibrated
probabilities, so this backend only averages the graphs' answers. One intra-op thread per
session, as the torch backend keeps one: requests run one at a time, one digit each.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import config
from pipeline.onnx_runtime import OnnxModel, load_onnx_models, mean_probabilities
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


def load_models(paths: list[Path]) -> OnnxBackend:
    """Open and check every graph (one-line PipelineError if one is not ours), warmed up."""
    models = load_onnx_models(paths, threads=1)
    backend = OnnxBackend(
        models,
        [
            CheckpointInfo(
                name=model.path.name,
                path=str(model.path),
                model=model.model,
                val_accuracy=model.val_accuracy,
            )
            for model in models
        ],
    )
    side = config.IMAGE_SIDE
    backend.predict(np.zeros((1, 1, side, side), np.uint8))
    return backend
