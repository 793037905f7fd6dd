"""The request-body limit of `pipeline serve`, enforced before anything is parsed.

Uploaded images have their own limit in pixels (`digitize.MAX_IMAGE_PIXELS`), checked from the
image header before decoding.
"""

from typing import Any

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

# A request body larger than this is refused with 413 before it is parsed: room for a phone
# photo, while a JSON digit is about 3 KB.
MAX_BODY_BYTES = 10 * 1024 * 1024


class BodyLimit:
    """ASGI middleware: read the whole body (at most `max_bytes`) before the app sees it.

    A larger body, announced or streamed, gets 413 with a JSON message without being parsed.
    (FastAPI's own `max_body_size` answers a bare text "Content Too Large" whenever the
    Content-Length is over, whatever the exception handlers say.) The app then reads the
    buffered body, so nothing is spooled anywhere.
    """

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = JSONResponse(
            {"detail": f"The body is over the limit of {self.max_bytes:,} bytes."}, 413
        )
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length", b"").strip()
        if length and (not length.isdigit() or int(length) > self.max_bytes):
            await too_large(scope, receive, send)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await too_large(scope, receive, send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body, delivered = b"".join(chunks), False

        async def replay() -> dict[str, Any]:
            nonlocal delivered
            if delivered:
                return await receive()
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)
