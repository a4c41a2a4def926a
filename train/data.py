"""Training data: image folders, random rescale + crop + flip, an infinite shuffled sampler."""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from adain.errors import InvalidInputError
from adain.image import load_image, to_tensor

log = logging.getLogger("adain.train")
EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp"}


def _images(folder: Path) -> Iterator[Path]:
    """Every jpg/png/webp under ``folder`` (recursive), as found."""
    return (p for p in Path(folder).rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file())


def list_images(folder: Path) -> list[Path]:
    """Every jpg/png/webp under ``folder`` (recursive), sorted so runs are reproducible."""
    return sorted(_images(folder))


def has_images(folder: Path) -> bool:
    """Whether ``folder`` holds any image :func:`list_images` would list (stops at the first)."""
    return next(_images(folder), None) is not None


class NoReadableImage(RuntimeError):
    """Every image of a folder was skipped as unreadable."""


class ImageFolder(Dataset):
    """Random crops of the images in a folder, addressed by an endless draw number.

    Draw ``pos`` takes image ``perm_epoch[pos % n]`` with augmentation from an RNG seeded by
    ``(seed, pos)``, so a resumed run draws exactly what the uninterrupted run would have, whatever
    the number of DataLoader workers. An unreadable image is skipped with a warning.
    """

    def __init__(self, folder: Path, crop: int = 256, seed: int = 0, rescale: tuple[float, float] = (0.8, 1.25)):
        self.paths = list_images(folder)
        if not self.paths:
            raise ValueError(f"no jpg/png/webp images under {folder}")
        self.crop, self.seed, self.rescale = crop, seed, rescale
        self.folder = folder
        self._warned: set[Path] = set()  # unreadable files said once (in this process): each pass said them again
        self._perm: tuple[int, list[int]] = (-1, [])

    def __len__(self) -> int:
        return len(self.paths)

    def _index(self, pos: int) -> int:
        epoch, k = divmod(pos, len(self.paths))
        if self._perm[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._perm = (epoch, torch.randperm(len(self.paths), generator=g).tolist())
        return self._perm[1][k]

    def _load(self, index: int) -> Image.Image:
        # Try the next image on failure so a corrupt file costs one warning, never the run.
        for k in range(len(self.paths)):
            path = self.paths[(index + k) % len(self.paths)]
            try:
                return load_image(path, field=str(path))
            except InvalidInputError as e:
                if path not in self._warned:
                    self._warned.add(path)
                    log.warning("skipping unreadable image %s: %s", path, e.description)
        raise NoReadableImage(f"no readable image in {self.folder}: its {len(self.paths)} images were all skipped")

    def __getitem__(self, pos: int) -> torch.Tensor:
        rng = random.Random(self.seed * 1_000_003 + pos)
        img = self._load(self._index(pos))
        # Mild random rescale, then make sure the short side covers the crop.
        scale = rng.uniform(*self.rescale) * max(1.0, self.crop / min(img.size))
        size = (max(self.crop, round(img.width * scale)), max(self.crop, round(img.height * scale)))
        img = img.resize(size, Image.Resampling.BILINEAR)
        x0 = rng.randint(0, img.width - self.crop)
        y0 = rng.randint(0, img.height - self.crop)
        img = img.crop((x0, y0, x0 + self.crop, y0 + self.crop))
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return to_tensor(img)[0]


class InfiniteSampler(Sampler[int]):
    """Endless draw numbers from ``start`` on; rank r of a distributed run takes every world-th."""

    def __init__(self, start: int = 0, rank: int = 0, world: int = 1) -> None:
        self.start, self.rank, self.world = start, rank, world

    def __iter__(self) -> Iterator[int]:
        j = self.start
        while True:
            yield j * self.world + self.rank
            j += 1
