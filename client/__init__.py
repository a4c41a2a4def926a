"""Thin Python client of the AdaIN style-transfer gRPC service; imports no torch.

    from adain.client import StyleTransferClient, StyleRef

    with StyleTransferClient("127.0.0.1:50051") as client:
        result = client.stylize("photo.jpg", ["starry.jpg", ("mosaic.jpg", 0.3)], alpha=0.8)
        result.save("out.png")
        sid = client.register_style("starry.jpg")           # send a style once...
        client.stylize("photo2.jpg", StyleRef(sid))          # ...then refer to it (or "id:" + sid)
        client.stylize("photo.jpg", "id:mosaic")             # a style of the server's library (list_styles)

For asyncio services, ``adain.client.aio.AsyncStyleTransferClient`` has the same calls as coroutines.

Every failure raises :class:`StyleTransferError` (``.code``: a grpc.StatusCode, ``.details``: the
server's message). The command line tool is ``adain-stylize`` (:mod:`adain.client.cli`).
"""

from ._client import (
    DEFAULT_TARGET,
    ImageInput,
    LibraryPreset,
    LibraryStyle,
    Preset,
    RefineProgress,
    StyleRef,
    Styles,
    StyleTransferClient,
    StyleTransferError,
    StylizeOptions,
    StylizeResult,
    Timings,
    VideoFrameResult,
    VideoStreamOptions,
)

__all__ = [
    "DEFAULT_TARGET",
    "ImageInput",
    "LibraryPreset",
    "LibraryStyle",
    "Preset",
    "RefineProgress",
    "StyleRef",
    "Styles",
    "StyleTransferClient",
    "StyleTransferError",
    "StylizeOptions",
    "StylizeResult",
    "Timings",
    "VideoFrameResult",
    "VideoStreamOptions",
]
