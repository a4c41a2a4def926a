"""Regions: where each style applies and how strongly (spatial control beyond the two-style mask).

A job's regions are K maps in [0, 1], one per style, at the size the content is stylized at. They come
from one of three forms (``Job`` fields):

* ``masks``: one greyscale image per style, the content's size; white is the style's region, grey a
  soft edge;
* ``labels`` + ``label_values``: one image whose pixels name regions; style i takes the pixels whose
  label is ``label_values[i]``. A grey pixel (r = g = b) has label r (0-255), any other pixel the colour
  0xRRGGBB (a blue (0, 0, b) marked ``COLOUR_LABEL | b``), so a greyscale segmentation and a colour-coded one
  both work. Several styles may share a
  label (they blend by weight there); pixels whose label names no style keep the content;
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
from adain.image import load_image, stored_format
from adain.job import CheckedJob
from adain.ops import masked_adain, weighted_mean_std
from adain.prepared import Stats, Targets
from adain.wire import COLOUR_LABEL


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
        maps = _label_maps(job, source_size, max_pixels)
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
    size = tuple(size)
    h, w = regions.shape[2:]
    cells = size == feature_size(h, w) and size != (h, w) and (h % 8 or w % 8)
    out = torch.empty(1, regions.shape[1], *size, device=regions.device)
    for k in range(regions.shape[1]):
        m = regions[:, k : k + 1].float().div_(255)
        if cells:
            m = F.pad(m, (0, 8 * size[1] - w, 0, 8 * size[0] - h), mode="replicate")
        out[:, k : k + 1] = m if m.shape[2:] == size else F.interpolate(
            m, size=size, mode="bilinear", align_corners=False)
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


def _label_maps(job: CheckedJob, size: tuple[int, int], max_pixels: int) -> list[np.ndarray]:
    # a label's colour is its name: read as stored, no colour conversion
    img = load_image(job.labels, field="labels", max_pixels=max_pixels, mode="raw")  # type: ignore[arg-type]
    if img.size != size:
        raise InvalidInputError("labels", f"labels is {img.width} x {img.height}, content is {size[0]} x {size[1]}")
    # built in place in 4 bytes a pixel: int64 arrays and their temporaries took 4.6 GB at 64 MP
    rgb = np.asarray(img, dtype=np.uint8)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    label = r.astype(np.uint32)
    label <<= 8
    label |= g
    label <<= 8
    label |= b
    grey = r == g
    grey &= g == b
    np.copyto(label, r, where=grey)
    blue = r == 0  # (0, 0, b), b > 0: a colour under 256, marked apart from the grey level b
    blue &= g == 0
    blue &= b > 0
    label[blue] |= COLOUR_LABEL
    del grey, blue
    values = list(job.label_values or ())
    lossy = stored_format(job.labels, field="labels") in LOSSY_FORMATS
    if lossy:
        _snap(label, rgb, values)
    _unblend(label, rgb, values)
    maps = []
    for i, value in enumerate(values):
        hit = label == value
        if not hit.any():
            hint = " (its JPEG compression changed the colours: send labels as PNG)" if lossy else ""
            raise InvalidInputError(f"styles[{i}].label", f"no pixel of labels has label {_label_name(value)}{hint}")
        maps.append(hit.astype(np.uint8) * 255)
    return maps


# A JPEG label image has no pixel of its colours as painted: #ff0000 comes back as #fe0000 or #fe0002, at any
# quality (0 exact pixels of three colours at q95), and its job was refused ("no pixel of labels has label
# #ff0000"). A flat area comes back within 1-3 levels of its colour (q50-q95), so a pixel of a lossy label
# image within LOSSY_TOLERANCE levels in every channel of a requested colour label takes it; less where another
# requested colour, or a grey, is nearer than twice that (a colour within 6 levels of an unrequested one's
# cannot be told apart; an edge's mixed pixels are then judged as blends, below). Grey labels are never snapped: a
# segmentation's levels 0, 3, 5 are neighbours, and a grey JPEG's flat areas come back exact.
LOSSY_FORMATS = ("JPEG", "MPO", "WEBP", "AVIF", "HEIF")  # WebP, AVIF and HEIF may be lossless: then nothing moves
LOSSY_TOLERANCE = 6


def _label_colour(value: int) -> tuple[int, int, int] | None:
    """The colour (not grey) of the pixels with this label; None for a grey level (below 256)."""
    return ((value >> 16) & 255, (value >> 8) & 255, value & 255) if value >= 256 else None


def _snap(label: np.ndarray, rgb: np.ndarray, values: Sequence[int]) -> None:
    """Give each pixel of ``rgb`` near a requested colour label's colour that label, in ``label`` (in place)."""
    colours = {v: c for v in set(values) if (c := _label_colour(v)) is not None}
    levels = np.arange(256)
    for value, colour in colours.items():
        gaps = [max(abs(a - b) for a, b in zip(colour, other)) for v, other in colours.items() if v != value]
        gaps.append(-(-(max(colour) - min(colour)) // 2))  # to the nearest grey
        tolerance = min([LOSSY_TOLERANCE] + [(gap - 1) // 2 for gap in gaps])
        if tolerance <= 0:
            continue
        near = np.ones(label.shape, dtype=bool)
        for k, level in enumerate(colour):  # a lookup a channel: no int copy of a 64 MP image (0.8 GB)
            near &= (np.abs(levels - level) <= tolerance)[rgb[..., k]]
        np.copyto(label, np.uint32(value), where=near)


# An anti-aliased label image (painted with a soft brush, drawn large and shrunk, exported from a vector tool) has,
# along each edge, pixels blended from the two colours either side: labels of their own that no style names, so
# they kept the photo, a seam of unstyled pixels between two styled regions. An edge pixel whose label is not
# requested takes the label of the nearest colour (max over channels) among the pixels within BLEND_REACH of it
# that are requested or inside a region (their 3 x 3 all one label) when that one is requested and the pixel lies
# on the line from it to another such colour nearby (within BLEND_TOLERANCE levels a channel), at least
# BLEND_MIN_GAP levels from it: a blend nearer the requested side joins it. So a region of an unrequested label
# stays the photo (its own inside is nearer), and colours nearer than BLEND_MIN_GAP (a city map's train and bus)
# are no blend of each other. Grey pixels are never moved, as in a lossy image: a grey segmentation's sliver of
# id 20 between 10 and 40 is one (an argmax of upsampled scores leaves such slivers), so a soft edge between two
# grey labels keeps its blends (and the photo); a colour's blend with black or white is a colour, and moves.
BLEND_REACH = 3
BLEND_TOLERANCE = 8
BLEND_MIN_GAP = 24
BLEND_CHUNK = 1 << 16  # edge pixels at a time: 49 neighbours' colours each, 30 MB
BLEND_BAND = 256  # rows at a time: a band's own copies, not the whole image's (at 64 MP, a GB)


def _unblend(label: np.ndarray, rgb: np.ndarray, values: Sequence[int]) -> None:
    """Give an anti-aliased edge's blended pixels the requested label they are nearer (in ``label``, in place).
    A band's changes are written once the next band has been read, so every band sees the labels as given."""
    wanted = np.array(sorted(set(values)), dtype=label.dtype)
    pending = None
    for y0 in range(0, label.shape[0], BLEND_BAND):
        found = _blends(label, rgb, wanted, y0, min(label.shape[0], y0 + BLEND_BAND))
        if pending is not None:
            label.ravel()[pending[0]] = pending[1]
        pending = found
    if pending is not None:
        label.ravel()[pending[0]] = pending[1]


def _blends(
    label: np.ndarray, rgb: np.ndarray, wanted: np.ndarray, y0: int, y1: int
) -> tuple[np.ndarray, np.ndarray]:
    """The blended pixels of rows y0..y1 (flat indices into ``label``) and the labels they take, reading
    BLEND_REACH rows either side (the image's edge repeated beyond it, never an end of a blend)."""
    r, (h, w) = BLEND_REACH, label.shape
    top, bottom = max(0, y0 - r), min(h, y1 + r)
    pad = ((r - (y0 - top), r - (bottom - y1)), (r, r))
    lab = np.pad(label[top:bottom], pad, mode="edge")
    inside = np.zeros(lab.shape, dtype=bool)
    inside[pad[0][0]:lab.shape[0] - pad[0][1], r:-r] = True
    requested = np.isin(lab, wanted)
    requested &= inside
    endpoint = _uniform3(lab)
    endpoint |= requested
    endpoint &= inside
    near = _grown(requested, r - 1)
    near &= ~endpoint
    band = rgb[top:bottom]
    grey = band[..., 0] == band[..., 1]
    grey &= band[..., 1] == band[..., 2]
    near[pad[0][0]:lab.shape[0] - pad[0][1], r:-r] &= ~grey  # a grey pixel is an id: its own label, always
    near[:r], near[-r:], near[:, :r], near[:, -r:] = False, False, False, False  # the band's own rows only
    cands = np.flatnonzero(near)
    if not len(cands):
        return cands, label.ravel()[:0]
    del near, inside
    w2 = w + 2 * r
    steps = np.arange(-r, r + 1)
    offsets = (steps[:, None] * w2 + steps[None, :]).ravel()  # the 7 x 7 window, as flat steps
    # a channel at a time: numpy reduces over a last axis of 3 ten times slower
    flat = [np.pad(rgb[top:bottom, :, k], pad, mode="edge").ravel() for k in range(3)]
    ends, requested, lab = endpoint.ravel(), requested.ravel(), lab.ravel()
    taken, labels = [], []
    for s in range(0, len(cands), BLEND_CHUNK):
        at = cands[s:s + BLEND_CHUNK]
        window = at[:, None] + offsets
        colours = [c[window].astype(np.float32) for c in flat]
        pixel = [c[at].astype(np.float32)[:, None] for c in flat]
        gap = np.maximum(np.maximum(np.abs(colours[0] - pixel[0]), np.abs(colours[1] - pixel[1])),
                         np.abs(colours[2] - pixel[2]))
        isend = ends[window]
        gap[~isend] = np.inf
        rows = np.arange(len(at))
        a = gap.argmin(axis=1)
        nearest = window[rows, a]  # the nearest colour: the side the blend joins
        line = [c - c[rows, a][:, None] for c in colours]
        rel = [p - c[rows, a][:, None] for p, c in zip(pixel, colours)]
        t = (rel[0] * line[0] + rel[1] * line[1] + rel[2] * line[2]) / np.maximum(
            line[0] * line[0] + line[1] * line[1] + line[2] * line[2], 1)
        span = np.maximum(np.maximum(np.abs(line[0]), np.abs(line[1])), np.abs(line[2]))
        off = np.maximum(np.maximum(np.abs(rel[0] - t * line[0]), np.abs(rel[1] - t * line[1])),
                         np.abs(rel[2] - t * line[2]))
        blend = isend & (span >= BLEND_MIN_GAP) & (t >= 0) & (t <= 1) & (off <= BLEND_TOLERANCE)
        take = blend.any(axis=1) & requested[nearest] & np.isfinite(gap[rows, a])
        taken.append(at[take])
        labels.append(lab[nearest[take]])
    at = np.concatenate(taken)
    return (at // w2 + y0 - r) * w + at % w2 - r, np.concatenate(labels)  # padded row r is row y0


def _grown(mask: np.ndarray, r: int) -> np.ndarray:
    """``mask`` grown by ``r`` pixels each way (a square), rows then columns."""
    out = mask.copy()
    for axis in (1, 0):
        base = out.copy()
        n = base.shape[axis]
        for d in range(1, r + 1):
            lo, hi = [slice(None)] * 2, [slice(None)] * 2
            lo[axis], hi[axis] = slice(0, n - d), slice(d, n)
            out[tuple(lo)] |= base[tuple(hi)]
            out[tuple(hi)] |= base[tuple(lo)]
    return out


def _uniform3(label: np.ndarray) -> np.ndarray:
    """Whether each pixel's 3 x 3 neighbourhood (repeated at the borders) is all one label."""
    same = np.pad(label, 1, mode="edge")
    row = same[:, 1:-1] == same[:, :-2]
    row &= same[:, 1:-1] == same[:, 2:]  # (h + 2) x w: three in a row alike
    out = row[1:-1] & row[:-2]
    out &= row[1:-1] & row[2:]
    out &= same[1:-1, 1:-1] == same[:-2, 1:-1]
    out &= same[1:-1, 1:-1] == same[2:, 1:-1]
    return out


def _label_name(value: int) -> str:
    return str(value) if value < 256 else f"#{value & 0xFFFFFF:06x}"


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
    mixed = 0
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
    size: tuple[int, int],
) -> torch.Tensor:
    """The local strength A at ``size`` (h, w): what an alpha-aware decoder (architecture 2) is told."""
    m = maps_at(regions, size)
    return region_weights(m, weights, region_alphas, alpha)[1]
