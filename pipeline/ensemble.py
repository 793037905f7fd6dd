"""Ensembles: several members of one recipe with seeds seed, seed+1, ...; one file per member.

Under torchrun the members are spread over the processes (member k on rank k % world), each
process training whole models on its own device, so no process group is needed.
"""

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from pipeline import config
from pipeline.choices import MAX_SEED
from pipeline.distributed import ranks_from_env, single_process
from pipeline.errors import PipelineError
from pipeline.recipes import TrainConfig
from pipeline.run_state import TrainResult
from pipeline.train import train


def check_member_seeds(seed: int, members: int) -> None:
    """Every member's seed (seed .. seed + members - 1) must be usable, checked before the
    first member trains rather than when a later one fails on a seed nobody typed."""
    if members < 1:
        raise PipelineError(f"--members {members}: must be at least 1")
    last = seed + members - 1
    if seed < 0 or last > MAX_SEED:
        raise PipelineError(
            f"--seed {seed} with --members {members}: member seeds run to {last}, past the "
            f"largest seed {MAX_SEED}; use --seed {MAX_SEED - members + 1} or lower"
        )


def train_ensemble(
    cfg: TrainConfig,
    members: int,
    processed_dir: Path = config.PROCESSED_DIR,
    models_dir: Path = config.MODELS_DIR,
    name: str | None = None,
    log: Callable[[str], None] | None = None,
    progress: bool = True,
) -> list[TrainResult]:
    """Train this rank's share of `members` into `<models_dir>/<name>-<k>.pt`."""
    check_member_seeds(cfg.seed, members)
    ranks = ranks_from_env()
    name = name or cfg.recipe or cfg.model
    results = []
    for member in range(ranks.rank, members, ranks.world):
        member_cfg = replace(cfg, seed=cfg.seed + member)
        if cfg.device in ("auto", "cuda") and torch.cuda.is_available():
            member_cfg = replace(member_cfg, device=f"cuda:{ranks.local_rank}")
        if log:
            log(f"member {member + 1}/{members} (seed {member_cfg.seed})")
        out = config.member_checkpoint_path(name, member, models_dir)
        with single_process():
            results.append(train(member_cfg, processed_dir, out, log=log, progress=progress))
    return results
