"""Progress: a tqdm bar on a terminal (redrawn at most once a second: a recorded terminal keeps
every redraw), a line every LINE_SECONDS elsewhere, where tqdm shows nothing."""

import sys
import time
from collections.abc import Callable

from tqdm import tqdm

LINE_SECONDS = 10.0


class EpochProgress:
    def __init__(self, description: str, total: int, initial: int, enabled: bool, log=None):
        self.description, self.total, self.done = description, total, initial
        self.bar = self.log = None
        if enabled and sys.stderr.isatty():
            self.bar = tqdm(
                total=total, initial=initial, leave=False, desc=description, mininterval=1
            )
        elif enabled:
            self.log = log
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


class ImagesLeft:
    """Images trained against a total (an ensemble's members): a bar, and the time left."""

    def __init__(self, total: int, description: str, enabled: bool):
        self.total, self.done, self.start = total, 0, time.perf_counter()
        disable = None if enabled else True  # None: on a terminal only
        self.bar = tqdm(
            total=total, unit="img", unit_scale=True, desc=description, disable=disable
        )

    def update(self, images: int) -> None:
        self.bar.update(images)
        self.done += images

    def left(self) -> str:
        """`, 40 s left` or `, about 3 min left`; empty before the first and after the last."""
        if not self.done or self.done >= self.total:
            return ""
        seconds = (time.perf_counter() - self.start) / self.done * (self.total - self.done)
        return (
            f", about {seconds / 60:.0f} min left" if seconds >= 90 else f", {seconds:.0f} s left"
        )

    def close(self) -> None:
        self.bar.close()
