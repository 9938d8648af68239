#!/bin/sh
# Runs C test binaries under valgrind (memcheck, leak check). Children are
# silent: they leave with _exit() by design, without freeing what they
# inherited, so only the parent's report counts; --error-exitcode would also
# change the children's exit codes, which the tests check, so the parent's
# ERROR SUMMARY is read instead.
# Usage: valgrind.sh BINARY...
set -u
status=0
for bin in "$@"; do
  log=$(mktemp)
  valgrind --leak-check=full --errors-for-leak-kinds=definite --child-silent-after-fork=yes \
    "$bin" >"$log" 2>&1
  rc=$?
  if [ $rc -ne 0 ] || ! grep -q "ERROR SUMMARY: 0 errors" "$log"; then
    echo "valgrind: $bin failed (exit $rc)"
    grep -v "unhandled amd64-linux syscall\|your own handler\|README_MISSING\|consider this a bug\|valgrind.org/support" "$log"
    status=1
  else
    echo "valgrind: $bin clean"
  fi
  rm -f "$log"
done
exit $status
