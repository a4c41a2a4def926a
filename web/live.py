"""The live camera: a WebSocket (``/api/live``) that carries a camera's frames from the page into one
``StylizeVideo`` stream of adain-server, and the stylized frames back.

One stream rather than a call per frame, so live video gets a clip's steadiness (the temporal modes follow
the frames in order) and the styles are encoded once. The conversation on one socket:

1. text, JSON: ``{"styles": ["id:NAME" or "upload", ...], "weights": [...], "alpha": 1.0,
   "preserve_color": "none", "temporal": "flow"}`` (all but styles optional);
2. binary, one message per "upload" style, in order: that style's image;
3. binary frames (JPEG or PNG, all of one size, each within the server's max_pixels): each gets one JPEG back,
   in order. The page keeps two in flight, so its rate follows the server's.

A problem is answered with a text message ``{"error": {"code", "message", "violations"}}`` (the fields named
as in the proto; a frame, whichever it was, is ``frame``), then the socket closes. A session ends after
``max_seconds`` or ``idle_seconds`` without a frame, so a forgotten tab does not hold one of the server's video
streams; at most ``max_sessions`` at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import queue
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from adain.client import StyleTransferClient, StyleTransferError
from adain.wire import Limits

from .checks import (
    BadInput,
    color,
    error_json,
    image_checked,
    number,
    stream_error,
    style_count,
    style_name,
    temporal,
    weights,
)
from .metrics import REFUSED_KEY

log = logging.getLogger("adain.web")

CLOSE_BAD_INPUT = 1008  # WebSocket close codes (RFC 6455): policy violation
CLOSE_ERROR = 1011  # internal error
CLOSE_TRY_LATER = 1013
MAX_WAITING = 16  # frames received and not yet taken by the stream: a page that sends without waiting
MAX_OUT = 32  # frames received and not yet sent back (a page that sends and does not read)
OPTIONS = ("styles", "weights", "alpha", "preserve_color", "temporal")  # the first message's keys
# A page sends its options as its socket opens; one that sends none within this (or --live-idle-s, if shorter)
# is dropped. With the idle time alone, sockets that sent nothing held every session 29.5 s at a time.
OPTIONS_S = 10.0
PER_VISITOR = 1  # live sessions one visitor (end_user: an address) may hold at once, of max_sessions


@dataclass(frozen=True)
class LiveSettings:
    max_sessions: int = 2  # the server's --max-video-streams (2) holds too
    max_seconds: float = 300.0
    idle_seconds: float = 30.0
    max_frame_bytes: int = 4 * 2**20
    quality: int = 85  # of the JPEG frames sent back


class LiveSessions:
    """The live camera sessions of one app."""

    def __init__(self, client: StyleTransferClient, settings: LiveSettings = LiveSettings()) -> None:
        self.client = client
        self.settings = settings
        self.running = 0
        self._visitors: Counter[str] = Counter()  # sessions by visitor (end_user)
        self._lock = threading.Lock()

    async def serve(self, ws: WebSocket, limits: Limits, end_user: str | None = None) -> None:
        await ws.accept()
        with self._lock:  # a visitor not known (no peer address, end_user None) is not counted apart
            full = self.running >= self.settings.max_sessions
            theirs = not full and end_user is not None and self._visitors[end_user] >= PER_VISITOR
            if not (full or theirs):
                self.running += 1
                if end_user is not None:
                    self._visitors[end_user] += 1
        if full or theirs:
            ws.scope[REFUSED_KEY] = "429"  # counted as refused, as a full backend's HTTP answer is
            why = (f"{self.settings.max_sessions} live camera session(s) are running already" if full else
                   "you have a live camera session running already (one a visitor)")
            await _fail(ws, CLOSE_TRY_LATER, "RESOURCE_EXHAUSTED", f"{why}; try again in a moment")
            return
        handed = [False]  # the session's place passed to its stream's thread, which frees it as it ends
        try:
            try:
                options = await self._options(ws, limits)
            except (asyncio.TimeoutError, TimeoutError):  # one class from 3.11; closed without a word, it was 1006
                await _fail(ws, CLOSE_TRY_LATER, "DEADLINE_EXCEEDED", f"no options (or style image) came for "
                            f"{self._options_s:g} s")
                return
            await self._stream(ws, {**options, "end_user": end_user}, limits, handed)
        except BadInput as e:
            await _fail(ws, CLOSE_BAD_INPUT, "INVALID_ARGUMENT", str(e), [(e.field, e.description)])
        except WebSocketDisconnect:
            pass
        finally:
            if not handed[0]:
                self._free()
            if end_user is not None:  # the visitor's own count: as its socket ends (a page opening its next at once
                with self._lock:  # is not refused while the last one's server stream winds down)
                    self._visitors[end_user] -= 1
                    if not self._visitors[end_user]:
                        del self._visitors[end_user]

    @property
    def _options_s(self) -> float:
        return min(OPTIONS_S, self.settings.idle_seconds)

    def _free(self) -> None:
        with self._lock:
            self.running -= 1

    async def _receive(self, ws: WebSocket, timeout: float) -> dict[str, Any]:
        message = await asyncio.wait_for(ws.receive(), timeout)
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000))
        return message

    async def _options(self, ws: WebSocket, limits: Limits) -> dict[str, Any]:
        """The first message (and the uploaded styles after it) as stylize_video's options."""
        first = (await self._receive(ws, self._options_s)).get("text")
        try:
            spec = json.loads(first) if first is not None else None
        except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes ("[" * 100000)
            spec = None
        if not isinstance(spec, dict):
            raise BadInput("options", "the first message must be the options, as a JSON object")
        unknown = sorted(set(spec) - set(OPTIONS))
        if unknown:
            raise BadInput(unknown[0], f"unknown field (expected {', '.join(OPTIONS)})")
        what = "\"id:NAME\" for a style of the server's library, or \"upload\""
        styles = spec.get("styles")
        if styles is not None and not isinstance(styles, list):
            raise BadInput("styles", f"a list of styles (each {what}), got {_json_type(styles)}")
        style_count(len(styles or []), limits, what)
        chosen: list[Any] = []
        for i, style in enumerate(styles or []):
            if style == "upload":
                data = (await self._receive(ws, self._options_s)).get("bytes")
                if data is None:
                    raise BadInput(f"styles[{i}]", "expected the style's image as a binary message, got a text "
                                   "message")
                chosen.append(await image_checked(data, f"styles[{i}].image", limits))
            else:
                chosen.append(style_name(style, f"styles[{i}]"))
        options: dict[str, Any] = {"styles": chosen}
        if spec.get("weights") is not None:
            if not isinstance(spec["weights"], list):
                raise BadInput("weights", f"a list of one weight per style ({len(chosen)}), "
                               f"got {_json_type(spec['weights'])}")
            options["weights"] = weights(spec["weights"], len(chosen))
            for i, w in enumerate(spec["weights"]):
                _json_number(w, f"styles[{i}].weight")
        if spec.get("alpha") is not None:
            options["alpha"] = number(_json_number(spec["alpha"], "alpha"), "alpha")
        options["preserve_color"] = color(spec.get("preserve_color"))
        options["temporal"] = temporal(spec.get("temporal"))
        return options

    async def _stream(self, ws: WebSocket, options: dict[str, Any], limits: Limits, handed: list[bool]) -> None:
        """Frames in, through one StylizeVideo stream on a thread, stylized frames out. The stream is cancelled
        as the session ends (a closed page, an error, a timeout): ended by its last frame instead, the server
        rendered the frames in flight for nobody and held the stream's place, and the page's next session (each
        change of options starts one) was refused. The session's place is freed when the thread ends."""
        s = self.settings
        loop = asyncio.get_running_loop()
        frames: queue.Queue[bytes | None] = queue.Queue()
        replies: asyncio.Queue[bytes | Exception | None] = asyncio.Queue()
        ended = threading.Event()
        returned = [0]  # frames sent back to the page

        def put(item: bytes | Exception | None) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is listening any more
                loop.call_soon_threadsafe(replies.put_nowait, item)

        def run() -> None:
            try:
                for frame in self.client.stylize_video(iter(frames.get, None), format="jpeg", quality=s.quality,
                                                       stop=ended.is_set, **options):
                    put(frame.image)
            except Exception as e:  # StyleTransferError: the server's answer; anything else: logged, reported
                if not ended.is_set():  # (cancelled because the session ended: nobody to tell)
                    put(e)
            finally:
                put(None)
                self._free()

        threading.Thread(target=run, name="adain-live", daemon=True).start()
        handed[0] = True  # (after: a thread that could not start frees nothing, and the session's place was kept)
        sender = asyncio.create_task(_send(ws, replies, returned))
        sent, started = 0, loop.time()
        try:
            while not sender.done():
                left = s.max_seconds - (loop.time() - started)
                receive = asyncio.ensure_future(self._receive(ws, min(s.idle_seconds, max(left, 0.001))))
                await asyncio.wait({receive, sender}, return_when=asyncio.FIRST_COMPLETED)
                if sender.done():  # the stream ended (its error was sent): stop listening
                    receive.cancel()
                    with contextlib.suppress(BaseException):
                        await receive  # a disconnect that came at once is retrieved, not left unread
                    break
                try:
                    data = receive.result().get("bytes")
                except (asyncio.TimeoutError, TimeoutError):
                    # the page sends as frames come back: while some are out, the silence is the server's
                    why = (f"a live session lasts at most {s.max_seconds:g} s; start it again" if left <= s.idle_seconds
                           else f"the server sent no frame back for {s.idle_seconds:g} s" if sent > returned[0]
                           else f"no frame for {s.idle_seconds:g} s")
                    await _fail(ws, CLOSE_TRY_LATER, "DEADLINE_EXCEEDED", why)
                    break
                if not data:
                    raise BadInput("frame", "frames are binary messages (JPEG or PNG images)")
                if len(data) > s.max_frame_bytes:
                    raise BadInput("frame", f"a frame of {len(data)} bytes, over the limit of {s.max_frame_bytes}")
                await image_checked(data, "frame", limits)  # its header, here: named as every frame error is
                if frames.qsize() >= MAX_WAITING or sent - returned[0] >= MAX_OUT:  # (replies the page leaves unread
                    raise BadInput("frame", f"{sent - returned[0]} frames have not come back yet: send the next "
                                   "frame when one comes back")  # piled up here, unbounded)
                frames.put(data)
                sent += 1
        finally:
            ended.set()  # the stream is cancelled (polled by the client four times a second); the thread then stops
            frames.put(None)
            log.info("live camera session: %d frame(s) in %.1f s", sent, loop.time() - started)


async def _send(ws: WebSocket, replies: asyncio.Queue, returned: list[int]) -> None:
    """Send each stylized frame (counted in ``returned``); on the stream's error, send it and close. Returns when
    the stream ends."""
    while (item := await replies.get()) is not None:
        if isinstance(item, StyleTransferError):
            close = {"INVALID_ARGUMENT": CLOSE_BAD_INPUT, "RESOURCE_EXHAUSTED": CLOSE_TRY_LATER,
                     "UNAVAILABLE": CLOSE_TRY_LATER, "DEADLINE_EXCEEDED": CLOSE_TRY_LATER}.get(item.code.name,
                                                                                              CLOSE_ERROR)
            await _fail(ws, close, item.code.name, *stream_error(item, "frame"))
        elif isinstance(item, Exception):
            log.error("live camera stream failed", exc_info=item)
            await _fail(ws, CLOSE_ERROR, "INTERNAL", f"the live stream failed: {type(item).__name__}")
        else:
            with contextlib.suppress(Exception):  # the page left: keep draining until the stream ends
                await ws.send_bytes(item)
            returned[0] += 1


def _json_type(value: Any) -> str:
    return {str: "a string", bool: "true or false", dict: "an object", list: "a list", type(None): "null"}.get(
        type(value), "a number")


def _json_number(value: Any, field: str) -> float:
    """A JSON number (not true or false, which Python would take as 1 and 0, nor a string)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadInput(field, f"not a number: {json.dumps(value)[:80]}")
    return value


async def _fail(ws: WebSocket, close: int, code: str, message: str, violations: Any = ()) -> None:
    with contextlib.suppress(Exception):  # already closed by the other side
        await ws.send_text(json.dumps(error_json(code, message, list(violations))))
        await ws.close(close)
