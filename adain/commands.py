"""The console commands ``adain-stylize`` and ``adain-web``, started before gRPC is imported: its core reads
GRPC_VERBOSITY once, as it loads, and logs at INFO in a format of its own (a failed TLS handshake printed a
line before the CLI's one-line error, and into adain-web's log). Its errors still show;
a GRPC_VERBOSITY set by the user wins. (``adain-server`` calls :func:`quiet_grpc` in its main, which imports
gRPC late.)"""

from __future__ import annotations

import os


def quiet_grpc() -> None:
    """gRPC's core logs errors only, unless GRPC_VERBOSITY says otherwise; before gRPC is imported."""
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")


def stylize() -> int:
    quiet_grpc()
    from adain.client.cli import main

    return main()


def web() -> int:
    quiet_grpc()
    from adain.web.__main__ import main

    return main()
