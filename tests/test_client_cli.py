"""The thin client and ``adain-stylize`` against the real server."""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from adain.client import Preset, StyleRef, StyleTransferClient, StyleTransferError
from adain.client.cli import CliError, main, parse_style
from adain.wire import DEFAULT_ADDRESS
from helpers import (
    NO_REFINE,
    REPO,
    ServerProcess,
    cli_on_a_terminal,
    free_port,
    library_stub,
    make_certificates,
    needs_torch,
)
from synth import SRGB_D50, band_mask, encoded, icc_rgb, make_image, make_mask, photo_with_exif, pixels

CONTENT = make_image(64, 48, seed=21)
STYLE_A = make_image(40, 40, seed=22, kind="noise")
STYLE_B = make_image(48, 32, seed=23, kind="gradient")
SWAPPED = icc_rgb((SRGB_D50[1], SRGB_D50[0], SRGB_D50[2]), name="red and green swapped")


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, Path]:
    out = {}
    for name, data in {"content.png": CONTENT, "a.png": STYLE_A, "b.jpg": make_image(48, 32, seed=23, fmt="JPEG"),
                       "mask.png": make_mask(64, 48), "broken.png": b"\x89PNG\r\n\x1a\nbroken"}.items():
        (tmp_path / name).write_bytes(data)
        out[name] = tmp_path / name
    return out


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("adain-stylize: error: "), err
    assert "Traceback" not in err
    return lines[0]


# --- import hygiene -----------------------------------------------------------------------------


def test_client_imports_no_torch() -> None:
    code = (
        "import sys\n"
        "import adain.client, adain.client.cli\n"
        "from adain.client import StyleTransferClient, StyleRef, StyleTransferError\n"
        "assert 'torch' not in sys.modules, 'adain.client imported torch'\n"
        "assert 'numpy' not in sys.modules, 'adain.client imported numpy'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=60)


# --- the client library -------------------------------------------------------------------------


def test_client_accepts_paths_bytes_pil_and_tuples(client: StyleTransferClient, files: dict[str, Path]) -> None:
    pil = Image.open(files["content.png"])
    by_bytes = client.stylize(CONTENT, [STYLE_A, (STYLE_B, 0.5)])
    by_path = client.stylize(files["content.png"], [str(files["a.png"]), (files["b.jpg"], 0.5)])
    by_pil = client.stylize(pil, [Image.open(files["a.png"]), (STYLE_B, 0.5)])
    by_weights = client.stylize(CONTENT, [STYLE_A, STYLE_B], weights=[1, 0.5])
    assert by_bytes.image == by_pil.image == by_weights.image
    assert (by_path.width, by_path.height) == (64, 48)  # b.jpg is a JPEG: close, not equal
    saved = by_bytes.save(files["content.png"].parent / "sub" / "out.png")
    assert Image.open(saved).size == (64, 48)
    # an extension that names another format: PNG bytes were written under .jpg (an outside tester)
    with pytest.raises(ValueError, match=r"out.jpg: this result is PNG and .jpg names JPEG: ask for "
                                         r"format='jpeg', or save it as .png"):
        by_bytes.save(files["content.png"].parent / "out.jpg")
    assert not (files["content.png"].parent / "out.jpg").exists()
    assert by_bytes.save(files["content.png"].parent / "out.bin").read_bytes() == by_bytes.image  # no format named
    assert by_bytes.to_pil().mode == "RGB"


def test_a_result_shows_itself_in_a_notebook(client: StyleTransferClient) -> None:
    """A notebook tour's: a StylizeResult or a video frame showed only its dataclass line (IPython's display
    protocol: ``_repr_mimebundle_``); PNG and JPEG as they came, WebP as PNG."""
    for fmt, kind in (("png", "image/png"), ("jpeg", "image/jpeg"), ("webp", "image/png")):
        result = client.stylize(CONTENT, STYLE_A, format=fmt)
        shown = result._repr_mimebundle_()
        assert sorted(shown) == sorted([kind, "text/plain"]) and shown["text/plain"] == repr(result)
        assert Image.open(io.BytesIO(shown[kind])).size == (64, 48)
        assert fmt == "webp" or shown[kind] == result.image
    frame = next(iter(client.stylize_video([CONTENT], STYLE_A)))
    assert Image.open(io.BytesIO(frame._repr_mimebundle_()["image/png"])).size == (64, 48)


def test_phone_photos_heic_and_colour_profiles(server: ServerProcess, client: StyleTransferClient, tmp_path: Path,
                                               files: dict[str, Path], capsys) -> None:
    # A PIL image keeps its ICC profile on the way: the server sees the colours the file has.
    tagged = Image.open(files["content.png"])
    tagged.info["icc_profile"] = SWAPPED
    by_pil = client.stylize(tagged, STYLE_A, alpha=0)
    assert by_pil.image == client.stylize(encoded(tagged, "PNG", icc_profile=SWAPPED), STYLE_A, alpha=0).image
    assert by_pil.image != client.stylize(CONTENT, STYLE_A, alpha=0).image
    # An iPhone's HEIC, alone and in a folder.
    photos = tmp_path / "phone"
    photos.mkdir()
    (photos / "IMG_0001.HEIC").write_bytes(encoded(Image.open(files["content.png"]), "HEIF"))
    assert client.stylize(photos / "IMG_0001.HEIC", STYLE_A).width == 64
    out = tmp_path / "out"
    assert main([str(photos), "-s", str(files["a.png"]), "-o", str(out), "--server", server.target]) == 0, \
        capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["IMG_0001_stylized_a.png"]


def test_register_style_and_refer_to_it(client: StyleTransferClient) -> None:
    sid = client.register_style(STYLE_A)
    assert len(sid) == 64
    direct = client.stylize(CONTENT, STYLE_A)
    assert client.stylize(CONTENT, StyleRef(sid)).image == direct.image
    assert client.stylize(CONTENT, "id:" + sid).image == direct.image


def test_local_input_errors_are_style_transfer_errors(client: StyleTransferClient, tmp_path: Path) -> None:
    with pytest.raises(StyleTransferError) as info:
        client.stylize(tmp_path / "missing.png", STYLE_A)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and "no such file" in info.value.details
    with pytest.raises(StyleTransferError) as info:
        client.stylize(CONTENT, STYLE_A, format="gif")
    assert info.value.details.startswith("format:")
    with pytest.raises(StyleTransferError) as info:
        client.stylize(CONTENT, STYLE_A, preserve_color="sepia")
    assert info.value.details.startswith("preserve_color:")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(StyleTransferError) as info:
        client.stylize(CONTENT, [STYLE_A, STYLE_A], mask=tmp_path / "empty.png")
    assert info.value.details == "mask: image data is empty"


def test_the_clients_arguments_are_checked_as_the_librarys(server: ServerProcess) -> None:
    """Found by an outside tester: weights="10" ran as [1, 0] without a word, masks="sky.png" was "7 masks";
    weights=1.0, styles=None and region_alphas=0.5 raised TypeError; alpha="0.5" and alpha=True were sent; a
    preset among styles was "no such file: preset:..."; timeout=0 or -1 came back as DEADLINE_EXCEEDED; a call
    after close() raised gRPC's ValueError (the asyncio client's UsageError)."""
    def refused(field: str, **kwargs) -> str:
        with pytest.raises(StyleTransferError) as info:
            c.stylize(CONTENT, kwargs.pop("styles", [STYLE_A, STYLE_B]), **kwargs)
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and info.value.violations[0][0] == field, (
            info.value.details)
        return info.value.details

    with StyleTransferClient(server.target, timeout=60) as c:
        assert refused("weights", weights="10") == "weights: must be a list, one per style; got a str"
        assert refused("weights", weights=1.0) == "weights: must be a list, one per style; got a float"
        assert refused("masks", masks="sky.png") == "masks: must be a list, one per style; got a str"
        assert refused("region_alphas", region_alphas=0.5).startswith("region_alphas: must be a list")
        assert refused("label_values", labels=CONTENT, label_values=255).startswith("label_values: must be a list")
        assert refused("weights", weights=[1]) == "weights: 1 weight for 2 styles"
        assert refused("styles[0]", styles=None).startswith("styles[0]: ")
        assert refused("styles[0]", styles=5).startswith("styles[0]: ")
        frame = np.zeros((48, 64, 3), np.uint8)  # an OpenCV frame: told how to make it an image, in which order
        assert refused("styles[0]", styles=[frame]) == (
            "styles[0]: expected image bytes, a path or a PIL image, got ndarray (an H x W x 3 uint8 array: "
            "PIL.Image.fromarray(a) for RGB; OpenCV's BGR frames: PIL.Image.fromarray(a[..., ::-1]))")
        for alpha in ("0.5", True):
            assert refused("alpha", alpha=alpha) == f"alpha: not a number: {alpha!r}"
        assert refused("preset", styles=["preset:calm-sea", STYLE_A]).startswith("preset: a preset stands alone")
        assert refused("preset", styles=[STYLE_A, Preset("calm-sea")]).startswith("preset: a preset stands alone")
        # a property tour's: a list or a dict raised TypeError (unhashable); an empty mask was sent as no mask (the
        # field unset), and the photo came back stylized without it, OK
        for mode in (["coral"], {"mode": "coral"}):
            assert refused("preserve_color", preserve_color=mode).startswith(
                "preserve_color: must be None, 'coral' or 'luminance'")
        for empty in (b"", bytearray(), memoryview(b"")):
            assert refused("mask", mask=empty) == "mask: image data is empty"
            assert refused("styles[1].mask", masks=[make_mask(64, 48), empty]) == "styles[1].mask: image data is empty"
        assert refused("styles[0]", styles=[b""]) == "styles[0]: image data is empty"
        for timeout in (0, -1, math.nan, "5"):
            with pytest.raises(StyleTransferError, match=r"^INVALID_ARGUMENT: timeout: must be a number of seconds"):
                c.stylize(CONTENT, STYLE_A, timeout=timeout)
        assert "image=" not in repr(c.stylize(CONTENT, STYLE_A))  # not hundreds of KB of bytes
        # a cross-surface tour's: 10**400 raised OverflowError; a set's order was taken as the styles' ({20, 10}
        # ran as [10, 20]); 64.0 was taken as a size, None refused; float32's rounding took alpha 1.00000001 as 1
        # and made weights of 1e-46 and 0 "all style weights are zero"; past 32 bits "must be a whole number >= 0"
        huge = 10**400
        for field in ("alpha", "content_weight"):
            said = refused(field, **{field: huge, **({"refine_steps": 1} if field == "content_weight" else {})})
            assert said == f"{field}: 100000000000000000...000000000000000000 (401 characters) is out of range " \
                "(at most 3.402823e+38 in size)"
        for field in ("content_size", "style_size", "refine_steps", "quality"):
            assert "is over the most a request can carry" in refused(field, **{field: huge})
        assert refused("content_size", content_size=5_000_000_000) == (
            "content_size: 5000000000 is over the most a request can carry (4294967295); the server's own limit is "
            "lower (server_info()['limits'])")
        assert refused("refine_steps", refine_steps=3_000_000_000).startswith(
            "refine_steps: 3000000000 is over the most a request can carry (2147483647)")
        for field in ("content_size", "style_size", "refine_steps"):
            assert refused(field, **{field: 64.0}).startswith(f"{field}: must be a whole number")
        assert c.stylize(CONTENT, STYLE_A, content_size=None, style_size=np.int64(32)).width == 64
        assert refused("weights", weights={0.3, 0.7}) == "weights: must be a list, one per style; got a set"
        assert refused("weights", weights={1.0: "a", 3.0: "b"}) == "weights: must be a list, one per style; got a dict"
        assert refused("label_values", labels=CONTENT, label_values={20, 10}).endswith("got a set")
        for alpha in (1.00000001, -1e-46):
            assert refused("alpha", alpha=alpha) == f"alpha: must be a number in [0, 1], got {alpha!r}"
        assert refused("styles[1].alpha", masks=[make_mask(64, 48)] * 2, region_alphas=[1, 1.00000001]) == (
            "styles[1].alpha: must be a number in [0, 1], got 1.00000001")
        assert refused("styles[0].weight", weights=[1e-46, 0]) == (
            "styles[0].weight: 1e-46 is too small to be sent (a float32: 1.4e-45 at least, or 0)")
        with pytest.raises(StyleTransferError) as info:  # out of range and not rounded into it: the server's to say,
            c.stylize(CONTENT, [STYLE_A, STYLE_B], alpha=1.5, weights=[-1, 1])  # every problem at once
        assert sorted(f for f, _ in info.value.violations) == ["alpha", "styles[0].weight"]
        # every problem the client finds, in one error, as the library and the server list theirs (it named the
        # first only); a file that cannot be read among them
        with pytest.raises(StyleTransferError) as info:
            c.stylize(CONTENT, [STYLE_A, "missing.png"], format="gif", alpha=1.00000001, content_size=64.0,
                      refine_steps=1.5, masks=[make_mask(64, 48)])
        assert [f for f, _ in info.value.violations] == ["format", "styles[1]", "content_size", "alpha", "refine_steps"]
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and info.value.details.startswith(
            "format: unsupported output format 'gif' (png, jpeg or webp); styles[1]: no such file: missing.png; ")
        with pytest.raises(StyleTransferError) as info:  # (the masks counted only against styles all taken)
            c.stylize(CONTENT, [STYLE_A, STYLE_B], masks=[make_mask(64, 48)], weights={1, 2}, quality=-1)
        assert [f for f, _ in info.value.violations] == ["weights", "quality"]
        with pytest.raises(StyleTransferError) as info:
            list(c.stylize_video([CONTENT], STYLE_A, temporal="x", alpha=-1e-46, content_size=1.0))
        assert [f for f, _ in info.value.violations] == ["options.content_size", "options.alpha", "options.temporal"]
    with pytest.raises(ValueError, match="timeout: must be a number of seconds > 0"):
        StyleTransferClient(server.target, timeout=0)
    for call in (lambda: c.stylize(CONTENT, STYLE_A), c.health, c.list_styles):
        with pytest.raises(StyleTransferError) as info:
            call()
        assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION and "closed" in info.value.details

    async def closed_async() -> str:
        from adain.client.aio import AsyncStyleTransferClient

        async with AsyncStyleTransferClient(server.target) as ac:
            await ac.health()
        try:
            await ac.stylize(CONTENT, STYLE_A)
        except StyleTransferError as e:
            return e.code.name
        return "no error"

    import asyncio

    from adain.client.aio import AsyncStyleTransferClient

    assert asyncio.run(closed_async()) == "FAILED_PRECONDITION"
    # one client in two asyncio.run calls: gRPC's "Event loop is closed" and a coroutine never awaited, before
    async def made() -> tuple[AsyncStyleTransferClient, str]:
        client = AsyncStyleTransferClient(server.target)
        return client, await client.health()

    async def health(client: AsyncStyleTransferClient) -> str:
        try:
            return await client.health()
        except StyleTransferError as e:
            return e.details

    shared, status = asyncio.run(made())
    assert status == "SERVING"
    assert asyncio.run(health(shared)).startswith("this client belongs to another event loop")


def test_server_errors_carry_code_details_and_violations(client: StyleTransferClient) -> None:
    with pytest.raises(StyleTransferError) as info:
        client.stylize(CONTENT, [STYLE_A, (STYLE_B, -1)])
    e = info.value
    assert e.code == grpc.StatusCode.INVALID_ARGUMENT
    assert e.details.startswith("styles[1].weight:")
    assert e.violations and e.violations[0][0] == "styles[1].weight"
    assert e.request_id


def test_unreachable_server_fails_fast_with_unavailable() -> None:
    port = free_port()  # nothing listens there
    with StyleTransferClient(f"127.0.0.1:{port}", timeout=20, retries=2) as c:
        with pytest.raises(StyleTransferError) as info:
            c.stylize(CONTENT, STYLE_A)
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    # gRPC allows 4 retries at most: more was cut to 4 without a word
    with pytest.raises(ValueError, match=r"retries must be a whole number in \[0, 4\].*got 9"):
        StyleTransferClient(f"127.0.0.1:{port}", retries=9)
    # a token no header can carry failed every call with "INTERNAL: Invalid metadata"
    with pytest.raises(StyleTransferError, match="printable ASCII") as info:
        StyleTransferClient(f"127.0.0.1:{port}", token="héllo-token-0123456789")
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_tls(decoder_path: Path, tmp_path: Path) -> None:
    if not make_certificates(tmp_path, "server"):
        pytest.skip("openssl is not available to make a test certificate")
    cert, key, ca = tmp_path / "server.pem", tmp_path / "server.key", tmp_path / "server-ca.pem"
    creds = grpc.ssl_channel_credentials(root_certificates=ca.read_bytes())
    srv = ServerProcess(decoder_path, *NO_REFINE, "--tls-cert", str(cert), "--tls-key", str(key), credentials=creds)
    try:
        srv.wait_serving()
        with StyleTransferClient(srv.target, tls=True, root_certificates=ca, timeout=60) as c:
            assert (c.stylize(CONTENT, STYLE_A).width, c.server_info()["device"]) == (64, "cpu")
        with StyleTransferClient(srv.target, timeout=10, retries=0) as plain:  # plaintext to a TLS port fails
            with pytest.raises(StyleTransferError) as info:
                plain.stylize(CONTENT, STYLE_A)
            assert info.value.code == grpc.StatusCode.UNAVAILABLE
        assert srv.terminate() == 0
    finally:
        srv.kill()


# --- the CLI ------------------------------------------------------------------------------------


def test_parse_style() -> None:
    assert parse_style("a.png") == ("a.png", 1.0)
    assert parse_style("a.png:0.3") == ("a.png", 0.3)
    assert parse_style("dir:x/a.png:2") == ("dir:x/a.png", 2.0)
    assert parse_style("a.png:abc") == ("a.png:abc", 1.0)  # not a number: part of the name
    assert parse_style("id:abc:0.5") == ("id:abc", 0.5)


def test_cli_single_blend(server: ServerProcess, files: dict[str, Path], capsys) -> None:
    out = files["content.png"].parent / "out.png"
    code = main([str(files["content.png"]), "--style", str(files["a.png"]), "--style", f"{files['b.jpg']}:0.3",
                 "--alpha", "0.8", "-o", str(out), "--server", server.target])
    assert code == 0, capsys.readouterr().err
    assert Image.open(out).size == (64, 48) and Image.open(out).format == "PNG"
    out_jpg = out.with_suffix(".jpg")
    code = main([str(files["content.png"]), "-s", str(files["a.png"]), "-s", str(files["b.jpg"]),
                 "--mask", str(files["mask.png"]), "--preserve-color", "--quality", "80", "--size", "32",
                 "-o", str(out_jpg), "--server", server.target])
    assert code == 0, capsys.readouterr().err
    assert Image.open(out_jpg).format == "JPEG"
    # --preserve-color alone before the content means coral, not "the mode named like the content"
    first = out.with_name("first.png")
    assert main(["--preserve-color", str(files["content.png"]), "-s", str(files["a.png"]), "-o", str(first),
                 "--server", server.target]) == 0, capsys.readouterr().err
    assert main([str(files["content.png"]), "-s", str(files["a.png"]), "-o", str(out), "--preserve-color", "coral",
                 "--server", server.target]) == 0
    assert Image.open(first).tobytes() == Image.open(out).tobytes()


def test_cli_quiet_and_standard_streams(server: ServerProcess, files: dict[str, Path], capsys) -> None:
    """--quiet prints nothing where all went well (a cron job mailed its output line every run); '-' for the
    content or the output is refused saying why (the folder hint sent '-o -' to '-o -/', a usage error)."""
    out = files["content.png"].parent / "quiet.png"
    argv = [str(files["content.png"]), "-s", str(files["a.png"]), "--server", server.target]
    assert main([*argv, "-o", str(out), "-q"]) == 0
    assert capsys.readouterr() == ("", "") and Image.open(out).size == (64, 48)
    for output in ("-", "/dev/stdout"):
        assert main([*argv, "-o", output]) == 1
        assert capsys.readouterr().err == (f"adain-stylize: error: -o {output}: outputs are written to files (under a "
                                           "temporary name, renamed when complete), not to standard output or a "
                                           "device: write a file, then cat it\n")
    assert main(["-", *argv[1:], "-o", str(out)]) == 1
    assert capsys.readouterr().err == ("adain-stylize: error: CONTENT: '-': contents are read from files, not "
                                       "standard input (save it to a file)\n")


def test_cli_quiet_draws_no_progress_bar_on_a_terminal(server: ServerProcess, files: dict[str, Path],
                                                       tmp_path: Path) -> None:
    """A folder run on a terminal draws its bar; with -q it drew it all the same (a quiet run in a shell)."""
    def stderr_on_a_terminal(*extra: str) -> str:
        return cli_on_a_terminal([str(files["content.png"]), str(files["a.png"]), "-s", str(files["a.png"]), "-o",
                                  f"{tmp_path}/out/", "--server", server.target, *extra]).decode(errors="replace")

    assert "2/2" in stderr_on_a_terminal()
    assert stderr_on_a_terminal("-q") == ""


def test_cli_names_outside_the_locales_encoding(server: ServerProcess, files: dict[str, Path], tmp_path: Path) -> None:
    """An ASCII locale with Python not in UTF-8 mode: an Arabic name's temporary file was made in UTF-8's reading
    of its bytes (UnicodeEncodeError, and a folder run stopped there); a stdout that cannot encode a name ended a
    run that had written its output in a traceback, exit 1 (PYTHONIOENCODING=ascii)."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a.png", "مرحبا.png", "café.png", "z.png"):
        (folder / name).write_bytes(files["content.png"].read_bytes())
    run = subprocess.run(
        [sys.executable, "-m", "adain.client.cli", str(folder), "-s", str(files["a.png"]), "-o", f"{tmp_path}/out/",
         "--server", server.target], capture_output=True, cwd=REPO, timeout=120,
        env={**os.environ, "LC_ALL": "POSIX", "LANG": "POSIX", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0",
             "PYTHONIOENCODING": "ascii"})
    assert run.returncode == 0 and b"Traceback" not in run.stderr, run.stderr.decode(errors="replace")
    written = sorted(os.listdir(tmp_path / "out"))
    assert written == sorted(f"{n[:-4]}_stylized_a.png" for n in os.listdir(folder)), written
    assert "4 of 4" in run.stdout.decode(), run.stdout
    quiet = subprocess.run(  # -q: its stdout, the null device, was opened in the locale's encoding, strict
        [sys.executable, "-m", "adain.client.cli", str(folder / "a.png"), "-s", str(files["a.png"]), "-o",
         str(tmp_path / "out" / "خرج.png"), "-q", "--server", server.target], capture_output=True, cwd=REPO,
        timeout=120, env={**os.environ, "LC_ALL": "POSIX", "LANG": "POSIX", "PYTHONUTF8": "0",
                          "PYTHONCOERCECLOCALE": "0"})
    assert quiet.returncode == 0 and quiet.stderr == b"", quiet.stderr.decode(errors="replace")


def test_a_path_of_bytes_is_a_path(client: StyleTransferClient, files: dict[str, Path], tmp_path: Path) -> None:
    """os.scandir(b"photos")'s entries (non-UTF-8 names need them) and bytes paths to save: pathlib's TypeError."""
    entry = next(e for e in os.scandir(os.fsencode(files["content.png"].parent)) if e.name == b"content.png")
    saved = client.stylize(entry, files["a.png"]).save(os.fsencode(tmp_path / "out.png"))
    assert saved == tmp_path / "out.png" and Image.open(saved).size == (64, 48)


def test_cli_keeps_exif_when_asked(server: ServerProcess, files: dict[str, Path], tmp_path: Path, capsys) -> None:
    photo, out = tmp_path / "phone.jpg", tmp_path / "out.jpg"
    photo.write_bytes(photo_with_exif(64, 48))
    assert main([str(photo), "-s", str(files["a.png"]), "--keep-exif", "-o", str(out), "--server", server.target]) == 0
    exif = Image.open(out).getexif()
    assert exif[0x010F] == "TestCam" and 0x8825 not in exif
    assert main([str(photo), "-s", str(files["a.png"]), "-o", str(out), "--server", server.target]) == 0
    assert not Image.open(out).getexif()


def test_cli_regions_by_masks_and_labels(server: ServerProcess, client: StyleTransferClient,
                                         files: dict[str, Path], capsys) -> None:
    d = files["content.png"].parent
    band_mask(64, 48, 0, 20).save(d / "m0.png")
    band_mask(64, 48, 30, 64).save(d / "m1.png")
    labels = np.zeros((48, 64, 3), np.uint8)
    labels[:, :20], labels[:, 30:] = (255, 0, 0), 5
    Image.fromarray(labels).save(d / "labels.png")
    c, a, b, srv = str(files["content.png"]), str(files["a.png"]), str(files["b.jpg"]), ["--server", server.target]
    assert main([c, "-s", a, "--mask", str(d / "m0.png"), "-s", b, "--mask", str(d / "m1.png"),
                 "--region-alpha", "1", "--region-alpha", "0.5", "-o", str(d / "by_masks.png"), *srv]) == 0
    assert main([c, "-s", a, "-s", b, "--labels", str(d / "labels.png"), "--label", "#ff0000", "--label", "5",
                 "--region-alpha", "1", "--region-alpha", "0.5", "-o", str(d / "by_labels.png"), *srv]) == 0
    expected = client.stylize(files["content.png"], [files["a.png"], files["b.jpg"]],
                              masks=[d / "m0.png", d / "m1.png"], region_alphas=[1, 0.5])
    for name in ("by_masks.png", "by_labels.png"):
        assert abs(pixels((d / name).read_bytes()) - pixels(expected.image)).max() <= 1, name
    o = str(d / "x.png")
    assert "3 masks for 2 styles" in _cli_failure([c, "-s", a, "-s", b, *["--mask", str(d / "m0.png")] * 3, "-o", o,
                                                   *srv], capsys)
    assert "--label needs --labels" in _cli_failure([c, "-s", a, "--label", "3", "-o", o, *srv], capsys)
    # --quality with a PNG output made byte-identical files, without a word: PNG is lossless
    assert "--quality: only for JPEG and WebP outputs" in _cli_failure([c, "-s", a, "--quality", "10", "-o", o,
                                                                        *srv], capsys)
    assert "outputs are (--format png" in _cli_failure([str(d), "-s", a, "--quality", "10", "-o", str(d / "q/"),
                                                        *srv], capsys)
    assert "--label" in _cli_failure([c, "-s", a, "--labels", str(d / "labels.png"), "--label", "red", "-o", o,
                                      *srv], capsys)
    line = _cli_failure([c, "-s", a, "--labels", str(d / "labels.png"), "--label", "9", "-o", o, *srv], capsys)
    assert "error: --label 9: no pixel" in line  # the flag, not the request's styles[0].label
    assert not Path(o).exists()


def test_cli_weights_change_the_result(server: ServerProcess, files: dict[str, Path], capsys) -> None:
    d = files["content.png"].parent
    outs = []
    for i, w in enumerate(("0.1", "3")):
        out = d / f"w{i}.png"
        assert main([str(files["content.png"]), "-s", str(files["a.png"]), "-s", f"{files['b.jpg']}:{w}",
                     "-o", str(out), "--server", server.target]) == 0
        outs.append(pixels(out.read_bytes()))
    assert abs(outs[0] - outs[1]).max() > 5


def test_cli_folder_mode(server: ServerProcess, tmp_path: Path, files: dict[str, Path], capsys) -> None:
    contents = tmp_path / "photos"
    contents.mkdir()
    for i, stem in enumerate(["cat", "dog", "tree"]):
        (contents / f"{stem}.png").write_bytes(make_image(64, 48, seed=40 + i))
    (contents / "notes.txt").write_text("not an image")
    out = tmp_path / "stylized"
    code = main([str(contents), "--style", str(files["a.png"]), "--style", str(files["b.jpg"]), "-o", str(out),
                 "--server", server.target])
    assert code == 0, capsys.readouterr().err
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(f"{c}_stylized_{s}.png" for c in ("cat", "dog", "tree") for s in ("a", "b"))
    for p in out.iterdir():
        assert Image.open(p).size == (64, 48)
    # Each style alone, not blended: cat x a equals a single-style run.
    single = tmp_path / "single.png"
    assert main([str(contents / "cat.png"), "-s", str(files["a.png"]), "-o", str(single),
                 "--server", server.target]) == 0
    assert (out / "cat_stylized_a.png").read_bytes() == single.read_bytes()
    # --format picks the folder's output format.
    out2 = tmp_path / "jpegs"
    assert main([str(contents), "-s", str(files["a.png"]), "-o", str(out2), "--format", "jpeg",
                 "--server", server.target]) == 0
    assert sorted(p.name for p in out2.iterdir()) == [f"{c}_stylized_a.jpg" for c in ("cat", "dog", "tree")]


def test_cli_several_contents(server: ServerProcess, tmp_path: Path, files: dict[str, Path], capsys) -> None:
    """Several CONTENT arguments (a shell's *.jpg), files and folders together, run like a folder."""
    (tmp_path / "more").mkdir()
    for name, seed in (("one.png", 1), ("two.png", 2), ("more/three.png", 3)):
        (tmp_path / name).write_bytes(make_image(64, 48, seed=60 + seed))
    out = tmp_path / "out"
    srv = ["--server", server.target]
    code = main([str(tmp_path / "one.png"), str(tmp_path / "two.png"), str(tmp_path / "more"), "-s",
                 str(files["a.png"]), "-o", str(out), *srv])
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == [f"{c}_stylized_a.png" for c in ("one", "three", "two")]
    capsys.readouterr()
    (tmp_path / "more" / "one.png").write_bytes(make_image(64, 48, seed=64))  # two contents named "one"
    line = _cli_failure([str(tmp_path / "one.png"), str(tmp_path / "more"), "-s", str(files["a.png"]), "-o",
                         str(out), *srv], capsys)
    assert "two contents named 'one'" in line
    line = _cli_failure([str(tmp_path / "one.png"), str(tmp_path / "two.png"), "-s", str(files["a.png"]), "-o",
                         str(files["a.png"]), *srv], capsys)
    assert "need an output folder" in line


def test_cli_folder_reports_a_bad_image_and_goes_on(server: ServerProcess, tmp_path: Path, files, capsys) -> None:
    contents = tmp_path / "mixed"
    contents.mkdir()
    (contents / "good.png").write_bytes(CONTENT)
    (contents / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    out = tmp_path / "o"
    code = main([str(contents), "-s", str(files["a.png"]), "-s", str(files["b.jpg"]), "-o", str(out), "--server",
                 server.target])
    assert code == 1
    line = _one_error_line(capsys)  # once, not once per style (the same line twice: an outside tester)
    assert f"error: {contents / 'bad.png'}: cannot read image header" in line, line  # the file, no field name
    assert sorted(p.name for p in out.iterdir()) == ["good_stylized_a.png", "good_stylized_b.png"]
    # an option the server refuses is every content's: said once, and the run stops (it was said for each)
    (contents / "bad.png").unlink()
    (contents / "other.png").write_bytes(CONTENT)
    line = _cli_failure([str(contents), "-s", "preset:nosuch", "-o", str(tmp_path / "p"), "--server", server.target],
                        capsys)
    assert "no preset named 'nosuch'" in line
    # and says what was written before it stopped (a finished run's tally; a stopped one said nothing of it)
    assert re.search(r" \([01] of 2 outputs written to \S+ before the run stopped\)$", line), line
    # a style the server cannot use is named by its --style, before any content is sent
    (tmp_path / "tiny.png").write_bytes(make_image(10, 10))
    line = _cli_failure([str(contents), "-s", str(files["a.png"]), "-s", str(tmp_path / "tiny.png"), "-o",
                         str(tmp_path / "t"), "--server", server.target], capsys)
    assert line == (f"adain-stylize: error: --style {tmp_path / 'tiny.png'}: 10 x 10 px is too small to carry a "
                    "style at any --style-size: its shorter side needs 16 px as used"), line
    assert not (tmp_path / "t").exists()


def _cli_failure(argv: list[str], capsys) -> str:
    code = main(argv)
    assert code != 0
    return _one_error_line(capsys)


def test_cli_failures_are_one_line(server: ServerProcess, files: dict[str, Path], capsys) -> None:
    c, a, o, srv = str(files["content.png"]), str(files["a.png"]), str(files["content.png"].parent / "x.png"), [
        "--server", server.target]
    assert "no such file" in _cli_failure([c + ".missing", "-s", a, "-o", o, *srv], capsys)
    assert "no such file" in _cli_failure([c, "-s", a + ".missing", "-o", o, *srv], capsys)
    line = _cli_failure([c, "-s", f"{a}:abc", "-o", o, *srv], capsys)
    assert "'abc'" in line and "not a number" in line
    assert "weight" in _cli_failure([c, "-s", f"{a}:-0.5", "-o", o, *srv], capsys)
    assert "weight" in _cli_failure([c, "-s", f"{a}:nan", "-o", o, *srv], capsys)
    assert "--alpha" in _cli_failure([c, "-s", a, "--alpha", "1.5", "-o", o, *srv], capsys)
    assert "--alpha" in _cli_failure([c, "-s", a, "--alpha", "x", "-o", o, *srv], capsys)
    assert "output format" in _cli_failure([c, "-s", a, "-o", o + ".gif", *srv], capsys)
    # The server says no: corrupt content, a mask of the wrong size, an unknown style id.
    assert f"error: {files['broken.png']}: cannot read image header: a truncated or corrupt PNG file" in \
        _cli_failure([str(files["broken.png"]), "-s", a, "-o", o, *srv], capsys)
    assert f"error: --mask {a}: mask is" in _cli_failure([c, "-s", a, "-s", a, "--mask", a, "-o", o, *srv], capsys)
    assert "unknown style id" in _cli_failure([c, "-s", "id:" + "f" * 64, "-o", o, *srv], capsys)
    assert not Path(o).exists()


def test_cli_server_down_in_a_real_process(files: dict[str, Path]) -> None:
    port = free_port()
    proc = subprocess.run(
        [sys.executable, "-m", "adain.client.cli", str(files["content.png"]), "--style", str(files["a.png"]),
         "-o", str(files["content.png"].parent / "x.png"), "--server", f"127.0.0.1:{port}", "--timeout", "20"],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("adain-stylize: error: cannot reach the server"), proc.stderr
    # The same through ADAIN_SERVER, with the console script when it is installed.
    script = Path(sys.executable).with_name("adain-stylize")
    if script.exists():
        env = {"ADAIN_SERVER": f"127.0.0.1:{port}", "PATH": str(script.parent)}
        proc = subprocess.run([str(script), str(files["content.png"]), "-s", str(files["a.png"]), "-o",
                               str(files["content.png"].parent / "y.png")], capture_output=True, text=True,
                              timeout=60, env=env)
        assert proc.returncode != 0 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert f"127.0.0.1:{port}" in proc.stderr


# --- what a tester found: styles named like numbers, outputs that overwrite, limits, signals -----------------


def test_a_library_style_prints_its_thumbnails_size_not_its_bytes() -> None:
    from adain.client import LibraryStyle

    shown = repr([LibraryStyle("ink", "ab" * 32, 640, 480, b"\xff" * 9000)])
    assert "thumbnail=<9000 bytes>" in shown and len(shown) < 200


def test_output_names_of_styles_and_contents() -> None:
    """Library names were cut to 12 characters like a registered id (two names of one start were refused);
    names differing only in case (one file on macOS and Windows) were not; hidden files were contents."""
    from adain.client.cli import _style_names

    named = _style_names([(StyleRef("vangogh_starry_night"), 1.0), (StyleRef("vangogh_starry_sky"), 1.0),
                          (StyleRef("ab" * 32), 1.0)])
    assert [stem for _, stem in named] == ["vangogh_starry_night", "vangogh_starry_sky", "ab" * 6]
    with pytest.raises(CliError, match="two styles named"):
        _style_names([(Path("Monet.jpg"), 1.0), (Path("monet.png"), 1.0)])


def test_pil_images_of_other_modes_are_sent_as_they_look() -> None:
    """A transparent PA image was sent as RGB with its hidden colour, and big-endian 16-bit (a TIFF's, an >u2
    array's) clipped to 255 as RGB; the library composites alpha onto white and scales 16-bit."""
    from adain.client._client import image_bytes
    from adain.image import load_image

    pa = Image.new("PA", (8, 8))
    pa.putpalette([231, 9, 9] * 256)
    assert load_image(image_bytes(pa)).getpixel((0, 0)) == (255, 255, 255)
    wide = Image.fromarray(np.full((8, 8), 40000, dtype=">u2"))
    assert wide.mode.startswith("I;16") and wide.mode != "I;16"
    level = load_image(image_bytes(wide)).getpixel((0, 0))
    assert level[0] == level[1] == level[2] and abs(level[0] - round(40000 / 65535 * 255)) <= 1, level
    dark = Image.fromarray(np.full((8, 8), 250, dtype=">u2"))  # as the library reads it: 250 of 65535 is black
    assert load_image(image_bytes(dark)).getpixel((0, 0)) == load_image(dark).getpixel((0, 0)) == (1, 1, 1)


def test_a_folders_hidden_files_are_no_contents(tmp_path: Path) -> None:
    from adain.client.cli import _content_files

    (tmp_path / "cat.jpg").write_bytes(make_image(16, 16, fmt="JPEG"))
    (tmp_path / "._cat.jpg").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    assert [p.name for p in _content_files([tmp_path])] == ["cat.jpg"]
    (tmp_path / "Cat.png").write_bytes(make_image(16, 16))
    with pytest.raises(CliError, match="two contents named"):
        _content_files([tmp_path])


def test_parse_style_names_after_id_and_preset() -> None:
    """After id: or preset: the name comes whole ("1977", "nan"); only a further ':' starts a weight."""
    assert parse_style("id:1977") == ("id:1977", 1.0)
    assert parse_style("id:nan") == ("id:nan", 1.0)
    assert parse_style("id:1977:0.5") == ("id:1977", 0.5)
    assert parse_style("preset:2000") == ("preset:2000", 1.0)
    for spec, says in (("preset:warm:0.5", "a preset takes no weight"), ("id:x:abc", "must be a weight"),
                       (":0.5", "no style before the weight"), ("a.png:1e40", r"at most 3\.402823e\+38"),
                       ("id:x:1e40", "at most")):
        with pytest.raises(CliError, match=says):
            parse_style(spec)


def test_cli_refuses_what_it_would_silently_get_wrong(server: ServerProcess, files: dict[str, Path],
                                                      tmp_path: Path, capsys) -> None:
    c, a, srv = str(files["content.png"]), str(files["a.png"]), ["--server", server.target]
    o = str(tmp_path / "x.png")
    before = files["content.png"].read_bytes(), files["a.png"].read_bytes()
    # an output that is an input (the path itself, or a link to it)
    assert "-o " + c in _cli_failure([c, "-s", a, "-o", c, *srv], capsys)
    (tmp_path / "link.png").symlink_to(files["a.png"])
    line = _cli_failure([c, "-s", a, "-o", str(tmp_path / "link.png"), *srv], capsys)
    assert "would overwrite the --style file" in line
    assert (files["content.png"].read_bytes(), files["a.png"].read_bytes()) == before
    # empty paths, flags that do nothing to an image, a label that is no grey level, a float32 overflow
    assert "CONTENT: an empty path" in _cli_failure(["", "-s", a, "-o", str(tmp_path / "out/"), *srv], capsys)
    assert "-o: an empty path" in _cli_failure([c, "-s", a, "-o", "", *srv], capsys)
    for flag, value in (("--temporal", "flow"), ("--fps", "5"), ("--start", "1"), ("--duration", "2")):
        assert f"{flag}: only for videos" in _cli_failure([c, "-s", a, flag, value, "-o", o, *srv], capsys)
    line = _cli_failure([c, "-s", a, "-s", a, "--labels", c, "--label", "300", "--label", "2", "-o", o, *srv], capsys)
    assert "--label: 300 is no grey level 0-255" in line
    assert "--content-weight: 1e+40 is out of range" in _cli_failure([c, "-s", a, "--refine", "1", "--content-weight",
                                                                       "1e40", "-o", o, *srv], capsys)
    # a library name that reads as a number reaches the server as a name (this one has no library)
    line = _cli_failure([c, "-s", "id:1977", "-o", o, *srv], capsys)
    assert "no such file" not in line and "1977" in line
    assert "no style before the weight" in _cli_failure([c, "-s", ":0.5", "-o", o, *srv], capsys)
    (tmp_path / "mask.png").write_bytes(files["a.png"].read_bytes())  # any image: refused before it is read
    line = _cli_failure([c, "-s", a + ":0.9", "-s", a + ":0.1", "--mask", str(tmp_path / "mask.png"), "-o", o, *srv],
                        capsys)
    assert "--mask: one mask with two styles places them by the mask alone" in line  # the weights did nothing
    # found by a new user: flags that were dropped without a word, and empty paths named as folders
    line = _cli_failure([c, "-s", a, "--style-weight", "30", "--refine-size", "128", "-o", o, *srv], capsys)
    assert "--style-weight and --refine-size need --refine N" in line
    assert "--format jpeg: -o " in _cli_failure([c, "-s", a, "-o", o, "--format", "jpeg", *srv], capsys)
    line = _cli_failure([c, c, "-s", a + ":0", "-s", a, "-o", str(tmp_path / "many/"), *srv], capsys)
    assert f"--style {a}:0: a weight blends styles, which needs one content file" in line
    assert "--style : an empty path" in _cli_failure([c, "-s", "", "-o", o, *srv], capsys)
    assert "--mask: an empty path" in _cli_failure([c, "-s", a, "--mask", "", "-o", o, *srv], capsys)
    assert "--labels: an empty path" in _cli_failure([c, "-s", a, "--labels", "", "--label", "1", "-o", o, *srv],
                                                     capsys)
    assert main([c, "-s", a, "--retries", "5", "-o", o, *srv]) == 2
    assert "--retries: must be in [0, 4], got 5" in capsys.readouterr().err
    assert main([c, "-s", a, "--fps", "0.0001", "-o", o, *srv]) == 2  # was a ZeroDivisionError's traceback
    assert "--fps: must be at least 0.001 (a frame each 1,000 s), got 0.0001" in capsys.readouterr().err
    assert not Path(o).exists()
    # a timeout past gRPC's int64 nanoseconds is none (it was a deadline already past: "did not answer in time")
    assert main([c, "-s", a, "--timeout", "1e10", "-o", o, *srv]) == 0 and Path(o).exists()


def test_cli_folder_mode_refuses_outputs_of_one_name(server: ServerProcess, files: dict[str, Path], tmp_path: Path,
                                                     capsys) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "one.png").write_bytes(CONTENT)
    for sub in ("s1", "s2"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "st.png").write_bytes(STYLE_A)
    srv = ["--server", server.target]
    line = _cli_failure([str(photos), "-s", str(tmp_path / "s1/st.png"), "-s", str(tmp_path / "s2/st.png"), "-o",
                         str(tmp_path / "out"), *srv], capsys)
    assert "two styles named 'st'" in line
    line = _cli_failure([str(photos), "-s", str(files["a.png"]), "-o", str(photos) + "/", *srv], capsys)
    assert line.startswith(f"adain-stylize: error: -o {photos}/: that is the content folder")
    line = _cli_failure([str(photos / "one.png"), str(files["content.png"]), "-s", str(files["a.png"]), "-o",
                         str(tmp_path / "two.png"), *srv], capsys)
    assert "this names a file" in line and not (tmp_path / "two.png").exists()
    assert "--fps: only for videos" in _cli_failure([str(photos), "-s", str(files["a.png"]), "--fps", "5", "-o",
                                                     str(tmp_path / "out"), *srv], capsys)
    (tmp_path / "empty").mkdir()
    line = _cli_failure([str(tmp_path / "empty"), "-s", str(files["a.png"]), "-o", str(tmp_path / "out"), *srv],
                        capsys)
    assert "no images or videos" in line and line.count(".gif") == 1
    assert list(tmp_path.glob("out*")) == []


def test_cli_output_folder_for_one_content(server: ServerProcess, files: dict[str, Path], tmp_path: Path,
                                           capsys) -> None:
    """-o a folder (one that exists, or a new one ending in '/'): the output is named after the content."""
    srv = ["--server", server.target]
    assert main([str(files["content.png"]), "-s", str(files["a.png"]), "-o", f"{tmp_path}/new/", *srv]) == 0
    assert Image.open(tmp_path / "new" / "content_stylized.png").size == (64, 48)
    assert main([str(files["content.png"]), "-s", str(files["a.png"]), "-o", str(tmp_path / "new"), "--format",
                 "jpeg", *srv]) == 0
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["content_stylized.jpg", "content_stylized.png"]


def test_an_output_that_cannot_be_written_is_refused_before_any_call(files: dict[str, Path], tmp_path: Path,
                                                                     capsys) -> None:
    """A photo, a clip and a folder run whose -o cannot be written are refused before the server is called
    (here none listens, so a call would be "cannot reach the server"): a refine rendered for 17 s, then said
    "cannot write: File exists". Nothing is left behind."""
    from synth import make_video

    clip = tmp_path / "clip.mp4"
    make_video(clip, frames=2)
    (tmp_path / "a_file").write_bytes(b"")
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "content_stylized.png").mkdir()  # a folder where -o o/ puts the photo
    c, a, srv = str(files["content.png"]), str(files["a.png"]), ["--server", f"127.0.0.1:{free_port()}"]
    before = sorted(tmp_path.rglob("*"))
    is_file, is_folder = f"{tmp_path}/a_file is a file, not a folder", f"{tmp_path}/o/content_stylized.png is a folder"
    for argv, wrong in (([c, "-s", a, "--refine", "3", "-o", f"{tmp_path}/a_file/x.png"], is_file),
                        ([c, "-s", a, "-o", f"{tmp_path}/a_file/sub/"], is_file),
                        ([c, "-s", a, "-o", f"{tmp_path}/o/"], f"{is_folder}, not a file"),
                        ([str(clip), "-s", a, "-o", f"{tmp_path}/a_file/x.mp4"], is_file),
                        ([c, str(clip), "-s", a, "-o", f"{tmp_path}/a_file/out/"], is_file)):
        line = _cli_failure([*argv, *srv], capsys)
        assert line == f"adain-stylize: error: -o {argv[-1]}: cannot write there: {wrong}", line
    assert sorted(tmp_path.rglob("*")) == before
    # A folder still to be made is made by the save, not by the check: a run that fails leaves none.
    line = _cli_failure([c, "-s", a, "-o", f"{tmp_path}/new/sub/x.png", *srv], capsys)
    assert "cannot reach the server" in line and not (tmp_path / "new").exists()


def test_a_name_over_the_file_systems_limit(server: ServerProcess, files: dict[str, Path], tmp_path: Path,
                                           capsys) -> None:
    """An outside tour's: a content named near the 255-byte limit had no room for "_stylized_STYLE", and its
    "File name too long" stopped a folder run (7 of 11 written); alone, it blamed the -o folder. Such a name is
    cut to fit, marked with a digest (two cut alike stay two, a run again writes the same); an output's own
    write error (here a folder of its name) is that file's failure, said after the rest are written."""
    photos, a = tmp_path / "in", str(files["a.png"])
    photos.mkdir()
    long = "é" * 124  # 248 bytes: 263 with "_stylized_a.png"
    for name in ("a0.png", "b0.png", f"{long}.png", f"{long}x.png"):
        (photos / name).write_bytes(CONTENT)
    out = tmp_path / "out"
    # a folder where a0's output goes: the first output (checked before any call as the folder's stand-in, it
    # stopped the run where b0's went on: a review's)
    (out / "a0_stylized_a.png").mkdir(parents=True)
    srv = ["--server", server.target]
    for _ in range(2):  # again: the same names, overwritten
        assert main([str(photos), "-s", a, "-o", f"{out}/", *srv]) == 1
        said, err = capsys.readouterr()
        assert said.splitlines()[0] == f"3 of 4 outputs written to {out}/ (4 images, 0 videos)", said
        assert err.splitlines()[0].startswith("adain-stylize: note: 2 outputs named after a content would be over "
                                              f"the 255 bytes a file name may have in {out}/"), err
        assert err.splitlines()[1:] == [f"adain-stylize: error: {out}/a0_stylized_a.png: cannot write: Is a directory"]
        names = sorted(p.name for p in out.iterdir())
        assert len(names) == 4 and names[:2] == ["a0_stylized_a.png", "b0_stylized_a.png"], names
        for name in names[2:]:
            assert re.fullmatch("é+~[0-9a-f]{8}_stylized_a.png", name) and len(os.fsencode(name)) <= 255, name
        assert names[2] != names[3]
    # one content, -o a folder: cut alike, and its line names it; -o a name too long: its bytes and the limit
    assert main([str(photos / f"{long}.png"), "-s", a, "-o", f"{tmp_path}/one/", *srv]) == 0
    [written] = (tmp_path / "one").iterdir()
    assert capsys.readouterr().out == f"{written} (64 x 48)\n" and written.name.endswith("_stylized.png")
    for folder in ("one", "new"):  # (refused before any call; a folder still to be made checked too)
        too_long = f"{tmp_path}/{folder}/{long}éééé.png"
        line = _cli_failure([str(photos / "a0.png"), "-s", a, "-o", too_long, "--server",
                             f"127.0.0.1:{free_port()}"], capsys)
        assert line == (f"adain-stylize: error: -o {too_long}: cannot write there: its file name is too long (260 "
                        "bytes, the most is 255)"), line


def test_save_writes_whole_files_with_the_usual_permissions(server: ServerProcess, files: dict[str, Path],
                                                            tmp_path: Path) -> None:
    """A write that fails (here ``ulimit -f``) leaves the old file as it was and no temporary one; a new
    file gets 0o666 less the umask, not mkstemp's 0o600."""
    (tmp_path / "o").mkdir()
    out = tmp_path / "o" / "out.png"
    out.write_bytes(b"the old output")
    # The limit is set by the child itself, not in a preexec_fn: a child forked (not spawned) from this
    # process, whose gRPC channels are live, can abort before it execs (grpcio >= 1.80, grpc/grpc#43055).
    limited = ("import resource, runpy, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (2048, resource.RLIM_INFINITY));"
               " sys.argv[0] = 'adain-stylize'; runpy.run_module('adain.client.cli', run_name='__main__')")
    proc = subprocess.run(
        [sys.executable, "-c", limited, str(files["content.png"]), "-s", str(files["a.png"]), "-o", str(out),
         "--server", server.target],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )
    assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [
        f"adain-stylize: error: -o {out}: cannot write: File too large"], proc.stderr
    assert out.read_bytes() == b"the old output" and [p.name for p in out.parent.iterdir()] == ["out.png"]
    out.unlink()
    old = os.umask(0o027)
    try:
        assert main([str(files["content.png"]), "-s", str(files["a.png"]), "-o", str(out), "--server",
                     server.target]) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o640 and Image.open(out).size == (64, 48)
    # a file replaced keeps its mode (a private output came back world-readable), and a long legal name works
    # (the temporary name, 15 bytes longer, failed with ENAMETOOLONG)
    out.chmod(0o600)
    long = tmp_path / "o" / ("x" * 250 + ".png")
    wide = tmp_path / "o" / ("写" * 83 + ".png")  # 253 bytes: cut at 200 characters, it was 605
    for target in (out, long, wide):
        assert main([str(files["content.png"]), "-s", str(files["a.png"]), "-o", str(target), "--server",
                     server.target]) == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600 and Image.open(long).size == Image.open(wide).size == (64, 48)
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(["out.png", long.name, wide.name])


def test_cli_video_to_webm_resamples_the_sound(server: ServerProcess, files: dict[str, Path], tmp_path: Path,
                                               capsys) -> None:
    """44.1 kHz AAC into WebM: Opus takes 48 kHz, so the sound is resampled (it was an FFmpeg traceback);
    a video output too gets 0o666 less the umask, and -o NEW/ is made and named after the clip."""
    from synth import make_video, video_facts

    clip = tmp_path / "av.mp4"
    make_video(clip, frames=6, audio=True)
    out = tmp_path / "x.webm"
    old = os.umask(0o027)
    try:
        code = main([str(clip), "-s", str(files["a.png"]), "-o", str(out), "--temporal", "none", "--server",
                     server.target])
    finally:
        os.umask(old)
    assert code == 0, capsys.readouterr().err
    facts = video_facts(out)
    assert (facts["frames"], facts["audio"]) == (6, "opus") and facts["audio_packets"] >= 20
    assert stat.S_IMODE(out.stat().st_mode) == 0o640
    assert main([str(clip), "-s", str(files["a.png"]), "-o", f"{tmp_path}/new/", "--temporal", "none", "--server",
                 server.target]) == 0
    assert video_facts(tmp_path / "new" / "av_stylized.mp4")["frames"] == 6
    assert list(tmp_path.rglob("*.part")) == []  # no temporary file left


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])  # SIGHUP: a closed terminal left its .part
def test_sigterm_during_a_video_removes_its_temporary_file(server: ServerProcess, files: dict[str, Path],
                                                           tmp_path: Path, sig: signal.Signals) -> None:
    from synth import make_video

    clip = tmp_path / "long.mp4"
    make_video(clip, frames=120, fps=12)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    # PYTHONFAULTHANDLER: where the CLI was, should it never make its file.
    proc = subprocess.Popen(
        [sys.executable, "-m", "adain.client.cli", str(clip), "-s", str(files["a.png"]), "-o", str(out_dir / "k.mp4"),
         "--server", server.target], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=REPO,
        env={**os.environ, "PYTHONFAULTHANDLER": "1"})
    try:
        # The clip's .part file: a name listed twice running. The CLI's check that the folder takes a file makes one
        # of the same pattern and removes it at once; seen, it was gone when listed again ("found []" about once in
        # four full runs, the CLI a moment later in StyleTransferClient.__init__ or awaiting its first reply, 1.4 s
        # into the test: read as a stall until the call's duration was seen).
        deadline, seen, names = time.monotonic() + 60, None, []
        while proc.poll() is None and time.monotonic() < deadline and not (names and names == seen):
            seen, names = names, sorted(p.name for p in out_dir.iterdir())
            time.sleep(0.005)
        found = [Path(name).suffix for name in names]
        if found != [".part"]:  # (say what the CLI did: SIGABRT makes faulthandler print every thread's stack)
            native, on_server = _native_stack(proc.pid), _native_stack(server.proc.pid)
            proc.send_signal(signal.SIGABRT)
            err = proc.communicate(timeout=30)[1]
            pytest.fail(f"expected one .part file, found {found}; the CLI's stderr: {err}\n{native}\nthe server's last "
                        f"lines: {''.join(server.stderr_lines[-20:])}\nthe server's threads:\n{on_server}")
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + sig and err.strip().splitlines()[-1] == "adain-stylize: error: interrupted", err
    assert "Traceback" not in err and list(out_dir.iterdir()) == []


def _native_stack(pid: int) -> str:
    """A stuck process's threads as the kernel sees them (state, wait channel) and its native stack (py-spy's, where
    the dev extra installed it): what a Python traceback cannot show."""
    lines = []
    for task in sorted(Path(f"/proc/{pid}/task").glob("*")):
        with contextlib.suppress(OSError):
            stat_fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            lines.append(f"thread {task.name}: state {stat_fields[0]}, waiting in {(task / 'wchan').read_text()!r}, "
                         f"{stat_fields[11]} user / {stat_fields[12]} system ticks")
    sys.path.insert(0, str(REPO / "benchmarks"))
    from gil_sampler import py_spy

    if spy := py_spy():
        try:
            run = subprocess.run([spy, "dump", "--native", "--pid", str(pid)], capture_output=True, text=True,
                                 timeout=30)
            lines.append(f"py-spy dump --native: {run.stdout}{run.stderr}")
        except subprocess.TimeoutExpired:
            lines.append("py-spy dump --native: no answer in 30 s")
    return "\n".join(lines)


def test_close_after_an_interrupt_as_a_call_starts_returns(server: ServerProcess, monkeypatch,
                                                           files: dict[str, Path]) -> None:
    """The SIGTERM test above hung once in ~30 runs under load (4 of 160 in a sweep of the signal's moment):
    the CLI's exit closes the channel, and gRPC's close waits for every streaming call to let go. A signal
    whose handler runs as gRPC has started such a call but not yet the thread that polls for its events
    leaves one that never does (a known kind of gRPC bug: grpc/grpc#19973 fixed it for a call's own wait,
    not for this moment, in grpcio 1.85). Here the interrupt lands exactly there; close() must still
    return."""
    import threading

    import grpc._channel as grpc_channel  # gRPC's own module: where the signal's handler ran

    def interrupted(state: object) -> None:
        raise KeyboardInterrupt

    client = StyleTransferClient(server.target)
    monkeypatch.setattr(grpc_channel, "_run_channel_spin_thread", interrupted)
    with pytest.raises(KeyboardInterrupt):
        next(client.stylize_video([str(files["content.png"])], str(files["a.png"])))
    closer = threading.Thread(target=client.close, daemon=True)
    closer.start()
    closer.join(30)
    assert not closer.is_alive(), "close() hung on the interrupted call"


def test_an_interrupt_as_the_temporary_file_is_made_leaves_none(tmp_path: Path, monkeypatch) -> None:
    # The SIGTERM test above once left its .part file in CI: the signal's handler ran between the file's
    # creation and the block that removes it on an error (at the next call, os.close).
    from adain import files

    real_close = os.close

    def interrupted(fd: int) -> None:
        real_close(fd)
        raise KeyboardInterrupt

    monkeypatch.setattr(files.os, "close", interrupted)
    with pytest.raises(KeyboardInterrupt):
        with files.atomic_path(tmp_path / "out.mp4"):
            pass
    assert list(tmp_path.iterdir()) == []


def test_client_refuses_what_it_cannot_send(server: ServerProcess, client: StyleTransferClient, tmp_path: Path,
                                            files: dict[str, Path], capsys) -> None:
    """Devices, FIFOs and files over the message limit are refused before they are read, naming the file and
    the limit; a request whose parts together are over it names them; a weight beyond float32 is refused."""
    srv, a, o = ["--server", server.target], str(files["a.png"]), str(tmp_path / "z.png")
    big = tmp_path / "big.bmp"
    with big.open("wb") as f:  # 40 MiB, sparse: nothing is written, and nothing may be read
        f.truncate(40 * 2**20)
    line = _cli_failure([str(big), "-s", a, "-o", o, *srv], capsys)
    assert f"error: {big} is 40 MiB, more than the 32 MiB" in line and "max_message_mb" in line
    os.mkfifo(tmp_path / "fifo.png")
    for path in ("/dev/zero", str(tmp_path / "fifo.png")):
        assert "not a regular file" in _cli_failure([path, "-s", a, "-o", o, *srv], capsys)
        assert "not a regular file" in _cli_failure([str(files["content.png"]), "-s", path, "-o", o, *srv], capsys)
        with pytest.raises(StyleTransferError, match="styles.0.: .* is not a regular file"):
            client.stylize(CONTENT, path)
    with StyleTransferClient(server.target, max_message_mb=(len(CONTENT) + 100) / 2**20) as small:
        # RESOURCE_EXHAUSTED, as the server answers a message over its limit (it was INVALID_ARGUMENT here)
        with pytest.raises(StyleTransferError, match=r"^RESOURCE_EXHAUSTED: request: .* in all \(content"):
            small.stylize(CONTENT, STYLE_A)
    with pytest.raises(StyleTransferError, match=r"styles\[0\]\.weight: 1e\+40 is out of range"):
        client.stylize(CONTENT, [(STYLE_A, 1e40)])
    with pytest.raises(StyleTransferError, match=f"token_file: no such file: {tmp_path / 'missing'}"):
        StyleTransferClient(server.target, token_file=tmp_path / "missing")
    line = _cli_failure([str(files["content.png"]), "-s", a, "-o", o, "--token-file", str(tmp_path), *srv], capsys)
    assert line.startswith("adain-stylize: error: --token-file: ")
    assert not Path(o).exists()


def test_list_styles_never_writes_a_thumbnail_outside_its_folder(tmp_path: Path, capsys) -> None:
    """--thumbnails DIR saves DIR/NAME.jpg with NAME from the server's reply: a hostile server (or anyone on the
    default plaintext connection) names its styles with paths. The fake server here stands for that server."""
    from adain.v1 import style_transfer_pb2 as pb

    outside = tmp_path / "outside"
    outside.mkdir()
    # (a right-to-left override would print the rest of its line backwards; any script's letters are names)
    names = ["../outside/relative", str(outside / "absolute"), "..", "\x1b[2Jclear", "gpj.\u202eevil", "good",
             "ゴッホ"]
    hostile = [pb.LibraryStyle(name=name, style_id=f"{i:064x}", width=1, height=1, thumbnail=b"#!/bin/sh\n")
               for i, name in enumerate(names)]
    thumbs = tmp_path / "thumbs"
    with library_stub(hostile) as address:
        assert main(["--list-styles", "--server", address, "--thumbnails", str(thumbs)]) == 0
    assert list(outside.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["outside", "thumbs"]
    assert sorted(p.name for p in thumbs.iterdir()) == ["good.jpg", "ゴッホ.jpg"]
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert [line.split()[0] for line in lines] == ["good", "ゴッホ"]
    assert lines[1].index("1 x 1") == lines[0].index("1 x 1") - 3  # one column on a terminal: 3 characters of 2 cells
    warnings = err.strip().splitlines()
    assert len(warnings) == 5, err
    assert all(w.startswith("adain-stylize: warning: skipped the style named ") for w in warnings), err
    assert "'../outside/relative'" in warnings[0] and "1-64 letters or digits of any script" in warnings[0]
    assert "\x1b" not in err and "\u202e" not in err  # the name is quoted, its control characters escaped


# --- --local: a server of the command's own ---------------------------------------------------------------------


def _local_servers(cli_pid: int) -> list[int]:
    """The pids of the servers a CLI process started with --local (its children running adain.server)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if parent == cli_pid and b"adain.server" in cmd:
            pids.append(int(entry.name))
    return pids


def _gone(pid: int, within: float) -> bool:
    end = time.monotonic() + within
    while time.monotonic() < end:
        try:
            if (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return True  # exited; its parent (dead itself) has not reaped it yet
        except OSError:
            return True
        time.sleep(0.05)
    return False


@pytest.fixture()
def local_env(decoder_path: Path, tmp_path: Path) -> dict[str, str]:
    """The environment of a CLI whose --local server is the tests' (their decoder, torch on one thread)."""
    return dict(os.environ, ADAIN_DECODER=str(decoder_path), ADAIN_DEVICE="cpu", ADAIN_BACKEND="torch",
                ADAIN_TORCH_THREADS="1", ADAIN_MAX_REFINE_STEPS="0", TMPDIR=str(tmp_path), ADAIN_SERVER="10.0.0.1:1")


@needs_torch
def test_local_stylizes_without_a_running_server(files: dict[str, Path], tmp_path: Path, local_env) -> None:
    """--local starts a server for the command (its settings from ADAIN_* variables; $ADAIN_SERVER is replaced, not
    an error), stylizes, and stops it: nothing is left running or in the temporary folder."""
    out = tmp_path / "out" / "x.png"
    proc = subprocess.run([sys.executable, "-m", "adain.client.cli", str(files["content.png"]), "-s",
                           str(files["a.png"]), "-o", str(out), "--local"], capture_output=True, text=True,
                          timeout=120, cwd=REPO, env=local_env)
    assert proc.returncode == 0, proc.stderr
    assert Image.open(out).size == (64, 48)
    assert not list(tmp_path.glob("adain-local-*"))  # its token and log removed
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(files["content.png"], folder / "p.png")
    run = subprocess.run([sys.executable, "-m", "adain.client.cli", str(folder), "-s", str(files["a.png"]), "-o",
                          f"{tmp_path}/outs/", "--local"], capture_output=True, text=True, timeout=120, cwd=REPO,
                         env=local_env)
    assert run.returncode == 0, run.stderr
    # (no "images per replica: vm:PORT 1": its own server's name is noise, said only where replicas are)
    assert run.stdout.splitlines() == [f"1 of 1 output written to {tmp_path}/outs/ (1 image, 0 videos)"], run.stdout
    info = subprocess.run([sys.executable, "-m", "adain.client.cli", "--server-info", "--local"], capture_output=True,
                          text=True, timeout=120, cwd=REPO, env=local_env)
    assert info.returncode == 0 and '"backend": "torch"' in info.stdout, info.stderr
    # a library style by name: its server has none unless ADAIN_STYLES_DIR gives one, which the error says
    named = subprocess.run([sys.executable, "-m", "adain.client.cli", str(files["content.png"]), "-s", "id:mosaic",
                            "-o", str(tmp_path / "named.png"), "--local"], capture_output=True, text=True, timeout=120,
                           cwd=REPO, env=local_env)
    assert named.returncode == 1 and named.stderr.strip().endswith(
        "--style id:mosaic: unknown style 'mosaic': not a registered style's id, and this server has no style library "
        "(--local's server reads its library from ADAIN_STYLES_DIR=FOLDER, a folder of style images)"), named.stderr


@needs_torch
def test_local_refuses_a_server_and_says_why_its_server_did_not_start(files: dict[str, Path], tmp_path: Path,
                                                                      local_env) -> None:
    args = [sys.executable, "-m", "adain.client.cli", str(files["content.png"]), "-s", str(files["a.png"]),
            "-o", str(tmp_path / "x.png"), "--local"]
    for extra in (["--server", "127.0.0.1:1"], ["--tls"], ["--server", DEFAULT_ADDRESS]):  # given, even as default
        proc = subprocess.run(args + extra, capture_output=True, text=True, timeout=60, cwd=REPO, env=local_env)
        assert proc.returncode == 1 and f"not with {extra[0]}" in proc.stderr, proc.stderr
    # what the command checks itself is refused before its server starts (no ~2 s wait for it)
    over = args[:-3] + ["-o", str(files["a.png"]), "--local"]
    proc = subprocess.run(over, capture_output=True, text=True, timeout=60, cwd=REPO, env=local_env)
    assert proc.returncode == 1 and "would overwrite the --style file" in proc.stderr, proc.stderr
    assert "starting a server" not in proc.stderr, proc.stderr
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=REPO,
                          env=dict(local_env, ADAIN_PRECISION="bogus"))
    assert proc.returncode == 1 and not (tmp_path / "x.png").exists()
    assert proc.stderr.strip().endswith("adain-server: error: ADAIN_PRECISION='bogus': must be one of auto, bf16, "
                                        "fp32, int8, got 'bogus' (see --help)"), proc.stderr  # the server's line
    # without --local, where nothing listens, the message says how to get a server
    free = subprocess.run(args[:-1] + ["--server", f"127.0.0.1:{free_port()}"], capture_output=True, text=True,
                          timeout=60, cwd=REPO, env=local_env)
    assert "add --local" in free.stderr, free.stderr


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc, and the parent-death signal, are Linux's")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
@needs_torch
def test_local_server_stops_with_the_command_however_it_ends(files: dict[str, Path], tmp_path: Path, local_env,
                                                             sig: signal.Signals) -> None:
    """Ctrl-C: the command stops its server (exit 130). SIGKILL, which no handler sees: the kernel sends the server
    SIGTERM as its parent dies (Linux's parent-death signal), so no server is left running."""
    folder = tmp_path / "contents"
    folder.mkdir()
    for i in range(40):
        (folder / f"c{i}.png").write_bytes(CONTENT)
    cli = subprocess.Popen([sys.executable, "-m", "adain.client.cli", str(folder), "-s", str(files["a.png"]), "-o",
                            str(tmp_path / "out") + "/", "--local", "--size", "256"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True, cwd=REPO, env=local_env)
    try:
        end = time.monotonic() + 60
        while not (tmp_path / "out").is_dir() or not any((tmp_path / "out").iterdir()):  # serving: outputs come
            assert cli.poll() is None and time.monotonic() < end, cli.stderr.read() if cli.poll() is not None else ""
            time.sleep(0.05)
        servers = _local_servers(cli.pid)
        assert len(servers) == 1
        cli.send_signal(sig)
        code = cli.wait(30)
        assert _gone(servers[0], 15), "the --local server outlived its command"
        assert code == (130 if sig == signal.SIGINT else -signal.SIGKILL), cli.stderr.read()
    finally:
        if cli.poll() is None:
            cli.kill()
    left = list(tmp_path.glob("adain-local-*"))  # (TMPDIR: local_env's) its token and log: SIGKILL leaves them
    assert len(left) == (1 if sig == signal.SIGKILL else 0), left
    if sig == signal.SIGKILL:  # the next --local removes a killed command's folder (one a kill, for good, before)
        info = subprocess.run([sys.executable, "-m", "adain.client.cli", "--server-info", "--local"],
                              capture_output=True, text=True, timeout=120, cwd=REPO, env=local_env)
        assert info.returncode == 0, info.stderr
        assert not list(tmp_path.glob("adain-local-*")), list(tmp_path.glob("adain-local-*"))


def test_an_images_deadline_grows_with_its_work(tmp_path: Path) -> None:
    """No --timeout: 120 s, plus 10 a megapixel rendered and 3 a refine step (a 24-MP print's tiles failed at the
    fixed 120 s on a busy CPU, the README's own example); a --timeout given is the deadline, whatever the work."""
    from adain.client.cli import build_parser, image_timeout, timeout_of

    big = tmp_path / "big.png"
    Image.new("RGB", (4000, 3000)).save(big)  # 12 MP
    args = build_parser().parse_args([str(big), "-s", str(big), "-o", "x.png"])
    assert timeout_of(args) == 120 and image_timeout(args, big, 0) == pytest.approx(240)
    assert image_timeout(args, big, 100) == pytest.approx(540)
    args = build_parser().parse_args([str(big), "-s", str(big), "-o", "x.png", "--size", "1000"])  # 1000 x 750 rendered
    assert image_timeout(args, big, 0) == pytest.approx(127.5)
    args = build_parser().parse_args([str(big), "-s", str(big), "-o", "x.png", "--size", "8000"])  # never scaled up
    assert image_timeout(args, big, 0) == pytest.approx(240)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")  # the server says what is wrong with it, in the default time
    assert image_timeout(args, broken, 0) == 120
    args = build_parser().parse_args([str(big), "-s", str(big), "-o", "x.png", "--timeout", "30"])
    assert timeout_of(args) == 30 and image_timeout(args, big, 100) == 30


def test_cli_says_request_fields_as_flags(server: ServerProcess, files: dict[str, Path], tmp_path: Path,
                                          capsys) -> None:
    c, a, o = str(files["content.png"]), str(files["a.png"]), str(tmp_path / "x.png")
    line = _cli_failure([c, "-s", a, "--refine", "3", "--style-weight", "0", "--content-weight", "0", "-o", o,
                         "--server", server.target], capsys)
    assert line.endswith("--content-weight and --style-weight are both 0"), line  # not the request's field names


def test_a_folder_run_waits_for_places_in_a_full_refine_queue(decoder_path: Path, tmp_path: Path, capsys) -> None:
    """Four refines at once (-j 4) where the server takes one and queues one: the other two are refused
    RESOURCE_EXHAUSTED with a RetryInfo, and wait for it (the whole run failed at the first refusal)."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(4):
        (photos / f"p{i}.png").write_bytes(make_image(48, 40, seed=i))
    style = tmp_path / "s.png"
    style.write_bytes(STYLE_A)
    srv = ServerProcess(decoder_path, "--max-refine-jobs", "1", "--max-refine-queue", "1", "--log-level", "INFO")
    try:
        srv.wait_serving()
        assert main([str(photos), "-s", str(style), "--refine", "2", "-j", "4", "-o", str(tmp_path / "out"),
                     "--server", srv.target]) == 0, capsys.readouterr().err
        assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"p{i}_stylized_s.png" for i in range(4)]
        assert any("RESOURCE_EXHAUSTED" in line for line in srv.stderr_lines)  # (it was full, and refused)
    finally:
        srv.kill()


def test_a_folder_run_takes_a_3d_cameras_mpo(server: ServerProcess, files: dict[str, Path], tmp_path: Path) -> None:
    """An .MPO (Fujifilm 3D, Nintendo 3DS: JPEGs in one file) worked named, and was skipped in a folder."""
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.open(files["content.png"]).convert("RGB").save(photos / "m10.MPO", "MPO")
    assert main([str(photos), "-s", str(files["a.png"]), "-o", str(tmp_path / "out"), "--server", server.target]) == 0
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["m10_stylized_a.png"]


def test_skip_existing_makes_only_the_outputs_not_there(server: ServerProcess, files: dict[str, Path],
                                                        tmp_path: Path, capsys) -> None:
    """A folder run stopped halfway and started again made every output again (a photographer's 500 photos, or a
    night of refines): --skip-existing leaves those there as they are and makes the rest; with every one there it
    asks no server at all; a single content's output there is left too."""
    photos, out = tmp_path / "photos", tmp_path / "out"
    photos.mkdir()
    for i in range(3):
        shutil.copy(files["content.png"], photos / f"p{i}.png")
    argv = [str(photos), "-s", str(files["a.png"]), "-o", str(out), "--server", server.target]
    assert main(argv) == 0
    (out / "p1_stylized_a.png").unlink()  # as if stopped before it
    kept = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    capsys.readouterr()
    assert main([*argv, "--skip-existing"]) == 0
    said = capsys.readouterr().out
    assert "1 of 1 output written to" in said and "2 already there, left as they were (--skip-existing)" in said, said
    assert sorted(p.name for p in out.iterdir()) == ["p0_stylized_a.png", "p1_stylized_a.png", "p2_stylized_a.png"]
    assert all(out.joinpath(name).stat().st_mtime_ns == t for name, t in kept.items())  # not written again
    # all there: no server asked (this one is not listening)
    assert main([*argv[:-1], f"127.0.0.1:{free_port()}", "--skip-existing"]) == 0
    assert "0 of 3 outputs written to" in capsys.readouterr().out
    one = out / "p0_stylized_a.png"
    assert main([str(photos / "p0.png"), "-s", str(files["a.png"]), "-o", str(one), "--server",
                 f"127.0.0.1:{free_port()}", "--skip-existing"]) == 0
    assert capsys.readouterr().out.strip() == f"{one}: already there, left as it is (--skip-existing)"
    assert one.stat().st_mtime_ns == kept[one.name]


def test_a_token_on_the_command_line_is_refused_without_echoing_it(files: dict[str, Path], tmp_path: Path,
                                                                  capsys) -> None:
    """--token SECRET was taken as --token-file's abbreviation: "--token-file: no such file: SECRET" in CI logs."""
    for flag in (["--token", "MY-SECRET-TOKEN-0123456789"], ["--token=MY-SECRET-TOKEN-0123456789"]):
        code = main([str(files["content.png"]), "-s", str(files["a.png"]), "-o", str(tmp_path / "x.png"), *flag])
        err = capsys.readouterr().err
        assert code == 2 and "--token: a token is not given on the command line" in err
        assert "SECRET" not in err and "--token-file FILE" in err


def test_to_pil_leaves_pillows_guard_as_it_was_and_checks_the_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """to_pil raised Pillow's process-wide decompression-bomb guard to whatever size a reply claimed (a reply saying
    4e9 x 4e9 took it away from every upload the application checked after: a thread-safety review). A result is
    read by its format's own reader, over the guard where the print is that large, and must be the size it says."""
    import io

    from adain.client import StylizeResult, Timings

    def result(width: int, height: int, reply: tuple[int, int], fmt: str = "png") -> StylizeResult:
        out = io.BytesIO()
        Image.new("L" if width * height > 10_000 else "RGB", (width, height)).save(out, fmt.upper())
        return StylizeResult(out.getvalue(), *reply, fmt, Timings(0, 0, 0, 0, 1), "r")

    guard = 89_478_485  # Pillow's default (other tests in this process may have raised it: set for this one)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", guard)
    big = int(guard * 2.2) // 10_000  # over twice the guard: Image.open refuses it as a bomb
    assert result(big, 10_000, (big, 10_000)).to_pil().size == (big, 10_000)
    for fmt in ("png", "jpeg", "webp"):
        assert result(30, 20, (30, 20), fmt).to_pil().size == (30, 20)
        with pytest.raises(ValueError, match=rf"the server's {fmt.upper()} is 30x20, and its reply says 4000000000x2"):
            result(30, 20, (4_000_000_000, 2), fmt).to_pil()
    assert Image.MAX_IMAGE_PIXELS == guard


def test_a_close_from_another_thread_is_a_style_transfer_error(server: ServerProcess) -> None:
    """A call that passed the closed check as another thread closed the client got gRPC's ValueError ("Cannot invoke
    RPC on closed channel!"), past an application's except StyleTransferError (9 in 30 rounds of 16 threads: a
    thread-safety review)."""
    import threading

    outcomes: list[str] = []
    for _ in range(12):
        client = StyleTransferClient(server.target, timeout=30, retries=0)
        client.health()

        def calls(client: StyleTransferClient = client) -> None:
            while True:
                try:
                    client.server_info()
                except StyleTransferError:
                    return
                except Exception as e:  # noqa: BLE001 - what the test looks for
                    outcomes.append(f"{type(e).__name__}: {e}")
                    return

        threads = [threading.Thread(target=calls) for _ in range(8)]
        for t in threads:
            t.start()
        time.sleep(0.05)
        client.close()
        for t in threads:
            t.join(30)
    assert not outcomes, outcomes


def test_a_frame_that_fails_at_once_logs_nothing_from_grpcs_thread(server: ServerProcess, caplog) -> None:
    """The frames are read on gRPC's thread, which cancelled the call through a list the caller's thread filled
    only once StylizeVideo returned: a frame that failed first logged gRPC's "Exception iterating requests!" with
    an IndexError (7 calls in 100: a thread-safety review). The caller got the right error either way."""
    import logging

    caplog.set_level(logging.ERROR, logger="grpc")
    with StyleTransferClient(server.target, timeout=30) as client:
        for _ in range(40):
            with pytest.raises(StyleTransferError, match="frames\\[0\\]: no such file"):
                list(client.stylize_video(["/nonexistent/frame0.png"], make_image(32, 32, seed=2)))
    time.sleep(0.3)
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records]


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full here")
def test_a_full_stdout_is_named(server: ServerProcess, files: dict[str, Path], tmp_path: Path) -> None:
    """Standard output on a full disk: the command said "[Errno 28] No space left on device", naming nothing (a cron
    job's log on a full disk; its outputs were all written: an operator's storage tour)."""
    out = tmp_path / "out.png"
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "adain.client.cli", str(files["content.png"]), "-s",
                               str(files["a.png"]), "-o", str(out), "--server", server.target], cwd=REPO,
                              stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stderr == (
        "adain-stylize: error: standard output: cannot write: No space left on device\n"), proc.stderr
    assert Image.open(out).size == (64, 48)  # the output itself is whole


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full here")
def test_save_on_a_full_disk_names_the_file() -> None:
    """StylizeResult.save on a full disk raised "[Errno 28] No space left on device" naming no file (a storage tour)."""
    from adain.client import StylizeResult, Timings

    with pytest.raises(OSError) as info:
        StylizeResult(b"x" * 10, 1, 1, "png", Timings(0, 0, 0, 0, 1), "r").save("/dev/full")
    assert info.value.filename == "/dev/full" and "No space left on device" in str(info.value)
