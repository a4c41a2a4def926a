"""Video containers with PyAV (FFmpeg inside): read frames and audio, write frames and copy the audio.

No torch here: the thin client demuxes and muxes with this module, the server never parses containers.
Reading yields RGB PIL frames with their times; the audio packets met on the way are kept, in order, for
the writer to copy unchanged into the output, interleaved by time. Every problem is a :class:`MediaError`
with a message that names it (no video stream, no frames, corrupt or truncated data, a codec that is
missing). Requires the ``video`` extra (``pip install 'adain[video]'``).
"""

from __future__ import annotations

import collections
import contextlib
import functools
import math
import os
import re
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from adain.errors import MediaError, Stopped, install_hint
from adain.files import atomic_path
from adain.hdr import is_hdr, is_wide_sdr, to_sdr, wide_to_srgb
from adain.image import longest_size
from adain.job import is_number
from adain.wire import MIN_FPS, VIDEO_SUFFIXES

# Video codecs by output container, best first: H.264 where the encoder exists, else what plays widely.
_CODECS = {
    "mp4": ("libx264", "libopenh264", "mpeg4"),
    "mov": ("libx264", "libopenh264", "mpeg4"),
    "matroska": ("libx264", "libopenh264", "mpeg4"),
    "webm": ("libvpx-vp9", "libvpx"),
    "gif": ("gif",),
}
_CONTAINERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm", ".gif": "gif"}
GIF_MAX_FPS = 50  # a GIF frame's delay is in 1/100 s, and browsers show one under 2/100 s for 1/10 s
# Audio codecs copied as they are, by container; any other is encoded again (_AUDIO_FALLBACK). Measured with
# this FFmpeg: its muxers' supported_codecs also list PCM for MP4 and Opus and FLAC for MOV, whose headers they
# then refuse to write, and ALAC copied into either loses its last packet. None: what the muxer lists.
_AUDIO_COPY: dict[str, set[str] | None] = {
    "mp4": {"aac", "mp3", "mp2", "ac3", "eac3", "opus", "flac"},
    "mov": {"aac", "mp3", "mp2", "ac3", "eac3", "pcm_s16le", "pcm_s16be", "pcm_s24le", "pcm_s24be", "pcm_f32le"},
    "matroska": None,
    "webm": {"opus", "vorbis"},
}
_AUDIO_FALLBACK = {"mp4": "aac", "mov": "aac", "matroska": "aac", "webm": "libopus"}
_BT709, _LIMITED = 1, 1  # AVCOL_SPC/PRI/TRC_BT709, AVCOL_RANGE_MPEG: what the output video is tagged with
_ENCODER_OPTIONS = {
    "libx264": {"crf": "18", "preset": "medium"},
    "libvpx-vp9": {"crf": "30", "b": "0", "deadline": "good", "cpu-used": "4", "row-mt": "1"},
    "libvpx": {"crf": "10", "b": "2M"},
}


class MediaWriteError(MediaError):
    """FFmpeg refused to write the output (an encoder, the muxer): no fault of the clip that was read, so a
    service reports it as its own failure, not as bad input."""


def _av() -> Any:
    try:
        import av
    except ImportError as e:  # pragma: no cover - an install problem
        raise MediaError(f"video needs PyAV (the 'video' extra: {install_hint('video')})") from e
    return av


@dataclass(frozen=True)
class VideoInfo:
    width: int  # as coded: a clip with a display rotation of a quarter turn is read with the two swapped
    height: int
    rate: Fraction  # frames per second (the stream's average rate)
    frames: int  # as the container declares it; 0 when it does not say
    audio: bool
    container: str  # FFmpeg's demuxer name
    duration: float = 0.0  # seconds, as the container declares it (its longest stream); 0 when it does not say
    # seconds of the video stream alone, where the file says (else ``duration``): a clip's sound may run on
    # past its last frame, and was counted as frames
    video_duration: float = 0.0

    @property
    def length(self) -> int:
        """The frames of the whole clip at its own rate, as far as the file says: its declared count, but no
        more than its video's duration holds (an MP4 cut without re-encoding declares the frames its edit list
        hides, and was refused as truncated), else by the video's duration x its rate (WebM and MKV declare no
        count; rounded: the sound may end a few ms after the frames); 0 where it says neither."""
        by_time = round(self.video_duration * self.rate)
        return min(self.frames, by_time) if self.frames and by_time else self.frames or by_time

    def read_rate(self, max_fps: float | None) -> Fraction:
        """The rate the clip's frames come at when read at most ``max_fps`` a second: its own, or ``max_fps`` where
        that is lower (the other frames dropped), as the reader, the client's limit check and the page count."""
        return Fraction(max_fps).limit_denominator(1001) if max_fps is not None and max_fps < self.rate else self.rate

    def frames_read(self, rate: float | Fraction, start: float = 0.0, end: float = math.inf) -> int:
        """The frames that come when the clip is read at ``rate`` a second (its own, or fewer: the rest are
        dropped) from ``start`` to ``end`` seconds, as far as the file says (the whole by its :attr:`length`, a
        part by its video's duration; a 0 let a clip of any length past max_video_frames); 0 where it says
        nothing. Counted by the reader's own rules on a steady rate (``VideoReader._frames``): a part opens with
        the frame on screen at its start, however short the part, the nearest within half a frame counting as on
        it (and coming at the start's time), and ends before the frame within half a frame of its end; a lower
        rate keeps the first frame at or past each tick, less half a frame. Its span x its rate, rounded up, was a
        frame over (10 frames of 30 a second in 0.34 s came as 11), and a clip within a server's limit was refused."""
        native = float(self.rate)
        first, stop = 0, self.length  # frames [first, stop) at the clip's own rate
        if (start > 0 or end < math.inf) and self.video_duration:
            first = max(0, math.ceil(start * native - 0.5 - 1e-6))
            stop = round(self.video_duration * native)
            if start * native < stop:  # a start past the last frame's time, before the picture's end: that frame
                first = min(first, stop - 1)
            if end < math.inf:  # the frame on screen at the start comes however short the part
                stop = min(stop, max(first + 1, math.ceil(end * native - 0.5 - 1e-6)))
        if stop <= first:
            return 0
        if rate >= self.rate:
            return stop - first
        begin = max(start, first / native)  # the first frame's time (one on screen before the start: the start)
        return math.floor(((stop - 0.5) / native - begin) * float(rate) + 1e-6) + 1


def counted(path: str | Path, info: VideoInfo) -> VideoInfo:
    """``info`` with the frames its file holds, counted as packets (a demux, no decode), and their average rate,
    where the container declares no count (MKV, WebM). Its duration x its nominal rate is a guess there, and a
    variable-rate MKV of 12 frames was refused as "61 frames, over the limit of max_video_frames=30"; a limit
    check counts before it refuses. ``info`` as it is where the file cannot be read again or holds none."""
    if info.frames:
        return info
    av = _av()
    try:
        with av.open(str(path)) as c:
            n = sum(1 for p in c.demux(_moving(c)) if p.size)
    except (av.error.FFmpegError, OSError, TypeError):
        return info
    if not n:
        return info
    rate = Fraction(n / info.video_duration).limit_denominator(1001) if info.video_duration else info.rate
    return replace(info, frames=n, rate=rate)


def _packet_end(packet: Any, origin: float) -> float:
    """Where a packet's data ends (its time plus its duration, where it says one), in seconds from ``origin``."""
    return float((packet.pts + (packet.duration or 0)) * packet.time_base) - origin


def _browser_gif_times(path: str | Path) -> dict[int, tuple[float, float]] | None:
    """A GIF's frames as browsers time them, {pts: (seconds from the start, seconds on screen)}, where any delay is
    under 2/100 s (browsers show such a frame for 1/10 s; FFmpeg reads a 0 as that, a 1 as itself); None where no
    delay is (the file's own times stand). A GIF of 10-ms delays, which a browser plays at 10 frames a second,
    was read at 100: its clip came out five times faster, half its frames left out by the GIF writer."""
    av = _av()
    with av.open(str(path)) as c:
        stream = _moving(c)
        if stream is None:
            return None
        packets = sorted((p.pts, p.duration or 0) for p in c.demux(stream) if p.pts is not None)
        base = float(stream.time_base)
    if not any(d * base < 0.02 for _, d in packets):
        return None
    times, at = {}, 0.0
    for pts, d in packets:
        shown = d * base if d * base >= 0.02 else 0.1
        times[pts] = (at, shown)
        at += shown
    return times


def _as_browsers_show(info: VideoInfo, times: dict[int, tuple[float, float]] | None) -> VideoInfo:
    """``info`` with a GIF's length and rate as browsers play it (:func:`_browser_gif_times`), where they differ:
    the page's upload check (probe) read a 10-ms GIF as a tenth of the length the reader did."""
    if not times:
        return info
    shown = sum(d for _, d in times.values())
    rate = Fraction(len(times) / shown).limit_denominator(1000)
    return replace(info, duration=shown, video_duration=shown, rate=rate)


def is_media(path: str | Path) -> bool:
    """Whether FFmpeg reads ``path`` as a container with a video or audio stream; not for the images it
    also reads (its image demuxers, ``image2`` and ``*_pipe``)."""
    av = _av()
    try:
        with av.open(str(path)) as c:
            if c.format.name == "image2" or c.format.name.endswith("_pipe"):
                return False
            return bool(_moving(c) or c.streams.audio)
    except (av.error.FFmpegError, OSError, UnicodeDecodeError):
        return False


def probe(path: str | Path) -> VideoInfo | None:
    """The video in ``path``, or None when it is no video (a still image, a GIF of one frame, not media).
    Raises MediaError for a video this FFmpeg cannot decode."""
    av = _av()
    try:
        with av.open(str(path)) as c:
            v = _moving(c)
            if v is None:
                return None
            if why := _undecodable(c):
                raise MediaError(f"{path}: {why}")
            info = _info(c, v)
            if c.format.name == "gif" and _gif_frames(path) < 2:
                return None  # a still GIF is an image
        return _as_browsers_show(info, _browser_gif_times(path) if info.container == "gif" else None)
    except (av.error.FFmpegError, OSError, UnicodeDecodeError):
        return None


def _moving(c: Any) -> Any:
    """The container's first video stream that moves, or None: a music file's cover picture (an attached
    picture, FFmpeg's one-packet "video" stream) is not a clip; stylized as one, the output's picture lasted 11 us
    beside two seconds of sound."""
    from av.stream import Disposition

    stills = Disposition.attached_pic | Disposition.timed_thumbnails
    return next((v for v in c.streams.video if not v.disposition & stills), None)


def _undecodable(c: Any) -> str | None:
    """Why this FFmpeg cannot read the container's first video stream, or any of its sound (PyAV gives such a
    stream no codec context); None where it can."""
    if (v := _moving(c)) is not None and v.codec_context is None:
        return "this FFmpeg has no decoder for the clip's video codec (convert it, e.g. to H.264)"
    if c.streams.audio and all(a.codec_context is None for a in c.streams.audio):
        return ("this FFmpeg has no decoder for the clip's sound (convert it, or leave it out: "
                "ffmpeg -i IN -an -c:v copy OUT)")
    return None


def _gif_frames(path: str | Path) -> int:
    """A GIF's frame count; 2 where Pillow will not open it for its size (over twice its guard): FFmpeg reads
    it as a clip then, whose frames are checked against the pixel limit like any clip's."""
    try:
        with Image.open(path) as img:
            return getattr(img, "n_frames", 1)
    except Image.DecompressionBombError:
        return 2


def _info(c: Any, v: Any) -> VideoInfo:
    rate = v.average_rate or v.guessed_rate or Fraction(25)
    duration = c.duration / 1e6 if c.duration else (v.frames / float(rate) if v.frames else 0.0)  # AV_TIME_BASE
    video = _stream_seconds(v) or duration
    if "matroska" in c.format.name and c.duration and c.start_time:  # its durations are where the streams end: a
        # clip starting late (a recorder's second segment, a cut that kept its times) was "truncated", its length
        # counted from 0
        origin = c.start_time / 1e6
        duration, video = max(0.0, duration - origin), max(0.0, video - origin)
    return VideoInfo(v.codec_context.width, v.codec_context.height, Fraction(rate), v.frames or 0,
                     bool(c.streams.audio), c.format.name, duration, video)


def _stream_seconds(v: Any) -> float:
    """The video stream's own duration: the stream's (MP4, MOV, TS), or the DURATION tag FFmpeg's Matroska
    muxer writes per stream (WebM, MKV); 0 where neither says."""
    if v.duration and v.time_base:
        return float(v.duration * v.time_base)
    tag = (v.metadata or {}).get("DURATION", "")
    found = re.fullmatch(r"(\d+):(\d\d):(\d\d(?:\.\d+)?)", tag.strip())
    return int(found[1]) * 3600 + int(found[2]) * 60 + float(found[3]) if found else 0.0


def _alpha_decoder(v: Any) -> Any:
    """A decoder that keeps a VP8/VP9 stream's alpha (WebM's alpha_mode), where FFmpeg has libvpx: its own
    decoder drops it, and the see-through parts came out black; None for every other stream."""
    av = _av()
    name = {"vp8": "libvpx", "vp9": "libvpx-vp9"}.get(v.codec_context.name)
    if name is None or (v.metadata or {}).get("alpha_mode") != "1" or name not in av.codecs_available:
        return None
    decoder = av.CodecContext.create(name, "r")
    decoder.thread_type = "AUTO"
    return decoder


_SEEK_BY_BYTES = ("mpegts", "mpeg", "mpegvideo")  # FFmpeg's demuxers whose seek may land past a keyframe
_AVFMT_NOTIMESTAMPS = 0x80  # libavformat's flag of a demuxer without timestamps (raw H.264, HEVC, ...)

# A display rotation in quarter turns counterclockwise -> the transpose that shows the frame that way
_TURNS = {1: Image.Transpose.ROTATE_90, 2: Image.Transpose.ROTATE_180, 3: Image.Transpose.ROTATE_270}


def _display_turns(frame: Any) -> list[Image.Transpose]:
    """What a player does to show a frame by its display matrix: a quarter turn, a flip per mirrored axis, or
    a transpose (a quarter turn and a mirror). PyAV's rotation alone read a mirrored clip as a half turn
    (upside down) and a vertically mirrored one as upright."""
    from av.sidedata.sidedata import Type

    # (by key: PyAV 19, what Python 3.12 and later install, iterates a frame's side data by type, not by item)
    found = frame.side_data.get(Type.DISPLAYMATRIX)
    m = b"" if found is None else bytes(found)
    if len(m) == 36:
        a, b, _u, c, d = struct.unpack("=9i", m)[:5]  # x' = a x + c y, y' = b x + d y (16.16 fixed point)
        if b == c == 0 and a and d:
            return [Image.Transpose.FLIP_LEFT_RIGHT] * (a < 0) + [Image.Transpose.FLIP_TOP_BOTTOM] * (d < 0)
        if a == d == 0 and b and c:
            return [{(True, False): Image.Transpose.ROTATE_270, (False, True): Image.Transpose.ROTATE_90,
                     (True, True): Image.Transpose.TRANSPOSE, (False, False): Image.Transpose.TRANSVERSE}[b > 0, c > 0]]
    turn = _TURNS.get(round((frame.rotation or 0) / 90) % 4)  # another angle: its nearest quarter turn
    return [] if turn is None else [turn]


def decode_side(options: dict[str, Any]) -> int | None:
    """The longest side a clip's frames can be decoded at for stylize options: their ``content_size``,
    unless masks or labels come with them (those are given at the clip's own size)."""
    if any(options.get(k) is not None for k in ("mask", "masks", "labels")):
        return None
    return options.get("content_size") or None


def _upright(frame: Any, reformatter: Any, max_side: int | None = None, sar: Fraction = Fraction(1)) -> Image.Image:
    """A decoded frame as it is meant to be seen: in SDR sRGB (an HDR frame tone-mapped, ``adain.hdr``),
    and turned: a phone films portrait clips as landscape frames with a display matrix saying "turn a
    quarter" (PyAV's ``frame.rotation``: -90, that is 90 degrees clockwise, for an upright iPhone), which
    players apply and a plain decode does not. Pixels that are not square (``sar``, the stream's sample
    aspect ratio: a camcorder's 1440 x 1080 shown as 1920 x 1080) are made square, as players show them.
    ``max_side``: scaled down (Lanczos, by FFmpeg) in the same conversion, before the rest of the work,
    where the frame is to be stylized smaller anyway. ``reformatter``: the PyAV VideoReformatter to convert with,
    one a reader (a frame's own, ``frame.reformat``, kept FFmpeg's scaler and its threads with the frame, which
    reading its side data put in a reference cycle: two threads a frame until a garbage collection, 404 in a
    soak's adain-web)."""
    convert = functools.partial(reformatter.reformat, frame)
    width = max(1, round(frame.width * sar))
    w, h = longest_size(width, frame.height, max_side)
    size = {} if (w, h) == (frame.width, frame.height) else {"width": w, "height": h, "interpolation": "LANCZOS"}
    if any(c.is_alpha for c in frame.format.components):  # see-through parts over white, as a still's are
        rgba = Image.fromarray(convert(format="rgba", **size).to_ndarray(), "RGBA")
        img = Image.new("RGB", rgba.size, (255, 255, 255))
        img.paste(rgba, mask=rgba.getchannel("A"))
    elif is_hdr(frame):  # a phone's HLG or PQ clip: tone-mapped to SDR, not shown flat and washed out
        img = to_sdr(convert(format="rgb48le", **size).to_ndarray(), frame.color_trc)
    elif is_wide_sdr(frame):  # BT.2020 colours shown as BT.709's were a quarter duller
        img = wide_to_srgb(convert(format="rgb48le", **size).to_ndarray())
    else:
        img = convert(format="rgb24", **size).to_image()
    for turn in _display_turns(frame):
        img = img.transpose(turn)
    return img


class VideoReader:
    """Frames of the first video stream, in order, as (RGB image, time in seconds); audio packets of the
    first audio stream are kept in ``audio`` for a :class:`VideoWriter` (thread-safe hand-over)."""

    def __init__(
        self, path: str | Path, max_side: int | None = None, max_fps: float | None = None, start: float = 0.0,
        duration: float | None = None,
    ) -> None:
        """``max_side``: frames come scaled down to this longest side (none: as they are). ``max_fps``: at
        most this many frames a second come (the others are dropped; ``rate`` is the rate they make), half
        the work at half the rate; the times stay the file's, so the sound stays in step. ``start`` and
        ``duration`` (seconds) trim the clip: only its frames and sound from ``start`` for ``duration``
        come, their times counted from ``start``."""
        av = _av()
        if not isinstance(path, (str, os.PathLike)):  # before Path(), which raises its own TypeError
            raise MediaError(f"a clip is read from a file: expected a path, got a {type(path).__name__}")
        self.path = Path(path)
        self.max_side = max_side
        self._reformatter = av.video.reformatter.VideoReformatter()  # one scaler for the clip (see _upright)
        if max_fps is not None and not (is_number(max_fps) and max_fps >= MIN_FPS):  # -1 looped for ever
            raise MediaError(f"max_fps must be a finite number >= {MIN_FPS:g}, got {max_fps!r}")
        bad_duration = duration is not None and not (is_number(duration) and duration > 0)
        if not (is_number(start) and start >= 0) or bad_duration:
            raise MediaError(f"a clip's start must be >= 0 and its duration > 0 seconds, got {start}, {duration}")
        self.start, self.end = float(start), (float(start) + duration if duration is not None else math.inf)
        self.trimmed = self.start > 0 or self.end < math.inf
        try:
            self._c = av.open(str(path))
        except av.error.FFmpegError as e:
            why = "it ends before its first frame" if isinstance(e, av.error.EOFError) else (e.strerror or e)
            if isinstance(e, av.error.InvalidDataError):
                why = f"{why}: no container FFmpeg reads, or one cut short"
            raise MediaError(f"{path}: not a readable video ({why})") from None
        except OSError as e:
            raise MediaError(f"{path}: cannot open: {e.strerror or e}") from None
        if self._c.format.name == "image2" or self._c.format.name.endswith("_pipe"):  # FFmpeg's still-image readers
            self._c.close()
            with open(path, "rb") as f:
                head = f.read(64)
            animated = head[:4] == b"RIFF" and head[8:12] == b"WEBP" and b"ANIM" in head
            raise MediaError(f"{path}: " + ("an animated WebP, whose frames this FFmpeg cannot decode: convert it to "
                                            "MP4 or GIF" if animated else "a still image, not a video"))
        if _moving(self._c) is None:
            empty, cover = not self._c.streams.audio, bool(self._c.streams.video)
            self._c.close()
            raise MediaError(f"{path}: the file has no video stream" + (
                " (nor any other: an MP4 or MOV cut short loses its index; is the file complete?)" if empty else
                " (only a cover picture)" if cover else ""))
        if why := _undecodable(self._c):
            self._c.close()
            raise MediaError(f"{path}: {why}")
        self._v = _moving(self._c)
        self._v.thread_type = "AUTO"
        self._decoder = _alpha_decoder(self._v)  # None: the stream's own
        self.audio_stream = next((a for a in self._c.streams.audio if a.codec_context is not None), None)
        self.info = _info(self._c, self._v)
        self._gif_times = _browser_gif_times(path) if self.info.container == "gif" else None
        self.info = _as_browsers_show(self.info, self._gif_times)
        sar = self._v.sample_aspect_ratio  # None or 0 where the file does not say: square
        self.sar = Fraction(sar) if sar and sar > 0 else Fraction(1)
        self.limited = max_fps is not None and max_fps < self.info.rate  # frames are dropped to max_fps
        # under it on average, a variable-rate clip may still burst over it (a frame 5 ms after the last): such a
        # frame is dropped too (a quarter of the interval's slack for times rounded to a coarse time base)
        self._min_gap = 0.75 / max_fps if max_fps is not None and not self.limited else 0.0
        self.rate = self.info.read_rate(max_fps)  # of those read
        length = self.info.duration
        if self.start and length and self.start >= length:
            self._c.close()
            raise MediaError(f"{path}: the clip is {length:.2f} s long; a start at {self.start:g} s is past its end")
        self.total = self.info.frames_read(self.rate, self.start, self.end)  # 0: the container does not say
        self.audio: collections.deque[tuple[Any, float]] = collections.deque()
        self.count = 0
        # where the last frame that came stops being shown, seconds from the start, once all have come: its own
        # time (a GIF's last delay), the part's end or the file's, whichever is first; None until then
        self.end_time: float | None = None
        self._lock = threading.Lock()  # one step of frames() at a time, or close()
        self._closed = False

    def frames(self, stop: Callable[[], bool] | None = None) -> Iterator[tuple[Image.Image, float]]:
        """The clip's frames (upright, scaled, trimmed, rate-limited) and their times from the start. Often
        read on another thread than the one that closes the reader (a gRPC stream's): each step runs under a
        lock that ``close`` takes too, so the file is never closed under a decode (FFmpeg would crash), and
        a closed reader yields no more. ``stop()``, asked at every frame decoded (those dropped too), raises
        :class:`Stopped`: a cancelled clip of 200,000 tiny frames read at --fps 0.001 decoded on for seconds,
        its page's place freed, and a loop of uploads and cancels kept both cores busy."""
        inner = self._frames(stop)
        while True:
            with self._lock:
                if self._closed:
                    return
                try:
                    item = next(inner)
                except StopIteration:
                    return
            yield item

    def _frames(self, stop: Callable[[], bool] | None) -> Iterator[tuple[Image.Image, float]]:
        av = _av()
        reached = 0.0  # how far into the file the data went, seconds (to tell a truncated file)
        step, keep, kept = 1 / float(self.rate), None, -math.inf  # the next time a frame is kept from (max_fps)
        slack = 0.5 / float(self.info.rate)  # the frame nearest a kept time counts as on it
        start, end, sent, shown, shown_until, latest = self.start, self.end, 0, None, 0.0, 0.0
        seen = heard = -math.inf  # the latest picture and sound times yet
        # to the keyframe before the start; the frames from there to the start are decoded, dropped. MPEG
        # streams (a camcorder's .MTS, .TS, .MPG) seek by byte and land past the keyframe, so the decoder
        # dropped every frame up to the next one (a part of 10 frames came as 3, or none): read from the top.
        # Times count from the file's first timestamp where it is later than 0: an MPEG-TS's clock starts
        # anywhere (a broadcast recording's at hours), and a part was cut against it, the whole written after
        # as long a wait.
        origin = max(0.0, self._c.start_time / 1e6) if self._c.start_time is not None else 0.0  # AV_TIME_BASE
        # A raw stream (H.264, HEVC: no timestamps) cannot seek by time: FFmpeg read it to its end looking for
        # one, and then no frame came. It is read from its beginning too.
        raw = self._c.format.flags & _AVFMT_NOTIMESTAMPS
        if start > 0 and self._c.format.name not in _SEEK_BY_BYTES and not raw and self._gif_times is None:
            # a format that cannot seek is read from its beginning; so is a start past an int64 of time base
            # units (a clip that declares no duration, so that the start was not checked against it)
            with contextlib.suppress(av.error.FFmpegError, OverflowError):
                self._c.seek(int((start + origin) / self._v.time_base), stream=self._v)
        try:
            # every stream: the container's duration, which a truncated file is told by, covers them all (a
            # subtitle cue or a second sound track that ends after the picture is not a file cut short)
            for packet in self._c.demux():
                if packet.stream is not self._v and packet.stream is not self.audio_stream:
                    if packet.pts is not None:
                        reached = max(reached, _packet_end(packet, origin))
                    continue
                if packet.stream is self.audio_stream:
                    if packet.dts is not None:
                        t = float(packet.pts * packet.time_base) - origin if packet.pts is not None else 0.0
                        heard = self._forward(t, heard, "sound")
                        reached = max(reached, t + float((packet.duration or 0) * packet.time_base))
                        if not self.trimmed or start - 1e-6 <= t < end:  # (an AAC's first packet may be < 0)
                            if start or origin:  # the sound starts where the (trimmed) clip does
                                shift = round((start + origin) / packet.time_base)
                                packet.pts -= shift  # (an AAC's first packet may then be < 0, as it is
                                packet.dts -= shift  # unshifted; clamped to 0, it was refused beside the next)
                            self.audio.append((packet, t - start))
                    continue
                if packet.pts is not None and packet.duration:  # a GIF's last frame may be shown for seconds
                    reached = max(reached, _packet_end(packet, origin))
                decoded = packet.decode() if self._decoder is None else self._decoder.decode(
                    packet if packet.size else None)
                for frame in decoded:
                    self.count += 1
                    if stop is not None and stop():
                        raise Stopped(f"{self.path}: reading stopped: its caller asked")
                    t = (float(frame.time) - origin if frame.time is not None
                         else (self.count - 1) / float(self.info.rate))
                    seen = self._forward(t, seen, "picture")
                    # its own time on screen, where frames have times (a raw stream's are counted at the rate)
                    timed = frame.time is not None and frame.duration and frame.time_base
                    own = float(frame.duration * frame.time_base) if timed else 0.0
                    if self._gif_times is not None and frame.pts in self._gif_times:  # as a browser shows it
                        t, own = self._gif_times[frame.pts]
                        reached = max(reached, t + own)
                    shown_until = t + (own or 1 / float(self.info.rate))  # a GIF's last frame may hold for seconds
                    latest = max(latest, shown_until)
                    reached = max(reached, t + 1 / float(self.info.rate))
                    if t < start - 1e-3:  # (a millisecond: a time base's rounding)
                        shown = frame, t  # before the start (from the keyframe the seek went to), on screen at it
                        continue
                    late = t > start + slack - 1e-6  # not the nearest to the start
                    due = [(frame, t if sent or not start or late else start)]  # the nearest: on it
                    if shown is not None and late:  # none at the start itself (a variable-rate clip's): the
                        due.insert(0, (shown[0], start))  # one on screen then opens the part
                    shown = None
                    for frame, t in due:
                        # within half its own time of the end: not in the part (the first frame comes however
                        # short the part); a GIF's own delays, not its average (a frame on screen for the part's
                        # last 70 ms was left out, the average rate's half frame being 80)
                        if t >= end - (0.5 * own if own else slack) and sent:
                            self.end_time = end - start
                            return  # past the end of a trimmed clip: the rest is not read
                        if self.limited:  # else every frame comes (a variable-rate clip's too), at its own time
                            if keep is not None and t < keep - slack:
                                continue  # dropped: over max_fps
                            keep = (t if keep is None else keep) + step
                            while keep <= t - slack:  # a gap in a variable-rate clip: no burst after it
                                keep += step
                        elif sent and 0 <= t - kept < self._min_gap:  # (an AVI's B-frames' times go back: kept)
                            continue  # dropped: a burst over max_fps
                        kept = t
                        sent += 1
                        yield _upright(frame, self._reformatter, self.max_side, self.sar), t - start
            # MP4 and MOV keep each frame's time as the gap to the next in decode order: with B-frames the last frame
            # shown may have a short one while a frame shown earlier holds its time (a GIF's last 2 s, as VideoWriter
            # writes it): the latest a frame ends, up to the length the video declares (a variable-rate clip's pause
            # on such a frame reached past the clip's end)
            if self._c.format.name.startswith("mov,"):
                shown_until = max(shown_until, min(latest, self.info.video_duration))
            self.end_time = max(0.0, min(shown_until, end) - start)
            if shown is not None and start < shown[1] + 1 / float(self.info.rate):  # the last frame, on screen at
                sent += 1  # a start after its time (a start past the picture's end finds none)
                yield _upright(shown[0], self._reformatter, self.max_side, self.sar), 0.0
        except av.error.FFmpegError as e:
            raise MediaError(f"{self.path}: corrupt video data after {self.count} frames ({e.strerror or e})") from None
        if sent == 0:
            raise MediaError(f"{self.path}: the video has no frames" + (" in that part" if self.trimmed else ""))
        if self.trimmed:
            return  # read from a seek: the checks below count from the file's beginning
        # against a declared count only (no more than the video's duration holds): an estimate from the
        # average rate, which FFmpeg measures on the first frames, refused whole variable-rate MKVs
        if self.info.frames and self.count < self.info.length:
            raise MediaError(f"{self.path}: truncated: {self.count} of the {self.info.length} frames it declares")
        declared = self.info.duration if self._c.duration else 0.0  # (a Matroska's counted from its start)
        if declared and reached < declared - 2 / float(self.info.rate) - 0.05:
            raise MediaError(f"{self.path}: truncated: the data ends at {reached:.2f} s of the {declared:.2f} s "
                             "it declares")
        if self._c.format.name == "gif" and not _ends_with_gif_trailer(self.path):
            raise MediaError(f"{self.path}: truncated: the GIF has no trailer (it was cut off)")

    JUMP = 0.5  # seconds back that a stream's times may go (a broken file's jitter) before it is refused

    def _forward(self, t: float, latest: float, what: str) -> float:
        """The latest time of a stream, ``t`` among them; a time far before the latest is refused. Files joined end
        to end (``cat a.ts b.ts``, each part's clock from 0) went back to 0 halfway: the second part's frames
        were taken as before the start and dropped without a word (half the clip), and its sound, copied,
        was refused by the muxer as "cannot write the video"."""
        if t < latest - self.JUMP:
            raise MediaError(f"{self.path}: its {what}'s times jump back from {latest:.2f} s to {t:.2f} s (files "
                             "joined end to end?): write it again with times that run on, e.g. "
                             "ffmpeg -i IN -c copy OUT.mp4")
        return max(latest, t)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._c.close()
            self._decoder = None  # an alpha decoder's libvpx state, freed now rather than by the collector

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether two paths name one existing file (a clip's output its own source would overwrite it)."""
    return os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """A temporary file beside ``path`` to write into, renamed to ``path`` when the block ends normally and
    removed when it raises (``adain.files.atomic_path``); a MediaError raised in the block names ``path``, not
    the temporary name."""
    with atomic_path(path, sweep=True) as tmp:
        try:
            yield tmp
        except MediaError as e:
            raise type(e)(str(e).replace(str(tmp), str(path))) from None


def _ends_with_gif_trailer(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\x3b"


def _audio_rate(codec: str, rate: int) -> int:
    """The sample rate to encode ``rate`` audio at with ``codec``: its own where the encoder takes it, else
    the nearest rate above it that the encoder takes (no sound lost), else the encoder's highest."""
    rates = _av().Codec(codec, "w").audio_rates
    if not rates or rate in rates:
        return rate
    return min((r for r in rates if r >= rate), default=max(rates))


def container_for(path: str | Path) -> str:
    """FFmpeg's muxer name for an output file suffix; MediaError for a suffix that is no video container."""
    name = _CONTAINERS.get(Path(path).suffix.lower())
    if name is None:
        raise MediaError(f"{path}: cannot tell a video container from {Path(path).suffix or 'no suffix'!r} "
                         f"(use {', '.join(VIDEO_SUFFIXES)})")
    return name


def _gif_loop(source: VideoReader | None) -> dict[str, str]:
    """The GIF muxer's loop option: a GIF's own (one that plays once came out looping for ever; Pillow's "loop" is
    the NETSCAPE count, absent for once), and for ever for any other clip (FFmpeg's default)."""
    if source is None or source.info.container != "gif":
        return {}
    try:
        with Image.open(source.path) as img:
            loop = img.info.get("loop")
    except (OSError, Image.DecompressionBombError):
        return {}
    return {"loop": "-1" if loop is None else str(loop)}


def _paletted(image: Image.Image) -> Any:
    """A GIF's frame: its own 256 colours (median cut) and Floyd-Steinberg dithering. FFmpeg's fixed 3-3-2
    palette (rgb8) without dithering was 14-16 levels off on average where MP4 is 1.5, in bands."""
    av = _av()
    q = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.FLOYDSTEINBERG)
    colours = np.asarray(q.getpalette(), np.uint8).reshape(-1, 3)[:256]
    palette = np.zeros((256, 4), np.uint8)  # ARGB, opaque
    palette[:, 0] = 255
    palette[: len(colours), 1:] = colours
    return av.VideoFrame.from_ndarray((np.asarray(q, np.uint8), palette), format="pal8")


class VideoWriter:
    """Encode RGB frames into ``path`` (container from ``container``, else the suffix) at ``rate``, and copy
    the audio of ``source`` (a VideoReader) unchanged, interleaved by time; transcoded only where the
    container cannot hold the source's audio codec. FFmpeg's refusals (an encoder that does not take its
    settings, a muxer that refuses a packet) are MediaErrors naming ``path``; an OS error (a full disk, no
    permission) stays an OSError."""

    def __init__(
        self, path: str | Path, *, width: int, height: int, rate: Fraction, source: VideoReader | None = None,
        container: str | None = None,
    ) -> None:
        av = _av()
        self.path = Path(path)
        fmt = container or container_for(path)
        codec = next((c for c in _CODECS[fmt] if c in av.codecs_available), None)
        if codec is None:
            raise MediaError(f"no encoder for {fmt} in this FFmpeg build (tried {', '.join(_CODECS[fmt])})")
        # 4:2:0 video needs even sides: an odd frame loses its last row or column (GIF keeps all).
        self.size = (width, height) if codec == "gif" else (width - width % 2, height - height % 2)
        if min(self.size) < 1:
            raise MediaError(f"{self.path}: {width} x {height} frames are too small for {codec} (2 x 2 at least)")
        if codec == "gif" and rate > GIF_MAX_FPS:
            raise MediaError(f"{self.path}: a GIF shows at most {GIF_MAX_FPS} frames a second (its delays count "
                             "hundredths of a second, and browsers slow shorter ones); this clip has "
                             f"{float(rate):.4g}: take fewer frames a second (the CLI's --fps), or write a video file")
        with self._ffmpeg():
            self._c = av.open(str(path), "w", format=fmt, options=_gif_loop(source) if codec == "gif" else {})
        try:
            with self._ffmpeg():
                self._setup(codec, fmt, rate, source)
        except BaseException:
            self.abort()
            raise

    @contextlib.contextmanager
    def _ffmpeg(self) -> Iterator[None]:
        """FFmpeg's errors in the block as a MediaError naming the file (an OSError stays one)."""
        av = _av()
        try:
            yield
        except av.error.FFmpegError as e:
            if isinstance(e, OSError):
                raise
            detail = f"{e.strerror} ({e.filename})" if e.filename else (e.strerror or str(e))
            raise MediaWriteError(f"{self.path}: cannot write the video: {detail}") from None

    def _setup(self, codec: str, fmt: str, rate: Fraction, source: VideoReader | None) -> None:
        width, height = self.size
        self.rate = Fraction(rate).limit_denominator(1001 * 1000)
        self._v = self._c.add_stream(codec, rate=self.rate)  # the nominal rate; each frame keeps its own time
        # on a clock finer than the frames (a variable-rate clip's are not on a 1/rate grid): 1/90000 s as in
        # MPEG, GIF's delays count hundredths of a second
        self.time_base = Fraction(1, 100) if codec == "gif" else Fraction(1, 90000)
        self._v.codec_context.time_base = self.time_base
        self._v.width, self._v.height = width, height
        self._v.pix_fmt = "pal8" if codec == "gif" else "yuv420p"  # a GIF's frames: a palette each (_paletted)
        self._v.options = dict(_ENCODER_OPTIONS.get(codec, {}))
        self._yuv = codec != "gif"
        self._reformatter = _av().video.reformatter.VideoReformatter()
        if self._yuv:  # BT.709, limited range, and said so: untagged, players guess (BT.709 for HD, 601 for SD)
            cc = self._v.codec_context
            cc.colorspace, cc.color_primaries, cc.color_trc, cc.color_range = _BT709, _BT709, _BT709, _LIMITED
        self._source = source
        self._a_out = self._a_encoder = None
        self._a_next: int | None = None  # where the next re-encoded sound frame starts, in its time base
        if source is not None and source.audio_stream is not None:
            self._add_audio(source.audio_stream, fmt)
        self._last_pts = -1
        self._pending: tuple[Image.Image, int] | None = None  # the frame written last, not yet encoded
        self._shown: dict[int, int] = {}  # a frame's pts -> its time on screen, for its packet
        self._end = 0  # where the last frame shown ends (time base units)
        self.codec = codec
        # MP4 and MOV keep no packet's duration but the last's in decode order (the others: the gaps between decode
        # times): a file ends at the earlier of the latest time + duration muxed and the last decode time + its
        # duration (from the first packet's). With B-frames, or an encoder's decode delay, neither reaches where a
        # last frame held long ends: a GIF held 2 s at its end came out held 0.1 s, a pause before the last frame
        # ended the file before that frame.
        self._gaps_only = fmt in ("mp4", "mov")
        self._latest = 0  # the latest time + duration muxed (time base units)
        self._shift: int | None = None  # the first packet's pts - dts (an encoder's decode delay)

    def _add_audio(self, a_in: Any, fmt: str) -> None:
        if fmt == "gif":
            return  # GIF holds no sound
        copied = _AUDIO_COPY[fmt]
        if copied is None:
            copied = getattr(self._c, "supported_codecs", None)
        if copied is None or a_in.codec_context.codec.canonical_name in copied:
            self._a_out = self._c.add_stream_from_template(a_in)
            return
        # The container cannot hold this codec (e.g. Vorbis or PCM in MP4, AAC in WebM): decode and encode it again,
        # at a rate the encoder takes (Opus: 48 kHz for 44.1 kHz AAC); PyAV's encode() puts the decoded
        # frames through an AudioResampler to the stream's rate, sample format and frame size.
        codec = _AUDIO_FALLBACK[fmt]
        # the source's channels where the encoders here write them as such (checked: mono, stereo, 5.1 in AAC and
        # Opus), else stereo: a mono clip came out stereo, a 5.1 one lost its surround
        channels = a_in.codec_context.layout.nb_channels if a_in.codec_context.layout is not None else 2
        layout = {1: "mono", 6: "5.1"}.get(channels, "stereo")  # (a PCM's order may be unnamed: "2 channels")
        self._a_out = self._c.add_stream(codec, rate=_audio_rate(codec, a_in.codec_context.sample_rate),
                                         layout=layout)
        self._a_encoder = a_in.codec_context

    def write(self, image: Image.Image, time: float) -> bool:
        """Append one frame shown at ``time`` seconds (times are made strictly increasing). It is encoded when
        the next comes (or at :meth:`close`), which says how long it is shown. False: left out, a GIF's frame
        less than 1/GIF_MAX_FPS after the one before (a variable-rate clip's burst), which browsers would show
        for 1/10 s (its delay of 10 ms: the clip slowed there)."""
        if image.size != self.size:
            if (image.width - image.width % 2, image.height - image.height % 2) != self.size:
                w, h = self.size
                raise MediaError(f"frame is {image.width} x {image.height}, the video is {w} x {h}")
            image = image.crop((0, 0, *self.size))
        own = round(time / self.time_base)
        if self.codec == "gif" and self._pending is not None and own < self._last_pts + 2:
            return False
        pts = max(self._last_pts + 1, own)
        self._last_pts = pts
        with self._ffmpeg():
            if self._pending is not None:
                self._encode(*self._pending, until=pts)
            self._pending = image, pts
            self._mux_audio(until=time)
        return True

    def _encode(self, image: Image.Image, pts: int, until: int | None) -> None:
        """One frame, shown from ``pts`` to ``until`` (time base units; None: for 1/rate). Each packet is given its
        frame's time on screen: the encoders gave each 1/rate, so a GIF's last frame held for 2 s came out held
        for 0.57 s, and one frame of a 3-s clip at --fps 0.001 made a 1,000-s video."""
        av = _av()
        frame = av.VideoFrame.from_image(image.convert("RGB")) if self._yuv else _paletted(image)
        if self._yuv:  # converted here with the matrix the stream is tagged with (left to FFmpeg: BT.601)
            frame = self._reformatter.reformat(frame, format="yuv420p", dst_colorspace=_BT709,
                                               dst_color_range=_LIMITED)  # (one scaler for the clip, not a frame's)
        frame.pts = pts
        frame.time_base = self.time_base
        step = max(1, round(1 / (self.rate * self.time_base)))
        self._shown[pts] = until - pts if until is not None and until > pts else step
        self._end = max(self._end, pts + self._shown[pts])
        self._mux_video(self._v.encode(frame))

    def _mux_video(self, packets: list[Any], last: bool = False) -> None:
        """``last``: the encoder's final packets; in MP4 and MOV the last of them is made long enough for the file
        to end where the last frame shown ends, where it would not (only then: the file's average rate counts it)."""
        for i, packet in enumerate(packets):  # (an encoder's packets may come frames later: its delay, B-frames)
            packet.duration = self._shown.pop(packet.pts, packet.duration)
            if self._gaps_only and packet.pts is not None and packet.dts is not None:
                if self._shift is None:
                    self._shift = packet.pts - packet.dts
                own = packet.duration or 0
                ends = min(max(self._latest, packet.pts + own), packet.dts + self._shift + own)
                if last and i == len(packets) - 1 and ends < self._end:
                    packet.duration = own = max(self._end - packet.pts, self._end - packet.dts - self._shift)
                self._latest = max(self._latest, packet.pts + own)
            self._c.mux(packet)

    def _mux_audio(self, until: float) -> None:
        if self._a_out is None or self._source is None:
            return
        queue = self._source.audio
        while queue and queue[0][1] <= until:
            packet, _ = queue.popleft()
            self._mux_audio_packet(packet)

    def _mux_audio_packet(self, packet: Any) -> None:
        if self._a_encoder is None:
            packet.stream = self._a_out
            self._c.mux(packet)
            return
        try:
            frames = self._a_encoder.decode(packet)
        except _av().error.FFmpegError as e:  # the clip's fault, not the writer's (a service's own failure)
            raise MediaError(f"{self._source.path}: corrupt sound data ({e.strerror or e})") from None
        for frame in frames:
            # The frame keeps its time, so a sound that starts late or has a gap stays in step with the picture
            # (numbered from 0 instead, it was pulled early); never backwards (a muxer refuses that).
            if frame.pts is not None and frame.time_base:
                if self._a_next is not None and frame.pts < self._a_next:
                    frame.pts = self._a_next
                self._a_next = frame.pts + round(frame.samples / (frame.sample_rate * frame.time_base))
            for out in self._a_out.encode(frame):
                self._c.mux(out)

    def close(self) -> None:
        """Encode the last frame, shown until the source's :attr:`VideoReader.end_time` (else for 1/rate), flush the
        encoder, copy the audio that is left, and finish the file."""
        with self._ffmpeg():
            if self._pending is not None:
                end = self._source.end_time if self._source is not None else None
                self._encode(*self._pending, until=None if end is None else round(end / self.time_base))
                self._pending = None
            self._mux_video(self._v.encode(None), last=True)
            if self._source is not None:
                self._mux_audio(until=math.inf)
                if self._a_encoder is not None:
                    for out in self._a_out.encode(None):
                        self._c.mux(out)
            self._c.close()

    def abort(self) -> None:
        """Close without finishing (the caller removes the file)."""
        try:
            self._c.close()
        except Exception:  # noqa: BLE001 - the file is thrown away anyway
            pass
