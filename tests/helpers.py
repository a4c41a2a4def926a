"""Test helpers: the test decoder, a real ``adain-server`` and ``adain-web`` subprocess, and a real headless
Chromium (images: ``synth``)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO = Path(__file__).resolve().parents[1]
LISTEN_RE = re.compile(r"adain-server listening on (\S+):(\d+)")
# For a test server whose test makes no refine call: a server with refine on warms it up before SERVING, and a
# process's first optimiser imports torch._dynamo (~3 s of CPU at each start, on a 2-core machine that the
# suite's two workers share).
NO_REFINE = ("--max-refine-steps", "0")
# The torch-free parts' tests (the client, the CLI) on another Python, which has no torch (this project's CPU torch is
# for one Python only): that Python runs pytest, this one the servers and writes the test decoder (DEVELOPERS.md)
SERVER_PYTHON = os.environ.get("TEST_SERVER_PYTHON") or sys.executable
OTHER_PYTHON = SERVER_PYTHON != sys.executable  # (this Python has no torch)
# a test that runs the model in this Python (--local's server, the library's own functions): skipped in that run
needs_torch = pytest.mark.skipif(OTHER_PYTHON, reason="runs torch in this Python, which has none (TEST_SERVER_PYTHON: "
                                 "the torch-free parts' run)")


def write_test_decoder(path: Path, seed: int = 0) -> Path:
    """An untrained decoder (there is no trained one in tests).

    PyTorch's default initialisation shrinks the signal layer by layer, so a fresh ``Decoder()`` paints
    every input the same flat near-black image and no test could tell two outputs apart. Kaiming
    initialisation keeps the signal; the last layer is then scaled into a visible range around grey.
    """
    if OTHER_PYTHON:
        code = ("import sys; from pathlib import Path; sys.path.insert(0, 'tests'); from helpers import "
                f"write_test_decoder; write_test_decoder(Path(sys.argv[1]), {seed})")
        env = {k: v for k, v in os.environ.items() if k != "TEST_SERVER_PYTHON"}
        subprocess.run([SERVER_PYTHON, "-c", code, str(path)], cwd=REPO, check=True, env=env, timeout=120)
        return path
    import torch

    from adain.decoder import Decoder, save_decoder

    torch.manual_seed(seed)
    decoder = Decoder()
    with torch.no_grad():
        for conv in decoder.convs:
            torch.nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            conv.bias.zero_()
        decoder.convs[-1].weight.mul_(0.08)
        decoder.convs[-1].bias.copy_(torch.tensor([0.65, 0.65, 0.15]))
    save_decoder(decoder, path, {"note": "test"})
    return path


def make_certificates(folder: Path, *names: str) -> bool:
    """With openssl: for each name a CA ``NAME-ca.pem`` and a certificate ``NAME.pem`` + ``NAME.key`` it
    signed, valid for localhost and 127.0.0.1 (server or client alike). False where openssl is missing."""
    from shutil import which

    if which("openssl") is None:
        return False
    ext = folder / "san.ext"
    ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60, cwd=folder)

    for name in names:
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={name} CA",
                "-keyout", f"{name}-ca.key", "-out", f"{name}-ca.pem")
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", f"{name}.key",
                "-out", f"{name}.csr")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{name}-ca.pem", "-CAkey", f"{name}-ca.key",
                "-CAcreateserial", "-days", "1", "-extfile", "san.ext", "-out", f"{name}.pem")
    return True


class _AlwaysServing(health_pb2_grpc.HealthServicer):
    """Health SERVING, to Check and Watch. (grpcio-health-checking's servicer sends a Watch's answer holding its lock,
    which the close of a Watch cancelled meanwhile waits for on the thread that would send it: a stand-in that
    many short-lived clients had watched hung at its stop, a test run with it.)"""

    def Check(self, request, context):  # noqa: N802 (gRPC's names)
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

    def Watch(self, request, context):  # noqa: N802
        yield health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)
        ended = threading.Event()
        if context.add_callback(ended.set):  # (False: the call has ended already)
            ended.wait()


@contextlib.contextmanager
def stand_in_server(servicer: object, health: bool = False) -> Iterator[str]:
    """A gRPC server on 127.0.0.1 serving ``servicer`` (a ``StyleTransferServicer``: a server saying what the tests
    need it to, a hostile one or one of an older version), with gRPC health SERVING where ``health``. Yields its
    address."""
    from concurrent import futures

    from adain.v1 import style_transfer_pb2_grpc as pb_grpc

    srv = grpc.server(futures.ThreadPoolExecutor(16))
    pb_grpc.add_StyleTransferServicer_to_server(servicer, srv)
    if health:
        health_pb2_grpc.add_HealthServicer_to_server(_AlwaysServing(), srv)
    port = srv.add_insecure_port("127.0.0.1:0")
    srv.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        srv.stop(None)


@contextlib.contextmanager
def library_stub(styles: list) -> Iterator[str]:
    """A server that answers ListStyles alone, with ``styles`` (``pb.LibraryStyle``s): a hostile one's names, say.
    Yields its address."""
    from adain.v1 import style_transfer_pb2 as pb
    from adain.v1 import style_transfer_pb2_grpc as pb_grpc

    class Library(pb_grpc.StyleTransferServicer):
        def ListStyles(self, request, context):  # noqa: N802 (the gRPC method's name)
            return pb.ListStylesResponse(styles=styles)

    with stand_in_server(Library()) as address:
        yield address


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def health_status(target: str, service: str = "", timeout: float = 2.0, credentials=None) -> int | None:
    channel = grpc.secure_channel(target, credentials) if credentials else grpc.insecure_channel(target)
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError:
            return None
        return reply.status


class ServerProcess:
    """``python -m adain.server --port 0 ...`` with torch on 1 thread; reads the port from stdout."""

    def __init__(self, decoder: Path, *args: str, env: dict[str, str] | None = None, credentials=None) -> None:
        cmd = [
            SERVER_PYTHON, "-m", "adain.server", "--port", "0", "--decoder", str(decoder), "--device", "cpu",
            "--torch-threads", "1", "--log-level", "WARNING", *args,
        ]
        full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
        self.credentials = credentials
        ours = "--metrics-port" not in args
        for attempt in range(3):
            if ours:  # a known port: tests wait on its metrics (queue depth) instead of sleeping a guessed time
                self.metrics_port = free_port()
                extra = ["--metrics-port", str(self.metrics_port)]
            else:
                self.metrics_port, extra = int(args[args.index("--metrics-port") + 1]), []
            self.proc = subprocess.Popen(
                cmd + extra, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env
            )
            self.stderr_lines: list[str] = []
            self._stderr_thread = threading.Thread(target=self._drain_stderr, daemon=True)
            self._stderr_thread.start()
            try:
                self.port = self._read_port(timeout=90)
                break
            except RuntimeError:
                # the free port was taken before the server bound it (another test worker): another one
                if not ours or attempt == 2 or "Address already in use" not in "".join(self.stderr_lines):
                    raise
        self.target = f"127.0.0.1:{self.port}"

    def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr_lines.append(line)

    def _read_port(self, timeout: float) -> int:
        assert self.proc.stdout is not None
        result: list[str] = []

        def read() -> None:
            assert self.proc.stdout is not None
            result.append(self.proc.stdout.readline())

        t = threading.Thread(target=read, daemon=True)
        t.start()
        t.join(timeout)
        line = result[0] if result else ""
        self.listen_line = line
        m = LISTEN_RE.search(line)
        if not m:
            self.kill()
            self._stderr_thread.join(5)  # its last words, read before they are quoted (a fresh clone's run quoted
            # none: the process had ended, its stderr not yet drained)
            raise RuntimeError(f"server did not start: stdout={line!r} stderr={''.join(self.stderr_lines)[-2000:]}")
        # Keep draining stdout so that the server never blocks on a full pipe.
        threading.Thread(target=lambda: self.proc.stdout.read(), daemon=True).start()
        return int(m.group(2))

    def wait_serving(self, timeout: float = 90.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}: {''.join(self.stderr_lines)[-2000:]}")
            if health_status(self.target, credentials=self.credentials) == health_pb2.HealthCheckResponse.SERVING:
                return
            time.sleep(0.1)
        raise TimeoutError("server never reported SERVING")

    def metrics_text(self) -> str:
        """Its /metrics page, scraped now."""
        # verify=False: plain http, so no SSL context made (its CA bundle cost 41 ms of CPU a call; the tests' polls
        # of metrics and of a page starting up were 48 s of py-spy's samples of the suite, 2,077 s in all)
        return httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10, verify=False).text

    def metric(self, name: str) -> float:
        """The first sample of a metric (with its labels, if any, written out in ``name``), as scraped now."""
        values = [float(line.split()[-1]) for line in self.metrics_text().splitlines() if line.startswith(name + " ")]
        assert values, f"no metric {name}"
        return values[0]

    def wait_queued(self, at_least: int, timeout: float = 30.0, metric: str = "adain_queue_depth") -> None:
        """Until ``at_least`` requests are admitted and waiting (adain_queue_depth; adain_long_jobs for refine and
        print-size jobs): what a test's sleep guessed."""
        end = time.monotonic() + timeout
        while (depth := self.metric(metric)) < at_least:
            assert time.monotonic() < end, f"only {depth:.0f} of {at_least} requests queued after {timeout} s"
            time.sleep(0.05)

    def wait_logged(self, done: Callable[[str], bool], timeout: float = 30.0) -> str:
        """Its log (stderr) once ``done(log)`` holds: a call's line is written after its reply, and read from the
        pipe by a thread, so a test that looked right after a reply sometimes missed it."""
        end = time.monotonic() + timeout
        while not done(text := "".join(self.stderr_lines)):
            assert time.monotonic() < end, text[-3000:]
            time.sleep(0.05)
        return text

    def terminate(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def alive(self) -> bool:
        return self.proc.poll() is None


class WebProcess:
    """``python -m adain.web`` on a free port in front of ``server``; waits until it answers."""

    def __init__(self, server: str, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "adain.web", "--server", server, "--port", str(self.port), "--log-level", "warning",
             "--retries", "0", *args],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env=None if env is None else {**os.environ, **env},
        )
        self.stderr: list[str] = []
        threading.Thread(target=lambda: self.stderr.extend(self.proc.stderr), daemon=True).start()
        end = time.monotonic() + 60  # its imports, on a machine running two test workers
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"adain-web exited {self.proc.returncode}: {''.join(self.stderr)}")
            try:
                httpx.get(self.url + "/api/info", timeout=2, verify=False)  # (plain http: see metrics_text)
                return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise TimeoutError("adain-web never answered")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(15)

def browser_or_skip():
    """Headless Chromium, with a fake camera that the page may use without asking (the live camera's tests)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("no chromium and chromedriver here (scripts/setup.sh installs them with apt when run as root; "
                    "CI runs these tests)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,1400",
                "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(driver), options=options)


def open_page_with(browser, web: WebProcess, content: Path | str, *styles: str) -> None:
    """The page loaded with ``content`` chosen (several files: their paths on lines of one string) and the
    gallery's ``styles`` added."""
    from selenium.webdriver.common.by import By

    browser.get(web.url + "/")
    wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#gallery button")) == 3)
    browser.find_element(By.ID, "content").send_keys(str(content))
    for name in styles:
        browser.find_element(By.CSS_SELECTOR, f'#gallery button[data-name="{name}"]').click()
    wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#styles li")) == len(styles))


def wait_for(driver, condition, timeout: float = 60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(condition)


ALERTS = REPO / "deploy" / "prometheus" / "alerts.yaml"


def alert_metrics() -> set[str]:
    """Every metric named in deploy/prometheus/alerts.yaml's expressions (parsed as PromQL, not matched as text)."""
    import promql_parser
    import yaml

    names: set[str] = set()

    def walk(node: object) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            names.add(node.name)
        for attr in ("expr", "lhs", "rhs", "vector_selector", "param"):
            child = getattr(node, attr, None)
            if child is not None and not isinstance(child, (str, int, float)):
                walk(child)
        for arg in getattr(node, "args", None) or ():
            walk(arg)

    for group in yaml.safe_load(ALERTS.read_text())["groups"]:
        for rule in group["rules"]:
            walk(promql_parser.parse(rule["expr"]))
    return names


def exported_metrics(text: str) -> set[str]:
    """The series names a Prometheus scrape offers: a labelled family that has no sample yet still names its
    series (``_total`` of a counter, ``_bucket``/``_sum``/``_count`` of a histogram)."""
    from prometheus_client.parser import text_string_to_metric_families

    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
                "info": ("_info",), "gauge": ("",)}
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names |= {family.name + s for s in suffixes.get(family.type, ("",))} | {s.name for s in family.samples}
    return names


def cli_on_a_terminal(argv: list[str], columns: int = 80, stdout_too: bool = False, timeout: float = 60) -> bytes:
    """What ``adain-stylize ARGV`` writes to a terminal (a pty of ``columns``: at 0 tqdm draws an empty bar): its
    stderr, and its stdout where ``stdout_too``. Asserts it exits 0."""
    import fcntl
    import pty
    import struct
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "adain.client.cli", *argv], cwd=REPO, stderr=follower,
                            stdout=follower if stdout_too else subprocess.DEVNULL)
    os.close(follower)
    shown = b""
    try:
        while chunk := os.read(leader, 4096):
            shown += chunk
    except OSError:  # EIO: the child closed the terminal's last end
        pass
    finally:
        os.close(leader)
    assert proc.wait(timeout=timeout) == 0, shown
    return shown
