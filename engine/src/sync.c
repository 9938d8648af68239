/* sync.c - events, condition variables and barriers.
 *
 * All three wait on a futex "sequence" word: a waiter reads it before it
 * looks at the state (an event's flag, a barrier's generation) or, for a
 * condition, while it still holds the lock; a waker changes the state, then
 * bumps the word and wakes. A change between the read and the sleep makes
 * the sleep return at once, so no wake-up is lost.
 *
 * Event: the word counts set() calls (a generation). A waiter returns once
 * the flag is up or the word has moved since it started waiting, so a set()
 * that clear() follows at once still releases everyone already waiting.
 *
 * Barrier: `count` arrivals in the current `generation`, their pids by
 * arrival index in `pids`; the last arrival runs the action, then
 * mpe_barrier_pass() starts the next generation (or breaks the barrier if
 * the action failed). `broken_gen` remembers a round that ended by reset(),
 * so its waiters leave with MPE_ECLOSED. Waiters look every WATCH seconds
 * (one of them at a time) whether a party of the round has died, the last
 * arrival inside its action included; a death breaks the round and names
 * the pid (mpe_barrier_dead_pid).
 *
 * Interruptions (see futex.c): every wait returns MPE_EINTR when a signal
 * handler runs or the host's stop flag is set, and keeps its place: the
 * process remembers the object and what the wait had seen (a sequence
 * value, an arrival), and its next wait on the same object continues that
 * wait. A set(), a notify or the end of a round that came in between is
 * therefore not lost, and an interrupted barrier arrival is not counted
 * twice. */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>

#include "futex.h"
#include "mutex.h"

#define SLICE 0.1 /* how often a sleeping wait looks at the host's stop flag */
#define WATCH 0.1 /* how often a barrier's waiters look for dead parties */

/* The wait this process was in when it returned MPE_EINTR (one thread per
 * process: at most one). Any other wait forgets it. */
static struct {
  const void *obj;
  pid_t pid;
  uint32_t seen, index;
} pending;

static void pending_save(const void *obj, uint32_t seen, uint32_t index) {
  pending.obj = obj;
  pending.pid = mpe__self_pid();
  pending.seen = seen;
  pending.index = index;
}

/* An interrupted wait on obj is given up (abort, reset). */
static void pending_drop(const void *obj) {
  if (pending.obj == obj) pending.obj = NULL;
}

/* 1 and *seen, *index if this process's interrupted wait was on obj. */
static int pending_take(const void *obj, uint32_t *seen, uint32_t *index) {
  int mine = pending.obj == obj && pending.pid == mpe__self_pid();
  if (mine) {
    *seen = pending.seen;
    if (index) *index = pending.index;
  }
  pending.obj = NULL;
  return mine;
}

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
unsigned mpe_event_waiting(const mpe_event *e) { return atomic_load(&e->waiters); }

int mpe_event_wait(mpe_event *e, double timeout) {
  uint32_t gen;
  if (!pending_take(e, &gen, NULL)) gen = atomic_load(&e->seq); /* before the flag */
  if (atomic_load(&e->flag)) return 0;
  mpe__deadline d = mpe__deadline_in(timeout);
  int rc;
  atomic_fetch_add(&e->waiters, 1);
  for (;;) {
    if (atomic_load(&e->flag) || atomic_load(&e->seq) != gen) {
      rc = 0; /* set now, or set since this wait began */
      break;
    }
    rc = mpe__futex_wait_step(&e->seq, gen, &d, SLICE);
    if (rc == MPE_EINTR) pending_save(e, gen, 0);
    if (rc == MPE_EINTR || rc == MPE_ETIMEDOUT) break;
  }
  atomic_fetch_sub(&e->waiters, 1);
  if (rc == MPE_ETIMEDOUT && (atomic_load(&e->flag) || atomic_load(&e->seq) != gen)) rc = 0;
  return rc;
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
unsigned mpe_cond_waiting(const mpe_cond *c) { return atomic_load(&c->waiters); }

int mpe_cond_wait(mpe_cond *c, double timeout) {
  mpe_lock *l = mpe_cond_lock(c);
  if (!mpe_lock_held(l)) return -EPERM;
  uint32_t seen;
  if (!pending_take(c, &seen, NULL)) seen = atomic_load(&c->seq); /* read while the lock is held */
  int levels = mpe_lock_release_all(l);
  if (levels < 0) return levels;
  mpe__deadline d = mpe__deadline_in(timeout);
  int rc;
  atomic_fetch_add(&c->waiters, 1);
  for (;;) {
    if (atomic_load(&c->seq) != seen) {
      rc = 0; /* notified */
      break;
    }
    rc = mpe__futex_wait_step(&c->seq, seen, &d, SLICE);
    if (rc == MPE_EINTR) pending_save(c, seen, 0);
    if (rc == MPE_EINTR || rc == MPE_ETIMEDOUT) break;
  }
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
  int32_t dead;  /* the party whose death broke the barrier, or 0 */
  double looked; /* mpe_time() of the last look for dead parties */
  _Atomic uint32_t seq, waiters;
  uint64_t data, len; /* the host's bytes, an arena block */
  uint64_t pids;      /* int32_t[parties]: this round's arrivals, by index */
};

MPE__DEFINE_REFS(barrier, mpe_barrier, MPE__KIND_BARRIER)

int mpe_barrier_new(mpe_barrier **out, unsigned parties, const void *data, size_t len) {
  if (parties == 0) return -EINVAL;
  mpe_barrier *b = mpe__obj_new(sizeof *b, MPE__KIND_BARRIER);
  if (!b) return mpe_initialized() ? -ENOMEM : MPE_ENOINIT;
  int32_t *pids = mpe_alloc((size_t)parties * sizeof *pids);
  void *copy = data ? mpe_alloc(len ? len : 1) : NULL;
  if (!pids || (data && !copy)) {
    mpe_free(pids);
    mpe_free(copy);
    mpe_free(b);
    return -ENOMEM;
  }
  if (data) {
    memcpy(copy, data, len);
    b->data = mpe_ref(copy);
    b->len = len;
  }
  b->pids = mpe_ref(pids);
  mpe__mutex_init(&b->m);
  b->parties = parties;
  b->broken_gen = UINT32_MAX;
  *out = b;
  return 0;
}

void mpe_barrier_free(mpe_barrier *b) {
  if (!b || !mpe__obj_release(b)) return;
  if (b->data) mpe_free(mpe_deref(b->data));
  mpe_free(mpe_deref(b->pids));
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

/* Locked: a party of this round that has died, or 0. One waiter looks per
 * WATCH seconds, whoever it is. */
static pid_t dead_party(mpe_barrier *b) {
  double now = mpe_time();
  if (now - b->looked < WATCH) return 0;
  b->looked = now;
  const int32_t *pids = mpe_deref(b->pids);
  pid_t me = mpe__self_pid();
  for (uint32_t i = 0; i < b->count && i < b->parties; i++)
    if (pids[i] != me && mpe__pid_dead(pids[i], 0)) return pids[i];
  return 0;
}

/* Locked, for a waiter of round gen: 1 and *rc once that round is over. */
static int round_over(mpe_barrier *b, uint32_t gen, int index, int *rc) {
  if (b->generation != gen) {
    *rc = b->broken_gen == gen ? MPE_ECLOSED : index; /* passed, or ended by reset() */
    return 1;
  }
  if (b->broken) {
    *rc = MPE_ECLOSED;
    return 1;
  }
  return 0;
}

int mpe_barrier_wait(mpe_barrier *b, double timeout, int *last) {
  *last = 0;
  uint32_t gen, index;
  int rc;
  block(b);
  if (!pending_take(b, &gen, &index)) { /* a new arrival (else: the interrupted one goes on) */
    if (b->broken) {
      mpe__mutex_unlock(&b->m);
      return MPE_ECLOSED;
    }
    index = b->count++;
    gen = b->generation;
    ((int32_t *)mpe_deref(b->pids))[index] = mpe__self_pid();
    if (b->count == b->parties) {
      *last = 1; /* runs the action, then mpe_barrier_pass() */
      mpe__mutex_unlock(&b->m);
      return (int)index;
    }
  }
  mpe__deadline d = mpe__deadline_in(timeout);
  for (;;) {
    if (round_over(b, gen, (int)index, &rc)) break;
    pid_t dead = dead_party(b);
    if (dead) { /* a party will never come, or never finish the action */
      b->dead = dead;
      break_round(b);
      rc = MPE_ECLOSED;
      break;
    }
    uint32_t seen = atomic_load(&b->seq);
    mpe__mutex_unlock(&b->m);
    atomic_fetch_add(&b->waiters, 1);
    rc = mpe__futex_wait_step(&b->seq, seen, &d, WATCH);
    atomic_fetch_sub(&b->waiters, 1);
    block(b);
    if (round_over(b, gen, (int)index, &rc)) break;
    if (rc == MPE_ETIMEDOUT) { /* leaving breaks the round, as in Python */
      break_round(b);
      break;
    }
    if (rc == MPE_EINTR) { /* still arrived: the next wait goes on with it */
      pending_save(b, gen, index);
      break;
    }
  }
  mpe__mutex_unlock(&b->m);
  return rc;
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
  pending_drop(b); /* an interrupted wait of this process is given up */
  block(b);
  break_round(b);
  mpe__mutex_unlock(&b->m);
}

void mpe_barrier_reset(mpe_barrier *b) {
  pending_drop(b);
  block(b);
  if (b->count > 0 && !b->broken) b->broken_gen = b->generation; /* its waiters are told */
  b->count = 0;
  b->broken = 0;
  b->dead = 0;
  b->generation++;
  wake_all(b);
  mpe__mutex_unlock(&b->m);
}

int mpe_barrier_broken(const mpe_barrier *b) { return b->broken != 0; }
unsigned mpe_barrier_waiting(const mpe_barrier *b) { return b->broken ? 0 : b->count; }
pid_t mpe_barrier_dead_pid(const mpe_barrier *b) { return b->broken ? b->dead : 0; }
