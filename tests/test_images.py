"""Decoding: every kind of odd image becomes RGB 224x224, or an ImageError with a specific reason."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from conftest import SAMPLE
from fruits.featurize.images import ImageError, Reason, decode


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def half_red_half_blue(size=(200, 100)) -> Image.Image:
    img = Image.new("RGB", size, (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, size[0] // 2, size[1]))
    return img


def test_sample_photo() -> None:
    path = next(SAMPLE.glob("Banana/*.jpg"))
    pixels = decode(path.read_bytes())
    assert pixels.shape == (224, 224, 3) and pixels.dtype == np.float32
    assert pixels.min() >= 0 and pixels.max() <= 255


@pytest.mark.parametrize(
    "make",
    [
        lambda: encode(Image.new("L", (50, 50), 128), "PNG"),
        lambda: encode(Image.new("P", (50, 50), 3), "GIF"),
        lambda: encode(Image.new("RGBA", (50, 50), (255, 0, 0, 128)), "PNG"),
        lambda: encode(Image.new("CMYK", (50, 50), (0, 255, 255, 0)), "JPEG"),
        lambda: encode(Image.fromarray(np.full((50, 50), 40000, dtype=np.uint16)), "PNG"),
        lambda: encode(Image.new("RGB", (50, 50), (0, 128, 0)), "WEBP"),
    ],
    ids=["grayscale", "palette", "rgba", "cmyk", "16-bit", "webp"],
)
def test_modes_become_rgb(make) -> None:
    pixels = decode(make())
    assert pixels.shape == (224, 224, 3)


def test_16_bit_is_scaled_not_clipped() -> None:
    pixels = decode(encode(Image.fromarray(np.full((20, 20), 32768, dtype=np.uint16)), "PNG"))
    assert 120 <= pixels.mean() <= 135  # half of 65535 -> about half of 255


def test_transparent_is_composited_on_white() -> None:
    pixels = decode(encode(Image.new("RGBA", (20, 20), (0, 0, 0, 0)), "PNG"))
    assert pixels.min() == 255


def test_exif_orientation_is_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display needs 90 degrees clockwise
    upright = decode(encode(half_red_half_blue(), "JPEG", exif=exif, quality=95))
    # After the rotation red is on top, blue at the bottom.
    assert upright[:100, :, 0].mean() > 200 and upright[124:, :, 2].mean() > 200


def test_large_jpeg_uses_draft_mode() -> None:
    big = Image.new("RGB", (4032, 3024), (200, 100, 50))
    data = encode(big, "JPEG", quality=80)
    img = Image.open(io.BytesIO(data))
    img.draft("RGB", (224, 224))
    assert img.size == (504, 378)  # decoded at 1/8 scale
    assert decode(data).shape == (224, 224, 3)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", Reason.EMPTY),
        (b"hello, I am a text file named .jpg", Reason.NOT_AN_IMAGE),
        (encode(half_red_half_blue(), "JPEG")[:300], Reason.TRUNCATED),
    ],
    ids=["empty", "text", "truncated"],
)
def test_failures_have_reasons(data: bytes, reason: str) -> None:
    with pytest.raises(ImageError) as info:
        decode(data)
    assert info.value.reason == reason


def test_decompression_bomb() -> None:
    bomb = encode(Image.new("1", (12000, 12000)), "PNG")  # 144 MP in a few kB
    assert len(bomb) < 100_000
    with pytest.raises(ImageError) as info:
        decode(bomb)
    assert info.value.reason == Reason.BOMB


def test_byte_limit() -> None:
    with pytest.raises(ImageError) as info:
        decode(encode(half_red_half_blue(), "PNG"), max_bytes=100)
    assert info.value.reason == Reason.TOO_LARGE


def test_any_other_decoder_exception_is_the_uploads(monkeypatch) -> None:
    """Whatever a decoder raises for one image (here Pillow's EXIF step failing as no OSError does)
    quarantines that image with the error's type and message; it never fails the batch."""
    from fruits.featurize import images

    def broken(img):  # noqa: ANN001, ANN202
        raise KeyError("EXIF tag 274 of an unexpected type")

    monkeypatch.setattr(images.ImageOps, "exif_transpose", broken)
    with pytest.raises(ImageError) as info:
        decode(encode(half_red_half_blue(), "JPEG"))
    assert info.value.reason == Reason.DECODER_ERROR and "KeyError" in str(info.value)
