"""What adain-web and adain-server say at start about the addresses they are given: a --server gRPC cannot
use, a server that does not answer, a port another process holds. Real processes; none loads a model (the
server's port checks come before it)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from helpers import REPO, SERVER_PYTHON, free_port


def _run(module: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    python = SERVER_PYTHON if module == "adain.server" else sys.executable
    return subprocess.run([python, "-m", module, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env=env)


@contextmanager
def _held_port() -> Iterator[int]:
    """A port another process would hold: bound and listening."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        yield held.getsockname()[1]


@pytest.mark.parametrize(("server", "says"), [
    ("http://127.0.0.1:50051", "HOST:PORT"),
    ("127.0.0.1", "no port"),
    ("localhost:70000", "1-65535"),
    ("::1:50051", "[::1]:"),
    ("10.0.0.5:50051,10.0.0.6", "no port"),
])
def test_web_refuses_a_malformed_server_at_start(server: str, says: str) -> None:
    """It started, and every call then said "not available right now" (gRPC: "Misformatted domain name", or a
    missing port taken as 443). The client's own check refuses it (adain.client's target_problem, via connect):
    one line naming the flag, before anything listens."""
    proc = _run("adain.web", "--server", server, "--port", str(free_port()))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("adain-web: error: --server") and server in lines[0] and says in lines[0], lines[0]


def test_web_logs_an_unreachable_server_at_start_and_healthz_says_why_once() -> None:
    """Nobody listens on the server's port: the page starts (the server may come later), and says so at once,
    with gRPC's reason, before any request; /healthz says why too, once a minute, however often it is asked."""
    server, port = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "adain.web", "--server", f"dns:///127.0.0.1:{server}", "--port", str(port),
         "--log-level", "info", "--retries", "0"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True).start()

    def wait_for(text: str) -> str:
        end = time.monotonic() + 60
        while text not in (log := "".join(lines)):
            assert proc.poll() is None and time.monotonic() < end, log
            time.sleep(0.05)
        return log

    try:
        log = wait_for("does not answer")
        warning = next(line for line in log.splitlines() if "does not answer" in line)
        assert "WARNING" in warning and f"127.0.0.1:{server}" in warning and "Connection refused" in warning, log
        log = wait_for(f"adain-web: http://127.0.0.1:{port}/")
        assert log.index("Uvicorn running on") < log.index("adain-web: http://"), log  # once it listens
        for _ in range(3):
            r = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=30)
            assert r.status_code == 503 and r.json()["status"] == "UNREACHABLE"
            assert str(server) not in r.text  # the reason is the log's, not the public's
        log = wait_for("/healthz: the server")
    finally:
        proc.terminate()
        proc.wait(15)
    said = [line for line in log.splitlines() if "/healthz: the server" in line]
    assert len(said) == 1 and "WARNING" in said[0] and f"127.0.0.1:{server}" in said[0], log
    assert "Connection refused" in said[0] and "Traceback" not in log, log


def test_web_refuses_a_busy_port_before_its_url_line() -> None:
    """uvicorn failed on the taken port (rc 3) after the URL line had invited the user to another process's page."""
    with _held_port() as port:
        proc = _run("adain.web", "--server", "127.0.0.1:50051", "--port", str(port))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"adain-web: error: cannot listen on 127.0.0.1:{port}: Address already in use"], proc.stderr


def test_web_that_cannot_serve_its_metrics_leaves_no_folder(tmp_path: Path) -> None:
    """A taken --metrics-port: it says so and exits 2, and its clips' temporary folder (made when the page was
    built, removed only by a shutdown that never came) is not left behind."""
    with _held_port() as port:
        proc = _run("adain.web", "--server", "127.0.0.1:50051", "--port", str(free_port()), "--metrics-port",
                    str(port), env=dict(os.environ, TMPDIR=str(tmp_path)))
    assert proc.returncode == 2 and "adain-web: error:" in proc.stderr and "in use" in proc.stderr, proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_server_busy_ports_say_why_and_what_to_do() -> None:
    with _held_port() as port:
        grpc_port = _run("adain.server", "--port", str(port), "--metrics-port", "0")
        metrics_port = _run("adain.server", "--port", "0", "--metrics-port", str(port))
        health_port = _run("adain.server", "--port", "0", "--metrics-port", "0", "--health-port", str(port))
    for proc in (grpc_port, metrics_port, health_port):
        assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert "Traceback" not in proc.stderr and "model loaded" not in proc.stderr
    assert grpc_port.stderr.startswith(f"adain-server: error: cannot listen on 127.0.0.1:{port}: Address already in "
                                       "use (another adain-server? --port 0 picks a free port"), grpc_port.stderr
    assert metrics_port.stderr.startswith(
        f"adain-server: error: cannot serve metrics on 127.0.0.1:{port}: Address already in use (another "
        "adain-server? give --metrics-port 0 to serve no metrics, or another port)"), metrics_port.stderr
    assert health_port.stderr.startswith(
        f"adain-server: error: cannot listen on 127.0.0.1:{port} (--health-port): Address already in use"), \
        health_port.stderr
    # what the hints say is so: --port 0 picks a free port, --metrics-port 0 serves no metrics
    from adain.server.config import build_parser

    text = " ".join(build_parser({}).format_help().split())
    assert "0 picks a free port" in text and "0 or negative disables" in text


def test_no_writable_temporary_folder_is_said_at_start() -> None:
    """A read-only root file system without a /tmp to write: the server loaded its model, then its warm-up failed
    (torch's compile cache), over and over; the page passed its probes and then failed large photos and every
    clip. Both say so before anything else. (As root every folder is writable: Python's choice is made to fail.)"""
    for module, prog, args in (("adain.server", "adain-server", ["--port", "0", "--metrics-port", "0"]),
                               ("adain.web", "adain-web", ["--port", str(free_port())])):
        code = ("import runpy, sys, tempfile; tempfile.tempdir = '/nonexistent/tmp'; "
                f"sys.argv = {[prog, *args]!r}; "
                f"runpy.run_module('{module}', run_name='__main__', alter_sys=True)")
        python = SERVER_PYTHON if module == "adain.server" else sys.executable
        proc = subprocess.run([python, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert proc.stderr.startswith(f"{prog}: error: no writable temporary folder (") and \
            "set TMPDIR to one, or mount one at /tmp (Kubernetes: an emptyDir)" in proc.stderr, proc.stderr


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full here")
def test_a_server_whose_stdout_is_full_serves_and_says_where_it_listens(decoder_path: Path) -> None:
    """With its standard output on a full disk the server exited 1 once its model had loaded, nothing said, at its
    "listening on" line (an operator's storage tour): the line goes to the log, and it serves."""
    from grpc_health.v1 import health_pb2

    from helpers import health_status

    serving = health_pb2.HealthCheckResponse.SERVING

    with open("/dev/full", "w") as full:
        proc = subprocess.Popen([SERVER_PYTHON, "-m", "adain.server", "--decoder", str(decoder_path), "--port", "0",
                                 "--metrics-port", "0", "--backend", "torch"], cwd=REPO, stdout=full,
                                stderr=subprocess.PIPE, text=True)
    try:
        said = ""
        while "listening on" not in said:
            said = proc.stderr.readline()
            assert said, "the server ended before it listened"
        assert "(not on standard output: No space left on device)" in said, said
        port = int(said.split("listening on 127.0.0.1:")[1].split()[0])
        deadline = time.monotonic() + 60
        while health_status(f"127.0.0.1:{port}") != serving:
            assert time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
        proc.stderr.close()


def test_a_tmpdir_python_passes_over_is_warned_of(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """TMPDIR full, read-only or missing: Python takes /tmp instead without a word (an operator who pointed it at a
    large volume got the pod's small /tmp: a storage tour). adain-web and adain-server warn at start."""
    from adain.files import temp_fallback

    missing = tmp_path / "missing"
    env = {**os.environ, "TMPDIR": str(missing)}
    proc = subprocess.Popen([sys.executable, "-m", "adain.web", "--port", str(free_port()), "--server",
                             "127.0.0.1:1"], cwd=REPO, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env=env)
    try:
        line = proc.stderr.readline()
    finally:
        proc.terminate()
        proc.wait(30)
        proc.stderr.close()
    assert line.startswith(f"adain-web: warning: TMPDIR={missing} does not exist: temporary files (uploads, clips, "
                           "compile caches) go to /"), line
    monkeypatch.delenv("TMPDIR", raising=False)
    assert temp_fallback() is None  # (not set: nothing to say)
    # a filesystem tour's: TMPDIR unset and the system's folders unusable, Python takes the working folder, where
    # clips and compile caches were kept without a word (its choice, made as Python makes it when /tmp fails)
    import tempfile

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    said = temp_fallback()
    assert said is not None and said.startswith("no temporary folder (") and said.endswith(
        f"temporary files (uploads, clips, compile caches) go to the working folder {tmp_path}; set TMPDIR to one")
    # a read-only TMPDIR is said to be read-only (it was "cannot be written in": an operator looked at permissions)
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,ro", "tmpfs", str(ro)],
                                            capture_output=True).returncode == 0:
        try:
            monkeypatch.setenv("TMPDIR", str(ro))
            monkeypatch.setattr(tempfile, "tempdir", "/tmp")
            assert temp_fallback() == (f"TMPDIR={ro} is read-only: temporary files (uploads, clips, compile "
                                       "caches) go to /tmp")
        finally:
            subprocess.run(["umount", str(ro)], check=False)
