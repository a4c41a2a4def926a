"""Speed of every runtime backend x precision against the plain eager reference, in one run.

    python benchmarks/backends.py [--sizes 256 512 1024] [--runs 3] [--backends torch openvino onnxruntime]
                                  [--precisions fp32 bf16 int8] [--no-compile] [--plot PATH]

The reference is what pytorch-AdaIN runs: the same layer shapes as plain float32 eager ``nn.Sequential``
modules (reflection pads, convs, ReLUs, max pools, nearest upsampling), contiguous layout, ``no_grad``;
random weights (speed does not depend on them). Its two times per size are the model alone with the
style's statistics cached (content encoder + AdaIN + decoder) and the full path (the style encoded too).

For each backend x precision (``Stylizer(backend=..., precision=...)``): ``Stylizer.stylize`` on a
square content with the style cached (warm) and with a new style each call (cold), the medians of
``--runs`` calls after one warm-up, taken in turn with the reference's and every other row's (one call
of each per round, so the machine's drift falls on all rows alike); the ratio to the reference (higher
is faster); the output's
difference from eager torch float32 (mean and max in 0-255). ``torch.compile`` of the eager modules is
measured as one more row (its compile time is printed apart). The achieved GFLOP/s is set against this
CPU's float32 matrix-multiply rate measured in the same run (best of 10 2048 x 2048 products: a practical
peak; the folded decoder and the Winograd form (OpenVINO, float32) do fewer multiply-adds than counted,
so they can pass it).
A row over 3x the reference's time at one size (bf16 emulated on a CPU without bf16 units) is not run
at the larger sizes.
Images are synthetic; no data is read. Prints a Markdown table and saves a plot
(default benchmarks/results/backends.png).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from adain import Stylizer, int8
from adain.argtypes import optional_path
from adain.backends import ExportedBackend
from adain.decoder import _CONVS
from adain.encoder import LAYERS, POOL_BEFORE
from adain.image import to_tensor
from adain.ops import adain, mean_std
from adain.precision import cpu_features, cpu_info

DEFAULT_PLOT = Path(__file__).resolve().parent / "results" / "backends.png"
STYLE_SIDE = 512


def reference_modules() -> tuple[nn.Sequential, nn.Sequential]:
    """pytorch-AdaIN's VGG (to relu4_1) and decoder as plain Sequentials, float32, contiguous."""
    vgg: list[nn.Module] = [nn.Conv2d(3, 3, 1)]
    for name, cin, cout in LAYERS:
        if name in POOL_BEFORE:
            vgg.append(nn.MaxPool2d(2, 2, ceil_mode=True))
        vgg += [nn.ReflectionPad2d(1), nn.Conv2d(cin, cout, 3), nn.ReLU()]
    dec: list[nn.Module] = []
    for i, (cin, cout, up) in enumerate(_CONVS):
        dec += [nn.ReflectionPad2d(1), nn.Conv2d(cin, cout, 3)]
        if i < len(_CONVS) - 1:
            dec.append(nn.ReLU())
        if up:
            dec.append(nn.Upsample(scale_factor=2, mode="nearest"))
    return nn.Sequential(*vgg).eval(), nn.Sequential(*dec).eval()


def conv_flops(side: int) -> float:
    """FLOPs (2 per multiply-add) of the encoder and decoder convolutions for one side x side image."""
    total, s = 0.0, side
    for name, cin, cout in LAYERS:
        s = s // 2 if name in POOL_BEFORE else s
        total += 2 * cin * cout * 9 * s * s
    s = side // 8
    for cin, cout, up in _CONVS:
        total += 2 * cin * cout * 9 * s * s
        s = s * 2 if up else s
    return total


def matmul_gflops() -> float:
    """This CPU's float32 matrix-multiply rate with torch's threads: the practical peak."""
    a, b = torch.rand(2048, 2048), torch.rand(2048, 2048)
    a @ b
    best = float("inf")
    for _ in range(10):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * 2048**3 / best / 1e9


def synth(side: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side].astype(np.float32) / side
    f = rng.uniform(1, 6, size=(3, 2))
    arr = np.stack([0.5 + 0.4 * np.sin(f[c, 0] * np.pi * x + f[c, 1] * np.pi * y) for c in range(3)], -1)
    arr = arr + rng.normal(0, 0.06, arr.shape)
    return Image.fromarray((np.clip(arr, 0, 1) * 255).astype(np.uint8), "RGB")


def interleaved_ms(cases: dict[str, Callable[[], object]], runs: int) -> dict[str, float]:
    """The median of ``runs`` timed calls of each case, taken in turn (one call of every case per round),
    so that the machine's drift (10-30% within minutes on a shared machine) falls on all cases alike and
    the ratios stay meaningful. Each case is called once before (warm-up)."""
    for fn in cases.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(runs):
        for k, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            times[k].append((time.perf_counter() - t0) * 1000)
    return {k: statistics.median(v) for k, v in times.items()}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024])
    p.add_argument("--runs", type=int, default=3, help="timed calls per row (median), after one warm-up")
    p.add_argument("--backends", nargs="+", default=["torch", "openvino", "onnxruntime"])
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16", "int8"], choices=["fp32", "bf16", "int8"],
                   help="int8: OpenVINO only (adain.int8)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile row")
    p.add_argument("--no-direct", action="store_true",
                   help="skip the OpenVINO fp32 row without the Winograd form (direct convolutions, as before it)")
    p.add_argument("--decoder", default=None, help="decoder file (default: the shipped one)")
    p.add_argument("--plot", type=optional_path, default=DEFAULT_PLOT, help="bar plot PNG ('' for none)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    model, _ = cpu_info()
    peak = matmul_gflops()
    print(f"# backends: CPU {model} ({', '.join(cpu_features()) or 'no flags read'}), "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; float32 matmul {peak:.0f} GFLOP/s")
    print(f"# medians of {args.runs} calls after a warm-up, every row's calls taken in turn (drift hits all alike); "
          f"square synthetic contents, style {STYLE_SIDE} px")
    configs = []
    for backend in args.backends:
        if backend != "torch" and importlib.util.find_spec(backend) is None:
            print(f"# {backend}: not installed, skipped")
            continue
        for precision in args.precisions:
            if backend == "onnxruntime" and precision == "bf16":
                continue  # float32 only on a CPU
            if precision == "int8" and backend != "openvino":
                continue  # OpenVINO only
            if precision == "int8" and (why := int8.available()):
                print(f"# openvino int8: skipped, {why}")
                continue
            t0 = time.perf_counter()
            configs.append((backend, precision, Stylizer(args.decoder, "cpu", precision=precision, backend=backend)))
            print(f"# {backend} {precision}: built in {time.perf_counter() - t0:.1f} s")
    if "openvino" in args.backends and importlib.util.find_spec("openvino") is not None:
        form = next((getattr(st.backend, "form", "") for b, p, st in configs if (b, p) == ("openvino", "fp32")), "")
        if "fp32" in args.precisions and not args.no_direct and not form:  # AVX-512: the fp32 row is direct already
            print("# openvino fp32 runs the direct graph on this CPU (AVX-512): no second direct row")
        elif "fp32" in args.precisions and not args.no_direct:  # what the Winograd form gains, in the same run
            st = Stylizer(args.decoder, "cpu", precision="fp32", backend="torch")
            st.backend = ExportedBackend("openvino", st.encoder, st.decoder, False, torch.get_num_threads(),
                                         winograd_form=False)
            configs.append(("openvino", "fp32 direct", st))
    if not args.no_compile:
        st = Stylizer(args.decoder, "cpu", precision="fp32", backend="torch")
        st.backend.encoder = torch.compile(st.encoder)
        st.backend.decoder = torch.compile(st.decoder)
        configs.append(("torch.compile", "fp32", st))
    vgg, dec = reference_modules()
    seeds = iter(range(10_000))
    rows = []  # (size, label, warm ms, cold ms, diff mean, diff max)
    refs = {}
    too_slow: set[tuple[str, str]] = set()  # not run at larger sizes (bf16 emulated on a CPU without bf16 units)
    for side in args.sizes:
        content = synth(side, next(seeds))
        style = synth(STYLE_SIDE, next(seeds))
        x, s = to_tensor(content), to_tensor(style)
        with torch.no_grad():
            s_mean, s_std = mean_std(vgg(s))

            def ref_warm(x: torch.Tensor = x, m: torch.Tensor = s_mean, d: torch.Tensor = s_std) -> torch.Tensor:
                return dec(adain(vgg(x), m, d)).clamp(0, 1)

            def ref_full(x: torch.Tensor = x, s: torch.Tensor = s) -> torch.Tensor:
                return dec(adain(vgg(x), *mean_std(vgg(s)))).clamp(0, 1)

        cases: dict[str, Callable[[], object]] = {"ref warm": ref_warm, "ref full": ref_full}
        outs, firsts = {}, {}
        for backend, precision, st in configs:
            if (backend, precision) in too_slow:
                print(f"# {side} px {backend} {precision}: skipped (over 3x the reference's time at a smaller size)")
                continue
            t0 = time.perf_counter()
            outs[backend, precision] = np.asarray(st.stylize(content, style), dtype=np.int16)  # and compile
            firsts[backend, precision] = time.perf_counter() - t0
            fresh = iter([synth(STYLE_SIDE, next(seeds)) for _ in range(args.runs + 1)])
            cases[f"{backend} {precision} warm"] = lambda st=st, c=content, s=style: st.stylize(c, s)
            cases[f"{backend} {precision} cold"] = lambda st=st, c=content, f=fresh: st.stylize(c, next(f))
        with torch.no_grad():
            ms = interleaved_ms(cases, args.runs)
        refs[side] = (ms["ref warm"], ms["ref full"])
        print(f"# {side} px reference: warm {refs[side][0]:.0f} ms, full {refs[side][1]:.0f} ms", flush=True)
        eager = next(iter(outs.values()))  # the first config: torch fp32 by default
        for (backend, precision), out in outs.items():
            warm, cold = ms[f"{backend} {precision} warm"], ms[f"{backend} {precision} cold"]
            d = np.abs(out - eager)
            rows.append((side, f"{backend} {precision}", warm, cold, d.mean(), d.max()))
            if warm > 3 * refs[side][0]:
                too_slow.add((backend, precision))
            note = f" (first call {firsts[backend, precision]:.0f} s: compiling)" if backend == "torch.compile" else ""
            print(f"# {side} px {backend} {precision}: warm {warm:.0f} ms, cold {cold:.0f} ms{note}", flush=True)

    print()
    print("| size | backend | warm ms | x ref (warm) | cold ms | x ref (full) | GFLOP/s | of matmul rate "
          "| pixels vs torch fp32, mean / max |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for side in args.sizes:
        print(f"| {side} | reference (eager Sequential fp32) | {refs[side][0]:.0f} | 1.00 | {refs[side][1]:.0f} | 1.00 "
              f"| {conv_flops(side) / refs[side][0] / 1e6:.0f} | {conv_flops(side) / refs[side][0] / 1e6 / peak:.0%} "
              "| |")
        for size, label, warm, cold, dm, dx in rows:
            if size == side:
                gf = conv_flops(side) / warm / 1e6
                print(f"| {side} | {label} | {warm:.0f} | {refs[side][0] / warm:.2f} | {cold:.0f} | "
                      f"{refs[side][1] / cold:.2f} | {gf:.0f} | {gf / peak:.0%} | {dm:.2f} / {dx:.0f} |")
    flops = ", ".join(f"{s} px {conv_flops(s) / 1e9:.0f} G" for s in args.sizes)
    floor = ", ".join(f"{s} px {conv_flops(s) / peak / 1e6:.0f} ms" for s in args.sizes)
    print(f"\nconvolution FLOPs per image: {flops}; floor at the matmul rate: {floor}")
    if args.plot:
        save_plot(rows, refs, args.plot, f"{model}, {torch.get_num_threads()} threads")
        print(f"plot: {args.plot}")
    return 0


def save_plot(rows: list, refs: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = ["reference"] + list(dict.fromkeys(r[1] for r in rows))
    sizes = sorted(refs)
    fig, axes = plt.subplots(1, len(sizes), figsize=(4.5 * len(sizes), 4), squeeze=False)
    for ax, side in zip(axes[0], sizes):
        speed = {r[1]: refs[side][0] / r[2] for r in rows if r[0] == side} | {"reference": 1.0}
        bars = ax.bar(range(len(labels)), [speed.get(lb, 0) for lb in labels], color="tab:blue")
        bars[0].set_color("tab:gray")
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
        ax.axhline(2.0, color="tab:red", lw=0.8, ls="--", label="target 2.0x")
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=7)
        ax.set_title(f"{side} px, style cached", fontsize=9)
        ax.set_ylabel("speed vs eager reference (x)")
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
