"""A server's memory and health under a long mixed load: what an SRE asks before trusting it with traffic.

    python benchmarks/soak.py [--minutes 30] [--clients 3] [--every 10] [--plot runs/soak.png]

Starts its own ``adain-server`` (the shipped decoder, its defaults, ``--server-flags`` added) and, for
``--minutes``, sends a seeded mix of calls from ``--clients`` threads: photos of random sizes (48-768 px a side,
PNG, JPEG or WebP in and out, a new size nearly every call), one or two weighted styles (new images, so the
style cache turns over), alpha, colour preservation, a two-style mask, regions by a label image, a short
refine, a 12-frame clip with the flow mode, calls cancelled midway, and bad inputs (a file cut short, a style
id the server does not know). Every ``--every`` seconds it samples the server's resident memory, threads and
open files (``/proc``) and prints a line. At the end: each kind's calls, their outcomes and p50 / p95 seconds;
memory by quarter of the run, each quarter's median and floor (the first warms up: shapes compiled, caches filled;
a render's peak comes and goes, a creep lifts the floor), and the floor's slope over the second half in MB an hour; and
whether the server still answers its health check and exits 0 on SIGTERM. ``--plot`` draws memory, threads and
calls over time. Images are synthetic; no data is read. Linux only (``/proc``).
"""

from __future__ import annotations

import argparse
import collections
import io
import random
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stylize_speed import cpu_name  # noqa: E402
from video import start_server  # noqa: E402

from adain.client import StyleTransferClient, StyleTransferError  # noqa: E402

# kind -> relative frequency in the mix; the photo kinds make most of a service's traffic
MIX = {"photo": 10, "blend": 3, "options": 3, "mask": 2, "labels": 2, "refine": 1, "clip": 1, "cancel": 2, "bad": 2}
EXPECTED = {"cancel": "CANCELLED", "bad": "INVALID_ARGUMENT|NOT_FOUND"}  # what these kinds must end with


def picture(w: int, h: int, rng: random.Random) -> Image.Image:
    """A smooth random scene with some grain: every call a new image (and a new style statistic)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    f = [rng.uniform(2, 30) for _ in range(6)]
    chans = [0.5 + 0.3 * np.sin(x / f[c] + y / f[c + 3] + rng.uniform(0, 6)) for c in range(3)]
    grain = np.random.default_rng(rng.randrange(1 << 30)).normal(0, 0.05, (h, w, 3))
    return Image.fromarray((np.clip(np.stack(chans, -1) + grain, 0, 1) * 255).astype(np.uint8), "RGB")


def encoded(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **({"quality": 90} if fmt in ("JPEG", "WEBP") else {}))
    return buf.getvalue()


def call(client: StyleTransferClient, kind: str, rng: random.Random) -> None:
    """One call of ``kind``; raises StyleTransferError as the client does. A photo of random size is made only
    for the kinds that send one (refines, clips and cancels send their own: the client's encoding of a photo
    it never sent took the server's cores)."""
    style = encoded(picture(rng.randint(64, 512), rng.randint(64, 512), rng), "JPEG")
    out = {"format": rng.choice(["png", "jpeg", "webp"])}
    if kind in ("photo", "blend", "options", "mask", "labels", "bad"):
        w, h = rng.randint(48, 768), rng.randint(48, 768)
        content = encoded(picture(w, h, rng), rng.choice(["PNG", "JPEG", "WEBP"]))
    if kind == "photo":
        client.stylize(content, style, **out)
    elif kind == "blend":
        other = encoded(picture(256, 256, rng), "PNG")
        client.stylize(content, [(style, rng.uniform(0.2, 1)), (other, rng.uniform(0.2, 1))], **out)
    elif kind == "options":
        client.stylize(content, style, alpha=rng.uniform(0, 1), preserve_color=rng.choice(["coral", "luminance"]),
                       content_size=rng.choice([0, 256, 384]), **out)
    elif kind == "mask":
        mask = Image.new("L", (w, h), 0)
        mask.paste(255, (0, 0, w // 2, h))
        client.stylize(content, [style, encoded(picture(128, 128, rng), "PNG")], mask=encoded(mask, "PNG"), **out)
    elif kind == "labels":
        labels = Image.new("L", (w, h), 10)
        labels.paste(20, (w // 3, h // 3, w, h))
        client.stylize(content, [style, encoded(picture(128, 128, rng), "PNG")], labels=encoded(labels, "PNG"),
                       label_values=[10, 20], **out)
    elif kind == "refine":
        client.stylize(encoded(picture(128, 96, rng), "PNG"), style, refine_steps=3, timeout=300)
    elif kind == "clip":
        scene = picture(200, 96, rng)
        frames = [encoded(scene.crop((4 * t, 0, 4 * t + 160, 96)), "JPEG") for t in range(12)]
        for _ in client.stylize_video(frames, style, temporal="flow", timeout=600):
            pass
    elif kind == "cancel":
        t0 = time.monotonic()
        client.stylize(encoded(picture(768, 768, rng), "PNG"), style, refine_steps=20, timeout=300,
                       stop=lambda: time.monotonic() - t0 > 0.5)
    elif kind == "bad":
        if rng.random() < 0.5:
            client.stylize(content[: len(content) // 2], style)  # cut short: the server says what it began as
        else:
            client.stylize(content, "id:no-such-style")


class Sampler:
    """The server's resident MB, threads and open files every ``every`` s, printed as they come."""

    def __init__(self, pid: int, every: float, calls: Callable[[], int]) -> None:
        self.pid, self.every, self.calls = pid, every, calls
        self.rows: list[tuple[float, float, int, int, int]] = []  # (s, MB, threads, fds, calls so far)
        self.t0 = time.monotonic()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def sample(self) -> None:
        status = Path(f"/proc/{self.pid}/status").read_text().splitlines()
        field = {line.split(":")[0]: line.split(":")[1].split() for line in status if ":" in line}
        row = (time.monotonic() - self.t0, int(field["VmRSS"][0]) / 1024, int(field["Threads"][0]),
               len(list(Path(f"/proc/{self.pid}/fd").iterdir())), self.calls())
        self.rows.append(row)
        print(f"  {row[0]:7.0f} s  rss {row[1]:7.1f} MB  threads {row[2]:3d}  fds {row[3]:3d}  calls {row[4]}",
              flush=True)

    def _run(self) -> None:
        while not self.done.wait(self.every):
            self.sample()


def growth(rows: list[tuple[float, float, int, int, int]]) -> tuple[list[float], list[float], float]:
    """Each quarter's median and floor (10th percentile) MB, and the floor's slope over the second half in MB an
    hour: a render's peak comes and goes, so a creep shows in the floor (the minimum of each minute's samples)."""
    n = len(rows)
    quarters = [[r[1] for r in rows[i * n // 4: (i + 1) * n // 4]] for i in range(4)]
    medians = [float(np.median(q)) for q in quarters]
    floors = [float(np.percentile(q, 10)) for q in quarters]
    minutes: dict[int, tuple[float, float]] = {}
    for t, mb, *_ in rows[n // 2:]:
        m = int(t // 60)
        minutes[m] = (t, mb) if m not in minutes else (minutes[m][0], min(minutes[m][1], mb))
    pts = list(minutes.values())
    slope = float(np.polyfit([t for t, _ in pts], [mb for _, mb in pts], 1)[0]) * 3600 if len(pts) > 2 else 0.0
    return medians, floors, slope


def plot(rows: list[tuple[float, float, int, int, int]], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [r[0] / 60 for r in rows]
    fig, axes = plt.subplots(3, 1, figsize=(8, 7), sharex=True)
    for ax, i, label in zip(axes, (1, 2, 4), ("resident MB", "threads", "calls ended")):
        ax.plot(t, [r[i] for r in rows])
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylim(bottom=0)
    axes[-1].set_xlabel("minutes")
    fig.suptitle(title, fontsize=9)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    print(f"plot: {path}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=30)
    p.add_argument("--clients", type=int, default=3, help="client threads, each one call at a time")
    p.add_argument("--every", type=float, default=10, help="seconds between memory samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kinds", default=",".join(MIX),
                   help="the kinds of call in the mix, comma-separated (default all)")
    p.add_argument("--decoder", help="decoder file (default: the one shipped)")
    p.add_argument("--server-flags", default="", help="more adain-server flags, in one string (its defaults else)")
    p.add_argument("--plot", help="write a plot of memory, threads and calls over time here")
    args = p.parse_args(argv)
    mix = {k: MIX[k] for k in args.kinds.split(",")}  # KeyError names a kind that is not one

    proc, target = start_server(args.decoder, ("--max-batch-size", "0", *args.server_flags.split()))
    print(f"soak: {args.minutes:g} min, {args.clients} clients, server {target} (pid {proc.pid}); CPU: {cpu_name()}")
    results: dict[str, list[tuple[str, float]]] = collections.defaultdict(list)  # kind -> (outcome, seconds)
    lock = threading.Lock()
    sampler = Sampler(proc.pid, args.every, lambda: sum(len(v) for v in results.values()))
    sampler.sample()
    end = time.monotonic() + args.minutes * 60

    def client_loop(i: int) -> None:
        rng = random.Random(args.seed * 1000 + i)
        with StyleTransferClient(target, timeout=120) as client:
            while time.monotonic() < end:
                kind = rng.choices(list(mix), weights=list(mix.values()))[0]
                t0 = time.monotonic()
                try:
                    call(client, kind, rng)
                    outcome = "OK"
                except StyleTransferError as e:
                    outcome = e.code.name
                with lock:
                    results[kind].append((outcome, time.monotonic() - t0))

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sampler.done.set()
    sampler.thread.join()
    sampler.sample()

    with StyleTransferClient(target, timeout=10) as client:
        health = client.health()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(120)

    print(f"\n{'kind':8s} {'calls':>5s}  outcomes{'':32s} {'p50 s':>6s} {'p95 s':>6s}")
    unexpected = 0
    for kind in MIX:
        rows = results.get(kind, [])
        if not rows:
            continue
        outcomes = collections.Counter(o for o, _ in rows)
        want = EXPECTED.get(kind, "OK").split("|")
        unexpected += sum(n for o, n in outcomes.items() if o not in want)
        p50, p95 = np.percentile([s for _, s in rows], [50, 95])
        said = ", ".join(f"{o} {n}" for o, n in outcomes.most_common())
        print(f"{kind:8s} {len(rows):5d}  {said:40s} {p50:6.2f} {p95:6.2f}")
    rows = sampler.rows
    medians, floors, slope = growth(rows)
    print(f"resident memory: start {rows[0][1]:.0f} MB, peak {max(r[1] for r in rows):.0f} MB; by quarter, median "
          f"{' / '.join(f'{m:.0f}' for m in medians)} MB, floor (10th percentile) "
          f"{' / '.join(f'{f:.0f}' for f in floors)} MB; the floor's slope over the second half {slope:+.0f} MB "
          "an hour")
    print(f"threads {rows[0][2]} -> {rows[-1][2]} (max {max(r[2] for r in rows)}), open files {rows[0][3]} -> "
          f"{rows[-1][3]} (max {max(r[3] for r in rows)})")
    print(f"calls with an outcome their kind should not have: {unexpected}; health at the end: {health}; "
          f"exit on SIGTERM: {code}")
    if args.plot:
        plot(rows, args.plot, f"soak: {args.minutes:g} min, {args.clients} clients, "
             f"{sum(len(v) for v in results.values())} calls; {cpu_name()}")
    return 0 if unexpected == 0 and code == 0 and health == "SERVING" else 1


if __name__ == "__main__":
    raise SystemExit(main())
