"""The ``torch`` backend: the encoder and decoder themselves, eager. The reference every other backend
(``adain.backends``, ``adain.compiled``) is compared with, and what each falls back to."""

from __future__ import annotations

import torch
from torch import nn

from adain.decoder import Decoder
from adain.encoder import Encoder


class TorchBackend:
    """The modules, eager: the reference every other backend is compared with."""

    name = "torch"

    def __init__(self, encoder: Encoder, decoder: Decoder, device: torch.device, bf16: bool) -> None:
        self.encoder, self.decoder, self.device = encoder, decoder, device
        self.dtype = torch.bfloat16 if bf16 else torch.float32

    @property
    def precision(self) -> str:
        return "bf16" if self.dtype == torch.bfloat16 else "fp32"

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, self.dtype, enabled=self.dtype != torch.float32)

    def relu4_1(self, x: torch.Tensor) -> torch.Tensor:
        """relu4_1 of a batch of images (N x 3 x H x W, H and W multiples of 8)."""
        with torch.inference_mode(), self._autocast():
            return self.encoder(x.contiguous(memory_format=torch.channels_last)).relu4_1

    def decode(self, x: torch.Tensor, alpha: torch.Tensor | float, image: torch.Tensor | None = None) -> torch.Tensor:
        """Images from targets (N x 512 x h x w) and alphas (one number, N, or N x 1 x h x w maps); ``image``: the
        contents (N x 3 x 8h x 8w), which a decoder with the detail path needs."""
        if image is not None:
            image = image.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), self._autocast():
            return self.decoder(x.to(memory_format=torch.channels_last), alpha, image)


class _Relu41(nn.Module):
    """The encoder with one output, as exporters want it."""

    def __init__(self, encoder: Encoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x).relu4_1
