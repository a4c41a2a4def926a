"""What a server's render thread pays besides the network: the torch ops a batch dispatches, and a render's time
while another thread runs Python.

    python benchmarks/render_ops.py [--batch 32] [--size 64] [--device auto] [--backend torch] [--runs 5]

torch lets go of the GIL in each op and takes it back after; in a server the event loop and the prepare
threads want it too, so every op of the render thread may wait for it (CPython hands it over after its switch
interval, 5 ms, when the holder does not let go). The row "ops a job" counts what a render dispatches beyond
the network (torch's profiler, CPU side, top-level ops), and the rows "beside a Python thread" time a render
while a thread spins in Python, the worst case of that wait, against the render alone. The content is small by
default (64 px) so that the ops around the network, not the network, are what is timed; the GPU round runs
it at 512 px too. On a CPU the render's own arithmetic is most of its time; on a GPU it is queued, and the
ops' dispatch and the GIL are what the host pays.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from grpc_latency import synthetic  # noqa: E402 - a sibling script's test image

from adain.job import Job  # noqa: E402
from adain.precision import cpu_info  # noqa: E402
from adain.stylizer import Stylizer  # noqa: E402


def count_ops(fn) -> int:
    """Top-level torch ops that ``fn`` dispatches from Python (each a release and a take of the GIL)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = [e for e in prof.events() if e.name.startswith("aten::") and e.cpu_parent is None]
    return len(events)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=64, help="content side, px (default 64)")
    p.add_argument("--device", default="auto")
    p.add_argument("--backend", default="torch")
    p.add_argument("--precision", default="auto")
    p.add_argument("--runs", type=int, default=5, help="renders timed each way; the median (default 5)")
    args = p.parse_args(argv)

    st = Stylizer(device=None if args.device == "auto" else args.device, backend=args.backend,
                  precision=args.precision, compile_shapes=[(args.batch, args.size, args.size)])
    style = synthetic(64, 99)
    jobs = [st.prepare(Job(synthetic(args.size, i), [style])) for i in range(args.batch)]

    def render() -> None:
        st.render(jobs)
        if st.cuda:
            torch.cuda.synchronize()

    def network() -> None:  # the encoder and decoder alone on the same batch: what any render must run
        with torch.inference_mode():
            x = torch.cat([j.content for j in jobs]).to(st.device)
            st.backend.decode(st.backend.relu4_1(x), 1.0, x if st.decoder.detail is not None else None)
        if st.cuda:
            torch.cuda.synchronize()

    render()
    network()  # warm
    ops, net_ops = count_ops(render), count_ops(network)
    alone = statistics.median(_timed(render) for _ in range(args.runs))
    stop = threading.Event()

    def spin() -> None:  # pure Python: holds the GIL but for the interpreter's switches
        n = 0
        while not stop.is_set():
            n += 1

    spinner = threading.Thread(target=spin, daemon=True)
    spinner.start()
    try:
        busy = statistics.median(_timed(render) for _ in range(args.runs))
    finally:
        stop.set()
        spinner.join()
    where = torch.cuda.get_device_name(st.device) if st.cuda else cpu_info()[0]
    print(f"# Stylizer.render of {args.batch} jobs at {args.size} px, one style, alpha 1: {st.device} ({where}), "
          f"{st.info['backend']} {st.info['dtype']}, torch {torch.__version__}, switch interval "
          f"{sys.getswitchinterval() * 1000:.0f} ms")
    print(f"ops a job beyond the network       {(ops - net_ops) / args.batch:8.1f}  ({ops} in a render, "
          f"{net_ops} in the network alone)")
    print(f"render, ms a job, alone            {alone * 1000 / args.batch:8.2f}")
    print(f"render, ms a job, beside a Python thread {busy * 1000 / args.batch:8.2f}  ({busy / alone:.2f}x)")
    return 0


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


if __name__ == "__main__":
    raise SystemExit(main())
