#!/usr/bin/env sh
# Regenerate the committed Python stubs in adain/v1/ from proto/adain/v1/style_transfer.proto.
# Run from anywhere: `sh proto/generate.sh`. Uses $PYTHON, else the checkout's .venv/bin/python, else the python on
# PATH; it needs grpcio-tools==1.85.1 (the dev extra's), whose version the stubs carry and tests/test_proto.py checks.
set -eu
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python; fi
fi
WANT=1.85.1
HAVE=$("$PYTHON" -c "from importlib.metadata import version; print(version('grpcio-tools'))" 2>/dev/null || true)
if [ "$HAVE" != "$WANT" ]; then
  echo "proto/generate.sh: $PYTHON has grpcio-tools ${HAVE:-(none)}; the stubs are made with $WANT" \
       "(pip install grpcio-tools==$WANT, or PYTHON=.venv/bin/python after scripts/setup.sh)" >&2
  exit 1
fi
"$PYTHON" -m grpc_tools.protoc -I proto --python_out=. --pyi_out=. --grpc_python_out=. proto/adain/v1/style_transfer.proto
