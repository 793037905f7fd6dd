"""torch.compile with a per-model fallback: a model that cannot compile runs eagerly.

On CUDA the step is captured in CUDA graphs (one replay per step instead of ~100 launches);
where compiling fails (no compiler, an unsupported op) only that model falls back, so the
process-global `torch._dynamo.config.suppress_errors` is never touched.
"""

import warnings
from collections.abc import Callable

import torch
from torch import nn


class CompiledOrEager:
    """Call a torch.compile'd module; if compiling fails on its first call, run eagerly.

    Compiling happens on the first call, so that is where a missing compiler or an unsupported
    op shows. The fallback is local to this model (torch's process-global
    `torch._dynamo.config.suppress_errors` stays as it is); once a call has succeeded, errors
    are the model's own and propagate.
    """

    def __init__(self, compiled: Callable, eager: nn.Module):
        self.compiled, self.eager, self.succeeded = compiled, eager, False

    def __call__(self, *args, **kwargs):
        if self.compiled is not None:
            try:
                out = self.compiled(*args, **kwargs)
            except Exception as exc:
                if self.succeeded:
                    raise
                reason = " ".join(str(exc).split())[:200]
                warnings.warn(f"torch.compile failed, running eagerly: {reason}", stacklevel=2)
                self.compiled = None
            else:
                self.succeeded = True
                return out
        return self.eager(*args, **kwargs)


def compile_for(model: nn.Module, device: torch.device, backend: str | Callable = "inductor"):
    """torch.compile; on CUDA with CUDA graphs (one replay per step instead of ~100 launches).

    Where compiling fails (no compiler, an unsupported op) the model runs eagerly instead.
    """
    mode = "reduce-overhead" if device.type == "cuda" and backend == "inductor" else None
    return CompiledOrEager(torch.compile(model, mode=mode, backend=backend), model)
