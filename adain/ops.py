"""The AdaIN op, its masked form, the colour operations it is used with, and the style loss that
measures it (after pytorch-AdaIN's function.py)."""

from __future__ import annotations

import torch

EPS = 1e-5
# BT.601 full-range RGB -> Y (the JPEG convention), for the luminance-only colour mode.
RGB_TO_Y = (0.299, 0.587, 0.114)  # BT.601 luma weights


def mean_std(feat: torch.Tensor, eps: float = EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std over H x W of an N x C x H x W map, each N x C x 1 x 1 (eps in the sqrt)."""
    n, c = feat.shape[:2]
    flat = feat.reshape(n, c, -1).float()
    var = flat.var(dim=2, unbiased=False) + eps
    return flat.mean(dim=2).view(n, c, 1, 1), var.sqrt().view(n, c, 1, 1)


def adain(
    content: torch.Tensor,
    style_mean: torch.Tensor,
    style_std: torch.Tensor,
    content_stats: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Renormalise content features to the style's per-channel mean and std. ``content_stats`` replaces
    the content's own (mean, std), e.g. by a video's running average of them."""
    c_mean, c_std = mean_std(content) if content_stats is None else content_stats
    return ((content.float() - c_mean) / c_std * style_std + style_mean).to(content.dtype)


def coral(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Match the colour mean and covariance of ``source`` (3 x H x W, [0, 1]) to ``target``'s.

    The AdaIN paper's colour preservation: applied to a style image before encoding, with the content
    as target. Done in float64 through symmetric eigendecompositions (stable on flat images).
    """

    def stats(img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = img.reshape(3, -1).double()
        mu = flat.mean(dim=1, keepdim=True)
        centred = flat - mu
        cov = centred @ centred.T / centred.shape[1] + 1e-5 * torch.eye(3, dtype=torch.float64)
        return mu, cov

    def matrix_power(cov: torch.Tensor, p: float) -> torch.Tensor:
        vals, vecs = torch.linalg.eigh(cov)
        return vecs @ torch.diag(vals.clamp_min(1e-8) ** p) @ vecs.T

    s_mu, s_cov = stats(source)
    t_mu, t_cov = stats(target)
    transform = matrix_power(t_cov, 0.5) @ matrix_power(s_cov, -0.5)
    out = transform @ (source.reshape(3, -1).double() - s_mu) + t_mu
    return out.reshape(source.shape).clamp(0, 1).to(source.dtype)


def weighted_mean_std(feat: torch.Tensor, weight: torch.Tensor, eps: float = EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of ``feat`` (N x C x H x W) weighted by a soft mask (N x 1 x H x W).

    For spatial control: each region is normalised by its own statistics. A region with (almost) no
    weight falls back to the whole map's statistics instead of dividing by zero.
    """
    total = weight.sum(dim=(2, 3), keepdim=True)
    if float(total.min()) < 1e-3 * weight[0, 0].numel():
        return mean_std(feat, eps)
    f = feat.float()
    mean = (f * weight).sum(dim=(2, 3), keepdim=True) / total
    var = ((f - mean) ** 2 * weight).sum(dim=(2, 3), keepdim=True) / total + eps
    return mean, var.sqrt()


def masked_adain(
    content: torch.Tensor,
    weight: torch.Tensor,
    style_mean: torch.Tensor,
    style_std: torch.Tensor,
    content_stats: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """AdaIN of one region: normalised by the content's statistics under the soft mask ``weight``
    (N x 1 x H x W), so each region of a masked request keeps its own contrast; float32 out.
    ``content_stats`` replaces those statistics, as in :func:`adain`."""
    c_mean, c_std = weighted_mean_std(content, weight) if content_stats is None else content_stats
    return (content.float() - c_mean) / c_std * style_std + style_mean


def luminance(rgb: torch.Tensor) -> torch.Tensor:
    """N x 3 x H x W RGB -> N x 1 x H x W luminance (BT.601)."""
    return (rgb * torch.tensor(RGB_TO_Y, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)).sum(1, keepdim=True)


def matched_luminance(style: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """A style's luminance (N x 1 x H x W) with the content's mean and spread, for luminance-only transfer (Gatys
    et al. 2016, "Preserving Color in Neural Artistic Style Transfer"): unmatched, the output's light followed the
    style's (a dark style turned a bright photo's skin dark brown). A flat style stays flat, at the content's mean."""
    y, c = luminance(style), luminance(content)
    spread = c.std() / y.std().clamp_min(1e-6)
    return ((y - y.mean()) * spread + c.mean()).clamp(0, 1)


def with_luminance(rgb: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Replace the luminance of ``rgb`` by ``y`` and keep its chroma (Cb, Cr); clamped to [0, 1]."""
    return (rgb + (y - luminance(rgb))).clamp(0, 1)


def gram(feat: torch.Tensor) -> torch.Tensor:
    """N x C x C second moments of an N x C x H x W map, averaged over positions (Gatys et al.'s style
    representation; with the normalised VGG its entries are of order 1)."""
    flat = feat.float().flatten(2)
    return flat @ flat.transpose(1, 2) / flat.shape[2]


def style_loss(
    out_feats: tuple[torch.Tensor, ...], style_feats: tuple[torch.Tensor, ...], weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Sum over the layers of MSE(channel means) + MSE(channel stds): the decoder's training style loss
    and the quality benchmark's yardstick. ``weights`` (N) weigh the samples (training: each one's alpha)."""
    per_sample = torch.zeros(out_feats[0].shape[0], device=out_feats[0].device)
    for o, s in zip(out_feats, style_feats):
        o_mean, o_std = mean_std(o)
        s_mean, s_std = mean_std(s)
        per_sample = per_sample + ((o_mean - s_mean) ** 2 + (o_std - s_std) ** 2).mean(dim=(1, 2, 3))
    return (per_sample if weights is None else per_sample * weights).mean()
