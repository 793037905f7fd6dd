"""`pipeline serve` in a child process on a free loopback port, for the load test and the tests.

The server runs exactly as a user starts it (`python -m pipeline serve`), so what is measured
or tested is the real command: its start-up line, its socket, its Ctrl-C.
"""

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.errors import PipelineError


@contextmanager
def running_server(
    checkpoints: list[Path], device: str = "cpu", host: str = "127.0.0.1", timeout: float = 120
) -> Iterator[str]:
    """Run `pipeline serve` in a child process on a free port; yield its URL; Ctrl-C it on exit.

    Raises PipelineError with the child's last output line if it does not start in `timeout` s.
    """
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
    started = threading.Event()

    def read() -> None:  # drain the child's output so it never blocks on a full pipe
        for line in child.stdout:
            lines.append(line.rstrip())
            if line.startswith("serve: http"):
                started.set()
        started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        if not started.wait(timeout) or child.poll() is not None:
            last = next((line for line in reversed(lines) if line.strip()), "no output")
            raise PipelineError(f"the server did not start: {last}")
        yield next(line for line in lines if line.startswith("serve: http")).split()[1]
    finally:
        if child.poll() is None:
            child.send_signal(signal.SIGINT)  # as Ctrl-C does
            try:
                child.wait(15)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        reader.join(5)
