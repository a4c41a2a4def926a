"""``adain-server`` / ``python -m adain.server``: run the AdaIN style-transfer gRPC server."""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from adain.commands import quiet_grpc
from adain.files import temp_fallback, temp_problem
from adain.wire import host_port

from . import logs

if TYPE_CHECKING:
    from adain.tiling import Tiling
from .config import (
    PORT_TAKEN_HINT,
    Settings,
    compile_sizes,
    parse_settings,
    settings_warnings,
    unknown_variables,
)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:  # Ctrl-C while the model loads, or a second one during shutdown
        return 130


def _main(argv: Sequence[str] | None) -> int:
    # gRPC's core logs at INFO in its own plain format (a failed TLS handshake: one line per stray connection),
    # past --log-format json; its errors still show. GRPC_VERBOSITY set in the environment wins.
    quiet_grpc()
    settings = parse_settings(argv)
    logs.setup(settings.log_level, settings.log_format)
    log = logging.getLogger("adain.server")
    for warning in unknown_variables() + settings_warnings(settings, argv):
        log.warning("%s", warning)
    from .library import StyleLibrary

    try:  # before the model loads (seconds): a bad style, certificate or token file fails the start at once
        _check_files(settings)
        limits, folder = settings.limits, settings.styles_dir
        library = StyleLibrary(folder, limits.max_pixels, limits.max_styles, limits.style_size) if folder else None
    except ValueError as e:
        logs.fatal(str(e))
        return 2
    if why := _host_error(settings.host):  # (was gRPC's log line and a taken port's hint) a setting's fault: exit 2
        logs.fatal(f"cannot listen on {host_port(settings.host, settings.port)}: {why}")
        return 2
    if busy := _busy_port(settings):  # the same error the start would end with, seconds later
        logs.fatal(busy)
        return 1
    if no_temp := temp_problem():  # the warm-up failed on it after the model loaded, a restart loop
        logs.fatal(f"{no_temp}; the server needs one (torch's compile cache, as the model warms up)")
        return 2
    if fallback := temp_fallback():
        log.warning("%s", fallback)

    import torch

    from adain.compiled import batch_steps
    from adain.errors import NoDecoderError
    from adain.precision import cpu_quota
    from adain.stylizer import Stylizer
    from adain.tiling import Tiling

    from .app import serve

    if settings.torch_threads > 0:
        torch.set_num_threads(settings.torch_threads)
    elif (quota := cpu_quota()) is not None and quota < torch.get_num_threads():
        torch.set_num_threads(quota)  # a container's CPU limit: not one thread a core of the node
        log.info("torch threads: %d (this container's CPU limit or affinity)", quota)
    device = None if settings.device == "auto" else settings.device
    if device is not None and device.startswith("cuda") and not torch.cuda.is_available():
        logs.fatal(f"--device {device}: CUDA is not available here")
        return 2
    settings = settings.for_device(device.startswith("cuda") if device else torch.cuda.is_available())
    try:
        tiling = Tiling(settings.tile_threshold, tile=settings.tile_size, halo=settings.tile_halo)
    except ValueError as e:
        logs.fatal(f"--tile-threshold/--tile-size/--tile-halo: {e}")
        return 2
    try:
        stylizer = Stylizer(
            decoder=settings.decoder,
            device=device,
            precision=settings.precision,
            backend=settings.backend,
            compile_shapes=[(n, h, w) for h, w in compile_sizes(settings.compile_sizes)
                            for n in batch_steps(settings.max_batch_size)],
            tiling=tiling,
            limits=settings.limits,
            cache_size=settings.style_cache_size,
        )
    except (NoDecoderError, ValueError, RuntimeError) as e:  # no decoder; a backend asked for and unusable
        logs.fatal(str(e))
        return 2
    log.info("model loaded: %s", stylizer.info)
    largest = min(stylizer.limits.max_pixels, stylizer.limits.max_content_side ** 2)  # (contents are scaled to it)
    if stylizer.device.type == "cpu" and (short := _memory_short(stylizer.tiling, largest)):
        log.warning("%s", short)
    if not settings.max_connections:  # (the 33rd connection under ulimit -n 64 was refused with no word anywhere)
        log.info("client connections: at most %d at once (--max-connections 0: half the open-file limit); beyond, "
                 "a new one is closed as it comes", settings.connections())
    _exit_now(asyncio.run(serve(settings, stylizer, library=library)))


def _memory_short(tiling: Tiling, largest: int) -> str | None:
    """A warning where this process may use less memory than one render its tiling allows takes (a photo at the
    threshold rendered whole, or one tile of a larger one; with tiling off, the largest content): in a 1-GiB
    container the threshold's 1-MP floor and a 2.5-GB tile got the server killed for memory by a 768-px photo, with
    no word at the start."""
    from adain.tiling import BYTES_PER_PIXEL, mem_total

    limit = mem_total()
    if tiling.threshold > 0:
        need = max(tiling.peak_bytes(), tiling.threshold * BYTES_PER_PIXEL)
        what = f"a photo of {tiling.threshold:,} px whole, or one {tiling.tile}-px tile of a larger one"
        fix = "a smaller --tile-size and --tile-threshold"
    else:  # never tiled: the largest content whole
        need, what = largest * BYTES_PER_PIXEL, f"a photo of {largest:,} px, rendered whole: tiling is off"
        fix = "tiling on (--tile-threshold), or a lower --max-pixels or --max-content-side"
    if need <= limit:
        return None
    return (f"this process may use {limit / 2**30:.1f} GiB (its container's limit, or the machine's), and one render "
            f"takes up to {need / 2**30:.1f} GiB ({what}): such a photo may get the server killed for memory. Give "
            f"it more memory, or {fix}")


def _exit_now(code: int) -> NoReturn:
    """End the process once the drain is done, without the interpreter's finalization. Nothing is left to
    finalize (calls drained, servers stopped, logs flushed), but tearing down the C++ runtimes (gRPC's core,
    OpenVINO, torch) beside idle daemon threads can abort: a clean drain once exited SIGABRT (-6) in CI, which
    a Kubernetes rollout shows as a crashed pod."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _busy_port(settings: Settings) -> str | None:
    """The error for the first port the server is to listen on that another process already listens on, found
    before the model loads (a start with a taken port failed only after it, seconds later; a rollout's crash
    loop paid them every time). A probe: only a refused bind counts; anything else (a name that does not resolve
    or is malformed, a port that is taken between this and the real start) is left to the start itself, which
    checks again. gRPC takes a port when it can bind any address of the host (``[::]`` falls back to 0.0.0.0),
    so its ports are busy only when every one is; the metrics exporter binds the first address alone."""
    host, in_use = settings.host, os.strerror(errno.EADDRINUSE)
    at = functools.partial(host_port, host)
    # A second server on one machine trips on the fixed defaults: say what gets it going (--port 0 picks a free
    # port; --metrics-port 0 or negative serves no metrics, see config.py's help: no free-port choice there).
    ports = [(settings.port, True,
              f"cannot listen on {at(settings.port)}: {in_use} {PORT_TAKEN_HINT}"),
             (settings.metrics_port, False,
              f"cannot serve metrics on {at(settings.metrics_port)}: {in_use} (another adain-server? give "
              "--metrics-port 0 to serve no metrics, or another port)"),
             (settings.health_port, True, f"cannot listen on {at(settings.health_port)} (--health-port): {in_use}")]
    for port, grpc_like, error in ports:
        if port > 0 and _listened_on(host, port, grpc_like):
            return error
    return None


def _listened_on(host: str, port: int, every_address: bool) -> bool:
    name = host.strip("[]")
    try:
        addresses = [a[:3] + a[4:] for a in socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)]
    except (OSError, ValueError):  # no such name here; a malformed one (UnicodeError): the start's own error
        return False
    if name == "::":
        addresses.append((socket.AF_INET, socket.SOCK_STREAM, 0, ("0.0.0.0", port)))
    refused = [_bind_refused(*a) for a in (addresses if every_address else addresses[:1])]
    return bool(refused) and all(refused)


def _host_error(host: str) -> str | None:
    """Why the server cannot listen on ``host`` at all, before the model loads: a name that does not resolve
    (found after it, by the metrics exporter), an address no interface of this machine has (gRPC's log line)."""
    hint = "give one of this machine's addresses or names, or 0.0.0.0 or [::] for all of them"
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host.strip("[]"), 0, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        return f"{e.strerror} (--host: {hint})"
    except (OSError, ValueError) as e:  # a malformed name (UnicodeError): gRPC failed it after the model loaded
        return f"not a host name or address: {e} (--host: {hint})"
    try:
        with socket.socket(family, kind, proto) as probe:
            probe.bind(address)
    except OSError as e:
        if e.errno == errno.EADDRNOTAVAIL:
            return (f"{e.strerror} (--host {host} is no address of this machine: give one of its own, or 0.0.0.0 "
                    "or [::] for all of them)")
    return None


def _bind_refused(family: int, kind: int, proto: int, address: tuple) -> bool:
    try:
        with socket.socket(family, kind, proto) as probe:
            # as the servers bind: an address whose last connection is in TIME_WAIT is free, a listener's is not
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as e:
        return e.errno == errno.EADDRINUSE
    return False


def _check_files(settings: Settings) -> None:
    """Each file a flag names exists, and the certificate and token files read as such; ValueError naming the
    flag (the server reads them again, and follows them, when it starts listening)."""
    from .auth import TlsFiles, TokenFile

    files = {"--decoder": settings.decoder, "--tls-cert": settings.tls_cert, "--tls-key": settings.tls_key,
             "--tls-client-ca": settings.tls_client_ca, "--auth-tokens-file": settings.auth_tokens_file}
    for flag, path in files.items():
        if path and not Path(path).is_file():  # (a folder was "no such file")
            raise ValueError(f"{flag} {path}: {'is a folder, not a file' if Path(path).is_dir() else 'no such file'}")
    try:
        if settings.tls_cert and settings.tls_key:
            TlsFiles(settings.tls_cert, settings.tls_key, settings.tls_client_ca)
        if settings.auth_tokens_file:
            try:
                TokenFile(settings.auth_tokens_file)
            except ValueError as e:  # named by its path: by the flag too
                raise ValueError(f"--auth-tokens-file: {e}") from None
    except OSError as e:
        raise ValueError(f"cannot read {e.filename or 'a TLS or token file'}: {e.strerror or e}") from None


if __name__ == "__main__":
    sys.exit(main())
