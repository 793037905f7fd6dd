"""Running trained models: load them for inference, logits in batches, TTA, ensembles, metrics.
Every stage that reads a model's answers goes through here: one averaging rule for all."""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pipeline import config
from pipeline.common.device import use_free_cores
from pipeline.common.errors import PipelineError
from pipeline.data import augmentation
from pipeline.data.datasets import TensorDigits, index_batches, standardize, to_unit
from pipeline.training.calibration import calibrated_probabilities, temperature_of
from pipeline.training.checkpoints import load_checkpoint

# Test-time views: identity and one-pixel shifts (in grid_sample's [-1, 1] coordinates).
PIXEL = 2 / config.IMAGE_SIDE
TTA_SHIFTS = [(0.0, 0.0), (PIXEL, 0.0), (-PIXEL, 0.0), (0.0, PIXEL), (0.0, -PIXEL)]


@dataclass(frozen=True)
class LoadedModel:
    path: Path
    model: nn.Module  # eval mode, BatchNorm folded, channels_last, on its device
    meta: dict

    @property
    def temperature(self) -> float:
        return temperature_of(self.meta, self.path)


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """Each BatchNorm2d after a Conv2d in a Sequential (`models.conv_bn`) folded into it."""
    for child in module.children():
        fold_batchnorm(child)
    if isinstance(module, nn.Sequential):
        for i in range(len(module) - 1):
            conv, bn = module[i], module[i + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                module[i] = nn.utils.fuse_conv_bn_eval(conv, bn)
                module[i + 1] = nn.Identity()
    return module


def inference_model(model: nn.Module) -> nn.Module:
    """The model in eval mode, BatchNorm folded, in channels_last: with a 1-channel input only
    channels_last weights make the whole net run so, where CPU pooling is several times faster."""
    return fold_batchnorm(model.eval()).to(memory_format=torch.channels_last)


def load_for_inference(checkpoints: list[Path], device: torch.device) -> list[LoadedModel]:
    """Each checkpoint loaded, checked, made fast (on the CPU with every free core: inference
    needs no fixed thread count for repeatability)."""
    if device.type == "cpu":
        use_free_cores()
    checkpoints = [(path, load_checkpoint(path, device)) for path in checkpoints]
    return [LoadedModel(path, inference_model(c.model), c.meta) for path, c in checkpoints]


def tta_views(x: torch.Tensor) -> list[torch.Tensor]:
    """The image batch under each TTA shift; x is float in [0, 1]."""
    thetas = torch.tensor([[[1.0, 0.0, dx], [0.0, 1.0, dy]] for dx, dy in TTA_SHIFTS])
    shifts = [augmentation.AugmentDraw(t.to(x.device).expand(len(x), 2, 3), None) for t in thetas]
    return [augmentation.apply(x, shift) for shift in shifts]


@torch.inference_mode()
def predict_logits(
    model: nn.Module, data: TensorDigits, batch_size=256, tta=False, source: Path | None = None
) -> torch.Tensor:
    """Logits [N,10] in dataset order (the mean over views with `tta`), on model's device."""
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
    logits = torch.cat(outputs)
    if not bool(torch.isfinite(logits).all()):  # else argmax would label every digit 0
        what = f"{source}: its" if source is not None else "the model's"
        raise PipelineError(
            f"{what} outputs are NaN or infinite on these digits (its weights overflow float "
            "arithmetic); retrain it or pick another checkpoint"
        )
    return logits


def mean_calibrated(logits: Sequence[torch.Tensor], temperatures: Sequence) -> torch.Tensor:
    """The one ensemble rule, the exported graph's too: the members' mean softmax(logits / T)."""
    probs = [calibrated_probabilities(x, t) for x, t in zip(logits, temperatures, strict=True)]
    return torch.stack(probs).mean(0)


def ensemble_probabilities(
    members: list[LoadedModel], data: TensorDigits, batch_size: int = 256, tta: bool = False
) -> torch.Tensor:
    """The members' probabilities [N, 10] on the CPU by `mean_calibrated`."""
    logits = [predict_logits(m.model, data, batch_size, tta, m.path) for m in members]
    return mean_calibrated(logits, [m.temperature for m in members]).cpu()


@dataclass(frozen=True)
class Metrics:
    accuracy: float
    loss: float
    predictions: torch.Tensor  # int64 [N], on the CPU (a NumPy array from `evaluate`)
    confidences: torch.Tensor  # float [N]: probability of the predicted class
    logits: torch.Tensor | None = None  # float [N, 10], on the model's device


def score(model: nn.Module, data: TensorDigits, batch_size: int = 256, tta: bool = False):
    """Accuracy and mean cross-entropy of `model` on a labelled dataset."""
    if data.labels is None:
        raise PipelineError("cannot score unlabelled data")
    logits = predict_logits(model, data, batch_size, tta)
    labels = data.labels.to(logits.device)
    confidences, predictions = logits.softmax(1).max(1)
    hit_rate = (predictions == labels).float().mean().item()
    loss = F.cross_entropy(logits, labels).item()
    return Metrics(hit_rate, loss, predictions.cpu(), confidences.cpu(), logits)


def accuracy(probabilities: torch.Tensor, labels: torch.Tensor) -> float:
    return float((probabilities.argmax(1) == labels.to(probabilities.device)).float().mean())
