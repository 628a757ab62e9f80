"""Images that are no fruit, made on the spot: what the classifier must answer "unknown" to.

Four kinds, each drawn with its own colours and sizes from ``seed``: ``noise`` (uniform random
pixels), ``flat`` (one colour), ``drawing`` (a line drawing of a car, a house or a face on a
plain background) and ``texture`` (checkerboards and stripes). The demo uploads a few as app
photos; the tests and ``benchmarks/bench_classify.py`` measure the rejection on them.

Example::

    for kind, png in not_fruit_images(8, seed=1):
        Path(f"{kind}.png").write_bytes(png)
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw

KINDS = ("noise", "flat", "drawing", "texture")
SIZE = 100


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(0, 256, 3))  # type: ignore[return-value]


def _drawing(rng: np.random.Generator, i: int) -> Image.Image:
    image = Image.new("RGB", (SIZE, SIZE), _colour(rng) if i % 3 == 2 else "white")
    pen, ink, width = ImageDraw.Draw(image), _colour(rng), int(rng.integers(2, 5))
    if i % 3 == 0:  # a car
        pen.rectangle([10, 40, 90, 70], outline=ink, width=width)
        pen.line([30, 40, 40, 25, 65, 25, 75, 40], fill=ink, width=width)
        for x in (20, 60):
            pen.ellipse([x, 60, x + 20, 80], outline=ink, width=width)
    elif i % 3 == 1:  # a house
        pen.rectangle([25, 45, 75, 90], outline=ink, width=width)
        pen.polygon([(20, 45), (50, 15), (80, 45)], outline=ink, width=width)
        pen.rectangle([45, 65, 58, 90], outline=ink, width=width)
    else:  # a face
        pen.ellipse([15, 15, 85, 85], outline=ink, width=width)
        pen.ellipse([33, 35, 43, 45], fill=ink)
        pen.ellipse([57, 35, 67, 45], fill=ink)
        pen.arc([30, 40, 70, 72], 20, 160, fill=ink, width=width)
    return image


def _texture(rng: np.random.Generator, i: int) -> Image.Image:
    step = int(rng.integers(4, 25))
    yy, xx = np.mgrid[:SIZE, :SIZE]
    mask = ((yy // step + xx // step) % 2 == 1) if i % 2 == 0 else ((xx + (yy if i % 4 == 1 else 0)) // step % 2 == 1)
    pixels = np.where(mask[..., None], _colour(rng), _colour(rng)).astype(np.uint8)
    return Image.fromarray(pixels)


def not_fruit_images(n: int, seed: int = 0) -> list[tuple[str, bytes]]:
    """``n`` PNG images, the kinds in turn: ``(kind, bytes)``."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        kind = KINDS[i % len(KINDS)]
        if kind == "noise":
            image = Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))
        elif kind == "flat":
            image = Image.new("RGB", (SIZE, SIZE), _colour(rng))
        elif kind == "drawing":
            image = _drawing(rng, i // len(KINDS))
        else:
            image = _texture(rng, i // len(KINDS))
        data = io.BytesIO()
        image.save(data, "PNG")
        out.append((kind, data.getvalue()))
    return out
