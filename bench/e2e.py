#!/usr/bin/env python3
"""End-to-end benchmark: cxone-worker against the seed's Node.js consumer, same run.

Both consume the same jobs (N files of SIZE bytes) from RabbitMQ, call the same
simulator (`cxone-worker sim`) and publish one result per job. For each, measured
from its start to its N-th result: jobs/s, the consumer's own CPU per job, its peak
RSS, and RabbitMQ's and the simulator's CPU per job over the same interval.

usage: bench/e2e.py [--jobs N] [--size BYTES] [--concurrency C] [--only worker|seed]
Needs: python3 with pika, node + npm (for the seed), a reachable RabbitMQ.
Diagnostics: BENCH_THREADS=1 prints the worker's CPU and context switches by thread;
BENCH_ATTACH='strace -c -f -p {pid} -o FILE' (or perf record -p {pid} ...) attaches a
tracer to the worker for the measured interval.
"""
import argparse, json, os, random, shutil, signal, socket, subprocess, sys, tempfile, time, uuid

import pika

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SEED_SRC = os.environ.get("SEED_DIR", os.path.join(ROOT, "..", "shared", "peers", "seed-node"))
AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
CLIENT_ID, SECRET = "bench-client", "bench-secret-" + uuid.uuid4().hex[:8]
TICK = os.sysconf("SC_CLK_TCK")


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def cpu_seconds(pid):
    """User + system CPU of a process and its reaped children, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / TICK


def thread_switches(pid, tid):
    """Voluntary + involuntary context switches of one thread."""
    with open(f"/proc/{pid}/task/{tid}/status") as f:
        return sum(int(line.split()[1]) for line in f
                   if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")))


def context_switches(pid):
    """Voluntary + involuntary context switches of all of a process's threads."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            total += thread_switches(pid, tid)
        except OSError:
            pass
    return total


def print_threads(pid, n):
    by_name = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                name = f.read().strip()
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            cpu = (int(fields[11]) + int(fields[12])) / TICK
            sw = thread_switches(pid, tid)
        except OSError:
            continue
        c, s, k = by_name.get(name, (0.0, 0, 0))
        by_name[name] = (c + cpu, s + sw, k + 1)
    for name, (cpu, sw, k) in sorted(by_name.items(), key=lambda x: -x[1][0]):
        print(f"  {name:<20} threads {k:>3}  CPU ms/job {cpu * 1000 / n:.3f}  ctx sw/job {sw / n:.1f}")


def peak_rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def broker_pid():
    out = subprocess.run(["pgrep", "-f", "beam.smp"], capture_output=True, text=True).stdout.split()
    if not out:
        sys.exit("bench: no RabbitMQ (beam.smp) process found on this machine")
    return int(out[0])


def make_files(directory, count, size):
    """`count` distinct PDF-looking files of `size` bytes; jobs use them round-robin."""
    rnd = random.Random(42)
    paths = []
    for i in range(count):
        body = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n" + rnd.randbytes(max(0, size - 15))
        path = os.path.join(directory, f"f{i}.pdf")
        with open(path, "wb") as f:
            f.write(body[:size])
        paths.append(path)
    return paths


def preload(ch, queue, paths, n, tag):
    for i in range(n):
        job = {"job_id": f"{tag}-{i}", "file": "file://" + paths[i % len(paths)], "content_type": "application/pdf"}
        ch.basic_publish("", queue, json.dumps(job).encode(), pika.BasicProperties(delivery_mode=2))
    deadline = time.time() + 120
    while ch.queue_declare(queue, passive=True).method.message_count < n:
        if time.time() > deadline:
            sys.exit(f"bench: preloading {queue} did not finish")
        time.sleep(0.2)


def wait_results(ch, queue, n, proc, timeout):
    """Samples the consumer until `queue` holds n results; returns (seconds, peak RSS MB)."""
    start, peak = time.time(), 0.0
    while True:
        if proc.poll() is not None:
            sys.exit(f"bench: consumer exited early with {proc.returncode}")
        peak = max(peak, peak_rss_mb(proc.pid))
        if ch.queue_declare(queue, passive=True).method.message_count >= n:
            return time.time() - start, max(peak, peak_rss_mb(proc.pid))
        if time.time() - start > timeout:
            sys.exit(f"bench: {queue} got no {n} results within {timeout}s")
        time.sleep(0.02)


def run_one(name, cmd, env, ch, results_queue, n, sim_pid, cwd=None):
    rabbit = broker_pid()
    r0, s0 = cpu_seconds(rabbit), cpu_seconds(sim_pid)
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tracer = None
    if os.environ.get("BENCH_ATTACH") and name == "cxone-worker":
        # Diagnostics only, e.g. BENCH_ATTACH='strace -c -f -p {pid} -o /tmp/sys.txt': a tracer
        # attached to the worker for the measured interval, stopped with SIGINT. The figures
        # then include its overhead.
        tracer = subprocess.Popen(os.environ["BENCH_ATTACH"].format(pid=proc.pid).split(),
                                  stderr=subprocess.DEVNULL)
    took, rss = wait_results(ch, results_queue, n, proc, timeout=900)
    if tracer:
        tracer.send_signal(signal.SIGINT)
        tracer.wait(timeout=30)
    own = cpu_seconds(proc.pid)
    switches = context_switches(proc.pid)
    if os.environ.get("BENCH_THREADS"):
        # Diagnostics: where the CPU and the context switches go, by thread name.
        print_threads(proc.pid, n)
    r1, s1 = cpu_seconds(rabbit), cpu_seconds(sim_pid)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
    return {"name": name, "jobs": n, "seconds": took, "jobs_per_s": n / took,
            "cpu_ms_per_job": own * 1000 / n, "peak_rss_mb": rss, "switches_per_job": switches / n,
            "rabbitmq_cpu_ms_per_job": (r1 - r0) * 1000 / n, "sim_cpu_ms_per_job": (s1 - s0) * 1000 / n}


def seed_dir(work):
    """A copy of the seed peer with its dependencies installed (the original is read-only)."""
    cache = os.path.join(ROOT, "bench", "out", "seed-node")
    if not os.path.exists(os.path.join(cache, "node_modules", "amqplib")):
        shutil.copytree(SEED_SRC, cache, dirs_exist_ok=True)
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--silent"], cwd=cache, check=True)
    return cache


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=5000)
    ap.add_argument("--size", type=int, default=10 * 1024)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--files", type=int, default=200, help="distinct files the jobs cycle through")
    ap.add_argument("--only", choices=["worker", "seed"])
    ap.add_argument("--worker", default=os.path.join(ROOT, "target", "release", "cxone-worker"))
    ap.add_argument("--json", help="also write the figures to this file")
    a = ap.parse_args()

    work = tempfile.mkdtemp(prefix="cxone-bench-")
    files = os.path.join(work, "in"); os.makedirs(files)
    paths = make_files(files, min(a.files, a.jobs), a.size)
    sim_port = free_port()
    sim_env = dict(os.environ, SIM_PORT=str(sim_port), SIM_CLIENT_ID=CLIENT_ID, SIM_CLIENT_SECRET=SECRET,
                   LOG_FORMAT="text", RUST_LOG="warn")
    sim = subprocess.Popen([a.worker, "sim"], env=sim_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    ch = conn.channel()
    api = f"http://127.0.0.1:{sim_port}"
    time.sleep(0.5)
    rows, cleanup = [], []
    try:
        if a.only in (None, "worker"):
            prefix = "bench" + uuid.uuid4().hex[:8]
            env = dict(os.environ, AMQP_URL=AMQP_URL, CXONE_QUEUE_PREFIX=prefix, CXONE_API_URL=api,
                       CXONE_CLIENT_ID=CLIENT_ID, CXONE_CLIENT_SECRET=SECRET, CXONE_DATA_ACTION_ID="bench",
                       FILE_ROOTS=files, WORKER_CONCURRENCY=str(a.concurrency),
                       RATE_LIMIT_PER_MINUTE="100000000", MAX_PAYLOAD_BYTES=str(max(a.size, 10485760)),
                       # One consumer, measured against one seed: no fleet to share
                       # the (unlimited) rate with, and no 2.5 s wait to hear one.
                       LIMIT_SCOPE=os.environ.get("LIMIT_SCOPE", "process"),
                       ADMIN_ADDR=f"127.0.0.1:{free_port()}", LOG_FORMAT="json", RUST_LOG="warn")
            env.pop("EXTERNAL_STORAGE_ENDPOINT", None)
            # Declare the topology as the worker would, then preload the jobs.
            declare = subprocess.Popen([a.worker, "run"], env=dict(env, CXONE_QUEUE_PREFIX=prefix, WORKER_CONCURRENCY="1"),
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            cleanup.append(prefix)
            deadline = time.time() + 30
            while True:
                try:
                    ch.queue_declare(f"{prefix}.results", passive=True); break
                except pika.exceptions.ChannelClosedByBroker:
                    ch = conn.channel()
                    if time.time() > deadline: sys.exit("bench: worker topology never appeared")
                    time.sleep(0.1)
            declare.send_signal(signal.SIGTERM); declare.wait(timeout=30)
            preload(ch, f"{prefix}.jobs", paths, a.jobs, "w")
            rows.append(run_one("cxone-worker", [a.worker, "run"], env, ch, f"{prefix}.results", a.jobs, sim.pid))
        if a.only in (None, "seed"):
            cwd = seed_dir(work)
            queue, results = f"seedbench{uuid.uuid4().hex[:8]}.jobs", f"seedbench{uuid.uuid4().hex[:8]}.results"
            ch.queue_declare(queue, durable=True)
            ch.exchange_declare(results, "fanout", durable=True)
            ch.queue_declare(results, durable=True)
            ch.queue_bind(results, results)
            cleanup.append((queue, results))
            preload(ch, queue, paths, a.jobs, "s")
            env = dict(os.environ, AMQP_URL=AMQP_URL, CXONE_API_URL=api, CXONE_CLIENT_ID=CLIENT_ID,
                       CXONE_CLIENT_SECRET=SECRET, CXONE_DATA_ACTION_ID="bench", SEED_QUEUE=queue,
                       SEED_RESULTS=results, SEED_PREFETCH=str(a.concurrency))
            rows.append(run_one("seed (Node.js)", ["node", "seed-consumer.mjs"], env, ch, results, a.jobs, sim.pid, cwd=cwd))
    finally:
        for item in cleanup:
            try:
                if isinstance(item, tuple):
                    ch.queue_delete(item[0]); ch.queue_delete(item[1]); ch.exchange_delete(item[1])
                else:
                    for q in ("jobs", "results", "audit", "jobs.dlq", "retry.5s", "retry.30s", "retry.2m", "retry.10m"):
                        ch.queue_delete(f"{item}.{q}")
                    for x in ("jobs", "results", "audit", "dlx", "control"):
                        ch.exchange_delete(f"{item}.{x}")
            except Exception:
                ch = conn.channel()
        sim.terminate(); sim.wait()
        shutil.rmtree(work, ignore_errors=True)

    print(f"\n{a.jobs} jobs of {a.size} bytes, concurrency {a.concurrency}, on {os.cpu_count()} cores")
    head = (f"{'consumer':<16}{'jobs/s':>10}{'CPU ms/job':>12}{'peak RSS MB':>13}{'RabbitMQ ms/job':>17}"
            f"{'sim ms/job':>12}{'ctx sw/job':>12}")
    print(head); print("-" * len(head))
    for r in rows:
        print(f"{r['name']:<16}{r['jobs_per_s']:>10.0f}{r['cpu_ms_per_job']:>12.3f}{r['peak_rss_mb']:>13.1f}"
              f"{r['rabbitmq_cpu_ms_per_job']:>17.3f}{r['sim_cpu_ms_per_job']:>12.3f}{r['switches_per_job']:>12.1f}")
    if len(rows) == 2:
        w, s = rows
        print(f"\nworker vs seed: {w['jobs_per_s'] / s['jobs_per_s']:.1f}x jobs/s, "
              f"{s['cpu_ms_per_job'] / w['cpu_ms_per_job']:.1f}x less CPU per job, "
              f"{s['peak_rss_mb'] / w['peak_rss_mb']:.1f}x less peak RSS")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"jobs": a.jobs, "size": a.size, "concurrency": a.concurrency, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
