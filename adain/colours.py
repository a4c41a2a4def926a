"""The output's colours, the last step before encoding: the content's own chroma where the job keeps it
(``preserve_color="luminance"``), and grey where only grey styles were applied.

A grey style (a pencil drawing, ink, a black-and-white photo) should give a grey picture, but the decoder
paints faint colour of its own: 13-21 levels of chroma at the 99th percentile on the example styles made
grey. So where every style applied is grey, the output's chroma is scaled by 1 - A, the local style
strength (alpha, or a region's): grey where fully stylized, the photo's colours where unstyled (alpha 0,
unpainted regions), in between by the strength. With regions of grey and coloured styles, A is the grey
styles' share of it at each pixel (a grey region beside a coloured one came out 18 levels coloured: the
correction waited for every style to be grey). Luminance is left as the decoder made it, but for "luminance"
mode's mean light (``light_missing``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from adain.ops import luminance, with_luminance
from adain.prepared import Prepared
from adain.regions import alpha_map

GREY_LEVELS = 3 / 255  # a pixel this close to its luminance in every channel is grey (a grey JPEG's noise)
GREY_SHARE = 0.99  # an image is grey when this share of its pixels is


def is_grey(image: torch.Tensor) -> bool:
    """Whether an N x 3 x H x W image in [0, 1] is grey (its colour carries no style to apply)."""
    off = (image - luminance(image)).abs().amax(dim=1)
    return float((off <= GREY_LEVELS).float().mean()) >= GREY_SHARE


def grey_styles(greys: Sequence[bool], weights: Sequence[float], regions: bool) -> bool | tuple[bool, ...]:
    """``Prepared.grey`` of a job from whether each of its targets' styles is grey: True where every style
    applied (weight over 0) is, and with ``regions`` where only some are, which ones (by target), else False.
    Without regions every style applies everywhere: a coloured one colours every pixel."""
    applied = [g for g, w in zip(greys, weights) if w > 0]
    if applied and all(applied):
        return True
    if regions and any(applied):
        return tuple(g and w > 0 for g, w in zip(greys, weights))
    return False


def light_missing(img: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """How much lighter the content is than the decoder's output, on average (0-1 units). In "luminance" mode the
    decoder, given a grey content and a grey style with the content's light, made it lighter: 12-21 levels of 255
    on the example photos with two of the three example styles, and 10-16% of the pixels clipped where the photo's
    colours were put back (a visual tour's). A 0-dim tensor on ``img``'s device: read back, it waited for the
    GPU once a job."""
    return luminance(content.to(img.device)).mean() - luminance(img).mean()


def finish(img: torch.Tensor, job: Prepared) -> torch.Tensor:
    """The decoder's (or the optimiser's) output ``img`` (1 x 3 x H x W, job's content size) with the job's
    colour choices applied."""
    if job.chroma_from is not None:
        colours = job.chroma_from.to(img.device)  # (copied once)
        y = luminance(img)
        if job.keep_light:
            y = y + (job.light if job.light is not None else light_missing(img, colours))
        return with_luminance(colours, y)
    if not job.grey:
        return img
    y = luminance(img)
    if job.regions is None:
        keep: float | torch.Tensor = 1 - job.alpha
    else:
        strengths = job.region_alphas
        if job.grey is not True:  # which styles are grey: their share of the strength (A of the grey ones alone)
            ones = strengths or [1.0] * len(job.targets)
            strengths = tuple(a if g else 0.0 for a, g in zip(ones, job.grey))  # type: ignore[arg-type]
        a = alpha_map(job.regions.to(img.device), [t[2] for t in job.targets], strengths, job.alpha, img.shape[2:])
        keep = 1 - a
    return (y + (img - y) * keep).clamp(0, 1)
