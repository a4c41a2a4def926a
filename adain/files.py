"""Outputs written whole or not at all: into a temporary file beside the output, renamed over it when
complete, so a failure (a full disk, ``ulimit -f``, Ctrl-C, SIGTERM) never leaves a valid-looking partial
file. Standard library only: the thin client writes its images this way, ``adain.media`` its videos. And
bytes made by a writer that wants a file (Pillow's encoders), made in memory: :func:`bytes_written`."""

from __future__ import annotations

import contextlib
import errno
import io
import os
import re
import secrets
import shutil
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Literal, overload


def temp_problem() -> str | None:
    """Why no temporary file can be made here (TMPDIR, else /tmp, /var/tmp...: Python's choice), or None. A
    read-only root file system without a writable /tmp passed the probes and then failed: the server's warm-up
    (torch writes its compile cache there), a page's large uploads and every clip."""
    import tempfile

    try:
        with tempfile.TemporaryFile():
            pass
    except OSError as e:
        why = "; ".join(f"{d} {said}" for d, said in _temp_folders()) or e.strerror or str(e)
        return (f"no writable temporary folder ({why}): set TMPDIR to one, or mount one at /tmp "
                "(Kubernetes: an emptyDir)")
    return None


def _temp_folders() -> list[tuple[str, str]]:
    """Python's candidates for a temporary folder (TMPDIR first), each with what is wrong with it: an operator
    told "no writable temporary folder" looked at permissions where the disk was full."""
    out = []
    for folder in dict.fromkeys(d for d in (os.environ.get("TMPDIR"), "/tmp", "/var/tmp", "/usr/tmp") if d):
        st = os.statvfs(folder) if os.path.isdir(folder) else None
        if st is None:
            said = "does not exist"
        elif st.f_flag & os.ST_RDONLY:  # (before access(), which a read-only mount fails too: "cannot be written
            said = "is read-only"  # in" sent an operator to the permissions)
        elif not os.access(folder, os.W_OK | os.X_OK):
            said = "cannot be written in"
        elif st.f_bavail * st.f_frsize < 64 * 1024 or (st.f_files > 0 and st.f_favail == 0):  # (bytes, inodes)
            said = "is full"
        else:
            continue  # (nothing seen wrong with it: the error says what is)
        out.append((folder, said))
    return out


def temp_fallback() -> str | None:
    """A warning where Python's temporary files go elsewhere than asked: TMPDIR set and full, read-only or missing
    (Python passes it over without a word, and an operator who pointed it at a large volume got the pod's small
    /tmp), or, TMPDIR unset, no system folder usable and the working folder taken (clips and compile caches were
    kept there without a word); else None. Call after :func:`temp_problem` found a folder."""
    import tempfile

    wanted = os.environ.get("TMPDIR")
    used = tempfile.gettempdir()
    if not wanted:
        if os.path.realpath(used) != os.path.realpath(os.getcwd()):
            return None
        why = "; ".join(f"{d} {said}" for d, said in _temp_folders()) or "the system's folders are not usable"
        return f"no temporary folder ({why}): temporary files (uploads, clips, compile caches) go to the " \
            f"working folder {used}; set TMPDIR to one"
    if os.path.realpath(used) == os.path.realpath(wanted):
        return None
    said = next((why for d, why in _temp_folders() if d == wanted), "is passed over by Python")
    return f"TMPDIR={wanted} {said}: temporary files (uploads, clips, compile caches) go to {tempfile.gettempdir()}"


def _nearest_folder(path: str | os.PathLike) -> Path:
    """``path`` if it is a folder, else the nearest folder above it that exists (where a file still to be made, or
    a folder, would go)."""
    here = Path(path)
    while not os.path.isdir(here) and here != here.parent:  # (os.path: Path.is_dir raised on a name too long)
        here = here.parent
    return here


def name_max(folder: str | os.PathLike) -> int:
    """The most bytes a file name may have in ``folder`` (or the nearest folder above it that exists: the save makes
    the rest): its file system's NAME_MAX (255 on Linux and macOS; eCryptfs 143), 255 where the system does not say
    (Windows: 255 UTF-16 units, which 255 bytes never exceed)."""
    try:
        limit = os.pathconf(_nearest_folder(folder), "PC_NAME_MAX")
    except (AttributeError, OSError, ValueError):
        return 255
    return limit if limit > 0 else 255


def cut_name(name: str, size: int) -> str:
    """The longest start of ``name`` whose bytes in the file system's encoding are at most ``size``: never half a
    character (half a UTF-8 "é" is no name), and in a locale that is not UTF-8 (Latin-1, ASCII, Python not in UTF-8
    mode) nothing it cannot hold (a name cut as UTF-8 came back with characters it cannot: UnicodeEncodeError, and
    a folder run stopped there)."""
    used = 0
    for end, c in enumerate(name):
        used += len(os.fsencode(c))
        if used > size:
            return name[:end]
    return name


def _head(name: str, folder: Path, extra: int) -> str:
    """``name`` cut so that a temporary name made from it in ``folder``, ``extra`` bytes longer, fits the folder's
    file system (at most 200 bytes kept): 15-25 bytes longer than a legal name of 241 or more, it failed with
    ENAMETOOLONG (and on eCryptfs, whose limit is 143, a name of 128 or more: a review's)."""
    return cut_name(name, max(1, min(200, name_max(folder) - extra)))


def create_beside(path: Path, keep: bool = True) -> Path:
    """A new empty file ``.NAME.RANDOM.part`` in ``path``'s folder, made by the kernel with 0o666 less the
    umask (and any default ACL), as the output itself would be (mkstemp's 0o600 would make it private).
    ``keep=False`` (a probe of whether the folder takes a file) removes it inside the same cleanup: a signal
    between this returning and the caller's unlink left it (4 probes in 20,000 signalled as their file appeared)."""
    head = _head(path.name, path.parent, 15)
    for _ in range(100):
        tmp = path.with_name(f".{head}.{secrets.token_hex(4)}.part")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666))
            if not keep:
                tmp.unlink()
        except FileExistsError:
            continue
        except OSError as e:  # named by the output asked for, not the hidden name it was to have (a read-only
            # folder's error named ".out.png.5dd608b4.part", which never was; no file made, nothing to remove)
            raise OSError(e.errno, e.strerror, str(path)) from None
        except BaseException:  # Ctrl-C or SIGTERM as it was made (its handler runs at the next call): a
            tmp.unlink(missing_ok=True)  # .part file was left behind, once in CI
            raise
        return tmp
    raise FileExistsError(f"{path}: no free temporary name beside it")


def _followed(path: str | os.PathLike) -> Path:
    """``path``, or where it links to: a link's target is what an output replaces, not the link."""
    return Path(os.path.realpath(path)) if os.path.islink(path) else Path(path)


def _special(path: str | os.PathLike) -> bool:
    """Whether ``path`` exists as a device or pipe (``/dev/null``): written in place, never replaced by a file."""
    try:
        return not stat.S_ISREG(os.stat(path).st_mode)
    except FileNotFoundError:
        return False


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, sweep: bool = False) -> Iterator[Path]:
    """A temporary file beside ``path`` to write into: renamed to ``path`` when the block ends normally,
    removed when it raises. A symbolic link is followed (its target is replaced, not the link).

    ``sweep`` (a clip's writer): a process killed in the block (SIGKILL, a library caller's worker stopped by
    SIGTERM, which Python does not turn into an exception) cannot remove its temporary file, and a clip's could
    be hundreds of MB, hidden. So every write locks its file while it writes (``flock``: the kernel lets go of it
    when the process ends, however it ends), and a sweeping one removes the earlier ones of ``path`` whose lock it
    can take (:func:`_sweep_parts`). Not for images: it lists the folder, once an output (a folder run's
    thousands)."""
    path = _followed(path)
    tmp = create_beside(path)
    held = None
    try:  # (the lock taken inside: SIGTERM as it was taken, just as the file appeared, left the .part file, in CI)
        with contextlib.suppress(OSError):  # (out of descriptors: unlocked, and sweeping nothing)
            held = locked(tmp)  # (every write: one that does not sweep must not be swept by one that does)
        if held is not None and sweep:
            _sweep_parts(path, tmp)
        yield tmp
        if held is not None and sweep:  # again: a write killed a moment before this one began was too recent
            _sweep_parts(path, tmp)
        _synced(tmp)
        with contextlib.suppress(FileNotFoundError):  # a file replaced keeps its mode (a private 0600 output came
            os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode))  # back world-readable); after the writes: 0444 too
        os.replace(tmp, path)  # inside: a rename that fails (``path`` a folder) left the .part file behind
    except BaseException as e:
        with contextlib.suppress(OSError):  # (a folder gone read-only meanwhile: its error, not the unlink's)
            tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno is not None and e.filename in (None, str(tmp), os.fsencode(tmp)):
            # named by the output asked for (a write's own error names no file),
            # not by the hidden file just removed (a full disk's ".out.png.2fd52425.part"); FFmpeg's errors keep
            # their name read-only: made again as Python's own (OSError makes the errno's subclass)
            raise OSError(e.errno, e.strerror, str(path)) from None
        raise
    finally:
        if held is not None:
            os.close(held)


# a lock not to be had: held by another process (EWOULDBLOCK), or no flock on this file system
_NOT_LOCKED = {errno.EWOULDBLOCK, errno.EAGAIN, errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL}


def locked(path: Path, folder: bool = False) -> int | None:
    """A descriptor of ``path``, a regular file (or a ``folder``), holding an exclusive ``flock`` on it; None where it
    is held by another process, is gone or is something else (a link, a pipe: never waited on), or where there is no
    ``flock`` (Windows, a file system without locks). The kernel lets go of the lock when the process ends, however
    it ends: a file whose lock can be taken is no living writer's. Raises OSError for the rest (out of descriptors)."""
    try:
        import fcntl
    except ImportError:
        return None
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_DIRECTORY if folder else 0)
    try:
        fd = os.open(path, flags)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:  # a symbolic link (O_NOFOLLOW)
            return None
        raise
    try:
        if not (stat.S_ISDIR if folder else stat.S_ISREG)(os.fstat(fd).st_mode):
            os.close(fd)
            return None
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in _NOT_LOCKED:
            return None
        raise
    except BaseException:  # (a signal's exception as it was taken: the descriptor not left open)
        os.close(fd)
        raise
    return fd


def locked_folder(prefix: str) -> tuple[Path, int | None]:
    """A new private folder ``prefix`` + random in the temporary folder, and the descriptor that holds its lock for
    this process's life (None where there is no ``flock``), so that :func:`sweep_folders` of a later process can
    tell it from one whose process was killed. Made under a hidden name, locked, then renamed: a folder that bears
    the name is locked where locks exist. Raises OSError where the lock cannot be taken (out of descriptors)."""
    import tempfile

    staging = Path(tempfile.mkdtemp(prefix="." + prefix))
    fd = None
    try:
        fd = locked(staging, folder=True)  # (None: no flock here, where no sweep can take it either)
        folder = staging.with_name(staging.name[1:])
        os.rename(staging, folder)  # (the same directory, the lock with it)
    except BaseException:  # out of descriptors, say: never a folder under the name unlocked, nor one left
        if fd is not None:
            os.close(fd)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder, fd


STAGING_STALE_S = 60.0  # a hidden folder still unrenamed this long was left by a process that died making it


def sweep_folders(prefix: str, temp: Path | None = None) -> tuple[int, int]:
    """Remove the folders :func:`locked_folder` made with ``prefix`` in ``temp`` (default: the temporary folder)
    whose lock can be taken: their processes ended without removing them (killed). A living process's, links,
    files and other users' folders that cannot be opened are left. Returns how many were removed and their bytes."""
    import tempfile

    temp = Path(temp or tempfile.gettempdir())
    freed = count = 0
    for folder in [*temp.glob(prefix + "*"), *temp.glob("." + prefix + "*")]:
        quiet_s = STAGING_STALE_S if folder.name.startswith(".") else 0.0  # (being made: locked a moment later)
        size = _remove_unheld(folder, quiet_s, folder=True)
        if size is not None:
            freed, count = freed + size, count + 1
    return count, freed


def _remove_unheld(path: Path, quiet_s: float, folder: bool = False) -> int | None:
    """Remove ``path`` (a file, or a ``folder`` and what it holds) where no living process holds its lock
    (:func:`locked`) and it was not modified in the last ``quiet_s`` (it may be locked a moment after it was made);
    its bytes, or None where it was left."""
    try:
        if quiet_s and time.time() - path.lstat().st_mtime < quiet_s:
            return None
        fd = locked(path, folder=folder)
    except OSError:
        return None
    if fd is None:
        return None
    try:
        size = _size(path) if folder else os.fstat(fd).st_size
        if folder:
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
    finally:
        os.close(fd)
    return None if os.path.lexists(path) else size


def _size(folder: Path) -> int:
    """The bytes of the files in ``folder`` and its folders (links not followed)."""
    total = 0
    for parent, _, names in os.walk(folder):
        for name in names:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(parent, name))
                total += st.st_size if stat.S_ISREG(st.st_mode) else 0
    return total


PART_QUIET_S = 2.0  # a temporary file written this recently is left: it may be locked a moment after it was made
_HEX = re.compile("[0-9a-f]{8}")


def _sweep_parts(path: Path, mine: Path) -> None:
    """Remove the temporary files of earlier writes of ``path`` (besides ``mine``) that no living process holds."""
    import glob

    head = mine.name[: -len(".part")].rsplit(".", 1)[0]  # ".NAME" as create_beside cut it
    for part in path.parent.glob(glob.escape(head) + ".????????.part"):  # (its token: 8 hex digits)
        if part != mine and _HEX.fullmatch(part.name[len(head) + 1 : -len(".part")]):
            _remove_unheld(part, PART_QUIET_S)


def _synced(path: Path) -> None:
    """``path``'s bytes on the disk before it is renamed into place: after a power cut a new output could show up
    empty under its name on some file systems (renamed before its data was written back). Best effort: a file
    system that cannot sync a file (EINVAL) is left as it is."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # (the rename says what is wrong)
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.EROFS, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def check_writable(path: str | os.PathLike) -> None:
    """Raise the OSError that writing ``path`` whole would meet, before the work that makes its bytes (a
    refine or a print-size photo took minutes, then failed to save): a file where a folder must be, ``path`` a
    folder, a folder that takes no new file (a temporary file is made beside ``path`` and removed), or, where
    its folder is still to be made, an existing folder above it that takes none; a link on the way to a folder
    or a file that is not there (it passed as a folder to be made, and the save then failed: "File exists").
    Nothing is left behind."""
    given = Path(path)
    for above in [*reversed(given.parents), given]:
        if os.path.islink(above) and not above.exists():  # a dangling link: nothing will be made through it
            if above == given and Path(os.path.realpath(above)).parent.is_dir():
                break  # (a link to a file still to be written, in a folder that is there: the file replaces it)
            raise FileNotFoundError(errno.ENOENT, f"a link to {os.readlink(above)}, which is not there", str(above))
    path = _followed(path)
    for above in reversed(path.parents):
        if above.exists() and not above.is_dir():  # making the folder said only "File exists"
            raise NotADirectoryError(errno.ENOTDIR, "a file, not a folder", str(above))
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "a folder, not a file", str(path))
    if path.parent.is_dir():
        if not _special(path):
            try:
                create_beside(path, keep=False)
            except OSError as e:  # named by its folder, not by the temporary file's name
                raise type(e)(e.errno, e.strerror, str(path.parent)) from None
        return
    nearest = next(above for above in path.parents if above.exists())
    tail = f".{os.getpid()}.{threading.get_ident()}.probe"
    probe = nearest / f".{_head(path.name, nearest, len(tail) + 1)}{tail}"  # (a name near the limit)
    try:  # a folder made and removed: the error making the real ones would meet (on a read-only mount that is
        probe.mkdir()  # "Read-only file system", where asking for access said "Permission denied")
        probe.rmdir()
    except OSError as e:
        raise type(e)(e.errno, e.strerror, str(nearest)) from None


def write_whole(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` whole or not at all (see :func:`atomic_path`); a device or pipe that exists
    (``/dev/null``) is written to as it is: it cannot be half-written, and must not be replaced by a file."""
    if _special(path):
        with open(path, "wb") as f:
            f.write(data)
        return
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def low_space(path: str | os.PathLike) -> str:
    """" (its disk has N MB free)" where the file system holding ``path`` (or the nearest folder above it that
    exists) has under 256 MB free, else "": a full disk's own words are often not that (torch's "basic_ios::clear:
    iostream error", "unexpected pos 18757888 vs 18757776")."""
    with contextlib.suppress(OSError):
        st = os.statvfs(_nearest_folder(path))
        free = st.f_bavail * st.f_frsize
        if free < 256 * 2**20:
            return f" (its disk has {free / 2**20:.0f} MB free)"
    return ""


def saved_whole(save: Callable[[Path], object], path: str | os.PathLike) -> None:
    """``save(tmp)`` into a temporary file beside ``path`` (:func:`atomic_path`): whole or not at all. A failure
    (a full disk, a read-only folder: torch's RuntimeError or an OSError) leaves no temporary file (a 20-MB
    checkpoint.tmp was left taking a full disk's space) and raises OSError naming ``path`` and why."""
    try:
        with atomic_path(path) as tmp:
            save(tmp)
    except (OSError, RuntimeError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else (str(e).strip().splitlines() or [""])[0][:200]
        raise OSError(getattr(e, "errno", None), f"cannot write it: {why}{low_space(path)}", str(path)) from None


def _file_size_limited() -> bool:
    """Whether this process runs under a file-size limit (``ulimit -f``, systemd's ``LimitFSIZE=``)."""
    try:
        import resource
    except ImportError:  # (not Unix)
        return False
    return resource.getrlimit(resource.RLIMIT_FSIZE)[0] != resource.RLIM_INFINITY


@overload
def bytes_written(write: Callable[[IO[bytes]], object], writable: Literal[False] = False) -> bytes: ...


@overload
def bytes_written(write: Callable[[IO[bytes]], object], writable: Literal[True]) -> bytearray: ...


@overload
def bytes_written(write: Callable[[IO[bytes]], object], writable: bool) -> bytes | bytearray: ...


def bytes_written(write: Callable[[IO[bytes]], object], writable: bool = False) -> bytes | bytearray:
    """The bytes ``write`` writes into an in-memory file, one with a descriptor (Linux's memfd) where the OS
    offers it. Pillow lets go of the GIL only while it encodes into a file descriptor: its JPEG encoder held it
    for a whole encode into a BytesIO (~0.9 ms a 512-px image, ~7 ms a 1080p frame), which for a server is
    serial work beside every other thread's (one process then serves at most 1000 / its GIL ms a request calls
    a second: ``benchmarks/gil.py``) and for an asyncio program a stalled event loop. The bytes are the same
    either way. (Pillow's PNG and WebP encoders let go of it anyway.) ``writable``: a bytearray (numpy and torch
    arrays over it may be written), read into without a further copy."""
    try:
        if _file_size_limited():  # a memfd is a file: past the limit its bytes were cut short, without an error
            raise OSError("a file-size limit (ulimit -f)")  # (a PPM of 24,590 bytes came back as 8,192)
        fd = os.memfd_create("adain-encode", os.MFD_CLOEXEC)
    except (AttributeError, OSError):  # not Linux, no descriptor left, or a limit: into a buffer, holding the GIL
        buf = io.BytesIO()
        write(buf)
        return bytearray(buf.getbuffer()) if writable else buf.getvalue()
    with open(fd, "w+b") as f:
        write(f)
        size = f.tell()
        f.seek(0)
        if not writable:
            return f.read()
        out = bytearray(size)
        f.readinto(out)
        return out
