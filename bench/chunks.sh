#!/usr/bin/env bash
# Large files through a small request cap: 16 concurrent 10 MB jobs sent in chunks
# under MAX_REQUEST_BYTES=512000 (Genesys's default), beside the same files in one
# request each. Prints jobs/s, MB/s and the worker's peak RSS for both.
#   bench/chunks.sh               # 64 jobs of 10 MB, 16 at once
#   bench/chunks.sh --jobs 32
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-rabbitmq.sh
python3 -c 'import pika' 2>/dev/null || python3 -m pip install --quiet pika
cargo build --release --quiet
mkdir -p bench/out
args=(--jobs 64 --size 10000000 --files 16 --concurrency 16 --only worker "$@")
echo "== in chunks: MAX_REQUEST_BYTES=512000 (and the simulator refuses larger bodies)"
MAX_REQUEST_BYTES=512000 SIM_MAX_BODY=512000 python3 bench/e2e.py "${args[@]}" --json bench/out/chunks-512k.json
echo "== whole: one request per file (MAX_REQUEST_BYTES=0)"
MAX_REQUEST_BYTES=0 python3 bench/e2e.py "${args[@]}" --json bench/out/chunks-whole.json
python3 - <<'PY'
import json
for name in ("chunks-512k", "chunks-whole"):
    rows = json.load(open(f"bench/out/{name}.json"))
    for r in rows if isinstance(rows, list) else rows.get("rows", [rows]):
        if "jobs_per_s" in r:
            print(f"{name}: {r['jobs_per_s']:.1f} jobs/s = {r['jobs_per_s'] * 10.0:.0f} MB/s, peak RSS {r.get('peak_rss_mb', '?')} MB")
PY
