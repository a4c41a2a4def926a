"""The optimisation method: AdaIN alone, AdaIN + refine, and the classic method, by loss and seconds.

    python benchmarks/refine.py [--sizes 256 512] [--pairs 4 2] [--refine-steps 5 10 20 50]
        [--classic-steps 50 100 300] [--refine-size 256] [--eval-sizes 512] [--ablations]
        [--plot benchmarks/results/refine.png] [--save-samples DIR]

For each size (content and style at that longest side) and a seeded subset of ``../shared/data/eval``
pairs (``--pairs``, one count per size):

* AdaIN: ``Stylizer.render`` of the prepared job;
* AdaIN + refine N: ``adain.optimize`` from that output (the library's defaults: L-BFGS, Gram style
  term, total variation 1000, ``REFINE_TARGET`` as content target), the rows at N steps snapshots of one
  run (exactly the iterates a run of N takes);
* classic N: the same optimisation from the content image with the content's own features as the
  content term (Gatys et al.), ``refine_init="content"``;
* AdaIN + refine N at S px (sizes above ``--refine-size`` S): the library's ``refine`` with
  ``refine_size=S``, i.e. N iterations at S px (content and style scaled down together), the change
  upsampled onto the full-size AdaIN output; one run per N;
* AdaIN + refine N, content weight W (``--refine-content-weights``): full-size refine with another
  content weight than the library's default (5), as snapshots of one run; and at S px, one run per N.

Seconds: wall time of making the output from a prepared job (style statistics computed beforehand), the
decoder pass included for refine. Losses, the same yardstick for every row and ``benchmarks/quality.py``'s:
each output resized to the content at ``--eval-size`` and encoded by the normalised VGG19; content loss
MSE(relu4_1) against the content, mean/std style loss ``adain.ops.style_loss`` and Gram style loss (sum
over relu1_1..relu4_1 of MSE of Gram matrices) against the style at ``--eval-size``. ``--eval-sizes``
adds the content and Gram losses at further evaluation sizes (only for sizes at least as large), so a
result made at a reduced working size is also judged where its finer detail shows.

``--grpc`` starts a local ``adain-server`` (shipped decoder) and measures the p50 latency of plain Stylize
calls (256 px) on the idle server and while refine jobs (``--grpc-steps`` iterations at 256 px) run.

``--ablations`` (first size, first two pairs) compares at 10 and 30 steps: the content term's target
(AdaIN target vs the content's features), the style term (Gram vs mean/std) and the optimiser (L-BFGS
vs Adam), by the losses above and seconds.
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import SHARED_EVAL, Evaluator, fit_to, load_folder  # noqa: E402
from stylize_speed import cpu_name  # noqa: E402

from adain import Job, Stylizer  # noqa: E402
from adain.argtypes import optional_path  # noqa: E402
from adain.image import to_image, to_tensor  # noqa: E402
from adain.ops import gram  # noqa: E402
from adain.optimize import REFINE_TARGET, objective_for, optimize, refine  # noqa: E402


class Yardstick(Evaluator):
    """quality.py's evaluator plus the Gram style loss."""

    def gram_loss(self, out: Image.Image, content: tuple[str, Image.Image], style: tuple[str, Image.Image]) -> float:
        size, _ = self.content_ref(*content)
        feats = self.features(fit_to(out, size))
        return sum(F.mse_loss(gram(o), gram(s)).item() for o, s in zip(feats, self.style_ref(*style)))

    def all(self, out: Image.Image, content: tuple[str, Image.Image], style: tuple[str, Image.Image]) -> dict:
        c, s = self.losses(out, content, style)
        return {"content": c, "style": s, "gram": self.gram_loss(out, content, style)}


def run_pair(
    st: Stylizer,
    content: Image.Image,
    style: Image.Image,
    size: int,
    *,
    init: str,
    steps: int,
    checkpoints: list[int],
    style_loss: str = "gram",
    target: str = "adain",
    optimizer: str = "lbfgs",
    content_weight: float | None = None,
) -> dict[int, tuple[Image.Image, float]]:
    """{steps: (output, seconds)} at each checkpoint (0: the start, i.e. the AdaIN output for init adain)."""
    job = Job(
        content, [style], content_size=size, style_size=size, refine_steps=steps, refine_init=init,
        content_weight=content_weight,
    )
    prepared = st.prepare(job)
    content = prepared.content.to(st.device)  # prepared on the host (adain.prepared)
    t0 = time.perf_counter()
    if init == "adain":
        start = to_tensor(st.render([prepared])[0]).to(st.device).contiguous()
    else:
        start = content.clone()
    t_start = time.perf_counter() - t0
    results = {0: (to_image(start), t_start)}
    t1 = time.perf_counter()
    objective = objective_for(st, prepared, content, style_loss=style_loss, target=target)
    t_setup = time.perf_counter() - t1

    def on_step(p) -> None:
        if p.image is not None:
            results[p.step] = (to_image(p.image), t_start + t_setup + p.seconds)

    t2 = time.perf_counter()
    x = optimize(objective, start, steps, optimizer=optimizer, on_step=on_step, checkpoints=checkpoints)
    results[steps] = (to_image(x), t_start + t_setup + time.perf_counter() - t2)
    return results


def run_refine_size(
    st: Stylizer, content: Image.Image, style: Image.Image, size: int, steps: int, side: int,
    content_weight: float | None = None,
):
    """The library's refine at a reduced working size ``side``: (output, seconds from a prepared job)."""
    job = Job(content, [style], content_size=size, style_size=size, refine_steps=steps, refine_size=side,
              content_weight=content_weight)
    prepared = st.prepare(job)
    t0 = time.perf_counter()
    out = refine(st, prepared)
    return out, time.perf_counter() - t0


def mean_row(rows: list[dict]) -> dict:
    return {k: statistics.fmean(r[k] for r in rows) for k in rows[0]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--content", type=Path, default=SHARED_EVAL / "content")
    p.add_argument("--style", type=Path, default=SHARED_EVAL / "style")
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    p.add_argument("--pairs", type=int, nargs="+", default=[4, 2], help="pairs per size (the last repeats)")
    p.add_argument("--refine-steps", type=int, nargs="+", default=[5, 10, 20, 50])
    p.add_argument("--classic-steps", type=int, nargs="+", default=[50, 100, 300])
    p.add_argument("--eval-size", type=int, default=256)
    p.add_argument("--eval-sizes", type=int, nargs="*", default=[512], help="further evaluation sizes (extra columns)")
    p.add_argument("--refine-size", type=int, default=256, help="also refine at this working size (0: no such rows)")
    p.add_argument("--refine-content-weights", type=float, nargs="*", default=[],
                   help="also refine full-size with these content weights (the library's default: 5)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ablations", action="store_true")
    p.add_argument("--grpc", action="store_true", help="p50 of plain calls while refine jobs run on a local server")
    p.add_argument("--grpc-steps", type=int, default=150)
    p.add_argument("--plot", type=optional_path, default=Path(__file__).resolve().parent / "results" / "refine.png",
                   help="plot PNG ('' for none)")
    p.add_argument("--save-samples", type=Path, default=None, help="write every row's output of the first pair")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    st = Stylizer(None, "cpu", precision="fp32")
    ev = Yardstick(st.encoder, st.device, args.eval_size)
    extra = {e: Yardstick(st.encoder, st.device, e) for e in args.eval_sizes if e != args.eval_size}

    def measure(img: Image.Image, c: tuple, s: tuple, size: int) -> dict:
        row = ev.all(img, c, s)
        for e, y in extra.items():
            if e <= size:
                m = y.all(img, c, s)
                row[f"content@{e}"], row[f"gram@{e}"] = m["content"], m["gram"]
        return row

    contents = load_folder(args.content, "content", max(args.sizes), args.eval_size)
    styles = load_folder(args.style, "style", max(args.sizes), args.eval_size)
    pairs = [(c, s) for c in sorted(contents) for s in sorted(styles)]
    random.Random(args.seed).shuffle(pairs)
    print(f"# benchmarks/refine.py on {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"# {' '.join(sys.argv)}")
    # Warm-up: the first backward pass of a process is ~10x slower (allocator, oneDNN primitives).
    first_c, first_s = pairs[0]
    run_pair(st, contents[first_c], styles[first_s], 64, init="adain", steps=3, checkpoints=[])
    curves: dict[int, dict[str, list[tuple[float, dict]]]] = {}
    for k, size in enumerate(args.sizes):
        n = args.pairs[min(k, len(args.pairs) - 1)]
        chosen = pairs[:n]
        rows: dict[str, list[dict]] = {}
        for i, (cn, sn) in enumerate(chosen):
            c, s = (cn, contents[cn]), (sn, styles[sn])
            runs = [("adain", args.refine_steps, None), ("content", args.classic_steps, None)]
            runs += [("adain", args.refine_steps, cw) for cw in args.refine_content_weights]
            for init, steps_list, cw in runs:
                target = REFINE_TARGET if init == "adain" else "content"  # what refine() uses
                res = run_pair(
                    st, c[1], s[1], size, init=init, steps=max(steps_list), checkpoints=steps_list, target=target,
                    content_weight=cw,
                )
                for step, (img, sec) in sorted(res.items()):
                    if step == 0 and (init == "content" or cw is not None):
                        continue
                    label = "AdaIN" if step == 0 else f"AdaIN + refine {step}" if init == "adain" else f"classic {step}"
                    if cw is not None:
                        label += f", content weight {cw:g}"
                    rows.setdefault(label, []).append({**measure(img, c, s, size), "seconds": sec})
                    if args.save_samples and i == 0:
                        save_sample(args.save_samples, size, label, img)
            if args.refine_size and size > args.refine_size:
                for cw, steps in itertools.product([None, *args.refine_content_weights], args.refine_steps):
                    img, sec = run_refine_size(st, c[1], s[1], size, steps, args.refine_size, cw)
                    label = f"AdaIN + refine {steps} at {args.refine_size} px"
                    if cw is not None:
                        label += f", content weight {cw:g}"
                    rows.setdefault(label, []).append({**measure(img, c, s, size), "seconds": sec})
                    if args.save_samples and i == 0:
                        save_sample(args.save_samples, size, label, img)
            print(f"# {size} px pair {i + 1}/{n}: {cn} x {sn} done", flush=True)
        print(f"\n## {size} px, {n} pairs (means)\n")
        means = {label: mean_row(r) for label, r in rows.items()}
        more = [e for e in extra if e <= size]
        print("| method | content loss | mean/std style loss | Gram style loss | "
              + "".join(f"content @{e} | Gram @{e} | " for e in more) + "seconds |")
        print("|---|---:|---:|---:|" + "---:|---:|" * len(more) + "---:|")
        for label, m in means.items():
            cols = "".join(f"{m[f'content@{e}']:.3f} | {m[f'gram@{e}']:.3f} | " for e in more)
            print(f"| {label} | {m['content']:.3f} | {m['style']:.3f} | {m['gram']:.4f} | {cols}{m['seconds']:.2f} |")
        curves[size] = {
            "AdaIN + refine": [
                (m["seconds"], m)
                for lb, m in means.items()
                if lb.startswith("AdaIN") and " px" not in lb and "weight" not in lb
            ],
            f"AdaIN + refine at {args.refine_size} px": [
                (m["seconds"], m)
                for lb, m in means.items()
                if lb.startswith("AdaIN +") and " px" in lb and "weight" not in lb
            ],
            "classic": [(m["seconds"], m) for lb, m in means.items() if lb.startswith("classic")],
        }
        ref = means.get("classic 100")
        for suffix, at in [("", args.eval_size)] + [(f"@{e}", e) for e in more]:
            if not ref:
                break
            hits = [
                lb
                for lb, m in means.items()
                if lb.startswith("AdaIN +")
                and m["content" + suffix] <= ref["content" + suffix]
                and m["gram" + suffix] <= ref["gram" + suffix]
            ]
            if hits:
                hit = min(hits, key=lambda lb: means[lb]["seconds"])
                print(
                    f"- target 1, judged at {at} px: {hit} reaches classic 100 (content and Gram no worse) in "
                    f"{means[hit]['seconds'] / ref['seconds']:.2f}x its time (target <= 0.20x)"
                )
            else:
                print(f"- target 1, judged at {at} px: no refine row reaches classic 100 on both losses")
        if "AdaIN + refine 10" in means:
            a, r = means["AdaIN"], means["AdaIN + refine 10"]
            print(
                f"- target 2: refine 10 changes the Gram style loss by {100 * (r['gram'] / a['gram'] - 1):+.1f}% "
                f"(target <= -30%) and the content loss by {100 * (r['content'] / a['content'] - 1):+.1f}% "
                "(target <= +10%)"
            )
    if args.plot:
        plot(curves, args.plot)
        print(f"\nplot: {args.plot}")
    if args.ablations:
        ablations(st, ev, contents, styles, pairs[:2], args.sizes[0])
    if args.grpc:
        grpc_p50(contents[pairs[0][0]], styles[pairs[0][1]], args.grpc_steps)
    return 0


def save_sample(folder: Path, size: int, label: str, img: Image.Image) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    img.save(folder / f"{size}_{label.replace(' ', '_').replace('+', 'plus')}.png")


def grpc_p50(content: Image.Image, style: Image.Image, steps: int) -> None:
    """p50 of plain Stylize calls, idle and while a refine job runs (one after another) on a local server."""
    import io
    import threading

    from video import start_server

    from adain.client import StyleTransferClient

    def png(img: Image.Image) -> bytes:
        buf = io.BytesIO()
        img.save(buf, "PNG")
        return buf.getvalue()

    proc, target = start_server(None)
    try:
        with StyleTransferClient(target, timeout=900) as client:
            c, s = png(content), png(style)
            sid = client.register_style(s)

            def plain() -> float:
                t0 = time.perf_counter()
                client.stylize(c, f"id:{sid}", content_size=256, style_size=256)
                return time.perf_counter() - t0

            idle = [plain() for _ in range(6)]
            busy: list[float] = []
            running = threading.Event()
            done = threading.Event()
            refine_s: list[float] = []

            def refine_jobs() -> None:
                for _ in range(2):
                    t0 = time.perf_counter()
                    client.stylize(c, f"id:{sid}", content_size=256, style_size=256, refine_steps=steps,
                                   on_progress=lambda p: running.set())
                    refine_s.append(time.perf_counter() - t0)
                done.set()

            worker = threading.Thread(target=refine_jobs)
            worker.start()
            running.wait(120)
            while not done.is_set():
                busy.append(plain())
                time.sleep(0.3)
            worker.join()
    finally:
        proc.terminate()
        proc.wait(30)
    i50, b50 = statistics.median(idle), statistics.median(busy)
    print(f"\n## plain calls while refine jobs run (local server, 256 px, {cpu_name()})\n")
    print(f"- p50 idle {i50 * 1000:.0f} ms; p50 while two {steps}-step refine jobs ran one after another "
          f"({statistics.fmean(refine_s):.1f} s each): {b50 * 1000:.0f} ms over {len(busy)} calls "
          f"({b50 / i50:.2f}x)")


def ablations(st: Stylizer, ev: Yardstick, contents: dict, styles: dict, pairs: list, size: int) -> None:
    variants = {
        "AdaIN target, Gram, L-BFGS": {"target": "adain"},
        "content target (the default)": {"target": "content"},
        "mean/std style term": {"style_loss": "meanstd"},
        "Adam": {"optimizer": "adam"},
    }
    print(f"\n## ablations: refine from AdaIN at {size} px, {len(pairs)} pairs (means)\n")
    print("| variant | steps | content loss | mean/std style loss | Gram style loss | seconds |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, kw in variants.items():
        rows: dict[int, list[dict]] = {}
        for cn, sn in pairs:
            c, s = (cn, contents[cn]), (sn, styles[sn])
            kw = {"target": "content", **kw}
            res = run_pair(st, c[1], s[1], size, init="adain", steps=30, checkpoints=[10, 30], **kw)
            for step in (10, 30):
                img, sec = res[step]
                rows.setdefault(step, []).append({**ev.all(img, c, s), "seconds": sec})
        for step, r in rows.items():
            m = mean_row(r)
            print(
                f"| {label} | {step} | {m['content']:.3f} | {m['style']:.3f} | {m['gram']:.4f} | {m['seconds']:.2f} |"
            )


def plot(curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for size, methods in curves.items():
        for name, pts in methods.items():
            pts = sorted(pts, key=lambda t: t[0])
            for ax, key in zip(axes, ("gram", "content")):
                ax.plot(
                    [t for t, _ in pts],
                    [m[key] for _, m in pts],
                    marker="o",
                    label=f"{name}, {size} px",
                    linestyle="-" if name == "classic" else "--",
                )
    for ax, title in zip(axes, ("Gram style loss", "content loss")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("seconds (CPU)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"AdaIN + refine vs the classic method ({cpu_name()})", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
