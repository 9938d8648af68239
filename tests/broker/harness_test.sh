#!/bin/sh
# The harness checks itself: hosts reach the broker across the bridge, a
# partition cuts one off and heals, a host loss leaves no process behind, and
# a test that fails (or is killed) leaves no namespace, link, server or file.
# Usage: harness_test.sh (as root, with redis-server and iproute2).
set -u
here=$(cd "$(dirname "$0")" && pwd)
[ "$(id -u)" -eq 0 ] || { echo "skipped: needs root (network namespaces)"; exit 77; }
command -v redis-server >/dev/null && command -v ip >/dev/null ||
  { echo "skipped: needs redis-server and iproute2"; exit 77; }
fail() { echo "harness_test: $*" >&2; exit 1; }
out=$(mktemp)
trap 'rm -f "$out"' EXIT

# A test body in its own shell: it records what it made, then ends as told.
body() {
  sh -c '
    . "$1/harness.sh"
    mpeh_init
    mpeh_host broker 1 && mpeh_host w1 2 && mpeh_host w2 3 || exit 2
    mpeh_redis_start broker || exit 2
    echo "$MPEH_ID $MPEH_REDIS_PID $MPEH_DIR" >"$2"
    ping() { REDISCLI_AUTH=$MPEH_REDIS_PASS mpeh_in "$1" timeout 5 redis-cli -h "$MPEH_REDIS_ADDR" \
      -p "$MPEH_REDIS_PORT" ping 2>/dev/null; }
    [ "$(ping w1)" = PONG ] && [ "$(ping w2)" = PONG ] || exit 3
    # the password is required
    [ "$(mpeh_in w1 timeout 5 redis-cli -h "$MPEH_REDIS_ADDR" -p "$MPEH_REDIS_PORT" ping 2>&1)" != PONG ] || exit 4
    mpeh_link w1 down
    [ "$(ping w1)" != PONG ] && [ "$(ping w2)" = PONG ] || exit 5
    mpeh_link w1 up
    [ "$(ping w1)" = PONG ] || exit 6
    mpeh_in w2 sleep 1000 &
    p1=$!
    mpeh_in w2 sh -c "sleep 1000 & sleep 1000" &
    p2=$!
    while [ "$(ip netns pids "$MPEH_ID-w2" | wc -l)" -lt 3 ]; do sleep 0.01; done
    mpeh_kill w2
    wait $p1 $p2
    [ -z "$(ip netns pids "$MPEH_ID-w2")" ] || exit 7
    [ "$(ping w1)" = PONG ] || exit 8
    mpeh_in w1 sleep 1000 &
    case $3 in
      fail) exit 9 ;;
      term) kill -TERM $$; sleep 1000 ;;
    esac
  ' body "$here" "$out" "$1"
}

left() { # what of run $1 (id, redis pid, dir) is still there
  set -- $(cat "$out")
  ip netns list | grep "^$1-"
  ip -o link show | grep -o "$1[a-z][a-z0-9]*"
  kill -0 "$2" 2>/dev/null && echo "redis-server $2"
  [ -e "$3" ] && echo "$3"
  pgrep -f "^sleep 1000" >/dev/null && echo "sleep 1000"
  true
}

for how in fail term; do
  : >"$out"
  body $how
  rc=$?
  [ -s "$out" ] || fail "$how: the hosts or the server did not start (exit $rc)"
  case $how in
    fail) [ $rc -eq 9 ] || fail "fail: exit $rc, not 9" ;;
    term) [ $rc -eq 130 ] || fail "term: exit $rc, not 130" ;;
  esac
  rest=$(left)
  [ -z "$rest" ] || fail "$how: left behind: $rest"
  echo "ok $how: checks passed, nothing left behind"
done

# An aborted run's leftovers (its shell gone) are removed by the next run.
sh -c '. "$1/harness.sh"; mpeh_init; mpeh_host a 1; echo "$MPEH_ID" >"$2"; trap - EXIT; kill -9 $$' x "$here" "$out"
stale=$(cat "$out")
ip netns list | grep -q "^$stale-a" || fail "the aborted run left nothing to remove"
sh -c '. "$1/harness.sh"; mpeh_init' x "$here"
[ -z "$(ip netns list | grep "^$stale-")$(ip -o link show | grep -o "$stale[a-z][a-z0-9]*")" ] ||
  fail "stale namespaces or links of $stale remain"
echo "ok stale: an aborted run's namespaces and links removed"
