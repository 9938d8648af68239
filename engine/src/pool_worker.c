/* pool_worker.c - the worker side of the pool: what runs where tasks run.
 *
 * A worker limits its memory (memory_limit), runs the host's setup hook and
 * the initializer once (a nonzero return is reported as INIT_FAILED, with
 * the text setup gave, and the worker leaves: the parent breaks the pool
 * rather than start workers that fail forever), and the host's at_exit hook
 * when it leaves normally;
 * then takes batches until told to quit. For each task it writes its stamp
 * first (batch, index + 1, start time when timed, then seq), calls fn, and
 * clears the index after: if the worker dies, the stamp names the task that
 * was running, or says it was between tasks; the start time is written
 * before the index, so a timeout is never judged by an earlier task's start. A stamp is a few stores to a
 * cache line nobody else writes, so every task is stamped and the culprit
 * is always known exactly.
 *
 * Replies go out when the batch ends, or sooner when it runs long (every
 * REPLY_EVERY seconds, looked at after every task in a batch of up to 64,
 * every 16th in a longer one), so a worker killed late in a long batch
 * loses little. After maxtasks tasks the worker leaves with code 0 (the parent
 * gives it no more than that, and replaces it).
 *
 * Invariant: a task's result is in exactly one reply; replies of a batch
 * cover consecutive ranges in order. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>

#include "pool.h"

#define REPLY_EVERY 0.002

int mpe_buf_add(mpe_buf *b, const void *data, size_t n) {
  if (b->cap - b->len < n) {
    size_t cap = b->cap ? b->cap : 64;
    while (cap - b->len < n) {
      if (cap > SIZE_MAX / 2) return -ENOMEM;
      cap *= 2;
    }
    char *d = realloc(b->data, cap);
    if (!d) return -ENOMEM;
    b->data = d;
    b->cap = cap;
  }
  if (n && data) memcpy(b->data + b->len, data, n);
  b->len += n;
  return 0;
}

int mpe_limit_memory(size_t extra) {
  long long used_kb = 0;
  char line[256];
  FILE *f = fopen("/proc/self/status", "re");
  while (f && fgets(line, sizeof line, f))
    if (sscanf(line, "VmData: %lld kB", &used_kb) == 1) break;
  if (f) fclose(f);
  struct rlimit r;
  r.rlim_cur = r.rlim_max = (rlim_t)used_kb * 1024 + (rlim_t)extra;
  return setrlimit(RLIMIT_DATA, &r) == 0 ? 0 : -errno;
}

static uint64_t now_ns(void) { return (uint64_t)(mpe_time() * 1e9); }

/* Sends the results of tasks from .. from + n - 1 (reply->len > 0). */
static int flush(const mpe__worker_io *io, mpe_buf *reply, uint64_t bid, uint32_t from,
                 uint32_t n, double dt) {
  mpe__reply_hdr h = {.bid = bid, .slot = (uint32_t)io->slot, .from = from, .n = n, .dt = dt};
  memcpy(reply->data, &h, sizeof h);
  int rc = io->put(io->self, reply->data, reply->len, MPE__REPLY_RESULTS);
  reply->len = sizeof h;
  return rc;
}

static int run_batch(const mpe__pool_cfg *cfg, const mpe__worker_io *io, const char *msg,
                     size_t len, mpe_buf *reply, mpe_buf *out, size_t *done) {
  mpe__batch_hdr b;
  if (len < sizeof b) return MPE_ECORRUPT;
  memcpy(&b, msg, sizeof b);
  const char *lens = msg + sizeof b, *in = lens + (size_t)b.n * sizeof(uint32_t);
  mpe__stamp *st = io->stamp;
  atomic_store_explicit(&st->batch, b.bid, memory_order_relaxed);
  reply->len = sizeof(mpe__reply_hdr);
  double t_reply = mpe_time();
  uint32_t from = 0, mask = b.n <= 64 ? 0 : 15; /* a short batch: slow tasks, look at every one */
  for (uint32_t i = 0; i < b.n; i++) {
    uint32_t n;
    memcpy(&n, lens + (size_t)i * sizeof n, sizeof n);
    /* the start time before the index: a reader that sees this task's
     * index sees its start, never the previous task's (pool_local.c) */
    if (cfg->timed) atomic_store_explicit(&st->since_ns, now_ns(), memory_order_relaxed);
    atomic_store_explicit(&st->task, (uint64_t)i + 1, memory_order_release);
    atomic_fetch_add_explicit(&st->seq, 1, memory_order_release);
    out->len = 0;
    int code = cfg->fn(cfg->ctx, in, n, out);
    atomic_store_explicit(&st->task, 0, memory_order_release);
    in += n;
    mpe__result_hdr r = {code, (uint32_t)out->len};
    if (mpe_buf_add(reply, &r, sizeof r) < 0 || mpe_buf_add(reply, out->data, out->len) < 0)
      return -ENOMEM;
    ++*done;
    int last = i + 1 == b.n;
    if (last || (i & mask) == mask) {
      double now = mpe_time();
      if (last || now - t_reply > REPLY_EVERY) {
        int rc = flush(io, reply, b.bid, from, i + 1 - from, (now - t_reply) / (i + 1 - from));
        if (rc < 0) return rc;
        from = i + 1;
        t_reply = now;
      }
    }
  }
  atomic_store_explicit(&st->batch, 0, memory_order_release);
  return 0;
}

/* Tells the parent this worker cannot start: code, then the text in why. */
static void init_failed(const mpe__worker_io *io, int code, mpe_buf *why) {
  mpe__reply_hdr h = {.slot = (uint32_t)io->slot, .n = (uint32_t)code};
  if (mpe_buf_add(why, NULL, sizeof h) == 0) {
    memmove(why->data + sizeof h, why->data, why->len - sizeof h);
    memcpy(why->data, &h, sizeof h);
    io->put(io->self, why->data, why->len, MPE__REPLY_INIT_FAILED);
  } else {
    io->put(io->self, &h, sizeof h, MPE__REPLY_INIT_FAILED);
  }
}

int mpe__pool_worker_run(const mpe__pool_cfg *cfg, const mpe__worker_io *io) {
  mpe_buf why = {0};
  int code = 0;
  if (cfg->memory_limit && mpe_limit_memory(cfg->memory_limit) < 0) code = -1;
  if (code == 0 && cfg->setup) code = cfg->setup(cfg->initarg, &why);
  if (code == 0 && cfg->init) code = cfg->init(cfg->initarg);
  if (code != 0) {
    init_failed(io, code, &why);
    free(why.data);
    return 0;
  }
  free(why.data);
  mpe_buf reply = {0}, out = {0};
  size_t done = 0;
  int rc = mpe_buf_add(&reply, &(mpe__reply_hdr){0}, sizeof(mpe__reply_hdr));
  while (rc == 0) {
    const char *msg;
    size_t len;
    rc = io->next(io->self, &msg, &len);
    if (rc != 0) break;
    rc = run_batch(cfg, io, msg, len, &reply, &out, &done);
    if (cfg->maxtasks && done >= cfg->maxtasks) break;
  }
  free(reply.data);
  free(out.data);
  if (rc >= 0 && cfg->at_exit) cfg->at_exit(cfg->initarg);
  return rc < 0 ? 3 : 0;
}
