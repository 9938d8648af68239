#!/bin/sh
# Lua job scripts on a broker: `mpengine run --broker` (MPENGINE_BROKER) with
# `mpengine worker` hosts, each in its own network namespace:
#  1. scripts/wordcount.lua gives the same counts locally and on the hosts;
#  2. a task sees its job script's globals and modules (they travel with the
#     run), its error names file:line and the host, an object of the
#     driver's host cannot be sent to a task;
#  3. a task that SIGKILLs its worker fails naming the host and the pid;
#     a per-task timeout is enforced on the host;
#  4. a host lost (every process SIGKILLed) mid-map: every result comes;
#  5. a host stopped by SIGTERM hands back, says so and exits 0;
#  6. status --json lists the hosts; the password is in no command line;
#  7. the driver killed: its run's keys expire from the broker and no worker
#     runs its tasks any more;
#  8. the broker away past broker_timeout: a clear error, no hang;
#  9. the broker restarted without persistence mid-map: the run is submitted
#     again and every result comes, once.
# Also: a plain script's module travels, maxtasksperchild, another Lua
# build, malformed batches written by hand to the broker.
# Waits on what the programs print and what Redis holds, never on a duration.
# Usage: lua_hosts_test.sh BUILD_DIR SOURCE_DIR
set -u
bin=$1
src=$2
[ "$(id -u)" -eq 0 ] || { echo "skipped: needs root (network namespaces)"; exit 77; }
command -v redis-server >/dev/null || { echo "skipped: needs redis-server"; exit 77; }
. "$(dirname "$0")/harness.sh"
mpeh_init
mpeh_host broker 1 && mpeh_host drv 2 && mpeh_host a 3 && mpeh_host b 4 && mpeh_host c 5 || exit 1
mpeh_redis_start broker || exit 1
export MPENGINE_BROKER="$MPEH_REDIS_URL" # in the environment, not in ps
d=$MPEH_DIR
jobs=$src/tests/broker/jobs

worker() { # name [args...]: a worker host, until it says it serves
  name=$1
  shift
  mpeh_in "$name" "$bin/mpengine" worker --procs 2 --name "$name" "$@" >"$d/$name.out" 2>&1 &
  until_ok says "$name" "^mpengine: worker $name: serving redis://"
}
# waits (bounded: a hang is a failure) for the driver in the background
driven() {
  until_ok dead $drv
  wait $drv
}
dead() { ! kill -0 "$1" 2>/dev/null; }
run() { # out script args...: a job on the driver's host, in the foreground
  out=$1
  shift
  (cd "$d" && mpeh_in drv "$bin/mpengine" run "$@") >"$d/$out.out" 2>&1
}
worker a
worker b

# 1. the same counts locally and on the hosts
(cd "$d" && MPENGINE_BROKER= "$bin/mpengine" run "$src/scripts/wordcount.lua" "$src/engine" "$d/local.json" 2) \
  >"$d/wc_local.out" 2>&1 || fail "wordcount: local run failed"
run wc_broker "$src/scripts/wordcount.lua" "$src/engine" "$d/broker.json" || fail "wordcount: broker run failed"
same_json() { # the two files hold the same object (cjson's key order varies)
  "$bin/mpengine" run -e '
    local cjson = require "cjson"
    local function load(p) local f = assert(io.open(p)) local t = cjson.decode(f:read("a")) f:close() return t end
    local a, b = load(arg[1]), load(arg[2])
    local n = 0
    for k, v in pairs(a) do n = n + 1 if b[k] ~= v then os.exit(1) end end
    for _ in pairs(b) do n = n - 1 end
    os.exit(n == 0 and 0 or 1)' "$1" "$2"
}
same_json "$d/local.json" "$d/broker.json" || fail "wordcount: counts differ locally and on the hosts"
grep -A 20 "most frequent" "$d/wc_local.out" >"$d/top_local" &&
  grep -A 20 "most frequent" "$d/wc_broker.out" >"$d/top_broker" && cmp -s "$d/top_local" "$d/top_broker" ||
  fail "wordcount: output differs"
echo "ok wordcount: same counts locally and on two hosts"

# 2. what travels, errors
run basic "$jobs/features.lua" basic || fail "basic: the job failed"
says basic "^map 11,41,91$" || fail "basic: the script's global, module or upvalue missing on the hosts"
says basic "^host true$" || fail "basic: a task does not know its broker"
says basic "^initializer yes$" || fail "basic: the initializer did not run on the hosts"
says basic "^starmap 6,20 imap_unordered 2,3,4$" || fail "basic: starmap or imap_unordered"
says basic "^error false .*features.lua:[0-9]*: boom | Pool: the task of apply failed on host [ab]; worker traceback:" ||
  fail "basic: the error lacks its line or host"
says basic "^local false .*Queue: an object of this host cannot reach a task on another host" ||
  fail "basic: a local Queue was not refused"
run plain "$jobs/plain.lua" || fail "plain: the job failed"
says plain "^plain 4,9$" || fail "plain: a plain script's module did not travel"
run recycle "$jobs/features.lua" recycle || fail "recycle: the job failed"
says recycle "^recycle 100 100$" || fail "recycle: maxtasksperchild on a broker"
run objects "$jobs/features.lua" objects || fail "objects: the job failed"
says objects "^objects 10 55 10$" || fail "objects: the run's Dict, Queue, Lock and Value across hosts"
run cap "$jobs/features.lua" cap || fail "cap: the job failed"
says cap "^cap [12]$" || fail "cap: more tasks ran at once than processes"
echo "ok travel: globals, modules, upvalues; errors with file:line and host; local objects refused"

# a malformed batch written by hand to a run's stream: no host stops for it
mkfifo "$d/go2"
(cd "$d" && mpeh_in drv "$bin/mpengine" run "$jobs/features.lua" build <"$d/go2") >"$d/bad.out" 2>&1 &
drv=$!
exec 8>"$d/go2"
until_ok says bad "^ready"
q=$(rcli --scan --pattern 'mpe:run:*:q' | head -1)
rcli XADD "$q" '*' s 1 >/dev/null
rcli XADD "$q" '*' s 2 d short >/dev/null
echo go >&8
exec 8>&-
driven || fail "bad: the job failed"
says bad "^build true" || fail "bad: the run did not go on"
says a "stopped" && fail "bad: host a stopped"
says b "stopped" && fail "bad: host b stopped"
echo "ok malformed batches: no host stopped, the run went on"

# 3. a worker killed, a task timed out
run die "$jobs/features.lua" die || fail "die: the job failed"
says die "^die false Pool: the worker running this task (host [ab], pid [0-9]*) was killed by signal 9 (SIGKILL)" ||
  fail "die: the death not named"
JOB_TIMEOUT=0.5 run timeout "$jobs/features.lua" timeout || fail "timeout: the job failed"
says timeout "^timeout false Pool: task timed out after 0.5 s; its worker (host [ab], pid [0-9]*) was killed and replaced" ||
  fail "timeout: not enforced on the host"
echo "ok deaths: a killed worker and a timeout named with host and pid"

# another Lua build's code is refused with both builds named
mkfifo "$d/go"
(cd "$d" && mpeh_in drv "$bin/mpengine" run "$jobs/features.lua" build <"$d/go") >"$d/build.out" 2>&1 &
drv=$!
exec 7>"$d/go"
until_ok says build "^ready"
h=$(rcli --scan --pattern 'mpe:run:*' | grep -v ':[qr]$' | head -1)
rcli HSET "$h" c:build "Lua 5.3.6 (32-bit integers, 64-bit floats, 32-bit pointers)" >/dev/null
echo go >&7
exec 7>&-
driven || fail "build: the job failed"
says build "^build false .*the run's code comes from Lua 5.3.6 (32-bit integers.*); host [ab] runs Lua 5.4" ||
  fail "build: another build's code not refused by name"
echo "ok builds: code from another Lua build refused, naming both"

# 4. a host lost mid-map
holds() {
  q=$(rcli --scan --pattern 'mpe:run:*:q' | head -1)
  [ -n "$q" ] && rcli XPENDING "$q" w - + 100 | grep -q "^$1/"
}
(cd "$d" && mpeh_in drv "$bin/mpengine" run "$jobs/long_map.lua" 400 10 1) >"$d/lost.out" 2>&1 &
drv=$!
until_ok holds a
mpeh_kill a
driven || fail "lost: the map failed"
says lost "^ok 400$" || fail "lost: not every result"
echo "ok host lost: every result after the takeover"
worker a

# 5. SIGTERM: hand back, exit 0
(cd "$d" && mpeh_in drv "$bin/mpengine" run "$jobs/long_map.lua" 400 10 30) >"$d/term.out" 2>&1 &
drv=$!
until_ok holds b
for p in $(ip netns pids "$MPEH_ID-b"); do
  grep -q "worker" /proc/$p/cmdline 2>/dev/null && tr '\0' ' ' </proc/$p/cmdline | grep -q -- "--name b" && kill -TERM $p
done
until_ok says b "^mpengine: worker b: stopped serving"
driven || fail "term: the map failed"
says term "^ok 400$" || fail "term: not every result"
echo "ok SIGTERM: the host handed back and said so; every result"

# 6. status, and no password on any command line
worker c --broker "$MPEH_REDIS_URL"
mpeh_in drv "$bin/mpengine" status --json >"$d/status.out" 2>&1 || fail "status failed"
says status '"name": "a"' && says status '"name": "c"' || fail "status: hosts missing"
for p in $(ip netns pids "$MPEH_ID-c"); do
  grep -q "$MPEH_REDIS_PASS" /proc/$p/cmdline 2>/dev/null && fail "the password is in a command line"
done
echo "ok status lists the hosts; the password is in no command line"

# 7. the driver killed: its keys expire
(cd "$d" && mpeh_in drv "$bin/mpengine" run "$jobs/long_map.lua" 100 120000 1) >"$d/kill.out" 2>&1 &
drv=$!
until_ok holds a
mpeh_kill drv
gone() { [ -z "$(rcli --scan --pattern 'mpe:run:*')" ]; }
until_ok gone
busy_workers() { # worker processes of host a that use CPU: none once the run is gone
  n=0
  for p in $(ip netns pids "$MPEH_ID-a"); do
    [ "$(awk '{print $3}' /proc/$p/stat 2>/dev/null)" = R ] && n=$((n + 1))
  done
  [ $n -eq 0 ]
}
until_ok busy_workers
echo "ok driver killed: its run expired from the broker, its tasks stopped"

# 8. the broker away for longer than broker_timeout: a clear error, no hang
mkfifo "$d/go3"
(cd "$d" && mpeh_in drv "$bin/mpengine" run "$jobs/features.lua" away <"$d/go3") >"$d/away.out" 2>&1 &
drv=$!
exec 9>"$d/go3"
until_ok says away "^ready"
mpeh_kill broker
echo go >&9
exec 9>&-
driven || fail "away: the job failed"
says away "^away false Pool: the broker redis://[0-9.:]* could not be reached for broker_timeout (2 s)" ||
  fail "away: no clear error"
mpeh_redis_restart broker || fail "away: redis did not come back"
echo "ok broker away past broker_timeout: a clear error"

# 9. the broker restarted without persistence mid-map
(cd "$d" && mpeh_in drv "$bin/mpengine" run "$jobs/long_map.lua" 400 10 2) >"$d/restart.out" 2>&1 &
drv=$!
until_ok holds a
mpeh_redis_restart broker || fail "restart: redis did not come back"
driven || fail "restart: the map failed"
says restart "^ok 400$" || fail "restart: not every result"
until_ok says a "^mpengine: worker a: reconnected to redis://"
says a "^mpengine: worker a: lost redis://.*; reconnecting$" || fail "restart: the host did not say it lost the broker"
echo "ok broker restarted mid-map: the run was submitted again, every result once"
