"""``adain-stylize --local``: a server of the command's own, for one person on one machine.

The CLI is a client of ``adain-server``; someone with the whole package installed who wants a photo stylized
had to start a server in another terminal first. ``--local`` starts one for the command and stops it at the
end: the same server, so every option, limit and error is what a running server gives. It listens on
127.0.0.1 on a free port and takes only calls that carry a random token of this command's (a file in a
private temporary folder), so another user of the machine cannot call it meanwhile. Its settings are its
``ADAIN_*`` variables (``ADAIN_DECODER``, ``ADAIN_PRECISION``...), as for any server. It runs in a session of
its own (the terminal's Ctrl-C reaches the command, which stops it) and, on Linux, is sent SIGTERM when the
command dies, however it dies.

No torch here: the server is another process (``python -m adain.server``).
"""

from __future__ import annotations

import importlib.util
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from adain.files import locked_folder, sweep_folders

FOLDER_PREFIX = "adain-local-"  # the command's folder in the temporary folder: its token, the server's tokens, log
STOP_WAIT_S = 10.0  # an idle server stops in ~0.5 s; one whose call was cut off drains first
START_WAIT_S = 600.0  # a first start on a machine converts the networks (OpenVINO: ~10 s; int8 quantizes: more)


class LocalServerError(Exception):
    """The local server could not be started: the message says why (and what its log said)."""


def _die_with_parent() -> None:  # pragma: no cover - runs in the child, between fork and exec
    """Linux: SIGTERM to this process when the one that started it dies (SIGKILL too), so none is left behind."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - not Linux, or no libc: only a killed command would leave it running
        pass


class LocalServer:
    """``with LocalServer() as (address, token_file):`` an adain-server on 127.0.0.1 taking calls that carry the
    token in ``token_file`` (then :meth:`wait_serving`); stopped, and its folder removed, at the end of the block."""

    def __init__(self, name: str = "adain-stylize", front: bool = False) -> None:
        self.name, self.front = name, front  # the caller's name in its log; front: it speaks for many (adain-web)
        self._folder: Path | None = None
        self._lock: int | None = None  # the descriptor holding the folder's flock
        self._proc: subprocess.Popen | None = None

    def __enter__(self) -> tuple[str, str]:
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _start(self) -> tuple[str, str]:
        if importlib.util.find_spec("torch") is None:
            raise LocalServerError("--local runs a server in this command, which needs torch: install the server "
                                   "extra (pip install 'adain[server]'), or give --server HOST:PORT")
        tls = [v for v in ("ADAIN_TLS_CERT", "ADAIN_TLS_KEY", "ADAIN_TLS_CLIENT_CA") if os.environ.get(v)]
        if tls:  # it would serve TLS that the command's plaintext client never passes: a wait of minutes
            raise LocalServerError(f"--local serves plaintext on 127.0.0.1: unset {', '.join(tls)} for it")
        # 0700: this user's alone; locked while this command lives, so that the next --local removes the folders of
        # commands that were killed (SIGKILL left its token, tokens and log, one folder a kill)
        sweep_folders(FOLDER_PREFIX)
        self._folder, self._lock = locked_folder(FOLDER_PREFIX)
        token = secrets.token_urlsafe(32)
        token_file, tokens = self._folder / "token", self._folder / "tokens"  # the client's, the server's
        for path, line in ((token_file, token), (tokens, f"{self.name} {token}{' front' if self.front else ''}")):
            path.touch(0o600)
            path.write_text(line + "\n")
        log = open(self._folder / "server.log", "wb")  # noqa: SIM115 - the child writes it
        try:
            # -P: not the working folder first on the server's path (a signal.py there broke its start; 3.11+)
            safe = ["-P"] if sys.version_info >= (3, 11) else []
            self._proc = subprocess.Popen(
                [sys.executable, *safe, "-m", "adain.server", "--host", "127.0.0.1", "--port", "0",
                 "--metrics-port", "0", "--health-port", "0", "--auth-tokens-file", str(tokens),
                 "--log-level", "WARNING"],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,  # noqa: PLW1509
            )
        finally:
            log.close()
        line = self._first_line()
        m = re.search(r"listening on \S+:(\d+)", line)
        if not m:
            raise LocalServerError(f"the local server did not start{self._said()}")
        return f"127.0.0.1:{m.group(1)}", str(token_file)

    def _first_line(self) -> str:
        """The server's 'listening on' line (it prints it once its port is bound), or '' if it exits first."""
        assert self._proc is not None and self._proc.stdout is not None
        got: list[str] = []
        stdout = self._proc.stdout
        reader = threading.Thread(target=lambda: got.append(stdout.readline().decode()), daemon=True)
        reader.start()
        reader.join(START_WAIT_S)
        return got[0] if got else ""

    def wait_serving(self, health: Callable[[], str], progress: Callable[[], None] | None = None) -> None:
        """Until ``health()`` says SERVING (the model loaded and warmed up), the server still running."""
        end, said = time.monotonic() + START_WAIT_S, False
        while True:
            if self._proc is None or self._proc.poll() is not None:
                raise LocalServerError(f"the local server exited while starting{self._said()}")
            try:
                if health() == "SERVING":
                    return
            except Exception:  # noqa: BLE001 - not answering yet
                pass
            if time.monotonic() > end:
                raise LocalServerError(f"the local server was not ready within {START_WAIT_S:.0f} s{self._said()}")
            if not said and progress is not None:
                progress()
                said = True
            time.sleep(0.2)

    def _said(self) -> str:
        """The tail of the server's log, for an error."""
        path = self._folder / "server.log" if self._folder else None
        try:
            lines = path.read_bytes()[-4000:].decode("utf-8", "replace").strip().splitlines() if path else []
        except OSError:
            lines = []
        errors = [i for i, line in enumerate(lines) if "error" in line.lower()]
        tail = lines[errors[-1]:] if errors else lines[-5:]  # a usage error's own line, not its usage block
        return ("; it said:\n" + "\n".join(tail)) if tail else ""

    def stop(self) -> None:
        """SIGTERM (it drains and exits), SIGKILL after STOP_WAIT_S; then its folder is removed."""
        proc, self._proc = self._proc, None
        folder, self._folder = self._folder, None
        try:
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(STOP_WAIT_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                except BaseException:  # a second Ctrl-C as it stops: no more waiting
                    proc.kill()
                    raise
        finally:  # its token and log go, however the wait ended
            if proc is not None and proc.stdout is not None:
                proc.stdout.close()
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
            lock, self._lock = self._lock, None
            if lock is not None:
                os.close(lock)
