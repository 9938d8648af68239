/* mutex.c - the robust, process-shared mutex every shared structure uses.
 *
 * A pthread mutex with PTHREAD_PROCESS_SHARED | PTHREAD_MUTEX_ROBUST lives in
 * the arena. The kernel's robust-futex list releases it when its holder dies,
 * and the next locker gets EOWNERDEAD: it marks the mutex consistent and is
 * told (MPE_EOWNERDEAD) so that it can repair what the dead holder left.
 * Structures are written so that a half-done update is either invisible or
 * harmless (publish with a single store at the end). A failed unlock is a
 * bug and aborts. */
#define _GNU_SOURCE
#include "mutex.h"

#include <errno.h>

void mpe__mutex_init(pthread_mutex_t *m) {
  pthread_mutexattr_t a;
  MPE__CHECK(pthread_mutexattr_init(&a) == 0);
  MPE__CHECK(pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED) == 0);
  MPE__CHECK(pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST) == 0);
  MPE__CHECK(pthread_mutex_init(m, &a) == 0);
  pthread_mutexattr_destroy(&a);
}

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

/* Maps a pthread result: 0, MPE_EOWNERDEAD (locked, made consistent),
 * MPE_ETIMEDOUT (also EBUSY), or -errno. */
static int result(pthread_mutex_t *m, int rc) {
  if (rc == 0) return 0;
  if (rc == EOWNERDEAD) {
    MPE__CHECK(pthread_mutex_consistent(m) == 0);
    return MPE_EOWNERDEAD;
  }
  if (rc == ETIMEDOUT || rc == EBUSY) return MPE_ETIMEDOUT;
  return -rc;
}

int mpe__mutex_lock(pthread_mutex_t *m, const mpe__deadline *d) {
  /* Critical sections in the arena are a few dozen instructions: on more
   * than one CPU, retrying briefly beats sleeping in the kernel (a robust
   * mutex has no adaptive mode of its own). */
  if (mpe__spin_ns() > 0) {
    for (int i = 0; i < 200; i++) {
      int rc = pthread_mutex_trylock(m);
      if (rc != EBUSY) return result(m, rc);
      cpu_relax();
    }
  }
  if (!d || d->forever) return result(m, pthread_mutex_lock(m));
  return result(m, pthread_mutex_clocklock(m, CLOCK_MONOTONIC, &d->at));
}

int mpe__mutex_trylock(pthread_mutex_t *m) { return result(m, pthread_mutex_trylock(m)); }

void mpe__mutex_unlock(pthread_mutex_t *m) { MPE__CHECK(pthread_mutex_unlock(m) == 0); }
