"""What the server says when it refuses or ends a call, as a client written from the .proto alone sees it: the
video idle clock, RetryInfo on every full queue, the reply limit's advice, field names and messages."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from adain.client import StyleTransferClient, StyleTransferError
from adain.v1 import style_transfer_pb2 as pb
from adain.v1 import style_transfer_pb2_grpc as pb_grpc
from helpers import NO_REFINE, ServerProcess
from synth import encoded, make_image, make_mask

STYLE = make_image(40, 40, seed=22, kind="noise")
CONTENT = make_image(64, 48, seed=1)
# 480 x 360: over the reply limit below as PNG and as JPEG at quality 100, and over the tiling threshold (a long
# job); as a JPEG of 60 (43 KB) under the request limit
LARGE = make_image(480, 360, seed=9, fmt="JPEG", quality=60)
FRAME_S = 1.5  # the server's batch delay: a frame takes longer to render than the stream's idle time
IDLE_S = 1


@pytest.fixture(scope="module")
def strict(decoder_path: Path, tmp_path_factory: pytest.TempPathFactory):
    """A server with a 64 KiB message limit, one long-job place and no long-job queue, a library of one style
    ("mosaic") and one preset of it ("one"), a 1 s video idle time and batches that wait 1.5 s to fill."""
    library = tmp_path_factory.mktemp("library")
    (library / "mosaic.png").write_bytes(make_image(64, 64, seed=5, kind="noise"))
    (library / "presets.json").write_text('{"one": {"styles": {"mosaic": 1}}}')
    srv = ServerProcess(decoder_path, "--max-message-mb", "0.0625", "--max-refine-jobs", "1", "--max-refine-queue",
                        "0", "--tile-threshold", "30000", "--tile-size", "256", "--styles-dir", str(library),
                        "--video-idle-s", str(IDLE_S), "--max-batch-size", "8", "--max-batch-delay-ms",
                        str(FRAME_S * 1000), *NO_REFINE)
    try:
        srv.wait_serving()
        with StyleTransferClient(srv.target, timeout=60, retries=0) as client:
            yield srv, client
    finally:
        srv.terminate()


def _expect(code: grpc.StatusCode, fn, *args, **kwargs) -> StyleTransferError:
    with pytest.raises(StyleTransferError) as info:
        fn(*args, **kwargs)
    assert info.value.code == code, info.value.details
    return info.value


def _raw(srv: ServerProcess, request: pb.StylizeRequest) -> grpc.RpcError:
    """A Stylize call as a client of the .proto alone makes it (the Python client checks some fields itself)."""
    with grpc.insecure_channel(srv.target) as channel:
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.StyleTransferStub(channel).Stylize(request, timeout=60)
    return info.value


def _silent(gate: threading.Event) -> Iterator[pb.VideoRequest]:
    """A stream's requests that send nothing until ``gate`` is set (at most 30 s), then end."""
    gate.wait(30)
    yield from ()


def _count(srv: ServerProcess, method: str, code: str) -> float:
    name = f'adain_requests_total{{code="{code}",method="{method}"}}'
    return sum(float(line.split()[-1]) for line in srv.metrics_text().splitlines() if line.startswith(name + " "))


def test_the_idle_clock_waits_while_the_server_renders(strict) -> None:
    """A lock-step client (a live camera: one frame, its reply, the next) owes the server nothing while its frame
    renders: a stream whose frames took longer than video_idle_s was ended 2 ms after each reply. The clock runs
    from the last reply on."""
    srv, client = strict
    frames = [make_image(64, 48, seed=i) for i in range(2)]
    replied = threading.Semaphore(0)
    stop = threading.Event()

    def lockstep():
        for i, frame in enumerate(frames):
            if i:
                assert replied.acquire(timeout=30)
            yield frame
        stop.wait(30)  # then nothing: the clock runs

    got, last = [], 0.0
    try:
        with pytest.raises(StyleTransferError) as info:
            for reply in client.stylize_video(lockstep(), STYLE):
                got.append(reply.index)
                last = time.monotonic()
                replied.release()
        ended = time.monotonic()
    finally:
        stop.set()
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED, info.value.details
    assert f"no frame came for {IDLE_S} s (video_idle_s)" in info.value.details
    assert got == [0, 1]
    assert IDLE_S / 2 < ended - last < IDLE_S + 10  # from the last reply, not from the frame's arrival
    assert srv.alive()


def test_a_full_long_job_queue_says_when_to_retry(strict) -> None:
    """RESOURCE_EXHAUSTED for want of a long-job place carries RetryInfo, as a full batch queue's does."""
    srv, client = strict
    with ThreadPoolExecutor(2) as pool:
        fast = pool.submit(client.stylize, CONTENT, STYLE)  # waits 1.5 s for its batch: the long job waits for it
        srv.wait_queued(1)
        long = pool.submit(client.stylize, LARGE, STYLE, format="jpeg", quality=50)  # tiled: a long job
        srv.wait_queued(1, metric="adain_long_jobs")
        err = _expect(grpc.StatusCode.RESOURCE_EXHAUSTED, client.stylize, LARGE, STYLE, format="jpeg", quality=50)
        assert "max_refine_jobs=1" in err.details
        assert err.retry_after is not None and 1 <= err.retry_after <= 60, err.retry_after
        assert fast.result().width == 64 and long.result().width == 480


@pytest.mark.parametrize("fmt", ["png", "jpeg"])  # (WebP takes the JPEG's branch: no image here fits the request
# limit and makes a WebP over the reply limit)
def test_the_reply_limit_is_the_one_server_info_reports_and_the_advice_fits_the_format(strict, fmt: str) -> None:
    srv, client = strict
    reported = client.server_info()["limits"]["max_message_bytes"]
    assert reported == 65536
    err = _expect(grpc.StatusCode.RESOURCE_EXHAUSTED, client.stylize, LARGE, STYLE, format=fmt, quality=100)
    assert f"the output is 480x360 as {fmt.upper()}" in err.details
    assert "over the reply limit of 61,440 bytes (max_message_bytes=65,536, less 4,096 kept for the reply's " \
           "other fields)" in err.details, err.details
    if fmt == "png":
        assert err.details.endswith("ask for format JPEG or a smaller content_size"), err.details
    else:  # it asked for JPEG already
        assert "format JPEG" not in err.details, err.details
        assert err.details.endswith("ask for a lower quality or a smaller content_size"), err.details
    assert err.retry_after is None  # retrying never helps


def test_a_frame_over_the_reply_limit_gets_advice_for_its_format(strict) -> None:
    _, client = strict
    err = _expect(grpc.StatusCode.RESOURCE_EXHAUSTED, lambda: list(
        client.stylize_video([LARGE], STYLE, format="jpeg", quality=100)))
    assert "frame 0 is 480x360 as JPEG" in err.details and "max_message_bytes=65,536" in err.details
    assert "format JPEG" not in err.details and "a lower quality" in err.details
    assert err.retry_after is None


def test_a_stream_cancelled_before_its_options_is_counted_as_cancelled(strict) -> None:
    """A client that cancels before sending anything was logged and counted as INVALID_ARGUMENT ("the first
    message of a stream must carry the options")."""
    srv, _ = strict
    cancelled = _count(srv, "StylizeVideo", "CANCELLED")
    invalid = _count(srv, "StylizeVideo", "INVALID_ARGUMENT")
    gate = threading.Event()
    try:
        with grpc.insecure_channel(srv.target) as channel:
            call = pb_grpc.StyleTransferStub(channel).StylizeVideo(_silent(gate), timeout=60)
            # the handler runs, waiting for the options (its headers come only once a stream is admitted), for
            # less than the idle time (IDLE_S), which would end the stream first
            time.sleep(IDLE_S / 2)
            call.cancel()
            deadline = time.monotonic() + 15
            while _count(srv, "StylizeVideo", "CANCELLED") == cancelled:
                assert time.monotonic() < deadline, "the cancelled stream was not counted as CANCELLED"
                time.sleep(0.05)
    finally:
        gate.set()
    assert _count(srv, "StylizeVideo", "INVALID_ARGUMENT") == invalid
    srv.wait_logged(lambda log: any("method=StylizeVideo" in line and "code=CANCELLED" in line
                                    for line in log.splitlines()))  # (a WARNING: this server logs those)


def test_a_streams_mask_is_measured_against_its_frames(strict) -> None:
    _, client = strict
    err = _expect(grpc.StatusCode.INVALID_ARGUMENT, lambda: list(
        client.stylize_video([CONTENT], [STYLE, STYLE], mask=make_mask(32, 32))))
    assert err.details == "options.mask: mask is 32 x 32, frames are 64 x 48", err.details


def test_a_stream_without_frames_names_the_frames(strict) -> None:
    """A stream's frames are "frames[i]" where one is bad ("frames[1]"): one without any said "frame"."""
    srv, _ = strict
    options = pb.VideoRequest(options=pb.VideoOptions(styles=[pb.Style(image=STYLE)]))
    with grpc.insecure_channel(srv.target) as channel:
        with pytest.raises(grpc.RpcError) as info:
            list(pb_grpc.StyleTransferStub(channel).StylizeVideo(iter([options]), timeout=60))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "frames: the stream carried no frames"


def test_a_stream_that_never_sends_its_options_is_ended_when_idle(strict) -> None:
    """A client that opened a stream and never spoke kept a server task for its whole deadline (a fuzzer's piled
    up 25 of them), for ever without one."""
    srv, _ = strict
    gate = threading.Event()
    try:
        with grpc.insecure_channel(srv.target) as channel:
            began = time.monotonic()
            with pytest.raises(grpc.RpcError) as info:
                list(pb_grpc.StyleTransferStub(channel).StylizeVideo(_silent(gate), timeout=30))
            took = time.monotonic() - began
    finally:
        gate.set()
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED and took < 15, took
    assert info.value.details().startswith(f"no options came for {IDLE_S} s (video_idle_s)"), info.value.details()


def _fields(err: grpc.RpcError) -> list[str]:
    from google.rpc import error_details_pb2, status_pb2

    status = next(status_pb2.Status.FromString(v) for k, v in err.trailing_metadata() if k == "grpc-status-details-bin")
    found = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            found += [v.field for v in bad.field_violations]
    return found


def test_region_and_preset_problems_name_the_wires_fields(strict) -> None:
    """A fuzzer's: BadRequest named the library's "masks" and "label_values", which no client generated from the
    proto has, and a request's own bad weight beside a preset was said to be the preset's (one that did not
    exist)."""
    srv, _ = strict
    band = make_mask(64, 48)
    err = _raw(srv, pb.StylizeRequest(content=CONTENT, mask=band, styles=[pb.Style(image=STYLE, mask=band),
                                                                         pb.Style(image=STYLE, mask=band)]))
    assert _fields(err) == ["mask"] and err.details() == (
        "mask: give one form of regions, not mask and styles[].mask"), err.details()
    labels = encoded(Image.fromarray(np.full((48, 64), 7, np.uint8)))
    err = _raw(srv, pb.StylizeRequest(content=CONTENT, preset="one", labels=labels))
    assert _fields(err) == ["labels"] and err.details() == (
        "labels: a preset's styles carry no labels: give the styles themselves, each with its Style.label")
    err = _raw(srv, pb.StylizeRequest(content=CONTENT, preset="nope", styles=[pb.Style(image=STYLE, weight=-1)]))
    assert _fields(err) == ["preset", "styles[0].weight"] and "of preset" not in err.details(), err.details()


def test_a_library_styles_id_is_served_as_its_name_is(strict) -> None:
    """ListStyles gives each library style's id too (its bytes' sha256, as a registered style's id is): sent as
    style_id it is those very bytes, served. It was refused naming the style, so a style registered on one replica
    whose bytes were a library style's failed on every other replica (the client's resending of its bytes waits
    for "unknown style id"), a folder run over two replicas ending at its first photo (an outside tester)."""
    srv, client = strict
    with grpc.insecure_channel(srv.target) as channel:
        stub = pb_grpc.StyleTransferStub(channel)
        [mosaic] = stub.ListStyles(pb.ListStylesRequest(), timeout=30).styles
        by_id = stub.Stylize(pb.StylizeRequest(content=CONTENT, styles=[pb.Style(style_id=mosaic.style_id)]),
                             timeout=60)
        by_name = stub.Stylize(pb.StylizeRequest(content=CONTENT, styles=[pb.Style(style_id="mosaic")]), timeout=60)
    assert by_id.image == by_name.image and by_id.width == 64
    err = _raw(srv, pb.StylizeRequest(content=CONTENT, styles=[pb.Style(style_id="0" * 64)]))
    assert "unknown style id" in err.details(), err.details()


def test_a_registered_id_is_taken_in_upper_case(strict) -> None:
    srv, client = strict
    key = client.register_style(STYLE)
    key = getattr(key, "id", key)
    with grpc.insecure_channel(srv.target) as channel:
        reply = pb_grpc.StyleTransferStub(channel).Stylize(
            pb.StylizeRequest(content=CONTENT, styles=[pb.Style(style_id=key.upper())]), timeout=60)
    assert reply.width == 64


def test_a_label_out_of_range_is_told_in_the_wires_terms(strict) -> None:
    """Style.label is a uint32: '#rrggbb' cannot be sent, and a colour under 256 is 0x1000000 | b."""
    srv, _ = strict
    labels = np.full((48, 64, 3), 7, np.uint8)
    request = pb.StylizeRequest(content=CONTENT, labels=encoded(Image.fromarray(labels)),
                                styles=[pb.Style(image=STYLE, label=0x2000000)])
    err = _raw(srv, request)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == ("styles[0].label: must be a grey level 0-255, a colour 0xRRGGBB (up to 0xFFFFFF), or "
                             "0x1000000 | 0xRRGGBB (what a colour under 256, (0, 0, b), must be: 0x1000000 | b), "
                             "got 33554432 (0x2000000)")


def test_refusals_are_left_out_of_the_latency_histogram(server: ServerProcess) -> None:
    """A refusal's microseconds (bad input, a full queue) pulled adain_request_seconds down just as a server was
    overloaded (an SRE's tour); adain_requests_total counts them."""

    name = 'adain_request_seconds_count{method="Stylize"}'
    with StyleTransferClient(server.target, timeout=60) as client:
        client.stylize(make_image(32, 24, seed=1), make_image(32, 32, seed=2))
        served = server.metric(name)
        with pytest.raises(StyleTransferError):
            client.stylize(b"not an image", make_image(32, 32, seed=2))
        assert server.metric(name) == served
        client.stylize(make_image(32, 24, seed=1), make_image(32, 32, seed=2))
        assert server.metric(name) == served + 1


def test_a_progress_calls_refusal_after_work_is_in_the_latency_histogram(strict) -> None:
    """StylizeWithProgress (every photo adain-web sends) ran its work in a task whose context was a copy, so the
    mark that work began never reached the call: a reply over the limit after minutes of tiles was left out of
    adain_request_seconds, as a refusal before any work is (a concurrency review)."""
    srv, client = strict
    name = 'adain_request_seconds_count{method="StylizeWithProgress"}'
    before = srv.metric(name) if name in srv.metrics_text() else 0.0
    # LARGE: over the tiling threshold (a long job) and, as PNG, over the reply limit
    _expect(grpc.StatusCode.RESOURCE_EXHAUSTED, client.stylize, LARGE, STYLE, format="png", on_progress=lambda _p: None)
    assert srv.metric(name) == before + 1
