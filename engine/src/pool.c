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
 * `outstanding` all four. A block goes (is kept for reuse, pool_lines.c)
 * when its last task has its result. */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "futex.h"
#include "pool_parent.h"

#define SLICE 0.01              /* the parent looks at its workers this often */
#define QUEUED 0.02             /* seconds of work a worker may hold */
#define MAXDEPTH ((size_t)1 << 16) /* and at most this many tasks */
#define CRASH_LOOP(n) (3 * (n) + 3)
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
    int rc = mpe__keep_reply(p, b, start, (size_t)(pos - start), h.n, full);
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
    if (!mpe__part_of(b, j, base, from, to, &t)) continue;
    t.solo = solo;
    if (ok) mpe__pend_front(p, &t);
    else {
      mpe__drop_input(p, t.blk, t.n);
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
  rc = mpe__pend_reserve(p, room);
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
      if (rc == 0) rc = mpe__finish(p, blk, blk->first + b->seg[j].from + (c - base), status, code);
      else {
        mpe__drop_input(p, blk, 1);
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
        if (mpe__part_of(b, j, base, b->done, b->n, &t)) mpe__finish_span(p, &t, status);
      free(b);
    }
    w->nheld = w->tasks_held = 0;
  }
  while (p->plen) {
    size_t nb;
    span s = mpe__pend_take(p, mpe__pend_at(p, 0)->n, &nb);
    mpe__finish_span(p, &s, status);
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
  if (mpe__pend_at(p, 0)->solo) take = nseg = 1;
  for (size_t i = 0; !take && i < p->plen && take < k && !mpe__pend_at(p, i)->solo; i++, nseg++)
    take += mpe__pend_at(p, i)->n < k - take ? mpe__pend_at(p, i)->n : k - take;
  batch *b = malloc(sizeof *b + nseg * sizeof(span));
  if (!b || mpe__pend_reserve(p, 1) < 0) { /* room to put back a split span */
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
    *s = mpe__pend_take(p, mpe__pend_at(p, 0)->n < left ? mpe__pend_at(p, 0)->n : left, &nb);
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
    for (size_t j = nseg; j-- > 0;) mpe__pend_front(p, &b->seg[j]);
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
  if (p->one_each) {
    /* one task a lane: processes is then an exact cap */
  } else if (p->chunksize) {
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
      /* more while not ready (a reply kept waits for its collect: taking
       * ahead would only hold more buffers) */
      for (int k = 0; rc == 0 && k < 64 && !ready(p); k++) {
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

/* Queues blk's n tasks: one span. */
static int enqueue(mpe_pool *p, block *blk, size_t n, uint64_t *first_id) {
  if (blk && mpe__pend_reserve(p, 1) < 0) {
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
  int rc = mpe__new_block(p, lens, n, &b, &total);
  if (rc < 0) return rc;
  if (total) memcpy(b->in, data, total);
  return enqueue(p, b, n, first_id);
}

int mpe_pool_submit(mpe_pool *p, const void *in, size_t len, uint64_t *id) {
  return mpe_pool_submit_batch(p, in, &len, 1, id);
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
  mpe__recycle(p);
  int rc = wait_result(p, timeout);
  if (rc > 0) rc = mpe__next_result(p, r, 1);
  mpe__recycle(p); /* its data is a copy */
  return rc < 0 ? rc : 0;
}

int mpe_pool_collect_many(mpe_pool *p, double timeout, mpe_task_result *rs, size_t max) {
  if (!max) return -EINVAL;
  if (max > INT_MAX) max = INT_MAX;
  mpe__recycle(p);
  int rc = wait_result(p, timeout);
  size_t got = 0;
  /* the parent's outcomes, and the results of one reply at most */
  while (rc > 0 && got < max && (p->dlen || (p->klen && !p->retired.buf)))
    got += (size_t)mpe__next_result(p, &rs[got], 0);
  return rc < 0 ? rc : (int)got;
}

int mpe_pool_map(mpe_pool *p, size_t n, const void *const *in, const size_t *len,
                 mpe_task_result *results) {
  if (p->outstanding) return -EBUSY; /* ids would not be the indexes */
  block *b;
  size_t total;
  int rc = mpe__new_block(p, len, n, &b, &total);
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
        if (mpe__part_of(b, j, base, b->done, b->n, &t)) mpe__drop_input(p, t.blk, t.n);
      free(b);
    }
    free(w->held);
  }
  mpe__lines_free(p);
  free(p->w);
  free(p->msg.data);
  free(p->lg);
  free(p);
}

mpe__pool_transport *mpe__pool_transport_of(mpe_pool *p) { return p ? p->tr : NULL; }

void mpe__pool_one_each(mpe_pool *p) { p->one_each = 1; }
