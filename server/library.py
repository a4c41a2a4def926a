"""The server's style library: a folder of style images (``--styles-dir``) that callers use by name.

A service offering a fixed set of looks (an app's filters, a brand's house styles) should not send the
same painting with every call, nor register it on every replica and remember ids: each replica reads the
same folder (baked into the image, or a mounted volume) and a request names the style,
``Style.style_id = "mosaic"``. Names are the files' stems; ``ListStyles`` lists them with their sizes,
ids and thumbnails (a client's gallery).

The folder is read again when it changes (checked every second by a thread), so a style is added,
replaced or removed without a restart. At start a bad file (undecodable, over the pixel limit, too small to
carry a style at the default style size, a name that is not allowed, two files with one name) fails the start
with its path; later the same fault keeps that name's last good image (or leaves a new name out), with a
warning, so one bad copy never takes the other styles away. A style the model still cannot prepare when the
server computes its statistics ahead is a bad file too (:meth:`StyleLibrary.reject`). Only files with an
image suffix count (a README or LICENSE beside them is ignored), and hidden files never do.

``presets.json`` beside the styles names looks made of them (an app's filters): styles with weights, a
strength and a colour mode, ``{"vintage": {"styles": {"mosaic": 0.7, "waves": 0.3}, "alpha": 0.8,
"preserve_color": "luminance"}}``; a request names one in ``StylizeRequest.preset``. It is followed like
the images: a bad rewrite keeps the last good presets.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import struct
import threading
import unicodedata
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from adain.errors import InvalidInputError
from adain.files import bytes_written
from adain.image import KeyedImage, load_image, longest_size
from adain.wire import COLOR_MODES, INPUT_SUFFIXES, LIBRARY_NAME_RULE, Limits, library_name, style_too_small

from .registry import style_id

log = logging.getLogger("adain.server")

SUFFIXES = INPUT_SUFFIXES  # one list with the CLI's folders
MAX_STYLES = 1000  # a folder of photos given by mistake fails fast instead of decoding for minutes
MAX_THUMBNAIL = 512
RECHECK_S = 1.0
PRESETS_FILE = "presets.json"


@dataclass(frozen=True)
class StylePreset:
    name: str
    styles: tuple[tuple[str, float], ...]  # (library style name, weight)
    alpha: float = 1.0
    preserve_color: str | None = None  # None, "coral" or "luminance"


def read_presets(path: Path) -> dict[str, StylePreset]:
    """The presets of a presets.json; ValueError naming the file, the preset and the fault."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"{path}: not JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object of presets by name")
    presets = {}
    for name, spec in data.items():
        where = f"{path}: preset {name!r}"
        named = library_name(name)  # (one rule with the thin client, which saves thumbnails by name)
        if named is None:
            raise ValueError(f"{where}: a name is {LIBRARY_NAME_RULE}")
        name = named  # (composed, as the styles' names are)
        if not isinstance(spec, dict) or set(spec) - {"styles", "alpha", "preserve_color"}:
            raise ValueError(f"{where}: expected an object of styles, alpha and preserve_color")
        styles = spec.get("styles")
        if not isinstance(styles, dict) or not styles:
            raise ValueError(f"{where}: styles must be an object of style names and weights, e.g. {{\"mosaic\": 1}}")
        weights = list(styles.values())
        # checked as float32, what a call carries: 1e39 became inf (every call with the preset failed), 1e-46 0
        if not all(isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) and w >= 0
                   and math.isfinite(_f32(w)) for w in weights) or sum(_f32(w) for w in weights) <= 0:
            raise ValueError(f"{where}: weights must be numbers >= 0 and at most 3.4e38 (float32), not all 0")
        alpha = spec.get("alpha", 1.0)
        if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not 0 <= alpha <= 1:
            raise ValueError(f"{where}: alpha must be a number in [0, 1], got {alpha!r}")
        color = spec.get("preserve_color", "none")
        if color not in ("none", *COLOR_MODES):
            raise ValueError(f"{where}: preserve_color must be one of none, {', '.join(COLOR_MODES)}; got {color!r}")
        presets[name] = StylePreset(name, tuple((unicodedata.normalize("NFC", str(s)), _f32(w))  # (composed, as above)
                                                for s, w in styles.items()), _f32(alpha),
                                    None if color == "none" else color)
    return presets


def _f32(x: float) -> float:
    """``x`` as a float on the wire (float32) is: a preset then gives exactly what a call with the same
    numbers gives (0.8 as sent is 0.800000011920929)."""
    return struct.unpack("f", struct.pack("f", float(x)))[0]


class BadStyleError(ValueError):
    """A style file of the library the server cannot serve, found after the library read it (the start's
    warm-up): fails the start with the file's path and the reason, as a bad file found at reading does."""


@dataclass
class LibraryStyle:
    name: str
    id: str  # sha256 hex of the file's bytes: the style's cache key, as a registered style's id is
    data: bytes
    width: int
    height: int
    signature: tuple[int, int, int]
    path: Path  # the file it was read from
    _thumbnails: OrderedDict[int, bytes] = field(default_factory=OrderedDict, repr=False)
    _base: bytes = field(default=b"", repr=False)  # the style at MAX_THUMBNAIL px, JPEG q95: what sizes come from
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)  # ListStyles replies run in threads

    @property
    def source(self) -> KeyedImage:
        """The style as the Stylizer takes it: its bytes, keyed by their sha256 (no second hashing)."""
        return KeyedImage(self.id, self.data)

    def thumbnail(self, size: int) -> bytes:
        """A JPEG of the style with its longest side at most ``size`` px (at most MAX_THUMBNAIL). The last
        four sizes are kept; another is made from a MAX_THUMBNAIL-px copy made once (about 3 ms), never from
        the style's file again (0.2 s for a 12-MP photo, for every style of the list, each time a caller
        asked for a fifth size)."""
        with self._lock:
            return self._thumbnail(size)

    def _thumbnail(self, size: int) -> bytes:
        thumb = self._thumbnails.get(size)
        if thumb is None:
            if not self._base:
                img = load_image(self.data, field=self.name, max_pixels=self.width * self.height)
                img.thumbnail((MAX_THUMBNAIL, MAX_THUMBNAIL), Image.Resampling.LANCZOS)
                self._base = _jpeg(img, 95)
            img = Image.open(io.BytesIO(self._base))
            img.thumbnail((size, size), Image.Resampling.LANCZOS)
            thumb = _jpeg(img, 85)
            self._thumbnails[size] = thumb
            while len(self._thumbnails) > 4:  # a client asks for one size or two; bound the rest
                self._thumbnails.popitem(last=False)
        else:
            self._thumbnails.move_to_end(size, last=True)
        return thumb


def _jpeg(img: Image.Image, quality: int) -> bytes:
    return bytes_written(lambda f: img.save(f, "JPEG", quality=quality))


def _signature(path: Path) -> tuple[int, int, int]:
    s = path.stat()
    return (s.st_mtime_ns, s.st_size, s.st_ino)


NO_SIGNATURE = (0, 0, 0)  # a fault of a name or of the folder, not of one version of a file
# A fault warned about: (kind, what, version). Kinds: "folder" (unreadable), "file" (a path the library
# cannot take by its name), "style" (a style's file, by name, per version), "presets".
WarnKey = tuple[str, str, tuple[int, int, int]]


class StyleLibrary:
    """The styles of one folder by name, kept in step with the folder by :meth:`watch`."""

    def __init__(self, folder: str | os.PathLike, max_pixels: int, max_styles: int = Limits().max_styles,
                 style_size: int = Limits().style_size) -> None:
        self.folder = Path(folder)
        self.max_pixels = max_pixels
        self.max_styles = max_styles  # a preset blending more could never be used on this server
        self.style_size = style_size  # the default: a style too small at it would fail every call naming it
        if not self.folder.is_dir():  # (a file was "no such folder")
            if self.folder.exists():
                raise ValueError(f"--styles-dir: {self.folder} is a file, not a folder")
            raise ValueError(f"--styles-dir: no such folder: {self.folder}")
        self._styles: dict[str, LibraryStyle] = {}
        self._replaced: dict[str, LibraryStyle] = {}  # the versions the last refresh replaced: reject() restores
        self._lock = threading.Lock()
        # One refresh or reject at a time: a pass rebuilds _warned, which reject() adds to.
        self._pass = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # The faults warned about that are still there: rebuilt by every pass that reads the folder (from the
        # faults it still finds), so a fault that went and comes back is warned about again, and the set holds
        # what the folder holds now, not every bad version a sync tool's partial writes ever made.
        self._warned: set[WarnKey] = set()
        self._found: set[WarnKey] = set()  # the faults the pass in progress found
        self._presets: dict[str, StylePreset] = {}
        self._presets_seen: tuple[int, int, int] | None = None
        self.refresh(strict=True)

    def _files(self, strict: bool) -> dict[str, Path]:
        """The style files by name. A file whose name cannot be one, or two files of one name, are an error
        when ``strict``, else left out (with one warning): of two files of one name the one served so far
        stays (a newcomer does not displace it), and where neither was, both are left out (which one was
        meant cannot be told)."""
        found: dict[str, list[Path]] = {}
        for entry in sorted(self.folder.iterdir()):
            # A link to nothing is a style's file that cannot be read (as an empty one is), not a file to skip
            # without a word: read below, it fails the start, or keeps the name's last good image.
            dangling = entry.is_symlink() and not entry.exists()
            if entry.name.startswith(".") or entry.suffix.lower() not in SUFFIXES or not (entry.is_file() or dangling):
                continue
            name = library_name(entry.stem)  # (composed: a Mac's folder holds names decomposed)
            if name is None:
                problem = (f"{entry}: a style's name (the file's stem) must be {LIBRARY_NAME_RULE}, and not 64 hex "
                           "digits (that is a registered style's id)")
                if strict:
                    raise ValueError(problem)
                self._fault(("file", str(entry), NO_SIGNATURE), f"{problem} (left out)")
                continue
            found.setdefault(name, []).append(entry)
        files: dict[str, Path] = {}
        for name, paths in found.items():
            if len(paths) == 1:
                files[name] = paths[0]
                continue
            problem = f"{' and '.join(map(str, paths))}: two files give the style name {name!r}"
            if strict:
                raise ValueError(problem)
            current = self.get(name)
            served = current.path if current is not None else None
            if served in paths:
                files[name] = served
                left = [p for p in paths if p != served]
                self._fault(("file", str(left[0]), NO_SIGNATURE), f"{problem} ({', '.join(map(str, left))} left out)")
            else:
                self._fault(("file", str(paths[0]), NO_SIGNATURE), f"{problem} (both left out)")
        if len(files) > MAX_STYLES:
            raise ValueError(f"{self.folder} holds {len(files)} style images, over the limit of {MAX_STYLES}")
        return files

    def _load(self, name: str, path: Path) -> LibraryStyle:
        sig = _signature(path)
        data = path.read_bytes()
        img = load_image(data, field=str(path), max_pixels=self.max_pixels)
        small = style_too_small(*longest_size(img.width, img.height, self.style_size), self.style_size)
        if small:  # every call naming it would fail: not offered at all (the Stylizer's own rule)
            raise InvalidInputError(str(path), small)
        return LibraryStyle(name, style_id(data), data, img.width, img.height, sig, path)

    def refresh(self, strict: bool = False) -> None:
        """Read what changed in the folder. ``strict`` (at start): any fault is an error; else a fault
        keeps the last good state of what it concerns, logged once per version of the file (once per
        outage of the folder, once while a name cannot be taken)."""
        with self._pass:
            self._found = set()
            try:
                files = self._files(strict)
            except (OSError, ValueError) as e:
                if strict:
                    raise ValueError(f"--styles-dir: {e}") from None
                # Nothing could be seen: every fault known stays known (and its version is still not read).
                self._fault(("folder", "", NO_SIGNATURE),
                            f"style library {self.folder} cannot be read (kept as it was): {e}")
                return
            self._refresh(files, strict)
            # What this pass found is all that is still wrong: a fault fixed, gone or of a replaced version is
            # forgotten (the folder's, too, so that the next outage is logged).
            self._warned, self._found = self._found, set()

    def _refresh(self, files: dict[str, Path], strict: bool) -> None:
        with self._lock:
            old = dict(self._styles)
        new: dict[str, LibraryStyle] = {}
        for name, path in files.items():
            sig = NO_SIGNATURE
            try:
                sig = _signature(path)
                if name in old and old[name].signature == sig:
                    new[name] = old[name]
                    continue
                failed = ("style", name, sig)
                if failed in self._warned:  # this version failed already: not read again until it changes
                    self._found.add(failed)
                    if name in old:
                        new[name] = old[name]
                    continue
                new[name] = self._load(name, path)
            except (OSError, InvalidInputError) as e:
                why = e.description if isinstance(e, InvalidInputError) else (e.strerror or str(e))
                if isinstance(e, FileNotFoundError) and path.is_symlink():
                    why = f"a link to {os.readlink(path)}, which does not exist"
                if strict:
                    raise ValueError(f"--styles-dir: {path}: {why}") from None
                kept = "keeping its last good image" if name in old else "left out"
                self._fault(("style", name, sig), f"style {path}: {why} ({kept})")
                if name in old:
                    new[name] = old[name]
        added = sorted(new.keys() - old.keys())
        removed = sorted(old.keys() - new.keys())
        changed = sorted(n for n in new.keys() & old.keys() if new[n] is not old[n])
        with self._lock:
            self._styles = new
            self._replaced = {n: old[n] for n in changed}
        self._refresh_presets(strict, bool(added or removed))
        if strict:
            log.info("style library %s: %d style(s): %s", self.folder, len(new), ", ".join(sorted(new)) or "none")
        elif added or removed or changed:
            log.info("style library reloaded: %d style(s); added %s, replaced %s, removed %s", len(new),
                     added or "none", changed or "none", removed or "none")

    def _refresh_presets(self, strict: bool, styles_changed: bool = False) -> None:
        """Read again where the file or the set of styles changed: a preset naming a style the library does not
        have (a typo, or a file since removed) is left out, with a warning, until it has it (at the start: the
        start fails). A preset kept whose style had gone was still offered, and every call naming it failed."""
        path = self.folder / PRESETS_FILE
        try:
            sig = _signature(path) if path.is_file() else None
        except OSError:
            sig = None
        key: WarnKey = ("presets", PRESETS_FILE, sig or NO_SIGNATURE)
        if sig == self._presets_seen and not strict and not styles_changed:
            # the same version and styles: its faults are still there, already warned about
            self._found |= {k for k in self._warned if k[0] in ("presets", "preset")}
            return
        self._presets_seen = sig
        try:
            presets = read_presets(path) if sig is not None else {}
            for p in presets.values():
                if len(p.styles) > self.max_styles:
                    raise ValueError(f"{path}: preset {p.name!r} blends {len(p.styles)} styles, over this server's "
                                     f"max_styles={self.max_styles}")
        except (OSError, ValueError) as e:
            if strict:
                raise ValueError(f"--styles-dir: {e}") from None
            self._fault(key, f"{e} (keeping the last good presets)")
            return
        for p in list(presets.values()):  # a typo in a style's name is caught here, not by the first caller
            if missing := [s for s, _ in p.styles if s not in self._styles]:
                why = (f"{path}: preset {p.name!r} names {', '.join(map(repr, missing))}, which the library has no "
                       "style of")
                if strict:
                    raise ValueError(f"--styles-dir: {why}")
                self._fault(("preset", p.name, sig or NO_SIGNATURE), f"{why} (left out until it has)")
                del presets[p.name]
        if (presets or self._presets) and (strict or presets.keys() != self._presets.keys()):
            log.info("style library presets: %s", ", ".join(sorted(presets)) or "none")
        with self._lock:
            self._presets = presets

    def reject(self, style: LibraryStyle, why: str) -> None:
        """Take back a style the library took but the model cannot prepare (found by the server computing its
        statistics ahead): as a bad file found by :meth:`refresh` is, it keeps the name's last good image (or
        is left out), with one warning, and that version of the file is not read again until it changes."""
        with self._pass:
            with self._lock:
                if self._styles.get(style.name) is not style:
                    return  # replaced or removed meanwhile
                previous = self._replaced.pop(style.name, None)
                if previous is not None:
                    self._styles[style.name] = previous
                else:
                    del self._styles[style.name]
            kept = "keeping its last good image" if previous is not None else "left out"
            # refresh() skips this version from now on (and keeps its key while the file is this version)
            self._fault(("style", style.name, style.signature), f"style {style.path}: {why} ({kept})")

    def preset(self, name: str) -> StylePreset | None:
        """The preset of that name (composed or not: "Mönch" typed on a Mac may come decomposed)."""
        with self._lock:
            return self._presets.get(unicodedata.normalize("NFC", name))

    def presets(self) -> list[StylePreset]:
        with self._lock:
            return [self._presets[n] for n in sorted(self._presets)]

    def _fault(self, key: WarnKey, message: str) -> None:
        """A fault the folder holds now: logged unless it was already there at the last pass."""
        self._found.add(key)
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message)

    def get(self, name: str) -> LibraryStyle | None:
        """The style of that name (composed or not, as :meth:`preset`)."""
        with self._lock:
            return self._styles.get(unicodedata.normalize("NFC", name))

    def styles(self) -> list[LibraryStyle]:
        with self._lock:
            return [self._styles[n] for n in sorted(self._styles)]

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._styles)

    def __len__(self) -> int:
        with self._lock:
            return len(self._styles)

    def watch(self, interval: float = RECHECK_S, on_change: Callable[[], None] | None = None) -> None:
        """Follow the folder from a daemon thread until :meth:`close`; ``on_change`` is called (on that
        thread) after every pass."""
        on_change = on_change or (lambda: None)

        def loop() -> None:
            while not self._stop.wait(interval):
                try:
                    self.refresh()
                    on_change()
                except Exception:  # never let the watcher die: the next pass tries again
                    log.exception("style library refresh failed")

        self._thread = threading.Thread(target=loop, name="adain-styles", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
