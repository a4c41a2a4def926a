"""Video: stylize a clip's frames in order, stable in time.

A :class:`VideoStream` takes the styles and options once (their statistics are computed with the first
frame and reused for every other) and then stylizes frames in order with the Stylizer's own steps:
``prepare`` (decode, check the frame's size, optical flow from the previous input frame), the Stylizer's
``render`` (batched with other work on a server), and ``finish`` (blend in the previous output).

Temporal modes (``adain.wire.TEMPORAL_MODES``), ``strength`` s in [0, 1):

* ``none``: each frame alone; AdaIN's content statistics jump with the frame, so the output flickers.
* ``smooth``: the content statistics (relu4_1 mean and std, per region) are a running average,
  ``stats_t = (1 - s) * own_t + s * stats_{t-1}``, so the normalisation drifts instead of jumping; at a
  scene cut (the frame's own means far from the last frame's, or the flow's judgement below, made on
  frames at most ``CUT_SIDE`` px) it starts again.
* ``flow`` (the default): the optical flow between the input frames (OpenCV's DIS), where it is consistent
  forwards and backwards, carries the past forward twice. In feature space, the previous frame's AdaIN
  target is warped (bicubic, at relu4_1's resolution) and blended in by ``s`` times the share of consistent
  pixels of each cell (less where the cell's own target changed: a moving object's neighbours), then given
  back the frame's own channel statistics; decoding a target that follows the scene keeps the strokes in
  place. In pixels, the previous output is warped and blended in by ``OUTPUT_SHARE * s`` (soft-edged around
  occlusions), again with the fresh frame's channel mean and std. Elsewhere (occlusions, new areas, a pixel
  whose grey is not where its flow says it was) each frame is its own, and after a cut (under half the
  textured pixels' flow consistent, in the frame and in most of its textured blocks) all of it.
* ``smooth-flow``: both.

``benchmarks/video.py`` chose the default (flow, s = 0.95, OUTPUT_SHARE 0.42): on cutBunny it halves the
warping error of ``none`` (0.53x) for 10% more style loss at 1.13x the time; the README has the table.

With ``preserve_color="coral"`` (or ``"luminance"``: their light) the styles' colours are matched to the first
frame, once per stream.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from adain.errors import InvalidInputError
from adain.image import ImageSource, load_image
from adain.job import JOB_OPTIONS, CheckedJob, Job, style_list, temporal_problems
from adain.ops import RGB_TO_Y
from adain.prepared import Prepared, Stats, Targets
from adain.stylizer import Stylizer
from adain.wire import DEFAULT_TEMPORAL, DEFAULT_TEMPORAL_STRENGTH, refuse_unknown

# Share of a frame's textured pixels whose flow must be consistent (and, warped, the same grey within
# PHOTO_TOLERANCE) for the scene to go on; under it the frame is a cut (see _Flow.scene_share).
MIN_CONSISTENT = 0.5
BLOCKS = 4  # the grid, BLOCKS x BLOCKS, whose blocks' shares _Flow.scene_share also judges by
PHOTO_TOLERANCE = 24  # grey levels (0-255) a pixel may differ from where its flow says it was
TEXTURED = 4  # grey levels a pixel (Sobel / 8) above which a pixel is textured: where flow can be told from chance
SPIKE = 1.5  # how far over a channel's averaged std its own may be before the own one counts (VideoStream._smooth)
CUT_SIDE = 256  # the longest side of the frames smooth alone judges cuts on (it needs no flow of its own)
# How far a pixel's region levels (0-255) may differ from its flow source's for the past to be carried over it:
# a fixed mask's edge stays put while the scene moves across it (see _Flow.within_regions).
REGION_TOLERANCE = 32
# How far a relu4_1 cell's own AdaIN target may move from the previous frame's there (warped; RMS over channels,
# in the features' spread) and still take the whole carry-over; at CHANGED and beyond it takes none (_unchanged).
# Chosen on cutBunny (48 frames at 640 x 360, benchmarks/video.py) and a square crossing a texture (the visual tour's
# ghost, levels off each frame alone along its path): 0.2-0.6 warping error 0.0245 (0.0233 without the check), ghost
# 9.2 (42.3 without); 0.15-0.45 0.0252 and 7.8; 0.3-0.6 0.0243 and 10.1; a Gaussian exp(-(d / 0.5)^2) 0.0251 and 10.0.
UNCHANGED, CHANGED = 0.2, 0.6
LUMA = np.array(RGB_TO_Y, np.float32)  # as adain.ops.luminance


class _Flow:
    """Backward flow from frame t to t-1, with the pixels where it agrees with the forward flow."""

    MIN_SIDE = 32  # smaller sides are padded for DIS (see _calc): every size from 16 up measured safe

    def __init__(self) -> None:
        import cv2

        self.cv2 = cv2
        self.dis = cv2.DISOpticalFlow.create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)

    def between(self, prev: np.ndarray, cur: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(map_x, map_y, consistent) for ``cv2.remap`` of the previous frame onto the current one;
        ``prev`` and ``cur`` are H x W uint8 greyscale."""
        cv2 = self.cv2
        h, w = cur.shape
        back, fwd = self._calc(cur, prev), self._calc(prev, cur)  # t -> t-1 (where each pixel of t was), t-1 -> t
        gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
        map_x, map_y = gx + back[..., 0], gy + back[..., 1]
        fwd_at = cv2.remap(fwd, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=1e4)
        # Sundaram et al. (2010) / Ruder et al. (2016): forward and backward flow must cancel out.
        err = ((back + fwd_at) ** 2).sum(-1)
        consistent = err <= 0.01 * ((back**2).sum(-1) + (fwd_at**2).sum(-1)) + 0.5
        inside = (map_x >= 0) & (map_x <= w - 1) & (map_y >= 0) & (map_y <= h - 1)
        # And the pixel must look like where it came from: between two shots, flow that cancels out by chance
        # (flat areas, repeated patterns) matched unrelated pixels and carried the old shot's strokes over.
        warped = cv2.remap(prev, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        same = cv2.absdiff(warped, cur) <= PHOTO_TOLERANCE
        return map_x, map_y, consistent & inside & same

    def scene_share(self, cur: np.ndarray, consistent: np.ndarray) -> float:
        """The share of ``cur``'s textured pixels whose flow is ``consistent`` (all pixels' where under 1% is
        textured), or, where more, the median of that share over the textured blocks of a ``BLOCKS`` grid.

        Flat areas are consistent in any two frames: two shots sharing a dark backdrop (80% of the frame) had
        50-74% of all pixels consistent and were not taken for a cut; over textured pixels cuts measured 0-22%
        and motion within a scene 92% and up (cutBunny, the evaluation photos). The blocks are for an object
        whose texture outweighs the scene's: a checked square crossing a smooth scene (6% of the frame textured,
        most of it the square's) had 41-51% of the textured pixels consistent, so 3 of its 11 frames were taken
        for cuts (nothing carried over, the background's strokes jumping twice as much as between the others),
        while the flow held in every block it did not cover. At a cut the blocks fail as the whole frame does:
        90 pairs of photos, with and without a shared dark backdrop, 0.11 at most."""
        cv2 = self.cv2
        gx, gy = cv2.Sobel(cur, cv2.CV_32F, 1, 0), cv2.Sobel(cur, cv2.CV_32F, 0, 1)
        textured = gx * gx + gy * gy > (8 * TEXTURED) ** 2
        if textured.mean() < 0.01:
            return float(consistent.mean())
        starts = [np.unique(np.linspace(0, n, BLOCKS, endpoint=False).astype(int)) for n in cur.shape]
        sizes = [np.diff(s, append=n) for s, n in zip(starts, cur.shape)]

        def per_block(a: np.ndarray) -> np.ndarray:  # at most BLOCKS x BLOCKS counts
            return np.add.reduceat(np.add.reduceat(a, starts[0], axis=0, dtype=np.int32), starts[1], axis=1)

        count, held = per_block(textured), per_block(textured & consistent)
        judged = count >= 0.02 * np.outer(*sizes)  # a few textured pixels judge nothing
        shares = held[judged] / count[judged]
        return float(max(consistent[textured].mean(), np.median(shares) if shares.size else 0.0))

    def within_regions(self, warp: tuple[np.ndarray, np.ndarray, np.ndarray],
                       levels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``warp`` with the pixels whose flow crosses a region's edge taken out of ``consistent``. A mask stays
        where it is while the scene moves across it: carried over, the previous output of one region dragged its
        style into the next, the smear growing with the recursion (on a 4-px/frame pan, 46 levels within 16 px
        of the edge against 12 far from it). ``levels``: the regions' K x H x W maps (``Prepared.regions``)."""
        map_x, map_y, consistent = warp
        worst = np.zeros(consistent.shape, np.uint8)
        for level in levels:  # each region's map, H x W at the frame's stylized size
            source = self.cv2.remap(level, map_x, map_y, self.cv2.INTER_LINEAR, borderMode=self.cv2.BORDER_REPLICATE)
            np.maximum(worst, self.cv2.absdiff(source, level), out=worst)
        return map_x, map_y, consistent & (worst <= REGION_TOLERANCE)

    def _calc(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """DIS's flow from ``a`` to ``b``, for frames of any size: a side under ``MIN_SIDE`` is padded (edge
        pixels repeated) and the flow cropped back. OpenCV 4's DIS crashes the process (a segfault) on a
        frame 15 px high and 128 wide, and refuses one under 12 px both ways."""
        h, w = a.shape
        pad_y, pad_x = max(self.MIN_SIDE - h, 0), max(self.MIN_SIDE - w, 0)
        if pad_y or pad_x:
            a, b = (self.cv2.copyMakeBorder(x, 0, pad_y, 0, pad_x, self.cv2.BORDER_REPLICATE) for x in (a, b))
        # (None: OpenCV allocates the output, where its stubs ask for an array)
        return np.ascontiguousarray(self.dis.calc(a, b, None)[:h, :w])  # type: ignore[call-overload]

    def to_features(self, warp: tuple[np.ndarray, np.ndarray, np.ndarray], fh: int, fw: int) -> tuple[Any, Any]:
        """The same warp at relu4_1's resolution (one cell per 8 x 8 pixels): a ``grid_sample`` grid and
        the share of each cell's pixels whose flow is consistent (1 x 1 x fh x fw)."""
        import torch

        map_x, map_y, consistent = warp
        h, w = consistent.shape
        # Cell j covers pixels 8j .. 8j+7, the last ones partly the encoder's padding (bottom and right):
        # each cell's displacement is the mean of its 8 x 8 pixels', the padding taking its edge's. A plain
        # resize of the h x w maps onto the cells instead scaled them by 8 fh / h, a drift the recursion
        # compounded into streaks wherever a side is no multiple of 8 (e.g. 320 x 180).
        gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))

        def per_cell(a: np.ndarray) -> np.ndarray:
            padded = np.pad(a, ((0, 8 * fh - h), (0, 8 * fw - w)), mode="edge")
            return padded.reshape(fh, 8, fw, 8).mean((1, 3), dtype=np.float32)

        cells_x, cells_y = np.meshgrid(np.arange(fw, dtype=np.float32), np.arange(fh, dtype=np.float32))
        cx = cells_x + per_cell(map_x - gx) / 8  # a cell moves by its pixels' mean displacement, in cells
        cy = cells_y + per_cell(map_y - gy) / 8
        grid = np.stack([cx / max(fw - 1, 1) * 2 - 1, cy / max(fh - 1, 1) * 2 - 1], -1)
        share = per_cell(consistent.astype(np.float32))
        return torch.from_numpy(grid).unsqueeze(0), torch.from_numpy(share).view(1, 1, fh, fw)


class VideoStream:
    """Stylize one clip's frames in order; see the module docstring. Not thread-safe: one per clip."""

    OUTPUT_SHARE = 0.42  # the output blend's weight, as a share of the strength (benchmarks/video.py)
    # A scene cut, for smooth: measured frame to frame, motion moved the means by at most 0.22 std (cutBunny,
    # a pan), cuts by 0.82 (cutBunny's) to 2.9 (one photo to another).
    CUT = 0.5

    def __init__(
        self,
        stylizer: Stylizer,
        styles: Sequence[ImageSource],
        *,
        temporal: str = DEFAULT_TEMPORAL,
        strength: float | None = None,
        **options: Any,
    ) -> None:
        """``options`` are the per-image fields of :class:`adain.job.Job` (weights, alpha, preserve_color,
        mask, content_size, style_size); InvalidInputError lists every problem with them."""
        _refuse_unknown("VideoStream", options)
        job = Job.of("VideoStream", None, style_list(styles), options)
        bad = job.problems(stylizer.limits, content=False) + temporal_problems(temporal, strength, "strength")
        if options.get("refine_steps"):  # else accepted and not done
            bad.append(InvalidInputError("refine_steps", "the optimisation method is for images (seconds a frame)"))
        if bad:
            raise InvalidInputError.of(bad)
        self._setup(stylizer, job.check(stylizer.limits, content=False), temporal, strength)

    @classmethod
    def checked(cls, stylizer: Stylizer, job: CheckedJob, temporal: str, strength: float | None) -> VideoStream:
        """A stream for a job and temporal options that were checked already (``Job.check(content=False)``
        and ``temporal_problems``), as a server does before it spends anything on the stream; the style
        images are decoded here (InvalidInputError), so a bad one fails the stream before its frames come."""
        stream = cls.__new__(cls)
        stream._setup(stylizer, job, temporal, strength)
        for i, source in enumerate(job.styles):  # a bad style image is said now, not with the first frame
            load_image(source, field=f"styles[{i}]", max_pixels=stylizer.limits.max_pixels)
        return stream

    def _setup(self, stylizer: Stylizer, job: CheckedJob, temporal: str, strength: float | None) -> None:
        self.stylizer = stylizer
        self.job = job
        self.temporal = temporal
        self.strength = DEFAULT_TEMPORAL_STRENGTH if strength is None else float(strength)
        self.index = 0  # frames prepared so far
        # the styles' statistics and greyness (Prepared.grey), from frame 0
        self._styles: tuple[Targets, bool | tuple[bool, ...]] | None = None
        self._size: tuple[int, int] | None = None
        self._stats: dict[int, Stats] = {}  # the running average of each region's content statistics
        self._own: dict[int, Stats] = {}  # and the last frame's own
        self._carry = temporal in ("flow", "smooth-flow")  # the past carried over by the flow
        self._flow = _Flow() if temporal != "none" else None  # every mode that remembers judges cuts by the flow
        self._prev_grey: np.ndarray | None = None
        self._prev_out: np.ndarray | None = None
        self._warps: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._prev_target: Any = None
        self._prev_own: Any = None  # the last frame's own AdaIN target, before the past was mixed in
        self._levels: np.ndarray | None = None  # the regions' maps (K x H x W levels) on the CPU, for the flow
        self._cells: Any = None  # and as [0, 1] maps at relu4_1's size (1 x K x h x w), for the warped target
        self.output_blend = self.strength * self.OUTPUT_SHARE

    # --- the three steps ---------------------------------------------------------------------
    def prepare(self, frame: ImageSource) -> Prepared:
        """Decode frame ``self.index`` and compute its flow from the previous one; call in frame order."""
        name = f"frames[{self.index}]"
        img = load_image(frame, field=name, max_pixels=self.stylizer.limits.max_pixels)
        if self._size is None:
            self._size = img.size
        elif img.size != self._size:
            w, h = self._size
            raise InvalidInputError(name, f"frame is {img.width} x {img.height}, the stream's frames are {w} x {h}")
        prepared = self.stylizer.prepare(dataclasses.replace(self.job, content=img), self._styles)
        self._styles = self._styles or (prepared.targets, prepared.grey)  # computed once, with the first frame
        if self._carry:
            prepared.propagate = functools.partial(self._propagate, self.index, prepared.regions)
        cut = False  # whether the flow takes this frame for a new scene's first
        if self._flow is not None:
            h, w = prepared.content.shape[2:]
            if not self._carry:  # only the cut is wanted: judged smaller (DIS's time grows with the pixels)
                scale = min(1.0, CUT_SIDE / max(h, w))
                h, w = max(round(h * scale), 1), max(round(w * scale), 1)
            grey = np.asarray(img.convert("L").resize((w, h), Image.Resampling.BILINEAR))
            if self._prev_grey is not None:
                warp = self._flow.between(self._prev_grey, grey)
                # A cut carried the old scene's strokes into the new one for frames (85 levels), and averaged
                # statistics normalised the new one with the old one's (a dark blur). Judged before the regions'
                # edges are taken out: a detailed mask is no cut.
                cut = self._flow.scene_share(grey, warp[2]) < MIN_CONSISTENT
                if not cut and self._carry:
                    if prepared.regions is not None:
                        if self._levels is None:  # the same maps every frame (one mask, one size): read back once
                            self._levels = prepared.regions[0].cpu().numpy()
                        warp = self._flow.within_regions(warp, self._levels)
                    self._warps[self.index] = warp
            self._prev_grey = grey
        if self.temporal in ("smooth", "smooth-flow"):
            prepared.smooth = functools.partial(self._smooth, cut)
        self.index += 1
        return prepared

    def _smooth(self, cut: bool, region: int, stats: Stats) -> Stats:
        """A region's statistics averaged with the last frames'; ``cut``: the flow took the frame for a new scene."""
        prev, last = self._stats.get(region), self._own.get(region)
        self._own[region] = stats
        # (both are set below, together: last is None only where prev is)
        if prev is None or last is None or cut or self._cut(last, stats):
            self._stats[region] = stats  # after a cut the average starts again from the new scene
            return stats
        s, own_std = self.strength, stats[1]
        stats = ((1 - s) * stats[0] + s * prev[0], (1 - s) * own_std + s * prev[1])
        self._stats[region] = stats
        # A channel far stronger in this frame than on average (a sparse one that a moving object lights up: own std
        # up to 8x the average's) keeps at least 1 / SPIKE of its own spread: normalised by the average it was
        # amplified into a blotch beside the object (a visual tour's: 91 levels off each frame alone in a 16-px
        # block, now 37). Only that side: clamping both ways gave back half the flicker smoothing takes away.
        return stats[0], stats[1].maximum(own_std / SPIKE)

    @classmethod
    def _cut(cls, last: Stats, own: Stats) -> bool:
        """Whether the scene changed between two frames: their own relu4_1 channel means moved by over
        ``CUT`` of the last frame's std on average. Averaged across a cut, the statistics normalised the new
        scene with the old one's for seconds (a dark blur at strength 0.95)."""
        (mean, _), (last_mean, last_std) = own, last
        return float(((mean.float() - last_mean.float()).abs() / (last_std.float() + 1e-5)).mean()) > cls.CUT

    def _propagate(self, index: int, regions: Any, target: Any) -> Any:
        """Frame ``index``'s AdaIN target with the previous frame's warped onto it where the flow is
        consistent, renormalised to the frame's own channel statistics; recursive, so a static area keeps
        its texture. Decoding a target that follows the scene is what keeps the strokes in place. ``regions``:
        the frame's (``Prepared.regions``), or None."""
        import torch.nn.functional as F

        from adain.ops import mean_std
        from adain.regions import maps_at

        warp = self._warps.get(index)
        own = target.float()
        prev_own, self._prev_own = self._prev_own, own
        if warp is not None and self._prev_target is not None and self._prev_target.shape == target.shape:
            assert self._flow is not None  # (propagate is set only where the past is carried: a flow mode)
            assert prev_own is not None  # (set with _prev_target)
            grid, share = self._flow.to_features(warp, *target.shape[2:])
            grid = grid.to(own.device)
            warped = F.grid_sample(self._prev_target, grid, mode="bicubic", padding_mode="border", align_corners=True)
            share = share.to(own.device)
            # and where the cell's own target is what it was (the pixels' checks pass beside a moving object)
            share = share * _unchanged(own, F.grid_sample(prev_own, grid, mode="bicubic", padding_mode="border",
                                                          align_corners=True))
            if regions is not None:  # as in _Flow.within_regions, for the cells: the warp reaches 2 cells across
                if self._cells is None:  # the same every frame (one mask, one size): made once
                    self._cells = maps_at(regions.to(own.device), target.shape[2:])
                m = self._cells
                moved = F.grid_sample(m, grid, mode="bicubic", padding_mode="border", align_corners=True)
                share = share * ((moved - m).abs().amax(1, keepdim=True) <= REGION_TOLERANCE / 255)
            weight = share * self.strength
            mixed = (1 - weight) * own + weight * warped
            # Blending averages textures and so flattens them; the frame's own statistics put the
            # contrast back (without this the style loss rises ~10% at the same stability).
            mean, std = mean_std(mixed)
            own_mean, own_std = mean_std(own)
            target = (mixed - mean) / std * own_std + own_mean
        self._prev_target = target.float()
        return target

    def finish(self, index: int, output: Image.Image) -> Image.Image:
        """Frame ``index``'s final output: with flow, the warped previous output blended in. Call in order."""
        if not self._carry:
            return output
        assert self._flow is not None  # (carried: a flow mode)
        cv2 = self._flow.cv2
        out = np.asarray(output, dtype=np.float32)
        warp = self._warps.pop(index, None)
        if warp is not None and self._prev_out is not None:
            map_x, map_y, consistent = warp
            warped = cv2.remap(self._prev_out, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            # A soft edge around occlusions, so that kept and fresh areas do not meet in a seam.
            weight = cv2.GaussianBlur(consistent.astype(np.float32), (5, 5), 0)[..., None] * self.output_blend
            fresh = out
            out = (1 - weight) * out + weight * warped
            # Averaging two textures lowers their contrast: give the blend the fresh frame's per-channel mean
            # and std back.
            mean, std = out.mean((0, 1)), out.std((0, 1)) + 1e-6
            out = (out - mean) / std * fresh.std((0, 1)) + fresh.mean((0, 1))
            if self.job.color == "luminance":  # the blend's light, the frame's own colours (they drifted 3 levels)
                out = fresh + (out @ LUMA - fresh @ LUMA)[..., None]
        self._prev_out = out
        return Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8), "RGB")

    def stylize(self, frame: ImageSource) -> Image.Image:
        """Prepare, render and finish one frame (in process, unbatched)."""
        index = self.index
        prepared = self.prepare(frame)
        return self.finish(index, self.stylizer.render([prepared])[0])


def _unchanged(own: Any, before: Any) -> Any:
    """How much of each relu4_1 cell's past may be carried over (1 x 1 x h x w, in [0, 1]): 1 where the frame's own
    target is what the previous frame's own target was there (warped by the flow), down to 0 as it moves by
    UNCHANGED to CHANGED of the features' spread.
    The pixels' checks (flow both ways, grey within PHOTO_TOLERANCE) pass beside a moving object, but a cell's
    features see far beyond its 8 x 8 pixels: carried over at strength 0.95 a frame, the object's features left a
    trail along its whole path that outlived it by seconds (a visual tour's: 42 levels off each frame alone)."""
    scale = own.std((2, 3), correction=0).pow(2).mean().sqrt() + 1e-6  # the features' spread, one number
    moved = (own - before).pow(2).mean(1, keepdim=True).sqrt() / scale
    return (1 - (moved - UNCHANGED) / (CHANGED - UNCHANGED)).clamp(0, 1)


def _refuse_unknown(caller: str, options: dict[str, Any], more: tuple[str, ...] = ()) -> None:
    """An option a video call does not have as a TypeError naming ``caller`` (the stream's own two among the names:
    ``temporal_strength``, the wire's, was "an unexpected keyword argument" with a list that named neither)."""
    refuse_unknown(caller, options, [*JOB_OPTIONS, "temporal", "strength", *more], {"temporal_strength": "strength"})


def stylize_video(
    stylizer: Stylizer,
    source: str | Path,
    output: str | Path,
    styles: Sequence[ImageSource],
    *,
    progress: Callable[[int, int], None] | None = None,
    max_fps: float | None = None,
    start: float = 0.0,
    duration: float | None = None,
    **options: Any,
) -> int:
    """Stylize the video file ``source`` into ``output`` (container from its suffix; audio copied), in
    process; ``options`` as for :class:`VideoStream`. The file appears only when complete. Returns the
    number of frames written (a GIF leaves out a burst's: ``VideoWriter.write``); ``progress(done, total)`` is
    called after each (total 0 when unknown). ``max_fps``: at most this many frames a second are stylized and
    written (the others dropped; the sound in step);
    ``start`` and ``duration`` (seconds) take a part of the clip, its sound too."""
    from adain.media import VideoReader, VideoWriter, atomic_output, container_for, decode_side, same_file

    _refuse_unknown("stylize_video", options, ("progress", "max_fps", "start", "duration"))  # (said "VideoStream()")
    stream = VideoStream(stylizer, styles, **options)
    container = container_for(output)
    if same_file(output, source):
        raise InvalidInputError("output", f"{output} is the source clip: it would be overwritten")
    Path(output).parent.mkdir(parents=True, exist_ok=True)  # as the thin client's (a FileNotFoundError named the
    # temporary file)
    # frames scaled while decoding when they are to be stylized smaller (4K: its tone mapping and copies)
    reader = VideoReader(source, max_side=decode_side(options), max_fps=max_fps, start=start, duration=duration)
    with reader, atomic_output(output) as tmp:
        writer, written = None, 0
        try:
            for img, t in reader.frames():
                out = stream.stylize(img)
                if writer is None:
                    writer = VideoWriter(tmp, width=out.width, height=out.height, rate=reader.rate,
                                         source=reader, container=container)
                written += writer.write(out, t)
                if progress is not None:
                    progress(stream.index, reader.total)
            assert writer is not None  # (frames() raises MediaError where it yields none)
            writer.close()
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
    return written
