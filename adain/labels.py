"""Label images: one image whose pixels name regions, read into a map per style (see ``adain.regions``).

A grey pixel (r = g = b) has label r (0-255), any other pixel the colour 0xRRGGBB (a blue (0, 0, b) is marked
``COLOUR_LABEL | b``). A label's colour is its name, so the image is read as stored; two kinds of image that
change colours are forgiven: lossy formats (a pixel near a requested colour takes it) and anti-aliased edges
(a pixel blended from two colours takes the nearer one's label, where that one is requested).

A label image with transparency (a label layer exported from a painting program) is read by its alpha, not
composited: a pixel at least half opaque (``PAINTED``) has its own colour's (or grey level's) label, and one
under that is unpainted, black (label 0, #000000), as a fully transparent one always was. Composited onto black,
red painted at half opacity was #800000 and grey 200 was 100: labels of their own, so a soft or low-opacity brush
left its pixels as the photo, or the job was refused ("no pixel of labels has label #ff0000").
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from adain.errors import InvalidInputError
from adain.image import ImageSource, load_image, stored_bytes, stored_format, stored_rgba
from adain.job import CheckedJob
from adain.wire import COLOUR_LABEL


def label_maps(job: CheckedJob, size: tuple[int, int], max_pixels: int) -> list[np.ndarray]:
    """One 0/255 map per style (uint8, the content's ``size``) of the pixels of ``job.labels`` whose label is
    its ``label_values[i]``. Raises InvalidInputError naming the field (wrong size, a label no pixel has)."""
    labels = job.labels
    assert labels is not None  # (region_maps asks for a job's label maps where it has labels)
    # a label's colour is its name: read as stored, no colour conversion
    img = load_image(labels, field="labels", max_pixels=max_pixels, mode="raw")
    if img.size != size:
        raise InvalidInputError("labels", f"labels is {img.width} x {img.height}, content is {size[0]} x {size[1]}")
    painted = _painted(labels, max_pixels)
    faint = painted is not None and bool(((painted[1] > 0) & (painted[1] < PAINTED)).any())
    # built in place in 4 bytes a pixel: int64 arrays and their temporaries took 4.6 GB at 64 MP
    rgb = np.asarray(img, dtype=np.uint8) if painted is None else painted[0]
    img = painted = None  # type: ignore[assignment]
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
    del blue
    values = list(job.label_values or ())
    lossy = _lossy_format(labels)
    if lossy:
        _snap(label, rgb, values)
    if not grey.all():  # only colour pixels are ever blends: a grey segmentation has none
        _unblend(label, rgb, grey, values)
    del grey
    maps = []
    for i, value in enumerate(values):
        hit = label == value
        if not hit.any():
            hint = f" (its {lossy} compression changed the colours: send labels as PNG)" if lossy else ""
            if faint:
                hint += " (pixels under 50% opaque are unpainted)"
            raise InvalidInputError(f"styles[{i}].label", f"no pixel of labels has label {_label_name(value)}{hint}")
        maps.append(hit.astype(np.uint8) * 255)
    return maps


PAINTED = 128  # alpha from which a label image's pixel is painted (at least half covered): its own label


def _painted(source: ImageSource, max_pixels: int) -> tuple[np.ndarray, np.ndarray] | None:
    """A label image with transparency as (H x W x 3 RGB, H x W alpha), uint8, upright: each pixel's own colour
    where it is painted (alpha at least ``PAINTED``), black elsewhere; None for an opaque image (read as it always
    was). Decoded a second time, after ``load_image`` has checked it (errors, size, limits): only such images."""
    rgba = stored_rgba(source, field="labels", max_pixels=max_pixels)
    if rgba is None:
        return None
    alpha = rgba[..., 3].copy()
    rgb = np.ascontiguousarray(rgba[..., :3])
    rgb[alpha < PAINTED] = 0
    return rgb, alpha


# A JPEG label image has no pixel of its colours as painted: #ff0000 comes back as #fe0000 or #fe0002, at any
# quality (0 exact pixels of three colours at q95), and its job was refused ("no pixel of labels has label
# #ff0000"). A flat area comes back within 1-3 levels of its colour (q50-q95), so a pixel of a lossy label
# image within LOSSY_TOLERANCE levels in every channel of a requested colour label takes it; less where another
# requested colour, or a grey, is nearer than twice that (a colour within 6 levels of an unrequested one's
# cannot be told apart; an edge's mixed pixels are then judged as blends, below). Grey labels are never snapped: a
# segmentation's levels 0, 3, 5 are neighbours, and a grey JPEG's flat areas come back exact.
LOSSY_FORMATS = {"JPEG": "JPEG", "MPO": "JPEG", "WEBP": "WebP", "AVIF": "AVIF", "HEIF": "HEIF"}  # (as people say them)
LOSSY_TOLERANCE = 6


def _lossy_format(source: ImageSource) -> str | None:
    """The name of a label image's lossy format, None where nothing moved its colours: a lossless WebP (VP8L) is
    exact, and was told "its JPEG compression changed the colours". AVIF and HEIF are taken as lossy (lossless
    ones are rare, and snapping moves no exact pixel)."""
    fmt = stored_format(source, field="labels")
    if fmt == "WEBP" and _webp_lossless(stored_bytes(source) or b""):
        return None
    return LOSSY_FORMATS.get(fmt or "")


def _webp_lossless(data: bytes) -> bool:
    """Whether a WebP's image is VP8L (lossless), not VP8: its chunks walked from the RIFF header (an extended
    file, VP8X, has ICC, animation or alpha chunks before it)."""
    at = 12
    while at + 8 <= len(data):
        kind, size = data[at:at + 4], int.from_bytes(data[at + 4:at + 8], "little")
        if kind in (b"VP8L", b"VP8 "):
            return kind == b"VP8L"
        at += 8 + size + (size & 1)
    return False


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
# stays the photo (its own inside is nearer), a colour that fills a 3 x 3 block anywhere in the image is a label
# however thin it is elsewhere (a city map's road in a sliver between building and sidewalk lies on their line),
# and colours nearer than BLEND_MIN_GAP (a city map's train and bus) are no blend of each other. Grey pixels are
# never moved, as in a lossy image: a grey segmentation's sliver of id 20 between 10 and 40 is one (an argmax of
# upsampled scores leaves such slivers), so a soft edge between two grey labels keeps its blends (and the
# photo); a colour's blend with black or white is a colour, and moves.
BLEND_REACH = 3
BLEND_TOLERANCE = 8
BLEND_MIN_GAP = 24
BLEND_CHUNK = 1 << 16  # edge pixels at a time: 49 neighbours' colours each, 30 MB
BLEND_BAND = 256  # rows at a time: a band's own copies, not the whole image's (at 64 MP, a GB)


def _unblend(label: np.ndarray, rgb: np.ndarray, grey: np.ndarray, values: Sequence[int]) -> None:
    """Give an anti-aliased edge's blended pixels the requested label they are nearer (in ``label``, in place;
    ``grey``: where r = g = b). A band's changes are written once the next band has been read, so every band
    sees the labels as given."""
    wanted = np.array(sorted(set(values)), dtype=label.dtype)
    h = label.shape[0]
    inside = np.empty(label.shape, dtype=bool)  # whether each pixel's 3 x 3 is all one label
    named = np.zeros(COLOUR_LABEL << 1, dtype=bool)  # by label: whether it fills a 3 x 3 block anywhere (32 MB)
    for y0 in range(0, h, BLEND_BAND):
        y1, top = min(h, y0 + BLEND_BAND), max(0, y0 - 1)
        inside[y0:y1] = _uniform3(label[top:min(h, y1 + 1)])[y0 - top:y0 - top + y1 - y0]
        named[label[y0:y1][inside[y0:y1]]] = True
    pending = None
    for y0 in range(0, h, BLEND_BAND):
        found = _blends(label, rgb, grey, inside, wanted, named, y0, min(h, y0 + BLEND_BAND))
        if pending is not None:
            label.ravel()[pending[0]] = pending[1]
        pending = found
    if pending is not None:
        label.ravel()[pending[0]] = pending[1]


def _blends(
    label: np.ndarray, rgb: np.ndarray, grey: np.ndarray, inside: np.ndarray, wanted: np.ndarray, named: np.ndarray,
    y0: int, y1: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The blended pixels of rows y0..y1 (flat indices into ``label``) and the labels they take, reading
    BLEND_REACH rows either side (nothing beyond the image is an end of a blend)."""
    r, (h, w) = BLEND_REACH, label.shape
    top, bottom = max(0, y0 - r), min(h, y1 + r)
    pad = ((r - (y0 - top), r - (bottom - y1)), (r, r))  # to the windows' reach, beyond the image too
    image = (slice(pad[0][0], pad[0][0] + bottom - top), slice(r, r + w))  # the padded band's pixels of the image
    lab = np.pad(label[top:bottom], pad)
    requested: np.ndarray = np.zeros(lab.shape, dtype=bool)  # (NumPy's stubs: 0-d from a shape of any length)
    requested[image] = np.isin(label[top:bottom], wanted)
    endpoint = np.pad(inside[top:bottom], pad)
    endpoint |= requested
    near = _grown(requested, r - 1)
    near &= ~endpoint
    near &= ~named[lab]  # a label that fills a block somewhere is one, however thin it is here
    near[image] &= ~grey[top:bottom]  # a grey pixel is an id: its own label, always
    near[:r], near[-r:], near[:, :r], near[:, -r:] = False, False, False, False  # the band's own rows only
    cands = np.flatnonzero(near)
    if not len(cands):
        return cands, label.ravel()[:0]
    del near
    w2 = w + 2 * r
    steps = np.arange(-r, r + 1)
    offsets = (steps[:, None] * w2 + steps[None, :]).ravel()  # the 7 x 7 window, as flat steps
    flat = [np.pad(rgb[top:bottom, :, k], pad).ravel() for k in range(3)]
    ends, requested, lab = endpoint.ravel(), requested.ravel(), lab.ravel()
    taken, labels = [], []
    for s in range(0, len(cands), BLEND_CHUNK):
        at = cands[s:s + BLEND_CHUNK]
        take, nearest = _joins(at, at[:, None] + offsets, flat, ends)
        take &= requested[nearest]
        taken.append(at[take])
        labels.append(lab[nearest[take]])
    at = np.concatenate(taken)
    return (at // w2 + y0 - r) * w + at % w2 - r, np.concatenate(labels)  # padded row r is row y0


def _joins(
    at: np.ndarray, window: np.ndarray, flat: list[np.ndarray], ends: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """For pixels ``at`` (flat indices) and their windows: whether each is a blend whose nearer side is its
    window's nearest end colour, and where that end is. A channel at a time (``flat``: r, g, b): numpy reduces
    over a last axis of 3 ten times slower."""
    colours = [c[window].astype(np.float32) for c in flat]
    pixel = [c[at].astype(np.float32)[:, None] for c in flat]
    gap = np.maximum(np.maximum(np.abs(colours[0] - pixel[0]), np.abs(colours[1] - pixel[1])),
                     np.abs(colours[2] - pixel[2]))
    isend = ends[window]
    gap[~isend] = np.inf
    rows = np.arange(len(at))
    a = gap.argmin(axis=1)
    line = [c - c[rows, a][:, None] for c in colours]  # from the nearest end to each other pixel
    rel = [p - c[rows, a][:, None] for p, c in zip(pixel, colours)]
    t = (rel[0] * line[0] + rel[1] * line[1] + rel[2] * line[2]) / np.maximum(
        line[0] * line[0] + line[1] * line[1] + line[2] * line[2], 1)
    span = np.maximum(np.maximum(np.abs(line[0]), np.abs(line[1])), np.abs(line[2]))
    off = np.maximum(np.maximum(np.abs(rel[0] - t * line[0]), np.abs(rel[1] - t * line[1])),
                     np.abs(rel[2] - t * line[2]))
    blend = isend & (span >= BLEND_MIN_GAP) & (t >= 0) & (t <= 1) & (off <= BLEND_TOLERANCE)
    return blend.any(axis=1) & np.isfinite(gap[rows, a]), window[rows, a]


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
