"""A bounded load benchmark for `pipeline serve`: N requests from C concurrent clients.

A live server runs in a child process on a free loopback port (`live_server`); C
client threads, each with its own keep-alive connection (`http.client`), POST real validation
digits as JSON `{"pixels": [...]}` to /api/predict until N requests have been sent in all, then
the server is stopped. Nothing leaves 127.0.0.1 and the run always ends by itself.
"""

import http.client
import json
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from pipeline import config
from pipeline.common.errors import PipelineError

REQUESTS = 2_000
CLIENTS = 8


@dataclass(frozen=True)
class LoadResult:
    requests: int
    clients: int
    errors: int  # non-200 answers, wrong labels for the digit sent, and failed connections
    seconds: float
    latencies_ms: np.ndarray  # one per request that got an answer, in completion order
    rss_mb: float | None = None  # the server's resident memory once its models are loaded
    peak_rss_mb: float | None = None  # ... and its peak, at the end of the load test

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if len(self.latencies_ms) else 0.0

    def summary(self) -> str:
        return (
            f"{self.requests:,} requests, {self.clients} clients: "
            f"p50 {self.percentile(50):.1f} ms, p95 {self.percentile(95):.1f} ms, "
            f"p99 {self.percentile(99):.1f} ms, {self.requests_per_second:,.0f} requests/s, "
            f"{self.errors} errors"
            + (
                f"; server memory {self.rss_mb:,.0f} MB after loading, "
                f"{self.peak_rss_mb:,.0f} MB peak"
                if self.rss_mb is not None and self.peak_rss_mb is not None
                else ""
            )
        )


def digit_bodies(processed_dir: Path, count: int = 200) -> list[bytes]:
    """JSON bodies `{"pixels": [...]}` of the first `count` validation digits."""
    from pipeline.data.datasets import TensorDigits

    images = TensorDigits.load(processed_dir, "val").images[:count]
    return [json.dumps({"pixels": row}).encode() for row in images.flatten(1).tolist()]


def connection_to(url: str, timeout: float) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise PipelineError(f"{url}: the load test only targets a loopback address")
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)


def _post(connection: http.client.HTTPConnection, body: bytes) -> tuple[int, bytes]:
    connection.request("POST", "/api/predict", body, headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    return response.status, response.read()


def expected_labels(url: str, bodies: list[bytes], timeout: float = 10.0) -> list[int]:
    """The label the server gives each body, asked one at a time (this also warms it up).

    Under load every answer must repeat these labels: an error is a changed or failed answer,
    never a digit the model simply gets wrong.
    """
    connection = connection_to(url, timeout)
    labels = []
    try:
        for body in bodies:
            status, answer = _post(connection, body)
            if status != 200:
                raise PipelineError(f"{url}: answered {status} to a valid digit: {answer[:200]!r}")
            labels.append(json.loads(answer)["label"])
    finally:
        connection.close()
    return labels


def load_test(
    url: str,
    bodies: list[bytes],
    labels: list[int],
    requests: int = REQUESTS,
    clients: int = CLIENTS,
    timeout: float = 10.0,
) -> LoadResult:
    """Send `requests` POSTs from `clients` threads (bodies in turn); time each one."""
    next_index = iter(range(requests))
    take = threading.Lock()
    latencies: list[float] = []
    errors = [0]
    start_line = threading.Barrier(clients + 1)

    def client() -> None:
        connection = connection_to(url, timeout)
        mine, failed = [], 0
        start_line.wait()
        while True:
            with take:
                index = next(next_index, None)
            if index is None:
                break
            body = bodies[index % len(bodies)]
            started = time.perf_counter()
            try:
                status, answer = _post(connection, body)
                ok = status == 200 and json.loads(answer)["label"] == labels[index % len(bodies)]
                mine.append(time.perf_counter() - started)
            except (OSError, http.client.HTTPException, ValueError, KeyError):
                ok = False
                connection.close()
                connection = connection_to(url, timeout)
            failed += not ok
        connection.close()
        with take:
            latencies.extend(mine)
            errors[0] += failed

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    start_line.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    return LoadResult(requests, clients, errors[0], seconds, np.array(latencies) * 1000.0)


def run_load_test(
    checkpoints: list[Path],
    processed_dir: Path = config.PROCESSED_DIR,
    device: str = "cpu",
    requests: int = REQUESTS,
    clients: int = CLIENTS,
) -> LoadResult:
    """Start a server on the checkpoints (or `.onnx` graphs), load it with validation digits,
    stop it. The server's resident memory is read once it has loaded (before any request)
    and its peak once the load is over."""
    from pipeline.bench.live_server import memory_bytes, running_server_process

    if requests < 1 or clients < 1:
        raise PipelineError("--requests and --clients must be positive")
    bodies = digit_bodies(processed_dir)
    with running_server_process(checkpoints, device) as server:
        loaded = memory_bytes(server.pid, "VmRSS")
        labels = expected_labels(server.url, bodies)  # also warms the server up, untimed
        result = load_test(server.url, bodies, labels, requests, clients)
        peak = memory_bytes(server.pid)
    if loaded is None or peak is None:
        return result
    return replace(result, rss_mb=loaded / 2**20, peak_rss_mb=peak / 2**20)
