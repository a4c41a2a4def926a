"""Synthetic test images (no data files): seeded colour gradients and noise, as PIL images or encoded."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def synth_image(w: int = 64, h: int = 48, seed: int = 0, kind: str = "mix") -> Image.Image:
    """An RGB image: a smooth seeded gradient ("gradient"), uniform noise ("noise"), or 70/30 of both."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 1, w)[None, :, None]
    y = np.linspace(0, 1, h)[:, None, None]
    phase = rng.random(3)[None, None, :]
    grad = 0.5 + 0.5 * np.sin(2 * np.pi * (x * (1 + 2 * phase) + y * (2 - phase) + phase))
    noise = rng.random((h, w, 3))
    arr = grad if kind == "gradient" else noise if kind == "noise" else 0.7 * grad + 0.3 * noise
    return Image.fromarray((arr * 255).astype(np.uint8), "RGB")


def encoded(img: Image.Image, fmt: str = "PNG", **save: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **save)
    return buf.getvalue()


def make_image(w: int = 64, h: int = 48, seed: int = 0, fmt: str = "PNG", kind: str = "mix", **save: object) -> bytes:
    """``synth_image`` encoded (PNG by default)."""
    return encoded(synth_image(w, h, seed, kind), fmt, **save)


def make_mask(w: int = 64, h: int = 48) -> bytes:
    """A hard two-region mask, PNG: the left half white (styles[0]), the right half black (styles[1])."""
    arr = np.zeros((h, w), np.uint8)
    arr[:, : w // 2] = 255
    return encoded(Image.fromarray(arr, "L"))


def pixels(data: bytes) -> np.ndarray:
    """Decoded RGB pixels of encoded image bytes, as int16 (differences do not wrap)."""
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)
