"""Compute the per-filter scales of Gatys et al.'s normalised VGG (written to --out, vgg_norm.pt here by default).

Each conv filter's ReLU output is scaled to mean activation 1 over natural images (here: photos and
paintings of the training data, resized so the longest side is 256). Run once; the result ships as
adain/assets/vgg_norm.pt, which the shipped decoder was trained with: a decoder trained on other scales needs its
own file, so this never writes the shipped one unless --out names it (it did by default, and an installed package's
pictures changed by 59 levels without a word):

    python -m adain.train.vgg_norm ../shared/data/train --limit 300 --out adain/assets/vgg_norm.pt
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import torch
from tqdm import tqdm

from adain.encoder import NORM_FILE, Encoder
from adain.image import load_image, resize_longest, to_tensor
from adain.train.data import list_images


@torch.inference_mode()
def filter_means(paths: list[Path], size: int = 256) -> dict[str, torch.Tensor]:
    """Mean ReLU activation of every filter of the raw (unnormalised) encoder over ``paths``."""
    enc = Encoder(normalised=False)
    sums = {name: torch.zeros(conv.out_channels, dtype=torch.float64) for name, conv in enc.convs.items()}
    for path in tqdm(paths, desc="vgg norm", unit="img"):
        x = to_tensor(resize_longest(load_image(path), size))
        for name, a in enc.activations(x):
            sums[name] += a.mean(dim=(0, 2, 3)).double()
    # A filter that never fires keeps scale 1 rather than blowing up.
    return {name: torch.where(s > 0, s / len(paths), torch.ones_like(s)).float() for name, s in sums.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", type=Path, help="folder with content/ and style/ image folders")
    p.add_argument("--limit", type=int, default=300, help="images taken from each of content/ and style/")
    p.add_argument("--out", type=Path, default=Path("vgg_norm.pt"),
                   help=f"where the scales are written (default vgg_norm.pt here; the shipped file is {NORM_FILE})")
    args = p.parse_args()
    rng = random.Random(0)
    paths = []
    for sub in ("content", "style"):
        found = list_images(args.data / sub)
        paths += rng.sample(found, min(args.limit, len(found)))
    scales = filter_means(paths)
    torch.save(scales, args.out)
    for name, s in scales.items():
        print(f"{name}: mean scale {s.mean():.2f}")


if __name__ == "__main__":
    main()
