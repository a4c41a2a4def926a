"""The asyncio client against the real server: the same calls, concurrent, streamed and cancelled."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import grpc
import numpy as np
import pytest

from adain.client import StyleRef, StyleTransferError
from adain.client.aio import AsyncStyleTransferClient
from helpers import REPO, ServerProcess
from synth import make_image, pixels

CONTENT = make_image(48, 32, seed=41)
STYLE = make_image(32, 32, seed=42, kind="noise")
OTHER = make_image(32, 32, seed=43, kind="gradient")


def test_aio_client_imports_no_torch() -> None:
    code = "import sys, adain.client.aio\nassert 'torch' not in sys.modules and 'numpy' not in sys.modules\n"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=60)


def test_calls_at_once_and_the_same_images_as_the_blocking_client(server: ServerProcess) -> None:
    from adain.client import StyleTransferClient

    async def main() -> tuple[list, str, dict, str]:
        async with AsyncStyleTransferClient(server.target, timeout=60) as client:
            results = await asyncio.gather(
                *(client.stylize(CONTENT, [STYLE, (OTHER, w)], alpha=0.7, request_id=f"aio-{i}")
                  for i, w in enumerate((0.0, 0.5, 1.0, 2.0)))
            )
            sid = await client.register_style(OTHER)
            by_id = await client.stylize(CONTENT, [STYLE, (StyleRef(sid), 1.0)], alpha=0.7)
            return results, await client.health(), await client.server_info(), by_id

    results, health, info, by_id = asyncio.run(main())
    assert [r.request_id for r in results] == ["aio-0", "aio-1", "aio-2", "aio-3"]
    assert all((r.width, r.height, r.format) == (48, 32, "png") and r.served_by for r in results)
    assert (health, info["device"]) == ("SERVING", "cpu")
    with StyleTransferClient(server.target, timeout=60) as blocking:
        same = blocking.stylize(CONTENT, [STYLE, (OTHER, 1.0)], alpha=0.7)
    # Weight 1 each: the same request (batched with others here, alone there: rounding may differ by a level).
    assert np.abs(pixels(results[2].image) - pixels(same.image)).max() <= 2
    assert np.abs(pixels(by_id.image) - pixels(same.image)).max() <= 2  # a registered style is the same style
    assert not (pixels(results[0].image) == pixels(results[3].image)).all()


def test_errors_are_the_blocking_clients(server: ServerProcess) -> None:
    async def main() -> list[StyleTransferError]:
        errors = []
        async with AsyncStyleTransferClient(server.target, timeout=60) as client:
            for kwargs in ({"alpha": 2.0}, {"format": "gif"}, {"content_size": -1}):
                with pytest.raises(StyleTransferError) as info:
                    await client.stylize(CONTENT, STYLE, **kwargs)
                errors.append(info.value)
            with pytest.raises(TypeError):  # a misspelt option fails before anything is sent
                await client.stylize(CONTENT, STYLE, alpah=0.5)
        return errors

    server_side, format_error, size_error = asyncio.run(main())
    assert server_side.code == grpc.StatusCode.INVALID_ARGUMENT and server_side.request_id
    assert [f for f, _ in server_side.violations] == ["alpha"]
    assert format_error.details.startswith("format: unsupported output format 'gif'")
    assert size_error.details.startswith("content_size: must be a whole number >= 0")


def test_progress_and_cancelling_a_refine(server: ServerProcess) -> None:
    async def main() -> tuple[list[int], int]:
        async with AsyncStyleTransferClient(server.target, timeout=120) as client:
            steps: list[int] = []

            async def note(p) -> None:  # a coroutine function is awaited
                steps.append(p.step)

            result = await client.stylize(CONTENT, STYLE, refine_steps=3, on_progress=note)
            assert result.timings.refine_steps == 3 and result.served_by  # the stream names its replica too

            started = asyncio.Event()
            long = asyncio.create_task(
                client.stylize(CONTENT, STYLE, refine_steps=400, on_progress=lambda p: started.set(),
                               request_id="aio-cancelled")
            )
            await asyncio.wait_for(started.wait(), 60)
            long.cancel()
            with pytest.raises(asyncio.CancelledError):
                await long
            after = await client.stylize(CONTENT, STYLE)  # the server goes on serving
            return steps, after.width

    steps, width = asyncio.run(main())
    assert steps == [1, 2, 3] and width == 48
    server.wait_logged(lambda log: "request_id=aio-cancelled method=StylizeWithProgress code=CANCELLED" in log)


def test_video_from_an_async_or_a_plain_iterable(server: ServerProcess) -> None:
    frames = [make_image(40, 24, seed=50 + i) for i in range(4)]

    async def agen() -> AsyncIterator[bytes]:
        for f in frames:
            await asyncio.sleep(0)
            yield f

    def broken():
        yield frames[0]
        raise RuntimeError("the camera went away")

    async def main() -> tuple[list, list]:
        async with AsyncStyleTransferClient(server.target, timeout=60) as client:
            a = [f async for f in client.stylize_video(agen(), STYLE, temporal="none", format="png")]
            b = [f async for f in client.stylize_video(iter(frames), STYLE, temporal="none", format="png")]
            with pytest.raises(RuntimeError, match="the camera went away"):
                async for _ in client.stylize_video(broken(), STYLE, temporal="none"):
                    pass
            stream = client.stylize_video(iter(frames), STYLE, temporal="none")
            first = await anext(stream)  # leaving early cancels the stream
            await stream.aclose()
            assert first.index == 0

            async def slow() -> AsyncIterator[bytes]:  # a camera whose next frame is long in coming
                yield frames[0]
                await asyncio.sleep(30)
                yield frames[1]

            got, t0 = [], time.monotonic()
            with pytest.raises(StyleTransferError) as info:  # stop=, as the blocking client has it
                async for f in client.stylize_video(slow(), STYLE, temporal="none", stop=lambda: bool(got)):
                    got.append(f)
            assert info.value.code == grpc.StatusCode.CANCELLED and len(got) == 1 and time.monotonic() - t0 < 20
            return a, b

    a, b = asyncio.run(main())
    assert [f.index for f in a] == [0, 1, 2, 3] and [(f.width, f.height) for f in a] == [(40, 24)] * 4
    assert all((pixels(x.image) == pixels(y.image)).all() for x, y in zip(a, b))


def test_streams_cancelled_at_once_leave_the_server_serving(server: ServerProcess) -> None:
    """Streams the client ends within a millisecond, again and again (the server once asked such a call for
    its peer after it had gone, and crashed within a few rounds)."""
    frames = [make_image(40, 24, seed=60 + i) for i in range(3)]

    def broken():
        yield frames[0]
        raise RuntimeError("gone")

    async def main() -> int:
        async with AsyncStyleTransferClient(server.target, timeout=60) as client:
            for _ in range(10):
                with pytest.raises(RuntimeError):
                    async for _ in client.stylize_video(broken(), STYLE, temporal="none"):
                        pass
                stream = client.stylize_video(iter(frames), STYLE, temporal="none")
                await anext(stream)
                await stream.aclose()
            return (await client.stylize(CONTENT, STYLE)).width

    assert asyncio.run(main()) == 48
    assert server.alive()


def test_a_client_made_outside_an_event_loop_works_in_the_loop_of_its_first_call(server: ServerProcess) -> None:
    """A module-level client (a FastAPI or aiohttp app's) failed every call: "attached to a different loop"."""
    client = AsyncStyleTransferClient(server.target, timeout=60)  # no loop runs here

    async def main() -> tuple[int, str]:
        result = await client.stylize(CONTENT, STYLE)
        health = await client.health()
        await client.close()
        return result.width, health

    assert asyncio.run(main()) == (48, "SERVING")
    never_used = AsyncStyleTransferClient(server.target)
    asyncio.run(never_used.close())  # closed before any call: nothing to close, no error

    async def after_close() -> StyleTransferError:
        with pytest.raises(StyleTransferError) as info:
            await never_used.stylize(CONTENT, STYLE)
        return info.value

    assert asyncio.run(after_close()).code == grpc.StatusCode.FAILED_PRECONDITION


def test_ids_and_user_names_a_header_cannot_carry_are_sent_encoded(server: ServerProcess) -> None:
    """A service passing on its caller's request id or user name ("café-42", "José") got gRPC's own exception
    from this client and INTERNAL "Invalid metadata" from the blocking one."""
    from adain.client import StyleTransferClient

    async def main() -> list[str | None]:
        async with AsyncStyleTransferClient(server.target, timeout=60) as client:
            return [(await client.stylize(CONTENT, STYLE, request_id=rid, end_user="José")).request_id
                    for rid in ("café-42", "a\nb", "tab\there", "plain-1")]

    assert asyncio.run(main()) == ["caf%C3%A9-42", "a%0Ab", "tab%09here", "plain-1"]
    with StyleTransferClient(server.target, timeout=60) as blocking:
        assert blocking.stylize(CONTENT, STYLE, request_id="100% café").request_id == "100%25%20caf%C3%A9"
        with pytest.raises(StyleTransferError) as info:
            blocking.stylize(CONTENT, STYLE, request_id=42)  # type: ignore[arg-type]
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and info.value.violations[0][0] == "request_id"


@pytest.mark.skipif(sys.version_info < (3, 11), reason="Task.cancelling(): on 3.10 a close's cancel is a cancel")
def test_calls_running_when_the_client_closes_raise_its_error_not_a_cancel(server: ServerProcess) -> None:
    """close() with calls in flight raised CancelledError in tasks nobody cancelled: FastAPI, gather and
    TaskGroup read it as the task's own cancel."""
    async def main() -> tuple[object, object]:
        client = AsyncStyleTransferClient(server.target, timeout=60)

        async def call() -> object:
            try:
                return await client.stylize(CONTENT, STYLE, refine_steps=200)
            except (StyleTransferError, asyncio.CancelledError) as e:
                return e

        task = asyncio.create_task(call())
        await asyncio.sleep(1.0)
        await client.close()
        got = await task
        cancelled = asyncio.create_task(AsyncStyleTransferClient(server.target).stylize(CONTENT, STYLE,
                                                                                     refine_steps=200))
        await asyncio.sleep(0.5)
        cancelled.cancel()  # a task's own cancel is still a cancel
        try:
            await cancelled
            own: object = None
        except asyncio.CancelledError as e:
            own = e
        return got, own

    got, own = asyncio.run(main())
    assert isinstance(got, StyleTransferError) and got.code == grpc.StatusCode.CANCELLED, got
    assert "the client was closed while this call ran" in got.details and got.request_id
    assert isinstance(own, asyncio.CancelledError)


def test_a_misspelt_option_is_named_with_the_nearest_one() -> None:
    from adain.client import StyleTransferClient

    with StyleTransferClient("127.0.0.1:1") as client:  # refused before anything is sent
        for kwargs, said in (({"alhpa": 0.5}, "'alhpa' (did you mean 'alpha'?)"),
                             ({"on_step": print}, "'on_step' (did you mean 'on_progress'?)")):
            with pytest.raises(TypeError, match="stylize") as info:
                client.stylize(CONTENT, STYLE, **kwargs)
            assert str(info.value) == f"stylize() got an unexpected keyword argument {said}"
        with pytest.raises(TypeError) as info:
            list(client.stylize_video([CONTENT], STYLE, temporl="flow"))
        assert str(info.value) == "stylize_video() got an unexpected keyword argument 'temporl' (did you mean " \
                                  "'temporal'?)"


def test_streams_refused_under_load_say_why(server: ServerProcess) -> None:
    """Twenty streams at once against two places: grpc.aio's client raised INTERNAL "Internal error from Core" for
    up to half of the refusals (frames written into a stream already refused), losing RESOURCE_EXHAUSTED and its
    RetryInfo; the frames now wait for the headers the server sends once it has taken the stream."""
    async def main() -> list[tuple[str, bool]]:
        async with AsyncStyleTransferClient(server.target, timeout=60) as client:
            async def one(i: int) -> tuple[str, bool]:
                try:
                    async for _ in client.stylize_video([CONTENT] * 4, STYLE, request_id=f"load-{i}"):
                        pass
                    return "OK", True
                except StyleTransferError as e:
                    return e.code.name, e.retry_after is not None

            return await asyncio.gather(*(one(i) for i in range(20)))

    outcomes = asyncio.run(main())
    assert {code for code, _ in outcomes} <= {"OK", "RESOURCE_EXHAUSTED"}, outcomes
    assert ("OK", True) in outcomes and all(said for _, said in outcomes), outcomes


def test_a_clips_path_as_frames_is_refused_saying_what_takes_one(tmp_path) -> None:
    """stylize_video takes images; one path was read a character at a time ("frames[0]: no such file: r")."""
    from adain.client import StyleTransferClient

    clip = str(tmp_path / "real.mp4")
    with StyleTransferClient("127.0.0.1:9", timeout=5) as client:  # (refused before any call)
        with pytest.raises(StyleTransferError, match=r"frames: an iterable of images, not one str \('.*real\.mp4'\): "
                           r"a video file goes through adain\.client\.video\.stylize_video_file"):
            list(client.stylize_video(clip, "style.png"))

    async def run() -> None:
        async with AsyncStyleTransferClient("127.0.0.1:9", timeout=5) as client:
            with pytest.raises(StyleTransferError, match="frames: an iterable of images, not one PosixPath"):
                async for _ in client.stylize_video(tmp_path / "real.mp4", "style.png"):
                    pass

    asyncio.run(run())


def test_what_a_notebook_user_met(tmp_path) -> None:
    """A notebook tour's: the asyncio client given to stylize_video_file was "'coroutine' object is not
    subscriptable" after a never-awaited warning; a port number as the target was an AttributeError."""
    pytest.importorskip("av")
    from adain.client import StyleTransferClient
    from adain.client.video import stylize_video_file

    async def run() -> None:
        async with AsyncStyleTransferClient("127.0.0.1:9", timeout=5) as client:
            with pytest.raises(TypeError, match="^stylize_video_file takes a StyleTransferClient, not a "
                                                "AsyncStyleTransferClient: with the asyncio client, run it in a"):
                stylize_video_file(client, tmp_path / "clip.mp4", tmp_path / "out.mp4", "style.png")  # type: ignore[arg-type]

    asyncio.run(run())
    assert not list(tmp_path.iterdir())
    with pytest.raises(StyleTransferError, match=r"^INVALID_ARGUMENT: server: must be a string HOST:PORT .*, not the "
                                                 r"int 50061$"):
        StyleTransferClient(50061)  # type: ignore[arg-type]


def test_an_image_calls_default_deadline_grows_with_its_work() -> None:
    """A notebook tour's: a 300-step refine was cut off at step 231 by the client's fixed 120 s (its work lost),
    where the CLI's deadline grows with the work. Without a timeout of their own, the clients' image calls now
    have the CLI's; a timeout given (the client's or the call's) is kept as it is."""
    from adain.client import StyleTransferClient
    from adain.client._client import DEFAULT_TIMEOUT, PER_MEGAPIXEL_S, PER_REFINE_STEP_S, stylize_request

    big = make_image(2000, 1000, seed=44)  # 2 MP
    request = stylize_request(big, STYLE, refine_steps=300)
    with StyleTransferClient("127.0.0.1:9") as plain, StyleTransferClient("127.0.0.1:9", timeout=30) as given:
        assert plain._image_timeout(request, None) == pytest.approx(
            DEFAULT_TIMEOUT + 2 * PER_MEGAPIXEL_S + 300 * PER_REFINE_STEP_S)
        assert plain._image_timeout(request, 5) == 5 and given._image_timeout(request, None) is None
        smaller = stylize_request(big, STYLE, content_size=500)  # rendered at 500 x 250: an eighth of a megapixel
        assert plain._image_timeout(smaller, None) == pytest.approx(DEFAULT_TIMEOUT + 0.125 * PER_MEGAPIXEL_S)
