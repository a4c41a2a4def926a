"""The ``adain.v1.StyleTransfer`` servicer (grpc.aio): validation, error mapping, request ids, metrics."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from adain.errors import InvalidInputError
from adain.v1 import style_transfer_pb2 as pb
from adain.v1 import style_transfer_pb2_grpc as pb_grpc

from .batcher import ClosedError, DeadlineDropped, QueueFullError

if TYPE_CHECKING:
    from adain.stylizer import Job

    from .app import StyleTransferServer

log = logging.getLogger("adain.server")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["StyleTransfer"].full_name
REQUEST_ID_KEY = "x-request-id"
DEFAULT_QUALITY = 90
FORMATS = {pb.IMAGE_FORMAT_PNG: "png", pb.IMAGE_FORMAT_JPEG: "jpeg", pb.IMAGE_FORMAT_WEBP: "webp"}
COLOR_MODES = {pb.PRESERVE_COLOR_NONE: None, pb.PRESERVE_COLOR_CORAL: "coral", pb.PRESERVE_COLOR_LUMINANCE: "luminance"}


@dataclass
class Violation:
    field: str
    description: str

    def __str__(self) -> str:
        return f"{self.field}: {self.description}"


class ServiceError(Exception):
    """Ends a call with ``code``; INVALID_ARGUMENT carries google.rpc.BadRequest field violations."""

    def __init__(self, code: grpc.StatusCode, message: str, violations: list[Violation] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.violations = violations or []

    @classmethod
    def invalid(cls, violations: list[Violation]) -> ServiceError:
        return cls(grpc.StatusCode.INVALID_ARGUMENT, "; ".join(str(v) for v in violations), violations)


def _status_trailers(err: ServiceError) -> tuple[tuple[str, Any], ...]:
    """The grpc-status-details-bin trailer of a rich google.rpc.Status (BadRequest when there are violations)."""
    status = status_pb2.Status(code=err.code.value[0], message=err.message)
    if err.violations:
        detail = any_pb2.Any()
        detail.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                    for v in err.violations
                ]
            )
        )
        status.details.append(detail)
    assert status.code != code_pb2.OK
    return tuple(rpc_status.to_status(status).trailing_metadata)


def _request_id(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_KEY and isinstance(value, str) and value.strip():
            return value.strip()[:128]
    return str(uuid.uuid4())


Handler = Callable[[Any, Any, grpc.aio.ServicerContext, str], Awaitable[Any]]


def rpc(method: str) -> Callable[[Handler], Callable[..., Awaitable[Any]]]:
    """Wrap a handler: request id, draining check, in-flight count, status mapping, metrics, access log."""

    def wrap(fn: Handler) -> Callable[..., Awaitable[Any]]:
        @functools.wraps(fn)
        async def handler(self: StyleTransferServicer, request: Any, context: grpc.aio.ServicerContext) -> Any:
            app = self.app
            rid = _request_id(context)
            rid_md = ((REQUEST_ID_KEY, rid),)
            start = time.perf_counter()
            code = grpc.StatusCode.OK
            detail = ""
            app.call_started()
            try:
                await context.send_initial_metadata(rid_md)
                if app.draining:
                    raise ServiceError(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
                reply = await fn(self, request, context, rid)
                context.set_trailing_metadata(rid_md)
                return reply
            except ServiceError as e:
                code, detail = e.code, e.message
                await context.abort(e.code, e.message, trailing_metadata=rid_md + _status_trailers(e))
            except asyncio.CancelledError:
                remaining = context.time_remaining()
                expired = remaining is not None and remaining <= 0
                code = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
                raise
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            except Exception:
                code = grpc.StatusCode.INTERNAL
                log.exception("request %s: %s failed", rid, method)
                detail = f"internal error (request id {rid})"
                await context.abort(code, detail, trailing_metadata=rid_md)
            finally:
                elapsed = time.perf_counter() - start
                app.call_finished()
                app.metrics.requests.labels(method, code.name).inc()
                app.metrics.request_seconds.labels(method).observe(elapsed)
                quiet = code in (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT)
                level = logging.INFO if quiet else logging.WARNING
                log.log(level, "request_id=%s method=%s code=%s ms=%.1f%s", rid, method, code.name, elapsed * 1000,
                        f" detail={detail!r}" if detail else "")

        return handler

    return wrap


def _map_field(field: str, sources: list[str]) -> str:
    """Stylizer field names -> proto field paths ("styles[1]" -> "styles[1].image" or ".style_id")."""
    if field.startswith("styles[") and field.endswith("]"):
        try:
            i = int(field[len("styles[") : -1])
        except ValueError:
            return field
        return f"{field}.{sources[i] if 0 <= i < len(sources) else 'image'}"
    if field == "weights":
        return "styles.weight"
    return field


class StyleTransferServicer(pb_grpc.StyleTransferServicer):
    def __init__(self, app: StyleTransferServer) -> None:
        self.app = app

    # -- validation ------------------------------------------------------------------------------
    def _check(self, request: pb.StylizeRequest) -> tuple[Job, list[str]]:
        """Validate what needs no decoding, all at once; returns the Job and each style's source field.

        The protocol's own fields (sources, enums, quality) are checked here; the job's arguments
        (style count, weights, alpha, sizes, mask) by ``Stylizer.check``, the library's one copy.
        """
        from adain.stylizer import Job  # noqa: F811 - torch loads with the model, not with this module

        s = self.app.settings
        bad: list[Violation] = []
        if not request.content:
            bad.append(Violation("content", "image data is empty (a content image is required)"))
        styles: list[bytes] = []
        sources: list[str] = []
        kept = request.styles[: s.max_styles]  # one violation per style at most max_styles times
        for i, style in enumerate(kept):
            which = style.WhichOneof("source")
            sources.append(which or "image")
            data = b""
            if which == "image":
                data = style.image
            elif which == "style_id":
                data = self.app.registry.get(style.style_id) or b""
                if not data:
                    bad.append(
                        Violation(
                            f"styles[{i}].style_id",
                            f"unknown style id {style.style_id!r} (never registered, or dropped from the registry of "
                            f"{s.style_registry_size}); register it with RegisterStyle",
                        )
                    )
            else:
                bad.append(Violation(f"styles[{i}]", "set image or style_id"))
            styles.append(data)
        if request.preserve_color not in COLOR_MODES:
            bad.append(Violation("preserve_color", f"unknown value {request.preserve_color}"))
        if request.format not in FORMATS:
            bad.append(Violation("format", f"unknown value {request.format} (PNG, JPEG or WEBP)"))
        if request.quality > 100:
            bad.append(Violation("quality", f"must be in [1, 100] (0 means {DEFAULT_QUALITY}), got {request.quality}"))
        over = len(request.styles) - len(kept)  # not looked up: the request fails on the count
        job = Job(
            content=request.content,
            styles=styles + [b""] * over,
            weights=[style.weight if style.HasField("weight") else 1.0 for style in request.styles],
            alpha=request.alpha if request.HasField("alpha") else 1.0,
            preserve_color=COLOR_MODES.get(request.preserve_color),
            mask=request.mask or None,
            content_size=request.content_size or None,
            style_size=request.style_size or None,
        )
        bad += [Violation(e.field, e.description) for e in self.app.stylizer.check(job)]
        if bad:
            raise ServiceError.invalid(bad)
        return job, sources

    # -- RPCs ------------------------------------------------------------------------------------
    @rpc("Stylize")
    async def Stylize(self, request: pb.StylizeRequest, context: grpc.aio.ServicerContext, rid: str) -> Any:
        app = self.app
        job, sources = self._check(request)
        try:
            ticket = app.batcher.admit()
        except QueueFullError as e:
            raise ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e)) from e
        except ClosedError as e:
            raise ServiceError(grpc.StatusCode.UNAVAILABLE, str(e)) from e
        loop = asyncio.get_running_loop()
        remaining = context.time_remaining()
        deadline = time.monotonic() + remaining if remaining is not None and math.isfinite(remaining) else None
        app.metrics.queue_depth.set(app.batcher.depth)
        try:
            t0 = time.perf_counter()
            try:
                prepared = await loop.run_in_executor(app.pool, app.stylizer.prepare, job)
            except InvalidInputError as e:
                raise ServiceError.invalid([Violation(_map_field(e.field, sources), e.description)]) from e
            prepare_ms = (time.perf_counter() - t0) * 1000
            app.metrics.prepare_seconds.observe(prepare_ms / 1000)
            try:
                item = app.batcher.submit(ticket, prepared, prepared.batch_key, deadline)
            except ClosedError as e:
                raise ServiceError(grpc.StatusCode.UNAVAILABLE, str(e)) from e
            try:
                result = await item.future
            except asyncio.CancelledError:
                app.batcher.withdraw(item)
                raise
            except DeadlineDropped as e:
                raise ServiceError(grpc.StatusCode.DEADLINE_EXCEEDED, str(e)) from e
            except (MemoryError, RuntimeError) as e:
                if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":  # torch.cuda's
                    raise ServiceError(
                        grpc.StatusCode.RESOURCE_EXHAUSTED, f"out of memory rendering a batch: {type(e).__name__}"
                    ) from e
                raise
            image = result.output
            fmt = FORMATS[request.format]
            t1 = time.perf_counter()
            data = await loop.run_in_executor(
                app.pool, app.encode, image, fmt, request.quality or DEFAULT_QUALITY
            )
            encode_ms = (time.perf_counter() - t1) * 1000
        finally:
            ticket.release()
            app.metrics.queue_depth.set(app.batcher.depth)
        return pb.StylizeResponse(
            image=data,
            width=image.width,
            height=image.height,
            format=request.format,
            request_id=rid,
            timings=pb.Timings(
                queue_ms=result.queue_ms,
                inference_ms=result.inference_ms,
                prepare_ms=prepare_ms,
                encode_ms=encode_ms,
                batch_size=result.batch_size,
            ),
        )

    @rpc("RegisterStyle")
    async def RegisterStyle(self, request: pb.RegisterStyleRequest, context: grpc.aio.ServicerContext, rid: str) -> Any:
        from adain.image import load_image

        app = self.app
        data = request.image
        if not data:
            raise ServiceError.invalid([Violation("image", "image data is empty")])
        loop = asyncio.get_running_loop()
        try:
            img = await loop.run_in_executor(
                app.pool, functools.partial(load_image, data, field="image", max_pixels=app.settings.max_pixels)
            )
        except InvalidInputError as e:
            raise ServiceError.invalid([Violation(e.field, e.description)]) from e
        key = app.registry.add(data)
        app.metrics.registered_styles.set(len(app.registry))
        return pb.RegisterStyleResponse(style_id=key, width=img.width, height=img.height)

    @rpc("GetServerInfo")
    async def GetServerInfo(self, request: pb.GetServerInfoRequest, context: grpc.aio.ServicerContext, rid: str) -> Any:
        app = self.app
        s = app.settings
        info = app.model_info
        return pb.ServerInfo(
            model=str(info.get("model", "")),
            arch_version=int(info.get("arch_version", 0)),
            weights_version=str(info.get("weights_version", "")),
            decoder_meta_json=json.dumps(info.get("decoder_meta", {}), sort_keys=True, default=str),
            device=str(info.get("device", "")),
            dtype=str(info.get("dtype", "")),
            server_version=str(info.get("server_version", "")),
            registered_styles=len(app.registry),
            limits=pb.Limits(
                max_pixels=s.max_pixels,
                max_content_side=s.max_content_side,
                default_style_size=s.style_size,
                max_styles=s.max_styles,
                max_message_bytes=s.max_message_bytes,
                style_registry_size=s.style_registry_size,
            ),
            batching=pb.Batching(
                max_batch_size=s.max_batch_size,
                max_batch_delay_ms=s.max_batch_delay_ms,
                max_queue=s.max_queue,
                prepare_workers=s.workers,
            ),
        )
