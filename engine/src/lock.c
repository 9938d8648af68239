/* lock.c - Lock and RLock: a robust process-shared mutex plus its owner.
 *
 * The mutex (mutex.c) gives mutual exclusion and recovery when the owner
 * dies (the next acquirer is told MPE_EOWNERDEAD). Its word is the owner's
 * pid; `levels` (recursion depth) is written only by the owner. Together
 * they let an RLock re-enter, let release refuse a process that does not
 * hold the lock, and let a plain Lock refuse to wait for itself (-EDEADLK)
 * instead of hanging forever.
 *
 * A wait is interruptible: a signal handler that runs while it sleeps (or
 * the host's stop flag) makes it return MPE_EINTR with nothing taken, and
 * the caller calls again with the time left. Taking a condition's lock back
 * (mpe_lock_reacquire) is not: a condition wait returns holding it. */
#define _GNU_SOURCE
#include <errno.h>

#include "mutex.h"

struct mpe_lock {
  mpe__obj hdr;
  mpe__mutex m; /* its word is the owner's pid */
  int32_t levels;
  int32_t recursive;
};

MPE__DEFINE_REFS(lock, mpe_lock, MPE__KIND_LOCK)

int mpe_lock_new(mpe_lock **out, int recursive) {
  mpe_lock *l = mpe__obj_new(sizeof *l, MPE__KIND_LOCK);
  if (!l) return mpe_initialized() ? -ENOMEM : MPE_ENOINIT;
  mpe__mutex_init(&l->m);
  l->recursive = recursive != 0;
  *out = l;
  return 0;
}

void mpe_lock_free(mpe_lock *l) {
  if (!l || !mpe__obj_release(l)) return;
  mpe_free(l);
}

int mpe_lock_is_recursive(const mpe_lock *l) { return l->recursive; }

int mpe_lock_acquire(mpe_lock *l, double timeout) {
  pid_t me = mpe__self_pid();
  if ((pid_t)mpe__mutex_owner(&l->m) == me) {
    if (!l->recursive) return -EDEADLK;
    l->levels++;
    return 0;
  }
  int rc = mpe__mutex_trylock(&l->m, 0); /* the uncontended path: no clock, no spin */
  if (rc == MPE_ETIMEDOUT && timeout == 0) rc = mpe__mutex_trylock(&l->m, 1);
  if (rc == MPE_ETIMEDOUT && timeout != 0) {
    mpe__deadline d = mpe__deadline_in(timeout);
    rc = mpe__mutex_lock(&l->m, &d, 1);
  }
  if (rc == 0 || rc == MPE_EOWNERDEAD) l->levels = 1;
  return rc;
}

static int mine(const mpe_lock *l) {
  return (pid_t)mpe__mutex_owner((mpe__mutex *)&l->m) == mpe__self_pid();
}

int mpe_lock_release(mpe_lock *l) {
  if (!mine(l)) return -EPERM;
  if (--l->levels > 0) return 0;
  mpe__mutex_unlock(&l->m);
  return 0;
}

int mpe_lock_locked(const mpe_lock *l) { return mpe__mutex_owner((mpe__mutex *)&l->m) != 0; }

int mpe_lock_held(const mpe_lock *l) { return mine(l) ? l->levels : 0; }

int mpe_lock_release_all(mpe_lock *l) {
  if (!mine(l)) return -EPERM;
  int levels = l->levels;
  l->levels = 0;
  mpe__mutex_unlock(&l->m);
  return levels;
}

int mpe_lock_reacquire(mpe_lock *l, int levels, double timeout) {
  if (mine(l)) return -EDEADLK;
  mpe__deadline d = mpe__deadline_in(timeout);
  int rc = mpe__mutex_lock(&l->m, &d, 0);
  if (rc == 0 || rc == MPE_EOWNERDEAD) l->levels = levels;
  return rc;
}
