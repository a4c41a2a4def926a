"""Shared fixtures: a test decoder, and one real server process for the whole session."""

from __future__ import annotations

import faulthandler
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from adain.client import StyleTransferClient
from helpers import ServerProcess, browser_or_skip, write_test_decoder

# (the offline switch; converted graphs' folder and its bound, which the controller sets for its workers too)
KEPT_VARIABLES = ("ADAIN_SKIP_VENV_TEST", "ADAIN_CACHE_DIR", "ADAIN_CACHE_MAX_MB")
# Stuck tests (2026-12-06: a fresh clone's CI ran past its 90 minutes with ~37 tests left). pytest-timeout
# (pyproject: 300 s, signal method) fails a test that waits too long and the run goes on. A main thread stuck in C
# code never takes that signal: WATCHDOG_S later faulthandler's watchdog, a C thread that needs no GIL, writes every
# thread's Python stack to the real stderr and ends the worker, which xdist reports as crashed and replaces. But
# xdist 3.8's file scheduling loses a crashed worker's file when the other worker has finished (checked: the new
# worker waits for work that never comes, and so does the run): so the controller, which runs no test, ends too,
# with its stacks, once no test anywhere has finished for QUIET_S. Once the session is over, a process that has not
# ended in WATCHDOG_EXIT_S (a thread that does not end) goes the same way.
WATCHDOG_S = 60  # past pytest-timeout's own limit
QUIET_S = 900  # no test of the run finished in 15 minutes (the longest takes ~70 s; a stuck one, timeout + 60)
WATCHDOG_EXIT_S = 300
_session_config: pytest.Config


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
    # A suite started in the background by a script (`cmd &`, nohup) inherits SIGINT ignored, and so does every
    # command it starts: the tests of Ctrl-C then failed (10 of them, 2026-12-07), and a command that should have
    # stopped on it held its port for the next test. The commands get the disposition a terminal gives them.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        threads = max(1, len(os.sched_getaffinity(0)) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)  # the subprocesses too (servers, training, benchmarks)
        try:
            import torch  # (read at import where it was not imported yet; set here where it was)
        except ImportError:  # (the torch-free parts' tests on another Python: helpers.SERVER_PYTHON)
            pass
        else:
            torch.set_num_threads(threads)
    if "ADAIN_CACHE_DIR" not in os.environ:
        config._adain_cache = os.environ["ADAIN_CACHE_DIR"] = tempfile.mkdtemp(prefix="adain-test-cache-")
        os.environ["ADAIN_CACHE_MAX_MB"] = "0"  # this session's own, removed at its end: no bound to convert again for
    config._adain_watchdog = os.fdopen(os.dup(2), "w")  # (fd 2 itself is captured during a test)
    global _session_config
    _session_config = config  # (pytest_runtest_logreport is given no config)


def _watchdog(config: pytest.Config, seconds: float) -> None:
    faulthandler.dump_traceback_later(seconds, exit=True, file=config._adain_watchdog)


def _controller(config: pytest.Config) -> bool:
    """The process that hands test files to xdist's workers and runs none itself."""
    return config.pluginmanager.has_plugin("dsession")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    marker = item.get_closest_marker("timeout")  # (a test's own, where longer than the suite's)
    limit = marker.args[0] if marker is not None and marker.args else item.config.getini("timeout")
    _watchdog(item.config, float(limit or 0) + WATCHDOG_S)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


@pytest.hookimpl(trylast=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    if _controller(session.config):
        _watchdog(session.config, QUIET_S)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if _controller(_session_config):
        _watchdog(_session_config, QUIET_S)  # a test finished somewhere: QUIET_S from now


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    _watchdog(session.config, WATCHDOG_EXIT_S)


# The files that take longest (seconds of test time, `--durations=0`, 2026-12-06 on the AVX2 EPYC: web 253, server
# 130, tiling 127, web_resilience 127, video 122, client_cli 85, library 75, train 74, gpu_round 72, refine 66; the
# other 26 files 3-40 each, 1,598 in all), run first: the workers take whole files in collection order (--dist
# loadfile with --no-loadscope-reorder, pyproject), so the short ones fill in at the end. (xdist's default order,
# by number of tests, had left web_resilience's 8 tests and gpu_round's one, two minutes of work, to the end.)
SLOW_FIRST = ("test_web.py", "test_server.py", "test_tiling.py", "test_web_resilience.py", "test_video.py",
              "test_client_cli.py", "test_library.py", "test_train.py", "test_gpu_round.py", "test_refine.py")


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
