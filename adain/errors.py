"""The one exception type callers catch for bad input.

Every rejected image or argument raises :class:`InvalidInputError` (a ``ValueError``).
``field`` names what was wrong (``"content"``, ``"styles[1].weight"``, ``"alpha"``...), so that
the server can turn it into an INVALID_ARGUMENT status that names the field and the limit. A job with
several problems raises one error for the first that lists them all in ``problems``. And the library's one
way to silence warnings (:func:`warnings_ignored`).
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Iterator, Sequence

SHOWN = 20  # problems a message lists: a million bad entries once made a 73 MB message


class InvalidInputError(ValueError):
    """An image or argument the library will not process; the message says why."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.description = message
        self._others: tuple[InvalidInputError, ...] = ()

    @property
    def problems(self) -> tuple[InvalidInputError, ...]:
        """This problem and the others found with it. (Held as itself among them, every error was a reference
        cycle: its traceback's frames, with the decoded images in them, waited for the cyclic collector, and a
        server refusing 8K contents held 256 MB more after each refusal.)"""
        return (self, *self._others)

    def __reduce__(self) -> tuple:
        # pickle (a process pool's worker handing its error back) rebuilt it from args, one message where
        # __init__ takes two: a TypeError, and the pool broken for good. Its other problems and its message come
        # back as state.
        return type(self), (self.field, self.description), {**self.__dict__, "args": self.args}

    @classmethod
    def of(cls, problems: Sequence[InvalidInputError]) -> InvalidInputError:
        """One error to raise for several: the first, carrying all of them in ``problems``; its message
        lists them all (at most ``SHOWN``), so a printed error does not hide the second mistake. A list given is
        emptied: the caller's frame, in the raised error's traceback, would hold the error (a cycle)."""
        found = tuple(problems)
        if isinstance(problems, list):
            problems.clear()
        first = found[0]
        first._others = tuple(p for p in found[1:] if p is not first)
        if len(found) > 1:
            shown = "; ".join(f"{p.field}: {p.description}" for p in found[:SHOWN])
            more = f" (and {len(found) - SHOWN} more)" if len(found) > SHOWN else ""
            first.args = (shown + more,)
        return first


class NoDecoderError(RuntimeError):
    """No trained decoder is installed (or the file given is not one); never fall back to random."""


class StoppedError(RuntimeError):
    """Long work (an optimisation) stopped before its end because its caller asked: ``reason`` is
    "cancelled" or "deadline". Raised from a progress callback; nothing is returned."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"stopped: {reason}")
        self.reason = reason

    def __reduce__(self) -> tuple:  # rebuilt from args it said "stopped: stopped: cancelled"
        return type(self), (self.reason,), self.__dict__


_WARNINGS_LOCK = threading.RLock()


@contextlib.contextmanager
def warnings_ignored() -> Iterator[None]:
    """Warnings ignored in this block, one thread's block at a time. ``warnings.catch_warnings`` saves the process's
    one list of filters and puts it back: two threads' blocks interleaved (a server's prepare threads opening
    images) put back the other's "ignore", which stayed for good and silenced every later warning of the process
    (4 threads opening images: 2 runs of 3)."""
    with _WARNINGS_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


class MediaError(Exception):
    """A video that cannot be read or written; the message says what is wrong. Here, not in ``adain.media``
    (numpy, PyAV): the thin client catches it where neither is installed."""


class Stopped(MediaError):
    """Reading stopped because its caller asked (``VideoReader.frames(stop=...)``)."""


def install_hint(extra: str) -> str:
    """How an optional part is installed, for messages: as a package, and in a source checkout (the hints named
    only the checkout's form, which means nothing to someone who installed a wheel)."""
    return f"pip install 'adain[{extra}]'; in a checkout: pip install -e '.[{extra}]'"


def one_line(text: str) -> str:
    """``text`` with its unprintable characters (newlines, escapes, a right-to-left override) written as Python
    escapes: one message, one line. A file named with a newline split an error or a log line in two, the second
    forged by whoever named the file. Where it escapes, a backslash is written doubled: a name with a backslash
    and an "n" in it then reads apart from one with a newline."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() and c != "\\" else c.encode("unicode_escape").decode("ascii") for c in text)
