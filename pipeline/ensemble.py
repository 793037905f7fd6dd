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
from pipeline.tracking import NO_RUN, tracked_train, train_params
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
    parent=NO_RUN,
    tags: dict | None = None,
) -> list[TrainResult]:
    """Train this rank's share of `members` into `<models_dir>/<name>-<k>.pt`, each member a
    tracked run under `parent` (tagged `member` and `tags`)."""
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
        member_tags = {"member": member, **(tags or {})}
        run = parent.child(out.stem, "ensemble", train_params(member_cfg), member_tags)
        with single_process():
            result = tracked_train(
                train,
                run,
                member_cfg,
                out,
                processed_dir=processed_dir,
                log=log,
                progress=progress,
            )
        results.append(result)
    return results
