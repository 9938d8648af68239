#!/bin/sh
# The script's objects on a broker, across hosts (network namespaces; the
# broker in its own), each host an `mpengine run` of its own with the same
# MPENGINE_BROKER, the objects found by name:
#  1. the counter: 2 hosts x 5 processes x 20 increments under a Lock = 200,
#     and v:add(1) without a lock = 200;
#  2. the ticket sale (scripts/tickets.lua --broker): 10 buyers on 2 hosts,
#     an mp.Dict as the database, a Lock: exactly 3 sell; --unlocked oversells;
#  3. a Lock's holder host killed: while it lives (renewing) nobody gets the
#     Lock; once it is gone, another host gets it after the lease, with a
#     larger fence;
#  4. a Queue: 4 producers x 50,000 items, 3 consumers over 2 hosts: every
#     item exactly once;
#  5. a JoinableQueue consumer's host killed after it took an item: another
#     host gets that item again (after the consumer's lease), and join ends.
# Waits on what the programs print, never on a duration.
# Usage: objects_hosts_test.sh BUILD_DIR SOURCE_DIR
set -u
build=$1
src=$2
[ "$(id -u)" -eq 0 ] || { echo "skipped: needs root (network namespaces)"; exit 77; }
command -v redis-server >/dev/null || { echo "skipped: needs redis-server"; exit 77; }
. "$(dirname "$0")/harness.sh"
mpeh_init
mpeh_host broker 1 && mpeh_host a 3 && mpeh_host b 4 || exit 1
mpeh_redis_start broker || exit 1
export MPENGINE_BROKER="$MPEH_REDIS_URL" # in the environment, not in ps
d=$MPEH_DIR
job=$src/tests/broker/objects_job.lua
cli=$build/mpengine
on() { # host out-name args...: `mpengine run` in the background on host
  h=$1
  o=$2
  shift 2
  mpeh_in "$h" "$cli" run "$@" >"$d/$o.out" 2>&1 &
}
ran_ok() { wait "$1" || fail "$2 failed"; }

# 1. the counter
on a ca "$job" counter c1 5 20; pa=$!
on b cb "$job" counter c1 5 20; pb=$!
ran_ok $pa "counter on a"; ran_ok $pb "counter on b"
mpeh_in a "$cli" run "$job" counts c1 >"$d/counts.out" 2>&1 || fail "counts"
says counts "^locked 200 added 200$" || fail "counter: not exactly 200 both ways"
echo "ok counter: 2 hosts x 5 processes x 20 increments: 200 under the Lock, 200 with add"

# 2. the ticket sale
for mode in locked unlocked; do
  flag=""
  [ $mode = unlocked ] && flag=--unlocked
  on a ta "$src/scripts/tickets.lua" --broker --sale "s-$mode" --buyers 5 --of 10 $flag; pa=$!
  on b tb "$src/scripts/tickets.lua" --broker --sale "s-$mode" --buyers 5 --of 10 $flag; pb=$!
  wait $pa; wait $pb
  sold=$(cat "$d/ta.out" "$d/tb.out" | sed -n 's/^\([0-9]*\) tickets sold on this host.*/\1/p' | awk '{s+=$1} END {print s+0}')
  left=$(mpeh_in a "$cli" run "$src/scripts/tickets.lua" --broker --sale "s-$mode" --left)
  if [ $mode = locked ]; then
    [ "$sold" = 3 ] && [ "$left" = 0 ] || fail "tickets: $sold sold, $left left (want 3 and 0)"
    echo "ok tickets: 10 buyers on 2 hosts under the Lock: exactly 3 sold, 0 left"
  else
    [ "$sold" -gt 3 ] || fail "tickets --unlocked: $sold sold, no oversale"
    echo "ok tickets --unlocked: $sold sold of 3"
  fi
done

# 3. a Lock's holder host killed
on a hold "$job" hold l1 2
until_ok says hold "^held "
f1=$(sed -n 's/^held //p' "$d/hold.out")
mpeh_in b "$cli" run "$job" take l1 5 >"$d/take1.out" 2>&1 || fail "take"
says take1 "^refused$" || fail "lock: taken from a live holder that renews its lease"
mpeh_kill a
mpeh_in b "$cli" run "$job" take l1 30 >"$d/take2.out" 2>&1 || fail "take"
f2=$(sed -n 's/^took //p' "$d/take2.out")
[ -n "$f2" ] && [ "$f2" -gt "$f1" ] || fail "lock: after the holder's host died: '$f2' (want a fence > $f1)"
echo "ok lock lease: refused while the holder lived; after its host was killed, taken with fence $f2 > $f1"

# 4. the queue
on a qa "$job" queue q1 2 2 50000 "$d/items-a"; pa=$!
on b qb "$job" queue q1 2 1 50000 "$d/items-b"; pb=$!
ran_ok $pa "queue on a"; ran_ok $pb "queue on b"
n=$(cat "$d"/items-* | wc -l)
dups=$(cat "$d"/items-* | sort | uniq -d | wc -l)
files=$(ls "$d"/items-* | wc -l)
[ "$n" = 200000 ] && [ "$dups" = 0 ] && [ "$files" = 3 ] ||
  fail "queue: $n items, $dups duplicated, $files consumers (want 200000, 0, 3)"
echo "ok queue: 4 producers x 50,000 over 2 hosts, 3 consumers: 200,000 items, each exactly once"

# 5. a JoinableQueue consumer's host killed
mpeh_in b "$cli" run "$job" jput j1 1 2 >"$d/jput.out" 2>&1 || fail "jput"
on a jtake "$job" jtake j1 1
until_ok says jtake "^took "
took=$(sed -n 's/^took //p' "$d/jtake.out")
mpeh_kill a
mpeh_in b "$cli" run "$job" jdrain j1 1 2 >"$d/jdrain.out" 2>&1 || fail "jdrain"
says jdrain "^got 1 2 joined$" || fail "joinable: the killed consumer's item $took was not redelivered"
echo "ok joinable queue: item $took, taken on a killed host, redelivered on the other; join ended"
