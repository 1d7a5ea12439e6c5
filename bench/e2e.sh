#!/usr/bin/env bash
# End-to-end benchmark, cxone-worker beside the seed's Node.js consumer on the same
# jobs, broker and simulator: 10 KB and 1 MB files at WORKER_CONCURRENCY=16.
#   bench/e2e.sh                  # both sizes
#   bench/e2e.sh --jobs 2000 --size 10240
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-rabbitmq.sh
python3 -c 'import pika' 2>/dev/null || python3 -m pip install --quiet pika
cargo build --release --quiet
mkdir -p bench/out
if [ $# -gt 0 ]; then
  exec python3 bench/e2e.py "$@"
fi
python3 bench/e2e.py --jobs 5000 --size 10240 --json bench/out/e2e-10k.json
python3 bench/e2e.py --jobs 500 --size 1048576 --json bench/out/e2e-1m.json
