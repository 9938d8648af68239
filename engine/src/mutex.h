/* mutex.h - the robust process-shared mutex every shared structure uses
 * (see mutex.c). */
#ifndef MPE_MUTEX_H
#define MPE_MUTEX_H
#include <stdatomic.h>
#include <stdint.h>

#include "internal.h"

typedef struct mpe__mutex {
  _Atomic uint32_t word;    /* 0 free, else the owner's pid */
  _Atomic uint32_t waiters; /* processes asleep on word */
} mpe__mutex;

void mpe__mutex_init(mpe__mutex *m);
/* 0; MPE_EOWNERDEAD (locked: the previous owner died holding it);
 * MPE_ETIMEDOUT; MPE_EINTR (only when interruptible: a signal handler ran,
 * or the host's stop flag is set). d NULL: no limit. */
int mpe__mutex_lock(mpe__mutex *m, const mpe__deadline *d, int interruptible);
/* One try: 0, MPE_ETIMEDOUT when another process holds it, or (check_dead:
 * look whether the owner is dead) MPE_EOWNERDEAD. */
int mpe__mutex_trylock(mpe__mutex *m, int check_dead);
/* Unlocking a mutex this process does not hold is a bug: abort. */
void mpe__mutex_unlock(mpe__mutex *m);
/* 1 only on evidence that pid has died: no such process, an exited one (a
 * zombie), or (start != 0 and /proc readable) another start time. A failed
 * read of /proc is no evidence: 0. */
int mpe__pid_dead(pid_t pid, unsigned long long start);
/* The owner's pid, 0 when free. */
static inline uint32_t mpe__mutex_owner(mpe__mutex *m) { return atomic_load(&m->word); }
#endif
