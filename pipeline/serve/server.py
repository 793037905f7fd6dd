"""`serve`: load the models, bind the socket, run uvicorn until Ctrl-C (a normal stop, exit 0).

Models load and the port is bound first, so a bad checkpoint or a busy port is a one-line
PipelineError, not a traceback from uvicorn.
"""

import socket
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from pipeline import config
from pipeline.common import exits
from pipeline.common.errors import PipelineError
from pipeline.common.files import expand_checkpoints
from pipeline.inference.predict import Models, load_models
from pipeline.serve import limits
from pipeline.serve.app import create_app
from pipeline.serve.limits import network_warning


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to host:port (port 0 picks a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: only then does asyncio set TCP_NODELAY (else 40 ms per answer).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except (OSError, OverflowError) as exc:
        sock.close()
        reason = getattr(exc, "strerror", None) or str(exc)
        raise PipelineError(
            f"--host {host} --port {port}: cannot listen there ({reason})"
        ) from None
    return sock


class HeaderDeadline(H11Protocol):
    """uvicorn's h11 protocol with a deadline on each request's headers (uvicorn has none);
    relies on its `cycle`, `loop` and `on_response_complete`, pinned by test_serve_limits."""

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._headers_in_time()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._headers_in_time()

    def _headers_in_time(self) -> None:
        waiting_after = self.cycle  # a new request replaces it once its headers are in

        def expire() -> None:
            if self.cycle is waiting_after and not self.transport.is_closing():
                self.transport.close()

        self.loop.call_later(limits.HEADER_TIMEOUT_S, expire)


class AnnouncingServer(uvicorn.Server):
    """uvicorn's server that prints `line` (and calls `ready`) once listening, and sets the
    app's `state.stopping` when it shuts down: uvicorn has no hook for either."""

    def __init__(self, config: uvicorn.Config, line: str, ready: Callable[[], None] | None = None):
        super().__init__(config)
        self.line, self.ready = line, ready

    async def shutdown(self, sockets=None) -> None:
        self.config.app.state.stopping.set()
        await super().shutdown(sockets)

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if self.started:
            print(self.line, flush=True)
            if self.ready:
                self.ready()


def load_served(checkpoints: list[Path], device: str = "auto") -> Models:
    """The models, warmed up so a bad one fails here in one line. One CPU thread: a second
    only spins beside the event loop (p99 15 ms -> 8.5 ms at 8 clients on 2 cores)."""
    models = load_models(expand_checkpoints(list(checkpoints)), device, threads=1)
    models.predict(np.zeros((1, 1, config.IMAGE_SIDE, config.IMAGE_SIDE), np.uint8))
    return models


def serve(
    checkpoints: list[Path], host: str = "127.0.0.1", port: int = 8000, device: str = "auto"
) -> None:
    """Serve the page and API on host:port until Ctrl-C or SIGTERM."""
    models = load_served(checkpoints, device)
    warning = network_warning(host)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    app = create_app(models, loopback_only=warning is None)
    sock = bind(host, port)
    url = f"http://{f'[{host}]' if ':' in host else host}:{sock.getsockname()[1]}/"
    names = ", ".join(member.path.name for member in models.members)
    server = AnnouncingServer(
        uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            http=HeaderDeadline,
            timeout_keep_alive=limits.KEEP_ALIVE_S,
            timeout_graceful_shutdown=limits.GRACEFUL_SHUTDOWN_S,
        ),
        line=f"serve: {url} ({names} on {models.device}); Ctrl-C stops",
    )
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises the signal it handled, after shutting down
        exits.forget()
    finally:
        sock.close()
    print("serve: stopped", flush=True)
