#!/usr/bin/env bash
# Execute throughput of `cxone-worker sim` under wrk on this machine: 10 KB random files
# (~13.7 KB JSON bodies), a unique Idempotency-Key per request, hashing on (the default).
# Prints wrk's report, then requests/s and the simulator's CPU time over the run.
#
#   bench/sim.sh [DURATION=10s] [THREADS=2] [CONNECTIONS=64]
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-10s}
threads=${2:-2}
connections=${3:-64}

if ! command -v wrk >/dev/null; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq && $sudo apt-get install -y -qq wrk >/dev/null
fi
cargo build --release --quiet --bin cxone-worker
bin=${CARGO_TARGET_DIR:-target}/release/cxone-worker

work=$(mktemp -d)
sim_pid=""
cleanup() {
  [ -n "$sim_pid" ] && kill "$sim_pid" 2>/dev/null && wait "$sim_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

"$bin" sim --port 0 >"$work/sim.out" &
sim_pid=$!
for _ in $(seq 100); do
  grep -q '^sim listening on ' "$work/sim.out" && break
  sleep 0.1
done
url=$(sed -n 's/^sim listening on //p' "$work/sim.out")
[ -n "$url" ] || { echo "simulator did not start" >&2; exit 1; }

token=$(curl -sf -u test-client:test-secret -d grant_type=client_credentials "$url/api/v2/oauth/token" |
  sed -n 's/.*"access_token":"\([0-9a-f]*\)".*/\1/p')
[ -n "$token" ] || { echo "no token" >&2; exit 1; }

value=$(head -c 10240 /dev/urandom | base64 -w0)
printf '{"inputs":{"binaryPayload":{"value":"%s","contentType":"application/octet-stream"},"metadata":{"bench":true}}}' \
  "$value" >"$work/body.json"
echo "body: $(wc -c <"$work/body.json") bytes; wrk -t$threads -c$connections -d$duration against $url"

# utime + stime of the simulator, in clock ticks (fields 14 and 15 of /proc/PID/stat).
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$sim_pid/stat"; }
ticks_before=$(cpu_ticks)
start_ns=$(date +%s%N)
SIM_BODY="$work/body.json" SIM_TOKEN="$token" \
  wrk -t"$threads" -c"$connections" -d"$duration" -s bench/sim.lua "$url" | tee "$work/wrk.out"
elapsed_ns=$(( $(date +%s%N) - start_ns ))
ticks=$(( $(cpu_ticks) - ticks_before ))

stats=$(curl -sf "$url/__stats")
accepted=$(sed -n 's/.*"accepted":\([0-9]*\).*/\1/p' <<<"$stats")
rps=$(awk '/^Requests\/sec:/ { print $2 }' "$work/wrk.out")
awk -v rps="$rps" -v ticks="$ticks" -v hz="$(getconf CLK_TCK)" -v ns="$elapsed_ns" -v acc="$accepted" 'BEGIN {
  cpu = ticks / hz; wall = ns / 1e9
  printf "\nrequests/s: %.0f   accepted by the simulator: %d\n", rps, acc
  printf "simulator CPU: %.2f s over %.2f s wall = %.0f%% of one core, %.1f us per request\n",
    cpu, wall, 100 * cpu / wall, (acc > 0 ? 1e6 * cpu / acc : 0)
}'
