/* broker_worker.c - a worker host: serves every run on a broker, each run
 * with a local engine pool of its own.
 *
 * A run's pool is made when the host first claims a batch of it, with the
 * run's options (timeout, maxtasksperchild, memory_limit: its context field
 * "options"), so a run's per-task timeout is enforced here as locally, and
 * its workers serve that run only: they know its name (mpe_broker_context
 * reads the run's context through a connection of their own). A pool idle
 * for IDLE_FREE seconds, or whose run is gone, is stopped.
 *
 * The host claims batches (up to twice its processes at once over all
 * runs), submits each batch's tasks to the run's pool, and keeps the ids of
 * a batch's tasks (one contiguous range) to put its results back in order.
 * While tasks run it renews each held batch every lease/3; a batch taken
 * over meanwhile is only marked, and its results are dropped when they come.
 * A batch whose every task has a result is completed (fenced: accepted only
 * from its current holder) as one reply, a mpe__reply_hdr and per task a
 * mpe__result_full; a failure that is not the task's own (its worker died,
 * timed out, the pool broke) carries its text naming this host. The host
 * says it is alive in mpe:hosts (for `status`) about once a second. When the
 * broker is lost the host reconnects with backoff; once the host's interrupt
 * flag is set it hands back every batch it holds (each goes back to the
 * run's stream as new) and returns. */
#define _GNU_SOURCE
#include <errno.h>
#include <hiredis/hiredis.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "broker.h"
#include "futex.h"
#include "pool.h"

#define MAXRUNS   16
#define IDLE_FREE 30.0 /* seconds a run's pool may sit idle */

typedef struct runpool {
  char run[128];
  mpe_pool *pool;
  double timeout, lease;
  int held;    /* batches held */
  double used; /* when it last had work */
} runpool;

typedef struct held {
  int rp; /* its run's pool */
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
  int procs;
  runpool rp[MAXRUNS];
  held *h;
  int nh, cap;
  mpe_pool_options base;
  uint64_t done, failed;
  double beat;
  char events[48]; /* the last submit event seen (mpe__broker_wait_work) */
} host;

/* ------------------------------------------------- the host's processes */

static const char *host_url;
static char host_name[128];
static mpe_pool_options host_opts; /* the C host's hooks */
static void (*host_event)(void *, const char *);
static void *host_event_arg;

/* In a worker process: the run it serves and its own connection. */
static char w_run[128];
static mpe__redis *w_conn;

const char *mpe_broker_host(void) { return w_run[0] ? host_name : NULL; }

int mpe_broker_context(const char *field, mpe_buf *out) {
  if (!w_run[0]) return -ENOENT;
  if (!w_conn) {
    char err[512];
    int rc = mpe__redis_connect(&w_conn, host_url, 5.0, err, sizeof err);
    if (rc < 0) return rc;
  }
  int rc = mpe__broker_get(w_conn, w_run, field, out);
  if (rc < 0 && !mpe__redis_ok(w_conn) && mpe__redis_reconnect(w_conn, mpe_time() + 5) == 0)
    rc = mpe__broker_get(w_conn, w_run, field, out);
  return rc;
}

void mpe_broker_on_event(void (*fn)(void *arg, const char *line), void *arg) {
  host_event = fn;
  host_event_arg = arg;
}

/* "worker NAME: WHAT BROKER[TAIL]" to the host's event hook. */
static void say(const host *w, const char *what, const char *tail) {
  if (!host_event) return;
  char line[700];
  snprintf(line, sizeof line, "worker %s: %s %s%s", w->name, what, mpe__redis_display(w->r), tail);
  host_event(host_event_arg, line);
}

/* The pool hooks of a run's workers: the run's name, then the C host's. */
static int run_setup(void *arg, mpe_buf *why) {
  const runpool *rp = arg;
  snprintf(w_run, sizeof w_run, "%s", rp->run);
  return host_opts.setup ? host_opts.setup(host_opts.initarg, why) : 0;
}

static void run_exit(void *arg) {
  (void)arg;
  if (host_opts.at_exit) host_opts.at_exit(host_opts.initarg);
}

static void run_fork(void *arg, int failed) {
  (void)arg;
  if (host_opts.before_fork) host_opts.before_fork(host_opts.initarg, failed);
}

/* ------------------------------------------------------------- the runs */

static void drop(host *w, int i) {
  for (uint32_t k = 0; k < w->h[i].n; k++)
    mpe_task_result_clear(&w->h[i].res[k]);
  free(w->h[i].res);
  w->rp[w->h[i].rp].held--;
  w->h[i] = w->h[--w->nh];
}

/* The pool of run (made with the run's options): its index, or < 0. */
static int run_pool(host *w, const char run[128], mpe_pool_fn fn, void *ctx) {
  int free_at = -1;
  for (int i = 0; i < MAXRUNS; i++) {
    if (w->rp[i].pool && !strcmp(w->rp[i].run, run)) return i;
    if (!w->rp[i].pool && free_at < 0) free_at = i;
  }
  if (free_at < 0) return -EAGAIN;
  runpool *rp = &w->rp[free_at];
  mpe_pool_options o = w->base;
  mpe_buf b = {0};
  if (strlen(run) >= sizeof rp->run) return -EINVAL;
  if (mpe__broker_get(w->r, run, "options", &b) == 1 && mpe_buf_add(&b, "", 1) == 0) {
    double t = 0;
    size_t mt = 0, ml = 0;
    if (sscanf(b.data, "%lf %zu %zu", &t, &mt, &ml) == 3) {
      o.timeout = t;
      o.maxtasksperchild = mt;
      o.memory_limit = ml;
    }
  }
  free(b.data);
  memcpy(rp->run, run, strlen(run) + 1);
  o.setup = run_setup;
  o.at_exit = run_exit;
  o.before_fork = run_fork;
  o.initarg = rp;
  rp->timeout = o.timeout;
  rp->lease = mpe__broker_lease(w->r, run);
  int rc = mpe_pool_start(&rp->pool, fn, ctx, &o);
  if (rc < 0) {
    rp->pool = NULL;
    return rc;
  }
  rp->held = 0;
  rp->used = mpe_time();
  return free_at;
}

/* Stops the pools of runs idle too long, and of runs gone (a driver that
 * died or closed): what their workers run is killed, what they hold dropped. */
static void reap_pools(host *w, char (*runs)[128], int nruns) {
  double now = mpe_time();
  for (int i = 0; i < MAXRUNS; i++) {
    runpool *rp = &w->rp[i];
    if (!rp->pool) continue;
    int live = 0;
    for (int k = 0; k < nruns && !live; k++)
      live = !strcmp(runs[k], rp->run);
    if (live && (rp->held || now - rp->used < IDLE_FREE)) continue;
    for (int k = w->nh; k-- > 0;)
      if (w->h[k].rp == i) drop(w, k);
    mpe_pool_free(rp->pool, 1);
    rp->pool = NULL;
  }
}

/* Takes new batches of run (room for max). */
static int claim(host *w, const char run[128], int max, mpe_pool_fn fn, void *ctx) {
  mpe__broker_task t[16];
  mpe__broker_hold hold = {{0}};
  if (max > 16) max = 16;
  int n = mpe__broker_claim(w->r, run, w->me, max, 0, t, &hold);
  if (n <= 0) return n == -ENOENT ? 0 : n;
  int rp = run_pool(w, run, fn, ctx), rc = 0;
  double lease = rp >= 0 ? w->rp[rp].lease : 0;
  if (rp < 0) { /* no pool for it here now: the batches go back as new */
    int back[16];
    mpe__broker_handback(w->r, run, w->me, n, t, back);
    mpe__broker_release(&hold);
    return 0;
  }
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
    h->rp = rp;
    h->t = t[i];
    h->t.data = NULL;
    h->n = b.n;
    h->got = 0;
    h->lost = 0;
    h->lease = lease > 0 ? lease : 10;
    h->renewed = h->start = mpe_time();
    int sub = mpe_pool_submit_batch(w->rp[rp].pool, in, lens, b.n, &h->first);
    free(lens);
    if (sub < 0) { /* a broken pool: its tasks fail with why */
      for (uint32_t k = 0; k < b.n; k++)
        h->res[k] = (mpe_task_result){.status = sub};
      h->got = b.n;
      h->first = UINT64_MAX - b.n;
    }
    w->rp[rp].held++;
    w->rp[rp].used = mpe_time();
    w->nh++;
  }
  mpe__broker_release(&hold);
  return rc;
}

/* The text of a failure that is not the task's own, naming this host. */
static void failure_text(host *w, held *h, const mpe_task_result *r, char *text, size_t n) {
  const runpool *rp = &w->rp[h->rp];
  if (r->status == MPE_EDIED && r->code < 0)
    snprintf(text, n, "Pool: the worker running this task (host %s, pid %d) was killed by signal %d (SIG%s)",
             w->name, (int)r->pid, -r->code, sigabbrev_np(-r->code) ? sigabbrev_np(-r->code) : "?");
  else if (r->status == MPE_EDIED)
    snprintf(text, n, "Pool: the worker running this task (host %s, pid %d) exited with code %d", w->name,
             (int)r->pid, r->code);
  else if (r->status == MPE_ETIMEDOUT)
    snprintf(text, n, "Pool: task timed out after %g s; its worker (host %s, pid %d) was killed and replaced",
             rp->timeout, w->name, (int)r->pid);
  else if (r->status == MPE_EBROKEN) {
    const char *why = rp->pool ? mpe_pool_error(rp->pool) : NULL;
    snprintf(text, n, "Pool: on host %s: %s", w->name, why ? why : mpe_strerror(r->status));
  } else
    snprintf(text, n, "Pool: on host %s: %s", w->name, mpe_strerror(r->status));
}

/* The reply for batch h into buf. */
static int encode(host *w, held *h, mpe_buf *buf) {
  mpe__reply_hdr hdr = {
      .bid = (uint64_t)h->t.seq, .n = h->n, .dt = (mpe_time() - h->start) / (h->n ? h->n : 1)};
  buf->len = 0;
  if (mpe_buf_add(buf, &hdr, sizeof hdr) < 0) return -ENOMEM;
  for (uint32_t k = 0; k < h->n; k++) {
    mpe_task_result *r = &h->res[k];
    char text[600];
    const char *data = r->data;
    size_t len = r->len;
    if (r->status && r->status != MPE_ETASK) {
      failure_text(w, h, r, text, sizeof text);
      data = text;
      len = strlen(text);
    }
    if (r->status) w->failed++;
    else w->done++;
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
      if (rc == 0) rc = mpe__broker_complete(w->r, w->rp[h->rp].run, w->me, 1, &h->t, &d, &buf->len, &acc);
      if (rc < 0 && !mpe__redis_ok(w->r)) return rc; /* else the run is gone or broken: dropped */
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
    int still = 0, rc = mpe__broker_renew(w->r, w->rp[h->rp].run, w->me, 1, &h->t, &still);
    if (rc < 0 && !mpe__redis_ok(w->r)) return rc;
    h->lost = rc < 0 || !still;
    h->renewed = now;
  }
  return 0;
}

/* mpe:hosts: me -> "name pid procs busy done failed seen" (seen: this
 * host's clock, seconds). */
static int beat(host *w) {
  double now = mpe_time();
  if (now - w->beat < 1.0) return 0;
  w->beat = now;
  char v[400];
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  snprintf(v, sizeof v, "%s %d %d %d %llu %llu %.3f", w->name, (int)getpid(), w->procs, w->nh,
           (unsigned long long)w->done, (unsigned long long)w->failed, (double)ts.tv_sec + ts.tv_nsec / 1e9);
  const char *argv[] = {"HSET", "mpe:hosts", w->me, v};
  redisReply *rep;
  int rc = mpe__redis_cmd(w->r, &rep, 4, argv, NULL);
  if (rc < 0) return rc;
  mpe__redis_free(rep);
  return 0;
}

/* Takes the results there are; with one run at work, waits up to wait for
 * the first (the engine's own wait), else polls the runs' pools and sleeps
 * wait when none had any. */
static int collect_results(host *w, double wait) {
  int got = 0, busy = 0;
  for (int p = 0; p < MAXRUNS; p++)
    busy += w->rp[p].pool && w->rp[p].held;
  for (int p = 0; p < MAXRUNS; p++) {
    runpool *rp = &w->rp[p];
    if (!rp->pool || !rp->held) continue;
    mpe_task_result r;
    int rc;
    double first = busy == 1 ? wait : 0;
    while ((rc = mpe_pool_collect(rp->pool, first, &r)) == 0) {
      first = 0;
      got++;
      int i;
      for (i = 0; i < w->nh; i++) {
        held *h = &w->h[i];
        if (h->rp == p && r.id >= h->first && r.id < h->first + h->n) break;
      }
      if (i == w->nh) {
        mpe_task_result_clear(&r);
        continue;
      }
      w->h[i].res[r.id - w->h[i].first] = r;
      w->h[i].got++;
    }
    if (rc != MPE_ETIMEDOUT && rc != MPE_EEMPTY && rc != MPE_EBROKEN && rc != MPE_EINTR) return rc;
  }
  if (!got && busy > 1) mpe_sleep(0.002, NULL);
  return 0;
}

/* One round: renew, claim, take results, complete. */
static int round_(host *w, mpe_buf *buf, mpe_pool_fn fn, void *ctx) {
  int rc = renew(w);
  if (rc < 0) return rc;
  if ((rc = beat(w)) < 0) return rc;
  static char runs[256][128];
  int n = mpe__broker_runs(w->r, runs, 256);
  if (n < 0) return n;
  reap_pools(w, runs, n);
  for (int i = 0; i < n && w->cap - w->nh > 0; i++) /* a run whose keys are not ours to read is skipped */
    if ((rc = claim(w, runs[i], w->cap - w->nh, fn, ctx)) < 0 && !mpe__redis_ok(w->r)) return rc;
  if (!w->nh) /* idle: until a driver submits (or a second, for the heartbeat) */
    return mpe__broker_wait_work(w->r, w->events, 1.0) < 0 ? -EIO : 0;
  if ((rc = collect_results(w, 0.05)) < 0) return rc;
  return complete(w, buf);
}

static void handback(host *w) {
  for (int i = w->nh; i-- > 0;) {
    int back = 0;
    if (!w->h[i].lost) mpe__broker_handback(w->r, w->rp[w->h[i].rp].run, w->me, 1, &w->h[i].t, &back);
    drop(w, i);
  }
  const char *argv[] = {"HDEL", "mpe:hosts", w->me};
  redisReply *rep;
  if (mpe__redis_cmd(w->r, &rep, 3, argv, NULL) == 0) mpe__redis_free(rep);
}

int mpe_broker_worker_run(const char *url, int procs, const char *name, mpe_pool_fn fn, void *ctx,
                          const mpe_pool_options *opts) {
  if (!url || !fn || procs < 0) return -EINVAL;
  host *w = calloc(1, sizeof *w);
  if (!w) return -ENOMEM;
  if (name)
    snprintf(w->name, sizeof w->name, "%s", name);
  else if (gethostname(w->name, sizeof w->name - 1) < 0)
    strcpy(w->name, "host");
  snprintf(w->me, sizeof w->me, "%s/%d", w->name, (int)getpid());
  snprintf(host_name, sizeof host_name, "%s", w->name);
  host_url = url;
  char err[512];
  int rc, said = 0;
  double pause = 0.05;
  /* a broker not there yet is waited for (a bad URL or password is not) */
  while ((rc = mpe__redis_connect(&w->r, url, 5.0, err, sizeof err)) < 0 && rc != -EINVAL && rc != -EACCES &&
         rc != -ENOMEM && !mpe__stop_requested()) {
    if (!said++ && host_event) {
      char line[700];
      snprintf(line, sizeof line, "worker %s: waiting for the broker (%s)", w->name, err);
      host_event(host_event_arg, line);
    }
    mpe_sleep(pause, NULL);
    pause = pause * 2 < 2 ? pause * 2 : 2;
  }
  if (rc < 0) {
    free(w);
    return rc == MPE_EINTR || mpe__stop_requested() ? 0 : rc;
  }
  if (opts) host_opts = *opts;
  w->base = host_opts;
  w->procs = procs ? procs : mpe_cpu_count();
  w->base.processes = w->procs;
  w->cap = 2 * w->procs;
  w->h = calloc((size_t)w->cap, sizeof *w->h);
  say(w, "serving", "");
  mpe_buf buf = {0};
  rc = w->h ? 0 : -ENOMEM;
  while (rc == 0 && !mpe__stop_requested()) {
    int r = round_(w, &buf, fn, ctx);
    if (r == MPE_EINTR) continue;
    if (r < 0 && !mpe__redis_ok(w->r)) { /* the broker is lost: back off until it is there */
      say(w, "lost", "; reconnecting");
      while (!mpe__stop_requested() && mpe__redis_reconnect(w->r, mpe_time() + 1) < 0) {
      }
      if (mpe__redis_ok(w->r)) say(w, "reconnected to", "");
    } else if (r == -ENOMEM) {
      rc = r;
    } else if (r < 0) { /* what the broker holds is not as it should be: the host goes on */
      mpe_sleep(0.1, NULL);
    }
  }
  if (mpe__redis_ok(w->r)) handback(w);
  while (w->nh)
    drop(w, 0);
  for (int i = 0; i < MAXRUNS; i++)
    if (w->rp[i].pool) mpe_pool_free(w->rp[i].pool, 1);
  say(w, "stopped serving", rc < 0 ? " (on an error)" : "");
  mpe__redis_close(w->r);
  free(w->h);
  free(buf.data);
  free(w);
  return rc;
}
