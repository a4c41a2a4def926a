"""What ``Stylizer.prepare`` hands to rendering, video and the optimisation method: a decoded job.

Its own module so that the modules built on the Stylizer's steps (``optimize``, ``video``) name it
without importing the Stylizer (no import circle).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from adain.job import CheckedJob

Stats = tuple[torch.Tensor, torch.Tensor]  # (mean, std) of relu4_1, each 1 x C x 1 x 1
Targets = list[tuple[torch.Tensor, torch.Tensor, float]]  # (mean, std, weight) of relu4_1 per style


@dataclass
class Prepared:
    """A decoded job, ready for ``Stylizer.render``."""

    # 1 x 3 x H x W in [0, 1] (grey for "luminance"). Its tensors stay on the host (on a GPU, pinned up to 1 MP):
    # a server prepares in many threads while one renders, and a copy to the GPU from a preparing thread waited
    # behind every kernel of the batch in flight; render copies each content once, from pinned memory, queued.
    content: torch.Tensor
    targets: Targets
    alpha: float
    # One map per style, 1 x K x H x W uint8 levels (``adain.regions``: 255 is all of the style): where each
    # style applies; None applies every style everywhere, blended by weight.
    regions: torch.Tensor | None = None
    region_alphas: tuple[float, ...] | None = None  # each region's strength (times ``alpha``)
    chroma_from: torch.Tensor | None = None  # the original RGB content, to keep its colours
    # "luminance" without regions: the output's light is moved to the content's mean (adain.colours.finish), by
    # ``light`` where it is given (a tiled render's, measured once on a smaller render of the whole), else by what
    # the output itself lacks
    keep_light: bool = False
    light: float | None = None
    # every style applied is grey (True), or with regions which styles are (by target): the output is made grey
    # where they stylize it (adain.colours)
    grey: bool | tuple[bool, ...] = False
    batch_key: tuple[int, int] = (0, 0)  # padded (H, W): equal keys share a batch
    # Replaces the content statistics of region k before normalisation (a video's running average);
    # called in render, in job order.
    smooth: Callable[[int, Stats], Stats] | None = None
    # Replaces the AdaIN target (styles mixed, before alpha) with one that carries the previous frame's
    # (a video's optical flow); called in render, in job order.
    propagate: Callable[[torch.Tensor], torch.Tensor] | None = None
    job: CheckedJob | None = None  # what it was prepared from (the optimisation method reads its options)

    @property
    def repeatable(self) -> bool:
        """Whether rendering it again gives the same image: a clip's frame does not (``smooth`` and ``propagate``
        move its stream's state on), so a server does not render it again after its batch failed."""
        return self.smooth is None and self.propagate is None
