/* queue.c - a multi-producer, multi-consumer message queue in the arena.
 *
 * Layout: a byte ring (power-of-two capacity, line-aligned, grown on
 * demand) of records: one 8-byte header word {tag, len, kind, stamp} +
 * payload, each padded to 8 bytes, so a small message (up to 8 bytes)
 * takes 16 and a cache line carries four. A record never straddles the
 * end of the ring: when one would, a SKIP record fills the tail end and the
 * next starts at offset 0. head and tail are 32-bit byte positions that
 * only grow (modulo 2^32: the ring is at most 2 GiB); position p lives at
 * p & (cap - 1). Messages over INLINE_MAX go in their own arena block and
 * the ring holds a BLOCK record naming it, so a message of any size passes
 * through a queue of any bound, and the consumer decodes it in place.
 *
 * Robustness: putters hold one robust mutex (plock), getters another
 * (clock); growing the ring takes both (plock first; getters never take
 * plock). Every change commits with one store made last: the putters' word
 * (message count and tail position) for a put, the getters' word for a get,
 * the ring descriptor for a growth. A process killed at any point leaves the
 * old state or the new one, never half of one, and since the counts travel
 * in the same stores as the positions there is nothing to recount. What can
 * be lost is the message the dead process was putting or had just taken (and
 * a ring, if it died inside a growth). The stamp and the tail hint below
 * are written after the commit and only ever say "committed" of what is:
 * a putter killed before writing them leaves records a getter finds through
 * the putters' word instead.
 *
 * Moving messages: a getter must not read the putters' line (the lock and
 * the word a putter writes at every put) nor a ring line a putter is still
 * writing: each such read takes the line away, and the putter waits for a
 * transfer to take it back (several hundred ns on a VM whose CPUs sit far
 * apart), once per message at worst. So a putter stamps each record's
 * header after its commit, and publishes the tail in a word of its own
 * (the tail hint) each time a record ends in a new cache line. A getter
 * that keeps up (a stream) reads records up to the hint, that is in lines
 * the putters have finished, four small messages per line transfer; at the
 * hint it waits (below) instead of following the putter into its line.
 * Otherwise it looks at the stamp of the record at its head, and only when
 * there is none at the putters' word. The putter reads the getters' word
 * only when its snapshot says the ring or maxsize is full.
 *
 * Waiting: emptiness is head == tail. A getter that finds none spins up to
 * the spin budget watching the tail hint and the stamp at its head (no
 * lock, no system call), then sleeps on the get_seq futex; a putter looks
 * at get_waiters after its commit and bumps get_seq and wakes one sleeper
 * only if there is one, so the fast path of both sides writes nothing the
 * other side reads. A getter in a stream (its last get found a message
 * waiting) looks first after a gap (spin.c), so it takes a batch of lines
 * per wait. The same holds for putters waiting for room (put_seq) and for
 * join (join_seq). close() sets the flag under plock, so a getter that sees
 * it closed and then finds nothing after a last look at the tail has seen
 * every put. */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stddef.h>
#include <string.h>

#include "futex.h"
#include "mutex.h"
#include "spin.h"

#define RING_MIN ((size_t)64 * 1024)
/* A ring that has carried STREAM_AFTER bytes grows to STREAM_RING at its
 * next wrap (see append). */
#define STREAM_RING ((uint64_t)256 * 1024)
#define STREAM_AFTER ((uint32_t)512 * 1024)
#define INLINE_MAX ((size_t)16 * 1024)
#define HDR 8 /* a record's header: one 64-bit word */

enum { REC_INLINE = 1, REC_BLOCK = 2, REC_SKIP = 3 };

/* The header word: tag (bits 0-31), len (32-46: payload bytes of an INLINE
 * record, the bytes a SKIP covers, header included), kind (47-48), and the
 * stamp (49-63), which a putter sets after its commit (see append). A BLOCK
 * record's payload is the block's reference and its length. */
typedef _Atomic uint64_t rec;

static uint64_t hdr_make(int kind, size_t len, uint32_t tag) {
  return (uint64_t)tag | (uint64_t)len << 32 | (uint64_t)kind << 47;
}
static uint32_t hdr_len(uint64_t h) { return (uint32_t)(h >> 32) & 0x7fff; }
static int hdr_kind(uint64_t h) { return (int)(h >> 47) & 3; }
/* The stamp of a record at position pos: never 0, so neither a cleared
 * header nor one from another position passes for it. */
static uint64_t stamp_of(uint32_t pos) { return (uint64_t)(0x4000 | (pos >> 3 & 0x3fff)) << 49; }
static int stamped(uint64_t h, uint32_t pos) { return (h & ~(((uint64_t)1 << 49) - 1)) == stamp_of(pos); }

/* Two robust mutexes: putters serialise on plock, getters on clock, so one
 * producer and one consumer never share a lock word. Each side commits with
 * one 64-bit store of its own word, which carries the side's message count
 * and byte position together: size = puts - gets is always exact, and a
 * holder killed at any point leaves its word old or new, so nothing needs
 * repair. Each side keeps a snapshot of the other's word and reads the real
 * one only when the snapshot says full (putter) or, for a getter, when the
 * record at its head has no stamp. The arena aligns blocks to 16 bytes
 * only, so each group of fields starts two lines after the one before: no
 * cache line holds fields of two groups, however the queue is placed. */
#define LINE 64
#define GROUP (2 * LINE)
#define RING_MAX ((uint64_t)1 << 31) /* positions are 32 bits */

struct mpe_queue {
  mpe__obj hdr;
  /* read by both sides, written rarely */
  uint64_t maxsize;
  _Atomic uint64_t ringdesc; /* arena offset << 8 | log2(capacity); changed under both locks */
  _Atomic uint32_t closed;   /* set under plock */
  _Atomic uint32_t get_waiters, put_waiters, join_waiters;
  _Atomic uint32_t watchers; /* mpe_wait_any calls: a put then wakes every getter */
  char pad0[GROUP - 52];
  /* the putters' */
  mpe__mutex plock;
  _Atomic uint64_t tailw; /* puts << 32 | tail position */
  _Atomic uint64_t head_seen;
  _Atomic uint32_t get_seq;
  char pad1[GROUP - 28];
  /* the tail as of the last line the putters finished (see append) */
  _Atomic uint32_t tail_hint;
  char pad_hint[GROUP - 4];
  /* the getters' */
  mpe__mutex clock;
  _Atomic uint64_t headw; /* gets << 32 | head position */
  _Atomic uint64_t tail_seen;
  _Atomic uint32_t put_seq;
  char pad2[GROUP - 28];
  /* join: messages marked done; unfinished = puts - done (mod 2^32), so a
   * put is counted in the same store that publishes it */
  _Atomic uint32_t done;
  _Atomic uint32_t join_seq;
};

static uint32_t wpos(uint64_t w) { return (uint32_t)w; }
static uint32_t wcnt(uint64_t w) { return (uint32_t)(w >> 32); }
static uint64_t mkw(uint32_t cnt, uint32_t pos) { return (uint64_t)cnt << 32 | pos; }
/* Position a is before b (positions wrap at 2^32; the ring holds < 2^31
 * bytes). The getters' snapshot of the tail falls behind the head when they
 * find records by their stamps. */
static int before(uint32_t a, uint32_t b) { return (int32_t)(b - a) > 0; }

static size_t pad8(size_t n) { return (n + 7) & ~(size_t)7; }

static size_t rec_size(int kind, size_t len) {
  return HDR + (kind == REC_INLINE ? pad8(len) : 16);
}

/* The header word at position p of the ring. */
static rec *rec_at(char *base, uint64_t mask, uint32_t p) { return (rec *)(base + (p & mask)); }

/* A ring is its block's first line-aligned bytes (blocks are 16-aligned),
 * so ring positions a multiple of LINE apart start cache lines. */
static void *ring_alloc(size_t cap) { return mpe_alloc(cap + LINE - 16); }
static char *ring_block(uint64_t desc) { return mpe_deref(desc >> 8); }
static char *ring_base(uint64_t desc) {
  return (char *)(((uintptr_t)ring_block(desc) + LINE - 1) & ~(uintptr_t)(LINE - 1));
}
static uint64_t ring_cap(uint64_t desc) { return (uint64_t)1 << (desc & 63); }

static uint64_t make_desc(void *ring, size_t cap) {
  unsigned lg = 0;
  while (((size_t)1 << lg) < cap) lg++;
  return mpe_ref(ring) << 8 | lg;
}

int mpe__queue_kill_at;

static void kill_point(int step) {
  if (mpe__queue_kill_at == step) raise(SIGKILL);
}

/* A dead holder leaves each word old or new: EOWNERDEAD needs no repair. */
static int take(mpe__mutex *m) {
  int rc = mpe__mutex_lock(m, NULL, 0);
  return rc == MPE_EOWNERDEAD ? 0 : rc;
}

int mpe_queue_new(mpe_queue **out, size_t maxsize) {
  _Static_assert(offsetof(mpe_queue, plock) == GROUP && offsetof(mpe_queue, tail_hint) == 2 * GROUP &&
                     offsetof(mpe_queue, clock) == 3 * GROUP && offsetof(mpe_queue, done) == 4 * GROUP,
                 "two cache lines per group");
  mpe_queue *q = mpe__obj_new(sizeof *q, MPE__KIND_QUEUE);
  if (!q) return mpe_initialized() ? -ENOMEM : MPE_ENOINIT;
  char *ring = ring_alloc(RING_MIN);
  if (!ring) {
    mpe_free(q);
    return -ENOMEM;
  }
  mpe__mutex_init(&q->plock);
  mpe__mutex_init(&q->clock);
  atomic_store(&q->ringdesc, make_desc(ring, RING_MIN));
  atomic_store_explicit((rec *)ring_base(q->ringdesc), 0, memory_order_relaxed); /* no record at 0 yet */
  q->maxsize = maxsize;
  *out = q;
  return 0;
}

void mpe_queue_retain(mpe_queue *q) { mpe__obj_retain(q); }

/* The record at p, whose header is h: the bytes it takes up in the ring. */
static uint32_t rec_span(uint64_t h) {
  return (uint32_t)(hdr_kind(h) == REC_SKIP ? hdr_len(h) : rec_size(hdr_kind(h), hdr_len(h)));
}

/* A BLOCK record's block. */
static void *rec_block(rec *r) { return mpe_deref(*(uint64_t *)(r + 1)); }

void mpe_queue_free(mpe_queue *q) {
  if (!q || !mpe__obj_release(q)) return;
  /* The last reference: nobody else can reach the queue. */
  uint64_t desc = atomic_load(&q->ringdesc), mask = ring_cap(desc) - 1;
  char *base = ring_base(desc);
  uint32_t tail = wpos(atomic_load(&q->tailw));
  for (uint32_t p = wpos(atomic_load(&q->headw)); p != tail;) {
    rec *r = rec_at(base, mask, p);
    uint64_t h = atomic_load_explicit(r, memory_order_relaxed);
    if (hdr_kind(h) == REC_BLOCK) mpe_free(rec_block(r));
    p += rec_span(h);
  }
  mpe_free(ring_block(desc));
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

/* Holding clock: the tail hint is past head; if so it becomes the
 * getters' snapshot of the tail. */
static int seen_in_hint(mpe_queue *q, uint32_t head) {
  uint32_t hint = atomic_load_explicit(&q->tail_hint, memory_order_acquire);
  if (!before(head, hint)) return 0;
  atomic_store_explicit(&q->tail_seen, hint, memory_order_relaxed);
  return 1;
}

/* A getter's spin looks at the tail hint, then at the record where it would
 * read next (the line it has to fetch anyway), not at the putters' word.
 * Read without clock, so a growth may free the ring under it: what it reads
 * there is only a hint, looked at again under clock (the arena stays
 * mapped). */
static int get_hint(void *q) {
  mpe_queue *mq = q;
  uint32_t head = wpos(atomic_load_explicit(&mq->headw, memory_order_relaxed));
  if (before(head, atomic_load_explicit(&mq->tail_hint, memory_order_relaxed))) return 1;
  uint64_t desc = atomic_load_explicit(&mq->ringdesc, memory_order_relaxed);
  uint64_t h = atomic_load_explicit(rec_at(ring_base(desc), ring_cap(desc) - 1, head), memory_order_relaxed);
  return stamped(h, head) || atomic_load_explicit(&mq->closed, memory_order_relaxed);
}

int mpe__queue_readable(mpe_queue *q) { return can_get(q); }

_Atomic uint32_t *mpe__queue_watch(mpe_queue *q, int delta) {
  /* watchers first: a putter that sees the waiter sees the watcher too */
  if (delta > 0) atomic_fetch_add(&q->watchers, 1), atomic_fetch_add(&q->get_waiters, 1);
  else atomic_fetch_sub(&q->get_waiters, 1), atomic_fetch_sub(&q->watchers, 1);
  return &q->get_seq;
}

/* After a commit (a sequentially consistent store of the side's word): wakes
 * the other side's sleepers if there are any. With none, it writes nothing,
 * so a stream's fast path leaves the waiting side's words alone. */
static void wake_side(_Atomic uint32_t *seq, _Atomic uint32_t *waiters, int n) {
  if (atomic_load(waiters) == 0) return;
  atomic_fetch_add(seq, 1);
  mpe__futex_wake(seq, n);
}

/* A sleeper looks again this often by itself: a holder killed between its
 * commit and its wake-up leaves a message (or room, or a done count) that
 * nobody would wake it for. */
#define WATCH 0.1

/* Sleeps while *seq == seen, until d but at most WATCH: 0 when woken, when
 * seq had moved, or when only the slice is over (look again). */
static int sleep_on(_Atomic uint32_t *seq, uint32_t seen, const mpe__deadline *d) {
  mpe__deadline until;
  mpe__slice_end(d, WATCH, &until);
  int rc = mpe__futex_wait(seq, seen, &until);
  return rc == MPE_ETIMEDOUT && mpe__deadline_ms(d) != 0 ? 0 : rc;
}

/* Called holding m; returns holding it. Spins (spin.c) until hint() says
 * the state changed, then sleeps until seq moves. A sleeper counts itself
 * among the waiters, then reads seq, then looks at ready() (the words
 * themselves); a waker commits, then reads the waiters and bumps seq only
 * if there are some. All sequentially consistent: either the waker sees the
 * sleeper, or the sleeper sees the change, so no wake-up is lost. */
static int wait_on(mpe_queue *q, mpe__mutex *m, _Atomic uint32_t *seq, _Atomic uint32_t *waiters,
                   const mpe__deadline *d, int (*hint)(void *), int (*ready)(void *), mpe__spin *spin) {
  if (mpe__deadline_ms(d) == 0) return MPE_ETIMEDOUT;
  mpe__mutex_unlock(m);
  int rc = 0;
  if (!mpe__spin_wait(spin, hint, q)) {
    atomic_fetch_add(waiters, 1);
    uint32_t seen = atomic_load(seq);
    if (!ready(q)) rc = sleep_on(seq, seen, d);
    atomic_fetch_sub(waiters, 1);
  }
  int lr = take(m);
  MPE__CHECK(lr == 0);
  return rc;
}

/* Holding plock: makes room for total bytes at the tail by growing the
 * ring to at least min_cap, which needs the getters out of it too (plock,
 * then clock: getters never take plock). */
static int grow(mpe_queue *q, uint64_t total, uint64_t min_cap) {
  int rc = take(&q->clock);
  if (rc < 0) return rc;
  uint64_t desc = atomic_load(&q->ringdesc);
  uint32_t head = wpos(atomic_load(&q->headw)), tail = wpos(atomic_load(&q->tailw));
  uint64_t cap = ring_cap(desc), used = (uint32_t)(tail - head), ncap = cap;
  while ((ncap - used < total || ncap < min_cap) && ncap < RING_MAX) ncap *= 2;
  char *nblock = ncap - used < total ? NULL : ring_alloc(ncap);
  if (!nblock) {
    mpe__mutex_unlock(&q->clock);
    return -ENOMEM;
  }
  uint64_t ndesc = make_desc(nblock, ncap);
  char *base = ring_base(desc), *nbase = ring_base(ndesc);
  /* Same positions, new mask: a record that did not straddle the old end
   * does not straddle the new one (ncap is a multiple of cap). */
  for (uint32_t p = head; p != tail;) {
    uint64_t n = (uint32_t)(tail - p), a = cap - (p & (cap - 1)), b = ncap - (p & (ncap - 1));
    if (a < n) n = a;
    if (b < n) n = b;
    memcpy(nbase + (p & (ncap - 1)), base + (p & (cap - 1)), n);
    p += (uint32_t)n;
  }
  atomic_store_explicit(rec_at(nbase, ncap - 1, tail), 0, memory_order_relaxed); /* no record at the tail */
  kill_point(MPE__QK_GROW_COPIED);
  atomic_store(&q->ringdesc, ndesc); /* the commit */
  atomic_store(&q->head_seen, atomic_load(&q->headw));
  kill_point(MPE__QK_GROW_DONE);
  mpe__mutex_unlock(&q->clock);
  mpe_free(ring_block(desc));
  return 0;
}

/* Holding plock: appends one record. The store to tailw commits it; then
 * its header gets its stamp, which tells a getter that looks there that the
 * record is committed without reading tailw (the putters' line). The header
 * at the tail never has a stamp: the ring starts with a cleared one, every
 * append clears the one after its record before it commits, and a record's
 * header is written without its stamp before the commit. A putter killed
 * between the commit and the stamp leaves a record a getter finds through
 * tailw instead. */
static int append(mpe_queue *q, int kind, const void *data, size_t len, uint32_t tag, uint64_t block) {
  size_t need = rec_size(kind, len);
  uint64_t tw = atomic_load_explicit(&q->tailw, memory_order_relaxed);
  uint32_t tail = wpos(tw);
  for (;;) {
    uint64_t desc = atomic_load(&q->ringdesc), cap = ring_cap(desc), mask = cap - 1;
    uint64_t pos = tail & mask, to_end = cap - pos;
    /* the record, the skipped end if it does not fit there, the next header */
    uint64_t total = need + (to_end < need ? to_end : 0) + HDR;
    if (cap - (uint32_t)(tail - wpos(atomic_load(&q->head_seen))) < total) {
      atomic_store(&q->head_seen, atomic_load_explicit(&q->headw, memory_order_acquire));
      if (cap - (uint32_t)(tail - wpos(atomic_load(&q->head_seen))) < total) {
        int rc = grow(q, total, 0);
        if (rc < 0) return rc;
      }
      continue;
    }
    /* A busy queue gets a bigger ring (once, at a wrap): a putter writes
     * again lines the getter read one lap before, and in a small ring they
     * are still in the getter's cache, so each costs the putter a transfer
     * to take back (measured: a quarter more messages a second than 64 KiB). */
    if (cap < STREAM_RING && to_end <= need && tail >= STREAM_AFTER && grow(q, total, STREAM_RING) == 0)
      continue;
    char *base = ring_base(desc);
    uint32_t at = tail;
    rec *skip = NULL;
    uint64_t sh = 0;
    if (to_end < need) {
      skip = rec_at(base, mask, at);
      sh = hdr_make(REC_SKIP, to_end, 0);
      atomic_store_explicit(skip, sh, memory_order_relaxed);
      at += (uint32_t)to_end;
    }
    atomic_store_explicit(rec_at(base, mask, at + (uint32_t)need), 0, memory_order_relaxed);
    rec *r = rec_at(base, mask, at);
    uint64_t h = hdr_make(kind, kind == REC_INLINE ? len : 0, tag);
    if (kind == REC_INLINE) memcpy(r + 1, data, len);
    else memcpy(r + 1, (uint64_t[2]){block, len}, 16);
    atomic_store_explicit(r, h, memory_order_relaxed);
    kill_point(MPE__QK_PUT_WRITTEN);
    atomic_store(&q->tailw, mkw(wcnt(tw) + 1, at + (uint32_t)need)); /* the commit */
    kill_point(MPE__QK_PUT_COMMITTED);
    atomic_store_explicit(r, h | stamp_of(at), memory_order_release);
    if (skip) {
      kill_point(MPE__QK_PUT_SKIP);
      atomic_store_explicit(skip, sh | stamp_of(tail), memory_order_release);
    }
    uint32_t end = at + (uint32_t)need;
    if ((end ^ at) / LINE) atomic_store_explicit(&q->tail_hint, end, memory_order_release);
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
      rc = wait_on(q, &q->plock, &q->put_seq, &q->put_waiters, &d, can_put, can_put, &put_spin);
      put_spin.stream = 0;
      if (rc == MPE_ETIMEDOUT) late = 1, rc = 0; /* look once more */
      waited = 1;
    }
  }
  if (rc == 0 && !waited && q->maxsize) put_spin.stream = kind == REC_INLINE;
  if (rc == 0) rc = append(q, kind, buf, len, tag, mpe_ref(block));
  if (rc == 0) kill_point(MPE__QK_PUT_DONE);
  mpe__mutex_unlock(&q->plock);
  if (rc == 0) wake_side(&q->get_seq, &q->get_waiters, atomic_load(&q->watchers) ? INT32_MAX : 1);
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
    uint64_t desc = atomic_load(&q->ringdesc);
    rec *r = rec_at(ring_base(desc), ring_cap(desc) - 1, head);
    /* Is the record at head committed? Known if before the snapshot of
     * the tail. A getter in a stream then reads the tail hint: records
     * in lines the putters have finished, so that it never takes the line
     * a putter is writing; it waits when it reaches the hint. Otherwise
     * (and once it waited) it looks at the record's stamp, then tailw
     * (the putters' line). */
    uint32_t seen = wpos(atomic_load_explicit(&q->tail_seen, memory_order_relaxed));
    int ok = before(head, seen);
    if (!ok && seen != head) /* passed by stamps: never let it fall 2^31 behind */
      atomic_store_explicit(&q->tail_seen, head, memory_order_relaxed);
    int stream = get_spin.stream && !late;
    if (!ok && stream) ok = seen_in_hint(q, head);
    if (!ok && !stream) ok = stamped(atomic_load_explicit(r, memory_order_acquire), head);
    if (!ok && !stream) {
      atomic_store(&q->tail_seen, atomic_load_explicit(&q->tailw, memory_order_acquire));
      ok = before(head, wpos(atomic_load(&q->tail_seen)));
    }
    if (!ok) {
      if (atomic_load(&q->closed)) {
        /* close() held plock: every put is committed by now */
        atomic_store(&q->tail_seen, atomic_load(&q->tailw));
        if (head == wpos(atomic_load(&q->tail_seen))) rc = MPE_ECLOSED;
      } else if (late) rc = MPE_ETIMEDOUT;
      else {
        rc = wait_on(q, &q->clock, &q->get_seq, &q->get_waiters, &d, get_hint, can_get, &get_spin);
        get_spin.stream = 0; /* it had to wait: the next wait looks at once */
        if (rc == MPE_ETIMEDOUT) late = 1, rc = 0;
        waited = 1;
      }
      continue;
    }
    uint64_t h = atomic_load_explicit(r, memory_order_acquire);
    if (hdr_kind(h) == REC_SKIP) {
      atomic_store_explicit(&q->headw, mkw(wcnt(hw), head + hdr_len(h)), memory_order_release);
      continue;
    }
    m->tag = (uint32_t)h;
    if (hdr_kind(h) == REC_INLINE) {
      m->len = hdr_len(h);
      memcpy(m->buf, r + 1, m->len);
      m->data = m->buf;
    } else {
      m->block = rec_block(r);
      m->len = (size_t)((uint64_t *)(r + 1))[1];
      m->data = m->block;
    }
    /* the commit; sequentially consistent when putters may wait for room */
    uint64_t nw = mkw(wcnt(hw) + 1, head + rec_span(h));
    kill_point(MPE__QK_GET_READ);
    if (q->maxsize) atomic_store(&q->headw, nw);
    else atomic_store_explicit(&q->headw, nw, memory_order_release);
    kill_point(MPE__QK_GET_DONE);
    break;
  }
  /* it found one there: a stream, if of small records (a big one costs its
   * copy, not a line transfer, and a consumer that lags lets blocks pile up) */
  if (rc == 0 && !waited) get_spin.stream = m->block == NULL;
  mpe__mutex_unlock(&q->clock);
  if (rc == 0 && q->maxsize) wake_side(&q->put_seq, &q->put_waiters, 1);
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
    int rc = sleep_on(&q->join_seq, seen, &d);
    atomic_fetch_sub(&q->join_waiters, 1);
    if (rc == MPE_EINTR) return rc;
  }
}
