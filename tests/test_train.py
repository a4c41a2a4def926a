"""The training script end to end on tiny synthetic folders: train, resume, export, load; and torchrun."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from adain import Stylizer
from adain.decoder import load_decoder
from adain.train.train import Trainer, export
from synth import synth_image

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _argv(data: Path, out: Path, steps: int, sample_every: int, extra: tuple[str, ...]) -> list[str]:
    return [
        "--content", str(data / "content"),
        "--style", str(data / "style"),
        "--out", str(out),
        "--steps", str(steps),
        "--batch-size", "2",
        "--crop", "32",
        "--workers", "1",
        "--log-every", "1",
        "--save-every", "1",
        "--sample-every", str(sample_every),
        *extra,
    ]  # fmt: skip


def train(data: Path, out: Path, steps: int, *extra: str, launcher: list[str] | None = None,
          sample_every: int = 1000) -> str:
    """One run of the real script in its own process; samples (and their loss plot, ~1.3 s each) only where
    a test looks at them."""
    cmd = (launcher or [sys.executable, "-m"]) + ["adain.train", *_argv(data, out, steps, sample_every, extra)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stderr


def train_here(data: Path, out: Path, steps: int, *extra: str) -> None:
    """The same run in this process, for tests of what a run computes (not of its process: signals, data
    workers, torchrun): a process of its own costs ~5 s of imports (torch, and torch._dynamo, which
    torch.optim imports at its first optimizer) for steps of milliseconds. Data loading stays in this
    process (--workers 0): a worker forked from a test process with live gRPC channels can abort."""
    from adain.train.__main__ import main

    main(_argv(data, out, steps, 1000, (*extra, "--workers", "0")))


def logged(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_train_resume_export_load(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    shutil.copytree(data, tmp_path / "data")
    data = tmp_path / "data"
    (data / "content" / "junk\n\x1b[31m.png").write_bytes(b"junk")  # a name with a newline and an escape sequence
    err = train(data, out, 2, sample_every=2)
    assert "skipping unreadable image" in err and "corrupt.jpg" in err
    # escaped, on one line (it was split in two, and the terminal turned red)
    said = "junk\\n\\x1b[31m.png: not a decodable image (supported: JPEG, PNG, WEBP, BMP, TIFF, GIF, AVIF, HEIF)"
    assert "\x1b[31m" not in err and any("WARNING skipping unreadable image" in line and line.endswith(said)
                                        for line in err.splitlines())
    # and each such line from a line's start, the bar cleared first: a data worker's was written on the bar's line
    starts = re.findall(r"(.)\d{4}-\d\d-\d\d [\d:,]+ WARNING skipping", err, re.S)
    assert starts and set(starts) <= {"\r", "\n"}, starts
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ckpt["step"] == 2 and {"decoder", "optimizer", "rng"} <= set(ckpt)
    rows = logged(out)
    assert [r["step"] for r in rows] == [1, 2]
    assert all(math.isfinite(r[k]) for r in rows for k in ("loss", "content", "style"))
    assert all(r["style_weight"] == 10.0 for r in rows)  # the plot marks where a resumed run changed it
    assert (out / "samples" / "step_0000002.png").is_file() and (out / "loss.png").is_file()

    before = {k: v.clone() for k, v in ckpt["decoder"].items()}
    # as if killed between a log line and its checkpoint: the resumed run logs that step again, once
    with (out / "log.jsonl").open("a") as f:
        f.write(json.dumps({"step": 3, "time": 0.0, "lr": 0.0, "loss": 1.0, "content": 1.0, "style": 1.0}) + "\n")
    exported = tmp_path / "decoder.pt"  # written by the run at its end (--export), as `adain-train export` does
    train_here(data, out, 3, "--resume", "--export", str(exported), "--export-data", "synthetic")
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ckpt["step"] == 3
    rows = logged(out)
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[2]["time"] > 0  # the real step 3, not the stale line
    assert any(not torch.equal(before[k], v) for k, v in ckpt["decoder"].items())

    # a run whose weights go non-finite stops with an error, keeps its last good checkpoint and exports nothing
    with pytest.raises(FloatingPointError, match="non-finite loss"):
        train_here(data, out, 8, "--resume", "--lr", "1e30", "--export", str(tmp_path / "x.pt"))
    kept = torch.load(out / "checkpoint.pt", weights_only=False)
    assert 3 <= kept["step"] < 8 and all(v.isfinite().all() for v in kept["decoder"].values())
    assert not (tmp_path / "x.pt").exists()

    st = Stylizer(str(exported), device="cpu", backend="torch")  # a runtime would convert each new decoder
    meta = st.info["decoder_meta"]
    assert meta["steps"] == 3 and meta["data"] == "synthetic"
    assert meta["crop"] == 32 and meta["batch_size"] == 2
    assert st.stylize(synth_image(33, 21), [synth_image(20, 20, seed=5)]).size == (33, 21)


def test_what_cannot_train_or_export_is_one_line(data: Path, tmp_path: Path, capsys) -> None:
    """An outside tester's: missing or empty folders, a folder of unreadable images and an unreadable checkpoint
    ended in tracebacks (and an empty --out); ``export`` onto the checkpoint itself overwrote it (exit 0, and the
    run could not be resumed); --save-every 0 failed after the first step."""
    from adain.train.train import parse_args

    (tmp_path / "empty").mkdir()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"not a png")
    for folder, said in ((tmp_path / "nope", "no such folder"), (data / "content" / "img0.png", "not a folder"),
                         (tmp_path / "empty", "no jpg, png or webp images in it or its subfolders")):
        with pytest.raises(SystemExit):
            parse_args(["--content", str(folder), "--style", str(data / "style"), "--out", str(tmp_path / "r")])
        assert capsys.readouterr().err == f"adain-train: error: --content {folder}: {said} (see --help)\n"
    assert not (tmp_path / "r").exists()
    with pytest.raises(SystemExit) as e:
        train_here(data, tmp_path / "r", 1, "--content", str(tmp_path / "bad"))
    assert str(e.value) == f"adain-train: error: no readable image in {tmp_path / 'bad'}: its 1 images were all skipped"

    from adain.train.__main__ import main

    run = tmp_path / "run"
    train_here(data, run, 1)
    checkpoint = run / "checkpoint.pt"
    kept = checkpoint.read_bytes()
    (tmp_path / "half.pt").write_bytes(kept[: len(kept) // 2])
    main(["export", str(checkpoint), str(tmp_path / "decoder.pt")])
    capsys.readouterr()
    for source, output, said in ((checkpoint, checkpoint, f"{checkpoint} is the checkpoint itself"),
                                 (checkpoint, tmp_path, f"{tmp_path} is a folder"),
                                 (tmp_path / "nope.pt", tmp_path / "o.pt", f"{tmp_path / 'nope.pt'}: no such file"),
                                 (tmp_path / "half.pt", tmp_path / "o.pt", f"{tmp_path / 'half.pt'}: not a readable "
                                  "checkpoint"),
                                 (tmp_path / "decoder.pt", tmp_path / "o.pt", f"{tmp_path / 'decoder.pt'}: a decoder "
                                  "file (export takes the run's checkpoint.pt)")):
        with pytest.raises(SystemExit) as e:
            main(["export", str(source), str(output)])
        err = capsys.readouterr().err
        assert e.value.code == 1 and err.startswith(f"adain-train export: error: {said}") and err.count("\n") == 1, err
    assert checkpoint.read_bytes() == kept and not (tmp_path / "o.pt").exists()
    # a filesystem tour's: an --out or an export that cannot be written was a traceback (a full disk's torch.save
    # said "unexpected pos 18757888 vs 18757776", and left a 20-MB checkpoint.tmp)
    a_file = tmp_path / "decoder.pt"
    with pytest.raises(SystemExit) as e:
        train_here(data, a_file / "run", 1)
    assert str(e.value) == f"adain-train: error: --out {a_file / 'run'}: cannot make the run's folder: Not a directory"
    with pytest.raises(SystemExit) as e:
        main(["export", str(checkpoint), str(a_file / "o.pt")])
    err = capsys.readouterr().err
    assert e.value.code == 1 and err == f"adain-train export: error: {a_file}: a file, not a folder\n", err
    from adain.files import saved_whole

    def cut_short(tmp: Path) -> None:  # torch.save's way of meeting a full disk
        tmp.write_bytes(b"half")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 18757888 vs 18757776")

    with pytest.raises(OSError, match=r"cannot write it: \[enforce fail") as raised:
        saved_whole(cut_short, run / "checkpoint.pt")
    assert raised.value.filename == str(run / "checkpoint.pt") and sorted(p.name for p in run.iterdir()) == sorted(
        ["checkpoint.pt", "log.jsonl", *[p.name for p in run.iterdir() if p.name.startswith("sample")]])
    assert checkpoint.read_bytes() == kept


ALPHA_FLAGS = ("--alpha-zero", "0.5", "--alpha-one", "0.25", "--recon-weight", "10", "--recon-feature-weight", "1")


def resumes_exactly(data: Path, tmp_path: Path, flags: tuple[str, ...]) -> tuple[Path, dict]:
    """Four steps in one go and two + two resumed, into tmp_path/straight and tmp_path/split: the decoder
    weights must agree. Returns the straight run's folder and its weights."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    train_here(data, straight, 4, *flags)
    train_here(data, split, 2, *flags)
    train_here(data, split, 4, *flags, "--resume")
    a = torch.load(straight / "checkpoint.pt", weights_only=False)["decoder"]
    b = torch.load(split / "checkpoint.pt", weights_only=False)["decoder"]
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    return straight, a


def test_resume_continues_exactly(data: Path, tmp_path: Path, decoder_path: Path) -> None:
    """Two steps, stop, two more == four steps in one go (same data, alphas, RNG, optimizer state and weight
    average), with every knob on at once (one set of runs: each is a process of seconds): alpha sampling, the
    recon and teacher terms, from a decoder file's weights, a weight average. The export records the knobs and
    writes the average (the last step's weights with --raw)."""
    teacher = ("--teacher", str(decoder_path), "--teacher-weight", "100")
    flags = ("--workers", "0", "--init", str(decoder_path), "--content-scale", "2", "--recon-scale", "1", *ALPHA_FLAGS,
             *teacher, "--lr", "1e-3", "--lr-decay", "0", "--ema", "0.5")
    straight, weights = resumes_exactly(data, tmp_path, flags)
    rows = logged(straight)
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in logged(tmp_path / "split")], rel=1e-5)
    assert all(r["alpha_zero"] == 0.5 and r["recon_weight"] == 10 and "recon" in r for r in rows)
    assert any(r["recon"] > 0 for r in rows)  # some samples were drawn at alpha 0
    assert all(r["teacher_weight"] == 100 and r["teacher"] >= 0 for r in rows)
    assert any(r["teacher"] > 0 for r in rows)  # samples at alpha 1 once the decoder had moved off the teacher
    ema = torch.load(straight / "checkpoint.pt", weights_only=False)["ema"]
    split = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=False)["ema"]
    assert all(torch.allclose(ema[k], split[k], atol=1e-6) for k in ema)
    assert any(not torch.allclose(ema[k], weights[k]) for k in ema)  # an average, not the last weights
    for extra, want in (((), ema), (("--raw",), weights)):
        exported = tmp_path / f"decoder{len(extra)}.pt"
        export([str(straight / "checkpoint.pt"), str(exported), "--fp32", *extra])  # `adain-train export`, in-process
        decoder, file = load_decoder(exported)
        assert all(torch.equal(v, want[k]) for k, v in decoder.state_dict().items())
        meta = file.meta
        assert meta["cooldown"] == 0 and meta["ema"] == (None if extra else 0.5)
        assert (meta["alpha_zero"], meta["alpha_one"], meta["recon_weight"], meta["recon_feature_weight"]) == (
            0.5, 0.25, 10, 1)
        assert meta["content_scale"] == 2 and meta["recon_scale"] == 1 and meta["teacher_weight"] == 100
        assert meta["teacher"]["file"] == str(decoder_path) and meta["teacher"]["version"].startswith("sha256:")
        assert meta["init"]["file"] == str(decoder_path) and meta["init"]["version"].startswith("sha256:")


def test_cooldown_under_bf16_autocast(data: Path, tmp_path: Path) -> None:
    """The lr falls linearly to 0 over the --cooldown steps before --steps (not resumed: a cooldown moves with
    each leg's --steps); and training runs under bf16 autocast on a CPU (emulated where it has no bf16 units)."""
    out = tmp_path / "cool"
    train_here(data, out, 4, "--lr", "1e-3", "--lr-decay", "0", "--cooldown", "3", "--precision", "bf16")
    rows = logged(out)
    assert [r["lr"] for r in rows] == pytest.approx([1e-3, 1e-3, 2e-3 / 3, 1e-3 / 3])
    assert all(math.isfinite(r[k]) for r in rows for k in ("loss", "content", "style"))
    assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] == 4


def test_cooldown_by_the_clock(data: Path, tmp_path: Path) -> None:
    """--cooldown-minutes takes the lr down over the last minutes of --max-minutes, whatever the step rate (a
    compiled run on a lent GPU), and the run stops at its deadline, not its --steps."""
    out = tmp_path / "clock"
    train_here(data, out, 100000, "--lr", "1e-3", "--lr-decay", "0", "--max-minutes", "0.08",
               "--cooldown-minutes", "0.08", "--save-every", "100000")  # its one checkpoint: at the deadline
    lrs = [r["lr"] for r in logged(out)]
    assert len(lrs) >= 2 and lrs == sorted(lrs, reverse=True) and lrs[0] < 1e-3 and lrs[-1] < lrs[0], lrs
    assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] < 100000


def test_a_compile_that_fails_trains_eager(data: Path, tmp_path: Path) -> None:
    """--compile where inductor cannot build (no working C++ compiler): logged, and the run goes on eager to its
    end, so a GPU round's one call is not lost to it. (A compile that works gave this run's losses to 4 digits
    over 3 steps on this CPU, after an 83-s first step: too slow for the suite.)"""
    out = tmp_path / "compiled"
    cmd = [sys.executable, "-m", "adain.train", *_argv(data, out, 2, 1000, ("--compile", "--workers", "0"))]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**ENV, "CXX": "/bin/false"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "WARNING torch.compile failed (" in proc.stderr and "): training eager" in proc.stderr, proc.stderr[-3000:]
    assert [r["step"] for r in logged(out)] == [1, 2] and all(math.isfinite(r["loss"]) for r in logged(out))
    assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] == 2


@pytest.mark.parametrize("flags", [("--teacher", "d.pt"), ("--teacher-weight", "1"), ("--teacher-weight", "-1"),
                                   ("--cooldown", "-1"), ("--ema", "1"), ("--style-crop", "0"),
                                   ("--cooldown-minutes", "1"), ("--export-note", "x"), ("--export", "."),
                                   ("--export", "runs/decoder/checkpoint.pt"), ("--steps", "0"), ("--save-every", "0"),
                                   ("--log-every", "0"), ("--sample-every", "0"), ("--batch-size", "0"),
                                   ("--workers", "-1")])
def test_flags_refused(flags: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    from adain.train.train import parse_args

    with pytest.raises(SystemExit) as e:
        parse_args(["--content", ".", "--style", ".", *flags])
    err = capsys.readouterr().err
    assert e.value.code == 2 and flags[0] in err
    assert len(err.splitlines()) == 1 and err.startswith("adain-train: error: "), err  # no usage block above it


def test_alpha_draws() -> None:
    """The shares: about alpha_zero at 0, alpha_one at 1, the rest strictly between."""
    from adain.train.train import Trainer, parse_args

    t = Trainer.__new__(Trainer)  # only the sampler: no data, no model
    t.args, t.world, t.rank, t.step = parse_args(["--content", ".", "--style", ".", *ALPHA_FLAGS]), 1, 0, 7
    a = t.alphas(4000)
    assert abs((a == 0).float().mean() - 0.5) < 0.03 and abs((a == 1).float().mean() - 0.25) < 0.03
    mid = a[(a > 0) & (a < 1)]
    assert abs(len(mid) / 4000 - 0.25) < 0.03 and 0.4 < mid.mean() < 0.6
    assert torch.equal(a, t.alphas(4000))  # the same step draws the same alphas


def test_alpha_zero_samples_at_the_recon_scale(data: Path, tmp_path: Path) -> None:
    """--recon-scale: the samples at alpha 0 are the same draws at that scale, the others at --content-scale."""
    from adain.train.data import ImageFolder
    from adain.train.train import Trainer, parse_args

    flags = ["--content", str(data / "content"), "--style", str(data / "style"), "--out", str(tmp_path), "--crop", "32"]
    flags += ["--batch-size", "8", "--workers", "0", "--content-scale", "2", "--recon-scale", "1", *ALPHA_FLAGS]
    t = Trainer(parse_args(flags))
    alpha = t.alphas(8)
    t.train_step()
    content = t._last_batch[0]
    sharp = ImageFolder(data / "content", crop=32, rescale=(0.8, 1.25))
    scaled = ImageFolder(data / "content", crop=32, rescale=(1.6, 2.5))
    assert 0 < (alpha == 0).sum() < 8
    for i, a in enumerate(alpha.tolist()):
        assert torch.equal(content[i].contiguous(), (sharp if a == 0 else scaled)[i])
    assert parse_args(["--content", ".", "--style", ".", "--content-scale", "2"]).recon_scale == 2  # the default


def test_style_crop_apart_from_the_contents(data: Path, tmp_path: Path) -> None:
    """--style-crop: the styles are cut at their own size, shown at the contents' in the samples, and the
    exported decoder's metadata says both."""
    from adain.decoder import load_decoder
    from adain.train.train import Trainer, parse_args

    flags = ["--content", str(data / "content"), "--style", str(data / "style"), "--out", str(tmp_path / "run"),
             "--crop", "48", "--style-crop", "32", "--batch-size", "2", "--workers", "0"]
    t = Trainer(parse_args(flags))
    t.train_step()
    content, style, out = t._last_batch
    assert content.shape[2:] == out.shape[2:] == (48, 48) and style.shape[2:] == (32, 32)
    out = tmp_path / "whole"  # the real run: its samples and its export
    train_here(data, out, 1, "--crop", "48", "--style-crop", "32", "--sample-every", "1",
               "--export", str(tmp_path / "d.pt"), "--export-data", "synthetic")
    assert Image.open(out / "samples" / "step_0000001.png").size == (2 * 48, 3 * 48)
    meta = load_decoder(tmp_path / "d.pt")[1].meta
    assert (meta["crop"], meta["style_crop"]) == (48, 32)
    assert parse_args(["--content", ".", "--style", ".", "--crop", "64"]).style_crop == 64  # the default


def test_torchrun_two_processes_gloo(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m"]
    train(data, out, 2, "--device", "cpu", launcher=launcher)
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ckpt["step"] == 2
    assert all(math.isfinite(r["loss"]) for r in logged(out))


def test_sigterm_to_the_process_group_checkpoints_and_exits_0(data: Path, tmp_path: Path) -> None:
    """Like Ctrl-C in a terminal: the whole process group gets the signal; no DataLoader worker is left behind."""
    import signal
    import time

    out = tmp_path / "stop"
    cmd = [sys.executable, "-m", "adain.train", "--content", str(data / "content"), "--style", str(data / "style")]
    cmd += ["--out", str(out), "--steps", "100000", "--batch-size", "2", "--crop", "32", "--workers", "1"]
    cmd += ["--log-every", "1", "--save-every", "1000", "--sample-every", "1000"]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not ((out / "log.jsonl").exists() and (out / "log.jsonl").read_text().count("\n") >= 2):
            assert proc.poll() is None and time.monotonic() < deadline, "training did not start"
            time.sleep(0.2)
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        workers = [int(pid) for pid in children]  # the two DataLoader workers
        os.killpg(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err.decode()[-2000:]
    assert len(workers) == 2
    for pid in workers:  # the main process stopped its workers: none is left behind
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    step = torch.load(out / "checkpoint.pt", weights_only=False)["step"]
    assert step == logged(out)[-1]["step"] >= 2


def test_a_weight_average_forgets_random_starting_weights() -> None:
    """--ema D from random weights: the average started at them and kept D^t of them (14% at 0.999 after 2,000
    steps: an export of part noise). It warms up, (1 + t) / (10 + t) at first; from an --init's trained weights the
    average starts there, at D, as the cool-down runs measured."""
    linear = torch.nn.Linear(2, 2)
    for init_meta, want in (({}, 0.9), ({"file": "decoder.pt"}, 0.001)):
        with torch.no_grad():
            linear.weight.fill_(1.0)
        state = SimpleNamespace(ema={"weight": torch.zeros(2, 2)}, decoder=linear, args=SimpleNamespace(ema=0.999),
                                step=0, init_meta=init_meta)
        Trainer._update_ema(state)  # the first step: the weights moved from 0 to 1
        assert torch.allclose(state.ema["weight"], torch.full((2, 2), want)), (init_meta, state.ema["weight"])
