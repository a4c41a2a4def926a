"""The AdaIN style-transfer gRPC server (``adain-server``, ``python -m adain.server``).

Importing this package is light (no torch, no grpc server); the pieces live in submodules:
``config`` (settings, flags and ADAIN_* variables), ``app`` (lifecycle), ``service`` (the servicer),
``batcher`` (dynamic batching on the render thread), ``registry`` (RegisterStyle's LRU) and ``metrics``.
"""

from .config import Settings, parse_settings

__all__ = ["Settings", "parse_settings"]
