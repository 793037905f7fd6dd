"""The folds of every labelled digit: each bagged member's training rows and held-out rows.

Member k of the `best` ensemble trains on all of train.csv but fold `k % folds` (stratified,
dealt by `fold_seed`) and is scored on that one. Folds rather than random bags: each digit is
then out-of-bag for exactly M / folds members (ten random 80% bags leave ~11% of the digits
with no voter), so the out-of-bag estimate is an honest K-fold score of an (M / folds)-member
ensemble.
"""

from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.common.errors import PipelineError
from pipeline.common.files import sha256_text
from pipeline.data.datasets import DigitSplit, load_split


def labelled_digits(processed_dir: Path) -> DigitSplit:
    """train.csv's labelled digits in CSV order: the prepared train and val splits rejoined."""
    train, val = load_split(processed_dir, "train"), load_split(processed_dir, "val")
    ids = torch.cat([train.ids, val.ids])
    order = ids.argsort()
    images = torch.cat([train.images, val.images])[order]
    labels = torch.cat([train.labels, val.labels])[order]
    return DigitSplit(images, labels, ids[order])


def check_folds(folds: int, fold: int, n: int) -> None:
    if not 2 <= folds <= n:
        raise PipelineError(f"--folds {folds}: must be at least 2 and at most {n} (the digits)")
    if not 0 <= fold < folds:
        raise PipelineError(f"fold {fold}: must be 0 to {folds - 1}")


def fold_of_each(labels: torch.Tensor, folds: int, seed: int) -> torch.Tensor:
    """int64[N]: the fold of every digit; each digit's class is spread evenly over the folds.

    A seeded shuffle, then a stable sort by label, then folds dealt round-robin: every fold
    holds each digit class to within one row, and the same seed gives the same folds anywhere.
    """
    check_folds(folds, 0, len(labels))
    shuffled = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    order = shuffled[labels[shuffled].argsort(stable=True)]
    fold = torch.empty(len(labels), dtype=torch.int64)
    fold[order] = torch.arange(len(labels)) % folds
    return fold


@dataclass(frozen=True)
class Bag:
    """One member's rows of the labelled digits: what it trains on and what it never sees."""

    folds: int
    fold: int  # the held-out fold
    fold_seed: int
    train: torch.Tensor  # int64 row indices, sorted
    oob: torch.Tensor  # int64 row indices, sorted; disjoint from `train`

    def record(self, fingerprint: str) -> dict:
        """What a checkpoint keeps to recompute and verify the bag (plain values only)."""
        return {
            "folds": self.folds,
            "fold": self.fold,
            "fold_seed": self.fold_seed,
            "labelled": fingerprint,
            "rows": len(self.train) + len(self.oob),
            "oob_rows": len(self.oob),
            "oob_sha256": indices_digest(self.oob),
        }


def indices_digest(indices: torch.Tensor) -> str:
    return sha256_text(",".join(map(str, indices.tolist())))


def member_bag(labels: torch.Tensor, folds: int, fold: int, fold_seed: int) -> Bag:
    check_folds(folds, fold, len(labels))
    assignment = fold_of_each(labels, folds, fold_seed)
    held_out = assignment == fold
    train = torch.nonzero(~held_out).flatten()
    oob = torch.nonzero(held_out).flatten()
    return Bag(folds, fold, fold_seed, train, oob)


def verified_bag(record: dict, labels: torch.Tensor, fingerprint: str, source: Path) -> Bag:
    """The bag a checkpoint recorded, recomputed; a one-line error if it no longer matches."""
    try:
        bag = member_bag(labels, int(record["folds"]), int(record["fold"]), record["fold_seed"])
        same = (
            record["labelled"] == fingerprint
            and record["rows"] == len(labels)
            and record["oob_sha256"] == indices_digest(bag.oob)
        )
    except (KeyError, TypeError, ValueError, PipelineError):
        same = False
    if not same:
        raise PipelineError(
            f"{source}: its bag does not match these labelled digits (other data or "
            "--limit-rows); train the ensemble again"
        )
    return bag
