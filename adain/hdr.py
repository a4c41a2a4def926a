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
rendition of the same scene would put them. numpy only.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

PQ, HLG = 16, 18  # AVColorTransferCharacteristic: SMPTE ST 2084, ARIB STD-B67
REFERENCE_WHITE = 203.0  # cd/m2, BT.2408
KNEE = 0.75  # below this share of reference white, SDR light = HDR light

# BT.2020 -> BT.709 in linear light (ITU-R BT.2087)
BT2020_TO_709 = np.array([[1.6605, -0.5876, -0.0728], [-0.1246, 1.1329, -0.0083], [-0.0182, -0.1006, 1.1187]],
                         np.float32)
BT2020_LUMA = np.array([0.2627, 0.6780, 0.0593], np.float32)


def is_hdr(frame: object) -> bool:
    """Whether a decoded PyAV frame is PQ or HLG."""
    return getattr(frame, "color_trc", None) in (PQ, HLG)


def pq_to_nits(e: np.ndarray) -> np.ndarray:
    """SMPTE ST 2084 EOTF: signal in [0, 1] -> cd/m2."""
    m1, m2 = 2610 / 16384, 2523 / 4096 * 128
    c1, c2, c3 = 3424 / 4096, 2413 / 4096 * 32, 2392 / 4096 * 32
    p = np.power(np.clip(e, 0, 1), 1 / m2)
    return 10000.0 * np.power(np.maximum(p - c1, 0) / (c2 - c3 * p), 1 / m1)


def hlg_to_nits(e: np.ndarray, peak: float = 1000.0) -> np.ndarray:
    """BT.2100 HLG: signal (H x W x 3, [0, 1]) -> display light in cd/m2 on a ``peak`` display."""
    a, b, c = 0.17883277, 0.28466892, 0.55991073
    e = np.clip(e, 0, 1)
    scene = np.where(e <= 0.5, e * e / 3, (np.exp((e - c) / a) + b) / 12)  # inverse OETF: scene light
    luma = np.maximum(scene @ BT2020_LUMA, 1e-8)[..., None]
    gamma = 1.2 + 0.42 * np.log10(peak / 1000)
    return peak * np.power(luma, gamma - 1) * scene  # OOTF


def to_sdr(rgb48: np.ndarray, transfer: int) -> Image.Image:
    """A frame's R'G'B' (H x W x 3 uint16, BT.2020, PQ or HLG) -> an 8-bit sRGB image."""
    e = rgb48.astype(np.float32) / 65535.0
    nits = pq_to_nits(e) if transfer == PQ else hlg_to_nits(e)
    linear = np.clip((nits / REFERENCE_WHITE) @ BT2020_TO_709.T, 0, None)
    peak = linear.max(-1, keepdims=True)
    rolled = np.where(peak <= KNEE, peak, KNEE + (1 - KNEE) * (1 - np.exp(-(peak - KNEE) / (1 - KNEE))))
    linear = linear * (rolled / np.maximum(peak, 1e-8))
    srgb = np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * np.power(linear, 1 / 2.4) - 0.055)
    return Image.fromarray(np.clip(srgb * 255 + 0.5, 0, 255).astype(np.uint8), "RGB")
