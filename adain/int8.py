"""``precision="int8"``: the encoder and decoder quantized to 8-bit integers for OpenVINO on a CPU.

Why: int8 convolutions run on a CPU's integer dot-product units (AVX512-VNNI, AVX-VNNI, AMX), about twice
bf16's multiply-adds. Measured on an AMD EPYC with AVX512-BF16 and VNNI (2 threads, 512 px, style cached;
``benchmarks/backends.py``): float32 569 ms, bf16 317 ms, int8 245 ms; on CPUs without bf16 units, where
``auto`` runs float32, 1.3-2.3x that (README, Speed). The pixels move further from float32's than bf16's (a
mean of 2-7 levels of 255 against 0.4-0.7, hard-edged styles most, the encoder most of it), though the quality
benchmark's losses and alpha-0 PSNR stay those of float32 (README, Speed). So int8 is asked for by name
(``Stylizer(precision="int8")``, the server's ``--precision int8``); ``auto`` never takes it.

How: NNCF's post-training quantization (its default: symmetric 8-bit weights and activations, with bias
correction) of the converted OpenVINO graphs, calibrated on the packaged images (``assets/calibration``:
four CC0 and public-domain photos and the three generated example styles, at 256 px): the encoder on the
images, the decoder on the photos' AdaIN targets for each style at alphas 1, 0.5 and 0. What stays float
(``float_parts``), measured on 8 photos at 512 px, decoder alone (float32: 0 levels, 37.24 dB at alpha 0):
* the detail path: quantized, the output moved 21 levels and alpha 0 fell to 15.6 dB (the photo lost);
* the Adds that put the detail path's corrections into the decoder's features: quantized, 34.2 dB;
* the decoder's first convolution (it reads the AdaIN target, whose range is wide): 3.0 levels quantized, 1.7 float;
* the decoder's last (it writes the pixels): on those photos 1.8 levels quantized, 1.7 float, but on the tests'
  synthetic contents 4.1 against 2.5 (4% of the decode's time);
* the encoder's first (three input channels, little of the work): 3.1 levels quantized, 2.7 float.
Quantizing takes ~10 s on two cores (19 s on the AVX2 EPYC); the result is cached with the converted graphs
(``adain.backends``), under a key that names RECIPE and ``float_parts``, so it happens once per decoder and runtime
version.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
from dataclasses import dataclass
from importlib import resources

import numpy as np
import torch
from PIL import Image

from adain.decoder import Decoder
from adain.encoder import Encoder
from adain.errors import install_hint
from adain.image import resize_longest, to_tensor
from adain.ops import adain, mean_std
from adain.precision import before_openvino, openvino_malloc_problem

log = logging.getLogger("adain.int8")

RECIPE = "int8-v4"  # in the cache key of a quantized graph (with float_parts): change it with the recipe or images
CALIBRATION_SIZE = 256  # the images' longest side
ALPHAS = (1.0, 0.5, 0.0)


def float_parts(part: str, decoder: Decoder) -> tuple[list[str], list[str]]:
    """What stays float in ``part`` (see the module's docstring for why): name patterns and op types of the
    converted graph. Each must match something (NNCF checks): patterns that silently matched nothing once left
    the detail path quantized (21 levels off)."""
    if part == "encoder":
        return [".*block1_conv1.*"], []
    ends = [r".*convs\.0.*", r".*convs\.8.*"]  # the decoder's first and last convolutions
    if decoder.detail is None:
        return ends, []
    # the detail path, and the Adds that put its corrections into the decoder's features
    return [*ends, ".*detail.*"], ["Add"]


def available() -> str:
    """Why int8 cannot run here, or "" where it can (OpenVINO and NNCF installed: the ``int8`` extra; no malloc
    preloaded that aborts OpenVINO)."""
    if problem := openvino_malloc_problem():
        return problem
    try:
        before_openvino()
        import nncf  # noqa: F401
        import openvino  # noqa: F401
    except ImportError as e:
        return f"{e.name or 'a module'} is not installed ({install_hint('int8')})"
    return ""


def _images(kind: str) -> list[torch.Tensor]:
    """The packaged calibration images of one kind (content, style) as 1 x 3 x H x W in [0, 1], cut to sides
    that are multiples of 8 (the sizes the encoder works at)."""
    out = []
    for entry in sorted((resources.files("adain") / "assets" / "calibration").iterdir(), key=lambda e: e.name):
        if entry.name.startswith(kind + "-"):
            with entry.open("rb") as f:
                x = to_tensor(resize_longest(Image.open(f).convert("RGB"), CALIBRATION_SIZE))
            out.append(x[..., : x.shape[2] // 8 * 8, : x.shape[3] // 8 * 8])
    if not out:
        raise FileNotFoundError(f"no {kind} calibration images in adain/assets/calibration")
    return out


def calibration(part: str, encoder: Encoder, decoder: Decoder) -> list[tuple[np.ndarray, ...]]:
    """The inputs ``part`` (encoder or decoder) sees, as its converted graph takes them: float32 arrays."""
    contents, styles = _images("content"), _images("style")
    if part == "encoder":
        return [(x.numpy(),) for x in contents + styles]
    samples = []
    with torch.inference_mode():
        stats = [mean_std(encoder(s).relu4_1) for s in styles]
        for c in contents:
            feat = encoder(c).relu4_1
            for mean, std in stats:
                for alpha in ALPHAS:
                    t = alpha * adain(feat, mean, std) + (1 - alpha) * feat
                    inputs = [t]
                    if decoder.alpha_input:
                        inputs.append(torch.full((1, 1, *t.shape[2:]), alpha))
                    if decoder.detail is not None:
                        inputs.append(c)
                    samples.append(tuple(x.float().numpy() for x in inputs))
    return samples


@dataclass(frozen=True)
class Quantizer:
    """What quantizes one part's converted graph (``adain.backends`` calls it on a cache miss only), and the
    name its result is cached under."""

    part: str
    encoder: Encoder
    decoder: Decoder

    @property
    def key(self) -> str:
        return f"{RECIPE} {float_parts(self.part, self.decoder)}"

    def __call__(self, model: object) -> object:
        return quantize(model, self.part, self.encoder, self.decoder)


def quantize(model: object, part: str, encoder: Encoder, decoder: Decoder) -> object:
    """``model`` (an OpenVINO graph of ``part``) quantized to int8 by the recipe above."""
    import nncf

    t0 = time.perf_counter()
    samples = calibration(part, encoder, decoder)
    patterns, types = float_parts(part, decoder)
    # NNCF logs each layer it leaves float at INFO to its own stdout handler and draws progress bars on stdout:
    # a server's stdout is its log, so both are quietened for the call (warnings still show)
    level = logging.getLogger("nncf").level
    nncf.set_log_level(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            quantized = nncf.quantize(
                model, nncf.Dataset(samples), subset_size=len(samples),
                ignored_scope=nncf.IgnoredScope(patterns=patterns, types=types),
            )
    finally:
        nncf.set_log_level(level)
    log.info("int8: quantized the %s on %d calibration inputs in %.1f s", part, len(samples), time.perf_counter() - t0)
    return quantized
