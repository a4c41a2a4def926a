"""The server's lifecycle: build, listen, warm up, serve, drain.

Start-up: the model loads first (a missing decoder fails here), then the gRPC server listens with
health NOT_SERVING, then one dummy stylization warms the model up, and only then is health SERVING.
Shutdown (SIGTERM, Ctrl-C): health goes NOT_SERVING, new calls get UNAVAILABLE, calls in flight finish
(up to ``grace_seconds``), then the gRPC server, the render thread and the metrics endpoint stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from PIL import Image

from adain.backends import generic_shapes
from adain.commands import build_version
from adain.errors import InvalidInputError
from adain.image import input_formats
from adain.job import Job
from adain.memory import can_release, release_freed_memory, resident_bytes
from adain.precision import cpu_quota
from adain.v1 import style_transfer_pb2 as pb
from adain.video import VideoStream
from adain.wire import FEATURES, SERVICE_NAME, TEMPORAL_ENUM, host_port

from . import logs, stalled
from .auth import TlsFiles, TokenAuth, TokenFile, bearer_token, caller_of
from .batcher import Batcher
from .config import KEEPALIVE_TIMEOUT_S, PORT_TAKEN_HINT, Settings
from .drain import Drain
from .errors import reply_limit
from .fairpool import FairExecutor
from .library import BadStyleError, StyleLibrary
from .metrics import Metrics
from .refine import RefineLimits, RefineService
from .registry import StyleRegistry
from .service import StyleTransferServicer, add_servicer, current_caller
from .unread import UnreadRequests
from .video import VideoLimits, VideoService

log = logging.getLogger("adain.server")

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
DRAIN_LINGER_S = 0.5  # after the drain: how long late calls are refused before the server stops


def server_info(settings: Settings, model: dict[str, Any]) -> pb.ServerInfo:
    """GetServerInfo's reply: the model as the Stylizer reports it (limits included: what it enforces),
    the server's own limits and batching settings."""
    limits = model["limits"]
    return pb.ServerInfo(
        model=model["model"],
        arch_version=model["arch_version"],
        weights_version=model["weights_version"],
        decoder_meta_json=json.dumps(model["decoder_meta"], sort_keys=True, default=str),
        device=model["device"],
        dtype=model["dtype"],
        backend=model["backend"],
        precision=model["precision"],
        cpu_model=model["cpu_model"],
        cpu_features=model["cpu_features"],
        input_formats=input_formats(),
        server_version=build_version(),
        features=FEATURES,
        limits=pb.Limits(
            max_pixels=limits["max_pixels"],
            max_content_side=limits["max_content_side"],
            default_style_size=limits["style_size"],
            max_styles=limits["max_styles"],
            max_message_bytes=settings.max_message_bytes,
            style_registry_size=settings.style_registry_size,
            max_video_frames=settings.max_video_frames,
            max_video_streams=settings.max_video_streams,
            video_window=settings.video_window,
            max_refine_steps=limits["max_refine_steps"],
            max_refine_jobs=settings.max_refine_jobs,
            max_refine_queue=settings.max_refine_queue,
            tile_threshold_pixels=model["tiling"]["threshold"],
            tile_size=model["tiling"]["tile"],
            tile_halo=model["tiling"]["halo"],
            tile_memory_bytes=model["tiling"]["tile_memory_bytes"],
            max_refine_pixels=model["max_refine_pixels"] or 0,
            max_calls_per_caller=settings.calls_per_caller,
            max_concurrent_rpcs=settings.concurrent_rpcs,
            max_concurrent_streams=settings.max_concurrent_streams,
            message_timeout_s=settings.message_timeout_s,
        ),
        default_temporal=TEMPORAL_ENUM[settings.temporal],
        default_temporal_strength=settings.temporal_strength,
        batching=pb.Batching(
            max_batch_size=settings.max_batch_size,
            max_batch_delay_ms=settings.max_batch_delay_ms,
            max_queue=settings.max_queue,
            max_queue_per_caller=settings.per_caller,
            prepare_workers=settings.workers,
        ),
    )


def _warmup_images(max_pixels: int = 64 * 64) -> tuple[Image.Image, Image.Image]:
    side = min(64, math.isqrt(max_pixels))  # (--max-pixels 4000 failed the start: 64 x 64 is 4096)
    g = Image.linear_gradient("L").resize((side, side))
    r = Image.radial_gradient("L").resize((side, side))
    return Image.merge("RGB", (g, r, g.transpose(Image.Transpose.ROTATE_90))), Image.merge("RGB", (r, g, r))


REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"


def enable_reflection(server: grpc.aio.Server, names: Sequence[str]) -> None:
    """Server reflection as v1alpha (grpcio-reflection's) and v1, the service's final name: its messages are
    v1alpha's field for field, so one servicer answers both (a tool that speaks only v1 got UNIMPLEMENTED)."""
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    servicer = reflection.aio.ReflectionServicer(names)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(REFLECTION_V1, {
        "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
        ),
    }),))


def prepare_workers(cuda: bool) -> int:
    """--workers 0: on a GPU the model renders a 512-px image in ~7 ms and the prepare threads' decoding and
    encoding (a 512-px PNG: ~100 ms) are the work, so one a usable CPU (an H200's 16: 61 images/s over gRPC where
    2 gave 15); on a CPU the model's threads take the cores, and 2 keep a batch prepared."""
    return max(1, cpu_quota() or os.cpu_count() or 1) if cuda else 2


UNBOUND = "the address is in use or cannot be bound"  # where gRPC gives no reason


def connection_limits(s: Settings) -> list[tuple[str, int]]:
    """gRPC's per-connection limits: an outside tester held 20,000 streams on one connection and 21,000 idle
    connections (every file the process could open: a good caller's call then failed)."""
    options = [("grpc.max_concurrent_streams", s.max_concurrent_streams),
               ("grpc.max_allowed_incoming_connections", s.connections())]
    if s.max_connection_idle_s > 0:  # a client's channel reconnects at its next call
        options.append(("grpc.max_connection_idle_ms", int(s.max_connection_idle_s * 1000)))
    return options + keepalive_options(s.keepalive_s)


def keepalive_options(keepalive_s: float) -> list[tuple[str, int]]:
    """Pings that find a client gone without a word (a black-holed link: gRPC waited as long as TCP did, hours),
    and the pings taken from clients: ours ping every minute, and gRPC's default refuses any more often than every
    5 minutes (closing the connection and its calls, "too_many_pings")."""
    ms = int(keepalive_s * 1000)
    taken = [("grpc.http2.min_ping_interval_without_data_ms", min(ms, 10_000) if ms > 0 else 10_000)]
    if ms <= 0:
        return taken
    wait = int(min(keepalive_s, KEEPALIVE_TIMEOUT_S) * 1000)
    return [*taken, ("grpc.keepalive_time_ms", ms), ("grpc.keepalive_timeout_ms", wait),
            ("grpc.http2.ping_timeout_ms", wait),  # (what gRPC 1.85 waits on; keepalive_timeout_ms is not used)
            ("grpc.http2.max_pings_without_data", 0)]  # (else 2 pings, then none, in a quiet refine)


class StyleTransferServer:
    """One grpc.aio server around a Stylizer; see the module docstring for the lifecycle."""

    def __init__(self, settings: Settings, stylizer: Any, library: StyleLibrary | None = None) -> None:
        settings = settings.for_device(stylizer.cuda)
        if not settings.workers:
            settings = replace(settings, workers=prepare_workers(stylizer.cuda))
        self.settings = settings
        self.stylizer = stylizer
        self.metrics = Metrics(settings.max_batch_size)
        if (renders := getattr(getattr(stylizer, "backend", None), "renders", None)) is not None:  # compiled
            self.metrics.watch_compiled(renders)
        self.registry = StyleRegistry(settings.style_registry_size, int(settings.style_registry_mb * 1024 * 1024))
        self.batcher = Batcher(
            stylizer.render,
            max_batch_size=settings.max_batch_size,
            max_delay_s=settings.max_batch_delay_ms / 1000.0,
            max_queue=settings.max_queue,
            max_per_caller=settings.per_caller,
            # a batch's memory within what one plain render may take (the tiling threshold: a share of memory)
            max_batch_pixels=stylizer.tiling.threshold or None,
            on_batch=self.metrics.observe_batch,
            on_stopped=self.metrics.renders_stopped.inc,
        )
        # read at each scrape: the render thread frees places too, and a gauge set on events went stale
        self.metrics.queue_depth.set_function(lambda: self.batcher.depth)
        self.pool = FairExecutor(settings.workers, current_caller.get)  # callers take turns at decoding too
        self.drain = Drain()
        self.refiner = RefineService(
            stylizer,
            RefineLimits(settings.max_refine_jobs, settings.max_refine_queue),  # steps: Stylizer.limits
            busy=lambda: self.batcher.busy,  # fast requests preparing, queued or rendering
            refused=lambda reason: self.metrics.queue_refused.labels(reason).inc(),
        )
        self.metrics.long_jobs.set_function(lambda: self.refiner.admitted)
        self.health = health.aio.HealthServicer()
        self.server: grpc.aio.Server | None = None
        self.health_server: grpc.aio.Server | None = None  # --health-port: plaintext, health only
        self.port: int | None = None
        self.library = library  # --styles-dir (read by start() where the caller did not)
        # the ids of the library's styles now whose statistics were computed ahead (or tried): what the
        # library no longer holds leaves, so a long-lived server keeps no id of every version it ever saw
        self._warmed: set[str] = set()
        self._library_checked = False  # the start's warm-up (strict) took the library first: the watcher waits
        self._render_watch: asyncio.Future | None = None  # server/stalled.py, once warmed up
        self._trimmer: asyncio.Future | None = None  # release_memory, once warmed up
        self.metrics_port: int | None = None
        info = server_info(settings, stylizer.info)
        self.metrics.describe({"version": info.server_version, "model": info.model, "weights": info.weights_version,
                               "device": info.device, "backend": info.backend, "precision": info.precision})
        self.servicer = StyleTransferServicer(
            stylizer=stylizer,
            batcher=self.batcher,
            registry=self.registry,
            metrics=self.metrics,
            pool=self.pool,
            limits=stylizer.limits,
            info=info,
            drain=self.drain,
            refiner=self.refiner,
            video=VideoService(
                open_stream=functools.partial(VideoStream.checked, stylizer),
                batcher=self.batcher,
                pool=self.pool,
                metrics=self.metrics,
                limits=VideoLimits(
                    max_frames=settings.max_video_frames,
                    max_streams=settings.max_video_streams,
                    window=settings.video_window,
                    idle_s=settings.video_idle_s,
                    default_temporal=settings.temporal,
                    default_strength=settings.temporal_strength,
                    max_reply_bytes=reply_limit(settings.max_message_bytes),
                ),
            ),
        )

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> int:
        """Listen (health NOT_SERVING) and start the metrics endpoint; returns the bound port."""
        s = self.settings
        for name in ("", SERVICE_NAME):
            await self.health.set(name, NOT_SERVING)
        options = [
            ("grpc.max_receive_message_length", s.max_message_bytes),
            ("grpc.max_send_message_length", s.max_message_bytes),
            ("grpc.so_reuseport", 0),
            *connection_limits(s),
        ]
        if s.max_connection_age_s > 0:  # clients behind a headless Service re-resolve when a connection ends
            # No age grace (gRPC's default: unbounded): the connection takes no new calls after its age, and
            # the calls on it run to their end, however long (a clip, a refine, a print; a bounded grace
            # killed them as UNAVAILABLE). SIGTERM's drain bounds them by --grace-seconds, as before.
            options.append(("grpc.max_connection_age_ms", int(s.max_connection_age_s * 1000)))
        # The secrets and the style library first: a bad file fails the start with its name.
        library = self.library
        if library is None and s.styles_dir:
            limits = self.stylizer.limits
            library = StyleLibrary(s.styles_dir, limits.max_pixels, limits.max_styles, limits.style_size)
        tls = TlsFiles(s.tls_cert, s.tls_key, s.tls_client_ca) if s.tls_cert and s.tls_key else None
        # first, so that it sees every call, one whose token is refused too
        unread = UnreadRequests(s.max_message_bytes, lambda method: self.metrics.requests_unread.labels(method).inc(),
                                on_refused=self._over_capacity, caller=self._token_name,
                                stopping=lambda: self.drain.draining, timeout_s=s.message_timeout_s,
                                max_calls=s.concurrent_rpcs, max_per_caller=s.calls_per_caller,
                                who=lambda context: caller_of(context, self.servicer.tokens),
                                reply_ids=lambda rid: self.servicer.reply_ids(rid))
        interceptors: list[grpc.aio.ServerInterceptor] = [unread]
        if s.auth_tokens_file:
            tokens = TokenFile(s.auth_tokens_file)
            self.servicer.tokens = tokens
            denied = self.metrics.requests
            interceptors.append(TokenAuth(tokens, lambda method: denied.labels(method, "UNAUTHENTICATED").inc(),
                                          lambda: self.servicer.replica))
            log.info("bearer tokens required: %d accepted, from %s", len(tokens), s.auth_tokens_file)
        # A cap over every connection: a call's streams, messages and undelivered replies are memory, and without
        # it one client's 20,000 streams held 220 MB (33,000: 2 GB). Beyond it gRPC answers RESOURCE_EXHAUSTED.
        server = grpc.aio.server(options=options, interceptors=interceptors,
                                 maximum_concurrent_rpcs=s.concurrent_rpcs)
        add_servicer(self.servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        enable_reflection(
            server, (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME,
                     REFLECTION_V1)
        )
        # Metrics first: a busy metrics port fails the start before anything listens.
        self.metrics_port = self.metrics.serve(s.host, s.metrics_port)
        address = host_port(s.host, s.port)
        try:
            if tls is not None:
                port = server.add_secure_port(address, tls.credentials())
            else:
                port = server.add_insecure_port(address)
        except RuntimeError as e:
            port = 0
            reason = f": {e}"
        else:  # gRPC says no more; checked free before the model loaded, so most likely taken since
            reason = f": {UNBOUND}"
        if not port:
            self.metrics.close()
            raise OSError(f"cannot listen on {address}{reason} {PORT_TAKEN_HINT}")
        if s.health_port > 0:
            self.health_server = await self._serve_health(host_port(s.host, s.health_port))
        self.servicer.replica = s.replica_name or f"{socket.gethostname()}:{port}"
        await server.start()
        self.server = server
        self.port = port
        if library is not None:
            self.metrics.library_styles.set(len(library))
            library.watch(on_change=self.warm_library)  # a new or replaced style is prepared as it comes
            self.servicer.library = self.library = library
        return port

    async def _serve_health(self, address: str) -> grpc.aio.Server:
        """gRPC health alone on a plaintext port: Kubernetes' gRPC probes speak neither TLS nor tokens."""
        # a port in use fails, as the main one; the connection limits of the main port (it is as open)
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0), *connection_limits(self.settings)])
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        try:
            if server.add_insecure_port(address):
                await server.start()
                return server
        except RuntimeError:
            pass
        self.metrics.close()  # the start fails: nothing may stay listening
        raise OSError(f"cannot listen on {address} (--health-port): {UNBOUND}")

    def _warmup_sync(self) -> None:
        """The model's first calls, on the shape-generic graphs: seen twice, the warm-up's 64-px images and their
        8 x 8 features took a fixed-shape OpenVINO graph each (compiled at the start, and holding one of the two
        places that the sizes callers send then had to win at twice its uses)."""
        content, style = _warmup_images(self.settings.max_pixels)  # within the limits, whatever they are
        with generic_shapes():
            self.stylizer.stylize(content, [style])
            t0 = time.monotonic()  # once more, warm: a drain's estimate until a batch is timed
            self.stylizer.stylize(content, [style])
            self.batcher.seed_unit((time.monotonic() - t0) / (content.width * content.height))
            if self.settings.max_refine_steps:  # a process's first backward pass is ~10x slower than the next
                self.stylizer.stylize(content, [style], refine_steps=min(2, self.settings.max_refine_steps))

    def warm_library(self, strict: bool = False) -> None:
        """Compute the library's style statistics ahead of the first call that names each style (the default
        style size, no colour mode: what most calls ask; ~0.1 s a style saved from that call), newest ids
        only, at most as many as the cache holds. A style that cannot be prepared (the library refuses the
        faults it can see itself, a style too small among them, so this is rare) is a bad file: ``strict``
        (the start's warm-up) raises BadStyleError naming it, else the library takes it back
        (:meth:`StyleLibrary.reject`: its last good image kept, or left out), so it is never offered."""
        library = self.library
        if library is None:
            return
        self.metrics.library_styles.set(len(library))
        if not strict and not self._library_checked:
            return  # the watcher's pass before the start's warm-up: that one checks (and fails the start)
        styles = library.styles()
        fresh = [s for s in styles if s.id not in self._warmed]
        # Every fresh one counts as seen, so that a library larger than the cache is not warmed a cacheful a
        # pass, pushing out what calls use; an id the library no longer has is forgotten (a file that comes
        # back is a new arrival, and a bad one then is checked again, as its new version is).
        self._warmed = {s.id for s in styles}
        self._library_checked = True
        if not fresh:
            return  # the watcher's usual pass: nothing new
        content, _ = _warmup_images(self.settings.max_pixels)
        for style in fresh[: self.stylizer.cache.size]:
            try:
                self.stylizer.prepare(Job(content=content, styles=[style.source]))
            except InvalidInputError as e:
                if strict:
                    raise BadStyleError(f"--styles-dir: {style.path}: {e.description}") from None
                library.reject(style, e.description)
                self.metrics.library_styles.set(len(library))

    def _over_capacity(self, method: str, reason: str) -> None:
        """A call refused over --max-concurrent-rpcs or --max-calls-per-caller before its handler: counted as the
        queues' refusals are."""
        self.metrics.requests.labels(method, "RESOURCE_EXHAUSTED").inc()
        self.metrics.queue_refused.labels(reason).inc()

    def _token_name(self, metadata: Any) -> str | None:
        """The name of a call's token, where the server checks tokens (the unread calls' log lines)."""
        tokens = self.servicer.tokens
        return tokens.caller(bearer_token(metadata)) if tokens is not None else None

    async def warm_up(self) -> None:
        """Start batching, run one dummy stylization off the event loop (and compute the library's style
        statistics), then report SERVING."""
        self.batcher.start()  # requests that come early are served (clients should wait for SERVING)
        await asyncio.get_running_loop().run_in_executor(self.pool, self._warmup_sync)
        await asyncio.get_running_loop().run_in_executor(self.pool, functools.partial(self.warm_library, strict=True))
        if not self.drain.draining:
            for name in ("", SERVICE_NAME):
                await self.health.set(name, SERVING)
        log.info("model warmed up; serving")
        if self.settings.render_stuck_s > 0:
            sources = {"the render thread's batch": self.batcher,
                       "a long job's step (refine, print size)": self.refiner}
            self._render_watch = asyncio.ensure_future(stalled.watch(sources, self.settings.render_stuck_s,
                                                                     self._render_stuck))
        if self.settings.trim_interval_s > 0 and can_release():
            self._trimmer = asyncio.ensure_future(self.release_memory(self.settings.trim_interval_s))

    async def release_memory(self, interval: float) -> None:
        """Every ``interval`` s, the heap pages freed since given back to the system (``adain.memory``), on a
        thread of the loop's own: the pool threads, the render thread and the refines' each keep a heap of their
        own, which held what their largest call had freed (an 80-minute soak's floor rose in steps as threads
        came). What resident memory fell by is counted."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            before = resident_bytes()
            await loop.run_in_executor(None, release_freed_memory)
            self.metrics.memory_released.inc(max(0, before - resident_bytes()))

    async def _render_stuck(self, stuck: bool) -> None:
        """The render watch's verdict, in health (a draining server stays NOT_SERVING) and the metric."""
        self.metrics.render_stuck.set(int(stuck))
        if not self.drain.draining:
            for name in ("", SERVICE_NAME):
                await self.health.set(name, NOT_SERVING if stuck else SERVING)

    async def shutdown(self, grace: float | None = None) -> None:
        """NOT_SERVING, refuse new calls, let calls in flight finish (up to ``grace`` s), stop everything."""
        grace = self.settings.grace_seconds if grace is None else grace
        self.drain.draining = True
        if self._render_watch is not None:
            self._render_watch.cancel()
        if self._trimmer is not None:
            self._trimmer.cancel()
        await self.health.enter_graceful_shutdown()
        if shed := self.batcher.shed(time.monotonic() + grace):
            log.info("draining: %d queued request(s) refused at once (they would not be rendered in %.1f s)",
                     shed, grace)
        if shed := self.refiner.shed(time.monotonic() + grace):
            log.info("draining: %d waiting long job(s) refused at once (they would not end in %.1f s)", shed, grace)
        if self.drain.inflight:
            log.info("draining %d call(s) in flight (up to %.1f s)", self.drain.inflight, grace)
            left = await self.drain.wait(grace)
            if left:
                log.warning("%d call(s) still in flight after %.1f s; they have up to %.1f s more, then those left "
                            "are cancelled (UNAVAILABLE) as the server stops", left, grace,
                            2 * min(DRAIN_LINGER_S, grace) + 0.2)
        # Calls already on their way get a clean UNAVAILABLE (retried on another replica) while clients'
        # health checks see NOT_SERVING; stopping at once would cancel them, and CANCELLED is not retried.
        await asyncio.sleep(min(DRAIN_LINGER_S, grace))
        await self.drain.wait(min(DRAIN_LINGER_S, grace))
        if self.server is not None:
            # What is left are streams that never end by themselves (health Watch): cut them short.
            await self.server.stop(0.2)
        if self.health_server is not None:
            await self.health_server.stop(0.2)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.batcher.close, 5.0)
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.refiner.close()
        if self.library is not None:
            self.library.close()
        self.metrics.close()
        log.info("stopped")


async def serve(settings: Settings, stylizer: Any, out=None, library: StyleLibrary | None = None) -> int:
    """Run until SIGTERM/SIGINT; print the 'listening on' line to ``out`` (stdout). Returns the exit code."""
    out = out or sys.stdout
    app = StyleTransferServer(settings, stylizer, library)
    try:
        port = await app.start()
    except (OSError, ValueError) as e:  # a port in use, an unreadable or bad certificate or token file
        logs.fatal(str(e))
        return 1
    logs.announce(f"adain-server listening on {host_port(settings.host, port)}", out)
    if app.metrics_port:
        log.info("metrics on http://%s/metrics", host_port(settings.host, app.metrics_port))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    first: list[signal.Signals] = []

    def on_signal(sig: signal.Signals) -> None:
        """The first drains; a second one, while the drain waits for work in flight, ends the process now."""
        if stop.is_set():
            # (a SIGHUP after a SIGTERM was "SIGHUP again")
            came = f"{sig.name} again" if sig == first[0] else f"{sig.name} after {first[0].name}"
            log.warning("%s while draining: stopping now, %d call(s) abandoned", came, app.drain.inflight)
            logging.shutdown()
            os._exit(128 + sig)
        first.append(sig)
        stop.set()

    # SIGHUP too: a terminal closing (or a supervisor's) once killed the server without its drain
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal, sig)
    warm = asyncio.ensure_future(app.warm_up())
    stopped = asyncio.ensure_future(stop.wait())
    code = 0
    await asyncio.wait({warm, stopped}, return_when=asyncio.FIRST_COMPLETED)
    if warm.done() and isinstance(warm.exception(), BadStyleError):  # a style the model cannot prepare
        logs.fatal(str(warm.exception()))
        code = 2
    elif warm.done() and warm.exception() is not None:
        log.error("warm-up failed: %s", warm.exception(), exc_info=warm.exception())
        code = 1
    else:
        await stopped
        log.info("signal received: shutting down")
    if not warm.done():
        warm.cancel()
    stopped.cancel()
    await app.shutdown()
    return code
