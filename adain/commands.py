"""The console commands ``adain-stylize``, ``adain-web`` and ``adain-server``, started before gRPC is imported:
its core reads GRPC_VERBOSITY once, as it loads, and logs at INFO in a format of its own (a failed TLS handshake
printed a line before the CLI's one-line error, and into adain-web's log). Its errors still show; a
GRPC_VERBOSITY set by the user wins. (``adain-server`` calls :func:`quiet_grpc` in its main, which imports gRPC
late.) Ctrl-C while they load (their first tenth of a second) is exit 130 (the CLI's and the page's with one
line), as later, not a traceback from inside an import, and so is the CLI's SIGTERM (exit 143); ``import adain``
itself imports nothing (its names load on first use), so the window before these handlers is the interpreter's
own start."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from typing import Any


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C is (a video's temporary file removed, pending images not started), but
    exiting 143."""


def on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated


def package_version() -> str:
    """This install's version (``--version``, GetServerInfo's server_version); "unknown" from a bare checkout."""
    from importlib import metadata

    try:
        return metadata.version("adain")
    except metadata.PackageNotFoundError:
        return "unknown"


def add_version_arg(p: Any, prog: str) -> None:
    """--version on an argparse parser: the command and this install's version."""
    p.add_argument("--version", action="version", version=f"{prog} {package_version()}")


def quiet_grpc() -> None:
    """gRPC's core logs errors only, unless GRPC_VERBOSITY says otherwise; before gRPC is imported."""
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")


def _interrupted(prog: str, e: KeyboardInterrupt) -> int:
    print(f"{prog}: error: interrupted", file=sys.stderr, flush=True)
    return 128 + signal.SIGTERM if isinstance(e, Terminated) else 130


def _run(prog: str, load: Callable[[], Callable[[], int]]) -> int:
    """The command's main, loaded; Ctrl-C (SIGTERM for the CLI) before main's own handlers take it (its imports,
    its parser's: a traceback from inside importlib.metadata in 6 of 40 tries) is one line too."""
    try:
        return load()()
    except KeyboardInterrupt as e:
        return _interrupted(prog, e)


def _cli_main() -> Callable[[], int]:
    from adain.client.cli import main

    return main


def _web_main() -> Callable[[], int]:
    from adain.web.__main__ import main

    return main


def stylize() -> int:
    quiet_grpc()
    signal.signal(signal.SIGTERM, on_sigterm)  # from the start: main keeps it while it runs (it was killed, no line)
    try:
        return _run("adain-stylize", _cli_main)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def server() -> int:
    """``adain-server``: its own main answers Ctrl-C while the model loads; this, while its modules load."""
    try:
        from adain.server.__main__ import main
    except KeyboardInterrupt:
        return 130
    return main()


def web() -> int:
    """``adain-web``: SIGTERM keeps its default until main knows whether it runs a --local server (uvicorn stops
    on it gracefully otherwise)."""
    quiet_grpc()
    return _run("adain-web", _web_main)
