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
# Debian packages that some tests use, installed where we can (root with apt, as on CI); elsewhere those tests
# skip, saying why. apt_for_tests "WHICH TESTS" ARGS...: ARGS go to apt-get install as they are.
apt_for_tests() {
  local tests=$1
  shift
  [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null || return 0
  echo "setup: apt-get install $* (for $tests)"
  export DEBIAN_FRONTEND=noninteractive
  { apt-get install -y -q "$@" || { apt-get update -q && apt-get install -y -q "$@"; }; } \
    >> "$LOG" 2>&1 || echo "setup: could not install $*; $tests will skip (see $LOG)"
}
# the page's browser tests drive Debian's chromium
command -v chromedriver > /dev/null || apt_for_tests "the browser tests" chromium chromium-driver
# deploy/prometheus's alert rules are checked and unit-tested with promtool (Debian's prometheus package)
command -v promtool > /dev/null || apt_for_tests "the alert rule tests" --no-install-recommends prometheus
# a server under a preloaded jemalloc must skip OpenVINO, which crashes there: a test preloads Debian's libjemalloc2
ls /usr/lib/*/libjemalloc.so.2 > /dev/null 2>&1 \
  || apt_for_tests "the test of a server under a preloaded malloc" --no-install-recommends libjemalloc2
.venv/bin/python -c "import torch, adain.client, adain.server, adain.train, adain.web; print('setup ok: torch', torch.__version__)"
