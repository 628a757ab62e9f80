"""Decoding a 12-megapixel phone photo to the model's input, with and without JPEG draft mode.

The photo is made here: a sample image scaled to 4000 x 3000 with sensor-like noise, saved as a
quality-90 JPEG (about the size a phone writes). "full" decodes every pixel, then resizes;
"draft" is ``fruits.featurize.images.decode``, which lets libjpeg decode at 1/8 scale first.
"""

from __future__ import annotations

import io
import time

import numpy as np
from PIL import Image, ImageOps

from fruits.featurize.images import decode
from fruits.local.paths import SAMPLE_IMAGES
from fruits.local.upload import sample_images


def twelve_megapixel_jpeg() -> bytes:
    base = Image.open(sample_images(SAMPLE_IMAGES)[0][1]).convert("RGB").resize((4000, 3000), Image.Resampling.BICUBIC)
    noisy = np.asarray(base, dtype=np.int16) + np.random.default_rng(0).normal(0, 6, (3000, 4000, 3)).astype(np.int16)
    out = io.BytesIO()
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=90)
    return out.getvalue()


def full_decode(data: bytes) -> np.ndarray:
    img = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    return np.asarray(img.resize((224, 224), Image.Resampling.BILINEAR), dtype=np.float32)


def run(repeats: int = 10) -> dict[str, float]:
    data = twelve_megapixel_jpeg()

    def timed(fn) -> float:  # noqa: ANN001
        fn(data)
        started = time.perf_counter()
        for _ in range(repeats):
            fn(data)
        return (time.perf_counter() - started) / repeats * 1000

    return {"jpeg_bytes": len(data), "full_ms": timed(full_decode), "draft_ms": timed(decode)}
