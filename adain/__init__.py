"""Arbitrary style transfer with AdaIN: the model library.

``import adain`` stays light (no torch) so that the thin client, ``adain.client``, can live in the
same namespace; the Stylizer loads torch on first use. ``Job`` and ``Limits`` need no torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__all__ = ["InvalidInputError", "Job", "Limits", "NoDecoderError", "Progress", "StoppedError", "Stylizer", "Tiling"]

if TYPE_CHECKING:
    from adain.errors import InvalidInputError, NoDecoderError, StoppedError
    from adain.job import Job
    from adain.optimize import Progress
    from adain.stylizer import Stylizer
    from adain.tiling import Tiling
    from adain.wire import Limits

    __version__: str

# Each name is imported on first use: adain.job imports numpy and Pillow, adain.wire protobuf, adain.stylizer
# torch. Importing the package itself runs nothing, so a command's Ctrl-C as it starts reaches the command's own
# handler (adain.commands), not a traceback from inside this file's imports.
_HOMES = {"InvalidInputError": "adain.errors", "NoDecoderError": "adain.errors", "StoppedError": "adain.errors",
          "Job": "adain.job", "Limits": "adain.wire", "Progress": "adain.optimize", "Stylizer": "adain.stylizer",
          "Tiling": "adain.tiling"}


if not TYPE_CHECKING:  # (to a type checker a module __getattr__ makes every name valid: `from adain import Stylzer`)

    def __getattr__(name: str) -> Any:
        if name in _HOMES:
            return getattr(import_module(_HOMES[name]), name)
        if name == "__version__":  # this install's (the commands' --version)
            from adain.commands import package_version

            return package_version()
        raise AttributeError(f"module 'adain' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The public names (dir() listed only this file's imports, lazy names being no attributes yet)."""
    return sorted({*__all__, "__version__", *(k for k in globals() if k.startswith("__"))})  # (__file__, __path__)
