"""Training step time per precision: the real ``adain.train`` Trainer on synthetic folders.

    python benchmarks/train_step.py [--precision fp32 bf16] [--crop 128] [--batch-size 8] [--steps 4]

For each precision, a Trainer runs one warm-up step, then ``--steps`` timed steps (data loading
included, no DataLoader workers), the precisions taking turns step by step so that a drifting machine
load hits all alike. The table gives the median seconds a step and each precision's time relative to
the first. Images are generated here (no data files are read); everything is written to a temporary
folder.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from adain.precision import TRAIN_PRECISIONS
from adain.train.train import Trainer
from adain.train.train import parse_args as train_args


def synth_folder(folder: Path, count: int, size: int, seed: int) -> Path:
    """Smoothed random colour images (``size`` x ``size + 32``), PNG."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        small = rng.integers(0, 256, size=(size // 8, size // 8 + 4, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((size + 32, size), Image.Resampling.BICUBIC)
        img.save(folder / f"{i}.png")
    return folder


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=TRAIN_PRECISIONS)
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=4, help="timed steps per precision (median reported)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        size = int(args.crop * 1.5)
        content = synth_folder(root / "content", 16, size, seed=0)
        style = synth_folder(root / "style", 16, size, seed=1)
        trainers = []
        for prec in args.precision:
            targs = train_args([
                "--content", str(content), "--style", str(style), "--out", str(root / prec),
                "--crop", str(args.crop), "--batch-size", str(args.batch_size), "--workers", "0",
                "--device", args.device, "--precision", prec,
            ])  # fmt: skip
            trainer = Trainer(targs)
            trainer.train_step()  # warm-up
            trainers.append(trainer)
        times: list[list[float]] = [[] for _ in trainers]
        for _ in range(args.steps):
            for k, trainer in enumerate(trainers):
                t0 = time.perf_counter()
                trainer.train_step()
                times[k].append(time.perf_counter() - t0)

    cpu = "" if args.device != "cpu" else f", {torch.get_num_threads()} threads"
    print(f"# adain.train step time (torch {torch.__version__}, device {args.device}{cpu})")
    print(f"# batch {args.batch_size}, crop {args.crop} px; median of {args.steps} steps after 1 warm-up")
    print()
    print("| precision | s/step | vs first |")
    print("|---|---:|---:|")
    first = statistics.median(times[0])
    for prec, t in zip(args.precision, times):
        print(f"| {prec} | {statistics.median(t):.2f} | {statistics.median(t) / first:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
