"""Where a command's wall time goes: its phases (`phase("load")`, ...), an inner one taken out
of the outer. Under PIPELINE_TIMINGS=<path> (`pipeline bench`) the CLI writes them there on
the way out, with FIRST_PHASE_AT, from which the bench takes start-up. Light: stages import it.
"""

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ENV_VAR = "PIPELINE_TIMINGS"
FIRST_PHASE_AT = "first_phase_at"

PHASES: dict[str, float] = {}
_open: list[list] = []  # [name, start] of the phases entered and not yet left, innermost last
_started: dict[str, float] = {}  # {FIRST_PHASE_AT: time.time()} once the first phase began


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Add the block's wall seconds to PHASES[name], less the time spent in inner phases."""
    _started.setdefault(FIRST_PHASE_AT, time.time())
    now = time.perf_counter()
    if _open:
        outer = _open[-1]
        PHASES[outer[0]] = PHASES.get(outer[0], 0.0) + now - outer[1]
    entry = [name, now]
    _open.append(entry)
    try:
        yield
    finally:
        now = time.perf_counter()
        PHASES[name] = PHASES.get(name, 0.0) + now - entry[1]
        _open.pop()
        if _open:
            _open[-1][1] = now


def write_requested() -> None:
    """Write the phases (and FIRST_PHASE_AT) as JSON to $PIPELINE_TIMINGS, if it is set."""
    if target := os.environ.get(ENV_VAR):
        from pipeline.common.files import write_json

        write_json(_started | PHASES, Path(target))
