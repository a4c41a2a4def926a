"""The console commands ``adain-stylize``, ``adain-web`` and ``adain-server``, started before gRPC is imported:
its core reads GRPC_VERBOSITY once, as it loads, and logs at INFO in a format of its own (a failed TLS handshake
printed a line before the CLI's one-line error, and into adain-web's log). Its errors still show; a
GRPC_VERBOSITY set by the user wins. (``adain-server`` calls :func:`quiet_grpc` in its main, which imports gRPC
late.) Ctrl-C while they load (their first tenth of a second) is exit 130 (the CLI's and the page's with one
line), as later, not a traceback from inside an import; ``import adain`` itself imports nothing (its names
load on first use), so the window before these handlers is the interpreter's own start."""

from __future__ import annotations

import os
import sys
from typing import Any


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


def _interrupted(prog: str) -> int:
    print(f"{prog}: error: interrupted", file=sys.stderr, flush=True)
    return 130


def stylize() -> int:
    quiet_grpc()
    try:
        from adain.client.cli import main
    except KeyboardInterrupt:
        return _interrupted("adain-stylize")
    return main()


def server() -> int:
    """``adain-server``: its own main answers Ctrl-C while the model loads; this, while its modules load."""
    try:
        from adain.server.__main__ import main
    except KeyboardInterrupt:
        return 130
    return main()


def web() -> int:
    quiet_grpc()
    try:
        from adain.web.__main__ import main
    except KeyboardInterrupt:
        return _interrupted("adain-web")
    return main()
