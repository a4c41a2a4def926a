"""The ``compiled`` backend: the encoder and decoder compiled by ``torch.compile`` (inductor) for a few static
shapes, for a GPU.

Why: on an H200 the eager path runs ~310 images/s at 512 px, bound by copies and reflection pads (63% of its
GPU time), which inductor fuses into its own kernels. Measured there (round 4, batch 32, 512 px, bf16
autocast): the decoder alone 544 images/s eager, **2,234 compiled for that one shape**, but 419 compiled for
dynamic shapes (any batch, height and width: generic indexing, no tuned kernels), slower than eager. So:

* Each network is compiled for static shapes chosen at construction (``shapes``: batch x height x width of
  the content, default 512 x 512 at batches 1, 4, 16 and 32), one compile each (~20 s on a GPU's host), all
  before the backend is used: a server is not SERVING until they are done.
* A call whose size was compiled runs in the smallest compiled batch that holds it, its rows padded by
  repeating the last (a batch of 3 as one of 4; at most 4x the work where compiled is ~4x faster). Any other
  call runs eager: no compile happens on the request path (a minute while every request waits).
* The decoder is compiled at alpha 1 (the default, and what most calls ask); other alphas and maps run eager.
* A compile that fails (no C++ compiler or Triton, an op inductor cannot lower) is logged and the backend
  runs eager. Asked for by name (``make_backend``: the server's ``--backend compiled``, a Stylizer's
  ``backend="compiled"``) that is an error at start instead, as for any runtime asked for by name: a GPU pod
  serving at a quarter of the speed it was sized for should not look ready.
* After the warm-up the process's compiler stance is ``eager_on_recompile``: should a compiled graph's guards
  still fail on some input, it runs eager rather than compiling. That stance is process-wide: it also stops
  later ``torch.compile`` calls in this process from compiling, which a server does not mind; and dynamo's
  ``recompile_limit`` is raised to hold every shape (each is a compile of the same two functions).

Not used: CUDA graphs (``mode="reduce-overhead"``); their trees are recorded per thread, and the server calls
the encoder from its prepare threads too.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence

import torch

from adain.decoder import Decoder, require_image
from adain.eager import TorchBackend, _Relu41
from adain.encoder import Encoder
from adain.precision import COMPILE_SIZE_RULE, is_compile_size

log = logging.getLogger("adain.compiled")
Shape = tuple[int, int, int]  # batch, height, width of the content (multiples of 8: as the encoder pads it)
DEFAULT_SHAPES: tuple[Shape, ...] = tuple((n, 512, 512) for n in (1, 4, 16, 32))


def batch_steps(max_batch: int) -> list[int]:
    """The batch sizes to compile for batches up to ``max_batch``: powers of 4 below it, and it (padding a
    batch up to the next costs at most 4x its work, and the compiled graphs run ~4x eager's speed)."""
    steps = [1]
    while steps[-1] * 4 < max_batch:
        steps.append(steps[-1] * 4)
    return sorted({*steps, max_batch})


class CompiledBackend(TorchBackend):
    """The modules compiled by inductor for ``shapes``, each warmed at construction; eager for the rest."""

    name = "compiled"

    def __init__(self, encoder: Encoder, decoder: Decoder, device: torch.device, bf16: bool,
                 shapes: Sequence[Shape] = DEFAULT_SHAPES, compiler: str = "inductor") -> None:
        """``compiler``: torch.compile's backend (``aot_eager`` traces the same graphs without generating code:
        the tests' seconds, not a CPU's minutes)."""
        super().__init__(encoder, decoder, device, bf16)
        for n, h, w in shapes:
            if n < 1 or not is_compile_size(h, w):
                raise ValueError(f"compiled shapes are batch >= 1 x height x width, {COMPILE_SIZE_RULE}; "
                                 f"got {n} x {h} x {w}")
        self.compiler = compiler
        self.calls: Counter[str] = Counter()  # "compiled" and "eager": which path the calls took
        # the decoder's runs by path (a size not compiled, alpha below 1: eager): the server's
        # adain_compiled_decoder_runs_total, for an operator to see how much of the traffic the compiles cover
        self.renders: Counter[str] = Counter()
        self.failure = ""  # why the compile failed, where it did
        self._batches: dict[tuple[int, int], list[int]] = {}  # (height, width) -> the batch sizes compiled
        self._enc: Callable[..., torch.Tensor] = self.encoder  # until compiled (unused: no shape is)
        self._dec: Callable[..., torch.Tensor] = _AlphaOne(decoder)
        # every shape is a compile of the same two functions: room for them all in dynamo's cache of each
        limit = torch._dynamo.config.recompile_limit
        torch._dynamo.config.recompile_limit = max(limit, len(shapes) + 2)
        t0 = time.perf_counter()
        try:
            self._enc = torch.compile(_Relu41(encoder), dynamic=False, backend=compiler)
            self._dec = torch.compile(self._dec, dynamic=False, backend=compiler)
            todo = sorted(set(shapes))
            with torch.compiler.set_stance("default"):  # another one's warm-up left the process not compiling
                for i, (n, h, w) in enumerate(todo, 1):  # long work says where it is (minutes on a CPU)
                    log.info("compiling shape %d of %d: batch %d x %d x %d (%.0f s so far)", i, len(todo), n, h, w,
                             time.perf_counter() - t0)
                    self._warm(n, h, w)
        except Exception as e:  # noqa: BLE001 (inductor's errors have no one base class)
            self._batches.clear()
            self.failure = f"{type(e).__name__}: {str(e)[:300]}"
            log.warning("torch.compile failed (%s): the compiled backend runs eager", self.failure)
            return
        torch.compiler.set_stance("eager_on_recompile")
        log.info("compiled the encoder and decoder for %d shapes in %.0f s", len(todo), time.perf_counter() - t0)

    @property
    def compiled(self) -> bool:
        """Whether any compiled graph is in use (a failed compile leaves the eager path alone)."""
        return bool(self._batches)

    def _warm(self, n: int, h: int, w: int) -> None:
        image = torch.rand(n, 3, h, w, device=self.device)
        self._batches.setdefault((h, w), []).append(n)
        self._batches[(h, w)].sort()
        self.decode(self.relu4_1(image), 1.0, image)
        self.renders.clear()  # (a warm-up's run is not traffic)

    def _run(self, fn: Callable[..., torch.Tensor], size: tuple[int, int], x: torch.Tensor,
             *more: torch.Tensor | None) -> torch.Tensor | None:
        """``fn`` on the smallest compiled batch for ``size`` (content height, width) that holds these inputs,
        padded with their last row; None where no compiled shape holds them. Inputs are made inference tensors
        in channels_last, as the graphs were compiled for (another kind would not match them)."""
        inputs, n = (x, *more), x.shape[0]
        batch = next((b for b in self._batches.get(size, ()) if b >= n), None)
        if batch is None:
            self.calls["eager"] += 1
            return None
        self.calls["compiled"] += 1
        with torch.inference_mode(), self._autocast():
            ready = [None if t is None else _padded(t, batch) for t in inputs]
            return fn(*ready)[:n]

    def relu4_1(self, x: torch.Tensor) -> torch.Tensor:
        y = self._run(self._enc, (x.shape[2], x.shape[3]), x)
        return super().relu4_1(x) if y is None else y

    def decode(self, x: torch.Tensor, alpha: torch.Tensor | float, image: torch.Tensor | None = None) -> torch.Tensor:
        require_image(self.decoder, image)
        y = None
        if isinstance(alpha, (int, float)) and alpha == 1:
            size = (x.shape[2] * 8, x.shape[3] * 8)
            y = self._run(self._dec, size, x, image if self.decoder.detail is not None else None)
        self.renders["eager" if y is None else "compiled"] += 1
        return super().decode(x, alpha, image) if y is None else y


class _AlphaOne(torch.nn.Module):
    """The decoder at alpha 1, as one module to compile (a version 3 is given the content, which it then skips)."""

    def __init__(self, decoder: Decoder) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, x: torch.Tensor, image: torch.Tensor | None) -> torch.Tensor:
        return self.decoder(x, 1.0, image)


def _padded(t: torch.Tensor, batch: int) -> torch.Tensor:
    """``t`` as an inference tensor in channels_last with ``batch`` rows, its last repeated (called in inference
    mode): a copy where it is not one already."""
    if t.shape[0] < batch:
        t = torch.cat([t, t[-1:].expand(batch - t.shape[0], *t.shape[1:])])
    t = t.contiguous(memory_format=torch.channels_last)
    return t if t.is_inference() else t.clone(memory_format=torch.channels_last)
