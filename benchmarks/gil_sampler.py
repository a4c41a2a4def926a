"""py-spy on a server process: how long it holds Python's GIL per request, by step (benchmarks/gil.py, and
benchmarks/grpc_latency.py --gil). Only the thread that holds the GIL is sampled (``py-spy record --gil``), so
samples / rate / requests is the GIL's milliseconds a request; ``pip install py-spy``, and ptrace permission
(root, or ``CAP_SYS_PTRACE`` in a container)."""

from __future__ import annotations

import collections
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

# a sample's step: the first rule whose frame name is in its stack (py-spy names frames "function (file:line)")
STEPS = (
    ("render", "Stylizer.render "),
    ("batcher's own", "Batcher._run "),
    ("prepare", "Stylizer.prepare "),
    ("encode reply", "encode_image "),
    ("event loop (gRPC, asyncio)", "BaseEventLoop.run_forever "),
)


def py_spy() -> str | None:
    """py-spy's program: on the PATH, or beside this Python (a virtual environment's bin)."""
    beside = Path(sys.executable).with_name("py-spy")
    return shutil.which("py-spy") or (str(beside) if beside.exists() else None)


class GilSampler:
    """``with GilSampler(pid) as gil:`` samples the process's GIL holder while the block runs; then
    ``gil.summary(requests)`` says how many ms of GIL a request took, by step, or why nothing was sampled."""

    def __init__(self, pid: int, rate: int = 1000) -> None:
        self.pid, self.rate = pid, rate
        self.steps: collections.Counter = collections.Counter()
        self.frames: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.error: str | None = None
        self._tmp = tempfile.TemporaryDirectory()
        self._raw = Path(self._tmp.name) / "gil.txt"
        self._proc: subprocess.Popen | None = None

    def __enter__(self) -> GilSampler:
        spy = py_spy()
        if spy is None:
            self.error = "py-spy is not installed (pip install py-spy)"
            return self
        try:  # (never an error of the benchmark around it: its figures come first)
            self._proc = subprocess.Popen(
                [spy, "record", "--gil", "--nonblocking", "--rate", str(self.rate), "--format", "raw", "-o",
                 str(self._raw), "--pid", str(self.pid)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        except OSError as e:
            self.error = f"py-spy could not run: {e}"
            return self
        assert self._proc.stdout is not None
        for line in self._proc.stdout:  # "Sampling process N times a second": attached (else it exits, saying why)
            if "Sampling process" in line:
                return self
        self.error = f"py-spy did not attach (ptrace permission?): exit {self._proc.wait()}"
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGINT)  # py-spy writes what it sampled, then exits
            try:
                out, _ = self._proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                out = ""
            if not self._raw.exists():
                self.error = f"py-spy wrote nothing: {out.strip()[-300:]}"
        if self.error is None and self._raw.exists():
            self._parse(self._raw.read_text())
        self._tmp.cleanup()

    def _parse(self, raw: str) -> None:
        """py-spy's raw format: a stack (frames from the thread's root, ';'-separated), a space, a count."""
        for line in raw.splitlines():
            stack, _, n = line.rpartition(" ")
            if not stack or not n.isdigit():
                continue
            step = next((name for name, frame in STEPS if frame in stack), "the rest")
            self.steps[step] += int(n)
            inner = [f.split(" (")[0] for f in stack.split(";")[-2:]]
            self.frames[step][" <- ".join(reversed(inner))] += int(n)

    def ms(self, requests: int) -> dict[str, float]:
        """GIL ms a request by step, largest first."""
        per = {step: n / self.rate / requests * 1000 for step, n in self.steps.items()}
        return dict(sorted(per.items(), key=lambda kv: -kv[1]))

    def summary(self, requests: int) -> str:
        """One line: the total, its steps, and the ceiling it sets."""
        if self.error or not requests:
            return self.error or "no request ended while sampling"
        ms = self.ms(requests)
        total = sum(ms.values())
        if total <= 0:  # a run too short for one sample of the GIL held (a dry run's few calls)
            return f"no sample of the GIL held in {requests} requests (py-spy at {self.rate}/s): too short a run"
        steps = " + ".join(f"{step} {v:.2f}" for step, v in ms.items())
        return f"{total:.2f} = {steps}; one process: at most {1000 / total:.0f} requests/s"
