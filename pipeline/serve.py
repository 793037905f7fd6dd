"""`pipeline serve`: a page to draw a digit on, and a JSON API, over trained checkpoints.

Read top to bottom: limits, the loaded models, request parsing and its one-sentence errors,
the app (`create_app`), then `serve`, which loads the models once, binds (127.0.0.1 by
default), prints the URL and serves until Ctrl-C; `running_server` runs it in a child process
for the browser test and the load benchmark.

Every uploaded image goes through `pipeline.digitize` (MNIST-style centring and scaling) before
the model sees it. JSON `{"pixels": [...]}` is taken as it is: 784 values in Kaggle's row order
are already an MNIST-style digit, so a row of Kaggle's CSV gets the label the model gives it
in `predict`. Bodies stay in memory (uploads are never spooled to disk); the models run in eval
mode under `torch.inference_mode()`, one request at a time behind a lock.

The API is documented by FastAPI at /docs (Swagger UI) from /openapi.json. FastAPI's /docs
page loads Swagger UI's script and CSS from a CDN, so offline it shows an empty page while
/openapi.json still answers; the app's own page at / loads nothing from outside.
"""

import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.types import ASGIApp, Receive, Scope, Send

from pipeline import config
from pipeline.datasets import TensorDigits
from pipeline.device import resolve_device
from pipeline.digitize import MAX_IMAGE_PIXELS, ImageError, digitize_bytes
from pipeline.errors import PipelineError
from pipeline.inference import ensemble_probabilities, expand_checkpoints, load_for_inference

# A request body larger than this is refused with 413 before it is parsed: room for a phone
# photo, while a JSON digit is about 3 KB.
MAX_BODY_BYTES = 10 * 1024 * 1024
STATIC_FILES = {  # name -> media type; read once into memory by create_app
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
USAGE = 'send JSON {"pixels": [784 integers 0-255]} or a multipart form with an image in "file"'


# ------------------------------------------------------------------------------ models


@dataclass
class LoadedModels:
    """The checkpoints a server answers with, loaded once and ready for inference."""

    models: list[torch.nn.Module]  # eval mode, BatchNorm folded (see inference_model)
    checkpoints: list[dict[str, Any]]  # name, path, model (architecture), val_accuracy
    device: torch.device
    lock: threading.Lock = field(default_factory=threading.Lock)

    def probabilities(self, digits: np.ndarray) -> np.ndarray:
        """uint8 [N, 28, 28] MNIST-style digits -> float32 [N, 10], the ensemble's mean."""
        images = torch.from_numpy(np.ascontiguousarray(digits, dtype=np.uint8)[:, None])
        with self.lock, torch.inference_mode():  # one request at a time on the same modules
            probs = ensemble_probabilities(self.models, TensorDigits(images), len(images))
        return probs.numpy()


def load_models(checkpoints: list[Path], device: str = "auto") -> LoadedModels:
    """Load every checkpoint (quoted globs expand) onto `device`; one-line PipelineError if bad."""
    paths = expand_checkpoints(list(checkpoints))
    target = resolve_device(device)
    loaded = load_for_inference(paths, target)
    models = LoadedModels(
        models=[each.model for each in loaded],
        checkpoints=[
            {
                "name": each.path.name,
                "path": str(each.path),
                "model": each.meta.get("model"),
                "val_accuracy": each.meta.get("val_accuracy"),
            }
            for each in loaded
        ],
        device=target,
    )
    models.probabilities(np.zeros((1, config.IMAGE_SIDE, config.IMAGE_SIDE), np.uint8))  # warm up
    return models


# ------------------------------------------------------------------- schemas and errors

Pixel = Annotated[int, Field(strict=True, ge=0, le=255)]


class PixelsRequest(BaseModel):
    """A digit as Kaggle's CSV holds it: 784 integers 0-255, row by row, light ink on black."""

    model_config = ConfigDict(extra="forbid")
    pixels: list[Pixel] = Field(min_length=config.N_PIXELS, max_length=config.N_PIXELS)


class Prediction(BaseModel):
    label: int = Field(ge=0, le=9, description="The most probable digit.")
    probabilities: list[float] = Field(description="P(digit) for 0..9, the ensemble's mean.")
    input: list[int] = Field(description="The 784 pixels (0-255, row order) the model saw.")


class CheckpointInfo(BaseModel):
    name: str
    path: str
    model: str | None
    val_accuracy: float | None


class ModelInfo(BaseModel):
    checkpoints: list[CheckpointInfo]
    device: str
    max_body_bytes: int
    max_image_pixels: int


class Problem(BaseModel):
    detail: str = Field(description="What was wrong with the request, in one sentence.")


class BadRequest(Exception):
    """A request the API refuses: an HTTP status and a one-sentence message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def _problem(status: int, message: str) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status)


def validation_message(errors: list[dict[str, Any]]) -> tuple[int, str]:
    """The first pydantic error as (status, one sentence) in the API's words."""
    error = errors[0] if errors else {"type": "", "loc": (), "msg": "invalid request"}
    kind, loc, value = error["type"], tuple(error.get("loc", ())), error.get("input")
    loc = tuple(part for part in loc if part != "body")  # FastAPI's prefix for body fields
    if kind == "json_invalid":
        return 400, f"The body is not valid JSON; {USAGE}."
    if kind == "model_type" or (kind == "dict_type" and not loc):
        return 422, f"The JSON body must be an object; {USAGE}."
    if kind == "missing":
        return 422, f'The field "{loc[-1]}" is missing; {USAGE}.'
    if kind == "extra_forbidden":
        return 422, f'The field "{loc[-1]}" is not accepted; {USAGE}.'
    if loc == ("pixels",) and kind in ("too_short", "too_long"):
        count = len(value) if isinstance(value, list) else "another number of"
        return 422, f"pixels must hold exactly {config.N_PIXELS} integers, not {count}."
    if loc == ("pixels",):
        return 422, f"pixels must be a list of {config.N_PIXELS} integers 0-255."
    if len(loc) == 2 and loc[0] == "pixels":
        shown = repr(value)[:20]
        return 422, f"pixels[{loc[1]}] is {shown}, not an integer 0-255."
    where = ".".join(str(part) for part in loc) or "the request"
    message = " ".join(str(error.get("msg", "is invalid")).split()).rstrip(".")
    return 422, f"{where}: {message}."


def parse_pixels(body: bytes, media_type: str = "application/json") -> np.ndarray:
    """A JSON body -> uint8 [28, 28], or BadRequest.

    The body is read as JSON whatever its Content-Type says (curl -d sends JSON as a
    URL-encoded form); only if it is not JSON does a foreign Content-Type get the blame.
    """
    try:
        request = PixelsRequest.model_validate_json(body)
    except ValidationError as exc:
        status, message = validation_message(exc.errors(include_url=False))
        if status == 400 and media_type and not media_type.endswith("json"):
            status = 415
            message = f"The body is neither JSON nor a multipart form; {USAGE}."
        raise BadRequest(status, message) from None
    return np.asarray(request.pixels, dtype=np.uint8).reshape(config.IMAGE_SIDE, -1)


class InMemoryMultiPartParser(MultiPartParser):
    """Starlette's parser with uploads kept in memory: the body limit bounds them already."""

    spool_max_size = MAX_BODY_BYTES


async def upload_bytes(request: Request, body: bytes) -> bytes:
    """The bytes of the multipart form's single "file" field, or BadRequest."""

    async def stream():
        yield body

    try:
        form = await InMemoryMultiPartParser(
            request.headers, stream(), max_files=1, max_fields=1
        ).parse()
    except (MultiPartException, KeyError, ValueError, UnicodeError):
        raise BadRequest(400, f"The multipart form could not be read; {USAGE}.") from None
    others = sorted({name for name in form.keys() if name != "file"})
    if others:
        raise BadRequest(422, f'The form field "{others[0][:40]}" is not accepted; {USAGE}.')
    upload = form.get("file")
    if upload is None:
        raise BadRequest(422, f'The form has no field "file"; {USAGE}.')
    if isinstance(upload, str):
        raise BadRequest(422, 'The form field "file" must be a PNG or JPEG file, not text.')
    return await upload.read()


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


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
        too_large = _problem(413, f"The body is over the limit of {self.max_bytes:,} bytes.")
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


# ------------------------------------------------------------------------------- the app

PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": PixelsRequest.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "A PNG or JPEG drawing, photo or scan of one digit "
                            "(preprocessed MNIST-style before the model sees it).",
                        }
                    },
                }
            },
        },
    }
}
ERRORS = {status: {"model": Problem} for status in (400, 413, 415, 422)}


def static_files() -> dict[str, bytes]:
    """The page's three files from the package, read once."""
    return {name: (config.STATIC_DIR / name).read_bytes() for name in STATIC_FILES}


def create_app(models: LoadedModels) -> FastAPI:
    """The ASGI app over already-loaded models: the page at /, the API under /api/."""
    app = FastAPI(
        title="Digit Recognizer",
        summary="Draw a digit, or send one, and read what the trained model says.",
        version="1",
        redoc_url=None,
    )
    app.add_middleware(BodyLimit)
    files = static_files()

    @app.exception_handler(BadRequest)
    async def bad_request(request: Request, exc: BadRequest) -> JSONResponse:
        return _problem(exc.status, exc.message)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _problem(*validation_message(list(exc.errors())))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        messages = {
            404: f"There is nothing at {request.url.path[:80]}; the API is under /api/.",
            405: f"{request.method[:10]} is not allowed on {request.url.path[:80]}.",
        }
        message = messages.get(exc.status_code) or f"{str(exc.detail).rstrip('.')}."
        return JSONResponse({"detail": message}, exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception) -> JSONResponse:
        return _problem(500, "The server failed on this request; its log has the details.")

    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(files["index.html"])

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        if name not in files or name == "index.html":
            raise HTTPException(404)
        return Response(files[name], media_type=STATIC_FILES[name])

    @app.get("/api/health", summary="Is the server up?")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/api/model", summary="The checkpoints that answer")
    async def model() -> ModelInfo:
        return ModelInfo(
            checkpoints=[CheckpointInfo(**info) for info in models.checkpoints],
            device=str(models.device),
            max_body_bytes=MAX_BODY_BYTES,
            max_image_pixels=MAX_IMAGE_PIXELS,
        )

    @app.post(
        "/api/predict",
        summary="Label one digit",
        description=(
            'Send JSON `{"pixels": [...]}` with 784 integers 0-255 in Kaggle\'s row order '
            "(light ink on black, taken as is), or a multipart form whose field `file` holds a "
            "PNG or JPEG image of one digit in any colours, size and position (preprocessed "
            f"MNIST-style). Bodies over {MAX_BODY_BYTES:,} bytes or images over "
            f"{MAX_IMAGE_PIXELS:,} pixels are refused. Errors answer 4xx with a one-sentence "
            "`detail`."
        ),
        openapi_extra=PREDICT_BODY,
        response_model=Prediction,
        responses=ERRORS,
    )
    async def predict(request: Request) -> JSONResponse:
        body = await request.body()
        if not body:
            raise BadRequest(400, f"The body is empty; {USAGE}.")
        if _media_type(request) == "multipart/form-data":
            data = await upload_bytes(request, body)
            try:
                digit = await run_in_threadpool(digitize_bytes, data)
            except ImageError as exc:
                raise BadRequest(422, str(exc)) from None
        else:
            digit = parse_pixels(body, _media_type(request))
        # Inference runs on the event loop: well under a millisecond for these models, less
        # than a hop to a worker thread costs; the lock still guards the modules.
        probs = models.probabilities(digit[None])[0]
        answer = {
            "label": int(probs.argmax()),
            "probabilities": probs.tolist(),
            "input": digit.ravel().tolist(),
        }
        return JSONResponse(answer)  # already the Prediction schema: skip re-validating it

    return app


# ---------------------------------------------------------------------------- serving


def _bind(host: str, port: int) -> socket.socket:
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


def serve(
    checkpoints: list[Path],
    host: str = "127.0.0.1",
    port: int = 8000,
    device: str = "auto",
    ready: Callable[[str], None] | None = None,
) -> None:
    """Load the checkpoints, then serve the page and API on host:port until Ctrl-C.

    Models load and the port is bound before anything listens, so a bad checkpoint or a busy
    port is a one-line PipelineError. Prints the URL once listening (port 0 picks a free port)
    and calls `ready(url)`; Ctrl-C (SIGINT) or SIGTERM finishes open requests and returns.
    """
    import uvicorn

    models = load_models(checkpoints, device)
    if models.device.type == "cpu":
        # Requests run one at a time, one digit each: a second intra-op thread only spins
        # beside the event loop (measured on 2 cores: p99 15 ms -> 8.5 ms at 8 clients).
        torch.set_num_threads(1)
    app = create_app(models)
    sock = _bind(host, port)
    bound_port = sock.getsockname()[1]
    url = f"http://{f'[{host}]' if ':' in host else host}:{bound_port}/"
    names = ", ".join(info["name"] for info in models.checkpoints)

    class Server(uvicorn.Server):
        async def startup(self, sockets=None) -> None:
            await super().startup(sockets)
            if self.started:
                print(f"serve: {url} ({names} on {models.device}); Ctrl-C stops", flush=True)
                if ready:
                    ready(url)

    server = Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises the SIGINT it handled, after shutting down
        pass
    finally:
        sock.close()
    print("serve: stopped", flush=True)


@contextmanager
def running_server(
    checkpoints: list[Path], device: str = "cpu", host: str = "127.0.0.1", timeout: float = 120
) -> Iterator[str]:
    """Run `pipeline serve` in a child process on a free port; yield its URL; Ctrl-C it on exit.

    Raises PipelineError with the child's last output line if it does not start in `timeout` s.
    """
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    child = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "serve", "--host", host, "--port", "0"]
        + ["--device", device]
        + [arg for path in checkpoints for arg in ("--checkpoint", str(path))],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    lines: list[str] = []
    started = threading.Event()

    def read() -> None:  # drain the child's output so it never blocks on a full pipe
        for line in child.stdout:
            lines.append(line.rstrip())
            if line.startswith("serve: http"):
                started.set()
        started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        if not started.wait(timeout) or child.poll() is not None:
            last = next((line for line in reversed(lines) if line.strip()), "no output")
            raise PipelineError(f"the server did not start: {last}")
        yield next(line for line in lines if line.startswith("serve: http")).split()[1]
    finally:
        if child.poll() is None:
            child.send_signal(signal.SIGINT)  # as Ctrl-C does
            try:
                child.wait(15)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        reader.join(5)
