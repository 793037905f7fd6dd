"""Progress of a training epoch: a tqdm bar on a terminal, a line every LINE_SECONDS elsewhere.

Off a terminal (a file, a CI log) tqdm shows nothing, so plain lines go out there; on one the
bar redraws at most once a second (a recorded terminal keeps every redraw as a line).
"""

import sys
import time
from collections.abc import Callable

from tqdm import tqdm

LINE_SECONDS = 10.0


class EpochProgress:
    def __init__(
        self,
        description: str,
        total: int,
        initial: int,
        enabled: bool,
        log: Callable[[str], None] | None,
    ):
        self.description, self.total, self.done = description, total, initial
        self.bar = None
        self.log = log if enabled else None
        if enabled and sys.stderr.isatty():
            self.bar = tqdm(
                total=total, initial=initial, leave=False, desc=description, mininterval=1.0
            )
            self.log = None
        self.last_line = time.monotonic()

    def step(self, loss: Callable[[], float]) -> None:
        """One step done; `loss()` (which syncs the device) is read only when shown."""
        self.done += 1
        if self.bar is not None:
            self.bar.update()
            if self.done % 25 == 0:
                self.bar.set_postfix(loss=f"{loss():.4f}", refresh=False)
        elif self.log is not None and time.monotonic() - self.last_line >= LINE_SECONDS:
            self.log(f"{self.description}: step {self.done}/{self.total}  loss {loss():.4f}")
            self.last_line = time.monotonic()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
