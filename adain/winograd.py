"""Winograd convolutions: the network's wide 3x3 convolutions in fewer multiply-adds, for the exported CPU
runtimes (2x2 kernels work too: the folded decoder's were, until its upsamplings became transposed
convolutions, which run faster direct; ``adain.decoder.FoldedDecoder``).

Why: on a CPU without bf16 or int8 units float32 direct convolution is bound by the multiply-add rate
(``benchmarks/backends.py`` prints the floor). Winograd's minimal filtering F(m x m, r x r) (Lavin & Gray,
"Fast Algorithms for Convolutional Neural Networks", CVPR 2016) computes an m x m output tile from an
(m + r - 1)^2 input tile with (m + r - 1)^2 products per channel pair where direct convolution spends
m^2 r^2: with m = 6, 64 instead of 324 for a 3x3 kernel (5.1x fewer), 49 instead of 144 for a 2x2 one.

How: the input transform B^T d B is two strided convolutions with fixed 1-D kernels (rows, then
columns), the products are one batched matrix multiply over the (m + r - 1)^2 tile positions, and the
output transform A^T M A is one more matrix multiply; nothing but convolutions, matmuls and reshapes, so
every runtime that converts a traced module runs it. The matrices come from the interpolation points
0, +-1, +-2, +-1/2 (and infinity); outputs match direct convolution to ~1e-5 relative in float32.

Only for float32 and for layers with at least 128 input channels: the transforms add memory traffic
that narrow layers do not pay back (measured on OpenVINO: 64-channel layers got slower), and the
transformed values span ~100x, which bf16's 8-bit mantissa cannot carry (a CPU with bf16 units runs
the direct graph in bf16 instead).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

TILE = 6  # output tile side: F(6x6, 3x3) and F(6x6, 2x2)
MIN_CHANNELS = 128  # narrower layers run direct (slower in Winograd form on OpenVINO, measured)
WINOGRAD_FORM = f"winograd-F{TILE}-min{MIN_CHANNELS}"  # names the conversion in cache keys (adain.backends)
_POINTS = (0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5)


def matrices(m: int, r: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(A^T, G, B^T) of F(m, r) in float64: y = A^T [(G g) * (B^T d)] is the correlation of the
    m + r - 1 inputs d with the r taps g. A^T and G follow from the points (Toom-Cook); B^T is the one
    matrix that makes the identity hold, found by solving it as a linear system."""
    a = m + r - 1
    points = torch.tensor(_POINTS[: a - 1], dtype=torch.float64)
    if len(points) != a - 1:
        raise ValueError(f"F({m}, {r}) needs {a - 1} points, {len(_POINTS)} are defined")
    at = torch.zeros(m, a, dtype=torch.float64)
    g = torch.zeros(a, r, dtype=torch.float64)
    for j, p in enumerate(points):
        at[:, j] = p ** torch.arange(m)
        g[j] = p ** torch.arange(r) / torch.prod(p - points[torch.arange(a - 1) != j])
    at[m - 1, a - 1] = g[a - 1, r - 1] = 1.0  # the point at infinity
    # sum_x A^T[i, x] G[x, k] B^T[x, l] = [l == i + k] for every output i, tap k and input l.
    system = torch.einsum("ix,xk,lz->iklxz", at, g, torch.eye(a, dtype=torch.float64)).reshape(m * r * a, a * a)
    want = torch.zeros(m, r, a, dtype=torch.float64)
    for i in range(m):
        for k in range(r):
            want[i, k, i + k] = 1.0
    bt = torch.linalg.lstsq(system, want.reshape(-1, 1), driver="gelsd").solution.reshape(a, a)
    if (system @ bt.reshape(-1, 1) - want.reshape(-1, 1)).abs().max() > 1e-9:
        raise ArithmeticError(f"no exact F({m}, {r}) for these points")
    return at, g, bt


class WinogradConv2d(nn.Module):
    """A stride-1, unpadded, square-kernel ``nn.Conv2d`` (its input already padded, as everywhere in
    this network) computed as F(tile x tile, r x r). Any input size and batch: the input is padded by
    zeros to whole tiles and the output cut back, all from the input's own shape (traced, not fixed)."""

    # buffers (register_buffer), declared: a Module's attributes are otherwise Tensor | Module to a type checker
    u: torch.Tensor
    bias: torch.Tensor
    rows: torch.Tensor
    cols: torch.Tensor
    out: torch.Tensor

    def __init__(self, conv: nn.Conv2d, tile: int = TILE) -> None:
        super().__init__()
        r = conv.kernel_size[0]
        if conv.kernel_size != (r, r) or conv.stride != (1, 1) or conv.padding != (0, 0) or conv.groups != 1 \
                or conv.dilation != (1, 1) or conv.bias is None:
            raise ValueError("WinogradConv2d takes a square, stride-1, unpadded, ungrouped conv with a bias")
        at, g, bt = matrices(tile, r)
        a = tile + r - 1
        self.tile, self.r, self.a, self.out_channels = tile, r, a, conv.out_channels
        w = conv.weight.detach().double()
        # U[x, y] = (G w G^T)[x, y] for every (out, in) pair: a x a matrices of out x in.
        u = torch.einsum("xi,ocij,yj->xyoc", g, w, g).reshape(a * a, *w.shape[:2])
        self.register_buffer("u", u.float().contiguous())
        self.register_buffer("bias", conv.bias.detach().float().view(1, -1, 1, 1).clone())
        self.register_buffer("rows", bt.float().view(a, 1, a, 1).contiguous())
        self.register_buffer("cols", bt.float().view(a, 1, 1, a).contiguous())
        self.register_buffer("out", torch.kron(at, at).float().contiguous())  # vec(A^T M A), tile^2 x a^2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m, a, k = self.tile, self.a, self.out_channels
        n, c, hp, wp = x.shape
        x = F.pad(x, (0, m - 1, 0, m - 1))  # whole tiles: ceil(out / m) of them each way
        t = F.conv2d(x.reshape(n * c, 1, hp + m - 1, wp + m - 1), self.rows, stride=(m, 1))  # B^T d
        th = t.shape[2]
        t = F.conv2d(t.reshape(n * c * a, 1, th, wp + m - 1), self.cols, stride=(1, m))  # (B^T d) B
        tw = t.shape[3]
        v = t.reshape(n, c, a * a, th * tw).permute(2, 1, 0, 3).reshape(a * a, c, n * th * tw)
        y = torch.matmul(self.u, v)  # a^2 x out x tiles: the products, summed over input channels
        y = torch.matmul(self.out, y.reshape(a * a, k * n * th * tw))  # A^T M A for every tile
        y = y.reshape(m, m, k, n, th, tw).permute(3, 2, 4, 0, 5, 1).reshape(n, k, th * m, tw * m)
        return y[:, :, : hp - self.r + 1, : wp - self.r + 1] + self.bias


def winograd(module: nn.Module, min_channels: int = MIN_CHANNELS, tile: int = TILE) -> nn.Module:
    """A copy of ``module`` with every 2x2 and 3x3 convolution of at least ``min_channels`` inputs in
    Winograd form; the rest is shared in value, not in identity (the copy is independent)."""
    module = copy.deepcopy(module)
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Conv2d) and child.kernel_size in ((2, 2), (3, 3)) \
                    and child.in_channels >= min_channels:
                setattr(parent, name, WinogradConv2d(child, tile))
    return module
