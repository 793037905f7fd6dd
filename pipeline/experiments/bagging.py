"""The out-of-bag vote: each labelled digit scored by the members that never trained on it
(which digits a member holds out: `pipeline.data.folds`), with the one predictor's rule."""

from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.common.errors import PipelineError
from pipeline.data.folds import labelled_digits, verified_bag
from pipeline.data.processed import processed_fingerprint


@dataclass(frozen=True)
class OobEstimate:
    accuracy: float  # of the mean vote, over the digits that have at least one voter
    covered: int  # digits with at least one out-of-bag voter
    total: int
    mean_voters: float  # over the covered digits


def oob_estimate(
    member_probs: list[tuple[torch.Tensor, torch.Tensor]], labels: torch.Tensor
) -> OobEstimate:
    """Each digit scored by the mean probabilities of the members that never trained on it;
    `member_probs`: per member, (its out-of-bag row indices, its probabilities for those rows)."""
    n, classes = len(labels), member_probs[0][1].shape[1] if member_probs else 10
    summed = torch.zeros(n, classes, dtype=torch.float64)
    voters = torch.zeros(n, dtype=torch.int64)
    for rows, probs in member_probs:
        if len(rows) != len(probs):
            raise ValueError("out-of-bag rows and probabilities differ in length")
        summed.index_add_(0, rows, probs.to(torch.float64))
        voters.index_add_(0, rows, torch.ones_like(rows))
    covered = voters > 0
    n_covered = int(covered.sum())
    if n_covered == 0:
        return OobEstimate(float("nan"), 0, n, 0.0)
    correct = summed[covered].argmax(1) == labels[covered]
    mean_voters = float(voters[covered].double().mean())
    return OobEstimate(float(correct.double().mean()), n_covered, n, mean_voters)


def format_oob(estimate: OobEstimate) -> str:
    return (
        f"out-of-bag accuracy {estimate.accuracy:.2%} on {estimate.covered:,} of "
        f"{estimate.total:,} labelled digits ({estimate.mean_voters:.1f} voters per digit, "
        "each a member that never trained on it)"
    )


def bagged_members(checkpoints: list[Path], processed_dir: Path, device: torch.device):
    """The labelled digits, and each member loaded with its bag, redrawn and checked."""
    from pipeline.inference.predictor import load_for_inference

    digits = labelled_digits(processed_dir)
    fingerprint = processed_fingerprint(processed_dir, whole=True)
    members = []
    for loaded in load_for_inference(checkpoints, device):
        if not isinstance(record := loaded.meta.get("bag"), dict):
            raise PipelineError(
                f"{loaded.path}: not a bagged member (it records no bag); give the members of "
                "`pipeline ensemble --recipe best`"
            )
        members.append((loaded, verified_bag(record, digits.labels, fingerprint, loaded.path)))
    return digits, members


def score_out_of_bag(
    checkpoints: list[Path], processed_dir: Path, device: str = "auto"
) -> tuple[OobEstimate, list[float]]:
    """The ensemble's out-of-bag estimate and each member's own, by the one predictor's rule."""
    from pipeline.common.device import resolve_device
    from pipeline.data.datasets import TensorDigits
    from pipeline.inference.predictor import ensemble_probabilities

    target = resolve_device(device)
    digits, members = bagged_members(checkpoints, processed_dir, target)
    votes, accuracies = [], []
    for loaded, bag in members:
        oob = TensorDigits(digits.images[bag.oob], digits.labels[bag.oob]).to(target)
        probs = ensemble_probabilities([loaded], oob)
        votes.append((bag.oob, probs))
        accuracies.append(float((probs.argmax(1) == digits.labels[bag.oob]).double().mean()))
    return oob_estimate(votes, digits.labels), accuracies
