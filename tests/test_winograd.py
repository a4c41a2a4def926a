"""Winograd convolutions (``adain.winograd``): the same outputs as direct convolution at any size and
batch, and only the wide layers converted. The exported runtimes run this form in float32; their
end-to-end agreement with eager torch is tested in test_backends.py."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from adain.decoder import FoldedDecoder, load_decoder
from adain.winograd import MIN_CHANNELS, WinogradConv2d, matrices, winograd

torch.set_num_threads(1)


def test_matrices_are_lavins_for_f4x3() -> None:
    """F(4, 3) with the points 0, +-1, +-2 is the one in Lavin & Gray's paper (their equation 8)."""
    _, _, bt = matrices(4, 3)
    lavin = torch.tensor([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                          [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], dtype=torch.float64)
    assert torch.allclose(bt, lavin, atol=1e-9)


@pytest.mark.parametrize("kernel", [2, 3])
@pytest.mark.parametrize("shape", [(1, 128, 9, 9), (3, 131, 17, 22), (2, 256, 4, 5)])
def test_winograd_conv_is_the_conv(kernel: int, shape: tuple[int, int, int, int]) -> None:
    """Sizes that are and are not whole tiles, a batch, a map smaller than one tile."""
    torch.manual_seed(0)
    conv = nn.Conv2d(shape[1], 24, kernel)
    x = torch.randn(shape).relu()  # the network's inputs are ReLU outputs
    with torch.no_grad():
        want, got = conv(x), WinogradConv2d(conv)(x)
    assert got.shape == want.shape
    assert (got - want).abs().max().item() <= 1e-4 * want.abs().max().item()


def test_only_wide_convolutions_are_converted(decoder_path) -> None:
    folded = FoldedDecoder(load_decoder(decoder_path)[0])
    converted = winograd(folded)
    kinds = [type(c).__name__ for c in converted.convs]
    # the folded upsamplings are transposed convolutions: direct, whatever their width
    wide = [type(c) is nn.Conv2d and c.in_channels >= MIN_CHANNELS for c in folded.convs]
    want = ["WinogradConv2d" if w else type(c).__name__ for w, c in zip(wide, folded.convs)]
    assert kinds == want and any(wide) and not all(wide) and "ConvTranspose2d" in kinds, kinds
    assert all(type(c) in (nn.Conv2d, nn.ConvTranspose2d) for c in folded.convs)  # the original is untouched
    x = torch.rand(2, 512, 5, 7)
    with torch.no_grad():
        want, got = folded(x), converted(x)
    assert (got - want).abs().max().item() <= 1e-4 * want.abs().max().item()


def test_unsupported_convolutions_are_refused() -> None:
    with pytest.raises(ValueError, match="stride-1"):
        WinogradConv2d(nn.Conv2d(128, 8, 3, stride=2))
