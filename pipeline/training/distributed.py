"""This process's place among torchrun's workers and the collective calls training uses (no-ops
for rank 0 of 1 without torchrun)."""

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from pipeline.common.device import resolve_device
from pipeline.common.errors import PipelineError


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
def process_group(ranks: Ranks, device: torch.device) -> Iterator[None]:
    """Join torchrun's process group (nccl on GPU, gloo on CPU) for the duration."""
    if ranks.world == 1 or dist.is_initialized():
        yield
        return
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
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


def first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]


@contextmanager
def independent_ranks(ranks: Ranks) -> Iterator[Callable[[], None]]:
    """`meet()` for ranks that work alone (an ensemble's members) and meet at the end. Each
    beats in torchrun's store (a collective would wait out its timeout for a lost rank); one
    silent for PIPELINE_LOST_RANK_SECONDS (120) or failed ends `meet` in a line naming it."""
    if ranks.world == 1:
        yield lambda: None
        return
    lost_after = float(os.environ.get("PIPELINE_LOST_RANK_SECONDS", 120))
    address, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    host = ranks.is_main and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True"
    tcp = dist.TCPStore(address, port, is_master=host, timeout=timedelta(seconds=lost_after))
    run = os.environ.get("TORCHELASTIC_RUN_ID", "none")
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    store, stop = dist.PrefixStore(f"pipeline/{run}/{restart}/", tcp), threading.Event()

    def beat() -> None:
        while not stop.wait(min(5.0, lost_after / 4)):
            with suppress(dist.DistError):  # the store is gone: the others notice the silence
                store.add(f"alive/{ranks.rank}", 1)

    def meet() -> None:
        try:
            store.set(f"done/{ranks.rank}", "1")
            seen = {r: (-1, time.monotonic()) for r in range(ranks.world) if r != ranks.rank}
            while seen:
                for r, (beats, since) in list(seen.items()):
                    if store.check([f"failed/{r}"]):
                        failed = store.get(f"failed/{r}").decode()
                        raise PipelineError(f"rank {r} stopped: {failed}")
                    if store.check([f"done/{r}"]):
                        del seen[r]
                    elif (now := store.add(f"alive/{r}", 0)) != beats:
                        seen[r] = now, time.monotonic()
                    elif time.monotonic() - since > lost_after:
                        raise PipelineError(
                            f"rank {r} of {ranks.world} has been silent for {lost_after:.0f} s "
                            "(its process or machine is gone; PIPELINE_LOST_RANK_SECONDS sets "
                            "the wait)"
                        )
                time.sleep(0.5)
        except dist.DistError as exc:  # the store's host (the first node's agent) is gone
            message = f"torchrun's store at {address}:{port}: {first_line(exc)}"
            raise PipelineError(message) from None

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield meet
    except BaseException as exc:
        with suppress(dist.DistError):
            store.set(f"failed/{ranks.rank}", first_line(exc))
        raise
    finally:
        stop.set()
        thread.join()
