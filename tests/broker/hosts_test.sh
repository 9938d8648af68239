#!/bin/sh
# Worker hosts in network namespaces, the broker and the driver in their own:
#  1. a host lost (every process SIGKILLed) while it holds a batch: another
#     host takes it over, every batch gets exactly one result;
#  2. a host cut off while it holds a batch: another takes it over once the
#     lease lapses; when the link comes back, its late result is dropped
#     (fencing) and the driver sees no second result.
# Waits on what the programs print and what Redis holds, never on a duration.
# Usage: hosts_test.sh DIR (where broker_host and broker_drive are)
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
# the id of a batch host $2 holds in run $1 (empty if none)
held_by() { rcli XPENDING "mpe:run:$1:q" w - + 100 | grep -B1 "^$2/" | head -1; }
holds() { [ -n "$(held_by "$1" "$2")" ]; }
seq_of() { rcli XRANGE "mpe:run:$1:q" "$2" "$2" | sed -n 3p; }
drive() { # run n lease: the driver, its stdin a fifo kept open on fd 3
  mkfifo "$d/$1.in"
  mpeh_in drv "$bin/broker_drive" "$1" "$2" "$3" <"$d/$1.in" >"$d/$1.out" 2>&1 &
  drv_pid=$!
  exec 3>"$d/$1.in"
  until_ok opened "$1" # hosts find a run only once it is there
}
opened() { [ "$(rcli EXISTS "mpe:run:$1:q")" = 1 ]; }
host() { # name run work lease
  mpeh_in "$1" "$bin/broker_host" "$2" "$1" "$3" "$4" >"$d/$1-$2.out" 2>&1 &
}

# 1. host loss
run=loss
drive $run 40 0.5
host a $run 30 0.5
until_ok holds $run a
host b $run 0.01 0.5
id=$(held_by $run a)
seq=$(seq_of $run "$id")
[ -n "$seq" ] || fail "no batch held by a"
mpeh_kill a
until_ok says $run "^all 40"
echo >&3
exec 3>&-
wait $drv_pid || fail "loss: the driver failed"
says $run "^closed, 40 results" || fail "loss: not 40 results"
says $run "^result $seq from b$" || fail "loss: batch $seq (held by the lost host) not taken over by b"
echo "ok host loss: batch $seq taken over, 40 results, each once"

# 2. partition
run=part
drive $run 20 0.6
host a $run 5 0.6
until_ok holds $run a
id=$(held_by $run a)
seq=$(seq_of $run "$id")
mpeh_link a down
host b $run 0.01 0.6
until_ok says $run "^all 20"
says $run "^result $seq from b$" || fail "part: batch $seq (held by the cut-off host) not taken over by b"
mpeh_link a up
until_ok says a-$run "late result dropped"
echo >&3
exec 3>&-
wait $drv_pid || fail "part: the driver saw a second result"
says $run "^closed, 20 results" || fail "part: not 20 results"
echo "ok partition: batch $seq taken over; the cut-off host's late result dropped; 20 results, each once"
