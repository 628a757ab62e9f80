"""Decoding uploaded bytes into the model's input, with a specific reason for every failure.

Example::

    pixels = decode(data)          # float32 array (224, 224, 3), RGB, values 0..255
    # raises ImageError("not_an_image", ...) for a text file named .jpg

Every photo is: EXIF-rotated upright; converted to RGB from grayscale, palette, RGBA (composited on
white, as the Fruits-360 backgrounds are), CMYK or 16-bit; decoded with JPEG draft mode close to
the model's size (a 12-megapixel JPEG is decoded at 1/8 scale instead of in full); and guarded by
Pillow's decompression-bomb check plus the byte limit of the settings.
"""

from __future__ import annotations

import io
import warnings
from enum import StrEnum

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .model import IMAGE_SIZE

# Pillow's default guard: over this many pixels is a warning, over twice is an error.
# We make both an error: a phone photo is ~12-50 MP, anything near 90 MP is not a photo.
MAX_PIXELS = 89_478_485


class ImageError(Exception):
    """An upload that cannot become a feature row. ``reason`` is a short stable code."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class Reason(StrEnum):
    """Why an upload is quarantined: the ``reason`` column of ``quarantine``."""

    EMPTY = "empty_object"
    TOO_LARGE = "too_many_bytes"
    NOT_AN_IMAGE = "not_an_image"
    TRUNCATED = "truncated_or_corrupt"
    BOMB = "decompression_bomb"
    MISSING = "object_missing"
    CHANGED = "object_changed"
    FETCH_FAILED = "fetch_failed"
    DECODER_ERROR = "decoder_error"
    INVALID_EVENT = "invalid_event"
    POISON = "poison"  # failed its worker alone, twice, for a reason nothing above names (stream.poison)


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "I;16N"):
        # 16-bit grayscale: scale to 8 bits before converting (convert("RGB") would clip).
        arr = np.asarray(img, dtype=np.float32)
        peak = 65535.0 if arr.max() > 255 else 255.0
        return Image.fromarray((arr * (255.0 / peak)).astype(np.uint8)).convert("RGB")
    return img.convert("RGB")


def decode(data: bytes, max_bytes: int | None = None, size: int = IMAGE_SIZE) -> np.ndarray:
    """Bytes -> float32 RGB array ``(size, size, 3)`` in 0..255; raises ``ImageError``."""
    if not data:
        raise ImageError(Reason.EMPTY, "the object has zero bytes")
    if max_bytes is not None and len(data) > max_bytes:
        raise ImageError(Reason.TOO_LARGE, f"{len(data)} bytes exceeds the limit of {max_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if img.width * img.height > MAX_PIXELS:
                raise ImageError(Reason.BOMB, f"{img.width}x{img.height} pixels exceeds {MAX_PIXELS}")
            # JPEG only: let libjpeg decode at 1/2, 1/4 or 1/8 scale, still >= size on each side.
            img.draft("RGB", (size, size))
            img = ImageOps.exif_transpose(img)
            img = _to_rgb(img)
            img = img.resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(img, dtype=np.float32)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(Reason.BOMB, str(exc)) from exc
    except UnidentifiedImageError as exc:
        raise ImageError(Reason.NOT_AN_IMAGE, "not a format Pillow can read (is it really an image?)") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(Reason.TRUNCATED, f"cannot decode: {exc}") from exc
    except MemoryError:
        raise  # this worker's memory, not the image's fault: the task fails and is retried
    except Exception as exc:
        raise ImageError(Reason.DECODER_ERROR, f"the decoder raised {type(exc).__name__}: {exc}") from exc
