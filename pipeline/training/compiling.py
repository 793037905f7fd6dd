"""torch.compile with a per-model fallback: a model whose first (compiling) call fails runs
eagerly, without touching the process-global `torch._dynamo.config.suppress_errors`."""

import warnings
from collections.abc import Callable

import torch
from torch import nn


class CompiledOrEager:
    """A compiled module that runs eagerly if its first call fails; later errors propagate."""

    def __init__(self, compiled: Callable, eager: nn.Module):
        self.compiled, self.eager, self.succeeded = compiled, eager, False

    def __call__(self, *args, **kwargs):
        if self.compiled is not None:
            try:
                out = self.compiled(*args, **kwargs)
                self.succeeded = True
                return out
            except Exception as exc:
                if self.succeeded:
                    raise
                reason = " ".join(str(exc).split())[:200]
                warnings.warn(f"torch.compile failed, running eagerly: {reason}", stacklevel=2)
                self.compiled = None
        return self.eager(*args, **kwargs)


def compile_for(model: nn.Module, device: torch.device, backend: str | Callable = "inductor"):
    """On CUDA with CUDA graphs: one replay per step instead of ~100 launches."""
    mode = "reduce-overhead" if device.type == "cuda" and backend == "inductor" else None
    return CompiledOrEager(torch.compile(model, mode=mode, backend=backend), model)
