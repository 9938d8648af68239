/* pool.c - the pool's parent side: tasks, batches, results and blame.
 *
 * Tasks are submitted in blocks (one copy of the caller's buffer and its
 * lengths holds many inputs) and wait in the pending line, a deque of spans:
 * a span is a run of consecutive tasks of one block, so a submit adds one
 * entry however many tasks it holds, and work taken back from a dead worker
 * goes to the front as spans, in order. dispatch() hands batches of pending
 * tasks to the workers with room, always to the one holding the fewest:
 * a worker holds up to `depth` tasks in batches of about depth / 2, so one
 * batch runs while the next waits in its inbox. Before any task time is
 * measured a worker holds one task (a task of unknown length must not keep
 * others waiting while a worker idles); then depth is the tasks that fill
 * QUEUED seconds, as measured by the workers (adaptive), or twice the
 * chunksize given. A batch is a few spans, and its message is copied from
 * its blocks' lengths and bytes in a memcpy per span.
 *
 * A reply is kept whole: its results are collected from one buffer (ids from
 * the batch's spans), recycled once the caller is done with it, so a result
 * costs no allocation of its own. Outcomes the parent decides (a death, a
 * timeout, terminate, a broken pool) wait in a ring of their own.
 *
 * The parent reaches its workers only through the transport (pool.h), and
 * looks at them at least every SLICE seconds while it waits: a worker that
 * has gone is handled by worker_gone(), which first takes every reply
 * already queued, then reads the dead worker's stamp: the task it was
 * running fails with how it died (MPE_EDIED, or MPE_ETIMEDOUT when the pool
 * killed it for running past the timeout), everything else it held goes back
 * to the front of the line, and a replacement starts. A transport that knows
 * only the batch (not the task) gets that batch rerun one task at a time, so
 * a task that kills its worker again is then named exactly. Workers that
 * die before finishing a task, outside any task, CRASH_LOOP(n) times in a
 * row break the pool, as does an initializer that fails: then, and on
 * terminate, every task without a result gets one saying so.
 *
 * Invariants: a task is in exactly one of the pending line, a batch held by
 * one worker, a kept reply or the ring; `unfinished` counts the first two,
 * `outstanding` all four. A block is freed when its last task has its
 * result. */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "futex.h"
#include "pool.h"

#define SLICE 0.01              /* the parent looks at its workers this often */
#define QUEUED 0.02             /* seconds of work a worker may hold */
#define MAXDEPTH ((size_t)1 << 16) /* and at most this many tasks */
#define CRASH_LOOP(n) (3 * (n) + 3)
#define SPARES 8                /* reply buffers kept for reuse */
#define BLOCKS 32               /* blocks kept for reuse, at most */
#define BLOCK_BYTES ((size_t)64 << 20) /* and their bytes */

enum { RUN, CLOSED, JOINED, TERMINATED };

/* One submit: n lengths, then the n inputs end to end. */
typedef struct block {
  size_t left;    /* tasks without a result */
  size_t cap;     /* bytes malloc'ed */
  uint64_t first; /* the id of its first task */
  char *in;       /* the inputs (after lens) */
  uint32_t lens[];
} block;

/* Tasks from .. from + n - 1 of blk; off: where task from's input starts. */
typedef struct span {
  block *blk;
  size_t from, n, off;
  int solo; /* each goes alone (a rerun to name a culprit) */
} span;

typedef struct batch {
  uint64_t bid;
  size_t n, done; /* done: tasks answered (a prefix) */
  size_t nseg;
  span seg[];
} batch;

/* A run of consecutive ids. */
typedef struct idrun {
  uint64_t id;
  size_t n;
} idrun;

/* A reply kept for collecting: left results from pos, their ids in runs
 * (stored in buf after the results). */
typedef struct kept {
  char *buf;
  size_t cap, pos, left, at, k; /* ids: run at, its k-th */
  idrun *ids;
  int full;
} kept;

typedef struct spare {
  char *buf;
  size_t cap;
} spare;

typedef struct worker {
  int alive, retiring, timed_out;
  uint64_t kill_seq;
  batch **held; /* in the order sent */
  size_t nheld, hcap;
  size_t tasks_held, dispatched, finished;
} worker;

typedef struct legacy {
  mpe_task_fn fn;
  void *ctx;
} legacy;

struct mpe_pool {
  int n, state, broken, shut;
  mpe__pool_transport *tr;
  mpe__pool_cfg cfg;
  size_t chunksize;
  double timeout;
  span *pend; /* deque of spans; pending: the tasks in them */
  size_t phead, plen, pcap, pending;
  mpe_task_result *done; /* ring: the parent's outcomes */
  size_t dhead, dlen, dcap;
  kept *kp; /* deque: replies */
  size_t khead, klen, kcap;
  spare spares[SPARES], retired; /* retired: in the caller's hands until its next collect */
  size_t nspares;
  worker *w;
  size_t unfinished, outstanding;
  uint64_t next_id, next_bid;
  double task_time, last_check;
  int crashes;
  mpe_buf msg;
  block *blks[BLOCKS]; /* blocks freed, kept for later submits */
  size_t nblks, kept_bytes;
  legacy *lg;
  pid_t gone_pid; /* the worker whose tasks worker_gone() is failing */
  char error[4096];
};

/* ------------------------------------------------------------- the lines */

/* The lines' capacities are powers of two (16, then doubled): an index
 * wraps with a mask. */
static int grow(void **v, size_t *cap, size_t head, size_t len, size_t size) {
  size_t ncap = *cap ? 2 * *cap : 16;
  char *nv = malloc(ncap * size);
  if (!nv) return -ENOMEM;
  for (size_t i = 0; i < len; i++) memcpy(nv + i * size, (char *)*v + ((head + i) & (*cap - 1)) * size, size);
  free(*v);
  *v = nv;
  *cap = ncap;
  return 0;
}

static int pend_reserve(mpe_pool *p, size_t more) {
  while (p->pcap - p->plen < more) {
    if (grow((void **)&p->pend, &p->pcap, p->phead, p->plen, sizeof *p->pend) < 0) return -ENOMEM;
    p->phead = 0;
  }
  return 0;
}

/* Back to the front of the line (room reserved by the caller or freed by
 * the dispatch that took it). */
static void pend_front(mpe_pool *p, const span *s) {
  p->phead = (p->phead + p->pcap - 1) & (p->pcap - 1);
  p->pend[p->phead] = *s;
  p->plen++;
  p->pending += s->n;
}

static span *pend_at(mpe_pool *p, size_t i) { return &p->pend[(p->phead + i) & (p->pcap - 1)]; }

/* Bytes of the inputs of tasks from .. from + n - 1 of b. */
static size_t bytes_of(const block *b, size_t from, size_t n) {
  size_t s = 0;
  for (size_t i = 0; i < n; i++) s += b->lens[from + i];
  return s;
}

/* Takes the first n tasks of the front span; *nb: their input bytes. */
static span pend_take(mpe_pool *p, size_t n, size_t *nb) {
  span *f = pend_at(p, 0), s = *f;
  *nb = bytes_of(f->blk, f->from, n);
  if (n < f->n) {
    s.n = n;
    f->off += *nb;
    f->from += n;
    f->n -= n;
  } else {
    p->phead = (p->phead + 1) & (p->pcap - 1);
    p->plen--;
  }
  p->pending -= s.n;
  return s;
}

/* n tasks of blk have their results (or are dropped): the last frees it,
 * or keeps it for a later submit (its pages are there; a fresh block's
 * would fault in, a cost that shows in every big map). */
static void drop_input(mpe_pool *p, block *blk, size_t n) {
  if (!blk || (blk->left -= n) > 0) return;
  if (p->nblks < BLOCKS && p->kept_bytes + blk->cap <= BLOCK_BYTES) {
    p->blks[p->nblks++] = blk;
    p->kept_bytes += blk->cap;
  } else {
    free(blk);
  }
}

/* A block of at least need bytes: a kept one that is not much bigger. */
static block *block_get(mpe_pool *p, size_t need) {
  for (size_t i = p->nblks; i-- > 0;) {
    block *b = p->blks[i];
    if (b->cap >= need && need >= b->cap / 4) {
      p->blks[i] = p->blks[--p->nblks];
      p->kept_bytes -= b->cap;
      return b;
    }
  }
  block *b = malloc(need);
  if (b) b->cap = need;
  return b;
}

/* An outcome the parent decided for task id of blk. */
static int finish(mpe_pool *p, block *blk, uint64_t id, int status, int code) {
  if (p->dlen == p->dcap) {
    if (grow((void **)&p->done, &p->dcap, p->dhead, p->dlen, sizeof *p->done) < 0) return -ENOMEM;
    p->dhead = 0;
  }
  pid_t pid = status == MPE_EDIED || status == MPE_ETIMEDOUT ? p->gone_pid : 0;
  p->done[(p->dhead + p->dlen++) & (p->dcap - 1)] =
      (mpe_task_result){.id = id, .status = status, .code = code, .pid = pid};
  drop_input(p, blk, 1);
  p->unfinished--;
  return 0;
}

/* Every task of s fails with status (none lost: what has no room is dropped
 * and no longer counted). */
static void finish_span(mpe_pool *p, const span *s, int status) {
  for (size_t i = 0; i < s->n; i++)
    if (finish(p, s->blk, s->blk->first + s->from + i, status, 0) < 0) {
      drop_input(p, s->blk, 1);
      p->unfinished--;
    }
}

/* A reply buffer of at least len bytes: a spare if one is big enough. */
static char *buf_get(mpe_pool *p, size_t len, size_t *cap) {
  if (p->nspares) {
    spare s = p->spares[--p->nspares];
    if (s.cap >= len) {
      *cap = s.cap;
      return s.buf;
    }
    free(s.buf);
  }
  *cap = len < 4096 ? 4096 : len;
  return malloc(*cap);
}

static void buf_put(mpe_pool *p, char *buf, size_t cap) {
  if (p->nspares < SPARES) p->spares[p->nspares++] = (spare){buf, cap};
  else free(buf);
}

/* The caller is done with what the last collect gave: its buffers go back. */
static void recycle(mpe_pool *p) {
  if (p->retired.buf) buf_put(p, p->retired.buf, p->retired.cap);
  p->retired.buf = NULL;
}

/* ------------------------------------------------------------ the workers */

__attribute__((format(printf, 2, 3))) static void break_pool(mpe_pool *p, const char *fmt, ...) {
  if (p->broken || p->state == TERMINATED) return;
  p->broken = 1;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(p->error, sizeof p->error, fmt, ap);
  va_end(ap);
}

static int start_worker(mpe_pool *p, int slot) {
  int rc = p->tr->start(p->tr, slot);
  if (rc < 0) return rc;
  worker *w = &p->w[slot];
  w->alive = 1;
  w->retiring = w->timed_out = 0;
  w->tasks_held = w->dispatched = w->finished = 0;
  return 0;
}

static batch *find_batch(worker *w, uint64_t bid, size_t *at) {
  for (size_t i = 0; i < w->nheld; i++)
    if (w->held[i]->bid == bid) {
      *at = i;
      return w->held[i];
    }
  return NULL;
}

/* The part of b's span j that holds its tasks from .. to - 1, in *t: 0 if
 * none does. */
static int part_of(const batch *b, size_t j, size_t base, size_t from, size_t to, span *t) {
  const span *s = &b->seg[j];
  if (to <= base || from >= base + s->n) return 0;
  size_t lo = from > base ? from - base : 0, hi = to < base + s->n ? to - base : s->n;
  *t = (span){s->blk, s->from + lo, hi - lo, s->off + bytes_of(s->blk, s->from, lo), 0};
  return 1;
}

/* Keeps the results of tasks b->done .. + n - 1, at data[len] (checked). */
static int keep_reply(mpe_pool *p, batch *b, const char *data, size_t len, size_t n, int full) {
  size_t runs = 0, base = 0;
  span t;
  for (size_t j = 0; j < b->nseg; base += b->seg[j++].n) runs += part_of(b, j, base, b->done, b->done + n, &t);
  if (p->klen == p->kcap) {
    if (grow((void **)&p->kp, &p->kcap, p->khead, p->klen, sizeof *p->kp) < 0) return -ENOMEM;
    p->khead = 0;
  }
  size_t at = (len + 7) & ~(size_t)7, cap;
  char *buf = buf_get(p, at + runs * sizeof(idrun), &cap);
  if (!buf) return -ENOMEM;
  memcpy(buf, data, len);
  kept *x = &p->kp[(p->khead + p->klen++) & (p->kcap - 1)];
  *x = (kept){.buf = buf, .cap = cap, .left = n, .ids = (idrun *)(buf + at), .full = full};
  runs = base = 0;
  for (size_t j = 0; j < b->nseg; base += b->seg[j++].n)
    if (part_of(b, j, base, b->done, b->done + n, &t)) {
      x->ids[runs++] = (idrun){t.blk->first + t.from, t.n};
      drop_input(p, t.blk, t.n);
    }
  return 0;
}

static int handle_reply(mpe_pool *p, const char *data, size_t len, uint32_t tag) {
  mpe__reply_hdr h;
  if (len < sizeof h) return MPE_ECORRUPT;
  memcpy(&h, data, sizeof h);
  if (tag == MPE__REPLY_INIT_FAILED) {
    int why = (int)(len - sizeof h > 2048 ? 2048 : len - sizeof h);
    if ((int32_t)h.n == -1)
      break_pool(p, "Pool: cannot set memory_limit in a worker (slot %d)", (int)h.slot);
    else if (why > 0)
      break_pool(p, "Pool: the initializer failed in a worker (slot %d):\n%.*s", (int)h.slot, why,
                 data + sizeof h);
    else
      break_pool(p, "Pool: the initializer failed in a worker (slot %d): it returned %d", (int)h.slot,
                 (int)h.n);
    return 0;
  }
  size_t at;
  batch *b = h.slot < (uint32_t)p->n ? find_batch(&p->w[h.slot], h.bid, &at) : NULL;
  if (!b) return 0; /* a batch already settled: nothing to give */
  if (h.from != b->done || h.n > b->n - b->done) return MPE_ECORRUPT;
  worker *w = &p->w[h.slot];
  /* every result lies inside the reply */
  int full = tag == MPE__REPLY_FULL;
  size_t rsize = full ? sizeof(mpe__result_full) : sizeof(mpe__result_hdr);
  size_t lenat = full ? offsetof(mpe__result_full, len) : offsetof(mpe__result_hdr, len);
  const char *start = data + sizeof h, *pos = start, *end = data + len;
  for (uint32_t i = 0; i < h.n; i++) {
    uint32_t rlen;
    if ((size_t)(end - pos) < rsize) return MPE_ECORRUPT;
    memcpy(&rlen, pos + lenat, sizeof rlen);
    pos += rsize;
    if ((size_t)(end - pos) < rlen) return MPE_ECORRUPT;
    pos += rlen;
  }
  if (h.n) {
    int rc = keep_reply(p, b, start, (size_t)(pos - start), h.n, full);
    if (rc < 0) return rc;
  }
  b->done += h.n;
  p->unfinished -= h.n;
  w->tasks_held -= h.n;
  w->finished += h.n;
  p->crashes = 0;
  p->task_time = p->task_time > 0 ? 0.8 * p->task_time + 0.2 * h.dt : h.dt;
  if (b->done == b->n) {
    free(b);
    memmove(w->held + at, w->held + at + 1, (--w->nheld - at) * sizeof *w->held);
  }
  return 0;
}

/* Takes every reply already queued, without waiting. */
static int drain(mpe_pool *p) {
  const char *data;
  size_t len;
  uint32_t tag;
  int rc;
  while ((rc = p->tr->take(p->tr, 0, &data, &len, &tag)) == 0) {
    rc = handle_reply(p, data, len, tag);
    if (rc < 0) return rc;
  }
  return rc == MPE_ETIMEDOUT || rc == MPE_EINTR ? 0 : rc;
}

static int wanted(const mpe_pool *p) {
  return !p->broken && !p->shut && (p->state == RUN || p->unfinished > 0);
}

/* Tasks from .. to - 1 of b back to the front of the line, in order (room
 * reserved; ok 0: there was none, they are dropped). */
static void back_to_line(mpe_pool *p, const batch *b, size_t from, size_t to, int solo, int ok) {
  size_t base = b->n;
  span t;
  for (size_t j = b->nseg; j-- > 0;) {
    base -= b->seg[j].n;
    if (!part_of(b, j, base, from, to, &t)) continue;
    t.solo = solo;
    if (ok) pend_front(p, &t);
    else {
      drop_input(p, t.blk, t.n);
      p->unfinished -= t.n;
    }
  }
}

/* The worker of slot has gone with code (see the opening comment). */
static int worker_gone(mpe_pool *p, int slot, int code) {
  int rc = drain(p);
  if (rc < 0) return rc;
  worker *w = &p->w[slot];
  mpe__running r;
  p->tr->running(p->tr, slot, &r);
  p->gone_pid = p->tr->pid(p->tr, slot);
  int status = 0; /* what the culprit, if one is known, gets */
  if (w->timed_out) status = r.seq == w->kill_seq && r.task >= 0 ? MPE_ETIMEDOUT : 0;
  else if (r.task >= 0 || (r.batch && !r.exact)) status = MPE_EDIED;
  size_t room = 0;
  for (size_t k = 0; k < w->nheld; k++) room += 2 * w->held[k]->nseg;
  rc = pend_reserve(p, room);
  for (size_t k = w->nheld; k-- > 0;) {
    batch *b = w->held[k];
    int running = r.batch == b->bid && status;
    int unknown = running && (!r.exact || r.task < 0) && b->n - b->done > 1;
    size_t c = b->n; /* the culprit (b->n: none) */
    if (running && !unknown) c = r.exact ? (size_t)r.task : b->done;
    if (c < b->done) c = b->n;
    if (c >= b->n) {
      back_to_line(p, b, b->done, b->n, unknown, rc == 0);
    } else {
      back_to_line(p, b, c + 1, b->n, unknown, rc == 0);
      size_t base = 0, j = 0;
      while (c - base >= b->seg[j].n) base += b->seg[j++].n;
      block *blk = b->seg[j].blk;
      if (rc == 0) rc = finish(p, blk, blk->first + b->seg[j].from + (c - base), status, code);
      else {
        drop_input(p, blk, 1);
        p->unfinished--;
      }
      back_to_line(p, b, b->done, c, unknown, rc == 0);
    }
    free(b);
  }
  w->nheld = w->tasks_held = 0;
  if (w->finished == 0 && !r.batch && !w->retiring && !w->timed_out && ++p->crashes >= CRASH_LOOP(p->n))
    break_pool(p, "Pool: %d workers in a row died before finishing a task; the last %s %d", p->crashes,
               code < 0 ? "was killed by signal" : "exited with code", code < 0 ? -code : code);
  p->tr->release(p->tr, slot, 0);
  w->alive = 0;
  if (rc == 0 && wanted(p)) rc = start_worker(p, slot);
  return rc;
}

/* Looks for workers that have gone and tasks past their time; restarts a
 * slot whose replacement could not start before. */
static int check_workers(mpe_pool *p) {
  double now = mpe_time();
  p->last_check = now;
  for (int slot = 0; slot < p->n; slot++) {
    worker *w = &p->w[slot];
    int code, rc = 0;
    if (!w->alive) {
      if (wanted(p)) rc = start_worker(p, slot);
    } else if (p->tr->gone(p->tr, slot, &code)) {
      rc = worker_gone(p, slot, code);
    } else if (p->timeout > 0 && !w->timed_out) {
      mpe__running r;
      p->tr->running(p->tr, slot, &r);
      if (r.task >= 0 && now - r.since > p->timeout) {
        w->timed_out = 1;
        w->kill_seq = r.seq;
        p->tr->kill(p->tr, slot);
      }
    }
    if (rc < 0) return rc;
  }
  return 0;
}

/* Kills every worker; every task without a result gets status. */
static void shutdown(mpe_pool *p, int status) {
  p->shut = 1;
  for (int slot = 0; slot < p->n; slot++)
    if (p->w[slot].alive) {
      p->tr->release(p->tr, slot, 0);
      p->w[slot].alive = 0;
    }
  drain(p); /* what was answered before the end is real */
  for (int slot = 0; slot < p->n; slot++) {
    worker *w = &p->w[slot];
    for (size_t k = 0; k < w->nheld; k++) {
      batch *b = w->held[k];
      span t;
      for (size_t j = 0, base = 0; j < b->nseg; base += b->seg[j++].n)
        if (part_of(b, j, base, b->done, b->n, &t)) finish_span(p, &t, status);
      free(b);
    }
    w->nheld = w->tasks_held = 0;
  }
  while (p->plen) {
    size_t nb;
    span s = pend_take(p, pend_at(p, 0)->n, &nb);
    finish_span(p, &s, status);
  }
}

/* ------------------------------------------------------------- dispatching */

/* Sends the worker of slot a batch of up to k pending tasks: a rerun task
 * goes alone, and a batch stops before one. */
static int send_batch(mpe_pool *p, int slot, size_t k) {
  worker *w = &p->w[slot];
  if (w->nheld == w->hcap) {
    size_t cap = w->hcap ? 2 * w->hcap : 8;
    batch **h = realloc(w->held, cap * sizeof *h);
    if (!h) return -ENOMEM;
    w->held = h;
    w->hcap = cap;
  }
  size_t take = 0, nseg = 0;
  if (pend_at(p, 0)->solo) take = nseg = 1;
  for (size_t i = 0; !take && i < p->plen && take < k && !pend_at(p, i)->solo; i++, nseg++)
    take += pend_at(p, i)->n < k - take ? pend_at(p, i)->n : k - take;
  batch *b = malloc(sizeof *b + nseg * sizeof(span));
  if (!b || pend_reserve(p, 1) < 0) { /* room to put back a split span */
    free(b);
    return -ENOMEM;
  }
  b->bid = ++p->next_bid;
  b->n = take;
  b->done = 0;
  b->nseg = nseg;
  mpe__batch_hdr h = {.bid = b->bid, .n = (uint32_t)take};
  size_t lens_at = sizeof h, at = sizeof h + take * sizeof(uint32_t);
  p->msg.len = 0;
  int rc = mpe_buf_add(&p->msg, &h, sizeof h);
  if (rc == 0) rc = mpe_buf_add(&p->msg, NULL, take * sizeof(uint32_t));
  for (size_t j = 0, left = take; j < nseg; j++) {
    size_t nb;
    span *s = &b->seg[j];
    *s = pend_take(p, pend_at(p, 0)->n < left ? pend_at(p, 0)->n : left, &nb);
    left -= s->n;
    if (rc == 0) rc = mpe_buf_add(&p->msg, NULL, nb);
    if (rc < 0) continue;
    memcpy(p->msg.data + lens_at, s->blk->lens + s->from, s->n * sizeof(uint32_t));
    memcpy(p->msg.data + at, s->blk->in + s->off, nb);
    lens_at += s->n * sizeof(uint32_t);
    at += nb;
  }
  if (rc == 0) rc = p->tr->send(p->tr, slot, p->msg.data, p->msg.len);
  if (rc < 0) { /* back to the front, in order */
    for (size_t j = nseg; j-- > 0;) pend_front(p, &b->seg[j]);
    free(b);
    return rc;
  }
  w->held[w->nheld++] = b;
  w->tasks_held += take;
  w->dispatched += take;
  if (p->cfg.maxtasks && w->dispatched >= p->cfg.maxtasks) w->retiring = 1;
  return 0;
}

/* Hands pending tasks to the workers with room. */
static int dispatch(mpe_pool *p) {
  if (!p->pending || p->shut) return 0;
  size_t depth = 1, per_batch = 1;
  if (p->chunksize) {
    per_batch = p->chunksize;
    depth = 2 * per_batch;
  } else if (p->task_time > 0) {
    double d = QUEUED / p->task_time;
    depth = d >= (double)MAXDEPTH ? MAXDEPTH : d < 1 ? 1 : (size_t)d;
    per_batch = depth / 2 ? depth / 2 : 1;
    /* no worker takes much more than its share of the line */
    size_t share = (p->pending + (size_t)p->n - 1) / (size_t)p->n;
    if (per_batch > share) per_batch = share;
  }
  while (p->pending) {
    int slot = -1;
    for (int s = 0; s < p->n; s++) {
      worker *w = &p->w[s];
      if (w->alive && !w->retiring && w->tasks_held < depth &&
          (slot < 0 || w->tasks_held < p->w[slot].tasks_held))
        slot = s;
    }
    if (slot < 0) break;
    worker *w = &p->w[slot];
    size_t k = depth - w->tasks_held;
    if (k > per_batch) k = per_batch;
    if (k > p->pending) k = p->pending;
    if (p->cfg.maxtasks && k > p->cfg.maxtasks - w->dispatched) k = p->cfg.maxtasks - w->dispatched;
    if (k > UINT32_MAX / 2) k = UINT32_MAX / 2;
    int rc = send_batch(p, slot, k);
    if (rc < 0) return rc;
  }
  return 0;
}

/* Runs the pool until ready(p) or the deadline. */
static int pump(mpe_pool *p, const mpe__deadline *d, int (*ready)(const mpe_pool *)) {
  for (;;) {
    if (p->broken && !p->shut) shutdown(p, MPE_EBROKEN);
    if (ready(p)) return 0;
    /* a signal that landed outside a sleep: the host's flag says it came */
    if (mpe__stop_requested()) return MPE_EINTR;
    int rc = dispatch(p);
    if (rc < 0) return rc;
    int ms = mpe__deadline_ms(d); /* 0: a poll still takes the replies already there */
    double wait = ms < 0 || ms > SLICE * 1000 ? SLICE : ms * 1e-3;
    const char *data;
    size_t len;
    uint32_t tag;
    rc = p->tr->take(p->tr, wait, &data, &len, &tag);
    if (rc == 0) {
      rc = handle_reply(p, data, len, tag);
      for (int k = 0; rc == 0 && k < 64; k++) {
        if (p->tr->take(p->tr, 0, &data, &len, &tag) != 0) break;
        rc = handle_reply(p, data, len, tag);
      }
      if (rc < 0) return rc;
    } else if (rc != MPE_ETIMEDOUT) {
      return rc;
    }
    if ((rc == MPE_ETIMEDOUT && ms != 0) || mpe_time() - p->last_check >= SLICE) {
      rc = check_workers(p);
      if (rc < 0) return rc;
    }
    if (ms == 0) return ready(p) ? 0 : MPE_ETIMEDOUT;
  }
}

static int has_result(const mpe_pool *p) { return p->dlen > 0 || p->klen > 0 || p->unfinished == 0; }
static int all_finished(const mpe_pool *p) { return p->unfinished == 0; }

/* ------------------------------------------------------------ the public API */

static int local_mk(mpe__pool_transport **out, int workers, const mpe__pool_cfg *cfg, void *arg) {
  (void)arg;
  return mpe__pool_local_new(out, workers, cfg);
}

int mpe_pool_start(mpe_pool **out, mpe_pool_fn fn, void *ctx, const mpe_pool_options *opts) {
  return mpe__pool_start_with(out, fn, ctx, opts, local_mk, NULL);
}

int mpe__pool_start_with(mpe_pool **out, mpe_pool_fn fn, void *ctx, const mpe_pool_options *opts,
                         mpe__pool_mk mk, void *arg) {
  mpe_pool_options o = {0};
  if (opts) o = *opts;
  if (!fn || o.processes < 0 || o.timeout != o.timeout) return -EINVAL;
  if (!mpe_initialized()) return MPE_ENOINIT;
  mpe_pool *p = calloc(1, sizeof *p);
  if (!p) return -ENOMEM;
  p->n = o.processes ? o.processes : mpe_cpu_count();
  p->cfg = (mpe__pool_cfg){fn, ctx, o.initializer, o.initarg, o.setup, o.at_exit, o.before_fork,
                           o.maxtasksperchild, o.memory_limit, o.timeout > 0};
  p->timeout = o.timeout > 0 ? o.timeout : 0;
  p->chunksize = o.chunksize;
  p->w = calloc((size_t)p->n, sizeof *p->w);
  int rc = p->w ? mk(&p->tr, p->n, &p->cfg, arg) : -ENOMEM;
  for (int i = 0; rc == 0 && i < p->n; i++) rc = start_worker(p, i);
  if (rc < 0) {
    mpe_pool_free(p, 1);
    return rc;
  }
  p->last_check = mpe_time();
  *out = p;
  return 0;
}

static int legacy_call(void *ctx, const void *in, size_t n, mpe_buf *out) {
  legacy *lg = ctx;
  void *o = NULL;
  size_t olen = 0;
  int code = lg->fn(in, n, &o, &olen, lg->ctx);
  int rc = olen ? mpe_buf_add(out, o, olen) : 0;
  free(o);
  return rc < 0 && code == 0 ? rc : code;
}

int mpe_pool_new(mpe_pool **out, int workers, mpe_task_fn fn, void *ctx) {
  if (!fn || workers < 0) return -EINVAL;
  legacy *lg = malloc(sizeof *lg);
  if (!lg) return -ENOMEM;
  *lg = (legacy){fn, ctx};
  mpe_pool_options o = {.processes = workers};
  int rc = mpe_pool_start(out, legacy_call, lg, &o);
  if (rc < 0) free(lg);
  else (*out)->lg = lg;
  return rc;
}

int mpe_pool_size(const mpe_pool *p) { return p->n; }
const char *mpe_pool_error(const mpe_pool *p) { return p->broken ? p->error : NULL; }

int mpe_pool_pids(const mpe_pool *p, pid_t *pids, int max) {
  int k = 0;
  for (int s = 0; s < p->n && k < max; s++)
    if (p->w[s].alive) pids[k++] = p->tr->pid(p->tr, s);
  return k;
}

/* A block for n tasks (lens[i] bytes each, total in all), its inputs unset. */
static int new_block(mpe_pool *p, const size_t *lens, size_t n, block **out, size_t *total) {
  *out = NULL;
  if (p->broken) return MPE_EBROKEN;
  if (p->state != RUN) return MPE_ECLOSED;
  *total = 0;
  for (size_t i = 0; i < n; i++) {
    if (lens[i] > UINT32_MAX || *total + lens[i] < *total) return -EINVAL;
    *total += lens[i];
  }
  if (!n) return 0;
  if (n > (SIZE_MAX - sizeof(block) - *total) / sizeof(uint32_t)) return -ENOMEM;
  size_t need = sizeof(block) + n * sizeof(uint32_t) + *total;
  block *b = block_get(p, need);
  if (!b) return -ENOMEM;
  b->left = n;
  b->in = (char *)(b->lens + n);
  for (size_t i = 0; i < n; i++) b->lens[i] = (uint32_t)lens[i];
  *out = b;
  return 0;
}

/* Queues blk's n tasks: one span. */
static int enqueue(mpe_pool *p, block *blk, size_t n, uint64_t *first_id) {
  if (blk && pend_reserve(p, 1) < 0) {
    free(blk);
    return -ENOMEM;
  }
  if (first_id) *first_id = p->next_id;
  if (!blk) return 0;
  blk->first = p->next_id;
  p->next_id += n;
  span s = {blk, 0, n, 0, 0};
  p->pend[(p->phead + p->plen++) & (p->pcap - 1)] = s;
  p->pending += n;
  p->unfinished += n;
  p->outstanding += n;
  dispatch(p); /* a failure leaves the tasks in line: the next wait retries */
  return 0;
}

int mpe_pool_submit_batch(mpe_pool *p, const void *data, const size_t *lens, size_t n,
                          uint64_t *first_id) {
  block *b;
  size_t total;
  int rc = new_block(p, lens, n, &b, &total);
  if (rc < 0) return rc;
  if (total) memcpy(b->in, data, total);
  return enqueue(p, b, n, first_id);
}

int mpe_pool_submit(mpe_pool *p, const void *in, size_t len, uint64_t *id) {
  return mpe_pool_submit_batch(p, in, &len, 1, id);
}

/* The next result into *r (copy: its data malloc'ed): 1, 0 when none is
 * here, -ENOMEM. A reply whose last result this was is retired: its buffer
 * is reused only at the next collect. */
static int next_result(mpe_pool *p, mpe_task_result *r, int copy) {
  if (p->dlen) {
    *r = p->done[p->dhead];
    p->dhead = (p->dhead + 1) & (p->dcap - 1);
    p->dlen--;
    p->outstanding--;
    return 1;
  }
  if (!p->klen) return 0;
  kept *x = &p->kp[p->khead];
  const char *q = x->buf + x->pos;
  if (x->full) {
    mpe__result_full f;
    memcpy(&f, q, sizeof f);
    *r = (mpe_task_result){.status = f.status, .code = f.code, .len = f.len, .pid = f.pid};
    q += sizeof f;
  } else {
    mpe__result_hdr h;
    memcpy(&h, q, sizeof h);
    *r = (mpe_task_result){.status = h.code ? MPE_ETASK : 0, .code = h.code, .len = h.len};
    q += sizeof h;
  }
  if (r->len) {
    r->data = copy ? malloc(r->len) : (void *)q;
    if (!r->data) return -ENOMEM;
    if (copy) memcpy(r->data, q, r->len);
  }
  x->pos = (size_t)(q - x->buf) + r->len;
  r->id = x->ids[x->at].id + x->k;
  if (++x->k == x->ids[x->at].n) x->at++, x->k = 0;
  p->outstanding--;
  if (--x->left == 0) {
    p->retired = (spare){x->buf, x->cap};
    p->khead = (p->khead + 1) & (p->kcap - 1);
    p->klen--;
  }
  return 1;
}

/* Waits until a result is here: 1, or what collect returns instead. */
static int wait_result(mpe_pool *p, double timeout) {
  mpe__deadline d = {0};
  int timed = 0; /* the deadline is read only once there is a wait */
  for (;;) {
    if (p->dlen || p->klen) return 1;
    if (p->outstanding == 0) return p->broken ? MPE_EBROKEN : MPE_EEMPTY;
    if (!timed) d = mpe__deadline_in(timeout), timed = 1;
    int rc = pump(p, &d, has_result);
    if (rc < 0) return rc;
  }
}

int mpe_pool_collect(mpe_pool *p, double timeout, mpe_task_result *r) {
  recycle(p);
  int rc = wait_result(p, timeout);
  if (rc > 0) rc = next_result(p, r, 1);
  recycle(p); /* its data is a copy */
  return rc < 0 ? rc : 0;
}

int mpe_pool_collect_many(mpe_pool *p, double timeout, mpe_task_result *rs, size_t max) {
  if (!max) return -EINVAL;
  if (max > INT_MAX) max = INT_MAX;
  recycle(p);
  int rc = wait_result(p, timeout);
  size_t got = 0;
  /* the parent's outcomes, and the results of one reply at most */
  while (rc > 0 && got < max && (p->dlen || (p->klen && !p->retired.buf)))
    got += (size_t)next_result(p, &rs[got], 0);
  return rc < 0 ? rc : (int)got;
}

int mpe_pool_map(mpe_pool *p, size_t n, const void *const *in, const size_t *len,
                 mpe_task_result *results) {
  if (p->outstanding) return -EBUSY; /* ids would not be the indexes */
  block *b;
  size_t total;
  int rc = new_block(p, len, n, &b, &total);
  if (rc < 0) return rc;
  for (size_t i = 0, at = 0; i < n; at += len[i++])
    if (len[i]) memcpy(b->in + at, in[i], len[i]);
  uint64_t base;
  rc = enqueue(p, b, n, &base);
  if (rc < 0) return rc;
  for (size_t got = 0; got < n;) {
    mpe_task_result r;
    rc = mpe_pool_collect(p, -1, &r);
    if (rc == MPE_EINTR && !mpe__stop_requested()) continue;
    if (rc < 0) return rc;
    r.id -= base;
    results[r.id] = r;
    got++;
  }
  return p->broken ? MPE_EBROKEN : 0;
}

void mpe_task_result_clear(mpe_task_result *r) {
  free(r->data);
  r->data = NULL;
  r->len = 0;
}

void mpe_pool_close(mpe_pool *p) {
  if (p->state == RUN) p->state = CLOSED;
}

int mpe_pool_join(mpe_pool *p, double timeout) {
  if (p->state == RUN) return -EINVAL;
  if (p->state == CLOSED) {
    mpe__deadline d = mpe__deadline_in(timeout);
    int rc = pump(p, &d, all_finished);
    if (rc < 0) return rc;
    for (int slot = 0; slot < p->n; slot++)
      if (p->w[slot].alive) {
        p->tr->release(p->tr, slot, 1);
        p->w[slot].alive = 0;
      }
    p->state = JOINED;
  }
  return p->broken ? MPE_EBROKEN : 0;
}

void mpe_pool_terminate(mpe_pool *p) {
  if (p->state == TERMINATED || p->shut) {
    p->state = p->state == JOINED ? JOINED : TERMINATED;
    return;
  }
  p->state = TERMINATED;
  shutdown(p, MPE_ETERMINATED);
}

void mpe_pool_free(mpe_pool *p, int kill) {
  if (!p) return;
  if (p->tr) {
    for (int slot = 0; p->w && slot < p->n; slot++)
      if (p->w[slot].alive) p->tr->release(p->tr, slot, !kill);
    p->tr->destroy(p->tr);
  }
  for (int slot = 0; p->w && slot < p->n; slot++) {
    worker *w = &p->w[slot];
    for (size_t k = 0; k < w->nheld; k++) {
      batch *b = w->held[k];
      span t;
      for (size_t j = 0, base = 0; j < b->nseg; base += b->seg[j++].n)
        if (part_of(b, j, base, b->done, b->n, &t)) drop_input(p, t.blk, t.n);
      free(b);
    }
    free(w->held);
  }
  for (size_t i = 0; i < p->plen; i++) drop_input(p, pend_at(p, i)->blk, pend_at(p, i)->n);
  for (size_t i = 0; i < p->klen; i++) free(p->kp[(p->khead + i) & (p->kcap - 1)].buf);
  recycle(p);
  for (size_t i = 0; i < p->nspares; i++) free(p->spares[i].buf);
  for (size_t i = 0; i < p->nblks; i++) free(p->blks[i]);
  free(p->pend);
  free(p->done);
  free(p->kp);
  free(p->w);
  free(p->msg.data);
  free(p->lg);
  free(p);
}
