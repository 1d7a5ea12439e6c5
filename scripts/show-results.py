#!/usr/bin/env python3
"""Waits for N results on PREFIX.results and prints them as a table (demo helper)."""
import json, os, sys, time

import pika

prefix, want = sys.argv[1], int(sys.argv[2])
timeout = float(sys.argv[3]) if len(sys.argv) > 3 else 60
conn = pika.BlockingConnection(pika.URLParameters(os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")))
ch = conn.channel()
rows, deadline = [], time.time() + timeout
while len(rows) < want and time.time() < deadline:
    method, _, body = ch.basic_get(f"{prefix}.results", auto_ack=True)
    if method is None:
        time.sleep(0.1)
        continue
    rows.append((method.routing_key, json.loads(body)))
width = max([len("job_id")] + [len(r.get("job_id", "")) for _, r in rows])
print(f"{'job_id':<{width}}  {'status':<10} {'detail'}")
for key, r in sorted(rows, key=lambda x: x[1].get("job_id", "")):
    if r["status"] == "succeeded":
        detail = f"{r['content_type']}, {r['original_size']} bytes -> {r['encoded_size']} base64, execution {r['execution_id']}, {r['latency_ms']} ms"
    else:
        detail = f"{r['error_kind']}: {r['error']}"
    print(f"{r['job_id']:<{width}}  {r['status']:<10} {detail}")
conn.close()
sys.exit(0 if len(rows) >= want else 1)
