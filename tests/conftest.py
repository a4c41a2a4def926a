"""Shared fixtures: a test decoder, and one real server process for the whole session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from adain.client import StyleTransferClient
from helpers import ServerProcess, free_port, write_test_decoder


@pytest.fixture(scope="session")
def decoder_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_test_decoder(tmp_path_factory.mktemp("decoder") / "decoder.pt")


@pytest.fixture(scope="session")
def server(decoder_path: Path) -> Iterator[ServerProcess]:
    """The main server: default limits, batching with a 50 ms window, metrics on a free port."""
    metrics_port = free_port()
    srv = ServerProcess(
        decoder_path, "--max-batch-size", "8", "--max-batch-delay-ms", "50", "--metrics-port", str(metrics_port),
        "--style-registry-size", "16",
    )
    srv.metrics_port = metrics_port
    try:
        srv.wait_serving()
        yield srv
    finally:
        code = srv.terminate()
    log = "".join(srv.stderr_lines)
    assert code == 0, log
    assert "Traceback" not in log and "exception" not in log.lower(), log


@pytest.fixture(scope="session")
def client(server: ServerProcess) -> Iterator[StyleTransferClient]:
    with StyleTransferClient(server.target, timeout=60, retries=2) as c:
        yield c
