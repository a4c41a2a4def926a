"""benchmarks/quality.py end to end on synthetic folders: the main table and the alpha sweep (issue 20's
yardstick), with two decoders beside the shipped one and the shipped one interpolated towards another, and the
realisable floor (ours moved towards the AdaIN target)."""

from __future__ import annotations

import runpy
import shutil
from pathlib import Path

from helpers import needs_torch
from synth import synth_image

REPO = Path(__file__).resolve().parents[1]


@needs_torch
def test_quality_sweep_on_synthetic_images(tmp_path: Path, decoder_path: Path, capsys) -> None:
    for sub, n, seed in (("content", 2, 0), ("style", 2, 50)):
        (tmp_path / sub).mkdir()
        for i in range(n):
            synth_image(72 + 8 * i, 56, seed=seed + i).save(tmp_path / sub / f"{sub}{i}.png")
    other = shutil.copy(decoder_path, tmp_path / "other.pt")
    argv = ["--content", str(tmp_path / "content"), "--style", str(tmp_path / "style"), "--decoder",
            str(decoder_path), str(other), "--size", "64", "--eval-size", "48", "--pairs", "2", "--gatys-pairs", "1",
            "--gatys-size", "48", "--gatys-steps", "2", "--backend", "torch", "--threads", "1", "--sweep",
            "--interpolate", str(other), "--floor-pairs", "1", "--floor-steps", "3"]
    # the script's main() in this process (its own process spent ~5 s importing torch for a second of work)
    quality = runpy.run_path(str(REPO / "benchmarks" / "quality.py"))
    assert quality["main"](argv) == 0
    out = capsys.readouterr().out
    assert "backend torch" in out and "Gatys et al." in out
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| shipped |")
            or line.startswith("| candidate (")]
    interpolated = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| interpolated (")]
    assert len(rows) == 3 * 5 and len(interpolated) == 5, out  # shipped, two candidates, interpolated; 5 alphas
    assert interpolated[-1][2:] == rows[4][2:]  # at alpha 1 the interpolated weights are the shipped decoder's
    cells = {(r[0].strip(), float(r[1])): [c.strip() for c in r[2:]] for r in rows[:10]}
    psnr, ssim = float(cells[("shipped", 0.0)][2]), float(cells[("shipped", 0.0)][3])
    assert 0 < psnr < 100 and -1 <= ssim <= 1
    coarse, detail = (float(x) for x in cells[("shipped", 0.0)][4].split("/"))
    assert coarse >= psnr > 0 and detail > 0  # pooling never adds error (Jensen)
    assert cells[("shipped", 1.0)][2] == cells[("shipped", 1.0)][4] == "–"  # the fidelity at alpha 0 only
    assert cells[("shipped", 1.0)][5].endswith("(1.00)")  # how far along the slider: a share of alpha 1's
    assert float(cells[("shipped", 0.0)][5].split()[0]) > 0
    assert "coarse images alone score" in out
    assert out.count("as alpha goes 0 -> 1") == 4
    floor = {r[0].strip(): [c.strip() for c in r[1:]] for r in (line.split("|")[1:-1] for line in out.splitlines()
             if line.startswith(("| ours |", "| ours moved", "| AdaIN's target")))}
    assert len(floor) == 3, out
    ours, moved = floor["ours"], next(v for k, v in floor.items() if k.startswith("ours moved"))
    assert 0 <= float(moved[0]) < float(ours[0])  # the best image seen is never further than the start
