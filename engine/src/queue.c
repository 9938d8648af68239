/* queue.c - a multi-producer, multi-consumer message queue in the arena.
 *
 * Layout: a byte ring (power-of-two capacity, grown on demand) of records
 * {len:64, tag:32, kind:16, pad:16} + payload, each padded to 16 bytes so a
 * record never straddles the end of the ring: when one would, a SKIP record
 * fills the tail end and the next starts at offset 0. head and tail are
 * 32-bit byte positions that only grow (modulo 2^32: the ring is at most
 * 2 GiB); position p lives at p & (cap - 1). Messages over
 * INLINE_MAX go in their own arena block and the ring holds a BLOCK record
 * naming it, so a message of any size passes through a queue of any bound,
 * and the consumer decodes it in place.
 *
 * Robustness: putters hold one robust mutex (plock), getters another
 * (clock); growing the ring takes both (plock first; getters never take
 * plock). Every change commits with one store made last: the putters' word
 * (message count and tail position) for a put, the getters' word for a get,
 * the ring descriptor for a growth. A process killed at any point leaves the
 * old state or the new one, never half of one, and since the counts travel
 * in the same stores as the positions there is nothing to recount. What can
 * be lost is the message the dead process was putting or had just taken (and
 * a ring, if it died inside a growth).
 *
 * Waiting: emptiness is head == tail. A getter that finds none spins up to
 * the spin budget watching the two words (no lock, no system call), then
 * sleeps on the get_seq futex; a putter bumps get_seq after its commit and
 * wakes one sleeper only if get_waiters says there is one, so the fast path
 * of both sides makes no system call. A getter whose last get found a
 * message waiting is in a stream: its spin looks first after a gap
 * (spin.c), so a consumer that keeps up with its producer takes several
 * records per transfer of the producer's line instead of pulling the line
 * after every put. The same holds for putters waiting
 * for room (put_seq) and for join (join_seq). close() sets the flag under
 * plock, so a getter that sees it closed and then finds nothing after a
 * last look at the tail has seen every put. */
#define _GNU_SOURCE
#include <errno.h>
#include <stddef.h>
#include <string.h>

#include "futex.h"
#include "mutex.h"
#include "spin.h"

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

/* Two robust mutexes: putters serialise on plock, getters on clock, so one
 * producer and one consumer never share a lock word. Each side commits with
 * one 64-bit store of its own word, which carries the side's message count
 * and byte position together: size = puts - gets is always exact, and a
 * holder killed at any point leaves its word old or new, so nothing needs
 * repair. Each side keeps a snapshot of the other's word and reads the real
 * one only when the snapshot says empty (getter) or full (putter): a
 * consumer that lags takes many records per transfer of the producer's
 * line. The groups are 64 bytes apart, so they live on different cache
 * lines. */
#define LINE 64
#define RING_MAX ((uint64_t)1 << 31) /* positions are 32 bits */

struct mpe_queue {
  mpe__obj hdr;
  uint64_t maxsize;
  _Atomic uint64_t ringdesc; /* arena offset << 8 | log2(capacity); changed under both locks */
  _Atomic uint32_t closed;   /* set under plock */
  _Atomic uint32_t get_waiters, put_waiters, join_waiters;
  _Atomic uint32_t watchers; /* mpe_wait_any calls: a put then wakes every getter */
  char pad0[LINE - 52];
  /* the putters' line */
  mpe__mutex plock;
  _Atomic uint64_t tailw; /* puts << 32 | tail position */
  _Atomic uint64_t head_seen;
  _Atomic uint32_t get_seq;
  char pad1[LINE - 28];
  /* the getters' line */
  mpe__mutex clock;
  _Atomic uint64_t headw; /* gets << 32 | head position */
  _Atomic uint64_t tail_seen;
  _Atomic uint32_t put_seq;
  char pad2[LINE - 28];
  /* join: messages marked done; unfinished = puts - done (mod 2^32), so a
   * put is counted in the same store that publishes it */
  _Atomic uint32_t done;
  _Atomic uint32_t join_seq;
};

static uint32_t wpos(uint64_t w) { return (uint32_t)w; }
static uint32_t wcnt(uint64_t w) { return (uint32_t)(w >> 32); }
static uint64_t mkw(uint32_t cnt, uint32_t pos) { return (uint64_t)cnt << 32 | pos; }

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

/* A dead holder leaves each word old or new: EOWNERDEAD needs no repair. */
static int take(mpe__mutex *m) {
  int rc = mpe__mutex_lock(m, NULL, 0);
  return rc == MPE_EOWNERDEAD ? 0 : rc;
}

int mpe_queue_new(mpe_queue **out, size_t maxsize) {
  _Static_assert(offsetof(mpe_queue, plock) == LINE && offsetof(mpe_queue, clock) == 2 * LINE &&
                     offsetof(mpe_queue, done) == 3 * LINE,
                 "one cache line per side");
  mpe_queue *q = mpe__obj_new(sizeof *q, MPE__KIND_QUEUE);
  if (!q) return mpe_initialized() ? -ENOMEM : MPE_ENOINIT;
  void *ring = mpe_alloc(RING_MIN);
  if (!ring) {
    mpe_free(q);
    return -ENOMEM;
  }
  mpe__mutex_init(&q->plock);
  mpe__mutex_init(&q->clock);
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
  uint32_t tail = wpos(atomic_load(&q->tailw));
  for (uint32_t p = wpos(atomic_load(&q->headw)); p != tail;) {
    rec *r = (rec *)(base + (p & mask));
    if (r->kind == REC_BLOCK) mpe_free(mpe_deref(*(uint64_t *)(r + 1)));
    p += (uint32_t)(r->kind == REC_SKIP ? r->len : rec_size(r->kind, r->len));
  }
  mpe_free(base);
  mpe_free(q);
}

uint64_t mpe_queue_ref(const mpe_queue *q) { return mpe_ref(q); }
mpe_queue *mpe_queue_from_ref(uint64_t ref) { return mpe__obj_from_ref(ref, MPE__KIND_QUEUE); }

/* Messages in the queue: gets read first, so the difference is never below 0. */
static uint32_t count(mpe_queue *q) {
  uint32_t gets = wcnt(atomic_load(&q->headw));
  return wcnt(atomic_load(&q->tailw)) - gets;
}

size_t mpe_queue_size(const mpe_queue *q) { return count((mpe_queue *)q); }
size_t mpe_queue_maxsize(const mpe_queue *q) { return (size_t)q->maxsize; }
int mpe_queue_is_closed(const mpe_queue *q) { return atomic_load(&q->closed) != 0; }

static int can_get(void *q) {
  mpe_queue *mq = q;
  return wpos(atomic_load(&mq->headw)) != wpos(atomic_load(&mq->tailw)) || atomic_load(&mq->closed);
}
static int can_put(void *q) {
  mpe_queue *mq = q;
  return !mq->maxsize || count(mq) < mq->maxsize || atomic_load(&mq->closed);
}

int mpe__queue_readable(mpe_queue *q) { return can_get(q); }

_Atomic uint32_t *mpe__queue_watch(mpe_queue *q, int delta) {
  /* watchers first: a putter that sees the waiter sees the watcher too */
  if (delta > 0) atomic_fetch_add(&q->watchers, 1), atomic_fetch_add(&q->get_waiters, 1);
  else atomic_fetch_sub(&q->get_waiters, 1), atomic_fetch_sub(&q->watchers, 1);
  return &q->get_seq;
}

/* Called holding m; returns holding it. Spins (spin.c), then sleeps until
 * seq moves. seq is read before ready() is looked at, and a waker changes
 * the state before it bumps seq: a change made after the caller looked
 * either shows in ready() or makes the futex wait return at once. */
static int wait_on(mpe_queue *q, mpe__mutex *m, _Atomic uint32_t *seq, _Atomic uint32_t *waiters,
                   const mpe__deadline *d, int (*ready)(void *), mpe__spin *spin) {
  if (mpe__deadline_ms(d) == 0) return MPE_ETIMEDOUT;
  uint32_t seen = atomic_load(seq);
  mpe__mutex_unlock(m);
  int rc = 0;
  if (!mpe__spin_wait(spin, ready, q)) {
    atomic_fetch_add(waiters, 1);
    rc = mpe__futex_wait(seq, seen, d);
    atomic_fetch_sub(waiters, 1);
  }
  int lr = take(m);
  MPE__CHECK(lr == 0);
  return rc;
}

/* Holding plock: makes room for total bytes at the tail by growing the
 * ring, which needs the getters out of it too (plock, then clock: getters
 * never take plock). */
static int grow(mpe_queue *q, uint64_t total) {
  int rc = take(&q->clock);
  if (rc < 0) return rc;
  uint64_t desc = atomic_load(&q->ringdesc);
  uint32_t head = wpos(atomic_load(&q->headw)), tail = wpos(atomic_load(&q->tailw));
  uint64_t cap = ring_cap(desc), used = (uint32_t)(tail - head), ncap = cap;
  while (ncap - used < total && ncap < RING_MAX) ncap *= 2;
  char *nbase = ncap - used < total ? NULL : mpe_alloc(ncap);
  if (!nbase) {
    mpe__mutex_unlock(&q->clock);
    return -ENOMEM;
  }
  char *base = ring_base(desc);
  /* Same positions, new mask: a record that did not straddle the old end
   * does not straddle the new one (ncap is a multiple of cap). */
  for (uint32_t p = head; p != tail;) {
    uint64_t n = (uint32_t)(tail - p), a = cap - (p & (cap - 1)), b = ncap - (p & (ncap - 1));
    if (a < n) n = a;
    if (b < n) n = b;
    memcpy(nbase + (p & (ncap - 1)), base + (p & (cap - 1)), n);
    p += (uint32_t)n;
  }
  atomic_store(&q->ringdesc, make_desc(nbase, ncap)); /* the commit */
  atomic_store(&q->head_seen, atomic_load(&q->headw));
  mpe__mutex_unlock(&q->clock);
  mpe_free(base);
  return 0;
}

/* Holding plock: appends one record; publishes it with the store to tailw. */
static int append(mpe_queue *q, int kind, const void *data, size_t len, uint32_t tag, uint64_t block) {
  size_t need = rec_size(kind, len);
  uint64_t tw = atomic_load_explicit(&q->tailw, memory_order_relaxed);
  uint32_t tail = wpos(tw);
  for (;;) {
    uint64_t desc = atomic_load(&q->ringdesc), cap = ring_cap(desc);
    uint64_t pos = tail & (cap - 1), to_end = cap - pos;
    uint64_t total = need + (to_end < need ? to_end : 0);
    if (cap - (uint32_t)(tail - wpos(atomic_load(&q->head_seen))) < total) {
      atomic_store(&q->head_seen, atomic_load_explicit(&q->headw, memory_order_acquire));
      if (cap - (uint32_t)(tail - wpos(atomic_load(&q->head_seen))) < total) {
        int rc = grow(q, total);
        if (rc < 0) return rc;
      }
      continue;
    }
    char *base = ring_base(desc);
    uint32_t at = tail;
    if (to_end < need) {
      rec *s = (rec *)(base + pos);
      s->len = to_end;
      s->kind = REC_SKIP;
      at += (uint32_t)to_end;
      pos = 0;
    }
    rec *r = (rec *)(base + pos);
    r->len = len;
    r->tag = tag;
    r->kind = (uint16_t)kind;
    if (kind == REC_INLINE) memcpy(r + 1, data, len);
    else *(uint64_t *)(r + 1) = block;
    atomic_store_explicit(&q->tailw, mkw(wcnt(tw) + 1, at + (uint32_t)need),
                          memory_order_release); /* the commit */
    return 0;
  }
}

/* Holding plock: room for one more message under maxsize? Reads the
 * getters' word only when the snapshot says full. */
static int has_room(mpe_queue *q) {
  if (!q->maxsize) return 1;
  uint32_t puts = wcnt(atomic_load_explicit(&q->tailw, memory_order_relaxed));
  if (puts - wcnt(atomic_load(&q->head_seen)) < q->maxsize) return 1;
  atomic_store(&q->head_seen, atomic_load(&q->headw));
  return puts - wcnt(atomic_load(&q->head_seen)) < q->maxsize;
}

/* Each side's spin state, per process (spin.c). A side is in a stream
 * while its calls find what they want without waiting. */
static mpe__spin get_spin, put_spin;

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
  int rc = take(&q->plock), late = 0, waited = 0;
  while (rc == 0) {
    if (atomic_load(&q->closed)) rc = MPE_ECLOSED;
    else if (has_room(q)) break;
    else if (late) rc = MPE_ETIMEDOUT;
    else {
      rc = wait_on(q, &q->plock, &q->put_seq, &q->put_waiters, &d, can_put, &put_spin);
      put_spin.stream = 0;
      if (rc == MPE_ETIMEDOUT) late = 1, rc = 0; /* look once more */
      waited = 1;
    }
  }
  if (rc == 0 && !waited && q->maxsize) put_spin.stream = kind == REC_INLINE;
  if (rc == 0) rc = append(q, kind, buf, len, tag, mpe_ref(block));
  mpe__mutex_unlock(&q->plock);
  if (rc == 0) mpe__seq_signal(&q->get_seq, &q->get_waiters, atomic_load(&q->watchers) ? INT32_MAX : 1);
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
  int rc = take(&q->clock), late = 0, waited = 0;
  while (rc == 0) {
    uint64_t hw = atomic_load_explicit(&q->headw, memory_order_relaxed);
    uint32_t head = wpos(hw);
    if (head == wpos(atomic_load(&q->tail_seen)))
      atomic_store(&q->tail_seen, atomic_load_explicit(&q->tailw, memory_order_acquire));
    if (head != wpos(atomic_load(&q->tail_seen))) {
      uint64_t desc = atomic_load(&q->ringdesc), mask = ring_cap(desc) - 1;
      rec *r = (rec *)(ring_base(desc) + (head & mask));
      if (r->kind == REC_SKIP) {
        atomic_store_explicit(&q->headw, mkw(wcnt(hw), head + (uint32_t)r->len), memory_order_release);
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
      atomic_store_explicit(&q->headw, mkw(wcnt(hw) + 1, head + (uint32_t)rec_size(r->kind, r->len)),
                            memory_order_release); /* the commit */
      break;
    }
    if (atomic_load(&q->closed)) {
      /* close() held plock: every put is committed by now */
      atomic_store(&q->tail_seen, atomic_load(&q->tailw));
      if (head == wpos(atomic_load(&q->tail_seen))) rc = MPE_ECLOSED;
    } else if (late) rc = MPE_ETIMEDOUT;
    else {
      rc = wait_on(q, &q->clock, &q->get_seq, &q->get_waiters, &d, can_get, &get_spin);
      get_spin.stream = 0; /* it had to wait: the next wait looks at once */
      if (rc == MPE_ETIMEDOUT) late = 1, rc = 0;
      waited = 1;
    }
  }
  /* it found one there: a stream, if of small records (a big one costs its
   * copy, not a line transfer, and a consumer that lags lets blocks pile up) */
  if (rc == 0 && !waited) get_spin.stream = m->block == NULL;
  mpe__mutex_unlock(&q->clock);
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
  /* under plock, so that no put commits after close() returns */
  int rc = take(&q->plock);
  MPE__CHECK(rc == 0);
  atomic_store(&q->closed, 1);
  mpe__mutex_unlock(&q->plock);
  mpe__seq_signal(&q->get_seq, &q->get_waiters, INT32_MAX);
  mpe__seq_signal(&q->put_seq, &q->put_waiters, INT32_MAX);
}

/* Messages put and not yet marked done. */
static uint32_t unfinished(mpe_queue *q) {
  uint32_t done = atomic_load(&q->done);
  return wcnt(atomic_load(&q->tailw)) - done;
}

int mpe_queue_task_done(mpe_queue *q) {
  uint32_t done = atomic_load(&q->done);
  do {
    if (wcnt(atomic_load(&q->tailw)) == done) return -EINVAL;
  } while (!atomic_compare_exchange_weak(&q->done, &done, done + 1));
  if (wcnt(atomic_load(&q->tailw)) == done + 1) mpe__seq_signal(&q->join_seq, &q->join_waiters, INT32_MAX);
  return 0;
}

int mpe_queue_join(mpe_queue *q, double timeout) {
  mpe__deadline d = mpe__deadline_in(timeout);
  for (;;) {
    uint32_t seen = atomic_load(&q->join_seq);
    if (unfinished(q) == 0) return 0;
    if (mpe__deadline_ms(&d) == 0) return MPE_ETIMEDOUT;
    atomic_fetch_add(&q->join_waiters, 1);
    int rc = mpe__futex_wait(&q->join_seq, seen, &d);
    atomic_fetch_sub(&q->join_waiters, 1);
    if (rc == MPE_EINTR) return rc;
  }
}
