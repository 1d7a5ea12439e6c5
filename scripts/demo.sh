#!/usr/bin/env bash
# The worker's main job end to end, on this machine: RabbitMQ (started, or installed
# and started, when none answers on 127.0.0.1:5672), the API simulator standing in for
# the API of API_PROFILE (seed, genesys or cxone; unless that profile's real
# credentials are set: see the README's "Profiles"), the worker, and a few sample jobs,
# good and bad, whose results are printed. Everything it creates is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/ensure-rabbitmq.sh
python3 -c 'import pika' 2>/dev/null || python3 -m pip install --quiet pika
echo "== building the release binary"
cargo build --release --quiet
bin="$PWD/target/release/cxone-worker"

work=$(mktemp -d)
prefix="demo$RANDOM"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  python3 - "$prefix" <<'PY' || true
import os, sys, pika
prefix = sys.argv[1]
conn = pika.BlockingConnection(pika.URLParameters(os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")))
for q in ("jobs", "results", "audit", "jobs.dlq", "retry.1s", "retry.5s"):
    conn.channel().queue_delete(f"{prefix}.{q}")
for x in ("jobs", "results", "audit", "dlx", "control"):
    conn.channel().exchange_delete(f"{prefix}.{x}")
PY
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

export AMQP_URL="${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
export CXONE_QUEUE_PREFIX="$prefix"
profile="${API_PROFILE:-seed}"
real_credentials() {
  [ -n "${CXONE_CLIENT_ID:-}" ] && [ -n "${CXONE_CLIENT_SECRET:-}${CXONE_CLIENT_SECRET_FILE:-}" ] \
    && [ -n "${CXONE_DATA_ACTION_ID:-}" ] || return 1
  case "$profile" in
    cxone) [ -n "${CXONE_ACCESS_KEY_ID:-}" ] && [ -n "${CXONE_ACCESS_KEY_SECRET:-}${CXONE_ACCESS_KEY_SECRET_FILE:-}" ] ;;
    *) [ -n "${CXONE_API_URL:-}" ] ;;
  esac
}
if real_credentials; then
  echo "== calling the real API (profile $profile) at ${CXONE_API_URL:-the discovered tenant host}"
else
  # The simulator speaks the chosen profile: its token endpoint (and, for cxone, the
  # OIDC and cxone-configuration discovery documents), its execute route and bodies.
  port=$(free_port)
  url="http://127.0.0.1:$port"
  export API_PROFILE="$profile" CXONE_CLIENT_ID=demo-client
  export CXONE_CLIENT_SECRET="demo-$RANDOM$RANDOM" CXONE_DATA_ACTION_ID=demo-action
  if [ "$profile" = cxone ]; then
    # CXone: the issuer is the only address given; the token endpoint and the
    # tenant's API host are discovered from it.
    unset CXONE_API_URL
    export CXONE_ISSUER="$url" CXONE_ACCESS_KEY_ID=demo-key CXONE_ACCESS_KEY_SECRET="key-$RANDOM$RANDOM"
  else
    export CXONE_API_URL="$url"
  fi
  keys=()
  [ "$profile" = cxone ] && keys=("SIM_ACCESS_KEY_ID=$CXONE_ACCESS_KEY_ID" "SIM_ACCESS_KEY_SECRET=$CXONE_ACCESS_KEY_SECRET")
  env SIM_PORT="$port" SIM_PROFILE="$profile" SIM_CLIENT_ID="$CXONE_CLIENT_ID" \
    SIM_CLIENT_SECRET="$CXONE_CLIENT_SECRET" "${keys[@]}" \
    LOG_FORMAT=text "$bin" sim >"$work/sim.log" 2>&1 &
  pids+=($!)
  echo "== the simulator stands in for the API (profile $profile) at $url"
fi

echo "== sample files in $work/in"
mkdir -p "$work/in" "$work/records"
python3 - "$work/in" <<'PY'
import os, random, sys
d, rnd = sys.argv[1], random.Random(7)
files = {
    "invoice.pdf": b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n" + rnd.randbytes(40_000) + b"\n%%EOF\n",
    "scan.png": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00\x00\x00" + rnd.randbytes(8_000),
    "photo.jpg": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + rnd.randbytes(20_000) + b"\xff\xd9",
    "animation.gif": b"GIF89a\x01\x00\x01\x00\x80\x00\x00" + rnd.randbytes(500),
    "empty.pdf": b"",
}
for name, data in files.items():
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)
PY
ls -l "$work/in" | tail -n +2

admin="127.0.0.1:$(free_port)"
echo "== starting the worker (logs in $work/worker.log)"
FILE_ROOTS="$work/in" EXTERNAL_STORAGE_ENDPOINT="file://$work/records" ADMIN_ADDR="$admin" \
  RETRY_DELAYS=1s,5s LOG_FORMAT=text "$bin" run >"$work/worker.log" 2>&1 &
worker=$!
pids+=($worker)
python3 - "$admin" <<'PY' || { echo "the worker did not become ready:"; tail -20 "$work/worker.log"; exit 1; }
import sys, time, urllib.request
for _ in range(150):
    try:
        urllib.request.urlopen(f"http://{sys.argv[1]}/readyz", timeout=1); sys.exit(0)
    except OSError:
        time.sleep(0.2)
sys.exit(1)
PY

echo "== enqueue: the directory, plus a job naming a file that does not exist"
"$bin" enqueue "$work/in"
printf '{"job_id":"demo-missing","file":"file://%s/in/missing.pdf"}\n' "$work" | "$bin" enqueue --manifest -

echo "== results"
python3 scripts/show-results.py "$prefix" 6 60

echo "== status"
"$bin" status --retry-delays 1s,5s
echo "== dead-letter queue"
"$bin" dlq list
echo "== storage records"
ls "$work/records"

kill -TERM "$worker"
wait "$worker" || true
echo "== the worker's summary at shutdown"
grep -E 'summary' "$work/worker.log" | tail -1
