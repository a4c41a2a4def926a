"""Callers take turns in the batch queue, and none may hold more than its share of it (server.batcher)."""

from __future__ import annotations

import asyncio
import contextvars
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from adain.client import StyleTransferError
from adain.client.aio import AsyncStyleTransferClient
from adain.server.batcher import Batcher, ClosedError, QueueFullError
from adain.server.config import parse_settings
from adain.server.fairpool import FairExecutor
from helpers import NO_REFINE, ServerProcess, WebProcess
from synth import make_image

CONTENT = make_image(48, 32, seed=61)
STYLE = make_image(32, 32, seed=62, kind="noise")
ALICE, BOB = "alice-token-0123456789", "bob-token-9876543210ab"


def test_callers_take_turns() -> None:
    started, go = threading.Event(), threading.Event()
    order: list[str] = []

    def render(batch: list[str]) -> list[str]:
        order.extend(batch)
        started.set()
        go.wait(10)  # the first batch holds the thread while the others queue up
        return batch

    async def main() -> list[str]:
        batcher = Batcher(render, max_batch_size=1, max_delay_s=0, max_queue=16)
        batcher.start()

        def send(caller: str, name: str) -> asyncio.Future:
            return batcher.submit(batcher.admit(caller=caller), name, key="512x512", deadline=None).future

        futures = [send("A", "A1")]
        await asyncio.to_thread(started.wait, 10)
        futures += [send("A", "A2"), send("A", "A3"), send("B", "B1"), send("B", "B2"), send("B", "B3"),
                    send("C", "C1")]
        go.set()
        results = [r.output for r in await asyncio.gather(*futures)]
        batcher.close(5)
        return results

    results = asyncio.run(main())
    assert results == ["A1", "A2", "A3", "B1", "B2", "B3", "C1"]  # each caller gets its own results
    # B and C were never served, so they go first; then A (served longest ago), B, A, B. First come first
    # served would be A1 A2 A3 B1 B2 B3 C1.
    assert order == ["A1", "B1", "C1", "A2", "B2", "A3", "B3"]


def test_a_caller_sending_as_batches_form_does_not_starve_a_backlog() -> None:
    """A caller whose queue emptied with each batch (one request at a time, or a video's window taken whole)
    counted as never served, and headed every batch while another's backlog of another size got none: 98
    batches to 0 in a second."""
    heads: list[str] = []

    def render(batch: list[str]) -> list[str]:
        heads.append(batch[0])
        time.sleep(0.01)
        return batch

    async def main() -> None:
        batcher = Batcher(render, max_batch_size=8, max_delay_s=0, max_queue=64)
        batcher.start()
        stop = False

        async def backlog() -> None:  # B: always 20 waiting, of its own size
            while not stop:
                await batcher.submit(batcher.admit(caller="B"), "B", key=(64, 64), deadline=None).future

        workers = [asyncio.ensure_future(backlog()) for _ in range(20)]
        await asyncio.sleep(0.2)
        heads.clear()
        t0, sent = time.monotonic(), []
        while time.monotonic() - t0 < 1.0:  # A: one request every 5 ms against a 10-ms render
            sent.append(batcher.submit(batcher.admit(caller="A"), "A", key=(32, 32), deadline=None).future)
            await asyncio.sleep(0.005)
        stop = True
        await asyncio.gather(*sent)
        for w in workers:
            w.cancel()
        batcher.close(5)

    asyncio.run(main())
    assert heads.count("B") >= 0.3 * len(heads) and heads.count("A") >= 0.3 * len(heads), heads


def test_one_caller_cannot_take_every_place() -> None:
    batcher = Batcher(lambda batch: batch, max_queue=4, max_per_caller=2)
    assert batcher.reserve == 1
    a1, _ = batcher.admit(caller="A"), batcher.admit(caller="A")
    with pytest.raises(QueueFullError, match=r"this caller already has 2 requests queued \(max_queue_per_caller=2\)"):
        batcher.admit(caller="A")
    for _ in range(5):  # a video stream's frames are bounded by its window, not by the caller's share
        batcher.admit(bounded=False, caller="A").release()
    batcher.admit(caller="B")
    a1.release()
    a1.release()  # idempotent
    batcher.admit(caller="A")  # 3 places taken: A 2, B 1; the last is kept for a caller with none queued
    with pytest.raises(QueueFullError, match=r"full for callers with requests queued already \(max_queue=4, of "
                                             r"which the last 1 are kept for callers with none\); this caller has 1"
                       ) as held:
        batcher.admit(caller="B")
    assert held.value.reason == "reserved"  # not a full queue (AdainQueueFull counts only "max_queue")
    batcher.admit(caller="C")
    with pytest.raises(QueueFullError, match=r"the request queue is full \(max_queue=4\)") as full:
        batcher.admit(caller="D")
    assert full.value.reason == "max_queue"


def test_two_bulk_callers_at_their_shares_leave_room_for_others() -> None:
    # Each caller may hold half the queue: two of them held all of it, and every other caller was refused.
    batcher = Batcher(lambda batch: batch, max_queue=64, max_per_caller=32)
    for caller in ("bulk-a", "bulk-b"):
        while True:
            try:
                batcher.admit(caller=caller)
            except QueueFullError:
                break
    assert batcher.depth == 64 - 8
    for i in range(8):  # one request each from callers with nothing queued
        batcher.admit(caller=f"single-{i}")
    assert batcher.depth == 64


def test_a_drain_ends_a_batchs_wait_to_fill() -> None:
    """A batch waits up to max_delay_s for more requests of its size; once a drain starts (shed) none will come
    and its grace is short, so the batch starts at once (it waited out its whole delay)."""
    async def main() -> float:
        batcher = Batcher(lambda batch: batch, max_batch_size=8, max_delay_s=120, max_queue=8)
        batcher.start()
        future = batcher.submit(batcher.admit(caller="A"), "x", key=(64, 64), deadline=None).future
        await asyncio.sleep(0.2)
        assert not future.done()  # waiting for company
        t0 = time.monotonic()
        batcher.shed(time.monotonic() + 30)
        assert (await asyncio.wait_for(future, 60)).output == "x"
        batcher.close(5)
        return time.monotonic() - t0

    assert asyncio.run(main()) < 60  # well before the 120 s it would have waited


def test_the_batcher_is_busy_while_a_batch_renders() -> None:
    """Long jobs (refine, print size) give way while the batcher is busy: its depth drops to 0 as a batch is taken,
    so a refine iteration ran beside the render it was to wait for."""
    rendering, finish = threading.Event(), threading.Event()

    def render(batch: list[str]) -> list[str]:
        rendering.set()
        finish.wait(30)
        return batch

    async def main() -> None:
        batcher = Batcher(render, max_batch_size=1, max_delay_s=0, max_queue=8)
        batcher.start()
        assert not batcher.busy
        future = batcher.submit(batcher.admit(caller="A"), "x", key=(64, 64), deadline=None).future
        assert await asyncio.to_thread(rendering.wait, 30)
        assert batcher.depth == 0 and batcher.busy  # taken from the queue, rendering
        finish.set()
        await asyncio.wait_for(future, 30)
        end = time.monotonic() + 10  # the render thread marks the batch done just after posting its results
        while batcher.busy:
            assert time.monotonic() < end, "still busy after its batch"
            await asyncio.sleep(0.01)
        batcher.close(5)

    asyncio.run(main())


def test_a_batchs_pixels_are_bounded() -> None:
    # Eight 1-MP photos of one size made one batch: 16 GB in a pod of 8.
    batches: list[int] = []

    def render(batch: list[str]) -> list[str]:
        batches.append(len(batch))
        return batch

    async def main() -> None:
        batcher = Batcher(render, max_batch_size=8, max_delay_s=0.5, max_queue=32, max_batch_pixels=1 << 20)
        batcher.start()
        futures = []
        for key, n in (((1024, 1024), 3), ((512, 512), 6), ((256, 256), 9)):
            futures += [batcher.submit(batcher.admit(caller=f"{key}-{i}"), "x", key=key, deadline=None).future
                        for i in range(n)]
        await asyncio.gather(*futures)
        batcher.close(5)

    asyncio.run(main())
    assert sorted(batches) == [1, 1, 1, 1, 2, 4, 8], batches  # at most 1 MP a batch, never over max_batch_size


def test_callers_take_turns_at_the_prepare_threads() -> None:
    # The decodes ran first come, first served: one caller's thirty photos all went before another's one.
    whose = contextvars.ContextVar("whose", default="")
    pool = FairExecutor(1, whose.get, name="test-fair")
    gate, order = threading.Event(), []

    def work(tag: str) -> str:
        gate.wait(10)
        order.append(tag)
        return tag

    try:
        whose.set("bulk")
        bulk = [pool.submit(work, f"bulk{i}") for i in range(6)]
        whose.set("one")
        one = pool.submit(work, "one")
        gate.set()
        assert one.result(10) == "one" and [f.result(10) for f in bulk] == [f"bulk{i}" for i in range(6)]
        assert order == ["bulk0", "one", "bulk1", "bulk2", "bulk3", "bulk4", "bulk5"]  # behind one piece, not six
        whose.set("bulk")
        failed = pool.submit(lambda: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            failed.result(10)
    finally:
        pool.shutdown(wait=True)
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(work, "late")


def test_cancelled_prepare_work_lets_go_of_its_request_at_once() -> None:
    """Cancelled work stayed in its caller's line, holding its request's bytes, until a thread reached it (one
    a round): a caller sending its share and cancelling, again and again, had 200 MiB waiting there."""
    import gc
    import weakref

    class Request:  # stands for a request's bytes
        pass

    pool = FairExecutor(1, lambda: "caller", name="test-cancel")
    gate = threading.Event()
    try:
        busy = pool.submit(gate.wait, 10)  # the one thread is busy
        requests = [Request() for _ in range(50)]
        refs = [weakref.ref(r) for r in requests]
        futures = [pool.submit(lambda r: r, r) for r in requests]
        del requests
        assert all(f.cancel() for f in futures)
        del futures
        gc.collect()
        assert not any(ref() for ref in refs)  # freed while the thread is still busy
        kept = pool.submit(lambda: "after")
        gate.set()
        assert busy.result(10) and kept.result(10) == "after"
        gate.clear()
        busy = pool.submit(gate.wait, 10)
        queued = [pool.submit(lambda: 1) for _ in range(3)]
        pool.shutdown(wait=False, cancel_futures=True)  # each cancel drops its entry: not while it is iterated
        assert all(f.cancelled() for f in queued)
        gate.set()
    finally:
        gate.set()
        pool.shutdown(wait=True)


def test_per_caller_setting() -> None:
    assert parse_settings([]).per_caller == 32  # half of --max-queue 64
    assert parse_settings(["--max-queue", "5"]).per_caller == 3
    assert parse_settings(["--max-queue", "8", "--max-queue-per-caller", "8"]).per_caller == 8  # no share
    assert parse_settings(["--max-queue", "8", "--max-queue-per-caller", "100"]).per_caller == 8


def test_shares_by_token_name_on_the_real_server(decoder_path: Path, tmp_path: Path) -> None:
    """Alice's second request finds her share taken, Bob's still gets a place; the log names them."""
    tokens = tmp_path / "tokens"
    tokens.write_text(f"alice {ALICE}\nbob {BOB}\n")
    # A batch waits up to 1.5 s to fill: Alice's first request holds her one place that long.
    srv = ServerProcess(decoder_path, "--auth-tokens-file", str(tokens), "--max-queue", "4", "--max-queue-per-caller",
                        "1", *NO_REFINE, "--max-batch-size", "8", "--max-batch-delay-ms", "1500",
                        "--log-level", "INFO")  # refusals: INFO

    async def main() -> tuple[list, dict]:
        async with AsyncStyleTransferClient(srv.target, token=ALICE, timeout=60, retries=0) as alice, \
                AsyncStyleTransferClient(srv.target, token=BOB, timeout=60, retries=0) as bob:
            first = asyncio.ensure_future(alice.stylize(CONTENT, STYLE))
            await asyncio.to_thread(srv.wait_queued, 1)  # her one place is taken
            outcomes = await asyncio.gather(first, alice.stylize(CONTENT, STYLE), bob.stylize(CONTENT, STYLE),
                                            return_exceptions=True)
            return outcomes, await bob.server_info()

    try:
        srv.wait_serving()
        (a1, a2, b1), info = asyncio.run(main())
        assert a1.width == 48 and b1.width == 48
        assert isinstance(a2, StyleTransferError) and a2.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_queue_per_caller=1" in a2.details
        assert a1.timings.batch_size == b1.timings.batch_size == 2  # Bob's request joined Alice's batch
        assert info["batching"]["max_queue_per_caller"] == 1
        assert "code=RESOURCE_EXHAUSTED" in "".join(srv.stderr_lines)
        assert "caller=alice" in "".join(srv.stderr_lines)
        text = srv.metrics_text()
        assert 'adain_queue_refused_total{reason="max_queue_per_caller"} 1.0' in text
        assert 'adain_caller_requests_total{caller="alice",code="RESOURCE_EXHAUSTED"} 1.0' in text  # who uses it
        assert 'adain_caller_requests_total{caller="bob",code="OK"} 2.0' in text  # Stylize, GetServerInfo
        assert srv.terminate() == 0
    finally:
        srv.kill()


def test_a_front_ends_visitors_are_callers_of_their_own(decoder_path: Path, tmp_path: Path) -> None:
    """A token marked "front" (adain-web) may name the end user of each call: each is then a caller with their
    own share; another caller's end-user metadata is ignored (it would let one caller pose as many)."""
    web_token = "web-token-0123456789abcdef"
    tokens = tmp_path / "tokens"
    tokens.write_text(f"alice {ALICE}\nweb {web_token} front\n")
    srv = ServerProcess(decoder_path, "--auth-tokens-file", str(tokens), "--max-queue", "8", "--max-queue-per-caller",
                        "1", *NO_REFINE, "--max-batch-size", "8", "--max-batch-delay-ms", "1500", "--log-level", "INFO")

    async def main() -> list:
        async with AsyncStyleTransferClient(srv.target, token=web_token, timeout=60, retries=0) as web, \
                AsyncStyleTransferClient(srv.target, token=ALICE, timeout=60, retries=0) as alice:
            first = asyncio.ensure_future(web.stylize(CONTENT, STYLE, end_user="203.0.113.1"))
            first_alice = asyncio.ensure_future(alice.stylize(CONTENT, STYLE, end_user="x"))
            await asyncio.to_thread(srv.wait_queued, 2)
            return await asyncio.gather(
                first, first_alice,
                web.stylize(CONTENT, STYLE, end_user="203.0.113.1"),  # the same visitor: their share is taken
                web.stylize(CONTENT, STYLE, end_user="203.0.113.2"),  # another visitor: a place of their own
                alice.stylize(CONTENT, STYLE, end_user="y"),  # alice is no front: still alice, share taken
                return_exceptions=True)

    web_page = None
    try:
        srv.wait_serving()
        first, first_alice, same, other, alice_again = asyncio.run(main())
        assert first.width == first_alice.width == other.width == 48
        for refused in (same, alice_again):
            assert isinstance(refused, StyleTransferError) and "max_queue_per_caller=1" in refused.details
        def callers(log: str) -> set[str]:
            return set(re.findall(r" caller=(\S+)", log))

        srv.wait_logged(lambda log: len(callers(log)) >= 3)
        assert callers("".join(srv.stderr_lines)) == {"web/203.0.113.1", "web/203.0.113.2", "alice"}

        # adain-web names its visitor: the peer, or behind a proxy (--forwarded-for) the last forwarded address
        (tmp_path / "web-token").write_text(web_token + "\n")
        web_page = WebProcess(srv.target, "--token-file", str(tmp_path / "web-token"), "--forwarded-for")
        files = [("content", ("c.png", CONTENT, "image/png")), ("styles", ("s.png", STYLE, "image/png"))]
        # a proxy that adds a line of its own: the visitor's forged line came first and was taken
        # (three visitors at once: one batch window of the 1.5 s above, not three)
        with ThreadPoolExecutor(3) as pool:
            answers = pool.map(lambda headers: httpx.post(web_page.url + "/api/stylize", files=files, headers=headers,
                                                          timeout=60),
                               ({}, {"X-Forwarded-For": "10.9.9.9, 198.51.100.7"},
                                [("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-For", "198.51.100.8")]))
            for r in answers:
                assert r.status_code == 200, r.text
        srv.wait_logged(lambda log: {"web/127.0.0.1", "web/198.51.100.7", "web/198.51.100.8"} <= callers(log))
        assert "web/6.6.6.6" not in callers("".join(srv.stderr_lines))
        web_page.stop()
        # without --forwarded-for the visitor is the peer whatever it sends (uvicorn took a local peer's header)
        web_page = WebProcess(srv.target, "--token-file", str(tmp_path / "web-token"))
        r = httpx.post(web_page.url + "/api/stylize", files=files, headers={"X-Forwarded-For": "6.6.6.7"}, timeout=60)
        assert r.status_code == 200, r.text
        assert "web/6.6.6.7" not in callers(srv.wait_logged(lambda log: log.count("caller=web/127.0.0.1") >= 2))
        assert srv.terminate() == 0
    finally:
        if web_page is not None:
            web_page.stop()
        srv.kill()


def _gated_batcher(max_batch_size: int, batch_s: float) -> tuple[Batcher, threading.Event]:
    """A started batcher whose batches render when the gate is set, timed at ``batch_s`` a 64 x 64 request (as by
    earlier batches; a drain counts each request by its pixels): a drain's sums with a batch rendering for as
    long as a test needs."""
    gate = threading.Event()

    def render(batch: list) -> list:
        gate.wait(10)
        return batch

    batcher = Batcher(render, max_batch_size=max_batch_size, max_delay_s=0, max_queue=64)
    batcher.start()
    batcher._unit_s = batch_s / (64 * 64)
    return batcher, gate


async def _outcome(item: Any) -> str:
    """"ok" where the request was rendered, "shed" where a drain refused it."""
    try:
        await item.future
        return "ok"
    except ClosedError:
        return "shed"


def test_a_drain_counts_each_batch_by_its_pixels() -> None:
    """Found by an outside tester: one average a batch, whatever its size, was timed on batches of one, so a drain
    took a batch of eight for as long as one, kept what it could not render and cut it all at the grace's end.
    Here a 64 x 64 request takes 0.1 s: one renders, then a batch of eight 64 x 64 (0.8 s) fits a 1.5-s grace
    and one of eight 128 x 128 (3.2 s) does not, so it is refused at once. A video's frame is never shed."""
    async def main() -> tuple[int, list[str]]:
        batcher, gate = _gated_batcher(8, 0.1)
        batcher.submit(batcher.admit(caller="first"), "first", key=(64, 64), deadline=None)
        await asyncio.sleep(0.05)  # rendering, held by the gate
        items = [batcher.submit(batcher.admit(caller=f"c{i}"), i, key=(64, 64) if i < 8 else (128, 128),
                                deadline=None) for i in range(16)]
        frame = batcher.submit(batcher.admit(bounded=False), "frame", key=(32, 32), deadline=None)
        shed = batcher.shed(time.monotonic() + 1.5)
        gate.set()
        outcomes = [await _outcome(it) for it in [*items, frame]]
        batcher.close(5)
        return shed, outcomes

    shed, outcomes = asyncio.run(main())
    assert shed == 8 and outcomes == ["ok"] * 8 + ["shed"] * 8 + ["ok"], outcomes


def test_a_drain_sheds_by_the_render_threads_order_and_refuses_late_arrivals() -> None:
    """A bulk caller's five requests queued before three single callers' (a batch each, 1 s, one rendering, a
    3.5-s grace: two more batches fit after it). The render thread takes the singles first (their turn), so the drain
    keeps two of them and sheds the third and the backlog; counted oldest first, it kept two of the backlog
    and refused the singles, and the backlog was cut at the grace. A request prepared while the drain began
    is refused as it comes where the queue will not reach it, and rendered where it will."""
    async def main() -> tuple[list[str], str, str]:
        batcher, gate = _gated_batcher(1, 1.0)
        batcher.submit(batcher.admit(caller="bulk"), "first", key=(64, 64), deadline=None)
        await asyncio.sleep(0.05)  # rendering, held by the gate
        items = [batcher.submit(batcher.admit(caller="bulk"), f"bulk{i}", key=(64, 64), deadline=None)
                 for i in range(5)]
        items += [batcher.submit(batcher.admit(caller=c), c, key=(64, 64), deadline=None) for c in "ABC"]
        batcher.shed(time.monotonic() + 3.5)
        late = batcher.submit(batcher.admit(caller="D"), "late", key=(64, 64), deadline=None)
        await asyncio.sleep(0.05)
        late_shed = late.future.done() and isinstance(late.future.exception(), ClosedError)
        gate.set()
        outcomes = [await _outcome(it) for it in items]
        batcher._drain_until = time.monotonic() + 60  # a longer grace: a late request that fits is rendered
        fits = await _outcome(batcher.submit(batcher.admit(caller="E"), "fits", key=(64, 64), deadline=None))
        batcher.close(5)
        return outcomes, "shed" if late_shed else "kept", fits

    outcomes, late, fits = asyncio.run(main())
    assert outcomes == ["shed"] * 5 + ["ok", "ok", "shed"] and late == "shed" and fits == "ok", (outcomes, late)


def test_a_request_come_during_a_drain_does_not_push_out_one_kept() -> None:
    """One batch fits the grace after the one rendering, and holds the bulk caller's next request. A new caller's
    request comes while the drain runs: its turn is earlier, but the request kept stays kept, and it is refused."""
    async def main() -> list[str]:
        batcher, gate = _gated_batcher(1, 1.0)
        batcher.submit(batcher.admit(caller="bulk"), "first", key=(64, 64), deadline=None)
        await asyncio.sleep(0.05)  # rendering, held by the gate
        kept = batcher.submit(batcher.admit(caller="bulk"), "kept", key=(64, 64), deadline=None)
        assert batcher.shed(time.monotonic() + 2.5) == 0
        late = batcher.submit(batcher.admit(caller="new"), "late", key=(64, 64), deadline=None)
        await asyncio.sleep(0.05)
        gate.set()
        outcomes = [await _outcome(it) for it in (kept, late)]
        batcher.close(5)
        return outcomes

    assert asyncio.run(main()) == ["ok", "shed"]


def test_a_drain_with_nothing_rendering_gives_the_queue_the_whole_grace() -> None:
    """Three requests of three sizes waiting for their batches to fill (none rendering), 1 s a batch, a 2.5-s grace:
    two batches fit, one is shed. Counting one batch as rendering when none was shed a slow replica's whole queue."""
    async def main() -> tuple[int, list[str]]:
        batcher = Batcher(lambda batch: batch, max_batch_size=8, max_delay_s=30, max_queue=64)
        batcher.start()
        batcher._unit_s = 1.0 / (64 * 64)  # as timed by earlier batches: 1 s a 64 x 64 request
        items = [batcher.submit(batcher.admit(caller=f"c{i}"), i, key=(64, 64 + 8 * i), deadline=None)
                 for i in range(3)]
        await asyncio.sleep(0.05)  # the head waits for its batch to fill
        shed = batcher.shed(time.monotonic() + 2.5)
        batcher.close(5)  # what is left renders now
        outcomes = [await _outcome(it) for it in items]
        return shed, outcomes

    shed, outcomes = asyncio.run(main())
    assert shed == 1 and outcomes == ["ok", "ok", "shed"]


def test_a_drain_before_any_batch_is_timed_sheds_by_the_warm_ups_time() -> None:
    """A server stopped soon after its start had timed no batch and refused none of its queue early: its
    clients waited out the grace, then were cut. The warm-up's time a pixel stands in, until a batch replaces it."""
    async def main() -> tuple[int, list[str], float]:
        batcher = Batcher(lambda batch: batch, max_batch_size=8, max_delay_s=30, max_queue=64)
        batcher.start()
        batcher.seed_unit(1.0 / (64 * 64))  # the warm-up: 1 s a 64 x 64 render
        items = [batcher.submit(batcher.admit(caller=f"c{i}"), i, key=(64, 64 + 8 * i), deadline=None)
                 for i in range(3)]
        await asyncio.sleep(0.05)
        shed = batcher.shed(time.monotonic() + 2.5)
        batcher.close(5)
        outcomes = [await _outcome(it) for it in items]
        return shed, outcomes, batcher._unit_s

    shed, outcomes, unit_s = asyncio.run(main())
    assert shed == 1 and outcomes == ["ok", "ok", "shed"]
    assert unit_s < 1e-3 / (64 * 64)  # the batches timed replaced the warm-up's (not averaged with it)


@pytest.mark.parametrize("fails", [False, True])
def test_a_batch_no_longer_counts_as_rendering_when_its_waiters_hear_of_its_end(fails: bool) -> None:
    """Results were posted before the batch stopped counting as rendering (a concurrency review): a waiter woken by
    its result, or a call in between, saw it busy, a longer Retry-After and, in a drain, a queue behind an ended
    batch, which refused a request due at once. What the batch looks like is read as each result is posted."""

    def render(batch: list[str]) -> list[str]:
        if fails:
            raise RuntimeError("render failed")
        return batch

    seen: list[tuple[bool, bool]] = []

    async def main() -> None:
        batcher = Batcher(render, max_batch_size=1, max_delay_s=0, max_queue=4)
        post = batcher._post

        def probe(item, result=None, error=None) -> None:  # on the render thread, as the result is handed over
            seen.append((batcher._rendering_since is not None, batcher.busy))
            post(item, result, error)

        batcher._post = probe  # type: ignore[method-assign]
        batcher.start()
        try:
            await batcher.submit(batcher.admit(caller="a"), "x", key="k", deadline=None).future
        except RuntimeError:
            pass
        batcher.close(5)

    asyncio.run(main())
    assert seen == [(False, False)], seen


def test_a_request_that_fails_its_batch_fails_alone() -> None:
    """One request whose input made the render raise (a bug's trigger: a clip's frame with a mask reaching no
    feature cell did) failed every request batched with it, other callers' photos too. Now the batch's requests
    are rendered again one at a time, and only the one that fails alone gets the error."""
    calls: list[list[str]] = []
    gate = threading.Event()

    def render(batch: list[str]) -> list[str]:
        gate.wait(10)  # the first batch holds the thread until all four are queued behind it
        calls.append(list(batch))
        if "bad" in batch:
            raise ValueError("this input breaks the render")
        return [name.upper() for name in batch]

    async def main() -> list[str]:
        # a clip's frame may not be rendered again (its render moved its stream's state on: a review's)
        batcher = Batcher(render, max_batch_size=8, max_delay_s=0, max_queue=8,
                          repeatable=lambda name: not name.startswith("frame"))
        batcher.start()

        def send(caller: str, name: str) -> asyncio.Future:
            return batcher.submit(batcher.admit(caller=caller), name, key="64x64", deadline=None).future

        first = send("a", "first")
        await asyncio.sleep(0.1)
        futures = [send("a", "one"), send("b", "bad"), send("c", "two"), send("d", "frame"), send("a", "three")]
        gate.set()
        results = await asyncio.gather(first, *futures, return_exceptions=True)
        batcher.close(5)
        return [r.output if hasattr(r, "output") else f"{type(r).__name__}: {r}" for r in results]

    results = asyncio.run(main())
    broke = "ValueError: this input breaks the render"
    assert results == ["FIRST", "ONE", broke, "TWO", broke, "THREE"], results  # the frame: the batch's error
    batched = [c for c in calls if len(c) > 1]
    assert len(batched) == 1 and sorted(batched[0]) == ["bad", "frame", "one", "three", "two"], calls  # then alone:
    assert sorted(c[0] for c in calls if len(c) == 1) == ["bad", "first", "one", "three", "two"], calls
