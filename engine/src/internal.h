/* internal.h - what the engine's files share and users never see.
 * Internal non-static names are mpe__*. */
#ifndef MPE_INTERNAL_H
#define MPE_INTERNAL_H

#define MPE_BUILDING 1
#include "mpengine.h"

#include <stdatomic.h>
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

/* Every shared object in the arena starts with this header. References are
 * counted across processes: each handle, and each message in flight that
 * names the object, holds one. */
#define MPE__OBJ_MAGIC 0x6d70656fu
enum { MPE__KIND_QUEUE = 1, MPE__KIND_LOCK, MPE__KIND_SEM, MPE__KIND_EVENT,
       MPE__KIND_COND, MPE__KIND_BARRIER, MPE__KIND_VALUE };
typedef struct mpe__obj {
  uint32_t magic;
  uint32_t kind;
  _Atomic uint32_t refs;
  uint32_t pad;
} mpe__obj;

/* Allocates size bytes (header included), zeroed, with one reference. */
void *mpe__obj_new(size_t size, uint32_t kind);
/* The live object of that kind behind ref, or NULL. */
void *mpe__obj_from_ref(uint64_t ref, uint32_t kind);
void mpe__obj_retain(void *o);
/* Drops one reference; 1 if it was the last (the caller frees). */
int mpe__obj_release(void *o);

/* Nanoseconds a waiter spins before it sleeps in the kernel. */
long mpe__spin_ns(void);

/* Child-side hooks run right after fork: close what the child must not keep. */
void mpe__pipes_after_fork(const mpe_spawn_options *opts);
void mpe__processes_after_fork(void);

#endif
