"""A batch's per-job steps (the AdaIN targets before the decoder, the bytes after it) as a few ops on the whole
batch, where the jobs allow it.

Why: a server renders on one thread while its event loop and prepare threads run Python, and torch lets go of
the GIL in every op and takes it back after; under load each take waits behind the other threads. Done job by
job, a batch of 32 at 512 px dispatched ~1,100 ops (~34 a job: ~20 for its target, ~12 to make its image, and
a blocking copy to the host each), and on an H100 the server's render of a batch took 91 ms under load where
the same call in process took 58 (GPU round 5, 2026-12-05). Here the same arithmetic runs once for the batch:
the targets where every job is plain (the whole of its padded size, no regions, no video state), and the
images' bytes always (one copy to the host, each image's colour step first where it has one).
``benchmarks/render_ops.py`` counts the ops and times a render beside a thread that holds the GIL.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from adain.colours import finish
from adain.ops import adain, mean_std
from adain.prepared import Prepared


def plain_targets(
    feats: Sequence[torch.Tensor], jobs: Sequence[Prepared], size: tuple[int, int]
) -> torch.Tensor | None:
    """The AdaIN targets (styles mixed, then alpha) of jobs whose relu4_1 ``feats`` fill the batch's feature
    ``size`` and which mix the same number of styles everywhere, as one N x C x h x w tensor; None where any job
    is not such (``Stylizer.target`` then makes each). The same arithmetic as ``Stylizer.target``, batched."""
    if any(j.regions is not None or j.smooth is not None or j.propagate is not None for j in jobs):
        return None
    if any(tuple(f.shape[2:]) != size for f in feats) or len({len(j.targets) for j in jobs}) != 1:
        return None
    feat = torch.cat(list(feats)) if len(feats) > 1 else feats[0]
    stats, dev = mean_std(feat), feat.device
    t: torch.Tensor | int = 0
    for k in range(len(jobs[0].targets)):  # each job's k-th style's statistics, N x C x 1 x 1
        s_mean = torch.cat([j.targets[k][0] for j in jobs]).to(dev)
        s_std = torch.cat([j.targets[k][1] for j in jobs]).to(dev)
        t = t + _times([j.targets[k][2] for j in jobs], adain(feat, s_mean, s_std, stats))
    assert isinstance(t, torch.Tensor)  # (one style at least: Job.problems refuses all weights 0)
    return _times([j.alpha for j in jobs], t) + _times([1 - j.alpha for j in jobs], feat.float())


def _times(numbers: list[float], x: torch.Tensor) -> torch.Tensor:
    """Each job's number times its part of ``x``, as a Python number times a tensor is computed (in float32,
    rounded to ``x``'s type: a bf16 batch gives a job's target to the bit as alone, not a float32 one)."""
    if len(set(numbers)) == 1:
        return numbers[0] * x
    return (per_job(numbers, x.device).view(-1, 1, 1, 1) * x).to(x.dtype)


def per_job(numbers: Sequence[float], device: torch.device) -> torch.Tensor:
    """One float32 number a job on ``device``; to a GPU from pinned memory, queued: a copy from pageable memory
    waited for the kernels already queued (the batch's encoder) before the render could queue more."""
    column = torch.tensor(list(numbers), dtype=torch.float32)
    if device.type == "cuda":
        return column.pin_memory().to(device, non_blocking=True)
    return column.to(device)


def to_images(y: torch.Tensor, jobs: Sequence[Prepared]) -> list[Image.Image]:
    """The decoder's output for a batch (N x 3 x H x W, padded) as each job's RGB image at its own size: each
    job's colour step (``adain.colours.finish``) on its part, then the bytes of the whole batch made where it is
    and copied to the host at once. The same bytes as ``adain.image.to_image`` of each part."""
    y = y.float().clamp(0, 1)
    for k, job in enumerate(jobs):
        if job.chroma_from is not None or job.grey:
            h, w = job.content.shape[2:]
            y[k : k + 1, :, :h, :w] = finish(y[k : k + 1, :, :h, :w], job)
    pixels = y.clamp_(0, 1).mul_(255).round_().to(torch.uint8).permute(0, 2, 3, 1).contiguous().cpu().numpy()
    out = []
    for k, job in enumerate(jobs):
        h, w = job.content.shape[2:]
        out.append(Image.fromarray(np.ascontiguousarray(pixels[k, :h, :w]), "RGB"))
    return out
