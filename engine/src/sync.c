/* sync.c - events, condition variables and barriers.
 *
 * All three wait on a futex "sequence" word: a waiter reads it before it
 * looks at the state (an event's flag, a barrier's generation) or, for a
 * condition, while it still holds the lock; a waker changes the state, then
 * bumps the word and wakes. A change between the read and the sleep makes
 * the sleep return at once, so no wake-up is lost.
 *
 * Barrier: `count` arrivals in the current `generation`; the last arrival
 * runs the action, then mpe_barrier_pass() starts the next generation (or
 * breaks the barrier if the action failed). `broken_gen` remembers a round
 * that ended by reset(), so its waiters leave with MPE_ECLOSED. */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>

#include "futex.h"
#include "mutex.h"

/* ------------------------------------------------------------------ event */

struct mpe_event {
  mpe__obj hdr;
  _Atomic uint32_t flag, seq, waiters;
};

MPE__DEFINE_REFS(event, mpe_event, MPE__KIND_EVENT)

int mpe_event_new(mpe_event **out) {
  mpe_event *e = mpe__obj_new(sizeof *e, MPE__KIND_EVENT);
  if (!e) return mpe_initialized() ? -ENOMEM : MPE_ENOINIT;
  *out = e;
  return 0;
}

void mpe_event_free(mpe_event *e) {
  if (e && mpe__obj_release(e)) mpe_free(e);
}

void mpe_event_set(mpe_event *e) {
  atomic_store(&e->flag, 1);
  mpe__seq_signal(&e->seq, &e->waiters, INT32_MAX);
}

void mpe_event_clear(mpe_event *e) { atomic_store(&e->flag, 0); }
int mpe_event_is_set(const mpe_event *e) { return atomic_load(&e->flag) != 0; }

int mpe_event_wait(mpe_event *e, double timeout) {
  mpe__deadline d = mpe__deadline_in(timeout);
  for (;;) {
    uint32_t seen = atomic_load(&e->seq);
    if (atomic_load(&e->flag)) return 0;
    if (mpe__deadline_ms(&d) == 0) return MPE_ETIMEDOUT;
    atomic_fetch_add(&e->waiters, 1);
    int rc = mpe__futex_wait(&e->seq, seen, &d);
    atomic_fetch_sub(&e->waiters, 1);
    if (rc == MPE_EINTR) return rc;
  }
}

/* -------------------------------------------------------------- condition */

struct mpe_cond {
  mpe__obj hdr;
  uint64_t lock; /* reference of the mpe_lock (one reference held) */
  _Atomic uint32_t seq, waiters;
};

MPE__DEFINE_REFS(cond, mpe_cond, MPE__KIND_COND)

int mpe_cond_new(mpe_cond **out, mpe_lock *lock) {
  int rc = 0;
  if (lock) mpe_lock_retain(lock);
  else rc = mpe_lock_new(&lock, 1);
  if (rc < 0) return rc;
  mpe_cond *c = mpe__obj_new(sizeof *c, MPE__KIND_COND);
  if (!c) {
    mpe_lock_free(lock);
    return -ENOMEM;
  }
  c->lock = mpe_lock_ref(lock);
  *out = c;
  return 0;
}

void mpe_cond_free(mpe_cond *c) {
  if (!c || !mpe__obj_release(c)) return;
  mpe_lock_free(mpe_cond_lock(c));
  mpe_free(c);
}

mpe_lock *mpe_cond_lock(mpe_cond *c) { return mpe_deref(c->lock); }

int mpe_cond_wait(mpe_cond *c, double timeout) {
  mpe_lock *l = mpe_cond_lock(c);
  uint32_t seen = atomic_load(&c->seq); /* read while the lock is held */
  int levels = mpe_lock_release_all(l);
  if (levels < 0) return levels;
  mpe__deadline d = mpe__deadline_in(timeout);
  atomic_fetch_add(&c->waiters, 1);
  int rc = mpe__futex_wait(&c->seq, seen, &d);
  atomic_fetch_sub(&c->waiters, 1);
  mpe_lock_reacquire(l, levels, -1); /* back with the lock, whatever happened */
  return rc;
}

void mpe_cond_notify(mpe_cond *c, int n) {
  mpe__seq_signal(&c->seq, &c->waiters, n < 1 ? 1 : n);
}

/* ---------------------------------------------------------------- barrier */

struct mpe_barrier {
  mpe__obj hdr;
  mpe__mutex m;
  uint32_t parties, count, generation, broken_gen, broken;
  _Atomic uint32_t seq, waiters;
  uint64_t data, len; /* the host's bytes, an arena block */
};

MPE__DEFINE_REFS(barrier, mpe_barrier, MPE__KIND_BARRIER)

int mpe_barrier_new(mpe_barrier **out, unsigned parties, const void *data, size_t len) {
  if (parties == 0) return -EINVAL;
  mpe_barrier *b = mpe__obj_new(sizeof *b, MPE__KIND_BARRIER);
  if (!b) return mpe_initialized() ? -ENOMEM : MPE_ENOINIT;
  if (data) {
    void *copy = mpe_alloc(len ? len : 1);
    if (!copy) {
      mpe_free(b);
      return -ENOMEM;
    }
    memcpy(copy, data, len);
    b->data = mpe_ref(copy);
    b->len = len;
  }
  mpe__mutex_init(&b->m);
  b->parties = parties;
  b->broken_gen = UINT32_MAX;
  *out = b;
  return 0;
}

void mpe_barrier_free(mpe_barrier *b) {
  if (!b || !mpe__obj_release(b)) return;
  if (b->data) mpe_free(mpe_deref(b->data));
  mpe_free(b);
}

const void *mpe_barrier_data(const mpe_barrier *b, size_t *len) {
  if (len) *len = (size_t)b->len;
  return b->data ? mpe_deref(b->data) : NULL;
}

unsigned mpe_barrier_parties(const mpe_barrier *b) { return b->parties; }

static void block(mpe_barrier *b) {
  int rc = mpe__mutex_lock(&b->m, NULL, 0);
  MPE__CHECK(rc == 0 || rc == MPE_EOWNERDEAD);
}

static void wake_all(mpe_barrier *b) { mpe__seq_signal(&b->seq, &b->waiters, INT32_MAX); }

/* Locked: breaks the current round. */
static void break_round(mpe_barrier *b) {
  b->broken = 1;
  wake_all(b);
}

int mpe_barrier_wait(mpe_barrier *b, double timeout, int *last) {
  *last = 0;
  block(b);
  if (b->broken) {
    mpe__mutex_unlock(&b->m);
    return MPE_ECLOSED;
  }
  int index = (int)b->count++;
  uint32_t gen = b->generation;
  if (b->count == b->parties) {
    *last = 1; /* runs the action, then mpe_barrier_pass() */
    mpe__mutex_unlock(&b->m);
    return index;
  }
  mpe__deadline d = mpe__deadline_in(timeout);
  for (;;) {
    uint32_t seen = atomic_load(&b->seq);
    mpe__mutex_unlock(&b->m);
    atomic_fetch_add(&b->waiters, 1);
    int rc = mpe__futex_wait(&b->seq, seen, &d);
    atomic_fetch_sub(&b->waiters, 1);
    block(b);
    if (b->generation != gen) {
      int ended_by_reset = b->broken_gen == gen;
      mpe__mutex_unlock(&b->m);
      return ended_by_reset ? MPE_ECLOSED : index;
    }
    if (b->broken) {
      mpe__mutex_unlock(&b->m);
      return MPE_ECLOSED;
    }
    if (rc == MPE_ETIMEDOUT || rc == MPE_EINTR) { /* leaving breaks the round, as in Python */
      break_round(b);
      mpe__mutex_unlock(&b->m);
      return rc;
    }
  }
}

void mpe_barrier_pass(mpe_barrier *b, int ok) {
  block(b);
  if (ok && !b->broken) {
    b->count = 0;
    b->generation++;
    wake_all(b);
  } else {
    break_round(b);
  }
  mpe__mutex_unlock(&b->m);
}

void mpe_barrier_abort(mpe_barrier *b) {
  block(b);
  break_round(b);
  mpe__mutex_unlock(&b->m);
}

void mpe_barrier_reset(mpe_barrier *b) {
  block(b);
  if (b->count > 0 && !b->broken) b->broken_gen = b->generation; /* its waiters are told */
  b->count = 0;
  b->broken = 0;
  b->generation++;
  wake_all(b);
  mpe__mutex_unlock(&b->m);
}

int mpe_barrier_broken(const mpe_barrier *b) { return b->broken != 0; }
unsigned mpe_barrier_waiting(const mpe_barrier *b) { return b->broken ? 0 : b->count; }
