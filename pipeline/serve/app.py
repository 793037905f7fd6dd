"""The FastAPI app of `pipeline serve` over loaded models: the page at /, the API at /api/.

Uploaded images go through `digitize` before the model sees them; JSON pixels are taken as they
are. Every error answers 4xx (never a 500 for a request's fault) with a one-sentence `detail`.
FastAPI's /docs loads Swagger UI from a CDN (offline, only /openapi.json answers); the page at /
loads nothing from outside.
"""

import asyncio

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from pipeline import config
from pipeline.common.errors import PipelineError
from pipeline.inference.predict import Models
from pipeline.serve.digitize import MAX_DECODED_BYTES, MAX_IMAGE_PIXELS, ImageError, digitize_bytes
from pipeline.serve.limits import MAX_BODY_BYTES, DecodeSlots, RequestGuard
from pipeline.serve.requests import (
    USAGE,
    PixelsRequest,
    media_type,
    parse_pixels,
    upload_bytes,
    validation_message,
)

STATIC_FILES = {  # name -> media type; read once into memory by create_app
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}


class Prediction(BaseModel):
    label: int = Field(ge=0, le=9, description="The most probable digit.")
    probabilities: list[float] = Field(
        description="P(digit) for 0..9: each checkpoint's calibrated softmax "
        "(logits / its temperature), averaged over the ensemble."
    )
    input: list[int] = Field(description="The 784 pixels (0-255, row order) the model saw.")


class CheckpointInfo(BaseModel):
    name: str
    path: str = Field(description="Relative to the project when inside it, else the file name.")
    model: str | None = Field(description="The architecture's name.")
    val_accuracy: float | None
    temperature: float = Field(description="Its probabilities are softmax(logits / this).")


def checkpoint_info(member) -> CheckpointInfo:
    """A loaded member as /api/model shows it: no absolute path leaves the server."""
    path, meta = member.path.resolve(), member.meta
    shown = path.relative_to(config.ROOT) if path.is_relative_to(config.ROOT) else path.name
    return CheckpointInfo(
        name=path.name,
        path=str(shown),
        model=meta.get("model"),
        val_accuracy=meta.get("val_accuracy"),
        temperature=member.temperature,
    )


class ModelInfo(BaseModel):
    checkpoints: list[CheckpointInfo]
    device: str
    max_body_bytes: int = MAX_BODY_BYTES
    max_image_pixels: int = MAX_IMAGE_PIXELS
    max_decoded_bytes: int = MAX_DECODED_BYTES


class Problem(BaseModel):
    detail: str = Field(description="What was wrong with the request, in one sentence.")


class UploadForm(BaseModel):  # for the API's documentation: `requests` reads the form
    file: bytes = Field(
        description="A PNG or JPEG drawing, photo or scan of one digit (preprocessed "
        "MNIST-style before the model sees it)."
    )


PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": PixelsRequest.model_json_schema()},
            "multipart/form-data": {"schema": UploadForm.model_json_schema()},
        },
    }
}
ERRORS = {status: {"model": Problem} for status in (400, 403, 408, 413, 415, 422, 503)}
# 503, not 500: the request was fine and the server keeps serving; the model is at fault.
NON_FINITE = "The model produced non-finite outputs for this input; the server keeps serving."
PREDICT_DESCRIPTION = (
    'Send JSON `{"pixels": [...]}` with 784 integers 0-255 in Kaggle\'s row order '
    "(light ink on black, taken as is), or a multipart form whose field `file` holds a "
    "PNG or JPEG image of one digit in any colours, size and position (preprocessed "
    f"MNIST-style). Bodies over {MAX_BODY_BYTES:,} bytes or images over "
    f"{MAX_IMAGE_PIXELS:,} pixels or {MAX_DECODED_BYTES // 2**20} MB decoded are refused. "
    "Errors answer 4xx (503 when busy or when the model fails) with a one-sentence `detail`."
)


def add_error_handlers(app: FastAPI) -> None:
    """Every error, the request's or ours, as a JSON `detail` of one sentence."""

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        status, message = validation_message(list(exc.errors()))
        return JSONResponse({"detail": message}, status)

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
        return JSONResponse({"detail": "The server failed on this request; see its log."}, 500)


def create_app(models: Models, loopback_only: bool = True) -> FastAPI:
    """The ASGI app over already-loaded models. `loopback_only`: Host names other than
    localhost's are refused; setting `app.state.stopping` answers bodies still arriving 503."""
    app = FastAPI(
        title="Digit Recognizer",
        summary="Draw a digit, or send one, and read what the trained model says.",
        version="1",
        redoc_url=None,
    )
    app.state.stopping = asyncio.Event()
    app.add_middleware(RequestGuard, stopping=app.state.stopping, loopback_only=loopback_only)
    add_error_handlers(app)
    decodes = DecodeSlots()
    files = {name: (config.STATIC_DIR / name).read_bytes() for name in STATIC_FILES}
    info = ModelInfo(checkpoints=list(map(checkpoint_info, models.members)), device=models.device)

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
        return info

    @app.post(
        "/api/predict",
        summary="Label one digit",
        description=PREDICT_DESCRIPTION,
        openapi_extra=PREDICT_BODY,
        response_model=Prediction,
        responses=ERRORS,
    )
    async def predict(request: Request) -> JSONResponse:
        body = await request.body()
        if not body:
            raise HTTPException(400, f"The body is empty; {USAGE}.")
        if media_type(request) == "multipart/form-data":
            data = await upload_bytes(request, body)
            try:
                digit = await decodes.run(digitize_bytes, data)
            except ImageError as exc:
                raise HTTPException(422, str(exc)) from None
        else:
            digit = parse_pixels(body, media_type(request))
        # Inference runs on the event loop, one digit at a time: well under a millisecond for
        # these models, less than a hop to a worker thread costs.
        try:
            probs = models.predict(digit[None, None])[0]
        except PipelineError:  # inference refuses non-finite outputs
            raise HTTPException(503, NON_FINITE) from None
        answer = {
            "label": int(probs.argmax()),
            "probabilities": probs.tolist(),
            "input": digit.ravel().tolist(),
        }
        return JSONResponse(answer)  # already the Prediction schema: skip re-validating it

    return app
