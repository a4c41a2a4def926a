"""Train the AdaIN decoder (Huang & Belongie, 2017) against the frozen, normalised VGG19 encoder.

    adain-train --content DIR --style DIR --out runs/x [--steps 160000] [--resume]
    torchrun --nproc_per_node N -m adain.train --content DIR --style DIR --out runs/x
    adain-train export runs/x/checkpoint.pt adain/assets/decoder.pt --data "what it was trained on"
    adain-train ... --export runs/x/decoder.pt     (the same file at the run's end, in the same process)

loss = content + style_weight * style (+ recon terms), where content is the MSE between relu4_1 of the
output and the target, and style sums, over relu1_1..relu4_1, the MSE of channel means plus that of
channel stds.

Each sample gets an alpha (``--alpha-zero`` of them 0, ``--alpha-one`` of them 1, the rest uniform in
(0, 1)); its target is alpha * AdaIN(content, style) + (1 - alpha) * content features, as at inference,
and its style term is weighted by alpha. At alpha 0 the output should be the photo itself: samples at 0
add ``--recon-weight`` x the pixel MSE to the content and ``--recon-feature-weight`` x the MSE of
relu1_1..relu3_1 to the content's; ``--recon-scale`` gives them the same photos at another scale (1: the
photos' own detail, which a 2x upscale lacks; in the CPU A/B it cost alpha 1's style all the same). The
defaults (every sample at alpha 1, no recon) are the paper's.

``--detail`` grows the decoder's detail path (architecture 3, ``adain.detail``: branches that see the
content image, exactly zero at alpha 1) and trains it alone, the decoder it grew from frozen: alpha 1
stays that decoder's bit for bit while alpha 0 learns to give back the photo.

``--teacher`` keeps alpha 1 where a decoder file already has it while the other alphas are learnt: samples
at alpha 1 add ``--teacher-weight`` x the pixel MSE to that decoder's output for the same target
("learning without forgetting", Li & Hoiem, 2016). The GPU rounds without it gained ~4 dB at alpha 0
but lost 20-55% of alpha 1's style loss to the reconstruction terms.

``--cooldown N`` takes the lr linearly down to 0 over the last N steps before ``--steps`` and ``--ema D``
keeps a moving average of the weights, which ``export`` writes: the end of a budgeted run (Li, Yumer &
Ramanan, "Budgeted Training", ICLR 2020), where a decaying lr leaves the loss on a plateau.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import logging.handlers
import math
import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from adain.argtypes import OneLineParser, int_in_range
from adain.commands import add_version_arg
from adain.decoder import Decoder, load_decoder, save_decoder
from adain.encoder import Encoder
from adain.errors import one_line
from adain.files import saved_whole
from adain.image import to_image
from adain.logs import TextFormatter
from adain.ops import adain, mean_std, style_loss
from adain.precision import TRAIN_PRECISIONS, wants_bf16
from adain.train.data import ImageFolder, InfiniteSampler, NoReadableImage, has_images

log = logging.getLogger("adain.train")
# Settings a resumed run may change: logged on every line and stored in the exported decoder's metadata.
LOGGED_KNOBS = (
    "style_weight", "alpha_zero", "alpha_one", "recon_weight", "recon_feature_weight", "content_scale", "recon_scale",
    "teacher_weight",
)
# What a resumed run compares with its checkpoint's, saying what moved (it goes on with the new command line's: a
# resume without --cooldown or --ema dropped them without a word, and the lr jumped back up)
RESUMED_KNOBS = (*LOGGED_KNOBS, "lr", "lr_decay", "cooldown", "ema", "batch_size", "crop", "style_crop",
                 "content_weight", "precision", "steps", "detail", "alpha_input")


class _Help(argparse.RawDescriptionHelpFormatter):
    """The description as written, and each flag's default where its help does not say it (ten did not)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        unsaid = action.default is None or action.default is False or action.default in ("", argparse.SUPPRESS)
        if "default" in text or not action.option_strings or unsaid:
            return text
        return f"{text} (default {action.default})"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = OneLineParser(prog="adain-train", description=__doc__, formatter_class=_Help)
    add_version_arg(p, "adain-train")
    p.add_argument("--content", type=Path, required=True, help="folder of content photos (recursive)")
    p.add_argument("--style", type=Path, required=True, help="folder of style images (recursive)")
    p.add_argument("--out", type=Path, default=Path("runs/decoder"), help="checkpoint, log and samples go here")
    p.add_argument("--steps", type=int_in_range(1), default=160_000, help="train until this many steps in all "
                   "(default 160000, the paper's)")
    p.add_argument("--batch-size", type=int_in_range(1), default=8, help="images per step and process (default 8)")
    p.add_argument("--crop", type=int, default=256, help="random crop size (pixels)")
    p.add_argument("--style-crop", type=int, default=None,
                   help="the style images' crop size (default: --crop): a larger content crop (AdaIN's statistics "
                   "over more of the photo, as a whole image's at inference) need not blow up 224-px paintings")
    p.add_argument("--content-scale", type=float, default=1.0,
                   help="upscale content photos by this before cropping (2: objects at the size a 512-px "
                   "stylization shows them when the photos are ~256 px)")
    p.add_argument("--recon-scale", type=float, default=None,
                   help="the content scale of the samples at alpha 0 (default: --content-scale); 1 keeps the "
                   "photos' own detail for the reconstruction while the other samples train at 2")
    p.add_argument("--lr", type=float, default=1e-4, help="Adam's learning rate at step 0")
    p.add_argument("--lr-decay", type=float, default=5e-5, help="lr / (1 + lr_decay * step)")
    p.add_argument("--cooldown", type=int, default=0,
                   help="over the last N steps before --steps, take the lr linearly down to 0")
    p.add_argument("--cooldown-minutes", type=float, default=0,
                   help="the same by the clock: over the last M minutes of --max-minutes (a budgeted run whose "
                   "step rate is not known in advance, as a compiled one on a lent GPU)")
    p.add_argument("--ema", type=float, default=0.0,
                   help="keep an exponential moving average of the weights with this decay (e.g. 0.999); "
                   "export writes it instead of the last step's weights")
    p.add_argument("--style-weight", type=float, default=10.0, help="the style loss's weight")
    p.add_argument("--content-weight", type=float, default=1.0, help="the content loss's weight")
    p.add_argument("--alpha-zero", type=float, default=0.0, help="share of samples trained at alpha 0 (reconstruction)")
    p.add_argument("--alpha-one", type=float, default=1.0,
                   help="share of samples at alpha 1; the rest draw alpha uniformly in (0, 1)")
    p.add_argument("--recon-weight", type=float, default=0.0, help="pixel MSE to the content, for samples at alpha 0")
    p.add_argument("--recon-feature-weight", type=float, default=0.0,
                   help="MSE of relu1_1..relu3_1 to the content's, for samples at alpha 0")
    p.add_argument("--teacher", type=Path, default=None,
                   help="decoder file whose alpha-1 outputs the samples at alpha 1 are pulled towards "
                   "(e.g. adain/assets/decoder.pt), so that learning the other alphas does not lose its style")
    p.add_argument("--teacher-weight", type=float, default=0.0,
                   help="pixel MSE to the --teacher's output, for samples at alpha 1")
    p.add_argument("--alpha-input", action="store_true",
                   help="decoder architecture 2: alpha is an input too (a v1 --init gains the channel, zero weights; "
                   "without it a v2/v3 --init's unused channel is dropped)")
    p.add_argument("--detail", action="store_true",
                   help="decoder architecture 3: grow the detail path (implies --alpha-input) and train it alone, "
                   "the rest frozen, so alpha 1 keeps the --init decoder's outputs exactly")
    p.add_argument("--init", type=Path, default=None,
                   help="start from this decoder file's weights (e.g. adain/assets/decoder.pt) instead of random; "
                   "a --resume with a checkpoint ignores it")
    p.add_argument("--workers", type=int_in_range(0), default=2, help="DataLoader workers per process (default 2)")
    p.add_argument("--seed", type=int, default=0, help="seeds the crops, the order and the weights' start")
    p.add_argument("--save-every", type=int_in_range(1), default=500, help="checkpoint every N steps (and on exit)")
    p.add_argument("--log-every", type=int_in_range(1), default=10, help="JSONL loss record every N steps")
    p.add_argument("--sample-every", type=int_in_range(1), default=500,
                   help="sample grid and loss plot every N steps")
    p.add_argument("--max-minutes", type=float, default=0, help="stop (and checkpoint) after this long; 0 = no limit")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--export", type=Path, default=None,
                   help="at the run's end (its steps, --max-minutes or SIGTERM; not after an error), also write its "
                   "decoder file here: fp16, the --ema average where there is one, as `adain-train export` does")
    p.add_argument("--export-data", default="", help="with --export: what the decoder was trained on (metadata)")
    p.add_argument("--export-note", default="", help="with --export: free text for the metadata")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when present)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the encoder and decoder (inductor: the pads, ReLUs and upsamples fused; the "
                   "forward pass ran 3-5x faster on an H200); its first step compiles (a minute or so), and a compile "
                   "that fails is logged and the run goes on eager")
    p.add_argument(
        "--precision",
        choices=TRAIN_PRECISIONS,
        default="auto",
        help="autocast dtype; auto = bf16 on GPU, fp32 on CPU (bf16 also pays on CPUs with AVX512-BF16 or AMX)",
    )
    args = p.parse_args(argv)
    for flag, folder in (("--content", args.content), ("--style", args.style)):  # (a traceback, an empty --out)
        if not folder.is_dir():
            p.error(f"{flag} {folder}: " + ("not a folder" if folder.exists() else "no such folder"))
        if not has_images(folder):
            p.error(f"{flag} {folder}: no jpg, png or webp images in it or its subfolders")
    shares = (args.alpha_zero, args.alpha_one)
    if not all(0 <= x <= 1 for x in shares) or sum(shares) > 1:
        p.error(f"--alpha-zero and --alpha-one must be in [0, 1] with a sum <= 1, got {shares}")
    if args.recon_scale is None:
        args.recon_scale = args.content_scale
    if args.style_crop is None:
        args.style_crop = args.crop
    if args.crop < 1 or args.style_crop < 1:
        p.error(f"--crop and --style-crop must be >= 1 pixel, got {args.crop}, {args.style_crop}")
    if not (args.content_scale > 0 and args.recon_scale > 0):
        p.error(f"--content-scale and --recon-scale must be > 0, got {args.content_scale}, {args.recon_scale}")
    if args.recon_weight < 0 or args.recon_feature_weight < 0 or args.teacher_weight < 0:
        p.error("--recon-weight, --recon-feature-weight and --teacher-weight must be >= 0")
    if (args.teacher is None) != (args.teacher_weight == 0):
        p.error("--teacher and a --teacher-weight above 0 go together")
    if args.cooldown < 0 or not 0 <= args.ema < 1:
        p.error(f"--cooldown must be >= 0 and --ema in [0, 1), got {args.cooldown}, {args.ema}")
    if not 0 <= args.cooldown_minutes <= args.max_minutes:  # no --max-minutes (0): none
        p.error(f"--cooldown-minutes needs --max-minutes and at most its length, got {args.cooldown_minutes} "
                f"of {args.max_minutes}")
    if args.detail and args.init is None and not args.resume:
        p.error("--detail grows a trained decoder: give it --init (e.g. adain/assets/decoder.pt)")
    if args.detail and args.alpha_one >= 1:  # the path is zero at alpha 1: such a batch has nothing to learn
        p.error("--detail trains what alpha below 1 does: give --alpha-one under 1 (the shipped recipe: 0)")
    checkpoint = args.out / "checkpoint.pt"
    if args.resume and not checkpoint.exists():  # a mistyped --out started afresh (with --detail: on random convs)
        p.error(f"--resume: no checkpoint at {checkpoint}")
    if not args.resume and checkpoint.exists():  # started afresh there, it emptied the log and overwrote the run
        p.error(f"{checkpoint} exists: continue it with --resume, or give another --out")
    if args.export is None and (args.export_data or args.export_note):
        p.error("--export-data and --export-note go with --export FILE")
    if args.export is not None:  # found at parse time, not after the whole run
        taken = {args.out / "checkpoint.pt": "the run's checkpoint", args.init: "--init"}
        clash = next((what for path, what in taken.items() if path is not None and same_file(args.export, path)), None)
        if args.export.is_dir() or clash:
            p.error(f"--export {args.export} is {clash or 'a folder'}: give the decoder file's own path")
    args.alpha_input = args.alpha_input or args.detail
    return args


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file (either may not exist yet)."""
    return a.resolve() == b.resolve()


def _worker_start(logs: Any, worker_id: int) -> None:
    """A data worker's start. Ctrl-C and SIGTERM often reach the whole process group; only the main process should
    get them (it finishes the step and checkpoints; a worker that died of them would break that). So a worker
    leaves the group rather than ignoring the signals: the DataLoader stops a worker that is slow to
    exit with SIGTERM, and multiprocessing joins it at exit without a timeout, so a worker that
    ignored SIGTERM hung the exit for good once it was busy when the run ended. Its log records go to the main
    process (``logs``, a queue: :class:`_Relay`), whose lines go above the progress bar: a worker's own, written
    beside the bar, was glued to its line (a review's)."""
    os.setpgrp()
    logging.getLogger().handlers = [logging.handlers.QueueHandler(logs)]


class _Relay(logging.Handler):
    """The data workers' records, handled in the main process as its own (through its handlers as they are then)."""

    def emit(self, record: logging.LogRecord) -> None:
        logging.getLogger(record.name).handle(record)


_worker_logs: Any = None  # (the queue, and its listener started once a process)


def _workers_logs() -> Any:
    global _worker_logs
    if _worker_logs is None:
        _worker_logs = torch.multiprocessing.Queue()
        logging.handlers.QueueListener(_worker_logs, _Relay()).start()  # (a daemon thread: ends with the process)
    return _worker_logs


class Trainer:
    """One process of a (possibly distributed) run; rank 0 writes checkpoints, logs and samples."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        want_cuda = args.device == "cuda" or (args.device is None and torch.cuda.is_available())
        if self.world > 1:
            dist.init_process_group("nccl" if want_cuda else "gloo")
        if want_cuda:
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            self.device = torch.device("cuda", local)
        else:
            self.device = torch.device("cpu")
        self.cuda = self.device.type == "cuda"
        if self.cuda:
            torch.backends.cudnn.benchmark = True  # fixed crop size: time cuDNN's algorithms once, keep the best
        self.main = self.rank == 0
        self.bf16 = wants_bf16(args.precision, self.cuda)
        try:
            args.out.mkdir(parents=True, exist_ok=True)
        except OSError as e:  # a read-only folder, a file on the way: a traceback before
            raise CheckpointError(f"--out {args.out}: cannot make the run's folder: {e.strerror}") from None

        random.seed(args.seed + self.rank)
        torch.manual_seed(args.seed)  # same decoder init on every rank
        # channels_last pays on the CPU too (oneDNN): a bf16 step at batch 8, 128 px, 1.51 -> 1.32 s here.
        self.encoder = Encoder().to(self.device, memory_format=torch.channels_last)
        self.decoder = Decoder(alpha_input=args.alpha_input, detail=args.detail)
        self.decoder.to(self.device, memory_format=torch.channels_last)
        if args.detail:  # the detail path alone learns; the decoder it grows on keeps alpha 1
            self.decoder.convs.requires_grad_(False)
        self.opt = torch.optim.Adam([p for p in self.decoder.parameters() if p.requires_grad], lr=args.lr)
        self.step = 0
        self.remaining = math.inf  # seconds left of --max-minutes, as the ranks agree on it (run() sets it)
        self.last_losses: dict[str, float] = {}
        self.init_meta: dict[str, Any] = {}
        self.ema: dict[str, torch.Tensor] | None = None
        self.ckpt_path = args.out / "checkpoint.pt"
        self.save_failed = False
        if args.resume and self.ckpt_path.exists():
            self._load(self.ckpt_path)
        elif args.init is not None:
            weights, init_file = load_decoder(args.init)
            if args.detail:
                weights = weights.with_detail()
            else:
                if weights.detail is not None and self.main:
                    log.info("--init has a detail path: training the decoder under it, without it (grow it "
                             "again on the result with --detail)")
                weights = weights.without_detail()
                if args.alpha_input:
                    weights = weights.with_alpha_input()
                else:  # the paper's decoder: an unused alpha channel (a v3's, zero) is dropped, not trained
                    try:
                        weights = weights.without_alpha_input()
                    except ValueError as e:
                        raise SystemExit(f"adain-train: --init {args.init}: {e}; pass --alpha-input to train "
                                         "it as a version 2") from e
            self.decoder.load_state_dict(weights.state_dict())
            self.init_meta = {
                "file": str(args.init),
                "version": init_file.version,
                "steps": init_file.meta.get("steps"),
            }

            if self.main:
                log.info("starting from the weights of %s (%s)", args.init, init_file.version)
        self.model = DistributedDataParallel(self.decoder) if self.world > 1 else self.decoder
        # what the step calls: compiled with --compile (checkpoints save the modules themselves, unprefixed).
        # Static shapes: with --style-crop the encoder sees two sizes, and the second would otherwise be compiled for
        # dynamic shapes, which ran slower than eager on an H200 (round 4, the server's first compiled backend)
        self.encode: Any = torch.compile(self.encoder, dynamic=False) if args.compile else self.encoder
        self.forward: Any = torch.compile(self.model, dynamic=False) if args.compile else self.model
        if args.ema == 0:
            self.ema = None
        elif self.ema is None:  # the average starts at the weights the run starts from (a trained --init)
            self.ema = self._weights()
        self.teacher: Decoder | None = None
        self.teacher_meta: dict[str, str] | None = None
        if args.teacher is not None:
            teacher, teacher_file = load_decoder(args.teacher)
            self.teacher = teacher.to(self.device, memory_format=torch.channels_last).eval().requires_grad_(False)
            self.teacher_meta = {"file": str(args.teacher), "version": teacher_file.version}

        start = self.step * args.batch_size  # draws already consumed by this rank
        self.content = self._loader(args.content, args.seed, start, args.content_scale)
        # The same draws (same photos) at the alpha-0 samples' scale, where that differs.
        same = args.recon_scale == args.content_scale
        self.sharp = None if same else self._loader(args.content, args.seed, start, args.recon_scale)
        self.style = self._loader(args.style, args.seed + 1, start, crop=args.style_crop)

    def _weights(self) -> dict[str, torch.Tensor]:
        """A float32 copy of the decoder's weights, on its device: the average is updated every step, so it
        stays where the weights are (no copy to the host per step on a GPU)."""
        return {k: v.detach().float().clone() for k, v in self.decoder.state_dict().items()}

    def _update_ema(self) -> None:
        if self.ema is None:
            return
        decay = self.args.ema
        if not self.init_meta:  # random weights at the start: they leave the average within a few steps (a warm-up,
            decay = min(decay, (1 + self.step) / (10 + self.step))  # as timm's); at 0.999 they were 14% of it at 2k
        new = self.decoder.state_dict()
        for k, avg in self.ema.items():
            avg.lerp_(new[k].detach().float(), 1.0 - decay)

    def lr_at(self, step: int) -> float:
        a = self.args
        lr = a.lr / (1.0 + a.lr_decay * step)
        if a.cooldown > 0:
            lr *= min(1.0, (a.steps - step) / a.cooldown)
        if a.cooldown_minutes > 0:
            lr *= min(1.0, max(0.0, self.remaining) / (a.cooldown_minutes * 60))
        return lr

    def _loader(self, folder: Path, seed: int, start: int, scale: float = 1.0, crop: int | None = None) -> Any:
        ds = ImageFolder(folder, crop=crop or self.args.crop, seed=seed, rescale=(0.8 * scale, 1.25 * scale))
        dl = DataLoader(
            ds,
            batch_size=self.args.batch_size,
            sampler=InfiniteSampler(start, self.rank, self.world),
            num_workers=self.args.workers,
            pin_memory=self.cuda,
            drop_last=True,
            persistent_workers=self.args.workers > 0,
            worker_init_fn=functools.partial(_worker_start, _workers_logs()) if self.args.workers > 0 else None,
        )
        return iter(dl)

    # --- checkpoints -------------------------------------------------------------------------
    def _save(self) -> None:
        if not self.main:
            return
        state = {
            "decoder": self.decoder.state_dict(),
            "optimizer": self.opt.state_dict(),
            "step": self.step,
            "losses": self.last_losses,
            "init": self.init_meta,
            "teacher": self.teacher_meta,
            "ema": None if self.ema is None else {k: v.cpu() for k, v in self.ema.items()},
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(self.args).items()},
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if self.cuda else [],
                "python": random.getstate(),
                "numpy": np.random.get_state(),
            },
        }
        try:  # atomic: a crash mid-write never leaves a broken checkpoint, and a failed write keeps the last one
            saved_whole(lambda tmp: torch.save(state, tmp), self.ckpt_path)
        except OSError as e:
            self.save_failed = True  # (not tried again as the run ends: the same error, and the first hidden)
            raise CheckpointError(f"{e.filename}: {e.strerror}; the last checkpoint written is kept") from None

    def _finite(self) -> bool:
        """Whether every weight (and the average) is finite: checked before a checkpoint takes the last one's place."""
        tensors = [*self.decoder.parameters(), *(self.ema or {}).values()]
        return all(bool(torch.isfinite(t).all()) for t in tensors)

    def _load(self, path: Path) -> None:
        state = torch.load(path, map_location="cpu", weights_only=False)
        self.decoder.load_state_dict(state["decoder"])
        self.opt.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self.last_losses = state.get("losses", {})
        self.init_meta = state.get("init", {})
        saved = state.get("args", {})
        now = {k: str(v) if isinstance(v, Path) else v for k, v in vars(self.args).items()}
        changed = [f"--{k.replace('_', '-')} {saved[k]} -> {now[k]}" for k in RESUMED_KNOBS
                   if k in saved and k in now and saved[k] != now[k]]
        if changed and self.main:  # a resume takes this command line's settings: say what moved
            log.warning("resumed with other settings than the checkpoint's run: %s", "; ".join(changed))
        ema = state.get("ema")
        self.ema = None if ema is None else {k: v.to(self.device) for k, v in ema.items()}
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        if self.cuda and rng["cuda"]:
            torch.cuda.set_rng_state_all(rng["cuda"])
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        if self.main:
            log.info("resumed from %s at step %d", path, self.step)

    # --- one step ----------------------------------------------------------------------------
    def _batch(self, it: Any) -> torch.Tensor:
        return next(it).to(self.device, memory_format=torch.channels_last, non_blocking=True)

    def alphas(self, n: int) -> torch.Tensor:
        """This step's alpha per sample, from a generator seeded by (seed, step, rank): a resumed run
        draws what the uninterrupted one would have."""
        a = self.args
        g = torch.Generator().manual_seed(a.seed * 1_000_003 + self.step * self.world + self.rank)
        u, v = torch.rand(n, generator=g), torch.rand(n, generator=g)
        alpha = torch.where(u < a.alpha_zero, 0.0, torch.where(u < a.alpha_zero + a.alpha_one, 1.0, v))
        if a.detail and bool((alpha == 1).all()):  # nothing in the loss would need a gradient: backward failed
            alpha[-1] = v[-1]  # (and a resumed run drew the same batch, and failed there again)
        return alpha

    def train_step(self) -> dict[str, float]:
        args = self.args
        for group in self.opt.param_groups:
            group["lr"] = self.lr_at(self.step)
        content, style = self._batch(self.content), self._batch(self.style)
        drawn = self.alphas(content.shape[0])
        alpha = drawn.to(self.device)
        # the decoder is told a number where every alpha is 1 (known here, on the host): it then reads nothing
        # back from the device to skip its detail path
        decoder_alpha: torch.Tensor | float = 1.0 if bool((drawn == 1).all()) else alpha
        at_zero = (alpha == 0).float()
        a4 = alpha.view(-1, 1, 1, 1)
        if self.sharp is not None:
            content = torch.where(a4 == 0, self._batch(self.sharp), content)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            with torch.no_grad():
                c_feats = self.encode(content)
                c4 = c_feats.relu4_1
                s_feats = self.encode(style)
                s_mean, s_std = mean_std(s_feats.relu4_1)
                target = (a4 * adain(c4, s_mean, s_std).float() + (1 - a4) * c4.float()).to(c4.dtype)
            out = self.forward(target, decoder_alpha, content)  # the content: what a detail path reads (others ignore)
            o_feats = self.encode(out)
            loss_c = F.mse_loss(o_feats.relu4_1.float(), target.float())
            loss_s = style_loss(o_feats, s_feats, weights=alpha)
            loss = args.content_weight * loss_c + args.style_weight * loss_s
            losses = {"content": loss_c, "style": loss_s}
            if args.recon_weight > 0:
                per = ((out.float() - content.float()) ** 2).mean(dim=(1, 2, 3))
                losses["recon"] = (per * at_zero).mean()
                loss = loss + args.recon_weight * losses["recon"]
            if args.recon_feature_weight > 0:
                per = sum(((o.float() - c.float()) ** 2).mean(dim=(1, 2, 3)) for o, c in zip(o_feats[:3], c_feats[:3]))
                losses["recon_features"] = (per * at_zero).mean()
                loss = loss + args.recon_feature_weight * losses["recon_features"]
            if self.teacher is not None:
                at_one = alpha == 1
                with torch.no_grad():  # only the samples it applies to (half the batch at --alpha-one 0.5)
                    taught = self.teacher(target[at_one], 1.0, content[at_one])  # a version 3 needs the photo
                per = ((out[at_one].float() - taught.float()) ** 2).mean(dim=(1, 2, 3))
                losses["teacher"] = per.sum() / out.shape[0]
                loss = loss + args.teacher_weight * losses["teacher"]
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self._update_ema()
        self._last_batch = (content, style, out)
        return {"loss": loss.item(), **{k: v.item() for k, v in losses.items()}}

    def _first_step(self) -> dict[str, float]:
        """The first compiled step; a compile that fails (no compiler, an op inductor cannot lower) costs the
        run its speed, not the run: it goes on eager."""
        try:
            return self.train_step()
        except Exception as e:  # noqa: BLE001 (torch's compile errors have no one base class)
            if self.main:
                log.warning("torch.compile failed (%s: %s): training eager", type(e).__name__, str(e)[:300])
            self.encode, self.forward = self.encoder, self.model
            return self.train_step()

    # --- outputs people look at --------------------------------------------------------------
    def _write_samples(self) -> None:
        content, style, out = (t[:4].detach().float().cpu() for t in self._last_batch)
        if style.shape[2:] != content.shape[2:]:  # --style-crop: shown at the content's size, in one row each
            style = F.interpolate(style, size=content.shape[2:], mode="bilinear", align_corners=False)
        rows = torch.cat([torch.cat(list(t), dim=2) for t in (content, style, out.clamp(0, 1))], dim=1)
        (self.args.out / "samples").mkdir(exist_ok=True)
        to_image(rows).save(self.args.out / "samples" / f"step_{self.step:07d}.png")
        plot_losses(self.args.out / "log.jsonl", self.args.out / "loss.png")

    def _open_log(self) -> Any:
        """The JSONL log for appending, without lines past the checkpoint's step.

        A run killed between a log line and the next checkpoint leaves lines that the resumed run
        will write again; dropping them keeps one line per step in the log and the loss plot.
        """
        path = self.args.out / "log.jsonl"
        if path.exists():
            lines = path.read_text().splitlines(keepends=True)
            kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= self.step]
            if len(kept) != len(lines):
                path.write_text("".join(kept))
        return path.open("a")

    def run(self) -> None:
        args = self.args
        deadline = time.monotonic() + args.max_minutes * 60 if args.max_minutes > 0 else math.inf
        stop = {"flag": False}

        def on_term(signum: int, frame: Any) -> None:  # SIGTERM, Ctrl-C: finish the step, checkpoint, exit
            stop["flag"] = True
            if signum == signal.SIGINT:  # a second Ctrl-C interrupts at once
                signal.signal(signal.SIGINT, signal.default_int_handler)

        def stopping() -> bool:
            """Whether to stop before the next step: decided together under torchrun (each rank's own clock
            and signal let one start a step the others never joined: a crash with gloo, NCCL's 10-minute
            timeout with NCCL)."""
            left = deadline - time.monotonic()
            local = stop["flag"] or left <= 0
            if self.world == 1:
                self.remaining = left
                return local
            # the time left too, the least of the ranks': a clock cool-down's lr must be the same on every rank
            flag = torch.tensor([float(local), -min(left, 1e9)], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            self.remaining = -flag[1].item()
            return bool(flag[0].item())

        previous = signal.signal(signal.SIGTERM, on_term)
        previous_int = signal.signal(signal.SIGINT, on_term)
        bar = tqdm(total=args.steps, initial=self.step, disable=not self.main, unit="step", dynamic_ncols=True)
        logf = self._open_log() if self.main else None
        sums: dict[str, float] = {}
        n = 0
        diverged = False
        try:
            while self.step < args.steps and not stopping():
                losses = self._first_step() if n == 0 and self.encode is not self.encoder else self.train_step()
                if not all(math.isfinite(v) for v in losses.values()):
                    diverged = True  # this step's update made the weights non-finite: the last checkpoint stays
                    raise FloatingPointError(f"non-finite loss at step {self.step}: {losses}")
                self.step += 1
                n += 1
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + v
                bar.update(1)
                bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items()})
                if self.step % args.log_every == 0 and logf:
                    self.last_losses = {k: v / n for k, v in sums.items()}
                    lr = self.opt.param_groups[0]["lr"]
                    logf.write(
                        json.dumps(
                            {
                                "step": self.step,
                                "time": time.time(),
                                "lr": lr,
                                **{k: getattr(args, k) for k in LOGGED_KNOBS},
                                **self.last_losses,
                            }
                        )
                        + "\n"
                    )
                    logf.flush()
                    sums, n = {}, 0
                if self.step % args.sample_every == 0 and self.main:
                    self._write_samples()
                if self.step % args.save_every == 0:
                    self._save()
        except KeyboardInterrupt:
            if self.main:
                log.warning("interrupted at step %d: saving checkpoint", self.step)
        finally:
            if n:  # the losses of the steps since the last log line
                self.last_losses = {k: v / n for k, v in sums.items()}
            # a checkpoint of non-finite weights took the place of the last good one (under torchrun another rank's
            # NaN gradients reach these weights through the all-reduce while this rank's loss looked fine)
            if not diverged and not self.save_failed and self._finite():
                self._save()
            elif not diverged and self.main:  # said: an --export then writes the last checkpoint's weights
                log.error("non-finite weights at step %d: the checkpoint was not updated", self.step)
            # Stop the DataLoader workers now: left to garbage collection, they may outlive the
            # interpreter's shutdown, where torch skips its orderly stop of them.
            self.content = self.style = self.sharp = None
            bar.close()
            if logf:
                logf.close()
            if self.world > 1 and dist.is_initialized():
                dist.destroy_process_group()
            signal.signal(signal.SIGTERM, previous)  # what follows (an --export) stops at a SIGTERM
            signal.signal(signal.SIGINT, previous_int)
        if stop["flag"] and self.main and self.step < args.steps:  # (it ended with the bar alone, exit 0)
            log.warning("stopped at step %d of %d by a signal: checkpoint saved; --resume continues it", self.step,
                        args.steps)


def plot_losses(log_path: Path, png: Path) -> None:
    """Loss curves (total, content, style, and the recon terms where on) from the JSONL log, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    for key in ("loss", "content", "style", "recon", "recon_features", "teacher"):
        have = [r for r in rows if key in r]  # the recon terms only where a run had them on
        if have:
            ax.plot([r["step"] for r in have], [r[key] for r in have], label=key)
    # A resumed run may change the style weight; the total loss then jumps, so mark where
    # (labels stepped down one line each, so that close changes do not print over each other).
    changes = [
        (prev, row)
        for prev, row in zip(rows, rows[1:])
        if "style_weight" in prev and "style_weight" in row and prev["style_weight"] != row["style_weight"]
    ]
    for k, (prev, row) in enumerate(changes):
        ax.axvline(row["step"], color="grey", linestyle="--", linewidth=1)
        ax.annotate(
            f"style weight {prev['style_weight']:g} -> {row['style_weight']:g}",
            (row["step"], 1),
            xycoords=("data", "axes fraction"),
            xytext=(4, -12 - 11 * k),
            textcoords="offset points",
            fontsize=8,
            color="grey",
        )
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (log scale)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


class CheckpointError(Exception):
    """The run's folder or a checkpoint that cannot be written (a full disk, a read-only folder): said in one line."""


class ExportError(Exception):
    """A checkpoint that cannot be exported, or an output it cannot go to; the message says which and why."""


def export_checkpoint(checkpoint: Path, output: Path, data: str = "", note: str = "", half: bool = True,
                      raw: bool = False) -> None:
    """Checkpoint -> the product's decoder file with its metadata record. Raises ExportError."""
    if output.is_dir():
        raise ExportError(f"{output} is a folder: give the decoder file's own path")
    if output.exists() and same_file(output, checkpoint):  # it overwrote the run's checkpoint (no --resume after)
        raise ExportError(f"{output} is the checkpoint itself: give the decoder file's own path")
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise ExportError(f"{checkpoint}: no such file") from None
    except Exception as e:  # noqa: BLE001 - a truncated zip, an empty or a text file: torch's many ways to say it
        why = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
        raise ExportError(f"{checkpoint}: not a readable checkpoint ({why})") from None
    if not isinstance(state, dict) or "decoder" not in state or "step" not in state:
        kind = "a decoder file (export takes the run's checkpoint.pt)" if isinstance(state, dict) and "state_dict" \
            in state else "no training checkpoint"
        raise ExportError(f"{checkpoint}: {kind}")
    targs = state.get("args", {})
    decoder = Decoder(alpha_input=bool(targs.get("alpha_input")), detail=bool(targs.get("detail")))
    ema = state.get("ema") if not raw else None
    decoder.load_state_dict(ema if ema is not None else state["decoder"])
    meta = {
        "data": data or f"content={targs.get('content')} style={targs.get('style')}",
        "steps": int(state["step"]),
        "batch_size": targs.get("batch_size"),
        "crop": targs.get("crop"),
        "style_crop": targs.get("style_crop", targs.get("crop")),
        "detail": bool(targs.get("detail")),  # the detail path grown and trained alone (architecture 3)
        "cooldown": targs.get("cooldown", 0),
        "cooldown_minutes": targs.get("cooldown_minutes", 0),
        "lr": targs.get("lr"), "lr_decay": targs.get("lr_decay"),  # with the cool-downs, what a run's lr was
        "ema": targs.get("ema", 0.0) if ema is not None else None,  # None: the last step's weights
        **{k: targs.get(k) for k in LOGGED_KNOBS if k in targs},
        "init": state.get("init") or None,
        "teacher": state.get("teacher"),
        "final_losses": {k: round(float(v), 5) for k, v in state.get("losses", {}).items()},
        "note": note,
        "exported": time.strftime("%Y-%m-%d"),
    }
    save_decoder(decoder, output, meta, half=half)
    load_decoder(output)  # refuse to leave behind a file the Stylizer would not load
    print(f"wrote {output} ({output.stat().st_size / 1e6:.1f} MB): {json.dumps(meta)}", flush=True)


def export(argv: list[str] | None = None) -> None:
    """Checkpoint -> the product's decoder file (fp16) with its metadata record."""
    p = OneLineParser(prog="adain-train export", description=export.__doc__)
    p.add_argument("checkpoint", type=Path)
    p.add_argument("output", type=Path)
    p.add_argument("--data", default="", help="what the decoder was trained on (goes into the metadata)")
    p.add_argument("--note", default="", help="free text for the metadata, e.g. 'CPU interim decoder'")
    p.add_argument("--fp32", action="store_true", help="keep float32 (default: fp16, half the size)")
    p.add_argument("--raw", action="store_true", help="the last step's weights, not the --ema average")
    args = p.parse_args(argv)
    try:
        export_checkpoint(args.checkpoint, args.output, args.data, args.note, half=not args.fp32, raw=args.raw)
    except ExportError as e:
        p.exit(1, f"adain-train export: error: {e}\n")
    except OSError as e:  # the decoder file not written (a full disk, a read-only folder): nothing left of it
        p.exit(1, f"adain-train export: error: {e.filename}: {e.strerror}\n")


def train(argv: list[str] | None = None) -> None:
    # the server's text lines: a data file's name with a newline or an escape sequence is escaped (it split the
    # warning and reached the terminal; an outside tour's)
    handler = logging.StreamHandler()
    handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    args = parse_args(argv)
    try:
        trainer = Trainer(args)
        with logging_redirect_tqdm():  # a warning on a line of its own, not glued to the progress bar's
            trainer.run()
    except (NoReadableImage, CheckpointError) as e:  # (a traceback from inside the DataLoader, or torch.save's)
        sys.exit(f"adain-train: error: {one_line(str(e))}")
    if args.export and trainer.main:  # the run's end (its steps, --max-minutes or SIGTERM) as a decoder file
        try:
            export_checkpoint(args.out / "checkpoint.pt", args.export, args.export_data, args.export_note)
        except ExportError as e:
            sys.exit(f"adain-train: error: --export: {e}")
        except OSError as e:
            sys.exit(f"adain-train: error: --export {e.filename}: {e.strerror}")
