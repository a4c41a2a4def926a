"""The GPU round (scripts/gpu_round.sh) in its dry-run form on this CPU: the same steps in seconds, the
same files in OUT_DIR (at most 8, each at most 16 MiB: what the device tool brings back)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from adain.decoder import load_decoder
from helpers import REPO
from synth import synth_image

FILES = {"A-decoder.pt", "A-log.jsonl", "train.txt", "loss.png", "bench.txt", "bench.png", "paths.png"}


@pytest.mark.timeout(900)  # the round's own limit, 600 s, passes the suite's 300 s
def test_gpu_round_dry_run_writes_weights_and_figures(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for kind, seed in (("content", 0), ("style", 100)):
        (data / kind).mkdir(parents=True)
        for i in range(3):
            synth_image(96, 80, seed=seed + i).save(data / kind / f"{i}.jpg")
    out = tmp_path / "out"
    env = dict(os.environ, DRY_RUN="1", DATA=str(data), GPU=str(tmp_path / "gpu"), RUNDIR=str(tmp_path / "runs"),
               PYTHON=sys.executable)
    run = subprocess.run(["bash", "scripts/gpu_round.sh", str(out)], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    files = {p.name: p.stat().st_size for p in out.iterdir()}
    assert set(files) == FILES, files
    assert all(0 < size <= 16 * 2**20 for size in files.values()), files
    runs = tmp_path / "runs"
    for name, style_weight in (("A", 2),):
        # the convolutions under the detail path, trained at alpha 1 (v1), then the detail path grown on them
        conv, file = load_decoder(runs / f"dry-{name}-v1.pt")
        assert conv.arch_version == 1 and file.meta["steps"] == 2 and file.meta["content_scale"] == 2
        assert (file.meta["alpha_one"], file.meta["style_weight"], file.meta["teacher"]) == (1, style_weight, None)
        assert (file.meta["cooldown_minutes"], file.meta["ema"], file.meta["lr_decay"]) == (1, 0.9, 0), file.meta
        assert (file.meta["crop"], file.meta["style_crop"]) == (32, 24), file.meta
        assert file.meta["init"]["file"] == "adain/assets/decoder.pt"
        dec, file = load_decoder(out / f"{name}-decoder.pt")
        assert dec.arch_version == 3 and file.meta["detail"] and file.meta["alpha_zero"] == 0.8, file.meta
        assert file.meta["init"]["file"] == str(runs / f"dry-{name}-d1.pt")
        under = dec.without_detail().without_alpha_input().state_dict()  # alpha 1 is the v1's, unchanged
        assert under.keys() == conv.state_dict().keys()
        assert all(torch.equal(under[k], v) for k, v in conv.state_dict().items())
    bench = (out / "bench.txt").read_text()
    assert '"mode": "eager"' in bench and "best:" in bench, bench
    assert '"mode": "Stylizer.render, eager"' in bench, bench  # what the server's batcher runs, per-job steps and all
    assert "benchmarks: exit 0 " in bench and "clients in 2 processes" in bench, bench
    assert "jpeg sent, jpeg replies" in bench, bench
    assert "paths: 11 ok, 0 not" in bench and "tiled: ok" in bench, bench  # every path, here CPU against CPU
    assert "prepare, while batches of 32 render (1 torch threads): p50" in bench, bench
    assert "ops a job beyond the network" in bench and "beside a Python thread" in bench, bench  # render_ops.py
    assert "2 servers answered" in bench and "a call under that load" in bench, bench  # two servers, balanced
    assert "the first server's GIL a request (py-spy), ms" in bench, bench  # figures, or why py-spy could not
    summary = (out / "train.txt").read_text()
    assert "A: training (and its export) exit 0" in summary and "A: detail path exit 0" in summary, summary
    assert "A: returned decoder A-decoder.pt architecture 3 steps 2 of 2 (detail run 2)" in summary, summary


def test_the_gil_sampler_reads_py_spys_lines_and_says_when_it_has_none() -> None:
    """benchmarks/gil_sampler.py: py-spy's raw lines (a thread's stack, a count) summed by step into ms a request;
    a run too short for one sample says so (it divided by zero, which ended grpc_latency.py's run there)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from gil_sampler import GilSampler

    gil = GilSampler(pid=0, rate=1000)
    gil._parse("Thread.run (threading.py:982);BaseEventLoop.run_forever (asyncio/base_events.py:607);Handle._run "
               "(asyncio/events.py:80) 30\nThread.run (threading.py:982);Stylizer.prepare (adain/stylizer.py:170);"
               "to_tensor (adain/image.py:450) 10\nnot a line of py-spy's\n")
    assert gil.summary(10) == ("4.00 = event loop (gRPC, asyncio) 3.00 + prepare 1.00; one process: at most 250 "
                               "requests/s")
    assert GilSampler(pid=0).summary(10).startswith("no sample of the GIL held in 10 requests")
