/* sem.c - counting semaphores that get back the permits of dead processes.
 *
 * value, guarded by a robust mutex; waiters sleep on the `seq` futex word.
 * A table of holders (pid, start time, permits taken) lets a waiter that
 * finds no permit return those taken by processes that have since been
 * killed: it looks when it starts waiting and then every WATCH seconds. A
 * process that ends normally forgets its entries (mpe_sem_forget_process):
 * in a producer/consumer, permits are handed over, not leaked. A release
 * first pays back the releaser's own entry. The start time tells a reused
 * pid from the process that took the permits.
 *
 * A slot is free when its pid is 0, whatever else it still holds, so slots
 * are reused by any number of holders over the semaphore's life; a table
 * found full is first cleared of dead holders. More than SLOTS live holders
 * at once are not tracked (their permits are not recovered). Death is
 * decided only on evidence (mpe__pid_dead): a /proc that cannot be read
 * never hands a live holder's permits to someone else. */
#define _GNU_SOURCE
#include <errno.h>

#include "futex.h"
#include "mutex.h"

#define SLOTS 32
#define WATCH 0.05

typedef struct holder {
  int32_t pid;
  uint32_t count;
  unsigned long long start;
} holder;

struct mpe_sem {
  mpe__obj hdr;
  mpe__mutex m;
  _Atomic uint32_t value;
  uint32_t bound;
  _Atomic uint32_t seq, waiters;
  holder h[SLOTS];
};

MPE__DEFINE_REFS(sem, mpe_sem, MPE__KIND_SEM)

static unsigned long long self_start(void) {
  static pid_t pid;
  static unsigned long long start;
  pid_t me = mpe__self_pid();
  if (pid != me) {
    pid = me;
    start = mpe__start_time(me);
  }
  return start;
}

int mpe_sem_new(mpe_sem **out, unsigned value, unsigned bound) {
  mpe_sem *s = mpe__obj_new(sizeof *s, MPE__KIND_SEM);
  if (!s) return mpe_initialized() ? -ENOMEM : MPE_ENOINIT;
  mpe__mutex_init(&s->m);
  atomic_store(&s->value, value);
  s->bound = bound;
  *out = s;
  return 0;
}

void mpe_sem_free(mpe_sem *s) {
  if (!s || !mpe__obj_release(s)) return;
  mpe_free(s);
}

static void slock(mpe_sem *s) {
  int rc = mpe__mutex_lock(&s->m, NULL, 0); /* holders' table is whole at every store */
  MPE__CHECK(rc == 0 || rc == MPE_EOWNERDEAD);
}

/* The slot of a live holder (pid != 0), or a free slot (pid == 0). */
static holder *find(mpe_sem *s, pid_t pid, unsigned long long start) {
  for (int i = 0; i < SLOTS; i++)
    if (s->h[i].pid == pid && (pid == 0 || s->h[i].start == start)) return &s->h[i];
  return NULL;
}

/* Locked: frees a slot; pid last, as a free slot is one with pid 0. */
static void vacate(holder *h) {
  h->count = 0;
  h->start = 0;
  h->pid = 0;
}

/* Locked: returns the permits of holders that are dead. */
static void recover(mpe_sem *s) {
  for (int i = 0; i < SLOTS; i++) {
    holder *h = &s->h[i];
    if (h->pid && mpe__pid_dead(h->pid, h->start)) {
      atomic_fetch_add(&s->value, h->count);
      vacate(h);
    }
  }
}

static void note_take(mpe_sem *s) {
  pid_t me = mpe__self_pid();
  unsigned long long start = self_start();
  holder *h = find(s, me, start);
  if (!h) h = find(s, 0, 0);
  if (!h) {
    recover(s); /* full: dead holders make room */
    h = find(s, 0, 0);
  }
  if (!h) return; /* SLOTS live holders: not tracked */
  h->start = start;
  h->count++;
  h->pid = me;
}

int mpe_sem_acquire(mpe_sem *s, double timeout) {
  mpe__deadline d = mpe__deadline_in(timeout);
  int looked = 0;
  for (;;) {
    slock(s);
    if (atomic_load(&s->value) == 0 && !looked) {
      recover(s);
      looked = 1;
    }
    if (atomic_load(&s->value) > 0) {
      atomic_fetch_sub(&s->value, 1);
      note_take(s);
      mpe__mutex_unlock(&s->m);
      return 0;
    }
    uint32_t seen = atomic_load(&s->seq);
    mpe__mutex_unlock(&s->m);
    if (mpe__deadline_ms(&d) == 0) return MPE_ETIMEDOUT;
    double t0 = mpe_time();
    atomic_fetch_add(&s->waiters, 1);
    int rc = mpe__futex_wait_step(&s->seq, seen, &d, WATCH);
    atomic_fetch_sub(&s->waiters, 1);
    if (rc == MPE_EINTR) return rc; /* nothing taken: call again */
    if (mpe_time() - t0 >= WATCH) looked = 0; /* look for dead holders again */
  }
}

int mpe_sem_release(mpe_sem *s) {
  slock(s);
  if (s->bound && atomic_load(&s->value) >= s->bound) {
    mpe__mutex_unlock(&s->m);
    return -EOVERFLOW;
  }
  holder *h = find(s, mpe__self_pid(), self_start());
  if (h && h->count > 0 && --h->count == 0) vacate(h);
  atomic_fetch_add(&s->value, 1);
  mpe__mutex_unlock(&s->m);
  mpe__seq_signal(&s->seq, &s->waiters, 1);
  return 0;
}

unsigned mpe_sem_value(mpe_sem *s) { return atomic_load(&s->value); }
unsigned mpe_sem_bound(const mpe_sem *s) { return s->bound; }

void mpe_sem_forget_process(mpe_sem *s) {
  slock(s);
  holder *h = find(s, mpe__self_pid(), self_start());
  if (h) vacate(h);
  mpe__mutex_unlock(&s->m);
}
