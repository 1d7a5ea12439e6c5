#!/usr/bin/env bash
# The whole test suite: unit and integration tests against a real RabbitMQ and real
# S3/Azure/HTTPS servers, the contract's conformance suite against the release
# binary, clippy and rustfmt. Installs and starts what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/ensure-rabbitmq.sh
if ! python3 -c 'import pika' 2>/dev/null; then
  python3 -m pip install --quiet pika
fi
scripts/test-servers.sh
export PATH="$PWD/.tools/bin:$PATH"

cargo test --all-targets
scripts/check-deploy.sh
cargo build --release
conformance="${CONFORMANCE_DIR:-../shared/conformance}"
if [ ! -f "$conformance/run.py" ]; then
  echo "test.sh: the conformance suite is not at $conformance (set CONFORMANCE_DIR)" >&2
  exit 1
fi
python3 "$conformance/run.py" --worker "${CARGO_TARGET_DIR:-target}/release/cxone-worker"
cargo clippy --all-targets -- -D warnings
cargo fmt --check
echo "all checks passed"
