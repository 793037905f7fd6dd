"""MNIST-style preprocessing: any drawing, photo or scan of one digit -> a uint8 28x28 digit.

MNIST digits are light ink on black, the ink's box scaled to fit 20x20 (aspect kept,
anti-aliased) and centred by mass. A model trained on them misreads a small, off-centre,
dark-on-light or thin digit, so every upload is made to look like MNIST first.
"""

import io

import numpy as np
from PIL import Image
from scipy import ndimage
from scipy.ndimage import center_of_mass

SIDE = 28  # the field, as in MNIST and Kaggle's CSVs
BOX = 20  # the ink's bounding box is scaled to fit BOX x BOX inside the field
CENTRE = SIDE / 2  # where MNIST puts the ink's centre of mass (in pixel-centre coordinates)
INK_THRESHOLD = 0.2  # fraction of the strongest ink that counts for the bounding box
MIN_STROKE = 2.0  # MNIST strokes are 2-3 pixels wide in the 20-pixel box; thinner ones thicken
# MNIST's ink is saturated: about half of a digit's inked pixels are at full strength (52% on
# the prepared digits). Resizing softens strokes, so the median inked pixel is brought to 255.
SATURATED = 0.5

# A 5000x5000 scan passes; a decompression bomb is refused from its header.
FORMATS = ("PNG", "JPEG")
MAX_IMAGE_PIXELS = 25_000_000
# A 16-bit RGBA PNG of 5000x5000 is 48 KB of file and 100 MB decoded; 64 MB lets through a
# 16-megapixel colour PNG or a 25-megapixel grey one (JPEGs counted after `draft`).
MAX_DECODED_BYTES = 64 * 1024 * 1024
WORK_SIDE = 560  # large photos are reduced to about this size before the digit is located
WORK_BOX = 8 * BOX  # a larger ink crop is averaged down to this before thickening and fitting


class ImageError(ValueError):
    """An upload that is not a usable image of a digit, in one sentence."""


def decode_image(data: bytes) -> Image.Image:
    """PNG or JPEG bytes -> a Pillow image, its size checked from the header first (Pillow's
    process-wide MAX_IMAGE_PIXELS is left as it is)."""
    if not data:
        raise ImageError("The file is empty; send a PNG or JPEG image.")
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError:
        raise ImageError(f"The image has more than {MAX_IMAGE_PIXELS:,} pixels.") from None
    except Exception:
        raise ImageError("The file is not a PNG or JPEG image.") from None
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageError(
            f"The image is {width}x{height} pixels; "
            f"at most {MAX_IMAGE_PIXELS:,} pixels are accepted."
        )
    if width < 1 or height < 1:
        raise ImageError("The image has no pixels.")
    if image.format == "JPEG":  # decode at a reduced scale: far faster for large photos
        image.draft("L", (WORK_SIDE, WORK_SIDE))
    size = decoded_bytes(image.mode, image.size)
    if size > MAX_DECODED_BYTES:
        raise ImageError(
            f"The image is {width}x{height} {image.mode} pixels, {size / 2**20:.0f} MB once "
            f"decoded; at most {MAX_DECODED_BYTES // 2**20} MB are accepted."
        )
    try:
        image.load()
    except Exception:
        raise ImageError("The image could not be decoded (it is truncated or corrupt).") from None
    return image


def decoded_bytes(mode: str, size: tuple[int, int]) -> int:
    """The memory Pillow allocates to hold an image of `mode` and `size` (RGB as RGBX)."""
    per_pixel = 1 if mode in ("1", "L", "P") else 2 if mode.startswith("I;16") else 4
    return size[0] * size[1] * per_pixel


def ink_array(image: Image.Image) -> np.ndarray:
    """float32 [H, W] ink in [0, 1]: a transparent image's alpha (any colour), else luminance."""
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        alpha = np.asarray(rgba.getchannel("A"), dtype=np.float32)
        if alpha.min() < 255:
            return _stretch(alpha / 255.0)
        image = rgba.convert("RGB")
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        gray = np.asarray(image.convert("F"), dtype=np.float32)
        low, high = float(gray.min()), float(gray.max())
        gray = (gray - low) / (high - low) if high > low else np.zeros_like(gray)
    else:
        gray = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    return ink_from_gray(gray)


def ink_from_gray(gray: np.ndarray) -> np.ndarray:
    """Grey levels in [0, 1], either polarity (a light border is paper) -> ink in [0, 1]."""
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    background = float(np.median(border))
    if background > 0.5:  # dark ink on light paper
        gray, background = 1.0 - gray, 1.0 - background
    return _stretch(np.clip(gray - background, 0.0, None))


def _stretch(ink: np.ndarray) -> np.ndarray:
    peak = float(ink.max())
    return (ink / peak).astype(np.float32) if peak > 0 else ink.astype(np.float32)


def ink_box(ink: np.ndarray) -> tuple[int, int, int, int] | None:
    """(left, top, right, bottom) of the inked pixels; None if blank."""
    return Image.fromarray((ink > INK_THRESHOLD).astype(np.uint8)).getbbox()


def stroke_width(ink: np.ndarray) -> float:
    """Rough stroke width in pixels: a stroke of length L and width w has area wL and about 2L
    outline pixels (a blank 4-neighbour), so twice the area over the outline (1 px reads 2)."""
    mask = ink > 0.5
    area = int(mask.sum())
    if area == 0:
        return 0.0
    inside = ndimage.binary_erosion(mask)  # its default: 4 neighbours
    return 2.0 * area / (area - int(inside.sum()))


def fit_box(ink: np.ndarray) -> np.ndarray:
    """The ink's bounding box scaled to fit BOX (LANCZOS: MNIST's anti-aliasing), a large crop
    first averaged down to WORK_BOX; strokes that would end thinner than MIN_STROKE thicken."""
    left, top, right, bottom = ink_box(ink)
    crop = ink[top:bottom, left:right]
    if max(crop.shape) > WORK_BOX:
        crop = _stretch(_resize(crop, WORK_BOX / max(crop.shape), Image.BOX))
    scale = BOX / max(crop.shape)
    width_after = stroke_width(crop) * scale
    if 0 < width_after < MIN_STROKE:  # a thin pen on a large canvas: thicken before shrinking
        radius = int(round((MIN_STROKE - width_after) / scale / 2))
        if radius >= 1:  # grey dilation by a (2r+1)-square, the crop grown by r on every side
            crop = ndimage.grey_dilation(np.pad(crop, radius), 2 * radius + 1, mode="constant")
            scale = BOX / max(crop.shape)
    return np.clip(_resize(crop, scale, Image.LANCZOS), 0.0, 1.0)


def _resize(ink: np.ndarray, scale: float, method: int) -> np.ndarray:
    height, width = ink.shape
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resized = Image.fromarray(ink).resize(size, method, reducing_gap=2.0)
    return np.asarray(resized, dtype=np.float32)


def place_by_mass(patch: np.ndarray) -> np.ndarray:
    """`patch` in the field, its centre of mass as near the centre as the field allows."""
    field = np.zeros((SIDE, SIDE), dtype=np.float32)
    (height, width), (row, col) = patch.shape, center_of_mass(patch)
    top = min(max(int(round(CENTRE - row)), 0), SIDE - height)
    left = min(max(int(round(CENTRE - col)), 0), SIDE - width)
    field[top : top + height, left : left + width] = patch
    return field


def saturate(ink: np.ndarray) -> np.ndarray:
    """Scale ink so that SATURATED of the inked pixels (above INK_THRESHOLD) reach 1."""
    inked = ink[ink > INK_THRESHOLD]
    level = float(np.quantile(inked, 1.0 - SATURATED)) if inked.size else 0.0
    return np.clip(ink / level, 0.0, 1.0) if level > 0 else ink


def digitize(image: Image.Image | np.ndarray) -> np.ndarray:
    """A Pillow image (a large one reduced in place: locating and scaling need no more detail)
    or a uint8 grey array -> uint8 [28, 28] digit, light on dark (zeros if blank)."""
    if isinstance(image, np.ndarray):
        ink = ink_from_gray(np.asarray(image, dtype=np.float32) / 255.0)
    else:
        if max(image.size) > 2 * WORK_SIDE:
            image.thumbnail((WORK_SIDE, WORK_SIDE), Image.BOX)
        ink = ink_array(image)
    if ink_box(ink) is None:
        return np.zeros((SIDE, SIDE), dtype=np.uint8)
    return np.rint(place_by_mass(saturate(fit_box(ink))) * 255.0).clip(0, 255).astype(np.uint8)


def digitize_bytes(data: bytes) -> np.ndarray:
    """PNG/JPEG bytes -> uint8 [28, 28] digit; ImageError for a bad file or a blank image."""
    digit = digitize(decode_image(data))
    if not digit.any():
        raise ImageError("The image is blank: no digit was found in it.")
    return digit
