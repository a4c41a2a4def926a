"""Video files through the service: demux, stream the frames, mux the stylized ones with the audio.

The client does the container work (``adain.media``, PyAV) and the server sees only frames. Frames go
to the server and come back as JPEG at quality 95 by default: the output is encoded again as video
anyway, and PNG would cost more than the rest of the round trip (see ``benchmarks/video.py``). The file
is written to a temporary name and renamed when complete.
"""

from __future__ import annotations

import collections
import inspect
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from PIL import Image

from adain.errors import MediaError, Stopped, install_hint
from adain.files import bytes_written
from adain.wire import INPUT_SUFFIXES, READ_VIDEO_SUFFIXES

from ._client import Styles, StyleTransferClient, StyleTransferError

if TYPE_CHECKING:
    from types import ModuleType

    from adain.media import VideoReader

FRAME_FORMAT = ("jpeg", 95)  # the wire format of frames, both ways
ANIMATED_SUFFIXES = (".gif", ".png", ".webp")  # images that may hold an animation


def media() -> ModuleType:
    """``adain.media`` (numpy and PyAV), or a MediaError saying what to install: the thin client (no numpy) ended
    in a traceback for a folder, a clip or a file that is no image."""
    try:
        import adain.media
    except ImportError as e:
        raise MediaError(f"video needs PyAV and numpy (the 'video' extra: {install_hint('video')}); "
                         f"{e.name or 'a module'} is not installed") from None
    return adain.media


def is_video(path: Path) -> bool:
    """Whether ``path`` is to be handled as a video, by its content: an image Pillow decodes (a GIF of one
    frame included) is not; an animated GIF, PNG or WebP, or any media file FFmpeg reads (even one without a
    video stream, which the reader then names as the problem), is, whatever its suffix; else the suffix says
    (so a broken .png is a bad image and a broken .mp4 a bad video). An animation taken as an image was cut
    to its first frame without a word (the reader says where FFmpeg cannot decode one: an animated WebP)."""
    if path.suffix.lower() in INPUT_SUFFIXES and path.suffix.lower() not in ANIMATED_SUFFIXES:
        return False
    try:
        with Image.open(path) as img:  # (a camera's MPO holds two frames, a stereo pair: an image)
            return img.format in ("GIF", "PNG", "WEBP") and getattr(img, "n_frames", 1) > 1
    except Exception:  # noqa: BLE001 - not an image Pillow knows: ask FFmpeg
        pass
    try:
        return media().is_media(path) or path.suffix.lower() in READ_VIDEO_SUFFIXES
    except MediaError:  # no PyAV: a video suffix still says video, and the reader will say what is missing
        return path.suffix.lower() in READ_VIDEO_SUFFIXES


def _encode(img: Image.Image) -> bytes:
    """A frame as sent: off the GIL (an asyncio caller's event loop runs meanwhile; ``bytes_written``)."""
    return bytes_written(lambda f: img.save(f, "JPEG", quality=FRAME_FORMAT[1]))


def _check_length(client: StyleTransferClient, reader: VideoReader, max_fps: float | None) -> None:
    """Refuse a clip that holds more frames than the server takes, before sending any: the server can only
    count them as they come, and says so after stylizing its limit's worth (an hour and a half of work at
    the default 9,000 on a CPU). A count the container does not declare (MKV, WebM) is counted before it
    refuses (``adain.media.counted``), and ``reader.total`` (the progress bar's) is then that count."""
    frames = reader.total
    limit = client.server_info()["limits"].get("max_video_frames", 0) if frames else 0
    if not limit or frames <= limit:
        return
    info = media().counted(reader.path, reader.info)
    if info is not reader.info:
        frames = reader.total = info.frames_read(info.read_rate(max_fps), reader.start, reader.end)
    if frames > limit:
        cut = max_fps is not None or reader.trimmed
        raise StyleTransferError(grpc.StatusCode.INVALID_ARGUMENT, (
            f"{reader.path}: {frames} frames{' in that part, at that rate' if cut else ''}, over the server's limit "
            f"of max_video_frames={limit}: take a part of the clip (--start/--duration) or fewer frames a second "
            "(--fps)"))


def stylize_video_file(
    client: StyleTransferClient,
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    styles: Styles,
    *,
    on_start: Callable[[int], None] | None = None,
    on_frame: Callable[[], None] | None = None,
    max_fps: float | None = None,
    start: float = 0.0,
    duration: float | None = None,
    frame_timeout: float | None = None,
    **options: Any,
) -> int:
    """Stylize the video ``source`` into ``output`` (container from its suffix, audio copied); returns the
    frame count. ``options`` are :meth:`StyleTransferClient.stylize_video`'s; ``on_start(total)`` (0 when
    unknown) and ``on_frame()`` report progress; ``max_fps``: at most this many frames a second are sent
    and written (the others dropped, the sound in step); ``start`` and ``duration`` (seconds) take a part
    of the clip (its sound too); ``frame_timeout`` (seconds) ends the stream with DEADLINE_EXCEEDED when no
    stylized frame comes back for that long (a clip as a whole has no deadline: a server or network gone silent
    held it for good). Raises MediaError or StyleTransferError; on any failure no output file is left."""
    if inspect.iscoroutinefunction(getattr(client, "server_info", None)):  # the asyncio client's coroutines were
        # read as replies
        raise TypeError(f"stylize_video_file takes a StyleTransferClient, not a {type(client).__name__}: with the "
                        "asyncio client, run it in a thread with a blocking client (asyncio.to_thread), or send "
                        "the frames yourself with its stylize_video")
    m = media()

    container = m.container_for(output)
    if m.same_file(output, source):
        raise MediaError(f"{output} is the source clip: it would be overwritten")
    Path(output).parent.mkdir(parents=True, exist_ok=True)  # as StylizeResult.save does (the CLI did it itself)
    # frames scaled while decoding when the server is to stylize them smaller: fewer bytes to send
    reader = m.VideoReader(source, max_side=m.decode_side(options), max_fps=max_fps, start=start, duration=duration)
    with reader, m.atomic_output(output) as tmp:
        _check_length(client, reader, max_fps)
        if on_start is not None:
            on_start(reader.total)
        times: collections.deque[float] = collections.deque()

        def frames() -> Iterator[bytes]:  # runs on gRPC's thread, as the stream has room
            for img, t in reader.frames(stop=stop):  # (dropped frames too: asked at every decoded one)
                times.append(t)
                yield _encode(img)

        writer = None
        count = 0
        last, stalled, asked = [time.monotonic()], [], options.pop("stop", None)

        def stop() -> bool:
            if frame_timeout is not None and time.monotonic() - last[0] > frame_timeout:
                stalled.append(True)
                return True
            return bool(asked and asked())

        try:
            for result in client.stylize_video(frames(), styles, format=FRAME_FORMAT[0], quality=FRAME_FORMAT[1],
                                               stop=stop, **options):
                last[0] = time.monotonic()
                img = result.to_pil()
                if writer is None:
                    writer = m.VideoWriter(tmp, width=img.width, height=img.height, rate=reader.rate,
                                         source=reader, container=container)
                count += writer.write(img, times.popleft())
                if on_frame is not None:
                    on_frame()
            if writer is not None:
                writer.close()
        except BaseException as e:
            if writer is not None:
                writer.abort()
            read_stopped = isinstance(e, Stopped)  # the reader's, between frames sent: as the stream's own stop
            if read_stopped:
                e = StyleTransferError(grpc.StatusCode.CANCELLED, f"{source}: stopped: its caller asked")
            if stalled and isinstance(e, StyleTransferError) and e.code == grpc.StatusCode.CANCELLED:
                raise StyleTransferError(grpc.StatusCode.DEADLINE_EXCEEDED, f"{source}: no stylized frame came back "
                                         f"for {frame_timeout:g} s after frame {count}") from None
            if read_stopped:
                raise e from None
            raise
    return count
