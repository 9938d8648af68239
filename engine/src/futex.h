/* futex.h - waiting on a word of shared memory (see futex.c). */
#ifndef MPE_FUTEX_H
#define MPE_FUTEX_H
#include <stdatomic.h>
#include <stdint.h>

#include "internal.h"

/* Sleeps while *word == seen, until woken or the deadline (NULL: none).
 * 0 (woken, or the word had moved), MPE_ETIMEDOUT, MPE_EINTR. */
int mpe__futex_wait(_Atomic uint32_t *word, uint32_t seen, const mpe__deadline *d);
/* One sleep of a wait that may be interrupted: MPE_EINTR at once if the
 * host's stop flag is set, else sleeps while *word == seen for at most slice
 * seconds (the wait looks around, and at the flag, between sleeps). 0 (woken,
 * the word had moved, or the slice is over: look again), MPE_ETIMEDOUT (d
 * has passed), MPE_EINTR (a signal handler ran). */
int mpe__futex_wait_step(_Atomic uint32_t *word, uint32_t seen, const mpe__deadline *d, double slice);
/* 1 once the flag given to mpe_interrupt_flag is set. */
int mpe__stop_requested(void);
/* Wakes up to n sleepers on word (INT32_MAX: all). */
void mpe__futex_wake(_Atomic uint32_t *word, int n);
/* Bumps seq and wakes up to n sleepers, only if waiters says there are any. */
void mpe__seq_signal(_Atomic uint32_t *seq, _Atomic uint32_t *waiters, int n);
#endif
