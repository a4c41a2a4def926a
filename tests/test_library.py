"""The server's style library (--styles-dir): styles named in requests, listed, followed on disk; the CLI
and the web page use it. Real server, real client, real browser."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from PIL import Image

from adain.client import LibraryPreset, Preset, StyleRef, StyleTransferClient, StyleTransferError
from adain.client.aio import AsyncStyleTransferClient
from adain.client.cli import main as cli
from adain.image import load_image
from adain.v1 import style_transfer_pb2 as pb
from adain.v1 import style_transfer_pb2_grpc as pb_grpc
from helpers import NO_REFINE, ServerProcess, WebProcess, browser_or_skip, needs_torch, wait_for
from synth import make_image, make_video, pixels

CONTENT = make_image(64, 48, seed=51)
DOTS = make_image(40, 40, seed=52, kind="noise")
STRIPES = make_image(48, 32, seed=53, fmt="JPEG")
TINY = make_image(4, 4, seed=58)  # decodes, but too small to carry a style: every call naming it would fail


def _put(folder: Path, name: str, data: bytes) -> None:
    """Write as an operator should: a temporary name, then a rename (never a half-written style)."""
    tmp = folder / f".{name}.tmp"
    tmp.write_bytes(data)
    os.replace(tmp, folder / name)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("styles")
    (root / "dots.png").write_bytes(DOTS)
    (root / "stripes.jpg").write_bytes(STRIPES)
    (root / "README.txt").write_text("not a style: ignored")
    (root / "presets.json").write_text(json.dumps(
        {"dotted": {"styles": {"dots": 0.75, "stripes": 0.25}, "alpha": 0.8, "preserve_color": "luminance"}}))
    (root / ".hidden.png").write_bytes(b"ignored too")
    return root


@pytest.fixture(scope="module")
def lib_server(decoder_path: Path, folder: Path) -> Iterator[ServerProcess]:
    srv = ServerProcess(decoder_path, "--styles-dir", str(folder), "--log-level", "INFO", *NO_REFINE)
    try:
        srv.wait_serving()
        yield srv
    finally:
        code = srv.terminate()
    assert code == 0, "".join(srv.stderr_lines)
    assert "Traceback" not in "".join(srv.stderr_lines)


@pytest.fixture(scope="module")
def lib_client(lib_server: ServerProcess) -> Iterator[StyleTransferClient]:
    with StyleTransferClient(lib_server.target, timeout=60) as c:
        yield c


def _names(client: StyleTransferClient) -> list[str]:
    return [s.name for s in client.list_styles()]


def _until(condition, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "the server did not follow the folder"
        time.sleep(0.2)


def test_thumbnails_of_many_sizes_read_the_style_once(monkeypatch) -> None:
    """A fifth size cleared the kept ones and decoded the style's file again, for every style of the list
    (0.2 s each for a 12-MP photo): sizes now come from one MAX_THUMBNAIL-px copy, the last four kept."""
    import adain.server.library as library

    data = make_image(600, 400, seed=3)
    style = library.LibraryStyle("big", hashlib.sha256(data).hexdigest(), data, 600, 400, (0, 0, 0), Path("big.png"))
    reads = []
    monkeypatch.setattr(library, "load_image", lambda *a, **k: reads.append(1) or load_image(*a, **k))
    for size in (16, 64, 512, 100, 200, 16, 64):
        thumb = Image.open(io.BytesIO(style.thumbnail(size)))
        assert thumb.format == "JPEG" and thumb.size == (size, round(size * 2 / 3)), (size, thumb.size)
    assert len(reads) == 1 and list(style._thumbnails) == [512, 100, 200, 16, 64][1:]


def test_library_styles_are_listed_and_named_in_requests(lib_server: ServerProcess,
                                                         lib_client: StyleTransferClient) -> None:
    styles = lib_client.list_styles()
    assert [(s.name, s.width, s.height, s.thumbnail) for s in styles] == [("dots", 40, 40, b""),
                                                                          ("stripes", 48, 32, b"")]
    assert styles[0].style_id == hashlib.sha256(DOTS).hexdigest()
    for s in lib_client.list_styles(thumbnail_size=16):
        thumb = Image.open(io.BytesIO(s.thumbnail))
        assert thumb.format == "JPEG" and max(thumb.size) == 16
    assert lib_client.server_info()["library_styles"] == 2

    by_name = lib_client.stylize(CONTENT, "id:dots")
    by_bytes = lib_client.stylize(CONTENT, DOTS)
    assert np.array_equal(pixels(by_name.image), pixels(by_bytes.image))
    blend = lib_client.stylize(CONTENT, [StyleRef("stripes"), (DOTS, 0.5)], alpha=0.8)
    assert (blend.width, blend.height) == (64, 48)
    frames = list(lib_client.stylize_video([CONTENT, CONTENT], styles[1].ref, temporal="none"))
    assert len(frames) == 2

    async def listed() -> list[str]:
        async with AsyncStyleTransferClient(lib_server.target) as c:
            return [s.name for s in await c.list_styles()]

    assert asyncio.run(listed()) == ["dots", "stripes"]


def test_presets_name_a_look(lib_server: ServerProcess, lib_client: StyleTransferClient) -> None:
    """A preset is its styles, weights, alpha and colour mode; a call's own alpha or colour mode wins."""
    assert lib_client.list_presets() == [LibraryPreset("dotted", (("dots", 0.75), ("stripes", 0.25)), 0.8, "luminance")]
    by_preset = lib_client.stylize(CONTENT, Preset("dotted"))
    explicit = lib_client.stylize(CONTENT, [(DOTS, 0.75), (STRIPES, 0.25)], alpha=0.8, preserve_color="luminance")
    assert np.array_equal(pixels(by_preset.image), pixels(explicit.image))
    assert lib_client.stylize(CONTENT, "preset:dotted").image == by_preset.image
    own = lib_client.stylize(CONTENT, Preset("dotted"), alpha=1.0, preserve_color="coral")
    mine = lib_client.stylize(CONTENT, [(DOTS, 0.75), (STRIPES, 0.25)], alpha=1.0, preserve_color="coral")
    assert np.array_equal(pixels(own.image), pixels(mine.image))
    # "none" is a choice of its own (an unset field is the preset's): the styles' colours, with the preset
    plain = lib_client.stylize(CONTENT, Preset("dotted"), preserve_color="none")
    assert np.array_equal(pixels(plain.image), pixels(lib_client.stylize(CONTENT, [(DOTS, 0.75), (STRIPES, 0.25)],
                                                                           alpha=0.8).image))
    assert not np.array_equal(pixels(plain.image), pixels(by_preset.image))
    assert len(list(lib_client.stylize_video([CONTENT, CONTENT], Preset("dotted"), temporal="none"))) == 2
    # per-style regions with a preset: its styles are the server's, none here to count (it was "2 masks for 0
    # styles"); an empty name is said as one (it was "at least 1 style is required")
    for options in ({"masks": [CONTENT, CONTENT]}, {"labels": CONTENT, "label_values": [1, 2]}):
        with pytest.raises(StyleTransferError) as e:
            lib_client.stylize(CONTENT, Preset("dotted"), **options)
        assert "a preset's styles carry no" in e.value.details and e.value.violations[0][0] in options
    with pytest.raises(StyleTransferError, match=r"preset: an empty preset name \(list_presets"):
        lib_client.stylize(CONTENT, "preset:")
    with pytest.raises(StyleTransferError) as e:
        lib_client.stylize(CONTENT, Preset("dottted"))
    assert e.value.violations == [("preset", "no preset named 'dottted' on this server (it has: dotted; see "
                                   "ListStyles)")]
    with grpc.insecure_channel(lib_server.target) as channel:  # both at once: which did the caller mean?
        request = pb.StylizeRequest(content=CONTENT, styles=[pb.Style(image=DOTS)], preset="dotted")
        with pytest.raises(grpc.RpcError) as raw:
            pb_grpc.StyleTransferStub(channel).Stylize(request, timeout=60)
    assert raw.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "preset: give styles or a preset, not both" in raw.value.details()
    # a preset's style refused at the size asked for is the preset's: the request has no styles[1]
    with pytest.raises(StyleTransferError) as e:
        lib_client.stylize(CONTENT, Preset("dotted"), style_size=20)
    assert e.value.violations == [("preset", "styles[1] of preset 'dotted': 20 x 13 px as used (style_size 20) is "
                                   "too small to carry a style: its shorter side needs 16 px")], e.value.violations


def test_preset_weights_are_checked_as_float32(tmp_path: Path) -> None:
    """1e39 is finite as JSON reads it and inf as a call carries it: every call with the preset failed."""
    from adain.server.library import read_presets

    for weights in ({"a": 1e39}, {"a": 1e-46}):
        (tmp_path / "presets.json").write_text(json.dumps({"p": {"styles": weights}}))
        with pytest.raises(ValueError, match=r"preset 'p': weights must be numbers >= 0 and at most 3.4e38"):
            read_presets(tmp_path / "presets.json")


def test_unknown_names_say_what_the_library_has(lib_client: StyleTransferClient, client: StyleTransferClient) -> None:
    with pytest.raises(StyleTransferError) as e:
        lib_client.stylize(CONTENT, ["id:dots", "id:dot"])
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.violations == [("styles[1].style_id", "no style named 'dot' in this server's library (it has: "
                                   "dots, stripes; see ListStyles)")]
    with pytest.raises(StyleTransferError) as e:
        lib_client.list_styles(thumbnail_size=513)
    assert e.value.violations == [("thumbnail_size", "must be at most 512, got 513")]
    # A server without a library lists nothing and says so when a name comes.
    assert client.list_styles() == []
    with pytest.raises(StyleTransferError) as e:
        client.stylize(CONTENT, "id:dots")
    assert "this server has no style library" in e.value.details


def test_the_cli_lists_and_names_library_styles(lib_server: ServerProcess, lib_client: StyleTransferClient,
                                                 tmp_path: Path, capsys) -> None:
    srv = ["--server", lib_server.target]
    assert cli(["--list-styles", *srv, "--thumbnails", str(tmp_path / "thumbs")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["dots", "stripes", "preset:dotted"] and "40 x 40" in lines[0]
    assert lines[2] == "preset:dotted  dots 0.75 + stripes 0.25; alpha 0.8; colours: luminance"
    assert sorted(p.name for p in (tmp_path / "thumbs").iterdir()) == ["dots.jpg", "stripes.jpg"]
    assert cli(["--server-info", *srv]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["library_styles"] == 2 and info["health"] == "SERVING" and info["limits"]["max_styles"] == 8
    content, out = tmp_path / "photo.png", tmp_path / "out.png"
    content.write_bytes(CONTENT)
    assert cli([str(content), "-s", "id:dots:0.5", "-s", "id:stripes", "-o", str(out), *srv]) == 0
    assert Image.open(out).size == (64, 48)
    assert cli([str(content), "-s", "preset:dotted", "-o", str(out), *srv]) == 0
    kept = pixels(out.read_bytes())
    assert cli([str(content), "-s", "preset:dotted", "--preserve-color", "none", "-o", str(out), *srv]) == 0
    assert not np.array_equal(pixels(out.read_bytes()), kept)  # the styles' colours, not the preset's luminance
    # a preset's one --mask is its two styles' mask (it was "1 mask for 0 styles"): the same as the client's mask=
    mask = tmp_path / "mask.png"
    Image.fromarray(np.tile(np.arange(64, dtype=np.uint8) * 4, (48, 1))).save(mask)
    assert cli([str(content), "-s", "preset:dotted", "--mask", str(mask), "-o", str(out), *srv]) == 0
    masked = lib_client.stylize(CONTENT, Preset("dotted"), mask=mask.read_bytes())
    assert np.array_equal(pixels(out.read_bytes()), pixels(masked.image))
    capsys.readouterr()
    assert cli([str(content), "-s", "preset:dotted", "-s", "id:dots", "-o", str(out), *srv]) == 1
    assert "stands alone" in capsys.readouterr().err
    capsys.readouterr()
    assert cli([str(content), "-s", "dots", "-o", str(out), *srv]) == 1
    assert "a style of the server's library is id:dots" in capsys.readouterr().err


def test_the_web_page_offers_the_library(lib_server: ServerProcess, lib_client: StyleTransferClient,
                                         tmp_path: Path) -> None:
    web = WebProcess(lib_server.target)
    try:
        info = httpx.get(web.url + "/api/info").json()
        assert info["examples"] == [{"name": n, "url": f"/api/styles/{n}.jpg", "style": f"id:{n}"}
                                    for n in ("dots", "stripes")]
        assert info["presets"] == [{"name": "dotted", "styles": [{"style": "dots", "weight": 0.75},
                                                                 {"style": "stripes", "weight": 0.25}],
                                    "alpha": 0.8, "preserve_color": "luminance"}]
        thumb = httpx.get(web.url + "/api/styles/dots.jpg")
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
        assert httpx.get(web.url + "/api/styles/nope.jpg").status_code == 404
        files = [("content", ("c.png", CONTENT, "image/png"))]
        r = httpx.post(web.url + "/api/stylize", files=files, data={"styles": "id:dots"}, timeout=60)
        assert r.status_code == 200, r.text
        assert np.array_equal(pixels(r.content), pixels(lib_client.stylize(CONTENT, DOTS).image))
        for sent, field in (("dots", "styles[0]"), ("id:nope", "styles[0].style_id")):
            r = httpx.post(web.url + "/api/stylize", files=files, data={"styles": sent}, timeout=60)
            assert r.status_code == 400 and r.json()["error"]["violations"][0]["field"] == field, r.text
        # a clip naming a style the library lacks: refused at the upload as a photo is (it was a 202, then a failed
        # job); one it has starts
        make_video(tmp_path / "clip.mp4", frames=4)
        clip = [("content", ("clip.mp4", (tmp_path / "clip.mp4").read_bytes(), "video/mp4"))]
        r = httpx.post(web.url + "/api/videos", files=clip, data={"styles": ["id:dots", "id:nope"]}, timeout=60)
        assert r.status_code == 400 and r.json()["error"]["violations"] == [{
            "field": "styles[1].style_id", "description": "no style named 'nope' in this server's library (it has: "
            "dots, stripes; see ListStyles)"}], r.text  # the server's own words (adain.wire.no_library_style)
        for name in ("id:dots", "id:" + "AB" * 32):  # a registered style's id, upper case too, is the server's to say
            r = httpx.post(web.url + "/api/videos", files=clip, data={"styles": name}, timeout=60)
            assert r.status_code == 202, r.text
            httpx.delete(f"{web.url}/api/videos/{r.json()['id']}")

        driver = browser_or_skip()
        try:
            from selenium.webdriver.common.by import By

            photo = tmp_path / "photo.png"
            photo.write_bytes(make_image(96, 64, seed=54))
            driver.get(web.url + "/")
            wait_for(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#gallery button")) == 2)
            wait_for(driver, lambda d: d.execute_script(  # the thumbnails came from the server's library
                "return [...document.querySelectorAll('#gallery img')].every(i => i.complete && i.naturalWidth)"))
            driver.find_element(By.ID, "content").send_keys(str(photo))
            driver.find_element(By.CSS_SELECTOR, '#presets button[data-preset="dotted"]').click()  # a preset: its
            wait_for(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#styles li")) == 2)  # styles, weights,
            assert [driver.find_element(By.ID, f"weight-{i}-value").text for i in (0, 1)] == ["0.75", "0.25"]
            assert driver.find_element(By.ID, "alpha-value").text == "0.80"  # strength and colours, set by hand
            assert driver.find_element(By.ID, "preserve_color").get_attribute("value") == "luminance"
            pressed = "return document.querySelector('#presets button[data-preset=\"dotted\"]')" \
                ".getAttribute('aria-pressed')"
            wait_for(driver, lambda d: d.execute_script(pressed) == "true")  # the preset on shows (it never did)
            driver.execute_script("const a = document.getElementById('alpha'); a.value = '0.5';"
                                  "a.dispatchEvent(new Event('input'));")
            assert driver.execute_script(pressed) == "false"  # changed by hand: no longer the preset
            driver.find_element(By.CSS_SELECTOR, '#presets button[data-preset="dotted"]').click()
            wait_for(driver, lambda d: d.execute_script(pressed) == "true")
            # a double click on a slow line: its styles once (they were doubled: the two runs interleaved)
            from selenium.webdriver.common.action_chains import ActionChains

            driver.execute_cdp_cmd("Network.enable", {})
            driver.execute_cdp_cmd("Network.setCacheDisabled", {"cacheDisabled": True})
            slow = {"offline": False, "latency": 300, "downloadThroughput": -1, "uploadThroughput": -1}
            driver.execute_cdp_cmd("Network.emulateNetworkConditions", slow)
            ActionChains(driver).double_click(
                driver.find_element(By.CSS_SELECTOR, '#presets button[data-preset="dotted"]')).perform()
            time.sleep(3)
            driver.execute_cdp_cmd("Network.emulateNetworkConditions", {**slow, "latency": 0})
            assert len(driver.find_elements(By.CSS_SELECTOR, "#styles li")) == 2
            wait_for(driver, lambda d: d.execute_script(pressed) == "true")
            driver.find_element(By.ID, "submit").click()
            size = wait_for(driver, lambda d: d.execute_script(
                "const i = document.getElementById('output'); return i.complete && i.naturalWidth ? "
                "[i.naturalWidth, i.naturalHeight] : null;"))
            assert size == [96, 64]
        finally:
            driver.quit()
    finally:
        web.stop()


def test_the_folder_is_followed_without_a_restart(lib_server: ServerProcess, lib_client: StyleTransferClient,
                                                  folder: Path) -> None:
    """Added, replaced, broken and removed files; the server serves throughout (runs last: it edits the folder)."""
    before = lib_client.stylize(CONTENT, "id:dots")
    _put(folder, "new.png", make_image(32, 32, seed=55))
    _until(lambda: "new" in _names(lib_client))
    assert lib_client.stylize(CONTENT, "id:new").width == 64

    other = make_image(40, 40, seed=56, kind="noise")  # dots.png replaced: a new id, no stale statistics
    _put(folder, "dots.png", other)
    _until(lambda: lib_client.list_styles()[0].style_id == hashlib.sha256(other).hexdigest())
    after = lib_client.stylize(CONTENT, "id:dots")
    assert not np.array_equal(pixels(after.image), pixels(before.image))
    assert np.array_equal(pixels(after.image), pixels(lib_client.stylize(CONTENT, other).image))

    stripes_id = lib_client.list_styles()[2].style_id
    _put(folder, "broken.png", DOTS[: len(DOTS) // 2])  # a new bad file is left out
    _put(folder, "stripes.jpg", b"not an image any more")  # a bad copy keeps the last good image
    _until(lambda: any("broken.png" in line for line in lib_server.stderr_lines)
           and any("stripes.jpg" in line for line in lib_server.stderr_lines))
    listed = {s.name: s.style_id for s in lib_client.list_styles()}
    assert sorted(listed) == ["dots", "new", "stripes"] and listed["stripes"] == stripes_id
    assert lib_client.stylize(CONTENT, "id:stripes").width == 64

    _put(folder, "bad name.png", DOTS)  # a name that cannot be one is left out; the rest still follows the folder
    _put(folder, "later.png", DOTS)
    _until(lambda: "later" in _names(lib_client))
    assert "bad name" not in _names(lib_client)
    assert any("bad name.png" in line and "left out" in line for line in lib_server.stderr_lines)

    # A style that could never be used (4 x 4: too small to carry a style) is never offered: a new one is left
    # out, and a copy over a served style keeps its last good image.
    later_id = {s.name: s.style_id for s in lib_client.list_styles()}["later"]
    _put(folder, "tiny.png", TINY)
    _put(folder, "later.png", TINY)
    small = "4 x 4 px as used (style_size 512) is too small to carry a style: its shorter side needs 16 px"
    _until(lambda: any("tiny.png" in line and small in line and "left out" in line for line in lib_server.stderr_lines)
           and any("later.png" in line and small in line and "keeping its last good image" in line
                   for line in lib_server.stderr_lines))
    listed = {s.name: s.style_id for s in lib_client.list_styles()}
    assert "tiny" not in listed and listed["later"] == later_id
    assert lib_client.server_info()["library_styles"] == len(listed)
    assert lib_client.stylize(CONTENT, "id:later").width == 64
    with pytest.raises(StyleTransferError, match="no style named 'tiny'"):
        lib_client.stylize(CONTENT, "id:tiny")

    (folder / "new.png").unlink()
    _until(lambda: "new" not in _names(lib_client))
    assert sum("broken.png" in line for line in lib_server.stderr_lines) == 1  # one warning, not one a second
    assert sum("tiny.png" in line for line in lib_server.stderr_lines) == 1
    with pytest.raises(StyleTransferError, match="no style named 'new'"):
        lib_client.stylize(CONTENT, "id:new")
    assert lib_server.alive()


def test_a_second_file_of_one_name_does_not_displace_the_first(tmp_path: Path) -> None:
    """mosaic.png served, then mosaic.jpg copied beside it: the png stays (the newcomer is left out, with a
    warning); once the png goes, the jpg is the style; two new files of one name are both left out."""
    from adain.server.library import StyleLibrary

    _put(tmp_path, "mosaic.png", DOTS)
    library = StyleLibrary(str(tmp_path), 1 << 24)
    served = {s.name: s.id for s in library.styles()}
    _put(tmp_path, "mosaic.jpg", STRIPES)
    library.refresh()
    assert {s.name: s.id for s in library.styles()} == served == {"mosaic": hashlib.sha256(DOTS).hexdigest()}
    (tmp_path / "mosaic.png").unlink()
    library.refresh()
    assert {s.name: s.id for s in library.styles()} == {"mosaic": hashlib.sha256(STRIPES).hexdigest()}
    _put(tmp_path, "wave.png", DOTS)
    _put(tmp_path, "wave.webp", make_image(32, 32, seed=57, fmt="WEBP"))
    library.refresh()
    assert [s.name for s in library.styles()] == ["mosaic"]



MONCH, MONCH_NFD = "M\u00f6nch", "Mo\u0308nch"  # one name: composed (a keyboard's), decomposed (a Mac folder's)


def test_names_in_any_script_are_served_composed_or_not(decoder_path: Path, tmp_path: Path, capsys) -> None:
    """A tester's "ゴッホ.png" failed the start (names were ASCII only) and "id:ゴッホ" was refused as no name. Any
    script's letters are names now, composed (NFC): a Mac's folder stores "Mönch" decomposed, a keyboard types it
    composed, and either finds it, in a call, a preset and the CLI."""
    _put(tmp_path, "ゴッホ.png", DOTS)
    _put(tmp_path, MONCH_NFD + ".jpg", STRIPES)
    _put(tmp_path, "हिन्दी.png", make_image(40, 40, seed=59, kind="noise"))  # (vowel signs: marks after letters)
    (tmp_path / "presets.json").write_text(json.dumps({"夜": {"styles": {"ゴッホ": 1, MONCH_NFD: 1}}}))
    srv = ServerProcess(decoder_path, "--styles-dir", str(tmp_path), *NO_REFINE)
    try:
        srv.wait_serving()
        with StyleTransferClient(srv.target, timeout=60) as client:
            assert _names(client) == sorted([MONCH, "ゴッホ", "हिन्दी"])
            by_bytes = pixels(client.stylize(CONTENT, STRIPES).image)
            for name in (MONCH, MONCH_NFD):
                assert np.array_equal(pixels(client.stylize(CONTENT, f"id:{name}").image), by_bytes), name
            assert np.array_equal(pixels(client.stylize(CONTENT, StyleRef("ゴッホ")).image),
                                  pixels(client.stylize(CONTENT, DOTS).image))
            _, presets = client.library()
            assert [(p.name, p.styles) for p in presets] == [("夜", (("ゴッホ", 1.0), (MONCH, 1.0)))]
            assert client.stylize(CONTENT, Preset("夜")).width == 64
        work = tmp_path / "cli"  # not the styles folder: the library rescans it, and a photo there is a style
        work.mkdir()
        content, out = work / "photo.png", work / "out.png"
        content.write_bytes(CONTENT)
        capsys.readouterr()
        assert cli([str(content), "-s", f"id:{MONCH}", "-o", str(out), "--server", srv.target]) == 0
        assert np.array_equal(pixels(out.read_bytes()), by_bytes)
        capsys.readouterr()
        assert cli(["--list-styles", "--server", srv.target]) == 0
        listed = capsys.readouterr().out.splitlines()
        assert [line.split()[0] for line in listed] == [*sorted([MONCH, "ゴッホ", "हिन्दी"]), "preset:夜"], listed
    finally:
        srv.kill()


def test_a_name_given_twice_by_its_two_forms_is_two_files_of_one_name(tmp_path: Path) -> None:
    """"Mönch.png" composed beside "Mönch.jpg" decomposed: one name (either finds it), so two files of it, as
    mosaic.png beside mosaic.jpg; a name no script writes (a space, a right-to-left override) is refused."""
    from adain.server.library import StyleLibrary
    from web.checks import BadInput, style_name

    _put(tmp_path, MONCH + ".png", DOTS)
    _put(tmp_path, MONCH_NFD + ".jpg", STRIPES)
    with pytest.raises(ValueError, match=f"two files give the style name '{MONCH}'"):
        StyleLibrary(str(tmp_path), 1 << 24)
    for bad in ("a b.png", "ab\u202egpj.png"):
        folder = tmp_path / str(len(bad))
        folder.mkdir()
        _put(folder, bad, DOTS)
        with pytest.raises(ValueError, match="a style's name .* must be 1-64 letters or digits of any script"):
            StyleLibrary(str(folder), 1 << 24)
    # the web page's form takes the names the library can have (it refused "id:ゴッホ"), composed
    assert style_name(f"id:{MONCH_NFD}", "styles[0]") == StyleRef(MONCH)
    with pytest.raises(BadInput, match="no style named 'a b': a style name is 1-64 letters or digits of any script"):
        style_name("id:a b", "styles[0]")

def test_a_preset_whose_style_goes_is_left_out_until_it_comes_back(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """Presets were checked only when presets.json changed: a style file removed left its preset offered (the page
    showed its button) and every call naming it failed, with no warning."""
    from adain.server.library import StyleLibrary

    _put(tmp_path, "a.png", DOTS)
    _put(tmp_path, "b.png", STRIPES)
    (tmp_path / "presets.json").write_text(json.dumps({"ab": {"styles": {"a": 1, "b": 1}}, "a": {"styles": {"a": 1}}}))
    library = StyleLibrary(str(tmp_path), 1 << 24)
    assert [p.name for p in library.presets()] == ["a", "ab"]
    (tmp_path / "b.png").unlink()
    with caplog.at_level(logging.WARNING, logger="adain.server"):
        library.refresh()
        library.refresh()
    assert [p.name for p in library.presets()] == ["a"] and library.preset("ab") is None
    assert [r.getMessage() for r in caplog.records] == [
        f"{tmp_path / 'presets.json'}: preset 'ab' names 'b', which the library has no style of (left out until it "
        "has)"]
    _put(tmp_path, "b.png", STRIPES)
    library.refresh()
    assert [p.name for p in library.presets()] == ["a", "ab"]


def test_a_preset_this_server_could_never_serve_is_refused_at_start(tmp_path: Path) -> None:
    """A preset blending more styles than --max-styles would fail every call that names it: said at start."""
    from adain.server.library import StyleLibrary

    _put(tmp_path, "a.png", DOTS)
    _put(tmp_path, "b.jpg", STRIPES)
    (tmp_path / "presets.json").write_text(json.dumps({"both": {"styles": {"a": 1, "b": 1}}}))
    assert [p.name for p in StyleLibrary(str(tmp_path), 1 << 24, max_styles=2).presets()] == ["both"]
    with pytest.raises(ValueError, match="preset 'both' blends 2 styles, over this server's max_styles=1"):
        StyleLibrary(str(tmp_path), 1 << 24, max_styles=1)


def test_a_style_too_small_at_the_style_size_is_not_taken(tmp_path: Path) -> None:
    """The size that counts is the style's as used, scaled to the default style size: 600 x 20 is 512 x 17 at
    512 (taken) and 256 x 9 at 256 (refused), as the Stylizer would refuse every call naming it."""
    from adain.server.library import StyleLibrary

    _put(tmp_path, "thin.png", make_image(600, 20, seed=59))
    assert [s.name for s in StyleLibrary(str(tmp_path), 1 << 24).styles()] == ["thin"]
    with pytest.raises(ValueError, match=r"thin.png: 256 x 9 px as used \(style_size 256\) is too small to carry a "
                                         r"style: its shorter side needs 16 px"):
        StyleLibrary(str(tmp_path), 1 << 24, style_size=256)


def test_a_style_the_model_cannot_prepare_is_taken_back(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """What the server's warm-up finds (reject): a replaced style keeps its last good image, a new one is left
    out, and that version of the file is not read again until it changes; one warning each."""
    from adain.server.library import StyleLibrary

    _put(tmp_path, "a.png", DOTS)
    library = StyleLibrary(str(tmp_path), 1 << 24)
    good = library.get("a")
    _put(tmp_path, "a.png", make_image(40, 40, seed=60))
    _put(tmp_path, "b.jpg", STRIPES)
    library.refresh()
    assert library.get("a") is not good
    with caplog.at_level(logging.WARNING, logger="adain.server"):
        library.reject(library.get("a"), "cannot be prepared")
        library.reject(library.get("b"), "cannot be prepared")
        library.refresh()
        library.refresh()
    assert library.styles() == [good]
    assert [r.getMessage() for r in caplog.records] == [
        f"style {tmp_path / 'a.png'}: cannot be prepared (keeping its last good image)",
        f"style {tmp_path / 'b.jpg'}: cannot be prepared (left out)"]
    _put(tmp_path, "b.jpg", make_image(48, 32, seed=61, fmt="JPEG"))  # a new version is read again
    library.refresh()
    assert [s.name for s in library.styles()] == ["a", "b"] and library.get("a") is good


@pytest.mark.parametrize("case", ["missing", "same-name", "bad-name", "corrupt", "preset", "too-small"])
def test_a_bad_library_fails_the_start_naming_the_file(decoder_path: Path, tmp_path: Path, case: str) -> None:
    styles = tmp_path / "styles"
    if case != "missing":
        styles.mkdir()
        (styles / "ok.png").write_bytes(DOTS)
    expected = {"missing": "no such folder", "same-name": "two files give the style name 'ok'",
                # (escaped, on one line: the plain start error printed it raw, split, the terminal turned red)
                "bad-name": "my style\\n\\x1b[31m.png: a style's name", "corrupt": "bad.jpg: image data is truncated",
                "preset": "preset 'p' names 'nope', which the library has no style of",
                "too-small": "tiny.png: 4 x 4 px as used (style_size 512) is too small to carry a style: its shorter "
                             "side needs 16 px"}[case]
    if case == "same-name":
        (styles / "ok.jpg").write_bytes(STRIPES)
    elif case == "bad-name":
        (styles / "my style\n\x1b[31m.png").write_bytes(DOTS)
    elif case == "corrupt":
        (styles / "bad.jpg").write_bytes(STRIPES[: len(STRIPES) // 2])
    elif case == "preset":
        (styles / "presets.json").write_text(json.dumps({"p": {"styles": {"ok": 1, "nope": 1}}}))
    elif case == "too-small":
        (styles / "tiny.png").write_bytes(TINY)
    with pytest.raises(RuntimeError) as e:
        ServerProcess(decoder_path, "--styles-dir", str(styles))
    assert "--styles-dir" in str(e.value) and expected in str(e.value)


def _warnings(caplog: pytest.LogCaptureFixture, text: str) -> int:
    return sum(text in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_a_fault_that_goes_and_comes_back_is_warned_about_again(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """One warning per fault while it lasts (a pass a second repeats none), but a fault fixed or gone is
    forgotten: a bad name or an outage of the folder that comes back weeks later is warned about again (it
    was never logged again), and what is remembered is what the folder holds now, not every bad version a
    sync tool's partial writes ever made."""
    from adain.server.library import StyleLibrary

    styles = tmp_path / "styles"
    styles.mkdir()
    _put(styles, "a.png", DOTS)
    library = StyleLibrary(str(styles), 1 << 24)
    good = library.get("a")
    with caplog.at_level(logging.WARNING, logger="adain.server"):
        # a name that cannot be one: warned, gone, back -> warned again
        _put(styles, "bad name.png", DOTS)
        library.refresh()
        library.refresh()
        assert _warnings(caplog, "bad name.png") == 1
        (styles / "bad name.png").unlink()
        library.refresh()
        _put(styles, "bad name.png", DOTS)
        library.refresh()
        assert _warnings(caplog, "bad name.png") == 2
        (styles / "bad name.png").unlink()

        # the folder unreadable (a volume gone), readable, unreadable again -> two warnings
        away = tmp_path / "away"
        for _ in range(2):
            styles.rename(away)
            library.refresh()
            library.refresh()
            away.rename(styles)
            library.refresh()
            assert library.styles() == [good]
        assert _warnings(caplog, "cannot be read") == 2

        # a file rewritten in place (each partial write a version): one warning each, only the current kept
        for i in range(5):
            (styles / "a.png").write_bytes(DOTS[: len(DOTS) // 2 + i])
            os.utime(styles / "a.png", ns=(i * 10**9, i * 10**9))  # each write a version, however fast
            library.refresh()
            library.refresh()
            assert library.styles() == [good]
        assert _warnings(caplog, "a.png") == 5 and len(library._warned) == 1
        _put(styles, "a.png", STRIPES)  # written whole: read, and nothing is remembered against it
        library.refresh()
        assert library.get("a").id == hashlib.sha256(STRIPES).hexdigest() and library._warned == set()
        _put(styles, "a.png", DOTS[:100])  # broken again: warned again
        library.refresh()
        assert _warnings(caplog, "a.png") == 6

        # a bad presets file: one warning while it lasts; fixed, then broken again -> warned again
        for text in ("{", json.dumps({"p": {"styles": {"a": 1}}}), "[1]"):
            _put(styles, "presets.json", text.encode())
            library.refresh()
            library.refresh()
        assert _warnings(caplog, "presets.json") == 2
        (styles / "a.png").unlink()
        (styles / "presets.json").unlink()
        library.refresh()
    assert library.styles() == [] and library._warned == set()



@needs_torch
def test_the_server_forgets_the_ids_of_styles_the_library_no_longer_has(decoder_path: Path, tmp_path: Path) -> None:
    """The ids whose statistics the server computed ahead kept every version of every style ever seen, for
    the server's life (a folder synced for weeks): now they are the library's ids, and a style removed and
    put back is prepared again."""
    from adain import Stylizer
    from adain.server.app import StyleTransferServer
    from adain.server.config import Settings
    from adain.server.library import StyleLibrary

    _put(tmp_path, "dots.png", DOTS)
    _put(tmp_path, "stripes.jpg", STRIPES)
    library = StyleLibrary(str(tmp_path), 1 << 24)
    app = StyleTransferServer(Settings(), Stylizer(decoder_path, device="cpu", precision="fp32"), library)
    try:
        def ids() -> set[str]:
            return {s.id for s in library.styles()}

        app.warm_library(strict=True)
        assert app._warmed == ids() and len(ids()) == 2
        (tmp_path / "stripes.jpg").unlink()
        other = make_image(40, 40, seed=62, kind="noise")
        _put(tmp_path, "dots.png", other)
        library.refresh()
        app.warm_library()
        assert app._warmed == ids() == {hashlib.sha256(other).hexdigest()}
    finally:
        app.pool.shutdown(wait=False, cancel_futures=True)
        app.refiner.close()
        app.metrics.close()
