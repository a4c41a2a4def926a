"""The ``compiled`` backend (``adain.compiled``): graphs compiled for a few static shapes at construction give
the eager output for those shapes and the smaller batches padded into them; every other call (another size, a
larger batch, an alpha below 1) runs eager, and nothing compiles after the warm-up; a compile that fails
leaves a working eager backend.

Compiled with ``aot_eager`` here: dynamo traces and guards exactly as it does for inductor, without
generating code (inductor's C++ on this CPU takes minutes; on a GPU it is what
``benchmarks/gpu.py --compiled-backend`` measures, pixels against eager's included)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from adain.compiled import CompiledBackend, batch_steps
from adain.decoder import load_decoder
from adain.eager import TorchBackend
from adain.encoder import Encoder

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def modules() -> tuple[Encoder, torch.nn.Module]:
    decoder = load_decoder(None)[0]  # the shipped one: a version 3, whose detail path needs the content
    assert decoder.detail is not None
    return Encoder().to(memory_format=torch.channels_last), decoder.to(memory_format=torch.channels_last)


@pytest.fixture(autouse=True)
def default_stance(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The backend leaves the process compiling nothing new: other tests in this worker get it back. (And
    torch's trace logger, at DEBUG, is kept out of the captured logs: thousands of records a compile.)"""
    monkeypatch.setattr(logging.getLogger("torch.__trace"), "disabled", True)
    yield
    torch.compiler.set_stance("default")


def test_compiled_shapes_padded_batches_and_the_rest_eager(modules: tuple[Encoder, torch.nn.Module],
                                                           caplog: pytest.LogCaptureFixture) -> None:
    encoder, decoder = modules
    with caplog.at_level(logging.INFO, logger="adain.compiled"):
        compiled = CompiledBackend(encoder, decoder, CPU, bf16=False, shapes=[(3, 64, 80), (1, 64, 80)],
                                   compiler="aot_eager")
    assert "compiling shape 1 of 2: batch 1 x 64 x 80 (" in caplog.text, caplog.text
    assert "compiling shape 2 of 2: batch 3 x 64 x 80" in caplog.text and "for 2 shapes in" in caplog.text
    eager = TorchBackend(encoder, decoder, CPU, bf16=False)
    assert compiled.compiled and compiled.name == "compiled" and compiled.precision == "fp32"
    calls = []
    with torch.compiler.set_stance("fail_on_recompile"):  # nothing may compile after the warm-up
        for n, h, w, alpha, path in [(1, 64, 80, 1.0, "compiled"), (2, 64, 80, 1.0, "compiled"),  # 2: as 3
                                     (3, 64, 80, 1.0, "compiled"), (4, 64, 80, 1.0, "eager"),  # no batch of 4
                                     (1, 72, 80, 1.0, "eager"), (2, 64, 80, 0.5, "compiled")]:  # 0.5: decoder eager
            compiled.calls.clear()
            x = torch.rand(n, 3, h, w)
            feats = compiled.relu4_1(x)
            torch.testing.assert_close(feats, eager.relu4_1(x), rtol=1e-5, atol=1e-4)
            y = compiled.decode(feats, alpha, x)
            assert y.shape == (n, 3, h, w)
            assert (y - eager.decode(feats, alpha, x)).abs().max().item() < 1e-5, (n, h, w, alpha)
            calls.append(compiled.calls["compiled"])
            assert compiled.calls[path] >= 1, (n, h, w, alpha, compiled.calls)
    assert calls == [2, 2, 2, 0, 0, 1]  # encoder and decoder, or the encoder alone (alpha 0.5)


def test_batch_steps_and_refused_shapes(modules: tuple[Encoder, torch.nn.Module]) -> None:
    assert batch_steps(1) == [1] and batch_steps(8) == [1, 4, 8] and batch_steps(32) == [1, 4, 16, 32]
    assert batch_steps(64) == [1, 4, 16, 64]
    with pytest.raises(ValueError, match="multiples of 8"):
        CompiledBackend(*modules, CPU, bf16=False, shapes=[(1, 60, 80)], compiler="aot_eager")


def test_a_compile_that_fails_runs_eager(modules: tuple[Encoder, torch.nn.Module],
                                         caplog: pytest.LogCaptureFixture) -> None:
    encoder, decoder = modules
    with caplog.at_level(logging.WARNING, logger="adain.compiled"):
        backend = CompiledBackend(encoder, decoder, CPU, bf16=False, shapes=[(1, 48, 40)],
                                  compiler="no-such-compiler")
    assert not backend.compiled and "torch.compile failed (" in caplog.text, caplog.text
    assert "the compiled backend runs eager" in caplog.text
    x = torch.rand(1, 3, 48, 40)
    eager = TorchBackend(encoder, decoder, CPU, bf16=False)
    feats = backend.relu4_1(x)
    assert torch.equal(feats, eager.relu4_1(x))
    assert torch.equal(backend.decode(feats, 1.0, x), eager.decode(feats, 1.0, x))


def test_asked_for_by_name_a_failed_compile_is_an_error(modules: tuple[Encoder, torch.nn.Module],
                                                        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``--backend compiled`` whose compile fails (here: inductor without a working C++ compiler) stops the start
    naming why, as a missing runtime asked for by name does: a pod at eager's speed must not look ready."""
    from torch._inductor import config
    from torch._inductor.runtime.cache_dir_utils import temporary_cache_dir

    from adain.backends import make_backend

    monkeypatch.setattr(config.cpp, "cxx", (None, "/bin/false"))  # what CXX=/bin/false at its import would set
    # an empty cache: a graph compiled before (an earlier run of this test, with a compiler) is not compiled again
    with temporary_cache_dir(str(tmp_path)), pytest.raises(
            RuntimeError, match=r"backend compiled is not usable here \(torch.compile failed: "):
        make_backend("compiled", *modules, CPU, bf16=False, explicit_precision=False, compile_shapes=[(1, 16, 16)])


def test_the_server_exports_which_path_each_render_took(modules: tuple[Encoder, torch.nn.Module]) -> None:
    """adain_compiled_decoder_runs_total{path}: an operator sees the traffic the compiles do not cover (a size not
    compiled, alpha below 1), the warm-ups not counted."""
    from prometheus_client import generate_latest

    from adain.server.metrics import Metrics

    encoder, decoder = modules
    compiled = CompiledBackend(encoder, decoder, CPU, bf16=False, shapes=[(1, 64, 80)], compiler="aot_eager")
    metrics = Metrics()
    metrics.watch_compiled(compiled.renders)
    assert 'adain_compiled_decoder_runs_total{path="compiled"} 0.0' in generate_latest(metrics.registry).decode()
    x, other = torch.rand(1, 3, 64, 80), torch.rand(1, 3, 72, 80)
    for image, alpha in [(x, 1.0), (x, 1.0), (x, 0.5), (other, 1.0)]:
        compiled.decode(compiled.relu4_1(image), alpha, image)
    text = generate_latest(metrics.registry).decode()
    assert 'adain_compiled_decoder_runs_total{path="compiled"} 2.0' in text, text
    assert 'adain_compiled_decoder_runs_total{path="eager"} 2.0' in text, text
