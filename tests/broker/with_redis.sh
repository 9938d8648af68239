#!/bin/sh
# Runs a test command beside a Redis server of its own (loopback, a password,
# no persistence), stopped at the end, pass or fail. The command finds it in
# MPE_TEST_BROKER (its URL), MPE_TEST_BROKER_PASS, _PORT and _SOCK.
# Usage: with_redis.sh CMD [ARGS...]
set -u
command -v redis-server >/dev/null || { echo "skipped: needs redis-server"; exit 77; }
. "$(dirname "$0")/harness.sh"
mpeh_init
mpeh_redis_start || exit 1
export MPE_TEST_BROKER="$MPEH_REDIS_URL" MPE_TEST_BROKER_PASS="$MPEH_REDIS_PASS" \
  MPE_TEST_BROKER_PORT="$MPEH_REDIS_PORT" MPE_TEST_BROKER_SOCK="$MPEH_REDIS_SOCK"
"$@"
