/* lock.c - Lock and RLock: a robust process-shared mutex plus its owner.
 *
 * The mutex gives mutual exclusion and, through the kernel's robust list,
 * recovery when the owner dies (the next acquirer is told MPE_EOWNERDEAD).
 * `owner` (a pid) and `levels` (recursion depth) are written only by the
 * process holding the mutex; they let an RLock re-enter, let release refuse
 * a process that does not hold the lock, and let a plain Lock refuse to wait
 * for itself (-EDEADLK) instead of hanging forever.
 *
 * Invariant: owner != 0 exactly while the mutex is held (or its holder died
 * and nobody has acquired it since). */
#define _GNU_SOURCE
#include <errno.h>

#include "mutex.h"

struct mpe_lock {
  mpe__obj hdr;
  pthread_mutex_t m;
  _Atomic int32_t owner;
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
  pthread_mutex_destroy(&l->m);
  mpe_free(l);
}

int mpe_lock_is_recursive(const mpe_lock *l) { return l->recursive; }

int mpe_lock_acquire(mpe_lock *l, double timeout) {
  pid_t me = mpe__self_pid();
  if (atomic_load(&l->owner) == me) {
    if (!l->recursive) return -EDEADLK;
    l->levels++;
    return 0;
  }
  mpe__deadline d = mpe__deadline_in(timeout);
  int rc = timeout == 0 ? mpe__mutex_trylock(&l->m) : mpe__mutex_lock(&l->m, &d);
  if (rc == 0 || rc == MPE_EOWNERDEAD) {
    atomic_store(&l->owner, me);
    l->levels = 1;
  }
  return rc;
}

int mpe_lock_release(mpe_lock *l) {
  if (atomic_load(&l->owner) != mpe__self_pid()) return -EPERM;
  if (--l->levels > 0) return 0;
  atomic_store(&l->owner, 0);
  mpe__mutex_unlock(&l->m);
  return 0;
}

int mpe_lock_locked(const mpe_lock *l) { return atomic_load(&l->owner) != 0; }

int mpe_lock_held(const mpe_lock *l) {
  return atomic_load(&l->owner) == mpe__self_pid() ? l->levels : 0;
}

int mpe_lock_release_all(mpe_lock *l) {
  if (atomic_load(&l->owner) != mpe__self_pid()) return -EPERM;
  int levels = l->levels;
  l->levels = 0;
  atomic_store(&l->owner, 0);
  mpe__mutex_unlock(&l->m);
  return levels;
}

int mpe_lock_reacquire(mpe_lock *l, int levels, double timeout) {
  int rc = mpe_lock_acquire(l, timeout);
  if (rc == 0 || rc == MPE_EOWNERDEAD) l->levels = levels;
  return rc;
}
