"""The on-disk cache of converted graphs (adain.backends), and its bound.

Why a bound: every decoder, runtime version, precision and form has an entry of its own, and on a CPU without
bf16 units one decoder's float32 Winograd graphs with their compiled blobs take ~0.7 GB. A machine that tried
checkpoints or upgraded OpenVINO kept them all (this project's own cache had reached 1.1 GB in a day of
benchmarks). So ``ADAIN_CACHE_MAX_MB`` (default DEFAULT_MB; 0: no bound): each time a backend has built a
graph, the entries used longest ago are removed until the cache is within it. Never removed: an entry used in
the last RECENT_S (another process may be reading it; so the bound is soft, exceeded with a warning rather than
taking a graph from under a starting server) and the one just built. A removed entry costs only a conversion
(~10 s) the next time it is wanted.

An entry is a folder ``<cache>/openvino/<key>/`` (the converted graph, and OpenVINO's compiled blobs for it in
``compiled/``); "used" is the folder's modification time, set at each build. The blobs of versions before
this module shared one folder (``<cache>/openvino-compiled/``), which this version never reads: each goes once
RECENT_S old, within the bound or not (0.37 GB of them on an AVX2 machine; an older version that shares the
cache compiles its graph again, ~1 s). The lock files beside the entries (empty) are left: removing one that
another process holds would let a third convert alongside it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

log = logging.getLogger("adain.diskcache")

VARIABLE = "ADAIN_CACHE_MAX_MB"
DEFAULT_MB = 2048  # about three decoders' float32 Winograd graphs and blobs (the largest form)
RECENT_S = 600.0  # an entry used this recently is never removed
LEGACY_BLOBS = "openvino-compiled"  # where compiled blobs went before they moved into their entries


def cache_dir() -> Path:
    """Where converted graphs are kept: ``ADAIN_CACHE_DIR``, else ``$XDG_CACHE_HOME/adain``, else ~/.cache/adain."""
    if os.environ.get("ADAIN_CACHE_DIR"):
        return Path(os.environ["ADAIN_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "adain"


def max_bytes(environ: Mapping[str, str] | None = None) -> int | None:
    """The bound in bytes (None: no bound). A value that is no number of megabytes is warned about and the
    default serves: a cache setting is not worth a failed start."""
    raw = (os.environ if environ is None else environ).get(VARIABLE, "").strip()
    if not raw:
        return DEFAULT_MB << 20
    try:
        mb = float(raw)
        if not math.isfinite(mb) or mb < 0:
            raise ValueError(raw)
    except ValueError:
        log.warning("%s=%r is not a number of megabytes (0: no bound): the default, %d MB, bounds the graph cache",
                    VARIABLE, raw, DEFAULT_MB)
        return DEFAULT_MB << 20
    return None if mb == 0 else int(mb * (1 << 20))


def used(folder: Path) -> None:
    """Marks an entry used now: the bound removes the entries used longest ago first."""
    with contextlib.suppress(OSError):  # (a cache not ours to write: nothing is removed from it either)
        os.utime(folder)


def _size(path: Path) -> int:
    if not path.is_dir():
        return path.lstat().st_size
    total = 0
    for parent, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):  # (removed meanwhile)
                total += os.lstat(os.path.join(parent, name)).st_size
    return total


def entries(root: Path) -> list[tuple[float, int, Path]]:
    """(last used, bytes, path) of each entry under ``root``; a folder being written (``.tmp-*``) is none."""
    found = []
    candidates = [p for p in (root / "openvino").glob("*") if p.is_dir() and not p.name.startswith(".")]
    candidates += [p for p in (root / LEGACY_BLOBS).glob("*") if p.is_file()]
    for path in candidates:
        with contextlib.suppress(OSError):  # gone meanwhile, or not ours to look in
            found.append((path.stat().st_mtime, _size(path), path))
    return found


def bound(root: Path | None = None, keep: Iterable[Path] = ()) -> list[Path]:
    """Removes the entries used longest ago until the cache is within ``max_bytes()``, sparing ``keep`` and
    those used in the last RECENT_S; returns the removed ones. Never raises: a cache that cannot be looked at
    or cleaned only stays as large as it is."""
    limit = max_bytes()
    if limit is None:
        return []
    root = cache_dir() if root is None else root
    try:
        found = entries(root)
    except OSError as e:
        log.warning("graph cache %s: not looked at for its bound: %s", root, e)
        return []
    total = sum(size for _, size, _ in found)
    kept = set(keep)
    now, removed = time.time(), []
    for when, size, path in sorted(found, key=lambda entry: entry[0]):  # the least recently used first
        legacy = path.parent.name == LEGACY_BLOBS  # read by no graph of this version: removed within the bound too
        if (total <= limit and not legacy) or path in kept or now - when < RECENT_S:
            continue
        try:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        except FileNotFoundError:  # another process's bound got there first
            pass
        except OSError as e:
            log.warning("graph cache: could not remove %s to keep within %s: %s", path, VARIABLE, e)
            continue
        total -= size
        removed.append(path)
    if removed:
        log.info("graph cache %s: removed %d entries used longest ago (%s), %.1f MB left of %s=%.4g",
                 root, len(removed), ", ".join(p.name for p in removed), total / 2**20, VARIABLE, limit / 2**20)
    if total > limit:
        log.warning("graph cache %s holds %.1f MB, over %s=%.4g: the rest was used in the last %.0f minutes or "
                    "is this process's", root, total / 2**20, VARIABLE, limit / 2**20, RECENT_S / 60)
    return removed
