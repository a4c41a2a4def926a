"""The optimisation method (Gatys et al., 2016) on the Stylizer's encoder: refine an AdaIN output, or run
the classic method from the content image.

The pixels of an image are optimised on

    content_weight * MSE(relu4_1(x), content target)
    + style_weight * alpha * style term over relu1_1..relu4_1
    + tv_weight * total variation

* content target: the content's own relu4_1 (``REFINE_TARGET``; the classic choice), or the job's AdaIN
  target (``Stylizer.target``: styles mixed, masks, alpha). ``benchmarks/refine.py --ablations``: at 10
  iterations the content's features give a 12% lower content loss for the same Gram style loss.
* style term: Gram matrices (Gatys et al.) or the AdaIN mean/std statistics (``style_loss``), each layer's
  MSE summed. Several styles are mixed by weight (their Grams, or their means and stds); with a mask each
  region is measured under its own soft mask against its own style, weighted by its area.
* colour modes work as in the Stylizer: "coral" styles are colour-matched to the content; "luminance"
  optimises the grey image and puts the content's chroma back at the end.

``refine_init="adain"`` starts from the decoder's output, so a few steps do what the classic method,
``refine_init="content"``, needs a hundred for. ``refine_size`` optimises at a smaller longest side and
adds the upsampled change to the full-size start. L-BFGS (default) or Adam; a callback after every step
reports progress and may raise :class:`StoppedError` to stop at once (a cancelled call, a deadline).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol, cast

import torch
import torch.nn.functional as F
from PIL import Image

from adain.colours import finish
from adain.encoder import Encoder, Features
from adain.errors import InvalidInputError, StoppedError
from adain.image import ImageSource, to_image, to_tensor
from adain.ops import gram, luminance, mean_std, weighted_mean_std
from adain.prepared import Prepared
from adain.regions import maps_at, region_weights
from adain.tiling import BYTES_PER_PIXEL, MIN_AUTO_THRESHOLD, Tiling, render_tiled, tiled_parts
from adain.wire import REFINE_TV_WEIGHT


class Steps(Protocol):
    """The Stylizer's steps the optimisation uses (a Protocol, so this module never imports the Stylizer)."""

    encoder: Encoder
    tiling: Tiling
    device: torch.device

    def target(self, feat: torch.Tensor, job: Prepared) -> torch.Tensor: ...

    def style_tensor(
        self, source: ImageSource, name: str, size: int, mode: str | None, content: torch.Tensor
    ) -> torch.Tensor: ...

    def render(self, jobs: Sequence[Prepared]) -> list[Image.Image]: ...

__all__ = ["Objective", "Progress", "StoppedError", "optimize", "refine"]

FIRST_STEP = 1 / 255  # mean pixel change of L-BFGS's first step (see optimize)
# L-BFGS's pixels are free, and a penalty keeps them near [0, 1]: its weight times the mean of (x - clamp(x))^2,
# which like the objective's terms is an average over the image, so it holds alike at any size. Without it
# the classic method ran to [-1.41, 1.58] and the final clamp took its objective from 34 back to 386 (plain
# AdaIN's level); at this weight 41 (refine, 30 steps: 67.7 -> 61.3), weights 0.3-100 tried at 256 px.
BOUND_WEIGHT = 2e5
# The loss weights' scale: only their ratios matter, so the largest is brought down to this, the others with it
# (a style weight of 1e8, within the accepted 1e9, overflowed to NaN in the line search's first iteration).
MAX_TERM_WEIGHT = 1e6
ADAM_LR = 0.02  # pixels in [0, 1]; benchmarks/refine.py --ablations compares Adam with L-BFGS
REFINE_TARGET = "content"  # the content term of a refine; benchmarks/refine.py --ablations measured it
# Working memory of a refine, a pixel of the image optimised: VGG's activations to relu4_1 with their gradients
# in float32 (5.4 KB/px measured at 512 px) and L-BFGS's history of 100 pairs of image-sized vectors (2.4 KB/px).
# Unbounded, a 1024-px refine took 5.5 GB and a phone photo would have taken ~50 GB.
REFINE_BYTES_PER_PIXEL = 8192


@dataclass(frozen=True)
class Progress:
    """What the callback gets after each step: one monotonic count of the call's work (what a progress bar
    shows), and the optimisation's own iterations (what a reply says were run)."""

    # 1 .. steps: the iterations done; a refine of a tiled (print-size) content counts its first render's
    # statistics boxes and tiles first (``adain.tiling.tiled_parts``), its iterations after them. Where L-BFGS
    # converges before the iterations asked, a last report says steps of steps: the work is done.
    step: int
    steps: int
    loss: float  # the objective where the step ended (L-BFGS's accepted point; Adam: where it began; 0 for a tile)
    seconds: float  # since the call's work started (a tiled refine's: its tiles' time, then the iterations')
    image: torch.Tensor | None = None  # the clamped iterate, at the checkpoints asked for
    iteration: int = 0  # the optimisation's iterations done (0 during a tiled render; fewer than asked: converged)


OnStep = Callable[[Progress], None]


def parts_progress(on_step: OnStep, more: int = 0) -> Callable[[int, int], None]:
    """A tiled render's ``on_step(done, total)`` as Progress reports, timed from now, its total counting
    ``more`` steps to come (a refine's iterations)."""
    t0 = time.perf_counter()
    return lambda done, total: on_step(Progress(done, total + more, 0.0, time.perf_counter() - t0))


class Objective:
    """The loss of an image (1 x 3 x h x w in [0, 1]) against targets computed once."""

    def __init__(
        self,
        encoder: torch.nn.Module,
        content_target: torch.Tensor,
        styles: list[tuple[Features | None, float]],
        *,
        regions: torch.Tensor | None = None,
        region_alphas: Sequence[float] | None = None,
        content_weight: float = 1.0,
        style_weight: float = 1.0,
        tv_weight: float = 0.0,
        style_loss: str = "gram",
    ) -> None:
        """``styles``: each style's features and weight (weights summing to 1); with ``regions``
        (1 x K x H x W at the image's size, ``adain.regions``) each style is matched under its share of each
        position (its map times its weight, overlaps normalised, as the forward pass blends them: a style of
        weight 0 applies nowhere; its features may be None), scaled by that share's area and its region
        alpha, and uncovered pixels have no style term."""
        self.encoder = encoder
        self.content_target = content_target.float()
        down = min(1.0, MAX_TERM_WEIGHT / max(content_weight, style_weight, tv_weight, 1e-30))  # see MAX_TERM_WEIGHT
        self.content_weight, self.style_weight, self.tv_weight = (w * down for w in (content_weight, style_weight,
                                                                                   tv_weight))
        self.kind = style_loss
        self.region_alphas = list(region_alphas) if region_alphas is not None else [1.0] * len(styles)
        self.shares: list[torch.Tensor] = []  # per layer, 1 x K x h x w: each style's share of each cell
        self.targets: list[list[tuple[torch.Tensor, ...]] | None]  # per style (with regions; None: weight 0) and layer
        if regions is None:  # one mixed target per layer (features are None only beside regions)
            self.targets = [[self._mix([(self._stats(f[i]), w) for f, w in styles if f is not None]) for i in range(4)]]
        else:  # one target per region and layer
            p = region_weights(regions, [w for _, w in styles], None, 1.0)[0]
            h, w = p.shape[2:]
            for cell in (1, 2, 4, 8):  # VGG's layers floor at each pooling: a layer sees 8 * (h // 8) rows, ...
                hh, ww = h // cell * cell, w // cell * cell
                self.shares.append(p if cell == 1 else F.avg_pool2d(p[..., :hh, :ww], cell) if hh and ww else p)
            self.targets = [None if f is None else [self._stats(f[i]) for i in range(4)] for f, _ in styles]

    def _stats(self, feat: torch.Tensor, weight: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        feat = feat.float()
        if self.kind == "gram":
            if weight is None:
                return (gram(feat),)
            flat, m = feat.flatten(2), weight.flatten(2)
            return ((flat * m) @ flat.transpose(1, 2) / m.sum().clamp_min(1e-6),)
        return mean_std(feat) if weight is None else weighted_mean_std(feat, weight)

    @staticmethod
    def _mix(stats: list[tuple[tuple[torch.Tensor, ...], float]]) -> tuple[torch.Tensor, ...]:
        # (a sum of one style at least: a tensor, never sum()'s start 0)
        return tuple(cast(torch.Tensor, sum(w * s[k] for s, w in stats)) for k in range(len(stats[0][0])))

    def style_term(self, feats: Features) -> torch.Tensor:
        total = torch.zeros((), device=feats[0].device)
        for i, feat in enumerate(feats):
            regions: list[tuple[torch.Tensor | None, tuple[torch.Tensor, ...] | None, float]]
            if not self.shares:
                mixed = self.targets[0]
                assert mixed is not None  # (without regions: the one mixed target)
                regions = [(None, mixed[i], 1.0)]
            else:
                m = self.shares[i]
                if m.shape[2:] != feat.shape[2:]:  # a side under 16 px, which the encoder pads: stretched to it
                    m = F.interpolate(self.shares[0], size=feat.shape[2:], mode="bilinear", align_corners=False)
                regions = [
                    (m[:, k : k + 1], None if t is None else t[i], float(m[:, k].mean()) * a)
                    for k, (t, a) in enumerate(zip(self.targets, self.region_alphas))
                ]
            for weight, target, area in regions:
                if area < 1e-3 or target is None:
                    continue
                ours = self._stats(feat, weight)
                total = total + area * sum(F.mse_loss(a, b) for a, b in zip(ours, target))
        return total

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.encoder(x)
        loss = self.content_weight * F.mse_loss(feats.relu4_1.float(), self.content_target)
        loss = loss + self.style_weight * self.style_term(feats)
        if self.tv_weight:
            # (an axis one pixel long has no neighbours: its empty mean was NaN, and L-BFGS then failed)
            if x.shape[-2] > 1:
                loss = loss + self.tv_weight * (x[..., 1:, :] - x[..., :-1, :]).pow(2).mean()
            if x.shape[-1] > 1:
                loss = loss + self.tv_weight * (x[..., :, 1:] - x[..., :, :-1]).pow(2).mean()
        return loss


class _LBFGS(torch.optim.LBFGS):
    """torch's L-BFGS, less the ``import torch._dynamo`` that its first ``add_param_group`` and ``zero_grad`` make.

    Why: torch marks those Optimizer methods as never to be compiled, and does it by importing the compiler
    the first time each is called, for a refine that is never compiled. On the AVX2 EPYC a process's first
    2-step refine at 64 px took 2.6 s of CPU against 0.5 for the next (now 0.55-0.6), and a server, whose
    warm-up refines, was SERVING after 5.1-6.1 s (now 3.7-5.3; three starts of each, in turn). The methods
    are the same functions, called undecorated (``__wrapped__``, which ``functools.wraps`` sets); where a
    torch has none, its decorated one runs, as before."""

    add_param_group = getattr(torch.optim.Optimizer.add_param_group, "__wrapped__",
                              torch.optim.Optimizer.add_param_group)
    zero_grad = getattr(torch.optim.Optimizer.zero_grad, "__wrapped__", torch.optim.Optimizer.zero_grad)


class _Adam:
    """Adam (Kingma & Ba, 2015) on one tensor, as torch's ``Adam`` computes it with its defaults and no weight
    decay. Why not torch's: its first ``step`` in a process imports torch._dynamo (a graph break for the compiler,
    and its update function disabled for it), 1.7-2.5 s of CPU on the AVX2 EPYC in a server's first Adam refine,
    as its L-BFGS did before ``_LBFGS``."""

    def __init__(self, p: torch.Tensor, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.p, self.lr, self.betas, self.eps, self.steps = p, lr, betas, eps, 0
        self.mean, self.square = torch.zeros_like(p), torch.zeros_like(p)

    @torch.no_grad()
    def step(self) -> None:
        grad, (b1, b2) = self.p.grad, self.betas
        assert grad is not None, "step() before backward()"
        self.steps += 1
        self.mean.lerp_(grad, 1 - b1)
        self.square.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        denom = (self.square.sqrt() / math.sqrt(1 - b2 ** self.steps)).add_(self.eps)
        self.p.addcdiv_(self.mean, denom, value=-self.lr / (1 - b1 ** self.steps))


def optimize(
    objective: Callable[[torch.Tensor], torch.Tensor],
    start: torch.Tensor,
    steps: int,
    *,
    optimizer: str = "lbfgs",
    on_step: OnStep | None = None,
    checkpoints: Sequence[int] = (),
) -> torch.Tensor:
    """``steps`` iterations on the pixels from ``start``; the result, clamped to [0, 1].

    L-BFGS: ``step`` calls of many iterations with a strong-Wolfe line search (history 100; at most two
    evaluations an iteration, plus 25; it may stop earlier once converged). Called one iteration at a
    time, torch's L-BFGS with a line search stalls, and without one it overshoots by orders of magnitude
    on some images. The pixels are free during the run (a clamp between iterations would break the line
    search's model), held near [0, 1] by a smooth penalty (``BOUND_WEIGHT``; the reported loss includes it),
    and clamped at the end. Adam: lr ``ADAM_LR``, clamped after each step.

    ``on_step`` runs after every iteration and may raise (e.g. :class:`StoppedError`) to stop at once; at
    the iterations in ``checkpoints`` (at least 2 apart; a benchmark's curve) its ``image`` is the
    clamped iterate, which for L-BFGS costs one more evaluation each (the call restarts there)."""
    base = start.detach().float().contiguous()
    # L-BFGS optimises p, x = base + scale * p: torch's first L-BFGS step moves the variable by 1 in L1
    # norm (lr / |g|_1), which for pixels is ~1/numel each, and its line search then spends ~10
    # evaluations growing it. With this scale the first step moves a pixel by ~1/255; later iterations
    # are unaffected (L-BFGS is invariant to rescaling the variable once it has curvature pairs).
    scale = FIRST_STEP * base.numel() if optimizer == "lbfgs" else 1.0
    p = torch.zeros_like(base) if optimizer == "lbfgs" else base.clone()
    p.requires_grad_(True)
    offset = base if optimizer == "lbfgs" else torch.zeros_like(base)

    def image() -> torch.Tensor:
        return offset + scale * p

    t0 = time.perf_counter()
    done = 0
    last = math.nan

    def report(step: int, snap: bool = False) -> None:
        nonlocal done
        if on_step is not None and (step > done or snap):
            snapshot = image().detach().clamp(0, 1) if snap else None
            on_step(Progress(step, steps, last, time.perf_counter() - t0, snapshot, iteration=step))
        done = max(done, step)

    stops = sorted({c for c in checkpoints if 0 < c < steps} | {steps})
    if optimizer == "lbfgs":
        opt = _LBFGS([p], lr=1.0, history_size=100, line_search_fn="strong_wolfe", tolerance_change=1e-12)
        state = opt.state[p]  # its "n_iter" counts the iterations of all calls

        def closure() -> torch.Tensor:
            nonlocal last
            report(state.get("n_iter", 0) - 1)  # an evaluation in iteration k means k - 1 are done
            opt.zero_grad()
            x = image()
            loss = objective(x) + BOUND_WEIGHT * (x - x.detach().clamp(0, 1)).pow(2).mean()
            loss.backward()
            last = _finite(loss, state.get("n_iter", 0))
            return loss

        for stop in stops:
            before = state.get("n_iter", 0)
            opt.param_groups[0].update(max_iter=stop - before, max_eval=2 * (stop - before) + 25)
            with torch.enable_grad():
                opt.step(closure)
            report(state["n_iter"], snap=stop in checkpoints)
            if state["n_iter"] < stop:  # converged: a last report ends a caller's bar (at the optimum from the
                if on_step is not None:  # start it got no report at all)
                    on_step(Progress(steps, steps, last, time.perf_counter() - t0, iteration=state["n_iter"]))
                break
    elif optimizer == "adam":
        adam = _Adam(p, lr=ADAM_LR)
        for step in range(1, steps + 1):
            with torch.enable_grad():
                p.grad = None
                loss = objective(p)
                loss.backward()
            last = _finite(loss, step)
            adam.step()
            with torch.no_grad():
                p.clamp_(0, 1)
            report(step, snap=step in checkpoints)
    else:
        raise ValueError(f"optimizer must be lbfgs or adam, got {optimizer!r}")
    return image().detach().clamp(0, 1)


def _finite(loss: torch.Tensor, iteration: int) -> float:
    """The loss as a number; an error where it is not finite (pixels from a NaN loss came back black, as a
    result that looked fine to the caller)."""
    value = float(loss.detach())
    if not math.isfinite(value):
        raise FloatingPointError(f"the optimisation's loss became {value} at iteration {iteration}")
    return value


def objective_for(
    stylizer: Steps,
    prepared: Prepared,
    content: torch.Tensor,
    *,
    style_loss: str = "gram",
    target: str = "adain",
    scale: float = 1.0,
) -> Objective:
    """The objective of a prepared job at the size of ``content`` (its content image, maybe scaled).
    ``target="content"`` makes the content term the content's own relu4_1 (the classic choice).
    ``scale``: the working size over the full size. Each style as the job uses it (at most its style_size)
    is scaled by it, so that a texture keeps its size relative to the image at a reduced working size
    (scaling style_size instead left a style smaller than it unscaled: 1.33x too coarse at refine_size
    240); and an unset tv_weight follows it (:func:`default_tv_weight`)."""
    job = prepared.job
    assert job is not None, "prepared from a CheckedJob"
    encoder = stylizer.encoder
    regions = prepared.regions
    if regions is not None:
        regions = maps_at(regions.to(content.device), content.shape[2:])
    with torch.no_grad():
        feat = encoder(content).relu4_1
        aim = stylizer.target(feat, prepared) if target == "adain" else feat
        styles: list[tuple[Features | None, float]] = []
        for i, (source, w) in enumerate(zip(job.styles, job.weights)):
            if w == 0:  # applied nowhere (with regions: kept in its place, without features)
                if regions is not None:
                    styles.append((None, 0.0))
                continue
            style = stylizer.style_tensor(source, f"styles[{i}]", job.style_size, job.color, content)
            if scale < 1:
                style = _scaled(style, max(1, round(max(style.shape[2:]) * scale)))
            _check_style_pixels(style, i, stylizer.tiling.threshold)
            styles.append((encoder(style.to(content.device)), w))
    return Objective(
        encoder,
        aim,
        styles,
        regions=regions,
        region_alphas=job.region_alphas,
        content_weight=job.content_weight,
        style_weight=job.style_weight * job.alpha,
        tv_weight=job.tv_weight if job.tv_weight is not None else default_tv_weight(scale),
        style_loss=style_loss,
    )


def _check_style_pixels(style: torch.Tensor, i: int, threshold: int) -> None:
    """A refine keeps its styles' features whole (every layer, for their Gram matrices): a style is at most
    the tiling threshold's pixels as used (at least 1 MP, the automatic threshold's floor), as a content untiled
    is: a 64-MP one at a print-size style_size would have taken tens of GB. (The AdaIN path measures a style that
    large box by box instead.)"""
    most = max(threshold, MIN_AUTO_THRESHOLD) if threshold > 0 else 0  # 0: tiling off, no bound
    h, w = style.shape[2:]
    if most > 0 and h * w > most:
        raise InvalidInputError("style_size", f"styles[{i}] is {w} x {h} px as a refine uses it, over the {most:,} px "
                                "a refine's style may have on this server; give a smaller "
                                "style_size")


def refine(stylizer: Steps, prepared: Prepared, *, on_step: OnStep | None = None) -> Image.Image:
    """A prepared job's output by optimisation: from the decoder's output (``refine_init="adain"``) or from
    the content (``"content"``), ``refine_steps`` iterations, at ``refine_size`` when it is smaller."""
    job = prepared.job
    assert job is not None and job.refine_steps > 0
    tick = None if on_step is None else parts_progress(on_step, job.refine_steps)  # (timed from the call's start)
    t0 = time.perf_counter()
    parts = 0  # a tiled first render's statistics boxes and tiles: counted before the iterations (see Progress)
    content = prepared.content.to(stylizer.device).float()  # grey for "luminance": then the grey image is optimised
    if job.refine_init == "adain":  # from the decoder's colours: the grey step (adain.colours) comes once, at the end
        first = replace(prepared, grey=False)
        if stylizer.tiling.wants(first):  # print size: minutes of tiles, stoppable between them as iterations are
            h, w = first.content.shape[2:]
            parts = tiled_parts(h, w, stylizer.tiling)
            rendered = render_tiled(stylizer, first, stylizer.tiling, on_step=tick)
        else:
            rendered = stylizer.render([first])[0]
        out = to_tensor(rendered).to(content.device)
        start = luminance(out).expand(-1, 3, -1, -1) if prepared.chroma_from is not None else out
    else:
        start = content
    h, w = start.shape[2:]
    side = working_side(h, w, job.refine_size, stylizer.tiling.threshold)
    small = start if side == max(h, w) else _scaled(start, side)
    work_content = content if side == max(h, w) else _scaled(content, side)
    # The classic method is Gatys et al.'s: its content term is the content's features.
    objective = objective_for(
        stylizer,
        prepared,
        work_content,
        target="content" if job.refine_init == "content" else REFINE_TARGET,
        scale=side / max(h, w),  # the style shrinks with the content
    )
    counted = on_step
    if on_step is not None:  # after the tiles, and the time since the call's work started (it went back to 0)
        since = time.perf_counter() - t0
        counted = lambda p: on_step(  # noqa: E731
            replace(p, step=p.step + parts, steps=p.steps + parts, seconds=p.seconds + since))
    x = optimize(objective, small, job.refine_steps, optimizer=job.optimizer, on_step=counted)
    if small is not start:  # the change, upsampled onto the full-size start
        x = (start + F.interpolate(x - small, size=(h, w), mode="bicubic", align_corners=False)).clamp(0, 1)
    return to_image(finish(x, prepared))


def default_tv_weight(scale: float) -> float:
    """A refine's total variation weight when the job leaves it unset: REFINE_TV_WEIGHT at full size
    (``scale`` 1), none at a reduced working size, whose upsampled change carries no speckle and whose
    smoothing took the style's texture from the full-size image (adain.wire)."""
    return REFINE_TV_WEIGHT if scale >= 1 else 0.0


def max_refine_pixels(threshold: int) -> int | None:
    """The most pixels a refine optimises at: no more memory than one plain render may take before tiling
    (``threshold`` pixels at the tiling's BYTES_PER_PIXEL; None where tiling is off, 0)."""
    return max(16 * 16, threshold * BYTES_PER_PIXEL // REFINE_BYTES_PER_PIXEL) if threshold > 0 else None


def working_side(h: int, w: int, refine_size: int | None, threshold: int) -> int:
    """The longest side a refine of an h x w image optimises at: ``refine_size`` where smaller, and within
    :func:`max_refine_pixels` (a larger image is refined as with a smaller refine_size: the change upsampled)."""
    side = min(refine_size or max(h, w), max(h, w))
    most = max_refine_pixels(threshold)
    if most is not None and h * w * (side / max(h, w)) ** 2 > most:
        side = max(16, math.floor(max(h, w) * math.sqrt(most / (h * w))))
    return side


def _scaled(img: torch.Tensor, side: int) -> torch.Tensor:
    """An image tensor downscaled to longest side ``side`` (rounded as ``resize_longest`` does)."""
    h, w = img.shape[2:]
    scale = side / max(h, w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    return F.interpolate(img, size=size, mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
