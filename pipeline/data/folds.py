"""Bagged members' rows: member k trains on all of train.csv but fold `k % folds` (stratified,
dealt by `fold_seed`) and is scored on it. Folds, not random bags: each digit is out-of-bag for
exactly M / folds members (ten random 80% bags leave ~11% with no voter)."""

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
    """int64[N], each digit's fold: a seeded shuffle, a stable sort by label, then dealt
    round-robin, so every fold holds each class to within one row, the same on any machine."""
    check_folds(folds, 0, len(labels))
    shuffled = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    order = shuffled[labels[shuffled].argsort(stable=True)]
    fold = torch.empty(len(labels), dtype=torch.int64)
    fold[order] = torch.arange(len(labels)) % folds
    return fold


@dataclass(frozen=True)
class Bag:
    folds: int
    fold: int  # the held-out fold
    fold_seed: int
    train: torch.Tensor  # int64 row indices, sorted
    oob: torch.Tensor  # int64 row indices, sorted; disjoint from `train`

    def record(self, fingerprint: str) -> dict:
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
    held_out = fold_of_each(labels, folds, fold_seed) == fold
    return Bag(folds, fold, fold_seed, (~held_out).nonzero()[:, 0], held_out.nonzero()[:, 0])


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
