#!/usr/bin/env bash
# Set up .venv with everything: the CPU build of torch 2.13.0 first (so nothing pulls CUDA wheels),
# then the project, editable, with the server, training and dev extras. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  # On a GPU machine install the CUDA build of your choice instead, before this script.
  .venv/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0 2>&1 | grep -v "^WARNING: Location" || true
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import torch, adain.client, adain.server, adain.train; print('setup ok: torch', torch.__version__)"
