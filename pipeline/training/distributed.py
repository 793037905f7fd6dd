"""This process's place among torchrun's workers, and the few collective calls training uses.

Without torchrun (WORLD_SIZE unset or 1) everything here is a no-op for rank 0 of 1, so the
same training code runs one process or many.
"""

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from pipeline.common.device import resolve_device


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def ranks_from_env() -> Ranks:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Ranks()
    return Ranks(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


@contextmanager
def process_group(
    ranks: Ranks, device: torch.device, timeout: timedelta | None = None
) -> Iterator[None]:
    """Join torchrun's process group (nccl on GPU, gloo on CPU) for the duration; `timeout`
    bounds each collective call's wait (torch's default: 10 to 30 minutes)."""
    if ranks.world == 1 or dist.is_initialized():
        yield
        return
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timeout)
    try:
        yield
    finally:
        dist.destroy_process_group()


def training_device(name: str, ranks: Ranks) -> torch.device:
    """The device this rank trains on: its own GPU under torchrun, else `name` resolved."""
    device = resolve_device(name)
    if device.type == "cuda" and ranks.world > 1:
        device = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(device)
    return device


def max_over_ranks(value: int, ranks: Ranks, device: torch.device) -> int:
    """The largest `value` any rank holds (the value itself in a single process)."""
    if ranks.world == 1:
        return value
    flag = torch.tensor([value], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item())


def wait_for_all(ranks: Ranks) -> None:
    if ranks.world > 1:
        dist.barrier()


@contextmanager
def single_process() -> Iterator[None]:
    """Hide torchrun's WORLD_SIZE so a whole model trains in this process alone."""
    saved = os.environ.pop("WORLD_SIZE", None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ["WORLD_SIZE"] = saved
