#!/usr/bin/env bash
# Start PostgreSQL and Redis on loopback when they are not already answering.
set -euo pipefail
SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo

pg_up() { pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; }
redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; }

if ! command -v pg_ctlcluster >/dev/null || ! command -v redis-server >/dev/null; then
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq postgresql redis-server
fi
if ! pg_up; then
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n 1)" main start
fi
if ! redis_up; then
  $SUDO mkdir -p /var/lib/redis /var/log/redis
  $SUDO redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
fi
for _ in $(seq 1 30); do
  if pg_up && redis_up; then echo "services: PostgreSQL and Redis are up"; exit 0; fi
  sleep 1
done
echo "services: PostgreSQL or Redis did not come up" >&2
exit 1
