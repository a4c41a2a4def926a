"""A batch's targets and images made as batch ops (adain.batched): the same numbers as job by job, and a render's
torch ops no longer growing by dozens a job (each an exchange of the GIL in a server's render thread)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from adain import Stylizer
from adain.batched import plain_targets, to_images
from adain.colours import finish
from adain.image import to_image
from adain.job import Job
from synth import encoded, synth_image

STYLE_A = encoded(synth_image(64, 64, seed=2))
STYLE_B = encoded(synth_image(80, 48, seed=3), "JPEG")
GREY = encoded(synth_image(64, 64, seed=4).convert("L").convert("RGB"))


@pytest.fixture(scope="module", params=["fp32", "bf16"])
def stylizer(decoder_path: Path, request: pytest.FixtureRequest) -> Stylizer:
    return Stylizer(decoder_path, device="cpu", precision=request.param)


def jobs_of(stylizer: Stylizer) -> list:
    """Plain jobs of one size mixing two styles by different weights, at different alphas."""
    return [
        stylizer.prepare(Job(synth_image(64, 48, seed=10 + i), [STYLE_A, STYLE_B], weights=w, alpha=a))
        for i, (w, a) in enumerate([([0.3, 0.7], 1.0), ([0.9, 0.1], 0.4), ([0.5, 0.5], 0.75), ([0.3, 0.7], 1.0)])
    ]


def test_plain_targets_are_each_jobs_own_to_the_bit(stylizer: Stylizer) -> None:
    jobs = jobs_of(stylizer)
    with torch.inference_mode():
        feats = stylizer.encoder.encode([j.content for j in jobs], run=stylizer.backend.relu4_1)
        size = tuple(feats[0].shape[2:])
        batched = plain_targets(feats, jobs, size)
        one_by_one = torch.cat([stylizer.target(f, j) for f, j in zip(feats, jobs)])
    assert batched is not None and batched.dtype == one_by_one.dtype
    assert torch.equal(batched, one_by_one)


def test_jobs_that_are_not_plain_are_left_to_the_job_by_job_path(stylizer: Stylizer) -> None:
    jobs = jobs_of(stylizer)
    with torch.inference_mode():
        feats = stylizer.encoder.encode([j.content for j in jobs], run=stylizer.backend.relu4_1)
    size = tuple(feats[0].shape[2:])
    assert plain_targets(feats, jobs, size) is not None
    assert plain_targets(feats, jobs, (size[0] + 1, size[1])) is None  # a map short of the padded size
    one_style = stylizer.prepare(Job(synth_image(64, 48, seed=30), [STYLE_A]))
    assert plain_targets(feats[:1] * 2, [jobs[0], one_style], size) is None  # two styles beside one
    video = stylizer.prepare(Job(synth_image(64, 48, seed=31), [STYLE_A, STYLE_B]))
    video.propagate = lambda t: t  # a video frame's state is applied job by job
    assert plain_targets(feats[:2], [jobs[0], video], size) is None


def test_the_batchs_images_are_each_jobs_own_bytes(stylizer: Stylizer) -> None:
    """Different sizes in one padded batch, a grey style's and the photo's colours: to_image of each part."""
    jobs = [
        stylizer.prepare(Job(synth_image(64, 48, seed=1), [STYLE_A])),
        stylizer.prepare(Job(synth_image(61, 43, seed=2), [GREY], alpha=0.6)),  # made grey, 40% of the colour kept
        stylizer.prepare(Job(synth_image(60, 47, seed=3), [STYLE_B], preserve_color="luminance")),
    ]
    assert jobs[1].grey and jobs[2].chroma_from is not None
    y = torch.rand(3, 3, 48, 64, generator=torch.Generator().manual_seed(0)).to(stylizer.dtype) * 1.2 - 0.1
    images = to_images(y, jobs)
    for k, (img, job) in enumerate(zip(images, jobs)):
        h, w = job.content.shape[2:]
        alone = to_image(finish(y[k : k + 1, :, :h, :w].float().clamp(0, 1), job))
        assert img.size == alone.size == (w, h)
        assert np.array_equal(np.asarray(img), np.asarray(alone))


def test_a_renders_ops_grow_by_a_few_a_job(stylizer: Stylizer) -> None:
    """Job by job, each job of a batch cost ~38 ops (its target, its bytes, a copy to the host each)."""

    def ops(n: int) -> int:
        jobs = [stylizer.prepare(Job(synth_image(48, 48, seed=i), [STYLE_A])) for i in range(n)]
        stylizer.render(jobs)  # warm
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            stylizer.render(jobs)
        return sum(1 for e in prof.events() if e.name.startswith("aten::") and e.cpu_parent is None)

    assert (ops(12) - ops(4)) / 8 <= 5
