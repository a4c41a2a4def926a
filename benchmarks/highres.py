"""Print-size renders: peak memory and seconds, tiled against untiled where untiled fits.

    python benchmarks/highres.py [--sizes 2048 4096 8192] [--backend auto] [--precision auto] [--tile 768 --halo 64]

Each row runs in its own process (so peaks do not mix): the Stylizer is loaded and warmed up, its
resident memory taken as the idle baseline, then one square synthetic content of the given side (a
JPEG file, decoded by the Stylizer as the server would) is stylized with the bundled mosaic style.
Reported: seconds of that call, peak memory above idle (VmHWM - VmRSS before; on a GPU
``torch.cuda.max_memory_allocated``), and for tiled rows the output's difference from the untiled
output of the same size where both ran (mean and 99th percentile, 0-255). Untiled runs only where it
fits: BYTES_PER_PIXEL x pixels under 70% of the machine's memory, with the chosen backend or else with
torch (0.9 KB/px; labelled), and then tiled torch runs too, so the tiled/untiled ratio compares one
backend. Prints a Markdown table and saves a plot (default benchmarks/results/highres.png).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from adain.argtypes import optional_path
from adain.precision import PRECISIONS

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PLOT = REPO / "benchmarks" / "results" / "highres.png"
TORCH_BYTES_PER_PIXEL = 900


def child(args: argparse.Namespace) -> None:
    """One measurement, in this process; prints a JSON line."""
    import torch

    from adain import Limits, Stylizer
    from adain.tiling import Tiling

    def status(key: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        return 0

    tiling = Tiling(1 if args.tiled else 0, tile=args.tile, halo=args.halo)
    limits = Limits(max_pixels=1 << 30, max_content_side=1 << 15)
    precision = "auto" if args.precision == "int8" and args.backend == "torch" else args.precision  # (OpenVINO only)
    st = Stylizer(None, backend=args.backend, precision=precision, tiling=tiling, limits=limits)
    style = REPO / "examples" / "style" / "mosaic.png"
    st.stylize(Image.new("RGB", (256, 256), (120, 130, 140)), style)  # warm-up
    idle = status("VmRSS")
    if st.cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    out = st.stylize(args.content, style)
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() if st.cuda else status("VmHWM") - idle
    if args.save and args.save.suffix == ".npy":
        np.save(args.save, np.asarray(out))
    elif args.save:
        out.save(args.save, quality=92)  # to look at
    print(json.dumps({"seconds": seconds, "peak_bytes": peak, "backend": f"{st.backend.name} {st.backend.precision}",
                      "size": list(out.size)}), flush=True)


def run_row(content: Path, backend: str, tiled: bool, args: argparse.Namespace, save: Path | None) -> dict | None:
    cmd = [sys.executable, __file__, "--child", "--content", str(content), "--backend", backend,
           "--precision", args.precision, "--tile", str(args.tile), "--halo", str(args.halo)]
    cmd += ["--tiled"] if tiled else []
    if save is not None:
        cmd += ["--save", str(save)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
    if proc.returncode != 0 or not lines:
        print(f"# failed ({proc.returncode}): {proc.stderr[-500:]}", flush=True)
        return None
    return json.loads(lines[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096, 8192])
    p.add_argument("--backend", default="auto")
    p.add_argument("--precision", default="auto", choices=PRECISIONS, help="int8: the torch rows (where untiled "
                   "does not fit the backend's memory) run auto")
    p.add_argument("--tile", type=int, default=768)
    p.add_argument("--halo", type=int, default=64)
    p.add_argument("--timeout", type=float, default=1800, help="seconds per row")
    p.add_argument("--plot", type=optional_path, default=DEFAULT_PLOT)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--tiled", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--content", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--save", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args)
        return 0
    from adain.precision import cpu_info
    from adain.tiling import BYTES_PER_PIXEL, mem_total

    total = mem_total()
    print(f"# highres: CPU {cpu_info()[0]}, memory {total / 2**30:.0f} GiB, backend {args.backend} {args.precision}, "
          f"tiles {args.tile} px + halo {args.halo}; mosaic style; one call per row, each in its own process")
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="adain-highres-"))
    small = Image.open(REPO / "examples" / "content" / "astronaut.jpg").convert("RGB")
    for side in args.sizes:
        content = tmp / f"content-{side}.jpg"
        small.resize((side, side), Image.Resampling.BICUBIC).save(content, quality=92)
        plan = []
        if BYTES_PER_PIXEL * side * side < total * 0.7:
            plan += [(args.backend, False), (args.backend, True)]
        elif TORCH_BYTES_PER_PIXEL * side * side < total * 0.7:
            plan += [("torch", False), ("torch", True), (args.backend, True)]
        else:
            plan += [(args.backend, True)]
        untiled_out: Path | None = None
        for backend, tiled in plan:
            save = tmp / f"{side}-{backend}-{tiled}.{'npy' if side <= 4096 else 'jpg'}"
            r = run_row(content, backend, tiled, args, save)
            if r is None:
                continue
            row = {"side": side, "tiled": tiled, **r}
            if not tiled:
                untiled_out, untiled_row = save, row
            elif untiled_out is not None and r["backend"] == untiled_row["backend"]:
                d = np.abs(np.load(save).astype(np.float32) - np.load(untiled_out).astype(np.float32))
                row["diff_mean"], row["diff_p99"] = float(d.mean()), float(np.percentile(d, 99))
                row["x_untiled"] = r["seconds"] / untiled_row["seconds"]
            rows.append(row)
            print(json.dumps(row), flush=True)
            if tiled and save.suffix == ".npy":
                save.unlink(missing_ok=True)
    for path in tmp.iterdir():  # the inputs and the untiled arrays (3 MB at 1024 px, GBs at 4K): only the
        if path.suffix == ".npy" or path.name.startswith("content-"):  # outputs over 4096 px are kept
            path.unlink()
    if any(tmp.iterdir()):
        print(f"# outputs over 4096 px kept to look at: {tmp}/*.jpg")
    else:
        tmp.rmdir()
    print()
    print("| content | backend | tiled | seconds | x untiled | peak above idle | tiled vs untiled, mean / p99 |")
    print("|---:|---|---|---:|---:|---:|---:|")
    for r in rows:
        ratio = f"{r['x_untiled']:.2f}" if "x_untiled" in r else ""
        diff = f"{r['diff_mean']:.2f} / {r['diff_p99']:.0f}" if "diff_mean" in r else ""
        print(f"| {r['side']} x {r['side']} | {r['backend']} | {'yes' if r['tiled'] else 'no'} | {r['seconds']:.1f} "
              f"| {ratio} | {r['peak_bytes'] / 2**30:.2f} GiB | {diff} |")
    if args.plot and rows:
        save_plot(rows, args.plot)
        print(f"plot: {args.plot}")
    return 0


def save_plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for key in dict.fromkeys((r["backend"], r["tiled"]) for r in rows):
        pts = [r for r in rows if (r["backend"], r["tiled"]) == key]
        label = f"{key[0]} {'tiled' if key[1] else 'untiled'}"
        a.plot([r["side"] for r in pts], [r["peak_bytes"] / 2**30 for r in pts], marker="o", label=label)
        b.plot([r["side"] for r in pts], [r["seconds"] for r in pts], marker="o", label=label)
    a.axhline(3, color="tab:red", ls="--", lw=0.8, label="target at 8K: 3 GiB")
    for ax, ylabel in ((a, "peak memory above idle (GiB)"), (b, "seconds")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("content side (px, square)")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
    b.set_yscale("log")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
