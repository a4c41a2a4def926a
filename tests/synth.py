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


def band_mask(w: int, h: int, x0: int, x1: int) -> Image.Image:
    """A hard greyscale mask: columns x0..x1 white, the rest black."""
    arr = np.zeros((h, w), np.uint8)
    arr[:, x0:x1] = 255
    return Image.fromarray(arr, "L")


def pixels(data: bytes) -> np.ndarray:
    """Decoded RGB pixels of encoded image bytes, as int16 (differences do not wrap)."""
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


def make_video(path, frames: int = 24, w: int = 64, h: int = 48, fps: int = 12, audio: bool = False) -> None:
    """A clip of a square moving over a gradient, written with PyAV (codec from the suffix: H.264 for
    .mp4/.mov/.mkv, VP9 for .webm, GIF for .gif); ``audio`` adds a 440 Hz tone (AAC, Opus for .webm)."""
    import av

    path = str(path)
    codec = "libvpx-vp9" if path.endswith(".webm") else "gif" if path.endswith(".gif") else "libx264"
    out = av.open(path, "w")
    stream = out.add_stream(codec, rate=fps)
    stream.width, stream.height = w, h
    stream.pix_fmt = "rgb8" if codec == "gif" else "yuv420p"
    webm = path.endswith(".webm")
    a = out.add_stream("libopus" if webm else "aac", rate=48000 if webm else 44100) if audio else None
    base = np.asarray(synth_image(w, h, seed=5, kind="gradient"))
    for i in range(frames):
        arr = base.copy()
        x = (3 * i) % max(1, w - 16)
        arr[h // 3 : h // 3 + 16, x : x + 16] = (230, 120, 30)
        frame = av.VideoFrame.from_ndarray(arr, format="rgb24")
        frame.pts = i
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode(None):
        out.mux(packet)
    if a is not None:
        step, total, t = (960 if webm else 1024), int(frames / fps * a.rate), 0
        while t < total:
            k = np.arange(t, t + step)
            tone = (0.2 * np.sin(2 * np.pi * 440 * k / a.rate)).astype(np.float32)[None, :]
            af = av.AudioFrame.from_ndarray(tone, format="flt", layout="mono")
            af.sample_rate, af.pts = a.rate, t
            for packet in a.encode(af):
                out.mux(packet)
            t += step
        for packet in a.encode(None):
            out.mux(packet)
    out.close()


def video_facts(path) -> dict:
    """Frame count, rate, size and audio of a video file, by decoding it."""
    import av

    with av.open(str(path)) as c:
        v = c.streams.video[0]
        n = sum(1 for _ in c.decode(v))
        audio = c.streams.audio[0] if c.streams.audio else None
        facts = {"frames": n, "rate": v.average_rate, "size": (v.codec_context.width, v.codec_context.height),
                 "codec": v.codec_context.name, "audio": audio.codec_context.name if audio else None}
    if audio is not None:
        with av.open(str(path)) as c:
            facts["audio_packets"] = sum(1 for p in c.demux(c.streams.audio[0]) if p.size)
    return facts
