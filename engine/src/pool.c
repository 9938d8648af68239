/* pool.c - a pool of worker processes running a C function over bytes.
 *
 * The Lua Pool (bindings/pool.lua) is the same design with more options; this
 * is the C one, for hosts without Lua. Each worker has its own inbox queue
 * and holds at most one task, so the parent always knows which task a worker
 * holds: when a worker dies, that task (and only it) is reported MPE_EDIED
 * with the exit status, and a replacement starts. Results come back through
 * one shared queue as {id, status, code, bytes}. The parent looks at its
 * workers at least every SLICE seconds while it waits, so nothing waits
 * forever on a dead worker.
 *
 * Invariants: a task is in exactly one of pending[], a worker's `task`, the
 * results queue, or done[]; `outstanding` counts tasks not yet collected. */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <string.h>

#include "internal.h"

#define SLICE 0.01
#define TAG_TASK 1
#define TAG_QUIT 2

typedef struct task {
  uint64_t id;
  void *in;
  size_t len;
} task;

typedef struct worker {
  mpe_process *proc;
  mpe_queue *inbox;
  int busy;
  task t; /* the task it holds while busy */
} worker;

typedef struct reply_hdr {
  uint64_t id;
  int32_t status, code;
} reply_hdr;

struct mpe_pool {
  int n;
  mpe_task_fn fn;
  void *ctx;
  mpe_queue *results;
  worker *w;
  task *pending;
  size_t phead, ptail, pcap;
  mpe_task_result *done;
  size_t ndone, dcap;
  size_t outstanding;
  uint64_t next_id;
  mpe_qmsg m;
  int self; /* the slot a worker process serves (in the worker) */
};

/* ------------------------------------------------------------ in a worker */

static int worker_main(void *arg) {
  mpe_pool *p = arg;
  mpe_queue *inbox = p->w[p->self].inbox;
  mpe_qmsg m = {0};
  for (;;) {
    int rc = mpe_queue_get(inbox, -1, &m);
    if (rc == MPE_EINTR) continue;
    if (rc != 0 || m.tag == TAG_QUIT) break;
    reply_hdr h;
    memcpy(&h.id, m.data, sizeof h.id);
    void *out = NULL;
    size_t out_len = 0;
    int code = p->fn(m.data + sizeof h.id, m.len - sizeof h.id, &out, &out_len, p->ctx);
    h.status = code == 0 ? 0 : MPE_ETASK;
    h.code = code;
    char *buf = malloc(sizeof h + out_len);
    if (!buf) return 3;
    memcpy(buf, &h, sizeof h);
    if (out_len) memcpy(buf + sizeof h, out, out_len);
    free(out);
    rc = mpe_queue_put(p->results, buf, sizeof h + out_len, 0, -1);
    free(buf);
    if (rc != 0) return 4;
  }
  mpe_qmsg_free(&m);
  return 0;
}

/* ------------------------------------------------------------ the parent */

static int start_worker(mpe_pool *p, int slot) {
  worker *w = &p->w[slot];
  int rc = mpe_queue_new(&w->inbox, 0);
  if (rc < 0) return rc;
  p->self = slot; /* what the child sees */
  rc = mpe_process_spawn(&w->proc, worker_main, p, NULL);
  if (rc < 0) {
    mpe_queue_free(w->inbox);
    w->inbox = NULL;
  }
  w->busy = 0;
  return rc;
}

int mpe_pool_new(mpe_pool **out, int workers, mpe_task_fn fn, void *ctx) {
  if (!fn || workers < 0) return -EINVAL;
  if (!mpe_initialized()) return MPE_ENOINIT;
  mpe_pool *p = calloc(1, sizeof *p);
  if (!p) return -ENOMEM;
  p->n = workers ? workers : mpe_cpu_count();
  p->fn = fn;
  p->ctx = ctx;
  p->w = calloc((size_t)p->n, sizeof *p->w);
  int rc = p->w ? mpe_queue_new(&p->results, 0) : -ENOMEM;
  for (int i = 0; rc == 0 && i < p->n; i++) rc = start_worker(p, i);
  if (rc < 0) {
    mpe_pool_free(p, 1);
    return rc;
  }
  *out = p;
  return 0;
}

int mpe_pool_size(const mpe_pool *p) { return p->n; }

static int push_done(mpe_pool *p, uint64_t id, int status, int code, void *data, size_t len) {
  if (p->ndone == p->dcap) {
    size_t cap = p->dcap ? 2 * p->dcap : 16;
    mpe_task_result *d = realloc(p->done, cap * sizeof *d);
    if (!d) return -ENOMEM;
    p->done = d;
    p->dcap = cap;
  }
  mpe_task_result *r = &p->done[p->ndone++];
  r->id = id;
  r->status = status;
  r->code = code;
  r->data = data;
  r->len = len;
  return 0;
}

int mpe_pool_submit(mpe_pool *p, const void *in, size_t len, uint64_t *id) {
  if (p->ptail - p->phead == p->pcap) {
    size_t cap = p->pcap ? 2 * p->pcap : 64, n = p->ptail - p->phead;
    task *t = malloc(cap * sizeof *t);
    if (!t) return -ENOMEM;
    for (size_t i = 0; i < n; i++) t[i] = p->pending[(p->phead + i) % (p->pcap ? p->pcap : 1)];
    free(p->pending);
    p->pending = t;
    p->pcap = cap;
    p->phead = 0;
    p->ptail = n;
  }
  task t = {p->next_id++, malloc(sizeof(uint64_t) + len), len};
  if (!t.in) return -ENOMEM;
  memcpy(t.in, &t.id, sizeof t.id);
  if (len) memcpy((char *)t.in + sizeof t.id, in, len);
  p->pending[p->ptail++ % p->pcap] = t;
  p->outstanding++;
  if (id) *id = t.id;
  return 0;
}

/* Gives pending tasks to idle workers. */
static int dispatch(mpe_pool *p) {
  for (int i = 0; i < p->n && p->phead < p->ptail; i++) {
    worker *w = &p->w[i];
    if (w->busy || !w->proc) continue;
    task t = p->pending[p->phead % p->pcap];
    int rc = mpe_queue_put(w->inbox, t.in, sizeof t.id + t.len, TAG_TASK, -1);
    if (rc < 0) return rc;
    p->phead++;
    w->busy = 1;
    w->t = t;
  }
  return 0;
}

static int take_reply(mpe_pool *p) {
  reply_hdr h;
  if (p->m.len < sizeof h) return MPE_ECORRUPT;
  memcpy(&h, p->m.data, sizeof h);
  size_t len = p->m.len - sizeof h;
  void *data = NULL;
  if (len) {
    data = malloc(len);
    if (!data) return -ENOMEM;
    memcpy(data, p->m.data + sizeof h, len);
  }
  for (int i = 0; i < p->n; i++) {
    worker *w = &p->w[i];
    if (w->busy && w->t.id == h.id) {
      free(w->t.in);
      w->busy = 0;
    }
  }
  return push_done(p, h.id, h.status, h.code, data, len);
}

/* Reports the task of each dead worker and starts a replacement. */
static int check_workers(mpe_pool *p) {
  for (int i = 0; i < p->n; i++) {
    worker *w = &p->w[i];
    int code;
    if (!w->proc || mpe_process_exitcode(w->proc, &code) != 1) continue;
    /* Its results, if any, are queued already: take them first. */
    while (mpe_queue_get(p->results, 0, &p->m) == 0) {
      int rc = take_reply(p);
      if (rc < 0) return rc;
    }
    if (w->busy) {
      int rc = push_done(p, w->t.id, MPE_EDIED, code, NULL, 0);
      if (rc < 0) return rc;
      free(w->t.in);
      w->busy = 0;
    }
    mpe_process_free(w->proc);
    w->proc = NULL;
    mpe_queue_free(w->inbox);
    w->inbox = NULL;
    int rc = start_worker(p, i);
    if (rc < 0) return rc;
  }
  return 0;
}

int mpe_pool_collect(mpe_pool *p, double timeout, mpe_task_result *r) {
  mpe__deadline d = mpe__deadline_in(timeout);
  for (;;) {
    if (p->ndone > 0) {
      *r = p->done[0];
      memmove(p->done, p->done + 1, --p->ndone * sizeof *p->done);
      p->outstanding--;
      return 0;
    }
    if (p->outstanding == 0) return MPE_EEMPTY;
    int rc = dispatch(p);
    if (rc < 0) return rc;
    int ms = mpe__deadline_ms(&d);
    if (ms == 0) return MPE_ETIMEDOUT;
    double wait = ms < 0 || ms > SLICE * 1000 ? SLICE : ms * 1e-3;
    rc = mpe_queue_get(p->results, wait, &p->m);
    if (rc == 0) rc = take_reply(p);
    else if (rc == MPE_ETIMEDOUT) rc = check_workers(p);
    if (rc < 0) return rc;
  }
}

int mpe_pool_map(mpe_pool *p, size_t n, const void *const *in, const size_t *len,
                 mpe_task_result *results) {
  if (p->outstanding) return -EBUSY; /* ids would not be the indexes */
  p->next_id = 0;
  for (size_t i = 0; i < n; i++) {
    int rc = mpe_pool_submit(p, in[i], len[i], NULL);
    if (rc < 0) return rc;
  }
  for (size_t got = 0; got < n;) {
    mpe_task_result r;
    int rc = mpe_pool_collect(p, -1, &r);
    if (rc == MPE_EINTR) continue;
    if (rc < 0) return rc;
    results[r.id] = r;
    got++;
  }
  return 0;
}

void mpe_task_result_clear(mpe_task_result *r) {
  free(r->data);
  r->data = NULL;
  r->len = 0;
}

void mpe_pool_free(mpe_pool *p, int kill) {
  if (!p) return;
  for (int i = 0; p->w && i < p->n; i++) {
    worker *w = &p->w[i];
    if (!w->proc) continue;
    if (!kill) mpe_queue_put(w->inbox, "", 0, TAG_QUIT, -1);
    else mpe_process_signal(w->proc, SIGKILL);
    while (mpe_process_wait(w->proc, -1) == MPE_EINTR) {
    }
    mpe_process_free(w->proc);
    mpe_queue_free(w->inbox);
    if (w->busy) free(w->t.in);
  }
  for (size_t i = p->phead; i < p->ptail; i++) free(p->pending[i % p->pcap].in);
  for (size_t i = 0; i < p->ndone; i++) free(p->done[i].data);
  if (p->results) mpe_queue_free(p->results);
  mpe_qmsg_free(&p->m);
  free(p->pending);
  free(p->done);
  free(p->w);
  free(p);
}
