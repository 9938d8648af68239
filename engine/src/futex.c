/* futex.c - sleeping and waking on a 32-bit word in shared memory.
 *
 * The wait side of every blocking structure in the arena (queues, and the
 * synchronisation objects) is a "sequence" word: a waiter reads it while
 * holding the structure's mutex, lets the mutex go, and sleeps only if the
 * word still holds what it read; a waker changes the state under the mutex,
 * then bumps the word and wakes. No wake-up can be lost in between. Futexes
 * here are shared (not FUTEX_PRIVATE): the word lives in MAP_SHARED memory.
 *
 * Interruptions. A signal whose handler runs while a wait sleeps ends the
 * sleep with EINTR, and the waits return MPE_EINTR to their caller, who
 * looks at its own flags and calls again. A signal that lands just before
 * the sleep starts cannot end it, so a host that must stop on a signal names
 * its flag (mpe_interrupt_flag) and every interruptible wait sleeps in
 * slices (mpe__futex_wait_step) and returns MPE_EINTR once it sees the flag. */
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

static volatile sig_atomic_t *stop_flag;

void mpe_interrupt_flag(volatile sig_atomic_t *flag) { stop_flag = flag; }

int mpe__stop_requested(void) { return stop_flag && *stop_flag; }

int mpe__futex_wait_step(_Atomic uint32_t *word, uint32_t seen, const mpe__deadline *d, double slice) {
  if (mpe__stop_requested()) return MPE_EINTR;
  if (mpe__deadline_ms(d) == 0) return atomic_load(word) == seen ? MPE_ETIMEDOUT : 0;
  mpe__deadline until;
  mpe__slice_end(d, slice, &until);
  int rc = mpe__futex_wait(word, seen, &until);
  if (rc == MPE_ETIMEDOUT && mpe__deadline_ms(d) != 0) return 0; /* only the slice is over */
  return rc;
}

void mpe__futex_wake(_Atomic uint32_t *word, int n) {
  syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE, n, NULL, NULL, 0);
}

void mpe__seq_signal(_Atomic uint32_t *seq, _Atomic uint32_t *waiters, int n) {
  atomic_fetch_add(seq, 1);
  if (atomic_load(waiters) > 0) mpe__futex_wake(seq, n);
}
