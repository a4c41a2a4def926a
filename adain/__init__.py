"""Arbitrary style transfer with AdaIN: the model library.

``import adain`` stays light (no torch) so that the thin client, ``adain.client``, can live in the
same namespace; the Stylizer loads torch on first use. ``Job`` and ``Limits`` need no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from adain.errors import InvalidInputError, NoDecoderError
from adain.wire import Limits

__all__ = ["InvalidInputError", "Job", "Limits", "NoDecoderError", "Stylizer"]

if TYPE_CHECKING:
    from adain.job import Job
    from adain.stylizer import Stylizer


def __getattr__(name: str) -> Any:
    if name == "Stylizer":
        from adain.stylizer import Stylizer

        return Stylizer
    if name == "Job":  # adain.job imports numpy and Pillow (through adain.image): not for the thin client
        from adain.job import Job

        return Job
    raise AttributeError(f"module 'adain' has no attribute {name!r}")
