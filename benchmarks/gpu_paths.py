"""Every path of the library on a device, against the same on the CPU: a check for the GPU round.

    python benchmarks/gpu_paths.py [--size 96] [--device cuda] [--sheet paths.png]

The test suite runs on CPUs only, where a tensor left on the wrong device cannot show. Each path a user can
take (alpha, blended styles, both colour modes, a two-style mask, regions, a batch of two sizes, a tiled
content, the optimisation method, a video's frames) runs here on ``--device`` and on the CPU, both in fp32
without TF32, and prints one row: the largest and mean difference of the two outputs in 8-bit levels, or
the error that path raised. A row is ``ok`` when its mean difference is under one level. Exit 1 if any is not.
``--sheet F`` saves each path's last output on both and their difference as one PNG, to look at.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from adain import Stylizer
from adain.precision import cpu_info
from adain.tiling import Tiling
from adain.video import VideoStream

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grpc_latency import encoded, synthetic  # noqa: E402 - a sibling script


def picture(size: int, seed: int, shift: int = 0) -> Image.Image:
    """The gRPC benchmark's synthetic image, moved ``shift`` px right (a video's frames)."""
    img = np.asarray(Image.open(io.BytesIO(synthetic(size, seed))).convert("RGB"))
    return Image.fromarray(np.roll(img, shift, axis=1), "RGB")


@contextlib.contextmanager
def tiled(st: Stylizer, tile: int) -> Iterator[None]:
    """``st`` tiling every content larger than one tile (and its halo) while inside."""
    kept = st.tiling
    st.tiling = Tiling(threshold=1, tile=tile, halo=16, stats_box=tile, stats_halo=16)
    try:
        yield
    finally:
        st.tiling = kept


def cases(size: int) -> dict[str, Callable[[Stylizer], list[Image.Image]]]:
    content, style = picture(size, 1), picture(size, 2)
    squares = (np.indices((size, size)) // 8).sum(0) % 2  # a second style unlike the first: a mask's halves show
    other = Image.fromarray(np.where(squares[..., None], [250, 140, 20], [20, 40, 160]).astype(np.uint8), "RGB")
    half = np.zeros((size, size), np.uint8)
    half[:, : size // 2] = 255
    mask = encoded(Image.fromarray(half, "L"), "png")
    rest = encoded(Image.fromarray(255 - half, "L"), "png")
    small = content.resize((size * 3 // 4, size // 2))

    def video(st: Stylizer) -> list[Image.Image]:
        stream = VideoStream(st, [style], temporal="flow")
        return [stream.stylize(picture(size, 1, shift=2 * i)) for i in range(3)]

    def print_size(st: Stylizer) -> list[Image.Image]:
        with tiled(st, 8 * (size // 16)):
            return [st.stylize(picture(2 * size, 1), [style])]

    return {
        "plain": lambda st: [st.stylize(content, [style])],
        "alpha 0.5": lambda st: [st.stylize(content, [style], alpha=0.5)],
        "two styles blended": lambda st: [st.stylize(content, [style, other], weights=[0.7, 0.3])],
        "colours kept (coral)": lambda st: [st.stylize(content, [style], preserve_color="coral")],
        "colours kept (luminance)": lambda st: [st.stylize(content, [style], preserve_color="luminance")],
        "two-style mask": lambda st: [st.stylize(content, [style, other], mask=mask)],
        "regions, region alphas": lambda st: [st.stylize(content, [style, other], masks=[mask, rest],
                                                         region_alphas=[1.0, 0.5])],
        "batch of two sizes": lambda st: st.stylize_batch([content, small, content], [style]),
        "tiled": print_size,
        "refine, 3 steps": lambda st: [st.stylize(content, [style], refine_steps=3)],
        "video, 3 frames (flow)": video,
    }


def save_sheet(rows: list[tuple[str, Image.Image, Image.Image]], path: Path) -> None:
    """One row a path: its first output on the device, on the CPU, and their difference x 16 (to look at)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), 3, figsize=(7.5, 2.4 * len(rows)), squeeze=False)
    for (label, ours, cpu), ax in zip(rows, axes):
        diff = np.abs(np.asarray(ours, np.int16) - np.asarray(cpu, np.int16)) * 16
        for a, img, title in zip(ax, (ours, cpu, np.clip(diff, 0, 255).astype(np.uint8)),
                                 (label, "CPU", "difference x 16")):
            a.imshow(img)
            a.set_title(title, fontsize=8)
            a.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def compare(ours: list[Image.Image], cpu: list[Image.Image]) -> tuple[int, float]:
    """Largest and mean absolute difference in 8-bit levels over every output image."""
    diffs = [np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)) for a, b in zip(ours, cpu, strict=True)]
    return int(max(d.max() for d in diffs)), float(np.mean([d.mean() for d in diffs]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=96, help="the contents' side (the tiled one is twice it)")
    p.add_argument("--device", default=None, help="the device checked (default: cuda when present, else cpu)")
    p.add_argument("--decoder", default=None)
    p.add_argument("--sheet", type=Path, default=None, help="save every path's outputs side by side here (PNG)")
    args = p.parse_args(argv)
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 on both: a difference is the path's, not TF32's
    torch.backends.cudnn.allow_tf32 = False
    t0 = time.perf_counter()
    st = Stylizer(args.decoder, args.device, precision="fp32", backend="torch")
    cpu = Stylizer(args.decoder, "cpu", precision="fp32", backend="torch")
    st.tiling, cpu.tiling = replace(st.tiling, threshold=0), replace(cpu.tiling, threshold=0)  # tiled: its own case
    name = torch.cuda.get_device_name(st.device) if st.cuda else cpu_info()[0]
    print(f"# every path on {st.device} ({name}) against the CPU ({cpu_info()[0]}), {args.size} px, fp32", flush=True)
    bad, paths, sheet = 0, cases(args.size), []
    for label, run in paths.items():
        try:
            ours, theirs = run(st), run(cpu)
            max_diff, mean_diff = compare(ours, theirs)
            sheet.append((label, ours[-1], theirs[-1]))
        except Exception as e:  # noqa: BLE001 - a path's failure is its row's figure
            bad += 1
            print(f"{label}: FAILED: {type(e).__name__}: {e}"[:400], flush=True)
            continue
        verdict = "ok" if mean_diff < 1 else "DIFFERS"
        bad += verdict != "ok"
        print(f"{label}: {verdict}, max {max_diff}, mean {mean_diff:.3f} levels", flush=True)
    print(f"paths: {len(paths) - bad} ok, {bad} not, in {time.perf_counter() - t0:.0f} s")
    if args.sheet and sheet:
        save_sheet(sheet, args.sheet)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
