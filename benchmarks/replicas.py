"""Throughput of 1, 2 and 3 local replicas behind the client's round-robin balancing, in one run.

    python benchmarks/replicas.py [--images 24] [--size 256] [--jobs-per-replica 2]

Each replica is a local adain-server with the shipped decoder and cores // N torch threads; the same
synthetic images (generated here, no data files) go through one StyleTransferClient whose target lists
every replica, ``--jobs-per-replica`` x N calls in flight. On one machine the replicas share its cores,
so this shows the overhead of balancing, not the gain that separate machines give.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stylize_speed import cpu_name  # noqa: E402
from video import start_server  # noqa: E402

from adain.client import StyleTransferClient  # noqa: E402


def synthetic(size: int, seed: int) -> bytes:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    h = size * 3 // 4
    x = np.linspace(0, 1, size)[None, :, None]
    y = np.linspace(0, 1, h)[:, None, None]
    arr = 0.4 + 0.4 * np.sin(6 * (x * rng.random(3) + y * rng.random(3))) + 0.2 * rng.random((h, size, 3))
    buf = io.BytesIO()
    Image.fromarray((arr.clip(0, 1) * 255).astype("uint8"), "RGB").save(buf, "PNG")
    return buf.getvalue()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=24)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--jobs-per-replica", type=int, default=2)
    p.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 3])
    args = p.parse_args()
    cores = os.cpu_count() or 1
    images = [synthetic(args.size, i) for i in range(args.images)]
    style = synthetic(128, 999)
    print(f"# benchmarks/replicas.py on {cpu_name()}, {cores} cores; {args.images} images of {args.size} px")
    print("| replicas | torch threads each | images/s | x one replica | images per replica |")
    print("|---:|---:|---:|---:|---|")
    base = None
    for n in args.replicas:
        threads = max(1, cores // n)
        procs = [start_server(None, ("--torch-threads", str(threads))) for _ in range(n)]
        try:
            with StyleTransferClient(",".join(t for _, t in procs), timeout=600) as client:
                client.stylize(images[0], style)  # warm every channel
                t0 = time.perf_counter()
                with ThreadPoolExecutor(args.jobs_per_replica * n) as pool:
                    served = Counter(r.served_by for r in pool.map(lambda im: client.stylize(im, style), images))
                rate = args.images / (time.perf_counter() - t0)
        finally:
            for proc, _ in procs:
                proc.terminate()
                proc.wait(30)
        base = base or rate
        counts = ", ".join(str(c) for _, c in sorted(served.items()))
        print(f"| {n} | {threads} | {rate:.2f} | {rate / base:.2f} | {counts} |", flush=True)


if __name__ == "__main__":
    main()
