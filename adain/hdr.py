"""HDR video frames (a phone's HLG or PQ clips) to the SDR sRGB the network and every output are in.

iPhones film HDR by default (HLG in BT.2020, 10-bit); decoded as if it were SDR, such a frame comes out
flat and washed out. Here a frame's 16-bit R'G'B' (BT.2020 primaries, decoded with its own matrix) is
taken to display light as the standards define it, then to SDR:

1. to linear light relative to HDR reference white, 203 cd/m2 (ITU-R BT.2408): PQ by its EOTF (SMPTE ST
   2084, absolute); HLG by its inverse OETF and the OOTF of a 1,000 cd/m2 display (ITU-R BT.2100, gamma
   1.2), under which HLG's 75% signal is that 203 cd/m2;
2. BT.2020 primaries to BT.709 (sRGB's), out-of-gamut parts clipped;
3. highlights above reference white rolled off smoothly into the top of the range (linear below 0.75 of
   it, an exponential shoulder above, on the largest channel so that hues keep their ratios);
4. the sRGB transfer curve, 8 bits.

So HLG's reference white lands at ~245 of 255 and a grey card (HLG 38%) near 100, where the SDR
rendition of the same scene would put them. An SDR clip in BT.2020 (a 10-bit camera's, an editor's export)
takes step 2 only, between the sRGB curve's two directions: decoded as if BT.709 its reds and greens came
out a quarter duller. numpy only.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
from PIL import Image

PQ, HLG = 16, 18  # AVColorTransferCharacteristic: SMPTE ST 2084, ARIB STD-B67
BT2020 = 9  # AVColorPrimaries
REFERENCE_WHITE = 203.0  # cd/m2, BT.2408
KNEE = np.float32(0.75)  # below this share of reference white, SDR light = HDR light

# BT.2020 -> BT.709 in linear light (ITU-R BT.2087)
BT2020_TO_709 = np.array([[1.6605, -0.5876, -0.0728], [-0.1246, 1.1329, -0.0083], [-0.0182, -0.1006, 1.1187]],
                         np.float32)
BT2020_LUMA = np.array([0.2627, 0.6780, 0.0593], np.float32)
BT709_LUMA = np.array([0.2126, 0.7152, 0.0722], np.float32)
BT709_XY = ((0.64, 0.33), (0.30, 0.60), (0.15, 0.06))
D65 = (0.3127, 0.3290)


def is_hdr(frame: object) -> bool:
    """Whether a decoded PyAV frame is PQ or HLG."""
    return getattr(frame, "color_trc", None) in (PQ, HLG)


def is_wide_sdr(frame: object) -> bool:
    """Whether a decoded PyAV frame is SDR in BT.2020 primaries (its colours need BT.2020 -> BT.709)."""
    return getattr(frame, "color_primaries", None) == BT2020 and not is_hdr(frame)


def pq_to_nits(e: np.ndarray) -> np.ndarray:
    """SMPTE ST 2084 EOTF: signal in [0, 1] -> cd/m2."""
    m1, m2 = 2610 / 16384, 2523 / 4096 * 128
    c1, c2, c3 = 3424 / 4096, 2413 / 4096 * 32, 2392 / 4096 * 32
    p = np.power(np.clip(e, 0, 1), 1 / m2)
    return 10000.0 * np.power(np.maximum(p - c1, 0) / (c2 - c3 * p), 1 / m1)


def hlg_to_scene(e: np.ndarray) -> np.ndarray:
    """BT.2100 HLG inverse OETF: signal in [0, 1] -> scene light in [0, 1]."""
    a, b, c = 0.17883277, 0.28466892, 0.55991073
    e = np.clip(e, 0, 1)
    return np.where(e <= 0.5, e * e / 3, (np.exp((e - c) / a) + b) / 12)


@functools.cache
def _tables() -> dict[str, np.ndarray]:
    """Per-code tables, once: 16-bit signal -> PQ light / HLG scene light (float32), and linear light in
    1/16384 steps -> 8-bit sRGB (a step is under 0.3 of a level)."""
    codes = np.arange(65536) / 65535.0
    linear = np.arange(16385) / 16384.0
    srgb = np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * np.power(linear, 1 / 2.4) - 0.055)
    sdr = np.where(codes <= 0.04045, codes / 12.92, np.power((codes + 0.055) / 1.055, 2.4))
    return {"pq": (pq_to_nits(codes) / REFERENCE_WHITE).astype(np.float32),
            "hlg": hlg_to_scene(codes).astype(np.float32),
            "sdr": sdr.astype(np.float32),
            "srgb": np.clip(srgb * 255 + 0.5, 0, 255).astype(np.uint8)}


def to_sdr(
    rgb48: np.ndarray, transfer: int, peak_nits: float = 1000.0, matrix: np.ndarray = BT2020_TO_709
) -> Image.Image:
    """A frame's R'G'B' (H x W x 3 uint16, BT.2020, PQ or HLG) -> an 8-bit sRGB image. ``peak_nits``: the
    display HLG is rendered for (its OOTF's gamma). ``matrix``: to BT.709 from other primaries (:func:`to_709`;
    an HDR still's), HLG's luminance then taken in those primaries."""
    tables = _tables()
    h, w = rgb48.shape[:2]
    if transfer == PQ:
        light = tables["pq"][rgb48].reshape(-1, 3)  # relative to reference white
    else:
        scene = tables["hlg"][rgb48].reshape(-1, 3)
        weights = BT2020_LUMA if matrix is BT2020_TO_709 else BT709_LUMA @ matrix  # Y in the frame's primaries
        luma = np.maximum(scene @ weights, np.float32(1e-8))
        gamma = np.float32(1.2 + 0.42 * np.log10(peak_nits / 1000))
        light = scene * (np.power(luma, gamma - 1) * np.float32(peak_nits / REFERENCE_WHITE))[:, None]  # OOTF
    linear = np.maximum(np.dot(light, matrix.T), 0)  # (N, 3) x (3, 3): one BLAS call
    peak = np.maximum(np.maximum(linear[:, 0], linear[:, 1]), linear[:, 2])
    # highlights rolled off on the largest channel, keeping each pixel's hue; below the knee, unchanged
    rolled = KNEE + (1 - KNEE) * (1 - np.exp((KNEE - np.maximum(peak, KNEE)) / (1 - KNEE)))
    linear *= np.where(peak > KNEE, rolled / np.maximum(peak, np.float32(1e-8)), np.float32(1))[:, None]
    index = np.minimum(linear * 16384 + 0.5, 16384).astype(np.int32)
    return Image.fromarray(tables["srgb"][index].reshape(h, w, 3), "RGB")


def to_709(primaries: Sequence[tuple[float, float]]) -> np.ndarray:
    """The linear-light matrix from RGB in ``primaries`` (red, green, blue CIE xy) to BT.709's (sRGB's), white to
    white (both taken as D65: a photo's white stays white)."""

    def rgb_to_xyz(xy: Sequence[tuple[float, float]]) -> np.ndarray:
        columns = np.array([[x / y, 1.0, (1 - x - y) / y] for x, y in xy]).T
        white = np.array([D65[0] / D65[1], 1.0, (1 - D65[0] - D65[1]) / D65[1]])
        return columns * np.linalg.solve(columns, white)  # each primary scaled so that R = G = B = 1 is white

    return (np.linalg.inv(rgb_to_xyz(BT709_XY)) @ rgb_to_xyz(primaries)).astype(np.float32)


def wide_to_srgb(rgb48: np.ndarray, matrix: np.ndarray = BT2020_TO_709) -> Image.Image:
    """An SDR frame's R'G'B' in wider primaries than sRGB's (BT.2020; ``matrix`` for others, from
    :func:`to_709`) as H x W x 3 uint16 -> 8-bit sRGB: the curve taken off, the primaries converted
    (out-of-gamut parts clipped), the curve put back; greys are unchanged."""
    tables = _tables()
    h, w = rgb48.shape[:2]
    linear = np.clip(np.dot(tables["sdr"][rgb48].reshape(-1, 3), matrix.T), 0, 1)
    index = (linear * 16384 + 0.5).astype(np.int32)
    return Image.fromarray(tables["srgb"][index].reshape(h, w, 3), "RGB")
