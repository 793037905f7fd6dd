"""What a prediction request may hold, and the one sentence each bad one gets.

JSON `{"pixels": [...]}` is taken as it is (a row of Kaggle's CSV gets the label `predict`
gives it); a multipart form's field "file" holds one image, kept in memory (the body limit
bounds it), which the app digitizes.
"""

from typing import Annotated, Any

import numpy as np
from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from pipeline import config
from pipeline.serve.limits import MAX_BODY_BYTES

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


def media_type(request: Request) -> str:
    """The request's Content-Type without parameters, lower case ("" when absent)."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower()
