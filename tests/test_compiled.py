"""The ``compiled`` backend (``adain.compiled``): torch.compile's graphs, warmed once for dynamic shapes, give
the eager output at other sizes and batches (one included) and every kind of alpha without compiling again;
what they do not cover runs eager; a compile that fails leaves a working eager backend.

Compiled with ``aot_eager`` here: dynamo traces and guards exactly as it does for inductor, without
generating code (inductor's C++ on this CPU takes two minutes for the three graphs; on a GPU it is what
``benchmarks/gpu.py --compiled-backend`` measures, pixels against eager's included)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import torch

from adain.compiled import CompiledBackend
from adain.decoder import load_decoder
from adain.eager import TorchBackend
from adain.encoder import Encoder

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def modules() -> tuple[Encoder, torch.nn.Module]:
    decoder = load_decoder(None)[0]  # the shipped one: a version 3, so both decoder graphs are built
    assert decoder.detail is not None
    return Encoder().to(memory_format=torch.channels_last), decoder.to(memory_format=torch.channels_last)


@pytest.fixture(autouse=True)
def default_stance() -> Iterator[None]:
    """The backend leaves the process compiling nothing new: other tests in this worker get it back."""
    yield
    torch.compiler.set_stance("default")


def test_graphs_cover_sizes_batches_and_alphas(modules: tuple[Encoder, torch.nn.Module]) -> None:
    encoder, decoder = modules
    compiled = CompiledBackend(encoder, decoder, CPU, bf16=False, compiler="aot_eager")
    eager = TorchBackend(encoder, decoder, CPU, bf16=False)
    assert compiled.compiled and compiled.name == "compiled" and compiled.precision == "fp32"
    with torch.compiler.set_stance("fail_on_recompile"):  # none of these may compile again
        for shape in ((1, 3, 72, 96), (3, 3, 64, 64), (2, 3, 136, 200)):
            x = torch.rand(*shape)
            feats = eager.relu4_1(x)
            torch.testing.assert_close(compiled.relu4_1(x), feats, rtol=1e-5, atol=1e-4)
            n, h, w = shape[0], shape[2] // 8, shape[3] // 8
            for alpha in (1.0, 0.5, torch.linspace(0.2, 1, n), torch.rand(n, 1, h, w)):
                y = compiled.decode(feats, alpha, x)
                assert y.shape == (n, 3, *shape[2:])
                assert (y - eager.decode(feats, alpha, x)).abs().max().item() < 1e-5, (shape, alpha)
    # a feature map one pixel high is outside the graphs' shapes: it runs eager, not a minute's compile (as a
    # batch of two, its row twice: the sums' order may differ from a batch of one's in the last digit)
    x = torch.rand(1, 3, 8, 64)
    with torch.compiler.set_stance("fail_on_recompile"), pytest.raises(RuntimeError, match="recompile"):
        compiled.relu4_1(x)
    torch.testing.assert_close(compiled.relu4_1(x), eager.relu4_1(x), rtol=1e-5, atol=1e-4)


def test_a_compile_that_fails_runs_eager(modules: tuple[Encoder, torch.nn.Module],
                                         caplog: pytest.LogCaptureFixture) -> None:
    encoder, decoder = modules
    with caplog.at_level(logging.WARNING, logger="adain.compiled"):
        backend = CompiledBackend(encoder, decoder, CPU, bf16=False, compiler="no-such-compiler")
    assert not backend.compiled and "torch.compile failed (" in caplog.text, caplog.text
    assert "the compiled backend runs eager" in caplog.text
    x = torch.rand(1, 3, 48, 40)
    eager = TorchBackend(encoder, decoder, CPU, bf16=False)
    feats = backend.relu4_1(x)
    assert torch.equal(feats, eager.relu4_1(x))
    assert torch.equal(backend.decode(feats, 0.5, x), eager.decode(feats, 0.5, x))
