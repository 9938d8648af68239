/* pool_broker.c - the pool's broker transport: the driver's side of a run.
 *
 * A slot is a lane of the run: pool.c sends each lane's batches as it would
 * to a local worker, and they go to the run's stream on the broker, where
 * worker hosts claim them (broker.c). A lane never dies: a host's worker
 * deaths come back as that host's per-task results, and a batch lost
 * `attempts` times as per-task failures naming the last host. take() reads
 * the results stream (blocking XREAD) and turns each result into the reply
 * bytes pool.c reads (MPE__REPLY_FULL), addressed to the lane that sent the
 * batch. The run's keys live one lease (ttl = lease) and are refreshed
 * every lease/3 by a thread of the driver's (the keeper, with a connection
 * of its own), so a driver busy elsewhere keeps its run while a dead one's
 * run expires within a lease, and the hosts then stop its tasks. Every call
 * that meets a lost broker reconnects for up to broker_timeout, and a run
 * the broker lost (restarted) is opened again with what it had. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <signal.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "broker.h"
#include "futex.h"
#include "pool.h"

#define BROKER_TIMEOUT 30.0 /* seconds the broker may stay away */
#define MAXRES         64

typedef struct out_batch {
  int64_t seq;
  int slot;
  uint32_t n;
  char *bytes; /* a copy, to submit again to a broker that lost the run */
  size_t len;
} out_batch;

typedef struct ctx_field {
  char *name, *bytes;
  size_t len;
} ctx_field;

typedef struct bt {
  mpe__pool_transport ops;
  mpe__redis *r;
  char run[128];
  mpe__broker_opts o;
  int opened;
  double refreshed;
  out_batch *out; /* batches sent, not answered */
  size_t nout, cap;
  char last[48];
  mpe__broker_result res[MAXRES];
  int nres, pos;
  mpe__broker_hold hold;
  mpe_buf reply;
  ctx_field *ctx; /* the run's context, as put */
  size_t nctx;
  double broker_timeout;
  int reopening;
  char *url; /* for the keeper's connection (password: zeroed when freed) */
  pthread_t keeper;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int keeping, stop;
  int lanes, released; /* when every lane is released (join, terminate) the run ends */
} bt;

static int reopen(bt *t);

/* After a failed call: when the connection was lost, reconnects (the call's
 * retries share one budget, *until: broker_timeout from the first failure),
 * and when the broker came back without the run (restarted without
 * persistence), opens it again with what it lost: 0 (retry the call) or the
 * call's error (an error the broker answered is not retried; the host's
 * stop flag ends the wait with MPE_EINTR). */
static int recover(bt *t, int rc, double *until) {
  if (rc == -ENOENT || mpe__redis_ok(t->r)) return rc;
  if (mpe__stop_requested()) return MPE_EINTR;
  double now = mpe_time();
  if (*until == 0) *until = now + t->broker_timeout;
  if (now >= *until) return rc;
  int again = mpe__redis_reconnect(t->r, *until);
  if (again == MPE_EINTR) return MPE_EINTR;
  if (again < 0) return rc;
  if (!t->opened || t->reopening) return 0;
  int alive = mpe__broker_refresh(t->r, t->run);
  if (alive == 0) return reopen(t) < 0 ? rc : 0;
  return 0;
}

/* The run again on a broker that lost it: the same name, its context, every
 * batch not answered (same numbers: a result the pool already has is
 * dropped there, so each task's result still counts once), results read
 * from the new stream's start. */
static int reopen(bt *t) {
  t->reopening = 1;
  int rc = mpe__broker_open(t->r, t->run, &t->o);
  if (rc == -EEXIST) rc = 0;
  for (size_t i = 0; rc == 0 && i < t->nctx; i++)
    rc = mpe__broker_put(t->r, t->run, t->ctx[i].name, t->ctx[i].bytes, t->ctx[i].len);
  for (size_t i = 0; rc == 0 && i < t->nout; i++) {
    const void *d = t->out[i].bytes;
    rc = mpe__broker_submit(t->r, t->run, t->out[i].seq, 1, &d, &t->out[i].len);
    if (rc > 0) rc = 0;
  }
  t->reopening = 0;
  if (rc < 0) return rc;
  strcpy(t->last, "0");
  t->refreshed = mpe_time();
  return 0;
}

static void forget_out(bt *t, size_t k) {
  free(t->out[k].bytes);
  t->out[k] = t->out[--t->nout];
}

/* The keeper: refreshes the run every lease/3 until told to stop. */
static void *keeper(void *arg) {
  bt *t = arg;
  sigset_t all;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, NULL); /* the host's signals go to its own thread */
  mpe__redis *r = NULL;
  char err[512];
  pthread_mutex_lock(&t->mu);
  while (!t->stop) {
    struct timespec at;
    clock_gettime(CLOCK_REALTIME, &at);
    double step = t->o.ttl / 3, whole = (double)at.tv_sec + at.tv_nsec / 1e9 + step;
    at.tv_sec = (time_t)whole;
    at.tv_nsec = (long)((whole - (double)at.tv_sec) * 1e9);
    pthread_cond_timedwait(&t->cv, &t->mu, &at);
    if (t->stop) break;
    pthread_mutex_unlock(&t->mu);
    if (!r || !mpe__redis_ok(r)) {
      mpe__redis_close(r);
      r = NULL;
      if (mpe__redis_connect(&r, t->url, step, err, sizeof err) < 0) r = NULL;
    }
    if (r) mpe__broker_refresh(r, t->run); /* a lost run is the driver's to open again */
    pthread_mutex_lock(&t->mu);
  }
  pthread_mutex_unlock(&t->mu);
  mpe__redis_close(r);
  return NULL;
}

static int b_start(mpe__pool_transport *tr, int slot) {
  bt *t = (bt *)tr;
  (void)slot;
  if (t->opened) return 0;
  int rc = mpe__broker_open(t->r, t->run, &t->o);
  if (rc == 0) rc = mpe__broker_refresh(t->r, t->run) == 1 ? 0 : -EIO;
  if (rc < 0) return rc;
  t->opened = 1;
  t->refreshed = mpe_time();
  t->keeping = pthread_create(&t->keeper, NULL, keeper, t) == 0;
  return 0;
}

static int b_send(mpe__pool_transport *tr, int slot, const void *batch, size_t len) {
  bt *t = (bt *)tr;
  mpe__batch_hdr h;
  if (len < sizeof h) return -EINVAL;
  memcpy(&h, batch, sizeof h);
  if (t->nout == t->cap) {
    size_t cap = t->cap ? 2 * t->cap : 16;
    out_batch *o = realloc(t->out, cap * sizeof *o);
    if (!o) return -ENOMEM;
    t->out = o;
    t->cap = cap;
  }
  char *copy = malloc(len);
  if (!copy) return -ENOMEM;
  memcpy(copy, batch, len);
  int rc;
  double until = 0;
  while ((rc = mpe__broker_submit(t->r, t->run, (int64_t)h.bid, 1, &batch, &len)) < 0)
    if ((rc = recover(t, rc, &until)) < 0) {
      free(copy);
      return rc;
    }
  t->out[t->nout++] = (out_batch){(int64_t)h.bid, slot, h.n, copy, len};
  return 0;
}

/* The reply bytes for result res (0), 1 when no lane waits for it, or
 * MPE_ECORRUPT (a reply that does not answer its batch fails the call rather
 * than leave its tasks waiting). */
static int convert(bt *t, const mpe__broker_result *res) {
  size_t k;
  for (k = 0; k < t->nout && t->out[k].seq != res->seq; k++) {
  }
  if (k == t->nout) return 1;
  out_batch ob = t->out[k];
  ob.bytes = NULL;
  forget_out(t, k);
  mpe__reply_hdr h = {.bid = (uint64_t)ob.seq, .slot = (uint32_t)ob.slot, .n = ob.n};
  t->reply.len = 0;
  if (res->kind == MPE__BROKER_OK) {
    if (res->len < sizeof h) return MPE_ECORRUPT;
    mpe__reply_hdr got;
    memcpy(&got, res->data, sizeof got);
    if (got.n != ob.n) return MPE_ECORRUPT;
    h.dt = got.dt;
    if (mpe_buf_add(&t->reply, &h, sizeof h) < 0 ||
        mpe_buf_add(&t->reply, res->data + sizeof h, res->len - sizeof h) < 0)
      return -ENOMEM;
    return 0;
  }
  char text[256];
  mpe__broker_lost_text(res, text, sizeof text);
  mpe__result_full f = {MPE_EDIED, 0, 0, (uint32_t)strlen(text)};
  if (mpe_buf_add(&t->reply, &h, sizeof h) < 0) return -ENOMEM;
  for (uint32_t i = 0; i < ob.n; i++)
    if (mpe_buf_add(&t->reply, &f, sizeof f) < 0 || mpe_buf_add(&t->reply, text, f.len) < 0) return -ENOMEM;
  return 0;
}

static int b_take(mpe__pool_transport *tr, double timeout, const char **data, size_t *len, uint32_t *tag) {
  bt *t = (bt *)tr;
  for (;;) {
    while (t->pos < t->nres) {
      int rc = convert(t, &t->res[t->pos++]);
      if (rc < 0) return rc;
      if (rc == 0) {
        *data = t->reply.data;
        *len = t->reply.len;
        *tag = MPE__REPLY_FULL;
        return 0;
      }
    }
    mpe__broker_release(&t->hold);
    t->nres = t->pos = 0;
    if (!t->opened) return MPE_ETIMEDOUT;
    int rc;
    double until = 0;
    if (mpe_time() - t->refreshed > t->o.ttl / 3) {
      while ((rc = mpe__broker_refresh(t->r, t->run)) < 0)
        if ((rc = recover(t, rc, &until)) < 0) return rc;
      if (rc == 0 && (rc = reopen(t)) < 0) return rc; /* the broker lost the run */
      t->refreshed = mpe_time();
    }
    if (t->nout == 0 && timeout > 0) { /* nothing out: nothing to wait on */
      mpe_sleep(timeout, NULL);
      return MPE_ETIMEDOUT;
    }
    while ((rc = mpe__broker_results(t->r, t->run, t->last, timeout, t->res, MAXRES, &t->hold)) < 0)
      if ((rc = recover(t, rc, &until)) < 0) return rc;
    if (rc == 0) return MPE_ETIMEDOUT;
    t->nres = rc;
  }
}

static int b_gone(mpe__pool_transport *tr, int slot, int *code) {
  (void)tr, (void)slot, (void)code;
  return 0;
}

static void b_running(mpe__pool_transport *tr, int slot, mpe__running *r) {
  (void)tr, (void)slot;
  *r = (mpe__running){.task = -1};
}

static void b_kill(mpe__pool_transport *tr, int slot) { (void)tr, (void)slot; }

static void stop_keeper(bt *t) {
  if (!t->keeping) return;
  pthread_mutex_lock(&t->mu);
  t->stop = 1;
  pthread_cond_signal(&t->cv);
  pthread_mutex_unlock(&t->mu);
  pthread_join(t->keeper, NULL);
  t->keeping = 0;
}

/* A lane's batches are forgotten: a result that comes later is dropped.
 * Once every lane is (the pool joined or terminated), the run ends: its keys
 * go, and the hosts stop what they still run of it. */
static void b_release(mpe__pool_transport *tr, int slot, int quit) {
  bt *t = (bt *)tr;
  (void)quit;
  for (size_t k = t->nout; k-- > 0;)
    if (t->out[k].slot == slot) forget_out(t, k);
  if (++t->released < t->lanes || !t->opened) return;
  stop_keeper(t);
  if (mpe__redis_ok(t->r)) mpe__broker_close(t->r, t->run);
  t->opened = 0;
}

static pid_t b_pid(mpe__pool_transport *tr, int slot) {
  (void)tr, (void)slot;
  return 0;
}

static void b_destroy(mpe__pool_transport *tr) {
  bt *t = (bt *)tr;
  stop_keeper(t);
  pthread_mutex_destroy(&t->mu);
  pthread_cond_destroy(&t->cv);
  if (t->url) {
    memset(t->url, 0, strlen(t->url));
    free(t->url);
  }
  mpe__broker_release(&t->hold);
  if (t->opened && mpe__redis_ok(t->r)) mpe__broker_close(t->r, t->run);
  mpe__redis_close(t->r);
  while (t->nout)
    forget_out(t, 0);
  for (size_t i = 0; i < t->nctx; i++) {
    free(t->ctx[i].name);
    free(t->ctx[i].bytes);
  }
  free(t->ctx);
  free(t->out);
  free(t->reply.data);
  free(t);
}

int mpe_pool_broker_put(mpe_pool *p, const char *field, const void *data, size_t len) {
  mpe__pool_transport *tr = mpe__pool_transport_of(p);
  if (!tr || tr->start != b_start || !field) return -EINVAL;
  bt *t = (bt *)tr;
  int rc;
  if ((rc = b_start(tr, 0)) < 0) return rc;
  size_t i;
  for (i = 0; i < t->nctx && strcmp(t->ctx[i].name, field); i++) {
  }
  char *copy = malloc(len ? len : 1), *name = i == t->nctx ? strdup(field) : NULL;
  ctx_field *c = i == t->nctx ? realloc(t->ctx, (t->nctx + 1) * sizeof *c) : t->ctx;
  if (!copy || (i == t->nctx && (!name || !c))) {
    free(copy);
    free(name);
    if (c) t->ctx = c;
    return -ENOMEM;
  }
  t->ctx = c;
  if (i == t->nctx) t->ctx[t->nctx++] = (ctx_field){name, NULL, 0};
  if (len) memcpy(copy, data, len);
  free(t->ctx[i].bytes);
  t->ctx[i].bytes = copy;
  t->ctx[i].len = len;
  double until = 0;
  while ((rc = mpe__broker_put(t->r, t->run, field, data, len)) < 0)
    if ((rc = recover(t, rc, &until)) < 0) return rc;
  return 0;
}

typedef struct mk_arg {
  const char *url;
  mpe__broker_opts o;
  double broker_timeout;
} mk_arg;

static int broker_mk(mpe__pool_transport **out, int workers, const mpe__pool_cfg *cfg, void *arg) {
  mk_arg *a = arg;
  (void)cfg;
  bt *t = calloc(1, sizeof *t);
  if (!t) return -ENOMEM;
  t->ops =
      (mpe__pool_transport){b_start, b_send, b_take, b_gone, b_running, b_kill, b_release, b_pid, b_destroy};
  t->o = a->o;
  t->lanes = workers;
  t->broker_timeout = a->broker_timeout;
  strcpy(t->last, "0");
  char host[64] = "host";
  gethostname(host, sizeof host - 1);
  host[sizeof host - 1] = 0;
  snprintf(t->run, sizeof t->run, "%s.%d.%llx", host, (int)getpid(), (unsigned long long)(mpe_time() * 1e6));
  char err[512];
  int rc = mpe__redis_connect(&t->r, a->url, 5.0, err, sizeof err);
  if (rc == 0 && !(t->url = strdup(a->url))) {
    mpe__redis_close(t->r);
    rc = -ENOMEM;
  }
  if (rc < 0) {
    free(t);
    return rc;
  }
  pthread_mutex_init(&t->mu, NULL);
  pthread_cond_init(&t->cv, NULL);
  *out = &t->ops;
  return 0;
}

/* The tasks run on the hosts: the driver's fn is never called. */
static int no_fn(void *ctx, const void *in, size_t n, mpe_buf *out) {
  (void)ctx, (void)in, (void)n, (void)out;
  return -ENOSYS;
}

int mpe_pool_start_broker(mpe_pool **out, const char *url, const mpe_pool_options *opts,
                          const mpe_broker_options *bo) {
  if (!url) return -EINVAL;
  mpe_pool_options o = {0};
  if (opts) o = *opts;
  if (!o.processes) o.processes = 16;
  mk_arg a = {url, {10, 3, 10}, BROKER_TIMEOUT};
  if (bo && bo->broker_timeout > 0) a.broker_timeout = bo->broker_timeout;
  if (bo && bo->lease > 0) a.o.lease = bo->lease;
  if (bo && bo->attempts > 0) a.o.attempts = bo->attempts;
  a.o.ttl = a.o.lease; /* a dead driver's run is gone within a lease */
  /* timeout, maxtasksperchild and memory_limit are the hosts' (below): the
   * driver's lanes never time out, retire or grow */
  mpe_pool_options lanes = o;
  lanes.timeout = 0;
  lanes.maxtasksperchild = 0;
  lanes.memory_limit = 0;
  lanes.initializer = NULL;
  int rc = mpe__pool_start_with(out, no_fn, NULL, &lanes, broker_mk, &a);
  if (rc < 0) return rc;
  if (opts && opts->processes > 0) mpe__pool_one_each(*out); /* processes: tasks running at once */
  /* what a host's local pool for this run is made with */
  char v[64];
  snprintf(v, sizeof v, "%.17g %zu %zu", o.timeout, o.maxtasksperchild, o.memory_limit);
  if ((rc = mpe_pool_broker_put(*out, "options", v, strlen(v))) < 0) {
    mpe_pool_free(*out, 1);
    *out = NULL;
  }
  return rc;
}
