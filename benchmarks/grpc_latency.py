"""End-to-end gRPC latency vs the in-process Stylizer, and throughput with concurrent clients.

    python benchmarks/grpc_latency.py                        # the shipped decoder, device auto
    python benchmarks/grpc_latency.py --decoder runs/decoder.pt --size 512 --runs 5 --clients 8
    python benchmarks/grpc_latency.py --random-decoder       # no trained decoder: pipeline timing only

It starts its own ``adain-server`` subprocess on a free port (metrics off) and, in this process, a
Stylizer with the same decoder and device. Latency: the median of ``--runs`` one-at-a-time calls of a
``--size`` px content with a ``--size`` px style (the style's features are cached after the first call
on both sides, as in steady state). In process, a call is ``Stylizer.stylize`` + encoding (``--format``),
timed on the main thread and on a worker thread (as the server renders); the ratio gRPC / worker-thread shows
what gRPC, (de)serialisation, queueing and batching add. Local and remote calls alternate, so that a drifting
load (another job on the machine) hits both alike. Throughput: images per second with ``--clients``
concurrent clients sending ``--requests`` requests in all (threads of this process, or spread over
``--client-processes``: in one, the clients' own Python, under one GIL, may be part of the ceiling), then
with one client sending an eighth of them. A row before them splits one in-process call into prepare,
render and encode; a row under each says where a call's time went under that load, as the server timed it.
``--replicas N`` starts N servers on the same device and the client balances over them (its round robin over
a list of addresses, as for replicas on separate machines): whether processes of their own (each its own
GIL, its own batcher) take a host-bound GPU server further than one process's threads.
Each row is printed as it is measured.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import multiprocessing
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from adain.precision import PRECISIONS  # (no torch: the client processes import this file)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gil_sampler import GilSampler  # noqa: E402 - a sibling module

REPO = Path(__file__).resolve().parents[1]


def encoded(img: Image.Image, fmt: str) -> bytes:
    """The bytes a client sends: PNG, or JPEG at quality 90 as a camera or a photo service stores a photo."""
    buf = io.BytesIO()
    if fmt == "png":
        img.save(buf, "PNG")
    else:
        img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def synthetic(size: int, seed: int, fmt: str = "png") -> bytes:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    phase = rng.uniform(0, 2 * np.pi, 3)
    chans = [0.5 + 0.4 * np.sin(6 * x + 4 * y * (c + 1) + phase[c]) for c in range(3)]
    arr = np.clip(np.stack(chans, -1) + rng.normal(0, 0.08, (size, size, 3)), 0, 1)
    return encoded(Image.fromarray((arr * 255).astype(np.uint8), "RGB"), fmt)


def load_or_make(path: str | None, size: int, seed: int, fmt: str = "png") -> bytes:
    if path is None:
        return synthetic(size, seed, fmt)
    img = Image.open(path).convert("RGB")
    img.thumbnail((size, size), Image.Resampling.LANCZOS)
    return encoded(img, fmt)


def median_ms(fn, runs: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), times


class Server:
    def __init__(self, decoder: str, device: str, extra: list[str]) -> None:
        cmd = [sys.executable, "-m", "adain.server", "--port", "0", "--metrics-port", "0", "--decoder", decoder,
               "--device", device, "--log-level", "WARNING",
               "--max-queue-per-caller", "65536", "--max-refine-steps", "0",  # plain calls only: no refine warm-up
               *extra]  # every client here is one caller: give it the whole queue
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.err: list[str] = []
        threading.Thread(target=lambda: self.err.extend(self.proc.stderr), daemon=True).start()
        line = self.proc.stdout.readline()
        m = re.search(r"listening on (\S+):(\d+)", line)
        if not m:
            self.proc.wait(30)
            raise SystemExit(f"grpc_latency: error: the server did not start: {''.join(self.err)[-1500:]}")
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()
        self.target = f"127.0.0.1:{m.group(2)}"

    def wait_serving(self, timeout: float = 300) -> None:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        end = time.monotonic() + timeout
        with grpc.insecure_channel(self.target) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            while time.monotonic() < end:
                if self.proc.poll() is not None:
                    raise SystemExit(f"grpc_latency: error: the server exited: {''.join(self.err)[-1500:]}")
                try:
                    if stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status == 1:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.2)
        raise SystemExit("grpc_latency: error: the server never became SERVING")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--decoder", help="decoder file (default: the one shipped in the package)")
    p.add_argument("--random-decoder", action="store_true",
                   help="no trained decoder: time the pipeline with an untrained one (results are noise)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--backend", default="auto", help="the runtime, as the server's --backend (default auto)")
    p.add_argument("--precision", default="auto", choices=PRECISIONS, help="as the server's --precision (default auto)")
    p.add_argument("--size", type=int, default=512, help="content and style size, px (default 512)")
    p.add_argument("--runs", type=int, default=3, help="one-at-a-time calls for each latency median (default 3)")
    p.add_argument("--clients", type=int, default=8, help="concurrent clients for throughput (default 8)")
    p.add_argument("--requests", type=int, default=8, help="requests in all for each throughput run (default 8)")
    p.add_argument("--client-processes", type=int, default=1,
                   help="processes the many clients are spread over (default 1: threads of this one)")
    p.add_argument("--max-batch-size", type=int, default=8, help="the server's --max-batch-size (default 8)")
    p.add_argument("--workers", type=int, default=None, help="the server's --workers (default: the server's)")
    p.add_argument("--replicas", type=int, default=1,
                   help="servers started on the same device, the client balancing over them (default 1)")
    p.add_argument("--format", default="png", choices=["png", "jpeg", "webp"],
                   help="the reply's format, in process and over gRPC (default png)")
    p.add_argument("--send", default="png", choices=["png", "jpeg"],
                   help="the format the content and style are sent in (default png; a 512-px PNG's decode was 9 ms "
                   "of an H200 host's time a call, a JPEG's is a fraction of it)")
    p.add_argument("--content", help="content image (default: synthetic)")
    p.add_argument("--style", help="style image (default: synthetic)")
    p.add_argument("--gil", action="store_true",
                   help="sample the (first) server with py-spy during the many clients' run: its GIL ms a request by "
                   "step, the ceiling of one process (benchmarks/gil.py; needs py-spy and ptrace permission)")
    args = p.parse_args(argv)
    if args.replicas < 1:
        p.error(f"--replicas must be >= 1, got {args.replicas}")

    from adain.decoder import DEFAULT_DECODER

    label = "trained decoder"
    tmp = None
    if args.random_decoder:
        import torch

        from adain.decoder import Decoder, save_decoder

        tmp = tempfile.TemporaryDirectory()
        decoder = os.path.join(tmp.name, "random-decoder.pt")
        torch.manual_seed(0)
        save_decoder(Decoder(), decoder, {"note": "random, for benchmarking only"})
        label = "RANDOM decoder: pipeline timing only, outputs are meaningless"
    else:
        decoder = args.decoder or str(DEFAULT_DECODER)
        if not Path(decoder).is_file():
            print(f"grpc_latency: error: no decoder at {decoder}: train and export one (adain-train), pass "
                  "--decoder PATH, or use --random-decoder for a pipeline-only timing", file=sys.stderr)
            return 2

    content = load_or_make(args.content, args.size, 1, args.send)
    style = load_or_make(args.style, args.size, 2, args.send)
    import torch

    from adain.client import StyleTransferClient
    from adain.encoder import padded_size
    from adain.image import encode_image
    from adain.job import Job
    from adain.stylizer import Stylizer

    device = None if args.device == "auto" else args.device
    print(f"# {label}; backend {args.backend}, precision {args.precision}; {args.size} px content and style; "
          f"torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    # The server loads while this process does; latencies are then measured alternately (local, remote),
    # so that a load that drifts (another job on the machine) hits both alike.
    extra = ["--max-batch-size", str(args.max_batch_size), "--backend", args.backend, "--precision", args.precision]
    extra += ["--workers", str(args.workers)] if args.workers else []
    side, _ = padded_size(args.size, args.size)  # the content as the encoder pads it: what compiled compiles for
    extra += ["--compile-sizes", f"{side}x{side}"]
    servers: list[Server] = []
    try:
        for _ in range(args.replicas):  # one at a time: one that fails to start leaves the others to be stopped
            servers.append(Server(decoder, args.device, extra))
        target = ",".join(s.target for s in servers)  # the client's round robin over them
        # in process only single calls: one shape to compile (the server compiles its batch sizes meanwhile)
        st = Stylizer(decoder=decoder, device=device, backend=args.backend, precision=args.precision,
                      compile_shapes=[(1, side, side)])
        dev = str(st.device)
        if st.cuda:
            print(f"# GPU: {torch.cuda.get_device_name(st.device)}")

        def sync() -> None:
            if st.cuda:
                torch.cuda.synchronize()

        def local() -> None:
            img = st.stylize(content, [style])
            sync()
            encode_image(img, args.format)

        def steps() -> tuple[float, float, float]:
            """One in-process call's three steps, ms: prepare (decode, checks, cached style), render, encode."""
            t0 = time.perf_counter()
            prepared = st.prepare(Job(content, [style]))
            t1 = time.perf_counter()
            img = st.render([prepared])[0]
            sync()
            t2 = time.perf_counter()
            encode_image(img, args.format)
            return (t1 - t0) * 1000, (t2 - t1) * 1000, (time.perf_counter() - t2) * 1000

        for server in servers:
            server.wait_serving()
        with StyleTransferClient(target, timeout=600, retries=0) as client:
            info = client.server_info()
            # Each row is printed as it is measured: a run cut short by its timeout keeps what it had.
            print(f"# device {dev} ({len(servers)} server{'s' if len(servers) > 1 else ''}: {info['device']}, "
                  f"{info['backend']} {info['precision']}, "
                  f"{info['batching']['prepare_workers']} prepare workers); "
                  f"{args.send} sent, {args.format} replies; {args.runs} runs per median, "
                  f"{args.requests} requests per throughput run ({one_requests(args.requests)} with one client); "
                  f"max batch {args.max_batch_size}")
            print(f"{'measure':<{WIDTH}}  value\n{'-' * WIDTH}  {'-' * 30}", flush=True)
            local()  # warm up, and cache the style
            client.stylize(content, style, format=args.format)
            parts = [statistics.median(t) for t in zip(*(steps() for _ in range(args.runs)))]
            row(f"in-process steps: prepare, render, {args.format} encode",
                "  ".join(f"{t:.1f}" for t in parts) + " ms")
            # torch is measurably faster on a worker thread than on the main thread here (OpenMP), and the
            # server renders on a worker thread: time the library both ways, compare with the worker one.
            worker = ThreadPoolExecutor(1)
            local_ms, main_ms, remote_ms, inference_ms = [], [], [], []
            for _ in range(args.runs):
                main_ms.append(median_ms(local, 1)[0])
                local_ms.append(worker.submit(median_ms, local, 1).result()[0])
                t0 = time.perf_counter()
                r = client.stylize(content, style, format=args.format)
                remote_ms.append((time.perf_counter() - t0) * 1000)
                inference_ms.append(r.timings.inference_ms)
            worker.shutdown()
            local_med, remote_med = statistics.median(local_ms), statistics.median(remote_ms)
            row(f"in-process Stylizer + {args.format} encode, main thread", f"{statistics.median(main_ms):9.1f} ms")
            row(f"in-process Stylizer + {args.format} encode, worker thread", f"{local_med:9.1f} ms")
            row("gRPC end-to-end latency (median)",
                f"{remote_med:9.1f} ms  (server inference {statistics.median(inference_ms):.1f} ms)")
            row("ratio gRPC / in-process (worker thread)", f"{remote_med / local_med:9.2f} x")

            def load(clients: int, requests: int, processes: int) -> tuple[list[tuple[Any, ...]], float]:
                """Each call's record (client_share's) and the images a second, of ``requests`` calls from
                ``clients`` clients in ``processes`` processes."""
                if processes > 1:  # the load from several processes: one process's GIL may cap it
                    ctx = multiprocessing.get_context("spawn")  # (gRPC does not survive a fork)
                    start = time.time() + 3 + 0.25 * processes  # each connected and waiting by then
                    shares = [(target, content, style, args.format, len(range(i, clients, processes)),
                               len(range(i, requests, processes)), start) for i in range(processes)]
                    with ctx.Pool(processes) as pool:
                        results = pool.starmap(client_share, shares)
                    ips = requests / (max(r[1] for r in results) - min(r[0] for r in results))
                    return [c for r in results for c in r[2]], ips
                t0 = time.time()
                calls = client_share(target, content, style, args.format, clients, requests, 0, client)[2]
                return calls, requests / (time.time() - t0)

            def throughput(clients: int, requests: int, processes: int = 1, gil: bool = False) -> None:
                processes = min(processes, clients)
                # py-spy on the first server while the calls run (it attaches before they start)
                sampler = GilSampler(servers[0].proc.pid) if gil else contextlib.nullcontext()
                with sampler:
                    calls, ips = load(clients, requests, processes)
                label = f"{clients} client{'s' if clients > 1 else ''}"
                label += f" in {processes} processes" if processes > 1 else ""
                mean = [statistics.mean(c[k] for c in calls) for k in range(len(CALL_PARTS) + 1)]
                answered = f", {len({c[-1] for c in calls})} servers answered" if len(servers) > 1 else ""
                row(f"throughput, {label}", f"{ips:9.2f} img/s  (mean batch {mean[-1]:.1f}{answered})")
                # where a call's time went under this load, as the server timed it: steps that grow far past
                # their in-process time above wait for the host (cores, GIL); a large queue, for the render;
                # the rest (the client's time less the server's steps) is gRPC, the event loop and the client
                rest = mean[0] - sum(mean[1:-1])
                row("  a call under that load, mean ms",
                    f"{mean[0]:.1f} = " + " + ".join(f"{name} {v:.1f}" for name, v in zip(CALL_PARTS[1:], mean[1:]))
                    + f" + rest {rest:.1f}")
                # the latency target is a p50: the one-client run's many calls give a steadier one than
                # the few alternated with in-process calls above (round 5: 21.3 ms there, a 15.9 ms mean here)
                ms = sorted(c[0] for c in calls)
                row("  a call as the client saw it, p50 / p90 ms",
                    f"{statistics.median(ms):.1f} / {ms[min(len(ms) - 1, int(0.9 * len(ms)))]:.1f}")
                if isinstance(sampler, GilSampler):  # its own calls: a server names itself (hostname:port)
                    port = ":" + servers[0].target.rpartition(":")[2]
                    row(f"  {'the' if len(servers) == 1 else 'the first'} server's GIL a request (py-spy), ms",
                        sampler.summary(sum(c[-1].endswith(port) for c in calls)))

            throughput(args.clients, args.requests, args.client_processes, args.gil)  # the figure, first
            throughput(1, one_requests(args.requests))
    finally:
        for server in servers:
            server.stop()
        if tmp is not None:
            tmp.cleanup()
    return 0


WIDTH = 48
# what client_share records of each call, in this order (then its batch size)
CALL_PARTS = ("client", "prepare", "queue", "render", "encode")


def client_share(target: str, content: bytes, style: bytes, fmt: str, threads: int, requests: int,
                 start: float, client: Any = None) -> tuple[float, float, list[tuple[Any, ...]]]:
    """``requests`` calls from ``threads`` threads on one channel (``client``'s, else a new one), from the
    wall-clock time ``start`` (or at once): the times of the first call's start and of the last reply, and for
    each call its time as the client saw it, the server's timings of its steps (ms, as CALL_PARTS), its batch
    size and the server that answered. The throughput over several processes is theirs from the first start to
    the last end."""
    from adain.client import StyleTransferClient

    own = client is None
    client = client or StyleTransferClient(target, timeout=600, retries=0)
    try:
        if own:
            client.server_info()  # connected before the clock starts
        time.sleep(max(0.0, start - time.time()))
        def call(_: int) -> tuple[Any, ...]:
            t = time.perf_counter()
            r = client.stylize(content, style, format=fmt)
            s = r.timings
            return ((time.perf_counter() - t) * 1000, s.prepare_ms, s.queue_ms, s.inference_ms, s.encode_ms,
                    s.batch_size, r.served_by)

        t0 = time.time()
        with ThreadPoolExecutor(threads) as pool:
            calls = list(pool.map(call, range(requests)))
        return t0, time.time(), calls
    finally:
        if own:
            client.close()


def row(name: str, value: str) -> None:
    print(f"{name:<{WIDTH}}  {value}", flush=True)


def one_requests(requests: int) -> int:
    """One client's run: an eighth of the many clients' (at least 4): it is serial, and 256 of them at 512 px
    once took most of a GPU call's time before the figure that matters."""
    return max(4, requests // 8)


if __name__ == "__main__":
    sys.exit(main())
