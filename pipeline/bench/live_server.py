"""`pipeline serve` in a child process on a free loopback port, for the load test and the tests.

The server runs exactly as a user starts it (`python -m pipeline serve`), so what is measured
or tested is the real command: its start-up line, its socket, its Ctrl-C.
"""

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pipeline.common.errors import PipelineError


@dataclass(frozen=True)
class LiveServer:
    url: str
    pid: int  # the server process, for its memory figures


@contextmanager
def running_server(
    checkpoints: list[Path],
    device: str = "cpu",
    host: str = "127.0.0.1",
    timeout: float = 120,
    started: Callable[[int], None] | None = None,
) -> Iterator[str]:
    """Run `pipeline serve` in a child process on a free port; yield its URL; Ctrl-C it on exit.

    `started(pid)` is called with the child's process id (to read its memory). Raises
    PipelineError with the child's last output line if it does not start in `timeout` s.
    """
    with running_server_process(checkpoints, device, host, timeout) as server:
        if started is not None:
            started(server.pid)
        yield server.url


@contextmanager
def running_server_process(
    checkpoints: list[Path], device: str = "cpu", host: str = "127.0.0.1", timeout: float = 120
) -> Iterator[LiveServer]:
    """`running_server`, yielding the child's pid with its URL."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    child = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "serve", "--host", host, "--port", "0"]
        + ["--device", device]
        + [arg for path in checkpoints for arg in ("--checkpoint", str(path))],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    lines: list[str] = []
    listening = threading.Event()

    def read() -> None:  # drain the child's output so it never blocks on a full pipe
        for line in child.stdout:
            lines.append(line.rstrip())
            if line.startswith("serve: http"):
                listening.set()
        listening.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        if not listening.wait(timeout) or child.poll() is not None:
            last = next((line for line in reversed(lines) if line.strip()), "no output")
            raise PipelineError(f"the server did not start: {last}")
        url = next(line for line in lines if line.startswith("serve: http")).split()[1]
        yield LiveServer(url, child.pid)
    finally:
        if child.poll() is None:
            child.send_signal(signal.SIGINT)  # as Ctrl-C does
            try:
                child.wait(15)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        reader.join(5)


def memory_bytes(pid: int, key: str = "VmHWM") -> int | None:
    """VmHWM (peak) or VmRSS (now) of a process from /proc, in bytes; None off Linux."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    line = next((x for x in status.splitlines() if x.startswith(f"{key}:")), None)
    return int(line.split()[1]) * 1024 if line else None
