"""In-process throughput on a GPU: encoder + AdaIN + decoder, style cached, at batch sizes 1-32.

    python benchmarks/gpu.py [--size 512] [--batches 1 2 4 8 16 32] [--seconds 3] [--json F] [--plot F]

Each batch size runs several ways, all channels_last with cuDNN's autotuner on: eager under bf16
autocast (what the server runs); the same replayed as one CUDA graph (captured once per batch size,
inputs copied into its static buffer; no Python or launch cost per layer); bf16 weights (no autocast
casts) in a CUDA graph; the same with the folded decoder (``adain.decoder.FoldedDecoder``: 2.25x fewer
multiply-adds in three of its nine convolutions) in a CUDA graph; and, for the batch sizes in
``--compile-batches``, ``torch.compile`` (inductor fuses the reflection pads, ReLUs and upsamples into
Triton kernels) in a CUDA graph; and, at every batch size with ``--compiled-backend``, the
``compiled`` backend the server runs with ``--backend compiled`` (``adain.compiled``: compiled for each of
these batch sizes at this size, no CUDA graph, called as the Stylizer calls it). Reported:
images/s over ``--seconds`` of back-to-back batches (synchronised at the end), and at batch 1 the
median latency of single calls, and each mode's largest pixel difference from eager's output (on the
0-1 scale: bf16 rounds to ~0.004 near 1, so a few hundredths are bf16, not a wrong picture).
Then, at each batch size, ``Stylizer.render`` itself, as the server's batcher calls it (eager, and on the
compiled backend): the network's rows plus the per-job steps around it (AdaIN targets, the contents' copies
to the device, the images made and copied back), on the gRPC runs' JPEG content, style cached (the pixel
difference is from the eager render's): the issue's in-process figure for what the server runs.
``--profile`` prints the kernels that take the most time in one eager batch of 8, or of the largest size
under 8 (where the time goes, for the next round).
``--prepare-threads N`` times ``Stylizer.prepare`` (a JPEG's decode, the checks, the cached style, the
content copied into pinned memory) from N threads as the server's pool calls it, with the device idle and
then while another thread renders batches of 32 as the server's batcher does; and, under the same load, the
content's copy to the device alone, as prepare made it until round 5 (blocking, from pageable memory) and
as render now makes it (from pinned memory, queued without blocking). Over gRPC, round 4's server got 79
images/s from 16 threads whose steps allow ~390: a blocking copy on the default stream waits for every
kernel queued before it, so each prepare could wait for a whole batch; prepare now leaves the pixels on the
host (``adain.prepared``).
On a CPU (the dry run that ``scripts/gpu_round.sh`` is tested with) only the eager rows run. Random
contents; the shipped decoder unless ``--decoder``.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adain import Stylizer
from adain.compiled import CompiledBackend
from adain.decoder import FoldedDecoder
from adain.ops import adain, mean_std
from adain.precision import cpu_info


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def throughput(fn: Callable[[], object], batch: int, seconds: float, device: torch.device) -> float:
    for _ in range(3):
        fn()
    sync(device)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        n += 1
        if n % 8 == 0:
            sync(device)  # keep the queue bounded, so the clock measures work done
    sync(device)
    return n * batch / (time.perf_counter() - t0)


def latency_ms(fn: Callable[[], object], device: torch.device, runs: int = 30) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    p.add_argument("--seconds", type=float, default=3.0, help="timed seconds per row")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when present)")
    p.add_argument("--decoder", default=None)
    p.add_argument("--json", type=Path, default=None, help="write the rows here")
    p.add_argument("--plot", type=Path, default=None, help="images/s against batch size, PNG")
    p.add_argument("--compile-batches", type=int, nargs="*", default=[], help="also torch.compile at these sizes")
    p.add_argument("--compiled-backend", action="store_true",
                   help="also the server's --backend compiled (adain.compiled), at every batch size")
    p.add_argument("--profile", action="store_true", help="print the top kernels of one eager batch of 8")
    p.add_argument("--prepare-threads", type=int, default=0,
                   help="time prepare from this many threads, idle and under a render's load (default 0: not)")
    args = p.parse_args(argv)
    torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN time its algorithms once
    st = Stylizer(args.decoder, args.device, precision="auto", backend="torch")
    device, dtype = st.device, st.dtype
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_info()[0]
    print(f"# in-process throughput, {args.size} px, style cached, {dtype}, channels_last, on {name}")
    s = args.size
    with torch.inference_mode():
        mean, std = mean_std(st.backend.relu4_1(torch.rand(1, 3, s, s, device=device)))
    # bf16 copies of the modules: no per-layer weight casts, as autocast does on every call
    enc16, dec16 = (copy.deepcopy(m).to(dtype) for m in (st.encoder, st.decoder))
    folded16 = FoldedDecoder(st.decoder).to(device, dtype, memory_format=torch.channels_last)
    mean16, std16 = mean.to(dtype), std.to(dtype)

    def bf16_path(decoder: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        # the content goes to the decoder too: a version-3 decoder's detail path runs on it (adain.detail)
        return lambda x: decoder(adain(enc16(x.to(dtype)).relu4_1, mean16, std16), 1.0, x.to(dtype))

    paths16 = {"bf16 weights": bf16_path(dec16), "folded decoder, bf16": bf16_path(folded16)}
    # wrapped only where it runs (its imports alone take seconds: the CPU dry run has no use for them)
    compiled = torch.compile(paths16["bf16 weights"]) if device.type == "cuda" and args.compile_batches else None
    served = None  # the server's compiled backend, compiled here for each batch size at this size
    if device.type == "cuda" and args.compiled_backend:
        t0 = time.perf_counter()
        served = CompiledBackend(st.encoder, st.decoder, device, dtype == torch.bfloat16,
                                 [(b, s, s) for b in args.batches])
        print(f"# compiled backend: {'built' if served.compiled else 'FAILED, eager'} in "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
    rows = []
    profile_batch = max((b for b in args.batches if b <= 8), default=min(args.batches))  # 8, or the largest below
    try:
        if args.prepare_threads:
            prepare_under_load(st, args.size, args.prepare_threads, args.seconds)
        measure(args, rows, profile_batch, st, mean, std, paths16, compiled, served)
    except KeyboardInterrupt:  # the round's timeout (SIGINT): what was measured is still written
        print("# interrupted: the rows so far", flush=True)
    if not rows:
        print("no row was measured")
        return 1
    best = max(rows, key=lambda r: r["images_per_s"])
    print(f"best: {best['images_per_s']:.0f} images/s ({best['mode']}, batch {best['batch']})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"device": name, "size": s, "dtype": str(dtype), "rows": rows}, indent=1))
    if args.plot:
        save_plot(rows, args.plot, f"{name}, {s} px, {str(dtype).removeprefix('torch.')}")
    return 0


def measure(args: argparse.Namespace, rows: list[dict], profile_batch: int, st: Stylizer, mean: torch.Tensor,
            std: torch.Tensor, paths16: dict[str, Callable[[torch.Tensor], torch.Tensor]],
            compiled: Callable[[torch.Tensor], torch.Tensor] | None, served: CompiledBackend | None) -> None:
    """Every batch size's rows, appended to ``rows`` as each is measured (and printed)."""
    device, dtype, s = st.device, st.dtype, args.size
    for batch in args.batches:
        x = torch.rand(batch, 3, s, s, device=device).contiguous(memory_format=torch.channels_last)

        def step(x: torch.Tensor = x) -> torch.Tensor:
            with torch.inference_mode(), torch.autocast(device.type, dtype, enabled=dtype != torch.float32):
                return st.decoder(adain(st.encoder(x).relu4_1, mean, std), 1.0, x)

        # Each mode is built as its turn comes, and a failure costs its row alone: a capture that failed on
        # the first graph once took every row with it, the eager ones too.
        modes: list[tuple[str, Callable[[], Callable[[], object]]]] = [("eager", lambda step=step: step)]
        if device.type == "cuda":
            modes.append(("cuda graph", lambda step=step, x=x: cuda_graph(step, x)))
            modes += [(f"{label}, cuda graph", lambda path=path, x=x: cuda_graph(inference(path, x), x))
                      for label, path in paths16.items()]
            if served is not None:
                modes.append(("compiled backend", lambda x=x: inference(
                    lambda inp: served.decode(adain(served.relu4_1(inp), mean, std), 1.0, inp), x)))
            if compiled is not None and batch in args.compile_batches:
                modes.append(("compiled, cuda graph",
                              lambda x=x: stance_default(lambda: cuda_graph(inference(compiled, x), x))))
        if args.profile and batch == profile_batch:
            try:
                profile(step, device)
            except Exception as e:  # noqa: BLE001
                print(f"# profile at batch {batch} failed: {type(e).__name__}: {e}"[:500], flush=True)
        timed_rows(args, rows, batch, modes, step(), device)  # eager's pixels: a faster mode must give the same picture
        # What the server's batcher calls: the per-job steps (AdaIN targets, the copies to and from the device, the
        # images made) around the network, on JPEG contents as the gRPC runs send them, style cached.
        job = synthetic_job(s)
        jobs = [st.prepare(job) for _ in range(batch)]  # the style's statistics cached after the first
        renders = [("Stylizer.render, eager", lambda jobs=jobs: rendering(st, st.backend, jobs))]
        if served is not None:
            renders.append(("Stylizer.render, compiled backend", lambda jobs=jobs: rendering(st, served, jobs)))
        timed_rows(args, rows, batch, renders, st.render(jobs), device)


def pixels(out: torch.Tensor | list) -> torch.Tensor:
    """A mode's output as N x 3 x H x W in [0, 1] on the host: a batch of images, or PIL images (Stylizer.render)."""
    if isinstance(out, torch.Tensor):
        return out.float().clamp(0, 1).cpu()
    return torch.stack([torch.from_numpy(np.asarray(img, np.float32) / 255).permute(2, 0, 1) for img in out])


def timed_rows(args: argparse.Namespace, rows: list[dict], batch: int,
               modes: list[tuple[str, Callable[[], Callable[[], Any]]]], reference: torch.Tensor | list,
               device: torch.device) -> None:
    """Each mode built, checked against ``reference`` (its largest pixel difference, 0-1) and timed: a row each."""
    want = pixels(reference)
    for mode, build in modes:
        t0 = time.perf_counter()
        try:
            fn = build()
            if mode.startswith("compiled"):
                print(f"# torch.compile at batch {batch}: {time.perf_counter() - t0:.0f} s", flush=True)
            diff = (pixels(fn()) - want).abs().max().item()
            ips = throughput(fn, batch, args.seconds, device)
            row = {"batch": batch, "mode": mode, "images_per_s": round(ips, 1), "max_diff": round(diff, 4)}
            if batch == 1:
                row["p50_ms"] = round(latency_ms(fn, device), 2)
        except Exception as e:  # noqa: BLE001
            print(f"# {mode} at batch {batch} failed: {type(e).__name__}: {e}"[:500], flush=True)
            continue
        rows.append(row)
        print(json.dumps(row), flush=True)


def synthetic_job(size: int) -> Any:
    """A job of the gRPC runs' synthetic content and style, as JPEG (what they send with --send jpeg)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from grpc_latency import synthetic

    from adain.job import Job

    return Job(synthetic(size, 1, "jpeg"), [synthetic(size, 2, "jpeg")])


def rendering(st: Stylizer, backend: object, jobs: list) -> Callable[[], list]:
    """``st.render(jobs)`` on ``backend`` (the Stylizer's own put back after each call)."""

    def run() -> list:
        own, st.backend = st.backend, backend
        try:
            return st.render(jobs)
        finally:
            st.backend = own

    return run


def prepare_under_load(st: Stylizer, size: int, threads: int, seconds: float, batch: int = 32) -> None:
    """Prepare's time from ``threads`` threads, the device idle, then under a render thread's load; then the
    content's copy alone under that load, blocking from pageable memory (prepare's until round 5) against
    non-blocking from pinned (render's now)."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from adain.image import load_image, to_tensor

    job = synthetic_job(size)
    st.prepare(job)  # the style's statistics cached, as in steady state
    pixels = to_tensor(load_image(job.content))

    def pageable() -> None:
        pixels.to(st.device)

    def pinned() -> None:
        if st.cuda:
            pixels.pin_memory().to(st.device, non_blocking=True)
        else:  # nothing to pin for (the dry run)
            pixels.to(st.device)

    def timed(fn: Callable[[], object]) -> tuple[float, float]:
        """p50 ms of ``fn`` and calls/s, from ``threads`` threads for ``seconds``."""
        end = time.perf_counter() + seconds

        def worker(_: int) -> list[float]:
            out = []
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                fn()
                out.append((time.perf_counter() - t0) * 1000)
            return out

        t0 = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            ms = [m for part in pool.map(worker, range(threads)) for m in part]
        return statistics.median(ms), len(ms) / (time.perf_counter() - t0)

    def prepare() -> None:
        st.prepare(job)

    jobs = [st.prepare(job) for _ in range(batch)]
    st.render(jobs)  # warm
    renders: list[float] = []

    def render_loop() -> None:
        while not stop.is_set():
            t0 = time.perf_counter()
            st.render(jobs)  # to PIL images: the device work, then its copies back, as the batcher's
            renders.append(time.perf_counter() - t0)

    print(f"# prepare from {threads} threads, a {size}-px JPEG, style cached:", flush=True)
    p50, rate = timed(prepare)
    print(f"prepare, device idle: p50 {p50:.1f} ms, {rate:.0f}/s", flush=True)
    # Round 5 (H100, 16 torch threads): a render of 32 took 1,573 ms beside 16 preparing threads, 58 alone. Each
    # preparing thread's torch ops ran an OpenMP team of its own (16 x 16 threads on 16 cores), and the render
    # thread waited for the GIL after each of its ops: timed again with one torch thread, as a GPU server can run.
    threads_before = torch.get_num_threads()
    for torch_threads in dict.fromkeys((threads_before, 1)):
        torch.set_num_threads(torch_threads)
        stop = threading.Event()
        renders.clear()
        loader = threading.Thread(target=render_loop, daemon=True)
        loader.start()
        try:
            rows = (("prepare", prepare), ("its copy alone, pageable, blocking", pageable),
                    ("the copy from pinned memory, non-blocking", pinned))
            for label, fn in rows if torch_threads == threads_before else rows[:1]:
                p50, rate = timed(fn)
                print(f"{label}, while batches of {batch} render ({torch_threads} torch threads): p50 {p50:.1f} ms, "
                      f"{rate:.0f}/s", flush=True)
        finally:
            stop.set()
            loader.join()
        if renders:
            print(f"# a render of {batch} took {statistics.median(renders) * 1000:.0f} ms beside them "
                  f"({torch_threads} torch threads, median of {len(renders)})", flush=True)
    torch.set_num_threads(threads_before)


def stance_default(build: Callable[[], Callable[[], torch.Tensor]]) -> Callable[[], torch.Tensor]:
    """``build()`` with torch.compile compiling (the compiled backend's warm-up leaves the process compiling
    nothing new, as a server wants it)."""
    with torch.compiler.set_stance("default"):
        return build()


def inference(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> Callable[..., torch.Tensor]:
    """``fn`` under inference mode, on ``x`` unless given another input (as ``cuda_graph`` does)."""

    def run(inp: torch.Tensor = x) -> torch.Tensor:
        with torch.inference_mode():
            return fn(inp)

    return run


def profile(step: Callable[[], torch.Tensor], device: torch.device, top: int = 15) -> None:
    """The kernels that take the most device time in one eager call (after two warm-up calls)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    for _ in range(2):
        step()
    sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        step()
        sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=top, max_name_column_width=60), flush=True)


def cuda_graph(step: Callable[[], torch.Tensor], x: torch.Tensor) -> Callable[[], torch.Tensor]:
    """``step`` captured as one CUDA graph; each call copies a fresh input into its static buffer and replays."""
    static = x.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            step(static)  # warm up cuDNN's algorithm choice outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step(static)

    def replay() -> torch.Tensor:
        static.copy_(x)
        graph.replay()
        return out

    return replay


def save_plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for mode in dict.fromkeys(r["mode"] for r in rows):
        pts = [(r["batch"], r["images_per_s"]) for r in rows if r["mode"] == mode]
        ax.plot(*zip(*pts), marker="o", label=mode)
    ax.axhline(1000, color="tab:red", lw=0.8, ls="--", label="target 1,000/s")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel("images / s")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
