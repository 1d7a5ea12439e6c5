#!/usr/bin/env bash
# Publishing throughput of `cxone-worker enqueue` on this machine: FILES small files in a
# temporary directory, enqueued with publisher confirms (persistent, mandatory) to a
# fresh CXONE_QUEUE_PREFIX on the local RabbitMQ; the quorum jobs queue is checked to
# hold every job. Prints enqueue's summary, then jobs/s by the wall clock (start-up and
# planning included). The prefix's queues and exchanges are deleted at the end.
#
#   bench/enqueue.sh [FILES=50000] [CONFIRM_WINDOW=1000]
#
# Needs python3 with pika (as the conformance suite does) to declare and delete the
# topology that `cxone-worker definitions` prints.
set -euo pipefail
cd "$(dirname "$0")/.."
files=${1:-50000}
window=${2:-1000}

cargo build --release --quiet --bin cxone-worker
bin=${CARGO_TARGET_DIR:-target}/release/cxone-worker
export AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
export CXONE_QUEUE_PREFIX="bench$(date +%s)x$$"

work=$(mktemp -d)
topology() { # declare | delete | count QUEUE
  python3 - "$1" "$work/definitions.json" "${2:-}" <<'PY'
import json, os, sys, pika
action, path, queue = sys.argv[1:4]
defs = json.load(open(path))
conn = pika.BlockingConnection(pika.URLParameters(os.environ["AMQP_URL"]))
ch = conn.channel()
if action == "declare":
    for e in defs["exchanges"]:
        ch.exchange_declare(e["name"], e["type"], durable=True)
    for q in defs["queues"]:
        ch.queue_declare(q["name"], durable=True, arguments=q["arguments"])
    for b in defs["bindings"]:
        ch.queue_bind(b["destination"], b["source"], b["routing_key"])
elif action == "delete":
    for q in defs["queues"]:
        ch.queue_delete(q["name"])
    for e in defs["exchanges"]:
        ch.exchange_delete(e["name"])
else:
    print(ch.queue_declare(queue, passive=True).method.message_count)
conn.close()
PY
}
cleanup() {
  topology delete 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

"$bin" definitions >"$work/definitions.json"
topology declare
python3 - "$work/in" "$files" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for d in range(0, n, 1000):
    os.makedirs(f"{root}/{d // 1000:03d}")
for i in range(n):
    with open(f"{root}/{i // 1000:03d}/f{i:06d}.pdf", "wb") as f:
        f.write(b"%%PDF-1.4 bench %d\n" % i)
PY
echo "enqueue: $files files, confirm window $window, prefix $CXONE_QUEUE_PREFIX"

start=$(date +%s%N)
"$bin" enqueue "$work/in" --recursive --confirm-window "$window"
end=$(date +%s%N)

queued=$(topology count "$CXONE_QUEUE_PREFIX.jobs")
[ "$queued" = "$files" ] || { echo "the jobs queue holds $queued jobs, not $files" >&2; exit 1; }
awk -v n="$files" -v ns="$((end - start))" \
  'BEGIN { printf "%d jobs confirmed in %.2fs by the wall clock: %.0f jobs/s\n", n, ns / 1e9, n / (ns / 1e9) }'
