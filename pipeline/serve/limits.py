"""What a request may cost `pipeline serve`, and who may send one.

A body is read whole, bounded in size and time, before anything parses it; a server shutting
down refuses bodies still arriving, so Ctrl-C never waits on a client. A page elsewhere can
POST a `text/plain` body to 127.0.0.1 with no CORS preflight, and a DNS name rebound to
127.0.0.1 is same-origin with it: only the server can refuse those (Starlette's
TrustedHostMiddleware refuses `[::1]:8000` and answers in plain text).
"""

import asyncio
import ctypes
import ipaddress
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from fastapi.responses import JSONResponse
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

T = TypeVar("T")

# Room for a phone photo; a JSON digit is about 3 KB.
MAX_BODY_BYTES = 10 * 1024 * 1024
BODY_TIMEOUT_S = 10.0  # the whole body must arrive within this after the headers
HEADER_TIMEOUT_S = 10.0  # h11 bounds their size
KEEP_ALIVE_S = 5.0
GRACEFUL_SHUTDOWN_S = 3.0  # after Ctrl-C, requests still running get this long
MAX_DECODES = 2  # images decoding at once: at most 2 x digitize.MAX_DECODED_BYTES at the peak
MAX_WAITING = 8  # requests that may wait for a decode slot; more get 503 at once
DECODE_WAIT_S = 10.0  # how long one may wait for a slot before 503

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    # The page's own files only; `data:` for its empty favicon and the canvas' images.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
}
# FastAPI's /docs page runs an inline script and loads Swagger UI from a CDN.
DOCS_CSP = "frame-ancestors 'none'; object-src 'none'; base-uri 'none'"
CROSS_ORIGIN = "Cross-origin requests are refused; post from this server's own page."


def is_loopback(host: str) -> bool:
    """Whether a --host value listens on this machine only."""
    name = host.strip("[]").lower()
    try:
        return name == "localhost" or ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def network_warning(host: str) -> str | None:
    """A warning line for a --host that other machines can reach; None for loopback."""
    if is_loopback(host):
        return None
    return (
        f"warning: --host {host} makes the page and API reachable from the network, "
        "without authentication; use the default 127.0.0.1 unless that is what you want"
    )


def host_name(host_header: str) -> str:
    """The name of a Host header without its port: `[::1]:8000` -> `::1`."""
    if host_header.startswith("["):
        return host_header[1:].split("]", 1)[0].lower()
    return host_header.rsplit(":", 1)[0].lower() if host_header.count(":") == 1 else host_header


def refusal(method: str, headers: Headers, loopback_only: bool) -> tuple[int, str] | None:
    """(status, sentence) for a foreign Host on loopback (DNS rebinding) or a cross-origin POST."""
    host = headers.get("host", "")
    if loopback_only and host_name(host) not in LOOPBACK_NAMES:
        return 400, f"The Host {host[:60] or '(none)'} is not this server's; use http://127.0.0.1."
    if method in ("GET", "HEAD", "OPTIONS"):
        return None
    site, origin = headers.get("sec-fetch-site"), headers.get("origin")
    if site not in (None, "same-origin", "none") or (
        origin is not None and origin.split("://", 1)[-1].lower() != host.lower()
    ):
        return 403, CROSS_ORIGIN
    return None


class RequestGuard:
    """ASGI middleware: security headers on every answer, `refusal`s and `read_body`'s refused;
    the app sees the whole body at once. FastAPI's own `max_body_size` answers bare text."""

    def __init__(self, app: ASGIApp, stopping: asyncio.Event, loopback_only: bool = True):
        self.app, self.stopping, self.loopback_only = app, stopping, loopback_only

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        extra = SECURITY_HEADERS
        if scope["path"] in ("/docs", "/docs/oauth2-redirect"):
            extra = extra | {"Content-Security-Policy": DOCS_CSP}

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).update(extra)
            await send(message)

        body = refusal(scope["method"], headers, self.loopback_only) or await read_body(
            receive, MAX_BODY_BYTES, self.stopping
        )
        if isinstance(body, tuple):  # refused, too large, too slow, or the server is stopping
            refused = JSONResponse({"detail": body[1]}, body[0], {"Connection": "close"})
            await refused(scope, receive, send_with_headers)
        elif body is not None:  # None: the client went away
            messages = iter([{"type": "http.request", "body": body, "more_body": False}])

            async def replay() -> Message:
                return next(messages, None) or await receive()

            await self.app(scope, replay, send_with_headers)


async def read_body(
    receive: Receive, max_bytes: int, stopping: asyncio.Event, timeout_s: float = BODY_TIMEOUT_S
) -> bytes | tuple[int, str] | None:
    """The whole request body, (status, sentence) to refuse it, or None if the client left:
    413 over `max_bytes`, 408 not all there within `timeout_s`, 503 once `stopping` is set."""
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                receiving = asyncio.ensure_future(receive())
                waiting = asyncio.ensure_future(stopping.wait())
                try:
                    await asyncio.wait((receiving, waiting), return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiting.cancel()
                    receiving.cancel()  # a no-op once it is done
                if receiving.cancelled() or not receiving.done():
                    return 503, "The server is shutting down; send the request again later."
                message = receiving.result()
                if message["type"] != "http.request":  # the client went away
                    return None
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > max_bytes:
                    return 413, f"The body is over the limit of {max_bytes:,} bytes."
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(chunks)
    except TimeoutError:
        return 408, f"The body did not arrive within {timeout_s:g} seconds."


# glibc keeps freed heap pages in the arena of the thread that freed them (one decode of a
# 16-bit 5000x5000 RGBA PNG left the server 2.2 GB larger); only its `malloc_trim`, through
# ctypes (Python has no API for it), hands them back. test_serve_limits pins it.
try:
    _malloc_trim = ctypes.CDLL(None).malloc_trim
except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
    _malloc_trim = None


class DecodeSlots:
    """At most `slots` decodes at once, `waiting` more queued briefly, else a 503; the same few
    threads decode every image, so freed memory is reused, not an arena per thread."""

    def __init__(
        self, slots: int = MAX_DECODES, waiting: int = MAX_WAITING, wait_s: float = DECODE_WAIT_S
    ):
        self.slots, self.waiting, self.wait_s = slots, waiting, wait_s
        self._free = asyncio.Semaphore(slots)
        self._queued = 0
        self._pool = ThreadPoolExecutor(slots, thread_name_prefix="decode")

    async def run(self, work: Callable[..., T], *args: Any) -> T:
        busy = {"Retry-After": "2"}
        if self._queued >= self.slots + self.waiting:
            message = f"The server is decoding {self.slots} images with more waiting; retry."
            raise HTTPException(503, message, busy)
        self._queued += 1
        try:
            try:
                await asyncio.wait_for(self._free.acquire(), self.wait_s)
            except TimeoutError:
                message = f"No decode slot freed up within {self.wait_s:g} s; retry."
                raise HTTPException(503, message, busy) from None
            loop = asyncio.get_running_loop()
            try:
                return await loop.run_in_executor(self._pool, work, *args)
            finally:
                self._free.release()
                if _malloc_trim is not None:
                    await loop.run_in_executor(self._pool, _malloc_trim, 0)
        finally:
            self._queued -= 1
