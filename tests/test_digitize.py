"""MNIST-style preprocessing: shapes and invariances, upload decoding, and the accuracy it saves.

The accuracy test pastes real validation digits onto a 280x280 canvas at random scales and
positions (half of them dark-on-light) and asks the trained fast model to read them: after
`digitize` it reads them about as well as the original digits, and without centring it cannot.
"""

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.data.datasets import TensorDigits
from pipeline.serve.digitize import (
    SIDE,
    ImageError,
    center_of_mass,
    decode_image,
    digitize,
    digitize_bytes,
    ink_box,
    stroke_width,
)

CANVAS = 280


def _drawn_seven(canvas: int = CANVAS, width: int = 18, offset=(0, 0)) -> np.ndarray:
    """A '7' drawn dark-on-light with Pillow, as a page or a scan would give it."""
    from PIL import ImageDraw

    image = Image.new("L", (canvas, canvas), 255)
    draw = ImageDraw.Draw(image)
    dx, dy = offset
    draw.line([(60 + dx, 50 + dy), (200 + dx, 50 + dy), (110 + dx, 230 + dy)], fill=0, width=width)
    return np.asarray(image)


def _png(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, "PNG")
    return buffer.getvalue()


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (a decompression bomb, as Pillow sees it)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


# ------------------------------------------------------------------ shape and invariances


def test_a_drawing_becomes_an_mnist_style_digit():
    digit = digitize(_drawn_seven())
    assert digit.shape == (SIDE, SIDE) and digit.dtype == np.uint8
    assert digit.max() == 255 and digit[0].max() == 0 and digit[:, -1].max() == 0  # light on black
    left, top, right, bottom = ink_box(digit / 255.0)
    assert max(bottom - top, right - left) in (20, 21)  # the box fits 20x20 (+ anti-aliasing)
    row, col = center_of_mass(digit.astype(np.float32))
    assert abs(row - 14) <= 0.5 and abs(col - 14) <= 0.5  # where the prepared digits have it


def test_polarity_position_and_size_do_not_matter():
    base = digitize(_drawn_seven())
    assert np.array_equal(digitize(255 - _drawn_seven()), base)  # light-on-dark, same digit
    moved = digitize(_drawn_seven(offset=(-50, 40)))
    assert np.abs(moved.astype(int) - base).mean() < 3
    small = np.asarray(Image.fromarray(_drawn_seven()).resize((70, 70), Image.LANCZOS))
    canvas = np.full((CANVAS, CANVAS), 255, np.uint8)
    canvas[190:260, 20:90] = small  # a quarter of the size, in a corner
    assert np.abs(digitize(canvas).astype(int) - base).mean() < 12


def test_thin_strokes_are_thickened_to_mnist_width(monkeypatch):
    thin = digitize(_drawn_seven(width=2))  # a 2 px pen on a 280 px canvas: 0.2 px at 20 px
    assert 1.8 <= stroke_width(thin / 255.0) <= 3.5 and thin.max() == 255
    monkeypatch.setattr("pipeline.serve.digitize.MIN_STROKE", 0.0)
    unthickened = digitize(_drawn_seven(width=2))
    assert (thin > 127).sum() > 2 * (unthickened > 127).sum()  # one-pixel hairline without


def test_blank_images_give_zeros_or_an_error():
    assert not digitize(np.full((100, 60), 255, np.uint8)).any()
    with pytest.raises(ImageError, match="blank"):
        digitize_bytes(_png(np.zeros((50, 50), np.uint8)))


def test_transparent_and_colour_images():
    ink = 255 - _drawn_seven()
    rgba = np.zeros((CANVAS, CANVAS, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, ink  # red strokes on a transparent background
    from_alpha = digitize_bytes(_png(rgba, "RGBA"))
    assert np.abs(from_alpha.astype(int) - digitize(_drawn_seven())).mean() < 2
    rgb = np.stack([_drawn_seven()] * 3, axis=-1)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "JPEG", quality=85)
    from_jpeg = digitize_bytes(buffer.getvalue())
    assert np.abs(from_jpeg.astype(int) - digitize(_drawn_seven())).mean() < 4


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty"),
        (b"GIF89a not what we take", "not a PNG or JPEG"),
        (b"%PDF-1.7 hello", "not a PNG or JPEG"),
        ("truncated", "truncated or corrupt"),
        (_png_header(6_000, 6_000), "at most 25,000,000 pixels"),  # over our limit
        (_png_header(40_000, 40_000), "more than"),  # over Pillow's own bomb limit too
    ],
)
def test_bad_uploads_raise_one_sentence(data, message):
    if data == "truncated":
        data = _png(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))[:300]
    with pytest.raises(ImageError, match=message) as info:
        digitize_bytes(data)
    text = str(info.value)
    assert text.endswith(".") and "\n" not in text and ". " not in text


def test_large_photos_decode_at_reduced_size():
    photo = np.asarray(Image.fromarray(_drawn_seven()).resize((4000, 4000)))
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, "JPEG", quality=80)
    image = decode_image(buffer.getvalue())
    assert max(image.size) < 1200  # JPEG draft mode: decoded at 1/4 or 1/8 scale
    assert np.abs(digitize(image).astype(int) - digitize(_drawn_seven())).mean() < 12


# ------------------------------------------------------------------- the accuracy it saves


def _paste(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The digit on a 280x280 canvas: scaled 0.4x-3x (log-uniform), anywhere, half inverted."""
    side = max(1, round(28 * np.exp(rng.uniform(np.log(0.4), np.log(3.0)))))
    tile = np.asarray(Image.fromarray(digit).resize((side, side), Image.LANCZOS))
    canvas = np.zeros((CANVAS, CANVAS), np.uint8)
    top, left = rng.integers(0, CANVAS - side + 1, size=2)
    canvas[top : top + side, left : left + side] = tile
    return 255 - canvas if rng.random() < 0.5 else canvas


def _plain_resize(canvas: np.ndarray) -> np.ndarray:
    """No centring: the whole canvas shrunk to 28x28 (polarity fixed, to be fair)."""
    border = np.concatenate([canvas[0], canvas[-1], canvas[:, 0], canvas[:, -1]])
    light_on_dark = 255 - canvas if np.median(border) > 127 else canvas
    return np.asarray(Image.fromarray(light_on_dark).resize((SIDE, SIDE), Image.BOX))


@pytest.mark.slow
def test_digitize_keeps_accuracy_on_pasted_real_digits(
    fast_checkpoint, sample_processed_dir, record_property
):
    from pipeline.serve.server import load_served

    torch.set_num_threads(1)
    models = load_served([fast_checkpoint], "cpu")
    val = TensorDigits.load(sample_processed_dir, "val")
    digits, labels = val.images[:, 0].numpy(), val.labels.numpy()
    rng = np.random.default_rng(0)
    canvases = [_paste(digit, rng) for digit in digits]

    def accuracy(images) -> float:
        return float((models.predict(np.stack(images)[:, None]).argmax(1) == labels).mean())

    original = accuracy(digits)
    preprocessed = accuracy([digitize(canvas) for canvas in canvases])
    uncentred = accuracy([_plain_resize(canvas) for canvas in canvases])
    figures = {"original": original, "digitized": preprocessed, "plain_resize": uncentred}
    for name, value in figures.items():
        record_property(f"accuracy_{name}", value)
    print(
        f"\n{len(labels)} validation digits: "
        + ", ".join(f"{name} {100 * value:.2f}%" for name, value in figures.items())
    )
    assert original > 0.9
    assert preprocessed >= original - 0.015
    assert uncentred < original - 0.5


@pytest.mark.parametrize("shape", [(1, 5000), (5000, 1), (3, 3), (2000, 2000)])
def test_extreme_shapes_still_give_a_digit(shape):
    canvas = np.full(shape, 255, np.uint8)
    canvas[shape[0] // 3 : 2 * shape[0] // 3 + 1, shape[1] // 2] = 0  # one thin dark line
    digit = digitize_bytes(_png(canvas))
    assert digit.shape == (SIDE, SIDE) and digit.max() == 255
