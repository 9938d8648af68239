/* internal.h - what the engine's files share and users never see.
 * Internal non-static names are mpe__*. */
#ifndef MPE_INTERNAL_H
#define MPE_INTERNAL_H

#define MPE_BUILDING 1
#include "mpengine.h"

#include <stdlib.h>
#include <time.h>

/* A broken invariant is a bug: stop here rather than corrupt shared state. */
#define MPE__CHECK(cond)                                                     \
  do {                                                                       \
    if (!(cond)) mpe__abort(#cond, __FILE__, __LINE__);                      \
  } while (0)

void mpe__abort(const char *what, const char *file, int line);

/* Absolute CLOCK_MONOTONIC deadline for a timeout (negative: none). */
typedef struct mpe__deadline {
  int forever;
  struct timespec at;
} mpe__deadline;

mpe__deadline mpe__deadline_in(double timeout);
/* Milliseconds left for poll(): -1 forever, 0 when passed. */
int mpe__deadline_ms(const mpe__deadline *d);

/* Nanoseconds a waiter spins before it sleeps in the kernel. */
long mpe__spin_ns(void);

/* Child-side hooks run right after fork: close what the child must not keep. */
void mpe__pipes_after_fork(const mpe_spawn_options *opts);
void mpe__processes_after_fork(void);

#endif
