"""Serve under hostile clients: bounded decodes, body deadlines, prompt shutdown, origin and
host checks, security headers, no absolute paths, non-finite outputs as 503."""

import asyncio
import http.client
import json
import os
import platform
import re
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
import torch

from pipeline.common.errors import PipelineError
from pipeline.serve.digitize import MAX_DECODED_BYTES, decoded_bytes

from conftest import require

fastapi = require("fastapi")
from starlette.exceptions import HTTPException  # noqa: E402

from pipeline.serve.app import create_app  # noqa: E402
from pipeline.serve.limits import (  # noqa: E402
    DecodeSlots,
    host_name,
    is_loopback,
    network_warning,
    read_body,
)
from pipeline.serve.server import load_served  # noqa: E402

LOCAL = "http://127.0.0.1:8000"


def _sentence(response) -> str:
    detail = response.json()["detail"]
    assert re.fullmatch(r"[A-Z].{5,200}[.;a-z]", detail) and "\n" not in detail, detail
    return detail


@pytest.fixture(scope="module")
def models(fast_checkpoint):
    torch.set_num_threads(1)
    return load_served([fast_checkpoint], "cpu")


@pytest.fixture(scope="module")
def client(models):
    from fastapi.testclient import TestClient

    with TestClient(create_app(models), base_url=LOCAL, raise_server_exceptions=False) as c:
        yield c


def _png_header(width: int, height: int, bit_depth: int, colour_type: int) -> bytes:
    """A PNG whose header announces width x height; its one IDAT row is all there is."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    idat = zlib.compress(b"\0" * (1 + width * 8))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


# ------------------------------------------------------------------------ decoded size


def test_decoded_size_counts_the_mode():
    assert decoded_bytes("L", (5000, 5000)) == 25_000_000
    assert decoded_bytes("I;16", (5000, 5000)) == 50_000_000
    assert decoded_bytes("RGB", (5000, 5000)) == 100_000_000  # Pillow stores RGB as RGBX


def test_an_image_too_large_to_decode_is_refused_from_its_header(client):
    """16-bit RGBA 5000x4000: under the pixel limit, 80 MB once decoded (it stayed resident)."""
    data = _png_header(5000, 4000, 16, 6)
    assert len(data) < 100_000
    response = client.post("/api/predict", files={"file": ("big.png", data, "image/png")})
    assert response.status_code == 422
    detail = _sentence(response)
    assert "5000x4000" in detail and f"{MAX_DECODED_BYTES // 2**20} MB" in detail, detail
    assert client.get("/api/health").status_code == 200


def test_decodes_are_bounded_and_the_rest_wait_briefly_then_get_busy():
    import threading

    release = threading.Event()

    async def scenario():
        slots = DecodeSlots(slots=1, waiting=1, wait_s=0.3)
        first = asyncio.ensure_future(slots.run(release.wait, 5))
        await asyncio.sleep(0)  # one turn of the loop: first holds the slot
        second = asyncio.ensure_future(slots.run(lambda: "second"))
        await asyncio.sleep(0)  # second waits for it
        with pytest.raises(HTTPException, match="decoding 1 images with more waiting") as busy:
            await slots.run(lambda: "third")  # the queue is full: at once
        assert busy.value.status_code == 503
        with pytest.raises(HTTPException, match="within 0.3 s") as busy:
            await second  # waited 0.3 s for the busy slot
        assert busy.value.status_code == 503 and busy.value.headers == {"Retry-After": "2"}
        release.set()
        assert await first is True
        assert await slots.run(lambda: "again") == "again"  # the slot came back

    asyncio.run(scenario())


# ------------------------------------------------------------------------ bodies


def test_a_body_that_does_not_arrive_in_time_gets_408():
    async def scenario():
        async def never():
            await asyncio.sleep(60)

        stopping = asyncio.Event()
        started = time.monotonic()
        refused = await read_body(never, 1000, stopping, timeout_s=0.2)
        assert refused == (408, "The body did not arrive within 0.2 seconds.")
        assert time.monotonic() - started < 2
        asyncio.get_running_loop().call_later(0.05, stopping.set)
        assert (await read_body(never, 1000, stopping))[0] == 503  # shutting down: at once

    asyncio.run(scenario())


# ------------------------------------------------------------------------ who may ask


def test_security_headers_and_a_page_that_satisfies_its_policy(client):
    page = client.get("/")
    for response in (page, client.get("/api/health"), client.get("/nowhere")):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "unsafe-inline" not in policy
    assert "<script>" not in page.text and "style=" not in page.text  # nothing inline


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example", "Content-Type": "text/plain"},
        {"Origin": "null", "Content-Type": "application/x-www-form-urlencoded"},
        {"Sec-Fetch-Site": "cross-site", "Content-Type": "text/plain"},
    ],
)
def test_cross_origin_posts_are_refused(client, headers):
    body = json.dumps({"pixels": [0] * 784})
    response = client.post("/api/predict", content=body, headers=headers)
    assert response.status_code == 403
    assert _sentence(response) == (
        "Cross-origin requests are refused; post from this server's own page."
    )


def test_the_page_own_posts_pass(client):
    body = {"pixels": [0] * 784}
    own = {"Origin": LOCAL, "Sec-Fetch-Site": "same-origin"}
    assert client.post("/api/predict", json=body, headers=own).status_code == 200
    assert client.post("/api/predict", json=body).status_code == 200  # curl: no Origin


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "10.0.0.1", ""])
def test_a_foreign_host_header_is_refused_on_loopback(client, host):
    response = client.get("/api/model", headers={"Host": host})
    assert response.status_code == 400 and "is not this server's" in _sentence(response)


def test_host_names_and_network_warning():
    assert [host_name(h) for h in ("[::1]:8000", "localhost:80", "127.0.0.1", "::1")] == [
        "::1",
        "localhost",
        "127.0.0.1",
        "::1",
    ]
    assert all(is_loopback(h) for h in ("127.0.0.1", "::1", "localhost", "127.0.0.2"))
    for host in ("0.0.0.0", "::", "192.168.1.5"):
        assert "reachable from the network" in network_warning(host)
    assert network_warning("127.0.0.1") is None


def test_model_info_reveals_no_absolute_path(client, fast_checkpoint):
    text = client.get("/api/model").text
    assert str(fast_checkpoint.parent) not in text and "/tmp" not in text
    assert json.loads(text)["checkpoints"][0]["path"] == "fastnet.pt"


# ------------------------------------------------------------------------ broken models


def test_non_finite_outputs_are_a_503_and_the_server_keeps_serving(fast_checkpoint, tmp_path):
    """Weights large enough to overflow: refused at start-up in one line (the warm-up digit
    already overflows); a model that overflows only later gives a 503 sentence, never a 500."""
    from fastapi.testclient import TestClient

    from pipeline.training.checkpoints import read_payload

    payload = read_payload(fast_checkpoint)
    payload["state_dict"] = {k: v * 1e30 if v.is_floating_point() else v
                             for k, v in payload["state_dict"].items()}  # fmt: skip
    broken = tmp_path / "broken.pt"
    torch.save(payload, broken)
    with pytest.raises(PipelineError, match="broken.pt: its outputs are NaN or infinite"):
        load_served([broken], "cpu")
    backend = load_served([fast_checkpoint], "cpu")
    with torch.no_grad():  # overflows from now on, after the warm-up passed
        for parameter in backend.members[0].model.parameters():
            parameter.mul_(1e30)
    app = create_app(backend)
    with TestClient(app, base_url=LOCAL, raise_server_exceptions=False) as client:
        digit = {"pixels": [0] * 392 + [255] * 392}
        for _ in range(2):
            response = client.post("/api/predict", json=digit)
            assert response.status_code == 503
            assert "non-finite" in _sentence(response)
        assert client.get("/api/health").json() == {"status": "ok"}


# ------------------------------------------------------------------------ a real server


def _serve(checkpoint: Path) -> tuple[subprocess.Popen, str]:
    child = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "serve", "--port", "0", "--device", "cpu"]
        + ["--checkpoint", str(checkpoint)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    line = child.stdout.readline()
    assert line.startswith("serve: http://127.0.0.1:"), line + child.stderr.read()
    return child, line.split()[1]


@pytest.mark.slow
@pytest.mark.parametrize("signals", [[signal.SIGINT], [signal.SIGTERM], [signal.SIGINT] * 2])
def test_a_client_with_an_unfinished_body_does_not_hold_up_shutdown(fast_checkpoint, signals):
    child, url = _serve(fast_checkpoint)
    port = int(url.rstrip("/").rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as slow:
        slow.sendall(
            b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b'Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n{"pixels": ['
        )
        time.sleep(0.5)
        started = time.monotonic()
        for signum in signals:
            child.send_signal(signum)
            time.sleep(0.3)
        stdout, stderr = child.communicate(timeout=30)
        took = time.monotonic() - started
        answer = slow.recv(4096).decode(errors="replace")
    assert took < 8, f"shutdown took {took:.1f} s"
    assert child.returncode == 0 and stderr == "", stderr  # a server's normal stop
    assert stdout.strip().endswith("serve: stopped"), stdout
    assert answer == "" or " 503 " in answer.splitlines()[0], answer


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
def test_large_uploads_keep_memory_bounded_and_health_answers(fast_checkpoint):
    """Eight concurrent 25-megapixel PNGs (48 KB each) took the server from 0.85 to 4.1 GB and
    /api/health to 0.6-1.6 s."""
    from pipeline.bench.serve_load import memory_bytes, running_server, upload_test

    with running_server([fast_checkpoint]) as server:
        before = memory_bytes(server.pid, "VmRSS")
        result = upload_test(server.url, uploads=16, clients=8)
        health = result.health_ms
        peak, after = memory_bytes(server.pid), memory_bytes(server.pid, "VmRSS")
    assert result.errors == 0 and result.refused <= 8, result.summary()
    grown = (peak - before) / 2**20
    # 16 grey 25-megapixel PNGs (25 MB each decoded): +360 MB at the peak before the decodes
    # were bounded, about +60 MB after (2 at a time, each reduced in place).
    assert grown < 250, f"the server grew by {grown:.0f} MB at its peak"
    assert (after - before) / 2**20 < 150, "memory was not handed back after the decodes"
    assert len(health) > 0 and max(health) < 3000, health  # a loaded 2-core box: loose


def test_a_client_that_never_finishes_its_headers_is_cut_off(models, monkeypatch):
    """uvicorn has no header deadline of its own: a half-sent request line held a connection."""
    import threading

    import uvicorn

    from pipeline.serve import limits
    from pipeline.serve.server import AnnouncingServer, HeaderDeadline

    monkeypatch.setattr(limits, "HEADER_TIMEOUT_S", 0.5)
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        port = listening.getsockname()[1]
        config = uvicorn.Config(
            create_app(models), log_level="warning", lifespan="off",
            http=HeaderDeadline, timeout_keep_alive=30,
        )  # fmt: skip
        listening_now = threading.Event()
        server = AnnouncingServer(config, "listening", ready=listening_now.set)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [listening]})
        thread.start()
        try:
            assert listening_now.wait(30), "the server never started"
            # recv waits for the server to close (b""), or raises after the 5 s timeout
            with socket.create_connection(("127.0.0.1", port), timeout=5) as half:
                half.sendall(b"GET /api/hea")
                sent = time.monotonic()
                assert half.recv(100) == b""  # closed by the server
                assert time.monotonic() - sent > 0.3  # at the deadline, not at once
            with socket.create_connection(("127.0.0.1", port), timeout=5) as whole:
                whole.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                answer = http.client.HTTPResponse(whole)
                answer.begin()
                assert answer.status == 200 and answer.read() == b'{"status":"ok"}'
                answered = time.monotonic()
                assert whole.recv(100) == b""  # idle after an answer: the deadline applies again
                assert time.monotonic() - answered > 0.3
        finally:
            server.should_exit = True
            thread.join(10)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator only")
def test_freed_memory_goes_back_through_glibcs_malloc_trim():
    """Python has no API to return freed arena pages; `limits` reaches glibc through ctypes."""
    from pipeline.serve import limits

    assert limits._malloc_trim is not None
    assert limits._malloc_trim(0) in (0, 1)  # 1: memory was released, 0: there was none
