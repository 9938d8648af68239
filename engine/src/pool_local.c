/* pool_local.c - the pool's local transport: workers are forked processes.
 *
 * Each worker has its own inbox (an arena queue only it reads), so the
 * parent decides who gets which batch and always knows who holds what; all
 * workers reply through one results queue. Stamps live in one arena array,
 * a cache line per slot, written by the worker and read by the parent (also
 * after the worker died: the arena outlives it). A replacement gets a fresh
 * inbox: whatever the dead worker left in its old one is the parent's to
 * requeue, never read twice.
 *
 * This file knows nothing of tasks, ids or blame: it moves bytes and
 * reports deaths. pool.c reaches it only through mpe__pool_transport. */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <string.h>

#include "pool.h"

typedef struct local_worker {
  mpe_process *proc;
  mpe_queue *inbox;
} local_worker;

typedef struct local {
  mpe__pool_transport ops;
  int n;
  mpe__pool_cfg cfg;
  mpe_queue *results;
  mpe__stamp *stamps; /* arena: n slots */
  local_worker *w;
  int self;           /* in a worker: its slot */
  mpe_qmsg in, out;   /* the worker's batch; the parent's reply */
} local;

/* ------------------------------------------------------------ in a worker */

static int worker_next(void *self, const char **data, size_t *len) {
  local *l = self;
  int rc;
  while ((rc = mpe_queue_get(l->w[l->self].inbox, -1, &l->in)) == MPE_EINTR) {
  }
  if (rc < 0) return rc;
  if (l->in.tag == MPE__MSG_QUIT) return 1;
  *data = l->in.data;
  *len = l->in.len;
  return 0;
}

static int worker_put(void *self, const void *data, size_t len, uint32_t tag) {
  local *l = self;
  int rc;
  while ((rc = mpe_queue_put(l->results, data, len, tag, -1)) == MPE_EINTR) {
  }
  return rc;
}

static int worker_main(void *arg) {
  local *l = arg;
  mpe__worker_io io = {l, l->self, &l->stamps[l->self], worker_next, worker_put};
  return mpe__pool_worker_run(&l->cfg, &io);
}

/* ------------------------------------------------------------ the parent */

static int l_start(mpe__pool_transport *t, int slot) {
  local *l = (local *)t;
  local_worker *w = &l->w[slot];
  int rc = mpe_queue_new(&w->inbox, 0);
  if (rc < 0) return rc;
  mpe__stamp *st = &l->stamps[slot];
  atomic_store(&st->batch, 0);
  atomic_store(&st->task, 0);
  atomic_store(&st->since_ns, 0);
  atomic_store(&st->seq, 0);
  l->self = slot; /* what the child sees */
  if (l->cfg.before_fork) l->cfg.before_fork(l->cfg.initarg, 0);
  rc = mpe_process_spawn(&w->proc, worker_main, l, NULL);
  if (rc < 0) {
    if (l->cfg.before_fork) l->cfg.before_fork(l->cfg.initarg, 1);
    mpe_queue_free(w->inbox);
    w->inbox = NULL;
    w->proc = NULL;
  }
  return rc;
}

static int l_send(mpe__pool_transport *t, int slot, const void *batch, size_t len) {
  local *l = (local *)t;
  return mpe_queue_put(l->w[slot].inbox, batch, len, MPE__MSG_BATCH, -1);
}

static int l_take(mpe__pool_transport *t, double timeout, const char **data, size_t *len,
                  uint32_t *tag) {
  local *l = (local *)t;
  int rc = mpe_queue_get(l->results, timeout, &l->out);
  if (rc < 0) return rc;
  *data = l->out.data;
  *len = l->out.len;
  *tag = l->out.tag;
  return 0;
}

static int l_gone(mpe__pool_transport *t, int slot, int *code) {
  local *l = (local *)t;
  if (!l->w[slot].proc) {
    *code = 0;
    return 1;
  }
  return mpe_process_exitcode(l->w[slot].proc, code) == 1;
}

static void l_running(mpe__pool_transport *t, int slot, mpe__running *r) {
  local *l = (local *)t;
  mpe__stamp *st = &l->stamps[slot];
  uint64_t seq, task, ns;
  do {
    seq = atomic_load_explicit(&st->seq, memory_order_acquire);
    r->batch = atomic_load_explicit(&st->batch, memory_order_relaxed);
    task = atomic_load_explicit(&st->task, memory_order_acquire); /* then its start */
    ns = atomic_load_explicit(&st->since_ns, memory_order_relaxed);
    atomic_thread_fence(memory_order_acquire);
  } while (atomic_load_explicit(&st->seq, memory_order_relaxed) != seq);
  r->seq = seq;
  r->task = (long)task - 1;
  r->exact = 1;
  r->since = (double)ns * 1e-9;
}

static void l_kill(mpe__pool_transport *t, int slot) {
  local *l = (local *)t;
  if (l->w[slot].proc) mpe_process_signal(l->w[slot].proc, SIGKILL);
}

static void l_release(mpe__pool_transport *t, int slot, int quit) {
  local *l = (local *)t;
  local_worker *w = &l->w[slot];
  if (!w->proc) return;
  if (!quit || mpe_queue_put(w->inbox, "", 0, MPE__MSG_QUIT, -1) != 0)
    mpe_process_signal(w->proc, SIGKILL);
  while (mpe_process_wait(w->proc, -1) == MPE_EINTR) {
  }
  mpe_process_free(w->proc);
  mpe_queue_free(w->inbox);
  w->proc = NULL;
  w->inbox = NULL;
}

static pid_t l_pid(mpe__pool_transport *t, int slot) {
  local *l = (local *)t;
  return l->w[slot].proc ? mpe_process_pid(l->w[slot].proc) : 0;
}

static void l_destroy(mpe__pool_transport *t) {
  local *l = (local *)t;
  for (int i = 0; i < l->n; i++) l_release(t, i, 0);
  if (l->results) mpe_queue_free(l->results);
  mpe_free(l->stamps);
  mpe_qmsg_free(&l->out);
  free(l->w);
  free(l);
}

int mpe__pool_local_new(mpe__pool_transport **out, int workers, const mpe__pool_cfg *cfg) {
  local *l = calloc(1, sizeof *l);
  if (!l) return -ENOMEM;
  l->ops = (mpe__pool_transport){l_start, l_send, l_take, l_gone, l_running,
                                 l_kill, l_release, l_pid, l_destroy};
  l->n = workers;
  l->cfg = *cfg;
  l->w = calloc((size_t)workers, sizeof *l->w);
  l->stamps = mpe_alloc((size_t)workers * sizeof *l->stamps);
  int rc = l->w && l->stamps ? mpe_queue_new(&l->results, 0) : -ENOMEM;
  if (rc < 0) {
    l_destroy(&l->ops);
    return rc;
  }
  memset(l->stamps, 0, (size_t)workers * sizeof *l->stamps);
  *out = &l->ops;
  return 0;
}
