#!/bin/sh
# broker_hosts.sh - runs scripts/bench/broker.lua with "hosts" as Linux
# network namespaces on a bridge, as the tests do: the broker (a Redis of
# the run's own) in one, the driver in one, each worker host in its own.
# broker.lua runs this itself when it can (root, ip); everything it starts
# is stopped and every namespace removed at the end, pass or fail.
#
#   sh scripts/bench/broker_hosts.sh MPENGINE [ARGS...]
set -u
exe=$1
shift
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../../tests/broker/harness.sh"
mpeh_init
mpeh_host broker 1 && mpeh_host drv 2 && mpeh_host h1 3 && mpeh_host h2 4 || exit 1
mpeh_redis_start broker || exit 1
# broker.lua starts its hosts with ip netns exec $MPE_BENCH_NS<name>
MPE_BENCH_BROKER=$MPEH_REDIS_URL MPE_BENCH_NS="$MPEH_ID-" \
  mpeh_in drv "$exe" run "$here/broker.lua" "$@"
