"""The checks adain-web makes before anything reaches the server (the form, the live camera's messages):
cheap ones, naming the field as the proto does; the server checks the rest."""

from __future__ import annotations

import io
import math
import re
from typing import Any

from PIL import Image

from adain.client import StyleRef
from adain.photo import is_heif
from adain.wire import COLOR_MODES, INPUT_FORMATS, INPUT_NAMES, TEMPORAL_MODES, Limits

STYLE_NAME_RE = re.compile(r"id:([A-Za-z0-9][A-Za-z0-9._-]{0,63})")


def error_json(code: str, message: str, violations: list[tuple[str, str]] | tuple = ()) -> dict[str, Any]:
    """Every error this front answers, over HTTP or a WebSocket: {"error": {code, message, violations}}."""
    return {"error": {"code": code, "message": message,
                      "violations": [{"field": f, "description": d} for f, d in violations]}}


class BadInput(Exception):
    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"{field}: {description}")
        self.field, self.description = field, description


def image(data: bytes, field: str, limits: Limits) -> bytes:
    """``data``, once its header decodes as an image of a known format within the pixel limit (the name and
    the declared type are not trusted; the backend decodes it fully)."""
    if not data:
        raise BadInput(field, "the file is empty")
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt, (w, h) = img.format, img.size
    except Exception:
        if is_heif(data[:12]):  # a phone's photo, and no pillow-heif here: the server reads it, or says why not
            return data
        raise BadInput(field, f"not an image this service reads ({INPUT_NAMES})") from None
    if fmt not in INPUT_FORMATS:
        raise BadInput(field, f"{fmt} images are not read ({INPUT_NAMES})")
    if w * h > limits.max_pixels:
        raise BadInput(field, f"{w} x {h} is over the limit of max_pixels={limits.max_pixels}")
    return data


def style_name(text: Any, field: str) -> StyleRef:
    """"id:NAME", a style of the server's library (the server says whether it has that name)."""
    found = STYLE_NAME_RE.fullmatch(str(text))
    if found is None:
        raise BadInput(field, f"expected an image file or id:NAME (a style of the server's library), "
                       f"got {str(text)[:80]!r}")
    return StyleRef(found.group(1))


def number(text: Any, field: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise BadInput(field, f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise BadInput(field, f"must be a finite number, got {text!r}")
    return value


def whole(text: Any, field: str, least: int) -> int:
    value = number(text, field)
    if value != int(value) or value < least:
        raise BadInput(field, f"must be a whole number >= {least}, got {text!r}")
    return int(value)


def style_count(count: int, limits: Limits, what: str) -> None:
    """At least one style and at most max_styles; ``what`` says what a style may be, where none came."""
    if not count:
        raise BadInput("styles", f"at least 1 style ({what}) is required")
    if count > limits.max_styles:
        raise BadInput("styles", f"{count} styles, over the limit of max_styles={limits.max_styles}")


def weights(values: list[Any], styles: int) -> list[float]:
    if len(values) != styles:
        raise BadInput("weights", f"{len(values)} weights for {styles} styles (one per style)")
    return [number(w, f"styles[{i}].weight") for i, w in enumerate(values)]


def color(value: Any) -> str | None:
    """A preserve_color ("none" or empty: None)."""
    text = value or "none"
    if text not in ("none", *COLOR_MODES):
        raise BadInput("preserve_color", f"must be one of none, {', '.join(COLOR_MODES)}; got {text!r}")
    return None if text == "none" else text


def temporal(value: Any) -> str | None:
    """A temporal mode (empty: None, the server's default)."""
    if value and value not in TEMPORAL_MODES:
        raise BadInput("temporal", f"must be one of {', '.join(TEMPORAL_MODES)}; got {value!r}")
    return value or None
