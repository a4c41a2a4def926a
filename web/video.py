"""Clips on the web page: each upload becomes a job that streams its frames through the server's
StylizeVideo call (``adain.client.video``, the CLI's path), counts its frames as they come back, and keeps
its result, an MP4 every browser plays, for a while. No FastAPI here: ``web.app`` maps these to HTTP.

A job runs on its own thread. At most ``max_running`` run at once (the page gets 429 beyond, and the
server's own stream limit still holds); a finished job's file is kept ``keep_s`` seconds, and at most
``max_kept`` finished jobs are kept (the oldest go first), fewer where their files and the uploads being read
(each counted at its most) would pass ``max_disk_bytes``: then an upload waits (Busy) and a running clip whose
result outgrows it fails (OutOfDisk); every file lives in one temporary folder that
``close`` removes. A folder to remove is first renamed aside (at once: it is gone from its place before the
job's state or the request says so) and deleted on a thread of its own: an upload and a result are up to 200 MB,
and requests that purge (the page asks every second) run on the event loop, holding the jobs' lock.
A cancelled job stops after the frame in flight and leaves no file; so does a running
job nobody has asked about for ``abandon_s`` seconds (its page was closed: the page asks every second).
A job cancelled by its caller says "cancelled" from that moment and frees its place among the running ones
(its thread stops after the frame in flight), and is forgotten ``cancelled_keep_s`` after it stopped.
A job never sends more than ``max_frames`` frames (adain-web --max-video-frames): the upload's check counts
what the container declares or its duration says (:func:`clip_frames`), and a clip that says neither, or
says too little, fails as it reaches for one frame more.

A process that is killed (SIGKILL, the OOM killer, a failed liveness probe) cannot remove its folder: its clips
stayed in the temporary folder for good, and in a pod, whose /tmp emptyDir outlives a container's restart, each
restart left its predecessor's uploads and results (up to --max-disk-mb) beside its own until the kubelet evicted
the pod over the emptyDir's sizeLimit. So each process holds a lock on its folder (``flock``, which the kernel
lets go of when the process ends, however it ends), and a new ``VideoJobs`` removes the folders whose lock it can
take: :func:`sweep_left_behind`.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import queue
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from adain.client import StyleTransferClient, StyleTransferError
from adain.files import locked_folder, sweep_folders
from adain.logs import CONTEXT

from .checks import STORAGE_ERRNOS, error_json, stream_error

if TYPE_CHECKING:
    from adain.media import VideoInfo

log = logging.getLogger("adain.web")
FOLDER_PREFIX = "adain-web-clips-"  # a process's clip folder in the temporary folder, locked while it lives
STREAM_WAIT_S = 120.0  # how long a clip job waits for a video stream of the server's, where all are taken
INTERNAL = "the clip could not be stylized because of an error on this server (its log says more)"


class Cancelled(Exception):
    """Raised from the progress callback to stop a job's stream."""


class Busy(Exception):
    """``max_running`` jobs are running already."""


class PageStopping(Exception):
    """The page is stopping (SIGTERM): no clip starts (:meth:`VideoJobs.stop_running`)."""

    def __init__(self) -> None:
        super().__init__("this page is stopping (a restart or a rollout): send the clip again")


class TooManyFrames(Exception):
    """A running clip reached for a frame past ``max_frames`` (its container did not say how many it has)."""

    def __init__(self, max_frames: int) -> None:
        super().__init__(f"the clip has more than {max_frames} frames, over the limit of max_video_frames="
                         f"{max_frames} (adain-web --max-video-frames); take a part of it (start, duration) or "
                         "fewer frames a second")


class OutOfDisk(Exception):
    """A running clip's result outgrew the disk budget, with no finished clip left to make room."""

    def __init__(self, budget: int) -> None:
        super().__init__(f"the stylized clip outgrew the disk space this page keeps for clips "
                         f"({budget / 2**20:.4g} MB, adain-web --max-disk-mb): take a shorter part of it "
                         "(start, duration) or a smaller size")


def clip_frames(info: VideoInfo, fps: float | None, start: float, duration: float | None) -> int:
    """The frames a clip sends, for the max_video_frames check: of its part (``start``, ``duration``) where one
    is taken, at most ``fps`` a second. A container that declares no count (WebM, MKV, raw H.264) is counted
    as its duration x its frame rate (taking its 0 let a clip of any length through); 0 where it says
    neither (the running job stops at the limit then)."""
    return info.frames_read(info.read_rate(fps), start, start + duration if duration else math.inf)


class _FrameCap:
    """The client, but a video stream that reaches for frame ``max_frames + 1`` raises TooManyFrames before
    sending it (the client then cancels the stream): the upload's count is only what the container says."""

    def __init__(self, client: StyleTransferClient, max_frames: int) -> None:
        self._client, self._max_frames = client, max_frames

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def stylize_video(self, frames: Iterable[Any], styles: Any, **options: Any) -> Iterator[Any]:
        def capped() -> Iterator[Any]:
            for i, frame in enumerate(frames):
                if i >= self._max_frames:
                    raise TooManyFrames(self._max_frames)
                yield frame

        return self._client.stylize_video(capped(), styles, **options)


@dataclass
class VideoJob:
    id: str
    folder: Path
    name: str  # the result's file name, from the upload's
    total: int = 0  # frames, as the container declares them or its duration says (0: it says neither)
    done: int = 0
    state: str = "running"  # running, done, failed, cancelled
    error: dict[str, Any] | None = None  # {"code", "message", "violations"} once failed or abandoned
    finished: float | None = None
    seen: float = field(default_factory=time.monotonic)  # when its state was last asked for
    cancel: threading.Event = field(default_factory=threading.Event)

    @property
    def result(self) -> Path:
        return self.folder / "result.mp4"

    def state_json(self) -> dict[str, Any]:
        return {"id": self.id, "state": self.state, "done": self.done, "total": self.total, "error": self.error,
                "result": f"/api/videos/{self.id}/result" if self.state == "done" else None, "filename": self.name}


def sweep_left_behind(temp: Path | None = None) -> int:
    """Remove the clip folders of adain-web processes that ended without removing them (killed), in ``temp``
    (default: Python's temporary folder): those whose lock can be taken (a living process holds its own; other
    pages sharing the folder keep theirs; ``files.sweep_folders``). Folders of versions before the lock
    (``adain-web-videos-*``) are left. Returns the bytes freed, and logs what it removed."""
    count, freed = sweep_folders(FOLDER_PREFIX, temp)
    if count:
        log.warning("removed %d clip folder(s) in %s (%s) left by adain-web processes that ended without removing "
                    "them (killed: SIGKILL, out of memory, a liveness probe)", count, temp or tempfile.gettempdir(),
                    f"{freed / 2**20:.1f} MB" if freed >= 2**20 else f"{freed / 1024:.0f} KB")
    return freed


def _either(a: threading.Event, b: threading.Event, timeout: float) -> bool:
    """Whether ``a`` or ``b`` is set within ``timeout`` seconds (asked ten times a second)."""
    end = time.monotonic() + timeout
    while not (a.is_set() or b.is_set()):
        if (left := end - time.monotonic()) <= 0:
            return False
        b.wait(min(0.1, left))
    return True


class VideoJobs:
    def __init__(self, client: StyleTransferClient, *, max_running: int = 1, keep_s: float = 1800.0,
                 max_kept: int = 8, abandon_s: float = 300.0, cancelled_keep_s: float = 60.0,
                 max_frames: int = 0, max_disk_bytes: int = 0, upload_bytes: int = 0) -> None:
        self.client, self.max_running, self.keep_s, self.max_kept = client, max_running, keep_s, max_kept
        self.max_disk_bytes = max_disk_bytes  # the jobs' files at most (adain-web --max-disk-mb; 0: no limit)
        self.upload_bytes = upload_bytes  # what an upload being read may take: spooled, then copied
        self.abandon_s, self.cancelled_keep_s = abandon_s, cancelled_keep_s
        self.max_frames = max_frames  # frames a job may send (adain-web --max-video-frames; 0: no limit)
        self._root: Path | None = None  # made with the first upload: a page that failed to start left it behind
        self._root_lock: int | None = None  # the descriptor holding its flock (None: no lock on this platform)
        # folders of uploads being read, and whose (a visitor's key; None: not known): see reserve
        self._uploads: dict[Path, str | None] = {}
        self.jobs: dict[str, VideoJob] = {}
        self.threads: list[threading.Thread] = []
        self.lock = threading.RLock()
        self._closed = threading.Event()
        self._stopping = threading.Event()  # the page is stopping: no clip starts, and none waits for a stream
        self._sweeper: threading.Thread | None = None  # started with the first job
        self._doomed: queue.SimpleQueue[Path | None] = queue.SimpleQueue()  # set aside, for the deleter
        self._deleter: threading.Thread | None = None  # started with the first folder to delete
        self._deleter_lock = threading.Lock()
        sweep_left_behind()

    @property
    def root(self) -> Path:
        """The folder of every job's files, made when first needed."""
        with self.lock:
            # made again where a cleaner of /tmp removed it (every clip after failed until a restart), never once
            # closed (close removes it)
            if self._root is None or (not self._closed.is_set() and not self._root.is_dir()):
                self._unlock_root()
                self._root, self._root_lock = locked_folder(FOLDER_PREFIX)
            return self._root

    def _unlock_root(self) -> None:
        if self._root_lock is not None:
            os.close(self._root_lock)
            self._root_lock = None

    def running(self) -> int:
        with self.lock:
            return self._running()

    def _running(self) -> int:
        """Jobs running and not cancelled: one cancelled a moment ago (a frame still in flight) frees its place at
        once, so that the page's next clip is not told the server is busy (the server's own stream limit holds)."""
        return sum(j.finished is None and j.state != "cancelled" for j in self.jobs.values())

    def check_room(self) -> None:
        """Raises Busy where ``reserve`` would."""
        with self.lock:
            busy = self._full()
        if busy:
            raise Busy(self._busy())

    def _full(self, own: Path | None = None) -> bool:
        """Whether every place is taken: by jobs running and, where no disk budget bounds the uploads, by uploads
        being read too (``own``, an upload about to become a job, counts as free). Under the lock."""
        self._purge()
        uploads = 0 if self.max_disk_bytes and self.upload_bytes else len(self._uploads.keys() - {own})
        return self._running() + uploads >= self.max_running

    def _busy(self) -> str:
        return f"{self.max_running} clip(s) are being uploaded or stylized already; try again when one is done"

    def disk_used(self) -> int:
        """Bytes the jobs' files take now, uploads being read counted at their most (the metrics' gauge)."""
        with self.lock:
            return self._disk_used()

    def _disk_used(self) -> int:
        """The jobs' files, each upload being read counted at its most. Under the lock."""
        used = len(self._uploads) * self.upload_bytes
        for job in self.jobs.values():
            for path, _, names in os.walk(job.folder):
                for name in names:
                    try:
                        used += os.stat(os.path.join(path, name)).st_size
                    except OSError:  # written or deleted meanwhile
                        pass
        return used

    def _room_for(self, need: int) -> bool:
        """Whether ``need`` bytes more fit ``max_disk_bytes``, forgetting the oldest finished clips (and their files)
        until they do, as ``max_kept`` does: a pod whose emptyDir outgrows its sizeLimit is evicted, and every
        visitor's request and clip with it. Under the lock."""
        if not self.max_disk_bytes:
            return True
        finished = self._finished()
        while (over := self._disk_used() + need > self.max_disk_bytes) and finished:
            job = finished.pop(0)
            del self.jobs[job.id]
            self._delete([job.folder])
        return not over

    def _check_disk(self) -> None:
        """Raises OutOfDisk where the files are over ``max_disk_bytes`` with no finished clip left to forget (a
        running clip's result has outgrown it)."""
        with self.lock:
            if not self._room_for(0):
                raise OutOfDisk(self.max_disk_bytes)

    def reserve(self, visitor: str | None = None) -> Path:
        """A folder for a clip's upload (up to 200 MB spooled, then copied), taken before it is read, while a
        job's place is free. With a disk budget the uploads being read are bounded by it (each counted at its
        most) and take a job's place only once read (``start``): one visitor trickling an upload held the only
        place, and every other got 429, for minutes at a time. Without one they hold places, so that
        --max-video-jobs bounds the disk (six visitors' uploads at once were all read while one job's place was
        free). A visitor (``visitor``, None: not known) reads one upload at a time. Raises Busy; the folder
        becomes the job's (``start``) or is given back (``discard``)."""
        with self.lock:
            if self._stopping.is_set():
                raise PageStopping
            self.check_room()
            if visitor is not None and visitor in self._uploads.values():
                raise Busy("you are uploading a clip already (one at a time a visitor); try again when it is in")
            if not self._room_for(self.upload_bytes):
                raise Busy(f"the clips being stylized fill the disk space this page keeps for clips "
                           f"({self.max_disk_bytes / 2**20:.4g} MB); try again when one is done")
            folder = Path(tempfile.mkdtemp(dir=self.root))
            self._uploads[folder] = visitor
        return folder

    def discard(self, folder: Path) -> None:
        """Remove ``folder`` and give its place back: gone from its place at once, its files deleted by the
        deleter thread (this is called from the page's request handlers, on the event loop)."""
        with self.lock:
            self._uploads.pop(folder, None)
        self._delete([folder])

    def start(self, folder: Path, source: Path, name: str, total: int, styles: list[Any],
              **options: Any) -> VideoJob:
        """Stylize ``source`` (inside ``folder``, which the job then owns) on a new thread. Raises Busy."""
        with self.lock:  # the room checked and taken at once (this upload's own place counts as free)
            if self._stopping.is_set():  # (an upload read as the page began to stop: a review's)
                raise PageStopping
            busy = self._full(folder)
            if not busy:
                self._uploads.pop(folder, None)
                job = VideoJob(uuid.uuid4().hex, folder, name, total)
                self.jobs[job.id] = job
        if busy:
            raise Busy(self._busy())
        thread = threading.Thread(target=self._run, args=(job, source, styles, options), name=f"video-{job.id[:8]}",
                                  daemon=True)
        self.threads = [t for t in self.threads if t.is_alive()] + [thread]
        thread.start()
        with self.lock:
            if self._sweeper is None:
                self._sweeper = threading.Thread(target=self._sweep, name="video-sweeper", daemon=True)
                self._sweeper.start()
        return job

    def _sweep(self) -> None:
        """Forget expired jobs and their files on time: purged only as requests came, a page left alone kept
        its finished clips on disk past ``keep_s`` until the next visitor."""
        every = max(1.0, min(60.0, self.keep_s, self.cancelled_keep_s))
        while not self._closed.wait(every):
            with self.lock:
                self._purge()

    def get(self, job_id: str) -> VideoJob | None:
        with self.lock:
            self._purge()
            job = self.jobs.get(job_id)
            if job is not None:
                job.seen = time.monotonic()
        return job

    def remove(self, job_id: str) -> bool:
        """Cancel a running job (its state says so at once: its thread stops after the frame in flight and
        removes its folder), or delete a finished one and its file. Cancelling is idempotent: a cancelled job
        is answered until ``cancelled_keep_s`` whatever DELETEs follow (a page leaving sends one that a browser
        may send again, and the page that asks next must still read "cancelled", not 404)."""
        with self.lock:
            job = self.jobs.get(job_id)
            if job is None:
                return False
            if job.finished is None or job.cancel.is_set():
                job.cancel.set()
                job.state = "cancelled"
                return True
            del self.jobs[job_id]
        self._delete([job.folder])
        return True

    def stop_running(self) -> None:
        """As the page stops (SIGTERM): each running clip ends at its next frame (or within a quarter second while
        none comes), its state "cancelled" saying why; the files go at :meth:`close`. A clip was cancelled only
        once every photo call in flight had ended, and one rendered to its end while a refine held the grace,
        for a result deleted unread."""
        with self.lock:
            for job in self.jobs.values():
                if job.finished is None and job.error is None and not job.cancel.is_set():
                    job.error = error_json("UNAVAILABLE", "this page stopped (a restart or a rollout) before the "
                                           "clip was done: send it again")["error"]
            self._stopping.set()  # after: it wakes a clip waiting for a stream of the server's, which reads that

    def close(self, wait_s: float = 10.0) -> None:
        """Cancel every job, wait for the threads (bounded), remove every file."""
        self._closed.set()
        for job in list(self.jobs.values()):
            job.cancel.set()
        deadline = time.monotonic() + wait_s
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._deleter_lock:  # _closed is set: nothing is queued after this stop
            deleter = self._deleter
            self._doomed.put(None)
        if deleter is not None:  # what it has not deleted by then is inside root: removed below either way
            deleter.join(max(0.0, deadline - time.monotonic()))
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
        self._unlock_root()

    def _run(self, job: VideoJob, source: Path, styles: list[Any], options: dict[str, Any]) -> None:
        from adain.client.video import stylize_video_file
        from adain.media import MediaError, MediaWriteError

        CONTEXT.set({"request_id": options["request_id"]} if options.get("request_id") else None)  # (its lines')

        def stopped() -> bool:
            """Cancelled, or abandoned (nobody asked about it for abandon_s): asked after each frame and, by the
            client, while none comes (a server gone silent held the job, its thread and its files for good)."""
            if job.error is None and not job.cancel.is_set() and time.monotonic() - job.seen > self.abandon_s:
                job.error = error_json("CANCELLED", f"nobody asked about this clip for {self.abandon_s:g} s: taken "
                                       "as abandoned")["error"]
            return job.cancel.is_set() or job.error is not None

        def on_frame() -> None:
            job.done += 1
            if stopped():
                raise Cancelled
            self._check_disk()  # the result grows a frame at a time

        state, error = "failed", None  # set on the job at the end, once its folder is as that state says
        client = _FrameCap(self.client, self.max_frames) if self.max_frames else self.client
        try:
            give_up = time.monotonic() + STREAM_WAIT_S
            while True:
                try:
                    stylize_video_file(client, source, job.result, styles, on_frame=on_frame, stop=stopped, **options)
                    break
                except StyleTransferError as e:  # the server's streams all taken: waited for as it asks, before any
                    wait_s = e.retry_after if e.code == grpc.StatusCode.RESOURCE_EXHAUSTED and not job.done else None
                    if wait_s is None or time.monotonic() + wait_s > give_up or stopped():  # frame (it was a job
                        raise  # accepted, 202, then failed at once: "max_video_streams=2", a flag of the server's)
                    if _either(job.cancel, self._stopping, wait_s):
                        raise Cancelled from None
            source.unlink(missing_ok=True)
            self._check_disk()  # and whole: the encoder holds frames back (x264's look-ahead), written at the end
            state = "done"
        except Cancelled:
            state, error = "cancelled", job.error  # abandoned: on_frame said why
        except TooManyFrames as e:
            error = error_json("INVALID_ARGUMENT", str(e), [("content", str(e))])["error"]
        except OutOfDisk as e:
            error = error_json("RESOURCE_EXHAUSTED", str(e))["error"]
        except StyleTransferError as e:
            if stopped():  # the client cancelled the stream while no frame came: cancelled or abandoned
                state, error = "cancelled", job.error
            else:
                error = error_json(e.code.name, *stream_error(e, "content"))["error"]
        except (MediaWriteError, OSError) as e:  # writing the result failed: this service's fault, not the clip's
            # (FFmpeg's own av.error.OSError keeps its errno, a MediaWriteError only its words; the OSError fell
            # through to INTERNAL with a traceback: a clip that fit, a result that did not)
            full = STORAGE_ERRNOS.get(e.errno) if isinstance(e, OSError) else _storage_said(str(e))
            if full:  # its disk full or read-only: said as such
                log.error("clip job %s: writing its result failed: %s", job.id, e)
                error = error_json("RESOURCE_EXHAUSTED", f"the clip could not be stylized: this page's temporary "
                                   f"folder {full}; try again later")["error"]
            elif isinstance(e, OSError) and e.errno == errno.ENOENT and not job.result.parent.exists():
                log.error("clip job %s: its folder %s was removed while it ran", job.id, job.result.parent)  # (a
                error = error_json("ABORTED", "the clip could not be stylized: this page's temporary folder was "
                                   "removed while it ran (a cleaner of /tmp?); send it again")["error"]  # cleaner)
            else:
                log.exception("clip job %s failed" if isinstance(e, OSError) else
                              "clip job %s: writing its result failed", job.id)
                error = error_json("INTERNAL", INTERNAL)["error"]
        except MediaError as e:  # the clip and its result: named as the page names them, not by this server's folder
            message = str(e).replace(str(source), "the clip").replace(str(job.result), "the result")
            error = error_json("INVALID_ARGUMENT", message, [("content", message)])["error"]
        except Exception:  # noqa: BLE001 - a job's failure is reported on its state, never lost
            log.exception("clip job %s failed", job.id)
            error = error_json("INTERNAL", INTERNAL)["error"]
        finally:
            source.unlink(missing_ok=True)
            aside = None
            with self.lock:  # with remove(): a DELETE just after the last look at ``cancel`` is not overwritten
                if job.cancel.is_set():  # cancelled by its caller (it says so already), whatever the last frame did
                    state, error = "cancelled", None
                if state != "done":  # gone before the state says so; deleted below, outside the lock
                    aside = self._set_aside(job.folder)
                job.state, job.error = state, error
                job.finished = time.monotonic()
            if aside is not None:  # this job's own thread: no request waits on it
                shutil.rmtree(aside, ignore_errors=True)

    def _purge(self) -> None:
        """Forget finished jobs past ``keep_s`` (cancelled ones past ``cancelled_keep_s``), and the oldest beyond
        ``max_kept``, and delete their folders (lock held: each is one rename here, its files deleted by the
        deleter thread; once closing, deleted here)."""
        now = time.monotonic()
        finished = self._finished()
        doomed: list[Path] = []
        for i, job in enumerate(finished):
            keep = self.cancelled_keep_s if job.cancel.is_set() else self.keep_s
            if now - (job.finished or now) > keep or i < len(finished) - self.max_kept:
                del self.jobs[job.id]
                doomed.append(job.folder)
        self._delete(doomed)

    def _finished(self) -> list[VideoJob]:
        """The finished jobs, the oldest first: the first to be forgotten. Under the lock."""
        return sorted((j for j in self.jobs.values() if j.finished is not None), key=lambda j: j.finished or 0)

    def _set_aside(self, folder: Path) -> Path | None:
        """``folder`` renamed to a hidden name in ``root`` (one rename, however large it is): gone from its place
        at once. Returns what to delete, None where it is gone already."""
        aside = self.root / f".deleted-{uuid.uuid4().hex}"
        try:
            os.rename(folder, aside)
        except FileNotFoundError:
            return None
        except OSError:  # cannot be renamed (e.g. another file system): deleted where it is
            return folder
        return aside

    def _delete(self, folders: list[Path]) -> None:
        """Remove ``folders`` off the caller's thread: each set aside now, deleted by the deleter thread."""
        for folder in folders:
            aside = self._set_aside(folder)
            if aside is None:
                continue
            with self._deleter_lock:  # with close(): queued before its stop, or deleted here
                if not self._closed.is_set():
                    if self._deleter is None:
                        self._deleter = threading.Thread(target=self._delete_loop, name="video-deleter",
                                                         daemon=True)
                        self._deleter.start()
                    self._doomed.put(aside)
                    continue
            shutil.rmtree(aside, ignore_errors=True)  # closing: the deleter has stopped, or is stopping

    def _delete_loop(self) -> None:
        while (folder := self._doomed.get()) is not None:
            shutil.rmtree(folder, ignore_errors=True)


def _storage_said(message: str) -> str | None:
    """Whether FFmpeg's message (its error's text: MediaWriteError keeps no errno) is a full, over-quota or
    read-only disk's, and what to say of it."""
    for code, said in STORAGE_ERRNOS.items():
        if os.strerror(code) in message:
            return said
    return None
