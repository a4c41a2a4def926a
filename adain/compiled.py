"""The ``compiled`` backend: the encoder and decoder compiled by ``torch.compile`` (inductor), for a GPU.

Why: on an H200 the eager path runs 257-312 images/s at 512 px, bound by copies and reflection pads (63% of
its GPU time), which inductor fuses into its own kernels; compiled, the same network ran 922-1,557 images/s
in ``benchmarks/gpu.py`` (in a CUDA graph there), pixels within bf16's rounding of eager's.

How it stays predictable in a server, where sizes vary from one request to the next:
* Each network is compiled once, at construction, for dynamic shapes (any batch of 2 or more, any height
  and width): one warm-up call per graph, on a small input. A batch of one is run as two (its row twice),
  so it takes the same graph rather than a specialised one of its own (a compile of its own, and its
  warm-up).
* The decoder has two graphs: alpha 1 everywhere (what most calls ask; the detail path is exactly zero
  there and skipped) and any alpha (the alpha map computed outside, the detail path always run).
* After the warm-up the process's compiler stance is ``eager_on_recompile``: an input the graphs do not cover
  (a feature map one pixel high) runs eager instead of compiling for a minute while every request waits.
  That stance is process-wide: it also stops any later ``torch.compile`` in this process from compiling,
  which a server does not mind; a library user who compiles other code should not use this backend.
* A compile that fails (no C++ compiler or Triton, an op inductor cannot lower) is logged and the backend
  runs eager: a faster path costs speed when missing, never a request.

Not used: CUDA graphs (``mode="reduce-overhead"``); their trees are recorded per thread, and the server calls
the encoder from its prepare threads too.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch

from adain.decoder import Decoder, alpha_channel, require_image
from adain.eager import TorchBackend, _Relu41
from adain.encoder import Encoder

log = logging.getLogger("adain.compiled")
WARM_SIZE = (64, 80)  # the warm-up content (H x W): small, unequal sides (equal ones could tie them in the graph)


class CompiledBackend(TorchBackend):
    """The modules compiled by inductor for dynamic shapes, warmed at construction; eager where not covered."""

    name = "compiled"

    def __init__(self, encoder: Encoder, decoder: Decoder, device: torch.device, bf16: bool,
                 compiler: str = "inductor") -> None:
        """``compiler``: torch.compile's backend (``aot_eager`` traces the same graphs without generating code:
        the tests' seconds, not a CPU's two minutes)."""
        super().__init__(encoder, decoder, device, bf16)
        self.compiler = compiler
        self.compiled = False  # whether the graphs are in use (a failed compile leaves the eager path)
        t0 = time.perf_counter()
        try:
            with torch.compiler.set_stance("default"):  # another one's warm-up left the process not compiling
                self._compile()
        except Exception as e:  # noqa: BLE001 (inductor's errors have no one base class)
            self.compiled = False
            log.warning("torch.compile failed (%s: %s): the compiled backend runs eager", type(e).__name__,
                        str(e)[:300])
            return
        torch.compiler.set_stance("eager_on_recompile")
        log.info("compiled the encoder and decoder for dynamic shapes in %.0f s", time.perf_counter() - t0)

    def _compile(self) -> None:
        """The graphs, each compiled by its first call: the warm-up goes through the same methods as a request,
        so that its inputs are what a request's are (inference tensors, the same dtypes)."""
        dec = self.decoder

        def one(x: torch.Tensor, image: torch.Tensor | None) -> torch.Tensor:
            return dec(x, 1.0, image)

        def mapped(x: torch.Tensor, alpha: torch.Tensor, image: torch.Tensor | None) -> torch.Tensor:
            return dec(x, alpha, image)

        def compiled(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
            return torch.compile(fn, dynamic=True, backend=self.compiler)

        self._enc = compiled(_Relu41(self.encoder))
        self._one = compiled(one)
        # the alpha-aware decoders only: a version 1 ignores alpha, so alpha 1's graph is all of it
        self._mapped = compiled(mapped) if dec.alpha_input or dec.detail is not None else None
        self.compiled = True
        image = torch.rand(2, 3, *WARM_SIZE, device=self.device)
        feats = self.relu4_1(image)
        for alpha in (1.0, 0.5):
            self.decode(feats, alpha, image)

    def _run(self, fn: Callable[..., torch.Tensor], *inputs: torch.Tensor | None) -> torch.Tensor:
        """``fn`` on a batch of two or more: a batch of one goes as its row twice (the graphs are compiled for
        a batch dimension that varies, which excludes 1), and comes back as one. Inputs are made inference
        tensors in channels_last, as the graphs were compiled for (another kind would not match them)."""
        n = inputs[0].shape[0]
        if n == 1:
            inputs = tuple(None if t is None else t.expand(2, *t.shape[1:]) for t in inputs)
        with torch.inference_mode(), self._autocast():
            y = fn(*(None if t is None else _ready(t) for t in inputs))
        return y[:1] if n == 1 else y

    def relu4_1(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(self._enc, x) if self.compiled else super().relu4_1(x)

    def decode(self, x: torch.Tensor, alpha: torch.Tensor | float, image: torch.Tensor | None = None) -> torch.Tensor:
        if not self.compiled:
            return super().decode(x, alpha, image)
        require_image(self.decoder, image)
        image = image if self.decoder.detail is not None else None
        if self._mapped is None or (isinstance(alpha, (int, float)) and alpha == 1):
            return self._run(self._one, x, image)
        return self._run(self._mapped, x, alpha_channel(alpha, x), image)


def _ready(t: torch.Tensor) -> torch.Tensor:
    """``t`` as an inference tensor in channels_last (called in inference mode): a copy where it is not one."""
    t = t.contiguous(memory_format=torch.channels_last)
    return t if t.is_inference() else t.clone(memory_format=torch.channels_last)
