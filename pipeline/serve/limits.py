"""What one request may cost `pipeline serve`: body size and time, decodes at once, memory.

A body is read whole (at most MAX_BODY_BYTES, within BODY_TIMEOUT_S) before anything parses it,
and a server shutting down refuses bodies still arriving, so Ctrl-C never waits on a client. At
most MAX_DECODES images decode at once, on threads of their own: the event loop (and /api/health)
stays free and memory bounded. The other deadlines are uvicorn's settings, given in `server`.
"""

import asyncio
import ctypes
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

T = TypeVar("T")

# A request body larger than this is refused with 413 before it is parsed: room for a phone
# photo, while a JSON digit is about 3 KB.
MAX_BODY_BYTES = 10 * 1024 * 1024
BODY_TIMEOUT_S = 10.0  # the whole body must arrive within this after the headers
HEADER_TIMEOUT_S = 10.0  # a request's headers must arrive within this (h11 bounds their size)
KEEP_ALIVE_S = 5.0  # an idle keep-alive connection is closed after this
GRACEFUL_SHUTDOWN_S = 3.0  # after Ctrl-C, requests still running get this long
MAX_DECODES = 2  # images decoding at once: at most 2 x digitize.MAX_DECODED_BYTES at the peak
MAX_WAITING = 8  # requests that may wait for a decode slot; more get 503 at once
DECODE_WAIT_S = 10.0  # how long one may wait for a slot before 503


class Busy(Exception):
    """Too many images are decoding or waiting; the message is one sentence for a 503."""


class BodyLimit:
    """ASGI middleware: read the whole body (at most MAX_BODY_BYTES) before the app sees it, or
    refuse it in JSON (see `read_body`); FastAPI's own `max_body_size` answers bare text."""

    def __init__(self, app: ASGIApp, stopping: asyncio.Event):
        self.app, self.stopping = app, stopping

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length", b"").strip()
        if length and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            body = 413, f"The body is over the limit of {MAX_BODY_BYTES:,} bytes."
        else:
            body = await read_body(receive, MAX_BODY_BYTES, self.stopping)
        if body is None:  # the client went away
            return
        if isinstance(body, tuple):  # too large, too slow, or the server is stopping
            refusal = JSONResponse({"detail": body[1]}, body[0], {"Connection": "close"})
            await refusal(scope, receive, send)
            return
        delivered = False

        async def replay() -> dict[str, Any]:
            nonlocal delivered
            if delivered:
                return await receive()
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


async def read_body(
    receive: Receive, max_bytes: int, stopping: asyncio.Event, timeout_s: float = BODY_TIMEOUT_S
) -> bytes | tuple[int, str] | None:
    """The whole request body, (status, sentence) to refuse it, or None if the client left:
    413 over `max_bytes`, 408 not all there within `timeout_s`, 503 once `stopping` is set."""
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                message = await _first(receive(), stopping)
                if message is None:
                    return 503, "The server is shutting down; send the request again later."
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


async def _first(message: Awaitable[Message], stopping: asyncio.Event) -> Message | None:
    """The next message, or None if `stopping` is set first."""
    receiving = asyncio.ensure_future(message)
    waiting = asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait((receiving, waiting), return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiting.cancel()
        if not receiving.done():
            receiving.cancel()
    return receiving.result() if receiving.done() and not receiving.cancelled() else None


# glibc keeps freed heap pages in the arena of the thread that freed them (one decode of a
# 16-bit 5000x5000 RGBA PNG left the server 2.2 GB larger); only its `malloc_trim`, through
# ctypes (Python has no API for it), hands them back. test_serve_limits pins it.
try:
    _malloc_trim = ctypes.CDLL(None).malloc_trim
except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
    _malloc_trim = None


def release_memory() -> None:
    """Hand freed heap pages back to the OS where glibc holds them."""
    if _malloc_trim is not None:
        _malloc_trim(0)


class DecodeSlots:
    """At most `slots` decodes at once, `waiting` more queued briefly; the same few threads
    decode every image, so freed memory is reused, not one allocator arena grown per thread."""

    def __init__(
        self, slots: int = MAX_DECODES, waiting: int = MAX_WAITING, wait_s: float = DECODE_WAIT_S
    ):
        self.slots, self.waiting, self.wait_s = slots, waiting, wait_s
        self._free = asyncio.Semaphore(slots)
        self._queued = 0
        self._pool = ThreadPoolExecutor(slots, thread_name_prefix="decode")

    async def run(self, work: Callable[..., T], *args: Any) -> T:
        """`work(*args)` on a decode thread; Busy if no slot frees up in time."""
        if self._queued >= self.slots + self.waiting:
            raise Busy(f"The server is decoding {self.slots} images with more waiting; retry.")
        self._queued += 1
        try:
            try:
                await asyncio.wait_for(self._free.acquire(), self.wait_s)
            except TimeoutError:
                raise Busy(f"No decode slot freed up within {self.wait_s:g} s; retry.") from None
            try:
                return await asyncio.get_running_loop().run_in_executor(self._pool, work, *args)
            finally:
                self._free.release()
                await asyncio.get_running_loop().run_in_executor(self._pool, release_memory)
        finally:
            self._queued -= 1

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
