"""The logs of the server and the page: a plain line for a person at a terminal, or one JSON object a line for a
log pipeline (``--log-format json``: Loki, Elasticsearch or Cloud Logging then read a line's fields without a
parser). No torch, no gRPC: adain-web logs as adain-server does.

A line's fields travel on the record: ``fields`` (:func:`log_fields`: also written into the text as ``key=value``
words) and the context's (:data:`CONTEXT`: the request a page's line was written for, whatever wrote it), which the
JSON form writes as its own keys (numbers as numbers) and the text form adds as words where its text lacks them.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import Any

from adain.errors import one_line

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FORMATS = ("text", "json")
# fields every line written in this context carries (adain-web: the request's id, set for each request; a warning
# from deep in a call said which call nowhere)
CONTEXT: ContextVar[dict[str, Any] | None] = ContextVar("adain_log_context", default=None)


def _context(record: logging.LogRecord) -> dict[str, Any]:
    return getattr(record, "context", None) or {}


class _WithContext(logging.Filter):
    """Puts the context's fields on each record as it is handled (the thread or task that logs it has them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "context"):
            record.context = CONTEXT.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update(_context(record))
        out.update(getattr(record, "fields", {}))
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    """TEXT_FORMAT, each event on one line: the message's unprintable characters escaped (a style file named with a
    newline in --styles-dir wrote its warning as two lines, the second anything its name said), the context's
    fields added as words where the message has none of them. Tracebacks keep their lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        record.message = one_line(record.message)
        extra = [f"{k}={logfmt_value(v)}" for k, v in _context(record).items() if f"{k}=" not in record.message]
        if extra:
            record.message = " ".join([record.message, *extra])
        return super().formatMessage(record)


def setup(level: str, fmt: str = "text", force: bool = True) -> None:
    """Log to stderr at ``level`` in ``fmt``: "text" or "json". ``force`` False leaves a root logger that has
    handlers already as it is (adain-web's: its main() called in a test's process replaced pytest's handler and
    left the root at INFO for every later test there)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter(TEXT_FORMAT))
    handler.addFilter(_WithContext())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=force)


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


def json_logs() -> bool:
    """Whether this process logs JSON: :func:`setup` put a JSON handler on the root logger (a process whose root
    kept handlers of its own, a test's, writes its start-up lines plainly)."""
    return any(isinstance(h.formatter, JsonFormatter) for h in logging.getLogger().handlers)


def say(logger: logging.Logger, prog: str, kind: str, message: str) -> None:
    """A command's start-up line, ``kind`` "error" or "warning": "PROG: KIND: ..." on stderr, or a JSON object at
    that level where the logs are JSON (a log pipeline read the plain line as unparsed text, without its level)."""
    if json_logs():
        logger.log(logging.ERROR if kind == "error" else logging.WARNING, "%s: %s: %s", prog, kind, message)
    else:
        # escaped as the log's lines are (a style file named with a newline and an escape sequence split the line
        # and turned the terminal red; an outside tour's)
        print(f"{prog}: {kind}: {one_line(message)}", file=sys.stderr, flush=True)


def announce(logger: logging.Logger, message: str, out: Any) -> None:
    """A command's "listening on" line, on ``out`` (the server's stdout: scripts and tests read the port from it);
    a JSON object where the logs are JSON, so that a pipeline reading it gets one JSON object a line."""
    if json_logs():
        record = logging.LogRecord(logger.name, logging.INFO, __file__, 0, message, None, None)
        message = JsonFormatter().format(record)
    try:
        print(message, file=out, flush=True)
    except (OSError, ValueError) as e:  # stdout on a full disk, closed, or a pipe nobody reads: the server serves
        logger.warning(  # on (it exited 1 with the model loaded and nothing said)
            "%s (not on standard output: %s)", message, getattr(e, "strerror", None) or e)
        if out is sys.stdout:  # what it holds unwritten would fail the exit's flush too (exit status 120)
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the process's life
