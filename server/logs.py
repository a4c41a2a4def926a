"""The server's logs: a plain line for a person at a terminal, or one JSON object a line for a log pipeline
(``--log-format json``: Loki, Elasticsearch or Cloud Logging then read a call's fields without a parser).

A call's log line carries its fields twice over: in the text, as ``key=value`` words, and on the record, as
``fields``, which the JSON form writes as its own keys (numbers as numbers).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from datetime import datetime, timezone
from typing import Any

from adain.errors import one_line

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update(getattr(record, "fields", {}))
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    """TEXT_FORMAT, each event on one line: the message's unprintable characters escaped (a style file named with a
    newline in --styles-dir wrote its warning as two lines, the second anything its name said). Tracebacks keep
    their lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        record.message = one_line(record.message)
        return super().formatMessage(record)


_json = False  # whether setup() chose JSON: start-up errors follow


def setup(level: str, fmt: str = "text") -> None:
    """Log to stderr at ``level`` in ``fmt``: "text" or "json"."""
    global _json
    _json = fmt == "json"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)


# A value written bare: no space, '=', quote or backslash, nothing unprintable (what a logfmt parser splits on)
_BARE = re.compile(r"[^\s=\"'\\]+")


def logfmt_value(value: Any) -> str:
    """A value as a logfmt word: bare where it can be, else in double quotes with quotes, backslashes and control
    characters escaped. A front end's end user ``a b code=OK`` was written as ``caller=web/a b code=OK``: a second,
    forged code field for whatever reads the line."""
    text = str(value)
    if _BARE.fullmatch(text) and text.isprintable():
        return text
    return json.dumps(text, ensure_ascii=False)


def log_fields(logger: logging.Logger, level: int, **fields: Any) -> None:
    """One line of ``key=value`` words (logfmt: a value with spaces, '=' or quotes quoted), with the fields on
    the record; None values are left out."""
    fields = {k: v for k, v in fields.items() if v is not None}
    logger.log(level, " ".join(f"{k}={logfmt_value(v)}" for k, v in fields.items()), extra={"fields": fields})


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
