"""Stopping a render part-way, once everyone who asked for it has gone.

A render is seconds of graph calls on the server's one render thread (a 1-MP photo: 11 s at one thread on an
AVX2 EPYC). A call cancelled in its first moment (a visitor gone, a deadline, ``stop()``) was answered at once, but
its render ran to the end, and the next caller waited behind it (9 s for a 64-px photo). The render thread sets a
test here for its batch (:func:`stop_when`); the render then raises StoppedError within about one layer: eager
torch looks at it between the network's layers (:func:`between_layers`), an OpenVINO call of a fixed-shape graph
is cancelled (``adain.backends``: not the shape-generic one, which a cancel left failing its next call), an ONNX
Runtime call terminated, and the Stylizer looks between its steps (:func:`check`).
Thread-local: each thread's renders have their own test, and a thread that set none is never stopped.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

from adain.errors import StoppedError

POLL_MS = 20  # how often a running graph call looks at the test (a cancel lands within one layer after)
_local = threading.local()


@contextlib.contextmanager
def stop_when(stop: Callable[[], bool]) -> Iterator[None]:
    """Renders in this block (this thread) stop with StoppedError("cancelled") soon after ``stop()`` is true."""
    before = getattr(_local, "stop", None)
    _local.stop = stop
    try:
        yield
    finally:
        _local.stop = before


def current() -> Callable[[], bool] | None:
    """This thread's test, or None where nothing may stop its renders."""
    return getattr(_local, "stop", None)


def check() -> None:
    """Raise StoppedError("cancelled") where this thread's test says stop (between a render's steps)."""
    stop = current()
    if stop is not None and stop():
        raise StoppedError("cancelled")


def between_layers() -> None:
    """:func:`check`, from a network's forward between two layers as it runs eagerly (the torch backend, the
    fallback of the others, a refine's and a tile's encoder): stopped within one layer, where only the step
    between the encoder and the decoder looked before (half a 1-MP photo's 11 s). Nothing while the network is
    traced or compiled: an exporter's or torch.compile's graph must not hold a thread's test."""
    import torch  # (here, not at the top: the server's request checks import this module and no torch)

    if torch.compiler.is_compiling() or torch.jit.is_tracing():  # (the ONNX exporter here traces too)
        return
    check()
