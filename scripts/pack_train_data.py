"""Pack ../shared/data/train into a folder small enough to travel to a GPU machine with the tree.

    python scripts/pack_train_data.py ../shared/data/train .gpu/data [--quality 85]

The device tool carries at most 64 MiB a call (tracked files included) and the raw folder is ~56 MiB,
so every image is re-encoded as JPEG at the given quality. Keep the
output in an ignored folder: the images must never be committed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    p.add_argument("--quality", type=int, default=85)
    args = p.parse_args()
    total = n = 0
    for path in sorted(args.src.rglob("*")):
        if path.suffix.lower() not in {".jpg", ".jpeg", ".png", ".webp"}:
            continue
        out = (args.dst / path.relative_to(args.src)).with_suffix(".jpg")
        out.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(path) as im:
            im.convert("RGB").save(out, quality=args.quality)
        total += out.stat().st_size
        n += 1
    print(f"{n} images, {total / 2**20:.1f} MiB in {args.dst}")


if __name__ == "__main__":
    main()
