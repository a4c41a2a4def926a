"""A fleet mid-upgrade. A server older than a field drops it unread (proto3) and answers without it: a new client's
masks came back as a plain blend, exit 0 (an outside tester's rolling upgrade). Every reply of this server lists
what it implements (x-adain-features), and the client refuses a reply that lacks a feature its request used
(UNIMPLEMENTED, naming it); a plain call to the old server is still served. The old server here is a stand-in: the
contract's Stylize and StylizeVideo as a server before regions answered them (each image back, no new field read)."""

from __future__ import annotations

import asyncio
import io
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from PIL import Image

from adain.client import StyleTransferClient, StyleTransferError
from adain.client.aio import AsyncStyleTransferClient
from adain.v1 import style_transfer_pb2 as pb
from adain.v1 import style_transfer_pb2_grpc as pb_grpc
from adain.wire import FEATURES, FEATURES_KEY
from helpers import ServerProcess, WebProcess, stand_in_server, wait_for
from synth import band_mask, make_image, photo_with_exif

CONTENT = make_image(64, 48, seed=61)
STYLES = [make_image(40, 40, seed=62, kind="noise"), make_image(40, 40, seed=63)]
MASKS = [band_mask(64, 48, 0, 30), band_mask(64, 48, 30, 64)]


class _OldServicer(pb_grpc.StyleTransferServicer):
    def GetServerInfo(self, request: pb.GetServerInfoRequest, context: grpc.ServicerContext) -> pb.ServerInfo:
        return pb.ServerInfo(model="adain-vgg19", limits=pb.Limits(max_styles=4, max_pixels=1 << 24))  # no features

    def Stylize(self, request: pb.StylizeRequest, context: grpc.ServicerContext) -> pb.StylizeResponse:
        if not request.styles:  # (a preset, a field it does not know, leaves none)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "styles: at least 1 style is required")
        with Image.open(io.BytesIO(request.content)) as img:
            w, h = img.size
        context.set_trailing_metadata((("x-request-id", "old-1"),))
        return pb.StylizeResponse(image=request.content, width=w, height=h, format=pb.IMAGE_FORMAT_PNG)

    def StylizeWithProgress(self, request: pb.StylizeRequest, context: grpc.ServicerContext) -> Iterator:
        yield pb.StylizeEvent(result=self.Stylize(request, context))

    def StylizeVideo(self, requests: Iterator[pb.VideoRequest], context: grpc.ServicerContext) -> Iterator:
        context.send_initial_metadata((("x-request-id", "old-2"),))  # at once, as every version did
        index = 0
        for r in requests:
            if r.WhichOneof("part") == "frame":
                with Image.open(io.BytesIO(r.frame)) as img:
                    w, h = img.size
                yield pb.VideoFrame(image=r.frame, index=index, width=w, height=h, format=pb.IMAGE_FORMAT_JPEG)
                index += 1


@pytest.fixture(scope="module")
def old() -> Iterator[str]:
    """An old server on 127.0.0.1 (its address), with gRPC health as every version had."""
    with stand_in_server(_OldServicer(), health=True) as address:
        yield address


class _YesterdaysServicer(_OldServicer):
    """A server from the day GetServerInfo.features came, the day before the same list came with every reply."""

    def __init__(self, name: str = "yesterday", info_fails: bool = False) -> None:
        self.name, self.info_fails = name, info_fails

    def GetServerInfo(self, request: pb.GetServerInfoRequest, context: grpc.ServicerContext) -> pb.ServerInfo:
        if self.info_fails:
            context.abort(grpc.StatusCode.INTERNAL, "no info today")
        context.set_trailing_metadata((("x-served-by", self.name),))
        return pb.ServerInfo(model="adain-vgg19", features=FEATURES)

    def Stylize(self, request: pb.StylizeRequest, context: grpc.ServicerContext) -> pb.StylizeResponse:
        reply = super().Stylize(request, context)
        context.set_trailing_metadata((("x-request-id", "y-1"), ("x-served-by", self.name)))
        return reply


def test_a_server_listing_its_features_in_server_info_alone_is_taken_at_its_word(capsys) -> None:
    """Its replies carry no list, its GetServerInfo does: a call with masks was refused (a page upgraded before its
    servers failed every photo, its keep_exif box ticked by what GetServerInfo said)."""
    with stand_in_server(_YesterdaysServicer(), health=True) as address:
        with StyleTransferClient(address, timeout=30) as client:
            assert client.stylize(CONTENT, STYLES, masks=MASKS).served_by == "yesterday"
            assert client.stylize(photo_with_exif(64, 48), STYLES[0], keep_exif=True).image

        async def run() -> None:
            async with AsyncStyleTransferClient(address, timeout=30) as client:
                assert (await client.stylize(CONTENT, STYLES, masks=MASKS)).served_by == "yesterday"

        asyncio.run(run())
    # six such replicas behind one address list: four GetServerInfo calls never reached the one that had answered
    # (round robin), and its result was refused as lacking the feature
    import contextlib

    with contextlib.ExitStack() as stack:
        names = [f"replica-{i}" for i in range(6)]
        target = ",".join(stack.enter_context(stand_in_server(_YesterdaysServicer(n), health=True)) for n in names)
        with StyleTransferClient(target, timeout=30) as client:
            served = {client.stylize(CONTENT, STYLES, masks=MASKS).served_by for _ in range(12)}
        assert served <= set(names), served  # (every result taken, whichever replica it came from)
    # one whose GetServerInfo fails: said so, not "does not list"
    with stand_in_server(_YesterdaysServicer(info_fails=True), health=True) as address:
        with StyleTransferClient(address, timeout=30, retries=0) as client:
            with pytest.raises(StyleTransferError) as info:
                client.stylize(CONTENT, STYLES, masks=MASKS)
    assert info.value.code == grpc.StatusCode.UNAVAILABLE and info.value.details.startswith(
        "could not learn what the server that answered (yesterday) implements: its reply lists no features, and "
        "GetServerInfo failed (INTERNAL: no info today)"), info.value


def test_a_replica_is_found_while_other_threads_share_the_round_robin() -> None:
    """Asking GetServerInfo stopped after three turns of the round robin, but other threads' calls take turns of the
    same channel in between: 6 of 40 good results were refused UNAVAILABLE "could not learn" (a thread-safety
    review). Six threads of plain calls beside each call with masks, on a fresh client each time."""
    import threading

    with stand_in_server(_YesterdaysServicer("r1"), health=True) as a, \
            stand_in_server(_YesterdaysServicer("r2"), health=True) as b:
        refused = []
        for _ in range(25):
            with StyleTransferClient(f"{a},{b}", retries=0, timeout=10) as client:
                client.stylize(CONTENT, STYLES)  # (connected to both)
                client.stylize(CONTENT, STYLES)
                stop = threading.Event()

                def plain(client: StyleTransferClient = client, stop: threading.Event = stop) -> None:
                    while not stop.is_set():
                        client.stylize(CONTENT, STYLES[0])

                threads = [threading.Thread(target=plain) for _ in range(6)]
                for t in threads:
                    t.start()
                try:
                    client.stylize(CONTENT, STYLES, masks=MASKS)
                except StyleTransferError as e:
                    refused.append(e.details)
                finally:
                    stop.set()
                    for t in threads:
                        t.join()
    assert not refused, refused


def test_what_a_replica_said_is_asked_again_after_a_while(monkeypatch: pytest.MonkeyPatch) -> None:
    """A replica's GetServerInfo answer was kept for the client's life: one replaced under its name (rolled back to
    a version without a feature, or the other way) was judged by its predecessor's features for good (a
    thread-safety review). It is taken for FEATURES_FOR_S, then asked again."""
    from adain.client import _client

    class Counted(_YesterdaysServicer):
        asked = 0

        def GetServerInfo(self, request: pb.GetServerInfoRequest, context: grpc.ServicerContext) -> pb.ServerInfo:
            Counted.asked += 1
            return super().GetServerInfo(request, context)

    with stand_in_server(Counted("r"), health=True) as address:
        with StyleTransferClient(address, timeout=30) as client:
            client.stylize(CONTENT, STYLES, masks=MASKS)
            client.stylize(CONTENT, STYLES, masks=MASKS)
            assert Counted.asked == 1  # known: not asked for every call
            monkeypatch.setattr(_client, "FEATURES_FOR_S", 0.5)
            time.sleep(0.6)
            client.stylize(CONTENT, STYLES, masks=MASKS)
            assert Counted.asked == 2


def test_the_asyncio_clients_close_during_the_ask_is_no_cancel_of_the_callers_task() -> None:
    """close() while a reply's server was being asked for its features left gRPC's CancelledError in the caller's
    task, which asyncio, gather and TaskGroup read as the task's own cancel (a thread-safety review): it is the
    StyleTransferError CANCELLED that close() promises."""

    class SlowInfo(_YesterdaysServicer):
        def GetServerInfo(self, request: pb.GetServerInfoRequest, context: grpc.ServicerContext) -> pb.ServerInfo:
            time.sleep(1.0)
            return super().GetServerInfo(request, context)

    async def run() -> tuple[str, bool]:
        client = AsyncStyleTransferClient(address, timeout=10)
        task = asyncio.ensure_future(client.stylize(CONTENT, STYLES, masks=MASKS))
        await asyncio.sleep(0.5)  # answered; its server is being asked
        await client.close()
        try:
            await task
        except StyleTransferError as e:
            return e.code.name, task.cancelled()
        except asyncio.CancelledError:
            return "CancelledError", task.cancelled()
        return "a result", False

    with stand_in_server(SlowInfo("y"), health=True) as address:
        # (3.10 cannot tell the two apart: there it stays CancelledError, as the README says)
        assert asyncio.run(run()) == (("CANCELLED", False) if sys.version_info >= (3, 11) else ("CancelledError", True))


def _refused(call, feature: str) -> str:
    with pytest.raises(StyleTransferError) as info:
        call()
    assert info.value.code == grpc.StatusCode.UNIMPLEMENTED, info.value
    assert f"does not list {feature!r} in its features" in info.value.details, info.value.details
    return info.value.details


def test_a_reply_without_a_feature_the_call_used_is_refused(old: str, capsys, tmp_path: Path) -> None:
    with StyleTransferClient(old, timeout=30) as client:
        assert client.stylize(CONTENT, STYLES[0]).image == CONTENT  # a plain call: served
        said = _refused(lambda: client.stylize(CONTENT, STYLES, masks=MASKS), "regions")
        assert "(masks, labels or region_alphas)" in said and "Upgrade that server" in said
        _refused(lambda: client.stylize(CONTENT, STYLES, labels=MASKS[0], label_values=[0, 255]), "regions")
        _refused(lambda: client.stylize(CONTENT, STYLES, masks=MASKS, region_alphas=[1, 0.5]), "regions")
        _refused(lambda: client.stylize(photo_with_exif(64, 48), STYLES[0], keep_exif=True), "keep_exif")
        with pytest.raises(StyleTransferError) as info:  # refused by the old server: why it may be, said
            client.stylize(CONTENT, "preset:vintage")
        assert info.value.details == ("styles: at least 1 style is required (its reply lists no features: if the "
                                      "server is older than what this call uses, a preset (preset:NAME), it did not "
                                      "read them)"), info.value
        from adain.client.cli import main

        # the CLI's words: the hint kept beside its flags; a feature by the name the server lists
        (tmp_path / "c.jpg").write_bytes(photo_with_exif(64, 48))
        (tmp_path / "s.png").write_bytes(STYLES[0])
        c, out = str(tmp_path / "c.jpg"), str(tmp_path / "o.jpg")
        assert main([c, "-s", "preset:vintage", "-o", out, "--server", old]) == 1
        assert capsys.readouterr().err.strip().endswith("a preset (preset:NAME), it did not read them)")
        assert main([c, "-s", str(tmp_path / "s.png"), "--keep-exif", "-o", out, "--server", old]) == 1
        assert "does not list 'keep_exif' in its features" in capsys.readouterr().err
        assert main(["--server-info", "--server", old]) == 0  # its zeros are said to be unknowns
        assert capsys.readouterr().err.startswith("adain-stylize: warning: this server lists no features: it is older")
        with pytest.raises(StyleTransferError, match="this server has no style library: it is older than ListStyles"):
            client.list_styles()  # (was gRPC's "UNIMPLEMENTED: Method not found!")
        # a clip: refused at its first frame, before any is handed on
        frames = [CONTENT] * 3
        assert len(list(client.stylize_video(frames, STYLES[0]))) == 3
        _refused(lambda: list(client.stylize_video(frames, STYLES, masks=MASKS)), "regions")


def test_the_asyncio_client_refuses_it_too(old: str) -> None:
    async def run() -> None:
        async with AsyncStyleTransferClient(old, timeout=30) as client:
            assert (await client.stylize(CONTENT, STYLES[0])).image == CONTENT
            with pytest.raises(StyleTransferError, match="does not list 'regions'") as info:
                await client.stylize(CONTENT, STYLES, masks=MASKS)
            assert info.value.code == grpc.StatusCode.UNIMPLEMENTED
            with pytest.raises(StyleTransferError, match="does not list 'regions'"):
                async for _ in client.stylize_video([CONTENT] * 2, STYLES, masks=MASKS):
                    pass

    asyncio.run(run())


def test_every_reply_lists_the_servers_features(server: ServerProcess, old: str) -> None:
    """The server's replies carry the list (its refusals too); over a mixed fleet, a call with masks is stylized
    by regions, the old replica's plain blend refused and the call sent to the other (the page failed every other
    photo with keep_exif ticked), never answered as a plain blend."""
    from adain.v1 import style_transfer_pb2_grpc

    with grpc.insecure_channel(server.target) as channel:
        stub = style_transfer_pb2_grpc.StyleTransferStub(channel)
        _, call = stub.GetServerInfo.with_call(pb.GetServerInfoRequest(), timeout=30)
        assert dict(call.trailing_metadata())[FEATURES_KEY] == ",".join(FEATURES)
        with pytest.raises(grpc.RpcError) as info:
            stub.Stylize(pb.StylizeRequest(content=b"not an image"), timeout=30)
        assert dict(info.value.trailing_metadata())[FEATURES_KEY] == ",".join(FEATURES)
    with StyleTransferClient(f"{server.target},{old}", timeout=60) as client:
        plain = client.stylize(CONTENT, STYLES[0], weights=[1]).image
        for _ in range(6):  # each refused by the old replica is sent once more, round robin: to the new one
            result = client.stylize(CONTENT, STYLES, masks=MASKS)
            assert result.image not in (CONTENT, plain) and result.served_by.endswith(server.target.split(":")[-1])


def test_the_page_before_an_old_server_clears_its_keep_exif_box(server: ServerProcess, old: str, browser) -> None:
    """Ticked by default, the box made every photo a refusal once the client checks the reply: where the server does
    not list keep_exif, the page clears and disables it, saying why, and a photo is served."""
    import httpx
    from selenium.webdriver.common.by import By

    for target, has in ((server.target, True), (old, False)):
        web = WebProcess(target)
        try:
            features = httpx.get(web.url + "/api/info", timeout=30).json()["features"]
            assert ("keep_exif" in features) is has, features
            browser.get(web.url + "/")
            box = browser.find_element(By.ID, "keep_exif")
            wait_for(browser, lambda d: d.execute_script("return state.info.features !== undefined"))
            assert (box.is_selected(), box.is_enabled()) == ((True, True) if has else (False, False))
            said = browser.find_element(By.CSS_SELECTOR, "label[for=keep_exif]").text
            assert said.endswith("(this page's server is too old to keep them)") is not has, said
            if not has:
                reply = httpx.post(web.url + "/api/stylize", files={"content": ("c.png", CONTENT),
                                                                    "styles": ("s.png", STYLES[0])}, timeout=60)
                assert reply.status_code == 200, reply.text
        finally:
            web.stop()


def test_a_refused_reply_is_sent_again_only_where_another_replica_may_answer() -> None:
    """Round robin picks among the replicas already connected, so a client just started over a fleet mid-upgrade had
    its call with masks answered by the old replica twice and refused (1 in 12 runs of the test above, loaded): it is
    now sent up to 4 times, the last two after a short wait. To one IP address it is sent once: the same server would
    answer again (a balancer in front of one address balances connections)."""

    class Counted(_OldServicer):
        calls = 0

        def Stylize(self, request: pb.StylizeRequest, context: grpc.ServicerContext) -> pb.StylizeResponse:
            Counted.calls += 1
            return super().Stylize(request, context)

    with stand_in_server(Counted(), health=True) as address:
        local = address.replace("127.0.0.1", "localhost")  # (a name, but one server: a review found it sent 4 times)
        for target, calls in ((address, 1), (local, 1), (f"{address},{address}", 4)):
            Counted.calls = 0
            with StyleTransferClient(target, timeout=30) as client:
                start = time.monotonic()
                _refused(lambda: client.stylize(CONTENT, STYLES, masks=MASKS), "regions")
            assert Counted.calls == calls, target
            assert calls == 1 or time.monotonic() - start >= 0.7  # (the waits before the last two)


def test_a_clip_refused_by_a_replica_without_its_feature_is_opened_again_elsewhere(server: ServerProcess,
                                                                                    old: str) -> None:
    """A stream using a feature sends its frames once the replica that took it is known to have it; refused, it is
    opened again on the next replica with no frame read (over a fleet mid-upgrade every other clip with regions
    failed at its first frame). To the old server alone: refused, nothing read."""
    read: list[int] = []

    def frames(n: int = 2) -> Iterator[bytes]:
        for i in range(n):
            read.append(i)
            yield CONTENT

    def stylized(got: list) -> bool:
        return len(got) == 2 and all(f.image != CONTENT for f in got) and read == [0, 1]

    with StyleTransferClient(f"{server.target},{old}", timeout=60) as client:
        for _ in range(4):
            read.clear()
            assert stylized(list(client.stylize_video(frames(), STYLES, masks=MASKS)))
    with StyleTransferClient(old, timeout=60) as client:
        read.clear()
        _refused(lambda: list(client.stylize_video(frames(), STYLES, masks=MASKS)), "regions")
        assert read == []

    async def run() -> None:
        async with AsyncStyleTransferClient(f"{server.target},{old}", timeout=60) as client:
            for _ in range(4):
                read.clear()
                assert stylized([f async for f in client.stylize_video(frames(), STYLES, masks=MASKS)])
        async with AsyncStyleTransferClient(old, timeout=60) as client:
            read.clear()
            with pytest.raises(StyleTransferError, match="does not list 'regions'"):
                async for _ in client.stylize_video(frames(), STYLES, masks=MASKS):
                    pass
            assert read == []

    asyncio.run(run())


def test_the_library_asked_over_a_mixed_fleet_is_asked_again_of_another_replica(server: ServerProcess,
                                                                                 old: str) -> None:
    """ListStyles reaching a replica older than it (UNIMPLEMENTED) is asked of the next one, as a photo's call is
    sent again (adain-stylize --list-styles and the page's presets failed every other time mid-upgrade)."""
    with StyleTransferClient(server.target, timeout=30) as client:
        library = client.library()
    with StyleTransferClient(f"{server.target},{old}", timeout=30) as client:
        assert all(client.library() == library for _ in range(6))

    async def run() -> None:
        async with AsyncStyleTransferClient(f"{server.target},{old}", timeout=30) as client:
            for _ in range(6):
                assert await client.library() == library

    asyncio.run(run())


def test_an_asyncio_client_closed_while_a_refused_clip_waits_says_so(old: str) -> None:
    """Closed by another task as a refused stream was to be opened again, the asyncio client raised gRPC's
    UsageError "Channel is closed" (a review); it is the closed client's FAILED_PRECONDITION, as the blocking one's."""

    class Closing(AsyncStyleTransferClient):
        async def _check_served(self, *args, **kwargs):
            try:
                return await super()._check_served(*args, **kwargs)
            except StyleTransferError:
                asyncio.ensure_future(self.close())  # another task closes the client as the refusal comes
                raise

    async def run() -> None:
        client = Closing(f"{old},{old}", timeout=10)
        with pytest.raises(StyleTransferError) as info:
            async for _ in client.stylize_video([CONTENT, CONTENT], STYLES, masks=MASKS):
                pass
        assert info.value.code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.CANCELLED), info.value

    asyncio.run(run())
