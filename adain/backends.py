"""Runtimes for the two networks of the image path: the encoder (image -> relu4_1) and the decoder
(relu4_1 target, maybe alpha and the content image -> image), behind one small interface so the Stylizer
does not care which runs them.

* ``torch``: the modules themselves, eager, channels_last, bf16 autocast where asked.
* ``openvino``: the same modules (the decoder folded: ``adain.decoder.FoldedDecoder``) traced once and
  converted to OpenVINO, compiled for the CPU with dynamic shapes (any size, any batch),
  ``INFERENCE_PRECISION_HINT`` f32 or bf16 (or the graphs quantized to int8 first: ``adain.int8``) and the
  thread count of torch. Converted models are kept on
  disk (``ADAIN_CACHE_DIR``, default ``~/.cache/adain``), keyed by the weights, the Winograd form and
  the runtime's version, and so are the compiled graphs (OpenVINO's ``CACHE_DIR``, in the entry), so a restart
  builds the backend in a fraction of a second (~10 s the first time); the entries used longest ago go when the
  cache is over ``ADAIN_CACHE_MAX_MB`` (``adain.diskcache``). Processes starting together take turns at a
  conversion (a lock file beside the entry): one converts, the others read its graph. A shape seen a second
  time also gets a graph compiled for it alone (faster than the shape-generic one; at most two kept, the most
  used, see _StaticShapes).
* ``compiled``: the modules compiled by ``torch.compile`` for a few static shapes (``adain.compiled``), for a
  GPU, where eager is bound by copies and pads that inductor fuses; compiled at start (~20 s a shape), eager
  for the other shapes.
* ``onnxruntime``: the modules exported to ONNX (dynamic axes) and run by ONNX Runtime's CPU provider,
  float32 only.

``auto`` on a CPU takes OpenVINO when it is installed (it measured fastest on every machine so far:
``benchmarks/backends.py``), else torch; on a GPU torch. The runtimes are an optional install extra
(the ``fast`` extra: ``pip install 'adain[fast]'``); without them everything runs on torch. A runtime that fails on one
input shape is logged and that shape runs on torch for a while, and from then on once it has failed
GIVE_UP_FAILURES times in a row; nothing is fatal after start-up.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from adain import diskcache, int8, stopping
from adain.compiled import DEFAULT_SHAPES, CompiledBackend, Shape
from adain.compiling import compiling
from adain.decoder import Decoder, FoldedDecoder, alpha_channel, every_alpha_one, require_image
from adain.eager import TorchBackend, _Relu41
from adain.encoder import Encoder
from adain.errors import StoppedError, install_hint, warnings_ignored
from adain.files import low_space
from adain.precision import BACKENDS, before_openvino, cpu_has_bf16, cpu_info, openvino_malloc_problem
from adain.winograd import WINOGRAD_FORM, winograd

log = logging.getLogger("adain.backends")
Run = Callable[..., np.ndarray]  # float32 arrays in, the one output out


RETRY_AFTER_CALLS = 100  # a shape the runtime failed goes back to it after this many calls of the backend,
RETRY_AFTER_S = 60.0  # and this long, whichever comes last: a failure may pass (an allocation under memory pressure);
# under load 100 calls pass in seconds, and all three tries within one spell of pressure gave the shape up
GIVE_UP_FAILURES = 3  # failures in a row after which a shape stays on torch
FAILED_SHAPES = 256  # shapes whose failures are remembered, the oldest forgotten first (bounded bookkeeping)


@dataclass
class _Failure:
    """A shape's failures in a row on a runtime, and when the last was (in the backend's calls and in time)."""

    count: int = 0
    call: int = 0
    at: float = 0.0


class ExportedBackend(TorchBackend):
    """Encoder and decoder run by an exported runtime (``openvino`` or ``onnxruntime``), on the CPU.

    A call that the runtime fails (say it cannot compile a shape, or an allocation failed) runs on torch, so a
    runtime's gap costs speed, never a request. That shape runs on torch until RETRY_AFTER_CALLS calls and
    RETRY_AFTER_S have passed, then the runtime gets it again; after GIVE_UP_FAILURES failures in a row it
    stays on torch (logged once). At most FAILED_SHAPES shapes are remembered, the oldest forgotten first.
    """

    def __init__(
        self, runtime: str, encoder: Encoder, decoder: Decoder, bf16: bool, threads: int, winograd_form: bool = True,
        quantized: bool = False,
    ) -> None:
        super().__init__(encoder, decoder, torch.device("cpu"), bf16)
        self.name = runtime
        self.quantized = quantized  # int8 graphs (adain.int8, OpenVINO only); a shape they fail runs on torch, fp32
        builder = _openvino if runtime == "openvino" else _onnxruntime
        # The folded decoder: the same function, 2.25x fewer multiply-adds in the three convolutions that
        # follow an upsampling (0.89 -> 0.79 s for a 512-px decode in OpenVINO; eager torch gains nothing).
        modules: tuple[nn.Module, nn.Module] = (_Relu41(encoder), FoldedDecoder(decoder))
        # The wide convolutions in Winograd form (adain.winograd), float32 on OpenVINO only: 1.43x -> 1.89x
        # the reference at 512 px in one run (README, Speed); ONNX Runtime got slower with it (1.38x -> 1.23x).
        # Converted by the builder, on a cache miss only (the conversion takes ~1.5 s).
        # Not on AVX-512 CPUs: there OpenVINO (2026.x) miscomputed the form for some shapes (relu4_1 of a
        # 64 x 48 input off by 12.7 where it peaks at 14.8, while eager torch runs the same module within
        # 1e-4). The fault is in its strided 1 x 8 convolution (the column transform) when that outputs one
        # column from two or more rows; padding one more tile column avoids it, but there the direct graph
        # was faster anyway (486 against 546 ms for a 512-px encode + decode), so they run the direct graph.
        # (int8: the direct graph, whose convolutions NNCF quantizes.)
        plain = not winograd_form or bf16 or quantized or runtime != "openvino" or _avx512()
        form = "" if plain else WINOGRAD_FORM
        self.form = form  # what the graphs run: WINOGRAD_FORM or "" (direct convolutions)
        # Traced at a small size: the graphs are shape-generic (dynamic axes).
        quantize = {p: int8.Quantizer(p, encoder, decoder) if quantized else None for p in ("encoder", "decoder")}
        self._encode = builder(modules[0], (torch.rand(1, 3, 32, 32),), bf16, threads, form, 1, quantize["encoder"])
        example = (torch.rand(1, 512, 4, 4),) + ((torch.ones(1, 1, 4, 4),) if decoder.alpha_input else ())
        example += (torch.rand(1, 3, 32, 32),) if decoder.detail is not None else ()
        # the decoder's input is at 1/8 resolution: 64 image pixels a pixel
        self._decode = builder(modules[1], example, bf16, threads, form, 64, quantize["decoder"])
        # A version 3's detail path adds exact zeros where every alpha is 1 (adain.detail), but a graph runs it
        # anyway: 1.19 -> 0.99 s for a 512-px stylization on an AVX2 CPU (its full-resolution branch), 1.64x ->
        # 2.03x the reference. So calls at alpha 1, the default, run a second graph without it, as eager torch
        # skips it (int8 keeps its one graph: a second quantization would double its first start).
        self._decode_alpha_one = None
        if decoder.detail is not None and not quantized:
            self._decode_alpha_one = builder(FoldedDecoder(decoder.without_detail()), example[:2], bf16, threads,
                                             form, 64, None)
        # The graph cache within its bound, once every part is built (and marked used): a bound kept after the
        # first part could remove a later part's entry, last used at the previous start, just before reading it.
        diskcache.bound(keep=self.cache_entries)
        self._failures: OrderedDict[tuple[str, tuple[int, ...]], _Failure] = OrderedDict()  # the newest last
        self._calls = 0
        self._failures_lock = threading.Lock()  # calls come from several threads

    @property
    def precision(self) -> str:
        return "int8" if self.quantized else super().precision

    @property
    def cache_entries(self) -> list[Path]:
        """Its parts' graph-cache entries (adain.diskcache): none on ONNX Runtime, or where the cache was unwritable."""
        parts = (self._encode, self._decode, self._decode_alpha_one)
        return [e for e in (getattr(p, "entry", None) for p in parts) if e is not None]

    def _run(self, part: str, run: Run, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor | None:
        key = (part, tuple(inputs[0].shape))
        with self._failures_lock:
            self._calls += 1
            started = self._calls
            failure = self._failures.get(key)
            if failure is not None:
                if failure.count >= GIVE_UP_FAILURES:
                    return None
                now = time.monotonic()
                if self._calls - failure.call < RETRY_AFTER_CALLS or now - failure.at < RETRY_AFTER_S:
                    return None
                failure.call, failure.at = self._calls, now  # this call retries; the others wait a cool-off more
        try:
            y = torch.from_numpy(run(*(t.detach().float().contiguous().numpy() for t in inputs)))
        except StoppedError:  # its callers gone (adain.stopping): no failure of the runtime's, nothing to run again
            raise
        except Exception as e:  # the runtime's own errors: no common base class
            self._failed(key, e, started, retry=failure is not None)
            return None
        if failure is not None:
            with self._failures_lock:
                self._failures.pop(key, None)  # the streak is broken: it counts from 0 again
        return y

    def _failed(self, key: tuple[str, tuple[int, ...]], error: Exception, started: int, retry: bool) -> None:
        """Count a failure of the call that ``started`` as the backend's call number ``started`` (``retry``: the
        one retry after a cool-off). Calls that ran at once and failed together count once: one passing shortage
        of memory failing three threads' calls would have given the shape up without a retry."""
        with self._failures_lock:
            known = self._failures.get(key)
            if known is not None and not retry and started <= known.call:
                return  # it started before that failure was counted: the same incident
            failure = self._failures.pop(key, None) or _Failure()
            failure.count += 1
            failure.call, failure.at = self._calls, time.monotonic()
            self._failures[key] = failure
            while len(self._failures) > FAILED_SHAPES:
                self._failures.popitem(last=False)
            count = failure.count
        part, shape = key
        if count >= GIVE_UP_FAILURES:
            log.warning("%s failed on the %s for shape %s %d times in a row, running it on torch from now on: %s",
                        self.name, part, shape, count, error)
        else:  # the first of a streak is worth a warning; a retry's failure less so
            log.log(logging.WARNING if count == 1 else logging.INFO,
                    "%s failed on the %s for shape %s, running it on torch (tried again after %d calls and %.0f s): %s",
                    self.name, part, shape, RETRY_AFTER_CALLS, RETRY_AFTER_S, error)

    def relu4_1(self, x: torch.Tensor) -> torch.Tensor:
        y = self._run("encoder", self._encode, (x,))
        return super().relu4_1(x) if y is None else y

    def decode(self, x: torch.Tensor, alpha: torch.Tensor | float, image: torch.Tensor | None = None) -> torch.Tensor:
        inputs: tuple[torch.Tensor, ...] = (x,)
        if self.decoder.alpha_input:
            inputs = (x, alpha_channel(alpha, x))
        require_image(self.decoder, image)
        if self._decode_alpha_one is not None and every_alpha_one(alpha):  # (a map on the CPU: cheap to read)
            y = self._run("decoder at alpha 1", self._decode_alpha_one, inputs)
        else:
            if image is not None and self.decoder.detail is not None:
                inputs += (image,)
            y = self._run("decoder", self._decode, inputs)
        return super().decode(x, alpha, image) if y is None else y


def _avx512() -> bool:
    """Whether OpenVINO runs AVX-512 kernels here: the CPU has them, and oneDNN is not held below them
    (``ONEDNN_MAX_CPU_ISA``, which OpenVINO honours: AVX2 or lower makes this machine compute as an AVX2 CPU does,
    how the README's int8 figures for CPUs without bf16 units or VNNI were measured)."""
    limit = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    below = limit == "AVX" or limit.startswith(("AVX2", "SSE"))  # (AVX2_VNNI too; AVX512_* is not below)
    return "avx512f" in cpu_info()[1] and not below


Backend = TorchBackend  # the interface: name, precision, relu4_1(x), decode(x, alpha, image)


def make_backend(
    name: str, encoder: Encoder, decoder: Decoder, device: torch.device, bf16: bool, explicit_precision: bool,
    compile_shapes: Sequence[Shape] = DEFAULT_SHAPES, quantized: bool = False,
) -> TorchBackend:
    """The backend called ``name`` (one of BACKENDS) for these modules; ``compile_shapes``: what ``compiled``
    compiles for (batch, height, width); ``quantized``: precision int8 (adain.int8).

    An explicitly named runtime that is missing or fails to build is an error (the operator asked for it);
    ``auto`` logs why it skips one and takes the next. ONNX Runtime runs float32 only on a CPU: asked for
    bf16 explicitly it is an error, under ``precision="auto"`` it runs float32. int8 runs on OpenVINO only,
    on a CPU: asked for elsewhere, or where OpenVINO or NNCF is missing, it is an error.
    """
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {name!r}")
    if quantized:
        return _int8_backend(name, encoder, decoder, device)
    if name == "compiled":  # torch.compile on any device (a GPU's choice: adain.compiled)
        if device.type == "cpu":  # allowed (its tests run here), but never unnoticed: a minute or two a shape
            log.warning("backend compiled on a CPU: compiling %d shapes takes minutes, and runs no faster than "
                        "openvino (auto's choice here); it is meant for a GPU", len(compile_shapes))
        backend = CompiledBackend(encoder, decoder, device, bf16, compile_shapes)
        if not backend.compiled:  # asked for by name: an error, as for the other runtimes
            raise RuntimeError(f"backend compiled is not usable here (torch.compile failed: {backend.failure}); "
                               "choose another backend (torch runs the same network eager)")
        return backend
    if device.type != "cpu":
        if name in ("openvino", "onnxruntime"):
            raise ValueError(f"backend {name} runs on the CPU here; on {device.type} use torch, compiled or auto")
        return TorchBackend(encoder, decoder, device, bf16)
    if bf16 and explicit_precision and not cpu_has_bf16():  # allowed (a test, a comparison), but never unnoticed
        log.warning("precision bf16 on a CPU without bf16 units (AVX512-BF16, AMX): emulated, 2.7x (OpenVINO) to "
                    "9x (torch) the time of fp32 (README, Speed); precision auto runs fp32 here")
    if name == "onnxruntime" and bf16:
        if explicit_precision:
            raise ValueError("backend onnxruntime runs fp32 only on a CPU: use precision fp32, or backend openvino")
        bf16 = False
    threads = torch.get_num_threads()
    for candidate in ("openvino", "torch") if name == "auto" else (name,):
        if candidate == "torch":
            return TorchBackend(encoder, decoder, device, bf16)
        try:
            return ExportedBackend(candidate, encoder, decoder, bf16, threads)
        except Exception as e:
            if name != "auto":
                fix = (f"install it (the 'fast' extra: {install_hint('fast')}) or choose another backend"
                       if isinstance(e, ImportError) else "choose another backend or precision")  # (installed)
                raise RuntimeError(f"backend {candidate} is not usable here ({type(e).__name__}: {e}); {fix}") from e
            # installed and failing is a slower server than it should be (eager torch: ~2x at 512 px), which an
            # operator must hear of (a cache another user wrote went to torch at INFO); not installed is a choice
            log.log(logging.INFO if isinstance(e, ImportError) else logging.WARNING,
                    "backend auto: %s not usable (%s: %s), trying the next", candidate, type(e).__name__, e)
    raise AssertionError("unreachable: torch is always last")


def _int8_backend(name: str, encoder: Encoder, decoder: Decoder, device: torch.device) -> ExportedBackend:
    if device.type != "cpu":
        raise ValueError(f"precision int8 runs on the CPU (OpenVINO); on {device.type} use bf16, fp32 or auto")
    if name not in ("auto", "openvino"):
        raise ValueError(f"precision int8 runs on backend openvino (or auto), not {name}")
    why = int8.available()
    if why:
        raise RuntimeError(f"precision int8 is not usable here: {why}")
    try:
        backend = ExportedBackend("openvino", encoder, decoder, False, torch.get_num_threads(), quantized=True)
    except Exception as e:
        raise RuntimeError(f"precision int8 is not usable here ({type(e).__name__}: {e}); "
                           "choose precision bf16, fp32 or auto") from e
    if _amx():  # allowed (asked for by name), but never unnoticed
        log.warning("precision int8 on a CPU with AMX: slower than bf16 here (296 against 241 ms at 512 px on an AMX "
                    "Xeon, README Speed); precision auto runs bf16")
    return backend


def _amx() -> bool:
    """Whether oneDNN runs AMX tiles here: the CPU has them (amx_bf16), and ``ONEDNN_MAX_CPU_ISA`` does not hold
    it below them (its AMX levels are named AVX512_CORE_AMX...)."""
    limit = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    return "amx_bf16" in cpu_info()[1] and (limit in ("", "ALL", "DEFAULT") or "AMX" in limit)


# --- the runtimes ---------------------------------------------------------------------------------
def _weights_key(module: nn.Module, example: tuple[torch.Tensor, ...], *parts: str) -> str:
    """A name for one module's converted graph: its weights, its inputs' ranks and the versions."""
    h = hashlib.sha256("|".join((torch.__version__, *parts)).encode())
    for name, t in module.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().float().contiguous().numpy().tobytes())
    h.update(repr([tuple(e.shape[:2]) for e in example]).encode())
    return h.hexdigest()[:24]


def _openvino(
    module: nn.Module, example: tuple[torch.Tensor, ...], bf16: bool, threads: int, form: str, scale: int,
    quantize: int8.Quantizer | None = None,
) -> Run:
    """``form``: WINOGRAD_FORM to convert the module's wide convolutions (adain.winograd) first, or "".
    ``scale``: image pixels per pixel of the module's input (bounds the fixed-shape graphs by image size).
    ``quantize``: applied to the converted graph before it is cached (int8)."""
    if problem := openvino_malloc_problem():  # (auto takes torch, saying so; a named openvino is an error)
        raise RuntimeError(problem)
    before_openvino()
    import openvino as ov

    core = ov.Core()
    recipe = (quantize.key,) if quantize is not None else ()
    key = _weights_key(module, example, "openvino", ov.get_version(), form, *recipe)
    folder = diskcache.cache_dir() / "openvino" / key
    xml = folder / "model.xml"
    model = _cached_model(core, xml)
    in_cache = model is not None
    if model is None:
        with _one_at_a_time(_lock_file(folder)) as alone:
            model = _cached_model(core, xml, quiet=True)  # converted by another process while this one waited
            in_cache = model is not None
            if model is None:
                model = _convert(ov, module, example, form)
                if quantize is not None:
                    model = quantize(model)
                if alone and folder.exists():  # a damaged entry makes way (never another converter's new one)
                    shutil.rmtree(folder, ignore_errors=True)
                if _save_openvino(ov, model, folder):  # read back: the compiled-graph cache knows its file form
                    in_cache = True
                    model = _cached_model(core, xml) or model
    config = {
        "INFERENCE_PRECISION_HINT": "bf16" if bf16 else "f32",  # OpenVINO's default is bf16 where it can
        "INFERENCE_NUM_THREADS": threads,
        "PERFORMANCE_HINT": "LATENCY",
        # the generic graph's kernels prepared per input shape: 5,000 kept by default, so a server's memory grew
        # with every new photo size (0.8 -> 1.4 GB over 300 sizes); 64 keeps it flat (0.88) at the same speed
        "CPU_RUNTIME_CACHE_CAPACITY": RUNTIME_CACHE_SHAPES,
    }
    if in_cache:  # OpenVINO's own cache of compiled graphs (1.2 -> 0.15 s a start), in the entry: removed with it
        blobs = folder / "compiled"
        diskcache.used(folder)
        try:
            blobs.mkdir(exist_ok=True)
            config["CACHE_DIR"] = str(blobs)
        except OSError as e:
            log.warning("openvino: no compiled-graph cache in %s: %s", blobs, e)
    try:
        # under the entry's lock while its blobs are used: two processes compiling one graph at once raced in the
        # blob's file (one read the other's half-written blob, found it bad and removed it; the writer's compile
        # then failed: "cannot set permissions: No such file or directory"); in turn, the second reads the blob
        with _one_at_a_time(_lock_file(folder), "compiling") if "CACHE_DIR" in config else contextlib.nullcontext():
            compiled = core.compile_model(model, "CPU", config)
    except Exception as e:  # noqa: BLE001 - its cache unusable (another user's blobs: "cannot remove: Permission
        if "CACHE_DIR" not in config:  # denied"): compiled without it, as a cache that cannot be made is
            raise
        log.warning("openvino: compiled-graph cache in %s not usable (%s), compiling without it", blobs, e)
        config.pop("CACHE_DIR")
        compiled = core.compile_model(model, "CPU", config)
    local = threading.local()  # an infer request serves one call at a time: one per thread
    static_config = {k: v for k, v in config.items() if k != "CACHE_DIR"}  # no ~100 MB blob per shape
    statics = _StaticShapes(lambda shapes: _compile_static(core, model, shapes, static_config), scale)

    def run(*arrays: np.ndarray) -> np.ndarray:
        static = None if getattr(_generic, "on", False) else statics.get(tuple(a.shape for a in arrays))
        lock: contextlib.AbstractContextManager[Any]
        if static is not None:
            request, lock = static  # one request per fixed-shape graph, shared by the threads
        else:
            request, lock = getattr(local, "request", None), contextlib.nullcontext()
            if request is None:
                request = local.request = compiled.create_infer_request()
        with lock:
            # (a fixed-shape graph's call only: a shape-generic one cancelled part-way failed its next call of
            # another shape, "the shape of input data conflicts with the reshape pattern", 7 times in 57; new
            # infer requests did not help. Fixed-shape graphs: 129 cancels, every later call exact)
            _infer(request, list(arrays), stoppable=static is not None)
            return request.get_output_tensor(0).data.copy()

    run.statics = statics  # type: ignore[attr-defined]  # for tests and debugging
    run.entry = folder if in_cache else None  # type: ignore[attr-defined]  # its graph-cache entry (adain.diskcache)
    return run


def _infer(request: Any, arrays: list[np.ndarray], stoppable: bool) -> None:
    """One OpenVINO graph call; where ``stoppable`` and this thread's renders may be stopped (``adain.stopping``),
    run asynchronously and cancelled (within one layer) once they must, raising StoppedError."""
    stop = stopping.current() if stoppable else None
    if stop is None:
        request.infer(arrays)
        return
    request.start_async(arrays)
    while not request.wait_for(stopping.POLL_MS):
        if stop():
            request.cancel()
            with contextlib.suppress(RuntimeError):  # ("Infer Request was canceled")
                request.wait()
            raise StoppedError("cancelled")


FIXED_SHAPE_MAX_PIXELS = 1 << 20  # image pixels (batch included) of one network's fixed-shape graphs, all together:
# memory (a call over it stays on the generic graph; a new graph that would pass it makes way first)
_generic = threading.local()


@contextlib.contextmanager
def generic_shapes() -> Iterator[None]:
    """Calls in this block (this thread) run on the shape-generic graphs only: tiled rendering, whose
    memory bound counts one set of buffers, not one more per fixed-shape graph (adain.tiling)."""
    before = getattr(_generic, "on", False)
    _generic.on = True
    try:
        yield
    finally:
        _generic.on = before


def _compile_static(core: object, model: object, shapes: tuple[tuple[int, ...], ...], config: dict) -> object:
    fixed = model.clone()  # type: ignore[attr-defined]
    fixed.reshape({i: list(shape) for i, shape in enumerate(shapes)})
    return core.compile_model(fixed, "CPU", config).create_infer_request()  # type: ignore[attr-defined]


RUNTIME_CACHE_SHAPES = 64  # input shapes whose prepared kernels OpenVINO keeps for the generic graph
DECAY_CALLS = 512  # the shapes' call counts are halved this often


class _StaticShapes:
    """Graphs compiled for one input shape each: OpenVINO runs a fixed-shape graph 3-15% faster than the
    shape-generic one (same-process A/Bs at 256 and 512 px, encoder and decoder alike), and compiles one
    in 0.2-0.4 s. So a shape seen a second time (a service's usual size, a clip's frames) gets its own,
    for its later calls; at most ``bound`` are kept, with ``FIXED_SHAPE_MAX_PIXELS`` image pixels in all (batch
    included): each holds its own buffers, ~0.7 KB an image pixel (+190 MB at 512 px; a 1-MP content's encoder and
    decoder graphs took a process from 2.8 to 4.1 GB, and a second 1-MP size to 5.4 GB, when only their number
    was bounded). A shape that fails to compile stays generic.

    When the places or the pixels are taken, a shape replaces the least used kept ones only once it has been
    asked for twice as often as each: three sizes in turn (portrait, landscape, square photos) evicted and
    compiled one graph on every call, 344 ms a call against 68 ms; now the third stays on the generic graph.

    A graph is compiled outside the lock, one at a time, by the call that asked for it: every other call (any
    thread, this shape too) goes on meanwhile, on its kept graph or the generic one. (Compiling on a thread of
    its own instead, so that the asking call need not wait, was measured on 2 cores at 512 px and lost: that
    call took as long, 433 against 437 ms in bf16, as the compile shared its cores, and the next one 424
    against 318 ms.)"""

    def __init__(
        self, compile_static: Callable[[tuple[tuple[int, ...], ...]], Any], scale: int = 1, bound: int = 2
    ) -> None:
        self.compile, self.scale, self.bound = compile_static, scale, bound
        self.uses: Counter[tuple[tuple[int, ...], ...]] = Counter()  # calls of each shape (bounded bookkeeping)
        self.failed: set[tuple[tuple[int, ...], ...]] = set()
        self.kept: dict[tuple[tuple[int, ...], ...], tuple[Any, threading.Lock]] = {}  # (OpenVINO's: untyped)
        self.compiling: tuple[tuple[int, ...], ...] | None = None  # the shape whose graph is being compiled
        self.lock = threading.Lock()  # every call takes it: held for bookkeeping only, never for a compile

    def get(self, shapes: tuple[tuple[int, ...], ...]) -> tuple[Any, threading.Lock] | None:
        """The fixed-shape request and its lock for these input shapes, or None (use the generic graph)."""
        if self._pixels(shapes) > FIXED_SHAPE_MAX_PIXELS:
            return None
        with self.lock:
            if len(self.uses) > 256:  # a bound on the bookkeeping: the kept shapes' counts stay
                self.uses = Counter({k: self.uses[k] for k in self.kept})
            if self.uses.total() >= DECAY_CALLS:  # recent calls count most: traffic that changes is followed
                self.uses = Counter({k: v // 2 for k, v in self.uses.items() if v > 1 or k in self.kept})
            self.uses[shapes] += 1
            if shapes in self.kept:
                return self.kept[shapes]
            if shapes in self.failed or self.uses[shapes] < 2 or self.compiling is not None:
                return None  # (a compile under way: one at a time, each takes all the threads it is given)
            if any(self.uses[shapes] < 2 * self.uses[other] for other in self._making_way(shapes)):
                return None  # not worth a compile and an eviction yet
            self.compiling = shapes
        entry: tuple[object, threading.Lock] | None = None
        try:
            t0 = time.perf_counter()
            with compiling():  # (the server's stuck watch allows for it: adain.compiling)
                entry = (self.compile(shapes), threading.Lock())
            log.info("openvino: a fixed-shape graph for %s, compiled in %.2f s", shapes, time.perf_counter() - t0)
        except Exception as e:  # the runtime's own errors
            log.warning("openvino: no fixed-shape graph for %s, the generic one serves it: %s", shapes, e)
        finally:
            with self.lock:
                self.compiling = None
                if entry is None:
                    if len(self.failed) >= 256:  # a bound on the bookkeeping: those shapes may try once more
                        self.failed.clear()
                    self.failed.add(shapes)
                else:  # the least used ones now make way (the counts moved during the compile; nothing else adds)
                    for other in self._making_way(shapes):
                        del self.kept[other]
                    self.kept[shapes] = entry
        return entry

    def _pixels(self, shapes: tuple[tuple[int, ...], ...]) -> int:
        n, _, h, w = shapes[0]
        return n * h * w * self.scale

    def _making_way(self, shapes: tuple[tuple[int, ...], ...]) -> list[tuple[tuple[int, ...], ...]]:
        """The kept shapes, least used first, that would go for ``shapes`` to be kept within the bounds."""
        way: list[tuple[tuple[int, ...], ...]] = []
        pixels = self._pixels(shapes) + sum(map(self._pixels, self.kept))
        for other in sorted(self.kept, key=self.uses.__getitem__):
            if len(self.kept) - len(way) < self.bound and pixels <= FIXED_SHAPE_MAX_PIXELS:
                break
            way.append(other)
            pixels -= self._pixels(other)
        return way


def _cached_model(core: object, xml: Path, quiet: bool = False) -> object | None:
    """The converted graph kept in the cache, or None (none yet, or a damaged or unreadable one: converted
    again)."""
    try:
        if not xml.is_file():  # (inside: another user's folder raises PermissionError here, and auto ran torch)
            return None
        return core.read_model(xml)  # type: ignore[attr-defined]
    except Exception as e:  # a damaged cache entry (or one removed as it was read), or one not ours to read
        if not quiet:
            log.warning("openvino: cached model %s unreadable (%s), converting again", xml, e)
        return None


def _convert(ov: object, module: nn.Module, example: tuple[torch.Tensor, ...], form: str) -> object:
    if form == WINOGRAD_FORM:
        module = winograd(module)
    with torch.no_grad(), warnings_ignored():
        # no check_trace: it traces and runs the module again to compare (~1 s of a first start, 2 s with the
        # imports it pulls in), and these modules have no data-dependent branches for it to find
        traced = torch.jit.trace(module, example, check_trace=False)
    shapes = [ov.PartialShape([-1, e.shape[1], -1, -1]) for e in example]  # type: ignore[attr-defined]
    return ov.convert_model(traced, input=shapes)  # type: ignore[attr-defined]


LOCK_WAIT_S = 300.0  # the longest one process waits for another's conversion before converting itself


@contextlib.contextmanager
def _one_at_a_time(path: Path, doing: str = "converting") -> Iterator[bool]:
    """Processes that start together with an empty cache (replicas sharing a volume, the test suite's two
    workers) take turns at a conversion (5-10 s of CPU each, ~1.5 GB at its peak): the first converts and
    saves, the others then read its graph; and at the compile that writes or reads the entry's blobs. The wait is
    bounded (a converter that hung: this one goes on too, after LOCK_WAIT_S, saying ``doing``); without fcntl
    (Windows) or a lockable cache folder each goes on at once, as before. Yields whether this process holds the
    lock."""
    try:
        import fcntl

        path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(path, "a")  # held for the block
    except (ImportError, OSError):
        yield False
        return
    with lock:
        yield _wait_for_lock(fcntl, lock, path, doing)  # the lock goes when the file closes


def _wait_for_lock(fcntl: object, lock: object, path: Path, doing: str) -> bool:
    end = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # type: ignore[attr-defined]
            return True
        except BlockingIOError:
            if time.monotonic() > end:
                log.warning("openvino: %s held over %.0f s; %s here too", path, LOCK_WAIT_S, doing)
                return False
            time.sleep(0.1)
        except OSError:  # a filesystem without locks
            return False


def _lock_file(folder: Path) -> Path:
    """Where the processes converting into ``folder`` take turns (beside it: the folder is renamed into place)."""
    return folder.parent / f".{folder.name}.lock"


STALE_TMP_S = 3600.0  # a save takes seconds: a .tmp-* folder this old was left by a process that died in one


def _save_openvino(ov: object, model: object, folder: Path) -> bool:
    """Write the converted graph next to the cache atomically (a folder renamed into place), so that
    several processes starting at once never read a half-written one. A failure only costs speed.
    True when the folder now holds a graph (this one, or another process's). Called under the conversion
    lock; it also removes the stale .tmp-* folders there (_sweep_stale_tmp)."""
    tmp: Path | None = None
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        _sweep_stale_tmp(folder.parent)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".tmp-"))
        ov.save_model(model, tmp / "model.xml", compress_to_fp16=False)  # type: ignore[attr-defined]
        try:
            tmp.rename(folder)
            tmp = None
        except OSError:  # another process got there first: its graph serves
            pass
    except Exception as e:  # OSError, and OpenVINO's RuntimeError ("Can't open bin file", a full disk: its own
        # words "basic_ios::clear: iostream error")
        log.warning("openvino: could not cache the converted model in %s: %s%s", folder, e, low_space(folder))
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    try:
        return (folder / "model.xml").is_file()
    except OSError:  # (a folder another user made: not ours to look in)
        return False


def _sweep_stale_tmp(parent: Path) -> None:
    """Remove the .tmp-* folders under ``parent`` older than STALE_TMP_S (a process killed mid-save)."""
    now = time.time()
    for tmp in parent.glob(".tmp-*"):
        with contextlib.suppress(OSError):  # gone meanwhile, or not ours to remove: left
            if tmp.is_dir() and now - tmp.stat().st_mtime > STALE_TMP_S:
                shutil.rmtree(tmp, ignore_errors=True)


def _onnxruntime(
    module: nn.Module, example: tuple[torch.Tensor, ...], bf16: bool, threads: int, form: str, scale: int,
    quantize: int8.Quantizer | None = None,
) -> Run:
    """As _openvino (``scale`` unused: no fixed-shape graphs here; ``quantize`` refused: make_backend does)."""
    if quantize is not None:
        raise ValueError("onnxruntime runs no int8 graphs here")
    import io

    import onnxruntime as ort

    names = [f"in{i}" for i in range(len(example))]
    module = winograd(module) if form == WINOGRAD_FORM else module
    buffer = io.BytesIO()
    with torch.no_grad(), warnings_ignored():
        torch.onnx.export(
            module, example, buffer,  # type: ignore[arg-type]  # (dynamo=False's exporter writes to a file object too)
            input_names=names, output_names=["out"], dynamo=False, opset_version=17,
            dynamic_axes={n: {0: "n", 2: "h", 3: "w"} for n in names} | {"out": {0: "n", 2: "H", 3: "W"}},
        )
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    options.enable_mem_pattern = False  # its memory plans, one per input shape seen, are never freed: a leak per size
    session = ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])

    def run(*arrays: np.ndarray) -> np.ndarray:
        feed = dict(zip(names, arrays))
        stop = stopping.current()
        if stop is None:
            return session.run(None, feed)[0]
        return _run_stoppable(ort, session, feed, stop)

    return run


def _run_stoppable(ort: Any, session: Any, feed: dict[str, np.ndarray], stop: Callable[[], bool]) -> np.ndarray:
    """One ONNX Runtime call that this thread's test (``adain.stopping``) may stop: run on a helper thread while
    this one looks at the test every POLL_MS, and terminated once it says stop (``RunOptions.terminate``: the run
    ends at its next node), raising StoppedError. (The test is asked on this thread, as OpenVINO's is.)"""
    options = ort.RunOptions()
    done: list[Any] = []

    def call() -> None:
        try:
            done.append(session.run(None, feed, options)[0])
        except Exception as e:  # (handed to the caller's thread below)
            done.append(e)

    worker = threading.Thread(target=call, name="onnxruntime-call", daemon=True)
    worker.start()
    while True:
        worker.join(stopping.POLL_MS / 1000)
        if not worker.is_alive():
            break
        if stop():
            options.terminate = True
            worker.join()
            raise StoppedError("cancelled")
    if isinstance(done[0], Exception):
        raise done[0]
    return done[0]
