"""The live camera's frame rate: frames through adain-web's WebSocket and the server's StylizeVideo stream.

    python benchmarks/live.py [--clip CLIP] [--sizes 256 384 512] [--modes flow none]

Starts a local adain-server (shipped decoder, its default backend) and adain-web, then plays a clip's
frames (or synthetic 4:3 ones without --clip) as the page does: scaled to the live size, JPEG 85, two in
flight, each new one sent when one comes back. Prints frames a second per size and temporal mode, measured
after 10 warm-up frames, and the CPU it ran on.
"""

from __future__ import annotations

import argparse
import io
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from replicas import synthetic  # noqa: E402
from stylize_speed import cpu_name  # noqa: E402
from video import start_server  # noqa: E402

IN_FLIGHT = 2  # as the page
WARM = 10


def clip_frames(clip: str | None, size: int, count: int) -> list[bytes]:
    from PIL import Image

    images = []
    if clip:
        import av

        with av.open(clip) as container:
            for frame in container.decode(video=0):
                images.append(frame.to_image())
                if len(images) >= count:
                    break
    else:
        images = [Image.open(io.BytesIO(synthetic(640, i))) for i in range(count)]
    out = []
    for img in images:
        img = img.convert("RGB")
        img.thumbnail((size, size))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=85)
        out.append(buf.getvalue())
    return out


def rate(url: str, frames: list[bytes], mode: str) -> float:
    """Frames a second after the warm-up, two frames in flight."""
    from websockets.sync.client import connect

    with connect(url, max_size=None, open_timeout=30) as ws:
        ws.send(json.dumps({"styles": ["upload"], "temporal": mode}))
        ws.send(synthetic(256, 999))
        sent = got = 0
        for _ in range(IN_FLIGHT):
            ws.send(frames[sent])
            sent += 1
        while got < len(frames):
            reply = ws.recv(timeout=120)
            if isinstance(reply, str):
                raise SystemExit(f"the session failed: {reply}")
            got += 1
            if got == WARM:
                t0 = time.perf_counter()
            if sent < len(frames):
                ws.send(frames[sent])
                sent += 1
        return (got - WARM) / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clip", help="a video whose frames stand for the camera's (default: synthetic 4:3 frames)")
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 384, 512], help="live sizes, px (longest side)")
    p.add_argument("--modes", nargs="+", default=["flow", "none"], help="temporal modes")
    p.add_argument("--frames", type=int, default=50, help="frames per run, warm-up included (default 50)")
    p.add_argument("--decoder", help="decoder file (default: the shipped one)")
    args = p.parse_args()

    server, target = start_server(args.decoder)
    with socket.socket() as s:  # a free port for adain-web
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    web = subprocess.Popen([sys.executable, "-m", "adain.web", "--server", target, "--port", str(port),
                            "--log-level", "warning"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import httpx

        for _ in range(300):
            try:
                httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        url = f"ws://127.0.0.1:{port}/api/live"
        print(f"CPU: {cpu_name()}; frames: {args.clip or 'synthetic 4:3'}; {IN_FLIGHT} in flight, JPEG 85")
        print(f"{'size':>5} {'frame':>10} " + " ".join(f"{m + ' fps':>12}" for m in args.modes))
        for size in args.sizes:
            frames = clip_frames(args.clip, size, args.frames)
            from PIL import Image

            w, h = Image.open(io.BytesIO(frames[0])).size
            rates = [rate(url, frames, mode) for mode in args.modes]
            print(f"{size:>5} {f'{w} x {h}':>10} " + " ".join(f"{r:>12.2f}" for r in rates), flush=True)
    finally:
        web.terminate()
        server.terminate()
        web.wait(30)
        server.wait(30)


if __name__ == "__main__":
    main()
