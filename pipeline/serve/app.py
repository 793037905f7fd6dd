"""The FastAPI app of `pipeline serve` over loaded models: the page at /, the API at /api/.

JSON `{"pixels": [...]}` is taken as it is (a row of Kaggle's CSV gets the label `predict`
gives it); a multipart form's field "file" holds one image, kept in memory (the body limit
bounds it), which goes through `digitize` first. Every error answers 4xx (never a 500 for a
request's fault) with a one-sentence `detail`. FastAPI's /docs loads Swagger UI from a CDN; the
page at / loads nothing from outside.
"""

import asyncio
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
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


def validation_message(errors: list[dict[str, Any]]) -> tuple[int, str]:
    """The first pydantic error as (status, one sentence) in the API's words."""
    error = errors[0] if errors else {"type": "", "loc": (), "msg": "invalid request"}
    kind, loc, value = error["type"], tuple(error.get("loc", ())), error.get("input")
    loc = tuple(part for part in loc if part != "body")  # FastAPI's prefix for body fields
    if kind == "json_invalid" and "number out of range" in str(error.get("msg")):
        return 422, f"pixels hold a number far outside 0-255; {USAGE}."  # JSON, too many digits
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
    """A JSON body -> uint8 [28, 28], or HTTPException. Read as JSON whatever its Content-Type
    (curl -d says form); only a body that is not JSON blames a foreign Content-Type."""
    try:
        request = PixelsRequest.model_validate_json(body)
    except ValidationError as exc:
        status, message = validation_message(exc.errors(include_url=False))
        if status == 400 and media_type and not media_type.endswith("json"):
            status = 415
            message = f"The body is neither JSON nor a multipart form; {USAGE}."
        raise HTTPException(status, message) from None
    return np.asarray(request.pixels, dtype=np.uint8).reshape(config.IMAGE_SIDE, -1)


class InMemoryMultiPartParser(MultiPartParser):
    """Starlette's parser with uploads kept in memory (the body limit bounds them already):
    `request.form()` spools files over 1 MB to disk and has no option for it; pinned by
    test_uploads_stay_in_memory."""

    spool_max_size = MAX_BODY_BYTES


async def upload_bytes(request: Request, body: bytes) -> bytes:
    """The bytes of the multipart form's single "file" field, or HTTPException."""

    async def stream():
        yield body

    try:
        form = await InMemoryMultiPartParser(
            request.headers, stream(), max_files=1, max_fields=1
        ).parse()
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


STATIC_FILES = {  # name -> media type; read once into memory by create_app
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}


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
ERRORS = {status: {"model": Problem} for status in (400, 403, 408, 413, 415, 422, 503)}
# 503, not 500: the request was fine and the server keeps serving; the model is at fault.
NON_FINITE = "The model produced non-finite outputs for this input; the server keeps serving."
PREDICT_DESCRIPTION = (
    'JSON `{"pixels": [...]}`: 784 integers 0-255 in Kaggle\'s row order, light ink on black, '
    "taken as is; or a multipart form whose field `file` holds a PNG or JPEG image of one digit "
    "(preprocessed MNIST-style). Limits: see /api/model. Errors answer 4xx (503 when busy or "
    "when the model fails) with a one-sentence `detail`."
)


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

    # Every error, the request's or ours, as a JSON `detail` of one sentence.
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
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "multipart/form-data":
            data = await upload_bytes(request, body)
            try:
                digit = await decodes.run(digitize_bytes, data)
            except ImageError as exc:
                raise HTTPException(422, str(exc)) from None
        else:
            digit = parse_pixels(body, kind)
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
