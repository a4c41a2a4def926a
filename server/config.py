"""Server settings: every one is a command-line flag and an environment variable.

The variable is ``ADAIN_`` + the flag name in upper case with ``-`` as ``_`` (``--max-batch-size`` is
``ADAIN_MAX_BATCH_SIZE``). A flag given on the command line wins over the variable, which wins over the
default. This module imports no torch, so ``adain-server --help`` is instant.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

from adain.argtypes import (
    OneLineParser,
    int_in_range,
    non_negative_float,
    one_of,
    positive_float,
    unit_interval,
)
from adain.commands import add_version_arg
from adain.precision import BACKENDS, COMPILE_SIZE_RULE, PRECISIONS, is_compile_size
from adain.wire import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    DEFAULT_TEMPORAL,
    DEFAULT_TEMPORAL_STRENGTH,
    MIN_STYLE_SIDE,
    TEMPORAL_MODES,
    Limits,
    bare_host,
)

GPU_BATCH = 8  # --max-batch-size 0 on a GPU (Settings.for_device)
# --max-concurrent-rpcs 0: the calls that hold no queue place get this many places above the queues' own: health
# Watch streams (a client's channel holds one open on each connection), GetServerInfo, ListStyles, messages still
# arriving. At it, ~45 KB a call (the tester's unread ListStyles replies): about 200 MB. Above one caller's
# health Watches (unread.HEALTH_PER_CALLER, 1,024): one address alone cannot fill it.
RPC_MARGIN = 4096
# --max-calls-per-caller 0: a caller's places in the queues, and this many more (quick calls, replies being sent)
CALLER_MARGIN = 16
# --max-connections 0: half the open-file limit, at most this many (an idle connection kept ~18 KB and a file)
MAX_CONNECTIONS_DEFAULT = 10_000

# what a taken gRPC port is told to do, by the start's probe and by the bind itself alike
PORT_TAKEN_HINT = "(another adain-server? --port 0 picks a free port, or give another)"

ENV_PREFIX = "ADAIN_"
DEVICES = ("auto", "cpu", "cuda")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclass(frozen=True)
class Settings:
    """What the server is started with (see ``adain-server --help`` for the meaning of each)."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    metrics_port: int = 9464
    health_port: int = 0
    decoder: str | None = None
    device: str = "auto"
    precision: str = "auto"
    backend: str = "auto"
    compile_sizes: str = "512x512"
    torch_threads: int = 0
    max_batch_size: int = 0  # 0: by the device (for_device)
    max_batch_delay_ms: float = 0
    max_queue: int = 64
    max_queue_per_caller: int = 0
    workers: int = 0
    max_message_mb: float = 32
    max_pixels: int = Limits.max_pixels
    max_content_side: int = Limits.max_content_side
    style_size: int = Limits.style_size
    max_styles: int = Limits.max_styles
    style_registry_size: int = 256
    style_registry_mb: float = 1024
    styles_dir: str | None = None
    style_cache_size: int = 64
    tile_threshold: int = -1
    tile_size: int = 768
    tile_halo: int = 64
    max_refine_steps: int = Limits.max_refine_steps
    max_refine_jobs: int = 1
    max_refine_queue: int = 4
    max_video_frames: int = 9000
    max_video_streams: int = 2
    video_window: int = 4
    video_idle_s: float = 60
    temporal: str = DEFAULT_TEMPORAL
    temporal_strength: float = DEFAULT_TEMPORAL_STRENGTH
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    auth_tokens_file: str | None = None
    grace_seconds: float = 10
    render_stuck_s: float = 300
    trim_interval_s: float = 10
    max_connection_age_s: float = 300
    max_connection_idle_s: float = 120
    keepalive_s: float = 30
    max_connections: int = 0
    max_concurrent_streams: int = 128
    max_concurrent_rpcs: int = 0
    max_calls_per_caller: int = 0
    message_timeout_s: float = 60
    replica_name: str = ""
    log_level: str = "INFO"
    log_format: str = "text"

    @property
    def limits(self) -> Limits:
        """The limits the Stylizer enforces (and GetServerInfo reports)."""
        return Limits(
            max_pixels=self.max_pixels,
            max_content_side=self.max_content_side,
            style_size=self.style_size,
            max_styles=self.max_styles,
            max_refine_steps=self.max_refine_steps,
        )

    @property
    def per_caller(self) -> int:
        """--max-queue-per-caller as enforced: 0 is half of --max-queue; never above it."""
        wanted = self.max_queue_per_caller or (self.max_queue + 1) // 2
        return max(1, min(wanted, self.max_queue))

    @property
    def concurrent_rpcs(self) -> int:
        """--max-concurrent-rpcs as enforced: 0 is every place the queues hold (fast requests queued and
        rendering, long jobs, video streams) plus RPC_MARGIN for quick calls (health, info, lists, uploads)."""
        if self.max_concurrent_rpcs:
            return self.max_concurrent_rpcs
        return (self.max_queue + self.max_batch_size + self.max_refine_jobs + self.max_refine_queue
                + self.max_video_streams + RPC_MARGIN)

    def for_device(self, cuda: bool) -> Settings:
        """What depends on the device, settled: --max-batch-size 0 is GPU_BATCH on a GPU and 1 on a CPU, where a
        batch adds no throughput (compute-bound: 3.40 images/s with batches of 8 against 3.98 with 1, 4 clients at
        512 px, README) and a batch of 8 at 512 px renders for seconds, each request waiting for the others."""
        return replace(self, max_batch_size=self.max_batch_size or (GPU_BATCH if cuda else 1))

    @property
    def caller_calls(self) -> int:
        """Most calls one caller can have admitted at once: its share of the queue, the video streams and the
        long jobs. Its channel carries them all on one connection, so --max-concurrent-streams must hold them."""
        return self.per_caller + self.max_video_streams + self.max_refine_jobs + self.max_refine_queue

    @property
    def calls_per_caller(self) -> int:
        """--max-calls-per-caller as enforced: 0 is what one caller may have admitted (caller_calls) and
        rendering (--max-batch-size) plus CALLER_MARGIN for its quick calls and replies on their way."""
        return self.max_calls_per_caller or self.caller_calls + self.max_batch_size + CALLER_MARGIN

    def connections(self, open_files: int | None = None) -> int:
        """--max-connections as enforced: 0 is half the process's open-file limit (each connection is a file;
        at the limit every call failed, a good caller's too), at most MAX_CONNECTIONS_DEFAULT."""
        if self.max_connections:
            return self.max_connections
        if open_files is None:
            import resource

            open_files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            open_files = MAX_CONNECTIONS_DEFAULT * 2 if open_files == resource.RLIM_INFINITY else open_files
        return max(16, min(MAX_CONNECTIONS_DEFAULT, open_files // 2))

    @property
    def max_message_bytes(self) -> int:
        return int(self.max_message_mb * 1024 * 1024)

    def replace(self, **changes: Any) -> Settings:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return Settings(**values)


def _path(what: str) -> Callable[[str], str]:
    """A file or folder's path. An empty one is an error, not "unset": ``ADAIN_TLS_CERT=`` or
    ``--auth-tokens-file ''`` started a plaintext server with no tokens without a word (an empty ADAIN_PORT was
    an error already)."""

    def check(text: str) -> str:
        if not text.strip():
            raise argparse.ArgumentTypeError(f"an empty path (give a {what}, or leave it unset)")
        return text

    return check


_FILE, _FOLDER = _path("file"), _path("folder")

# More threads than this helped no machine and broke the start: --torch-threads 100000 was a segfault (exit 139,
# no word), 5000 never warmed up, --workers 100000 a traceback ("can't start new thread").
MAX_THREADS = 1024
_THREADS = int_in_range(0, MAX_THREADS)
# Longest --max-batch-delay-ms: 1e9 was taken (a lone request waited 11 days); a batch window is milliseconds (the
# tests hold batches for up to 60 s with it).
MAX_BATCH_DELAY_MS = 60_000
MAX_REPLICA_NAME = 128


def _batch_delay(text: str) -> float:
    value = non_negative_float(text)
    if value > MAX_BATCH_DELAY_MS:
        raise argparse.ArgumentTypeError(f"must be in [0, {MAX_BATCH_DELAY_MS}] ms, got {text}")
    return value


def _replica_name(text: str) -> str:
    """Sent as the x-served-by metadata value: gRPC takes printable ASCII alone. 'pod é' or a newline started a
    server whose every call then failed on the client (INTERNAL "Invalid metadata") while it logged code=OK."""
    if len(text) > MAX_REPLICA_NAME or not all(" " <= c <= "~" for c in text):
        raise argparse.ArgumentTypeError(f"must be at most {MAX_REPLICA_NAME} printable ASCII characters (space to "
                                         f"'~': it is sent as gRPC metadata), got {text!r}")
    return text


def _host(text: str) -> str:
    """An address or name to listen on; an IPv6 address bare (::1) or in brackets ([::1])."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty address (give one of this machine's addresses or names, or "
                                         "0.0.0.0 or [::] for every interface)")
    inner = bare_host(text)
    if "[" in inner or "]" in inner or (inner is not text and ":" not in inner):
        raise argparse.ArgumentTypeError(f"brackets go around an IPv6 address alone ([::1]), got {text!r}")
    return text



def _side_port(text: str) -> int:
    """A port of its own, or off (0 or negative); gRPC took 99999 as 99999 mod 65536 without a word."""
    value = int_in_range(-(2**31))(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be a port (at most 65535), or 0 or negative for none; got {value}")
    return value


def _message_mb(text: str) -> float:
    """The message limit: under 64 KiB not even a thumbnail's reply fits (every call failed, health SERVING);
    gRPC takes at most 2**31 - 1 bytes (1e9 MiB was a traceback at start)."""
    value = positive_float(text)
    if not 1 / 16 <= value <= 2047:
        raise argparse.ArgumentTypeError(f"must be in [0.0625, 2047] MiB, got {text}")
    return value


def compile_sizes(text: str) -> list[tuple[int, int]]:
    """``--compile-sizes``: HxW[,HxW...] (content sizes as the encoder pads them: multiples of 8, >= 16)."""
    sizes = []
    for part in text.replace(" ", "").lower().split(","):
        h, sep, w = part.partition("x")
        if not (sep and h.isdigit() and w.isdigit() and is_compile_size(int(h), int(w))):
            raise argparse.ArgumentTypeError(f"must be HxW[,HxW...] with {COMPILE_SIZE_RULE}, got {text!r}")
        sizes.append((int(h), int(w)))
    return sizes


def _compile_sizes(text: str) -> str:
    compile_sizes(text)
    return text


# A server's tiles need this much context to meet unseen: an outside tester measured the tiled output's distance
# from the untiled at tile borders (and at tile centres) as 40 (3.4) levels at a halo of 0, 17.5 (2.2) at 8, 6.6 (1.1)
# at 16 and 0.7 (0.7) at 32, and saw a grid at 0 that the flag took without a word.
MIN_TILE_HALO = 32


def _count(low: int) -> Callable[[str], int]:
    """A whole number >= low that fits the proto's 32-bit fields (GetServerInfo reports the limits): above
    2**31 - 1 the server failed at start with a traceback, after loading its model."""
    return int_in_range(low, 2**31 - 1)


def _style_room(low: int, what: str) -> Callable[[str], int]:
    """A limit under which no style fits (a style's shorter side needs MIN_STYLE_SIDE px): every call would
    fail, the start's warm-up first (a traceback, after loading the model)."""
    count = _count(1)

    def check(text: str) -> int:
        value = count(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low} ({what}), got {text}")
        return value

    return check


_STYLE_PIXELS = _style_room(MIN_STYLE_SIDE**2, f"a style of {MIN_STYLE_SIDE} x {MIN_STYLE_SIDE} px")
_STYLE_SIDE = _style_room(MIN_STYLE_SIDE, f"a style's shorter side needs {MIN_STYLE_SIDE} px")


def _connection_age(text: str) -> float:
    """gRPC takes it in milliseconds as a 32-bit int: 30 days failed the start with an OverflowError."""
    value = non_negative_float(text)
    most = (2**31 - 1) // 1000
    if value > most:
        raise argparse.ArgumentTypeError(f"must be at most {most} s (24.8 days: gRPC counts milliseconds in 32 bits; "
                                         f"0: never), got {text}")
    return value


KEEPALIVE_TIMEOUT_S = 20.0  # how long a ping's answer is waited for (gRPC's default), at most: --keepalive-s


def _keepalive(text: str) -> float:
    """A ping a second at most: gRPC took 1 ms, a ping a millisecond on every connection."""
    value = _connection_age(text)
    if 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be 0 (never) or at least 1 s, got {text}")
    return value


def _registry_mb(text: str) -> float:
    """At least a KiB: below a byte, the registry's limit came to 0 and the start failed with a traceback."""
    value = positive_float(text)
    if value < 1 / 1024:
        raise argparse.ArgumentTypeError(f"must be at least 1/1024 MiB (1 KiB), got {text}")
    return value


def _strength(text: str) -> float:
    """[0, 1): one range in every message (-0.1 was told [0, 1], 1 was told [0, 1))."""
    try:
        value = unit_interval(text)
    except argparse.ArgumentTypeError:
        value = -1.0
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def _device(text: str) -> str:
    value = text.lower()
    if value not in DEVICES and not value.startswith("cuda:"):
        raise argparse.ArgumentTypeError(f"must be auto, cpu, cuda or cuda:N, got {text!r}")
    return value


# flag name -> (type, help). The default comes from Settings.
_OPTIONS: dict[str, tuple[Callable[[str], Any], str]] = {
    "host": (_host, "address to listen on (0.0.0.0 or [::] for every interface; an IPv6 address bare or in "
             "brackets)"),
    "port": (int_in_range(0, 65535), "gRPC port; 0 picks a free port (the 'listening on' line shows it)"),
    "metrics-port": (_side_port, "Prometheus metrics HTTP port (on --host); 0 or negative disables"),
    "health-port": (_side_port, "a second, plaintext port serving only gRPC health, for probes that speak no TLS "
                    "or tokens (Kubernetes' gRPC probes); 0 or negative: none"),
    "decoder": (_FILE, "decoder weights file (adain.decoder.save_decoder format)"),
    "device": (_device, "auto (cuda when available, else cpu), cpu, cuda or cuda:N"),
    "precision": (one_of(PRECISIONS), "auto (bf16 on a GPU and on a CPU with AVX512-BF16 or AMX, detected at start; "
                  "float32 elsewhere), bf16, fp32, or int8 (OpenVINO on a CPU, the networks quantized at the "
                  "first start: faster, pixels a few levels off; the 'int8' extra: pip install 'adain[int8]')"),
    "backend": (one_of(BACKENDS), "what runs the encoder and decoder: auto (OpenVINO on a CPU when installed, else "
                "torch), torch, compiled (torch.compile, for a GPU: ~16-20 s a shape at start, 3 shapes by "
                "default), openvino or onnxruntime (the 'fast' extra: pip install 'adain[fast]')"),
    "compile-sizes": (_compile_sizes, "with --backend compiled: the content sizes (HxW[,HxW...], as padded to "
                      "multiples of 8) compiled at start, each at batch sizes up to --max-batch-size (~16-20 s "
                      "a shape on a GPU's host); other sizes run eager: list the sizes callers send (512x384 too)"),
    "torch-threads": (_THREADS, "torch intra-op threads (OpenVINO uses as many); 0: one a core, or the "
                      "container's CPU limit (cgroup cpu.max) or affinity where lower; at most "
                      f"{MAX_THREADS}"),
    "max-batch-size": (_count(0), f"most requests rendered in one batch; 0: {GPU_BATCH} on a GPU, 1 on a CPU (where "
                       "batching adds no throughput and a batch's requests wait for each other)"),
    "max-batch-delay-ms": (_batch_delay, "longest time the oldest request waits for a batch to fill; 0: "
                           "none, a batch is what queued while the last one rendered (a wait bought no throughput "
                           "on a CPU and ~17%% on an H200 at 512 px, and cost its length in latency); at most "
                           f"{MAX_BATCH_DELAY_MS}"),
    "max-queue": (_count(1), "most Stylize requests admitted and not yet rendering; beyond: RESOURCE_EXHAUSTED"),
    "max-queue-per-caller": (_count(0), "most of --max-queue one caller may hold (callers: a token's name, "
                             "else the peer's address; they take turns); 0: half of --max-queue"),
    "workers": (_THREADS, "threads that decode and validate requests (Stylizer.prepare) and encode replies; "
                "0: 2 on a CPU (the model takes the cores), one a usable CPU on a GPU (they are the work there); "
                f"at most {MAX_THREADS}"),
    "max-message-mb": (_message_mb, "largest gRPC message received or sent, MiB (0.0625 to 2047: gRPC counts bytes "
                       "in 32 bits)"),
    "max-pixels": (_STYLE_PIXELS, "largest content, style or mask image, in pixels (width x height)"),
    "max-content-side": (_STYLE_SIDE, "longest side a content is rendered at; also the limit of content_size and "
                         "style_size"),
    "style-size": (_STYLE_SIDE, "longest side styles are scaled to when a request leaves style_size at 0"),
    "tile-threshold": (int_in_range(-1, 1 << 40), "contents over this many pixels render in tiles (bounded memory); "
                       "-1: from the machine's memory (a quarter of it at 3 KB a pixel), 0: never"),
    "tile-size": (_count(1), "tile side in pixels (a multiple of 8); with the halo it sets a tile's memory"),
    "tile-halo": (_count(MIN_TILE_HALO), f"pixels of context around each tile (a multiple of 8, at least "
                  f"{MIN_TILE_HALO}: below, tile borders show); tiles blend across it"),
    "max-styles": (_count(1), "most styles in one request"),
    "style-registry-size": (_count(1), "most styles kept by RegisterStyle; when full, the least recently used style "
                            "of the caller holding the most goes (a caller's flood evicts its own)"),
    "style-registry-mb": (_registry_mb, "most bytes of style images kept by RegisterStyle, MiB"),
    "styles-dir": (_FOLDER, "a folder of style images that requests name by file stem (Style.style_id "
                   "\"mosaic\" for mosaic.jpg; ListStyles lists them); read again when it changes"),
    "style-cache-size": (_count(1), "style feature cache entries (by image hash and size)"),
    "max-refine-steps": (_count(0), "most optimisation iterations (refine_steps) of one request; 0 turns "
                         "the optimisation method off"),
    "max-refine-jobs": (_count(1), "optimisation requests running at once, outside the batch of fast requests"),
    "max-refine-queue": (_count(0), "optimisation requests waiting for a place; beyond: RESOURCE_EXHAUSTED"),
    "max-video-frames": (_count(1), "most frames in one StylizeVideo stream"),
    "max-video-streams": (_count(1), "most StylizeVideo streams at once; beyond: RESOURCE_EXHAUSTED"),
    "video-window": (_count(1), "frames of one video stream being prepared, rendered or sent at once"),
    "video-idle-s": (positive_float, "a video stream whose client sends no frame, or takes no reply, for this "
                     "long is ended (DEADLINE_EXCEEDED), so a paused or vanished client keeps no stream's place; "
                     "the no-frame clock runs only while none of its frames is on the server (from its last reply)"),
    "temporal": (one_of(TEMPORAL_MODES), f"temporal mode of video streams that do not choose one: "
                 f"{', '.join(TEMPORAL_MODES)}"),
    "temporal-strength": (_strength, "how much of the past a video frame keeps, in [0, 1), when a stream "
                          "does not say"),
    "tls-cert": (_FILE, "PEM certificate chain file; with --tls-key, serve TLS"),
    "tls-key": (_FILE, "PEM private key file; with --tls-cert, serve TLS"),
    "tls-client-ca": (_FILE, "PEM CA certificate(s): with TLS, require a client certificate signed by one "
                      "(mutual TLS). The TLS files are read again when they change"),
    "auth-tokens-file": (_FILE, "file of accepted bearer tokens, one per line as [NAME] TOKEN (the token "
                         "16+ characters; the name is the caller in logs and queue turns; # comments): "
                         "calls without 'authorization: Bearer <token>' get UNAUTHENTICATED (health stays open); "
                         "read again when it changes"),
    "grace-seconds": (non_negative_float, "on SIGTERM, SIGHUP or Ctrl-C (SIGINT), how long work in flight may "
                      "take to finish"),
    "render-stuck-s": (non_negative_float, "a batch, or a long job's step (refine iteration, tile), still "
                       "running after this long and after 10x its expected time by the running averages sets health "
                       "NOT_SERVING until it ends (a hung runtime: readiness takes the replica out, liveness "
                       "restarts it); 0: never"),
    "trim-interval-s": (non_negative_float, "this often, give the heap pages that calls freed back to the system "
                        "(glibc's malloc_trim, ~10 ms off the request path: each thread's heap kept what its largest "
                        "call had freed, so resident memory rose with every thread that ran a large one); 0: never"),
    "max-connection-age-s": (_connection_age, "close each client connection after this long (gracefully), so "
                             "clients re-resolve and balance onto new replicas; 0: never"),
    "max-connection-idle-s": (_connection_age, "close a client connection that has had no call for this long "
                              "(gracefully: a gRPC client reconnects at its next call), so idle connections hold "
                              "no file; 0: never"),
    "keepalive-s": (_keepalive, "ping a client connection with calls in flight after this long without a frame "
                    "from it, and close it when the ping goes unanswered for this long again (at most 20 s): its "
                    "calls are cancelled and their places freed (a client gone without a word, a dead link or a frozen "
                    "host, held its stream or refine job to the end); clients may ping this often too; 0: never"),
    "max-connections": (_count(0), "most client connections at once; beyond, a new one is closed as it comes; 0: "
                        f"half the open-file limit, at most {MAX_CONNECTIONS_DEFAULT}"),
    "max-concurrent-streams": (_count(1), "most calls at once on one client connection (HTTP/2 streams; a "
                               "client's further calls wait for a place on its side); at least what one caller may "
                               "have admitted: its queue share, the video streams and the long jobs"),
    "max-concurrent-rpcs": (_count(0), "most calls at once on the server, over every connection; beyond, gRPC "
                            "answers RESOURCE_EXHAUSTED at once (health checks on --port too: give probes "
                            "--health-port); 0: --max-queue + --max-batch-size + --max-refine-jobs + "
                            f"--max-refine-queue + --max-video-streams + {RPC_MARGIN}"),
    "max-calls-per-caller": (_count(0), "most calls one caller (a token's name, a front end's user, else the "
                             "peer's address) may have on the server at once; beyond, RESOURCE_EXHAUSTED at once, "
                             "so one caller cannot take every place of --max-concurrent-rpcs; 0: its queue share + "
                             "--max-video-streams + --max-refine-jobs + --max-refine-queue + --max-batch-size + "
                             f"{CALLER_MARGIN}"),
    "message-timeout-s": (non_negative_float, "longest a call's request message may take to arrive, from the call's "
                          "start; beyond, the call ends (DEADLINE_EXCEEDED), so a stream that never sends its message "
                          "holds no place; 0: never"),
    "replica-name": (_replica_name, f"this replica's name in the x-served-by reply metadata (at most "
                     f"{MAX_REPLICA_NAME} printable ASCII characters)"),
    "log-level": (one_of(LOG_LEVELS, str.upper), "DEBUG, INFO, WARNING or ERROR"),
    "log-format": (one_of(("text", "json")), "text (a line for a person) or json (an object a line, a call's fields "
                   "as keys, for a log pipeline)"),
}


# Defaults that are not a value of their own: what the server uses in their place (each help shows one default)
_SHOWN_DEFAULTS = {"decoder": "the decoder shipped in the package", "replica-name": "hostname:port"}


class _BadVariable:
    """An ADAIN_* variable that does not convert: an error naming the variable, unless its flag is given (not a
    str, or argparse would convert it again and name the flag)."""

    def __init__(self, message: str) -> None:
        self.message = message

    def __str__(self) -> str:
        return self.message


def env_name(flag: str) -> str:
    return ENV_PREFIX + flag.upper().replace("-", "_")


# ADAIN_* variables that are not the server's flags, read by the rest of the package (the client, the CLI, the
# graph cache and its bound, OpenVINO's telemetry switch, the demo script)
OTHER_VARIABLES = ("ADAIN_CACHE_DIR", "ADAIN_CACHE_MAX_MB", "ADAIN_OPENVINO_TELEMETRY", "ADAIN_SERVER", "ADAIN_TOKEN",
                   "ADAIN_TOKEN_FILE", "ADAIN_WEB_PORT", "ADAIN_SKIP_VENV_TEST")


def unknown_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """Warnings for the ADAIN_* variables no part of the package reads, each with the flag's variable nearest
    its name: a misspelt ADAIN_MAX_QUEUEE=5 was ignored without a word (the default queue served)."""
    import difflib

    environ = os.environ if environ is None else environ
    known = [env_name(flag) for flag in _OPTIONS] + list(OTHER_VARIABLES)
    out = []
    for name in sorted(k for k in environ if k.startswith(ENV_PREFIX) and k not in known):
        near = difflib.get_close_matches(name, known, n=1, cutoff=0.8)
        out.append(f"{name} is no setting of adain-server and is ignored" + (f" (did you mean {near[0]}?)"
                                                                              if near else ""))
    return out


def build_parser(environ: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    environ = os.environ if environ is None else environ
    defaults = Settings()
    parser = OneLineParser(
        prog="adain-server",
        description="AdaIN style-transfer gRPC server (service adain.v1.StyleTransfer, health, reflection, "
        "Prometheus metrics). Every flag can also be set with an environment variable, shown in its help; "
        "a flag on the command line wins.",
    )
    add_version_arg(parser, "adain-server")
    for flag, (kind, help_text) in _OPTIONS.items():
        attr = flag.replace("-", "_")
        default = getattr(defaults, attr)
        env = env_name(flag)
        shown = _SHOWN_DEFAULTS.get(flag, "none" if default in (None, "") else default)
        raw = environ.get(env)
        if raw is not None:  # converted here, so a bad variable is reported by its name (if no flag overrides it)
            try:
                default = kind(raw)
            except (argparse.ArgumentTypeError, ValueError, TypeError) as e:
                default = _BadVariable(f"{env}={raw!r}: {e}")
        parser.add_argument(
            f"--{flag}",
            dest=attr,
            type=kind,
            default=default,
            metavar=attr.upper(),
            help=f"{help_text} (default: {shown}; env {env})",
        )
    return parser


def _on_command_line(flag: str, argv: Sequence[str]) -> bool:
    return any(a == f"--{flag}" or a.startswith(f"--{flag}=") for a in argv)


def _named(flag: str, value: Any, argv: Sequence[str], environ: Mapping[str, str]) -> str:
    """How a message names a setting: ``--flag VALUE``, ``ADAIN_FLAG=VALUE`` where it came from the variable, or
    ``--flag VALUE (the default)`` where from neither."""
    if _on_command_line(flag, argv):
        return f"--{flag} {value}"
    return f"{env_name(flag)}={value}" if env_name(flag) in environ else f"--{flag} {value} (the default)"


def _port_clash(ns: argparse.Namespace, argv: Sequence[str], environ: Mapping[str, str]) -> str | None:
    """Two of the server's own listeners on one port: found after the model loaded, as "another adain-server?"
    (exit 1), though no other process was to blame."""
    ports = {"port": ns.port, "metrics-port": ns.metrics_port, "health-port": ns.health_port}
    seen: dict[int, str] = {}
    for flag, port in ports.items():
        if port <= 0:  # 0: a free one; negative: none
            continue
        if port in seen:
            return f"{_named(flag, port, argv, environ)}: the same port as --{seen[port]} (give each its own)"
        seen[port] = flag
    return None


def settings_warnings(settings: Settings, argv: Sequence[str] | None = None,
                      environ: Mapping[str, str] | None = None) -> list[str]:
    """Settings taken, but not as given: warned of at start, not refused (a caller relies on each: the per-caller
    share is capped by design, and benchmarks/grpc_latency.py gives --compile-sizes whatever the backend)."""
    environ = os.environ if environ is None else environ
    argv = list(sys.argv[1:] if argv is None else argv)
    out = []
    if settings.max_queue_per_caller > settings.max_queue:
        out.append(f"{_named('max-queue-per-caller', settings.max_queue_per_caller, argv, environ)} is over "
                   f"--max-queue {settings.max_queue}: one caller may hold the whole queue ({settings.per_caller}), "
                   "no more")
    if settings.max_concurrent_streams < settings.caller_calls:
        out.append(f"{_named('max-concurrent-streams', settings.max_concurrent_streams, argv, environ)} is under the "
                   f"{settings.caller_calls} calls one caller may have admitted (its queue share, video streams and "
                   "long jobs): a caller's calls beyond it wait on its own side instead of being served or refused")
    # (before the device is known, so before the model loads: a batch size 0 counts as the least it becomes, 1)
    queued = settings.max_queue + (settings.max_batch_size or 1)
    if settings.max_concurrent_rpcs and settings.max_concurrent_rpcs < queued:
        out.append(f"{_named('max-concurrent-rpcs', settings.max_concurrent_rpcs, argv, environ)} is under --max-queue"
                   f" + --max-batch-size ({queued}): gRPC refuses calls the queue would take (RESOURCE_EXHAUSTED) "
                   "before they reach it")
    if settings.backend != "compiled" and (_on_command_line("compile-sizes", argv)
                                           or env_name("compile-sizes") in environ):
        out.append(f"{_named('compile-sizes', settings.compile_sizes, argv, environ)} is ignored: only --backend "
                   f"compiled compiles (this server's is {settings.backend})")
    return out


def parse_settings(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    environ = os.environ if environ is None else environ
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(environ)
    ns = parser.parse_args(argv)
    bad = [v for v in vars(ns).values() if isinstance(v, _BadVariable)]
    if bad:
        parser.error(str(bad[0]))
    if bool(ns.tls_cert) != bool(ns.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    if ns.tls_client_ca and not ns.tls_cert:
        parser.error("--tls-client-ca needs --tls-cert and --tls-key (client certificates are checked over TLS)")
    # a default the server's own limit refuses: taken, then every request leaving style_size at 0 was refused
    if ns.style_size > ns.max_content_side:
        parser.error(f"--style-size {ns.style_size} is over --max-content-side {ns.max_content_side}, the limit of "
                     "every side a request asks for (a style's too)")
    if clash := _port_clash(ns, argv, environ):
        parser.error(clash)
    return Settings(**vars(ns))
