"""The one exception type callers catch for bad input.

Every rejected image or argument raises :class:`InvalidInputError` (a ``ValueError``).
``field`` names what was wrong (``"content"``, ``"styles[1].weight"``, ``"alpha"``...), so that
the server can turn it into an INVALID_ARGUMENT status that names the field and the limit.
"""

from __future__ import annotations


class InvalidInputError(ValueError):
    """An image or argument the library will not process; the message says why."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.description = message


class NoDecoderError(RuntimeError):
    """No trained decoder is installed (or the file given is not one); never fall back to random."""
