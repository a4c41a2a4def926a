"""Temporal stability of video stylization: every temporal mode, in process, and over gRPC.

    python benchmarks/video.py [VIDEO] [--style IMAGE] [--frames N] [--size PX] [--grpc] [--out DIR]
    python benchmarks/video.py --synthetic        # a generated clip, CI-sized

For each temporal mode (``adain.wire.TEMPORAL_MODES``), on the same frames:

* s/frame: wall time of ``VideoStream.stylize`` per frame (flow included), after 3 warm-up frames;
* warping error: the mean absolute difference (pixels in [0, 1]) between output frame t and output frame
  t-1 warped onto it by the optical flow of the *input* frames, over the pixels where that flow is
  consistent forwards and backwards; the same error of the input video is the floor a perfectly stable
  stylization would be near. The flow used to measure is Farneback's (OpenCV), not the DIS flow the
  ``flow`` modes use, so a mode is not graded by its own estimate;
* style loss: the mean over frames of the decoder's style loss (``adain.ops.style_loss``, normalised
  VGG19) between the output frame and the style image, both at their stylized size: stability must not
  come from washing the style out.

``--grpc`` also streams the frames through a local ``adain-server`` (the shipped decoder, the default
mode) with the thin client, as the CLI does (JPEG 95 frames both ways), and reports frames per second
against the in-process figure, and the p50 latency of single-image Stylize calls made while the video
runs, against their p50 on an idle server.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from stylize_speed import cpu_name  # the benchmarks' one CPU-model reader

from adain import Stylizer
from adain.encoder import Encoder
from adain.image import load_image, resize_longest, to_tensor
from adain.media import VideoReader, VideoWriter
from adain.ops import style_loss
from adain.video import VideoStream
from adain.wire import DEFAULT_TEMPORAL, DEFAULT_TEMPORAL_STRENGTH, TEMPORAL_MODES

REPO = Path(__file__).resolve().parents[1]
SHARED_VIDEO = REPO.parent / "shared" / "data" / "eval" / "videos" / "cutBunny.mp4"
DEFAULT_STYLE = REPO / "examples" / "style" / "mosaic.png"


def synthetic_clip(path: Path, frames: int = 36, w: int = 160, h: int = 96) -> None:
    """Textured background panning slowly, a square crossing it: motion, occlusion and static parts."""
    rng = np.random.default_rng(0)
    tex = (cv2.GaussianBlur(rng.random((h, w + frames * 2, 3)).astype(np.float32), (0, 0), 3) * 255)
    tex = np.clip((tex - tex.mean()) * 4 + 128, 0, 255).astype(np.uint8)
    writer = VideoWriter(path, width=w, height=h, rate=12)
    for i in range(frames):
        arr = tex[:, i : i + w].copy()
        x = 10 + 3 * i
        arr[30:60, x : x + 30] = (230, 120, 30)
        writer.write(Image.fromarray(arr), i / 12)
    writer.close()


class Warp:
    """Farneback flow between input frames and its forward-backward consistency, for measuring."""

    @staticmethod
    def flow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 4, 15, 3, 5, 1.2, 0)

    def maps(self, prev: np.ndarray, cur: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        back, fwd = self.flow(cur, prev), self.flow(prev, cur)
        h, w = cur.shape
        gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
        mx, my = gx + back[..., 0], gy + back[..., 1]
        fwd_at = cv2.remap(fwd, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=1e4)
        err = ((back + fwd_at) ** 2).sum(-1)
        ok = (err <= 0.01 * ((back**2).sum(-1) + (fwd_at**2).sum(-1)) + 0.5) & (mx >= 0) & (mx <= w - 1)
        return mx, my, ok & (my >= 0) & (my <= h - 1)


def warping_error(frames: list[np.ndarray], maps: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> float:
    """Mean |frame_t - warp(frame_{t-1})| over the consistent pixels, frames float32 H x W x 3 in [0, 1]."""
    errs = []
    for t in range(1, len(frames)):
        mx, my, ok = maps[t - 1]
        warped = cv2.remap(frames[t - 1], mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        errs.append(float(np.abs(frames[t] - warped)[ok].mean()))
    return statistics.fmean(errs)


def read_frames(path: Path, limit: int, size: int) -> tuple[list[Image.Image], VideoReader]:
    reader = VideoReader(path)
    frames = []
    for img, _ in reader.frames():
        frames.append(resize_longest(img, size) if size else img)
        if limit and len(frames) >= limit:
            break
    return frames, reader


@torch.inference_mode()
def frame_style_loss(encoder: Encoder, frame: np.ndarray, style_feats: tuple) -> float:
    feats = encoder(torch.from_numpy(frame).permute(2, 0, 1).unsqueeze(0))
    return style_loss(feats, style_feats).item()


def run_modes(args: argparse.Namespace, frames: list[Image.Image], style: Image.Image) -> dict[str, dict]:
    st = Stylizer(args.decoder, "cpu")
    encoder = st.encoder
    with torch.inference_mode():
        style_feats = encoder(to_tensor(resize_longest(style, max(frames[0].size))))
    greys = [np.asarray(f.convert("L")) for f in frames]
    maps = [Warp().maps(a, b) for a, b in zip(greys, greys[1:])]
    results: dict[str, dict] = {}
    inputs = [np.asarray(f, dtype=np.float32) / 255 for f in frames]
    results["input video"] = {"warp": warping_error(inputs, maps), "style": None, "spf": None}
    for mode in args.modes:
        stream = VideoStream(st, [style], temporal=mode, strength=args.strength)
        outs, times = [], []
        for i, f in enumerate(frames):
            t0 = time.perf_counter()
            out = stream.stylize(f)
            if i >= 3:
                times.append(time.perf_counter() - t0)
            outs.append(np.asarray(out, dtype=np.float32) / 255)
        sl = statistics.fmean(frame_style_loss(encoder, o, style_feats) for o in outs)
        results[mode] = {"warp": warping_error(outs, maps), "style": sl, "spf": statistics.fmean(times), "outs": outs}
        print(f"  {mode}: done", file=sys.stderr, flush=True)
    return results


def save_outputs(folder: Path, results: dict[str, dict], rate: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for mode, r in results.items():
        if "outs" not in r:
            continue
        h, w = r["outs"][0].shape[:2]
        writer = VideoWriter(folder / f"{mode}.mp4", width=w, height=h, rate=rate)
        for i, o in enumerate(r["outs"]):
            writer.write(Image.fromarray((o * 255 + 0.5).astype(np.uint8)), i / rate)
        writer.close()


# --- over gRPC --------------------------------------------------------------------------------------
def start_server(decoder: str | None, extra: tuple[str, ...] = ()) -> tuple[subprocess.Popen, str]:
    """A local adain-server (``extra``: more flags), once it reports SERVING; (process, address)."""
    cmd = [sys.executable, "-m", "adain.server", "--port", "0", "--metrics-port", "0", "--log-level", "WARNING",
           "--max-batch-size", "1", *extra]
    if decoder:
        cmd += ["--decoder", decoder]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    target = line.strip().rsplit(" ", 1)[-1]
    threading.Thread(target=proc.stdout.read, daemon=True).start()
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(target))
    for _ in range(600):
        try:
            if stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status == 1:
                return proc, target
        except grpc.RpcError:
            pass
        time.sleep(0.2)
    raise SystemExit("the server never became SERVING")


def run_grpc(args: argparse.Namespace, frames: list[Image.Image], style: Image.Image, inproc_spf: float) -> dict:
    from adain.client import StyleTransferClient

    proc, target = start_server(args.decoder)
    try:
        with StyleTransferClient(target, timeout=600) as client:
            buf = io.BytesIO()
            style.save(buf, "PNG")
            sid = client.register_style(buf.getvalue())
            jpeg = []
            for f in frames:
                b = io.BytesIO()
                f.save(b, "JPEG", quality=95)
                jpeg.append(b.getvalue())
            probe = jpeg[0]
            idle = []
            for _ in range(5):
                t0 = time.perf_counter()
                client.stylize(probe, f"id:{sid}", content_size=256)
                idle.append(time.perf_counter() - t0)
            # The stream, timed from its first frame back (the style statistics are computed with frame 0).
            stamps: list[float] = []
            busy: list[float] = []
            stop = threading.Event()

            def singles() -> None:
                while not stop.is_set():
                    t0 = time.perf_counter()
                    client.stylize(probe, f"id:{sid}", content_size=256)
                    busy.append(time.perf_counter() - t0)
                    time.sleep(0.5)

            side = threading.Thread(target=singles, daemon=True)
            for r in client.stylize_video(jpeg, f"id:{sid}", format="jpeg", quality=95, temporal=DEFAULT_TEMPORAL,
                                          temporal_strength=args.strength):
                stamps.append(time.perf_counter())
                if r.index == 2:
                    side.start()
            stop.set()
            side.join()
    finally:
        proc.terminate()
        proc.wait(30)
    spf = (stamps[-1] - stamps[3]) / (len(stamps) - 4)
    return {"spf": spf, "ratio": spf / inproc_spf, "idle_p50": statistics.median(idle),
            "busy_p50": statistics.median(busy) if busy else float("nan"), "busy_n": len(busy)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("video", nargs="?", type=Path, default=SHARED_VIDEO)
    p.add_argument("--synthetic", action="store_true", help="use a generated clip (CI-sized) instead")
    p.add_argument("--style", type=Path, default=DEFAULT_STYLE)
    p.add_argument("--decoder", default=None)
    p.add_argument("--frames", type=int, default=0, help="only the first N frames (0: all)")
    p.add_argument("--size", type=int, default=0, help="longest side the frames are stylized at (0: as they are)")
    p.add_argument("--modes", nargs="+", default=list(TEMPORAL_MODES), choices=TEMPORAL_MODES)
    p.add_argument("--strength", type=float, default=DEFAULT_TEMPORAL_STRENGTH)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--grpc", action="store_true", help="also stream the default mode through a local server")
    p.add_argument("--out", type=Path, default=None, help="write each mode's output as a video here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = None
    if args.synthetic:
        tmp = tempfile.TemporaryDirectory()
        args.video = Path(tmp.name) / "synthetic.mp4"
        synthetic_clip(args.video)
    frames, reader = read_frames(args.video, args.frames, args.size)
    style = load_image(args.style)
    print(f"{args.video.name}: {len(frames)} frames of {frames[0].width} x {frames[0].height} at "
          f"{float(reader.info.rate):.3g} fps; style {args.style.name}; CPU {cpu_name()} "
          f"({os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads)", flush=True)
    results = run_modes(args, frames, style)
    none = results.get("none")
    print()
    print("| mode | s/frame | x none | warping error | x none | style loss | x none |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    def cell(r: dict, key: str, fmt: str) -> str:
        return "–" if r.get(key) is None else format(r[key], fmt)

    def rel(r: dict, key: str) -> str:
        ok = none and r.get(key) is not None and none.get(key)
        return f"{r[key] / none[key]:.2f}" if ok else "–"

    for mode, r in results.items():
        print(f"| {mode} | {cell(r, 'spf', '.3f')} | {rel(r, 'spf')} | {cell(r, 'warp', '.4f')} | "
              f"{rel(r, 'warp')} | {cell(r, 'style', '.4g')} | {rel(r, 'style')} |")
    print(f"\nstrength {args.strength:g}; default mode: {DEFAULT_TEMPORAL}")
    if args.grpc:
        base = results.get(DEFAULT_TEMPORAL, {}).get("spf")
        if base is None:
            print("--grpc needs the default mode among --modes")
        else:
            g = run_grpc(args, frames, style, base)
            print(f"\nover gRPC ({DEFAULT_TEMPORAL}): {g['spf']:.3f} s/frame = {1 / g['spf']:.2f} frames/s, "
                  f"{g['ratio']:.2f}x the in-process time ({1 / base:.2f} frames/s)")
            print(f"single-image Stylize (256 px) p50: {g['idle_p50'] * 1000:.0f} ms idle, "
                  f"{g['busy_p50'] * 1000:.0f} ms while the video streams ({g['busy_n']} calls)")
    if args.out:
        save_outputs(args.out, results, float(reader.info.rate))
        print(f"\noutputs: {args.out}")
    reader.close()
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
