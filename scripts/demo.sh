#!/usr/bin/env bash
# The main job: set up, start the gRPC server with the shipped decoder (CPU here, GPU where present)
# and the web page in front of it (prints its URL), stylize the bundled examples through the CLI (two
# styles blended, an alpha sweep, a style named from the server's library, a folder run), say where the results are; in a terminal the page
# stays up until Ctrl-C, otherwise both stop. ADAIN_WEB_PORT sets the page's port (default 8080).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
OUT=out/demo
rm -rf "$OUT" && mkdir -p "$OUT"
BIN=.venv/bin

# The bundled example styles are the server's library too: requests may name them (id:mosaic).
"$BIN/adain-server" --host 127.0.0.1 --port 0 --metrics-port 0 --styles-dir examples/style > "$OUT/server.log" 2>&1 &
SERVER=$!
WEB=
trap 'kill -TERM $WEB $SERVER 2>/dev/null || true; wait $WEB $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
  grep -q "listening on" "$OUT/server.log" && break
  kill -0 "$SERVER" 2>/dev/null || { echo "the server did not start:"; cat "$OUT/server.log"; exit 1; }
  sleep 0.5
done
ADDR=$(sed -n 's/.*listening on \([^ "]*\).*/\1/p' "$OUT/server.log" | head -1)
[ -n "$ADDR" ] || { echo "the server did not start:"; cat "$OUT/server.log"; exit 1; }
# Health goes SERVING once the model is loaded and warmed up.
"$BIN/python" - "$ADDR" <<'PY'
import sys, time, grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(sys.argv[1]))
for _ in range(240):
    try:
        if stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status == health_pb2.HealthCheckResponse.SERVING:
            sys.exit(0)
    except grpc.RpcError:
        pass
    time.sleep(0.5)
sys.exit("the server never became SERVING")
PY
echo "server SERVING on $ADDR"

WEB_PORT=${ADAIN_WEB_PORT:-8080}
"$BIN/adain-web" --server "$ADDR" --port "$WEB_PORT" > "$OUT/web.log" 2>&1 &
WEB=$!
for _ in $(seq 1 60); do
  "$BIN/python" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)" \
    "http://127.0.0.1:$WEB_PORT/healthz" 2>/dev/null && break
  kill -0 "$WEB" 2>/dev/null || { echo "the page did not start:"; cat "$OUT/web.log"; exit 1; }
  sleep 0.5
done
echo "web page: http://127.0.0.1:$WEB_PORT/"

S=examples/style C=examples/content
run() { "$BIN/adain-stylize" --server "$ADDR" "$@"; }
echo "two styles blended (mosaic 1 : waves 0.5):"
run "$C/cat.jpg" --style "$S/mosaic.png" --style "$S/waves.png:0.5" -o "$OUT/cat_mosaic+waves.png"
echo "alpha sweep (coffee x strokes):"
for a in 0 0.25 0.5 0.75 1; do
  run "$C/coffee.jpg" --style "$S/strokes.png" --alpha "$a" -o "$OUT/coffee_strokes_alpha$a.png"
done
echo "colour preserved (astronaut x mosaic):"
run "$C/astronaut.jpg" --style "$S/mosaic.png" --preserve-color -o "$OUT/astronaut_mosaic_colour.png"
echo "the server's library, and a style named instead of sent (rocket x waves):"
run --list-styles
run "$C/rocket.jpg" --style id:waves -o "$OUT/rocket_waves.png"
echo "a preset of the library (examples/style/presets.json: mosaic, strength 0.9, the photo's colours):"
run "$C/astronaut.jpg" --style preset:stained-glass -o "$OUT/astronaut_stained-glass.png"
echo "every example content x every style:"
run "$C" --style "$S/mosaic.png" --style "$S/strokes.png" --style "$S/waves.png" -o "$OUT/all"

echo
echo "Done. Results are in $(pwd)/$OUT/ ($(find "$OUT" -name '*.png' | wc -l) images; server log: $OUT/server.log)"
if [ -t 0 ]; then
  echo "The page stays up at http://127.0.0.1:$WEB_PORT/ until you press Ctrl-C."
  wait "$WEB" || true
fi
