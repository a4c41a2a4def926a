"""An AVIF's colour code points, read from its ISO-BMFF boxes (ISO/IEC 14496-12, 23008-12): Pillow decodes
AVIF but does not hand over its 'colr' box of type 'nclx', so a Display P3 or an HDR (PQ, HLG) AVIF without
an ICC profile was read as sRGB: duller, or flat and dim. pillow-heif gives the same box of a HEIF file as
``info["nclx_profile"]``; :func:`nclx_profile` gives an AVIF's in that form, for ``adain.photo``.

Only the boxes on the way are read (meta, pitm, iprp, ipco, ipma, colr), each bounded by its parent; a file
that does not parse gives None, never an error: its pixels are then read as they are.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

# ISO/IEC 23091-2 colour primaries, as (x, y) of red, green and blue (all with the D65 white point)
PRIMARIES_XY = {
    1: ((0.64, 0.33), (0.30, 0.60), (0.15, 0.06)),  # BT.709, sRGB
    5: ((0.64, 0.33), (0.29, 0.60), (0.15, 0.06)),  # BT.601 625 lines
    6: ((0.630, 0.340), (0.310, 0.595), (0.155, 0.070)),  # BT.601 525 lines
    7: ((0.630, 0.340), (0.310, 0.595), (0.155, 0.070)),  # SMPTE 240M, the same
    9: ((0.708, 0.292), (0.170, 0.797), (0.131, 0.046)),  # BT.2020
    12: ((0.680, 0.320), (0.265, 0.690), (0.150, 0.060)),  # Display P3
}
MAX_ITEMS = 1 << 16  # version 0's item ids are 16 bits: a file names no more items than that
HEAD_BYTES = 1 << 20  # the meta box comes before the pixels and is a few hundred bytes as a rule


def _boxes(data: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload start, payload end) of each box in data[start:end]; stops at the first malformed one. A
    box that runs past ``end`` is cut there: the file's head holds the start of a large meta box."""
    at = start
    while at + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, at)
        head = 8
        if size == 1:
            if at + 16 > end:
                return
            size, head = struct.unpack_from(">Q", data, at + 8)[0], 16
        elif size == 0:
            size = end - at
        if size < head:
            return
        size = min(size, end - at)
        yield kind, at + head, at + size
        at += size


def _child(data: bytes, start: int, end: int, kind: bytes) -> tuple[int, int] | None:
    return next(((s, e) for k, s, e in _boxes(data, start, end) if k == kind), None)


def _primary_properties(data: bytes, meta: tuple[int, int], iprp: tuple[int, int], count: int) -> set[int] | None:
    """The 0-based ipco indices of the primary item's properties, from pitm and ipma; None if either is missing."""
    pitm, ipma = _child(data, *meta, b"pitm"), _child(data, *iprp, b"ipma")
    if pitm is None or ipma is None or pitm[1] - pitm[0] < (8 if data[pitm[0]] else 6) or ipma[1] - ipma[0] < 8:
        return None
    item = struct.unpack_from(">I" if data[pitm[0]] else ">H", data, pitm[0] + 4)[0]
    at, end = ipma
    version, flags = data[at], int.from_bytes(data[at + 1 : at + 4], "big")
    entries = struct.unpack_from(">I", data, at + 4)[0]
    at += 8
    for _ in range(min(entries, (end - at) // 3, MAX_ITEMS)):  # an entry takes 3 bytes at least
        id_size, wide = (4 if version else 2), bool(flags & 1)
        if at + id_size + 1 > end:
            return None
        item_id = int.from_bytes(data[at : at + id_size], "big")
        n = data[at + id_size]
        at += id_size + 1
        if at + n * (2 if wide else 1) > end:
            return None
        if wide:
            indices = [struct.unpack_from(">H", data, at + 2 * i)[0] & 0x7FFF for i in range(n)]
        else:
            indices = [data[at + i] & 0x7F for i in range(n)]
        at += n * (2 if wide else 1)
        if item_id == item:
            return {i - 1 for i in indices if 0 < i <= count}
    return None


def nclx_profile(data: bytes) -> dict | None:
    """The primary image's 'nclx' colour box of an AVIF (the head of its bytes is enough) as pillow-heif names
    its fields (``color_primaries``, ``transfer_characteristics``, ``matrix_coefficients``,
    ``full_range_flag``, and the primaries' ``color_primary_red_x``... where the code point is known); None
    where there is none or the boxes do not parse."""
    try:
        meta = _child(data, 0, len(data), b"meta")
        if meta is None:
            return None
        meta = (meta[0] + 4, meta[1])  # a full box: version and flags first
        iprp = _child(data, *meta, b"iprp")
        if iprp is None:
            return None
        ipco = _child(data, *iprp, b"ipco")
        if ipco is None:
            return None
        props = list(_boxes(data, *ipco))
        chosen = _primary_properties(data, meta, iprp, len(props))
        for i, (kind, start, end) in enumerate(props):
            if kind != b"colr" or end - start < 11 or data[start : start + 4] != b"nclx":
                continue
            if chosen is not None and i not in chosen:
                continue
            primaries, transfer, matrix = struct.unpack_from(">HHH", data, start + 4)
            profile = {
                "color_primaries": primaries,
                "transfer_characteristics": transfer,
                "matrix_coefficients": matrix,
                "full_range_flag": data[start + 10] >> 7,
            }
            for colour, (x, y) in zip(("red", "green", "blue"), PRIMARIES_XY.get(primaries, ())):
                profile[f"color_primary_{colour}_x"], profile[f"color_primary_{colour}_y"] = x, y
            return profile
    except (struct.error, IndexError):
        return None
    return None
