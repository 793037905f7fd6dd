"""Pseudo-labels, fold-honest: the test digits a first round of bagged members is sure of, as
extra training digits for a second round (`pipeline ensemble --recipe best --pseudo-label`).
A member holding out fold k takes them only from first-round members holding out fold k: no
label of a digit reaches, through the test digits, a member that scores it."""

import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from pipeline import config
from pipeline.common.device import resolve_device
from pipeline.common.errors import PipelineError
from pipeline.common.files import written_together
from pipeline.data.datasets import TensorDigits
from pipeline.data.extra import save_extra
from pipeline.experiments.bagging import bagged_members
from pipeline.inference.predictor import LoadedModel, ensemble_probabilities
from pipeline.training.distributed import ranks_from_env


@dataclass(frozen=True)
class FoldLabels:
    fold: int
    teachers: list[Path]
    path: Path
    sha256: str
    kept: int
    total: int  # test digits
    threshold: float
    mean_top: float  # mean top probability of the kept digits (nan: none kept)


def fold_teachers(
    teachers: list[Path], processed_dir: Path, device: torch.device
) -> tuple[dict[int, list[LoadedModel]], tuple[int, int]]:
    """The bagged teachers by the fold they hold out, and the (folds, fold_seed) they share."""
    _, members = bagged_members(teachers, processed_dir, device)
    by_fold: dict[int, list[LoadedModel]] = {}
    for teacher, bag in sorted(members, key=lambda member: member[1].fold):
        by_fold.setdefault(bag.fold, []).append(teacher)
    if len(dealt := {(bag.folds, bag.fold_seed) for _, bag in members}) != 1:
        raise PipelineError(
            f"{teachers[0]}: the teachers' folds were dealt differently ((folds, seed): "
            f"{sorted(dealt)}); give the members of one ensemble"
        )
    return by_fold, dealt.pop()


def pseudo_label(
    teachers: list[Path],
    processed_dir: Path,
    out_dir: Path,
    threshold: float = 0.99,
    device: str = "auto",
) -> list[FoldLabels]:
    """Per fold k, the test digits fold k's teachers alone (the one predictor's rule) put at
    `threshold` or above, one-hot in `config.pseudo_labels_path(out_dir, k)`; one set of files."""
    if not 0 <= threshold <= 1:
        raise PipelineError(f"--pseudo-threshold {threshold}: must be within 0 to 1")
    target = resolve_device(device)
    by_fold, _ = fold_teachers(teachers, processed_dir, target)
    test = TensorDigits.load(processed_dir, "test")  # images only: its labels are never read
    on_device = TensorDigits(test.images).to(target)
    report = []
    with written_together():
        for fold, members in by_fold.items():
            top, label = ensemble_probabilities(members, on_device).max(1)
            keep = top >= threshold
            targets = F.one_hot(label[keep], config.N_CLASSES).float().numpy()
            path = config.pseudo_labels_path(out_dir, fold)
            sha = save_extra(test.images[keep].numpy(), targets, path)
            mean_top = float(top[keep].mean()) if keep.any() else math.nan
            paths = [m.path for m in members]
            report.append(
                FoldLabels(fold, paths, path, sha, int(keep.sum()), len(test), threshold, mean_top)
            )
    return report


def format_report(report: list[FoldLabels]) -> str:
    return "\n".join(
        f"pseudo-labels for fold {r.fold}: {r.kept:,} of {r.total:,} test digits "
        f"({r.kept / r.total:.1%}) at top probability >= {r.threshold:g}, mean "
        f"{r.mean_top:.4f}, from {', '.join(p.name for p in r.teachers)} -> {r.path}"
        for r in report
    )


ROUND2_SHARE = 0.6  # of a budget's training time: round 2 trains on ~1.6 times the digits


def pseudo_label_rounds(
    configs, processed_dir, models_dir, jobs, track, log, warn, threshold, fit
):
    """`run_ensemble` into `<models_dir>/round1/` with its pseudo-labels there, then into
    `models_dir` with each fold's as extra digits; returns the lines to print and round 2's run.
    `fit(configs, models_dir, reserve_s)` sizes a round to a budget, leaving ROUND2_SHARE."""
    from pipeline.experiments.ensemble import run_ensemble

    if any(cfg.folds is None for cfg in configs):
        raise PipelineError("--pseudo-label needs bagged members: use --recipe best")
    if ranks_from_env().world > 1:
        raise PipelineError("--pseudo-label runs in one process; start it without torchrun")
    round1 = models_dir / config.ROUND1_DIR_NAME
    sized, pace = fit(configs, round1, ROUND2_SHARE)
    first, _ = run_ensemble(sized, processed_dir, round1, jobs, track, log, warn, pace)
    name = configs[0].recipe or configs[0].model
    teachers = [config.member_checkpoint_path(name, k, round1) for k in range(len(sized))]
    report = pseudo_label(teachers, processed_dir, round1, threshold, configs[0].device)
    files = {r.fold: r for r in report}
    second = [
        replace(cfg, extra=str(files[cfg.fold].path), extra_sha256=files[cfg.fold].sha256)
        for cfg in configs[: len(sized)]
    ]
    second, pace = fit(second, models_dir)
    last, run = run_ensemble(second, processed_dir, models_dir, jobs, track, log, warn, pace)
    return f"round 1: {first}\n{format_report(report)}\nround 2: {last}", run
