"""Print-size images: a large content is rendered tile by tile in bounded memory, as one image.

Memory of a plain render grows with the pixel count (about 0.9-1.4 KB a pixel on torch, 1.8-2.6 KB on
OpenVINO: an 8K content would need 60-170 GB). Here the content is cut into tiles of ``tile`` x ``tile`` pixels;
each is rendered with a ``halo`` of its neighbours' pixels around it (the network sees real context up
to the halo, not padding) and the rendered tiles are feathered together: across each overlap a tile's
weight ramps linearly from 1 at its own core to 0 a quarter of the halo from its edge (``DEAD_HALO``). Rows of
tiles are blended in a band buffer and written out when complete, so besides the content and the output (uint8)
only one band of float sums is held.

One normalisation for all tiles (as Thumbnail Instance Normalization, Chen et al. 2022, argues): AdaIN's
content statistics (per region where there are regions) come from the whole image, not from each tile,
so tiles do not drift in colour or contrast. Unlike TIN they are not taken from a downscaled thumbnail:
relu4_1's statistics change with scale (a 2.3x thumbnail moved the output by 17 levels on average), so
they are measured at full resolution on 768-px boxes (each encoded with 32 px of context, measured on
its interior), covering the whole image up to ``stats_pixels`` (4096 x 4096: exact statistics up to 4K;
the boxes' relu4_1 is kept and the tiles cut theirs from it, so this costs no second encoder pass), or
that many pixels of boxes spread evenly over a larger image (a quarter of an 8K one), and combined
exactly. Sampling less drifted: with 2 MP sampled the output moved 8 levels on average from the
untiled one at 2K and 13 at 4K. Styles, weights, alpha, masks, labels and colour modes go through the
Stylizer's own render for each tile, so they work as untiled.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from adain.backends import generic_shapes
from adain.colours import light_missing
from adain.encoder import padded_size
from adain.memory import release_freed_memory
from adain.ops import EPS, mean_std
from adain.prepared import Prepared, Stats
from adain.regions import maps_at

# Peak working memory of a plain render, measured: 0.9 KB/px torch, 1.8 KB/px OpenVINO direct, ~2.1 KB/px
# OpenVINO with the Winograd form (its transformed tiles: 681 MiB for a 576-px tile in test_tiling). Decoder
# v3's detail path adds 0.46 KB/px on torch below alpha 1 (1.38 KB/px) and 0.65 on OpenVINO, which holds
# the branches' outputs through the decoder (2.59 KB/px direct; the Winograd form then ~2.75, estimated).
BYTES_PER_PIXEL = 3072
# Besides one tile: the content (float32, 12 B/px), its decoded copy and the output (uint8), the request and
# reply bytes, the blending band (measured 61 B/px through the server at 3,000 x 2,000), and up to 4K the
# whole image's relu4_1 in fp16 (16 B/px)
BUFFER_BYTES_PER_PIXEL = 100
MIN_AUTO_THRESHOLD = 1 << 20  # pixels: the automatic threshold's floor, whatever the memory
LIGHT_SIDE = 512  # the longest side a tiled "luminance" render's light is measured at (_light_missing)
MEMORY_SHARE = 0.25  # of the device's memory that one plain render may take before tiling takes over


@dataclass(frozen=True)
class Tiling:
    """When and how to tile: contents over ``threshold`` pixels (0: never; -1: from the device's memory,
    resolved by the Stylizer) are rendered in tiles of ``tile`` px (multiple of 8) with a ``halo`` px
    context (multiple of 8); statistics from at most ``stats_pixels`` in ``stats_box`` px boxes (no larger
    than a tile), each encoded with ``stats_halo`` px of context."""

    threshold: int = -1
    tile: int = 768
    halo: int = 64
    stats_pixels: int = 4096 * 4096
    stats_box: int = 768
    stats_halo: int = 32

    def __post_init__(self) -> None:
        for name in ("threshold", "tile", "halo", "stats_pixels", "stats_box", "stats_halo"):
            value = getattr(self, name)  # a float tile failed at the first tiled render, a str with a bare TypeError
            if not isinstance(value, numbers.Integral) or isinstance(value, bool):
                raise TypeError(f"{name} must be a whole number, got {value!r}")
        for name in ("tile", "halo", "stats_box", "stats_halo"):  # the relu4_1 grid: off it, features and pixels part
            value = getattr(self, name)
            if value < (16 if name in ("tile", "stats_box") else 0) or value % 8:
                raise ValueError(f"{name} must be a multiple of 8 (tile and stats_box at least 16), got {value}")
        if self.threshold < -1 or self.stats_pixels < self.stats_box**2:
            raise ValueError("threshold must be -1 (auto), 0 (never) or a pixel count; stats_pixels at least one box")

    def wants(self, job: Prepared) -> bool:
        h, w = job.content.shape[2:]
        plain = job.smooth is None and job.propagate is None  # a video's frames keep their own path
        return plain and self.wants_pixels(h * w)

    def wants_pixels(self, pixels: int) -> bool:
        """Whether a content of ``pixels`` (as rendered) is tiled: the rule, known before it is decoded."""
        # never below one tile with its halo: a tile itself is never tiled again
        return self.threshold > 0 and pixels > max(self.threshold, (self.tile + 2 * self.halo) ** 2)

    def peak_bytes(self) -> int:
        """The working memory one tile needs (what the tile size implies), besides the image buffers
        (BUFFER_BYTES_PER_PIXEL a pixel of the image)."""
        return (self.tile + 2 * max(self.halo, self.stats_halo)) ** 2 * BYTES_PER_PIXEL  # a box is at most a tile


def auto_threshold(device: torch.device) -> int:
    """Pixels above which a content is tiled: a quarter of the device's memory (a container's limit, where it
    has one) at BYTES_PER_PIXEL."""
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
    else:
        total = mem_total()
    return max(MIN_AUTO_THRESHOLD, int(total * MEMORY_SHARE / BYTES_PER_PIXEL))


def mem_total(root: Path = Path("/")) -> int:
    """The memory this process may use, in bytes: the machine's (MemTotal of /proc/meminfo), or its
    container's limit where that is lower (cgroup v2 ``memory.max``, v1 ``memory.limit_in_bytes``): in a
    Kubernetes pod /proc/meminfo shows the node's memory, and a threshold set from it would get the pod
    killed for memory. 8 GiB where nothing can be read."""
    sizes = []
    try:
        for line in (root / "proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                sizes.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError):
        pass
    for limit in ("sys/fs/cgroup/memory.max", "sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = (root / limit).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < 1 << 60:  # "max", or v1's near-2**63: no limit
            sizes.append(int(text))
    return min(sizes) if sizes else 8 << 30  # unknown: assume a small machine


def sample_boxes(h: int, w: int, budget: int, side: int) -> list[tuple[int, int, int, int]]:
    """Boxes (y0, y1, x0, x1), ``side`` px squares at multiples of 8: covering the whole h x w image when
    it is within ``budget`` pixels, else at most ``budget`` pixels of them spread evenly over it."""
    if h * w <= budget:
        return [(y, min(h, y + side), x, min(w, x + side)) for y in range(0, h, side) for x in range(0, w, side)]
    side = min(side, h, w)
    n = max(1, budget // (side * side))
    rows = max(1, min(round(math.sqrt(n * h / w)), h // side))
    cols = max(1, min(n // rows, w // side))
    ys = [(h - side) * (2 * r + 1) // (2 * rows) // 8 * 8 for r in range(rows)]
    xs = [(w - side) * (2 * c + 1) // (2 * cols) // 8 * 8 for c in range(cols)]
    return [(y, y + side, x, x + side) for y in ys for x in xs]


def stats_boxes(h: int, w: int, tiling: Tiling) -> list[tuple[int, int, int, int]]:
    """The boxes whole_image_stats encodes; never one larger than a tile (the tile size bounds memory)."""
    return sample_boxes(h, w, tiling.stats_pixels, min(tiling.stats_box, tiling.tile))


def whole_image_stats(
    stylizer: object, job: Prepared, tiling: Tiling, on_box: Callable[[], None] | None = None
) -> tuple[dict[int, Stats], torch.Tensor | None]:
    """AdaIN's content statistics (per region) of the whole image, from full-resolution samples.

    relu4_1's statistics depend on scale (a downscaled thumbnail has other ones, off by ~17 levels in
    the output at 2.3x), so they are measured at full resolution on boxes (covering the image, or at
    most ``tiling.stats_pixels`` of them spread evenly), each encoded with ``stats_halo`` px of context
    and measured on its interior only, then combined exactly: means weighted by each box's (region)
    weight, variances through the second moments. The Stylizer's own target is run on each box,
    recording the statistics it normalises with, so regions are handled as untiled.

    Also returns, when the boxes cover the image, its relu4_1 assembled from the boxes' interiors (fp16,
    16 bytes a pixel): the tiles take theirs from it instead of encoding again, so exact statistics
    cost no second encoder pass. ``on_box()`` is called after each box (it may raise to stop the job:
    this pass is the encoder's share of the whole work, tens of seconds at print size)."""
    h, w = job.content.shape[2:]
    # its own context, whatever the tiles' halo: the tiles take their features from this pass (a halo of 8
    # left relu4_1 off by up to 15.6 at every box's edge, 0 by 48)
    halo = tiling.stats_halo
    sums: dict[int | None, list[torch.Tensor]] = {}  # by region; None: the whole image
    covering = h * w <= tiling.stats_pixels
    whole: torch.Tensor | None = None
    for y0, y1, x0, x1 in stats_boxes(h, w, tiling):
        box = _crop(job, y0, y1, x0, x1)
        recorded: dict[int, Stats] = {}

        def record(k: int, stats: Stats, recorded: dict[int, Stats] = recorded) -> Stats:
            recorded[k] = stats
            return stats

        with torch.inference_mode():
            feat = box_features(stylizer, job.content, (y0, y1, x0, x1), halo)
            stylizer.target(feat, replace(box, smooth=record))  # type: ignore[attr-defined]
            if covering:
                if whole is None:
                    whole = torch.empty(1, feat.shape[1], -(-h // 8), -(-w // 8), dtype=torch.float16)
                whole[:, :, y0 // 8 : y0 // 8 + feat.shape[2], x0 // 8 : x0 // 8 + feat.shape[3]] = feat.cpu()
        # Weighed by relu4_1 cells, over which the statistics are averages (an edge box 1 px wide has a whole
        # cell column; by pixels it weighed an eighth: 5% off at 257 x 193), and a region by its map at that
        # grid, recomputed here: a region nearly absent from a box fell back to the box's unweighted statistics.
        cells = float(feat.shape[2] * feat.shape[3])
        _accumulate(sums, None, cells, mean_std(feat))
        maps = None if box.regions is None else maps_at(box.regions.to(feat.device), feat.shape[2:]).double()
        f = None if maps is None else feat.double()
        for k, stats in recorded.items():
            if maps is None or f is None:  # (f is None exactly where maps is)
                _accumulate(sums, k, cells, stats)
                continue
            mk = maps[:, k : k + 1]
            n = float(mk.sum())
            if n > 0:
                mean = (f * mk).sum(dim=(2, 3), keepdim=True) / n
                var = ((f - mean) ** 2 * mk).sum(dim=(2, 3), keepdim=True) / n + EPS
                _accumulate(sums, k, n, (mean, var.sqrt()))
        if on_box is not None:
            on_box()
    combined = {k: _combined(*acc) for k, acc in sums.items()}
    everything, total = combined.pop(None), float(sums[None][2])
    # as untiled (ops.weighted_mean_std): a region of under 1e-3 of the cells takes the whole image's statistics;
    # so does one no sampled box reached (above stats_pixels), which each tile had normalised by its own: seams
    regions = 1 if job.regions is None else int(job.regions.shape[1])
    out = {k: everything for k in range(regions)}
    out.update({k: s for k, s in combined.items() if k is not None and float(sums[k][2]) >= 1e-3 * total})
    return out, whole


def box_features(stylizer: object, image: torch.Tensor, box: tuple[int, int, int, int], halo: int) -> torch.Tensor:
    """relu4_1 of one box (y0, y1, x0, x1) of ``image`` by the Stylizer's encoder on its backend: encoded with
    ``halo`` px of context, cut to the box's own cells."""
    h, w = image.shape[2:]
    y0, y1, x0, x1 = box
    ry0, rx0 = max(0, y0 - halo), max(0, x0 - halo)
    context = image[:, :, ry0 : min(h, y1 + halo), rx0 : min(w, x1 + halo)]
    feat = stylizer.encoder.encode([context], run=stylizer.backend.relu4_1)[0]  # type: ignore[attr-defined]
    fy, fx = (y0 - ry0) // 8, (x0 - rx0) // 8
    return feat[:, :, fy : fy + -(-(y1 - y0) // 8), fx : fx + -(-(x1 - x0) // 8)]


def image_stats(stylizer: object, image: torch.Tensor, tiling: Tiling) -> Stats:
    """relu4_1 statistics of an image too large to encode whole (a style at a print-size ``style_size``: the
    encoder alone took ~0.5 KB a pixel, so 64 MP went past any pod's memory), as ``whole_image_stats`` takes a
    content's: boxes with ``stats_halo`` px of context, measured on their interiors, combined exactly."""
    h, w = image.shape[2:]
    sums: dict[int | None, list[torch.Tensor]] = {}
    with generic_shapes(), torch.inference_mode():  # one set of runtime buffers, as for a tiled content
        for box in stats_boxes(h, w, tiling):
            feat = box_features(stylizer, image, box, tiling.stats_halo)
            _accumulate(sums, None, float(feat.shape[2] * feat.shape[3]), mean_std(feat))
            release_freed_memory()
    return _combined(*sums[None])


def _accumulate(sums: dict, key: int | None, n: float, stats: Stats) -> None:
    """Add ``n`` positions of (mean, std) to ``sums[key]``: the weight, and the first and second moments."""
    mean, std = stats[0].double(), stats[1].double()
    acc = sums.setdefault(key, [torch.zeros_like(mean), torch.zeros_like(mean), torch.zeros((), dtype=torch.float64)])
    acc[0] += n * mean
    acc[1] += n * (std**2 + mean**2)
    acc[2] += n


def _combined(m1: torch.Tensor, m2: torch.Tensor, n: torch.Tensor) -> Stats:
    mean = m1 / n
    return mean.float(), (m2 / n - mean**2).clamp_min(0).sqrt().float()


# The outer part of a halo that has no weight: the decoder renders a tile's last pixels worst (no context beyond
# them), and weighted there (up to 1/4) they left faint bands either side of each border: 2.0 levels mean in
# them against 0.05 elsewhere, tiled against whole (a pixel-correctness tour's; 0.08 without them). Every pixel
# so left out is in its neighbour's core, weight 1.
DEAD_HALO = 0.25


def _ramp(start: int, end: int, core0: int, core1: int) -> np.ndarray:
    """Weights along one axis of a tile rendered over [start, end) with core [core0, core1): 1 in the
    core, rising linearly from 0 at the inner edge of the halo's outer DEAD_HALO (0 there too) to the core."""
    weights = np.ones(end - start, np.float32)
    if core0 > start:
        weights[: core0 - start] = _rising(core0 - start)
    if end > core1:
        weights[core1 - start :] = _rising(end - core1)[::-1]
    return weights


def _rising(n: int) -> np.ndarray:
    """A halo of ``n`` px from its outer edge in: 0 over its outer DEAD_HALO, then up by even steps to near 1."""
    dead = int(n * DEAD_HALO)
    out = np.zeros(n, np.float32)
    out[dead:] = (np.arange(n - dead, dtype=np.float32) + 0.5) / (n - dead)
    return out


def tiled_parts(h: int, w: int, tiling: Tiling) -> int:
    """The steps ``render_tiled`` reports for an h x w content: its statistics boxes, then its tiles."""
    return len(stats_boxes(h, w, tiling)) + math.ceil(h / tiling.tile) * math.ceil(w / tiling.tile)


def render_tiled(
    stylizer: object, job: Prepared, tiling: Tiling, on_step: Callable[[int, int], None] | None = None
) -> Image.Image:
    """One prepared job rendered tile by tile (see the module's docstring); same size as untiled.
    ``on_step(done, total)`` is called after each statistics box, then after each tile (progress over
    both passes; it may raise to stop the job)."""
    h, w = job.content.shape[2:]
    rows, cols = math.ceil(h / tiling.tile), math.ceil(w / tiling.tile)
    parts = tiled_parts(h, w, tiling)
    done = 0

    def step() -> None:
        nonlocal done
        done += 1
        # The runtime reallocates its buffers as the shape changes from box to tile to edge tile, and glibc keeps
        # the freed pages: a server's peak over a 1,600 x 1,200 tiled call (OpenVINO, 512-px tiles) was 0.97-1.16
        # GB over idle on the first call and crept to 1.28 GB over twelve; trimmed after each part it is 0.89-0.94
        # GB, flat, at no measurable cost (a call ~10 s either way)
        release_freed_memory()
        if on_step is not None:
            on_step(done, parts)

    with generic_shapes():  # memory: one set of runtime buffers, as BYTES_PER_PIXEL counts
        return _render_tiled(stylizer, job, tiling, step, rows, cols)


def _render_tiled(
    stylizer: object, job: Prepared, tiling: Tiling, step: Callable[[], None], rows: int, cols: int
) -> Image.Image:
    h, w = job.content.shape[2:]
    t, halo = tiling.tile, tiling.halo
    stats, whole = whole_image_stats(stylizer, job, tiling, on_box=step)
    fixed = replace(job, smooth=lambda k, _s: stats.get(k, _s))
    if job.keep_light and job.light is None:  # one shift for every tile: each its own would show their seams
        fixed = replace(fixed, light=_light_missing(stylizer, fixed))
    out = np.empty((h, w, 3), np.uint8)
    band: tuple[int, np.ndarray, np.ndarray] | None = None  # (first row, sums 3 x n x W, weights n x W)
    for r in range(rows):
        y0, y1 = r * t, min(h, (r + 1) * t)
        ry0, ry1 = max(0, y0 - halo), min(h, y1 + halo)
        sums = np.zeros((ry1 - ry0, w, 3), np.float32)
        weights = np.zeros((ry1 - ry0, w), np.float32)
        if band is not None:  # rows above ry0 are complete: write them; the rest carries over
            b0, bsums, bweights = band
            _write(out, b0, bsums[: ry0 - b0], bweights[: ry0 - b0])
            sums[: b0 + len(bweights) - ry0] = bsums[ry0 - b0 :]
            weights[: b0 + len(bweights) - ry0] = bweights[ry0 - b0 :]
        wy = _ramp(ry0, ry1, y0, y1)
        for c in range(cols):
            x0, x1 = c * t, min(w, (c + 1) * t)
            rx0, rx1 = max(0, x0 - halo), min(w, x1 + halo)
            tile = _crop(fixed, ry0, ry1, rx0, rx1)
            feats = None
            if whole is not None:  # the whole image's relu4_1, cut to this tile (its halo included)
                feats = [whole[:, :, ry0 // 8 : -(-ry1 // 8), rx0 // 8 : -(-rx1 // 8)].float()]
            pixels = np.asarray(stylizer.render_untiled([tile], feats)[0], np.float32)  # type: ignore[attr-defined]
            weight = wy[:, None] * _ramp(rx0, rx1, x0, x1)[None, :]
            sums[:, rx0:rx1] += pixels * weight[:, :, None]
            weights[:, rx0:rx1] += weight
            step()
        band = (ry0, sums, weights)
    assert band is not None
    _write(out, band[0], band[1], band[2])
    return Image.fromarray(out, "RGB")


def _light_missing(stylizer: object, job: Prepared) -> float:
    """``adain.colours.light_missing`` of a tiled "luminance" render, measured on the whole content at most
    LIGHT_SIDE px (with the whole image's statistics): the shift measured so moved 2-4 levels of 255 between
    256, 512 and 1024 px on the example photos, where it is 19-25."""
    import torch.nn.functional as F

    from adain.image import to_tensor

    assert job.chroma_from is not None  # (keep_light: "luminance", which keeps the content's colours)
    h, w = job.content.shape[2:]
    scale = min(1.0, LIGHT_SIDE / max(h, w))
    size = (max(16, round(h * scale)), max(16, round(w * scale)))
    small = replace(job, content=F.interpolate(job.content, size=size, mode="area"), chroma_from=None,
                    keep_light=False, batch_key=padded_size(*size))
    out = to_tensor(stylizer.render_untiled([small])[0])  # type: ignore[attr-defined]
    return float(light_missing(out, F.interpolate(job.chroma_from.float(), size=size, mode="area")))


def _crop(job: Prepared, y0: int, y1: int, x0: int, x1: int) -> Prepared:
    """The part of a prepared job that one tile renders: content, regions and chroma cut alike."""

    def cut(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t[:, :, y0:y1, x0:x1]

    content = cut(job.content)
    assert content is not None
    return replace(job, content=content, regions=cut(job.regions), chroma_from=cut(job.chroma_from),
                   batch_key=padded_size(y1 - y0, x1 - x0))


def _write(out: np.ndarray, row: int, sums: np.ndarray, weights: np.ndarray) -> None:
    if len(weights):
        out[row : row + len(weights)] = np.clip(sums / weights[:, :, None] + 0.5, 0, 255).astype(np.uint8)
