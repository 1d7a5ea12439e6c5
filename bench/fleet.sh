#!/usr/bin/env bash
# The tenant's limits shared by a fleet, measured: for 1, 2 and 3 `cxone-worker run`
# replicas on one prefix (LIMIT_SCOPE=fleet, each told the whole RATE_LIMIT_PER_MINUTE)
# against the simulator, prints the calls made, the 429s, the executions achieved per
# window against the N the API allows, the most calls in any one second against the
# contract's bound (a sixtieth of the minute's limit), and the most calls in flight
# against MAX_CONCURRENT_CALLS.
#
#   bench/fleet.sh            # N=120 per 6 s window: a scaled minute (a tenth), 1200/min
#   N=1200 WINDOW_MS=60000 JOBS=3000 bench/fleet.sh    # real minutes (about 3 min each)
#
# Knobs (environment): N (executions the API allows per window, default 120),
# WINDOW_MS (the window, default 6000), JOBS (per run, default 300),
# MAX_CONCURRENT_CALLS (default 4), SIM_LATENCY_MS (each call's latency, default 100),
# REPLICAS (default "1 2 3"), LIMIT_SCOPE (default fleet; `process` shows v1, where
# every replica uses the whole limit).
#
# Each replica count is run twice, each time with a fresh simulator and prefix:
# once against the API's limit of N per window (calls, 429s, achieved, in flight),
# once against one-second windows without a limit, whose busiest window is the
# most calls in any one second. Needs the local RabbitMQ and python3 with pika (as
# bench/enqueue.sh does); the release binary is built first.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin cxone-worker
export BENCH_BIN=${CARGO_TARGET_DIR:-target}/release/cxone-worker
export AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
exec python3 - <<'PY'
import atexit, json, os, re, shutil, signal, subprocess, sys, tempfile, time, urllib.request
import pika

BIN = os.environ["BENCH_BIN"]
AMQP = os.environ["AMQP_URL"]
N = int(os.environ.get("N", "120"))
WINDOW_MS = int(os.environ.get("WINDOW_MS", "6000"))
JOBS = int(os.environ.get("JOBS", "300"))
CALLS = int(os.environ.get("MAX_CONCURRENT_CALLS", "4"))
LATENCY = os.environ.get("SIM_LATENCY_MS", "100")
REPLICAS = [int(r) for r in os.environ.get("REPLICAS", "1 2 3").split()]
SCOPE = os.environ.get("LIMIT_SCOPE", "fleet")
RATE = N * 60000 // WINDOW_MS  # RATE_LIMIT_PER_MINUTE of every replica
work = tempfile.mkdtemp(prefix="bench-fleet-")
atexit.register(shutil.rmtree, work, ignore_errors=True)
os.makedirs(f"{work}/in")
for i in range(JOBS):
    with open(f"{work}/in/f{i:05d}.pdf", "wb") as f:
        f.write(b"%%PDF-1.4 bench fleet %d\n" % i)


def get(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


def ready(admin):
    try:
        return urllib.request.urlopen(f"http://{admin}/readyz", timeout=5).status == 200
    except OSError:
        return False


def wait(what, ok, within=60.0):
    deadline = time.time() + within
    while True:
        value = ok()
        if value:
            return value
        if time.time() > deadline:
            sys.exit(f"bench: {what} did not happen within {within:.0f}s")
        time.sleep(0.05)


def start_sim(window_ms, limit):
    env = dict(os.environ, SIM_PORT="0", SIM_CLIENT_ID="bench", SIM_CLIENT_SECRET="bench-secret",
               SIM_RATE_LIMIT=str(limit), SIM_RATE_WINDOW_MS=str(window_ms),
               SIM_LATENCY_MS=LATENCY, SIM_HASH="false")
    sim = subprocess.Popen([BIN, "sim"], env=env, stdout=subprocess.PIPE, text=True)
    line = sim.stdout.readline()
    url = re.search(r"http://\S+", line).group(0)
    return sim, url


def admin_of(log):
    for line in open(log):
        try:
            fields = json.loads(line).get("fields", {})
        except ValueError:
            continue
        if fields.get("message") == "cxone-worker starting":
            return fields["admin"]
    return None


def delete_topology(prefix):
    conn = pika.BlockingConnection(pika.URLParameters(AMQP))
    defs = json.loads(subprocess.check_output([BIN, "definitions", "--queue-prefix", prefix,
                                               "--retry-delays", "1s"]))
    for q in defs["queues"]:
        conn.channel().queue_delete(q["name"])
    for e in defs["exchanges"]:
        conn.channel().exchange_delete(e["name"])
    conn.close()


def run(replicas, window_ms, limit):
    """One fleet against one simulator; the simulator's stats at the end and the
    seconds from the first execution to the last."""
    sim, url = start_sim(window_ms, limit)
    prefix = f"benchfleet{os.getpid()}x{replicas}x{window_ms}"
    env = dict(AMQP_URL=AMQP, CXONE_QUEUE_PREFIX=prefix, CXONE_API_URL=url,
               CXONE_CLIENT_ID="bench", CXONE_CLIENT_SECRET="bench-secret",
               CXONE_DATA_ACTION_ID="bench", FILE_ROOTS=f"{work}/in", RETRY_DELAYS="1s",
               RATE_LIMIT_PER_MINUTE=str(RATE), MAX_CONCURRENT_CALLS=str(CALLS),
               LIMIT_SCOPE=SCOPE, WORKER_CONCURRENCY="16", ADMIN_ADDR="127.0.0.1:0",
               SHUTDOWN_GRACE="5s", RUST_LOG="warn,cxone_worker::commands::run=info",
               PATH=os.environ["PATH"])
    workers, logs = [], []
    try:
        for i in range(replicas):
            logs.append(f"{work}/{prefix}-{i}.log")
            workers.append(subprocess.Popen([BIN, "run"], env=env, stdout=open(logs[-1], "w"),
                                            stderr=subprocess.STDOUT))
        admins = [wait("a replica's start", lambda l=l: admin_of(l)) for l in logs]
        for admin in admins:
            wait("every replica consuming", lambda a=admin: ready(a))
            if SCOPE == "fleet":
                wait("every replica hearing the others", lambda a=admin: re.search(
                    rf"^cxone_fleet_members {replicas}$", get(f"http://{a}/metrics"), re.M))
        subprocess.run([BIN, "enqueue", f"{work}/in", "--queue-prefix", prefix],
                       env=env, check=True, stdout=subprocess.DEVNULL)
        stats = lambda: json.loads(get(f"{url}/__stats"))
        first = wait("the first execution", lambda: stats()["accepted"] > 0 and time.time())
        wait("every job executed", lambda: stats()["accepted"] >= JOBS, within=JOBS / RATE * 60 * 3 + 60)
        return stats(), time.time() - first
    finally:
        for w in workers:
            w.send_signal(signal.SIGTERM)
        for w in workers:
            w.wait(timeout=30)
        sim.terminate()
        sim.wait()
        delete_topology(prefix)


print(f"bench/fleet.sh: the API allows N={N} executions per {WINDOW_MS / 1000:g} s window "
      f"({'real minutes' if WINDOW_MS == 60000 else 'a scaled minute'}), LIMIT_SCOPE={SCOPE}, every replica "
      f"RATE_LIMIT_PER_MINUTE={RATE}, MAX_CONCURRENT_CALLS={CALLS}, {JOBS} jobs, "
      f"{LATENCY} ms a call\n")
print(f"{'replicas':>8}  {'calls':>6}  {'429s':>5}  {'achieved per window':>20}  "
      f"{'most in one second':>19}  {'most in flight':>15}")
for replicas in REPLICAS:
    limited, secs = run(replicas, WINDOW_MS, N)
    seconds, _ = run(replicas, 1000, 0)
    achieved = limited["accepted"] / secs * WINDOW_MS / 1000
    in_flight = max(limited["max_in_flight"], seconds["max_in_flight"])
    print(f"{replicas:>8}  {limited['execute_requests']:>6}  {limited['rate_limited']:>5}  "
          f"{achieved:>8.1f} of {N:<4} ({achieved / N:>4.0%})  "
          f"{seconds['max_window_count']:>7} of {RATE / 60:<8g}  {in_flight:>7} of {CALLS:<4}",
          flush=True)
PY
