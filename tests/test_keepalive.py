"""A link that goes dead without a word (black-holed: the TCP connection stays up and nothing passes), from an
outside tester's flaky-network tour: without pings the client's clip waited for ever and the server ran a refine
for a client long gone to its end. Both sides now ping a connection with calls in flight (the server every
--keepalive-s, the client every minute; here every second or two)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from adain.client import StyleTransferClient, StyleTransferError
from helpers import ServerProcess
from synth import make_image

CONTENT = make_image(96, 64, seed=1)
STYLE = make_image(64, 64, seed=2)
# the client's minute and 20 s, shortened (given options come first: gRPC takes a key's first value)
PINGS = [("grpc.keepalive_time_ms", 2000), ("grpc.keepalive_timeout_ms", 1000), ("grpc.http2.ping_timeout_ms", 1000)]


class BlackHole:
    """A TCP proxy on 127.0.0.1 that, once ``close_in()``, keeps every connection open and passes nothing: what it
    reads is dropped, both ways (a link cut somewhere between, the ends unaware)."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.holed = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                near, _ = self.listener.accept()
            except OSError:
                return
            far = socket.create_connection(("127.0.0.1", self.upstream))
            self.sockets += [near, far]
            for a, b in ((near, far), (far, near)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                if not self.holed.is_set():
                    dst.sendall(data)
        except OSError:
            pass

    def close_in(self) -> None:
        self.holed.set()

    def stop(self) -> None:
        for s in self.sockets:
            s.close()


@pytest.fixture(scope="module")
def server(decoder_path: Path) -> Iterator[ServerProcess]:
    srv = ServerProcess(decoder_path, "--keepalive-s", "1")
    try:
        srv.wait_serving()
        yield srv
    finally:
        srv.terminate()


def _gone_within(srv: ServerProcess, metric: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if srv.metric(metric) == 0:
            return True
        time.sleep(0.2)
    return False


def _in_thread(work) -> tuple[threading.Thread, list]:
    said: list = []

    def run() -> None:
        try:
            said.append(work())
        except StyleTransferError as e:
            said.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, said


def test_a_clip_over_a_dead_link_fails_and_frees_its_place(server: ServerProcess) -> None:
    """The clip had no deadline (none is given by default) and waited for ever; the server kept its stream."""
    hole = BlackHole(server.port)
    first = threading.Event()

    def frames() -> Iterator[bytes]:
        yield CONTENT
        first.wait(30)
        hole.close_in()
        yield CONTENT

    try:
        with StyleTransferClient(f"127.0.0.1:{hole.port}", options=PINGS) as client:
            def run() -> list:
                got = []
                for frame in client.stylize_video(frames(), STYLE):
                    got.append(frame)
                    first.set()
                return got

            thread, said = _in_thread(run)
            thread.join(30)
            assert not thread.is_alive(), "the clip still waits on a dead link"
            assert isinstance(said[0], StyleTransferError) and said[0].code == grpc.StatusCode.UNAVAILABLE, said
        assert _gone_within(server, "adain_video_streams", 15)
    finally:
        hole.stop()


def test_a_refine_for_a_client_gone_silent_is_stopped(server: ServerProcess) -> None:
    """The server ran a refine for a black-holed client to its end (109 s), holding the long-job place."""
    hole = BlackHole(server.port)
    try:
        # (retries=0: gRPC would send it again on a new connection, into the same hole, for 20 s)
        with StyleTransferClient(f"127.0.0.1:{hole.port}", options=PINGS, retries=0) as client:
            thread, said = _in_thread(lambda: client.stylize(CONTENT, STYLE, refine_steps=500, timeout=300))
            deadline = time.monotonic() + 30
            while server.metric("adain_long_jobs") < 1 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert server.metric("adain_long_jobs") == 1
            hole.close_in()
            assert _gone_within(server, "adain_long_jobs", 15), "the refine still runs for a client gone"
            thread.join(30)
            assert not thread.is_alive() and said[0].code == grpc.StatusCode.UNAVAILABLE, said
        with StyleTransferClient(server.target) as client:  # and it serves on
            assert client.stylize(CONTENT, STYLE).image
    finally:
        hole.stop()
