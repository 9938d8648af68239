/* spin.c - the spin-then-sleep policy every waiter shares.
 *
 * A waiter that expects the other side to answer within microseconds saves
 * the cost of a sleep and a wake-up (two system calls and a cross-CPU
 * wake-up, tens of microseconds on a VM) by watching the shared word for a
 * while first. But a spinner takes a CPU: on a machine with no CPU free, the
 * process it waits for may be the one waiting for that CPU, and the spin
 * delays the very answer it waits for. So:
 *
 * 1. No spin unless a CPU is free: the number of runnable processes (the
 *    kernel's count in /proc/loadavg, read at most every 2 ms per process,
 *    which costs a few microseconds each time) must not exceed the CPUs this
 *    process may use. The spinner itself is one of them, so on an idle
 *    2-CPU machine a producer and a consumer spin, and with one more busy
 *    program they sleep at once.
 * 2. The budget adapts, as glibc's adaptive mutex does: a spin that ended
 *    in a sleep anyway halves it (down to SPIN_MIN), a spin that succeeded
 *    lets it grow back towards the cap (MPENGINE_SPIN_US, 20 us by default).
 * 3. The spinner looks at the shared word with growing gaps (1, 2, 4 ... 64
 *    pauses, about 2 us at most), so it does not keep pulling the cache line
 *    from the writer it waits for: every look moves the line, and the writer
 *    then pays to take it back. It yields the CPU every 8 looks, so a peer
 *    that the scheduler placed on the same CPU gets to run.
 * 4. A waiter in a stream (the caller says so: its last wait found the
 *    answer there already, as a consumer that keeps up with its producer
 *    does) waits the longest gap before its first look. Looking at once
 *    would take the producer's line after every message, and the producer
 *    would pay a transfer per message to take it back; after the gap,
 *    several messages are there to take with one transfer. A ping-pong,
 *    whose every wait has to wait, never looks late. With no CPU free, a
 *    waiter in a stream gives its CPU away once (sched_yield) and looks
 *    again before it sleeps: the producer may be the one waiting for that
 *    CPU, and it then fills a batch without a wake-up per message, where a
 *    consumer that slept at once was woken, and switched to, every few
 *    messages.
 *
 * The state is per waiting place and per process (queue get, queue put...),
 * with no shared writes: spinning reads the shared word only. */
#define _GNU_SOURCE
#include "spin.h"

#include <fcntl.h>
#include <sched.h>
#include <stdlib.h>
#include <unistd.h>

#define SPIN_MIN 1000L  /* ns */
#define SAMPLE 0.002    /* s between two reads of /proc/loadavg */
#define MAX_GAP 64      /* pauses between two looks at the shared word */

static double sampled_at = -1;
static int free_cpu = 1;

int mpe__cpu_free(void) {
  double now = mpe_time();
  if (sampled_at >= 0 && now - sampled_at < SAMPLE) return free_cpu;
  sampled_at = now;
  /* "0.20 0.18 0.12 3/80 11206": the fourth field is runnable/total */
  char buf[128];
  int fd = open("/proc/loadavg", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return free_cpu = 1;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return free_cpu = 1;
  buf[n] = 0;
  const char *p = buf;
  for (int field = 0; field < 3 && p; field++) {
    while (*p && *p != ' ') p++;
    while (*p == ' ') p++;
  }
  long running = strtol(p, NULL, 10);
  free_cpu = running <= 0 || running <= mpe_cpu_count();
  return free_cpu;
}

int mpe__spin_wait(mpe__spin *s, int (*ready)(void *), void *arg) {
  long cap = mpe__spin_ns();
  if (!s->stream && ready(arg)) return 1;
  if (cap <= 0 || !mpe__cpu_free()) {
    if (!s->stream) return 0;
    sched_yield(); /* see 4. above */
    return ready(arg);
  }
  if (s->budget_ns <= 0 || s->budget_ns > cap) s->budget_ns = cap;
  double t0 = mpe_time(), until = t0 + (double)s->budget_ns * 1e-9;
  unsigned gap = 1; /* pauses between two looks: doubles up to MAX_GAP */
  if (s->stream) {
    for (unsigned k = 0; k < MAX_GAP; k++) mpe__cpu_relax();
    gap = MAX_GAP;
  }
  for (unsigned i = 1;; i++) {
    if (ready(arg)) {
      long took = (long)((mpe_time() - t0) * 1e9);
      long grown = s->budget_ns + s->budget_ns / 4 + took;
      s->budget_ns = grown < cap ? grown : cap;
      return 1;
    }
    for (unsigned k = 0; k < gap; k++) mpe__cpu_relax();
    if (gap < MAX_GAP) gap *= 2;
    if ((i & 7) == 0) {
      if (mpe_time() > until) break;
      sched_yield();
    }
  }
  s->budget_ns = s->budget_ns / 2 > SPIN_MIN ? s->budget_ns / 2 : SPIN_MIN;
  return 0;
}
