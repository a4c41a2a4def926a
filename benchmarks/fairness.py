"""How long one photo waits behind another caller's bulk job: callers taking turns vs one queue.

    python benchmarks/fairness.py [--bulk 16] [--size 384]

A "bulk" caller puts ``--bulk`` requests in the server's queue at once; a second later an "interactive"
caller sends one. Run twice against a local adain-server with the shipped decoder: once where the two are
the same caller to the server (no tokens: both come from 127.0.0.1, so the queue is first come, first
served, as before callers took turns) and once where tokens name them (they take turns). Prints the
interactive request's latency and the bulk job's total time in each case, and their ratios.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from replicas import synthetic  # noqa: E402
from stylize_speed import cpu_name  # noqa: E402
from video import start_server  # noqa: E402

from adain.client import StyleTransferClient  # noqa: E402

TOKENS = {"bulk": "bulk-token-0123456789abcdef", "interactive": "interactive-token-0123456789"}


def run(bulk: int, size: int, tokens_file: Path | None) -> tuple[float, float]:
    """(interactive latency s, bulk total s) against a fresh server."""
    extra = ("--auth-tokens-file", str(tokens_file)) if tokens_file else ()
    proc, target = start_server(None, extra)
    try:
        token = (lambda who: TOKENS[who]) if tokens_file else (lambda who: None)
        images = [synthetic(size, i) for i in range(bulk + 1)]
        style = synthetic(256, 999)
        with StyleTransferClient(target, timeout=900, token=token("bulk")) as a, \
                StyleTransferClient(target, timeout=900, token=token("interactive")) as b:
            a.stylize(images[0], style)  # warm: the style's features are cached for both
            with ThreadPoolExecutor(bulk + 1) as pool:
                t0 = time.perf_counter()
                jobs = [pool.submit(a.stylize, img, style) for img in images[1:]]
                time.sleep(1.0)
                t1 = time.perf_counter()
                b.stylize(images[0], style)
                interactive = time.perf_counter() - t1
                for j in jobs:
                    j.result()
                return interactive, time.perf_counter() - t0
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bulk", type=int, default=16, help="requests the bulk caller queues at once (default 16)")
    p.add_argument("--size", type=int, default=384, help="longest side of every image, px (default 384)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tokens = Path(tmp) / "tokens"
        tokens.write_text("".join(f"{name} {token}\n" for name, token in TOKENS.items()))
        fifo = run(args.bulk, args.size, None)
        fair = run(args.bulk, args.size, tokens)
    print(f"# benchmarks/fairness.py on {cpu_name()}: {args.bulk} bulk requests, then 1 interactive, {args.size} px")
    print("| queue | interactive latency, s | bulk job, s |")
    print("|---|---:|---:|")
    print(f"| one caller (first come, first served) | {fifo[0]:.2f} | {fifo[1]:.2f} |")
    print(f"| two callers taking turns | {fair[0]:.2f} | {fair[1]:.2f} |")
    print(f"| ratio (turns / one queue) | {fair[0] / fifo[0]:.2f}x | {fair[1] / fifo[1]:.2f}x |")


if __name__ == "__main__":
    main()
