"""Several replicas on 127.0.0.1 behind the client's round-robin balancing and gRPC health checking: a
folder reaches all of them, and a replica drained (SIGTERM) or killed (SIGKILL) midway loses nothing."""

from __future__ import annotations

import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adain.client import StyleRef, StyleTransferClient, StyleTransferError
from adain.client.cli import main
from helpers import NO_REFINE, ServerProcess
from synth import make_image

STYLE = make_image(40, 40, seed=51, kind="noise")


class Replicas:
    """Three servers with the test decoder, metrics on known ports and access logs on (INFO), no refine (these
    tests make none). One set serves the module: a replica a test stopped is replaced (``heal``) before the next."""

    def __init__(self, decoder: Path, n: int = 3) -> None:
        self.decoder = decoder
        self.servers = [self._start() for _ in range(n)]
        for srv in self.servers:
            srv.wait_serving()

    def _start(self) -> ServerProcess:
        return ServerProcess(self.decoder, "--log-level", "INFO", "--grace-seconds", "20", *NO_REFINE)

    @property
    def target(self) -> str:
        return ",".join(s.target for s in self.servers)

    def heal(self) -> None:
        """A fresh server in place of each one that has exited."""
        for i, srv in enumerate(self.servers):
            if not srv.alive():
                self.servers[i] = self._start()
                self.servers[i].wait_serving()

    def stylize_ok(self, srv: ServerProcess) -> int:
        """Successful Stylize calls the replica logged (its access log survives its exit, unlike /metrics)."""
        return sum("method=Stylize code=OK" in line for line in srv.stderr_lines)

    def served_since(self, before: list[int], at_least: int) -> list[int]:
        """Each replica's logged successes since ``before``, once they add up to ``at_least``: the access log is
        read from each process's stderr by a thread, which on a busy machine lags the replies by a moment."""
        def served() -> list[int]:
            return [self.stylize_ok(s) - b for s, b in zip(self.servers, before)]

        end = time.monotonic() + 30
        while sum(served()) < at_least:
            assert time.monotonic() < end, (served(), at_least)
            time.sleep(0.1)
        time.sleep(0.5)  # anything logged twice comes with the rest
        return served()

    def metrics_ok(self, srv: ServerProcess) -> int:
        text = srv.metrics_text()
        m = re.search(r'adain_requests_total\{code="OK",method="Stylize"\} (\d+)', text)
        return int(float(m.group(1))) if m else 0

    def stop(self) -> None:
        for srv in self.servers:
            if srv.alive():
                srv.terminate()


@pytest.fixture(scope="module")
def replica_set(decoder_path: Path) -> Iterator[Replicas]:
    r = Replicas(decoder_path)
    yield r
    r.stop()


@pytest.fixture()
def replicas(replica_set: Replicas) -> Replicas:
    replica_set.heal()
    return replica_set


def _folder(tmp_path: Path, n: int) -> tuple[Path, Path]:
    src = tmp_path / "photos"
    src.mkdir()
    for i in range(n):
        (src / f"p{i:02d}.png").write_bytes(make_image(64, 48, seed=500 + i))
    (tmp_path / "style.png").write_bytes(STYLE)
    return src, tmp_path / "style.png"


def _expected(tmp_path: Path, src: Path, style: Path, target: str) -> dict[str, np.ndarray]:
    """Each photo stylized by one replica directly: what every output must be."""
    with StyleTransferClient(target, timeout=60) as client:
        return {
            p.stem: np.asarray(client.stylize(p, style).to_pil(), dtype=np.int16) for p in sorted(src.iterdir())
        }


def _check_outputs(out: Path, expected: dict[str, np.ndarray]) -> None:
    files = sorted(out.iterdir())
    assert [f.name for f in files] == [f"{stem}_stylized_style.png" for stem in sorted(expected)]  # none lost
    for f in files:
        got = np.asarray(Image.open(f).convert("RGB"), dtype=np.int16)
        assert np.abs(got - expected[f.name.split("_stylized")[0]]).max() <= 2, f.name


def test_folder_reaches_every_replica(replicas: Replicas, tmp_path: Path, capsys) -> None:
    src, style = _folder(tmp_path, 12)
    out = tmp_path / "out"
    before = [replicas.metrics_ok(s) for s in replicas.servers]
    assert main([str(src), "-s", str(style), "-o", str(out), "--server", replicas.target, "-j", "3"]) == 0
    printed = capsys.readouterr().out
    counts = [replicas.metrics_ok(s) - b for s, b in zip(replicas.servers, before)]
    assert all(c > 0 for c in counts) and sum(counts) == 12, counts
    line = next(x for x in printed.splitlines() if x.startswith("images per replica:"))
    assert all(f":{s.port} " in line for s in replicas.servers), line
    _check_outputs(out, _expected(tmp_path, src, style, replicas.servers[0].target))


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_a_replica_going_away_midway_loses_nothing(replicas: Replicas, tmp_path: Path, capsys, how: str) -> None:
    src, style = _folder(tmp_path, 30)
    before = [replicas.stylize_ok(s) for s in replicas.servers]
    expected = _expected(tmp_path, src, style, replicas.servers[0].target)
    before = [b + n for b, n in zip(before, replicas.served_since(before, 30))]  # the 30 made for `expected`
    out = tmp_path / "out"
    code: list[int] = []
    run = threading.Thread(target=lambda: code.append(main([
        str(src), "-s", str(style), "-o", str(out), "--server", replicas.target, "-j", "3", "--retries", "3"])))
    run.start()
    while not out.exists() or len(list(out.iterdir())) < 6:  # midway
        assert run.is_alive(), capsys.readouterr()
        time.sleep(0.02)
    victim = replicas.servers[1]
    victim.proc.send_signal(signal.SIGTERM if how == "SIGTERM" else signal.SIGKILL)
    run.join(120)
    assert code == [0], capsys.readouterr()
    _check_outputs(out, expected)
    victim.proc.wait(30)
    served = replicas.served_since(before, 30)
    assert sum(served) >= 30  # every output was made by some replica (a killed one may have done some twice)
    if how == "SIGTERM":
        assert sum(served) == 30, served  # drained, not killed: nothing done twice
        log = "".join(victim.stderr_lines)
        refused = len(re.findall(r"method=Stylize code=UNAVAILABLE", log))
        # NOT_SERVING reaches the clients' health watch at once; a call already on its way may still
        # arrive, be refused before any header and go to another replica (-j 3: three on their way, and on a
        # busy machine a retry of each before the news arrives).
        assert refused <= 6, log[-3000:]


def test_a_style_registered_on_one_replica_works_on_all(replicas: Replicas) -> None:
    style = make_image(40, 40, seed=52, kind="noise")  # not STYLE: the folders above registered it everywhere
    with StyleTransferClient(replicas.servers[0].target, timeout=60) as one:
        sid = one.register_style(style)
    with StyleTransferClient(replicas.target, timeout=60) as client:
        # Another client: replicas 2 and 3 do not know the id and this client has no bytes for it.
        answers = []
        for _ in range(6):
            try:
                answers.append(client.stylize(make_image(64, 48, seed=1), StyleRef(sid)).served_by)
            except StyleTransferError as e:
                assert "unknown style id" in e.details
                answers.append("unknown")
        assert "unknown" in answers  # so the case below is real
        # The client that registered it: every replica answers, those without it get the bytes.
        sid2 = client.register_style(style)
        assert sid2 == sid
        served = {client.stylize(make_image(64, 48, seed=1), StyleRef(sid)).served_by for _ in range(6)}
        assert len(served) == 3, served
        # A video stream is not sent again once its frames are read: it carries the bytes of a style this client
        # registered from its start (a stream on a replica without it ended INVALID_ARGUMENT, every time).
        sid3 = client.register_style(make_image(40, 40, seed=53, kind="noise"))  # on one replica
        for _ in range(3):  # one stream to each
            frames = list(client.stylize_video([make_image(64, 48, seed=1)] * 2, StyleRef(sid3), temporal="none"))
            assert len(frames) == 2
