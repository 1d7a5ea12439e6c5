#!/usr/bin/env bash
# Makes sure a RabbitMQ broker answers on 127.0.0.1:5672: starts the installed one,
# or installs Debian's rabbitmq-server package first. Does nothing when one answers.
set -euo pipefail

answers() { (echo >/dev/tcp/127.0.0.1/5672) 2>/dev/null; }

if answers; then
  exit 0
fi

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v rabbitmq-server >/dev/null 2>&1 && [ ! -x /usr/sbin/rabbitmq-server ]; then
  echo "RabbitMQ is not installed: installing the rabbitmq-server package" >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null
fi

# A freshly installed package may already be starting under systemd.
for _ in $(seq 1 10); do answers && exit 0; sleep 1; done

echo "starting RabbitMQ" >&2
if command -v systemctl >/dev/null 2>&1 && systemctl is-system-running >/dev/null 2>&1; then
  as_root systemctl start rabbitmq-server
else
  as_root rabbitmq-server -detached
fi
for _ in $(seq 1 90); do
  if answers; then
    # The port opens before the broker takes connections; wait for that too.
    as_root rabbitmqctl await_startup >/dev/null 2>&1 || true
    exit 0
  fi
  sleep 1
done
echo "RabbitMQ did not start within 90 s" >&2
exit 1
