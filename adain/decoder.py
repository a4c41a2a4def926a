"""The decoder (relu4_1 -> RGB) and its weights file.

The architecture mirrors the encoder as in the AdaIN paper: 3x3 convs with reflection padding, ReLU
after all but the last, nearest-neighbour x2 upsampling, no normalisation layers. Version 1 takes the
relu4_1 target alone; version 2 also takes the alpha it was mixed with, as one more input channel (a map,
so that it may vary over the image), so one decoder can both paint (alpha 1) and reconstruct (alpha 0)
without guessing which is asked from the features' statistics. A version-1 decoder becomes a version-2
one with the same outputs by adding that channel with zero weights (:meth:`Decoder.with_alpha_input`).
Version 3 adds the detail path (``adain.detail``): it also sees the content image, so alpha 0 can give
back the photo; its branches vanish at alpha 1, where it is the version-2 decoder it was grown from
(:meth:`Decoder.with_detail`).

A weights file is ``torch.save`` of a plain dict, loadable with ``weights_only=True``::

    {"format": "adain-decoder", "arch_version": 1, 2 or 3, "meta": {...}, "state_dict": {...}}

``meta`` is a small record (data, steps, crop, batch, final losses...) that ``GetServerInfo`` shows.
"""

from __future__ import annotations

import copy
import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from adain import stopping
from adain.detail import DetailPath
from adain.errors import NoDecoderError
from adain.files import check_writable, saved_whole

FORMAT = "adain-decoder"
ARCH_VERSIONS = (1, 2, 3)  # 2: the alpha map is an input too; 3: and the content image (the detail path)
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


def _convs(decoder: Decoder) -> list[nn.Conv2d]:
    """A decoder's convolutions, typed (a ModuleList's items are plain Modules to a type checker)."""
    return cast("list[nn.Conv2d]", list(decoder.convs))


def alpha_channel(alpha: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """An alpha-input decoder's extra channel for targets ``x`` (N x C x h x w): ``alpha`` as a number,
    one per sample (N) or a map (N x 1 x h x w), made an N x 1 x h x w map of x's dtype. A number is filled in
    on x's device (no host-to-device copy: a CUDA graph can capture it)."""
    if isinstance(alpha, (int, float)):
        return x.new_full((x.shape[0], 1, *x.shape[2:]), float(alpha))
    a = torch.as_tensor(alpha, dtype=x.dtype, device=x.device)
    if a.dim() <= 1:
        a = a.reshape(-1, 1, 1, 1)
    return a.expand(x.shape[0], 1, *x.shape[2:]).to(x.dtype)


class Decoder(nn.Module):
    """relu4_1 features (N x 512 x H/8 x W/8) -> RGB image (N x 3 x H x W), roughly in [0, 1]; with
    ``alpha_input`` (architecture version 2) also the alpha each position was mixed with; with ``detail``
    (version 3, needs ``alpha_input``) also the content image, through the detail path."""

    def __init__(self, alpha_input: bool = False, detail: bool = False) -> None:
        super().__init__()
        if detail and not alpha_input:
            raise ValueError("the detail path needs the alpha input (architecture version 3 builds on 2)")
        self.alpha_input = alpha_input
        extra = 1 if alpha_input else 0
        self.convs = nn.ModuleList(nn.Conv2d(cin + (extra if i == 0 else 0), cout, 3)
                                   for i, (cin, cout, _) in enumerate(_CONVS))
        self.detail = DetailPath() if detail else None

    @property
    def arch_version(self) -> int:
        return 3 if self.detail is not None else 2 if self.alpha_input else 1

    def forward(
        self, x: torch.Tensor, alpha: torch.Tensor | float = 1.0, image: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``alpha``: a number, one per sample (N), or a map (N x 1 x H/8 x W/8); version 1 ignores it.
        ``image``: the content (N x 3 x H x W, padded as the encoder padded it), which version 3 needs."""
        x, fixes = _inputs(self, x, alpha, image)
        last = len(self.convs) - 1
        for i, (conv, (_, _, up)) in enumerate(zip(self.convs, _CONVS)):
            stopping.between_layers()
            x = conv(F.pad(x, (1, 1, 1, 1), mode="reflect"))
            if i in fixes:
                x = x + fixes[i]
            if i < last:
                x = F.relu(x)
            if up:
                x = F.interpolate(x, scale_factor=2, mode="nearest")
        return x

    def with_alpha_input(self) -> Decoder:
        """A version-2 copy with the same outputs: the alpha channel starts with zero weights."""
        if self.alpha_input:
            return self
        new = Decoder(alpha_input=True).to(_convs(self)[0].weight.device)
        state = self.state_dict()
        w = state["convs.0.weight"]
        state["convs.0.weight"] = torch.cat([w, torch.zeros_like(w[:, :1])], dim=1)
        new.load_state_dict(state)
        return new

    def without_alpha_input(self) -> Decoder:
        """The version-1 copy of a version 2 whose alpha channel is unused (zero weights, as ``with_alpha_input``
        and the shipped file leave it): the same outputs at every alpha. Training at alpha 1 alone would
        otherwise teach that channel a bias that moves every other alpha."""
        if not self.alpha_input:
            return self
        if self.detail is not None:
            raise ValueError("drop the detail path first (without_detail)")
        w = _convs(self)[0].weight
        if bool(w[:, -1].any()):
            raise ValueError("its alpha channel has learnt weights: dropping them would change its outputs")
        new = Decoder().to(w.device)
        state = self.state_dict()
        state["convs.0.weight"] = w[:, :-1].detach().clone()
        new.load_state_dict(state)
        return new

    def with_detail(self) -> Decoder:
        """A version-3 copy with the same outputs: the detail path starts at zero (a version 1 gains the
        alpha channel first)."""
        if self.detail is not None:
            return self
        base = self.with_alpha_input()
        new = Decoder(alpha_input=True, detail=True).to(_convs(base)[0].weight.device)
        new.convs.load_state_dict(base.convs.state_dict())
        return new

    def without_detail(self) -> Decoder:
        """The version-2 decoder a version 3 grew on (its outputs at alpha 1; its convolutions to train)."""
        if self.detail is None:
            return self
        new = Decoder(alpha_input=True).to(_convs(self)[0].weight.device)
        new.convs.load_state_dict(self.convs.state_dict())
        return new


def require_image(decoder: Decoder | FoldedDecoder, image: torch.Tensor | None) -> None:
    """A version 3 without the content image is an error, not a silent alpha-1 answer."""
    if decoder.detail is not None and image is None:
        raise ValueError("a version-3 decoder (detail path) needs the content image")


def _inputs(decoder: Decoder | FoldedDecoder, x: torch.Tensor, alpha: torch.Tensor | float,
            image: torch.Tensor | None) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """The first conv's input (the targets, with the alpha map where the decoder takes it) and the detail
    path's corrections per conv index: what the decoder and its folded form both start from."""
    a = alpha_channel(alpha, x) if decoder.alpha_input else None
    fixes = _detail(decoder, a, image, alpha == 1 if isinstance(alpha, (int, float)) else None)
    return (x if a is None else torch.cat([x, a], dim=1)), fixes


def _detail(decoder: Decoder | FoldedDecoder, alpha: torch.Tensor | None, image: torch.Tensor | None,
            all_one: bool | None = None) -> dict[int, torch.Tensor]:
    """The detail path's corrections per conv index ({} without one) for the decoder's alpha map. Where every
    alpha is 1 they are exactly zero, so eager calls skip them (3-4% of a 512-px stylization); a traced or
    compiled graph keeps them (adain.compiled; the exported runtimes run a second graph without them at alpha
    1). ``all_one``: said by the caller where alpha was a number, so the map is not read back from the device
    (a sync per call, and an error inside a CUDA graph's capture)."""
    require_image(decoder, image)
    if decoder.detail is None or alpha is None:
        return {}
    graph = torch.jit.is_tracing() or torch.compiler.is_compiling()
    if not graph and (all_one if all_one is not None else every_alpha_one(alpha)):
        return {}
    return decoder.detail(image, alpha)


def every_alpha_one(alpha: torch.Tensor | float) -> bool:
    """Whether every alpha is 1: a number, or a map (read back: on a GPU, a sync)."""
    return alpha == 1 if isinstance(alpha, (int, float)) else bool((alpha == 1).all())


def save_decoder(decoder: Decoder, path: str | Path, meta: dict[str, Any], half: bool = True) -> None:
    """Write the product's decoder file; fp16 by default (inference needs no more, and it is half the size)."""
    dtype = torch.float16 if half else torch.float32
    state = {k: v.detach().to("cpu", dtype) for k, v in decoder.state_dict().items()}
    record = {"format": FORMAT, "arch_version": decoder.arch_version, "meta": dict(meta), "state_dict": state}
    path = Path(path)
    check_writable(path)  # (a file on the way was "File exists", from the mkdir)
    path.parent.mkdir(parents=True, exist_ok=True)
    saved_whole(lambda tmp: torch.save(record, tmp), path)  # whole or not at all: a run killed mid-write left half


def _load_failure(data: bytes, error: Exception) -> str:
    """Why torch.load refused a file, in one line (and without torch's advice to load it unsafely)."""
    if not data:
        return "the file is empty"
    if not data.startswith(b"PK\x03\x04") and data[:1] != b"\x80":  # a zip archive, or an old-style pickle
        return "not a file torch.save wrote"
    if "weights only load failed" in str(error).lower():
        return "it holds objects other than tensors and plain values (decoder files hold only those)"
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:200]


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
        raise NoDecoderError(f"{path} is not a readable decoder file: {_load_failure(data, e)}") from e
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise NoDecoderError(f"{path} is not an adain decoder file (no '{FORMAT}' format tag)")
    version = record.get("arch_version")
    if version not in ARCH_VERSIONS:
        raise NoDecoderError(
            f"{path} has decoder architecture version {version}, this library reads "
            f"{', '.join(map(str, ARCH_VERSIONS))}"
        )
    decoder = Decoder(alpha_input=version >= 2, detail=version == 3)
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


class FoldedDecoder(nn.Module):
    """The same function as a :class:`Decoder`, cheaper: each nearest x2 upsampling followed by a 3x3
    convolution is computed at the low resolution, as one stride-2 transposed convolution.

    With reflection padding after a nearest x2 upsampling, an output pixel's 3x3 window covers only 2x2
    input pixels, and the padding equals replicating the input's border: so each output phase (even or odd
    row and column) is a 2x2 convolution of the replicate-padded input with the 3x3 kernel's taps summed onto
    2x2. That is 16 multiply-adds per input pixel where the upsampled 3x3 convolution spends 36: 2.25x fewer
    for three of the nine convolutions, a quarter of the decoder's work. The four phases' 2x2 kernels are the
    four interleaved parts of one 4x4 kernel of a stride-2 transposed convolution (:func:`_transposed_kernel`),
    which writes each phase in its place: no interleave or crop after it. Outputs equal the Decoder's up to
    float rounding (the summed taps). Inference only; training keeps the plain Decoder.

    (The phases were first four 2x2 convolutions' outputs interleaved by a depth-to-space and a one-pixel crop:
    OpenVINO ran that crop as a reference kernel, and the 512-px decode took 8.6% longer (best of 40 interleaved
    runs, 514 against 470 ms, 2 threads, AVX2); ONNX Runtime runs both alike.)
    """

    def __init__(self, decoder: Decoder) -> None:
        super().__init__()
        self.alpha_input = decoder.alpha_input
        self.detail = copy.deepcopy(decoder.detail)
        self.convs = nn.ModuleList()
        self.folded: list[bool] = []
        after_up = False
        for conv, (_, _, up) in zip(_convs(decoder), _CONVS):
            layer: nn.Module
            if after_up:
                assert conv.bias is not None  # (a Conv2d's bias=True default, as the Decoder makes them)
                w = conv.weight.detach()
                up_conv = nn.ConvTranspose2d(w.shape[1], w.shape[0], 4, stride=2, padding=3)
                up_conv.weight.data.copy_(_transposed_kernel(w))
                assert up_conv.bias is not None
                up_conv.bias.data.copy_(conv.bias.detach())
                layer = up_conv
            else:
                layer = copy.deepcopy(conv)
            self.convs.append(layer)
            self.folded.append(after_up)
            after_up = up
        self.requires_grad_(False)
        self.eval()

    def forward(
        self, x: torch.Tensor, alpha: torch.Tensor | float = 1.0, image: torch.Tensor | None = None
    ) -> torch.Tensor:
        x, fixes = _inputs(self, x, alpha, image)  # the detail path's corrections come after the folded convs
        last = len(self.convs) - 1
        for i, (conv, folded) in enumerate(zip(self.convs, self.folded)):
            stopping.between_layers()
            pad = "replicate" if folded else "reflect"  # (folded: the upsampled input's reflection, at low resolution)
            x = conv(F.pad(x, (1, 1, 1, 1), mode=pad))  # folded: N x C x 2h x 2w, every phase in its place
            if i in fixes:
                x = x + fixes[i]
            if i < last:
                x = F.relu(x)
        return x


def _transposed_kernel(w: torch.Tensor) -> torch.Tensor:
    """A 3x3 kernel (out x in x 3 x 3) applied after nearest x2 upsampling and reflection padding, as the
    in x out x 4 x 4 kernel of a stride-2, padding-3 transposed convolution of the replicate-padded
    low-resolution input xp (xp[i] = x[i - 1], clamped). Output row o takes xp[i] with tap o + 3 - 2i:
    even rows 2k see xp[k] with tap 3 and xp[k + 1] with tap 1, i.e. (w0, w1 + w2); odd rows 2k + 1 see
    xp[k + 1] with tap 2 and xp[k + 2] with tap 0, i.e. (w0 + w1, w2). Along each axis the taps are therefore
    (w2, w1 + w2, w0 + w1, w0)."""

    def fold(k: torch.Tensor, dim: int) -> torch.Tensor:
        t0, t1, t2 = k.unbind(dim)
        return torch.stack((t2, t1 + t2, t0 + t1, t0), dim)

    return fold(fold(w, 2), 3).transpose(0, 1).contiguous()
