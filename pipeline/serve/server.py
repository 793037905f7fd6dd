"""`serve`: load the checkpoints, bind the socket, run uvicorn until Ctrl-C.

Models load and the port is bound before anything listens, so a bad checkpoint or a busy port
is a one-line PipelineError, not a traceback from inside uvicorn.
"""

import socket
from collections.abc import Callable
from pathlib import Path

import uvicorn

from pipeline.errors import PipelineError
from pipeline.serve.app import create_app


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to host:port (port 0 picks a free one), or a one-line PipelineError."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted sockets only then, and without
    # it every answer waits about 40 ms for a delayed ACK (Nagle's algorithm).
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


class AnnouncingServer(uvicorn.Server):
    """uvicorn's server that prints `line` (and calls `ready`) once it is listening."""

    def __init__(self, config: uvicorn.Config, line: str, ready: Callable[[], None] | None):
        super().__init__(config)
        self.line, self.ready = line, ready

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if self.started:
            print(self.line, flush=True)
            if self.ready:
                self.ready()


def serve(
    checkpoints: list[Path],
    host: str = "127.0.0.1",
    port: int = 8000,
    device: str = "auto",
    ready: Callable[[str], None] | None = None,
) -> None:
    """Load the checkpoints, then serve the page and API on host:port until Ctrl-C.

    Prints `serve: <url> (...)` once listening and calls `ready(url)`; Ctrl-C (SIGINT) or
    SIGTERM finishes open requests and returns.
    """
    from pipeline.serve.torch_backend import load_models  # torch: only once we serve

    backend = load_models(checkpoints, device)
    app = create_app(backend)
    sock = bind(host, port)
    url = f"http://{f'[{host}]' if ':' in host else host}:{sock.getsockname()[1]}/"
    names = ", ".join(info.name for info in backend.checkpoints)
    server = AnnouncingServer(
        uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"),
        line=f"serve: {url} ({names} on {backend.device}); Ctrl-C stops",
        ready=(lambda: ready(url)) if ready else None,
    )
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises the SIGINT it handled, after shutting down
        pass
    finally:
        sock.close()
    print("serve: stopped", flush=True)
