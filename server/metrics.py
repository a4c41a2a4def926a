"""Prometheus metrics, one CollectorRegistry per server instance (so a process can hold several)."""

from __future__ import annotations

import logging
from collections import Counter as Tally
from collections.abc import Iterator, Sequence

from prometheus_client import Counter, Gauge, Histogram, Info
from prometheus_client.core import CounterMetricFamily

from adain.exporter import Exporter

log = logging.getLogger("adain.server.metrics")

# up to 10 minutes: a refine of hundreds of steps, or a print-size photo's tiles, runs minutes (they all fell in +Inf
# past 60 s); 20 s at AdainInferenceSlow's threshold, which fell between 10 and 30 (its p90 a rough interpolation)
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0,
                    120.0, 300.0, 600.0)


class Metrics(Exporter):
    def __init__(self, max_batch_size: int = 8) -> None:
        super().__init__()
        r = self.registry
        self.requests = Counter(
            "adain_requests", "gRPC requests handled, by method and status code", ["method", "code"], registry=r
        )
        self.requests_unread = Counter(
            "adain_requests_unread", "Calls that ended before their request message arrived, by method: over "
            "--max-message-mb (gRPC itself answers RESOURCE_EXHAUSTED; in adain_requests_total no handler ran), "
            "the client went away while sending it, or it took over --message-timeout-s (DEADLINE_EXCEEDED)",
            ["method"], registry=r,
        )
        self.request_seconds = Histogram(
            "adain_request_seconds", "Server time per request, by method; requests refused before their work began "
            "(bad input, a full queue: adain_requests_total counts them) left out", ["method"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.prepare_seconds = Histogram(
            "adain_prepare_seconds", "Decoding, validation and style features per request (Stylizer.prepare)",
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.encode_seconds = Histogram(
            "adain_encode_seconds", "Encoding a Stylize reply's image (video frames are not counted), by format, "
            "from the render's end (a wait for a "
            "prepare thread included): on a GPU the host's work that bounds a replica (a 512-px PNG took ~100 ms on "
            "an H200's host, its render ~7)", ["format"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.queue_seconds = Histogram(
            "adain_queue_seconds", "Time a prepared request waited for its batch to start rendering",
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.inference_seconds = Histogram(
            "adain_inference_seconds", "Model time per batch", buckets=_LATENCY_BUCKETS, registry=r
        )
        sizes = sorted({1, 2, 4, 8, 16, 32, 64, max_batch_size})
        self.batch_size = Histogram(
            "adain_batch_size", "Requests per rendered batch", buckets=[float(s) for s in sizes], registry=r
        )
        self.queue_refused = Counter(
            "adain_queue_refused", "Requests refused a place: the queue was full (max_queue), their caller held "
            "its share (max_queue_per_caller) or asked for one of the places kept for callers with none queued "
            "(reserved), the long-job threads were full (max_refine_jobs: refine and print-size jobs), the last "
            "long-job place was kept for another caller (long_job_reserved), the video streams were full "
            "(max_video_streams), the server held max_concurrent_rpcs calls (gRPC refused it before any handler; a "
            "video stream or reflection call so refused is not counted) or the caller held max_calls_per_caller "
            "calls (health checks apart: 1,024 a caller)", ["reason"], registry=r,
        )
        self.caller_requests = Counter(
            "adain_caller_requests", "gRPC requests by caller (a token's name: who uses the service; \"anonymous\" "
            "without tokens, so peers and a front end's visitors do not each make a series) and status code",
            ["caller", "code"], registry=r,
        )
        self.queue_depth = Gauge("adain_queue_depth", "Stylize requests admitted and not yet rendering", registry=r)
        self.long_jobs = Gauge("adain_long_jobs", "Refine and print-size jobs admitted: waiting for a long-job "
                               "thread, running or answering (max_refine_jobs + max_refine_queue at most)", registry=r)
        self.registered_styles = Gauge("adain_registered_styles", "Styles held by the style registry", registry=r)
        self.library_styles = Gauge("adain_library_styles", "Styles in the style library (--styles-dir)", registry=r)
        self.video_streams = Gauge("adain_video_streams", "StylizeVideo streams running", registry=r)
        self.render_stuck = Gauge(
            "adain_render_stuck", "1 while the batch rendering now, or a long job's step, has passed --render-stuck-s "
            "(and 10x its expected time): health says NOT_SERVING meanwhile", registry=r)
        self.video_frames = Counter("adain_video_frames", "Video frames stylized and sent", registry=r)
        self.memory_released = Counter(
            "adain_memory_released_bytes", "Resident memory given back to the system by the periodic trim of freed "
            "heap pages (--trim-interval-s): the fall in resident memory across each trim, so approximate (a render "
            "on another thread meanwhile moves it too; a rise counts 0)", registry=r)
        self.renders_stopped = Counter(
            "adain_renders_stopped", "Batches whose render was stopped part-way because every call in it had ended "
            "(cancelled, past its deadline, its stream closed): the render thread went on to the next batch instead "
            "of finishing work nobody would read", registry=r)
        self.video_idle = Counter(
            "adain_video_idle_ended", "StylizeVideo streams ended because their client sent no frame, or took no "
            "reply, for video_idle_s (counted in adain_requests_total as DEADLINE_EXCEEDED too: a client's pause, "
            "which the deadline alert subtracts)", registry=r)
        self.server = Info("adain_server", "What this replica runs: the version, the decoder's weights, device, "
                           "backend and precision (a rollout shows as two sets of labels)", registry=r)

    def describe(self, info: dict[str, str]) -> None:
        """Set adain_server_info's labels, once, from GetServerInfo's reply."""
        self.server.info(info)

    def watch_compiled(self, renders: Tally[str]) -> None:
        """Export the compiled backend's decoder runs by path (``CompiledBackend.renders``), read at each scrape."""
        self.registry.register(_CompiledRuns(renders))

    def observe_batch(self, size: int, inference_s: float, queue_s: Sequence[float]) -> None:
        self.batch_size.observe(size)
        self.inference_seconds.observe(inference_s)
        for q in queue_s:
            self.queue_seconds.observe(q)

    def serve(self, host: str, port: int) -> int | None:
        """Start the HTTP exporter on ``port`` (0 or negative: disabled); returns the port or None."""
        return super().serve(host, port) if port > 0 else None


class _CompiledRuns:
    """adain_compiled_decoder_runs_total{path}, read from the backend's tally at each scrape (its help says what)."""

    def __init__(self, renders: Tally[str]) -> None:
        self.renders = renders

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "adain_compiled_decoder_runs", "With --backend compiled: decoder runs (a batch, or a tile) by path: "
            "compiled, or eager (a content size not in --compile-sizes, a batch over the largest compiled, alpha "
            "below 1)", labels=["path"])
        for path in ("compiled", "eager"):
            family.add_metric([path], self.renders[path])
        yield family
