"""Who may ask `pipeline serve`: its Host names, same-origin POSTs; security headers on answers.

A page elsewhere can POST a `text/plain` or form body to 127.0.0.1 with no CORS preflight, and
a DNS name rebound to 127.0.0.1 is same-origin with it: only the server can refuse those.
(Starlette's TrustedHostMiddleware refuses `[::1]:8000` and answers in plain text.)
"""

import ipaddress

from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
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


class RequestGuard:
    """ASGI middleware: security headers on every answer; refuses foreign Host names when bound
    to loopback (DNS rebinding) and cross-origin POSTs."""

    def __init__(self, app: ASGIApp, loopback_only: bool = True):
        self.app, self.loopback_only = app, loopback_only

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        refusal = self.refusal(scope["method"], headers)
        csp = DOCS_CSP if scope["path"] in ("/docs", "/docs/oauth2-redirect") else None

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = SECURITY_HEADERS | ({"Content-Security-Policy": csp} if csp else {})
                message["headers"] = list(message.get("headers", [])) + [
                    (name.lower().encode(), value.encode()) for name, value in extra.items()
                ]
            await send(message)

        if refusal is not None:
            answer = JSONResponse({"detail": refusal[1]}, refusal[0])
            await answer(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)

    def refusal(self, method: str, headers: Headers) -> tuple[int, str] | None:
        host = headers.get("host", "")
        if self.loopback_only and host_name(host) not in LOOPBACK_NAMES:
            shown = host[:60] or "(none)"
            return 400, f"The Host {shown} is not this server's; use http://127.0.0.1."
        if method in ("GET", "HEAD", "OPTIONS"):
            return None
        site = headers.get("sec-fetch-site")
        origin = headers.get("origin")
        if site not in (None, "same-origin", "none") or (
            origin is not None and origin.split("://", 1)[-1].lower() != host.lower()
        ):
            return 403, CROSS_ORIGIN
        return None
