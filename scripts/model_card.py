"""Images for the model card: the loss curve of a run and a sample grid from the bundled examples.

    python scripts/model_card.py --log runs/cpu/log.jsonl --out docs/model_card

A maintainer's script (not installed with the package): it needs the training extra for the plot.

The sample grid uses only images the project ships (examples/, with their licences), never ../shared.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--log", type=Path, required=True, help="the run's log.jsonl")
    p.add_argument("--out", type=Path, default=Path("docs/model_card"))
    p.add_argument("--decoder", default=None, help="decoder file (default: the shipped one)")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    plot_losses(args.log, args.out / "loss.png")
    st = Stylizer(args.decoder)
    grid = sample_grid(st, list_images(EXAMPLES / "content"), list_images(EXAMPLES / "style"))
    grid.save(args.out / "samples.jpg", quality=88)
    print(f"wrote {args.out / 'loss.png'} and {args.out / 'samples.jpg'}")


if __name__ == "__main__":
    main()
