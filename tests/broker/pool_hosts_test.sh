#!/bin/sh
# A C driver's pool on a broker (mpe_pool_start_broker), worker hosts running
# mpe_broker_worker_run, each in its own network namespace:
#  1. 10,000 tasks mapped over two hosts: every result, its own, in order;
#  2. a task that SIGKILLs its worker on a live host: that task fails naming
#     the host and the pid, the rest succeed;
#  3. a host stopped by SIGTERM hands back what it holds: with attempts 1 a
#     batch left to lapse would fail as lost, yet every task succeeds;
#  4. a host lost (every process SIGKILLed) mid-map: the other takes its
#     batches over, every result comes, each once.
# Waits on what the programs print and what Redis holds, never on a duration.
# Usage: pool_hosts_test.sh DIR (where broker_pool_host and broker_pool_drive are)
set -u
bin=$1
[ "$(id -u)" -eq 0 ] || { echo "skipped: needs root (network namespaces)"; exit 77; }
command -v redis-server >/dev/null || { echo "skipped: needs redis-server"; exit 77; }
. "$(dirname "$0")/harness.sh"
mpeh_init
mpeh_host broker 1 && mpeh_host drv 2 && mpeh_host a 3 && mpeh_host b 4 || exit 1
mpeh_redis_start broker || exit 1
export MPE_TEST_BROKER="$MPEH_REDIS_URL" # in the environment, not in ps
d=$MPEH_DIR
# 1 when host $1 holds a batch of the run in progress
holds() {
  q=$(rcli --scan --pattern 'mpe:run:*:q' | head -1)
  [ -n "$q" ] && rcli XPENDING "$q" w - + 100 | grep -q "^$1/"
}
host() { # name (its output in name.out, its pid in host_pid)
  mpeh_in "$1" "$bin/broker_pool_host" "$1" 2 >"$d/$1.out" 2>&1 &
  until_ok says "$1" "^started"
  host_pid=$(sed -n 's/^started //p' "$d/$1.out")
}
drive() { # out args...: the driver in the background
  out=$1
  shift
  mpeh_in drv "$bin/broker_pool_drive" "$@" >"$d/$out.out" 2>&1 &
  drv_pid=$!
}
# waits (bounded) for the driver to end: 0 when it succeeded
driven() {
  until_ok ended
  wait $drv_pid
}
ended() { ! kill -0 $drv_pid 2>/dev/null; }

host a
a_pid=$host_pid
host b

# 1. 10,000 tasks over two hosts
drive map 10000 0 10 3 100
driven || fail "map: the driver failed"
says map "^ok 10000" || fail "map: not every result"
echo "ok map: 10000 results, each its own, in order ($(grep '^from' "$d/map.out"))"

# 2. a task kills its worker
drive die 1000 0 10 3 50 500
driven || fail "die: the driver failed"
says die "^died: Pool: the worker running this task (host [ab], pid [0-9]*) was killed by signal 9 (SIGKILL)" ||
  fail "die: the task's death not named"
says die "^ok 1000" || fail "die: not every other result"
echo "ok die: $(grep '^died' "$d/die.out")"

# 3. SIGTERM: what a holds is handed back (attempts 1: a lapsed batch would fail)
drive term 200 50 3 1 10
until_ok holds a
kill -TERM "$a_pid"
until_ok says a "^stopped"
says a "^stopped 0" || fail "term: host a did not stop cleanly"
driven || fail "term: the driver failed (a batch of the stopped host lost?)"
says term "^ok 200" || fail "term: not every result"
echo "ok term: host a stopped by SIGTERM handed its batches back; 200 results"

# 4. host loss mid-map
host a
drive loss 400 20 1 3 10
until_ok holds a
mpeh_kill a
driven || fail "loss: the driver failed"
says loss "^ok 400" || fail "loss: not every result"
echo "ok host loss: host a SIGKILLed mid-map; its batches taken over; 400 results, each once"
