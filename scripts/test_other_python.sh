#!/usr/bin/env bash
# The torch-free parts (the client, adain-stylize, adain-web, clips with PyAV) on another Python than .venv's:
# the package says 3.10 and later, but this project's CPU torch is for one Python, so the suite runs on that one
# only. A newer Python also gets newer wheels: PyAV 19 (3.12 and later only) iterates a frame's side data by type,
# and every clip failed there while the suite passed here.
#   bash scripts/test_other_python.sh /path/to/python3.13 [pytest arguments]
# It makes .venv-<version> with that Python (the torch-free extras and the test tools), then runs the test files
# that import without torch, in that Python; .venv (bash scripts/setup.sh) runs the servers and writes the test
# decoder (TEST_SERVER_PYTHON, tests/helpers.py), and a test that needs torch in the Python running it skips.
set -euo pipefail
cd "$(dirname "$0")/.."
OTHER=${1:?usage: bash scripts/test_other_python.sh PYTHON [pytest arguments]}
shift
[ -x .venv/bin/python ] || bash scripts/setup.sh
VERSION=$("$OTHER" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
VENV=.venv-$VERSION
[ -x "$VENV/bin/python" ] || "$OTHER" -m venv "$VENV"
LOG=$VENV/setup.log
# the dev extra's tools (pyproject.toml, read by .venv's Python: 3.10 has no tomllib), without its torch extras
mapfile -t TOOLS < <(.venv/bin/python -c 'import tomllib
for r in tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["dev"]:
    print(r) if not r.startswith("adain[") else None')
echo "test_other_python: installing adain (editable, video, web, heif) and the dev extra's tools into $VENV"
"$VENV/bin/python" -m pip install --disable-pip-version-check -e ".[video,web,heif]" "${TOOLS[@]}" > "$LOG" 2>&1 \
  || { echo "test_other_python: pip install failed:"; tail -40 "$LOG"; exit 1; }
"$VENV/bin/python" -c 'import sys, av; print("test_other_python: Python", sys.version.split()[0], "PyAV", av.__version__)'
# the test files whose imports need no torch (the others test the model, the server's insides or training)
mapfile -t FILES < <("$VENV/bin/python" - <<'EOF'
import importlib, pathlib, sys
sys.path[:0] = ["tests", "."]
for path in sorted(pathlib.Path("tests").glob("test_*.py")):
    if path.stem == "test_deploy":  # (the manifests and Dockerfiles: no Python of theirs)
        continue
    try:
        importlib.import_module(path.stem)
    except ImportError:
        continue
    print(path)
EOF
)
echo "test_other_python: ${#FILES[@]} test files import without torch"
TEST_SERVER_PYTHON=$PWD/.venv/bin/python "$VENV/bin/python" -m pytest -q -n "${TEST_WORKERS:-2}" --dist loadfile \
  -p no:cacheprovider "${FILES[@]}" "$@"
