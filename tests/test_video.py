"""Video end to end on small synthesized clips: the library's stream, the StylizeVideo RPC and the CLI."""

from __future__ import annotations

import io
import threading
import time
from fractions import Fraction
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from PIL import Image

from adain import InvalidInputError, Stylizer
from adain.client import StyleTransferClient, StyleTransferError
from adain.client.cli import main
from adain.image import load_image
from adain.media import MediaError, MediaWriteError, VideoReader, VideoWriter, atomic_output, container_for
from adain.video import VideoStream, stylize_video
from helpers import NO_REFINE, ServerProcess, free_port
from synth import (
    band_mask,
    encoded,
    hlg_signal,
    make_hlg_clip,
    make_image,
    make_mask,
    make_video,
    synth_image,
    unknown_codec_clip,
    video_facts,
)

torch.set_num_threads(1)
STYLE = make_image(40, 40, seed=22, kind="noise")
MODES = ("none", "smooth", "flow", "smooth-flow")


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("clips")
    out = {}
    for name, audio in (("audio.mp4", True), ("silent.mp4", False), ("clip.webm", True), ("clip.mkv", True),
                        ("clip.mov", False), ("anim.gif", False)):
        make_video(root / name, frames=18, audio=audio)
        out[name] = root / name
    (root / "style.png").write_bytes(STYLE)
    out["style.png"] = root / "style.png"
    return out


@pytest.fixture(scope="module")
def stylizer(decoder_path: Path) -> Stylizer:
    return Stylizer(decoder_path, device="cpu")


def _frames(path: Path) -> list[Image.Image]:
    with VideoReader(path) as r:
        return [img for img, _ in r.frames()]


# --- the library ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_stream_gives_one_frame_per_frame(stylizer: Stylizer, clips: dict[str, Path], mode: str) -> None:
    frames = _frames(clips["silent.mp4"])
    stream = VideoStream(stylizer, [STYLE], temporal=mode)
    outs = [stream.stylize(f) for f in frames]
    assert len(outs) == len(frames) == 18 and all(o.size == (64, 48) for o in outs)
    # The first frame has no past: every mode gives the plain stylization there.
    assert np.array_equal(np.asarray(outs[0]), np.asarray(stylizer.stylize(frames[0], [STYLE])))


def test_style_statistics_are_computed_once(stylizer: Stylizer, clips: dict[str, Path]) -> None:
    st = Stylizer(stylizer.decoder_file.path, device="cpu", cache_size=0)  # no cache to hide a second pass
    calls = []
    encode = st.backend.relu4_1  # every encoder pass goes through the backend (eager or a runtime)
    st.backend.relu4_1 = lambda x: calls.append(x.shape[0]) or encode(x)
    stream = VideoStream(st, [STYLE, make_image(32, 32, seed=3)], temporal="none")
    for f in _frames(clips["silent.mp4"])[:5]:
        stream.stylize(f)
    assert len(calls) == 2 + 5  # two styles once, then one content pass per frame


def test_smoothing_steadies_jumping_statistics(stylizer: Stylizer) -> None:
    """A bright patch blinks in one corner: per-frame AdaIN renormalises the whole frame each time, so the
    untouched background changes too; the running average of the statistics keeps it steadier, the more so
    the stronger it is. (A global brightness change is no test: instance normalisation cancels it.)"""
    base = np.asarray(synth_image(64, 48, seed=8, kind="gradient"))
    blink = base.copy()
    blink[:16, :16] = 255
    frames = [Image.fromarray(blink if i % 2 else base) for i in range(24)]

    def background_jumps(mode: str, strength: float) -> float:  # once the running average has settled
        stream = VideoStream(stylizer, [STYLE], temporal=mode, strength=strength)
        outs = [np.asarray(stream.stylize(f), dtype=np.float32)[28:, 28:] for f in frames][12:]
        return float(np.mean([np.abs(a - b).mean() for a, b in zip(outs, outs[1:])]))

    none, half, strong = background_jumps("none", 0.0), background_jumps("smooth", 0.5), background_jumps("smooth", 0.9)
    assert strong < half < none, (none, half, strong)


@pytest.mark.parametrize("mode", ["smooth", "smooth-flow"])
def test_smoothing_starts_again_at_a_scene_cut(stylizer: Stylizer, mode: str) -> None:
    # Averaged across a cut, the old scene's statistics normalised the new one for seconds: a dark blur.
    a, b = synth_image(64, 48, seed=3, kind="gradient"), synth_image(64, 48, seed=4)
    stream = VideoStream(stylizer, [STYLE], temporal=mode, strength=0.95)
    outs = [np.asarray(stream.stylize(f), dtype=np.float32) for f in [a] * 6 + [b] * 3]
    alone = np.asarray(stylizer.stylize(b, [STYLE]), dtype=np.float32)
    assert np.abs(outs[6] - alone).mean() < 1.0, np.abs(outs[6] - alone).mean()  # the cut: b's own statistics


def _panning(img: Image.Image, n: int, step: int = 2) -> list[Image.Image]:
    return [Image.fromarray(np.roll(np.asarray(img), step * i, axis=1)) for i in range(n)]


def test_flow_starts_again_at_a_scene_cut(stylizer: Stylizer) -> None:
    """Only smoothing looked for cuts: the flow found chance matches between the two scenes (a tenth of the
    pixels) and carried the old scene's strokes into the new one for frames (119 levels off)."""
    a, b = synth_image(96, 64, seed=1), synth_image(96, 64, seed=2, kind="gradient")
    across = VideoStream(stylizer, [STYLE], temporal="flow")
    outs = [np.asarray(across.stylize(f), np.int16) for f in _panning(a, 3) + _panning(b, 2)]
    fresh = VideoStream(stylizer, [STYLE], temporal="flow")
    want = [np.asarray(fresh.stylize(f), np.int16) for f in _panning(b, 2)]
    assert max(np.abs(o - w).max() for o, w in zip(outs[3:], want)) <= 1


@pytest.mark.parametrize("mode", ["smooth", "flow"])
def test_a_cut_between_shots_sharing_a_dark_backdrop_is_a_cut(stylizer: Stylizer, mode: str) -> None:
    """Flat areas are consistent in any two frames: with the top 7/8 black in both shots, flow called over half
    the pixels consistent and carried the old shot over (40 levels off), and smooth's statistics moved too
    little to be a cut (20 levels off). The cut is judged over textured pixels, by the flow, in both modes."""
    def shot(seed: int, kind: str) -> list[Image.Image]:
        frames = _panning(synth_image(96, 64, seed=seed, kind=kind), 2)
        for f in frames:
            f.paste((0, 0, 0), (0, 0, 96, 56))
        return frames

    a, b = shot(1, "noise"), shot(2, "noise")
    across = VideoStream(stylizer, [STYLE], temporal=mode)
    outs = [np.asarray(across.stylize(f), np.int16) for f in a + b]
    fresh = VideoStream(stylizer, [STYLE], temporal=mode)
    want = [np.asarray(fresh.stylize(f), np.int16) for f in b]
    assert max(np.abs(o - w).max() for o, w in zip(outs[2:], want)) <= 1


def test_flow_keeps_the_frames_colours_with_luminance(stylizer: Stylizer) -> None:
    """The output blend mixed in the last frame's colours and shifted them with its renormalisation: 3.9 levels
    off the frame's own chroma, where each frame alone is 1.6 (rounding)."""
    def chroma(img: Image.Image) -> np.ndarray:
        x = np.asarray(img, np.float32)
        return x - (x @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]

    frames = _panning(synth_image(96, 64, seed=1), 5)
    stream = VideoStream(stylizer, [STYLE], temporal="flow", preserve_color="luminance")
    outs = [stream.stylize(f) for f in frames]
    alone = stylizer.stylize(frames[-1], [STYLE], preserve_color="luminance")
    off = np.abs(chroma(outs[-1]) - chroma(frames[-1])).mean()
    assert off <= np.abs(chroma(alone) - chroma(frames[-1])).mean() + 0.1, off


@pytest.mark.parametrize("w,h", [(64, 48), (61, 44)])
def test_flow_keeps_a_static_clip_still(stylizer: Stylizer, w: int, h: int) -> None:
    """Identical frames: the flow is zero and consistent everywhere, so the output stays what it was."""
    frame = synth_image(w, h, seed=9)
    stream = VideoStream(stylizer, [STYLE], temporal="flow", strength=0.9)
    outs = [np.asarray(stream.stylize(frame), dtype=np.int16) for _ in range(4)]
    assert all(np.abs(o - outs[0]).max() <= 1 for o in outs[1:])


@pytest.mark.parametrize("h,w", [(48, 64), (180, 320), (44, 61)])
def test_flow_moves_features_by_the_pixels_motion_at_any_size(h: int, w: int) -> None:
    # No motion must leave relu4_1 where it is, and 8 px one cell, whether or not a side is a multiple of 8
    # (it once drifted by 8 fh / h a frame there, which the recursion turned into streaks).
    from adain.encoder import feature_size
    from adain.video import _Flow

    fh, fw = feature_size(h, w)
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    still = np.ones((h, w), bool)
    grid, share = _Flow().to_features((gx, gy, still), fh, fw)
    cells = torch.stack(torch.meshgrid(torch.linspace(-1, 1, fw), torch.linspace(-1, 1, fh), indexing="xy"), -1)
    assert torch.allclose(grid[0], cells, atol=1e-5) and torch.all(share == 1)
    grid, _ = _Flow().to_features((gx + 8, gy - 16, still), fh, fw)  # the previous frame 1 cell right, 2 up
    assert torch.allclose(grid[0, ..., 0], cells[..., 0] + 2 / (fw - 1), atol=1e-5)
    assert torch.allclose(grid[0, ..., 1], cells[..., 1] - 4 / (fh - 1), atol=1e-5)


def test_flow_does_not_carry_a_style_across_a_fixed_masks_edge() -> None:
    """A mask stays put while the scene pans across it: the flow carried the left region's output over the
    edge into the right one, recursively, a smear of the other style 46 levels off the frame's own output
    within 16 px of the edge against 12 far from it. Now the edge is no worse than far from it. The shipped
    decoder: the test one's random strokes hardly differ between styles (11 levels against 7)."""
    stylizer = Stylizer(None, device="cpu", backend="torch")
    def tinted(seed: int, rgb: tuple[float, float, float]) -> Image.Image:
        return Image.fromarray((np.asarray(synth_image(48, 48, seed=seed, kind="noise")) * np.array(rgb)).astype(
            np.uint8))

    styles, mask, w = [tinted(1, (1, 0.2, 0.2)), tinted(2, (0.2, 0.3, 1))], make_mask(128, 64), 128
    frames = _panning(synth_image(w, 64, seed=3), 8, step=4)
    alone, flow = (VideoStream(stylizer, styles, mask=mask, temporal=t) for t in ("none", "flow"))
    pairs = [(np.asarray(alone.stylize(f), np.float32), np.asarray(flow.stylize(f), np.float32)) for f in frames]

    def off(x0: int, x1: int) -> float:  # how far the flow's output is from each frame's own, in a band
        return float(np.mean([np.abs(b[:, x0:x1] - a[:, x0:x1]).mean() for a, b in pairs[1:]]))

    edge, far = off(w // 2 + 1, w // 2 + 17), off(w // 2 + 32, w - 8)  # the right region: the scene comes from the left
    assert edge <= 1.5 * far, (edge, far)


def _square_crossing(n: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """A textured scene (96 x 160, float RGB) and ``n`` frames of a checked 32-px square crossing it, 8 px a frame."""
    yy, xx = np.mgrid[0:96, 0:160]
    scene = np.stack([120 + 50 * np.sin(xx / 17 + k) * np.cos(yy / 23 - k) + 25 * np.sin((xx + yy) / 7 + 2 * k)
                      for k in range(3)], -1)
    cy, cx = np.mgrid[0:32, 0:32] // 8
    square = np.stack([220 - 60 * ((cx + cy) % 2), 60 + 100 * ((cx + cy) % 2), 40 + 0 * cx], -1)
    frames = []
    for t in range(n):
        f = scene.copy()
        f[32:64, 8 + 8 * t:40 + 8 * t] = square
        frames.append(f)
    return scene, frames


def test_a_moving_object_leaves_no_trail_with_flow() -> None:
    """A visual tour's: a square crossing a textured scene left a smear along its whole path, 42 levels off each
    frame alone, still 31 off ten frames after it had gone. The pixels beside it pass the flow's checks, but their
    relu4_1 cells see the square, and the carried target kept it at 0.95 a frame. The shipped decoder (the test
    one's strokes hardly follow the target)."""
    stylizer = Stylizer(None, device="cpu", backend="torch")
    scene, frames = _square_crossing(12)
    frames += [scene] * 5  # the square gone
    crossed, never = (VideoStream(stylizer, [STYLE], temporal="flow") for _ in range(2))
    outs = [[np.asarray(stream.stylize(Image.fromarray(np.clip(f, 0, 255).astype(np.uint8))), np.float32)
             for f in clip] for stream, clip in ((crossed, frames), (never, [scene] * len(frames)))]
    # once it has gone, the picture it would have been had the square never come
    # (before: 22.0 the frame it left, 19.1 four frames on; now 8.9 and 2.0)
    ghost = [float(np.abs(a - b).mean()) for a, b in zip(*outs)][12:]
    assert ghost[-1] <= 4 and ghost[-1] <= 0.5 * ghost[0], ghost


@pytest.mark.parametrize("mode", ["flow", "smooth"])
def test_a_moving_object_is_no_scene_cut(stylizer: Stylizer, mode: str) -> None:
    """The square crossing a smooth scene held most of the frame's textured pixels (6% of it), and the flow
    missed on it: 41-51% of the textured pixels consistent, so frames 4, 10 and 11 were taken for cuts, nothing
    carried over and the background's strokes jumped twice as far (12-13 levels against ~6). The flow held in
    every block the square did not cover, and a frame goes on where most textured blocks' flow does."""
    _, frames = _square_crossing(12)
    stream = VideoStream(stylizer, [STYLE], temporal=mode)
    cuts = []
    for t, frame in enumerate(frames):
        prepared = stream.prepare(Image.fromarray(np.clip(frame, 0, 255).astype(np.uint8)))
        if t and (t not in stream._warps if mode == "flow" else prepared.smooth.args[0]):
            cuts.append(t)
    assert cuts == []


def test_smoothing_leaves_no_blotch_beside_a_moving_object() -> None:
    """A visual tour's: with smooth, a channel that the moving square lit up far more in one frame than on average
    was normalised by the average's smaller spread, amplified into a blotch beside the square (91 levels off each
    frame alone in a 16-px block). The shipped decoder, as above."""
    stylizer = Stylizer(None, device="cpu", backend="torch")
    _, frames = _square_crossing(12)
    images = [Image.fromarray(np.clip(f, 0, 255).astype(np.uint8)) for f in frames]
    alone, smooth = (VideoStream(stylizer, [STYLE], temporal=t) for t in ("none", "smooth"))
    worst = []
    for img in images:
        off = np.abs(np.asarray(smooth.stylize(img), np.float32) - np.asarray(alone.stylize(img), np.float32))
        worst.append(float(off.mean(2).reshape(6, 16, 10, 16).mean((1, 3)).max()))  # the worst 16-px block
    assert max(worst) <= 40 and np.mean(worst) <= 20, worst  # (before: 52 and 30; now 34 and 13)


def test_flow_over_regions_leaves_out_only_what_crosses_an_edge() -> None:
    """A 4-px pan: across a hard edge the 4 columns whose source lies in the other region lose their flow;
    across a grey ramp (a soft mask, 2 levels a pixel) nothing does."""
    from adain.video import _Flow

    h, w = 16, 64
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    warp = (gx - 4, gy, np.ones((h, w), bool))  # each pixel was 4 px to its left
    hard = np.zeros((h, w), np.uint8)
    hard[:, 32:] = 255
    ramp = np.tile(np.linspace(0, 126, w).astype(np.uint8), (h, 1))
    for levels, lost in ((hard, list(range(32, 36))), (ramp, [])):
        kept = _Flow().within_regions(warp, np.stack([levels, 255 - levels]))[2]
        assert [x for x in range(4, w) if not kept[:, x].all()] == lost


def test_a_detailed_mask_is_no_scene_cut(stylizer: Stylizer) -> None:
    """Stripes 4 px wide on a 2-px pan: half the pixels' flow crosses an edge. The cut test ran on what the edges
    left (under half), so every frame was taken as a cut and nothing carried over anywhere; it runs on the flow."""
    stripes = Image.fromarray(np.tile(np.where(np.arange(96) // 4 % 2, 255, 0).astype(np.uint8), (64, 1)))
    stream = VideoStream(stylizer, [STYLE, STYLE], mask=stripes, temporal="flow")
    for frame in _panning(synth_image(96, 64, seed=1), 2):
        stream.prepare(frame)
    assert 1 in stream._warps and stream._warps[1][2].mean() < 0.5  # carried where it can be, edges left out


@pytest.mark.parametrize("w,h", [(128, 15), (64, 8), (40, 12), (5, 3), (1, 1)])
def test_flow_takes_thin_and_tiny_frames(stylizer: Stylizer, w: int, h: int) -> None:
    # OpenCV's DIS flow crashed the process (a segfault: the whole server) on 128 x 15 frames, and raised
    # its own error under 12 px both ways: such frames are padded for the flow.
    frames = [synth_image(w, h, seed=s) for s in (1, 1, 2)]
    stream = VideoStream(stylizer, [STYLE], temporal="smooth-flow")
    outs = [stream.stylize(f) for f in frames]
    assert [o.size for o in outs] == [(w, h)] * 3
    # the same frame again is the same picture (one relu4_1 cell: its spread was NaN, and so was the carried target)
    assert np.abs(np.asarray(outs[1], np.int16) - np.asarray(outs[0], np.int16)).max() <= 1


def test_video_calls_refuse_what_they_would_get_wrong(stylizer: Stylizer, clips: dict[str, Path],
                                                     tmp_path: Path) -> None:
    same = tmp_path / "same.mp4"
    same.write_bytes(clips["silent.mp4"].read_bytes())
    with pytest.raises(InvalidInputError, match="is the source clip: it would be overwritten"):
        stylize_video(stylizer, same, same, [STYLE])
    assert same.read_bytes() == clips["silent.mp4"].read_bytes()
    with pytest.raises(MediaError, match="a clip is read from a file: expected a path, got a bytes"):
        stylize_video(stylizer, clips["silent.mp4"].read_bytes(), tmp_path / "out.mp4", [STYLE])
    for bad in (-1, 0, float("nan"), "x"):  # -1 looped for ever, 0 divided by zero, NaN was ignored
        with pytest.raises(MediaError, match="max_fps must be a finite number >= 0.001"):
            stylize_video(stylizer, clips["silent.mp4"], tmp_path / "out.mp4", [STYLE], max_fps=bad)
    with pytest.raises(InvalidInputError, match="refine_steps: the optimisation method is for images"):
        VideoStream(stylizer, [STYLE], refine_steps=2)  # accepted, and not done
    stream = VideoStream(stylizer, STYLE, temporal="none")  # one style, as Stylizer.stylize takes it
    assert stream.stylize(synth_image(32, 24)).size == (32, 24)
    # corrupt sound decoded for the output (FLAC into MOV becomes AAC): the clip's fault, named as such (it was a
    # MediaWriteError, "cannot write the video", which a service reports as its own failure)
    make_video(tmp_path / "bad_sound.mkv", frames=12, audio="flac", bad_sound_packet=3)
    with pytest.raises(MediaError, match="bad_sound.mkv: corrupt sound data") as err:
        stylize_video(stylizer, tmp_path / "bad_sound.mkv", tmp_path / "out.mov", [STYLE], temporal="none")
    assert not isinstance(err.value, MediaWriteError)
    (tmp_path / "bad_sound.mkv").unlink()
    assert not list(tmp_path.glob("*out*")) and sorted(p.name for p in tmp_path.iterdir()) == ["same.mp4"]


def test_stream_errors(stylizer: Stylizer) -> None:
    with pytest.raises(InvalidInputError) as e:
        VideoStream(stylizer, [STYLE], temporal="wobbly", strength=1.5, alpha=2)
    # named as this API names it (it said temporal_strength, the wire's name, which it did not take), and the
    # wire's name is pointed at this one; stylize_video names itself (it said "VideoStream()")
    assert {p.field for p in e.value.problems} == {"temporal", "strength", "alpha"}
    with pytest.raises(TypeError, match=r"^VideoStream\(\) got an unexpected keyword argument 'temporal_strength' "
                                        r"\(did you mean 'strength'\?\)"):
        VideoStream(stylizer, [STYLE], temporal_strength=0.5)
    with pytest.raises(TypeError, match=r"^stylize_video\(\) got an unexpected keyword argument 'alhpa' \(did you"):
        stylize_video(stylizer, "clip.mp4", "out.mp4", [STYLE], alhpa=0.5)
    stream = VideoStream(stylizer, [STYLE], temporal="none")
    stream.stylize(synth_image(64, 48))
    with pytest.raises(InvalidInputError) as e:
        stream.stylize(synth_image(32, 48))
    assert e.value.field == "frames[1]" and "64 x 48" in str(e.value)


@pytest.mark.parametrize("name", ["audio.mp4", "clip.webm", "clip.mkv", "clip.mov", "anim.gif"])
def test_stylize_video_file_keeps_count_rate_size_audio(stylizer: Stylizer, clips: dict[str, Path], name: str,
                                                        tmp_path: Path) -> None:
    out = tmp_path / f"out{clips[name].suffix}"
    assert stylize_video(stylizer, clips[name], out, [STYLE], temporal="smooth-flow") == 18
    src, got = video_facts(clips[name]), video_facts(out)
    assert (got["frames"], got["rate"], got["size"], got["audio"]) == (18, src["rate"], (64, 48), src["audio"])
    if src["audio"]:
        assert got["audio_packets"] == src["audio_packets"]  # copied unchanged, packet for packet
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary file left


def _copy(src: Path, out: Path, **reader: object) -> None:
    """The clip's frames written again as they come (no stylizing), with its sound: the container's part."""
    with VideoReader(src, **reader) as r, atomic_output(out) as tmp:
        writer = None
        for img, t in r.frames():
            writer = writer or VideoWriter(tmp, width=img.width, height=img.height, rate=r.rate, source=r,
                                           container=container_for(out))
            writer.write(img, t)
        writer.close()


def _audio_seconds(path: Path) -> float:
    import av

    with av.open(str(path)) as c:
        return sum(f.samples / f.sample_rate for f in c.decode(audio=0))


@pytest.mark.parametrize("audio,suffix", [("pcm_s16le", ".mp4"), ("pcm_s16le", ".mov"), ("libopus", ".mov"),
                                          ("flac", ".mov"), ("flac", ".mp4"), ("aac", ".webm")])
def test_sound_the_container_cannot_hold_is_encoded_again(tmp_path: Path, audio: str, suffix: str) -> None:
    # FFmpeg's muxers list PCM for MP4 and Opus and FLAC for MOV, then refuse to write their headers: a
    # camera's AVI (MJPEG + PCM) could not become an MP4. Copied where it can be, else AAC (Opus for WebM).
    make_video(tmp_path / "in.mkv", frames=12, audio=audio)
    _copy(tmp_path / "in.mkv", tmp_path / f"out{suffix}")
    got = video_facts(tmp_path / f"out{suffix}")
    assert got["frames"] == 12 and got["audio"] is not None
    assert abs(_audio_seconds(tmp_path / f"out{suffix}") - _audio_seconds(tmp_path / "in.mkv")) < 0.05


def test_sound_encoded_again_keeps_its_channels(tmp_path: Path) -> None:
    """An outside tester's: a mono 8-kHz PCM clip came out stereo, a 5.1 one in WebM stereo (its surround lost)."""
    import av

    for layout, suffix in (("mono", ".mp4"), ("5.1", ".webm")):
        make_video(tmp_path / "in.mkv", frames=12, audio="pcm_s16le" if layout == "mono" else True,
                   sound_layout=layout)
        _copy(tmp_path / "in.mkv", tmp_path / f"out{suffix}")
        with av.open(str(tmp_path / f"out{suffix}")) as c:
            got = c.streams.audio[0].codec_context
            assert (got.name, got.layout.nb_channels) == ({".mp4": "aac", ".webm": "opus"}[suffix],
                                                          {"mono": 1, "5.1": 6}[layout]), (layout, got.layout)


def test_sound_encoded_again_keeps_its_time(tmp_path: Path) -> None:
    """A sound that starts after the picture (a camera's PCM, 0.5 s late) stays where it was when the output
    container makes it AAC: numbered from 0 instead, it came 0.5 s early, out of step with the picture."""
    import av

    make_video(tmp_path / "late.mkv", frames=24, audio="pcm_s16le", audio_start=0.5)
    for suffix in (".mp4", ".mkv"):  # encoded again, and copied
        _copy(tmp_path / "late.mkv", tmp_path / f"out{suffix}")
        with av.open(str(tmp_path / f"out{suffix}")) as c:
            times = [(float(f.time), f.samples / f.sample_rate) for f in c.decode(audio=0)]
        first, end = times[0][0], times[-1][0] + times[-1][1]
        assert abs(first - 0.5) < 0.03 and abs(end - 2.5) < 0.05, (suffix, first, end)


def test_a_variable_rate_clip_keeps_every_frame_at_its_time(tmp_path: Path) -> None:
    # A phone in low light: 30 frames a second, then 15. Every frame was once held to the average rate's
    # grid (39 of 45 came, the 25th 0.22 s late: the picture behind its sound).
    times = [i / 30 for i in range(30)] + [1 + i / 15 for i in range(15)]
    make_video(tmp_path / "phone.mkv", times=times, audio=True)
    for suffix in (".mp4", ".webm", ".mkv"):
        _copy(tmp_path / "phone.mkv", tmp_path / f"out{suffix}")
        import av

        with av.open(str(tmp_path / f"out{suffix}")) as c:
            got = [float(f.time) for f in c.decode(video=0)]
        assert len(got) == 45 and np.abs(np.array(got) - times).max() < 0.002, suffix
    # fewer frames a second: the ones kept keep their own times (no 1/rate grid)
    with VideoReader(tmp_path / "phone.mkv", max_fps=10) as r:
        kept = [t for _, t in r.frames()]
    _copy(tmp_path / "phone.mkv", tmp_path / "ten.mp4", max_fps=10)
    with av.open(str(tmp_path / "ten.mp4")) as c:
        assert np.abs(np.array([float(f.time) for f in c.decode(video=0)]) - kept).max() < 0.002


def test_a_burst_stays_under_max_fps_and_a_gifs_limit(tmp_path: Path) -> None:
    """A variable-rate clip under --fps on average may burst over it (a video tester's: frames 5 ms apart at
    --fps 20, all kept; written into a GIF as 10-ms delays, which browsers show for 100 ms)."""
    import av

    times = [0, 0.1, 0.2, 0.205, 0.21, 0.3, 0.4, 0.5, 0.6, 0.7]
    make_video(tmp_path / "burst.mp4", times=times, fps=14)
    with VideoReader(tmp_path / "burst.mp4") as r:
        assert np.allclose([t for _, t in r.frames()], times, atol=1e-3)  # without --fps: every frame
    with VideoReader(tmp_path / "burst.mp4", max_fps=20) as r:
        assert not r.limited  # (under 20 on average: the burst is what is over it)
        assert np.allclose([t for _, t in r.frames()], [0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7], atol=1e-3)
    with VideoReader(tmp_path / "burst.mp4", max_fps=100) as r:
        assert len(list(r.frames())) == 9  # 100 a second allows 7.5 ms: only the 5-ms frame goes
    _copy(tmp_path / "burst.mp4", tmp_path / "burst.gif")
    with av.open(str(tmp_path / "burst.gif")) as c:
        got = [round(float(f.time), 2) for f in c.decode(video=0)]
    assert got == [0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]  # no frame under 20 ms after the one before


def test_a_gif_keeps_its_loop_count(tmp_path: Path) -> None:
    """A GIF that plays once came out looping for ever; a clip into a GIF loops for ever (FFmpeg's default)."""
    frames = [synth_image(32, 24, seed=i) for i in range(3)]
    for loop in (None, 0, 2):
        frames[0].save(tmp_path / "in.gif", save_all=True, append_images=frames[1:], duration=100,
                       **({} if loop is None else {"loop": loop}))
        _copy(tmp_path / "in.gif", tmp_path / "out.gif")
        with Image.open(tmp_path / "out.gif") as out:
            assert (out.info.get("loop"), out.n_frames) == (loop, 3)
    make_video(tmp_path / "clip.mp4", frames=3)
    _copy(tmp_path / "clip.mp4", tmp_path / "clip.gif")
    with Image.open(tmp_path / "clip.gif") as out:
        assert out.info.get("loop") == 0


def test_a_gifs_short_delays_are_read_as_browsers_play_them(tmp_path: Path) -> None:
    """Delays under 2/100 s are shown for 1/10 s by browsers: a GIF of 10-ms delays, which plays at 10 frames a
    second, was read at 100 (its clip five times faster, half its frames dropped by the GIF writer). A delay of
    2/100 s or more stands, and so does every time of a GIF without such a delay."""
    frames = [synth_image(32, 24, seed=i) for i in range(6)]
    frames[0].save(tmp_path / "in.gif", save_all=True, append_images=frames[1:], duration=[10, 10, 500, 10, 20, 10])
    with VideoReader(tmp_path / "in.gif") as r:
        assert [round(t, 3) for _, t in r.frames()] == [0.0, 0.1, 0.2, 0.7, 0.8, 0.82]
        assert round(r.info.duration, 3) == round(r.end_time, 3) == 0.92
    from adain.media import probe

    assert probe(tmp_path / "in.gif") == r.info  # the page's upload check: it read a tenth of the length
    with VideoReader(tmp_path / "in.gif", start=0.25, duration=0.6) as r:  # a part, in the times a browser shows
        assert [round(t, 3) for _, t in r.frames()] == [0.0, 0.45, 0.55]
    _copy(tmp_path / "in.gif", tmp_path / "out.gif")
    with Image.open(tmp_path / "out.gif") as out:
        delays = []
        for i in range(out.n_frames):
            out.seek(i)
            delays.append(out.info["duration"])
    assert delays == [100, 100, 500, 100, 20, 100], delays
    frames[0].save(tmp_path / "even.gif", save_all=True, append_images=frames[1:], duration=20)
    with VideoReader(tmp_path / "even.gif") as r:
        assert [round(t, 3) for _, t in r.frames()] == [0.0, 0.02, 0.04, 0.06, 0.08, 0.1]


def test_a_cover_picture_is_no_clip(tmp_path: Path) -> None:
    """A song with cover art (FFmpeg's one-packet video stream, marked attached_pic) was stylized as a clip whose
    picture lasted 11 us beside its sound."""
    import av
    from av.stream import Disposition

    from adain.media import probe

    path = tmp_path / "song.m4a"
    with av.open(str(path), "w", format="mp4") as out:
        a, v = out.add_stream("aac", rate=44100), out.add_stream("mjpeg", rate=1)
        v.width = v.height = 32
        v.pix_fmt, v.disposition = "yuvj420p", Disposition.attached_pic
        cover = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24").reformat(format="yuvj420p")
        cover.pts = 0
        tone = av.AudioFrame.from_ndarray((0.2 * np.sin(np.arange(44100) / 10)).astype(np.float32)[None, :],
                                          format="fltp", layout="mono")
        tone.sample_rate = 44100
        for packet in [*v.encode(cover), *v.encode(None), *a.encode(tone), *a.encode(None)]:
            out.mux(packet)
    with pytest.raises(MediaError, match=r"song.m4a: the file has no video stream \(only a cover picture\)$"):
        VideoReader(path)
    assert probe(path) is None


def test_an_animated_png_or_webp_is_a_video_to_the_cli(tmp_path: Path) -> None:
    """An animated PNG or WebP given to the CLI was cut to its first frame without a word (a GIF was a video)."""
    from adain.client.video import is_video

    frames = [synth_image(32, 24, seed=i) for i in range(3)]
    for name in ("a.png", "a.webp", "a.gif"):
        frames[0].save(tmp_path / name, save_all=True, append_images=frames[1:], duration=100)
        frames[0].save(tmp_path / f"still-{name}")
        assert is_video(tmp_path / name) and not is_video(tmp_path / f"still-{name}"), name
    with VideoReader(tmp_path / "a.png") as r:
        assert len(list(r.frames())) == 3
    with pytest.raises(MediaError, match="an animated WebP, whose frames this FFmpeg cannot decode"):
        VideoReader(tmp_path / "a.webp")


def _cut_by_copy(src: Path, dst: Path, at: float) -> None:
    """``ffmpeg -ss AT -i SRC -c copy DST``: packets from the keyframe before ``at``, times shifted so that
    ``at`` is 0; the MP4 muxer writes an edit list hiding the frames before it, which players do not show."""
    import av

    with av.open(str(src)) as c, av.open(str(dst), "w") as out:
        v = c.streams.video[0]
        vo = out.add_stream_from_template(v)
        c.seek(0)
        for packet in c.demux(v):
            if packet.dts is None:
                continue
            shift = round(Fraction(at).limit_denominator(1000) / packet.time_base)
            packet.pts, packet.dts = packet.pts - shift, packet.dts - shift
            packet.stream = vo
            out.mux(packet)


def _mux(dst: Path, *parts: tuple[Path, str]) -> None:
    """One file of the first stream of each kind ("video", "audio") of each part, packets copied."""
    import av

    sources = [(av.open(str(src)), kind) for src, kind in parts]
    try:
        with av.open(str(dst), "w") as out:  # every stream added before the first packet (the header)
            pairs = [(getattr(c.streams, kind)[0], c) for c, kind in sources]
            outs = [out.add_stream_from_template(stream) for stream, _ in pairs]
            for (stream, c), to in zip(pairs, outs):
                for packet in c.demux(stream):
                    if packet.dts is not None:
                        packet.stream = to
                        out.mux(packet)
    finally:
        for c, _ in sources:
            c.close()


def test_clips_as_editors_and_cameras_make_them(tmp_path: Path) -> None:
    """Found by an outside tester: an MP4 cut without re-encoding (an edit list hides frames it stores) was
    refused as truncated; a part of a camcorder's .MTS came as 3 frames of 10, or none; sound running on past
    the last frame counted as frames; a part starting in a variable-rate clip's pause began with no picture."""
    make_video(tmp_path / "whole.mp4", frames=24, fps=12)
    _cut_by_copy(tmp_path / "whole.mp4", tmp_path / "cut.mp4", 0.5)
    with VideoReader(tmp_path / "cut.mp4") as r:
        got = [t for _, t in r.frames()]
        assert r.total == len(got) == 18 and got[0] == 0  # 24 stored, 6 hidden
    make_video(tmp_path / "cam.ts", frames=40, fps=10)  # one keyframe: a seek lands past it
    with VideoReader(tmp_path / "cam.ts", start=0.5, duration=1.0) as r:
        assert len(list(r.frames())) == r.total == 10
    # a raw H.264 stream has no timestamps: FFmpeg's seek read it to its end, and no frame of a part came
    make_video(tmp_path / "raw.h264", frames=30, fps=10)  # read at FFmpeg's 25 a second: the stream says no rate
    with VideoReader(tmp_path / "raw.h264") as r:
        whole, rate = [np.asarray(img) for img, _ in r.frames()], float(r.rate)
    with VideoReader(tmp_path / "raw.h264", start=0.4, duration=0.2) as r:
        part = list(r.frames())
    first = round(0.4 * rate)
    assert len(part) == round(0.2 * rate)
    assert [t for _, t in part] == pytest.approx([i / rate for i in range(len(part))])
    assert all(np.array_equal(np.asarray(img), whole[first + i]) for i, (img, _) in enumerate(part))
    make_video(tmp_path / "picture.webm", frames=20, fps=10)  # 2 s of picture, then 6 s of sound beside it
    make_video(tmp_path / "sound.webm", frames=60, fps=10, audio=True)
    _mux(tmp_path / "long_sound.webm", (tmp_path / "picture.webm", "video"), (tmp_path / "sound.webm", "audio"))
    with VideoReader(tmp_path / "long_sound.webm") as r:
        assert r.info.duration > 5 and r.total == 20 and len(list(r.frames())) == 20
    with VideoReader(tmp_path / "long_sound.webm", start=0.5) as r:
        assert r.total == 15
    # a second sound track (a commentary) that runs on: the container's duration is its, and a whole file was
    # refused as "truncated: the data ends at 2.03 s of the 6.02 s it declares"
    make_video(tmp_path / "short_sound.webm", frames=20, fps=10, audio=True)
    _mux(tmp_path / "two_tracks.webm", (tmp_path / "picture.webm", "video"), (tmp_path / "short_sound.webm", "audio"),
         (tmp_path / "sound.webm", "audio"))
    with VideoReader(tmp_path / "two_tracks.webm") as r:
        assert r.info.duration > 5 and len(list(r.frames())) == 20
    # a broadcast TS's clock starts at hours: times count from its first timestamp (a part was cut against
    # the clock, and the whole written after as long a wait)
    make_video(tmp_path / "dvb.ts", times=[3600 + i / 10 for i in range(30)])
    with VideoReader(tmp_path / "dvb.ts") as r:
        times = [t for _, t in r.frames()]
        assert len(times) == 30 and times[0] < 0.05
    with VideoReader(tmp_path / "dvb.ts", start=1.0, duration=1.0) as r:
        assert len(list(r.frames())) == 10
    # a whole variable-rate MKV (no declared count; FFmpeg's average rate comes from its first frames) is read,
    # not refused as "80 of the 175 frames it declares"
    make_video(tmp_path / "vfr.mkv", fps=30, times=[i / 30 for i in range(60)] + [2 + i / 5 for i in range(20)])
    with VideoReader(tmp_path / "vfr.mkv") as r:
        assert len(list(r.frames())) == 80
    # a GIF that holds its last frame for 3 s was refused as "the data ends at 1.16 s of the 3.70 s"
    frames = [Image.new("RGB", (32, 24), (20 * i, 100, 50)) for i in range(8)]
    frames[0].save(tmp_path / "hold.gif", save_all=True, append_images=frames[1:], duration=[100] * 7 + [3000])
    with VideoReader(tmp_path / "hold.gif") as r:
        assert len(list(r.frames())) == 8
    paused = [i / 10 for i in range(4)] + [0.8 + i / 10 for i in range(4)]  # no frame from 0.3 to 0.8 s
    make_video(tmp_path / "paused.mp4", times=paused)
    with VideoReader(tmp_path / "paused.mp4", start=0.5) as r:
        assert [round(t, 2) for _, t in r.frames()] == [0.0, 0.3, 0.4, 0.5, 0.6]  # the frame on screen at 0.5 first


def test_a_parts_count_is_the_frames_it_reads(tmp_path: Path) -> None:
    """The count said before reading (what max_video_frames is checked against, by the client and the page) is
    what comes: its span x its rate rounded up was a frame over (0.34 s of a 30-a-second clip from 0.33 s: 11
    said, 10 read), and a clip within a server's limit was refused before it was sent."""
    make_video(tmp_path / "c.mp4", frames=30, fps=30)
    for start, duration, fps in [(0.33, 0.34, None), (0.1, 0.5, None), (0.05, None, 11), (0.2, 0.6, 7.5),
                                 (0, None, 7), (0.5, 0.25, 6), (0.0, 0.45, None), (0.61, None, None),
                                 (0.99, None, None), (0.975, 0.5, 7), (0.0, 0.001, None), (0.5, 0.001, 7)]:
        with VideoReader(tmp_path / "c.mp4", start=start, duration=duration, max_fps=fps) as r:
            times = [t for _, t in r.frames()]
            assert r.total == len(times), (start, duration, fps, r.total)
            assert times[0] == 0, (start, duration, fps, times)  # the frame on screen (or nearest) opens the part


def test_a_part_opens_with_the_frame_on_screen_however_short(tmp_path: Path) -> None:
    """Found by an outside tester: a start inside the last frame's time (0.88 s of a 1-s clip at 8 a second) got
    "no frames in that part" (the frame on screen was held for a later one that never came), and a duration
    under half a frame got none, which the server then refused naming its proto field."""
    make_video(tmp_path / "c.mp4", frames=8, fps=8)
    with VideoReader(tmp_path / "c.mp4") as r:
        whole = [np.asarray(img) for img, _ in r.frames()]
    for start, duration, index in [(0.88, None, 7), (0.99, 100, 7), (0.3, 0.01, 2), (0.0, 0.01, 0), (0.7, 0.01, 6)]:
        with VideoReader(tmp_path / "c.mp4", start=start, duration=duration) as r:
            got = list(r.frames())
            assert r.total == len(got) == 1 and got[0][1] == 0, (start, duration)
            assert np.array_equal(np.asarray(got[0][0]), whole[index]), (start, duration)


def _stream_seconds(path: Path) -> dict[str, float]:
    import av

    with av.open(str(path)) as c:
        return {s.type: float(s.duration * s.time_base) for s in c.streams if s.duration}


def test_clocks_as_recorders_and_joins_leave_them(tmp_path: Path) -> None:
    """An outside tester's clips. An MKV whose streams start at 10 s (a recorder's second segment) was "truncated:
    the data ends at 2.00 s of the 12.00 s it declares" (Matroska's durations are where streams end), and with
    sound "cannot write the video" (the sound's first packet clamped to 0 beside the next). Two TS files joined
    end to end (each clock from 0) lost the second without a word, or failed naming the output."""
    import av

    make_video(tmp_path / "late.mkv", frames=24, times=[10 + i / 12 for i in range(24)], audio=True, audio_start=10)
    with VideoReader(tmp_path / "late.mkv") as r:
        assert abs(r.info.duration - 2.0) < 0.1 and r.total == 24
    _copy(tmp_path / "late.mkv", tmp_path / "late.mp4")
    assert video_facts(tmp_path / "late.mp4")["frames"] == 24 and abs(_audio_seconds(tmp_path / "late.mp4") - 2) < 0.1
    for sound in (False, True):
        make_video(tmp_path / "a.ts", frames=12, audio=sound)
        make_video(tmp_path / "b.ts", frames=12, audio=sound)
        (tmp_path / "joined.ts").write_bytes((tmp_path / "a.ts").read_bytes() + (tmp_path / "b.ts").read_bytes())
        with av.open(str(tmp_path / "joined.ts")) as c:
            assert sum(1 for _ in c.decode(video=0)) == 24  # all there, for a player that follows the clock
        with VideoReader(tmp_path / "joined.ts") as r, pytest.raises(MediaError) as e:
            list(r.frames())
        said = f"its {'sound' if sound else 'picture'}'s times jump back from "
        assert said in str(e.value) and "(files joined end to end?)" in str(e.value), e.value


def test_an_animated_webp_or_a_still_is_said_to_be_so(tmp_path: Path) -> None:
    """An outside tester's: an animated WebP (whose frames this FFmpeg does not decode) was "corrupt video data
    after 0 frames (Invalid data found when processing input)"."""
    frames = [Image.new("RGB", (32, 32), (40 * i, 0, 0)) for i in range(4)]
    frames[0].save(tmp_path / "a.webp", save_all=True, append_images=frames[1:], duration=100)
    frames[0].save(tmp_path / "still.png")
    for name, said in (("a.webp", "an animated WebP, whose frames this FFmpeg cannot decode: convert it to MP4 or GIF"),
                       ("still.png", "a still image, not a video")):
        with pytest.raises(MediaError) as e:
            VideoReader(tmp_path / name)
        assert str(e.value) == f"{tmp_path / name}: {said}"


def test_the_last_frame_is_shown_for_its_own_time(tmp_path: Path) -> None:
    """Each frame of a written clip is on screen until the next; the last one until its own end (a GIF's last
    delay, or the source's end when frames are dropped): encoders gave it 1/rate, so a GIF holding its last
    frame 2 s held it 0.57 s, and one frame of a 3-s clip at max_fps 0.001 made a 1,000-s video."""
    gif = [Image.fromarray(np.full((32, 48, 3), 60 * i, np.uint8)) for i in range(4)]
    gif[0].save(tmp_path / "hold.gif", save_all=True, append_images=gif[1:], duration=[100, 100, 100, 2000], loop=0)
    _copy(tmp_path / "hold.gif", tmp_path / "out.gif")
    with Image.open(tmp_path / "out.gif") as out:
        delays = [(out.seek(i), out.info["duration"])[1] for i in range(out.n_frames)]
    assert delays == [100, 100, 100, 2000], delays
    _copy(tmp_path / "hold.gif", tmp_path / "out.mp4")
    assert abs(_stream_seconds(tmp_path / "out.mp4")["video"] - 2.3) < 0.01
    # A property tour's: frames with detail get B-frames, and MP4 and MOV keep each frame's time as the gap to the
    # next in decode order (the last one's alone as written), so a packet shown earlier came last and the 2 s were
    # lost: 0.3 s. The track ends where the last frame shown ends, and is read back so (a GIF made of it holds 2 s).
    busy = [synth_image(16, 16, seed=i).convert("P", palette=Image.Palette.ADAPTIVE) for i in range(3)]
    busy[0].save(tmp_path / "busy.gif", save_all=True, append_images=busy[1:], duration=[100, 100, 2000], loop=0)
    for ext in ("mp4", "mov"):
        _copy(tmp_path / "busy.gif", tmp_path / f"busy.{ext}")
        assert abs(_stream_seconds(tmp_path / f"busy.{ext}")["video"] - 2.2) < 0.01, ext
        with VideoReader(tmp_path / f"busy.{ext}") as r:
            assert [round(t, 2) for _, t in r.frames()] == [0, 0.1, 0.2] and abs(r.end_time - 2.2) < 1e-3, r.end_time
    # a review's: a pause before the last frame (a slide show's, a phone's): x264's decode delay ended the file at
    # 1.2 s, before that frame (at 2.0 s), though no B-frame came
    w = VideoWriter(tmp_path / "pause.mp4", width=32, height=32, rate=Fraction(10))
    for i, t in enumerate([i / 10 for i in range(11)] + [2.0]):
        w.write(synth_image(32, 32, seed=i, kind="noise"), t)
    w.close()
    assert abs(_stream_seconds(tmp_path / "pause.mp4")["video"] - 2.1) < 0.01
    # and read back: a variable-rate MP4 with B-frames whose pause a frame shown earlier carries (the gap to the next
    # in decode order) is as long as it says, 2.1 s (2.7 when the reader took the latest a frame ends, unbounded)
    import av

    with av.open(str(tmp_path / "phone.mp4"), "w") as c:
        stream = c.add_stream("libx264", rate=10)
        stream.width = stream.height = 32
        stream.pix_fmt, stream.codec_context.time_base = "yuv420p", Fraction(1, 90000)
        stream.options = {"bf": "3", "x264-params": "b-adapt=0:scenecut=0"}
        for i, t in enumerate([i / 10 for i in range(4)] + [1.3 + i / 10 for i in range(8)]):  # 1 s after the 4th
            frame = av.VideoFrame.from_image(synth_image(32, 32, seed=i, kind="noise"))
            frame.pts, frame.time_base = round(t * 90000), Fraction(1, 90000)
            for packet in stream.encode(frame):
                c.mux(packet)
        for packet in stream.encode(None):
            c.mux(packet)
    with VideoReader(tmp_path / "phone.mp4") as r:
        assert len(list(r.frames())) == 12 and abs(r.end_time - 2.1) < 1e-3, r.end_time
    make_video(tmp_path / "three.mp4", frames=36, fps=12, audio=True)
    _copy(tmp_path / "three.mp4", tmp_path / "one.mp4", max_fps=0.001)
    assert video_facts(tmp_path / "one.mp4")["frames"] == 1
    assert abs(_stream_seconds(tmp_path / "one.mp4")["video"] - 3) < 0.01
    _copy(tmp_path / "three.mp4", tmp_path / "part.mp4", start=1, duration=1)  # a part: until its end
    assert abs(_stream_seconds(tmp_path / "part.mp4")["video"] - 1) < 0.01
    gif = [Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)) for i in range(6)]  # at 0, .1, .3, .35, .65, .75
    gif[0].save(tmp_path / "vfr.gif", save_all=True, append_images=gif[1:], duration=[100, 200, 50, 300, 100, 250])
    with VideoReader(tmp_path / "vfr.gif", start=0.32, duration=0.4) as r:  # the frame at .65 is on for 70 ms of it
        assert [round(t, 2) for _, t in r.frames()] == [0, 0.33] and abs(r.end_time - 0.4) < 1e-6  # (it was left
        # out by the average rate's half frame, 80 ms, and the part came as one frame of 0.16 s)


def test_a_count_no_container_declares_is_counted_before_a_limit_refuses(tmp_path: Path) -> None:
    """A variable-rate MKV whose nominal rate is 30 holds 12 frames in 2 s: its duration x its rate said 61, and a
    limit of 30 refused it (the CLI's and the page's check before sending)."""
    from adain.media import counted

    times = [0, 0.05, 0.1, 0.4, 0.45, 0.9, 1.0, 1.05, 1.5, 1.7, 1.75, 2.0]
    make_video(tmp_path / "vfr.mkv", times=times, fps=30)
    with VideoReader(tmp_path / "vfr.mkv") as r:
        assert r.total > 30 and counted(r.path, r.info).frames == 12 == len(list(r.frames()))
        assert counted(r.path, r.info).frames_read(counted(r.path, r.info).rate) == 12


def test_a_stop_is_asked_at_every_frame_decoded(tmp_path: Path, client: StyleTransferClient) -> None:
    """A security tester's: a cancelled clip job read at --fps 0.001 decoded its 200,000 tiny frames on (its
    page's place freed at once), since stop was asked only as frames were sent; now at each one decoded."""
    from adain.client.video import stylize_video_file
    from adain.media import Stopped

    make_video(tmp_path / "many.mp4", frames=120, w=16, h=16, fps=100)
    asked = []
    with VideoReader(tmp_path / "many.mp4", max_fps=0.001) as r, pytest.raises(Stopped):
        for _ in r.frames(stop=lambda: len(asked) > 10 or asked.append(1)):
            pass
    assert r.count == 12  # of 120: one sent, the rest dropped, each decoded one asked about
    calls = []
    with pytest.raises(StyleTransferError) as e:
        stylize_video_file(client, tmp_path / "many.mp4", tmp_path / "out.mp4", [STYLE], max_fps=0.001,
                           stop=lambda: len(calls) > 30 or calls.append(1))
    assert e.value.code == grpc.StatusCode.CANCELLED and len(calls) == 31 and not (tmp_path / "out.mp4").exists()


def test_a_start_past_any_time_a_streamed_webm_holds(tmp_path: Path) -> None:
    """A WebM written as a stream (a browser's MediaRecorder: no seeking back) declares no duration, so a start
    is not checked against one; a start of 1e20 s overflowed FFmpeg's seek target (an OverflowError). It is read
    from the beginning, and no frame is in that part."""
    import av

    class Stream(io.RawIOBase):  # written once, front to back
        def __init__(self, f) -> None:
            self.f = f

        def writable(self) -> bool:
            return True

        def write(self, b) -> int:
            return self.f.write(b)

    with open(tmp_path / "live.webm", "wb") as f, av.open(Stream(f), "w", format="webm") as out:
        v = out.add_stream("libvpx-vp9", rate=10)
        v.width, v.height, v.pix_fmt = 32, 24, "yuv420p"
        for i in range(5):
            frame = av.VideoFrame.from_ndarray(np.full((24, 32, 3), 40 * i, np.uint8), format="rgb24")
            frame.pts = i
            out.mux(v.encode(frame))
        out.mux(v.encode(None))
    with VideoReader(tmp_path / "live.webm", start=1e20) as r:
        assert r.info.duration == 0
        with pytest.raises(MediaError, match="no frames in that part"):
            list(r.frames())


def test_a_see_through_webm_is_read_over_white(tmp_path: Path) -> None:
    """A VP9 WebM with alpha (stickers, overlays): its see-through half came out black (FFmpeg's own VP9
    decoder drops alpha); over white now, as a PNG's or a GIF's transparency is."""
    import av

    with av.open(str(tmp_path / "sticker.webm"), "w") as out:
        stream = out.add_stream("libvpx-vp9", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuva420p"
        for i in range(3):
            rgba = np.zeros((48, 64, 4), np.uint8)
            rgba[..., :3], rgba[:, 32:, 3] = (40, 90, 200), 255  # the left half see-through
            frame = av.VideoFrame.from_ndarray(rgba, format="rgba").reformat(format="yuva420p")
            frame.pts, frame.time_base = i, Fraction(1, 10)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    with VideoReader(tmp_path / "sticker.webm") as reader:
        frames = [np.asarray(f, int) for f, _ in reader.frames()]
    assert len(frames) == 3
    assert (frames[0][:, :24] >= 250).all()  # white where see-through
    assert np.abs(frames[0][:, 40:] - (40, 90, 200)).mean() < 6  # the picture where opaque


def test_a_written_gif_keeps_its_frames_colours(tmp_path: Path) -> None:
    """Each GIF frame gets its own 256 colours, dithered: FFmpeg's fixed 3-3-2 palette was 14-16 levels off
    on average (MP4: 1.5), in bands."""
    import av

    photo = Image.open(Path(__file__).parents[1] / "examples" / "content" / "cat.jpg").convert("RGB")
    photo = photo.resize((160, 120))
    writer = VideoWriter(tmp_path / "cat.gif", width=160, height=120, rate=Fraction(10))
    for i in range(3):
        writer.write(photo.rotate(5 * i), i / 10)
    writer.close()
    with av.open(str(tmp_path / "cat.gif")) as c:
        got = [np.asarray(f.to_image().convert("RGB"), float) for f in c.decode(video=0)]
    assert len(got) == 3
    for i, frame in enumerate(got):
        assert np.abs(frame - np.asarray(photo.rotate(5 * i), float)).mean() < 4


def test_a_gif_over_50_frames_a_second_is_refused_naming_the_limit(tmp_path: Path) -> None:
    # GIF delays count 1/100 s and browsers slow shorter ones than 2/100: FFmpeg refused 120 fps obscurely.
    make_video(tmp_path / "fast.mp4", frames=12, fps=120)
    with pytest.raises(MediaError, match=r"at most 50 frames a second.*this clip has 120.*--fps"):
        _copy(tmp_path / "fast.mp4", tmp_path / "fast.gif")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fast.mp4"]
    _copy(tmp_path / "fast.mp4", tmp_path / "fast.gif", max_fps=50)
    assert video_facts(tmp_path / "fast.gif")["frames"] == 5


def _portrait(src: Path, dst: Path, coded_height: int) -> None:
    """``src`` (an MP4 of landscape frames) with the display matrix an upright iPhone writes: turn the
    frames 90 degrees clockwise to show them (ffprobe: "rotation of -90.00 degrees")."""
    import struct

    data = bytearray(src.read_bytes())
    i = data.index(b"tkhd")  # the first track's header: the video
    matrix = i + 4 + (52 if data[i + 4] == 1 else 40)  # after version/flags, times, ids, layer, volume
    assert struct.unpack(">9i", data[matrix : matrix + 36]) == (1 << 16, 0, 0, 0, 1 << 16, 0, 0, 0, 1 << 30)
    data[matrix : matrix + 36] = struct.pack(">9i", 0, 1 << 16, 0, -(1 << 16), 0, 0, coded_height << 16, 0, 1 << 30)
    dst.write_bytes(bytes(data))


def test_phone_portrait_clip_is_read_and_written_upright(stylizer: Stylizer, clips: dict[str, Path],
                                                          tmp_path: Path) -> None:
    _portrait(clips["silent.mp4"], tmp_path / "portrait.mp4", 48)
    with VideoReader(clips["silent.mp4"]) as coded, VideoReader(tmp_path / "portrait.mp4") as shown:
        first = np.asarray(next(coded.frames())[0], int)
        upright = np.asarray(next(shown.frames())[0], int)
    assert upright.shape == (64, 48, 3) and np.array_equal(upright, np.rot90(first, k=-1))  # 90 degrees clockwise
    out = tmp_path / "out.mp4"
    assert stylize_video(stylizer, tmp_path / "portrait.mp4", out, [STYLE], temporal="none") == 18
    assert video_facts(out)["size"] == (48, 64)  # written upright, as players showed the clip


@pytest.mark.parametrize("degrees,hflip", [(-90, False), (90, False), (180, False), (0, True), (180, True), (-90, True),
                                            (90, True)])
def test_every_display_matrix_is_shown_as_players_show_it(tmp_path: Path, degrees: int, hflip: bool) -> None:
    """A quarter or half turn, mirrored or not (a mirrored clip was read as a half turn: upside down)."""
    import av

    base = np.asarray(synth_image(64, 48, seed=7), np.uint8)
    with av.open(str(tmp_path / "turned.mp4"), "w") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv444p"
        stream.options = {"qp": "0"}  # lossless: pixels compared exactly
        stream.set_display_rotation(degrees, hflip=hflip)
        frame = av.VideoFrame.from_ndarray(base, format="rgb24").reformat(format="yuv444p")
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    with VideoReader(tmp_path / "turned.mp4") as reader:
        shown = np.asarray(next(iter(reader.frames()))[0], int)
    with av.open(str(tmp_path / "turned.mp4")) as c:
        coded = np.asarray(next(c.decode(video=0)).to_image(), int)
    expected = np.rot90(coded, k=degrees // 90)  # counterclockwise, then the mirror
    expected = expected[:, ::-1] if hflip else expected
    assert shown.shape == expected.shape and np.abs(shown - expected).mean() < 1


def test_hdr_clip_is_tone_mapped_to_sdr(stylizer: Stylizer, tmp_path: Path) -> None:
    import av

    from adain.hdr import HLG, to_sdr

    # BT.2408's anchors: HLG 38% is a grey card, 75% HDR reference white (203 cd/m2)
    greys = np.zeros((96, 128, 3))
    greys[:, :32], greys[:, 32:64], greys[:, 64:96], greys[:, 96:] = 0.38, 0.5, 0.75, 1.0
    # a photo's colours below the highlights (which are rolled off into the top of the range)
    photo = (np.asarray(synth_image(128, 96, seed=3, kind="gradient"), float) * 0.7 + 20).round()
    signal = hlg_signal(photo)
    assert np.array_equal(np.asarray(to_sdr(np.round(signal * 65535).astype(np.uint16), HLG)), photo)
    make_hlg_clip(tmp_path / "hdr.mp4", [greys, signal])  # HEVC 10-bit 4:2:0, as a phone records it
    with VideoReader(tmp_path / "hdr.mp4") as reader:
        frames = [np.asarray(f, int) for f, _ in reader.frames()]
    levels = [int(frames[0][48, x].mean()) for x in (16, 48, 80, 112)]
    assert abs(levels[0] - 100) <= 6 and abs(levels[2] - 245) <= 6 and levels[3] >= 250, levels
    assert levels == sorted(levels)
    with av.open(str(tmp_path / "hdr.mp4")) as c:  # what a decode that ignores HLG shows: flat, pale
        naive = np.asarray(list(c.decode(video=0))[1].to_image(), int)
    assert np.abs(frames[1] - photo).mean() < 4 < 10 < np.abs(naive - photo).mean()
    out = tmp_path / "out.mp4"  # and the stylized clip is SDR, tagged BT.709
    assert stylize_video(stylizer, tmp_path / "hdr.mp4", out, [STYLE], temporal="none") == 2
    with av.open(str(out)) as c:
        assert next(c.decode(video=0)).color_trc == 1


def test_a_bt2020_sdr_clip_keeps_its_colours(tmp_path: Path) -> None:
    """An SDR clip in BT.2020 primaries (a 10-bit camera's, an editor's export): decoded as BT.709, a red
    200, 40, 40 came out 159, 62, 46; its colours are converted now, greys unchanged."""
    photo = np.zeros((64, 96, 3))
    photo[:, :32], photo[:, 32:64], photo[:, 64:] = (200, 40, 40), (40, 160, 60), (128, 128, 128)
    s = photo / 255
    linear = np.where(s <= 0.04045, s / 12.92, ((s + 0.055) / 1.055) ** 2.4)
    to2020 = np.array([[0.6274, 0.3293, 0.0433], [0.0691, 0.9195, 0.0114], [0.0164, 0.0880, 0.8956]])
    wide = np.clip(linear @ to2020.T, 0, 1)
    signal = np.where(wide <= 0.0031308, 12.92 * wide, 1.055 * wide ** (1 / 2.4) - 0.055)
    make_hlg_clip(tmp_path / "wide.mp4", [signal], trc=14)  # tagged BT.2020 10-bit: SDR
    with VideoReader(tmp_path / "wide.mp4") as reader:
        frame = np.asarray(next(iter(reader.frames()))[0], int)
    for x, colour in ((16, (200, 40, 40)), (48, (40, 160, 60)), (80, (128, 128, 128))):
        assert np.abs(frame[32, x] - colour).max() <= 4, (frame[32, x], colour)


def test_frames_are_scaled_while_decoding_as_the_stylizer_would(tmp_path: Path) -> None:
    import av

    from adain.image import resize_longest
    from helpers import REPO

    photo = Image.open(REPO / "examples" / "content" / "astronaut.jpg").convert("RGB").resize((192, 144))
    with av.open(str(tmp_path / "photo.mp4"), "w") as out:  # a clip of a real photo (synthetic ones are harsher)
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 192, 144, "yuv420p"
        for packet in [*stream.encode(av.VideoFrame.from_image(photo)), *stream.encode(None)]:
            out.mux(packet)
    with VideoReader(tmp_path / "photo.mp4") as full, VideoReader(tmp_path / "photo.mp4", max_side=96) as small:
        a, _ = next(full.frames())
        b, _ = next(small.frames())
    assert b.size == resize_longest(a, 96).size == (96, 72)  # so the server has nothing left to resize
    assert np.abs(np.asarray(b, int) - np.asarray(resize_longest(a, 96), int)).mean() < 2


def test_pq_is_absolute_light() -> None:
    from adain.hdr import PQ, pq_to_nits, to_sdr

    # SMPTE ST 2084's published points: 100, 203 (reference white), 1,000 and 10,000 cd/m2
    signal = np.array([0.5081, 0.5806, 0.7518, 1.0])
    assert np.allclose(pq_to_nits(signal), [100, 203, 1000, 10000], rtol=0.01)
    white = np.full((2, 2, 3), round(0.5806 * 65535), np.uint16)
    assert abs(int(np.asarray(to_sdr(white, PQ))[0, 0, 0]) - 245) <= 2  # as HLG's reference white


def test_wide_pixels_are_made_square(stylizer: Stylizer, tmp_path: Path) -> None:
    import av

    # a camcorder's clip: 48 x 48 pixels each 4/3 as wide as tall, shown as 64 x 48
    with av.open(str(tmp_path / "wide.mp4"), "w") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 48, 48, "yuv420p"
        stream.codec_context.sample_aspect_ratio = Fraction(4, 3)
        frames = [av.VideoFrame.from_image(synth_image(48, 48, seed=i, kind="gradient")) for i in range(3)]
        for i, frame in enumerate(frames):
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    with VideoReader(tmp_path / "wide.mp4") as reader:
        assert next(reader.frames())[0].size == (64, 48)
    assert stylize_video(stylizer, tmp_path / "wide.mp4", tmp_path / "out.mp4", [STYLE], temporal="none") == 3
    assert video_facts(tmp_path / "out.mp4")["size"] == (64, 48)


@pytest.mark.parametrize("suffix", [".mp4", ".webm"])
def test_written_video_says_its_colour_matrix(tmp_path: Path, suffix: str) -> None:
    # Converted with BT.709 and tagged so: a player that guessed BT.601 would show these ~20 levels off.
    import av

    arr = np.zeros((48, 64, 3), np.uint8)
    arr[:, :32], arr[:, 32:] = (200, 60, 40), (40, 180, 90)
    out = tmp_path / f"tagged{suffix}"
    writer = VideoWriter(out, width=64, height=48, rate=Fraction(10))
    for i in range(3):
        writer.write(Image.fromarray(arr), i / 10)
    writer.close()
    with av.open(str(out)) as c:
        frame = next(c.decode(video=0))
        assert (frame.colorspace, frame.color_range) == (1, 1)  # BT.709, limited range
    with VideoReader(out) as reader:
        got = np.asarray(next(reader.frames())[0], int)
    assert np.abs(got[10, 10] - (200, 60, 40)).max() <= 3 and np.abs(got[10, 50] - (40, 180, 90)).max() <= 3


def test_a_refusing_encoder_is_a_media_error_naming_the_output(tmp_path: Path) -> None:
    """FFmpeg's refusals while writing (a GIF taller than it can be; 44.1 kHz audio for Opus was one) are a
    MediaError naming the output, not its temporary name, and nothing is left behind."""
    import re

    out = tmp_path / "tall.gif"
    with pytest.raises(MediaError, match=f"^{re.escape(str(out))}: cannot write the video: Invalid argument"):
        with atomic_output(out) as tmp:
            writer = VideoWriter(tmp, width=16, height=70000, rate=Fraction(10), container="gif")
            writer.write(Image.new("RGB", (16, 70000)), 0.0)
            writer.close()  # (a frame is encoded when the next comes, or here: that says how long it is shown)
    assert list(tmp_path.iterdir()) == []


def test_still_gif_is_an_image() -> None:
    still = encoded(synth_image(20, 10, seed=1), "GIF")
    assert load_image(still).size == (20, 10)
    frames = [synth_image(20, 10, seed=s).convert("P") for s in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    assert load_image(buf.getvalue()).size == (20, 10)  # an animated GIF as an image: its first frame


# --- the RPC --------------------------------------------------------------------------------------


# The largest difference allowed between a server's frame and the library's, in 8-bit levels. On a CPU with bf16
# units both run OpenVINO in bf16, and they are equal (0 levels: 6 x 4 frames against a fresh server). Twice in
# suite runs under load a frame differed: 4 levels, then 5, with the whole frame off by 1-2 (of 3,072 pixels, 322
# equal, 1,786 one level off, 788 two, 176 more than 2): another numeric path, not a wrong region. Not found in
# process: batches of 1-11 mixed with other jobs of the frame's padded size (other styles, alpha 0.5), 1 or 2
# threads, fixed-shape graphs against the generic one, 3 threads at once, shape history. A wrong region or frame
# is tens of levels off.
SERVED_LEVELS = 8


def _frame_bytes(path: Path) -> list[bytes]:
    return [encoded(img) for img in _frames(path)]


def test_rpc_frames_in_order(client: StyleTransferClient, clips: dict[str, Path], stylizer: Stylizer) -> None:
    frames = _frame_bytes(clips["silent.mp4"])
    results = list(client.stylize_video(frames, STYLE, temporal="smooth", temporal_strength=0.5))
    assert [r.index for r in results] == list(range(18))
    assert all((r.width, r.height, r.format) == (64, 48, "png") for r in results)
    # The same frames in process give the same images, in the same order.
    stream = VideoStream(stylizer, [STYLE], temporal="smooth", strength=0.5)
    for r, f in zip(results, frames):
        local = np.asarray(stream.stylize(f), dtype=np.int16)
        assert np.abs(np.asarray(r.to_pil(), dtype=np.int16) - local).max() <= SERVED_LEVELS


def test_rpc_regions_hold_for_every_frame(client: StyleTransferClient, clips: dict[str, Path],
                                           stylizer: Stylizer) -> None:
    """A mask per style (and the labels form) in a stream's options apply to every frame."""
    frames = _frame_bytes(clips["silent.mp4"])[:4]
    masks = [band_mask(64, 48, 0, 24), band_mask(64, 48, 40, 64)]  # the middle stays the photo
    other = make_image(32, 32, seed=7)
    results = list(client.stylize_video(frames, [STYLE, other], masks=masks, temporal="none"))
    labels = np.zeros((48, 64), np.uint8)
    labels[:, :24], labels[:, 40:] = 1, 2
    by_labels = list(client.stylize_video(frames, [STYLE, other], labels=encoded(Image.fromarray(labels, "L")),
                                          label_values=[1, 2], temporal="none"))
    stream = VideoStream(stylizer, [STYLE, other], temporal="none", masks=masks)
    for i, (r, s, f) in enumerate(zip(results, by_labels, frames)):
        local = np.asarray(stream.stylize(f), dtype=np.int16)
        for form, served in (("masks", r), ("labels", s)):  # a failure says where and how much (a flake, twice)
            off = np.abs(np.asarray(served.to_pil(), dtype=np.int16) - local).max(axis=2)
            assert off.max() <= SERVED_LEVELS, (form, i, int(off.max()), np.argwhere(off > 2)[:8].tolist(),
                                                int((off > 2).sum()), np.bincount(off.ravel()).tolist())


def _expect(code: grpc.StatusCode, fn, *args, **kwargs) -> StyleTransferError:
    with pytest.raises(StyleTransferError) as info:
        fn(*args, **kwargs)
    assert info.value.code == code, info.value.details
    return info.value


def test_rpc_bad_input(client: StyleTransferClient) -> None:
    frames = [make_image(64, 48, seed=i) for i in range(3)]
    err = _expect(grpc.StatusCode.INVALID_ARGUMENT, lambda: list(
        client.stylize_video(frames + [make_image(32, 32)], STYLE)))
    assert err.details.startswith("frames[3]:") and "64 x 48" in err.details
    err = _expect(grpc.StatusCode.INVALID_ARGUMENT, lambda: list(client.stylize_video(
        [frames[0], b"not an image"], STYLE)))
    assert err.details.startswith("frames[1]:")
    err = _expect(grpc.StatusCode.INVALID_ARGUMENT, lambda: list(client.stylize_video([], STYLE)))
    assert "no frames" in err.details
    err = _expect(grpc.StatusCode.INVALID_ARGUMENT, lambda: list(client.stylize_video(
        frames, [STYLE, (STYLE, -1)], temporal_strength=1.0, alpha=3)))
    assert {f for f, _ in err.violations} == {"options.styles[1].weight", "options.alpha", "options.temporal_strength"}
    # the client's own refusals are named as the server's, fields of the stream's options (they were "temporal",
    # "content_size", "weights" here and "options.alpha" from the server)
    for options, field in (({"temporal": "bogus"}, "options.temporal"), ({"content_size": -1}, "options.content_size"),
                           ({"weights": [1, 2]}, "options.weights"), ({"alpha": 1.00000001}, "options.alpha")):
        err = _expect(grpc.StatusCode.INVALID_ARGUMENT,
                      lambda options=options: list(client.stylize_video(frames, STYLE, **options)))
        assert [f for f, _ in err.violations] == [field] and err.details.startswith(f"{field}: "), err.details
    # A bad style image is said when the options come, not with a first frame that may be long in coming
    # (the stream would hold a slot meanwhile), and named as on the wire.
    gate = threading.Event()

    def late_frames():
        gate.wait(20)
        yield frames[0]

    t0 = time.monotonic()
    err = _expect(grpc.StatusCode.INVALID_ARGUMENT, lambda: list(client.stylize_video(late_frames(), [STYLE, b"junk"])))
    gate.set()
    assert err.violations[0][0] == "options.styles[1].image" and time.monotonic() - t0 < 10, err.details
    mask = make_image(32, 32, seed=9)  # the wrong size for the frames: found with the first frame
    err = _expect(grpc.StatusCode.INVALID_ARGUMENT, lambda: list(client.stylize_video(frames, [STYLE, STYLE],
                                                                                     mask=mask)))
    assert err.violations[0][0] == "options.mask", err.details
    assert client.stylize(frames[0], STYLE).width == 64  # and the server goes on serving


def test_rpc_unknown_temporal_is_named_with_the_other_problems(server: ServerProcess) -> None:
    # a raw client's enum value the server does not know hid the strength's problem
    from adain.v1 import style_transfer_pb2 as pb
    from adain.v1 import style_transfer_pb2_grpc as pb_grpc

    options = pb.VideoOptions(styles=[pb.Style(image=STYLE)], temporal=9, temporal_strength=1.5)
    with grpc.insecure_channel(server.target) as channel:
        call = pb_grpc.StyleTransferStub(channel).StylizeVideo(iter([pb.VideoRequest(options=options)]), timeout=30)
        with pytest.raises(grpc.RpcError) as e:
            list(call)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "options.temporal: unknown value 9" in e.value.details() and "options.temporal_strength" in e.value.details()


def test_rpc_a_frame_too_wide_for_webp_is_refused_before_rendering(server: ServerProcess) -> None:
    # it rendered, then failed to encode: INTERNAL and a traceback (Stylize said INVALID_ARGUMENT at once)
    from adain.v1 import style_transfer_pb2 as pb
    from adain.v1 import style_transfer_pb2_grpc as pb_grpc

    options = pb.VideoOptions(styles=[pb.Style(image=STYLE)], format=pb.IMAGE_FORMAT_WEBP,
                              temporal=pb.TEMPORAL_NONE)
    messages = [pb.VideoRequest(options=options), pb.VideoRequest(frame=make_image(16384, 16))]
    with grpc.insecure_channel(server.target, options=[("grpc.max_send_message_length", -1)]) as channel:
        call = pb_grpc.StyleTransferStub(channel).StylizeVideo(iter(messages), timeout=60)
        with pytest.raises(grpc.RpcError) as e:
            list(call)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
    assert "options.format: a WEBP image is at most 16,383 px a side" in e.value.details()


def test_rpc_reading_error_cancels_and_is_raised(client: StyleTransferClient) -> None:
    def frames():
        yield make_image(64, 48)
        raise MediaError("the reader broke")

    with pytest.raises(MediaError, match="the reader broke"):
        list(client.stylize_video(frames(), STYLE))


IDLE_S = 5  # the limited server's --video-idle-s (the two idle tests wait it out)


@pytest.fixture(scope="module")
def limited(decoder_path: Path):
    metrics_port = free_port()
    srv = ServerProcess(decoder_path, "--max-video-frames", "6", "--max-video-streams", "1", "--video-window", "2",
                        *NO_REFINE, "--video-idle-s", str(IDLE_S), "--metrics-port", str(metrics_port))
    srv.metrics_port = metrics_port
    try:
        srv.wait_serving()
        with StyleTransferClient(srv.target, timeout=60, retries=0) as c:
            yield srv, c
    finally:
        srv.terminate()


def test_rpc_limits(limited) -> None:
    srv, client = limited
    frames = [make_image(64, 48, seed=i) for i in range(7)]
    err = _expect(grpc.StatusCode.INVALID_ARGUMENT, lambda: list(client.stylize_video(frames, STYLE)))
    assert "max_video_frames=6" in err.details
    # One stream at a time: a second one while the first runs is refused, naming the limit.
    gate = threading.Event()

    def slow_frames():
        yield frames[0]
        gate.wait(30)
        yield frames[1]

    first = client.stylize_video(slow_frames(), STYLE)
    assert next(first).index == 0
    err = _expect(grpc.StatusCode.RESOURCE_EXHAUSTED, lambda: list(client.stylize_video(frames[:2], STYLE)))
    assert "max_video_streams=1" in err.details
    assert err.retry_after is not None and 1 <= err.retry_after <= 60, err.retry_after  # as a full queue's
    assert srv.metric('adain_queue_refused_total{reason="max_video_streams"}') == 1  # what the alerts count
    gate.set()
    assert [r.index for r in first] == [1]
    assert srv.alive()


@pytest.mark.parametrize("suffix", [".mp4", ".webm"])  # WebM declares no frame count: its duration x rate
def test_a_clip_of_more_frames_than_the_server_takes_is_refused_before_sending(limited, tmp_path: Path,
                                                                               suffix: str, capsys) -> None:
    # The server counts frames as they come: a long clip failed after its limit's worth had been stylized.
    from adain.client.video import stylize_video_file

    srv, client = limited
    make_video(tmp_path / f"long{suffix}", frames=9)
    before = srv.metric("adain_video_frames_total")
    err = _expect(grpc.StatusCode.INVALID_ARGUMENT, stylize_video_file, client, tmp_path / f"long{suffix}",
                  tmp_path / "out.mp4", STYLE)
    assert "9 frames, over the server's limit of max_video_frames=6" in err.details and "--fps" in err.details
    assert srv.metric("adain_video_frames_total") == before and not (tmp_path / "out.mp4").exists()
    (tmp_path / "style.png").write_bytes(STYLE)  # the CLI names the clip once
    assert main([str(tmp_path / f"long{suffix}"), "-s", str(tmp_path / "style.png"), "-o", str(tmp_path / "out.mp4"),
                 "--server", srv.target]) == 1
    assert capsys.readouterr().err.count(f"long{suffix}") == 1
    # a part that fits is taken; into a folder not there yet, as StylizeResult.save (a FileNotFoundError that
    # named a hidden temporary file)
    assert stylize_video_file(client, tmp_path / f"long{suffix}", tmp_path / "new" / "out.mp4", STYLE,
                              duration=0.4) == 5
    before = (tmp_path / f"long{suffix}").read_bytes()  # as the in-process call, it refuses to write over its source
    with pytest.raises(MediaError, match="is the source clip: it would be overwritten"):
        stylize_video_file(client, tmp_path / f"long{suffix}", tmp_path / f"long{suffix}", STYLE, duration=0.4)
    assert (tmp_path / f"long{suffix}").read_bytes() == before


def test_rpc_cancel_midway_frees_the_stream(limited) -> None:
    srv, client = limited
    frames = [make_image(64, 48, seed=i) for i in range(6)]
    for _ in range(5):  # a frame arriving as the call was cancelled was read on (Python 3.11's wait_for) about 1 in 4
        stream = client.stylize_video(iter(frames), STYLE)
        assert next(stream).index == 0
        stream.close()  # the caller stops reading: the client cancels the call
        deadline = time.monotonic() + 10
        while srv.metric("adain_video_streams") != 0:
            assert time.monotonic() < deadline, "the cancelled stream still holds its slot"
            time.sleep(0.05)
        assert srv.metric("adain_queue_depth") == 0  # read at the scrape: it was a value set on events
    assert len(list(client.stylize_video(frames[:3], STYLE))) == 3  # the only slot is free again
    assert client.stylize(frames[0], STYLE).width == 64


def test_a_stream_stops_when_asked_while_no_reply_comes(limited) -> None:
    """``stop`` cancels a stream between replies: a caller that checked only as frames came back (the web page's
    cancel, its abandoned clips) waited for good on a server or network gone silent."""
    srv, client = limited
    gate = threading.Event()

    def stalled():  # the server then has nothing to answer: no reply comes
        gate.wait(30)
        yield make_image(64, 48)

    asked = threading.Event()
    try:
        started = time.monotonic()
        threading.Timer(0.5, asked.set).start()
        with pytest.raises(StyleTransferError) as info:
            list(client.stylize_video(stalled(), STYLE, stop=asked.is_set))
        assert info.value.code == grpc.StatusCode.CANCELLED and time.monotonic() - started < IDLE_S / 2
    finally:
        gate.set()
    deadline = time.monotonic() + 10
    while srv.metric("adain_video_streams") != 0:  # the server's stream ended too
        assert time.monotonic() < deadline, "the stopped stream still holds its slot"
        time.sleep(0.05)
    gate.clear()

    def broken() -> bool:
        raise LookupError("stop() broke")

    try:  # a stop() that raises stops the stream, and its error is the caller's (it died on its thread, unheard)
        with pytest.raises(LookupError, match=r"stop\(\) broke"):
            list(client.stylize_video(stalled(), STYLE, stop=broken))
    finally:
        gate.set()
    while srv.metric("adain_video_streams") != 0:
        assert time.monotonic() < deadline + 10, "the stopped stream still holds its slot"
        time.sleep(0.05)


def test_a_clip_whose_replies_stop_coming_ends_at_the_frame_timeout(decoder_path: Path, tmp_path: Path,
                                                                    capsys) -> None:
    """A clip's stream has no deadline, so a server that stopped answering held the CLI for good (--timeout applied
    to images only): ``frame_timeout`` (the CLI's --timeout) ends it when no frame comes back for that long. The
    server here holds the frames for a batch of 8 that never fills (20 s)."""
    from adain.client.video import stylize_video_file

    srv = ServerProcess(decoder_path, "--max-batch-size", "8", "--max-batch-delay-ms", "20000", *NO_REFINE)
    try:
        srv.wait_serving()
        make_video(tmp_path / "clip.mp4", frames=6)
        with StyleTransferClient(srv.target, timeout=30, retries=0) as client:
            started = time.monotonic()
            with pytest.raises(StyleTransferError) as info:
                stylize_video_file(client, tmp_path / "clip.mp4", tmp_path / "out.mp4", STYLE, frame_timeout=1.5)
            assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED and time.monotonic() - started < 10
            assert "no stylized frame came back for 1.5 s after frame 0" in info.value.details
        (tmp_path / "style.png").write_bytes(STYLE)
        assert main([str(tmp_path / "clip.mp4"), "-s", str(tmp_path / "style.png"), "-o", str(tmp_path / "o.mp4"),
                     "--timeout", "1.5", "--server", srv.target]) == 1
        assert "no stylized frame came back for 1.5 s" in capsys.readouterr().err
        assert not (tmp_path / "out.mp4").exists() and not (tmp_path / "o.mp4").exists()
    finally:
        srv.kill()


def test_a_stream_whose_client_sends_nothing_is_ended(limited) -> None:
    # A paused or vanished client (a CLI stopped with Ctrl-Z) held one of --max-video-streams for good.
    srv, client = limited
    gate = threading.Event()
    frames = [make_image(64, 48, seed=i) for i in range(2)]

    def stalled():
        yield frames[0]
        gate.wait(60)

    stream = client.stylize_video(stalled(), STYLE)
    idle_before = srv.metric("adain_video_idle_ended_total")
    try:
        started = time.monotonic()  # before frame 0 is answered: the server's wait begins as it takes it
        assert next(stream).index == 0
        err = _expect(grpc.StatusCode.DEADLINE_EXCEEDED, lambda: next(stream))
        assert f"no frame came for {IDLE_S} s (video_idle_s)" in err.details
        assert IDLE_S - 1 < time.monotonic() - started < IDLE_S + 15
        assert srv.metric("adain_video_idle_ended_total") == idle_before + 1  # the deadline alert subtracts it
        assert srv.metric("adain_video_streams") == 0
        assert len(list(client.stylize_video(frames, STYLE))) == 2  # the only slot is free again
    finally:
        gate.set()


def test_a_stream_whose_client_reads_nothing_is_ended(limited) -> None:
    # Frames kept coming but no reply was taken: the server's writes waited on flow control, for good.
    from adain.v1 import style_transfer_pb2 as pb
    from adain.v1 import style_transfer_pb2_grpc as pb_grpc

    srv, _ = limited
    idle_before = srv.metric("adain_video_idle_ended_total")
    frames = [make_image(128, 96, seed=i, kind="noise") for i in range(6)]  # PNG replies of ~40 KB
    options = pb.VideoOptions(styles=[pb.Style(image=STYLE)], format=pb.IMAGE_FORMAT_PNG, temporal=pb.TEMPORAL_NONE)
    messages = [pb.VideoRequest(options=options)] + [pb.VideoRequest(frame=f) for f in frames]
    # without bandwidth probing the client's window stays at 64 KiB: two replies fill it
    with grpc.insecure_channel(srv.target, options=[("grpc.http2.bdp_probe", 0)]) as channel:
        call = pb_grpc.StyleTransferStub(channel).StylizeVideo(iter(messages), timeout=120)
        started = time.monotonic()
        while srv.metric("adain_video_streams") != 1:
            time.sleep(0.05)
        while srv.metric("adain_video_streams") != 0:  # ended by the server, not by the client's deadline
            assert time.monotonic() - started < IDLE_S + 30, "the stream nobody reads still holds its place"
            time.sleep(0.2)
        with pytest.raises(grpc.RpcError) as e:
            list(call)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert f"the client took no frame for {IDLE_S} s (video_idle_s)" in e.value.details()
    assert "code=DEADLINE_EXCEEDED" in "".join(srv.stderr_lines)
    assert srv.metric("adain_video_idle_ended_total") == idle_before + 1


def test_single_images_are_served_while_a_video_runs(limited) -> None:
    """Frames queue behind each other, not in front of everyone: a Stylize call answers mid-stream."""
    _, client = limited
    gate = threading.Event()
    frames = [make_image(64, 48, seed=i) for i in range(6)]

    def paced():
        for i, f in enumerate(frames):
            if i == 3:
                gate.wait(30)
            yield f

    stream = client.stylize_video(paced(), STYLE)
    got = [next(stream).index for _ in range(3)]
    single = client.stylize(frames[0], STYLE, timeout=30)  # while the stream is open and waiting
    gate.set()
    assert got == [0, 1, 2] and single.width == 64 and [r.index for r in stream] == [3, 4, 5]


# --- the CLI ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["audio.mp4", "clip.webm", "anim.gif"])
def test_cli_video(server: ServerProcess, clips: dict[str, Path], name: str, tmp_path: Path, capsys) -> None:
    out = tmp_path / f"out{clips[name].suffix}"
    code = main([str(clips[name]), "-s", str(clips["style.png"]), "-o", str(out), "--temporal", "flow",
                 "--server", server.target])
    assert code == 0, capsys.readouterr().err
    src, got = video_facts(clips[name]), video_facts(out)
    assert (got["frames"], got["rate"], got["size"], got["audio"]) == (18, src["rate"], (64, 48), src["audio"])
    assert "18 frames" in capsys.readouterr().out


def test_fewer_frames_a_second_keep_the_time_and_the_sound(stylizer: Stylizer, server: ServerProcess,
                                                         clips: dict[str, Path], tmp_path: Path, capsys) -> None:
    with VideoReader(clips["audio.mp4"], max_fps=6) as reader:  # the clip is 18 frames at 12 a second
        times = [t for _, t in reader.frames()]
        assert (reader.rate, reader.total) == (6, 9)
    assert np.allclose(times, np.arange(9) / 6, atol=1e-3)
    src = video_facts(clips["audio.mp4"])
    out = tmp_path / "library.mp4"  # in process
    assert stylize_video(stylizer, clips["audio.mp4"], out, [STYLE], temporal="flow", max_fps=6) == 9
    got = video_facts(out)
    assert (got["frames"], got["rate"], got["audio_packets"]) == (9, 6, src["audio_packets"])
    out = tmp_path / "cli.mp4"  # and through the server, from the CLI
    assert main([str(clips["audio.mp4"]), "-s", str(clips["style.png"]), "-o", str(out), "--fps", "6",
                 "--server", server.target]) == 0, capsys.readouterr().err
    assert video_facts(out)["frames"] == 9 and video_facts(out)["rate"] == 6
    with VideoReader(clips["audio.mp4"], max_fps=30) as reader:  # a cap above the clip's rate changes nothing
        assert (reader.rate, reader.total, len(list(reader.frames()))) == (12, 18, 18)


def test_cli_video_size_and_container_by_content(server: ServerProcess, clips: dict[str, Path], tmp_path: Path,
                                                 capsys) -> None:
    disguised = tmp_path / "clip.bin"  # a video whatever its name says
    disguised.write_bytes(clips["audio.mp4"].read_bytes())
    out = tmp_path / "small.mkv"
    assert main([str(disguised), "-s", str(clips["style.png"]), "-o", str(out), "--size", "32",
                 "--server", server.target]) == 0, capsys.readouterr().err
    facts = video_facts(out)
    assert (facts["frames"], facts["size"], facts["audio"]) == (18, (32, 24), "aac")


def test_cli_folder_with_videos(server: ServerProcess, clips: dict[str, Path], tmp_path: Path, capsys) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "photo.png").write_bytes(make_image(64, 48))
    (folder / "clip.mov").write_bytes(clips["clip.mov"].read_bytes())
    make_video(folder / "old.avi", frames=6)  # read, though not written: found in a folder too, written as MP4
    out = tmp_path / "out"
    assert main([str(folder), "-s", str(clips["style.png"]), "-o", str(out), "--server", server.target]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "clip_stylized_style.mov", "old_stylized_style.mp4", "photo_stylized_style.png"]
    assert video_facts(out / "clip_stylized_style.mov")["frames"] == 18
    assert video_facts(out / "old_stylized_style.mp4")["frames"] == 6
    capsys.readouterr()
    assert main([str(folder), "-s", str(clips["style.png"]), "-o", str(tmp_path / "refined"), "--refine", "1",
                 "--server", server.target]) == 0
    assert "--refine applies to the 1 image(s); the 2 video(s) are stylized without it" in capsys.readouterr().err


def _truncated(path: Path, tmp_path: Path) -> Path:
    cut = tmp_path / f"cut{path.suffix}"
    data = path.read_bytes()
    cut.write_bytes(data[: int(len(data) * 0.6)])
    return cut


def _audio_only(tmp_path: Path) -> Path:
    import av

    path = tmp_path / "sound.m4a"
    with av.open(str(path), "w", format="mp4") as out:
        a = out.add_stream("aac", rate=44100)
        tone = (0.2 * np.sin(np.arange(44100) / 10)).astype(np.float32)[None, :]
        frame = av.AudioFrame.from_ndarray(tone, format="flt", layout="mono")
        frame.sample_rate = 44100
        for packet in [*a.encode(frame), *a.encode(None)]:
            out.mux(packet)
    return path


def _no_frames(tmp_path: Path) -> Path:
    """A Matroska file with a video track that holds no frame (and a sound track, so that it is written)."""
    import av

    path = tmp_path / "empty.mkv"
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=12)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        a = out.add_stream("aac", rate=44100)
        frame = av.AudioFrame.from_ndarray((0.2 * np.sin(np.arange(4410) / 10)).astype(np.float32)[None, :],
                                           format="flt", layout="mono")
        frame.sample_rate = 44100
        for packet in [*a.encode(frame), *a.encode(None)]:
            out.mux(packet)
    return path


BAD_VIDEOS = {
    "corrupt": (lambda c, t: (t / "bad.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 nothing else") and t / "bad.mp4",
                "not a readable video"),
    "truncated-mp4": (lambda c, t: _truncated(c["audio.mp4"], t), "not a readable video (Invalid data found "
                      "when processing input: no container FFmpeg reads, or one cut short)"),
    "truncated-mkv": (lambda c, t: _truncated(c["clip.mkv"], t), "truncated"),
    "truncated-gif": (lambda c, t: _truncated(c["anim.gif"], t), "truncated"),
    "no-video-stream": (lambda c, t: _audio_only(t), "no video stream"),
    "no-frames": (lambda c, t: _no_frames(t), "no frames"),
    # PyAV gives a stream FFmpeg has no decoder for no codec context: an AttributeError's traceback, the file left open
    "unknown-video-codec": (lambda c, t: unknown_codec_clip(t / "v.mkv", "video"), "no decoder for the clip's video"),
    "unknown-sound-codec": (lambda c, t: unknown_codec_clip(t / "a.mkv", "sound"), "no decoder for the clip's sound"),
}


def test_cli_refuses_image_flags_for_videos(server: ServerProcess, clips: dict[str, Path], tmp_path: Path,
                                            capsys) -> None:
    # --quality and --keep-exif did nothing to a video, silently; --format names an image format
    clip, style, srv = str(clips["silent.mp4"]), str(clips["style.png"]), ["--server", server.target]
    for flags in (["--quality", "50"], ["--keep-exif"], ["--format", "jpeg"]):
        assert main([clip, "-s", style, *flags, "-o", str(tmp_path / "out.mp4"), *srv]) != 0
        assert f"{flags[0]}: only for images, and {clip} is a video" in capsys.readouterr().err
    assert main([clip, "-s", style, "--content-weight", "3", "-o", str(tmp_path / "out.mp4"), *srv]) != 0
    assert "--content-weight needs --refine N" in capsys.readouterr().err  # dropped without a word, it was
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "a.mp4").write_bytes(clips["silent.mp4"].read_bytes())
    assert main([str(videos), "-s", style, "--quality", "50", "-o", str(tmp_path / "out/"), *srv]) != 0
    assert "--quality: only for images, and none of the contents is one" in capsys.readouterr().err
    assert not list(tmp_path.glob("out*"))
    # a style's problem is named as the style's, not the clip's
    (tmp_path / "bad.png").write_bytes(b"no image")
    assert main([clip, "-s", str(tmp_path / "bad.png"), "-o", str(tmp_path / "out.mp4"), *srv]) != 0
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"adain-stylize: error: --style {tmp_path / 'bad.png'}: "), line


def test_cli_says_a_sound_file_has_no_video(server: ServerProcess, clips: dict[str, Path], tmp_path: Path,
                                            capsys) -> None:
    import av

    song = tmp_path / "song.m4a"  # sound only: it was told its output "must be a video file"
    with av.open(str(clips["audio.mp4"])) as src, av.open(str(song), "w", format="mp4") as out:
        stream = out.add_stream_from_template(src.streams.audio[0])
        for packet in src.demux(src.streams.audio[0]):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)
    assert main([str(song), "-s", str(clips["style.png"]), "-o", str(tmp_path / "x.m4a"),
                 "--server", server.target]) != 0
    assert f"{song}: the file has no video stream" in capsys.readouterr().err
    # a clip's -o ending in a space: said, the space being unseen in the line (a tour's "outv/trail.mp4 ")
    spaced = f"{tmp_path}/trail.mp4 "
    assert main([str(clips["silent.mp4"]), "-s", str(clips["style.png"]), "-o", spaced, "--server",
                 f"127.0.0.1:{free_port()}"]) == 1
    assert capsys.readouterr().err.rstrip("\n").endswith("(its name ends in a space: 'trail.mp4 ')")


@pytest.mark.parametrize("case", list(BAD_VIDEOS), ids=list(BAD_VIDEOS))
def test_cli_bad_videos(server: ServerProcess, clips: dict[str, Path], tmp_path: Path, case: str, capsys) -> None:
    make, expected = BAD_VIDEOS[case]
    src = make(clips, tmp_path)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "out.mp4"
    code = main([str(src), "-s", str(clips["style.png"]), "-o", str(out), "--server", server.target])
    err = capsys.readouterr().err
    assert code == 1 and expected in err, err
    assert err.strip().splitlines()[-1].startswith("adain-stylize: error: ")
    assert list(out_dir.iterdir()) == []  # nothing written, not even a partial file
    assert server.alive()


def test_a_part_of_a_clip_with_its_sound(stylizer: Stylizer, server: ServerProcess, tmp_path: Path, capsys) -> None:
    """start and duration take seconds 1 to 3 of a 4-s clip: its frames, their times from 0, half the sound."""
    clip = tmp_path / "four.mp4"
    make_video(clip, frames=48, fps=12, audio=True)
    whole = _frames(clip)
    with VideoReader(clip, start=1.0, duration=2.0) as reader:
        part = list(reader.frames())
        assert reader.total == 24
    assert np.allclose([t for _, t in part], np.arange(24) / 12, atol=1e-3)
    assert np.array_equal(np.asarray(part[0][0]), np.asarray(whole[12]))  # the frame at 1 s, exactly
    out = tmp_path / "part.mp4"
    assert stylize_video(stylizer, clip, out, [STYLE], temporal="none", start=1.0, duration=2.0) == 24
    got, src = video_facts(out), video_facts(clip)
    assert got["frames"] == 24 and abs(got["audio_packets"] - src["audio_packets"] / 2) <= 3
    import av

    with av.open(str(out)) as c:  # the sound starts with the picture
        first = next(p for p in c.demux(c.streams.audio[0]) if p.size)
        assert float(first.pts * first.time_base) < 0.1
    cli_out = tmp_path / "cli.mp4"
    (tmp_path / "style.png").write_bytes(STYLE)
    assert main([str(clip), "-s", str(tmp_path / "style.png"), "-o", str(cli_out), "--start", "3", "--server",
                 server.target]) == 0, capsys.readouterr().err
    assert video_facts(cli_out)["frames"] == 12  # from 3 s to the end
    with pytest.raises(MediaError, match="past its end"):
        VideoReader(clip, start=10)
    with VideoReader(clip, start=3.5, duration=0.5) as reader:
        assert len(list(reader.frames())) == 6
    gif = tmp_path / "anim.gif"  # a GIF, read from its beginning when its demuxer cannot seek
    make_video(gif, frames=24, fps=12)
    with VideoReader(gif, start=1.0) as reader:
        assert [round(t, 2) for _, t in reader.frames()] == [round(i / 12, 2) for i in range(12)]


def test_reading_and_writing_a_clip_holds_no_scaler_threads_per_frame(tmp_path: Path) -> None:
    """Each frame's own FFmpeg scaler (frame.reformat) was kept with the frame, which reading its display matrix
    put in a reference cycle: two threads a frame until a garbage collection (adain-web at 404 threads in a soak,
    a 300-frame clip +300). One scaler a reader and a writer now."""
    import gc
    import os

    make_video(tmp_path / "in.mp4", frames=60, w=96, h=64)

    def threads() -> int:
        return len(os.listdir("/proc/self/task"))

    gc.collect()
    gc.disable()
    try:
        before = threads()
        with VideoReader(tmp_path / "in.mp4", max_side=48) as reader:
            writer = VideoWriter(tmp_path / "out.mp4", width=48, height=32, rate=reader.rate)
            for image, t in reader.frames():
                writer.write(image, t)
            grown = threads() - before
            writer.close()
    finally:
        gc.enable()
    assert grown <= 8, grown
