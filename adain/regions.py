"""Regions: where each style applies and how strongly (spatial control beyond the two-style mask).

A job's regions are K maps in [0, 1], one per style, at the size the content is stylized at. They come
from one of three forms (``Job`` fields):

* ``masks``: one greyscale image per style, the content's size; white is the style's region, grey a
  soft edge;
* ``labels`` + ``label_values``: one image whose pixels name regions (read by ``adain.labels``); style i
  takes the pixels whose label is ``label_values[i]``, so a greyscale segmentation and a colour-coded one both
  work. Several styles may share a label (they blend by weight there); pixels whose label names no style keep
  the content;
* ``mask`` (the original two-style form): white takes styles[0], black styles[1] (maps m and 1 - m).

How they combine, at each relu4_1 position (Huang & Belongie's spatial control, generalised):
each style k is applied by AdaIN with the content statistics under its own map m_k (so each region
keeps its own contrast); overlapping regions blend by m_k x weight_k; the covered share
c = min(1, sum of m_k) is stylized and the rest keeps the content's features, with a per-region
strength a_k: target = A * mix + (1 - A) * content, A = alpha * c * sum(p_k * a_k). Where no region
reaches, A is 0 and the output is the decoder's reconstruction, with soft edges where the maps are soft.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from adain.encoder import feature_size
from adain.errors import InvalidInputError
from adain.image import load_image
from adain.job import CheckedJob
from adain.labels import label_maps
from adain.ops import masked_adain, weighted_mean_std
from adain.prepared import Stats, Targets


def region_maps(
    job: CheckedJob, source_size: tuple[int, int], size: tuple[int, int], max_pixels: int
) -> torch.Tensor | None:
    """The job's regions as 1 x K x H x W levels (uint8, 255 = the whole style: ``maps_at`` reads them as
    [0, 1]) at ``size`` = (W, H), the stylized content's, or None when it has none. Held in a byte a pixel,
    not four: at print size with eight regions float maps were 2 GB, a tiled job's largest part.
    ``source_size`` is the content's size as given, which masks and labels must match.
    Raises InvalidInputError naming the field (wrong size, a region that covers nothing)."""
    if job.masks is not None:
        maps = [_mask(src, f"styles[{i}].mask", source_size, max_pixels) for i, src in enumerate(job.masks)]
    elif job.labels is not None:
        maps = label_maps(job, source_size, max_pixels)
    elif job.mask is not None:  # white and black are exact complements, as they always were
        m = _mask(job.mask, "mask", source_size, max_pixels, must_cover=False)
        t = _resized(m, size)
        return torch.cat([t, 255 - t], dim=1)
    else:
        return None
    # filled a map at a time: a cat of them held two copies
    out = torch.empty(1, len(maps), size[1], size[0], dtype=torch.uint8)
    for k in range(len(maps)):
        out[:, k:k + 1] = _resized(maps[k], size)
        maps[k] = None  # type: ignore[call-overload]
    return out


def _resized(m: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """A full-resolution map resized to the stylized size (W, H), 1 x 1 x H x W levels; bilinear, as
    the content is, so a hard label edge becomes soft by about a pixel."""
    img = Image.fromarray(m)
    img = img if img.size == size else img.resize(size, Image.Resampling.BILINEAR)
    return torch.from_numpy(np.asarray(img).copy()).view(1, 1, size[1], size[0])


def maps_at(regions: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Region levels (``region_maps``, or a tile of them) as maps in [0, 1] at ``size`` (h, w), bilinear.
    A map at a time: a float copy of all of them at full size is what holding levels saves. Shrunk to the
    relu4_1 grid of its own pixels (``feature_size``: a cell per 8 x 8 pixels), a map is first made whole cells
    (its last row and column repeated), as the image is padded: sampled at H / ceil(H / 8) px apart instead of
    8, a region's edge drifted up to a cell (8 px) outwards towards the bottom and right."""
    hw = tuple(size)
    h, w = regions.shape[2:]
    cells = hw == feature_size(h, w) and hw != (h, w) and (h % 8 or w % 8)
    out = torch.empty(1, regions.shape[1], *hw, device=regions.device)
    for k in range(regions.shape[1]):
        m = regions[:, k : k + 1].float().div_(255)
        if cells:
            m = F.pad(m, (0, 8 * hw[1] - w, 0, 8 * hw[0] - h), mode="replicate")
        out[:, k : k + 1] = m if m.shape[2:] == hw else F.interpolate(
            m, size=hw, mode="bilinear", align_corners=False)
    return out


def _mask(
    source: object, field: str, size: tuple[int, int], max_pixels: int, *, must_cover: bool = True
) -> np.ndarray:
    img = load_image(source, field=field, max_pixels=max_pixels, mode="L")  # type: ignore[arg-type]
    if img.size != size:
        raise InvalidInputError(field, f"mask is {img.width} x {img.height}, content is {size[0]} x {size[1]}")
    m = np.asarray(img, dtype=np.uint8)
    if must_cover and int(m.max()) == 0:
        raise InvalidInputError(field, "mask is all black: its style covers no pixel")
    if int(m.max()) == 1:  # 0 and 1 alone: a binary mask saved as numbers (as 1/255 its style showed nowhere)
        m = m * np.uint8(255)
    return m


def region_weights(
    regions: torch.Tensor, weights: Sequence[float], region_alphas: Sequence[float] | None, alpha: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(p, A) at the regions' size: p (1 x K x h x w) how the styles blend at each position (summing to 1
    where any region with weight reaches, else 0), and A (1 x 1 x h x w) the local style strength."""
    w = torch.tensor(list(weights), dtype=regions.dtype, device=regions.device).view(1, -1, 1, 1)
    mw = regions * w
    total = mw.sum(dim=1, keepdim=True)
    # normalised wherever any weight reaches (a cut-off at 1e-6 left a region whose weight was 1e-6 covered but
    # with no style to blend: a flat wash, 60 levels off, where 1e-5 gave what any weight gives)
    p = mw / torch.where(total > 0, total, torch.ones_like(total))
    cover = (regions * (w > 0)).sum(dim=1, keepdim=True).clamp(max=1)
    strength = torch.ones_like(total)
    if region_alphas is not None:
        a = torch.tensor(list(region_alphas), dtype=regions.dtype, device=regions.device).view(1, -1, 1, 1)
        strength = (p * a).sum(dim=1, keepdim=True)
    return p, alpha * cover * strength


def regional_target(
    feat: torch.Tensor,
    regions: torch.Tensor,
    targets: Targets,
    region_alphas: tuple[float, ...] | None,
    alpha: float,
    smooth: Callable[[int, Stats], Stats],
    propagate: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """The AdaIN target of one content's relu4_1 (1 x C x h x w) with region levels (1 x K x H x W, any size)."""
    m = maps_at(regions.to(feat.device), feat.shape[2:])
    p, a = region_weights(m, [w for _, _, w in targets], region_alphas, alpha)
    # zeros where no region reaches, as p gives them: a region that reaches no relu4_1 cell at all (a small spot
    # between the 8x sampling points) left the int 0, which a clip's flow propagation could not warp
    mixed = torch.zeros_like(feat, dtype=torch.float32)
    for k, (mean, std, _) in enumerate(targets):
        mk = m[:, k : k + 1]
        if float(p[:, k].max()) == 0:
            continue  # a style whose region the weights leave empty
        stats = smooth(k, weighted_mean_std(feat, mk))
        mixed = mixed + p[:, k : k + 1] * masked_adain(feat, mk, mean, std, stats)
    if propagate is not None:
        mixed = propagate(mixed)
    return a * mixed + (1 - a) * feat.float()


def alpha_map(
    regions: torch.Tensor, weights: Sequence[float], region_alphas: Sequence[float] | None, alpha: float,
    size: tuple[int, int] | torch.Size,
) -> torch.Tensor:
    """The local strength A at ``size`` (h, w): what an alpha-aware decoder (architecture 2) is told."""
    m = maps_at(regions, size)
    return region_weights(m, weights, region_alphas, alpha)[1]
