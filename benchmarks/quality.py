"""Content and style losses of AdaIN (ours) against simple baselines and Gatys et al.'s optimisation.

    python benchmarks/quality.py [--content DIR] [--style DIR] [--decoder PATH [PATH ...]] [--size 512]
        [--backend auto] [--precision auto] [--eval-size 256] [--gatys-size 256] [--gatys-steps 100]
        [--gatys-pairs 6] [--save-samples DIR] [--sweep [--interpolate RECON.pt]]

Methods, per (content, style) pair:

* ours: ``Stylizer.stylize`` at alpha 1, content at ``--size`` px (longest side), style at ``--style-size``
  (default: the same as the content's);
* content: the content image itself (what alpha 0 would give);
* style: the style image scaled and centre-cropped to the content's size (``ImageOps.fit``);
* Gatys et al.: L-BFGS on the pixels (``torch.optim.LBFGS``, lr 1, no line search, ``--gatys-steps``
  iterations, one loss evaluation each), initialised from the content, pixels clamped to [0, 1] after
  every iteration; loss = content_weight * MSE(relu4_1, content's) + style_weight * style term, where the
  style term is the mean/std loss below (default) or a Gram-matrix loss (``--gatys-style-loss gram``).
  It runs at ``--gatys-size`` px on a seeded subset of ``--gatys-pairs`` pairs.

Evaluation, the same for every method: each output is resized to the content reference, i.e. the content
image at ``--eval-size`` px longest side, and encoded by the normalised VGG19 (``adain.encoder.Encoder``):

* content loss: MSE between relu4_1 of the output and relu4_1 of the content reference;
* style loss: sum over relu1_1..relu4_1 of MSE(channel means) + MSE(channel stds) between the output and
  the style image at ``--eval-size`` px (``adain.ops.style_loss``, the decoder's training loss).
* for reference, the content loss of AdaIN's target itself (relu4_1 of the content with the style's
  channel statistics, no image): what a decoder that inverted the encoder exactly would score at alpha 1.

Every image is first downscaled (never upscaled) to ``--size`` px; that is the input of ours and of the
baselines, and what the smaller Gatys inputs and the references are made from. s/image is the wall time
of making one output (ours: a ``stylize`` call with the style cache off, so the style is encoded every
time; files are decoded beforehand and not timed), evaluation excluded.

``--sweep`` runs each decoder at alpha 0, 0.25, 0.5, 0.75 and 1 (the same losses) and, at alpha 0, compares
the output with the content at the size it was stylized at: PSNR, SSIM, and the PSNR split into coarse (8 x 8
means: tone and colour, what relu4_1's grid holds) and detail (the rest), beside what the contents' coarse
images alone would score. ``--interpolate RECON.pt`` adds the shipped decoder with its weights moved towards
a reconstruction decoder's as alpha falls (at alpha a: (1 - a) x RECON + a x shipped), one way to keep alpha 1
exactly where the shipped decoder has it while alpha 0 reconstructs.

``--floor-pairs N`` asks whether the decoder or the target limits the content loss: on N of the pairs it
measures how far ours is from AdaIN's target (MSE of relu4_1 at the evaluation size), then moves ours' pixels
towards the target alone with ``--floor-steps`` L-BFGS iterations. If that image gets much nearer than ours,
an image near the target exists and the gap is the decoder's to close; what it scores is a realisable floor.
"""

from __future__ import annotations

import argparse
import csv
import math
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from tqdm import tqdm

from adain import InvalidInputError, NoDecoderError, Stylizer
from adain.decoder import Decoder, load_decoder, save_decoder
from adain.encoder import Encoder, Features
from adain.image import load_image, resize_longest, to_image, to_tensor
from adain.ops import adain, gram, mean_std, style_loss
from adain.precision import BACKENDS, PRECISIONS
from adain.train.data import list_images

SHARED_EVAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "eval"
REPO = Path(__file__).resolve().parents[1]
MIN_SIDE = 16  # the encoder reflects by one pixel at relu4_1 (1/8 scale): smaller images cannot be encoded


def warn(msg: str) -> None:
    tqdm.write(f"warning: {msg}", file=sys.stderr)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--content", type=Path, default=SHARED_EVAL / "content", help="folder of content images")
    p.add_argument("--style", type=Path, default=SHARED_EVAL / "style", help="folder of style images")
    p.add_argument("--decoder", nargs="+", default=None,
                   help="decoder file(s) (default: the shipped adain/assets/decoder.pt); the first is 'ours' in the "
                   "main table, and --sweep puts each beside the shipped one")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when present)")
    p.add_argument("--backend", choices=BACKENDS, default="auto", help="the Stylizer's runtime (adain.backends)")
    p.add_argument("--precision", choices=PRECISIONS, default="auto", help="the Stylizer's precision")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    p.add_argument("--size", type=int, default=512, help="content longest side for ours and the baselines")
    p.add_argument("--style-size", type=int, default=None, help="style longest side (default: the content's)")
    p.add_argument("--eval-size", type=int, default=256, help="longest side every output is evaluated at")
    p.add_argument("--pairs", type=int, default=0, help="seeded subset of N pairs for ours/baselines (0: all)")
    p.add_argument("--gatys-pairs", type=int, default=6, help="seeded subset of N pairs for Gatys (0: skip Gatys)")
    p.add_argument("--gatys-size", type=int, default=256, help="content (and style) longest side for Gatys")
    p.add_argument("--gatys-steps", type=int, default=100, help="L-BFGS iterations")
    p.add_argument("--floor-pairs", type=int, default=0,
                   help="pairs on which ours' pixels are optimised towards the AdaIN target alone (0: off)")
    p.add_argument("--floor-steps", type=int, default=100, help="L-BFGS iterations for --floor-pairs")
    p.add_argument("--gatys-style-loss", choices=("meanstd", "gram"), default="meanstd")
    p.add_argument("--gatys-content-weight", type=float, default=1.0)
    p.add_argument("--gatys-style-weight", type=float, default=10.0)
    p.add_argument("--seed", type=int, default=0, help="for the pair subsets")
    p.add_argument("--csv", type=Path, default=None, help="write per-pair losses and times here")
    p.add_argument("--save-samples", type=Path, default=None, help="write a few outputs here (for eyes only)")
    p.add_argument("--num-samples", type=int, default=6, help="how many pairs --save-samples writes")
    p.add_argument("--sweep", action="store_true",
                   help="alpha sweep (0, 0.25, 0.5, 0.75, 1) of the shipped decoder and, with --decoder, the "
                   "candidates beside it: losses at each alpha, PSNR and SSIM against the content at alpha 0")
    p.add_argument("--interpolate", type=Path, default=None, metavar="RECON.pt",
                   help="with --sweep: also the shipped decoder's weights interpolated towards this one's as alpha "
                   "goes to 0 ((1 - alpha) * RECON + alpha * shipped; Wang et al., Deep Network Interpolation, 2019)")
    args = p.parse_args(argv)
    for name in ("size", "eval_size", "gatys_size", "gatys_steps", "floor_steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.style_size is not None and args.style_size < 1:
        p.error("--style-size must be >= 1")
    if args.interpolate and not args.sweep:
        p.error("--interpolate goes with --sweep")
    return args


# --- images -----------------------------------------------------------------------------------
def load_folder(folder: Path, kind: str, size: int, min_size: int) -> dict[str, Image.Image]:
    """Every readable image in ``folder``, downscaled to ``size`` px; unreadable or tiny ones are skipped."""
    if not folder.is_dir():
        raise SystemExit(f"error: {kind} folder not found: {folder}")
    images: dict[str, Image.Image] = {}
    for path in list_images(folder):
        name = str(path.relative_to(folder))
        try:
            img = resize_longest(load_image(path, field=kind), size)
        except (InvalidInputError, OSError) as e:
            warn(f"skipping {kind} image {path}: {e}")
            continue
        small = resize_longest(img, min_size)
        if min(small.size) < MIN_SIDE:
            warn(f"skipping {kind} image {path}: {img.width} x {img.height} is too thin at {min_size} px")
            continue
        images[name] = img
    return images


def fit_to(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Resize ``img`` to exactly ``size`` (W, H); aspect changes are at most a rounding pixel here."""
    return img if img.size == size else img.resize(size, Image.Resampling.LANCZOS)


# --- evaluation ---------------------------------------------------------------------------------
class Evaluator:
    """Content and style losses at a common size, against cached references."""

    def __init__(self, encoder: Encoder, device: torch.device, eval_size: int) -> None:
        self.encoder, self.device, self.eval_size = encoder, device, eval_size
        self._content: dict[str, tuple[tuple[int, int], torch.Tensor]] = {}
        self._style: dict[str, Features] = {}

    @torch.inference_mode()
    def features(self, img: Image.Image) -> Features:
        return self.encoder(to_tensor(img).to(self.device))

    def content_ref(self, name: str, img: Image.Image) -> tuple[tuple[int, int], torch.Tensor]:
        if name not in self._content:
            ref = resize_longest(img, self.eval_size)
            self._content[name] = (ref.size, self.features(ref).relu4_1)
        return self._content[name]

    def style_ref(self, name: str, img: Image.Image) -> Features:
        if name not in self._style:
            self._style[name] = self.features(resize_longest(img, self.eval_size))
        return self._style[name]

    def losses(self, out: Image.Image, content: tuple[str, Image.Image], style: tuple[str, Image.Image]) -> tuple:
        size, c4 = self.content_ref(*content)
        feats = self.features(fit_to(out, size))
        return F.mse_loss(feats.relu4_1, c4).item(), style_loss(feats, self.style_ref(*style)).item()

    def target(self, content: tuple[str, Image.Image], style: tuple[str, Image.Image]) -> torch.Tensor:
        """AdaIN's target at the evaluation size: relu4_1 of the content with the style's means and stds."""
        _, c4 = self.content_ref(*content)
        return adain(c4, *mean_std(self.style_ref(*style).relu4_1))

    def target_content_loss(self, content: tuple[str, Image.Image], style: tuple[str, Image.Image]) -> float:
        """Content loss of the AdaIN target itself (alpha 1): what a decoder that inverted the encoder
        exactly would score, so the gap between it and ours is the decoder's own error."""
        return F.mse_loss(self.target(content, style), self.content_ref(*content)[1]).item()

    def to_target(self, out: Image.Image, content: tuple[str, Image.Image], style: tuple[str, Image.Image]) -> float:
        """MSE(relu4_1(output), AdaIN's target): how far an alpha-1 output is from what the decoder is asked for."""
        size, _ = self.content_ref(*content)
        return F.mse_loss(self.features(fit_to(out, size)).relu4_1, self.target(content, style)).item()


# --- fidelity at alpha 0 ------------------------------------------------------------------------
SWEEP_ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)


def psnr(out: torch.Tensor, ref: torch.Tensor) -> float:
    """PSNR in dB of two 1 x 3 x H x W images in [0, 1]."""
    mse = F.mse_loss(out.float(), ref.float()).item()
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def ssim(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Mean SSIM (Wang et al. 2004: 11 x 11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03, range 1) over the
    RGB channels of two 1 x 3 x H x W images in [0, 1]; valid windows only."""
    g = torch.exp(-((torch.arange(11, dtype=torch.float64) - 5) ** 2) / (2 * 1.5**2))
    g = (g / g.sum()).float()
    window = (g[:, None] * g[None, :]).expand(3, 1, 11, 11).contiguous()

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, window, groups=3)

    x, y = out.float(), ref.float()
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return s.mean().item()


def coarse(x: torch.Tensor, k: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """An image's k x k means (relu4_1's grid, so colour and tone) and those upsampled back to its size."""
    lo = F.avg_pool2d(x.float(), k, ceil_mode=True)
    return lo, F.interpolate(lo, size=x.shape[2:], mode="bilinear", align_corners=False)


def split_psnr(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """PSNR of the coarse images and of the detail above them (each image minus its coarse image,
    upsampled): says whether an alpha-0 gap is tone or texture."""
    (lo_out, up_out), (lo_ref, up_ref) = coarse(out), coarse(ref)
    return psnr(lo_out, lo_ref), psnr(out.float() - up_out, ref.float() - up_ref)


@dataclass
class SweepRow:
    """Means over the pairs at one alpha; the fidelity figures against the content at alpha 0 only."""

    label: str
    alpha: float
    content: float
    style: float
    psnr: float | None = None
    ssim: float | None = None
    coarse: float | None = None  # split_psnr
    detail: float | None = None
    from_photo: float = 0.0  # mean absolute difference from the content, 0-255 levels (every alpha)


def interpolated(
    recon: Decoder, name: str, folder: Path, make: Callable[[str], Stylizer]
) -> Callable[[float], Stylizer]:
    """alpha -> a Stylizer whose decoder weights are (1 - alpha) * recon's + alpha * the shipped decoder's:
    alpha 1 is the shipped decoder exactly and alpha 0 the reconstruction decoder."""
    shipped = load_decoder()[0].without_detail().with_alpha_input().state_dict()  # at alpha 1: its convolutions
    theirs = recon.without_detail().with_alpha_input().state_dict()

    def at(alpha: float) -> Stylizer:
        decoder = Decoder(alpha_input=True)
        decoder.load_state_dict({k: (1 - alpha) * theirs[k] + alpha * v for k, v in shipped.items()})
        path = folder / f"interpolated-{alpha:g}.pt"
        save_decoder(decoder, path, {"note": f"{1 - alpha:g} x {name} + {alpha:g} x shipped"}, half=False)
        return make(str(path))

    return at


def alpha_sweep(
    decoders: list[tuple[str, Stylizer | Callable[[float], Stylizer]]],
    pairs: list[tuple[str, str]],
    contents: dict[str, Image.Image],
    styles: dict[str, Image.Image],
    ev: Evaluator,
    size: int,
    style_size: int,
) -> list[SweepRow]:
    """Each decoder at each of SWEEP_ALPHAS (a decoder may be a function of alpha: interpolated weights); at
    alpha 0 also its fidelity against the content at the size it was stylized at."""
    rows = []
    mean = statistics.fmean
    for label, decoder in decoders:
        for a in SWEEP_ALPHAS:
            st = decoder if isinstance(decoder, Stylizer) else decoder(a)
            losses, fidelity, distances = [], [], []
            for pair in tqdm(pairs, desc=f"sweep {label} alpha {a:g}", unit="pair", dynamic_ncols=True, leave=False):
                c, s = (pair[0], contents[pair[0]]), (pair[1], styles[pair[1]])
                out = st.stylize(c[1], s[1], alpha=a, content_size=size, style_size=style_size)
                losses.append(ev.losses(out, c, s))
                x, ref = to_tensor(out), to_tensor(resize_longest(c[1], size))
                distances.append(255 * (x - ref).abs().mean().item())
                if a == 0:
                    fidelity.append((psnr(x, ref), ssim(x, ref), *split_psnr(x, ref)))
            row = SweepRow(label, a, mean(x[0] for x in losses), mean(x[1] for x in losses), from_photo=mean(distances))
            if fidelity:
                row.psnr, row.ssim, row.coarse, row.detail = (mean(f[k] for f in fidelity) for k in range(4))
            rows.append(row)
    return rows


def detail_floor(pairs: list[tuple[str, str]], contents: dict[str, Image.Image], size: int) -> float:
    """Mean PSNR of the contents' coarse images (upsampled) against the contents: an alpha-0 output with the
    tone exactly right and no detail at all would score this."""
    scores = []
    for name in dict.fromkeys(c for c, _ in pairs):
        ref = to_tensor(resize_longest(contents[name], size))
        scores.append(psnr(coarse(ref)[1], ref))
    return statistics.fmean(scores)


def print_sweep(rows: list[SweepRow]) -> None:
    """The sweep table; its last column says how far along the slider each alpha is: the distance from the
    photo as a share of the same decoder's at alpha 1 (an even slider goes ~0, 0.25, 0.5, 0.75, 1)."""
    print("| decoder | alpha | content loss | style loss | PSNR vs content (dB) | SSIM vs content "
          "| PSNR coarse / detail (dB) | from the photo, levels (share of alpha 1) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    full = {r.label: r.from_photo for r in rows if r.alpha == 1}
    for r in rows:
        extra = "– | – | –" if r.psnr is None else f"{r.psnr:.2f} | {r.ssim:.3f} | {r.coarse:.2f} / {r.detail:.2f}"
        share = f" ({r.from_photo / full[r.label]:.2f})" if full.get(r.label) else ""
        print(f"| {r.label} | {r.alpha:g} | {r.content:.4g} | {r.style:.4g} | {extra} | {r.from_photo:.1f}{share} |")
    for label in dict.fromkeys(r.label for r in rows):
        mine = [r for r in rows if r.label == label]
        style_falls = all(b.style <= a.style for a, b in zip(mine, mine[1:]))
        content_rises = all(b.content >= a.content for a, b in zip(mine, mine[1:]))
        print(f"- {label}: as alpha goes 0 -> 1 the style loss {'falls' if style_falls else 'does NOT fall'} "
              f"monotonically and the content loss {'rises' if content_rises else 'does NOT rise'} monotonically.")


# --- Gatys et al. ---------------------------------------------------------------------------------
def lbfgs(
    x0: torch.Tensor, loss_fn: Callable[[torch.Tensor], torch.Tensor], steps: int, keep_best: bool = False
) -> torch.Tensor:
    """``steps`` L-BFGS iterations on the pixels from ``x0``, clamped to [0, 1] after each. Without a line
    search an iteration can overshoot (seen: one pair in eight): ``keep_best`` returns the best image seen."""
    x = x0.clone(memory_format=torch.contiguous_format).requires_grad_(True)  # LBFGS views the grad flat
    # max_iter=1: one iteration (one loss evaluation) per step() call; the optimizer keeps its history
    # between calls, so ``steps`` calls are ``steps`` L-BFGS iterations with a clamp to [0, 1] after each.
    opt = torch.optim.LBFGS([x], lr=1.0, max_iter=1, history_size=100)
    best = (math.inf, x0)

    def closure() -> torch.Tensor:
        nonlocal best
        opt.zero_grad()
        loss = loss_fn(x)
        loss.backward()
        if keep_best and loss.item() < best[0]:
            best = (loss.item(), x.detach().clone())
        return loss

    for _ in range(steps):
        opt.step(closure)
        with torch.no_grad():
            x.clamp_(0, 1)
    if keep_best:
        with torch.no_grad():
            if loss_fn(x).item() >= best[0]:
                return best[1]
    return x.detach()


def gatys(
    encoder: Encoder,
    content: torch.Tensor,
    style: torch.Tensor,
    steps: int,
    content_weight: float,
    style_weight: float,
    kind: str,
) -> torch.Tensor:
    """L-BFGS on the pixels from the content image; returns the 1 x 3 x H x W result in [0, 1]."""
    with torch.no_grad():
        c4 = encoder(content).relu4_1
        s_feats = encoder(style)
        targets = [gram(s) if kind == "gram" else mean_std(s) for s in s_feats]

    def style_term(feats: Features) -> torch.Tensor:
        total = torch.zeros((), device=content.device)
        for f, t in zip(feats, targets):
            if kind == "gram":
                total = total + F.mse_loss(gram(f), t)
            else:
                mean, std = mean_std(f)
                total = total + F.mse_loss(mean, t[0]) + F.mse_loss(std, t[1])
        return total

    def loss(x: torch.Tensor) -> torch.Tensor:
        feats = encoder(x)
        return content_weight * F.mse_loss(feats.relu4_1, c4) + style_weight * style_term(feats)

    return lbfgs(content, loss, steps)


def realisable_floor(
    pairs: list[tuple[str, str]],
    ours: dict[tuple[str, str], Image.Image],
    contents: dict[str, Image.Image],
    styles: dict[str, Image.Image],
    ev: Evaluator,
    steps: int,
) -> list[tuple[str, list[float | None]]]:
    """Rows (label, [to the target, content loss, style loss]) for the target itself, ours, and ours moved
    towards the target alone by L-BFGS (``--floor-pairs``); empty without pairs."""
    if not pairs:
        return []
    rows: dict[str, list[list[float | None]]] = {"target": [], "ours": [], "moved": []}
    for pair in tqdm(pairs, desc="floor", unit="pair", dynamic_ncols=True):
        c, s = (pair[0], contents[pair[0]]), (pair[1], styles[pair[1]])
        size, _ = ev.content_ref(*c)
        target = ev.target(c, s).clone()  # outside inference mode: autograd may save it
        start = to_tensor(fit_to(ours[pair], size)).to(ev.device)
        moved = lbfgs(start, lambda x, t=target: F.mse_loss(ev.encoder(x).relu4_1, t), steps, keep_best=True)
        moved = to_image(moved)
        rows["target"].append([0.0, ev.target_content_loss(c, s), None])
        for key, img in (("ours", ours[pair]), ("moved", moved)):
            rows[key].append([ev.to_target(img, c, s), *ev.losses(img, c, s)])
    labels = {"target": "AdaIN's target itself (features, no image)", "ours": "ours",
              "moved": f"ours moved towards the target, {steps} L-BFGS iterations"}
    return [(labels[k], [None if v[0] is None else statistics.fmean(v) for v in zip(*r)]) for k, r in rows.items()]


# --- bookkeeping ------------------------------------------------------------------------------------
@dataclass
class Result:
    content: float
    style: float
    seconds: float


@dataclass
class Method:
    label: str
    results: dict[tuple[str, str], Result] = field(default_factory=dict)

    def row(self, pairs: list[tuple[str, str]], label: str | None = None) -> str:
        rs = [self.results[p] for p in pairs if p in self.results]
        if not rs:
            return f"| {label or self.label} | 0 | – | – | – |"
        c, s, t = (statistics.fmean(getattr(r, k) for r in rs) for k in ("content", "style", "seconds"))
        secs = "<0.001" if t < 0.001 else f"{t:.3g}"
        return f"| {label or self.label} | {len(rs)} | {c:.4g} | {s:.4g} | {secs} |"


def timed(fn: Callable[[], Image.Image]) -> tuple[Image.Image, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def stem(name: str) -> str:
    return Path(name).with_suffix("").as_posix().replace("/", "_")


def save_samples(
    folder: Path,
    pairs: list[tuple[str, str]],
    contents: dict[str, Image.Image],
    styles: dict[str, Image.Image],
    outputs: dict[tuple[str, str], dict[str, Image.Image]],
    eval_size: int,
) -> None:
    """Per pair: each output as is, and a strip content | style | outputs at the evaluation size."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, pair in enumerate(pairs):
        base = f"{i:02d}_{stem(pair[0])}__{stem(pair[1])}"
        c = resize_longest(contents[pair[0]], eval_size)
        panels = [c, ImageOps.contain(resize_longest(styles[pair[1]], eval_size), (eval_size, c.height))]
        for method, img in outputs.get(pair, {}).items():
            img.save(folder / f"{base}_{method}.png")
            panels.append(fit_to(img, c.size))
        strip = Image.new("RGB", (sum(p.width for p in panels) + 4 * (len(panels) - 1), c.height), "white")
        x = 0
        for p in panels:
            strip.paste(p, (x, 0))
            x += p.width + 4
        strip.save(folder / f"{base}_strip.png")


# --- main ---------------------------------------------------------------------------------------------
def make_stylizer(args: argparse.Namespace, decoder: str | None) -> Stylizer:
    """No style cache: every call encodes its style, as the timings say."""
    return Stylizer(decoder, args.device, cache_size=0, backend=args.backend, precision=args.precision)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        stylizers = [make_stylizer(args, d) for d in args.decoder or [None]]
        # Loaded now: a wrong file fails here, not after the other decoders' sweeps.
        recon = load_decoder(args.interpolate)[0] if args.interpolate else None
    except NoDecoderError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    stylizer = stylizers[0]
    device = stylizer.device
    encoder = stylizer.encoder
    ours_style_size = args.style_size or args.size
    gatys_style_size = args.style_size or args.gatys_size
    run_gatys = args.gatys_pairs > 0
    smallest = min(args.size, args.eval_size, args.gatys_size if run_gatys else args.size)

    load_size = max(args.size, args.style_size or 0)
    contents = load_folder(args.content, "content", args.size, smallest)
    styles = load_folder(args.style, "style", load_size, smallest)
    if not contents or not styles:
        print(f"error: no usable images ({len(contents)} contents, {len(styles)} styles)", file=sys.stderr)
        return 1
    all_pairs = [(c, s) for c in contents for s in styles]
    pairs = all_pairs
    if 0 < args.pairs < len(all_pairs):
        pairs = sorted(random.Random(args.seed).sample(all_pairs, args.pairs))
    gatys_pairs = sorted(random.Random(args.seed + 1).sample(pairs, min(args.gatys_pairs, len(pairs))))
    floor_pairs = sorted(random.Random(args.seed + 2).sample(pairs, min(max(args.floor_pairs, 0), len(pairs))))

    ours = Method(f"AdaIN (ours), {args.size} px")
    content_m = Method("content image")
    style_m = Method("style image, fit to the content")
    gatys_m = Method(f"Gatys et al., L-BFGS {args.gatys_steps} steps, {args.gatys_size} px")
    ev = Evaluator(encoder, device, args.eval_size)
    sample_pairs = set((gatys_pairs if run_gatys else pairs)[: args.num_samples]) if args.save_samples else set()
    outputs: dict[tuple[str, str], dict[str, Image.Image]] = {}
    target_content: dict[tuple[str, str], float] = {}
    floor_from: dict[tuple[str, str], Image.Image] = {}

    # Untimed warm-up: the first call pays one-off costs (allocator, kernels).
    c0, s0 = pairs[0]
    stylizer.stylize(contents[c0], styles[s0], content_size=args.size, style_size=ours_style_size)

    for pair in tqdm(pairs, desc="ours + baselines", unit="pair", dynamic_ncols=True):
        c, s = (pair[0], contents[pair[0]]), (pair[1], styles[pair[1]])
        out, t = timed(
            lambda c=c, s=s: stylizer.stylize(c[1], s[1], content_size=args.size, style_size=ours_style_size)
        )
        ours.results[pair] = Result(*ev.losses(out, c, s), t)
        target_content[pair] = ev.target_content_loss(c, s)
        if pair in sample_pairs:
            outputs.setdefault(pair, {})["ours"] = out
        if pair in floor_pairs:
            floor_from[pair] = out
        out, t = timed(lambda c=c: resize_longest(c[1], args.size))
        content_m.results[pair] = Result(*ev.losses(out, c, s), t)
        out, t = timed(lambda c=c, s=s: ImageOps.fit(s[1], resize_longest(c[1], args.size).size))
        style_m.results[pair] = Result(*ev.losses(out, c, s), t)

    if run_gatys:
        # Untimed warm-up of the autograd path: one iteration.
        wc, ws = (to_tensor(resize_longest(img, args.gatys_size)).to(device) for img in (contents[c0], styles[s0]))
        gatys(encoder, wc, ws, 1, 1.0, 1.0, args.gatys_style_loss)
        bar = tqdm(gatys_pairs, desc="gatys", unit="pair", dynamic_ncols=True)
        for pair in bar:
            c, s = (pair[0], contents[pair[0]]), (pair[1], styles[pair[1]])
            ct = to_tensor(resize_longest(c[1], args.gatys_size)).to(device)
            st = to_tensor(resize_longest(s[1], gatys_style_size)).to(device)
            t0 = time.perf_counter()
            x = gatys(
                encoder,
                ct,
                st,
                args.gatys_steps,
                args.gatys_content_weight,
                args.gatys_style_weight,
                args.gatys_style_loss,
            )
            out = to_image(x)  # .cpu() inside: waits for the GPU
            t = time.perf_counter() - t0
            if not math.isfinite(x.sum().item()):
                warn(f"Gatys diverged on {pair}; skipped")
                continue
            gatys_m.results[pair] = Result(*ev.losses(out, c, s), t)
            if pair in sample_pairs:
                outputs.setdefault(pair, {})["gatys"] = out

    floor_rows = realisable_floor(floor_pairs, floor_from, contents, styles, ev, args.floor_steps)

    # --- report --------------------------------------------------------------------------------
    dev = str(device) + (f" ({torch.cuda.get_device_name(device)})" if stylizer.cuda else "")
    print()
    print(
        f"Decoder: {(args.decoder or ['shipped (adain/assets/decoder.pt)'])[0]}; device {dev}, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads, backend {stylizer.backend.name} "
        f"{stylizer.backend.precision}."
    )
    print(f"Data: {len(contents)} contents ({args.content}) x {len(styles)} styles ({args.style}).")
    print()
    print(
        f"Losses at a common evaluation size: every output resized to the content at {args.eval_size} px "
        f"(longest side), normalised VGG19; means over pairs."
    )
    print()
    print("| method | pairs | content loss | style loss | s/image |")
    print("|---|---:|---:|---:|---:|")
    for m in (ours, content_m, style_m):
        print(m.row(pairs))
    if run_gatys:
        suffix = " (Gatys subset)" if len(gatys_pairs) < len(pairs) else ""
        if suffix:
            for m in (ours, content_m, style_m):
                print(m.row(gatys_pairs, m.label + suffix))
        print(gatys_m.row(gatys_pairs))
    print()
    print(
        f"- content loss: MSE(relu4_1(output), relu4_1(content)); style loss: sum over relu1_1..relu4_1 of "
        f"MSE(channel means) + MSE(channel stds) against the style at {args.eval_size} px "
        "(the decoder's training style loss)."
    )
    print(
        f"- ours: alpha 1, content {args.size} px, style {ours_style_size} px, style cache off (s/image includes "
        "encoding the style); baselines: the content image, and the style image scaled and centre-cropped to it."
    )
    if run_gatys:
        style_desc = (
            "Gram-matrix loss (C x C second moments / positions)"
            if args.gatys_style_loss == "gram"
            else ("the same mean/std style loss as the evaluation")
        )
        print(
            f"- Gatys et al.: torch.optim.LBFGS (lr 1, no line search), {args.gatys_steps} iterations from the "
            f"content image, pixels clamped to [0, 1] after each; loss = {args.gatys_content_weight:g} x content "
            f"+ {args.gatys_style_weight:g} x style, style term = {style_desc}; content {args.gatys_size} px, style "
            f"{gatys_style_size} px; {len(gatys_pairs)} of the pairs, seeded (seed {args.seed})."
        )
    print(
        f"- AdaIN's own target (relu4_1 of the content with the style's channel means and stds), against the "
        f"content: {statistics.fmean(target_content[p] for p in pairs):.4g} on the same pairs; an exact decoder "
        "would score that content loss at alpha 1, so ours minus it is the decoder's error."
    )
    if len(pairs) < len(all_pairs):
        print(f"- ours and baselines: a seeded subset of {len(pairs)} of the {len(all_pairs)} pairs.")
    if floor_rows:
        print()
        print(f"Does the decoder or the target limit the content loss? {len(floor_pairs)} of the pairs, seeded, "
              f"at {args.eval_size} px:")
        print()
        print("| image | to the AdaIN target | content loss | style loss |")
        print("|---|---:|---:|---:|")
        for label, keys in floor_rows:
            print(f"| {label} | " + " | ".join("–" if k is None else f"{k:.4g}" for k in keys) + " |")

    if args.sweep:
        decoders = [("shipped", stylizer if args.decoder is None else make_stylizer(args, None))]
        for path, st in zip(args.decoder or [], stylizers):
            decoders.append((f"candidate ({path})", st))
        with tempfile.TemporaryDirectory() as tmp:
            if recon is not None:
                at = interpolated(recon, str(args.interpolate), Path(tmp), lambda path: make_stylizer(args, path))
                decoders.append((f"interpolated (shipped <-> {args.interpolate})", at))
            rows = alpha_sweep(decoders, pairs, contents, styles, ev, args.size, ours_style_size)
        print()
        print(f"Alpha sweep, {len(pairs)} pairs, content {args.size} px (losses as above; PSNR and SSIM at alpha 0, "
              f"against the content at {args.size} px, the size it was stylized at):")
        print()
        print_sweep(rows)
        print(f"- coarse: 8 x 8 means (tone and colour); detail: what is above them. The contents' coarse images "
              f"alone score {detail_floor(pairs, contents, args.size):.2f} dB: an output with the tone exactly "
              "right and no detail would score that.")

    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        with open(args.csv, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["content", "style", "method", "content_loss", "style_loss", "seconds"])
            for key, m in (("ours", ours), ("content", content_m), ("style", style_m), ("gatys", gatys_m)):
                for (c, s), r in sorted(m.results.items()):
                    w.writerow([c, s, key, f"{r.content:.6g}", f"{r.style:.6g}", f"{r.seconds:.4g}"])
        print(f"\nper-pair results: {args.csv}")
    if args.save_samples:
        save_samples(args.save_samples, sorted(sample_pairs), contents, styles, outputs, args.eval_size)
        print(f"samples: {args.save_samples}")
        if args.save_samples.resolve().is_relative_to(REPO):
            warn(f"{args.save_samples} is inside the repository: do not commit samples made from real images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
