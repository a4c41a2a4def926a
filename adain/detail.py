"""The detail path: what lets one decoder give back the photo at alpha 0 and paint at alpha 1.

relu4_1 is an eighth of the image's resolution; a decoder given only that must guess the fine detail,
and a decoder trained to do both jobs traded one against the other in every run (docs/MODEL_CARD.md):
the best relu4_1-only reconstruction flattened near 20 dB. So a version-3 decoder also sees the content
image itself, through three small branches, one per resolution the decoder upsamples to (1/4, 1/2, 1):

    branch(image, alpha) = (1 - alpha) * W2 relu(W1 pool(image) + u * alpha)

(W1 a 3x3 convolution, W2 a 1x1 one, u a per-channel shift, pool an average over the level's factor),
added to the pre-activation of the decoder's first convolution at that resolution. The factor
(1 - alpha) is exact zero at alpha 1, so alpha 1 is the version-2 decoder it was grown from, bit for
bit; the shift u lets each branch learn how much detail an intermediate alpha keeps. The branches start
at zero (W2 = 0): a grown decoder begins with the outputs of the decoder it came from. They cost about
2% of a 512-px stylization's multiply-adds. Alpha may be a map (regions), like the decoder's own input;
each branch takes it upsampled bilinearly to its resolution.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

# decoder conv index (the first at each new resolution) -> (its output channels, image pixels per its pixel)
LEVELS: dict[int, tuple[int, int]] = {1: (256, 4), 5: (128, 2), 7: (64, 1)}
HIDDEN = 64


class Branch(nn.Module):
    """One resolution's branch: the content image pooled to it -> a correction of the decoder's features."""

    def __init__(self, channels: int, factor: int) -> None:
        super().__init__()
        self.factor = factor
        self.read = nn.Conv2d(3, HIDDEN, 3)
        self.shift = nn.Parameter(torch.zeros(1, HIDDEN, 1, 1))
        self.write = nn.Conv2d(HIDDEN, channels, 1)
        nn.init.zeros_(self.write.weight)
        assert self.write.bias is not None  # (a Conv2d's bias=True default)
        nn.init.zeros_(self.write.bias)

    def forward(self, image: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """``image``: N x 3 x H x W; ``alpha``: N x 1 x h x w at this level's resolution (H / factor)."""
        x = F.avg_pool2d(image, self.factor) if self.factor > 1 else image
        h = F.relu(self.read(F.pad(x, (1, 1, 1, 1), mode="reflect")) + self.shift * alpha)
        return (1 - alpha) * self.write(h)


class DetailPath(nn.Module):
    """The three branches, keyed by the decoder conv whose pre-activation each corrects."""

    def __init__(self) -> None:
        super().__init__()
        self.branches = nn.ModuleDict({str(i): Branch(c, f) for i, (c, f) in LEVELS.items()})

    def forward(self, image: torch.Tensor, alpha: torch.Tensor) -> dict[int, torch.Tensor]:
        """Corrections per decoder conv index for ``image`` (N x 3 x H x W, H and W multiples of 8) and the
        decoder's alpha map (N x 1 x H/8 x W/8)."""
        out = {}
        for i, branch in self.branches.items():
            factor = cast(Branch, branch).factor  # (a ModuleDict's items are plain Modules to a type checker)
            # Bilinear, not nearest: a soft region edge then fades the detail smoothly, not in 8-px blocks.
            a = F.interpolate(alpha, scale_factor=8 // factor, mode="bilinear", align_corners=False)
            out[int(i)] = branch(image, a)
        return out
