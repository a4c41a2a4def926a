"""Print-size images (``adain.tiling``): tiled renders match untiled ones, show no seams, keep every
option, and go through the server and the CLI in bounded memory.

Bounds (shipped decoder, the bundled astronaut at 384 x 256, tiles of 128 px so that there are borders both
ways): mean absolute difference to the untiled output at most 1.5 levels (0-255) and 99th percentile at most
16 with a 64-px halo (measured: 0.51 / 7; at 600 x 400, 0.72 / 9 in 4x the time); no seam: at every tile
border the mean gradient across it, relative to the gradient within 8 px on either side, is at most 0.1
above the untiled image's ratio at the same place.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from adain import Stylizer
from adain.client import StyleTransferClient, StyleTransferError
from adain.client.cli import main
from adain.image import to_tensor
from adain.tiling import BUFFER_BYTES_PER_PIXEL, Tiling
from adain.v1 import style_transfer_pb2 as pb
from adain.v1 import style_transfer_pb2_grpc as pb_grpc
from helpers import NO_REFINE, REPO, ServerProcess, WebProcess, browser_or_skip, open_page_with, wait_for
from synth import band_mask, encoded, synth_image

TILE, HALO = 128, 64
PHOTO = Image.open(REPO / "examples" / "content" / "astronaut.jpg").convert("RGB")
CONTENT = PHOTO.resize((384, 256))
STYLE = (REPO / "examples" / "style" / "mosaic.png").read_bytes()
STYLE_B = (REPO / "examples" / "style" / "waves.png").read_bytes()


@pytest.fixture(scope="module")
def untiled() -> Stylizer:
    return Stylizer(None, "cpu", precision="fp32", tiling=Tiling(0))


@pytest.fixture(scope="module")
def tiled() -> Stylizer:
    return Stylizer(None, "cpu", precision="fp32", tiling=Tiling(1, tile=TILE, halo=HALO))


def px(img: Image.Image) -> np.ndarray:
    return np.asarray(img, np.float32)


def seam_ratios(img: np.ndarray, axis: int, tile: int) -> np.ndarray:
    """Gradient across each tile border over the gradient within 8 px on either side of it."""
    g = np.abs(np.diff(img, axis=axis)).mean(axis=(1 - axis, 2))  # g[i]: between i and i+1
    ratios = []
    for b in range(tile, img.shape[axis], tile):
        local = np.concatenate([g[b - 9 : b - 1], g[b : b + 8]]).mean()
        ratios.append(g[b - 1] / local)
    return np.array(ratios)


def test_tiled_matches_untiled_without_seams(untiled: Stylizer, tiled: Stylizer) -> None:
    want, got = px(untiled.stylize(CONTENT, STYLE)), px(tiled.stylize(CONTENT, STYLE))
    assert got.shape == want.shape == (256, 384, 3)
    d = np.abs(got - want)
    assert d.mean() <= 1.5 and np.percentile(d, 99) <= 16, (d.mean(), np.percentile(d, 99))
    for axis in (0, 1):
        assert (seam_ratios(got, axis, TILE) <= seam_ratios(want, axis, TILE) + 0.1).all()
    # no bands where each tile's own outermost pixels were weighted in (48-62 px either side of each border: 1.8
    # levels mean there, against 0.3 elsewhere, until a halo's outer quarter had no weight; now 0.01-0.02 both)
    for axis, n in ((0, 256), (1, 384)):
        off = np.min([np.abs(np.arange(n) - b) for b in range(TILE, n, TILE)], axis=0)
        band = (off >= 48) & (off <= 62)
        by_line = d.mean(axis=(1 - axis, 2))
        assert by_line[band].mean() <= 0.2 and by_line[~band].mean() <= 0.2, (by_line[band].mean(), by_line.mean())


def test_a_tiled_render_reports_its_parts_and_can_be_stopped(tiled: Stylizer) -> None:
    """The library's on_step was called for a refine only: an embedding service got no progress, and no way to
    stop, during a print's minutes of tiles (the server reported them)."""
    from adain.errors import StoppedError

    seen: list[tuple[int, int]] = []
    plain = px(tiled.stylize(CONTENT, STYLE))
    got = px(tiled.stylize(CONTENT, STYLE, on_step=lambda p: seen.append((p.step, p.steps))))
    assert np.array_equal(got, plain)  # the same picture
    total = seen[-1][1]
    assert total > 2 and seen == [(i, total) for i in range(1, total + 1)], seen

    def stop(p) -> None:
        if p.step == 2:
            raise StoppedError("cancelled")

    with pytest.raises(StoppedError):
        tiled.stylize(CONTENT, STYLE, on_step=stop)


@pytest.mark.parametrize("options", [
    {"weights": [0.3, 0.7], "alpha": 0.6},
    {"preserve_color": "luminance"},
    {"masks": [encoded(band_mask(384, 256, 0, 192)), encoded(band_mask(384, 256, 192, 384))]},
], ids=["weights-alpha", "luminance", "masks"])
def test_options_work_tiled_as_untiled(untiled: Stylizer, tiled: Stylizer, options: dict) -> None:
    styles = [STYLE, STYLE_B] if "weights" in options or "masks" in options else [STYLE]
    d = np.abs(px(tiled.stylize(CONTENT, styles, **options)) - px(untiled.stylize(CONTENT, styles, **options)))
    assert d.mean() <= 1.5, (options, d.mean())


def test_statistics_come_from_the_whole_image(untiled: Stylizer) -> None:
    """Sampled boxes (here 6 of 128 px, a fifth of the image, small enough that their borders weigh) stand
    for the whole image's statistics: the output (tiles of 200 px, as the naive split's) stays close to the
    untiled one, where each tile's own statistics (what a naive split does) drift far from it."""
    sampled = Stylizer(None, "cpu", precision="fp32",
                       tiling=Tiling(1, tile=200, halo=HALO, stats_pixels=6 * 128 * 128, stats_box=128, stats_halo=64))
    # the style at 256 px, not over this tiling's threshold: its own statistics are exact, not sampled as well
    content = PHOTO.resize((600, 400))
    want = px(untiled.stylize(content, STYLE, style_size=256))
    d_sampled = np.abs(px(sampled.stylize(content, STYLE, style_size=256)) - want).mean()
    naive = [px(untiled.stylize(content.crop((x, y, x + 200, y + 200)), STYLE, style_size=256))
             for y in (0, 200) for x in (0, 200, 400)]
    stitched = np.concatenate([np.concatenate(naive[:3], 1), np.concatenate(naive[3:], 1)], 0)
    d_naive = np.abs(stitched - want).mean()
    # 7.9 and 36.0 measured (8.1 with 128-px tiles, in twice the time; at style_size 512, 7.5 and 36.4: a style
    # that large is now itself sampled here)
    assert d_sampled <= 8.5 and d_sampled < d_naive / 4, (d_sampled, d_naive)


def test_a_style_at_print_size_is_measured_box_by_box(untiled: Stylizer, tiled: Stylizer) -> None:
    """A style over the tiling threshold as used (a large style_size) has its statistics taken on boxes, in
    bounded memory, as a content's are: the same statistics, the same picture."""
    from adain.ops import mean_std
    from adain.tiling import image_stats

    style = to_tensor(Image.open(REPO / "examples" / "style" / "mosaic.png").convert("RGB").resize((329, 251)))
    with torch.inference_mode():
        want = mean_std(untiled.encoder.encode([style], run=untiled.backend.relu4_1)[0])
        got = image_stats(untiled, style, Tiling(1, tile=128, halo=64, stats_box=128, stats_halo=48))
    for a, b in zip(got, want):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-3), (a - b).abs().max()
    small = PHOTO.resize((200, 150))  # not tiled itself: only its style is
    d = np.abs(px(tiled.stylize(small, STYLE, style_size=600)) - px(untiled.stylize(small, STYLE, style_size=600)))
    assert d.mean() <= 1.0, d.mean()


@pytest.mark.parametrize("size", [(257, 193), (329, 251)])
def test_whole_image_statistics_are_exact_at_any_size(untiled: Stylizer, size: tuple[int, int]) -> None:
    """The boxes' statistics were weighed by pixels, but they are averages over relu4_1 cells: an edge box one
    pixel wide (a whole cell column) counted an eighth, 3% / 69% off the mean / std at 257 x 193. A region
    nearly absent from a box took that box's unweighted statistics (36% off for a 10 x 5-px region); and a
    small tile halo shrank the boxes' context too."""
    import torch

    from adain import Job
    from adain.ops import weighted_mean_std
    from adain.regions import maps_at
    from adain.tiling import whole_image_stats

    w, h = size
    small = np.zeros((h, w), np.uint8)
    small[100:105, 200:210] = 255
    masks = [Image.fromarray(small), Image.fromarray(255 - small)]
    prepared = untiled.prepare(Job(PHOTO.resize(size), [STYLE, STYLE_B], masks=masks))
    with torch.inference_mode():
        feat = untiled.encoder.encode([prepared.content], run=untiled.backend.relu4_1)[0]
    maps = maps_at(prepared.regions, feat.shape[2:])
    for tiling in (Tiling(1, tile=64, halo=64, stats_box=64, stats_halo=64), Tiling(1, tile=64, halo=0, stats_box=64,
                                                                                      stats_halo=64)):
        stats, _ = whole_image_stats(untiled, prepared, tiling)
        assert sorted(stats) == [0, 1]
        for k, (mean, std) in stats.items():
            want_mean, want_std = weighted_mean_std(feat, maps[:, k : k + 1])
            assert (mean - want_mean).abs().max() <= 1e-4 * want_mean.abs().max(), k
            assert ((std - want_std).abs() / want_std).max() <= 1e-3, k


def test_a_region_no_sampled_box_reaches_is_one_normalisation_for_every_tile() -> None:
    """Above stats_pixels the statistics come from sampled boxes; a region none reached was normalised by each
    tile's own statistics, and its dark half's two tiles came out 101 and 63 (20 and 20 untiled): a seam."""
    tiling = Tiling(threshold=1, tile=64, halo=16, stats_box=64, stats_halo=32, stats_pixels=4096)
    tiled = Stylizer(None, "cpu", backend="torch", precision="fp32", tiling=tiling)
    content = np.asarray(synth_image(256, 192, seed=1, kind="noise"), np.float32)
    content[:, :128] *= 0.3
    strip = np.zeros((192, 256), np.uint8)
    strip[8:56] = 255  # the one sampled box is rows 64-128
    out = np.asarray(tiled.stylize(Image.fromarray(content.astype(np.uint8)), [synth_image(128, 128, seed=2)],
                                   masks=[Image.fromarray(strip)]), np.float32)
    dark = [float(out[16:48, x : x + 64].mean()) for x in (0, 64)]
    assert abs(dark[0] - dark[1]) < 12, dark


def test_tiling_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="tile must be a multiple of 8"):
        Tiling(1, tile=100)
    with pytest.raises(ValueError, match="halo must be a multiple of 8"):
        Tiling(1, halo=30)
    with pytest.raises(ValueError, match="stats_box must be a multiple of 8"):  # off the grid: up to 255 levels off
        Tiling(1, stats_box=60)
    assert not Tiling(0).threshold and Stylizer(None, "cpu", tiling=Tiling(-1)).tiling.threshold > 1 << 20


def test_the_memory_share_is_the_containers(tmp_path: Path) -> None:
    """In a pod /proc/meminfo shows the node's memory; the cgroup's limit, where lower, is what counts."""
    from adain.tiling import mem_total

    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/meminfo").write_text("MemTotal:       67108864 kB\nMemFree: 1 kB\n")  # a 64 GiB node
    assert mem_total(tmp_path) == 64 << 30
    (tmp_path / "sys/fs/cgroup/memory").mkdir(parents=True)
    (tmp_path / "sys/fs/cgroup/memory/memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1: none
    assert mem_total(tmp_path) == 64 << 30
    (tmp_path / "sys/fs/cgroup/memory.max").write_text("max\n")  # v2: none
    assert mem_total(tmp_path) == 64 << 30
    (tmp_path / "sys/fs/cgroup/memory.max").write_text(f"{8 << 30}\n")  # the pod's 8Gi limit
    assert mem_total(tmp_path) == 8 << 30
    assert mem_total(tmp_path / "nothing") == 8 << 30  # nothing readable: a small machine assumed


# --- through the server and the CLI ----------------------------------------------------------


def _rss(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


@pytest.fixture(scope="module")
def tiling_server(decoder_path: Path) -> ServerProcess:
    srv = ServerProcess(decoder_path, "--tile-threshold", "1", "--tile-size", "512", "--tile-halo", "32",
                        "--max-message-mb", "64", "--torch-threads", "2", *NO_REFINE)
    srv.wait_serving()
    yield srv
    srv.terminate()


def test_mid_size_through_the_cli_in_bounded_memory(tiling_server: ServerProcess, tmp_path: Path, capsys) -> None:
    """1,200 x 900 through the CLI and the server with 512-px tiles (six, and their statistics boxes): the
    server's peak memory stays under what the tile size implies plus the image buffers (1.07 GB), far under an
    untiled render's (~1.8 KB/px: 1.9 GB). Measured (AMD EPYC, OpenVINO): 0.76-0.77 GB over idle, 0.98-1.0 GB
    without the trim of freed pages after each tile (``adain.memory.release_freed_memory``, called by
    adain.tiling); a second call added nothing either way at this size (at 1,600 x 1,200, in twice the time,
    it crept to 1.28 GB over twelve calls without the trim)."""
    content = tmp_path / "big.jpg"
    synth_image(1200, 900, seed=7).save(content, quality=90)
    style = tmp_path / "style.png"
    style.write_bytes(STYLE)
    idle = _rss(tiling_server.proc.pid, "VmRSS")
    out = tmp_path / "out.jpg"
    code = main([str(content), "-s", str(style), "-o", str(out), "--server", tiling_server.target, "--timeout", "600"])
    assert code == 0, capsys.readouterr().err
    with Image.open(out) as img:
        assert img.size == (1200, 900)
    info = StyleTransferClient(tiling_server.target).server_info()
    tile_bytes = int(info["limits"]["tile_memory_bytes"])
    assert int(info["limits"]["tile_threshold_pixels"]) == 1 and int(info["limits"]["tile_size"]) == 512
    assert int(info["limits"]["max_refine_pixels"]) == 16 * 16  # the least a refine works at
    grew = _rss(tiling_server.proc.pid, "VmHWM") - idle
    bound = tile_bytes + BUFFER_BYTES_PER_PIXEL * 1200 * 900  # one tile's work + the image buffers
    assert grew <= bound, (grew / 2**20, bound / 2**20)


def test_a_tiled_job_stops_at_its_deadline(tiling_server: ServerProcess) -> None:
    content = encoded(synth_image(3000, 2000, seed=8), "JPEG")
    with StyleTransferClient(tiling_server.target, timeout=2.0) as client:
        t0 = time.monotonic()
        with pytest.raises(StyleTransferError) as err:
            client.stylize(content, STYLE)
        assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - t0 < 8
        # and the server goes on serving
        assert client.stylize(synth_image(64, 48), STYLE, timeout=60).width == 64
    # the job itself stopped (at its next statistics box or tile), not only the call: the server falls idle. It
    # looks for it between boxes, so it may still be finishing one (seconds on a slow machine): a quiet 1.5 s is
    # waited for, up to 12 s; a job that went on through its 48 boxes and tiles would keep it busy longer.
    quiet_by = time.monotonic() + 12
    while True:
        cpu = _cpu_seconds(tiling_server.proc.pid)
        time.sleep(1.5)
        if _cpu_seconds(tiling_server.proc.pid) - cpu < 0.5:
            break
        assert time.monotonic() < quiet_by, "the abandoned job is still running"


def _in_a_terminal(args: list[str]) -> tuple[bytes, str]:
    """``adain-stylize ARGS`` with its stderr on a terminal (a pty of 120 columns: tqdm draws no bar in 0): its
    stdout, and what the terminal showed, each carriage return a new line."""
    import fcntl
    import pty
    import struct
    import subprocess
    import sys
    import termios

    lead, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "adain.client.cli", *args], cwd=REPO, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=follower)
    os.close(follower)
    shown = b""
    while True:  # read as it writes (a full pty would hold the process up), to the end
        try:
            chunk = os.read(lead, 4096)
        except OSError:  # EIO: every writer has closed it
            break
        if not chunk:
            break
        shown += chunk
    os.close(lead)
    out, _ = proc.communicate(timeout=120)
    text = shown.decode(errors="replace").replace("\r", "\n")
    assert proc.returncode == 0, text
    return out, text


def test_the_cli_shows_a_large_photos_parts_in_a_terminal(tiling_server: ServerProcess, tmp_path: Path) -> None:
    """A print-size photo took a minute or more (70 s for 12 MP on a 2-core CPU) with nothing on the terminal; now
    its statistics boxes and tiles are a progress bar there, and in a folder run they are named beside the
    images' bar. In a pipe or a script the call stays a plain Stylize (the other tests here run so)."""
    (tmp_path / "in").mkdir()
    content = tmp_path / "in" / "photo.jpg"
    synth_image(800, 600, seed=5).save(content, quality=90)  # four statistics boxes, four 512-px tiles
    (tmp_path / "style.png").write_bytes(STYLE)
    common = ["-s", str(tmp_path / "style.png"), "--server", tiling_server.target]
    out, shown = _in_a_terminal([str(content), "-o", str(tmp_path / "out.jpg"), *common])
    assert b"out.jpg (800 x 600)" in out
    assert "large photo: 100%" in shown and "8/8" in shown, shown
    out, shown = _in_a_terminal([str(tmp_path / "in"), "-o", str(tmp_path / "outs") + "/", *common])
    assert b"1 of 1 output written" in out
    assert "photo.jpg: part 1 of 8" in shown and "photo.jpg: part 8 of 8" in shown, shown


@pytest.fixture(scope="module")
def tiled_web(tiling_server: ServerProcess) -> WebProcess:
    web = WebProcess(tiling_server.target)
    yield web
    web.stop()


BIG = encoded(synth_image(3000, 2000, seed=8), "JPEG")  # minutes of 512-px tiles on the tiling server's one thread


def _until(condition, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


CANCELLED = "method=StylizeWithProgress code=CANCELLED"


def _cancelled(server: ServerProcess) -> int:
    return "".join(server.stderr_lines).count(CANCELLED)


def _long_job_place_is_free(web: WebProcess) -> None:
    """A small photo (tiled too on this server) comes back at once: the big one is not holding the only long-job
    place any more (it would for minutes)."""
    small = [("content", ("small.png", encoded(synth_image(64, 48, seed=2)), "image/png")),
             ("styles", ("s.png", STYLE, "image/png"))]
    t0 = time.monotonic()
    assert httpx.post(web.url + "/api/stylize", files=small, timeout=60).status_code == 200
    assert time.monotonic() - t0 < 30


def test_a_large_photo_shows_its_parts_over_http_and_stops_when_the_page_goes(
    tiling_server: ServerProcess, tiled_web: WebProcess
) -> None:
    """A photo over the tile threshold is a long job like a refine: adain-web showed nothing of its minutes, and one
    whose page went away ran on to its end (or deadline) holding the server's only long-job place. Now adain-web
    follows it (GET /api/progress/ID: the statistics boxes, then the tiles) and cancels it at its next box or tile
    when the page goes."""
    request = httpx.Request("POST", tiled_web.url + "/api/stylize", headers={"X-Request-Id": "tiled-followed"},
                            files=[("content", ("big.jpg", BIG, "image/jpeg")),
                                   ("styles", ("s.png", STYLE, "image/png"))])
    body = request.read()
    head = "".join(f"{k}: {v}\r\n" for k, v in request.headers.items() if k.lower() != "host")
    page = socket.create_connection(("127.0.0.1", tiled_web.port))
    page.sendall(f"POST /api/stylize HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}\r\n".encode() + body)
    seen: list[dict] = []

    def started() -> bool:
        r = httpx.get(f"{tiled_web.url}/api/progress/tiled-followed", timeout=10)
        seen[:] = [r.json()] if r.status_code == 200 else []
        return bool(seen) and seen[0]["step"] >= 1

    _until(started, timeout=90)
    assert seen[0]["steps"] == 24 + 24, seen  # 512-px statistics boxes (a box is at most a tile), then the tiles
    cancelled = _cancelled(tiling_server)
    page.close()  # the page goes away: the job stops at its next box or tile
    tiling_server.wait_logged(lambda log: log.count(CANCELLED) > cancelled, timeout=60)
    assert any("request_id=tiled-followed" in line and "code=CANCELLED" in line for line in tiling_server.stderr_lines)
    assert httpx.get(f"{tiled_web.url}/api/progress/tiled-followed", timeout=10).status_code == 404
    _long_job_place_is_free(tiled_web)


def test_a_photo_past_the_pages_time_limit_says_what_to_do(tiling_server: ServerProcess) -> None:
    """A photo that runs past adain-web's --timeout was told "try again in a moment", which takes as long again."""
    web = WebProcess(tiling_server.target, "--timeout", "2")
    try:
        r = httpx.post(web.url + "/api/stylize", timeout=60, files=[("content", ("big.jpg", BIG, "image/jpeg")),
                                                                    ("styles", ("s.png", STYLE, "image/png"))])
        assert r.status_code == 504, r.text
        message = r.json()["error"]["message"]
        assert "longer than the 2 s this page allows" in message and "smaller size" in message, message
    finally:
        web.stop()


def test_page_shows_a_large_photos_parts_and_cancel_stops_it(
    tiling_server: ServerProcess, tiled_web: WebProcess, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    browser = browser_or_skip()
    try:
        (tmp_path / "large.jpg").write_bytes(BIG)
        open_page_with(browser, tiled_web, tmp_path / "large.jpg", "mosaic")
        assert Select(browser.find_element(By.ID, "photo-size")).first_selected_option.text == "2048 px"
        Select(browser.find_element(By.ID, "photo-size")).select_by_value("0")  # as taken: 48 parts
        browser.find_element(By.ID, "submit").click()
        text = wait_for(browser, lambda d: (t := d.find_element(By.ID, "progress-text").text).startswith(
            "Large photo: part") and not t.startswith("Large photo: part 0") and t, timeout=90)
        assert text.endswith("of 48"), text
        assert browser.find_element(By.ID, "busy").get_attribute("hidden")  # the bar, not the spinner
        cancelled = _cancelled(tiling_server)
        browser.find_element(By.ID, "cancel").click()
        assert browser.find_element(By.ID, "form-error").text == "Cancelled."
        tiling_server.wait_logged(lambda log: log.count(CANCELLED) > cancelled, timeout=60)
        _long_job_place_is_free(tiled_web)
        # several photos, the first large: its parts beside its number, and Cancel stops it, not after it
        (tmp_path / "small.png").write_bytes(encoded(synth_image(64, 48, seed=3)))
        open_page_with(browser, tiled_web, f"{tmp_path / 'large.jpg'}\n{tmp_path / 'small.png'}", "mosaic")
        assert browser.find_element(By.ID, "content-name").text.startswith("2 photos")
        Select(browser.find_element(By.ID, "photo-size")).select_by_value("0")
        browser.find_element(By.ID, "submit").click()
        text = wait_for(browser, lambda d: (t := d.find_element(By.ID, "progress-text").text).startswith(
            "Photo 1 of 2: ") and t, timeout=90)
        assert text.endswith(" of 48 done"), text
        cancelled = _cancelled(tiling_server)
        browser.find_element(By.ID, "cancel").click()
        tiling_server.wait_logged(lambda log: log.count(CANCELLED) > cancelled, timeout=60)
        wait_for(browser, lambda d: d.find_element(By.ID, "submit").is_enabled())
        assert browser.find_element(By.ID, "form-error").text == "Cancelled."
        assert browser.find_elements(By.CSS_SELECTOR, "#batch-results figure") == []  # the small one never sent
        _long_job_place_is_free(tiled_web)
    finally:
        browser.quit()


def test_print_size_calls_waiting_for_their_turn_hold_only_their_bytes(decoder_path: Path) -> None:
    """Five 30-MP calls at once, one long-job thread: the four waiting are not decoded until their turn (each
    would hold 360 MB of floats: five prepared at once took the server's peak from 0.85 to 2.4 GiB over idle,
    and a pod's 8 GiB limit was reached with 67-MP contents)."""
    import io
    from concurrent.futures import ThreadPoolExecutor

    buf = io.BytesIO()
    Image.new("RGB", (6000, 5000), (120, 90, 60)).save(buf, "PNG")  # 30 MP, 30 KB
    big = buf.getvalue()
    srv = ServerProcess(decoder_path, "--tile-threshold", "1000000", "--tile-size", "256", "--max-refine-jobs", "1",
                        "--max-refine-queue", "5", "--max-pixels", "40000000", *NO_REFINE)  # (one caller: 5 of 6)
    try:
        srv.wait_serving()
        idle = _rss(srv.proc.pid, "VmRSS")

        def call(timeout: float) -> str:
            try:
                with StyleTransferClient(srv.target, timeout=timeout, retries=0) as client:
                    client.stylize(big, STYLE)
                return "OK"
            except StyleTransferError as e:
                return e.code.name

        with ThreadPoolExecutor(5) as pool:  # the first runs (minutes here): all stop at their deadlines
            codes = list(pool.map(call, [6, 3, 3, 3, 3]))
        assert codes == ["DEADLINE_EXCEEDED"] * 5, codes
        grew = _rss(srv.proc.pid, "VmHWM") - idle
        tile_bytes = int(StyleTransferClient(srv.target).server_info()["limits"]["tile_memory_bytes"])
        bound = tile_bytes + 2 * 15 * 6000 * 5000  # one tile's work and the running call's content, twice over
        assert grew <= bound, (grew / 2**20, bound / 2**20)
        assert srv.alive()
    finally:
        srv.terminate()


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def test_a_reply_over_the_message_limit_says_what_to_do(decoder_path: Path, tmp_path: Path) -> None:
    """A photo, a clip's frame and the library's list: each over the reply limit is RESOURCE_EXHAUSTED saying
    what to ask for instead, and logged as such (gRPC's own refusal was logged as OK). And a style larger than
    the whole style registry is refused (it would have pushed every other registered style out). A request
    over the limit, which gRPC refuses before any handler runs, is logged and counted all the same."""
    for i in range(4):
        synth_image(256, 256, seed=20 + i, kind="noise").save(tmp_path / f"s{i}.png")
    srv = ServerProcess(decoder_path, "--max-message-mb", "0.1", "--styles-dir", str(tmp_path), "--log-level", "INFO",
                        "--style-registry-mb", "0.01", *NO_REFINE)
    try:
        srv.wait_serving()
        content = encoded(synth_image(320, 240, seed=9, kind="noise"), "JPEG", quality=30)
        assert len(content) + len(STYLE) < 90_000
        with StyleTransferClient(srv.target, timeout=60) as client:
            with pytest.raises(StyleTransferError) as err:
                client.stylize(content, STYLE, format="png")
            assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "over the reply limit" in err.value.details and "JPEG" in err.value.details
            assert client.stylize(content, STYLE, format="jpeg", quality=60).width == 320  # the suggestion works
            frame = content  # the photo above: over the limit as PNG
            with pytest.raises(StyleTransferError) as err:
                list(client.stylize_video([frame], STYLE, format="png"))
            assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "frame 0 is 320x240 as PNG" in err.value.details
            with pytest.raises(StyleTransferError) as err:
                client.list_styles(thumbnail_size=512)
            assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "thumbnail_size" in err.value.details
            assert len(client.list_styles(thumbnail_size=64)) == 4  # the suggestion works
            with pytest.raises(StyleTransferError) as err:  # a style larger than the whole registry: refused
                client.register_style(content)
            assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and "(style_registry_mb)" in err.value.details
        big = encoded(synth_image(256, 256, seed=3, kind="noise"))  # ~200 KB: over 0.1 MB on the way in
        with grpc.insecure_channel(srv.target) as channel:
            stub = pb_grpc.StyleTransferStub(channel)
            with pytest.raises(grpc.RpcError) as err:
                stub.Stylize(pb.StylizeRequest(content=big, styles=[pb.Style(image=STYLE)]), timeout=30,
                             metadata=(("x-request-id", "too-big-1"),))
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            options = pb.VideoRequest(options=pb.VideoOptions(styles=[pb.Style(image=STYLE)]))
            with pytest.raises(grpc.RpcError) as err:  # a clip's frame: its stream ends as a cancel would
                list(stub.StylizeVideo(iter([options, pb.VideoRequest(frame=big)]), timeout=30))
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=30).limits.max_message_bytes  # still serving
        deadline = time.monotonic() + 30  # the calls' ends are logged as their tasks end, after the clients' answers
        while (srv.metric('adain_requests_unread_total{method="Stylize"}') < 1
               or "method=StylizeVideo code=CANCELLED" not in "".join(srv.stderr_lines)):
            # (failed once in a fresh clone's run under load: say which of the two was missing, and the log)
            assert time.monotonic() < deadline, (srv.metric('adain_requests_unread_total{method="Stylize"}'),
                                                 [line for line in srv.stderr_lines if "StylizeVideo" in line])
            time.sleep(0.05)
        assert 'adain_requests_unread_total{method="GetServerInfo"}' not in srv.metrics_text()
        log = "".join(srv.stderr_lines)
        assert "request_id=too-big-1 method=Stylize outcome=unread" in log and "max_message_bytes" in log, log
        assert "method=StylizeVideo code=CANCELLED" in log and "sent a message over the limit of 104857" in log
        assert "method=ListStyles code=RESOURCE_EXHAUSTED" in log and "Traceback" not in log
    finally:
        srv.terminate()


def test_a_container_too_small_for_one_render_is_warned_of_at_start(monkeypatch) -> None:
    """In a 1-GiB container the automatic threshold's 1-MP floor and a 2.3-GB tile got the server killed for memory
    by a 768-px photo, with no word at the start (an outside platform engineer)."""
    from adain import tiling as tiling_module
    from adain.server.__main__ import _memory_short

    small = Tiling(threshold=1 << 20)
    monkeypatch.setattr(tiling_module, "mem_total", lambda: 1 << 30)
    said = _memory_short(small, 1 << 26)
    assert said is not None and said.startswith("this process may use 1.0 GiB") and "3.0 GiB" in said, said
    monkeypatch.setattr(tiling_module, "mem_total", lambda: 8 << 30)
    assert _memory_short(small, 1 << 26) is None
    said = _memory_short(Tiling(threshold=0), 1 << 26)  # never tiled: the largest content whole (it said nothing)
    assert said is not None and "192.0 GiB (a photo of 67,108,864 px, rendered whole: tiling is off)" in said, said
    assert _memory_short(Tiling(threshold=0), 1 << 20) is None  # (max_content_side 1024: 3 GiB of 8)
