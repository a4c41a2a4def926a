"""The decoder (relu4_1 -> RGB) and its weights file.

The architecture mirrors the encoder as in the AdaIN paper: 3x3 convs with reflection padding, ReLU
after all but the last, nearest-neighbour x2 upsampling, no normalisation layers.

A weights file is ``torch.save`` of a plain dict, loadable with ``weights_only=True``::

    {"format": "adain-decoder", "arch_version": 1, "meta": {...}, "state_dict": {...}}

``meta`` is a small record (data, steps, crop, batch, final losses...) that ``GetServerInfo`` shows.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from adain.errors import NoDecoderError

FORMAT = "adain-decoder"
ARCH_VERSION = 1
DEFAULT_DECODER = Path(__file__).with_name("assets") / "decoder.pt"

# (in, out, upsample after this conv's ReLU)
_CONVS: tuple[tuple[int, int, bool], ...] = (
    (512, 256, True),
    (256, 256, False),
    (256, 256, False),
    (256, 256, False),
    (256, 128, True),
    (128, 128, False),
    (128, 64, True),
    (64, 64, False),
    (64, 3, False),
)


@dataclass(frozen=True)
class DecoderFile:
    """Where a loaded decoder came from: its path, metadata, and a short version of its weights (the
    metadata's ``version`` when it has one, else the sha256 prefix of the bytes that were loaded)."""

    path: Path
    version: str
    meta: dict[str, Any] = field(default_factory=dict)


class Decoder(nn.Module):
    """relu4_1 features (N x 512 x H/8 x W/8) -> RGB image (N x 3 x H x W), roughly in [0, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(cin, cout, 3) for cin, cout, _ in _CONVS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.convs) - 1
        for i, (conv, (_, _, up)) in enumerate(zip(self.convs, _CONVS)):
            x = conv(F.pad(x, (1, 1, 1, 1), mode="reflect"))
            if i < last:
                x = F.relu(x)
            if up:
                x = F.interpolate(x, scale_factor=2, mode="nearest")
        return x


def save_decoder(decoder: Decoder, path: str | Path, meta: dict[str, Any], half: bool = True) -> None:
    """Write the product's decoder file; fp16 by default (inference needs no more, and it is half the size)."""
    dtype = torch.float16 if half else torch.float32
    state = {k: v.detach().to("cpu", dtype) for k, v in decoder.state_dict().items()}
    record = {"format": FORMAT, "arch_version": ARCH_VERSION, "meta": dict(meta), "state_dict": state}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save(record, path)


def load_decoder(path: str | Path | None = None) -> tuple[Decoder, DecoderFile]:
    """Load a decoder file (the shipped one by default) in float32; returns (decoder, its DecoderFile).

    Raises NoDecoderError when the file is missing or is not a decoder of this architecture.
    """
    path = Path(path) if path is not None else DEFAULT_DECODER
    if not path.is_file():
        if path == DEFAULT_DECODER:
            raise NoDecoderError(
                f"no trained decoder is installed ({path} is missing); train one with adain-train "
                "and export it, or pass the path of a decoder file"
            )
        raise NoDecoderError(f"decoder file not found: {path}")
    data = path.read_bytes()  # read once: loaded and hashed from the same bytes
    try:
        record = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:
        raise NoDecoderError(f"{path} is not a readable decoder file: {e}") from e
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise NoDecoderError(f"{path} is not an adain decoder file (no '{FORMAT}' format tag)")
    if record.get("arch_version") != ARCH_VERSION:
        raise NoDecoderError(
            f"{path} has decoder architecture version {record.get('arch_version')}, this library needs {ARCH_VERSION}"
        )
    decoder = Decoder()
    expected = decoder.state_dict()
    got = record.get("state_dict", {})
    if set(got) != set(expected):
        raise NoDecoderError(f"{path}: tensor names differ from the decoder's ({sorted(set(got) ^ set(expected))[:4]})")
    for name, tensor in expected.items():
        if tuple(got[name].shape) != tuple(tensor.shape):
            raise NoDecoderError(
                f"{path}: {name} has shape {tuple(got[name].shape)}, the decoder needs {tuple(tensor.shape)}"
            )
    decoder.load_state_dict({k: v.float() for k, v in got.items()})
    decoder.eval().requires_grad_(False)
    meta = dict(record.get("meta", {}))
    version = next((str(meta[k]) for k in ("version", "weights_version") if meta.get(k)), "")
    return decoder, DecoderFile(path, version or f"sha256:{hashlib.sha256(data).hexdigest()[:16]}", meta)
