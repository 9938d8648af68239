# harness.sh - sourced by the broker's tests: a Redis server of the test's
# own, and "hosts" as Linux network namespaces on a bridge (needs root).
#
#   . tests/broker/harness.sh
#   mpeh_init                   # unique names, stale ones removed, cleanup trap
#   mpeh_host NAME N            # namespace NAME on the bridge, address 10.77.0.N
#   mpeh_redis_start [NAME]     # redis in that namespace (default: here, on
#                               # loopback); sets MPEH_REDIS_URL, _ADDR, _PORT,
#                               # _PASS, _SOCK (a unix socket too), _PID
#   mpeh_in NAME CMD...         # runs CMD inside host NAME
#   mpeh_kill NAME              # SIGKILLs every process of host NAME (host loss)
#   mpeh_link NAME down|up      # cuts host NAME off the bridge, or back (partition)
#
# Every name starts with mpt<pid of this shell>, so parallel runs do not
# collide and an aborted run's leftovers are recognised (their pid is gone)
# and removed by the next mpeh_init. mpeh_cleanup runs on exit, pass or fail,
# and on SIGINT/SIGTERM/SIGHUP: it kills what the run started, deletes its
# namespaces, links and files.

MPEH_PREFIX=mpt
MPEH_ID=""
MPEH_HOSTS=""
MPEH_DIR=""
MPEH_REDIS_PID=""

# Removes namespaces and links of runs whose shell is gone.
mpeh_remove_stale() {
  for n in $(ip netns list 2>/dev/null | cut -d' ' -f1 | grep "^$MPEH_PREFIX[0-9]"); do
    p=$(echo "$n" | sed "s/^$MPEH_PREFIX\([0-9]*\).*/\1/")
    [ -d "/proc/$p" ] && continue
    ip netns pids "$n" 2>/dev/null | xargs -r kill -9 2>/dev/null
    ip netns del "$n" 2>/dev/null
  done
  for l in $(ip -o link show 2>/dev/null | cut -d' ' -f2 | cut -d@ -f1 | tr -d : | grep "^$MPEH_PREFIX[0-9]"); do
    p=$(echo "$l" | sed "s/^$MPEH_PREFIX\([0-9]*\).*/\1/")
    [ -d "/proc/$p" ] || ip link del "$l" 2>/dev/null
  done
}

mpeh_cleanup() {
  trap - EXIT INT TERM HUP
  [ -n "$MPEH_REDIS_PID" ] && kill -9 "$MPEH_REDIS_PID" 2>/dev/null
  for h in $MPEH_HOSTS; do
    ip netns pids "$MPEH_ID-$h" 2>/dev/null | xargs -r kill -9 2>/dev/null
    ip netns del "$MPEH_ID-$h" 2>/dev/null
  done
  for l in $(ip -o link show 2>/dev/null | cut -d' ' -f2 | cut -d@ -f1 | tr -d : | grep "^$MPEH_ID[a-z]"); do
    ip link del "$l" 2>/dev/null
  done
  [ -n "$MPEH_DIR" ] && rm -rf "$MPEH_DIR"
  MPEH_REDIS_PID=""
  MPEH_HOSTS=""
  MPEH_DIR=""
}

mpeh_init() {
  MPEH_ID="$MPEH_PREFIX$$"
  MPEH_DIR=$(mktemp -d)
  trap 'rc=$?; mpeh_cleanup; exit $rc' EXIT
  trap 'exit 130' INT TERM HUP
  mpeh_remove_stale
}

# The bridge, made with the first host.
mpeh_bridge() {
  ip link show "${MPEH_ID}br" >/dev/null 2>&1 && return 0
  ip link add "${MPEH_ID}br" type bridge && ip link set "${MPEH_ID}br" up
}

mpeh_host() {
  name=$1
  n=$2
  mpeh_bridge || return 1
  MPEH_HOSTS="$MPEH_HOSTS $name"
  ip netns add "$MPEH_ID-$name" || return 1
  ip link add "${MPEH_ID}v$n" type veth peer name "${MPEH_ID}p$n" || return 1
  ip link set "${MPEH_ID}p$n" netns "$MPEH_ID-$name" || return 1
  ip link set "${MPEH_ID}v$n" master "${MPEH_ID}br" up || return 1
  ip -n "$MPEH_ID-$name" link set lo up
  ip -n "$MPEH_ID-$name" link set "${MPEH_ID}p$n" name eth0
  ip -n "$MPEH_ID-$name" addr add "10.77.0.$n/24" dev eth0
  ip -n "$MPEH_ID-$name" link set eth0 up
  eval "MPEH_ADDR_$name=10.77.0.$n"
  eval "MPEH_LINK_$name=${MPEH_ID}v$n"
}

mpeh_in() {
  name=$1
  shift
  ip netns exec "$MPEH_ID-$name" "$@"
}

mpeh_kill() {
  ip netns pids "$MPEH_ID-$1" | xargs -r kill -9
}

mpeh_link() {
  eval "l=\$MPEH_LINK_$1"
  ip link set "$l" "$2"
}

# A port nobody listens on (in the namespace given, or here), from 20000-59999.
mpeh_free_port() {
  while :; do
    port=$((20000 + $(od -An -N2 -tu2 /dev/urandom) % 40000))
    if [ -n "${1:-}" ]; then used=$(mpeh_in "$1" ss -Htln "sport = :$port"); else used=$(ss -Htln "sport = :$port"); fi
    [ -z "$used" ] && echo "$port" && return 0
  done
}

# Starts redis-server with a password, no persistence, on loopback here or on
# the host's address inside namespace $1; waits until it answers.
mpeh_redis_start() {
  ns=${1:-}
  MPEH_REDIS_PASS=$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
  tries=0
  while [ $tries -lt 5 ]; do
    tries=$((tries + 1))
    MPEH_REDIS_PORT=$(mpeh_free_port "$ns")
    if [ -n "$ns" ]; then eval "addr=\$MPEH_ADDR_$ns"; else addr=127.0.0.1; fi
    conf=$MPEH_DIR/redis.conf
    # the password in a file, never in argv (ps)
    umask 077
    printf 'port %s\nbind %s\nrequirepass %s\nsave ""\nappendonly no\ndir %s\nlogfile %s\n' \
      "$MPEH_REDIS_PORT" "$addr" "$MPEH_REDIS_PASS" "$MPEH_DIR" "$MPEH_DIR/redis.log" >"$conf"
    MPEH_REDIS_SOCK=$MPEH_DIR/redis.sock
    printf 'unixsocket %s\nunixsocketperm 700\n' "$MPEH_REDIS_SOCK" >>"$conf"
    if [ -n "$ns" ]; then
      mpeh_in "$ns" redis-server "$conf" &
    else
      redis-server "$conf" &
    fi
    MPEH_REDIS_PID=$!
    i=0
    while [ $i -lt 200 ]; do
      kill -0 "$MPEH_REDIS_PID" 2>/dev/null || break
      if [ -n "$ns" ]; then
        r=$(REDISCLI_AUTH=$MPEH_REDIS_PASS mpeh_in "$ns" redis-cli -h "$addr" -p "$MPEH_REDIS_PORT" ping 2>/dev/null)
      else
        r=$(REDISCLI_AUTH=$MPEH_REDIS_PASS redis-cli -h "$addr" -p "$MPEH_REDIS_PORT" ping 2>/dev/null)
      fi
      if [ "$r" = PONG ]; then
        MPEH_REDIS_ADDR=$addr
        MPEH_REDIS_URL="redis://:$MPEH_REDIS_PASS@$addr:$MPEH_REDIS_PORT"
        return 0
      fi
      i=$((i + 1))
      sleep 0.05
    done
    kill -9 "$MPEH_REDIS_PID" 2>/dev/null
    wait "$MPEH_REDIS_PID" 2>/dev/null
    MPEH_REDIS_PID=""
  done
  echo "harness: redis-server did not start" >&2
  cat "$MPEH_DIR/redis.log" >&2 2>/dev/null
  return 1
}

# Kills the Redis of mpeh_redis_start (SIGKILL: without persistence it
# loses everything) and starts it again on the same port, password and
# namespace; waits until it answers.
mpeh_redis_restart() {
  ns=${1:-}
  # in a namespace, $! is the shell that runs ip netns exec: every pid there goes
  if [ -n "$ns" ]; then mpeh_kill "$ns"; else kill -9 "$MPEH_REDIS_PID" 2>/dev/null; fi
  wait "$MPEH_REDIS_PID" 2>/dev/null
  i=0
  while [ $i -lt 200 ]; do
    if [ -n "$ns" ]; then mpeh_in "$ns" redis-server "$MPEH_DIR/redis.conf" & else redis-server "$MPEH_DIR/redis.conf" & fi
    MPEH_REDIS_PID=$!
    j=0
    while [ $j -lt 100 ] && kill -0 "$MPEH_REDIS_PID" 2>/dev/null; do
      if [ -n "$ns" ]; then
        r=$(REDISCLI_AUTH=$MPEH_REDIS_PASS mpeh_in "$ns" redis-cli -h "$MPEH_REDIS_ADDR" -p "$MPEH_REDIS_PORT" ping 2>/dev/null)
      else
        r=$(REDISCLI_AUTH=$MPEH_REDIS_PASS redis-cli -h "$MPEH_REDIS_ADDR" -p "$MPEH_REDIS_PORT" ping 2>/dev/null)
      fi
      [ "$r" = PONG ] && return 0
      j=$((j + 1))
      sleep 0.05
    done
    wait "$MPEH_REDIS_PID" 2>/dev/null # the port not free yet: again
    i=$((i + 1))
  done
  echo "harness: redis-server did not restart" >&2
  return 1
}

# What the tests share once hosts and Redis are up: fail (says why, shows
# every program's output, exits 1), rcli (redis-cli in the broker's host),
# until_ok CMD... (runs CMD until it succeeds; bounded: a hang is a failure),
# says NAME TEXT (NAME's output holds TEXT).
fail() {
  echo "$(basename "$0" .sh): $*"
  for f in "$MPEH_DIR"/*.out; do echo "--- $f"; cat "$f"; done
  exit 1
}
rcli() { REDISCLI_AUTH=$MPEH_REDIS_PASS mpeh_in broker redis-cli -h "$MPEH_REDIS_ADDR" -p "$MPEH_REDIS_PORT" "$@"; }
until_ok() {
  i=0
  until "$@"; do
    i=$((i + 1))
    [ $i -lt ${MPEH_WAIT:-6000} ] || fail "gave up waiting for: $*"
    sleep 0.01
  done
}
says() { grep -q "$2" "$MPEH_DIR/$1.out" 2>/dev/null; }
