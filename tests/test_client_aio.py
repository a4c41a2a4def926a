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
