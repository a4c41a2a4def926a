"""Synthetic test images (no data files): seeded colour gradients and noise, as PIL images or encoded."""

from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

from adain.photo import heif_support

heif_support()  # encoded(img, "HEIF"): an iPhone's HEIC

def synth_image(w: int = 64, h: int = 48, seed: int = 0, kind: str = "mix") -> Image.Image:
    """An RGB image: a smooth seeded gradient ("gradient"), uniform noise ("noise"), or 70/30 of both.

    Made a band of rows at a time, each operation in place (the same float64 operations in the same order: the
    same bytes as whole-image arrays): a phone-sized one, six whole temporaries of 500 MB, took 9 s here."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 1, w)[None, :, None]
    y = np.linspace(0, 1, h)[:, None, None]
    phase = rng.random(3)[None, None, :]
    noise = rng.random((h, w, 3))
    out = np.empty((h, w, 3), np.uint8)
    across = x * (1 + 2 * phase)
    step = max(1, 2**18 // max(w, 1))
    for top in range(0, h, step):
        rows = slice(top, top + step)
        if kind == "noise":
            out[rows] = noise[rows] * 255
            continue
        arr = across + y[rows] * (2 - phase)
        arr += phase
        arr *= 2 * np.pi
        np.sin(arr, out=arr)
        arr *= 0.5
        arr += 0.5
        if kind != "gradient":
            arr *= 0.7
            arr += 0.3 * noise[rows]
        arr *= 255
        out[rows] = arr  # (a cast toward zero, as astype's)
    return Image.fromarray(out, "RGB")


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


def make_video(path, frames: int = 24, w: int = 64, h: int = 48, fps: int = 12, audio: bool | str = False,
               times: list[float] | None = None, audio_start: float = 0.0, bad_sound_packet: int = 0,
               sound_layout: str | None = None) -> None:
    """A clip of a square moving over a gradient, written with PyAV (codec from the suffix: H.264 for
    .mp4/.mov/.mkv, VP9 for .webm, GIF for .gif); ``audio`` adds a 440 Hz tone (AAC, Opus for .webm, or the
    encoder it names; ``sound_layout``: its channels, stereo by default), from ``audio_start`` seconds; its
    ``bad_sound_packet``-th packet (from 1) is corrupt (zeroed after 2 bytes). ``times``: each frame's time in
    seconds (a variable rate), else ``i / fps``."""
    import av

    path = str(path)
    codec = "libvpx-vp9" if path.endswith(".webm") else "gif" if path.endswith(".gif") else "libx264"
    out = av.open(path, "w")
    stream = out.add_stream(codec, rate=fps)
    stream.width, stream.height = w, h
    stream.pix_fmt = "rgb8" if codec == "gif" else "yuv420p"
    clock = Fraction(1, 1000) if times else Fraction(1, fps)
    stream.codec_context.time_base = clock
    frames = len(times) if times else frames
    webm = path.endswith(".webm")
    a_codec = audio if isinstance(audio, str) else "libopus" if webm else "aac"
    a_rate = 48000 if a_codec == "libopus" else 44100
    a = out.add_stream(a_codec, rate=a_rate, **({"layout": sound_layout} if sound_layout else {})) if audio else None
    base = np.asarray(synth_image(w, h, seed=5, kind="gradient"))
    for i in range(frames):
        arr = base.copy()
        x = (3 * i) % max(1, w - 16)
        arr[h // 3 : h // 3 + 16, x : x + 16] = (230, 120, 30)
        frame = av.VideoFrame.from_ndarray(arr, format="rgb24")
        frame.pts, frame.time_base = (round(times[i] / clock) if times else i), clock
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode(None):
        out.mux(packet)
    if a is not None:
        length = times[-1] - times[0] + 1 / fps if times else frames / fps  # (from audio_start)
        step, total, t = (960 if a_codec == "libopus" else 1024), int(length * a.rate), 0
        sound_packets = 0
        fmt = a.codec_context.format.name  # the encoder's own sample format (PCM's is no float)
        while t < total:
            k = np.arange(t, t + step)
            tone = (0.2 * np.sin(2 * np.pi * 440 * k / a.rate))[None, :]
            tone = tone.astype(np.float32) if fmt.startswith("flt") else (tone * 32767).astype(np.int16)
            af = av.AudioFrame.from_ndarray(tone, format=fmt, layout="mono")
            af.sample_rate, af.pts = a.rate, t + round(audio_start * a.rate)
            for packet in a.encode(af):
                sound_packets += 1
                out.mux(_zeroed(packet, a) if sound_packets == bad_sound_packet else packet)
            t += step
        for packet in a.encode(None):
            out.mux(packet)
    out.close()


def _zeroed(packet, stream):
    import av

    data = bytes(packet)
    bad = av.Packet(data[:2] + bytes(len(data) - 2))
    bad.pts, bad.dts, bad.duration, bad.time_base, bad.stream = (packet.pts, packet.dts, packet.duration,
                                                                  packet.time_base, stream)
    return bad


def unknown_codec_clip(path, what: str) -> Path:
    """An MKV whose video or sound ("video", "sound") names a codec no FFmpeg has (its Matroska codec id
    changed in place): PyAV gives such a stream no decoder."""
    make_video(path, frames=6, audio="pcm_s16le")
    data = Path(path).read_bytes()
    old, new = (b"V_MPEG4/ISO/AVC", b"V_ZZZZZ/ISO/AVC") if what == "video" else (b"A_PCM/INT/LIT", b"A_ZZZ/INT/LIT")
    assert data.count(old) == 1
    Path(path).write_bytes(data.replace(old, new))
    return Path(path)


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


# D50 colorants (the PCS's white; what an ICC matrix profile stores) of sRGB and of Display P3
SRGB_D50 = ((0.4360747, 0.2225045, 0.0139322), (0.3850649, 0.7168786, 0.0971045), (0.1430804, 0.0606169, 0.7141733))
P3_D50 = ((0.5151215, 0.2411957, -0.0010498), (0.2919769, 0.6922455, 0.0418854), (0.1571045, 0.0665741, 0.7840729))


def icc_rgb(colorants=SRGB_D50, gamma: float = 2.2, name: str = "test RGB", grey: bool = False) -> bytes:
    """A minimal ICC v2 RGB matrix/gamma display profile: red, green and blue's D50 XYZ and one gamma,
    as a camera or phone embeds (Display P3 is P3_D50); ``(SRGB_D50[1], SRGB_D50[0], SRGB_D50[2])`` swaps
    red and green, so a correct conversion turns red pixels green. ``grey``: a greyscale profile (one
    tone curve, ``gamma``) instead."""
    import struct

    def s15(v: float) -> bytes:
        return struct.pack(">i", round(v * 65536))

    def xyz(v) -> bytes:
        return b"XYZ " + bytes(4) + b"".join(s15(c) for c in v)

    ascii_ = name.encode() + b"\0"
    desc = b"desc" + bytes(4) + struct.pack(">I", len(ascii_)) + ascii_ + bytes(4 + 4 + 2 + 1 + 67)
    curve = b"curv" + bytes(4) + struct.pack(">IH", 1, round(gamma * 256)) + bytes(2)
    tags = [(b"desc", desc), (b"wtpt", xyz((0.9642, 1.0, 0.8249)))]
    if grey:
        tags.append((b"kTRC", curve))
    else:
        tags += [(b"rXYZ", xyz(colorants[0])), (b"gXYZ", xyz(colorants[1])), (b"bXYZ", xyz(colorants[2])),
                 (b"rTRC", curve), (b"gTRC", curve), (b"bTRC", curve)]
    offset = 128 + 4 + 12 * len(tags)
    table, data = struct.pack(">I", len(tags)), b""
    for sig, body in tags:
        body += bytes(-len(body) % 4)
        table += sig + struct.pack(">II", offset + len(data), len(body))
        data += body
    size = offset + len(data)
    space = b"GRAY" if grey else b"RGB "
    d50 = b"".join(s15(c) for c in (0.9642, 1.0, 0.8249))
    header = (struct.pack(">I", size) + b"lcms" + bytes([2, 0x10, 0, 0]) + b"mntr" + space + b"XYZ " + bytes(12)
              + b"acsp" + bytes(24) + struct.pack(">I", 0) + d50 + bytes(48))
    assert len(header) == 128
    return header + table + data


def hlg_signal(srgb: np.ndarray) -> np.ndarray:
    """8-bit sRGB (H x W x 3) -> the HLG signal (BT.2020, [0, 1]) a phone would record for it: sRGB white
    at HDR reference white (203 cd/m2, BT.2408), on a 1,000 cd/m2 display (BT.2100's OOTF, inverted)."""
    s = srgb.astype(np.float64) / 255
    linear = np.where(s <= 0.04045, s / 12.92, ((s + 0.055) / 1.055) ** 2.4)
    to2020 = np.array([[0.6274, 0.3293, 0.0433], [0.0691, 0.9195, 0.0114], [0.0164, 0.0880, 0.8956]])
    nits = np.clip(linear @ to2020.T, 0, None) * 203.0
    yd = np.maximum(nits @ np.array([0.2627, 0.6780, 0.0593]), 1e-9)[..., None]
    ys = (yd / 1000.0) ** (1 / 1.2)
    scene = nits / (1000.0 * ys**0.2)
    a, b, c = 0.17883277, 0.28466892, 0.55991073
    return np.where(scene <= 1 / 12, np.sqrt(3 * scene), a * np.log(np.maximum(12 * scene - b, 1e-9)) + c)


def make_hlg_clip(path, signals: list[np.ndarray], fps: int = 10, trc: int = 18) -> None:
    """An HDR clip as a phone records it: HEVC 10-bit, BT.2020, HLG, tagged so; one frame per H x W x 3
    HLG signal in [0, 1]. ``trc`` 14 (BT.2020 10-bit): an SDR clip in BT.2020 instead."""
    import av
    from av.video.reformatter import ColorRange, Colorspace

    h, w = signals[0].shape[:2]
    with av.open(str(path), "w") as out:
        # no B-frames, one frame thread: with them the MP4 muxer now and then refused the last packets
        params = "log-level=none:bframes=0:frame-threads=1"
        stream = out.add_stream("libx265", rate=fps, options={"x265-params": params, "crf": "12"})
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p10le"
        cc = stream.codec_context
        cc.colorspace, cc.color_primaries, cc.color_trc, cc.color_range = 9, 9, trc, 1  # BT.2020 NCL, limited
        for i, sig in enumerate(signals):
            frame = av.VideoFrame.from_ndarray(np.round(np.clip(sig, 0, 1) * 65535).astype(np.uint16), format="rgb48le")
            frame = frame.reformat(format="yuv420p10le", dst_colorspace=Colorspace.BT2020,
                                   dst_color_range=ColorRange.MPEG)
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def photo_with_exif(w: int = 64, h: int = 48, seed: int = 0) -> bytes:
    """A JPEG as a phone writes one: camera, date taken, orientation 6 (turn a quarter), the pixel size and
    a GPS location in its EXIF."""
    exif = Image.Exif()
    exif[0x010F] = "TestCam"  # Make
    exif[0x0112] = 6  # Orientation
    sub = exif.get_ifd(0x8769)
    sub[0x9003] = "2026:07:14 10:11:12"  # DateTimeOriginal
    sub[0xA002], sub[0xA003] = w, h
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2] = "N", (52.0, 31.0, 0.0)
    buf = io.BytesIO()
    synth_image(w, h, seed=seed).save(buf, "JPEG", quality=92, exif=exif.tobytes())
    return buf.getvalue()


def jpeg_scan_bomb(w: int, h: int, repeats: int, mpo: bool = False) -> bytes:
    """A progressive JPEG whose last scan is repeated ``repeats`` times before its end: a small, valid file
    whose decoding costs repeats x pixels (each scan is a pass over every block). ``mpo``: with a
    multi-picture (MPF) segment, which Pillow then opens as MPO."""
    data = encoded(Image.new("L", (w, h), 128), "JPEG", progressive=True, quality=90)
    last = data.rindex(b"\xff\xda")  # the last scan runs from its marker to the end-of-image marker
    bomb = data[:-2] + data[last:-2] * repeats + data[-2:]
    if mpo:
        pair = io.BytesIO()
        Image.new("L", (16, 16)).save(pair, "MPO", save_all=True, append_images=[Image.new("L", (16, 16), 255)])
        pair = pair.getvalue()
        at = pair.index(b"\xff\xe2")  # the APP2 segment that says "MPF"
        size = int.from_bytes(pair[at + 2:at + 4], "big")
        bomb = bomb[:2] + pair[at:at + 2 + size] + bomb[2:]
    return bomb
