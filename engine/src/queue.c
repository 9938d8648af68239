/* queue.c - a multi-producer, multi-consumer message queue in the arena.
 *
 * Layout: a byte ring (power-of-two capacity, grown on demand) of records
 * {len:64, tag:32, kind:16, pad:16} + payload, each padded to 16 bytes so a
 * record never straddles the end of the ring: when one would, a SKIP record
 * fills the tail end and the next starts at offset 0. head and tail are byte
 * positions that only grow; position p lives at p & (cap - 1). Messages over
 * INLINE_MAX go in their own arena block and the ring holds a BLOCK record
 * naming it, so a message of any size passes through a queue of any bound,
 * and the consumer decodes it in place.
 *
 * Robustness: one robust mutex guards the ring. Every change commits with a
 * single store made last (tail for a put, head for a get, the ring
 * descriptor when the ring grows), so a process killed at any point leaves
 * either the old or the new state, never half of one; the next locker gets
 * EOWNERDEAD and recounts `count` from the ring (repair()). What can be lost
 * is the message the dead process was putting or had just taken.
 *
 * Waiting: emptiness is head == tail under the mutex. A getter that finds
 * none spins up to the spin budget watching `count` (no lock, no system
 * call), then sleeps on the get_seq futex; a putter that makes the queue
 * non-empty bumps get_seq and wakes one sleeper only if get_waiters says
 * there is one, so the fast path of both sides makes no system call. The
 * same holds for putters waiting for room (put_seq) and for join (join_seq). */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>

#include "futex.h"
#include "mutex.h"

#define RING_MIN ((size_t)64 * 1024)
#define INLINE_MAX ((size_t)16 * 1024)
#define REC 16

enum { REC_INLINE = 1, REC_BLOCK = 2, REC_SKIP = 3 };

typedef struct rec {
  uint64_t len; /* payload bytes; for SKIP, the bytes to skip, header included */
  uint32_t tag;
  uint16_t kind;
  uint16_t pad;
} rec;

struct mpe_queue {
  mpe__obj hdr;
  mpe__mutex lock;
  _Atomic uint64_t ringdesc; /* arena offset << 8 | log2(capacity) */
  uint64_t head, tail;
  _Atomic uint64_t count;
  uint64_t maxsize;
  _Atomic int64_t unfinished;
  _Atomic uint32_t closed;
  _Atomic uint32_t get_seq, put_seq, join_seq;
  _Atomic uint32_t get_waiters, put_waiters, join_waiters;
};


static size_t pad16(size_t n) { return (n + 15) & ~(size_t)15; }

static size_t rec_size(int kind, size_t len) {
  return REC + (kind == REC_INLINE ? pad16(len) : 16);
}

static char *ring_base(uint64_t desc) { return mpe_deref(desc >> 8); }
static uint64_t ring_cap(uint64_t desc) { return (uint64_t)1 << (desc & 63); }

static uint64_t make_desc(void *ring, size_t cap) {
  unsigned lg = 0;
  while (((size_t)1 << lg) < cap) lg++;
  return mpe_ref(ring) << 8 | lg;
}

/* After a holder died: recount from the ring, which is always whole. */
static void repair(mpe_queue *q) {
  uint64_t desc = atomic_load(&q->ringdesc), mask = ring_cap(desc) - 1;
  char *base = ring_base(desc);
  uint64_t n = 0, p = q->head;
  while (p < q->tail) {
    rec *r = (rec *)(base + (p & mask));
    uint64_t size = r->kind == REC_SKIP ? r->len : rec_size(r->kind, r->len);
    if ((r->kind != REC_INLINE && r->kind != REC_BLOCK && r->kind != REC_SKIP) || size == 0 ||
        size > q->tail - p) {
      q->tail = p; /* cannot happen with whole records; never read garbage */
      break;
    }
    if (r->kind != REC_SKIP) n++;
    p += size;
  }
  atomic_store(&q->count, n);
}

static int qlock(mpe_queue *q) {
  int rc = mpe__mutex_lock(&q->lock, NULL, 0);
  if (rc == MPE_EOWNERDEAD) {
    repair(q);
    rc = 0;
  }
  return rc;
}

static void qunlock(mpe_queue *q) { mpe__mutex_unlock(&q->lock); }

int mpe_queue_new(mpe_queue **out, size_t maxsize) {
  mpe_queue *q = mpe__obj_new(sizeof *q, MPE__KIND_QUEUE);
  if (!q) return mpe_initialized() ? -ENOMEM : MPE_ENOINIT;
  void *ring = mpe_alloc(RING_MIN);
  if (!ring) {
    mpe_free(q);
    return -ENOMEM;
  }
  mpe__mutex_init(&q->lock);
  atomic_store(&q->ringdesc, make_desc(ring, RING_MIN));
  q->maxsize = maxsize;
  *out = q;
  return 0;
}

void mpe_queue_retain(mpe_queue *q) { mpe__obj_retain(q); }

void mpe_queue_free(mpe_queue *q) {
  if (!q || !mpe__obj_release(q)) return;
  /* The last reference: nobody else can reach the queue. */
  uint64_t desc = atomic_load(&q->ringdesc), mask = ring_cap(desc) - 1;
  char *base = ring_base(desc);
  for (uint64_t p = q->head; p < q->tail;) {
    rec *r = (rec *)(base + (p & mask));
    if (r->kind == REC_BLOCK) mpe_free(mpe_deref(*(uint64_t *)(r + 1)));
    p += r->kind == REC_SKIP ? r->len : rec_size(r->kind, r->len);
  }
  mpe_free(base);
  mpe_free(q);
}

uint64_t mpe_queue_ref(const mpe_queue *q) { return mpe_ref(q); }
mpe_queue *mpe_queue_from_ref(uint64_t ref) { return mpe__obj_from_ref(ref, MPE__KIND_QUEUE); }
size_t mpe_queue_size(const mpe_queue *q) {
  /* A dead holder may have left the count one off: if the lock is free (or
   * was left by the dead), take it so that repair() runs first. */
  mpe_queue *mq = (mpe_queue *)q;
  int rc = mpe__mutex_trylock(&mq->lock, 1);
  if (rc == MPE_EOWNERDEAD) repair(mq);
  if (rc == 0 || rc == MPE_EOWNERDEAD) mpe__mutex_unlock(&mq->lock);
  return (size_t)atomic_load(&q->count);
}
size_t mpe_queue_maxsize(const mpe_queue *q) { return (size_t)q->maxsize; }
int mpe_queue_is_closed(const mpe_queue *q) { return atomic_load(&q->closed) != 0; }

static int can_get(mpe_queue *q) { return atomic_load(&q->count) > 0 || atomic_load(&q->closed); }
static int can_put(mpe_queue *q) {
  return !q->maxsize || atomic_load(&q->count) < q->maxsize || atomic_load(&q->closed);
}

/* Called locked; returns locked. Spins, then sleeps until seq moves. */
static int wait_on(mpe_queue *q, _Atomic uint32_t *seq, _Atomic uint32_t *waiters,
                   const mpe__deadline *d, int (*ready)(mpe_queue *)) {
  if (mpe__deadline_ms(d) == 0) return MPE_ETIMEDOUT;
  uint32_t seen = atomic_load(seq); /* read under the lock: no lost wake-up */
  qunlock(q);
  long spin = mpe__spin_ns();
  int rc = 0;
  if (spin > 0) {
    double until = mpe_time() + (double)spin * 1e-9;
    int i = 0;
    while (!ready(q) && ((++i & 63) || mpe_time() < until)) mpe__cpu_relax();
  }
  if (!ready(q)) {
    atomic_fetch_add(waiters, 1);
    rc = mpe__futex_wait(seq, seen, d);
    atomic_fetch_sub(waiters, 1);
  }
  int lr = qlock(q);
  MPE__CHECK(lr == 0);
  return rc;
}

/* Locked: makes room for total bytes at the tail, growing the ring. */
static int grow(mpe_queue *q, size_t total) {
  uint64_t desc = atomic_load(&q->ringdesc);
  uint64_t cap = ring_cap(desc), used = q->tail - q->head, ncap = cap;
  while (ncap - used < total) ncap *= 2;
  char *nbase = mpe_alloc(ncap);
  if (!nbase) return -ENOMEM;
  char *base = ring_base(desc);
  /* Same positions, new mask: a record that did not straddle the old end
   * does not straddle the new one (ncap is a multiple of cap). */
  for (uint64_t p = q->head; p < q->tail;) {
    uint64_t n = q->tail - p, a = cap - (p & (cap - 1)), b = ncap - (p & (ncap - 1));
    if (a < n) n = a;
    if (b < n) n = b;
    memcpy(nbase + (p & (ncap - 1)), base + (p & (cap - 1)), n);
    p += n;
  }
  atomic_store(&q->ringdesc, make_desc(nbase, ncap)); /* the commit */
  mpe_free(base);
  return 0;
}

/* Locked: appends one record; publishes it with the store to tail. */
static int append(mpe_queue *q, int kind, const void *data, size_t len, uint32_t tag, uint64_t block) {
  size_t need = rec_size(kind, len);
  for (;;) {
    uint64_t desc = atomic_load(&q->ringdesc), cap = ring_cap(desc);
    uint64_t pos = q->tail & (cap - 1), to_end = cap - pos;
    size_t total = need + (to_end < need ? to_end : 0);
    if (cap - (q->tail - q->head) < total) {
      int rc = grow(q, total);
      if (rc < 0) return rc;
      continue;
    }
    char *base = ring_base(desc);
    uint64_t tail = q->tail;
    if (to_end < need) {
      rec *s = (rec *)(base + pos);
      s->len = to_end;
      s->kind = REC_SKIP;
      tail += to_end;
      pos = 0;
    }
    rec *r = (rec *)(base + pos);
    r->len = len;
    r->tag = tag;
    r->kind = (uint16_t)kind;
    if (kind == REC_INLINE) memcpy(r + 1, data, len);
    else *(uint64_t *)(r + 1) = block;
    q->tail = tail + need; /* the commit */
    atomic_fetch_add(&q->count, 1);
    atomic_fetch_add(&q->unfinished, 1);
    return 0;
  }
}

int mpe_queue_put(mpe_queue *q, const void *buf, size_t len, uint32_t tag, double timeout) {
  void *block = NULL;
  int kind = REC_INLINE;
  if (len > INLINE_MAX) { /* copied outside the lock */
    block = mpe_alloc(len);
    if (!block) return -ENOMEM;
    memcpy(block, buf, len);
    kind = REC_BLOCK;
  }
  mpe__deadline d = mpe__deadline_in(timeout);
  int rc = qlock(q), late = 0;
  while (rc == 0) {
    if (atomic_load(&q->closed)) rc = MPE_ECLOSED;
    else if (!q->maxsize || atomic_load(&q->count) < q->maxsize) break;
    else if (late) rc = MPE_ETIMEDOUT;
    else {
      rc = wait_on(q, &q->put_seq, &q->put_waiters, &d, can_put);
      if (rc == MPE_ETIMEDOUT) late = 1, rc = 0; /* look once more */
    }
  }
  if (rc == 0) rc = append(q, kind, buf, len, tag, mpe_ref(block));
  qunlock(q);
  if (rc == 0) mpe__seq_signal(&q->get_seq, &q->get_waiters, 1);
  else mpe_free(block);
  return rc;
}

int mpe_queue_get(mpe_queue *q, double timeout, mpe_qmsg *m) {
  mpe_qmsg_done(m);
  if (m->cap < INLINE_MAX) { /* sized once, so the lock never waits on malloc */
    char *b = realloc(m->buf, INLINE_MAX);
    if (!b) return -ENOMEM;
    m->buf = b;
    m->cap = INLINE_MAX;
  }
  mpe__deadline d = mpe__deadline_in(timeout);
  int rc = qlock(q), late = 0;
  while (rc == 0) {
    if (q->head != q->tail) {
      uint64_t desc = atomic_load(&q->ringdesc), mask = ring_cap(desc) - 1;
      rec *r = (rec *)(ring_base(desc) + (q->head & mask));
      if (r->kind == REC_SKIP) {
        q->head += r->len;
        continue;
      }
      m->len = (size_t)r->len;
      m->tag = r->tag;
      if (r->kind == REC_INLINE) {
        memcpy(m->buf, r + 1, m->len);
        m->data = m->buf;
      } else {
        m->block = mpe_deref(*(uint64_t *)(r + 1));
        m->data = m->block;
      }
      q->head += rec_size(r->kind, r->len); /* the commit */
      atomic_fetch_sub(&q->count, 1);
      break;
    }
    if (atomic_load(&q->closed)) rc = MPE_ECLOSED;
    else if (late) rc = MPE_ETIMEDOUT;
    else {
      rc = wait_on(q, &q->get_seq, &q->get_waiters, &d, can_get);
      if (rc == MPE_ETIMEDOUT) late = 1, rc = 0;
    }
  }
  qunlock(q);
  if (rc == 0 && q->maxsize) mpe__seq_signal(&q->put_seq, &q->put_waiters, 1);
  return rc;
}

void mpe_qmsg_done(mpe_qmsg *m) {
  if (m->block) mpe_free(m->block);
  m->block = NULL;
  m->data = NULL;
  m->len = 0;
}

void mpe_qmsg_free(mpe_qmsg *m) {
  mpe_qmsg_done(m);
  free(m->buf);
  m->buf = NULL;
  m->cap = 0;
}

void mpe_queue_close(mpe_queue *q) {
  atomic_store(&q->closed, 1);
  mpe__seq_signal(&q->get_seq, &q->get_waiters, INT32_MAX);
  mpe__seq_signal(&q->put_seq, &q->put_waiters, INT32_MAX);
}

int mpe_queue_task_done(mpe_queue *q) {
  int64_t before = atomic_fetch_sub(&q->unfinished, 1);
  if (before <= 0) {
    atomic_fetch_add(&q->unfinished, 1);
    return -EINVAL;
  }
  if (before == 1) mpe__seq_signal(&q->join_seq, &q->join_waiters, INT32_MAX);
  return 0;
}

int mpe_queue_join(mpe_queue *q, double timeout) {
  mpe__deadline d = mpe__deadline_in(timeout);
  for (;;) {
    uint32_t seen = atomic_load(&q->join_seq);
    if (atomic_load(&q->unfinished) <= 0) return 0;
    if (mpe__deadline_ms(&d) == 0) return MPE_ETIMEDOUT;
    atomic_fetch_add(&q->join_waiters, 1);
    int rc = mpe__futex_wait(&q->join_seq, seen, &d);
    atomic_fetch_sub(&q->join_waiters, 1);
    if (rc == MPE_EINTR) return rc;
  }
}
