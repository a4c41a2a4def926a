"""adain-web: the HTTP API against the real server, and the page in a real headless Chromium."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from helpers import (
    NO_REFINE,
    REPO,
    ServerProcess,
    WebProcess,
    alert_metrics,
    browser_or_skip,
    exported_metrics,
    free_port,
    needs_torch,
    open_page_with,
    wait_for,
)
from synth import (
    encoded,
    make_image,
    make_mask,
    make_video,
    photo_with_exif,
    pixels,
    unknown_codec_clip,
    video_facts,
)

CONTENT = make_image(64, 48, seed=31)
STYLE = make_image(40, 40, seed=32, kind="noise")
LABELS = encoded(Image.fromarray(np.array([[(230, 25, 75)] * 20 + [(60, 180, 75)] * 20 + [(0, 0, 0)] * 24] * 48,
                                           np.uint8)))  # painted: 20 columns each, the rest left the photo
ARTIFACTS = REPO / "build" / "test-artifacts"  # screenshots the run leaves for people to look at




@pytest.fixture(scope="module")
def web(server: ServerProcess) -> Iterator[WebProcess]:
    proc = WebProcess(server.target, "--max-upload-mb", "1", "--max-video-frames", "30")
    yield proc
    proc.stop()
    assert "Traceback" not in "".join(proc.stderr), "".join(proc.stderr)


def _post(url: str, files: list[tuple[str, tuple[str, bytes, str]]], data: dict | None = None) -> httpx.Response:
    # verify=False here, in _first_step and in _finished, the file's most called: plain http, no SSL context made
    # (helpers.ServerProcess.metrics_text says why)
    return httpx.post(url + "/api/stylize", files=files, data=data or {}, timeout=60, verify=False)


def test_a_photo_whose_visitor_went_away_is_cancelled_on_the_server(server: ServerProcess, web: WebProcess) -> None:
    """A soak tour's: a photo rendered whole reports no step, so a visitor who gave up (a closed tab, a client's
    timeout) left it rendering on the server to its end, holding the visitor's photo place: their next photo got
    429 for as long. The page now cancels the server's call within a second of the visitor going."""
    rid = f"gone-{time.monotonic_ns()}"
    big = make_image(1024, 1024, seed=5, fmt="JPEG", quality=80)  # seconds on the test server's one thread
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(web.url + "/api/stylize", files=[("content", ("c.jpg", big, "image/jpeg")),
                                                     ("styles", ("s.png", STYLE, "image/png"))],
                   headers={"X-Request-Id": rid}, timeout=httpx.Timeout(30, read=0.5))
    deadline = time.monotonic() + 30
    while not (lines := [line for line in server.stderr_lines if rid in line]):  # (an OK is INFO: not logged)
        assert time.monotonic() < deadline, "the server logged no cancel: the call ran to its end"
        time.sleep(0.05)
    assert "code=CANCELLED" in lines[0], lines


def _first_step(web: WebProcess, request_id: str, timeout: float = 60) -> dict:
    """A refine's progress once it has taken its first step (it is running on the server's refine thread)."""
    deadline = time.monotonic() + timeout
    while (seen := httpx.get(f"{web.url}/api/progress/{request_id}", timeout=10, verify=False)).status_code == 404 or \
            seen.json()["step"] < 1:
        assert time.monotonic() < deadline, seen.text
        time.sleep(0.1)
    return seen.json()


def _png(name: str, data: bytes) -> tuple[str, tuple[str, bytes, str]]:
    return name, (f"{name}.png", data, "image/png")


def _field(response: httpx.Response) -> str:
    violations = response.json()["error"]["violations"]
    return violations[0]["field"] if violations else ""


# --- the HTTP API ----------------------------------------------------------------------------------


def test_web_imports_no_torch() -> None:
    code = "import sys, adain.web.app, adain.web.__main__; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_a_bad_flag_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    # as adain-stylize's and adain-server's: argparse's usage block came first and buried it
    from adain.web.__main__ import parse_args

    with pytest.raises(SystemExit) as e:
        parse_args(["--port", "0"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err == "adain-web: error: argument --port: must be in [1, 65535], got 0 (see --help)\n"


def test_a_refine_shows_its_steps_and_stops_when_the_page_goes(web: WebProcess) -> None:
    # A refine showed only a spinner, and one the page left (Cancel, a closed tab) held the server's only
    # refine place until the call's deadline: the next visitor's refine waited 118 s.
    request = httpx.Request("POST", web.url + "/api/stylize", headers={"X-Request-Id": "refine/followed"},
                            files=[_png("content", make_image(128, 128, seed=1)), _png("styles", STYLE)],
                            data={"refine_steps": "500"})
    body = request.read()
    head = "".join(f"{k}: {v}\r\n" for k, v in request.headers.items() if k.lower() != "host")
    page = socket.create_connection(("127.0.0.1", web.port))
    page.sendall(f"POST /api/stylize HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}\r\n".encode() + body)
    assert _first_step(web, "refine/followed")["steps"] == 500
    # a second refine with the same id would share its progress entry, and the first to end removed both
    again = httpx.post(web.url + "/api/stylize", headers={"X-Request-Id": "refine/followed"}, timeout=60,
                       files=[_png("content", CONTENT), _png("styles", STYLE)], data={"refine_steps": "1"})
    assert again.status_code == 409 and "X-Request-Id 'refine/followed' is running" in again.text, again.text
    assert _first_step(web, "refine/followed")["steps"] == 500
    page.close()  # the page goes away
    t0 = time.monotonic()
    after = _post(web.url, [_png("content", CONTENT), _png("styles", STYLE)], {"refine_steps": "1"})
    assert after.status_code == 200, after.text
    assert time.monotonic() - t0 < 30  # the abandoned refine stopped at its next step
    assert httpx.get(web.url + "/api/progress/refine/followed", timeout=10).status_code == 404


def test_keep_exif_over_http(web: WebProcess) -> None:
    files = [("content", ("p.jpg", photo_with_exif(64, 48), "image/jpeg")), _png("styles", STYLE)]
    r = _post(web.url, files, {"keep_exif": "1"})
    assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).getexif()[0x010F] == "TestCam"
    assert not Image.open(io.BytesIO(_post(web.url, files, {"keep_exif": "0"}).content)).getexif()
    r = _post(web.url, files, {"keep_exif": "maybe"})
    assert r.status_code == 400 and r.json()["error"]["violations"][0]["field"] == "keep_exif"


def test_a_photo_is_rendered_at_the_size_asked_for(web: WebProcess) -> None:
    """``size``, a photo's longest side (a clip had it, a photo did not: a 12-MP phone photo took its minute
    whatever the visitor wanted); never scaled up, and a bad one named."""
    files = [_png("content", CONTENT), _png("styles", STYLE)]  # 64 x 48
    for size, expected in (("32", "32x24"), ("1024", "64x48"), ("0", "64x48"), ("", "64x48")):
        r = _post(web.url, files, {"size": size})
        assert r.status_code == 200 and r.headers["X-Image-Size"] == expected, (size, r.text)
        assert Image.open(io.BytesIO(r.content)).size == tuple(map(int, expected.split("x")))
    for bad in ("8", "big", "1.5", "99999"):
        r = _post(web.url, files, {"size": bad})
        assert r.status_code == 400 and _field(r) == "size", (bad, r.text)


def test_page_and_assets_load_nothing_from_other_sites(web: WebProcess) -> None:
    page = httpx.get(web.url + "/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for path in ("/", "/static/app.js", "/static/style.css"):
        text = httpx.get(web.url + path).text
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, path
    # what a browser may do with it: only this site's scripts and images, never framed by another site
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert "script-src" not in page.headers["content-security-policy"]  # default-src 'self': no inline script
    assert page.headers["x-content-type-options"] == "nosniff" and page.headers["x-frame-options"] == "DENY"
    assert httpx.get(web.url + "/api/videos/nope").headers["x-content-type-options"] == "nosniff"  # errors too
    info = httpx.get(web.url + "/api/info").json()
    assert [e["name"] for e in info["examples"]] == ["mosaic", "strokes", "waves"]
    assert httpx.get(web.url + info["examples"][0]["url"]).headers["content-type"] == "image/png"
    assert info["max_styles"] == 8 and info["max_upload_mb"] == 1


def test_stylize_returns_the_image_the_client_gets(web: WebProcess, client) -> None:
    r = _post(web.url, [_png("content", CONTENT), _png("styles", STYLE), _png("styles", make_image(32, 32, seed=3))],
              {"weights": ["1", "0.3"], "alpha": "0.8", "preserve_color": "coral", "format": "png"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png" and r.headers["x-image-size"] == "64x48"
    assert r.headers["x-request-id"]
    direct = client.stylize(CONTENT, [STYLE, make_image(32, 32, seed=3)], weights=[1, 0.3], alpha=0.8,
                            preserve_color="coral")
    assert r.content == direct.image
    masked = _post(web.url, [_png("content", CONTENT), _png("styles", STYLE), _png("styles", STYLE),
                             _png("mask", make_mask(64, 48))])
    assert masked.status_code == 200 and Image.open(io.BytesIO(masked.content)).size == (64, 48)
    # Regions as the page paints them: a labels image, one colour per style; black names no style (the photo).
    second = make_image(32, 32, seed=3)
    regions = _post(web.url, [_png("content", CONTENT), _png("styles", STYLE), _png("styles", second),
                              _png("labels", LABELS)], {"label": ["#e6194b", "#3CB44B"]})
    assert regions.status_code == 200, regions.text
    direct = client.stylize(CONTENT, [STYLE, second], labels=LABELS,
                            label_values=["#e6194b", "#3cb44b"])
    assert regions.content == direct.image
    heic = encoded(Image.open(io.BytesIO(CONTENT)), "HEIF")  # a phone's photo, as an iPhone saves it
    r = _post(web.url, [("content", ("IMG_0001.HEIC", heic, "image/heic")), _png("styles", STYLE)])
    assert r.status_code == 200 and r.headers["x-image-size"] == "64x48", r.text
    # a camera's JPEG with a second picture after it (MPO, as Pillow names it): read as the server reads it
    photo, mpo = Image.open(io.BytesIO(CONTENT)), io.BytesIO()
    photo.save(mpo, "MPO", save_all=True, append_images=[photo.resize((16, 12))])
    r = _post(web.url, [("content", ("DSC_0001.JPG", mpo.getvalue(), "image/jpeg")), _png("styles", STYLE)])
    assert r.status_code == 200 and r.headers["x-image-size"] == "64x48", r.text
    assert httpx.get(web.url + "/healthz").json() == {"status": "SERVING"}


def test_the_servers_limits_are_asked_again_like_its_library(server: ServerProcess, client, monkeypatch) -> None:
    """A server restarted with other flags has other limits: adain-web asks again, as it asks for the library
    (here at once: the interval set to 0), counted in the server's metrics; limits it was given stay."""
    import asyncio
    import re

    from adain.web import app as web_app
    from adain.wire import Limits

    def asked() -> float:
        text = server.metrics_text()
        return sum(float(n) for n in re.findall(r'adain_requests_total\{[^}]*method="GetServerInfo"[^}]*\} (\S+)',
                                                   text))

    async def max_styles(settings: web_app.WebSettings) -> list[int]:  # in this process, on the session's client
        app = web_app.create_app(client, settings)
        async with app.router.lifespan_context(app), httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://web") as http:
            return [(await http.get("/api/info")).json()["max_styles"] for _ in range(2)]

    monkeypatch.setattr(web_app, "LIBRARY_TTL_S", 0.0)
    before = asked()
    assert asyncio.run(max_styles(web_app.WebSettings())) == [8, 8]
    assert asked() - before == 2
    before = asked()
    assert asyncio.run(max_styles(web_app.WebSettings(limits=Limits(max_styles=2)))) == [2, 2]
    assert asked() == before


def _clip(tmp_path: Path, frames: int, name: str = "clip.mp4") -> tuple[str, tuple[str, bytes, str]]:
    make_video(tmp_path / name, frames=frames, audio=True)
    return "content", (name, (tmp_path / name).read_bytes(), "video/mp4")


def _finished(web: WebProcess, job: dict, timeout: float = 120) -> dict:
    end = time.monotonic() + timeout
    while job["state"] == "running" and time.monotonic() < end:
        time.sleep(0.2)
        job = httpx.get(f"{web.url}/api/videos/{job['id']}", verify=False).json()
    return job


def test_clip_becomes_a_job_and_an_mp4(web: WebProcess, tmp_path: Path) -> None:
    r = httpx.post(web.url + "/api/videos", files=[_clip(tmp_path, 24), _png("styles", STYLE)],
                   data={"temporal": "flow", "alpha": "0.8", "fps": "6"}, timeout=60)  # 24 frames at 12/s: 12 kept
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["state"] == "running" and job["total"] == 12 and job["result"] is None
    job = _finished(web, job)
    assert job["state"] == "done" and job["done"] == 12 and job["error"] is None, job
    got = httpx.get(web.url + job["result"], timeout=30)
    assert got.status_code == 200 and got.headers["content-type"] == "video/mp4"
    assert 'filename="clip_stylized.mp4"' in got.headers["content-disposition"]
    (tmp_path / "out.mp4").write_bytes(got.content)
    facts = video_facts(tmp_path / "out.mp4")
    assert (facts["frames"], facts["size"], facts["audio"]) == (12, (64, 48), "aac")  # the sound comes along
    assert httpx.delete(f"{web.url}/api/videos/{job['id']}").status_code == 204  # deleted with its file
    assert httpx.get(f"{web.url}/api/videos/{job['id']}").status_code == 404


def test_a_clip_named_as_browsers_send_it_downloads_under_its_own_name(web: WebProcess, tmp_path: Path) -> None:
    """An i18n tour's: a clip named 'quo"te été 東京.mp4' is sent by browsers (and httpx) as "quo%22te ..."
    (the HTML standard's escape for '"' in a multipart file name), and came back "quo%22te ..._stylized.mp4";
    its Content-Disposition had only filename*, so curl -OJ saved it as "result" (the URL's last part). And names
    no file system takes: ".mp4" came back ".mp4_stylized.mp4" (hidden), a Windows path kept its backslashes, a
    250-byte name made a 259-byte one (each job cancelled once its name is seen)."""
    clip = _clip(tmp_path, 6)[1][1]
    for sent, want in ((".mp4", "clip_stylized.mp4"), ("\\\\server\\share\\x.mp4", "x_stylized.mp4"),
                       ("é" * 125 + ".mp4", "é" * 121 + "_stylized.mp4")):
        r = httpx.post(web.url + "/api/videos", files=[("content", (sent, clip, "video/mp4")), _png("styles", STYLE)],
                       timeout=60)
        assert r.status_code == 202 and r.json()["filename"] == want, (sent, r.text)
        assert httpx.delete(f"{web.url}/api/videos/{r.json()['id']}").status_code == 204
    r = httpx.post(web.url + "/api/videos", files=[_clip(tmp_path, 6, 'quo"te été 東京.mp4'), _png("styles", STYLE)],
                   timeout=60)
    assert r.status_code == 202, r.text
    assert r.json()["filename"] == 'quo"te été 東京_stylized.mp4'
    job = _finished(web, r.json())
    assert job["state"] == "done", job
    got = httpx.head(web.url + job["result"], timeout=30)
    assert got.headers["content-disposition"] == ("attachment; filename=\"quote ete_stylized.mp4\"; "
                                                  "filename*=utf-8''quo%22te%20%C3%A9t%C3%A9%20%E6%9D%B1%E4%BA%AC"
                                                  "_stylized.mp4"), got.headers
    httpx.delete(f"{web.url}/api/videos/{job['id']}")


CLIP_NAMES = {  # the name a clip's upload was sent with (as the browser sends it) -> its result's
    "quote-escaped": ("quo%22te.mp4", 'quo"te_stylized.mp4'),
    "line-break-escaped": ("new%0D%0Aline.mp4", "newline_stylized.mp4"),  # (then dropped: it would split a header)
    "other-escapes-kept": ("50%25 off%20.mp4", "50%25 off%20_stylized.mp4"),  # only the three browsers write
    "nfd": ("cafe\u0301.mp4", "caf\u00e9_stylized.mp4"),
    "only-a-suffix": (".mp4", "clip_stylized.mp4"),  # was ".mp4_stylized.mp4", a hidden file
    "hidden": (".beach.mov", "beach_stylized.mp4"),
    "unc-path": ("\\\\server\\share\\x.mp4", "x_stylized.mp4"),  # (its backslashes were kept)
    "windows-path": ("C:\\Users\\me\\y.mov", "y_stylized.mp4"),
    "unix-path": ("videos/z.mp4", "z_stylized.mp4"),
    "empty": ("", "clip_stylized.mp4"),
    "long": ("é" * 125 + ".mp4", "é" * 121 + "_stylized.mp4"),  # 250 bytes: made a 259-byte name, 255 at most
    "long-cut-in-a-character": ("a" + "東" * 90 + ".mp4", "a" + "東" * 80 + "_stylized.mp4"),  # 1 + 240 + 13 bytes
}


@pytest.mark.parametrize("case", list(CLIP_NAMES), ids=list(CLIP_NAMES))
def test_a_clips_result_is_named_as_a_file_system_takes_it(case: str) -> None:
    from adain.web.checks import MAX_NAME_BYTES, clip_result_name

    sent, want = CLIP_NAMES[case]
    assert clip_result_name(sent) == want
    assert len(want.encode()) <= MAX_NAME_BYTES


@pytest.mark.parametrize(("name", "fallback"), [
    ("clip_stylized.mp4", None),  # plain ASCII: filename only, as before
    ("été à Paris_stylized.mp4", "ete a Paris_stylized.mp4"),
    ("東京 夜景_stylized.mp4", "stylized.mp4"),  # nothing of it is ASCII but "_stylized"
    ('quo"te\\x_stylized.mp4', "quotex_stylized.mp4"),  # what would end or escape the quoted string
    ("ﬁlm ＃2 東京_stylized.mp4", "film #2_stylized.mp4"),  # NFKD: compatibility forms spelled out
])
def test_a_downloads_name_has_an_ascii_fallback(name: str, fallback: str | None) -> None:
    """RFC 6266: ``filename*`` for the UTF-8 name, and beside it a ``filename`` of ASCII, the one curl -OJ and
    wget --content-disposition read (without it they saved "result")."""
    from urllib.parse import quote

    from adain.web.checks import attachment

    said = attachment(name)
    if fallback is None:
        assert said == f'attachment; filename="{name}"'
    else:
        assert said == f"attachment; filename=\"{fallback}\"; filename*=utf-8''{quote(name, safe='')}"
        said.encode("latin-1")  # a header's bytes


def test_a_part_of_a_clip_over_the_limit(web: WebProcess, tmp_path: Path) -> None:
    """48 frames are over this page's limit of 30; seconds 1 to 3 of them (24 frames) are not."""
    r = httpx.post(web.url + "/api/videos", files=[_clip(tmp_path, 48), _png("styles", STYLE)], timeout=60)
    assert r.status_code == 400 and "take a part of it" in r.json()["error"]["message"]
    r = httpx.post(web.url + "/api/videos", files=[_clip(tmp_path, 48), _png("styles", STYLE)],
                   data={"start": "1", "duration": "2", "temporal": "none"}, timeout=60)
    assert r.status_code == 202, r.text
    job = _finished(web, r.json())
    assert job["state"] == "done" and job["total"] == job["done"] == 24, job
    (tmp_path / "part.mp4").write_bytes(httpx.get(web.url + job["result"], timeout=30).content)
    assert video_facts(tmp_path / "part.mp4")["frames"] == 24
    for data, field in (({"start": "9"}, "start"), ({"start": "-1"}, "start"), ({"duration": "-2"}, "duration")):
        r = httpx.post(web.url + "/api/videos", files=[_clip(tmp_path, 24), _png("styles", STYLE)], data=data,
                       timeout=60)
        assert r.status_code == 400 and r.json()["error"]["violations"][0]["field"] == field, r.text


def test_clips_one_at_a_time_and_cancel(web: WebProcess, tmp_path: Path) -> None:
    make_video(tmp_path / "first.mp4", frames=30, w=192, h=144)  # large enough to be running still when cancelled
    clip = ("content", ("first.mp4", (tmp_path / "first.mp4").read_bytes(), "video/mp4"))
    first = httpx.post(web.url + "/api/videos", files=[clip, _png("styles", STYLE)], timeout=60)
    assert first.status_code == 202, first.text
    busy = httpx.post(web.url + "/api/videos", files=[_clip(tmp_path, 6, "b.mp4"), _png("styles", STYLE)],
                      timeout=60)
    assert busy.status_code == 429 and busy.headers["retry-after"] and busy.json()["error"]["message"]
    # said before the upload is read (it was read whole first, up to 200 MB spooled and copied): a body that is
    # no form at all gets the 429 too
    unread = httpx.post(web.url + "/api/videos", content=b"not read", timeout=60,
                        headers={"content-type": "multipart/form-data; boundary=x"})
    assert unread.status_code == 429, unread.text
    job_id = first.json()["id"]
    early = httpx.get(f"{web.url}/api/videos/{job_id}/result")  # not done yet: a precondition, not a missing job
    assert early.status_code == 409 and early.json()["error"]["code"] == "FAILED_PRECONDITION", early.text
    assert httpx.delete(f"{web.url}/api/videos/{job_id}").status_code == 204  # cancelled after its frame
    state = httpx.get(f"{web.url}/api/videos/{job_id}")  # says so at once, and keeps saying so
    assert state.status_code == 200 and state.json()["state"] == "cancelled" and state.json()["error"] is None
    end = time.monotonic() + 30
    while True:  # its place is free once its frame in flight is done
        again = httpx.post(web.url + "/api/videos", files=[_clip(tmp_path, 6, "b.mp4"), _png("styles", STYLE)],
                           timeout=60)
        if again.status_code != 429 or time.monotonic() > end:
            break
        time.sleep(0.1)
    assert again.status_code == 202 and _finished(web, again.json())["state"] == "done"
    head = httpx.head(f"{web.url}/api/videos/{again.json()['id']}/result")  # its size before its bytes (was 405)
    assert head.status_code == 200 and int(head.headers["content-length"]) > 0 and head.content == b"", head
    assert httpx.delete(f"{web.url}/api/videos/{again.json()['id']}").status_code == 204  # a finished one: gone
    gone = httpx.get(f"{web.url}/api/videos/{again.json()['id']}")
    assert gone.status_code == 404 and "deleted" in gone.json()["error"]["message"], gone.text
    assert httpx.get(f"{web.url}/api/videos/{job_id}").json()["state"] == "cancelled"  # stopped, still answered
    # a DELETE again (a leaving page's, which a browser may send twice) changes nothing: still answered
    assert httpx.delete(f"{web.url}/api/videos/{job_id}").status_code == 204
    assert httpx.get(f"{web.url}/api/videos/{job_id}").json()["state"] == "cancelled"


def test_photo_calls_at_once_are_bounded_before_their_uploads_are_read(server: ServerProcess) -> None:
    """Each photo call holds its upload (spooled to the pod's emptyDir past 1 MB) for its whole call: unbounded, a
    burst of them could fill the disk and get the pod evicted. Past --max-photos, 429 before the body is read;
    the place is given back when a call ends, even one whose caller went away mid-upload."""
    web = WebProcess(server.target, "--max-photos", "1")
    slow = socket.create_connection(("127.0.0.1", web.port))
    try:
        slow.sendall(b"POST /api/stylize HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; "
                     b"boundary=xyz\r\nContent-Length: 100000\r\n\r\n--xyz\r\n")  # and the rest never comes
        end = time.monotonic() + 10
        while (r := httpx.post(web.url + "/api/stylize", files=[_png("content", CONTENT)])).status_code != 429:
            assert r.status_code == 400 and time.monotonic() < end, r.text  # (no style) until the slow one counts
            time.sleep(0.05)
        assert r.json()["error"]["message"] == "this page stylizes 1 photo at once, and is doing so; try again in " \
            "a moment" and r.headers["retry-after"] == "1"
        slow.close()
        end = time.monotonic() + 10
        files = [_png("content", CONTENT), _png("styles", STYLE)]
        while (r := _post(web.url, files)).status_code == 429 and time.monotonic() < end:
            time.sleep(0.1)
        assert r.status_code == 200, r.text
        assert "Traceback" not in "".join(web.stderr), "".join(web.stderr)  # a cut upload: 57 lines at ERROR, each
    finally:
        slow.close()
        web.stop()


def test_a_stalled_upload_is_answered_and_its_place_freed(server: ServerProcess) -> None:
    """A security tester's: an upload that sends nothing held its place for good (every photo place, with 32
    connections; the clip place for 300 s and more). Past --upload-idle-s without a byte: refused, the place free."""
    web = WebProcess(server.target, "--max-photos", "1", "--upload-idle-s", "1")
    slow = socket.create_connection(("127.0.0.1", web.port))
    try:
        t0 = time.monotonic()
        slow.sendall(b"POST /api/stylize HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; "
                     b"boundary=xyz\r\nContent-Length: 100000\r\n\r\n--xyz\r\n")  # and the rest never comes
        slow.settimeout(20)
        answer = ""
        while "}}" not in answer and (chunk := slow.recv(65536)):  # its head and its JSON body (may come apart)
            answer += chunk.decode("latin-1")
        # 400, not 408: a browser sends a POST answered 408 again, unasked (test_web_resilience)
        assert answer.startswith("HTTP/1.1 400") and "no byte of the upload came for 1 s" in answer, answer
        assert time.monotonic() - t0 < 10
        assert _post(web.url, [_png("content", CONTENT), _png("styles", STYLE)]).status_code == 200  # its place
    finally:
        slow.close()
        web.stop()


def test_the_page_forgets_its_oldest_clip_to_keep_within_max_disk_mb(server: ServerProcess, tmp_path: Path) -> None:
    """Uploads and results live in the pod's emptyDir until fetched, which evicts the pod (every visitor's request
    and clip) when it outgrows its sizeLimit. With --max-disk-mb, an upload (counted as twice --max-video-mb)
    makes room by forgetting the oldest finished clip."""
    web = WebProcess(server.target, "--max-video-mb", "0.006", "--max-disk-mb", "0.0125")  # room for 1 upload
    style = ("styles", ("s.png", make_image(16, 16, seed=32, kind="noise"), "image/png"))
    make_video(tmp_path / "clip.mp4", frames=3)
    files = [("content", ("clip.mp4", (tmp_path / "clip.mp4").read_bytes(), "video/mp4")), style]
    try:
        first = _finished(web, httpx.post(web.url + "/api/videos", files=files, timeout=60).json())
        assert first["state"] == "done", first
        second = httpx.post(web.url + "/api/videos", files=files, timeout=60)
        assert second.status_code == 202 and _finished(web, second.json())["state"] == "done", second.text
        assert httpx.get(f"{web.url}/api/videos/{first['id']}").status_code == 404  # forgotten to make room
    finally:
        web.stop()
    from adain.web.__main__ import main

    assert main(["--max-video-mb", "10", "--max-disk-mb", "15"]) == 2  # no upload would ever fit


def test_clip_jobs_keep_within_their_disk_budget(client, tmp_path: Path) -> None:
    """An upload being read counts at its most; finished clips are forgotten, oldest first, to make room; where
    running jobs and uploads fill the budget the next upload waits (Busy: 429); a running clip outgrowing it
    fails saying so, leaving no file (a result grows frame by frame, and whole at the end)."""
    from adain.web.video import Busy, VideoJobs

    make_video(tmp_path / "clip.mp4", frames=3)
    size = (tmp_path / "clip.mp4").stat().st_size
    jobs = VideoJobs(client, max_running=3, max_disk_bytes=5 * size, upload_bytes=2 * size)
    try:
        folder, first = _run_job(jobs, tmp_path / "clip.mp4", 3)
        assert first.state == "done" and first.result.exists(), first.state_json()
        held = jobs.reserve()  # 2 sizes held + the first result, under 5
        assert folder.exists()
        other = jobs.reserve()  # 4 held: the first result goes
        assert not folder.exists() and first.id not in jobs.jobs
        with pytest.raises(Busy, match=r"fill the disk space this page keeps for clips \(0\.0\d+ MB\)"):
            jobs.reserve()  # 6 sizes over 5, nothing finished to forget
        jobs.discard(held), jobs.discard(other)
    finally:
        jobs.close()
    jobs = VideoJobs(client, max_disk_bytes=size // 2)  # not even the upload (a source of size bytes) fits
    try:
        folder, job = _run_job(jobs, tmp_path / "clip.mp4", 3)
        assert job.state == "failed" and job.error["code"] == "RESOURCE_EXHAUSTED", job.state_json()
        assert "outgrew the disk space this page keeps for clips" in job.error["message"]
        assert "--max-disk-mb" in job.error["message"] and not folder.exists()
    finally:
        jobs.close()


def _long_clip(web: WebProcess, tmp_path: Path) -> httpx.Response:
    """A 240-frame clip sent to ``web`` (seconds of work for the test server): its 202."""
    make_video(tmp_path / "long.mp4", frames=240, w=96, h=64)
    r = httpx.post(web.url + "/api/videos", files=[("content", ("long.mp4", (tmp_path / "long.mp4").read_bytes(),
                   "video/mp4")), _png("styles", STYLE)], timeout=60)
    assert r.status_code == 202, r.text
    return r


def test_a_clip_nobody_asks_about_is_cancelled(server: ServerProcess, tmp_path: Path) -> None:
    web = WebProcess(server.target, "--video-abandon-s", "1", "--max-video-frames", "300")
    try:
        r = _long_clip(web, tmp_path)
        time.sleep(5)  # its page was closed: no one asks (and its first frames came, however slow the start)
        job = _finished(web, httpx.get(f"{web.url}/api/videos/{r.json()['id']}").json())
        assert job["state"] == "cancelled" and "abandoned" in job["error"]["message"], job
        assert job["done"] < 240
    finally:
        web.stop()


def test_sigterm_stops_clips_at_once_and_answers_a_photo_cut_at_the_grace_503(server: ServerProcess,
                                                                              tmp_path: Path) -> None:
    """A soak tour's: a photo still running at the end of --grace-seconds got a plain-text 500 and a traceback at
    ERROR (read as a bug in every rollout), and a clip was cancelled only once the photos in flight had ended (with
    a refine holding the grace, it rendered to its end, its result deleted unread). Now the clip stops at once, and
    the cut photo is a JSON 503 with Retry-After whose call the server cancels too."""
    web = WebProcess(server.target, "--grace-seconds", "3", "--max-video-frames", "300")
    try:
        clip = _long_clip(web, tmp_path)
        rid = f"cut-{time.monotonic_ns()}"
        photo: list[httpx.Response] = []
        sender = threading.Thread(target=lambda: photo.append(httpx.post(
            web.url + "/api/stylize", files=[_png("content", make_image(160, 120, seed=7)), _png("styles", STYLE)],
            data={"refine_steps": "500"}, headers={"X-Request-Id": rid}, timeout=60)))
        sender.start()
        _first_step(web, rid)
        assert httpx.get(f"{web.url}/api/videos/{clip.json()['id']}").json()["state"] == "running"
        seen = len(server.stderr_lines)
        t0 = time.monotonic()
        web.proc.send_signal(signal.SIGTERM)

        def logged(method: str) -> float:
            while not any(method in line and "code=CANCELLED" in line for line in server.stderr_lines[seen:]):
                assert time.monotonic() < t0 + 30, f"no cancelled {method}: {server.stderr_lines[seen:]}"
                time.sleep(0.02)
            return time.monotonic() - t0

        assert logged("method=StylizeVideo") < 2.5  # before the grace's end (old: once the photo had ended)
        sender.join(30)
        r = photo[0]
        assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
        assert r.json()["error"]["code"] == "UNAVAILABLE" and "send it again" in r.json()["error"]["message"]
        assert logged(f"request_id={rid}") < 10  # the refine, cut on the server too
        web.proc.wait(30)
        log = "".join(web.stderr)
        assert "Traceback" not in log and "cut at the end of --grace-seconds" in log, log
    finally:
        if web.proc.poll() is None:
            web.stop()


def test_an_answer_cut_mid_way_at_the_graces_end_is_one_line_not_a_traceback(client, caplog) -> None:
    """A last note's leftover: a clip's download still going to a slow reader when the grace ended was cancelled
    mid-answer, which no 503 can follow: uvicorn logged "Exception in ASGI application" and a traceback. GraceEnd
    now says which call was cut, at WARNING, and returns, so uvicorn closes the connection (the client sees the
    answer short) with only its "returned without completing response", which adain-web drops while stopping.
    In this process on the session's client (a download large enough to block takes a clip of megabytes)."""
    import asyncio
    import logging

    from adain.web import app as web_app
    from adain.web.__main__ import CutWhileStopping

    async def cut() -> list[str]:
        app = web_app.create_app(client, web_app.WebSettings())
        sent: list[str] = []
        async with app.router.lifespan_context(app):
            asked: list[bool] = []

            async def receive() -> dict:  # the request, then nothing: the client is there until the end
                if asked:
                    await asyncio.Event().wait()
                asked.append(True)
                return {"type": "http.request", "body": b"", "more_body": False}

            async def send(message: dict) -> None:  # a reader that takes the first part, then nothing
                sent.append(message["type"])
                if message["type"] == "http.response.body" and message.get("more_body"):
                    await asyncio.Event().wait()

            scope = {"type": "http", "http_version": "1.1", "method": "GET", "scheme": "http", "path": "/static/app.js",
                     "raw_path": b"/static/app.js", "root_path": "", "query_string": b"", "client": ("127.0.0.1", 1),
                     "server": ("127.0.0.1", 80), "headers": [(b"host", b"127.0.0.1")]}
            task = asyncio.create_task(app(scope, receive, send))
            while "http.response.body" not in sent:
                await asyncio.sleep(0.01)
            app.state.begin_stop()  # SIGTERM's grace begins ...
            task.cancel()  # ... and ends, with the download mid-way
            await task  # no CancelledError out of the app: uvicorn has nothing to log a traceback for
            assert task.done() and not task.cancelled()
        return sent

    with caplog.at_level(logging.WARNING, logger="adain.web"):
        assert asyncio.run(cut()) == ["http.response.start", "http.response.body"]
    assert "GET /static/app.js: cut mid-answer at the end of --grace-seconds as the page stopped" in caplog.text
    stopping = web_app.Stopping()
    said = logging.LogRecord("uvicorn.error", logging.ERROR, "", 0, CutWhileStopping.SAID, None, None)
    other = logging.LogRecord("uvicorn.error", logging.ERROR, "", 0, "Exception in ASGI application\n", None, None)
    dropped = CutWhileStopping(stopping)
    assert dropped.filter(said) and dropped.filter(other)  # before the stop: a bug's line, kept
    stopping.began = True
    assert not dropped.filter(said) and dropped.filter(other)


def test_no_clip_starts_once_the_page_is_stopping(client, tmp_path: Path) -> None:
    """A review's: an upload being read as SIGTERM came became a job after the running ones were stopped, and
    rendered through the grace. Once stopping, a clip's upload is refused before it is read and at its start."""
    from adain.web.video import PageStopping, VideoJobs

    jobs = VideoJobs(client)
    try:
        folder = jobs.reserve()  # an upload on its way
        make_video(folder / "clip.mp4", frames=3)
        jobs.stop_running()
        with pytest.raises(PageStopping, match="this page is stopping"):
            jobs.start(folder, folder / "clip.mp4", "clip.mp4", 3, [STYLE])
        with pytest.raises(PageStopping):
            jobs.reserve()
        jobs.discard(folder)
        assert not jobs.jobs
    finally:
        jobs.close()


def test_a_clip_that_does_not_say_its_length_stops_at_max_frames(server: ServerProcess, client,
                                                                 tmp_path: Path) -> None:
    """WebM, MKV and raw H.264 declare no frame count: a WebM is counted by its duration x its rate, and a clip
    that says neither (raw H.264) fails as it reaches for the frame past adain-web's --max-video-frames,
    which is never sent (a 2,000-frame WebM once went through a limit of 900)."""
    import re

    from adain.media import probe
    from adain.web.video import VideoJobs, clip_frames

    make_video(tmp_path / "clip.webm", frames=60, fps=12)
    info = probe(tmp_path / "clip.webm")
    assert info.frames == 0 and clip_frames(info, None, 0.0, None) == 60
    assert clip_frames(info, 6.0, 0.0, None) == 30 and clip_frames(info, None, 1.0, 2.0) == 24
    make_video(tmp_path / "raw.h264", frames=20)
    assert clip_frames(probe(tmp_path / "raw.h264"), None, 0.0, None) == 0  # neither: the running job stops

    def stylized() -> float:
        text = server.metrics_text()
        return float(re.search(r"^adain_video_frames_total (\S+)$", text, re.M).group(1))

    jobs = VideoJobs(client, max_frames=8)
    try:
        before = stylized()
        folder, job = _run_job(jobs, tmp_path / "raw.h264", 0)
        assert job.state == "failed" and job.error["code"] == "INVALID_ARGUMENT", job.state_json()
        assert "more than 8 frames" in job.error["message"] and "--max-video-frames" in job.error["message"]
        assert job.error["violations"] == [{"field": "content", "description": job.error["message"]}]
        assert job.done <= 8 and stylized() - before <= 8 and not folder.exists()
    finally:
        jobs.close()


def _run_job(jobs, clip: Path, total: int) -> tuple[Path, object]:
    """A clip run as a job of ``jobs`` (as an upload becomes one), until it ends: (its folder, the job)."""
    import shutil

    folder = jobs.reserve()
    shutil.copy(clip, folder / "upload")
    job = jobs.start(folder, folder / "upload", f"{clip.stem}_stylized.mp4", total, [STYLE], temporal="none")
    end = time.monotonic() + 120
    while job.finished is None and time.monotonic() < end:
        time.sleep(0.1)
    return folder, job


def test_a_finished_clip_is_forgotten_on_time_without_requests(client, tmp_path: Path) -> None:
    """Finished clips were purged only as requests came: a page left alone kept them on disk past keep_s."""
    from adain.web.video import VideoJobs

    make_video(tmp_path / "clip.mp4", frames=3)
    jobs = VideoJobs(client, keep_s=1.0)
    try:
        folder, job = _run_job(jobs, tmp_path / "clip.mp4", 3)
        assert job.state == "done" and job.result.exists(), job.state_json()
        end = time.monotonic() + 10
        while folder.exists() and time.monotonic() < end:  # no get(), no request: the sweeper's own rounds
            time.sleep(0.2)
        assert not folder.exists() and job.id not in jobs.jobs
    finally:
        jobs.close()


def test_uploads_being_read_hold_their_places(client, tmp_path: Path) -> None:
    """Only running jobs counted: six visitors' uploads at once were all read (each spooled, then copied: up to
    400 MB of the pod's disk apiece) while one job's place was free. An upload holds a place from before it is
    read until it is a job or is discarded."""
    from adain.web.video import Busy, VideoJobs

    make_video(tmp_path / "clip.mp4", frames=3)
    jobs = VideoJobs(client, max_running=1)
    try:
        first = jobs.reserve()
        with pytest.raises(Busy, match="1 clip\\(s\\) are being uploaded or stylized already"):
            jobs.reserve()
        jobs.discard(first)  # refused (a bad form): its place is free again
        folder, job = _run_job(jobs, tmp_path / "clip.mp4", 3)  # its upload's place became the job's
        assert job.state == "done", job.state_json()
        jobs.reserve()
    finally:
        jobs.close()


def _lock_free(lock) -> bool:
    """Whether another thread can take ``lock`` (an RLock its holder would take again)."""
    got: list[bool] = []

    def take() -> None:
        if lock.acquire(timeout=2):
            lock.release()
            got.append(True)

    thread = threading.Thread(target=take)
    thread.start()
    thread.join()
    return bool(got)


def test_clip_files_are_deleted_off_the_request_and_outside_the_lock(client, tmp_path: Path, monkeypatch) -> None:
    """get(), check_room(), remove() and discard() run on the page's event loop (it asks every second), and
    deleted the folders they purged there, holding the jobs' lock (an upload or a result is up to 200 MB): the
    loop and every other request waited. A folder is now gone from its place at once (the job answers as
    before) and its files are deleted on another thread, never under the lock; nothing is left behind."""
    import shutil

    from adain.web import video
    from adain.web.video import VideoJobs

    make_video(tmp_path / "clip.mp4", frames=3)
    (tmp_path / "junk.mp4").write_bytes(b"not a clip at all" * 100)
    jobs = VideoJobs(client, max_kept=1)
    rmtree = shutil.rmtree
    deletions: list[tuple[threading.Thread, bool]] = []  # (the thread, whether the lock was held)

    def recorded(path, *args, **kwargs):
        deletions.append((threading.current_thread(), not _lock_free(jobs.lock)))
        return rmtree(path, *args, **kwargs)

    monkeypatch.setattr(video.shutil, "rmtree", recorded)
    try:
        first_folder, first = _run_job(jobs, tmp_path / "clip.mp4", 3)
        second_folder, second = _run_job(jobs, tmp_path / "clip.mp4", 3)
        assert first.state == second.state == "done" and first_folder.exists(), first.state_json()
        assert jobs.get(second.id) is second and jobs.get(first.id) is None  # past max_kept: purged by get()
        assert not first_folder.exists()
        assert jobs.remove(second.id) and not second_folder.exists() and jobs.get(second.id) is None
        upload = jobs.reserve()
        (upload / "upload").write_bytes(b"x" * 1000)
        jobs.discard(upload)  # an upload that did not become a job
        assert not upload.exists()
        third_folder, third = _run_job(jobs, tmp_path / "clip.mp4", 3)
        jobs.keep_s = 0.0
        jobs.check_room()  # purges the third, past keep_s now
        assert not third_folder.exists() and third.id not in jobs.jobs
        failed_folder, failed = _run_job(jobs, tmp_path / "junk.mp4", 0)  # its own thread deletes its folder
        assert failed.state == "failed" and not failed_folder.exists(), failed.state_json()
        end = time.monotonic() + 10
        while list(jobs.root.iterdir()) and time.monotonic() < end:  # the deleter's work, done shortly
            time.sleep(0.05)
        assert list(jobs.root.iterdir()) == []
        assert len(deletions) == 5, deletions
        assert all(thread is not threading.main_thread() and not held for thread, held in deletions), deletions
    finally:
        monkeypatch.undo()
        jobs.close()
    assert not jobs.root.exists()


def test_a_clip_that_says_neither_count_nor_duration_fails_at_the_limit(web: WebProcess, tmp_path: Path) -> None:
    """Raw H.264 says neither: it is taken (202) and fails as it reaches for frame 31 of a limit of 30."""
    make_video(tmp_path / "raw.h264", frames=40)
    r = httpx.post(web.url + "/api/videos", files=[("content", ("raw.h264", (tmp_path / "raw.h264").read_bytes(),
                   "video/h264")), _png("styles", STYLE)], data={"temporal": "none"}, timeout=60)
    assert r.status_code == 202 and r.json()["total"] == 0, r.text
    job = _finished(web, r.json())
    assert job["state"] == "failed" and job["error"]["code"] == "INVALID_ARGUMENT", job
    assert "more than 30 frames" in job["error"]["message"] and "--max-video-frames" in job["error"]["message"]
    assert job["done"] <= 30


def _gif(w: int, h: int, frames: int = 4) -> bytes:
    images = [Image.new("RGB", (w, h), (40 * i, 100, 200)) for i in range(frames)]
    out = io.BytesIO()
    images[0].save(out, "GIF", save_all=True, append_images=images[1:], duration=100, loop=0)
    return out.getvalue()


def test_a_clip_jobs_failure_names_the_field_as_the_page_does(web: WebProcess, tmp_path: Path) -> None:
    """The server refuses a stream's options as "options.alpha" and its frames as "frames[i]"; the page shows
    an error next to the control its field names ("alpha"), as the photo path's and the live camera's do."""
    # a registered style's id the server does not have: asked with the stream's first message (an alpha of 7 was,
    # and a library name, until the page refused them itself)
    r = httpx.post(web.url + "/api/videos", files=[_clip(tmp_path, 6)],
                   data={"styles": "id:" + "0" * 64, "temporal": "none"}, timeout=60)
    assert r.status_code == 202, r.text
    job = _finished(web, r.json())
    assert job["state"] == "failed" and job["error"]["code"] == "INVALID_ARGUMENT", job
    assert [v["field"] for v in job["error"]["violations"]] == ["styles[0].style_id"], job
    assert not job["error"]["message"].startswith("options."), job


BAD_CLIPS = {
    "an-image": (lambda tmp: _png("content", CONTENT), {}, "content", "not a video"),
    "too-many-frames": (lambda tmp: _clip(tmp, 36), {}, "content", "max_video_frames=30"),
    "webm-too-long": (lambda tmp: _clip(tmp, 36, "clip.webm"), {}, "content", "36 frames, over the limit of "
                      "max_video_frames=30"),  # it declares no count: its duration x its rate
    "temporal": (lambda tmp: _clip(tmp, 6), {"temporal": "wobbly"}, "temporal", "none, smooth, flow"),
    "size": (lambda tmp: _clip(tmp, 6), {"size": "8"}, "size", ">= 16"),
    "image-only-field": (lambda tmp: _clip(tmp, 6), {"refine_steps": "5"}, "refine_steps", "unknown field"),
    "fps": (lambda tmp: _clip(tmp, 6), {"fps": "-2"}, "fps", "must be at least 0.001"),
    "fps-rounds-to-0": (lambda tmp: _clip(tmp, 6), {"fps": "0.0001"}, "fps", "must be at least 0.001"),  # was a 202,
    # then INTERNAL: the rate, a fraction over at most 1001, was 0 and the reader divided by it
    "one-pixel-wide": (lambda tmp: ("content", ("thin.gif", _gif(1, 40), "image/gif")), {}, "content",
                       "1 x 40 frames are too small for a video (2 x 2 at least)"),  # was a 202, then the failure
    # named the result's file in this server's temporary folder
    "fps-twice": (lambda tmp: _clip(tmp, 6), {"fps": ["6", "10"]}, "fps", "given 2 times; once only"),
    "size-past-int32": (lambda tmp: _clip(tmp, 6), {"size": "99999999999999999999"}, "size",
                        "over the limit of max_content_side="),
    "too-many-frames-even-so": (lambda tmp: _clip(tmp, 72), {"fps": "6"}, "content", "at that frame rate"),
    "unknown-codec": (lambda tmp: ("content", ("clip.mkv", unknown_codec_clip(tmp / "u.mkv", "video").read_bytes(),
                                               "video/x-matroska")), {}, "content", "no decoder for the clip's video"),
    # a web property tour's: what the server refuses at the first frame was a 202 and a failed job
    "alpha-over-1": (lambda tmp: _clip(tmp, 6), {"alpha": "2"}, "alpha", "must be a number in [0, 1], got 2.0"),
    # a name of a library this server does not have: was a 202, then a failed job
    "unknown-library-name": (lambda tmp: _clip(tmp, 6), {"styles": "id:nope"}, "styles[0].style_id",
                             "unknown style 'nope': not a registered style's id, and this server has no style library"),
}


@pytest.mark.parametrize("case", list(BAD_CLIPS), ids=list(BAD_CLIPS))
def test_bad_clips_are_400_naming_the_field(web: WebProcess, tmp_path: Path, case: str) -> None:
    content, data, field, words = BAD_CLIPS[case]
    r = httpx.post(web.url + "/api/videos", files=[content(tmp_path), _png("styles", STYLE)], data=data, timeout=60)
    assert r.status_code == 400 and _field(r) == field and words in r.json()["error"]["message"], r.text


BAD = {
    "no-content": ([_png("styles", STYLE)], {}, "content"),
    "no-styles": ([_png("content", CONTENT)], {}, "styles"),
    "content-not-an-image": ([("content", ("photo.png", b"hello, not a png", "image/png")), _png("styles", STYLE)],
                             {}, "content"),
    "style-not-an-image": ([_png("content", CONTENT), ("styles", ("s.jpg", b"\xff\xd8broken", "image/jpeg"))],
                           {}, "styles[0].image"),
    "weights-count": ([_png("content", CONTENT), _png("styles", STYLE)], {"weights": ["1", "2"]}, "weights"),
    "weight-not-a-number": ([_png("content", CONTENT), _png("styles", STYLE)], {"weights": "x"}, "styles[0].weight"),
    "alpha-huge-text": ([_png("content", CONTENT), _png("styles", STYLE)], {"alpha": "9" * 100_000}, "alpha"),
    "weight-over-float32": ([_png("content", CONTENT), _png("styles", STYLE)], {"weights": "1e39"}, "styles[0].weight"),
    "alpha-over-1": ([_png("content", CONTENT), _png("styles", STYLE)], {"alpha": "1.5"}, "alpha"),  # the server's
    "colour-mode": ([_png("content", CONTENT), _png("styles", STYLE)], {"preserve_color": "sepia"}, "preserve_color"),
    "mask-wrong-size": ([_png("content", CONTENT), _png("styles", STYLE), _png("styles", STYLE),
                         _png("mask", make_mask(8, 8))], {}, "mask"),
    "labels-count": ([_png("content", CONTENT), _png("styles", STYLE), _png("labels", LABELS)],
                     {"label": ["#e6194b", "#3cb44b"]}, "label"),
    "label-not-a-colour": ([_png("content", CONTENT), _png("styles", STYLE), _png("labels", LABELS)],
                           {"label": "red"}, "styles[0].label"),
    "label-unicode-digit": ([_png("content", CONTENT), _png("styles", STYLE), _png("labels", LABELS)],
                            {"label": "\u00b2"}, "styles[0].label"),  # "²": a digit to isdigit, a 500 from int()
    "label-of-4301-digits": ([_png("content", CONTENT), _png("styles", STYLE), _png("labels", LABELS)],
                             {"label": "1" * 4301}, "styles[0].label"),  # a 500: int() of over 4,300 digits raises
    "label-not-painted": ([_png("content", CONTENT), _png("styles", STYLE), _png("labels", LABELS)],
                          {"label": "#4363d8"}, "styles[0].label"),  # the server's: no pixel has it
    "labels-wrong-size": ([_png("content", CONTENT), _png("styles", STYLE), _png("labels", make_mask(8, 8))],
                          {"label": "255"}, "labels"),
    "label-without-labels": ([_png("content", CONTENT), _png("styles", STYLE)], {"label": "#e6194b"}, "labels"),
    "unknown-field": ([_png("content", CONTENT), _png("styles", STYLE)], {"colour": "red"}, "colour"),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_input_is_400_naming_the_field(web: WebProcess, case: str) -> None:
    files, data, field = BAD[case]
    r = _post(web.url, files, data)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "INVALID_ARGUMENT" and _field(r) == field, r.text
    assert len(r.content) < 2000  # a value echoed whole made a 200 KB error


def _png_header(w: int, h: int) -> bytes:
    """A PNG that says it is ``w`` x ``h`` and holds no pixels (45 bytes): all a header check reads."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + chunk(b"IDAT", b"")


def _text_file(name: str, text: str = "0.5") -> tuple[str, tuple[str, bytes, str]]:
    return name, ("x.txt", text.encode(), "text/plain")


BASE = [_png("content", CONTENT), _png("styles", STYLE)]
BAD_FORMS = {  # (files, data, field, the message's words)
    "alpha-a-file": ([*BASE, _text_file("alpha")], {}, "alpha", "alpha: expected a value, got a file"),
    "weights-a-file": ([*BASE, _text_file("weights")], {}, "weights", "weights: expected a value, got a file"),
    "format-a-file": ([*BASE, _text_file("format", "png")], {}, "format", "expected a value, got a file"),
    "mask-a-value": (BASE, {"mask": "abc"}, "mask", "mask: expected an image file"),
    "labels-a-value": (BASE, {"labels": "abc", "label": "#e6194b"}, "labels", "labels: expected an image file"),
    # an id:NAME, of a name no library can have (it was told "expected an image file or id:NAME"), in the CLI's
    # words ("id:ゴッホ" was one: any script's letters are names now)
    "style-name-spaced": (BASE, {"styles": "id:ゴッホ 夜"}, "styles[0]", "styles[0]: no style named 'ゴッホ 夜': a "
                          "style name is 1-64 letters or digits of any script, '.', '_' or '-' (no spaces), starting "
                          "with a letter or digit"),
    "alpha-twice": (BASE, {"alpha": ["0.5", "0.6"]}, "alpha", "alpha: given 2 times; once only"),
    "content-twice": ([*BASE, _png("content", CONTENT)], {}, "content", "content: given 2 times; once only"),
    "refine-steps-past-int32": (BASE, {"refine_steps": "99999999999999999999"}, "refine_steps",
                                "refine_steps: 99999999999999999999 is over the limit of max_refine_steps=500"),
    "one-weight-two-styles": ([*BASE, _png("styles", STYLE)], {"weights": "1"}, "weights",
                              "1 weight for 2 styles (one per style)"),
    "two-labels-one-style": ([*BASE, _png("labels", LABELS)], {"label": ["#e6194b", "#3cb44b"]}, "label",
                             "2 labels for 1 style (one per style)"),
    "too-many-files": ([*BASE, *[_png("styles", STYLE)] * 10], {}, "styles",
                       "too many files: at most 11 (one content, at most 8 styles, a mask and a labels image)"),
    "too-many-fields": (BASE, {"weights": ["1"] * 51}, "form", "too many fields"),
    # PIL calls these a decompression bomb (over ~179 MP: an error; over ~89 MP: a warning); here they are sizes
    "huge-header": ([_png("content", _png_header(20000, 20000)), _png("styles", STYLE)], {}, "content",
                    "content: 20000 x 20000 is over the limit of max_pixels=67108864"),
    "large-header": ([_png("content", CONTENT), _png("styles", _png_header(10000, 10000))], {}, "styles[0].image",
                     "styles[0].image: 10000 x 10000 is over the limit of max_pixels=67108864"),
}


@pytest.mark.parametrize("case", list(BAD_FORMS), ids=list(BAD_FORMS))
def test_bad_forms_are_400_saying_what_is_wrong(web: WebProcess, case: str) -> None:
    files, data, field, words = BAD_FORMS[case]
    r = _post(web.url, files, data)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "INVALID_ARGUMENT" and _field(r) == field and words in error["message"], r.text
    assert "UploadFile" not in error["message"]
    assert "DecompressionBomb" not in "".join(web.stderr)  # no warning either


def test_a_forms_every_problem_comes_back_in_one_answer(web: WebProcess, tmp_path: Path) -> None:
    """As the server answers: a bad alpha, colour mode and format, and a style that is no image, all at once
    (the page shows each beside its control); a clip's form alike."""
    broken = ("styles", ("s.jpg", b"\xff\xd8broken", "image/jpeg"))
    r = _post(web.url, [_png("content", CONTENT), _png("styles", STYLE), broken],
              {"alpha": "abc", "preserve_color": "sepia", "format": "gif"})
    assert r.status_code == 400, r.text
    fields = [v["field"] for v in r.json()["error"]["violations"]]
    assert fields == ["styles[1].image", "alpha", "preserve_color", "format"], r.text
    message = r.json()["error"]["message"]
    assert "alpha: not a number" in message and "format: must be one of" in message
    r = httpx.post(web.url + "/api/videos", files=[_clip(tmp_path, 6), _png("styles", STYLE)],
                   data={"fps": "-2", "temporal": "wobbly", "size": "8"}, timeout=60)
    assert [v["field"] for v in r.json()["error"]["violations"]] == ["fps", "temporal", "size"], r.text
    # weights the server refuses are refused here: a clip's job was taken (202), to fail once it ran
    for weights, field in ((["0", "0"], "styles.weight"), (["1", "-1"], "styles[1].weight")):
        r = httpx.post(web.url + "/api/videos", files=[_clip(tmp_path, 6), _png("styles", STYLE),
                                                       _png("styles", STYLE)], data={"weights": weights}, timeout=60)
        assert r.status_code == 400 and _field(r) == field, r.text
    # and a style too small to carry one (a property tour's: the clip's job failed at its first frame)
    r = httpx.post(web.url + "/api/videos", files=[_clip(tmp_path, 6), _png("styles", make_image(8, 8))], timeout=60)
    assert r.status_code == 400 and _field(r) == "styles[0].image" and "too small to carry a style" in r.text, r.text
    # 0 however written is "as taken" / "as filmed" (a tour's: "0.0" was "must be at least 0.001 ..., got '0.0'")
    for zero in ("0.0", "00", "-0"):
        r = httpx.post(web.url + "/api/stylize", files=[_png("content", CONTENT), _png("styles", STYLE)],
                       data={"size": zero, "refine_steps": zero}, timeout=60)
        assert r.status_code == 200 and r.headers["x-image-size"] == "64x48", r.text
    # a body that is no multipart form (JSON) says so; it was "content: a content image file is required"
    r = httpx.post(web.url + "/api/stylize", json={"content": "photo.jpg"})
    assert r.status_code == 400 and _field(r) == "form" and r.json()["error"]["message"] == (
        "form: expected a multipart/form-data body (curl -F, a browser's FormData), got application/json"), r.text


def test_every_error_is_json_and_probes_may_use_head(web: WebProcess, tmp_path: Path) -> None:
    """Starlette's own errors (no such route, a method not allowed, a body that is no multipart form) are
    JSON errors like the API's; HEAD answers where probes ask."""
    for r, status, code in (
        (httpx.get(web.url + "/no/such/page"), 404, "NOT_FOUND"),
        (httpx.post(web.url + "/healthz"), 405, "METHOD_NOT_ALLOWED"),
        (httpx.post(web.url + "/api/stylize", content=b"--x\r\n", headers={"content-type": "multipart/form-data"}),
         400, "INVALID_ARGUMENT"),
    ):
        assert r.status_code == status and r.json()["error"]["code"] == code and "detail" not in r.json(), r.text
    assert _field(r) == "form" and "no boundary" in r.json()["error"]["message"]
    for path in ("/healthz", "/", "/api/info"):
        head = httpx.head(web.url + path)
        assert head.status_code == 200 and head.content == b"", path
    r = httpx.post(web.url + "/api/videos", files=[_clip(tmp_path, 6), _png("styles", STYLE), _text_file("fps", "6")])
    assert r.status_code == 400 and r.json()["error"]["message"] == "fps: expected a value, got a file", r.text
    # the caller's request id, where it is one, is the call's (and the server's log line's); else a new one
    files = [_png("content", CONTENT), _png("styles", STYLE)]
    r = httpx.post(web.url + "/api/stylize", files=files, headers={"X-Request-Id": "photo-42/retry:1"}, timeout=60)
    assert r.status_code == 200 and r.headers["x-request-id"] == "photo-42/retry:1"
    r = httpx.post(web.url + "/api/stylize", files=files, headers={"X-Request-Id": "a b"}, timeout=60)
    assert r.status_code == 200 and r.headers["x-request-id"] not in ("a b", "")
    # as sent, "%" and all (a property tour's: "50%off" came back "50%25off", the client's encoding for gRPC), on a
    # server's refusal too
    masked = [*files, _png("styles", STYLE), _png("mask", make_mask(8, 8))]  # (the server's refusal: its size)
    for rid, sent in (("50%off", files), ("a%20b", files), ("bad%id", masked)):
        r = httpx.post(web.url + "/api/stylize", files=sent, headers={"X-Request-Id": rid}, timeout=60)
        assert r.status_code == (400 if sent is masked else 200) and r.headers["x-request-id"] == rid, (
            r.status_code, r.headers["x-request-id"], r.text)


def test_uploads_over_the_limit_are_refused_before_they_are_read(web: WebProcess) -> None:
    big = os.urandom(2 * 2**20)  # the fixture's limit is 1 MB
    r = _post(web.url, [_png("content", big), _png("styles", STYLE)])
    assert r.status_code == 413 and "1 MB" in r.json()["error"]["message"]
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]  # answered outside the headers' middleware
    assert r.headers["x-content-type-options"] == "nosniff"

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is counted as the body streams in
        yield b'--xyz\r\nContent-Disposition: form-data; name="content"; filename="a.png"\r\n\r\n'
        for _ in range(64):
            yield b"x" * 65536

    r = httpx.post(web.url + "/api/stylize", content=chunks(),
                   headers={"content-type": "multipart/form-data; boundary=xyz"})
    assert r.status_code == 413
    assert _post(web.url, [_png("content", CONTENT), _png("styles", STYLE)]).status_code == 200  # still serving


def test_the_page_polls_no_steps_a_call_cannot_have(tmp_path: Path) -> None:
    """A photo call reports steps only as a refine or over the tile threshold; the page polled every call that
    took over a second, and with the server down (a 503 after about 1.3 s of retries) each poll was a 404 in the
    browser's console (an outside tester)."""
    from selenium.webdriver.common.by import By

    web = WebProcess(f"127.0.0.1:{free_port()}", "--timeout", "5")  # nothing listens there
    browser = browser_or_skip()
    try:
        (tmp_path / "photo.png").write_bytes(CONTENT)
        open_page_with(browser, web, tmp_path / "photo.png", "mosaic")
        browser.execute_script("state.info.tile_threshold_pixels = 1000000")  # as a server's /api/info says
        browser.execute_script(  # its answer 2 s late, as retries against a server going down made it
            "const real = window.fetch; window.fetch = async (url, init) => { const r = await real(url, init);"
            "if (String(url).endsWith('/api/stylize')) await new Promise((ok) => setTimeout(ok, 2000)); return r; }")
        browser.find_element(By.ID, "submit").click()
        wait_for(browser, lambda d: "not available" in d.find_element(By.ID, "form-error").text, timeout=30)
        polls = [e["message"] for e in browser.get_log("browser") if "/api/progress/" in e["message"]]
        assert not polls, polls
        # no "Stylized" caption over the empty slot the failed call left
        assert not browser.find_element(By.CSS_SELECTOR, "#output + video + canvas + figcaption").is_displayed()
        assert browser.find_element(By.ID, "original-caption").is_displayed()
        assert browser.execute_script("return hasSteps(0, 64, 48)") is False
        # beside a style, its image's problem without the field's name; a pixel limit in words (an outside tester)
        assert browser.execute_script("return besideControl('styles[1].image', 'not an image')") == "not an image"
        assert browser.execute_script("return besideControl('styles[1].weight', 'must be >= 0')") == (
            "weight: must be >= 0")
        assert browser.execute_script(
            "return besideControl('content', '9000 x 9000 is over the limit of max_pixels=67108864')") == (
            "9000 x 9000 is more pixels than this server takes (67,108,864)")
        assert browser.execute_script("return limitInWords('501 is over the limit of max_refine_steps=500')") == (
            "501 is over this server's limit of 500 refine steps")
        said = browser.execute_script("return limitInWords('950 frames, over the limit of max_video_frames=900; x')")
        assert said == "950 frames, over this server's limit of 900 frames; x", said
        assert browser.execute_script("return suffix(new Blob([], {type: 'image/webp'}))") == "webp"
        assert browser.execute_script("return hasSteps(5, 64, 48)") is True  # a refine's
        browser.execute_script("state.info.tile_threshold_pixels = 1000")  # 64 x 48 is over it: parts to follow
        assert browser.execute_script("return hasSteps(0, 64, 48)") is True
    finally:
        browser.quit()
        web.stop()


def test_a_server_refusing_the_pages_token_is_said_in_its_log(decoder_path: Path, tmp_path: Path) -> None:
    """A server that checks tokens, a page given none: every photo was a 502 with the server's words about bearer
    tokens and nothing in adain-web's log (a platform engineer's review; /healthz stays SERVING: health needs no
    token). The public gets a fixed message, the log says what to set."""
    tokens = tmp_path / "tokens"
    tokens.write_text("web web-token-0123456789abcdef front\n")
    backend = ServerProcess(decoder_path, "--auth-tokens-file", str(tokens), *NO_REFINE)
    web = None
    try:
        backend.wait_serving()
        web = WebProcess(backend.target)
        r = _post(web.url, [_png("content", CONTENT), _png("styles", STYLE)], {})
        assert r.status_code == 502, r.text
        assert r.json()["error"]["message"] == "the stylization server refused this page's calls; the site's " \
                                                "operator has been told"
        end = time.monotonic() + 10
        while not any("give adain-web --token-file" in line for line in web.stderr):
            assert time.monotonic() < end, web.stderr
            time.sleep(0.05)
    finally:
        if web is not None:
            web.stop()
        backend.kill()


def test_backend_down_is_503(tmp_path: Path) -> None:
    """503, and never the backend's internal address (gRPC's details name it): a fixed message to the public,
    the details in adain-web's log; a clip's job and the live camera alike."""
    import contextlib

    from websockets.exceptions import ConnectionClosed

    port = free_port()
    web = WebProcess(f"127.0.0.1:{port}", "--timeout", "5")
    unreachable = "the stylization server is not available right now; try again in a moment"
    try:
        # Checked here, against the default limits: a fresh process (PIL's guard is not yet lifted by a clip's
        # imports) still sizes a header PIL would call a decompression bomb, and warns of nothing.
        for w in (20000, 10000):
            r = _post(web.url, [_png("content", _png_header(w, w)), _png("styles", STYLE)])
            assert r.status_code == 400 and f"{w} x {w} is over the limit of max_pixels" in r.text, r.text
        for _ in range(3):  # each visitor's call while the server is out: its own line, one WARNING a minute
            r = _post(web.url, [_png("content", CONTENT), _png("styles", STYLE)])
            assert r.status_code == 503 and r.json()["error"]["code"] == "UNAVAILABLE", r.text
        assert r.headers["retry-after"] and r.json()["error"]["message"] == unreachable
        health = httpx.get(web.url + "/healthz")
        assert health.status_code == 503 and health.json()["status"] == "UNREACHABLE"
        r = httpx.post(web.url + "/api/videos", files=[_clip(tmp_path, 6), _png("styles", STYLE)], timeout=60)
        job = _finished(web, r.json())
        assert job["state"] == "failed" and job["error"]["code"] == "UNAVAILABLE", job
        assert job["error"]["message"] == unreachable
        with _live(web.url) as ws:
            ws.send(json.dumps({"styles": ["upload"]}))
            ws.send(STYLE)
            # the page may have answered and closed by now (the server's absence is known as the stream starts: a
            # fresh-clone run's send of the frame met the closed socket), so the frame's send may find it closed
            with contextlib.suppress(ConnectionClosed):
                ws.send(make_image(64, 48, seed=75, fmt="JPEG"))
            error, code = _live_error(ws)
        assert error["code"] == "UNAVAILABLE" and error["message"] == unreachable and code == 1013, error
        for answer in (r.text, health.text, json.dumps(job), json.dumps(error)):
            assert str(port) not in answer and "127.0.0.1" not in answer, answer
    finally:
        web.stop()
    log = "".join(web.stderr)
    assert "WARNING" in log and f"127.0.0.1:{port}" in log, log  # for whoever runs it
    assert "DecompressionBomb" not in log, log
    assert log.count("the backend call failed") == 1, log  # (three photos, a clip and a live session)


def test_backend_full_is_429_with_retry_after(decoder_path: Path) -> None:
    """A backend that runs one refine job and queues none: a second one at the same time is turned away."""
    backend = ServerProcess(decoder_path, "--max-refine-jobs", "1", "--max-refine-queue", "0")
    web = None
    try:
        backend.wait_serving()
        web = WebProcess(backend.target)
        long_job = [_png("content", make_image(128, 96, seed=5)), _png("styles", STYLE)]
        results: list[httpx.Response] = []
        first = threading.Thread(target=lambda: results.append(httpx.post(
            web.url + "/api/stylize", files=long_job, data={"refine_steps": "8"},
            headers={"X-Request-Id": "the-long-one"}, timeout=120)))
        first.start()
        _first_step(web, "the-long-one")  # it holds the only refine place once it steps (a fixed 1 s was a guess)
        r = _post(web.url, [_png("content", CONTENT), _png("styles", STYLE)], {"refine_steps": "5"})
        first.join(120)
        assert r.status_code == 429, r.text
        # when the place may be free: the long-job queue's own estimate (5 s before any job has ended)
        assert r.json()["error"]["code"] == "RESOURCE_EXHAUSTED" and 1 <= int(r.headers["retry-after"]) <= 60
        assert results and results[0].status_code == 200
    finally:
        if web:
            web.stop()
        backend.terminate()


def test_a_clip_over_the_servers_lower_frame_limit_is_a_400(decoder_path: Path, tmp_path: Path) -> None:
    # adain-web's own limit (900) took the clip, which then failed once sent, naming a temporary file's path
    # and the CLI's flags: the server's lower limit holds at the upload.
    backend = ServerProcess(decoder_path, "--max-video-frames", "10", *NO_REFINE)
    web = None
    try:
        backend.wait_serving()
        web = WebProcess(backend.target)
        assert httpx.get(web.url + "/api/info").json()["video"]["max_frames"] == 10
        r = httpx.post(web.url + "/api/videos", files=[_clip(tmp_path, 20), _png("styles", STYLE)], timeout=60)
        assert r.status_code == 400 and _field(r) == "content", r.text
        assert "20 frames, over the limit of max_video_frames=10" in r.json()["error"]["message"]
    finally:
        if web:
            web.stop()
        backend.terminate()


# --- the page in a real browser ------------------------------------------------------------------------






def _set_range(driver, element, value: float) -> None:
    driver.execute_script(
        "arguments[0].value = arguments[1]; arguments[0].dispatchEvent(new Event('input', {bubbles: true}));",
        element, str(value),
    )


def _shown_size(browser, timeout: float = 60) -> list[int]:
    """The stylized photo's size as the page shows it, once it has come."""
    return wait_for(browser, lambda d: d.execute_script(
        "const i = document.getElementById('output'); return i.complete && i.naturalWidth ? "
        "[i.naturalWidth, i.naturalHeight] : null;"), timeout=timeout)


def test_page_names_the_mask_sent_and_it_can_be_taken_back(web: WebProcess, browser, tmp_path: Path) -> None:
    """The mask is chosen with a button like the page's others, named once chosen, and taken back with Remove the
    mask: Firefox and Safari offer no way to empty a file input (Chrome empties it on a cancelled dialog), and a
    mask left in it refused every painting ("either a mask or painted regions"). A mask of the wrong size is the
    server's refusal, said beside it; removed, the same photo and styles are stylized."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    content, mask = tmp_path / "photo.png", tmp_path / "half.png"
    content.write_bytes(make_image(96, 64, seed=41))
    mask.write_bytes(make_mask(8, 8))  # not the photo's size: refused
    open_page_with(browser, web, content, "mosaic", "waves")
    assert not browser.find_element(By.ID, "mask-clear").is_displayed()
    assert browser.find_element(By.CSS_SELECTOR, 'label[for="mask"]').text == "Choose a mask"
    browser.find_element(By.ID, "mask").send_keys(str(mask))
    assert browser.find_element(By.ID, "mask-name").text == "Mask: half.png"
    browser.find_element(By.ID, "submit").click()
    wait_for(browser, lambda d: "mask" in d.find_element(By.ID, "mask-error").text.lower())
    # a painting beside it: the page says which to take back, and both ways are on the page
    browser.find_element(By.ID, "paint").click()
    canvas = browser.find_element(By.ID, "paint-canvas")
    wait_for(browser, lambda d: d.execute_script("return arguments[0].width", canvas) == 96)
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", canvas)
    ActionChains(browser, duration=0).move_to_element(canvas).click_and_hold().move_by_offset(20, 0).release().perform()
    browser.find_element(By.ID, "submit").click()
    wait_for(browser, lambda d: "remove the mask, or clear the painting" in d.find_element(By.ID, "labels-error").text)
    browser.find_element(By.ID, "paint-clear").click()
    browser.find_element(By.ID, "mask-clear").click()
    assert browser.execute_script("return document.getElementById('mask').files.length") == 0
    assert browser.find_element(By.ID, "mask-name").text == "" and browser.find_element(By.ID, "mask-error").text == ""
    assert browser.find_element(By.ID, "labels-error").text == ""
    assert not browser.find_element(By.ID, "mask-clear").is_displayed()
    assert browser.switch_to.active_element.get_attribute("id") == "mask"  # where another is chosen
    browser.find_element(By.ID, "submit").click()
    assert _shown_size(browser) == [96, 64]


def test_page_makes_a_picture_end_to_end(web: WebProcess, browser, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    content, style = tmp_path / "photo.png", tmp_path / "mine.png"
    content.write_bytes(make_image(96, 64, seed=41))
    style.write_bytes(make_image(48, 48, seed=42, kind="noise"))
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    browser.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    browser.get(web.url + "/")
    wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#gallery button")) == 3)
    browser.find_element(By.ID, "content").send_keys(str(content))
    browser.find_element(By.ID, "style-upload").send_keys(str(style))
    browser.find_element(By.CSS_SELECTOR, '#gallery button[data-name="waves"]').click()
    wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#styles li")) == 2)
    _set_range(browser, browser.find_element(By.ID, "weight-1"), 0.4)
    _set_range(browser, browser.find_element(By.ID, "alpha"), 0.75)
    assert browser.find_element(By.ID, "alpha-value").text == "0.75"
    assert browser.find_element(By.ID, "weight-1-value").text == "0.40"
    # every control has a label
    for el in browser.find_elements(By.CSS_SELECTOR, "input, select"):
        labelled = browser.execute_script("return arguments[0].labels && arguments[0].labels.length", el)
        assert labelled, el.get_attribute("id")
    browser.find_element(By.ID, "submit").send_keys(Keys.ENTER)
    assert _shown_size(browser) == [96, 64]
    # a keyboard user is not left on the page itself: the result's heading has focus, Download is the next Tab,
    # and a screen reader is told it is done
    wait_for(browser, lambda d: d.switch_to.active_element.get_attribute("id") == "result-heading")
    assert browser.find_element(By.ID, "status").get_attribute("textContent").startswith("Done")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "web_result.png"))
    # removing a style (its list is drawn anew) leaves focus on the next Remove, not on the page
    browser.find_element(By.CSS_SELECTOR, '[aria-label="Remove mine.png"]').send_keys(Keys.ENTER)
    assert browser.switch_to.active_element.get_attribute("aria-label") == "Remove waves"
    # un-pressing a gallery style removes it too, and focus stays on the gallery button pressed
    browser.find_element(By.CSS_SELECTOR, '#gallery button[data-name="waves"]').send_keys(Keys.ENTER)
    wait_for(browser, lambda d: not d.find_elements(By.CSS_SELECTOR, "#styles li"))
    assert browser.switch_to.active_element.get_attribute("data-name") == "waves"
    browser.find_element(By.ID, "download").click()
    path = downloads / "photo_stylized.jpg"  # JPEG unless told otherwise: a phone's photo as PNG is large; named
    # after the photo, as several photos' and a clip's are (it was stylized.jpg)
    wait_for(browser, lambda d: path.exists() and path.stat().st_size > 0, timeout=20)
    assert Image.open(path).size == (96, 64) and Image.open(path).format == "JPEG"
    assert not _csp_refusals(browser)  # the page's own policy lets it do all of this (blob: results)


def _csp_refusals(browser) -> list[str]:
    return [e["message"] for e in browser.get_log("browser") if "Content Security Policy" in e["message"]]


# --- the live camera's WebSocket -------------------------------------------------------------------------


def _live(url: str, origin: str | None = None):
    from websockets.sync.client import connect

    return connect(url.replace("http://", "ws://") + "/api/live", open_timeout=10, close_timeout=5, origin=origin)


def _live_error(ws) -> tuple[dict, int | None]:
    from websockets.exceptions import ConnectionClosed

    message = ws.recv(timeout=60)
    assert isinstance(message, str), "expected the error message"
    with pytest.raises(ConnectionClosed):
        ws.recv(timeout=10)
    return json.loads(message)["error"], ws.close_code


def test_live_frames_come_back_stylized_in_order(web: WebProcess, client) -> None:
    frames = [make_image(64, 48, seed=70 + i, fmt="JPEG") for i in range(5)]
    with _live(web.url) as ws:
        ws.send(json.dumps({"styles": ["upload"], "alpha": 0.9, "temporal": "none"}))
        ws.send(STYLE)
        ws.send(frames[0])
        ws.send(frames[1])
        back = []
        for i in range(5):
            back.append(ws.recv(timeout=60))
            if i + 2 < 5:
                ws.send(frames[i + 2])
    assert all(isinstance(b, bytes) and Image.open(io.BytesIO(b)).format == "JPEG" for b in back)
    assert {Image.open(io.BytesIO(b)).size for b in back} == {(64, 48)}
    # each frame alone (temporal none) is what a video stream of the client makes of it, in order
    expected = [f.image for f in client.stylize_video(frames, STYLE, alpha=0.9, temporal="none", format="jpeg",
                                                      quality=85)]
    for got, want in zip(back, expected, strict=True):
        assert np.abs(pixels(got).astype(int) - pixels(want).astype(int)).mean() < 1.0


LIVE_BAD = {  # the first message, what follows it, the field, the message's words
    "not-json": ("hello", [], "options", "JSON object"),
    "nested-too-deep": ("[" * 100_000 + "]" * 100_000, [], "options", "JSON object"),  # RecursionError, not ValueError
    "no-styles": ({"styles": []}, [], "styles", "at least 1 style"),
    "unknown-name": ({"styles": ["id:waves"]}, ["frame"], "styles[0].style_id", ""),  # the server's: no library
    "bad-alpha": ({"styles": ["upload"], "alpha": 2}, [STYLE, "frame"], "alpha", ""),  # the server's
    "alpha-true": ({"styles": ["id:waves"], "alpha": True}, [], "alpha", "alpha: not a number: true"),
    "unknown-key": ({"styles": ["id:waves"], "colour": "red"}, [], "colour", "colour: unknown field"),
    "styles-a-string": ({"styles": "upload"}, [], "styles", "got a string"),
    "not-an-image": ({"styles": ["upload"]}, [b"not an image"], "styles[0].image", "not an image"),
    "style-as-text": ({"styles": ["upload"]}, ["a text message"], "styles[0]", "binary message, got a text"),
    "alpha-of-400-digits": ({"styles": ["id:waves"], "alpha": 10**400}, [], "alpha", "finite"),  # OverflowError
    "frame-not-an-image": ({"styles": ["upload"]}, [STYLE, b"not an image"], "frame", "frame: not an image"),
    "frame-of-another-size": ({"styles": ["upload"], "temporal": "none"},
                              [STYLE, "frame", make_image(32, 24, fmt="JPEG")], "frame", "frame: "),  # "frames[1]"
}


@pytest.mark.parametrize("case", list(LIVE_BAD), ids=list(LIVE_BAD))
def test_live_bad_options_end_the_session_naming_the_field(web: WebProcess, case: str) -> None:
    from websockets.exceptions import ConnectionClosed

    first, then, field, words = LIVE_BAD[case]
    with _live(web.url) as ws:
        ws.send(first if isinstance(first, str) else json.dumps(first))
        for message in then:  # a style's image or a text, and "frame": a good frame (the server checks the rest)
            try:
                ws.send(make_image(64, 48, seed=75, fmt="JPEG") if message == "frame" else message)
            except ConnectionClosed:  # the session already ended on what came before (its error still reads)
                break
        if case == "frame-of-another-size":
            assert isinstance(ws.recv(timeout=60), bytes)  # the first frame's picture
        error, code = _live_error(ws)
    assert error["code"] == "INVALID_ARGUMENT" and error["violations"][0]["field"] == field, error
    assert words in error["message"] and "frames[" not in error["message"], error
    assert code == 1008


def test_other_sites_pages_are_refused(web: WebProcess) -> None:
    """A page of another site may not use this API through its visitor's browser (Origin); callers that are
    no browser (no Origin) and this page itself may."""
    from websockets.exceptions import InvalidStatus

    files = [_png("content", CONTENT), _png("styles", STYLE)]
    r = httpx.post(web.url + "/api/stylize", files=files, headers={"Origin": "http://evil.example"}, timeout=60)
    assert r.status_code == 403 and r.json()["error"]["code"] == "PERMISSION_DENIED"
    assert "http://evil.example" in r.json()["error"]["message"]
    assert httpx.delete(web.url + "/api/videos/x", headers={"Origin": "http://evil.example"}).status_code == 403
    assert httpx.post(web.url + "/api/stylize", files=files, headers={"Origin": web.url}, timeout=60).status_code == 200
    with pytest.raises(InvalidStatus) as e:
        _live(web.url, origin="http://evil.example")
    assert e.value.response.status_code == 403
    with _live(web.url, origin=web.url) as ws:  # the page's own origin
        ws.send(json.dumps({"styles": []}))
        assert _live_error(ws)[0]["violations"][0]["field"] == "styles"


def test_a_name_made_to_resolve_here_is_refused(web: WebProcess, server: ServerProcess) -> None:
    """DNS rebinding (a security tester's): another site's name made to resolve to 127.0.0.1 is, to the browser,
    this page's origin (Origin and Host agree), and its page could stylize and read the replies. On loopback the
    page answers to its addresses and localhost alone, and to the names --allowed-host gives."""
    port = web.url.rsplit(":", 1)[1]
    rebound = {"Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}"}
    files = [_png("content", CONTENT), _png("styles", STYLE)]
    r = httpx.post(web.url + "/api/stylize", files=files, headers=rebound, timeout=60)
    assert r.status_code == 403 and r.json()["error"]["code"] == "PERMISSION_DENIED", r.text
    assert "'evil.example'" in r.json()["error"]["message"] and "--allowed-host" in r.json()["error"]["message"]
    assert httpx.get(web.url + "/api/info", headers={"Host": f"evil.example:{port}"}).status_code == 403
    for name in ("localhost", "127.0.0.1", "[::1]", "127.0.0.2"):
        assert httpx.get(web.url + "/api/info", headers={"Host": f"{name}:{port}"}).status_code == 200, name
    allowing = WebProcess(server.target, "--allowed-host", "Studio.Example")
    try:
        port = allowing.url.rsplit(":", 1)[1]
        for name, status in (("studio.example", 200), ("localhost", 200), ("evil.example", 403)):
            got = httpx.get(allowing.url + "/api/info", headers={"Host": f"{name}:{port}"}).status_code
            assert got == status, name
    finally:
        allowing.stop()


def test_a_header_pillow_would_take_seconds_on_is_refused_as_the_server_refuses_it(web: WebProcess) -> None:
    """A security tester's: adain-web checked uploads' headers on its event loop without the server's guards, and
    a 19-MB JPEG of fill held every request (/healthz too) for 3 s, PNGs of a million chunks for 9. The guards
    come first now (and the check runs on a worker thread)."""
    jpeg = make_image(40, 30, seed=3, fmt="JPEG")
    flood = jpeg[:2] + b"\xff" * (512 << 10) + jpeg[2:]  # (this page's upload limit is 1 MB)
    r = httpx.post(web.url + "/api/stylize", files=[("content", ("c.jpg", flood, "image/jpeg")), _png("styles", STYLE)],
                   timeout=60)
    assert r.status_code == 400 and _field(r) == "content" and "bytes of fill" in r.text, r.text


def test_live_timeouts_say_so_and_whose_silence_it_was(server: ServerProcess) -> None:
    """A page that sent no options was dropped without a word (1006); a page that stops sending is told."""
    web = WebProcess(server.target, "--live-idle-s", "2")
    try:
        with _live(web.url) as ws:  # no options
            error, code = _live_error(ws)
        assert error["code"] == "DEADLINE_EXCEEDED" and "no options" in error["message"] and code == 1013, error
        with _live(web.url) as ws:
            ws.send(json.dumps({"styles": ["upload"], "temporal": "none"}))
            ws.send(STYLE)
            ws.send(make_image(64, 48, seed=78, fmt="JPEG"))
            assert isinstance(ws.recv(timeout=60), bytes)
            error, code = _live_error(ws)  # then nothing from the page
        assert error["code"] == "DEADLINE_EXCEEDED" and error["message"] == "no frame for 2 s" and code == 1013, error
    finally:
        web.stop()


def test_one_visitor_holds_one_live_session_and_a_silent_one_goes_soon(server: ServerProcess) -> None:
    """A security tester's: two sockets that sent nothing held both live sessions (the default 2) for 29.5 s at a
    time, again and again. A visitor holds one; the options must come within 10 s (or --live-idle-s)."""
    web = WebProcess(server.target, "--live-idle-s", "3")
    try:
        with _live(web.url) as first:
            with _live(web.url) as second:  # the same visitor (this address), while its first is open
                error, code = _live_error(second)
            assert error["code"] == "RESOURCE_EXHAUSTED" and "one a visitor" in error["message"] and code == 1013
            t0 = time.monotonic()
            error, code = _live_error(first)  # it sent no options
            assert error["code"] == "DEADLINE_EXCEEDED" and "no options" in error["message"], error
            assert time.monotonic() - t0 < 6
        end = time.monotonic() + 10
        while True:  # its place is the visitor's again
            with _live(web.url) as again:
                again.send(json.dumps({"styles": ["upload"]}))
                again.send(STYLE)
                again.send(make_image(64, 48, seed=78, fmt="JPEG"))
                reply = again.recv(timeout=60)
            if isinstance(reply, bytes) or time.monotonic() > end:
                break
            time.sleep(0.1)
        assert isinstance(reply, bytes), reply
    finally:
        web.stop()


def test_live_sessions_are_bounded_and_counted(server: ServerProcess) -> None:
    metrics = free_port()
    web = WebProcess(server.target, "--max-live", "1", "--live-max-s", "5", "--allowed-origin", "https://partner.example",
                     "--metrics-port", str(metrics))

    def scrape() -> str:
        return httpx.get(f"http://127.0.0.1:{metrics}/metrics", timeout=10).text

    try:
        with _live(web.url) as first:
            first.send(json.dumps({"styles": ["upload"]}))
            first.send(STYLE)
            first.send(make_image(64, 48, seed=76, fmt="JPEG"))  # its picture first: the session's clock runs
            assert isinstance(first.recv(timeout=60), bytes)
            assert "adain_web_live_sessions 1.0" in scrape()
            with _live(web.url) as second:  # one at a time here
                error, code = _live_error(second)
            assert error["code"] == "RESOURCE_EXHAUSTED" and code == 1013
            error, code = _live_error(first)  # then no more than 5 s in all
        assert error["code"] == "DEADLINE_EXCEEDED" and "at most 5 s" in error["message"] and code == 1013
        end = time.monotonic() + 10  # its place is free once its server stream has ended (cancelled: moments)
        while "adain_web_live_sessions 0.0" not in scrape():
            assert time.monotonic() < end, "the ended session kept its place"
            time.sleep(0.05)
        with _live(web.url, origin="https://partner.example") as again:  # free again; an allowed origin
            again.send(json.dumps({"styles": ["upload"]}))
            again.send(STYLE)
            again.send(make_image(64, 48, seed=77, fmt="JPEG"))
            assert isinstance(again.recv(timeout=60), bytes)
        text = scrape()
        assert 'adain_web_requests_total{route="/api/live",status="websocket"} 2.0' in text
        assert 'adain_web_requests_total{route="/api/live",status="429"} 1.0' in text  # the one turned away
        assert 'adain_web_requests_total{route="/api/info",status="200"}' in text  # by route template and status
        # as the alerts name the page's polls, which they leave out (counted as "{request_id:path}", they were not)
        assert httpx.get(f"{web.url}/api/progress/job/1", timeout=10).status_code == 404
        assert 'adain_web_requests_total{route="/api/progress/{request_id}",status="404"} 1.0' in scrape()
        assert "adain_web_video_jobs_running 0.0" in text and "adain_web_photo_calls 0.0" in text
        assert "adain_web_clip_disk_budget_bytes 2.147483648e+09" in text  # --max-disk-mb's 2048 by default
        wanted = {m for m in alert_metrics() if m.startswith("adain_web_")}  # deploy/prometheus/alerts.yaml
        assert wanted and wanted <= exported_metrics(text), wanted - exported_metrics(text)
    finally:
        web.stop()


def test_page_stylizes_the_live_camera(web: WebProcess, browser, tmp_path: Path) -> None:
    """Chromium's fake camera (640 x 480) through the page: frames come back stylized; a new size starts a new
    session; a picture can be saved; removing the last style pauses it (it went on in the style removed);
    Stop lets the camera go and brings back the photo's result with its Download (it came back without)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    browser.get(web.url + "/")
    wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#gallery button")) == 3)
    browser.find_element(By.ID, "live-start").click()
    wait_for(browser, lambda d: "at least one style" in d.find_element(By.ID, "styles-error").text)
    waves = browser.find_element(By.CSS_SELECTOR, '#gallery button[data-name="waves"]')
    waves.click()
    photo = tmp_path / "photo.png"
    photo.write_bytes(make_image(64, 48, seed=3))
    browser.find_element(By.ID, "content").send_keys(str(photo))
    browser.find_element(By.ID, "submit").click()
    wait_for(browser, lambda d: d.find_element(By.ID, "download").is_displayed(), timeout=90)
    result = browser.find_element(By.ID, "output").get_attribute("src")
    browser.find_element(By.ID, "live-start").click()
    frames = "return Number(document.getElementById('live-output').dataset.frames || 0)"
    size = "const c = document.getElementById('live-output'); return Math.max(c.width, c.height);"
    wait_for(browser, lambda d: d.execute_script(frames) >= 3, timeout=90)
    assert "frames a second" in browser.find_element(By.ID, "live-status").text
    # the rate, rewritten at every frame, is not read out (it was, several times a second); the start is
    assert browser.find_element(By.ID, "live-status").get_attribute("aria-live") == "off"
    assert browser.find_element(By.ID, "status").get_attribute("textContent") == (
        "Live: the stylized camera is under Result.")
    assert browser.execute_script(size) == 384  # the default size
    assert not browser.find_element(By.ID, "photo-size-row").is_displayed()  # the camera's size is Live size
    select = browser.find_element(By.ID, "live-size").rect
    live_label = browser.find_element(By.CSS_SELECTOR, 'label[for="live-size"]').rect
    assert select["x"] - (live_label["x"] + live_label["width"]) < 40  # beside its label, not 14rem away
    Select(browser.find_element(By.ID, "live-size")).select_by_value("256")  # a new session at the new size
    wait_for(browser, lambda d: d.execute_script(size) == 256 and d.execute_script(frames) >= 2, timeout=90)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "web_live.png"))
    browser.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(tmp_path)})
    browser.find_element(By.ID, "live-snapshot").click()
    saved = tmp_path / "stylized-live.png"
    wait_for(browser, lambda d: saved.exists() and saved.stat().st_size > 0, timeout=20)
    assert max(Image.open(saved).size) == 256
    waves.click()  # no style left
    wait_for(browser, lambda d: d.find_element(By.ID, "live-status").text == "Paused: choose a style to go on.")
    paused_at = browser.execute_script(frames)
    time.sleep(2)
    assert browser.execute_script(frames) == paused_at
    waves.click()  # a new session (its count starts again)
    wait_for(browser, lambda d: "frames a second" in d.find_element(By.ID, "live-status").text, timeout=90)
    browser.find_element(By.ID, "live-stop").click()
    assert browser.switch_to.active_element.get_attribute("id") == "live-start"  # Stop is hidden: not the page's end
    assert browser.find_element(By.ID, "download").is_displayed()
    assert browser.find_element(By.ID, "photo-size-row").is_displayed()  # the photo's again
    assert browser.find_element(By.ID, "output").get_attribute("src") == result
    assert not browser.find_element(By.ID, "live-row").is_displayed()
    assert browser.execute_script("return document.getElementById('live-camera').srcObject") is None
    assert browser.find_element(By.ID, "form-error").text == ""
    assert not _csp_refusals(browser)


def test_page_renders_a_photo_at_the_size_chosen(web: WebProcess, browser, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    content = tmp_path / "large.jpg"
    content.write_bytes(make_image(1500, 1000, seed=5, fmt="JPEG"))
    open_page_with(browser, web, content, "mosaic")
    size = Select(browser.find_element(By.ID, "photo-size"))
    assert size.first_selected_option.get_attribute("value") == "2048"  # the page's default; the API's: as taken
    size.select_by_value("1024")
    browser.find_element(By.ID, "submit").click()
    assert _shown_size(browser, timeout=90) == [1024, 683]


def _page_with_photos(browser, web: WebProcess, photos: list[Path], tmp_path: Path) -> Path:
    """The page open with ``photos`` chosen at once; returns the folder its downloads go to."""
    from selenium.webdriver.common.by import By

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    browser.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    browser.get(web.url + "/")
    wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#gallery button")) == 3)
    browser.find_element(By.ID, "content").send_keys("\n".join(str(p) for p in photos))
    return downloads


def test_page_stylizes_several_photos_and_zips_them(web: WebProcess, browser, tmp_path: Path) -> None:
    """Four photos chosen at once, one of them no image and one over the upload limit: two results and an error
    beside each other's name (the run goes on), then one zip of the two, each named by the format it came in."""
    import zipfile

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    photos = [tmp_path / "one.png", tmp_path / "big.png", tmp_path / "two.jpg", tmp_path / "broken.png"]
    photos[0].write_bytes(make_image(80, 60, seed=81))
    photos[1].write_bytes(make_image(200, 200, seed=80))
    assert photos[1].stat().st_size > 60_000
    photos[2].write_bytes(make_image(60, 80, seed=82, fmt="JPEG"))
    photos[3].write_bytes(b"not an image at all")
    downloads = _page_with_photos(browser, web, photos, tmp_path)
    assert browser.find_element(By.ID, "content-name").text.startswith("4 photos: one.png, big.png, two.jpg, ")
    assert not browser.find_element(By.ID, "regions-row").is_displayed()  # a painting fits one photo
    browser.find_element(By.CSS_SELECTOR, '#gallery button[data-name="mosaic"]').click()
    Select(browser.find_element(By.ID, "format")).select_by_value("png")
    browser.execute_script("state.info.max_upload_mb = 0.05")  # big.png's 0.1 MB is over it
    browser.execute_script(  # each photo sent 1.5 s late, as on a slow line: a small photo's steps are not followed
        "const send = XMLHttpRequest.prototype.send;"
        "XMLHttpRequest.prototype.send = function (body) { setTimeout(() => send.call(this, body), 1500); };")
    browser.get_log("browser")  # (what came before)
    browser.find_element(By.ID, "submit").click()  # one.png is sent as PNG at once ...
    Select(browser.find_element(By.ID, "format")).select_by_value("jpeg")  # ... the others as JPEG
    wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#batch-results figure")) == 4, timeout=120)
    captions = [c.text for c in browser.find_elements(By.CSS_SELECTOR, "#batch-results figcaption")]
    assert captions[0].startswith("one.png") and captions[2].startswith("two.jpg")
    # not sent, said beside its name, and the run went on (it stopped, blaming "an option", below Stylize)
    assert re.fullmatch(r"big\.png: 0\.1 MB, over this page's upload limit of 0\.05 MB: send a smaller photo",
                        captions[1]), captions[1]
    assert captions[3].startswith("broken.png: not an image"), captions[3]  # the server's error, this photo only
    # each photo of the run was followed: its polls were 404s in the console (broken.png's size is not known to
    # the browser: it is followed, as a photo the server may read and find large)
    followed = {re.search(r"/api/progress/(\w+)", e["message"])[1] for e in browser.get_log("browser")
                if "/api/progress/" in e["message"]}
    assert len(followed) <= 1, followed
    sizes = browser.execute_script(
        "return [...document.querySelectorAll('#batch-results img')].map(i => [i.naturalWidth, i.naturalHeight]);")
    assert sizes == [[80, 60], [60, 80]]
    assert not browser.find_element(By.ID, "pair").is_displayed()
    wait_for(browser, lambda d: d.find_element(By.ID, "download-all").is_displayed())
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.execute_script("document.getElementById('result').scrollIntoView()")
    browser.save_screenshot(str(ARTIFACTS / "web_batch.png"))
    browser.find_element(By.ID, "download-all").click()
    saved = downloads / "stylized.zip"
    wait_for(browser, lambda d: saved.exists() and saved.stat().st_size > 0, timeout=20)
    with zipfile.ZipFile(saved) as z:
        # each named by what it is ("Save as" changed while one.png was made named a JPEG ".png")
        assert z.testzip() is None and z.namelist() == ["one_stylized.png", "two_stylized.jpg"]
        assert [Image.open(io.BytesIO(z.read(n))).format for n in z.namelist()] == ["PNG", "JPEG"]
        assert [Image.open(io.BytesIO(z.read(n))).size for n in z.namelist()] == [(80, 60), (60, 80)]
        # made on Unix, mode 0644: Info-ZIP's unzip read a zip "made on MS-DOS" with CP437 names (mojibake)
        assert {(i.create_system, i.external_attr >> 16) for i in z.infolist()} == {(3, 0o100644)}
    named = browser.execute_async_script(  # the page's own zip of a non-ASCII name, as unzip extracts it
        "const done = arguments[0]; zipBlob([{name: 'café_写真.png', blob: new Blob(['x'])}])"
        ".then((b) => b.arrayBuffer()).then((a) => done(Array.from(new Uint8Array(a))));")
    (tmp_path / "names.zip").write_bytes(bytes(named))
    if shutil.which("unzip"):
        (tmp_path / "unzipped").mkdir()
        subprocess.run(["unzip", "-q", str(tmp_path / "names.zip"), "-d", str(tmp_path / "unzipped")], check=True,
                       env={**os.environ, "LC_ALL": "C.UTF-8"})
        assert [p.name for p in (tmp_path / "unzipped").iterdir()] == ["café_写真.png"]
    # An option's error is no photo's: the run stops at the first and says it beside the control (it was
    # repeated under every photo, each sent in turn), the limit in words. (The page's own check of the field,
    # which knows the server's limit, is widened to let the server's answer through.)
    browser.execute_script("state.info.max_upload_mb = 20; document.getElementById('refine_steps').max = '99999'")
    _set_range(browser, browser.find_element(By.ID, "refine_steps"), 9999)
    browser.find_element(By.ID, "submit").click()
    message = wait_for(browser, lambda d: d.find_element(By.ID, "refine_steps-error").text)
    assert message == "9999 is over this server's limit of 500 refine steps", message
    wait_for(browser, lambda d: d.find_element(By.ID, "submit").is_enabled())
    assert browser.find_elements(By.CSS_SELECTOR, "#batch-results figure") == []
    status = browser.find_element(By.ID, "status").get_attribute("textContent")
    assert status == "Stopped: an option was refused (see its error); 0 of 4 photos stylized.", status


def test_page_zips_names_each_file_system_keeps_apart(web: WebProcess, browser, tmp_path: Path) -> None:
    """An i18n tour's: the zip of several photos told its names apart as strings, so "café" in NFC and in NFD
    (as macOS names files), and "Photo" and "photo", were two entries of one name to macOS's and Windows' file
    systems, the second written over the first; and a 250-byte photo's name made a 259-byte entry, which unzip
    refused ("File name too long"). Now: compared in NFC and lower case, written NFC, at most 255 bytes; and a
    hidden photo's result is not hidden."""
    import zipfile

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    names = ["caf\u00e9.png", "cafe\u0301.png", "Photo.png", "photo.png", "é" * 123 + ".png", ".beach.png"]
    photos = [tmp_path / "in" / n for n in names]
    photos[0].parent.mkdir()
    for i, photo in enumerate(photos):
        photo.write_bytes(make_image(24, 16, seed=90 + i))
    downloads = _page_with_photos(browser, web, photos, tmp_path)
    browser.find_element(By.CSS_SELECTOR, '#gallery button[data-name="mosaic"]').click()
    Select(browser.find_element(By.ID, "format")).select_by_value("png")
    browser.find_element(By.ID, "submit").click()
    wait_for(browser, lambda d: d.find_element(By.ID, "download-all").is_displayed(), timeout=120)
    want = ["caf\u00e9_stylized.png", "caf\u00e9_stylized_2.png", "Photo_stylized.png", "photo_stylized_2.png",
            "é" * 121 + "_stylized.png", "beach_stylized.png"]  # 255 bytes; no hidden file
    links = browser.find_elements(By.CSS_SELECTOR, "#batch-results a[download]")
    assert [a.get_attribute("download") for a in links] == want  # each photo's own Download too
    browser.find_element(By.ID, "download-all").click()
    saved = downloads / "stylized.zip"
    wait_for(browser, lambda d: saved.exists() and saved.stat().st_size > 0, timeout=20)
    with zipfile.ZipFile(saved) as z:
        assert z.testzip() is None and z.namelist() == want
    if shutil.which("unzip"):
        subprocess.run(["unzip", "-q", str(saved), "-d", str(tmp_path / "unzipped")], check=True,
                       env={**os.environ, "LC_ALL": "C.UTF-8"})
        assert sorted(p.name for p in (tmp_path / "unzipped").iterdir()) == sorted(want)


def test_page_makes_a_clip_end_to_end(web: WebProcess, browser, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    make_video(tmp_path / "holiday.mp4", frames=12, audio=True)
    browser.get(web.url + "/")
    wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#gallery button")) == 3)
    browser.find_element(By.ID, "content").send_keys(str(tmp_path / "holiday.mp4"))
    # a clip's options replace a photo's
    assert browser.find_element(By.ID, "temporal").is_displayed() and browser.find_element(By.ID, "size").is_displayed()
    assert not browser.find_element(By.ID, "mask-row").is_displayed()
    assert not browser.find_element(By.ID, "paint").is_displayed()  # regions are painted on photos
    browser.find_element(By.CSS_SELECTOR, '#gallery button[data-name="waves"]').click()
    wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#styles li")) == 1)
    browser.find_element(By.ID, "submit").click()
    wait_for(browser, lambda d: d.find_element(By.ID, "download").is_displayed(), timeout=120)
    assert browser.find_element(By.ID, "progress-text").get_attribute("textContent") == "Frame 12 of 12"
    href = browser.find_element(By.ID, "download").get_attribute("href")
    assert browser.find_element(By.ID, "download").get_attribute("download") == "holiday_stylized.mp4"
    # the browser reads the result as a video of the clip's size (or says it cannot play H.264)
    shown = wait_for(browser, lambda d: d.execute_script(
        "const v = document.getElementById('output-video'); return v.error ? 'error ' + v.error.code : "
        "(v.readyState >= 1 ? [v.videoWidth, v.videoHeight] : null);"), timeout=30)
    assert shown == [64, 48], shown
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "web_clip.png"))
    (tmp_path / "got.mp4").write_bytes(httpx.get(href, timeout=30).content)
    assert video_facts(tmp_path / "got.mp4")["frames"] == 12

    # The next clip: the last result is unloaded (not only hidden) while it runs, and Cancel stops the asking.
    make_video(tmp_path / "long.mp4", frames=30, w=192, h=144)
    browser.execute_script("document.getElementById('content').value = ''")  # (else chromedriver adds a file)
    browser.find_element(By.ID, "content").send_keys(str(tmp_path / "long.mp4"))
    assert browser.find_element(By.ID, "content-name").text.startswith("Clip: long.mp4")
    unloaded = ("const v = document.getElementById('output-video');"
                "return [v.hidden, v.readyState, v.networkState === HTMLMediaElement.NETWORK_EMPTY];")
    # the last clip's result (and its Download) went with the choice: it is not this clip's
    assert browser.execute_script(unloaded) == [True, 0, True]
    assert not browser.find_element(By.ID, "download").is_displayed()
    browser.execute_script("performance.clearResourceTimings()")
    browser.find_element(By.ID, "submit").click()
    job_id = wait_for(browser, lambda d: d.execute_script("return state.job"), timeout=30)
    assert browser.execute_script(unloaded) == [True, 0, True]
    cancelled_at = browser.execute_script(
        "const t = performance.now(); document.getElementById('cancel').click(); return t;")
    wait_for(browser, lambda d: d.find_element(By.ID, "submit").is_enabled(), timeout=30)
    assert browser.find_element(By.ID, "form-error").text == "Cancelled."
    asking = ("return performance.getEntriesByType('resource').filter((e) => e.name.endsWith(arguments[0]) &&"
              " e.startTime > arguments[1]).length;", f"/api/videos/{job_id}", cancelled_at)
    # the job's URL after the click: the DELETE (recorded when its answer comes: it may still be on its way when
    # Submit is enabled again), and no poll for longer than the page's poll interval (1 s) after it
    wait_for(browser, lambda d: d.execute_script(*asking) >= 1, timeout=10)
    time.sleep(1.5)
    asked = browser.execute_script(*asking)
    assert asked == 1, asked
    assert browser.execute_script(unloaded) == [True, 0, True]
    assert httpx.get(f"{web.url}/api/videos/{job_id}").json()["state"] == "cancelled"
    # another clip chosen while one runs: that job is stopped, not shown later beside the new one
    browser.find_element(By.ID, "submit").click()
    job_id = wait_for(browser, lambda d: d.execute_script("return state.job"), timeout=30)
    browser.execute_script("document.getElementById('content').value = ''")
    browser.find_element(By.ID, "content").send_keys(str(tmp_path / "holiday.mp4"))
    wait_for(browser, lambda d: d.find_element(By.ID, "submit").is_enabled(), timeout=30)
    wait_for(browser, lambda d: httpx.get(f"{web.url}/api/videos/{job_id}").json()["state"] == "cancelled")
    assert browser.execute_script(unloaded) == [True, 0, True]
    # a reload mid-clip cancels it: it held the only clip slot for minutes, and the page then said "busy"
    browser.execute_script("document.getElementById('content').value = ''")
    browser.find_element(By.ID, "content").send_keys(str(tmp_path / "long.mp4"))
    browser.find_element(By.ID, "submit").click()
    job_id = wait_for(browser, lambda d: d.execute_script("return state.job"), timeout=30)
    browser.refresh()
    wait_for(browser, lambda d: httpx.get(f"{web.url}/api/videos/{job_id}").json().get("state", "gone") in
             ("cancelled", "gone"))  # ("gone": named below with what the server said)
    state = httpx.get(f"{web.url}/api/videos/{job_id}")
    assert state.status_code == 200 and state.json()["state"] == "cancelled", state.text
    # a clip failed with UNAVAILABLE gets the page's own words, as a 503 does
    assert browser.execute_script(
        "clearErrors(); const error = {code: 'UNAVAILABLE', message: 'm', violations: []};"
        "showError({error}, errorStatus(error)); return document.getElementById('form-error').textContent;"
    ).startswith("The style-transfer server is not available")
    # an animated GIF is a clip (it was sent as a photo, and one frame came back), shown as a picture (a video
    # player does not play a GIF); a GIF of one frame is a photo
    (tmp_path / "dance.gif").write_bytes(_gif(64, 48, frames=6))
    (tmp_path / "still.gif").write_bytes(_gif(64, 48, frames=1))
    for name, kind in (("dance.gif", "Clip"), ("still.gif", "Photo")):
        browser.execute_script("document.getElementById('content').value = ''")
        browser.find_element(By.ID, "content").send_keys(str(tmp_path / name))
        wait_for(browser, lambda d, name=name: name in d.find_element(By.ID, "content-name").text)
        assert browser.find_element(By.ID, "content-name").text.startswith(f"{kind}: {name}")
        assert browser.find_element(By.ID, "fps-row").is_displayed() == (kind == "Clip")
        assert browser.execute_script("return [document.getElementById('original').hidden, "
                                      "document.getElementById('original-video').hidden]") == [False, True]
    severe = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe  # no 404 (a favicon, a poll of a cancelled job) in the console


def _data_url_bytes(url: str) -> bytes:
    import base64

    return base64.b64decode(url.split(",", 1)[1])


def test_page_paints_regions(web: WebProcess, browser, client, tmp_path: Path) -> None:
    """Paint two styles' regions with the mouse in Chromium: the page sends a labels image with exactly the
    palette's colours (black where unpainted), and the picture is the one the client makes from it."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    content = tmp_path / "photo.png"
    content.write_bytes(make_image(96, 64, seed=44))
    browser.get(web.url + "/")
    wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#gallery button")) == 3)
    assert not browser.find_element(By.ID, "paint").is_enabled()  # nothing to paint on yet, and it says why
    assert browser.find_element(By.ID, "paint-why").text == "(choose a photo first)"
    browser.find_element(By.ID, "content").send_keys(str(content))
    for name in ("waves", "mosaic"):
        browser.find_element(By.CSS_SELECTOR, f'#gallery button[data-name="{name}"]').click()
    wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#styles li")) == 2)
    assert not browser.find_element(By.ID, "paint-why").is_displayed()
    browser.find_element(By.ID, "paint").click()
    canvas = browser.find_element(By.ID, "paint-canvas")
    wait_for(browser, lambda d: d.execute_script("return arguments[0].width", canvas) == 96)
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", canvas)
    w, h = canvas.size["width"], canvas.size["height"]
    _set_range(browser, browser.find_element(By.ID, "brush-size"), 40)

    def scribble(x0: int, x1: int) -> None:  # page pixels from the canvas's top left
        chain = ActionChains(browser, duration=0)  # no 250 ms glide per move: the page draws each segment anyway
        for y in range(8, h - 4, 16):
            chain.move_to_element_with_offset(canvas, x0 - w // 2, y - h // 2).click_and_hold()
            chain.move_by_offset(x1 - x0, 0).release()
        chain.perform()

    scribble(4, w // 3 - 24)  # the first brush (waves) is chosen: the left third
    browser.find_element(By.ID, "submit").click()  # mosaic has no region yet: the page says so beside it
    wait_for(browser, lambda d: "Paint where this style goes" in d.find_element(By.ID, "style-error-1").text)
    brushes = browser.find_elements(By.CSS_SELECTOR, "#brushes button")
    assert [b.text for b in brushes] == ["waves", "mosaic", "keep the photo (eraser)"]
    brushes[1].click()
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", canvas)
    scribble(w // 3 + 24, 2 * w // 3 - 24)  # the middle third: mosaic
    sent = _data_url_bytes(browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "labelsImage().then((r) => { const f = new FileReader(); f.onload = () => done(f.result);"
        " f.readAsDataURL(r.blob); });"))
    labels = np.asarray(Image.open(io.BytesIO(sent)).convert("RGB"))
    assert labels.shape == (64, 96, 3)
    colours = {tuple(c) for c in labels.reshape(-1, 3)}
    assert colours == {(230, 25, 75), (60, 180, 75), (0, 0, 0)}, colours  # exact: no smoothed edge colours
    third = 96 // 3
    assert (labels[:, :third - 8] == (230, 25, 75)).all(axis=-1).mean() > 0.9
    assert (labels[:, third + 8 : 2 * third - 8] == (60, 180, 75)).all(axis=-1).mean() > 0.9
    assert (labels[:, 2 * third + 4 :] == 0).all()  # unpainted: black, which names no style

    Select(browser.find_element(By.ID, "format")).select_by_value("png")  # lossless: compared pixel for pixel
    browser.find_element(By.ID, "submit").click()
    got = wait_for(browser, lambda d: d.execute_async_script(
        "const done = arguments[arguments.length - 1]; const i = document.getElementById('output');"
        "if (!i.complete || !i.naturalWidth) { done(null); return; }"
        "fetch(i.src).then((r) => r.blob()).then((b) => { const f = new FileReader();"
        " f.onload = () => done(f.result); f.readAsDataURL(b); });"))
    styles = [REPO / "examples" / "style" / f"{name}.png" for name in ("waves", "mosaic")]
    direct = client.stylize(content, styles, labels=sent, label_values=["#e6194b", "#3cb44b"])
    assert (np.asarray(Image.open(io.BytesIO(_data_url_bytes(got)))) == np.asarray(direct.to_pil())).all()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "web_regions.png"))
    # Removing a style takes its painting away: its colour goes to the next style chosen, which once took
    # over the painting too, silently. And a double click on a gallery style adds it once.
    browser.find_element(By.CSS_SELECTOR, '[aria-label="Remove waves"]').click()
    ActionChains(browser).double_click(browser.find_element(By.CSS_SELECTOR, '#gallery button[data-name="strokes"]')
                                       ).perform()
    wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#styles li")) == 2)
    time.sleep(0.5)  # the second click's chance to add it again
    assert [li.text.split(":")[0] for li in browser.find_elements(By.CSS_SELECTOR, "#styles li")] == [
        "Weight of mosaic", "Weight of strokes"]
    assert browser.execute_script("return state.styles.map((s) => s.colour)") == ["#3cb44b", "#e6194b"]
    left = browser.execute_async_script(
        "const done = arguments[arguments.length - 1]; labelsImage().then((r) => done(r.missing));")
    assert left == [1]  # strokes has painted nothing: the page will say so beside it
    # the canvas is read back (labels, an eraser per colour) and says so at its first use: Chromium's console
    # had "Multiple readback operations using getImageData are faster with the willReadFrequently attribute"
    read_back = [e["message"] for e in browser.get_log("browser") if "willReadFrequently" in e["message"]]
    assert not read_back, read_back


def test_page_paints_regions_with_the_keyboard(web: WebProcess, browser, tmp_path: Path) -> None:
    """Without a mouse: Tab to the photo, arrows move a visible brush, Space puts it down and lifts it; what
    it painted is sent as labels, and a screen reader is told where the brush is."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    content = tmp_path / "photo.png"
    content.write_bytes(make_image(96, 64, seed=45))
    open_page_with(browser, web, content, "waves")
    browser.find_element(By.ID, "paint").click()
    canvas = browser.find_element(By.ID, "paint-canvas")
    wait_for(browser, lambda d: d.execute_script("return arguments[0].width", canvas) == 96)
    _set_range(browser, browser.find_element(By.ID, "brush-size"), 80)
    browser.find_element(By.ID, "paint-clear").send_keys(Keys.SHIFT, Keys.TAB)  # focus moves back onto the photo
    assert browser.switch_to.active_element == canvas
    k = 96 / canvas.size["width"]  # photo pixels a page pixel
    canvas.send_keys(Keys.SPACE)  # a dot in the middle, then a stroke to the right
    canvas.send_keys(Keys.SHIFT + Keys.ARROW_RIGHT + Keys.ARROW_RIGHT)
    assert browser.find_element(By.ID, "paint-status").get_attribute("textContent").endswith("painting.")
    canvas.send_keys(Keys.SPACE, Keys.ARROW_UP)  # lifted: moving paints nothing
    ring = browser.find_element(By.ID, "paint-cursor")
    assert ring.is_displayed() and ring.size["width"] == 80
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", canvas)
    browser.save_screenshot(str(ARTIFACTS / "web_regions_keyboard.png"))
    sent = _data_url_bytes(browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "labelsImage().then((r) => { const f = new FileReader(); f.onload = () => done(f.result);"
        " f.readAsDataURL(r.blob); });"))
    painted = (np.asarray(Image.open(io.BytesIO(sent)).convert("RGB")) == (230, 25, 75)).all(axis=-1)
    right = 48 + int(2 * 4 * 40 * k)  # two Shift steps of four half-brushes each
    assert painted[32, 48] and painted[32, min(right, 95)], painted[32]
    assert not painted[:, : 48 - int(40 * k) - 2].any()  # left of the first dot: unpainted
    assert not painted[: 32 - int(40 * k) - 2].any()  # above the stroke: the lifted brush's move painted nothing
    browser.find_element(By.ID, "submit").send_keys(Keys.SHIFT)  # focus leaves the photo: the ring goes
    assert not ring.is_displayed()
    eraser = browser.find_elements(By.CSS_SELECTOR, "#brushes button")[-1]
    eraser.send_keys(Keys.SPACE)  # the brushes are drawn anew: focus stays on the one chosen
    assert browser.switch_to.active_element.text == "keep the photo (eraser)"
    assert browser.switch_to.active_element.get_attribute("aria-pressed") == "true"


def test_page_shows_a_refines_steps_and_cancel_stops_it(web: WebProcess, browser, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    content = tmp_path / "photo.png"
    content.write_bytes(make_image(128, 128, seed=41))
    open_page_with(browser, web, content, "waves")
    wait_for(browser, lambda d: not d.find_element(By.ID, "refine-row").get_attribute("hidden"))
    steps = browser.find_element(By.ID, "refine_steps")
    browser.execute_script("arguments[0].value = '2.5'", steps)  # (typed "abc" read as "": sent as 0, unrefined)
    browser.find_element(By.ID, "submit").click()
    assert browser.find_element(By.ID, "refine_steps-error").text == (
        "Type a whole number of steps from 0 (off) to 500.")
    assert browser.switch_to.active_element.get_attribute("id") == "refine_steps"
    steps.clear()
    steps.send_keys("500")
    browser.find_element(By.ID, "submit").click()
    text = wait_for(browser, lambda d: (t := d.find_element(By.ID, "progress-text").text).startswith(
        "Refining: step") and not t.startswith("Refining: step 0") and t, timeout=60)
    assert text.endswith("of 500"), text
    # said to a screen reader too (the result area is busy meanwhile, and nothing in it is read out)
    assert browser.find_element(By.ID, "status").get_attribute("textContent").startswith("Refining: step")
    browser.find_element(By.ID, "cancel").send_keys(Keys.ENTER)
    assert browser.find_element(By.ID, "form-error").text == "Cancelled."
    # Cancel is hidden now: focus is on what it did (it fell off the page's end)
    wait_for(browser, lambda d: d.switch_to.active_element.get_attribute("id") == "form-error")
    assert browser.find_element(By.ID, "submit").is_enabled()
    t0 = time.monotonic()  # the server's only refine place is free again at the job's next step
    after = _post(web.url, [_png("content", CONTENT), _png("styles", STYLE)], {"refine_steps": "1"})
    assert after.status_code == 200 and time.monotonic() - t0 < 30, after.text


def test_page_says_when_it_cannot_preview_a_phone_photo(web: WebProcess, browser, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    (tmp_path / "IMG_0001.HEIC").write_bytes(encoded(Image.open(io.BytesIO(CONTENT)), "HEIF"))
    browser.get(web.url + "/")
    wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#gallery button")) == 3)
    browser.find_element(By.ID, "content").send_keys(str(tmp_path / "IMG_0001.HEIC"))
    caption = wait_for(browser, lambda d: d.execute_script(
        "const i = document.getElementById('original'), c = document.getElementById('original-caption');"
        "return i.complete && (i.naturalWidth || c.textContent.includes('cannot')) ? [i.naturalWidth, c.textContent]"
        " : null;"))
    assert caption[0] or "this browser cannot show it" in caption[1], caption  # one that shows HEIC needs no note


def test_page_shows_an_invalid_upload_next_to_its_control(web: WebProcess, browser, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    fake = tmp_path / "holiday.jpg"
    fake.write_text("this is not a photo")
    open_page_with(browser, web, fake, "mosaic")
    browser.find_element(By.ID, "submit").send_keys(Keys.ENTER)  # from the keyboard
    message = wait_for(browser, lambda d: d.find_element(By.ID, "content-error").text)
    assert "not an image" in message and not message.startswith("content")  # beside the photo: no field name
    # Stylize was disabled while it ran, which dropped focus to the page: the error has it now (read out, in view)
    wait_for(browser, lambda d: d.switch_to.active_element.get_attribute("id") == "content-error")
    # a style's problem beside that style, named by what in it is wrong
    assert browser.execute_script("return besideControl('styles[1].weight', 'd')") == "weight: d"
    assert browser.find_element(By.ID, "submit").is_enabled()
    # At phone width the page is one column: nothing wider than the screen (a chosen style's row was, at 360)
    browser.set_window_size(360, 800)
    overflow = browser.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"{overflow} px wider than a 360-px screen"


def test_the_pages_log_is_json_with_each_requests_id(decoder_path: Path, tmp_path: Path) -> None:
    """--log-format json: every line of the page's log is a JSON object (uvicorn's too: its own had no time), each
    request ends with one line (method, path, status, ms, request_id: uvicorn's access line had no id and no
    duration), every answer carries X-Request-Id (a photo the page refused itself had none, and no line said it),
    and a clip's stream runs under the id the caller gave, which the server's log says (it said a new one).
    Progress polls and health probes, several a second, are not at INFO."""
    backend = ServerProcess(decoder_path, "--log-level", "INFO", "--log-format", "json", *NO_REFINE)
    web = None
    try:
        backend.wait_serving()
        web = WebProcess(backend.target, "--log-level", "info", "--log-format", "json")
        trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"  # a W3C traceparent, as OpenTelemetry's
        r = httpx.post(web.url + "/api/stylize", files=[_png("content", CONTENT), _png("styles", STYLE)],
                       headers={"X-Request-Id": "photo-1", "traceparent": trace}, timeout=60)
        assert r.status_code == 200 and r.headers["x-request-id"] == "photo-1", r.text
        bad = [("content", ("c.png", b"not an image", "image/png")), _png("styles", STYLE)]
        r = httpx.post(web.url + "/api/stylize", files=bad, headers={"X-Request-Id": "refused-1"}, timeout=60)
        assert r.status_code == 400 and r.headers["x-request-id"] == "refused-1", r.text
        assert httpx.get(web.url + "/api/progress/none", timeout=10).status_code == 404
        assert httpx.get(web.url + "/healthz", timeout=10).headers["x-request-id"]  # one of its own
        r = httpx.post(web.url + "/api/videos", files=[_clip(tmp_path, 4), _png("styles", STYLE)],
                       data={"temporal": "none"}, headers={"X-Request-Id": "clip-1"}, timeout=60)
        assert r.status_code == 202 and r.headers["x-request-id"] == "clip-1", r.text
        assert _finished(web, r.json())["state"] == "done"
    finally:
        if web:
            web.stop()
        backend.terminate()
    lines = [json.loads(line) for line in "".join(web.stderr).splitlines() if line.strip()]  # each one JSON
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in lines), lines
    access = {(a["method"], a["path"], a["status"], a["request_id"])
              for a in lines if a["logger"] == "adain.web.access"}
    assert {("POST", "/api/stylize", 200, "photo-1"), ("POST", "/api/stylize", 400, "refused-1"),
            ("POST", "/api/videos", 202, "clip-1")} <= access, access
    assert not [a for a in access if a[1].startswith(("/api/progress/", "/healthz"))], access  # at DEBUG
    traced = [a for a in lines if a.get("request_id") == "photo-1" and a["logger"] == "adain.web.access"]
    assert traced[0]["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736", traced  # the trace leads to the page's line
    said = "".join(backend.stderr_lines)
    assert '"request_id": "clip-1", "method": "StylizeVideo", "code": "OK"' in said, said[-2000:]


def test_the_pages_start_up_lines_are_json_where_its_log_is() -> None:
    """A start-up warning or error under --log-format json is a JSON object at its level, as adain-server's are (it
    was a plain "adain-web: warning: TMPDIR=... does not exist" line, which a pipeline read as unparsed text)."""
    run = subprocess.run([sys.executable, "-m", "adain.web", "--log-format", "json", "--max-video-mb", "10",
                          "--max-disk-mb", "15"], capture_output=True, text=True, timeout=60, cwd=REPO,
                         env=dict(os.environ, TMPDIR="/nonexistent-tmp"))
    lines = [json.loads(line) for line in run.stderr.splitlines()]
    assert run.returncode == 2 and [(x["level"], x["message"].split(":")[:2]) for x in lines] == [
        ("ERROR", ["adain-web", " error"])], run.stderr
    assert "--max-disk-mb 15 is under twice --max-video-mb (10)" in lines[0]["message"], run.stderr


def test_the_page_on_a_phone(web: WebProcess, browser, tmp_path: Path) -> None:
    """A phone's screen (360 x 740, as Chrome emulates one): a phone's long file names wrap instead of widening
    the page, a style's name stays beside its Remove button, fields are 16 px (under it iOS zooms the page into a
    field tapped), and the stylized picture, under the photo here, is scrolled to when it comes (a tour on a phone
    saw the page stay on the unchanged photo while "Done" said the result was under Result)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                            {"width": 360, "height": 740, "deviceScaleFactor": 3, "mobile": True})
    photo = tmp_path / "PXL_20240517_183245123.PORTRAIT.ORIGINAL.png"  # a Pixel's own name for a portrait photo
    photo.write_bytes(make_image(96, 128, seed=61))
    style = tmp_path / "PXL_20240517_183245123_my_favourite_painting.png"
    style.write_bytes(make_image(64, 64, seed=62))
    open_page_with(browser, web, photo, "mosaic")
    browser.find_element(By.ID, "style-upload").send_keys(str(style))
    wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#styles li")) == 2)
    wide = browser.execute_script("return document.documentElement.scrollWidth") - 360  # (the page zooms out to fit
    assert wide <= 0, f"{wide} px wider than a 360-px screen"  # what is wider: innerWidth grows with it)
    clash = browser.execute_script(
        "const li = document.querySelectorAll('#styles li')[1], label = li.querySelector('label');"
        "const remove = [...li.querySelectorAll('button')].pop();"
        "return label.getBoundingClientRect().right - remove.getBoundingClientRect().left;")
    assert clash <= 0, f"the style's name runs {clash} px under its Remove button"
    small = browser.execute_script(
        "return [...document.querySelectorAll('select, input[type=number]')]"
        ".filter(e => parseFloat(getComputedStyle(e).fontSize) < 16).map(e => e.id);")
    assert small == [], small
    browser.find_element(By.CSS_SELECTOR, '#styles li button[aria-label^="Remove"]').send_keys(Keys.ENTER)
    # (keys, not clicks: Selenium finds a control in view by the window's size, not the emulated screen's)
    browser.find_element(By.ID, "submit").send_keys(Keys.ENTER)
    wait_for(browser, lambda d: d.execute_script(
        "const o = document.getElementById('output'); return o.complete && o.naturalWidth > 0;"), timeout=90)
    # the stylized picture's top comes to the upper half of the screen (a smooth scroll: waited for)
    wait_for(browser, lambda d: 0 <= d.execute_script(
        "return document.getElementById('output').closest('figure').getBoundingClientRect().top;") <= 370, timeout=10)
    wide = browser.execute_script("return document.documentElement.scrollWidth") - 360  # (the page zooms out to fit
    assert wide <= 0, f"{wide} px wider than a 360-px screen"  # what is wider: innerWidth grows with it)
    # the phone held sideways: the painting of the portrait photo fits the screen's height (it was 640 x 853 px)
    browser.find_element(By.CSS_SELECTOR, '#gallery button[data-name="waves"]').send_keys(Keys.ENTER)
    browser.find_element(By.ID, "paint").send_keys(Keys.ENTER)
    wait_for(browser, lambda d: d.execute_script("return document.getElementById('paint-canvas').width") == 96)
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                            {"width": 844, "height": 390, "deviceScaleFactor": 3, "mobile": True})
    box = wait_for(browser, lambda d: d.execute_script(
        "const r = document.getElementById('paint-canvas').getBoundingClientRect();"
        "return r.height && [r.width, r.height];"))
    assert box[1] <= 0.85 * 390 + 1 and abs(box[0] / box[1] - 96 / 128) < 0.02, box  # and the photo's shape


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc")
@needs_torch
def test_local_serves_the_page_with_a_server_of_its_own(decoder_path: Path, tmp_path: Path) -> None:
    """adain-web --local: one command for the page on one machine. It starts a server for itself (the settings of
    its ADAIN_* variables), serves photos through it, and on SIGTERM stops it (exit 143), its folder removed."""
    port = free_port()
    env = dict(os.environ, ADAIN_DECODER=str(decoder_path), ADAIN_DEVICE="cpu", ADAIN_BACKEND="torch",
               ADAIN_TORCH_THREADS="1", ADAIN_MAX_REFINE_STEPS="0", TMPDIR=str(tmp_path))
    web = subprocess.Popen([sys.executable, "-m", "adain.web", "--local", "--port", str(port), "--log-level",
                            "warning"], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                           env=env)
    try:
        end = time.monotonic() + 120
        while True:  # the page listens once its server is SERVING
            assert web.poll() is None and time.monotonic() < end, web.stderr.read() if web.poll() is not None else ""
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).json() == {"status": "SERVING"}:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        r = _post(f"http://127.0.0.1:{port}", [_png("content", CONTENT), _png("styles", STYLE)])
        assert r.status_code == 200 and r.headers["x-image-size"] == "64x48", r.text
        servers = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()
                   and _parent_of(p) == web.pid and b"adain.server" in _cmdline(p)]
        assert len(servers) == 1 and len(list(tmp_path.glob("adain-local-*"))) == 1
        web.send_signal(signal.SIGTERM)
        assert web.wait(30) == 143, web.stderr.read()
        assert not Path(f"/proc/{servers[0]}").exists() and not list(tmp_path.glob("adain-local-*"))
    finally:
        if web.poll() is None:
            web.kill()


def _parent_of(proc: Path) -> int:
    try:
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def _cmdline(proc: Path) -> bytes:
    try:
        return (proc / "cmdline").read_bytes()
    except OSError:
        return b""


def test_live_camera_pressed_twice_as_it_opens_leaves_no_camera_on(web: WebProcess, browser) -> None:
    """Live camera pressed again before the camera opened (a double click, a click while the browser's prompt is up)
    opened a second stream and stopped only one: the camera stayed on after Stop (a review of the page's races).
    The page's getUserMedia is wrapped only to keep each stream it gives."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    browser.get(web.url + "/")
    wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#gallery button")) == 3)
    browser.execute_script("""window.streams = [];
      const open = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
      navigator.mediaDevices.getUserMedia = async (c) => {
        const s = await open(c); window.streams.push(s); return s;
      };""")
    browser.find_element(By.CSS_SELECTOR, '#gallery button[data-name="waves"]').click()
    wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#styles li")) == 1)
    ActionChains(browser).double_click(browser.find_element(By.ID, "live-start")).perform()
    frames = "return Number(document.getElementById('live-output').dataset.frames || 0)"
    wait_for(browser, lambda d: d.execute_script(frames) >= 1, timeout=90)
    browser.find_element(By.ID, "live-stop").click()
    tracks = "return window.streams.flatMap((s) => s.getVideoTracks().map((t) => t.readyState))"
    wait_for(browser, lambda d: d.execute_script(tracks) and "live" not in d.execute_script(tracks), timeout=10)


def test_a_clip_folder_removed_by_a_cleaner_is_made_again(server: ServerProcess, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A cleaner of /tmp removed adain-web's clip folder: every clip after failed with 500 until a restart, and a
    finished clip's result was a 500 while its job said done (an operator's storage tour). The folder is made
    again; a result that is gone is 410, saying so."""
    import shutil as sh

    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))
    web = WebProcess(server.target)
    try:
        r = httpx.post(web.url + "/api/videos", files=[_clip(tmp_path, 6), _png("styles", STYLE)], timeout=60)
        assert r.status_code == 202, r.text
        job = _finished(web, r.json())
        assert job["state"] == "done", job
        for folder in temp.glob("adain-web-clips-*"):
            sh.rmtree(folder)
        gone = httpx.get(web.url + job["result"], timeout=30)
        assert gone.status_code == 410 and "gone from this page's temporary folder" in gone.text, gone.text
        r = httpx.post(web.url + "/api/videos", files=[_clip(tmp_path, 6), _png("styles", STYLE)], timeout=60)
        assert r.status_code == 202, r.text
        assert _finished(web, r.json())["state"] == "done"
    finally:
        web.stop()
    assert "Traceback" not in "".join(web.stderr), "".join(web.stderr)


def test_a_killed_pages_clip_folder_is_removed_by_the_next_start_and_a_living_ones_kept(
        server: ServerProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """adain-web killed (SIGKILL: out of memory, a liveness probe) could not remove its clip folder, and each
    restarted container in a pod (whose /tmp emptyDir outlives it) kept its predecessor's clips beside its own until
    the pod was evicted. The next start removes a killed page's folder; a living page's (the same temporary folder
    shared) and an older version's are kept."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))
    older = temp / "adain-web-videos-abc123"  # (a version before the lock: never taken for a dead one's)
    older.mkdir()
    os.mkfifo(temp / "adain-web-clips-fifo")  # (opened to be locked, a pipe waited for a writer: no start)
    killed, living = WebProcess(server.target), WebProcess(server.target)
    try:
        folders = {}
        for name, web in (("killed", killed), ("living", living)):
            r = httpx.post(web.url + "/api/videos", files=[_clip(tmp_path, 3), _png("styles", STYLE)], timeout=60)
            assert r.status_code == 202, r.text
            assert _finished(web, r.json())["state"] == "done"
            folders[name] = set(temp.glob("adain-web-clips-*")) - {*folders.values(), temp / "adain-web-clips-fifo"}
            assert len(folders[name]) == 1, folders
            folders[name] = folders[name].pop()
            assert any(f.name == "result.mp4" for f in folders[name].rglob("*")), list(folders[name].rglob("*"))
        killed.proc.kill()
        killed.proc.wait(15)
        assert folders["killed"].is_dir()  # what it left
        restarted = WebProcess(server.target)
        try:
            assert not folders["killed"].exists(), list(temp.iterdir())
            assert folders["living"].is_dir() and older.is_dir(), list(temp.iterdir())
            r = httpx.post(restarted.url + "/api/videos", files=[_clip(tmp_path, 3), _png("styles", STYLE)],
                           timeout=60)
            assert _finished(restarted, r.json())["state"] == "done"
        finally:
            restarted.stop()
        assert "left by adain-web processes that ended without removing them" in "".join(restarted.stderr), \
            "".join(restarted.stderr)
        assert "Traceback" not in "".join(restarted.stderr), "".join(restarted.stderr)
        assert folders["living"].is_dir()  # a page that stops removes its own
    finally:
        living.stop()
    assert not folders["living"].exists()
    assert {f.name for f in temp.iterdir()} == {older.name, "adain-web-clips-fifo"}, list(temp.iterdir())


def test_a_full_or_read_only_temporary_folder_is_said_as_such() -> None:
    """A full temporary folder (uploads spooled there, clips kept there) answered 500 INTERNAL with a traceback (an
    operator's storage tour): 507 RESOURCE_EXHAUSTED naming it, whatever wraps the error."""
    import errno

    from adain.web.app import storage_error
    from adain.web.video import _storage_said

    full = OSError(errno.ENOSPC, "No space left on device")
    try:
        try:
            raise full
        except OSError as e:
            raise RuntimeError("copying the upload failed") from e
    except RuntimeError as wrapped:
        group = Exception("a task group's")  # (an ExceptionGroup's members, on Python 3.10 too)
        group.exceptions = (wrapped,)  # type: ignore[attr-defined]
        said = storage_error(group)
    assert said is not None and said.endswith("is full: it cannot take uploads or clips now; try again later "
                                              "(its operator is told)"), said
    assert "is read-only" in storage_error(OSError(errno.EROFS, "Read-only file system"))
    assert storage_error(OSError(errno.ENOENT, "No such file")) is None and storage_error(ValueError()) is None
    assert _storage_said("out.mp4: cannot write the video: [Errno 28] No space left on device") == "is full"
    assert _storage_said("out.mp4: cannot write the video: Invalid argument") is None


def test_a_clip_waits_for_a_stream_of_the_servers_when_all_are_taken(decoder_path: Path, tmp_path: Path) -> None:
    """A clip job was accepted (202) and failed a second later, "2 video streams are running, the limit is
    max_video_streams=2", a flag the visitor cannot act on (a soak's SRE): it waits as the server asks (RetryInfo),
    up to STREAM_WAIT_S, before its first frame."""
    import threading

    from adain.client import StyleTransferClient

    srv = ServerProcess(decoder_path, "--max-video-streams", "1", *NO_REFINE)
    web = None
    try:
        srv.wait_serving()
        web = WebProcess(srv.target)
        go = threading.Event()

        def slow_frames():
            yield make_image(64, 48, seed=1)
            go.wait(60)  # the server's one stream is held until the page's clip has been refused once

        with StyleTransferClient(srv.target, timeout=120) as other:
            holder = threading.Thread(target=lambda: list(other.stylize_video(slow_frames(), STYLE)))
            holder.start()
            time.sleep(1.5)  # its stream is open
            r = httpx.post(web.url + "/api/videos", files=[_clip(tmp_path, 6), _png("styles", STYLE)], timeout=60)
            assert r.status_code == 202, r.text
            time.sleep(2)
            job = httpx.get(f"{web.url}/api/videos/{r.json()['id']}", timeout=10).json()
            assert job["state"] == "running", job  # waiting, not failed
            go.set()
            holder.join(60)
            assert _finished(web, job)["state"] == "done"
    finally:
        if web is not None:
            web.stop()
        srv.terminate()
