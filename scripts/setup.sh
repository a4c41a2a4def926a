#!/usr/bin/env bash
# Set up .venv with everything: the CPU build of torch 2.13.0 first (so nothing pulls CUDA wheels),
# then the project, editable, with the server, training and dev extras. Safe to run again.
# pip's chatter goes to .venv/setup.log, shown only when a step fails.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
LOG=.venv/setup.log
: > "$LOG"
pip_install() {
  .venv/bin/python -m pip install --disable-pip-version-check "$@" >> "$LOG" 2>&1 || {
    echo "setup: pip install $* failed:"; tail -40 "$LOG"; exit 1; }
}
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  echo "setup: installing torch==2.13.0 (CPU build; on a GPU machine install your CUDA build first)"
  pip_install torch==2.13.0
fi
echo "setup: installing adain (editable) with the server, train and dev extras"
pip_install -e ".[dev]"
.venv/bin/python -c "import torch, adain.client, adain.server, adain.train; print('setup ok: torch', torch.__version__)"
