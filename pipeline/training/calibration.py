"""One temperature fitted on the validation split (Guo et al. 2017), so probabilities mean what
they say (label smoothing keeps even a certain digit at ~92%). A checkpoint's meta carries it as
`"temperature"` (absent: 1.0); `softmax(logits / temperature)` is shown or averaged everywhere.
"""

import math

import torch
import torch.nn.functional as F

from pipeline.common.errors import PipelineError

TEMPERATURE_RANGE = (0.05, 20.0)  # outside it the fit failed (e.g. a constant model)


def temperature_of(meta: dict, path: object = "the checkpoint") -> float:
    """The temperature a checkpoint's meta carries (1.0 when absent), or a one-line error."""
    value = meta.get("temperature", 1.0)
    if type(value) not in (int, float) or not 0 < value < math.inf:
        raise PipelineError(f"{path}: its temperature {value!r} is not a positive number")
    return float(value)


def calibrated_probabilities(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return (logits.float() / temperature).softmax(-1)


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The T > 0 minimising the mean NLL of softmax(logits / T), by L-BFGS over log T."""
    logits = logits.detach().float().cpu().clone()  # clone: predict_logits' are inference tensors
    labels = labels.detach().cpu().clone()
    log_t = torch.zeros((), requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    temperature = float(log_t.detach().exp())
    low, high = TEMPERATURE_RANGE
    return min(max(temperature, low), high) if math.isfinite(temperature) else 1.0


def expected_calibration_error(
    probabilities: torch.Tensor, labels: torch.Tensor, bins: int = 15
) -> float:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by their size."""
    confidences, predictions = probabilities.max(-1)
    correct = (predictions == labels.to(predictions.device)).float()
    edges = torch.linspace(0, 1, bins + 1, device=confidences.device)
    which = torch.bucketize(confidences, edges[1:-1], right=True)
    # a bin's |mean gap| weighted by its share is its |summed gap| over all rows
    gaps = torch.zeros(bins, device=which.device).index_add_(0, which, correct - confidences)
    return float(gaps.abs().sum()) / len(confidences)
