"""The console commands. ``adain-stylize``, ``adain-web`` and ``adain-server`` start before gRPC is imported:
its core reads GRPC_VERBOSITY once, as it loads, and logs at INFO in a format of its own (a failed TLS handshake
printed a line before the CLI's one-line error, and into adain-web's log). Its errors still show; a
GRPC_VERBOSITY set by the user wins. (``adain-server`` calls :func:`quiet_grpc` in its main, which imports gRPC
late.) Ctrl-C while they load (their first tenth of a second) is exit 130 (the CLI's and the page's with one
line), as later, not a traceback from inside an import, and so is the CLI's SIGTERM (exit 143) and SIGHUP (a closed
terminal or SSH session: exit 129, its temporary file removed as for the others); ``import adain``
itself imports nothing (its names load on first use), so the window before these handlers is the interpreter's
own start. ``adain-train`` is here too: like ``adain-server`` and ``adain-web``, it says in one line which extra
to install where a module of it is missing."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from adain.errors import install_hint


class Terminated(KeyboardInterrupt):
    """SIGTERM (or the CLI's SIGHUP), handled as Ctrl-C is (a video's temporary file removed, pending images not
    started), but exiting 128 + its number: 143 (129)."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        super().__init__(signum)
        self.signum = signum


_signalled: list[int] = []  # the signals the handlers below took: one that lands in a C module's start comes out
# as a SystemError or ImportError ("execution of module PIL._imagingcms raised unreported exception"), the
# KeyboardInterrupt lost, and was a traceback (exit 1) in 1 of 40 tries


def _signal_exception(e: KeyboardInterrupt, signum: int) -> KeyboardInterrupt:
    """``e``, marked as a handler's below, for :func:`_redeliver`. Returned, not raised here: nothing may hold it (a
    frame of its own traceback would, a cycle), for a generator it passes through is closed as soon as it is dropped
    (a signal as ``atomic_path`` yielded came out of ``contextlib``'s ``__enter__``: its temporary file is removed
    when the suspended generator is freed)."""
    _signalled.append(signum)
    e.adain_signum = signum  # type: ignore[attr-defined]
    if getattr(sys.unraisablehook, "func", None) is not _redeliver:
        sys.unraisablehook = functools.partial(_redeliver, sys.unraisablehook)
    return e


def _redeliver(previous: Callable[[Any], object], unraisable: Any) -> None:
    """A handler's exception raised inside a weakref callback or a ``__del__`` is printed and dropped ("Exception
    ignored in ... Terminated: 15"), and the command went on as if never signalled (a CLI given SIGTERM waited out
    its whole clip; seen on Python 3.13 in a test that signals the moment a file appears). The signal is delivered
    again, a moment later, from a thread of its own, so that the main thread runs the handler where it goes on
    (inside this hook the handler's exception would be dropped again; threading's start waits, and the handler
    ran in that wait); dropped again, it is delivered again."""
    signum = getattr(unraisable.exc_value, "adain_signum", None)
    if signum is None:
        previous(unraisable)
        return
    import _thread

    _thread.start_new_thread(_deliver_later, (signum,))


def _deliver_later(signum: int) -> None:
    import _thread
    import time

    time.sleep(0.005)
    _thread.interrupt_main(signal.Signals(signum))


def on_sigterm(signum: int, frame: Any) -> None:
    raise _signal_exception(Terminated(signum), signum)


def _on_sigint(signum: int, frame: Any) -> None:
    raise _signal_exception(KeyboardInterrupt(), signum)


def interrupted_code(e: KeyboardInterrupt) -> int:
    """The exit status of a command a signal ended: 128 + its number (130 for Ctrl-C)."""
    return 128 + e.signum if isinstance(e, Terminated) else 128 + signal.SIGINT


def package_version() -> str:
    """This install's version (``--version``, GetServerInfo's server_version); "unknown" from a bare checkout."""
    from importlib import metadata

    try:
        return metadata.version("adain")
    except metadata.PackageNotFoundError:
        return "unknown"


PACKAGES = ("adain", "adain.v1", "adain.client", "adain.server", "adain.train", "adain.web")  # (pyproject's)


def build_version() -> str:
    """The package's version and, after a "+", the first 8 hex digits of a sha256 of its Python code, each of its
    packages' modules by package and name (GetServerInfo's server_version and adain_server_info's label): the
    version alone stays 0.1.0 from commit to commit, so two revisions side by side mid-upgrade looked like one, and
    AdainReplicasDiffer could not fire. By package, not by folder: a checkout keeps client/, server/, web/ and
    train/ beside adain/, a wheel inside it."""
    import hashlib
    from importlib.util import find_spec

    digest = hashlib.sha256()
    for name in PACKAGES:
        spec = find_spec(name)
        for folder in (spec.submodule_search_locations or []) if spec else []:
            for f in sorted(Path(folder).glob("*.py")):
                digest.update(f"{name}/{f.name}".encode() + b"\0" + f.read_bytes() + b"\0")
    return f"{package_version()}+{digest.hexdigest()[:8]}"


def add_version_arg(p: Any, prog: str) -> None:
    """--version on an argparse parser: the command and this install's version."""
    p.add_argument("--version", action="version", version=f"{prog} {package_version()}")


def quiet_grpc() -> None:
    """gRPC's core logs errors only, unless GRPC_VERBOSITY says otherwise; before gRPC is imported."""
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")


def _interrupted(prog: str, e: KeyboardInterrupt) -> int:
    print(f"{prog}: error: interrupted", file=sys.stderr, flush=True)
    return interrupted_code(e)


@contextlib.contextmanager
def _extra(prog: str, extra: str) -> Iterator[None]:
    """A module of ``extra`` missing, as the command loads or runs: one line saying what to install (adain-server
    and adain-train ended in a numpy traceback where only the thin client was installed, adain-web in uvicorn's)."""
    try:
        yield
    except ModuleNotFoundError as e:
        if not e.name or e.name.split(".")[0] == "adain":
            raise
        print(f"{prog}: error: {e.name} is not installed: {prog} needs the '{extra}' extra ({install_hint(extra)})",
              file=sys.stderr, flush=True)
        raise SystemExit(1) from None


def _run(prog: str, load: Callable[[], Callable[[], int]], *, signal_wins: bool = False) -> int:
    """The command's main, loaded; Ctrl-C (SIGTERM for the CLI) before main's own handlers take it (its imports,
    its parser's: a traceback from inside importlib.metadata in 6 of 40 tries) is one line too, and so is the
    import error a signal leaves where it interrupts a C module's start."""
    _signalled.clear()
    try:
        code = load()()
    except KeyboardInterrupt as e:
        return _interrupted(prog, e)
    except (SystemError, ImportError):
        if not _signalled:
            raise
        return _lost(prog)
    # ``signal_wins`` (adain-stylize: adain-web stops gracefully on Ctrl-C, and exits 0): a handler's exception raised
    # inside a __del__ or a callback is printed and dropped by Python ("Exception ignored in ..."), and the command
    # ran on to its end and exited 0 after a SIGTERM (seen once by a tour); it exits as the signal says all the same.
    return _lost(prog) if signal_wins and code == 0 and _signalled else code


def _lost(prog: str) -> int:
    """The exit of a command whose signal (the last taken) surfaced as something else, or not at all."""
    last = _signalled[-1]
    return _interrupted(prog, KeyboardInterrupt() if last == signal.SIGINT else Terminated(last))


def on_signals(handlers: dict[int, Any]) -> dict[int, Any]:
    """Install ``handlers`` (signal -> handler) where the signal is not ignored; returns the ones they replaced,
    for a later call to put back (one installed outside Python, None, put back as the default). An ignored one
    stays so: ``nohup adain-stylize ...`` (SIGHUP ignored) was ended when its terminal closed, and a script's
    background job (SIGINT ignored) by Ctrl-C."""
    return {signum: signal.signal(signum, signal.SIG_DFL if handler is None else handler)
            for signum, handler in handlers.items() if signal.getsignal(signum) is not signal.SIG_IGN}


def _cli_main() -> Callable[[], int]:
    from adain.client.cli import main

    return main


def _web_main() -> Callable[[], int]:
    from adain.web.__main__ import main

    return main


def stylize() -> int:
    quiet_grpc()
    # from the start: main keeps them while it runs (it was killed, no line; a closed terminal left a .part file)
    previous = on_signals({signal.SIGTERM: on_sigterm, signal.SIGHUP: on_sigterm, signal.SIGINT: _on_sigint})
    try:
        return _run("adain-stylize", _cli_main, signal_wins=True)
    finally:
        on_signals(previous)


def server() -> int:
    """``adain-server``: its own main answers Ctrl-C while the model loads; this, while its modules load."""
    with _extra("adain-server", "server"):
        try:
            from adain.server.__main__ import main
        except KeyboardInterrupt:
            return 130
        return main()


def web() -> int:
    """``adain-web``: SIGTERM keeps its default until main knows whether it runs a --local server (uvicorn stops
    on it gracefully otherwise)."""
    quiet_grpc()
    previous = on_signals({signal.SIGINT: _on_sigint})
    try:
        with _extra("adain-web", "web"):
            return _run("adain-web", _web_main)
    finally:
        on_signals(previous)


def train() -> None:
    """``adain-train``."""
    with _extra("adain-train", "train"):
        from adain.train.__main__ import main

        main()
