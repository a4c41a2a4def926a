"""Make the bundled example images (run once; the results are committed).

Styles are generated here (ours, MIT like the code). Contents are photos that scikit-image ships in its
wheel, with the licences its ``skimage.data`` docs give: chelsea.png and coffee.png are CC0, astronaut.png
and rocket.jpg are public domain (NASA; SpaceX). Pass the folder that holds them:

    python examples/make_examples.py --skimage-data /path/to/site-packages/skimage/data
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

HERE = Path(__file__).parent
CONTENTS = {
    "chelsea.png": "cat.jpg",
    "coffee.png": "coffee.jpg",
    "astronaut.png": "astronaut.jpg",
    "rocket.jpg": "rocket.jpg",
}


def mosaic(size: int = 384, cells: int = 90, seed: int = 1) -> Image.Image:
    """Stained glass: Voronoi cells in a bold palette with dark leading."""
    rng = np.random.default_rng(seed)
    palette = np.array([[200, 40, 40], [240, 180, 30], [30, 90, 170], [40, 140, 80], [230, 230, 210], [120, 50, 140]])
    pts = rng.uniform(0, size, size=(cells, 2))
    colours = palette[rng.integers(0, len(palette), cells)] + rng.integers(-25, 25, size=(cells, 3))
    y, x = np.mgrid[0:size, 0:size]
    d = (x[..., None] - pts[:, 0]) ** 2 + (y[..., None] - pts[:, 1]) ** 2
    order = np.argsort(d, axis=-1)
    nearest, second = order[..., 0], order[..., 1]
    gap = np.sqrt(np.take_along_axis(d, second[..., None], -1)) - np.sqrt(np.take_along_axis(d, nearest[..., None], -1))
    img = colours[nearest].astype(np.float32)
    img[gap[..., 0] < 2.5] = 25
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).filter(ImageFilter.SMOOTH)


def strokes(size: int = 384, n: int = 2500, seed: int = 2) -> Image.Image:
    """Impasto: short thick strokes following a swirling flow field, warm over cool."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (size, size), (30, 50, 90))
    draw = ImageDraw.Draw(img)
    palette = [(250, 200, 60), (240, 130, 40), (60, 110, 200), (20, 40, 110), (250, 240, 200), (90, 160, 210)]
    for _ in range(n):
        x, y = rng.uniform(0, size, 2)
        angle = math.sin(x / 40) + math.cos(y / 55) * 2
        length = rng.uniform(8, 22)
        dx, dy = math.cos(angle) * length, math.sin(angle) * length
        r = math.hypot(x - size * 0.65, y - size * 0.3)
        c = palette[int(rng.integers(0, 2))] if r < size * 0.22 else palette[int(rng.integers(2, 6))]
        jitter = tuple(int(v + rng.integers(-20, 20)) for v in c)
        draw.line([(x, y), (x + dx, y + dy)], fill=jitter, width=int(rng.integers(3, 7)))
    return img


def waves(size: int = 384, seed: int = 3) -> Image.Image:
    """Woodblock waves: banded sinusoids in indigo, teal and foam white."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    field = np.sin(x / 23 + 2.5 * np.sin(y / 37)) + 0.6 * np.sin(y / 11 + x / 53) + rng.normal(0, 0.08, (size, size))
    bands = np.digitize(field, [-1.0, -0.4, 0.2, 0.8, 1.3])
    palette = np.array([[15, 30, 70], [30, 70, 130], [50, 120, 150], [120, 180, 190], [225, 230, 215], [250, 250, 240]])
    return Image.fromarray(palette[bands].astype(np.uint8))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--skimage-data", type=Path, required=True, help="scikit-image's data folder")
    args = p.parse_args()
    (HERE / "style").mkdir(exist_ok=True)
    (HERE / "content").mkdir(exist_ok=True)
    for name, fn in (("mosaic", mosaic), ("strokes", strokes), ("waves", waves)):
        fn().save(HERE / "style" / f"{name}.png", optimize=True)
    for src, dst in CONTENTS.items():
        img = Image.open(args.skimage_data / src).convert("RGB")
        img.thumbnail((448, 448), Image.Resampling.LANCZOS)
        img.save(HERE / "content" / dst, quality=90)


if __name__ == "__main__":
    main()
