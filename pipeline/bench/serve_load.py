"""Bounded load tests of `pipeline serve`, started as a user starts it, on 127.0.0.1 only:
client threads on keep-alive connections POST JSON digits or 25-megapixel PNGs while a probe
asks /api/health; the server's memory is read from /proc."""

import http.client
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit

import numpy as np

from pipeline import config
from pipeline.common.errors import PipelineError

REQUESTS = 2_000
CLIENTS = 8
UPLOADS = 32
UPLOAD_SIDE = 5000  # 25 megapixels: the server's MAX_IMAGE_PIXELS
HEALTH_EVERY_S = 0.05
JSON = "application/json"


class LiveServer(NamedTuple):
    url: str
    pid: int  # the server process, for its memory figures


@contextmanager
def running_server(checkpoints: list[Path]) -> Iterator[LiveServer]:
    """`pipeline serve` on the CPU on a free port until the block ends, then Ctrl-C."""
    child = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "serve", "--host", "127.0.0.1", "--port", "0"]
        + ["--device", "cpu"]
        + [arg for path in checkpoints for arg in ("--checkpoint", str(path))],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
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
        if not listening.wait(120) or child.poll() is not None:
            last = next((line for line in reversed(lines) if line.strip()), "no output")
            raise PipelineError(f"the server did not start: {last}")
        url = next(line for line in lines if line.startswith("serve: http")).split()[1]
        yield LiveServer(url, child.pid)
    finally:
        child.send_signal(signal.SIGINT)  # as Ctrl-C does; nothing if it has stopped
        with suppress(subprocess.TimeoutExpired):
            child.wait(15)
        child.kill()
        child.wait()
        reader.join(5)


def memory_bytes(pid: int, key: str = "VmHWM") -> int | None:
    """VmHWM (peak) or VmRSS (now) in bytes; None off Linux."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    line = next((x for x in status.splitlines() if x.startswith(f"{key}:")), None)
    return int(line.split()[1]) * 1024 if line else None


@dataclass(frozen=True)
class LoadResult:
    name: str
    requests: int
    clients: int
    errors: int  # wrong or failed answers (a 503 only where the test does not allow it)
    refused: int  # 503 answers (busy): the server shedding load, not failing
    seconds: float
    latencies_ms: np.ndarray  # one per request that got an answer, in completion order
    health_ms: list[float]  # /api/health latencies, one per probe
    loaded: int | None = None  # the server's resident bytes once loaded (None off Linux)
    peak: int | None = None  # ... and its peak, after the run

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: float, of: str = "latencies_ms") -> float:
        values = getattr(self, of)
        return float(np.percentile(values, q)) if len(values) else 0.0

    def summary(self) -> str:
        mb = lambda value: "n/a" if value is None else f"{value / 2**20:,.0f} MB"  # noqa: E731
        return (
            f"{self.name}: {self.requests:,} requests, {self.clients} clients: "
            f"p50 {self.percentile(50):.1f} ms, p95 {self.percentile(95):.1f} ms, "
            f"p99 {self.percentile(99):.1f} ms, {self.requests_per_second:,.0f} requests/s, "
            f"{self.errors} errors, {self.refused} busy (503); /api/health "
            f"p50 {self.percentile(50, 'health_ms'):.1f} ms, "
            f"p99 {self.percentile(99, 'health_ms'):.1f} ms, "
            f"max {self.percentile(100, 'health_ms'):.1f} ms over {len(self.health_ms)} probes; "
            f"server memory {mb(self.loaded)} after loading, {mb(self.peak)} peak"
        )


def digit_bodies(processed_dir: Path, count: int = 200) -> list[bytes]:
    from pipeline.data.datasets import TensorDigits

    images = TensorDigits.load(processed_dir, "val").images[:count]
    return [json.dumps({"pixels": row}).encode() for row in images.flatten(1).tolist()]


def connection_to(url: str, timeout: float) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise PipelineError(f"{url}: the load test only targets a loopback address")
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)


def send(
    connection: http.client.HTTPConnection, path: str, body: bytes | None = None, content_type=JSON
) -> tuple[int, bytes, float | None]:
    """(status, answer, seconds) of a POST with a body, else a GET; (0, b"", None) if it failed,
    and the connection closed: http.client opens a new one for the next request."""
    started = time.perf_counter()
    try:
        connection.request(
            "GET" if body is None else "POST", path, body, {"Content-Type": content_type}
        )
        response = connection.getresponse()
        return response.status, response.read(), time.perf_counter() - started
    except (OSError, http.client.HTTPException):
        connection.close()
        return 0, b"", None


def expected_labels(url: str, bodies: list[bytes]) -> list[int]:
    """The server's label for each body, one at a time (a warm-up too): under load an error is
    a changed or failed answer, never a digit the model simply gets wrong."""
    labels = []
    with closing(connection_to(url, 10.0)) as connection:
        for body in bodies:
            status, answer, _ = send(connection, "/api/predict", body)
            if status != 200:
                raise PipelineError(f"{url}: answered {status} to a valid digit: {answer[:200]!r}")
            labels.append(json.loads(answer)["label"])
    return labels


def hammer(
    url: str, name: str, asks: list[tuple[bytes, str, int]], clients: int, timeout: float
) -> LoadResult:
    """POST each (body, Content-Type, expected label) of `asks` from `clients` threads released
    together, while a probe asks /api/health every HEALTH_EVERY_S s (a failed probe counts as
    10 s); any other answer is an error, but a 503 to an upload."""
    queue = iter(asks)
    take = threading.Lock()
    latencies: list[float] = []
    health: list[float] = []
    counts = {"errors": 0, "refused": 0}
    start_line = threading.Barrier(clients + 2)
    done = threading.Event()

    def client() -> None:
        connection = connection_to(url, timeout)
        start_line.wait()
        while True:
            with take:
                ask = next(queue, None)
            if ask is None:
                break
            body, content_type, expected = ask
            status, answer, seconds = send(connection, "/api/predict", body, content_type)
            try:
                right = status == 200 and json.loads(answer)["label"] == expected
            except (ValueError, KeyError, TypeError):
                right = False
            with take:
                latencies.extend([] if seconds is None else [seconds])
                counts["errors"] += not (right or (content_type != JSON and status == 503))
                counts["refused"] += status == 503
        connection.close()

    def probe() -> None:
        connection = connection_to(url, timeout=10.0)
        start_line.wait()
        while not done.wait(HEALTH_EVERY_S):
            seconds = send(connection, "/api/health")[2]
            health.append(10_000.0 if seconds is None else seconds * 1000)
        connection.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    prober = threading.Thread(target=probe, daemon=True)
    for thread in (*threads, prober):
        thread.start()
    start_line.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    done.set()
    prober.join(15)
    latencies_ms = np.array(latencies) * 1e3
    return LoadResult(name, len(asks), clients, *counts.values(), seconds, latencies_ms, health)


def upload_test(url: str, uploads: int = UPLOADS, clients: int = CLIENTS) -> LoadResult:
    """POST `uploads` square grey PNGs of a 1 (a thick stroke: tens of KB, 25 MB decoded) as a
    form's field `file`; a 503 is the server shedding load, not an error."""
    from PIL import Image

    side = UPLOAD_SIDE
    pixels = np.full((side, side), 255, np.uint8)
    pixels[side // 5 : 4 * side // 5, side // 2 - side // 25 : side // 2 + side // 25] = 0
    png = io.BytesIO()
    Image.fromarray(pixels).save(png, "PNG")
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="digit.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    body = head + png.getvalue() + f"\r\n--{boundary}--\r\n".encode()
    asks = [(body, f"multipart/form-data; boundary={boundary}", 1)] * uploads
    return hammer(url, f"{side}x{side} PNG uploads", asks, clients, 60.0)


def run_load_test(
    checkpoints: list[Path],
    processed_dir: Path = config.PROCESSED_DIR,
    requests: int = REQUESTS,
    clients: int = CLIENTS,
    uploads: int = 0,
) -> list[LoadResult]:
    """Serve the checkpoints (or `.onnx` graphs) on the CPU, send `requests` validation digits
    as JSON, then `uploads` large PNGs, probing /api/health meanwhile, and stop the server: large
    uploads must neither starve the event loop nor grow the server without bound."""
    if not (1 <= requests <= 10_000 and 0 <= uploads <= 10_000 and 1 <= clients <= 64):
        raise PipelineError("requests must be 1-10,000, uploads 0-10,000, clients 1-64")
    bodies = digit_bodies(processed_dir)
    with running_server(checkpoints) as server:
        loaded = memory_bytes(server.pid, "VmRSS")
        labels = expected_labels(server.url, bodies)  # also warms the server up, untimed
        asks = [(bodies[i % len(bodies)], JSON, labels[i % len(bodies)]) for i in range(requests)]
        runs = [hammer(server.url, "small JSON digits", asks, clients, 10.0)]
        peaks = [memory_bytes(server.pid)]
        if uploads:
            runs.append(upload_test(server.url, uploads, clients))
            peaks.append(memory_bytes(server.pid))
    return [replace(run, loaded=loaded, peak=peak) for run, peak in zip(runs, peaks, strict=True)]
