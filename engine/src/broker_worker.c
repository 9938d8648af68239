/* broker_worker.c - a worker host: serves every run on a broker with a
 * local engine pool.
 *
 * The host claims batches of the live runs (up to twice its processes at
 * once), submits each batch's tasks to its local pool, and keeps the ids of
 * a batch's tasks (one contiguous range) to put its results back in order.
 * While tasks run it renews each held batch every lease/3; a batch taken
 * over meanwhile is only marked, and its results are dropped when they come.
 * A batch whose every task has a result is completed (fenced: accepted only
 * from its current holder) as one reply, a mpe__reply_hdr and per task a
 * mpe__result_full: a local worker's death becomes MPE_EDIED with its pid and
 * a text naming this host. When the broker is lost the host reconnects with
 * backoff; once the host's interrupt flag is set it hands back every batch
 * it holds (each goes back to the run's stream as new) and returns. */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "broker.h"
#include "futex.h"
#include "pool.h"

typedef struct held {
  char run[128];
  mpe__broker_task t; /* data not kept */
  uint64_t first;
  uint32_t n, got;
  int lost;
  double lease, renewed, start;
  mpe_task_result *res;
} held;

typedef struct host {
  mpe__redis *r;
  char me[200], name[128];
  mpe_pool *pool;
  held *h;
  int nh, cap;
} host;

static void drop(host *w, int i) {
  for (uint32_t k = 0; k < w->h[i].n; k++)
    mpe_task_result_clear(&w->h[i].res[k]);
  free(w->h[i].res);
  w->h[i] = w->h[--w->nh];
}

/* Takes new batches of run (room for max). */
static int claim(host *w, const char run[128], int max) {
  mpe__broker_task t[16];
  mpe__broker_hold hold = {{0}};
  if (max > 16) max = 16;
  int n = mpe__broker_claim(w->r, run, w->me, max, 0, t, &hold);
  if (n <= 0) return n == -ENOENT ? 0 : n;
  double lease = mpe__broker_lease(w->r, run);
  int rc = 0;
  for (int i = 0; i < n; i++) {
    mpe__batch_hdr b;
    held *h = &w->h[w->nh];
    /* malformed (lengths past its bytes): left unanswered, it ends as lost */
    if (t[i].len < sizeof b) continue;
    memcpy(&b, t[i].data, sizeof b);
    size_t room = t[i].len - sizeof b;
    if ((size_t)b.n > room / sizeof(uint32_t)) continue;
    room -= (size_t)b.n * sizeof(uint32_t);
    size_t *lens = malloc((b.n + 1) * sizeof *lens);
    h->res = calloc(b.n + 1, sizeof *h->res);
    if (!lens || !h->res) {
      free(lens);
      free(h->res);
      rc = -ENOMEM;
      continue;
    }
    size_t total = 0;
    for (uint32_t k = 0; k < b.n; k++) {
      uint32_t l;
      memcpy(&l, t[i].data + sizeof b + k * sizeof l, sizeof l);
      lens[k] = l;
      total += l;
    }
    if (total > room) {
      free(lens);
      free(h->res);
      continue;
    }
    const char *in = t[i].data + sizeof b + (size_t)b.n * sizeof(uint32_t);
    snprintf(h->run, sizeof h->run, "%.127s", run);
    h->t = t[i];
    h->t.data = NULL;
    h->n = b.n;
    h->got = 0;
    h->lost = 0;
    h->lease = lease > 0 ? lease : 10;
    h->renewed = h->start = mpe_time();
    rc = mpe_pool_submit_batch(w->pool, in, lens, b.n, &h->first);
    free(lens);
    if (rc < 0) {
      free(h->res);
      continue;
    }
    w->nh++;
  }
  mpe__broker_release(&hold);
  return rc;
}

/* The reply for batch i into buf. */
static int encode(host *w, held *h, mpe_buf *buf) {
  mpe__reply_hdr hdr = {
      .bid = (uint64_t)h->t.seq, .n = h->n, .dt = (mpe_time() - h->start) / (h->n ? h->n : 1)};
  buf->len = 0;
  if (mpe_buf_add(buf, &hdr, sizeof hdr) < 0) return -ENOMEM;
  for (uint32_t k = 0; k < h->n; k++) {
    mpe_task_result *r = &h->res[k];
    char text[400];
    const char *data = r->data;
    size_t len = r->len;
    if (r->status == MPE_EDIED) {
      if (r->code < 0)
        snprintf(text, sizeof text,
                 "Pool: the worker running this task (host %s, pid %d) was killed by signal %d (SIG%s)",
                 w->name, (int)r->pid, -r->code, sigabbrev_np(-r->code) ? sigabbrev_np(-r->code) : "?");
      else
        snprintf(text, sizeof text,
                 "Pool: the worker running this task (host %s, pid %d) exited with code %d", w->name,
                 (int)r->pid, r->code);
      data = text;
      len = strlen(text);
    }
    mpe__result_full f = {r->status, r->code, (int32_t)r->pid, (uint32_t)len};
    if (mpe_buf_add(buf, &f, sizeof f) < 0 || mpe_buf_add(buf, data, len) < 0) return -ENOMEM;
  }
  return 0;
}

/* Completes every batch whose tasks all have results. */
static int complete(host *w, mpe_buf *buf) {
  for (int i = w->nh; i-- > 0;) {
    held *h = &w->h[i];
    if (h->got < h->n) continue;
    if (!h->lost) {
      int acc = 0, rc = encode(w, h, buf);
      const void *d = buf->data;
      if (rc == 0) rc = mpe__broker_complete(w->r, h->run, w->me, 1, &h->t, &d, &buf->len, &acc);
      if (rc < 0 && rc != -ENOENT) return rc;
    }
    drop(w, i);
  }
  return 0;
}

static int renew(host *w) {
  double now = mpe_time();
  for (int i = 0; i < w->nh; i++) {
    held *h = &w->h[i];
    if (h->lost || now - h->renewed < h->lease / 3) continue;
    int still = 0, rc = mpe__broker_renew(w->r, h->run, w->me, 1, &h->t, &still);
    if (rc < 0 && rc != -ENOENT) return rc;
    h->lost = rc < 0 || !still;
    h->renewed = now;
  }
  return 0;
}

/* One round: renew, claim, take results, complete. */
static int round_(host *w, mpe_buf *buf) {
  int rc = renew(w);
  if (rc < 0) return rc;
  int room = w->cap - w->nh;
  if (room > 0) {
    char runs[32][128];
    int n = mpe__broker_runs(w->r, runs, 32);
    if (n < 0) return n;
    for (int i = 0; i < n && w->cap - w->nh > 0; i++)
      if ((rc = claim(w, runs[i], w->cap - w->nh)) < 0) return rc;
  }
  double wait = w->nh ? 0.005 : 0.02;
  mpe_task_result r;
  while ((rc = mpe_pool_collect(w->pool, wait, &r)) == 0) {
    wait = 0;
    int i;
    for (i = 0; i < w->nh && !(r.id >= w->h[i].first && r.id < w->h[i].first + w->h[i].n); i++) {
    }
    if (i == w->nh) {
      mpe_task_result_clear(&r);
      continue;
    }
    w->h[i].res[r.id - w->h[i].first] = r;
    w->h[i].got++;
  }
  if (rc == MPE_EEMPTY)
    mpe_sleep(wait, NULL);
  else if (rc != MPE_ETIMEDOUT)
    return rc;
  return complete(w, buf);
}

static void handback(host *w) {
  for (int i = w->nh; i-- > 0;) {
    int back = 0;
    if (!w->h[i].lost) mpe__broker_handback(w->r, w->h[i].run, w->me, 1, &w->h[i].t, &back);
    drop(w, i);
  }
}

int mpe_broker_worker_run(const char *url, int procs, const char *name, mpe_pool_fn fn, void *ctx,
                          const mpe_pool_options *opts) {
  if (!url || !fn || procs < 0) return -EINVAL;
  host w = {0};
  if (name)
    snprintf(w.name, sizeof w.name, "%s", name);
  else if (gethostname(w.name, sizeof w.name - 1) < 0)
    strcpy(w.name, "host");
  snprintf(w.me, sizeof w.me, "%s/%d", w.name, (int)getpid());
  char err[512];
  int rc = mpe__redis_connect(&w.r, url, 5.0, err, sizeof err);
  if (rc < 0) return rc;
  mpe_pool_options o = {0};
  if (opts) o = *opts;
  o.processes = procs;
  if ((rc = mpe_pool_start(&w.pool, fn, ctx, &o)) < 0) {
    mpe__redis_close(w.r);
    return rc;
  }
  w.cap = 2 * mpe_pool_size(w.pool);
  w.h = calloc((size_t)w.cap, sizeof *w.h);
  mpe_buf buf = {0};
  rc = w.h ? 0 : -ENOMEM;
  while (rc == 0 && !mpe__stop_requested()) {
    int r = round_(&w, &buf);
    if (r == MPE_EINTR) continue;
    if (r < 0 && !mpe__redis_ok(w.r)) { /* the broker is lost: back off until it is there */
      while (!mpe__stop_requested() && mpe__redis_reconnect(w.r, mpe_time() + 1) < 0) {
      }
    } else if (r < 0) {
      rc = r;
    }
  }
  if (mpe__redis_ok(w.r)) handback(&w);
  while (w.nh)
    drop(&w, 0);
  mpe_pool_free(w.pool, 1);
  mpe__redis_close(w.r);
  free(w.h);
  free(buf.data);
  return rc;
}
