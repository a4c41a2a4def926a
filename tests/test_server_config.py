"""adain-server's settings that an outside tester found taken and failing later (after the model loaded, or on every
call), or taken silently: each is refused at start in one line naming the flag (exit 2), or warned of. Most need no
model: the start fails before it loads."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import pytest

from adain.client import StyleTransferClient, StyleTransferError
from adain.server.auth import RECHECK_S, TlsFiles, TokenFile
from adain.server.config import parse_settings, settings_warnings
from adain.server.library import StyleLibrary
from helpers import NO_REFINE, REPO, ServerProcess, make_certificates
from synth import make_image

TOKEN = "same-token-0123456789abcdef"


def _refusal(argv: list[str], capsys: pytest.CaptureFixture[str], environ: dict[str, str] | None = None) -> str:
    """parse_settings' one-line error (exit 2)."""
    with pytest.raises(SystemExit) as info:
        parse_settings(argv, environ or {})
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    return err.strip()


@pytest.mark.parametrize(("argv", "environ", "says"), [
    # sent as x-served-by metadata: every call then failed on the client (INTERNAL "Invalid metadata")
    (["--replica-name", "pod é"], {}, "argument --replica-name: must be at most 128 printable ASCII characters"),
    (["--replica-name", "a\nb"], {}, "argument --replica-name: must be at most 128 printable ASCII"),
    ([], {"ADAIN_REPLICA_NAME": "r" * 129}, "ADAIN_REPLICA_NAME='rrr"),
    # 100000 threads: a segfault (exit 139), a traceback; a lone request waiting 11 days
    (["--torch-threads", "100000"], {}, "argument --torch-threads: must be in [0, 1024], got 100000"),
    (["--workers", "100000"], {}, "argument --workers: must be in [0, 1024], got 100000"),
    (["--max-batch-delay-ms", "1e9"], {}, "argument --max-batch-delay-ms: must be in [0, 60000] ms, got 1e9"),
    # an empty path was "unset": a plaintext server with no tokens, without a word
    ([], {"ADAIN_AUTH_TOKENS_FILE": ""}, "ADAIN_AUTH_TOKENS_FILE='': an empty path (give a file, or leave it unset)"),
    ([], {"ADAIN_TLS_CERT": "", "ADAIN_TLS_KEY": ""}, "ADAIN_TLS_CERT='': an empty path"),
    (["--auth-tokens-file", ""], {}, "argument --auth-tokens-file: an empty path (give a file, or leave it unset)"),
    (["--tls-client-ca", ""], {}, "argument --tls-client-ca: an empty path"),
    (["--decoder", ""], {}, "argument --decoder: an empty path"),
    (["--styles-dir", ""], {}, "argument --styles-dir: an empty path (give a folder, or leave it unset)"),
    ([], {"ADAIN_HOST": ""}, "ADAIN_HOST='': an empty address"),
    (["--host", "[::1"], {}, "argument --host: brackets go around an IPv6 address alone"),
    # the server's own ports clashing: found after the model loaded, as "another adain-server?" (exit 1)
    (["--port", "52460", "--metrics-port", "52460"], {}, "--metrics-port 52460: the same port as --port"),
    (["--port", "52461", "--health-port", "52461"], {}, "--health-port 52461: the same port as --port"),
    (["--health-port", "52462", "--metrics-port", "52462"], {}, "--health-port 52462: the same port as --metrics-port"),
    (["--port", "52463"], {"ADAIN_METRICS_PORT": "52463"}, "ADAIN_METRICS_PORT=52463: the same port as --port"),
    (["--port", "9464"], {}, "--metrics-port 9464 (the default): the same port as --port"),
    # one range in both messages
    (["--temporal-strength", "-0.1"], {}, "argument --temporal-strength: must be in [0, 1), got -0.1"),
    (["--temporal-strength", "1"], {}, "argument --temporal-strength: must be in [0, 1), got 1"),
])
def test_settings_refused_as_flags(argv: list[str], environ: dict[str, str], says: str,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    err = _refusal(argv, capsys, environ)
    assert err.startswith(f"adain-server: error: {says}"), err


def test_settings_taken_at_their_limits() -> None:
    s = parse_settings(["--replica-name", "pod-1 (eu) ~" + "x" * 116, "--torch-threads", "1024", "--workers", "1024",
                        "--max-batch-delay-ms", "60000", "--host", "::1", "--port", "0", "--metrics-port", "0",
                        "--health-port", "0"], {})
    assert (s.torch_threads, s.workers, s.max_batch_delay_ms, s.host) == (1024, 1024, 60000, "::1")
    assert parse_settings(["--port", "9000", "--metrics-port", "-1", "--health-port", "-1"], {}).port == 9000


def test_settings_taken_but_not_as_given_are_warned_of() -> None:
    """A per-caller share over the queue was capped without a word; --compile-sizes without --backend compiled
    ignored without one. Warned of, not refused: the cap is by design (a test relies on it), and
    benchmarks/grpc_latency.py gives --compile-sizes whatever the backend."""
    argv = ["--max-queue", "4", "--max-queue-per-caller", "10", "--compile-sizes", "256x256"]
    warnings = settings_warnings(parse_settings(argv, {}), argv, {})
    assert warnings == ["--max-queue-per-caller 10 is over --max-queue 4: one caller may hold the whole queue (4), "
                        "no more",
                        "--compile-sizes 256x256 is ignored: only --backend compiled compiles (this server's is auto)"]
    quiet = ["--max-queue", "4", "--max-queue-per-caller", "4", "--backend", "compiled", "--compile-sizes", "256x256"]
    assert settings_warnings(parse_settings(quiet, {}), quiet, {}) == []
    environ = {"ADAIN_COMPILE_SIZES": "256x256"}
    assert settings_warnings(parse_settings([], environ), [], environ) == [
        "ADAIN_COMPILE_SIZES=256x256 is ignored: only --backend compiled compiles (this server's is auto)"]


def test_connection_and_call_limits_derive_from_the_queues() -> None:
    """The limits an outside tester's streams and connections found missing: derived from the queues where 0, set
    by flag or variable, and a per-connection stream limit under what one caller may have admitted warned of."""
    s = parse_settings([], {}).for_device(cuda=False)  # (a CPU's batches of 1)
    assert (s.max_concurrent_streams, s.max_connection_idle_s, s.message_timeout_s) == (128, 120, 60)
    # the queue 64 + a batch 1 + long jobs 1 + 4 + video 2, and 4096 for health Watches and quick calls
    assert s.concurrent_rpcs == 64 + 1 + 1 + 4 + 2 + 4096
    assert s.caller_calls == 32 + 2 + 1 + 4 and s.calls_per_caller == 39 + 1 + 16
    assert s.connections(open_files=20_000) == 10_000 and s.connections(open_files=1024) == 512
    environ = {"ADAIN_MAX_CONCURRENT_RPCS": "50", "ADAIN_MAX_CALLS_PER_CALLER": "5", "ADAIN_MAX_CONNECTIONS": "7",
               "ADAIN_MAX_CONNECTION_IDLE_S": "0", "ADAIN_MESSAGE_TIMEOUT_S": "2.5"}
    s = parse_settings(["--max-concurrent-streams", "8"], environ).for_device(cuda=True)  # (a GPU's batches of 8)
    assert (s.concurrent_rpcs, s.calls_per_caller, s.connections(), s.max_connection_idle_s, s.message_timeout_s,
            s.max_concurrent_streams) == (50, 5, 7, 0, 2.5, 8)
    assert settings_warnings(s, ["--max-concurrent-streams", "8"], environ) == [
        "--max-concurrent-streams 8 is under the 39 calls one caller may have admitted (its queue share, video "
        "streams and long jobs): a caller's calls beyond it wait on its own side instead of being served or refused",
        "ADAIN_MAX_CONCURRENT_RPCS=50 is under --max-queue + --max-batch-size (72): gRPC refuses calls the queue "
        "would take (RESOURCE_EXHAUSTED) before they reach it"]


def _server(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "adain.server", "--port", "0", "--metrics-port", "0", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})})


def test_the_start_logs_its_warnings(tmp_path: Path) -> None:
    """The warnings come before the model loads (here a missing decoder ends the start)."""
    proc = _server("--max-queue", "4", "--max-queue-per-caller", "10", "--compile-sizes", "256x256", "--decoder",
                   str(tmp_path / "none.pt"))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 3, proc.stderr
    assert "WARNING" in lines[0] and "--max-queue-per-caller 10 is over --max-queue 4" in lines[0], proc.stderr
    assert "WARNING" in lines[1] and "--compile-sizes 256x256 is ignored" in lines[1], proc.stderr
    assert lines[2] == f"adain-server: error: --decoder {tmp_path / 'none.pt'}: no such file"


def _dated_certificate(folder: Path, name: str, start: str, end: str) -> tuple[Path, Path]:
    """A self-signed certificate valid from ``start`` to ``end`` (YYYYMMDDHHMMSSZ), and its key: openssl ca sets
    the dates."""
    db = folder / f"db-{name}"
    db.mkdir()
    (db / "index.txt").write_text("")
    (db / "serial").write_text("01\n")
    (folder / f"{name}.cnf").write_text(f"[ca]\ndefault_ca=c\n[c]\ndatabase={db.name}/index.txt\n"
                                        f"serial={db.name}/serial\nnew_certs_dir={db.name}\ndefault_md=sha256\n"
                                        "policy=p\n[p]\ncommonName=supplied\n")
    for args in (["req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                  "-subj", f"/CN={name} CA"],
                 ["ca", "-batch", "-config", f"{name}.cnf", "-selfsign", "-keyfile", f"{name}.key", "-in",
                  f"{name}.csr", "-out", f"{name}.pem", "-startdate", start, "-enddate", end]):
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60, cwd=folder)
    return folder / f"{name}.pem", folder / f"{name}.key"


def test_files_refused_before_the_model_loads(tmp_path: Path) -> None:
    """Each was taken, or reported as something else: a folder as "no such file", a file as "no such folder", a
    link to nothing skipped (where an empty image was an error), a token on two lines given to the last, a
    non-UTF-8 token file as "'utf-8' codec can't decode byte 0xff in position 1" naming no file, an expired client
    CA taken (SERVING, every mTLS client failing the handshake)."""
    decoder = tmp_path / "decoder.pt"
    decoder.write_bytes(b"never loaded: the start fails first")
    folder = tmp_path / "folder"
    folder.mkdir()
    styles = tmp_path / "styles"
    styles.mkdir()
    (styles / "mosaic.png").write_bytes(make_image(64, 64, seed=1))
    (styles / "waves.png").symlink_to(tmp_path / "nonexistent.png")
    twice = tmp_path / "twice"
    twice.write_text(f"# callers\nweb {TOKEN}\n\nbatch {TOKEN}\n")
    latin = tmp_path / "latin"
    latin.write_bytes(f"web {TOKEN}\ncaf\xe9 {TOKEN}x\n".encode("latin-1"))
    cases = [
        (["--tls-cert", str(folder), "--tls-key", str(folder)], f"--tls-cert {folder}: is a folder, not a file"),
        (["--auth-tokens-file", str(folder)], f"--auth-tokens-file {folder}: is a folder, not a file"),
        (["--decoder", str(folder)], f"--decoder {folder}: is a folder, not a file"),
        (["--styles-dir", str(decoder)], f"--styles-dir: {decoder} is a file, not a folder"),
        (["--styles-dir", str(styles)],
         f"--styles-dir: {styles / 'waves.png'}: a link to {tmp_path / 'nonexistent.png'}, which does not exist"),
        (["--auth-tokens-file", str(twice)],
         f"--auth-tokens-file: {twice} lines 2 and 4: the same token twice (a token names one caller)"),
        (["--auth-tokens-file", str(latin)], f"--auth-tokens-file: {latin} line 2: not UTF-8 text (byte 0xe9)"),
    ]
    if make_certificates(tmp_path, "good"):
        for name, start, end, says in (("old", "20200101000000Z", "20200201000000Z",
                                        "expired on Feb  1 00:00:00 2020 GMT"),
                                       ("new", "20990101000000Z", "20990201000000Z",
                                        "is not valid before Jan  1 00:00:00 2099 GMT")):
            pem, _ = _dated_certificate(tmp_path, name, start, end)
            ca = tmp_path / f"{name}-bundle.pem"
            ca.write_text((tmp_path / "good-ca.pem").read_text() + pem.read_text())
            cases.append((["--tls-cert", str(tmp_path / "good.pem"), "--tls-key", str(tmp_path / "good.key"),
                           "--tls-client-ca", str(ca)],
                          f"--tls-client-ca {ca}: the client CA certificate (CN={name} CA, 2 of 2) {says}"))
    wrong = []
    for argv, says in cases:
        proc = _server("--decoder", str(decoder), *argv)
        last = (proc.stderr.strip().splitlines() or [""])[-1]
        if proc.returncode != 2 or not last.startswith(f"adain-server: error: {says}") or "Traceback" in proc.stderr:
            wrong.append((argv, proc.returncode, proc.stderr[-500:]))
    assert not wrong, wrong


def test_a_token_file_rewritten_with_a_token_twice_keeps_the_last_good_tokens(tmp_path: Path, caplog) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"web {TOKEN}\n")
    now = [0.0]
    tokens = TokenFile(str(path), clock=lambda: now[0])
    path.write_text(f"web {TOKEN}\nbatch {TOKEN}\n# a longer file: a new signature\n")
    now[0] += RECHECK_S
    with caplog.at_level(logging.WARNING, logger="adain.server"):
        assert tokens.caller(TOKEN) == "web"
    assert any("keeping the last good tokens" in r.getMessage() and "lines 1 and 2: the same token twice"
               in r.getMessage() for r in caplog.records), caplog.text


def test_a_style_replaced_by_a_link_to_nothing_keeps_its_last_good_image(tmp_path: Path, caplog) -> None:
    """What a rescan does with any bad file, as the start refuses it."""
    (tmp_path / "waves.png").write_bytes(make_image(64, 64, seed=2))
    library = StyleLibrary(tmp_path, 1 << 24)
    served = library.get("waves")
    (tmp_path / "waves.png").unlink()
    (tmp_path / "waves.png").symlink_to(tmp_path / "gone.png")
    (tmp_path / "new.png").symlink_to(tmp_path / "gone.png")
    with caplog.at_level(logging.WARNING, logger="adain.server"):
        library.refresh()
        library.refresh()  # warned of once
    assert library.get("waves") is served and library.get("new") is None
    said = [r.getMessage() for r in caplog.records if "which does not exist" in r.getMessage()]
    assert len(said) == 2 and any("waves.png" in s and "keeping its last good image" in s for s in said), said
    assert any("new.png" in s and "left out" in s for s in said), said


def test_tls_client_ca_dates_are_checked_per_certificate(tmp_path: Path, caplog) -> None:
    if not make_certificates(tmp_path, "server", "client"):
        pytest.skip("openssl is not available to make test certificates")
    old, _ = _dated_certificate(tmp_path, "old", "20200101000000Z", "20200201000000Z")
    bundle = tmp_path / "bundle.pem"
    bundle.write_text(old.read_text() + (tmp_path / "client-ca.pem").read_text())
    with pytest.raises(ValueError, match=r"the client CA certificate \(CN=old CA, 1 of 2\) expired on Feb  1"):
        TlsFiles(str(tmp_path / "server.pem"), str(tmp_path / "server.key"), str(bundle))
    with caplog.at_level(logging.WARNING, logger="adain.server"):  # valid for a day: warned of, once a file
        for _ in range(2):
            TlsFiles(str(tmp_path / "server.pem"), str(tmp_path / "server.key"), str(tmp_path / "client-ca.pem"))
    said = [r.getMessage() for r in caplog.records if "expires on" in r.getMessage()]
    assert len(said) == 2 and any("the client CA certificate expires on" in s for s in said), said


def _ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def _ipv6_certificates(folder: Path) -> bool:
    """A CA ``v6-ca.pem``, a server certificate for [::1] and a client certificate it signed, valid for a day (so
    warned of). False where openssl is missing."""
    if shutil.which("openssl") is None:
        return False
    (folder / "v6.ext").write_text("subjectAltName=IP:::1\n")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60, cwd=folder)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=v6 CA", "-keyout",
            "v6-ca.key", "-out", "v6-ca.pem")
    for name in ("v6-server", "v6-client"):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out",
                f"{name}.csr")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "v6-ca.pem", "-CAkey", "v6-ca.key", "-CAcreateserial",
                "-days", "1", "-extfile", "v6.ext", "-out", f"{name}.pem")
    return True


@pytest.mark.skipif(not _ipv6(), reason="no IPv6 loopback here")
def test_bare_ipv6_host_tls_warned_once_and_a_second_signal_named(decoder_path: Path, tmp_path: Path) -> None:
    """--host ::1 loaded the model, then failed "cannot listen on :::PORT" (exit 1, the hint of a taken port);
    the two-week certificate warning came twice at start; SIGHUP after SIGTERM was logged "SIGHUP again"."""
    if not _ipv6_certificates(tmp_path):
        pytest.skip("openssl is not available to make test certificates")
    ca, key, cert = (tmp_path / f for f in ("v6-ca.pem", "v6-client.key", "v6-client.pem"))
    srv = ServerProcess(decoder_path, *NO_REFINE, "--host", "::1", "--grace-seconds", "60", "--tls-cert",
                        str(tmp_path / "v6-server.pem"), "--tls-key", str(tmp_path / "v6-server.key"),
                        "--tls-client-ca", str(ca),
                        credentials=grpc.ssl_channel_credentials(ca.read_bytes(), key.read_bytes(), cert.read_bytes()))
    more = threading.Event()

    def frames() -> Iterator[bytes]:  # a clip whose client has more to send: a call the drain waits for
        yield make_image(48, 32, seed=3)
        more.wait(60)

    try:
        assert srv.listen_line.strip() == f"adain-server listening on [::1]:{srv.port}"
        srv.target = f"[::1]:{srv.port}"
        srv.wait_serving()
        with StyleTransferClient(srv.target, timeout=60, retries=0, root_certificates=ca, client_certificate=cert,
                                 client_key=key) as client, ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(lambda: list(client.stylize_video(frames(), make_image(32, 32, seed=4),
                                                                      timeout=30)))
            end = time.monotonic() + 30
            metrics = f"http://[::1]:{srv.metrics_port}/metrics"
            while "adain_video_streams 1.0" not in httpx.get(metrics, timeout=10).text:
                assert time.monotonic() < end and not in_flight.done(), "the stream never started"
                time.sleep(0.05)
            srv.proc.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            assert srv.proc.poll() is None  # draining
            srv.proc.send_signal(signal.SIGHUP)
            assert srv.proc.wait(10) == 128 + signal.SIGHUP
            with pytest.raises(StyleTransferError):
                in_flight.result(timeout=30)
    finally:
        more.set()
        srv.kill()
    srv._stderr_thread.join(5)
    log = "".join(srv.stderr_lines)
    assert "SIGHUP after SIGTERM while draining: stopping now, 1 call(s) abandoned" in log, log
    expiring = [line for line in log.splitlines() if "expires on" in line]
    assert len(expiring) == 2, log  # the server's certificate, the client CA: once each
    assert "Traceback" not in log, log
