"""The public API: content image + style images (+ weights, alpha, colour, mask) -> stylized image.

The path of an image, each step in one place:
    bytes --(image.load_image)--> PIL --(image.to_tensor)--> tensor --(Encoder.encode)--> relu4_1
    --(ops.adain, mixed by weight / mask, then alpha)--> target --(Decoder, with the content where it has the
    detail path)--> tensor --(batched.to_images)--> PIL

Work is split in two so a server can batch: ``prepare(job)`` decodes one checked request and looks up
its style statistics (LRU-cached, so a repeated style costs no encoder pass); ``render(prepared)`` runs
the content encoder and the decoder for many prepared jobs at once, batching those of one size.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, replace
from typing import Any, cast

import torch
from PIL import Image

from adain import stopping
from adain.backends import make_backend
from adain.batched import per_job, plain_targets, to_images
from adain.cache import StyleCache
from adain.colours import grey_styles, is_grey
from adain.compiled import DEFAULT_SHAPES
from adain.decoder import load_decoder
from adain.encoder import Encoder, feature_size, pad_batch, pad_to, padded_size
from adain.errors import InvalidInputError
from adain.image import ImageSource, image_key, load_image, resize_longest, to_tensor
from adain.job import CheckedJob, Job, JobOptions, is_list, style_list
from adain.ops import adain, coral, luminance, matched_luminance, mean_std
from adain.optimize import OnStep, max_refine_pixels, parts_progress, refine
from adain.precision import cpu_features, cpu_info, wants_bf16
from adain.prepared import Prepared, Stats, Targets
from adain.regions import alpha_map, region_maps, regional_target
from adain.tiling import Tiling, auto_threshold, image_stats, render_tiled
from adain.wire import COLOR_MODES, Limits, style_too_small

if sys.version_info >= (3, 11):  # (at run time too: typing.get_type_hints reads it)
    from typing import Unpack
else:  # (torch depends on typing_extensions)
    from typing_extensions import Unpack

# On a GPU, contents up to this many pixels are prepared into pinned memory, so that render's copy to the device
# is queued without waiting: the batched sizes a server's throughput rests on. torch keeps pinned blocks for
# reuse, each rounded up to a power of two: a larger content's would hold up to twice its size of the host's
# memory for good, for a copy that its own render outlasts many times.
PINNED_PIXELS = 1 << 20
log = logging.getLogger("adain.stylizer")


def _pinned(content: torch.Tensor) -> torch.Tensor:
    """``content`` in pinned memory; as it is where the driver pins no more (a slower copy, not a failed job)."""
    try:
        return content.contiguous().pin_memory()
    except RuntimeError as e:
        log.warning("pinned memory refused (%s): this content is copied to the GPU from pageable memory", e)
        return content


_forked: list[bool] = []  # whether the at-fork handler below is registered (once a process)


def _one_thread_in_a_forked_child() -> None:
    """torch's OpenMP pool (and OpenVINO's) does not survive a fork: a child forked once a Stylizer had run its
    first parallel op (at creation) hung for ever at its next one (a ProcessPoolExecutor on Linux, whose default
    start method is fork, never returned). One thread in the child runs; spawn or forkserver keep every core."""
    torch.set_num_threads(1)


class Stylizer:
    """AdaIN style transfer with the shipped decoder (or ``decoder=path``). Thread-safe.

    CUDA when present, else CPU; ``precision="auto"`` is bf16 where the device computes it natively
    (a GPU, a CPU with AVX512-BF16 or AMX) and float32 elsewhere (``adain.precision``); ``"int8"`` quantizes
    the networks for OpenVINO on a CPU (``adain.int8``: faster, the pixels a little further off). The encoder and
    decoder run on ``backend`` (``adain.backends``: ``auto`` takes OpenVINO on a CPU when installed);
    always inference mode; ``compile_shapes`` (batch, height, width) are what ``backend="compiled"`` compiles
    for (``adain.compiled``). ``limits`` bound every job. Contents over ``tiling.threshold`` pixels
    (default: from the device's memory) are rendered in tiles (``adain.tiling``).
    """

    def __init__(
        self,
        decoder: str | None = None,
        device: str | None = None,
        *,
        limits: Limits | None = None,
        cache_size: int = 64,
        precision: str = "auto",
        backend: str = "auto",
        tiling: Tiling | None = None,
        compile_shapes: Sequence[tuple[int, int, int]] = DEFAULT_SHAPES,
    ) -> None:
        if not _forked and hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=_one_thread_in_a_forked_child)
            _forked.append(True)
        for name, value, kind in (("limits", limits, Limits), ("tiling", tiling, Tiling)):
            if value is not None and not isinstance(value, kind):
                raise TypeError(f"{name} must be an adain.{kind.__name__}, got a {type(value).__name__}")
        self.cache = StyleCache(cache_size)  # its argument checked before the model loads
        try:
            self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        except (RuntimeError, TypeError):  # torch's own message lists its every device type, ours the two we run on
            raise ValueError(f"device {device!r}: not a device; give 'cpu', 'cuda' or 'cuda:N'") from None
        if self.device.type not in ("cpu", "cuda"):  # mps, xpu, meta: backends here are the CPU's and CUDA's
            raise ValueError(f"device {device!r}: this library runs on 'cpu' or 'cuda' ('cuda:N')")
        self.cuda = self.device.type == "cuda"
        if self.cuda and not torch.cuda.is_available():  # else torch's AssertionError at the first tensor
            raise ValueError(f"device {device}: CUDA is not available here")
        dec, self.decoder_file = load_decoder(decoder)
        # (Module.to takes memory_format, as documented; torch's overloads leave it out)
        self.decoder = dec.to(self.device, memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.encoder = Encoder().to(self.device, memory_format=torch.channels_last)  # type: ignore[call-overload]
        bf16 = wants_bf16(precision, self.cuda)
        self.backend = make_backend(backend, self.encoder, self.decoder, self.device, bf16, precision != "auto",
                                    compile_shapes, quantized=precision == "int8")
        self.dtype = self.backend.dtype
        tiling = tiling or Tiling()
        if tiling.threshold < 0:
            tiling = replace(tiling, threshold=auto_threshold(self.device))
        self.tiling = tiling
        self.limits = limits or Limits()

    def __reduce__(self) -> Any:
        raise TypeError("a Stylizer holds a loaded model and its runtime's threads: it cannot be pickled into "
                        "another process (an argument to a spawned worker); make one in each worker, e.g. in a "
                        "ProcessPoolExecutor's initializer")

    @property
    def info(self) -> dict[str, Any]:
        """What GetServerInfo reports of the model: weights, device, dtype and the limits enforced."""
        return {
            "model": "adain-vgg19-relu4_1",
            "arch_version": self.decoder.arch_version,
            "weights_version": self.decoder_file.version,
            "decoder_path": str(self.decoder_file.path),
            "decoder_meta": self.decoder_file.meta,
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "backend": self.backend.name,
            "precision": self.backend.precision,
            "cpu_model": cpu_info()[0],
            "cpu_features": cpu_features(),
            "limits": asdict(self.limits),
            "style_cache_size": self.cache.size,
            "tiling": {**asdict(self.tiling), "tile_memory_bytes": self.tiling.peak_bytes()},
            "max_refine_pixels": max_refine_pixels(self.tiling.threshold),
        }

    # --- the public one-call API -------------------------------------------------------------
    def stylize(
        self,
        content: ImageSource,
        styles: ImageSource | Sequence[ImageSource],
        *,
        on_step: OnStep | None = None,
        **options: Unpack[JobOptions],
    ) -> Image.Image:
        """Stylize one content image; ``options`` are the fields of :class:`Job` (keywords: ``help()`` and a
        notebook's completion see only ``**options``, so here they all are):

        ``weights`` (one per style, relative), ``alpha`` (in [0, 1]), ``preserve_color`` (None, "coral",
        "luminance"), ``mask`` (two styles: white takes styles[0]); regions: ``masks`` (one per style) or
        ``labels`` with ``label_values``, and ``region_alphas``; ``content_size``, ``style_size`` (longest
        sides; None or 0: as it is, and 512); the optimisation method: ``refine_steps`` (0: off),
        ``refine_init`` ("adain", "content"), ``content_weight``, ``style_weight``, ``tv_weight``,
        ``refine_size``, ``optimizer`` ("lbfgs", "adam").

        With ``refine_steps`` the optimisation method (``adain.optimize``) runs, calling ``on_step`` after every
        iteration; a content rendered in tiles calls it after each statistics box and tile (it may raise
        StoppedError to stop)."""
        prepared = self.prepare(Job.of("stylize", content, style_list(styles), options))
        if prepared.job is not None and prepared.job.refine_steps:
            return refine(self, prepared, on_step=on_step)
        if on_step is not None and self.tiling.wants(prepared):  # minutes of tiles: said, and stoppable
            return render_tiled(self, prepared, self.tiling, on_step=parts_progress(on_step))
        return self.render([prepared])[0]

    def stylize_batch(
        self,
        contents: Sequence[ImageSource],
        styles: ImageSource | Sequence[ImageSource],
        *,
        on_step: OnStep | None = None,
        **options: Unpack[JobOptions],
    ) -> list[Image.Image]:
        """Stylize several contents with the same styles and options; same-size contents share a batch
        (with ``refine_steps``, each is optimised in turn, ``on_step`` called after each of its iterations). A
        content's problem names it: ``contents[i]``."""
        if not is_list(contents):
            raise InvalidInputError("contents", f"must be a list of content images, got a {type(contents).__name__}"
                                                " (one content: stylize())")
        styles, prepared = style_list(styles), []
        for i, content in enumerate(contents):
            try:
                prepared.append(self.prepare(Job.of("stylize_batch", content, styles, options)))
            except InvalidInputError as e:
                if e.field == "content":
                    raise InvalidInputError(f"contents[{i}]", e.description) from None
                if ", content is " in e.description:  # a mask's size against this content's: say which content
                    raise InvalidInputError(e.field, e.description.replace("content", f"contents[{i}]")) from None
                raise
        if options.get("refine_steps"):
            return [refine(self, p, on_step=on_step) for p in prepared]
        return self.render(prepared)

    # --- step 1: decode, style statistics ----------------------------------------------------
    def prepare(
        self, job: Job | CheckedJob, styles: tuple[Targets, bool | tuple[bool, ...]] | None = None
    ) -> Prepared:
        """Decode a job (checking it first unless it is a CheckedJob) and look up (or compute) its style
        statistics, unless ``styles`` gives them with whether they are grey (a video's frames reuse the first
        frame's ``(targets, grey)``). Raises InvalidInputError."""
        if isinstance(job, Job):
            job = job.check(self.limits)
        max_pixels = self.limits.max_pixels
        # (decoded smaller where it is a large JPEG, unless masks or labels must match its full size)
        plain = job.masks is None and job.labels is None and job.mask is None
        # (a template's None content, given here unchecked, is refused by load_image as no image: InvalidInputError)
        img = load_image(cast(ImageSource, job.content), field="content", max_pixels=max_pixels,
                         longest=job.content_side if plain else None)
        source_size = img.size
        img = resize_longest(img, job.content_side)
        regions = region_maps(job, source_size, img.size, max_pixels)
        content = to_tensor(img)
        # "coral" matches each style's colours to this content, "luminance" its light: the content is part of the
        # style's key.
        content_key = image_key(img, "content") if job.color in COLOR_MODES and styles is None else None
        if styles is not None:
            targets, grey = styles
        else:
            targets, greys = [], []
            for i, (source, w) in enumerate(zip(job.styles, job.weights)):
                if w == 0 and regions is None:
                    continue  # a zero weight drops the style
                (mean, std), style_grey = self._style_stats(
                    source, f"styles[{i}]", job.style_size, job.color, content, content_key)
                targets.append((mean, std, w))
                greys.append(style_grey)  # a zero-weight style kept for its region is never applied: not counted
            # "luminance" keeps the photo's colours itself; "coral" made each style the content's colours, so a
            # black-and-white photo's are grey (it came back sepia: the decoder's own faint colour)
            grey = job.color != "luminance" and grey_styles(greys, [t[2] for t in targets], regions is not None)
        chroma_from = None
        if job.color == "luminance":
            chroma_from = content
            content = luminance(content).expand(-1, 3, -1, -1)
        elif job.color == "coral" and grey is True:  # a grey photo, its styles made its colours: the photo's own
            # colours, not none (grey but for a red umbrella, the umbrella came back grey: chroma 85 -> 0; a
            # pixel-correctness tour's), which are grey where the decoder would have tinted it
            chroma_from = content
        if self.cuda and img.width * img.height <= PINNED_PIXELS:
            content = _pinned(content)  # render's copy waits for nothing (adain.prepared)
        return Prepared(
            content=content,
            targets=targets,
            alpha=job.alpha,
            regions=regions,
            region_alphas=job.region_alphas,
            chroma_from=chroma_from,
            keep_light=job.color == "luminance" and regions is None,
            grey=grey,
            batch_key=padded_size(*content.shape[2:]),
            job=job,
        )

    def _style_stats(
        self,
        source: ImageSource,
        name: str,
        size: int,
        mode: str | None,
        content: torch.Tensor,
        content_key: str | None,
    ) -> tuple[Stats, bool]:
        """A style's relu4_1 statistics and whether it is grey, cached."""
        key = (image_key(source, name), size, mode, content_key)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        with torch.inference_mode():
            style = self.style_tensor(source, name, size, mode, content)
            h, w = style.shape[2:]
            small = style_too_small(w, h, size)  # its statistics would be a few cells': a flat wash over the photo
            if small:
                raise InvalidInputError(name, small)
            if self.tiling.wants_pixels(h * w):  # as large as a print: box by box, in bounded memory
                stats = image_stats(self, style, self.tiling)
            else:
                stats = mean_std(self.encoder.encode([style], run=self.backend.relu4_1)[0])
            grey = is_grey(style)
        self.cache.put(key, (stats, grey))
        return stats, grey

    def style_tensor(
        self, source: ImageSource, name: str, size: int, mode: str | None, content: torch.Tensor
    ) -> torch.Tensor:
        """A style image as the encoder sees it: decoded, scaled to ``size``, its colours matched to the
        content ("coral") or made grey with the content's mean and spread of light ("luminance"). 1 x 3 x h x w
        on the CPU."""
        img = load_image(source, field=name, max_pixels=self.limits.max_pixels, longest=size)
        style = to_tensor(resize_longest(img, size))
        if mode == "coral":
            return coral(style[0], content[0].cpu()).unsqueeze(0)
        if mode == "luminance":
            return matched_luminance(style, content.cpu()).expand(-1, 3, -1, -1)
        return style

    # --- step 2: encode contents, mix AdaIN targets, decode (batched) ------------------------
    @staticmethod
    def target(feat: torch.Tensor, job: Prepared) -> torch.Tensor:
        """AdaIN target for one content's relu4_1 (1 x C x h x w): styles mixed, then alpha."""
        smooth = job.smooth or (lambda region, stats: stats)
        if job.regions is not None:
            return regional_target(feat, job.regions, job.targets, job.region_alphas, job.alpha, smooth, job.propagate)
        else:
            stats = smooth(0, mean_std(feat))
            t = sum(w * adain(feat, mean, std, stats) for mean, std, w in job.targets)
            assert isinstance(t, torch.Tensor)  # (one style at least: Job.problems refuses all weights 0)
        if job.propagate is not None:
            t = job.propagate(t)
        return job.alpha * t + (1 - job.alpha) * feat.float()

    def _decoder_alphas(self, jobs: Sequence[Prepared], size: tuple[int, int]) -> torch.Tensor | float:
        """What an alpha-aware decoder is told: one number where every job has the same alpha (the decoder then
        reads nothing back from the device), else one alpha per job, or a map per job where any has regions."""
        if not self.decoder.alpha_input or all(j.regions is None for j in jobs):
            if len({j.alpha for j in jobs}) == 1:
                return float(jobs[0].alpha)
            return per_job([j.alpha for j in jobs], self.device)
        maps = []
        for j in jobs:
            h, w = feature_size(*j.content.shape[2:])
            if j.regions is None:
                a = torch.full((1, 1, h, w), j.alpha, device=self.device)
            else:
                a = alpha_map(j.regions.to(self.device), [t[2] for t in j.targets], j.region_alphas, j.alpha, (h, w))
            maps.append(pad_to(a, *size))
        return torch.cat(maps)

    def render(self, jobs: Sequence[Prepared]) -> list[Image.Image]:
        """Stylize prepared jobs: large ones tile by tile (``adain.tiling``), the rest batched. Order is kept.
        Raises StoppedError part-way where this thread's renders are to stop (``adain.stopping``: the server's,
        once a batch's callers have all gone)."""
        out: list[Image.Image | None] = [None] * len(jobs)
        plain = []
        for i, job in enumerate(jobs):
            if self.tiling.wants(job):
                out[i] = render_tiled(self, job, self.tiling)
            else:
                plain.append(i)
        for i, img in zip(plain, self.render_untiled([jobs[i] for i in plain])):
            out[i] = img
        return out  # type: ignore[return-value]

    def render_untiled(
        self, jobs: Sequence[Prepared], feats: Sequence[torch.Tensor] | None = None
    ) -> list[Image.Image]:
        """Stylize prepared jobs whole; those with the same ``batch_key`` run as one batch. Order is kept.
        ``feats``: the jobs' relu4_1 when already encoded (a tile's, cut from the whole image's)."""
        out: list[Image.Image | None] = [None] * len(jobs)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, job in enumerate(jobs):
            groups.setdefault(job.batch_key, []).append(i)
        for (ph, pw), idx in groups.items():
            with torch.inference_mode():
                # Each content's one copy to the device, made by the thread that runs the device (adain.prepared).
                need = feats is None or self.decoder.detail is not None
                contents = [jobs[i].content.to(self.device, non_blocking=True) for i in idx] if need else []
                if feats is None:
                    group = self.encoder.encode(contents, run=self.backend.relu4_1)
                else:
                    group = [feats[i].to(self.device, self.dtype) for i in idx]
                stopping.check()  # (a batch its callers left: the decoder's half not run)
                batch = [jobs[i] for i in idx]
                # the targets as batch ops where the jobs allow, else job by job (adain.batched: why)
                target = plain_targets(group, batch, (ph // 8, pw // 8))
                if target is None:
                    target = torch.cat([pad_to(self.target(f, job), ph // 8, pw // 8) for f, job in zip(group, batch)])
                alphas = self._decoder_alphas(batch, (ph // 8, pw // 8))
                images = None
                if self.decoder.detail is not None:  # the detail path sees the contents, padded as encoded
                    images = pad_batch(contents)
                y = self.backend.decode(target.to(group[0].dtype), alphas, images)
                for i, img in zip(idx, to_images(y, batch)):
                    out[i] = img
        return out  # type: ignore[return-value]
