"""How long one server process holds Python's GIL per request, and for what: the ceiling of one process.

    python benchmarks/gil.py                                  # 512 px, JPEG in and out, 40 s of load
    python benchmarks/gil.py --format png --seconds 60 --precision int8
    python benchmarks/grpc_latency.py --gil ...               # the same split under its throughput run

One ``adain-server`` process serves every call from one Python interpreter. Decoding, the network and most
encoding run without the GIL, on as many cores as there are; what holds it (gRPC's event loop, the steps'
Python, a C library that keeps it) runs one thread at a time. On a GPU, where a 512-px render takes a few
milliseconds, that serial part is what bounds one process: at G ms of GIL a request it serves at most
1000 / G requests a second, however many cores it has.

This starts a server, loads it with calls from client processes (``--send`` in, ``--format`` out, one style,
cached) and samples the server with ``py-spy record --gil`` (``pip install py-spy``; it reads the process
from outside, which needs ptrace permission: root, or ``CAP_SYS_PTRACE`` in a container): only the thread
that holds the GIL is sampled, so samples / rate / requests is the GIL's milliseconds a request. It prints
them by step (the render, its batcher's own work, prepare, the reply's encode, the event loop, the rest) and
the frames that hold it most. On a CPU the render's share is the exported runtime's Python around its
inference, not what a GPU server runs; the server gets ``--torch-threads`` 1 by default so that the
network leaves a core to the Python, as a GPU server's host has.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gil_sampler import GilSampler, py_spy  # noqa: E402 - sibling scripts
from grpc_latency import Server, synthetic  # noqa: E402
from stylize_speed import cpu_name  # noqa: E402


def load(target: str, content: bytes, style: bytes, fmt: str, threads: int, done: Any, stop: Any) -> None:
    """Calls from ``threads`` threads until ``stop`` is set, counting each reply in ``done``."""
    import threading

    from adain.client import StyleTransferClient

    with StyleTransferClient(target, timeout=600, retries=0) as client:
        def loop() -> None:
            while not stop.is_set():
                client.stylize(content, style, format=fmt)
                with done.get_lock():
                    done.value += 1

        workers = [threading.Thread(target=loop) for _ in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()


def main(argv: list[str] | None = None) -> int:
    from adain.client import StyleTransferClient
    from adain.decoder import DEFAULT_DECODER

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--decoder", default=str(DEFAULT_DECODER))
    p.add_argument("--device", default="auto")
    p.add_argument("--backend", default="auto")
    p.add_argument("--precision", default="auto")
    p.add_argument("--torch-threads", type=int, default=1, help="the server's (default 1: a core for the Python)")
    p.add_argument("--max-batch-size", type=int, default=8)
    p.add_argument("--size", type=int, default=512, help="content and style side, px (default 512)")
    p.add_argument("--send", choices=("png", "jpeg"), default="jpeg", help="what the content and style are sent as")
    p.add_argument("--format", choices=("png", "jpeg", "webp"), default="jpeg", help="the replies' format")
    p.add_argument("--client-processes", type=int, default=2)
    p.add_argument("--threads", type=int, default=2, help="calls in flight per client process")
    p.add_argument("--seconds", type=float, default=40, help="how long to sample (default 40)")
    p.add_argument("--rate", type=int, default=500, help="py-spy samples a second (default 500)")
    p.add_argument("--top", type=int, default=4, help="frames shown per step")
    args = p.parse_args(argv)
    if py_spy() is None:
        raise SystemExit("gil: error: py-spy is not installed (pip install py-spy)")

    extra = ["--backend", args.backend, "--precision", args.precision, "--torch-threads", str(args.torch_threads),
             "--max-batch-size", str(args.max_batch_size)]
    server = Server(args.decoder, args.device, extra)
    ctx = multiprocessing.get_context("spawn")
    stop, done, clients = ctx.Event(), ctx.Value("i", 0), []
    try:
        server.wait_serving()
        content, style = synthetic(args.size, 1, args.send), synthetic(args.size, 2, args.send)
        with StyleTransferClient(server.target, timeout=600) as client:
            for _ in range(3):  # the style cached, the size's graphs built
                client.stylize(content, style, format=args.format)
        clients = [ctx.Process(target=load, args=(server.target, content, style, args.format, args.threads, done,
                                                  stop)) for _ in range(args.client_processes)]
        for c in clients:
            c.start()
        time.sleep(5)  # every client connected and calling
        with GilSampler(server.proc.pid, args.rate) as gil:
            start, t0 = done.value, time.perf_counter()
            time.sleep(args.seconds)
            requests, wall = done.value - start, time.perf_counter() - t0
    finally:
        stop.set()
        for c in clients:
            c.join(60)
        server.stop()

    if gil.error or not requests or not gil.steps:
        raise SystemExit(f"gil: error: {gil.summary(requests)}")
    print(f"# {cpu_name()}, {os.cpu_count()} CPUs; server: device {args.device}, backend {args.backend}, precision "
          f"{args.precision}, {args.torch_threads} torch thread(s); {args.size} px, {args.send} in, {args.format} out")
    print(f"# {requests} requests in {wall:.1f} s ({requests / wall:.2f}/s) from {args.client_processes} process(es)"
          f" x {args.threads} threads; {sum(gil.steps.values())} GIL samples at {args.rate}/s")
    print(f"{'step':<30} {'GIL ms/request':>15}")
    ms = gil.ms(requests)
    for step, v in ms.items():
        print(f"{step:<30} {v:>15.2f}")
        for frame, n in gil.frames[step].most_common(args.top):
            print(f"    {n / args.rate / requests * 1000:6.2f}  {frame[:110]}")
    total = sum(ms.values())
    print(f"{'all':<30} {total:>15.2f}")
    besides = total - ms.get("render", 0.0)
    print(f"one process's ceiling: {1000 / total:.0f} requests/s as measured; {1000 / besides:.0f}/s if the render "
          "held it for nothing (a GPU's render is other Python: time it there)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
