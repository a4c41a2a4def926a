"""Arbitrary style transfer with AdaIN: the model library.

``import adain`` stays light (no torch) so that the thin client, ``adain.client``, can live in the
same namespace; the model classes load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from adain.errors import InvalidInputError, NoDecoderError

__all__ = ["InvalidInputError", "NoDecoderError", "Stylizer", "Job"]

if TYPE_CHECKING:
    from adain.stylizer import Job, Stylizer


def __getattr__(name: str) -> Any:
    if name in ("Stylizer", "Job"):
        from adain import stylizer

        return getattr(stylizer, name)
    raise AttributeError(f"module 'adain' has no attribute {name!r}")
