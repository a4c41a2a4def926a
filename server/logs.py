"""The server's logs: the formats and fields of :mod:`adain.logs` (the page's too), and the server's own lines at
start: the "listening on" line and a start-up error, each a JSON object where the logs are JSON.
"""

from __future__ import annotations

import logging
from typing import Any

from adain import logs as shared
from adain.logs import TEXT_FORMAT, JsonFormatter, TextFormatter, log_fields, logfmt_value, setup

__all__ = ["TEXT_FORMAT", "JsonFormatter", "TextFormatter", "announce", "fatal", "log_fields", "logfmt_value", "setup"]

log = logging.getLogger("adain.server")


def announce(message: str, out: Any) -> None:
    """The "listening on" line, on ``out`` (stdout: scripts and tests read the port from it; adain.logs)."""
    shared.announce(log, message, out)


def fatal(message: str) -> None:
    """A start-up error: one line on stderr naming its cause; a JSON object where the logs are JSON (adain.logs)."""
    shared.say(log, "adain-server", "error", message)
