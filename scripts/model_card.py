"""Images for the model card: the loss curve of a run, a sample grid from the bundled examples, and the
alpha sweep of one bundled example (the photo at alpha 0 should come back as itself).

    python scripts/model_card.py [--log runs/cpu/log.jsonl] [--out docs/model_card]
    python scripts/model_card.py --strip-only --out runs/strip --compare CANDIDATE.pt ...

A maintainer's script (not installed with the package): it needs the training extra for the plot.

The sample grid uses only images the project ships (examples/, with their licences), never ../shared.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from adain.image import to_tensor
from adain.stylizer import Stylizer
from adain.train.data import list_images
from adain.train.train import plot_losses

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def sample_grid(stylizer: Stylizer, contents: list[Path], styles: list[Path], cell: int = 256) -> Image.Image:
    """Rows: contents; columns: the content, then one stylization per style (style thumbnails on top)."""
    grid = Image.new("RGB", (cell * (len(styles) + 1), cell * (len(contents) + 1)), "white")
    for j, s in enumerate(styles):
        thumb = Image.open(s).convert("RGB")
        thumb.thumbnail((cell, cell))
        grid.paste(thumb, (cell * (j + 1), 0))
    for i, c in enumerate(contents):
        content = Image.open(c).convert("RGB")
        content.thumbnail((cell, cell))
        grid.paste(content, (0, cell * (i + 1)))
        for j, s in enumerate(styles):
            grid.paste(stylizer.stylize(content, [s]), (cell * (j + 1), cell * (i + 1)))
    return grid


def alpha_strip(
    rows: list[tuple[str, Stylizer]], content: Path, style: Path, alphas: tuple[float, ...] = (0, 0.25, 0.5, 0.75, 1),
    cell: int = 256,
) -> Image.Image:
    """One row per decoder: the content, its stylizations at ``alphas``, the style; each row labelled with
    the decoder's name and its PSNR against the content at alpha 0 (the photo should come back)."""
    photo = Image.open(content).convert("RGB")
    photo.thumbnail((cell, cell))
    thumb = Image.open(style).convert("RGB")
    thumb.thumbnail((cell, photo.height))
    label_h = 18
    row_h = photo.height + label_h
    strip = Image.new("RGB", (cell * (len(alphas) + 1) + thumb.width, row_h * len(rows)), "white")
    draw = ImageDraw.Draw(strip)
    for i, (name, st) in enumerate(rows):
        y = i * row_h
        strip.paste(photo, (0, y + label_h))
        strip.paste(thumb, (cell * (len(alphas) + 1), y + label_h))
        notes = []
        for j, a in enumerate(alphas):
            out = st.stylize(photo, [style], alpha=a)
            strip.paste(out, (cell * (j + 1), y + label_h))
            if a == 0:
                mse = torch.mean((to_tensor(out) - to_tensor(photo)) ** 2).item()
                notes.append(f"alpha 0: {10 * math.log10(1 / mse):.1f} dB against the photo")
        heading = f"{name}; alphas {', '.join(f'{a:g}' for a in alphas)}"
        draw.text((4, y + 3), "; ".join([heading, *notes]), fill="black")
    return strip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--log", type=Path, default=None, help="the run's log.jsonl (no loss plot without it)")
    p.add_argument("--out", type=Path, default=Path("docs/model_card"))
    p.add_argument("--decoder", default=None, help="decoder file (default: the shipped one)")
    p.add_argument("--compare", nargs="*", default=[], help="candidate decoders: more rows in the alpha sweep")
    p.add_argument("--strip-only", action="store_true",
                   help="write only alpha_sweep.jpg (comparing candidates leaves the shipped decoder's images alone)")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    written = []
    if args.log and not args.strip_only:
        plot_losses(args.log, args.out / "loss.png")
        written.append("loss.png")
    st = Stylizer(args.decoder)
    if not args.strip_only:
        grid = sample_grid(st, list_images(EXAMPLES / "content"), list_images(EXAMPLES / "style"))
        grid.save(args.out / "samples.jpg", quality=88)
        written.append("samples.jpg")
    rows = [(args.decoder or "shipped decoder", st)] + [(Path(c).name, Stylizer(c)) for c in args.compare]
    strip = alpha_strip(rows, EXAMPLES / "content" / "coffee.jpg", EXAMPLES / "style" / "strokes.png")
    strip.save(args.out / "alpha_sweep.jpg", quality=88)
    print(f"wrote {args.out}: {', '.join([*written, 'alpha_sweep.jpg'])}")


if __name__ == "__main__":
    main()
