"""The detail path (``adain.detail``, decoder architecture 3): alpha 1 is the decoder it grew from bit for
bit, other alphas use the content image; the file round-trips; every runtime, the folded decoder, regions
and tiles run it; training grows it on a frozen decoder and resumes exactly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_backends import CONTENT, RUNTIMES, STYLE, pixels  # the same runtime checks, a v3 decoder
from test_train import ENV, logged, resumes_exactly, train_here

from adain import Stylizer
from adain.decoder import FoldedDecoder, load_decoder, save_decoder
from adain.tiling import Tiling
from adain.train.__main__ import main as train_main
from adain.train.train import export
from synth import band_mask, encoded, synth_image

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def grown(tmp_path_factory: pytest.TempPathFactory, decoder_path: Path) -> tuple[Path, Path]:
    """(a version-2 decoder, the version 3 grown from it with branches that matter)."""
    folder = tmp_path_factory.mktemp("v3")
    v2 = load_decoder(decoder_path)[0].with_alpha_input()
    torch.manual_seed(3)
    with torch.no_grad():
        v2.convs[0].weight[:, -1:].normal_(0, 0.05)
    v3 = v2.with_detail()
    with torch.no_grad():
        for p in v3.detail.parameters():
            p.normal_(0, 0.2)
    save_decoder(v2, folder / "v2.pt", {"note": "v2 test"})
    save_decoder(v3, folder / "v3.pt", {"note": "v3 test"})
    return folder / "v2.pt", folder / "v3.pt"


def test_grown_decoder_starts_as_its_base_and_keeps_alpha_one(grown: tuple[Path, Path]) -> None:
    v2, v3 = (load_decoder(p)[0] for p in grown)
    assert (v2.arch_version, v3.arch_version) == (2, 3)
    fresh = v2.with_detail()  # branches at zero: the base decoder's outputs at every alpha
    x, img = torch.randn(2, 512, 5, 7).relu(), torch.rand(2, 3, 40, 56)
    alpha = torch.tensor([0.0, 0.6])
    with torch.no_grad():
        assert torch.equal(fresh(x, alpha, img), v2(x, alpha))
        ones = torch.ones(2)
        assert torch.equal(v3(x, ones, img), v2(x, ones))  # alpha 1: exactly the base
        assert (v3(x, alpha, img) - v2(x, alpha)).abs().max() > 0.01  # elsewhere the branches act
    with pytest.raises(ValueError, match="needs the content image"):
        v3(x, alpha)
    # Through the Stylizer: alpha 1 is the same image; alpha 0.3 differs.
    a, b = (Stylizer(p, device="cpu", precision="fp32", backend="torch") for p in grown)
    assert b.info["arch_version"] == 3
    assert np.array_equal(pixels(a.stylize(CONTENT, STYLE)), pixels(b.stylize(CONTENT, STYLE)))
    assert np.abs(pixels(a.stylize(CONTENT, STYLE, alpha=0.3)) - pixels(b.stylize(CONTENT, STYLE, alpha=0.3))).max() > 4


def test_folded_decoder_runs_the_detail_path(grown: tuple[Path, Path]) -> None:
    dec = load_decoder(grown[1])[0]
    x, alpha, img = torch.randn(2, 512, 5, 9).relu(), torch.rand(2, 1, 5, 9), torch.rand(2, 3, 40, 72)
    with torch.no_grad():
        want, got = dec(x, alpha, img), FoldedDecoder(dec)(x, alpha, img)
    assert (got - want).abs().max().item() <= 1e-5 * max(1.0, want.abs().max().item())


def test_a_numeric_alpha_reads_nothing_back_from_the_device(grown: tuple[Path, Path]) -> None:
    """A CUDA graph cannot capture a read-back or a host-to-device copy: the v3 decoder's alpha-1 check made one
    and the GPU round's graph rows all failed. On the meta device any read-back raises, as it would there."""
    dec = load_decoder(grown[1])[0]
    for module in (dec, FoldedDecoder(dec)):
        module = module.to("meta")
        x, img = torch.empty(2, 512, 5, 9, device="meta"), torch.empty(2, 3, 40, 72, device="meta")
        for alpha in (1.0, 0.4, 1):
            assert module(x, alpha, img).shape == (2, 3, 40, 72)
        with pytest.raises(RuntimeError, match="meta"):  # a tensor of alphas is looked at: the check is real
            module(x, torch.ones(2, device="meta"), img)


@pytest.mark.parametrize("runtime", ["torch", *RUNTIMES])
def test_every_runtime_runs_it_alone_in_a_batch_and_with_regions(runtime: str, grown: tuple[Path, Path],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    st = Stylizer(grown[1], device="cpu", precision="fp32", backend=runtime)
    ref = Stylizer(grown[1], device="cpu", precision="fp32", backend="torch")
    assert st.backend.name == runtime
    parts: list[str] = []  # the exported graphs that ran
    if runtime != "torch":
        run = st.backend._run
        monkeypatch.setattr(st.backend, "_run", lambda part, *rest: parts.append(part) or run(part, *rest))
    got = pixels(st.stylize(CONTENT, STYLE, alpha=0.4))
    assert got.shape == (61, 97, 3) and np.abs(got - pixels(ref.stylize(CONTENT, STYLE, alpha=0.4))).max() <= 1
    # at alpha 1 the path adds exact zeros: a graph without it runs (as eager skips it), with the same picture
    got = pixels(st.stylize(CONTENT, STYLE))
    assert np.abs(got - pixels(ref.stylize(CONTENT, STYLE))).max() <= 1
    if runtime != "torch":
        assert [p for p in parts if p != "encoder"] == ["decoder", "decoder at alpha 1"], parts
    contents = [CONTENT, CONTENT.transpose(Image.FLIP_LEFT_RIGHT), synth_image(97, 61, seed=4)]
    batch = st.stylize_batch(contents, STYLE, alpha=0.2)
    for content, img in zip(contents, batch):  # each with its own content's detail, not its neighbour's
        assert np.abs(pixels(img) - pixels(ref.stylize(content, STYLE, alpha=0.2))).max() <= 1
    masks = [encoded(band_mask(97, 61, 0, 50)), encoded(band_mask(97, 61, 50, 97))]
    styles = [STYLE, encoded(synth_image(48, 64, seed=5))]
    got, want = st.stylize(CONTENT, styles, masks=masks), ref.stylize(CONTENT, styles, masks=masks)
    assert np.abs(pixels(got) - pixels(want)).max() <= 1


def test_tiled_as_untiled(grown: tuple[Path, Path]) -> None:
    """Each tile's branches see that tile's content (with its halo): tiled output as the whole one."""
    content = synth_image(300, 200, seed=6)
    whole = Stylizer(grown[1], device="cpu", precision="fp32", backend="torch", tiling=Tiling(0))
    tiled = Stylizer(grown[1], device="cpu", precision="fp32", backend="torch", tiling=Tiling(1, tile=128, halo=64))
    d = np.abs(pixels(tiled.stylize(content, STYLE, alpha=0.3)) - pixels(whole.stylize(content, STYLE, alpha=0.3)))
    assert d.mean() <= 1.5, d.mean()


def test_training_grows_the_path_on_a_frozen_decoder(data: Path, tmp_path: Path, decoder_path: Path) -> None:
    """--detail: the convolutions stay the --init decoder's, the branches learn; resumes exactly; the export
    is architecture 3 and alpha 1 is the init decoder's image."""
    flags = ("--workers", "0", "--init", str(decoder_path), "--detail", "--alpha-zero", "0.5", "--alpha-one", "0.25",
             "--recon-weight", "10", "--lr", "1e-2")
    straight, a = resumes_exactly(data, tmp_path, flags)
    init = load_decoder(decoder_path)[0].with_detail().state_dict()
    assert all(torch.equal(a[k], init[k]) for k in init if k.startswith("convs."))
    assert any(not torch.equal(a[k], init[k]) for k in init if k.startswith("detail."))
    exported = tmp_path / "decoder.pt"
    export([str(straight / "checkpoint.pt"), str(exported)])  # `adain-train export` in-process (in a process: below)
    st = Stylizer(str(exported), device="cpu", precision="fp32", backend="torch")
    base = Stylizer(decoder_path, device="cpu", precision="fp32", backend="torch")
    assert st.info["arch_version"] == 3 and st.info["decoder_meta"]["detail"] is True
    assert np.array_equal(pixels(st.stylize(CONTENT, STYLE)), pixels(base.stylize(CONTENT, STYLE)))


def test_detail_needs_a_decoder_to_grow_on(capsys: pytest.CaptureFixture[str]) -> None:
    from adain.train.train import parse_args

    with pytest.raises(SystemExit) as e:
        parse_args(["--content", ".", "--style", ".", "--detail"])
    assert e.value.code == 2 and "--init" in capsys.readouterr().err


def test_training_under_a_detail_path(data: Path, tmp_path: Path, grown: tuple[Path, Path]) -> None:
    """A version-3 --init without --detail trains the convolutions under the path (the export is a version 2,
    to grow the path on again), and a version-3 --teacher is asked with the photo."""
    out = tmp_path / "run"
    train_here(data, out, 2, "--init", str(grown[1]), "--alpha-input", "--alpha-one", "0.5",
               "--teacher", str(grown[1]), "--teacher-weight", "10")
    exported = tmp_path / "decoder.pt"
    subprocess.run([sys.executable, "-m", "adain.train", "export", str(out / "checkpoint.pt"), str(exported)],
                   check=True, env=ENV, capture_output=True)
    dec, file = load_decoder(exported)
    assert dec.arch_version == 2 and file.meta["detail"] is False
    assert any(r["teacher"] > 0 for r in logged(out))


def test_unused_alpha_channel_is_dropped(tmp_path: Path, grown: tuple[Path, Path]) -> None:
    """Training the convolutions under the shipped path at alpha 1 (the GPU round) trains the paper's decoder:
    the version 3's unused alpha channel (zero weights) is dropped, a version 1 with the same outputs at every
    alpha; one with learnt weights is refused, by the library and by adain-train."""
    shipped = load_decoder()[0]  # the shipped file: its alpha channel was never trained
    v2 = shipped.without_detail()
    v1 = v2.without_alpha_input()
    torch.manual_seed(0)
    x, image = torch.rand(1, 512, 5, 6), torch.rand(1, 3, 40, 48)
    assert v1.arch_version == 1
    assert torch.allclose(v1(x), shipped(x, 1.0, image), atol=1e-5)
    assert torch.allclose(v1(x), v2(x, 0.3), atol=1e-5)
    with pytest.raises(ValueError, match="learnt weights"):
        load_decoder(grown[0])[0].without_alpha_input()
    with pytest.raises(SystemExit) as e:  # what adain-train exits with (its message on stderr)
        train_main(["--content", ".", "--style", ".", "--out", str(tmp_path / "run"), "--init", str(grown[1]),
                    "--steps", "1"])
    assert "learnt weights" in str(e.value.code) and "--alpha-input" in str(e.value.code)
