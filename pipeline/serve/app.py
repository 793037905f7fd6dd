"""The FastAPI app of `pipeline serve`: the page at /, the API at /api/.

JSON `{"pixels": [...]}` is taken as it is (a row of Kaggle's CSV gets the label `predict`
gives it); a multipart form's "file" is an image that `digitize` turns into one. Every error
answers 4xx (never a 500 for a request's fault) with a one-sentence `detail`.
"""

import asyncio
from typing import Annotated

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from pipeline import config
from pipeline.common.errors import PipelineError
from pipeline.inference.predict import Models
from pipeline.serve.digitize import MAX_DECODED_BYTES, MAX_IMAGE_PIXELS, ImageError, digitize_bytes
from pipeline.serve.limits import MAX_BODY_BYTES, DecodeSlots, RequestGuard

USAGE = 'send JSON {"pixels": [784 integers 0-255]} or a multipart form with an image in "file"'

Pixel = Annotated[int, Field(strict=True, ge=0, le=255)]


class PixelsRequest(BaseModel):
    """A digit as Kaggle's CSV holds it: 784 integers 0-255, row by row, light ink on black."""

    model_config = ConfigDict(extra="forbid")
    pixels: list[Pixel] = Field(min_length=config.N_PIXELS, max_length=config.N_PIXELS)


def parse_pixels(body: bytes, media_type: str) -> np.ndarray:
    """A JSON body -> uint8 [28, 28], or HTTPException. Read as JSON whatever its Content-Type
    (curl -d says form); only a body that is not JSON blames a foreign Content-Type."""
    try:
        request = PixelsRequest.model_validate_json(body)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        kind, value, loc = error["type"], error.get("input"), error["loc"]
        if kind == "json_invalid" and "number out of range" in error["msg"]:
            message = f"pixels hold a number far outside 0-255; {USAGE}."
        elif kind == "json_invalid" and media_type and not media_type.endswith("json"):
            message = f"The body is neither JSON nor a multipart form; {USAGE}."
            raise HTTPException(415, message) from None
        elif kind == "json_invalid":
            raise HTTPException(400, f"The body is not valid JSON; {USAGE}.") from None
        elif not loc:
            message = f"The JSON body must be an object; {USAGE}."
        elif kind in ("missing", "extra_forbidden"):
            accepted = "missing" if kind == "missing" else "not accepted"
            message = f'The field "{loc[-1]}" is {accepted}; {USAGE}.'
        elif kind in ("too_short", "too_long"):
            count = len(value) if isinstance(value, list) else "another number of"
            message = f"pixels must hold exactly {config.N_PIXELS} integers, not {count}."
        elif len(loc) == 2:
            message = f"pixels[{loc[1]}] is {repr(value)[:20]}, not an integer 0-255."
        else:
            message = f"pixels must be a list of {config.N_PIXELS} integers 0-255."
        raise HTTPException(422, message) from None
    return np.asarray(request.pixels, dtype=np.uint8).reshape(config.IMAGE_SIDE, -1)


async def upload_bytes(request: Request, body: bytes) -> bytes:
    """The bytes of the multipart form's single "file" field, or HTTPException."""

    async def stream():
        yield body

    parser = MultiPartParser(request.headers, stream(), max_files=1, max_fields=1)
    # `request.form()` spools files over 1 MB to disk; the body limit bounds them already.
    parser.spool_max_size = MAX_BODY_BYTES
    try:
        form = await parser.parse()
    except (MultiPartException, KeyError, ValueError, UnicodeError):
        raise HTTPException(400, f"The multipart form could not be read; {USAGE}.") from None
    others = sorted({name for name in form.keys() if name != "file"})
    if others:
        raise HTTPException(422, f'The form field "{others[0][:40]}" is not accepted; {USAGE}.')
    upload = form.get("file")
    if upload is None:
        raise HTTPException(422, f'The form has no field "file"; {USAGE}.')
    if isinstance(upload, str):
        raise HTTPException(422, 'The form field "file" must be a PNG or JPEG file, not text.')
    return await upload.read()


class Prediction(BaseModel):
    label: int = Field(ge=0, le=9, description="The most probable digit.")
    probabilities: list[float] = Field(description="P(digit) for 0..9, the one predictor's.")
    input: list[int] = Field(description="The 784 pixels (0-255, row order) the model saw.")


class CheckpointInfo(BaseModel):
    name: str
    path: str = Field(description="Relative to the project when inside it, else the file name.")
    model: str | None = Field(description="The architecture's name.")
    val_accuracy: float | None
    temperature: float = Field(description="Its probabilities are softmax(logits / this).")


def checkpoint_info(member) -> CheckpointInfo:
    """A loaded member as /api/model shows it: no absolute path leaves the server."""
    path = member.path.resolve()
    shown = path.relative_to(config.ROOT) if path.is_relative_to(config.ROOT) else path.name
    meta = {"model": None, "val_accuracy": None} | member.meta
    return CheckpointInfo.model_validate(
        meta | {"name": path.name, "path": str(shown), "temperature": member.temperature}
    )


class ModelInfo(BaseModel):
    checkpoints: list[CheckpointInfo]
    device: str
    max_body_bytes: int = MAX_BODY_BYTES
    max_image_pixels: int = MAX_IMAGE_PIXELS
    max_decoded_bytes: int = MAX_DECODED_BYTES


class UploadForm(BaseModel):  # for the API's documentation: `upload_bytes` reads the form
    file: bytes = Field(description="A PNG or JPEG drawing, photo or scan of one digit.")


PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": PixelsRequest.model_json_schema()},
            "multipart/form-data": {"schema": UploadForm.model_json_schema()},
        },
    }
}
# 503, not 500: the request was fine and the server keeps serving; the model is at fault.
NON_FINITE = "The model produced non-finite outputs for this input; the server keeps serving."
PREDICT_DESCRIPTION = (
    f"{USAGE[0].upper()}{USAGE[1:]}: pixels in Kaggle's row order, light ink on black; an image "
    "is preprocessed MNIST-style. Limits: see /api/model. Errors answer 4xx (503 when busy or "
    "the model fails) with a one-sentence `detail`."
)


def create_app(models: Models, loopback_only: bool = True) -> FastAPI:
    """The ASGI app over loaded models; `loopback_only` refuses Host names but localhost's.
    Setting `app.state.stopping` answers bodies still arriving 503."""
    app = FastAPI(
        title="Digit Recognizer",
        summary="Draw a digit, or send one, and read what the trained model says.",
        version="1",
        redoc_url=None,
    )
    app.state.stopping = asyncio.Event()
    app.add_middleware(RequestGuard, stopping=app.state.stopping, loopback_only=loopback_only)

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

    decodes = DecodeSlots()
    page_html = (config.STATIC_DIR / "index.html").read_bytes()
    info = ModelInfo(checkpoints=list(map(checkpoint_info, models.members)), device=models.device)
    app.mount("/static", StaticFiles(directory=config.STATIC_DIR))

    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(page_html)

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
    )
    async def predict(request: Request) -> JSONResponse:
        body = await request.body()
        if not body:
            raise HTTPException(400, f"The body is empty; {USAGE}.")
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "multipart/form-data":
            data = await upload_bytes(request, body)
            try:
                digit = await decodes.run(digitize_bytes, data)
            except ImageError as exc:
                raise HTTPException(422, str(exc)) from None
        else:
            digit = parse_pixels(body, kind)
        # On the event loop: well under a millisecond, less than a hop to a thread costs.
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
