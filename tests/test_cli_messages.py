"""What ``adain-stylize`` says when something is wrong, in the words of its own command line: the flags and
files the user gave, not the request's field names; addresses, token files and outputs it cannot use, said
before anything is sent. Found by a new user's walkthrough."""

from __future__ import annotations

import http.server
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from adain.client import StyleTransferClient, StyleTransferError
from adain.client.cli import _content_failed, _describe, _one_content, build_parser, main
from helpers import ServerProcess, cli_on_a_terminal, free_port, library_stub, make_certificates
from synth import make_image, make_mask

CONTENT = make_image(64, 48, seed=81)
STYLE = make_image(40, 40, seed=82, kind="noise")


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, Path]:
    out = {}
    for name, data in {"content.png": CONTENT, "a.png": STYLE, "notimage.png": b"not an image at all",
                       "wrongsize.png": make_mask(30, 30), "empty.png": b""}.items():
        (tmp_path / name).write_bytes(data)
        out[name] = tmp_path / name
    return out


def _error(argv: list[str], capsys: pytest.CaptureFixture[str], code: int = 1) -> str:
    """The one error line of a failed run (its exit status ``code``)."""
    assert main(argv) == code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("adain-stylize: error: "), err
    return lines[0].removeprefix("adain-stylize: error: ")


# --- the server's refusals of one content's request, named as the CLI's flags and files ------------------------


def test_one_contents_refusals_name_the_flags_and_files(server: ServerProcess, files: dict[str, Path],
                                                        tmp_path: Path, capsys) -> None:
    c, a, bad, wrong = (str(files[n]) for n in ("content.png", "a.png", "notimage.png", "wrongsize.png"))
    srv, o = ["--server", server.target], str(tmp_path / "out.png")
    # styles[1].image (0-based, the file never named)
    line = _error([c, "-s", a, "-s", bad, "-o", o, *srv], capsys)
    assert line.startswith(f"--style {bad}: not a decodable image"), line
    # a style given with its weight is named as given
    line = _error([c, "-s", a, "-s", f"{bad}:0.5", "-o", o, *srv], capsys)
    assert line.startswith(f"--style {bad}:0.5: not a decodable image"), line
    # styles[0].mask, and the one mask of two styles ("mask")
    assert _error([c, "-s", a, "--mask", wrong, "-o", o, *srv], capsys) == \
        f"--mask {wrong}: mask is 30 x 30, content is 64 x 48"
    assert _error([c, "-s", a, "-s", a, "--mask", wrong, "-o", o, *srv], capsys) == \
        f"--mask {wrong}: mask is 30 x 30, content is 64 x 48"
    # labels and styles[i].label
    line = _error([c, "-s", a, "-s", a, "--labels", wrong, "--label", "1", "--label", "2", "-o", o, *srv], capsys)
    assert line == f"--labels {wrong}: labels is 30 x 30, content is 64 x 48"
    line = _error([c, "-s", a, "-s", a, "--labels", c, "--label", "1", "--label", "2", "-o", o, *srv], capsys)
    assert line.startswith("--label 1: no pixel of labels has label 1"), line
    # styles[0].alpha
    line = _error([c, "-s", a, "--region-alpha", "0.5", "-o", o, *srv], capsys)
    assert line.startswith("--region-alpha 0.5: a per-style alpha needs regions"), line
    # refine_steps: the server's description kept
    assert _error([c, "-s", a, "--refine", "9999", "-o", o, *srv], capsys) == \
        "--refine: 9999 is over the limit of max_refine_steps=500"
    # content: the file
    line = _error([bad, "-s", a, "-o", o, *srv], capsys)
    assert line.startswith(f"{bad}: not a decodable image"), line
    # an unknown library name or preset: the flag, and --list-styles (no ListStyles, an RPC's name)
    line = _error([c, "-s", "id:wave", "-o", o, *srv], capsys)
    assert line.startswith("--style id:wave: unknown style 'wave'"), line
    line = _error([c, "-s", "preset:nosuch", "-o", o, *srv], capsys)
    assert line.startswith("--style preset:nosuch: no preset named 'nosuch'") and "see --list-styles)" in line, line
    assert "ListStyles" not in line
    line = _error([c, "-s", f"id:{'ab' * 32}", "-o", o, *srv], capsys)  # an unknown registered id: no RegisterStyle
    assert line.startswith(f"--style id:{'ab' * 32}: unknown style id") and line.endswith("(--style FILE)"), line
    assert not Path(o).exists()


def test_a_videos_option_is_named_without_options_dot(server: ServerProcess, files: dict[str, Path],
                                                      tmp_path: Path, capsys) -> None:
    pytest.importorskip("av")
    from synth import make_video

    clip = tmp_path / "clip.mp4"
    make_video(clip, frames=3)
    a, bad, wrong = str(files["a.png"]), str(files["notimage.png"]), str(files["wrongsize.png"])
    srv, o = ["--server", server.target], str(tmp_path / "out.mp4")
    assert _error([str(clip), "-s", a, "--mask", wrong, "-o", o, *srv], capsys) == \
        f"--mask {wrong}: mask is 30 x 30, frames are 64 x 48"  # a stream has frames, not a content
    line = _error([str(clip), "-s", a, "-s", bad, "-o", o, *srv], capsys)
    assert line.startswith(f"--style {bad}: not a decodable image"), line
    # a folder of an image and a clip: the summary counts each kind, and says the replica line counts images only
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "photo.png").write_bytes(CONTENT)
    (folder / "clip.mp4").write_bytes(clip.read_bytes())
    assert main([str(folder), "-s", a, "-o", f"{tmp_path}/out/", *srv]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"2 of 2 outputs written to {tmp_path}/out/ (1 image, 1 video)", out
    assert out[1].startswith("images per replica: ") and out[1].endswith(" 1 (videos not counted)"), out


def test_the_fields_of_a_reply_without_details_and_of_a_folder_run() -> None:
    """Without the BadRequest detail (googleapis-common-protos is optional) the first field of the text is
    translated; a folder run's call (each style alone: its styles[0] is that style, not the first --style) names
    its own style and content: it said "a.png: styles[0].style_id: ..." and "b.png: content: ..."."""
    args = build_parser().parse_args(["c.png", "-s", "a.png", "-s", "b.png", "-o", "o.png"])
    args.content = Path("c.png")
    e = StyleTransferError(grpc.StatusCode.INVALID_ARGUMENT, "styles[1].image: not a decodable image")
    assert _describe(e, args, cli_terms=True) == "--style b.png: not a decodable image"
    assert _describe(e, args) == "styles[1].image: not a decodable image"
    e = StyleTransferError(grpc.StatusCode.INVALID_ARGUMENT, "request: and 3 more problems")
    assert _describe(e, args, cli_terms=True) == "request: and 3 more problems"
    # several violations, each named; a description that names the file already is not told it twice
    e = StyleTransferError(grpc.StatusCode.INVALID_ARGUMENT, "...", violations=[
        ("content", "c.png is 40 MiB, more than the 32 MiB"), ("options.alpha", "must be in [0, 1]")])
    assert _describe(e, args, cli_terms=True) == "c.png is 40 MiB, more than the 32 MiB; --alpha: must be in [0, 1]"
    one = _one_content(args, Path("in/d.png"), "b.png")
    e = StyleTransferError(grpc.StatusCode.INVALID_ARGUMENT, "styles[0].style_id: too small to carry a style")
    assert _content_failed(e, one, Path("in/d.png")) == "--style b.png: too small to carry a style"
    e = StyleTransferError(grpc.StatusCode.INVALID_ARGUMENT, "content: not a decodable image")
    assert _content_failed(e, one, Path("in/d.png")) == "in/d.png: not a decodable image"
    e = StyleTransferError(grpc.StatusCode.INVALID_ARGUMENT, "request: and 3 more problems")
    assert _content_failed(e, one, Path("in/d.png")) == "in/d.png: request: and 3 more problems"
    e = StyleTransferError(grpc.StatusCode.INVALID_ARGUMENT, "format: a WEBP image is at most 16383 px a side")
    one.format = "webp"  # this content's size: the flag that set the format, after the content it failed for
    said = _content_failed(e, one, Path("in/d.png"))
    assert said == "in/d.png: --format webp: a WEBP image is at most 16383 px a side", said
    e = StyleTransferError(grpc.StatusCode.INVALID_ARGUMENT, "format: ...: ask for PNG, or a smaller content_size")
    assert _describe(e, args).endswith("or a smaller --size")  # the flag, not the request's field
    e = StyleTransferError(grpc.StatusCode.RESOURCE_EXHAUSTED, "the output is 448x298 as PNG, 301,878 bytes, over "
                           "the reply limit of 61,440 bytes: ask for format JPEG or a smaller content_size")
    # JPEG asked for as this command can: by -o's extension for one file (--format beside o.png is refused), by
    # --format for a folder of outputs
    assert _describe(e, args).endswith("ask for a .jpg output (-o o.jpg) or a smaller --size"), _describe(e, args)
    folder = build_parser().parse_args(["c.png", "d.png", "-s", "a.png", "-o", "out"])
    assert _describe(e, folder).endswith("ask for --format jpeg or a smaller --size"), _describe(e, folder)
    # a server stopped mid-call (gRPC's words as it cuts the calls left after the drain) was "cannot reach"
    e = StyleTransferError(grpc.StatusCode.UNAVAILABLE, "Cancelling all calls")
    assert _describe(e, args).startswith(f"the server at {args.server} stopped during the call"), _describe(e, args)


# --- before anything is sent --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("target", "says"), [
    ("127.0.0.1:99999", "127.0.0.1:99999: the port must be a number in 1-65535, got '99999'"),
    ("127.0.0.1", "127.0.0.1: no port: give HOST:PORT, e.g. 127.0.0.1:50051"),
    ("http://127.0.0.1:50051", "a URL, not a gRPC address: give HOST:PORT (127.0.0.1:50051); TLS is chosen by"),
    ("https://stylize.example.com", "give HOST:PORT (stylize.example.com:50051)"),
    ("[::1]", "[::1]: no port"),
    ("::1", "an IPv6 address goes in brackets"),
    (":50051", "no host before the port"),
    ("dns:///adain.example.com", "dns:///adain.example.com: no port"),
    ("10.0.0.5:50051,10.0.0.6", "'10.0.0.6': no port"),
    ("a.example:50051,b.example:50051", "a list of addresses must be IP addresses"),
])
def test_addresses_grpc_would_misread_are_refused(target: str, says: str, files: dict[str, Path],
                                                 tmp_path: Path, capsys) -> None:
    from adain.client.aio import AsyncStyleTransferClient

    for client in (StyleTransferClient, AsyncStyleTransferClient):  # (refused before a channel is opened)
        with pytest.raises(StyleTransferError) as info:
            client(target)
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and info.value.details.startswith("server: ")
        assert says in info.value.details and info.value.violations[0][0] == "server", info.value.details
    line = _error([str(files["content.png"]), "-s", str(files["a.png"]), "-o", str(tmp_path / "o.png"), "--server",
                   target], capsys)
    assert line.startswith("--server: ") and says in line, line


@pytest.mark.parametrize("target", ["127.0.0.1:50051", "localhost:50051", "[::1]:50051", "dns:///localhost:50051",
                                    "dns://8.8.8.8/adain.example.com:50051", "unix:/tmp/adain.sock",
                                    "unix-abstract:adain", "ipv4:127.0.0.1:1,127.0.0.1:2", "10.0.0.5:1,10.0.0.6:2",
                                    "[::1]:1,[::2]:2", " 127.0.0.1:50051 ", "10.0.0.5:1,10.0.0.6:2,"])
def test_the_documented_address_forms_are_taken(target: str) -> None:
    StyleTransferClient(target).close()  # no connection is made until a call


def test_a_list_built_in_a_shell_reaches_the_server(server) -> None:
    """A trailing comma is taken (a list built in a shell) and left out of what gRPC is given: a single
    address with one was passed on as it was, and every call failed (UNAVAILABLE: "Failed to parse port")."""
    from adain.client._client import channel_target

    assert channel_target("127.0.0.1:50051,") == "127.0.0.1:50051"
    assert channel_target("10.0.0.5:1,10.0.0.6:2,") == "ipv4:10.0.0.5:1,10.0.0.6:2"
    assert channel_target(" 127.0.0.1:50051 ") == "127.0.0.1:50051"
    with StyleTransferClient(server.target + ",", timeout=30, retries=0) as client:
        assert client.server_info()["limits"]["max_styles"]


@pytest.mark.parametrize("target", ["stylize.example.com", "dns:///stylize.example.com", "[::1]"])
def test_with_tls_no_port_is_443(target: str) -> None:
    """Behind an ingress or a load balancer TLS's port is the usual one: gRPC's 443 is what is meant."""
    StyleTransferClient(target, tls=True).close()
    with pytest.raises(StyleTransferError, match="no port"):
        StyleTransferClient(target.replace("[::1]", "[::1]:"), tls=False)


def test_tls_files_grpc_would_fail_every_call_with_are_said_first(files: dict[str, Path], tmp_path: Path,
                                                                  capsys) -> None:
    """A CA file that holds no certificate, a key that is not the certificate's: gRPC took them and failed every
    call (adain-web started, its health 503 for good, blaming "Connection refused")."""
    if not make_certificates(tmp_path, "a", "b"):
        pytest.skip("no openssl")
    (tmp_path / "notpem.pem").write_text("not a certificate\n")
    argv = [str(files["content.png"]), "-s", str(files["a.png"]), "-o", str(tmp_path / "o.png"), "--server",
            f"127.0.0.1:{free_port()}"]
    assert _error([*argv, "--ca-cert", str(tmp_path / "notpem.pem")], capsys).startswith(
        "--ca-cert: holds no PEM certificate that reads (")
    mtls = ["--ca-cert", str(tmp_path / "a-ca.pem"), "--client-cert", str(tmp_path / "a.pem")]
    assert _error([*argv, *mtls, "--client-key", str(tmp_path / "b.key")], capsys).startswith(
        "--client-key: is not the key of the client certificate, or either does not read (")
    assert _error([*argv, *mtls[:3], str(tmp_path / "a.key"), "--client-key", str(tmp_path / "a.key")],
                  capsys) == "--client-cert: holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
    from adain.web.__main__ import main as web

    assert web(["--port", str(free_port()), "--server", f"127.0.0.1:{free_port()}", "--ca-cert",
                str(tmp_path / "notpem.pem")]) == 2
    assert capsys.readouterr().err.startswith("adain-web: error: --ca-cert: holds no PEM certificate that reads")


def test_a_signal_the_caller_ignores_stays_ignored() -> None:
    """``nohup adain-stylize ...`` (SIGHUP ignored) was ended when its terminal closed: the command's handler
    replaced the ignore. The hang-up comes as the CLI loads; the command goes on (here: --version)."""

    run = """
import os, signal, sys
signal.signal(signal.SIGHUP, signal.SIG_IGN)
class HangUp:
    def find_spec(self, name, path=None, target=None):
        if name == "adain.client.cli":
            os.kill(os.getpid(), signal.SIGHUP)
sys.meta_path.insert(0, HangUp())
sys.argv = ["adain-stylize", "--version"]
from adain import commands
sys.exit(commands.stylize())
"""
    proc = subprocess.run([sys.executable, "-c", run], capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout.split()[0]) == (0, "adain-stylize"), proc.stderr


def test_a_signal_python_drops_in_a_finalizer_still_ends_the_command_by_it() -> None:
    """A clips tour's, once in 500 tries: a SIGTERM printed a traceback ending in "Terminated: 15" and the command
    exited 0, its work done. A handler's exception raised while a __del__ or a weakref callback runs is printed and
    dropped by Python ("Exception ignored in ..."): the signal is delivered again, and the command stops there, at
    once (here a minute's work), with the signal's exit and its one line."""

    run = """
import os, signal, sys, time, weakref
from adain import commands
class Finalized:
    def __del__(self):
        os.kill(os.getpid(), signal.SIGTERM)  # its handler raises here, inside __del__: dropped
class Referenced:
    pass
def callback(ref):
    os.kill(os.getpid(), signal.SIGTERM)  # and here, in a weakref callback (the way Python 3.13 dropped one)
def main():
    if sys.argv[1] == "del":
        Finalized()
    else:
        it = Referenced()
        ref = weakref.ref(it, callback)
        del it
    for _ in range(600):
        time.sleep(0.1)
    return 0
commands.on_signals({signal.SIGTERM: commands.on_sigterm})
sys.exit(commands._run("adain-stylize", lambda: main, signal_wins=True))  # (as commands.stylize runs it)
"""
    for where in ("del", "weakref"):
        t0 = time.monotonic()
        proc = subprocess.run([sys.executable, "-c", run, where], capture_output=True, text=True, timeout=60)
        assert time.monotonic() - t0 < 30, f"{where}: the command ran on after its SIGTERM"
        assert proc.returncode == 143 and proc.stderr == "adain-stylize: error: interrupted\n", (where, proc.stderr)


def test_tls_files_a_bundle_or_an_encrypted_key(tmp_path: Path) -> None:
    """A CA bundle whose comments are not ASCII was refused (it works with gRPC); an encrypted key made OpenSSL ask
    for its pass phrase on the terminal (the client hung)."""

    if not make_certificates(tmp_path, "a"):
        pytest.skip("no openssl")
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes("# NetLock Arany (Class Gold) Főtanúsítvány\n".encode() + (tmp_path / "a-ca.pem").read_bytes())
    StyleTransferClient(f"127.0.0.1:{free_port()}", root_certificates=bundle).close()
    subprocess.run(["openssl", "pkey", "-in", "a.key", "-aes256", "-passout", "pass:secret", "-out", "enc.key"],
                   check=True, capture_output=True, timeout=60, cwd=tmp_path)
    with pytest.raises(StyleTransferError, match="client_key: is encrypted: gRPC takes no pass phrase"):
        StyleTransferClient(f"127.0.0.1:{free_port()}", root_certificates=bundle,
                            client_certificate=tmp_path / "a.pem", client_key=tmp_path / "enc.key")


def test_web_flags_an_operator_gets_wrong(capsys) -> None:
    """From an operator's tour: --max-upload-mb 3000 was a traceback (gRPC's channel limit is an int32 of bytes),
    an origin without its scheme or a host with one never matched, and [::] (as the manifest said) was "Name or
    service not known"."""
    from adain.web.__main__ import parse_args

    assert parse_args(["--host", "[::]"]).host == "::"
    for flag, value, said in (("--max-upload-mb", "3000", "must be > 0 and at most 1800, got 3000"),
                              ("--allowed-origin", "example.org", "an origin is scheme://host[:port]"),
                              ("--allowed-host", "http://x", "a host name (e.g. styles.example.org), no scheme")):
        with pytest.raises(SystemExit) as info:
            parse_args([flag, value])
        assert info.value.code == 2 and said in capsys.readouterr().err


def test_an_http_server_is_named_as_one(files: dict[str, Path], tmp_path: Path, capsys) -> None:
    """The web page's port (or any HTTP/1 server) given as --server: gRPC's own words say little."""
    from adain.client.cli import _http1_peer

    class Quiet(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # (to stderr, which the test reads)
            pass

    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    try:
        line = _error([str(files["content.png"]), "-s", str(files["a.png"]), "-o", str(tmp_path / "o.png"),
                       "--server", f"127.0.0.1:{web.server_address[1]}", "--retries", "0", "--timeout", "20"], capsys)
    finally:
        web.shutdown()
        web.server_close()
    assert line.startswith("cannot reach the server") and line.endswith(
        "; this is an HTTP server, not adain-server (the web page's port?)"), line
    assert _http1_peer("Trying to connect an http1.x server")
    assert _http1_peer("Failed parsing HTTP/2 (Expected SETTINGS frame as the first frame, got frame type 80)")
    assert not _http1_peer("Failed parsing HTTP/2 (Expected SETTINGS frame as the first frame, got frame type 4)")
    assert not _http1_peer("ipv4:127.0.0.1:50996: Socket closed")  # a TLS port, plaintext


def test_tls_to_a_plaintext_server_is_one_line_that_says_so(server: ServerProcess, files: dict[str, Path],
                                                            tmp_path: Path) -> None:
    """--tls against a server without TLS: gRPC's core printed a log line of its own before the CLI's one error
    line (GRPC_VERBOSITY is read as gRPC loads, so the console commands set it first), and the hint asked about
    certificates where the server speaks no TLS at all."""
    from importlib.metadata import entry_points

    scripts = {e.name: e.value for e in entry_points(group="console_scripts") if e.name.startswith("adain-")}
    assert scripts["adain-stylize"] == "adain.commands:stylize" and scripts["adain-web"] == "adain.commands:web"
    assert scripts["adain-server"] == "adain.commands:server"
    run = "import sys; from adain.commands import stylize; sys.argv[0] = 'adain-stylize'; sys.exit(stylize())"
    proc = subprocess.run([sys.executable, "-c", run, str(files["content.png"]), "-s", str(files["a.png"]), "-o",
                           str(tmp_path / "o.png"), "--server", server.target, "--tls", "--retries", "0"],
                          capture_output=True, text=True, timeout=60, env={k: v for k, v in os.environ.items()
                                                                           if k != "GRPC_VERBOSITY"})
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("adain-stylize: error: cannot reach the server") and proc.stderr.rstrip().endswith(
        "; the server does not speak TLS there: leave out --tls and --ca-cert (or start it with TLS)"), proc.stderr


@pytest.mark.parametrize(("command", "module", "how"), [
    ("stylize", "adain.client.cli", "SIGINT"), ("web", "adain.web.__main__", "SIGINT"),
    ("server", "adain.server.__main__", "SIGINT"), ("stylize", "adain.wire", "SIGINT"),
    # an outside tester's, the next time: in the parser's import of importlib.metadata (--version's), after the
    # command's module loaded and before its main's own handlers; and SIGTERM there, which killed it
    ("stylize", "importlib.metadata", "SIGINT"), ("web", "importlib.metadata", "SIGINT"),
    ("stylize", "adain.client.cli", "SIGTERM"), ("stylize", "importlib.metadata", "SIGTERM"),
    # a Unix user's, 1 in 40 tries: a signal inside a C module's start comes out as a SystemError or an ImportError
    # (CPython: "execution of module PIL._imagingcms raised unreported exception"), a traceback and exit 1
    ("stylize", "adain.client.cli", "SIGINT-in-C"), ("stylize", "adain.client.cli", "SIGTERM-in-C"),
    ("web", "adain.web.__main__", "SIGINT-in-C"), ("stylize", "adain.client.cli", "SIGHUP")])
def test_ctrl_c_while_a_command_loads_is_one_line(command: str, module: str, how: str) -> None:
    """Ctrl-C in a console command's first tenth of a second (its imports) printed a traceback from inside an
    import; now the one line and exit 130 it gets later (the server's exit 130, as while its model loads). The
    interrupt is put in the import itself. An outside tester still got one 15-30 ms in: ``import adain`` (run
    before the command's handler) imported adain.wire and protobuf; the package now imports nothing itself."""

    run = f"""
import os, signal, sys, time
class Interrupted:  # Ctrl-C (or SIGTERM) as {module} is imported
    def find_spec(self, name, path=None, target=None):
        if name == {module!r}:
            try:
                os.kill(os.getpid(), signal.{how.split("-")[0]})
                time.sleep(5)  # (the handler runs before this ends)
            except KeyboardInterrupt:
                if {how.endswith("-in-C")}:  # as CPython says it for a C module whose start it interrupted
                    raise SystemError(f"execution of module {{name}} raised unreported exception")
                raise
sys.meta_path.insert(0, Interrupted())
from adain import commands
sys.exit(commands.{command}())
"""
    proc = subprocess.run([sys.executable, "-c", run], capture_output=True, text=True, timeout=60)
    line = "" if command == "server" else f"adain-{command}: error: interrupted\n"
    code = 128 + getattr(signal, how.split("-")[0])
    assert proc.returncode == code and proc.stderr == line, proc.stderr
    loaded = subprocess.run([sys.executable, "-c", "import sys, adain; print(sorted(m for m in sys.modules if "
                             "m.startswith(('adain.', 'google'))))"], capture_output=True, text=True, timeout=60)
    assert loaded.stdout.strip() == "[]", loaded.stdout + loaded.stderr


def test_the_servers_token_file_given_to_the_client(files: dict[str, Path], tmp_path: Path, capsys) -> None:
    argv = [str(files["content.png"]), "-s", str(files["a.png"]), "-o", str(tmp_path / "o.png"), "--server",
            f"127.0.0.1:{free_port()}", "--token-file"]
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("# callers\nweb-frontend 0123456789abcdef0123456789abcdef\nbatch 0123456789abcdef0123\n")
    assert _error([*argv, str(tokens)], capsys) == (
        f"--token-file: {tokens}: this looks like the server's --auth-tokens-file (NAME TOKEN lines); give the "
        "client a file that holds the token alone")
    tokens.write_text("a token with spaces\n")
    line = _error([*argv, str(tokens)], capsys)
    assert line.startswith(f"--token-file: {tokens}: the file's first line must be the token alone: a token is "
                           "printable ASCII without spaces"), line


def test_a_flag_of_one_value_given_twice_is_refused(files: dict[str, Path], tmp_path: Path, capsys) -> None:
    """Found by an outside tester: argparse kept the last, so -o a.png -o b.png wrote b.png alone, and
    --alpha 0.5 --alpha 0.7 ran at 0.7, without a word; the page's API refuses a field given twice."""
    c, a = str(files["content.png"]), str(files["a.png"])
    srv = ["--server", f"127.0.0.1:{free_port()}"]  # refused before any call
    out = tmp_path / "out"
    for twice, flags in ((["-o", f"{out}/x.png", f"--output={out}/y.png"], "-o/--output"),
                         (["--alpha", "0.5", "--alpha", "0.7", "-o", f"{out}/z.png"], "--alpha")):
        assert _error([c, "-s", a, *twice, *srv], capsys, code=2) == (
            f"{flags}: given twice, and it takes one value (see --help)")
    assert not out.exists()


def test_outputs_named_without_a_usable_extension(files: dict[str, Path], tmp_path: Path, capsys) -> None:
    c, a = str(files["content.png"]), str(files["a.png"])
    srv = ["--server", f"127.0.0.1:{free_port()}"]  # refused before any call
    noext = str(tmp_path / "stylized")
    line = _error([c, "-s", a, "-o", noext, *srv], capsys)
    assert line == (f"-o {noext}: no extension to tell the output format by (use .png, .jpg, .jpeg or .webp; or "
                    f"end the name with '/' for a folder: -o {noext}/)")
    line = _error([c, "-s", a, "-o", str(tmp_path / "x.mp4"), *srv], capsys)
    assert line == (f"-o {tmp_path / 'x.mp4'}: {c} is an image, and .mp4 is a video container; an image's output "
                    "format is .png, .jpg, .jpeg or .webp")
    assert f"{c} is an image, and .gif is for videos" in _error([c, "-s", a, "-o", str(tmp_path / "x.gif"), *srv],
                                                                capsys)
    assert list(tmp_path.glob("x.*")) == [] and not Path(noext).exists()


def test_an_empty_content_file_is_named(files: dict[str, Path], tmp_path: Path, capsys) -> None:
    empty, a = files["empty.png"], str(files["a.png"])
    srv = ["--server", f"127.0.0.1:{free_port()}"]
    assert _error([str(empty), "-s", a, "-o", str(tmp_path / "o.png"), *srv], capsys) == \
        f"CONTENT: {empty} is empty (0 bytes)"
    assert _error([str(files["content.png"]), "-s", str(empty), "-o", str(tmp_path / "o.png"), *srv], capsys) == \
        f"--style {empty}: {empty} is empty (0 bytes)"


def test_folder_summary_counts_in_words(server: ServerProcess, files: dict[str, Path], tmp_path: Path,
                                        capsys) -> None:
    """'(1 images, 0 videos)'; an empty file among several contents is that content's failure, the others go on."""
    srv, a = ["--server", server.target], str(files["a.png"])
    assert main([str(files["content.png"]), str(files["empty.png"]), "-s", a, "-o", f"{tmp_path}/o/", *srv]) == 1
    out, err = capsys.readouterr()
    assert f"error: {files['empty.png']}: image data is empty" in err  # the file, not also the field "content"
    assert out.splitlines()[0] == f"1 of 2 outputs written to {tmp_path}/o/ (2 images, 0 videos)"
    assert "videos not counted" not in out
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "photo.png").write_bytes(CONTENT)
    assert main([str(tmp_path / "one"), "-s", a, "-o", f"{tmp_path}/p/", *srv]) == 0
    assert capsys.readouterr().out.splitlines()[0] == f"1 of 1 output written to {tmp_path}/p/ (1 image, 0 videos)"


# --- --list-styles and --thumbnails ---------------------------------------------------------------------------


def test_thumbnails_goes_with_list_styles(capsys) -> None:
    assert main(["--help"]) == 0
    assert "--thumbnails DIR" in capsys.readouterr().out
    said = "--thumbnails DIR goes with --list-styles (adain-stylize --list-styles --thumbnails DIR) (see --help)"
    assert _error(["--thumbnails", "t2"], capsys, code=2) == said
    assert _error(["photo.jpg", "-s", "a.png", "-o", "o.png", "--thumb", "t2"], capsys, code=2) == said


@pytest.fixture()
def library_server() -> Iterator[str]:
    """A server whose library holds one style (ListStyles only)."""
    from adain.v1 import style_transfer_pb2 as pb

    with library_stub([pb.LibraryStyle(name="mosaic", style_id="b9eb099105ea" + "0" * 52, width=40, height=30)]) as a:
        yield a


def test_list_styles_labels_the_digest(library_server: str, capsys) -> None:
    """Its last column was a bare 12-hex prefix of the style id, which reads as an id for -s id:... and is none."""
    assert main(["--list-styles", "--server", library_server]) == 0
    assert capsys.readouterr().out.split() == ["mosaic", "40", "x", "30", "sha256:b9eb099105ea"]


def test_connect_names_the_token_variable(monkeypatch, files: dict[str, Path], tmp_path: Path, capsys) -> None:
    monkeypatch.setenv("ADAIN_TOKEN", "a b")
    monkeypatch.delenv("ADAIN_TOKEN_FILE", raising=False)
    line = _error([str(files["content.png"]), "-s", str(files["a.png"]), "-o", str(tmp_path / "o.png"), "--server",
                   f"127.0.0.1:{free_port()}"], capsys)
    assert line.startswith("$ADAIN_TOKEN: a token is printable ASCII"), line


def test_each_command_says_its_version(capsys) -> None:
    """--version: "adain-stylize --version" asked for CONTENT, --style and -o (an outside tester)."""
    from importlib.metadata import version

    from adain.server.config import parse_settings
    from adain.web.__main__ import parse_args

    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"adain-stylize {version('adain')}\n"
    for prog, parse in (("adain-server", parse_settings), ("adain-web", parse_args)):
        with pytest.raises(SystemExit) as exited:
            parse(["--version"])
        assert exited.value.code == 0 and capsys.readouterr().out == f"{prog} {version('adain')}\n"


def test_a_connection_value_from_a_variable_is_named_as_the_variable(files: dict[str, Path], tmp_path: Path,
                                                                     capsys, monkeypatch) -> None:
    """ADAIN_SERVER=garbage with no --server was "--server: garbage: no port" (an outside tester)."""
    argv = [str(files["content.png"]), "-s", str(files["a.png"]), "-o", str(tmp_path / "o.png")]
    monkeypatch.setenv("ADAIN_SERVER", "garbage")
    assert _error(argv, capsys).startswith("$ADAIN_SERVER: garbage: no port")
    assert _error([*argv, "--server", "junk"], capsys).startswith("--server: junk: no port")
    monkeypatch.setenv("ADAIN_SERVER", f"127.0.0.1:{free_port()}")
    monkeypatch.setenv("ADAIN_TOKEN_FILE", str(tmp_path / "none"))
    assert _error(argv, capsys) == f"$ADAIN_TOKEN_FILE: no such file: {tmp_path / 'none'}"
    given = _error([*argv, "--token-file", str(tmp_path / "no")], capsys)
    assert given == f"--token-file: no such file: {tmp_path / 'no'}"
    assert not (tmp_path / "o.png").exists()


def test_small_refusals_an_outside_tester_found_unclear(files: dict[str, Path], tmp_path: Path, capsys) -> None:
    """-j 0 was taken; a folder whose images are in subfolders said only "no images"; --format png given said
    "(--format png, the default)"; a style file named st:2 was "no such file: st", no word of the weight."""
    c, a = str(files["content.png"]), str(files["a.png"])
    srv = ["--server", f"127.0.0.1:{free_port()}"]  # refused before any call
    out = f"{tmp_path}/out/"
    assert _error([c, "-s", a, "-o", out, "-j", "0", *srv], capsys, code=2) == (
        "argument -j/--jobs: must be >= 1, got 0 (see --help)")
    (tmp_path / "album" / "2025").mkdir(parents=True)
    (tmp_path / "album" / "2025" / "p.png").write_bytes(files["content.png"].read_bytes())
    assert _error([str(tmp_path / "album"), "-s", a, "-o", out, *srv], capsys).endswith(
        "; its subfolders (2025) are not searched: give them as CONTENT too")
    assert _error([c, c, "-s", a, "-o", out, "--format", "png", "--quality", "80", *srv], capsys) == (
        "--quality: only for JPEG and WebP outputs; the outputs are (--format png) PNG, which is lossless")
    named = tmp_path / "st:2"
    named.write_bytes(files["a.png"].read_bytes())
    assert _error([c, "-s", str(named), "-o", out, *srv], capsys) == (
        f"--style {named}: no such file: {tmp_path / 'st'} (the file {named} exists: its ':2' was read as a weight; "
        f"give {named}:1)")
    assert not (tmp_path / "out").exists()


def test_numbers_past_the_wire_and_negative_exponents(files: dict[str, Path], tmp_path: Path, capsys) -> None:
    """A cross-surface tour's: a 400-digit --size, --style-size, --refine or --refine-size printed a traceback
    (the deadline's float arithmetic came before the client's checks); --alpha -1e-3 was "expected one argument"
    (argparse read it as a flag); a preset's one --mask was "1 mask for 0 styles"."""
    c, a = str(files["content.png"]), str(files["a.png"])
    srv, o = ["--server", f"127.0.0.1:{free_port()}"], str(tmp_path / "out.png")  # refused before any call
    huge = "1" + "0" * 400
    for flags, flag, most in ((["--size", huge], "--size", 2**32 - 1),
                              (["--style-size", huge], "--style-size", 2**32 - 1),
                              (["--refine", huge], "--refine", 2**31 - 1),
                              (["--refine", "1", "--refine-size", huge], "--refine-size", 2**32 - 1)):
        assert _error([c, "-s", a, "-o", o, *flags, *srv], capsys) == (
            f"{flag}: 100000000000000000...000000000000000000 (401 characters) is over the most a request can carry "
            f"({most}); the server's own limit is lower (server_info()['limits'])")
    for flag in ("--alpha", "--region-alpha"):
        assert _error([c, "-s", a, "-o", o, flag, "-1e-3", *srv], capsys, code=2) == (
            f"argument {flag}: must be in [0, 1], got -1e-3 (see --help)")
    line = _error([c, "-s", "preset:calm-sea", "--mask", a, "--mask", a, "-o", o, *srv], capsys)
    assert line.startswith("--mask: a preset's styles carry no masks, labels or alphas of their own"), line
    assert not Path(o).exists()


def test_a_reader_gone_from_the_pipe_is_no_error(server: ServerProcess) -> None:
    """``adain-stylize --server-info | head``: the reader went away, and the CLI said "error: [Errno 32] Broken pipe"
    (an outside tester's). Now nothing, and the shell's SIGPIPE status."""

    proc = subprocess.Popen([sys.executable, "-m", "adain.client.cli", "--server", server.target, "--server-info"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=60) == 141 and err == b"", err


def test_a_name_with_a_newline_stays_on_its_errors_line(tmp_path: Path, capsys) -> None:
    """A file named with a newline split the error in two, the second line whatever the name said; a server's log
    line too (a style file so named in --styles-dir)."""
    import logging

    from adain.server.logs import TEXT_FORMAT, TextFormatter

    named = tmp_path / "new\nadain-stylize: error: forged.png"
    said = _error([str(named), "-s", str(named), "-o", str(tmp_path / "o.png"), "--server", "127.0.0.1:9"], capsys)
    assert "new\\nadain-stylize: error: forged.png" in said, said
    from adain.client.cli import CliError

    # --local's failure keeps the server's log lines, each its own (they were run together by the escaping)
    assert CliError("the local server did not start; it said:\nline 1\nline\x1b2", lines=True).shown() == (
        "the local server did not start; it said:\nline 1\nline\\x1b2")
    record = logging.LogRecord("adain.server", logging.WARNING, __file__, 0, "styles/%s: a style's name...", ("a\nb",),
                               None)
    assert TextFormatter(TEXT_FORMAT).format(record).endswith("styles/a\\nb: a style's name...")


def test_what_was_written_is_one_line_whatever_the_names(server: ServerProcess, files: dict[str, Path],
                                                         tmp_path: Path, capsys) -> None:
    """An outside tour's: the lines saying what was written printed a name as it was, where the error lines escape
    it: a newline split the line, and an escape sequence (\\x1b[31m) reached the terminal; a progress bar's label
    (a clip's name, an image's beside a folder run's bar) too."""

    from synth import make_video

    srv, a = ["--server", server.target], str(files["a.png"])
    photo, clip = tmp_path / "new\nline\x1b[31m.png", tmp_path / "clip\x1b[41m.mp4"
    photo.write_bytes(CONTENT)
    make_video(clip, frames=2)
    for content, said in ((photo, "new\\nline\\x1b[31m_stylized.png (64 x 48)"),
                          (clip, "clip\\x1b[41m_stylized.mp4 (2 frames)")):
        assert main([str(content), "-s", a, "-o", f"{tmp_path}/o/", *srv]) == 0
        assert capsys.readouterr().out == f"{tmp_path}/o/{said}\n"
    assert main([str(photo), str(files["content.png"]), "-s", a, "-o", f"{tmp_path}/p\x1b[32m/", *srv]) == 0
    assert capsys.readouterr().out.splitlines()[0] == f"2 of 2 outputs written to {tmp_path}/p\\x1b[32m/ (2 images, " \
        "0 videos)"
    # on a terminal, the bars' labels: the clip's, and the image's beside the bar while its refine runs
    shown = cli_on_a_terminal([str(photo), str(clip), "-s", a, "--refine", "1", "-o", f"{tmp_path}/q/", *srv],
                              columns=200, stdout_too=True, timeout=120)
    assert b"\x1b[31m" not in shown and b"\x1b[41m" not in shown, shown
    assert b"new\\nline\\x1b[31m.png: step 1 of 1" in shown and b"clip\\x1b[41m.mp4: " in shown, shown


def test_names_that_differ_only_in_their_unicode_form_are_one_name(files: dict[str, Path], tmp_path: Path,
                                                                   capsys) -> None:
    """An outside tour's: "café" written NFC and NFD (as macOS writes names) in two folders wrote two outputs that
    look alike, one file on macOS (its file systems compare names normalized); names that differ in case were
    refused already, for that reason. Said with the code points: the two look the same."""
    nfc, nfd = "caf\u00e9", "cafe\u0301"
    for folder, name in (("a", nfc), ("b", nfd)):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / f"{name}.png").write_bytes(CONTENT)
    srv, a = ["--server", f"127.0.0.1:{free_port()}"], str(files["a.png"])  # refused before any call
    two = "(one name written two ways in Unicode: 'caf\\xe9' and 'cafe\\u0301') would write outputs of one name"
    assert _error([str(tmp_path / "a"), str(tmp_path / "b"), "-s", a, "-o", f"{tmp_path}/o/", *srv], capsys) == (
        f"{tmp_path}/a/{nfc}.png and {tmp_path}/b/{nfd}.png: two contents named '{nfc}' {two}")
    nfc_style, nfd_style = tmp_path / "a" / f"{nfc}.png", tmp_path / "b" / f"{nfd}.png"
    assert _error([str(files["content.png"]), str(files["a.png"]), "-s", str(nfc_style), "-s", str(nfd_style), "-o",
                   f"{tmp_path}/o/", *srv], capsys) == (
        f"--style {nfc_style} and {nfd_style}: two styles named '{nfc}' {two}")


def test_an_escaped_name_reads_apart_from_one_with_a_backslash() -> None:
    """A name with a backslash and an "n" printed as one with a newline did (a leftover of the locale tour): where a
    line is escaped, its backslashes are doubled; a name with no unprintable character is printed as it is."""
    from adain.errors import one_line

    assert one_line("a\\nb\nc") == "a\\\\nb\\nc" != one_line("a\nb\nc") == "a\\nb\\nc"
    assert one_line("C:\\photos\\cat.jpg") == "C:\\photos\\cat.jpg"


def test_a_lost_connection_and_the_servers_upload_limit_are_told_apart() -> None:
    """From a flaky-network tour: a reply cut mid-way (the server's log said OK) and a link found dead by the pings
    read "cannot reach the server"; the server's --message-timeout-s over a slow upload said "raise --timeout",
    which cannot help."""
    args = build_parser().parse_args(["c.png", "-s", "a.png", "-o", "o.png", "--server", "h:1"])
    said = _describe(StyleTransferError(grpc.StatusCode.UNAVAILABLE, "Stream removed (ping timeout)"), args)
    assert said.startswith("the connection to the server at h:1 was lost during the call") and "link went dead" in said
    cut = "Stream removed (sendmsg: Broken pipe (32))"
    said = _describe(StyleTransferError(grpc.StatusCode.UNAVAILABLE, cut), args)
    assert "was lost during the call" in said and "ping" not in said
    for never in ("failed to connect to all addresses", "connections to all backends failing; last error: "
                  "UNAVAILABLE: ipv4:127.0.0.1:1: Delayed close (sendmsg: Connection reset by peer (104))"):
        said = _describe(StyleTransferError(grpc.StatusCode.UNAVAILABLE, never), args)  # (a reset at connect)
        assert said.startswith("cannot reach the server at h:1"), said
    late = ("the request message did not arrive within 60 s of the call's start (message_timeout_s)")
    said = _describe(StyleTransferError(grpc.StatusCode.DEADLINE_EXCEEDED, late), args)
    assert "raise the server's --message-timeout-s" in said and "raise --timeout" not in said
    said = _describe(StyleTransferError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"), args)
    assert said.endswith("raise --timeout)")


def test_an_output_through_a_dangling_link_is_refused_before_any_call(files: dict[str, Path], tmp_path: Path,
                                                                       library_server: str, capsys,
                                                                       monkeypatch) -> None:
    """A filesystem tour's: -o through a link to a folder or a file's folder that is not there passed the check made
    before any call (a dangling link reads as missing: a folder to be made), the server rendered, and the save said
    "cannot write: File exists"; --thumbnails given a file said "File exists" too."""
    monkeypatch.chdir(tmp_path)
    c, a = str(files["content.png"]), str(files["a.png"])
    srv = ["--server", f"127.0.0.1:{free_port()}"]  # refused before any call: nothing listens there
    Path("out-link").symlink_to("missing-folder")
    Path("file-link.png").symlink_to("nowhere/x.png")
    assert _error([c, "-s", a, "-o", "out-link/", *srv], capsys) == (
        "-o out-link/: cannot write there: out-link is a link to missing-folder, which is not there")
    assert _error([c, "-s", a, "-o", "file-link.png", *srv], capsys) == (
        "-o file-link.png: cannot write there: file-link.png is a link to nowhere/x.png, which is not there")
    assert _error(["--list-styles", "--thumbnails", c, "--server", library_server], capsys) == (
        f"--thumbnails {c}: cannot write: a file, not a folder")
