/* clock.c - the monotonic clock, sleeping, deadlines and the CPU count.
 * Every timeout in the engine becomes an absolute CLOCK_MONOTONIC deadline
 * once, so that retries after EINTR never stretch a wait. */
#define _GNU_SOURCE
#include "internal.h"

#include <errno.h>
#include <math.h>
#include <sched.h>
#include <unistd.h>

double mpe_time(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static struct timespec ts_from(double s) {
  struct timespec t;
  if (s < 0) s = 0;
  if (s > 1e9) s = 1e9;
  t.tv_sec = (time_t)s;
  t.tv_nsec = (long)((s - (double)t.tv_sec) * 1e9);
  if (t.tv_nsec >= 1000000000L) t.tv_nsec = 999999999L;
  return t;
}

int mpe_sleep(double seconds, double *left) {
  if (!(seconds > 0)) {
    if (left) *left = 0;
    return 0;
  }
  struct timespec at;
  clock_gettime(CLOCK_MONOTONIC, &at);
  struct timespec d = ts_from(seconds);
  at.tv_sec += d.tv_sec;
  at.tv_nsec += d.tv_nsec;
  if (at.tv_nsec >= 1000000000L) {
    at.tv_sec++;
    at.tv_nsec -= 1000000000L;
  }
  int rc = clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &at, NULL);
  if (rc == EINTR) {
    if (left) {
      struct timespec now;
      clock_gettime(CLOCK_MONOTONIC, &now);
      double l = (double)(at.tv_sec - now.tv_sec) + (double)(at.tv_nsec - now.tv_nsec) * 1e-9;
      *left = l > 0 ? l : 0;
    }
    return MPE_EINTR;
  }
  if (left) *left = 0;
  return 0;
}

mpe__deadline mpe__deadline_in(double timeout) {
  mpe__deadline d;
  d.forever = timeout < 0 || isnan(timeout);
  d.at.tv_sec = 0;
  d.at.tv_nsec = 0;
  if (!d.forever) {
    clock_gettime(CLOCK_MONOTONIC, &d.at);
    struct timespec t = ts_from(timeout);
    d.at.tv_sec += t.tv_sec;
    d.at.tv_nsec += t.tv_nsec;
    if (d.at.tv_nsec >= 1000000000L) {
      d.at.tv_sec++;
      d.at.tv_nsec -= 1000000000L;
    }
  }
  return d;
}

int mpe__deadline_ms(const mpe__deadline *d) {
  if (d->forever) return -1;
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  double left = (double)(d->at.tv_sec - now.tv_sec) * 1e3 +
                (double)(d->at.tv_nsec - now.tv_nsec) * 1e-6;
  if (left <= 0) return 0;
  if (left > 2e9) return 2000000000;
  return (int)ceil(left);
}

int mpe_cpu_count(void) {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) {
    int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? (int)n : 1;
}

static long spin = -1;

long mpe__spin_ns(void) {
  if (spin < 0) {
    /* MPENGINE_SPIN_US: how long a waiter spins before sleeping (default 20;
     * 0 on a single CPU, where spinning only delays the peer). */
    const char *e = getenv("MPENGINE_SPIN_US");
    long us = e && *e ? strtol(e, NULL, 10) : (mpe_cpu_count() > 1 ? 20 : 0);
    spin = us > 0 ? us * 1000 : 0;
  }
  return spin;
}

void mpe__slice_end(const mpe__deadline *d, double slice, mpe__deadline *out) {
  /* The earlier of d and now + slice: a wait that wakes to look around
   * (dead holders, a host's interruption) without stretching d. */
  *out = mpe__deadline_in(slice);
  if (!d->forever && (d->at.tv_sec < out->at.tv_sec ||
                      (d->at.tv_sec == out->at.tv_sec && d->at.tv_nsec < out->at.tv_nsec)))
    *out = *d;
}

long mpe_spin_set(long ns) {
  long old = mpe__spin_ns();
  if (ns >= 0) spin = ns;
  return old;
}
