"""Synthetic test images (no data files): smooth colour gradients with a little seeded noise."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def synth_image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, size=3)
    freq = rng.uniform(2, 8, size=3)
    chans = [
        0.5 + 0.4 * np.sin(freq[c] * x / max(width, 1) * np.pi + phase[c] + freq[c] * y / max(height, 1))
        for c in range(3)
    ]
    arr = np.stack(chans, axis=-1) + rng.normal(0, 0.05, size=(height, width, 3))
    return Image.fromarray((np.clip(arr, 0, 1) * 255).astype(np.uint8), "RGB")


def encoded(img: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()
