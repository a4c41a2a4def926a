"""The README's regions example, from the bundled example images only.

    python scripts/regions_example.py [--out docs/regions_example.jpg]

The astronaut is found with OpenCV's GrabCut (a rectangle around her; the largest piece, its gaps
closed); the background left of centre takes waves.png, right of centre mosaic.png, crossfading over
60 px; she stays a photo.
Masks are soft (blurred 4 px) so every boundary is soft. Written: a strip of the content, the regions
(red: waves, blue: mosaic, dark: unstyled) and the result.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from adain import Stylizer

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def person_mask(img: Image.Image, rect: tuple[int, int, int, int]) -> np.ndarray:
    """GrabCut foreground (1) / background (0) from a rectangle around the subject, float32 H x W."""
    bgr = cv2.cvtColor(np.asarray(img), cv2.COLOR_RGB2BGR)
    mask = np.zeros(bgr.shape[:2], np.uint8)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(0)
    cv2.grabCut(bgr, mask, rect, bgd, fgd, 5, cv2.GC_INIT_WITH_RECT)
    fg = np.isin(mask, (cv2.GC_FGD, cv2.GC_PR_FGD)).astype(np.uint8)
    # Keep the largest piece and close its gaps (the dark collar).
    n, comp, stats, _ = cv2.connectedComponentsWithStats(fg)
    fg = (comp == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))).astype(np.uint8)
    fg = cv2.morphologyEx(fg, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (61, 61)))
    return fg.astype(np.float32)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("docs/regions_example.jpg"))
    args = p.parse_args()
    content = Image.open(EXAMPLES / "content" / "astronaut.jpg").convert("RGB")
    w, h = content.size
    person = cv2.GaussianBlur(person_mask(content, (30, 5, 380, h - 5)), (0, 0), 4)
    x = np.arange(w, dtype=np.float32)
    left = np.clip((w / 2 + 30 - x) / 60, 0, 1)[None, :]  # 1 left of centre, 0 right, a 60-px crossfade
    background = 1 - person
    maps = [background * left, background * (1 - left)]
    masks = [Image.fromarray((m * 255).round().astype(np.uint8), "L") for m in maps]
    styles = [EXAMPLES / "style" / "waves.png", EXAMPLES / "style" / "mosaic.png"]
    out = Stylizer().stylize(content, [str(s) for s in styles], masks=masks)
    overlay = np.asarray(content, np.float32) * 0.35
    overlay += 0.65 * 255 * np.stack([maps[0], 0 * maps[0], maps[1]], axis=-1)
    strip = Image.new("RGB", (3 * w + 16, h), "white")
    for i, im in enumerate((content, Image.fromarray(overlay.clip(0, 255).astype(np.uint8)), out)):
        strip.paste(im, (i * (w + 8), 0))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    strip.save(args.out, quality=88)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
