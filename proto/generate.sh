#!/usr/bin/env sh
# Regenerate the committed Python stubs in adain/v1/ from proto/adain/v1/style_transfer.proto.
# Run from anywhere; uses the python on PATH (or $PYTHON), which needs grpcio-tools==1.85.1.
set -eu
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
"$PYTHON" -m grpc_tools.protoc -I proto --python_out=. --pyi_out=. --grpc_python_out=. proto/adain/v1/style_transfer.proto
