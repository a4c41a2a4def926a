"""Shared fixtures: a test decoder, and one real server process for the whole session."""

from __future__ import annotations

import faulthandler
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from adain.client import StyleTransferClient
from helpers import ServerProcess, browser_or_skip, write_test_decoder

# (the offline switch; converted graphs' folder and its bound, which the controller sets for its workers too)
KEPT_VARIABLES = ("ADAIN_SKIP_VENV_TEST", "ADAIN_CACHE_DIR", "ADAIN_CACHE_MAX_MB")
# pytest-timeout (pyproject, 600 s) needs the interpreter: its timer is a Python thread. A main thread stuck in C
# code that holds the GIL stops that timer too, and on 2026-12-06 a fresh clone's CI ran past its 90 minutes with
# ~37 tests left and no timeout printed. faulthandler's watchdog is a C thread: a minute after pytest-timeout's
# limit it writes every thread's Python stack to the real stderr and ends the process (xdist reports the test and
# replaces its worker). Once the session is over, a process that has not ended in WATCHDOG_EXIT_S (a thread that
# does not end) goes the same way.
WATCHDOG_S = 660
WATCHDOG_EXIT_S = 300


def pytest_configure(config: pytest.Config) -> None:
    """Converted runtime graphs (adain.backends) go to a folder of this session, not the user's cache;
    server subprocesses inherit it, so each decoder is converted once per session. Each of N workers
    (pytest-xdist) computes on its share of the cores: two workers of two threads each on two cores spun
    against each other (two refines side by side took 23 s each, 15.5 s at one thread each)."""
    # The servers, pages and commands the tests start read ADAIN_* settings: a contributor's shell that exported
    # one while trying the server (ADAIN_MAX_QUEUE=5) failed tests that check the defaults. Those the suite
    # itself reads are kept.
    for name in [n for n in os.environ if n.startswith("ADAIN_") and n not in KEPT_VARIABLES]:
        del os.environ[name]
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        threads = max(1, len(os.sched_getaffinity(0)) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)  # the subprocesses too (servers, training, benchmarks)
        import torch  # (read at import where it was not imported yet; set here where it was)

        torch.set_num_threads(threads)
    if "ADAIN_CACHE_DIR" not in os.environ:
        config._adain_cache = os.environ["ADAIN_CACHE_DIR"] = tempfile.mkdtemp(prefix="adain-test-cache-")
        os.environ["ADAIN_CACHE_MAX_MB"] = "0"  # this session's own, removed at its end: no bound to convert again for
    config._adain_watchdog = os.fdopen(os.dup(2), "w")  # (fd 2 itself is captured during a test)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    faulthandler.dump_traceback_later(WATCHDOG_S, exit=True, file=item.config._adain_watchdog)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    faulthandler.dump_traceback_later(WATCHDOG_EXIT_S, exit=True, file=session.config._adain_watchdog)


# The files that take longest (seconds of test time, `--durations=0`, 2026-12-06: web 223, tiling 114,
# web_resilience 102, server 101, gpu_round 75, client_cli 74), run first: the workers take whole files in
# collection order (--dist loadfile), and the alphabetical order left test_web.py's browser tests, the longest, to
# one worker at the end while the other had nothing left to take.
SLOW_FIRST = ("test_web.py", "test_tiling.py", "test_web_resilience.py", "test_server.py", "test_gpu_round.py",
              "test_client_cli.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file keeps its own order


def pytest_unconfigure(config: pytest.Config) -> None:
    folder = getattr(config, "_adain_cache", None)
    if folder:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def decoder_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_test_decoder(tmp_path_factory.mktemp("decoder") / "decoder.pt")


@pytest.fixture(scope="session")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny training folders (content/, style/nested/), one corrupt file and one that is not an image."""
    from synth import synth_image

    root = tmp_path_factory.mktemp("data")
    for sub, seed in (("content", 0), ("style/nested", 100)):
        folder = root / sub
        folder.mkdir(parents=True)
        for i, ext in enumerate(["png", "jpg", "webp", "png"]):
            synth_image(48 + 4 * i, 40, seed=seed + i).save(folder / f"img{i}.{ext}")
    (root / "content" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    (root / "content" / "notes.txt").write_text("ignored: not an image")
    return root


@pytest.fixture(scope="session")
def server(decoder_path: Path) -> Iterator[ServerProcess]:
    """The main server: default limits, batching with a 50 ms window, metrics on a free port."""
    srv = ServerProcess(
        decoder_path, "--max-batch-size", "8", "--max-batch-delay-ms", "50", "--style-registry-size", "16",
    )
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


@pytest.fixture()
def browser() -> Iterator:
    """Headless Chromium driven by Selenium (the page's tests; skipped with a reason where it is missing)."""
    driver = browser_or_skip()
    try:
        yield driver
    finally:
        driver.quit()
