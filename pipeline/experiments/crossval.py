"""`pipeline crossval`: one split of 4,200 digits measures 99.75% to about +-0.08%, so a
recipe's ensemble is judged by the mean and spread over independent stratified splits: the
members alone, the ensemble, and the ensemble with test-time augmentation."""

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline import config
from pipeline.common.device import resolve_device
from pipeline.common.errors import PipelineError
from pipeline.data.datasets import TensorDigits, load_split
from pipeline.data.prepare import prepare
from pipeline.experiments import tracking
from pipeline.experiments.ensemble import describe, seed_members, train_members
from pipeline.inference.predictor import accuracy, ensemble_probabilities, load_for_inference
from pipeline.training.recipes import TrainConfig


@dataclass(frozen=True)
class SplitScore:
    split_seed: int
    member_accuracies: list[float]
    ensemble_accuracy: float
    tta_accuracy: float
    val_images: int


def _spread(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


@dataclass(frozen=True)
class CrossValidation:
    config: TrainConfig
    members: int
    splits: list[SplitScore]
    nets: str = ""  # the members' nets and epochs, when they differ (`best`)
    run_id: str | None = None  # the tracked run (None with tracking off)

    ensemble = property(lambda self: _spread([s.ensemble_accuracy for s in self.splits]))
    tta = property(lambda self: _spread([s.tta_accuracy for s in self.splits]))
    member = property(lambda self: _spread([a for s in self.splits for a in s.member_accuracies]))


def score_split(checkpoints: list[Path], processed_dir: Path, device: str) -> tuple:
    """(member accuracies, ensemble's, ensemble+TTA's, digits) on processed_dir's val split."""
    target = resolve_device(device)
    members = load_for_inference(checkpoints, target)
    data = TensorDigits.from_split(load_split(processed_dir, "val")).to(target)
    scores = [accuracy(ensemble_probabilities([m], data), data.labels) for m in members]
    ensemble = ensemble_probabilities(members, data)
    tta = ensemble_probabilities(members, data, tta=True)
    return scores, accuracy(ensemble, data.labels), accuracy(tta, data.labels), len(data.labels)


def cross_validate(
    cfg: TrainConfig | list[TrainConfig],
    members: int,
    split_seeds: list[int],
    raw_dir: Path = config.RAW_DIR,
    models_dir: Path = config.CROSSVAL_MODELS_DIR,
    processed_dir: Path = config.CROSSVAL_DATA_DIR,
    log: Callable[[str], None] = lambda message: None,
    progress: bool = True,
    track: bool = False,
    warn: Callable[[str], None] | None = None,
) -> CrossValidation:
    """Train and score `members` models of `cfg` (or `best`'s configs) on each split seed's own
    folders; tracked as one run, each split's scores at its seed's step, members as children."""
    if not split_seeds:
        raise PipelineError("--splits must be at least 1")
    configs = cfg if isinstance(cfg, list) else seed_members(cfg, members)
    cfg, members = configs[0], len(configs)
    params = tracking.train_params(cfg) | {"members": members, "splits": len(split_seeds)}
    name = f"crossval {cfg.recipe or cfg.model}"
    with tracking.command_run(track, name, "crossval", params, warn=warn) as parent:
        scores = []
        for seed in split_seeds:
            start = time.perf_counter()
            data_dir = config.crossval_split_dir(processed_dir, seed)
            prepare(raw_dir, data_dir, seed=seed)
            log(f"split {seed}: training {members} member(s)")
            results = train_members(
                configs, data_dir, config.crossval_split_dir(models_dir, seed), log=log,
                progress=progress, parent=parent, tags={"split": seed},
            )  # fmt: skip
            checkpoints = [r.checkpoint for r in results]
            accs, ensemble, tta, n_val = score_split(checkpoints, data_dir, cfg.device)
            scores.append(SplitScore(seed, accs, ensemble, tta, n_val))
            log(
                f"split {seed}: members {' '.join(f'{a:.2%}' for a in accs)} | ensemble "
                f"{ensemble:.2%} | ensemble+TTA {tta:.2%} on {n_val:,} val digits "
                f"({time.perf_counter() - start:.0f} s)"
            )
            metrics = dict(ensemble_acc=ensemble, tta_acc=tta, member_acc=statistics.mean(accs))
            parent.log_metrics(metrics, seed)
        differ = len({(describe(c), c.epochs) for c in configs}) > 1  # `best`'s members
        nets = ", ".join(f"{describe(c)} x{c.epochs} epochs" for c in configs) if differ else ""
        result = CrossValidation(cfg, members, scores, nets, parent.id())
        for name, (mean, sd) in {"ensemble": result.ensemble, "tta": result.tta}.items():
            parent.log_metrics({f"{name}_acc_mean": mean, f"{name}_acc_sd": sd})
    return result


def format_summary(result: CrossValidation) -> str:
    nets = result.nets or f"{result.config.model}, {result.config.epochs} epochs"
    lines = [
        f"crossval: recipe {result.config.recipe or 'custom'} ({nets}), "
        f"{result.members} member(s) x {len(result.splits)} split(s)"
    ]
    rows = {"single model": result.member, "ensemble": result.ensemble, "ensemble+TTA": result.tta}
    lines += [f"{name:14} mean {mean:.3%}  sd {sd:.3%}" for name, (mean, sd) in rows.items()]
    return "\n".join(lines)
