"""Runtime choices shared by the Stylizer, the server and the training script: numeric precision, the
runtime backend's name, and what this CPU has (no torch here, so the server's flag parsing stays light).

Machines differ from one session to the next (an AMD EPYC with AVX512-BF16, an Intel Xeon with AVX-512
and no bf16 units, an AMD EPYC with AVX2 only), so choices follow the CPU found at run time:
``precision="auto"`` is bf16 on a GPU and on a CPU with bf16 units (AVX512-BF16 or AMX), where it is
about twice as fast, and float32 elsewhere, where bf16 is emulated and slower. ``"int8"`` (OpenVINO on a
CPU: ``adain.int8``) is faster again but moves the pixels more, so only a caller who asks gets it.
"""

from __future__ import annotations

import contextlib
import functools
import platform
from pathlib import Path

PRECISIONS = ("auto", "bf16", "fp32", "int8")  # int8: inference on a CPU, asked for by name (adain.int8)
TRAIN_PRECISIONS = ("auto", "bf16", "fp32")
# "auto": on a CPU the fastest runtime installed (see adain.backends), on a GPU torch
BACKENDS = ("auto", "torch", "compiled", "openvino", "onnxruntime")
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})  # /proc/cpuinfo names of bf16 units
_SHOWN_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile", "avx_vnni")


# What the compiled backend (adain.compiled) can compile for: the sizes the encoder pads every content to
# (adain.encoder.padded_size: multiples of 8, at least 16), the only ones that reach it.
COMPILE_SIZE_RULE = "sides multiples of 8 and >= 16 (a content is padded to those)"


def is_compile_size(h: int, w: int) -> bool:
    """COMPILE_SIZE_RULE, here without torch: the server checks its flag before it loads a model."""
    return min(h, w) >= 16 and h % 8 == 0 and w % 8 == 0


@functools.cache
def cpu_info() -> tuple[str, frozenset[str]]:
    """(model name, feature flags) of this machine's CPU, read from /proc/cpuinfo; on other systems the
    platform's processor name and no flags (so nothing is assumed)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine() or "unknown", frozenset()
    model, flags = "unknown", frozenset[str]()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model == "unknown":
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = frozenset(value.split())
    return model, flags


def cpu_features() -> list[str]:
    """The flags that decide speed here (SIMD width, bf16 and int8 units), as GetServerInfo shows them."""
    flags = cpu_info()[1]
    return [f for f in _SHOWN_FLAGS if f in flags]


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); without, bf16 is emulated and slow."""
    return bool(BF16_FLAGS & cpu_info()[1])


def cpu_quota(root: Path = Path("/")) -> int | None:
    """The CPUs this process may use, where something limits it below the machine's: the CPUs it may run
    on (affinity, a cpuset) or its container's CPU limit (cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``),
    rounded up. None where neither limits it. torch (and OpenVINO, given torch's count) start one thread a
    core of the node: in a pod limited to 2 CPUs on a 64-core node, 64 threads took turns on 2 CPUs."""
    import math
    import os

    limits = []
    with contextlib.suppress(AttributeError, OSError):
        allowed = len(os.sched_getaffinity(0))
        if allowed < (os.cpu_count() or 0):
            limits.append(allowed)
    for path, period_path in (("sys/fs/cgroup/cpu.max", None),
                              ("sys/fs/cgroup/cpu/cpu.cfs_quota_us", "sys/fs/cgroup/cpu/cpu.cfs_period_us")):
        try:
            text = (root / path).read_text().split()
            quota, period = (text[0], text[1]) if period_path is None else (text[0], (root / period_path).read_text())
            if quota not in ("max", "-1") and int(quota) > 0 and int(period) > 0:
                limits.append(max(1, math.ceil(int(quota) / int(period))))
        except (OSError, ValueError, IndexError):
            continue
    return min(limits) if limits else None


def wants_bf16(precision: str, cuda: bool) -> bool:
    """Whether ``precision`` means bf16 on this device (int8's float parts run float32); refuses an unknown name."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision == "bf16" or (precision == "auto" and (cuda or cpu_has_bf16()))


def before_openvino() -> None:
    """What must be so before OpenVINO (or NNCF) is first imported: a home folder (below), and no telemetry.
    OpenVINO's model conversion and NNCF send usage events to Google Analytics unless the user opted out (a
    consent file in ~/intel): each Stylizer started a process that posted one, 47 on a first start, and with no
    network they hung until their timeout (an interrupted notebook cell filled with their tracebacks). A service
    should not call out unasked: the telemetry package's import is refused here, which both take as "not
    installed" (their own stubs, which send nothing); ``ADAIN_OPENVINO_TELEMETRY=1`` leaves it to OpenVINO's own
    consent. Where the package was imported already (by the caller), it is left as it is."""
    import os
    import sys

    give_openvino_a_home()
    if os.environ.get("ADAIN_OPENVINO_TELEMETRY") != "1":
        sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]  # (None: "import refused")


# malloc replacements that crash OpenVINO (checked with Debian's jemalloc 5.3, tcmalloc-minimal 4, mimalloc 2.0)
FOREIGN_MALLOCS = ("jemalloc", "tcmalloc", "mimalloc")


def preloaded_malloc() -> str:
    """The malloc replacement preloaded into this process (``LD_PRELOAD`` or /etc/ld.so.preload), or "". Under
    one, OpenVINO crashes the whole process as it compiles a graph, even one of a single ReLU (jemalloc: ``free():
    invalid pointer``, tcmalloc: ``free(): invalid size``, mimalloc: a segmentation fault; torch and ONNX Runtime
    run): an operator who preloads jemalloc, a common remedy for a Python service's memory, had a server that died
    at start with that line alone, in a restart loop. The check lets the backend be skipped or refused with a
    reason before the crash."""
    import os

    entries = os.environ.get("LD_PRELOAD", "").replace(":", " ").split()
    with contextlib.suppress(OSError):
        entries += Path("/etc/ld.so.preload").read_text().split()
    for entry in entries:
        if any(name in Path(entry).name for name in FOREIGN_MALLOCS):
            return entry
    return ""


def openvino_malloc_problem() -> str:
    """Why OpenVINO must not run in this process (a preloaded malloc: ``preloaded_malloc``), or "": the one
    reason the openvino backend and int8 both give."""
    malloc = preloaded_malloc()
    return (f"OpenVINO aborts its process under a preloaded malloc ({malloc}: it crashes as it compiles a graph); "
            "start the process without that LD_PRELOAD to run OpenVINO") if malloc else ""


def give_openvino_a_home() -> None:
    """Set HOME to the temporary folder where the process has none (HOME unset and no passwd entry: an arbitrary
    UID, as OpenShift runs pods), before OpenVINO loads: its telemetry asks for the home directory, and OpenVINO
    failed to load ("Could not determine home directory"), --backend auto running torch at half the speed."""
    import os
    import tempfile

    if os.environ.get("HOME"):
        return
    try:
        Path.home()
    except RuntimeError:
        os.environ["HOME"] = tempfile.gettempdir()
