/* mutex.c - a robust process-shared mutex on one futex word.
 *
 * The word holds 0 or the owner's pid: acquiring is one compare-and-swap
 * 0 -> pid, releasing one store of 0 (and a futex wake only if someone
 * sleeps). Waiters first spin on a plain read of the word (so they do not
 * steal its cache line from the owner), then sleep on the futex in slices of
 * WATCH seconds. When a sleeper wakes with the word still naming the same
 * owner, it looks whether that process is dead (mpe__pid_dead); if so it
 * takes the mutex over with a compare-and-swap and tells its caller
 * MPE_EOWNERDEAD, so the caller can repair what the dead owner was changing.
 * Structures are written so that a half-done update is invisible or
 * harmless (one store commits), which makes that repair small.
 *
 * "Dead" needs evidence, never the lack of it: kill(pid, 0) says no such
 * process, or a pidfd of the pid says it has exited (a zombie), or its start
 * time, when /proc can be read, is not the one recorded. A /proc that cannot
 * be read (a chroot, a sandbox, hidepid) proves nothing, so the owner counts
 * as alive: mutual exclusion is never given up on a failed read.
 *
 * Compared with glibc's robust pthread mutex, this keeps no per-thread
 * robust list (one write less on each side), can be interrupted by a signal,
 * and can be told apart from the outside (mpe__mutex_owner). Its limits: one
 * thread per process uses it (the owner is a pid), and a dead owner whose
 * pid was reused by a live process within one wait is not detected. */
#define _GNU_SOURCE
#include "mutex.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "futex.h"

#define WATCH 0.01 /* our critical sections are short: an owner this slow is suspect */

void mpe__mutex_init(mpe__mutex *m) {
  atomic_init(&m->word, 0);
  atomic_init(&m->waiters, 0);
}

/* 1 if pid's process has exited (a zombie), 0 if it runs, -1 if this
 * kernel (or valgrind) has no pidfds to tell. */
static int pidfd_exited(pid_t pid) {
#ifdef SYS_pidfd_open
  int fd = (int)syscall(SYS_pidfd_open, pid, 0);
  if (fd < 0) return errno == ESRCH ? 1 : -1;
  /* A pidfd polls readable once its process has exited. */
  struct pollfd p = {.fd = fd, .events = POLLIN};
  int exited = poll(&p, 1, 0) == 1 && (p.revents & POLLIN);
  close(fd);
  return exited;
#else
  (void)pid;
  return -1;
#endif
}

int mpe__pid_dead(pid_t pid, unsigned long long start) {
  if (pid <= 0) return 0;
  if (kill(pid, 0) != 0 && errno == ESRCH) return 1; /* gone and reaped */
  /* A zombie holds the pid: whoever held it before is dead too. */
  int exited = pidfd_exited(pid);
  if (exited > 0) return 1;
  if (exited == 0 && start == 0) return 0;
  unsigned long long now = mpe__start_time(pid); /* 0: a zombie, or unreadable */
  if (now == 0) {
    char path[48];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    return exited < 0 && access(path, R_OK) == 0; /* readable: the 0 meant a zombie */
  }
  return start != 0 && now != start; /* the pid names another process now */
}

static int gone(uint32_t pid) { return mpe__pid_dead((pid_t)pid, 0); }

int mpe__mutex_trylock(mpe__mutex *m, int check_dead) {
  uint32_t me = (uint32_t)mpe__self_pid(), w = 0;
  if (atomic_compare_exchange_strong(&m->word, &w, me)) return 0;
  if (check_dead && w != me && gone(w) && atomic_compare_exchange_strong(&m->word, &w, me))
    return MPE_EOWNERDEAD;
  return MPE_ETIMEDOUT;
}

int mpe__mutex_lock(mpe__mutex *m, const mpe__deadline *d, int interruptible) {
  uint32_t me = (uint32_t)mpe__self_pid(), w = 0;
  if (atomic_compare_exchange_strong(&m->word, &w, me)) return 0;
  MPE__CHECK(w != me); /* re-locking would wait forever: callers check first */
  long spin = mpe__spin_ns();
  if (spin > 0) {
    double until = 0;
    for (unsigned i = 1;; i++) {
      if (atomic_load_explicit(&m->word, memory_order_relaxed) == 0) {
        w = 0;
        if (atomic_compare_exchange_strong(&m->word, &w, me)) return 0;
      }
      mpe__cpu_relax();
      if ((i & 63) == 0) {
        double now = mpe_time();
        if (until == 0) until = now + (double)spin * 1e-9;
        else if (now > until) break;
      }
    }
  }
  mpe__deadline forever = {1, {0, 0}};
  if (!d) d = &forever;
  for (;;) {
    w = atomic_load(&m->word);
    if (w == 0) {
      if (atomic_compare_exchange_strong(&m->word, &w, me)) return 0;
      continue;
    }
    if (mpe__deadline_ms(d) == 0) return MPE_ETIMEDOUT;
    mpe__deadline slice;
    mpe__slice_end(d, WATCH, &slice);
    if (interruptible && mpe__stop_requested()) return MPE_EINTR;
    atomic_fetch_add(&m->waiters, 1);
    int rc = mpe__futex_wait(&m->word, w, &slice);
    atomic_fetch_sub(&m->waiters, 1);
    if (rc == MPE_EINTR && interruptible) return rc;
    if (rc == MPE_ETIMEDOUT && atomic_load(&m->word) == w && gone(w)) {
      uint32_t dead = w;
      if (atomic_compare_exchange_strong(&m->word, &dead, me)) return MPE_EOWNERDEAD;
    }
  }
}

void mpe__mutex_unlock(mpe__mutex *m) {
  uint32_t me = (uint32_t)mpe__self_pid();
  MPE__CHECK(atomic_exchange(&m->word, 0) == me);
  if (atomic_load(&m->waiters) > 0) mpe__futex_wake(&m->word, 1);
}
