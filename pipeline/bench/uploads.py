"""A bounded load test of `pipeline serve` under large uploads, against small requests.

One live server (`live_server`, 127.0.0.1 only) takes two runs in turn: small JSON digits
(`loadtest`), then 25-megapixel PNG uploads (about 50 KB of file each, 25 MB decoded) from C
concurrent clients. During each run a probe asks /api/health every 50 ms, and after each the
server's peak resident memory (VmHWM, Linux) is read: large uploads must neither starve the
event loop nor grow the server without bound. Counts and times are bounded; the run always ends.
"""

import http.client
import io
import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import config
from pipeline.bench.loadtest import (
    CLIENTS,
    LoadResult,
    connection_to,
    digit_bodies,
    expected_labels,
    load_test,
)
from pipeline.common.errors import PipelineError

UPLOADS = 32
UPLOAD_SIDE = 5000  # 25 megapixels: the server's MAX_IMAGE_PIXELS
SMALL_REQUESTS = 1_000
HEALTH_EVERY_S = 0.05


@dataclass(frozen=True)
class ServeRun:
    """One run against the server: what the clients saw, /api/health during it, memory after."""

    name: str
    load: LoadResult
    refused: int  # 503 answers (busy): the server shedding load, not failing
    health_ms: np.ndarray  # one per probe during the run
    peak_bytes: int | None  # the server's VmHWM after the run (None off Linux)

    def summary(self) -> str:
        health = self.health_ms if len(self.health_ms) else np.zeros(1)
        peak = f"{self.peak_bytes / 2**20:,.0f} MB" if self.peak_bytes else "n/a"
        return (
            f"{self.name}: {self.load.summary()}, {self.refused} busy (503); /api/health "
            f"p50 {np.percentile(health, 50):.1f} ms, p99 {np.percentile(health, 99):.1f} ms, "
            f"max {health.max():.1f} ms over {len(self.health_ms)} probes; server peak "
            f"memory {peak}"
        )


def large_png(side: int = UPLOAD_SIDE) -> bytes:
    """A side x side grey PNG of a digit 1 (a thick stroke): tens of KB, side**2 bytes decoded."""
    from PIL import Image

    pixels = np.full((side, side), 255, np.uint8)
    pixels[side // 5 : 4 * side // 5, side // 2 - side // 25 : side // 2 + side // 25] = 0
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def multipart(data: bytes, name: str = "digit.png") -> tuple[bytes, str]:
    """(body, Content-Type) of a form whose field `file` holds `data`."""
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    return (
        head + data + f"\r\n--{boundary}--\r\n".encode(),
        f"multipart/form-data; boundary={boundary}",
    )


@contextmanager
def health_probe(url: str, every_s: float = HEALTH_EVERY_S) -> Iterator[list[float]]:
    """Ask /api/health every `every_s` s on its own connection while the block runs; the list
    fills with latencies in ms (a failed probe counts as its timeout)."""
    latencies: list[float] = []
    done = threading.Event()

    def probe() -> None:
        connection = connection_to(url, timeout=10.0)
        while not done.wait(every_s):
            started = time.perf_counter()
            try:
                connection.request("GET", "/api/health")
                connection.getresponse().read()
                latencies.append((time.perf_counter() - started) * 1000)
            except (OSError, http.client.HTTPException):
                latencies.append(10_000.0)
                connection.close()
                connection = connection_to(url, timeout=10.0)
        connection.close()

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    try:
        yield latencies
    finally:
        done.set()
        thread.join(15)


def upload_test(
    url: str, uploads: int = UPLOADS, clients: int = CLIENTS, timeout: float = 60.0
) -> tuple[LoadResult, int]:
    """POST `uploads` large PNGs from `clients` threads; (timings, how many got 503)."""
    body, content_type = multipart(large_png())
    next_index = iter(range(uploads))
    take = threading.Lock()
    latencies: list[float] = []
    counts = {"errors": 0, "refused": 0}

    def client() -> None:
        connection = connection_to(url, timeout)
        while True:
            with take:
                if next(next_index, None) is None:
                    break
            started = time.perf_counter()
            try:
                connection.request(
                    "POST", "/api/predict", body, headers={"Content-Type": content_type}
                )
                response = connection.getresponse()
                answer = json.loads(response.read())
                status = response.status
            except (OSError, http.client.HTTPException, ValueError):
                status, answer = 0, {}
                connection.close()
                connection = connection_to(url, timeout)
            with take:
                latencies.append(time.perf_counter() - started)
                counts["refused"] += status == 503
                counts["errors"] += status not in (200, 503) or (
                    status == 200 and answer.get("label") != 1
                )
        connection.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    result = LoadResult(uploads, clients, counts["errors"], seconds, np.array(latencies) * 1000)
    return result, counts["refused"]


def run_upload_bench(
    checkpoints: list[Path],
    processed_dir: Path = config.PROCESSED_DIR,
    uploads: int = UPLOADS,
    requests: int = SMALL_REQUESTS,
    clients: int = CLIENTS,
) -> list[ServeRun]:
    """Small JSON requests, then large uploads, against one live server on 127.0.0.1."""
    from pipeline.bench.live_server import memory_bytes, running_server

    if min(uploads, requests, clients) < 1 or max(uploads, requests) > 10_000 or clients > 64:
        raise PipelineError("uploads and requests must be 1-10,000, clients 1-64")
    bodies = digit_bodies(processed_dir)
    pid: list[int] = []
    runs = []
    with running_server(checkpoints, "cpu", started=pid.append) as url:
        labels = expected_labels(url, bodies)  # warms the server up, untimed
        with health_probe(url) as health:
            small = load_test(url, bodies, labels, requests, clients)
        runs.append(
            ServeRun("small JSON digits", small, 0, np.array(health), memory_bytes(pid[0]))
        )
        with health_probe(url) as health:
            large, refused = upload_test(url, uploads, clients)
        name = f"{UPLOAD_SIDE}x{UPLOAD_SIDE} PNG uploads"
        runs.append(ServeRun(name, large, refused, np.array(health), memory_bytes(pid[0])))
    return runs
