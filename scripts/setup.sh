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
  # PyPI's Linux torch wheels bring CUDA (gigabytes): ask for the CPU build by its local version, which a
  # wheel folder or mirror may hold (ours do); else from PyTorch's CPU index.
  if ! .venv/bin/python -m pip install --disable-pip-version-check torch==2.13.0+cpu >> "$LOG" 2>&1; then
    pip_install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
  fi
fi
echo "setup: installing adain (editable) with the server, train, web and dev extras"
pip_install -e ".[dev]"
# pip compiles what it installs, but not an editable checkout's modules: where PYTHONDONTWRITEBYTECODE is set
# (containers, our CI) every process compiled them again, ~0.4 s of its start (measured on a 2-core AMD EPYC),
# and the suite starts ~200 (servers, commands, pages). Compiled once here; Python recompiles a changed file.
.venv/bin/python -m compileall -q adain server client train web > /dev/null
# The page's browser tests drive Debian's chromium; install it where we can (root with apt, as on CI).
if ! command -v chromedriver > /dev/null && [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null; then
  echo "setup: installing chromium and chromium-driver (apt) for the browser tests"
  export DEBIAN_FRONTEND=noninteractive
  { apt-get install -y -q chromium chromium-driver || { apt-get update -q && apt-get install -y -q chromium chromium-driver; }; } \
    >> "$LOG" 2>&1 || echo "setup: could not install chromium; the browser tests will skip (see $LOG)"
fi
# deploy/prometheus's alert rules are checked and unit-tested with promtool (Debian's prometheus package).
if ! command -v promtool > /dev/null && [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null; then
  echo "setup: installing prometheus (apt) for promtool, which tests the alert rules"
  export DEBIAN_FRONTEND=noninteractive
  { apt-get install -y -q --no-install-recommends prometheus \
      || { apt-get update -q && apt-get install -y -q --no-install-recommends prometheus; }; } \
    >> "$LOG" 2>&1 || echo "setup: could not install prometheus; the alert rule tests will skip (see $LOG)"
fi
# A server under a preloaded jemalloc must skip OpenVINO, which aborts there: a test preloads Debian's libjemalloc2.
if ! ls /usr/lib/*/libjemalloc.so.2 > /dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null; then
  echo "setup: installing libjemalloc2 (apt) for the test of a server under a preloaded malloc"
  export DEBIAN_FRONTEND=noninteractive
  { apt-get install -y -q --no-install-recommends libjemalloc2 \
      || { apt-get update -q && apt-get install -y -q --no-install-recommends libjemalloc2; }; } \
    >> "$LOG" 2>&1 || echo "setup: could not install libjemalloc2; that test will skip (see $LOG)"
fi
.venv/bin/python -c "import torch, adain.client, adain.server, adain.train, adain.web; print('setup ok: torch', torch.__version__)"
