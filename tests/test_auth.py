"""Who may call: bearer tokens and mutual TLS, each against the real server, and their rotation."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2

from adain.client import StyleTransferClient, StyleTransferError
from adain.server.auth import RECHECK_S, TlsFiles, TokenFile, bearer_token, read_tokens
from adain.server.config import parse_settings
from adain.v1 import style_transfer_pb2 as pb
from helpers import NO_REFINE, REPO, ServerProcess, free_port, health_status, make_certificates
from synth import make_image

CONTENT = make_image(48, 32, seed=31)
STYLE = make_image(32, 32, seed=32, kind="noise")
OLD, NEW = "old-token-0123456789abcdef", "new-token-fedcba9876543210"


def _code(client: StyleTransferClient) -> grpc.StatusCode:
    try:
        client.stylize(CONTENT, STYLE)
    except StyleTransferError as e:
        return e.code
    return grpc.StatusCode.OK


def _rewrite(path: Path, text: str) -> None:
    """Replace a file the way a Kubernetes Secret update does: a new file renamed over the old one."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# --- pieces ---------------------------------------------------------------------------------------


def test_token_file_rules(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"# the web front end\n{OLD}\n\n  web-frontend  {NEW}  \nweb {NEW}x front\n")
    assert read_tokens(str(path)) == [("", OLD, False), ("web-frontend", NEW, False), ("web", NEW + "x", True)]
    path.write_bytes(f"\ufeffweb {NEW} front\r\n".encode())  # a BOM and CRLF, as Notepad writes (it was "line 1")
    assert read_tokens(str(path)) == [("web", NEW, True)]
    from adain.client._client import _TokenSource

    path.write_bytes(f"\ufeff{OLD}\r\n".encode())  # the client's --token-file too
    assert _TokenSource(None, path)() == OLD
    for text, says in (("", "holds no token"), ("# only a comment\n", "holds no token"),
                       ("short\n", "line 1: expected \\[NAME\\] TOKEN"), ("a b c\n", "line 1"),
                       (f"{NEW} front\n", "line 1"), (f"web {NEW} frontdoor\n", "line 1"),
                       (f"web/front {NEW}\n", "line 1"), (f"x {NEW}\n{OLD} short\n", "line 2")):
        path.write_text(text)
        with pytest.raises(ValueError, match=says):
            read_tokens(str(path))
    assert bearer_token([("authorization", f"Bearer {OLD}")]) == OLD
    assert bearer_token([("authorization", f"bearer  {OLD} ")]) == OLD
    assert bearer_token([("authorization", f"Basic {OLD}")]) is None
    assert bearer_token([("x-request-id", "r1")]) is None


def test_token_file_follows_the_file_and_keeps_the_last_good_tokens(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(OLD + "\n")
    now = [0.0]
    tokens = TokenFile(str(path), clock=lambda: now[0])
    assert tokens.caller(OLD).startswith("token-") and OLD not in tokens.caller(OLD)  # a name that is no secret
    assert tokens.allows(OLD) and not tokens.allows(NEW) and not tokens.allows(None) and not tokens.allows("")
    _rewrite(path, NEW + "\n")
    assert tokens.allows(OLD)  # looked at again only after RECHECK_S
    now[0] += RECHECK_S
    assert tokens.allows(NEW) and not tokens.allows(OLD)
    for broken in ("", "too-short\n"):  # a failed write keeps the last good tokens
        _rewrite(path, broken)
        now[0] += RECHECK_S
        assert tokens.allows(NEW) and not tokens.allows(OLD)
    path.unlink()
    now[0] += RECHECK_S
    assert tokens.allows(NEW)


def test_tls_files_refuse_a_key_that_does_not_fit(tmp_path: Path) -> None:
    if not make_certificates(tmp_path, "a", "b"):
        pytest.skip("openssl is not available to make test certificates")
    with pytest.raises(ValueError, match="not a certificate chain and its private key"):
        TlsFiles(str(tmp_path / "a.pem"), str(tmp_path / "b.key"))
    (tmp_path / "empty.pem").write_text("")
    with pytest.raises(ValueError, match="holds no PEM certificate"):
        TlsFiles(str(tmp_path / "a.pem"), str(tmp_path / "a.key"), str(tmp_path / "empty.pem"))
    with pytest.raises(SystemExit):
        parse_settings(["--tls-client-ca", str(tmp_path / "a-ca.pem")])  # client CA without TLS


def _expired_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost valid in January 2020 only, and its key (openssl ca sets the dates)."""
    (folder / "db").mkdir()
    (folder / "db" / "index.txt").write_text("")
    (folder / "db" / "serial").write_text("01\n")
    (folder / "ca.cnf").write_text("[ca]\ndefault_ca=c\n[c]\ndatabase=db/index.txt\nserial=db/serial\n"
                                   "new_certs_dir=db\ndefault_md=sha256\npolicy=p\n[p]\ncommonName=supplied\n")
    for args in (["req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", "old.key", "-out", "old.csr", "-subj",
                  "/CN=localhost"],
                 ["ca", "-batch", "-config", "ca.cnf", "-selfsign", "-keyfile", "old.key", "-in", "old.csr", "-out",
                  "old.pem", "-startdate", "20200101000000Z", "-enddate", "20200201000000Z"]):
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60, cwd=folder)
    return folder / "old.pem", folder / "old.key"


def test_an_expired_certificate_is_refused_and_a_rotation_to_one_keeps_the_last_good(tmp_path: Path, caplog) -> None:
    """Found by an outside tester: an expired certificate started a server that said SERVING (its plaintext health
    probe too) while every client refused the handshake, and a rotation to one replaced the last good files."""
    if not make_certificates(tmp_path, "good"):
        pytest.skip("openssl is not available to make test certificates")
    old_pem, old_key = _expired_certificate(tmp_path)
    with pytest.raises(ValueError, match=r"old.pem: the certificate expired on Feb  1 00:00:00 2020 GMT"):
        TlsFiles(str(old_pem), str(old_key))
    live_pem, live_key = tmp_path / "live.pem", tmp_path / "live.key"
    shutil.copy(tmp_path / "good.pem", live_pem)
    shutil.copy(tmp_path / "good.key", live_key)
    files = TlsFiles(str(live_pem), str(live_key))  # valid for a day: warned of
    assert any("expires on" in r.getMessage() for r in caplog.records)
    good = files.config
    time.sleep(0.02)  # a new modification time
    shutil.copy(old_pem, live_pem)
    shutil.copy(old_key, live_key)
    assert files._fetch() is None and files.config is good  # the last good ones kept
    assert any("cannot be used yet" in r.getMessage() and "expired" in r.getMessage() for r in caplog.records)


# --- the real server ------------------------------------------------------------------------------


def test_tokens_against_the_real_server(decoder_path: Path, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# one line a client\n{OLD}\n")
    srv = ServerProcess(decoder_path, "--auth-tokens-file", str(tokens), "--log-level", "INFO", *NO_REFINE)
    try:
        srv.wait_serving()  # health needs no token (kubelet probes send none)
        with StyleTransferClient(srv.target, timeout=60, retries=0) as anonymous:
            with pytest.raises(StyleTransferError) as info:
                anonymous.stylize(CONTENT, STYLE)
            assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
            assert "authorization: Bearer" in info.value.details and info.value.request_id
            with pytest.raises(StyleTransferError) as info:
                anonymous.server_info()
            assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
        with StyleTransferClient(srv.target, timeout=60, retries=0, token=NEW) as wrong:
            with pytest.raises(StyleTransferError) as info:  # a streaming method is refused as well
                wrong.stylize(CONTENT, STYLE, refine_steps=2, on_progress=lambda p: None)
            assert (info.value.code, info.value.details) == (grpc.StatusCode.UNAUTHENTICATED, "the token is not valid")
        # 16 million empty style entries (32 MB) took 1.2 GB to parse, before the token was looked at, and as
        # much for a caller with one before any check: refused unparsed without a token, and with one on the count
        junk = bytes(pb.StylizeRequest(content=CONTENT).SerializeToString()) + b"\x12\x00" * 15_900_000
        idle = _peak_rss(srv.proc.pid)
        with grpc.insecure_channel(srv.target, options=[("grpc.max_send_message_length", 64 << 20)]) as channel:
            stylize = channel.unary_unary("/adain.v1.StyleTransfer/Stylize")
            with pytest.raises(grpc.RpcError) as info:  # the token without "Bearer ": said so (it was "needs one")
                stylize(pb.StylizeRequest(content=CONTENT).SerializeToString(), metadata=(("authorization", OLD),),
                        timeout=60)
            assert info.value.details().startswith("the authorization entry must read 'Bearer <token>'"), (
                info.value.details())
            for metadata, code in (((), grpc.StatusCode.UNAUTHENTICATED),
                                   ((("authorization", f"Bearer {OLD}"),), grpc.StatusCode.INVALID_ARGUMENT)):
                with pytest.raises(grpc.RpcError) as info:
                    stylize(junk, metadata=metadata, timeout=60)
                assert info.value.code() == code, info.value.details()
                # a refusal names its replica as every reply does (which one has a stale token file?)
                served_by = dict(info.value.trailing_metadata()).get("x-served-by", "")
                assert served_by.endswith(f":{srv.target.rsplit(':', 1)[1]}"), info.value.trailing_metadata()
            assert "over 72 fields: more than max_styles=8 styles" in info.value.details()
            with pytest.raises(grpc.RpcError) as over:  # over the 32 MiB limit: gRPC refuses it before any handler
                stylize(junk + b"\x12\x00" * (1 << 20), metadata=(("authorization", f"Bearer {OLD}"),
                                                               ("x-request-id", "over-32"),), timeout=60)
            assert over.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert _peak_rss(srv.proc.pid) - idle < 300 << 20, (_peak_rss(srv.proc.pid) - idle) >> 20
        # logged with the caller its token names, as the call's task ends
        srv.wait_logged(lambda log: "request_id=over-32 method=Stylize outcome=unread" in log)
        line = next(x for x in srv.stderr_lines if "request_id=over-32" in x)
        assert f"caller={TokenFile(tokens).lookup(OLD)[0]} " in line, line
        with StyleTransferClient(srv.target, timeout=60, token=OLD) as good:
            assert good.stylize(CONTENT, STYLE).width == 48
            assert good.server_info()["device"] == "cpu"

        # The CLI: the token from $ADAIN_TOKEN or --token-file; without one, a message that says what to do.
        token_file = tmp_path / "client-token"
        token_file.write_text(OLD + "\n")
        (tmp_path / "c.png").write_bytes(CONTENT)
        (tmp_path / "s.png").write_bytes(STYLE)
        cli = [sys.executable, "-m", "adain.client.cli", str(tmp_path / "c.png"), "-s", str(tmp_path / "s.png"),
               "--server", srv.target]
        env = {k: v for k, v in os.environ.items() if not k.startswith("ADAIN_")}
        runs = {
            "none": subprocess.run([*cli, "-o", str(tmp_path / "none.png")], env=env, **_run),
            "env": subprocess.run([*cli, "-o", str(tmp_path / "env.png")], env={**env, "ADAIN_TOKEN": OLD}, **_run),
            "file": subprocess.run([*cli, "-o", str(tmp_path / "file.png"), "--token-file", str(token_file)],
                                   env=env, **_run),
            "missing": subprocess.run([*cli, "-o", str(tmp_path / "x.png"), "--token-file", str(tmp_path / "nope")],
                                      env=env, **_run),
        }
        assert runs["none"].returncode == 1 and "UNAUTHENTICATED" in runs["none"].stderr
        assert "--token-file" in runs["none"].stderr and not (tmp_path / "none.png").exists()
        assert runs["env"].returncode == 0 and (tmp_path / "env.png").exists(), runs["env"].stderr
        assert runs["file"].returncode == 0 and (tmp_path / "file.png").exists(), runs["file"].stderr
        assert runs["missing"].returncode == 1 and "--token-file: no such file" in runs["missing"].stderr

        # Rotation without a restart: a client reading a token file follows it too.
        with StyleTransferClient(srv.target, timeout=60, retries=0, token_file=token_file) as follower:
            assert _code(follower) == grpc.StatusCode.OK
            _rewrite(tokens, f"{NEW}\n")
            time.sleep(RECHECK_S + 0.2)
            assert _code(follower) == grpc.StatusCode.UNAUTHENTICATED
            _rewrite(token_file, NEW + "\n")
            assert _code(follower) == grpc.StatusCode.OK
        assert health_status(srv.target) is not None
        metrics = srv.metrics_text()
        assert 'adain_requests_total{code="UNAUTHENTICATED",method="Stylize"} 5.0' in metrics, metrics
        log = "".join(srv.stderr_lines)
        assert "code=UNAUTHENTICATED" in log and "token=wrong" in log and "token=none" in log
        assert "ms=0.0 caller=ipv4:127.0.0.1" in log  # the fields of every call's line
        assert OLD not in log and NEW not in log  # tokens are never logged
        assert srv.terminate() == 0
    finally:
        srv.kill()


def _peak_rss(pid: int) -> int:
    """A process's peak resident memory (VmHWM), bytes."""
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


_run = {"capture_output": True, "text": True, "timeout": 120, "cwd": REPO}


def test_mutual_tls_and_certificate_rotation(decoder_path: Path, tmp_path: Path) -> None:
    if not make_certificates(tmp_path, "server", "client", "renewed", "stranger"):
        pytest.skip("openssl is not available to make test certificates")
    p = {name: str(tmp_path / name) for name in os.listdir(tmp_path)}
    live_cert, live_key = tmp_path / "live.pem", tmp_path / "live.key"
    shutil.copy(p["server.pem"], live_cert)
    shutil.copy(p["server.key"], live_key)
    mine = {"root_certificates": Path(p["server-ca.pem"]), "client_certificate": p["client.pem"],
            "client_key": p["client.key"]}
    creds = grpc.ssl_channel_credentials(Path(p["server-ca.pem"]).read_bytes(), Path(p["client.key"]).read_bytes(),
                                         Path(p["client.pem"]).read_bytes())
    health_port = free_port()
    srv = ServerProcess(decoder_path, *NO_REFINE, "--tls-cert", str(live_cert), "--tls-key", str(live_key),
                        "--tls-client-ca", p["client-ca.pem"], "--health-port", str(health_port), credentials=creds)
    try:
        srv.wait_serving()
        # Probes that speak no TLS (Kubernetes' gRPC probes) ask the plaintext health port; only health is there.
        plain = f"127.0.0.1:{health_port}"
        assert health_status(plain, "adain.v1.StyleTransfer") == health_pb2.HealthCheckResponse.SERVING
        with StyleTransferClient(plain, timeout=20, retries=0) as c:
            assert _code(c) == grpc.StatusCode.UNIMPLEMENTED
        with StyleTransferClient(srv.target, timeout=60, retries=0, **mine) as c:
            assert c.stylize(CONTENT, STYLE).width == 48
        with StyleTransferClient(srv.target, timeout=20, retries=0, root_certificates=p["server-ca.pem"]) as c:
            assert _code(c) == grpc.StatusCode.UNAVAILABLE  # no client certificate: no connection
        with StyleTransferClient(srv.target, timeout=20, retries=0, root_certificates=p["server-ca.pem"],
                                 client_certificate=p["stranger.pem"], client_key=p["stranger.key"]) as c:
            assert _code(c) == grpc.StatusCode.UNAVAILABLE  # a certificate the client CA did not sign

        # The server's certificate renewed in place (from another CA, so the change shows): new
        # connections get the new one, no restart. A half-done renewal (the new certificate, the old key)
        # keeps the old identity until the key follows.
        _rewrite(live_cert, Path(p["renewed.pem"]).read_text())
        with StyleTransferClient(srv.target, timeout=60, retries=0, **mine) as c:
            assert _code(c) == grpc.StatusCode.OK
        _rewrite(live_key, Path(p["renewed.key"]).read_text())
        with StyleTransferClient(srv.target, timeout=20, retries=0, **mine) as c:
            assert _code(c) == grpc.StatusCode.UNAVAILABLE  # the old CA no longer vouches for the server
        renewed = {**mine, "root_certificates": p["renewed-ca.pem"]}
        with StyleTransferClient(srv.target, timeout=60, retries=0, **renewed) as c:
            assert _code(c) == grpc.StatusCode.OK
        log = "".join(srv.stderr_lines)
        assert "cannot be used yet" in log, log[-2000:]
        assert srv.terminate() == 0
        assert health_status(plain) is None  # the health port closes with the server
    finally:
        srv.kill()
