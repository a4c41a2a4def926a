"""The server's logs: the formats and fields of :mod:`adain.logs` (the page's too), and the server's own lines at
start: the "listening on" line and a start-up error, each a JSON object where the logs are JSON.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from adain import logs as shared
from adain.logs import TEXT_FORMAT, JsonFormatter, TextFormatter, log_fields, logfmt_value

__all__ = ["TEXT_FORMAT", "JsonFormatter", "TextFormatter", "announce", "fatal", "log_fields", "logfmt_value", "setup"]

_json = False  # whether setup() chose JSON: start-up errors follow


def setup(level: str, fmt: str = "text") -> None:
    """Log to stderr at ``level`` in ``fmt``: "text" or "json" (adain.logs)."""
    global _json
    _json = fmt == "json"
    shared.setup(level, fmt)


def announce(message: str, out: Any) -> None:
    """The "listening on" line, on ``out`` (stdout: scripts and tests read the port from it); a JSON object
    where the logs are JSON, so that a pipeline reading stdout too gets one JSON object a line."""
    if _json:
        record = logging.LogRecord("adain.server", logging.INFO, __file__, 0, message, None, None)
        message = JsonFormatter().format(record)
    try:
        print(message, file=out, flush=True)
    except (OSError, ValueError) as e:  # stdout on a full disk, closed, or a pipe nobody reads: the server serves
        logging.getLogger("adain.server").warning(  # on (it exited 1 with the model loaded and nothing said)
            "%s (not on standard output: %s)", message, getattr(e, "strerror", None) or e)
        if out is sys.stdout:  # what it holds unwritten would fail the exit's flush too (exit status 120)
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the process's life


def fatal(message: str) -> None:
    """A start-up error: one line on stderr naming its cause; a JSON object where the logs are JSON (a log
    pipeline read the plain line as unparsed text, without its level)."""
    if _json:
        logging.getLogger("adain.server").error("adain-server: error: %s", message)
    else:
        print(f"adain-server: error: {message}", file=sys.stderr, flush=True)
