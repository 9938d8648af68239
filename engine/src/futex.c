/* futex.c - sleeping and waking on a 32-bit word in shared memory.
 *
 * The wait side of every blocking structure in the arena (queues, and the
 * synchronisation objects) is a "sequence" word: a waiter reads it while
 * holding the structure's mutex, lets the mutex go, and sleeps only if the
 * word still holds what it read; a waker changes the state under the mutex,
 * then bumps the word and wakes. No wake-up can be lost in between. Futexes
 * here are shared (not FUTEX_PRIVATE): the word lives in MAP_SHARED memory. */
#define _GNU_SOURCE
#include "futex.h"

#include <errno.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

int mpe__futex_wait(_Atomic uint32_t *word, uint32_t seen, const mpe__deadline *d) {
  const struct timespec *at = d && !d->forever ? &d->at : NULL;
  /* FUTEX_WAIT_BITSET takes an absolute deadline, on CLOCK_MONOTONIC. */
  long r = syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT_BITSET, seen, at, NULL,
                   FUTEX_BITSET_MATCH_ANY);
  if (r == 0) return 0;
  if (errno == EAGAIN) return 0; /* the word had already moved on */
  if (errno == ETIMEDOUT) return MPE_ETIMEDOUT;
  if (errno == EINTR) return MPE_EINTR;
  return -errno;
}

void mpe__futex_wake(_Atomic uint32_t *word, int n) {
  syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE, n, NULL, NULL, 0);
}

void mpe__seq_signal(_Atomic uint32_t *seq, _Atomic uint32_t *waiters, int n) {
  atomic_fetch_add(seq, 1);
  if (atomic_load(waiters) > 0) mpe__futex_wake(seq, n);
}
