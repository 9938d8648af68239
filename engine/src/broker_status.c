/* broker_status.c - what `mpengine status` shows: the worker hosts that
 * said they are alive (mpe:hosts, written by broker_worker.c about once a
 * second) and the runs in progress with their task counts (the run's hash:
 * c:sent by the driver, c:running, c:done, c:failed by the scripts of
 * broker.c; queued is what is left). A host silent for more than
 * HOST_FORGET seconds (killed without handing back) is dropped here. */
#define _GNU_SOURCE
#include <errno.h>
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "broker.h"
#include "internal.h"

#define HOST_FORGET 300.0

static double wall(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static long long num(redisReply *v) {
  return v && v->type == REDIS_REPLY_STRING ? strtoll(v->str, NULL, 10) : 0;
}

static int hosts(mpe__redis *r, mpe_broker_host_info *out, int max) {
  const char *argv[] = {"HGETALL", "mpe:hosts"};
  redisReply *rep;
  int rc = mpe__redis_cmd(r, &rep, 2, argv, NULL);
  if (rc < 0) return rc;
  int n = 0;
  double now = wall();
  for (size_t i = 0; rep->type == REDIS_REPLY_ARRAY && i + 1 < rep->elements; i += 2) {
    redisReply *k = rep->element[i], *v = rep->element[i + 1];
    if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING) continue;
    mpe_broker_host_info h = {0};
    unsigned long long done = 0, failed = 0;
    double seen = 0;
    if (sscanf(v->str, "%127s %d %d %d %llu %llu %lf", h.name, &h.pid, &h.procs, &h.busy, &done, &failed,
               &seen) != 7)
      continue;
    h.done = done;
    h.failed = failed;
    h.seen = now - seen;
    if (!(h.seen > -1e9 && h.seen < 1e12)) h.seen = -1; /* not a time (written by hand?) */
    if (h.seen > HOST_FORGET) { /* gone long ago: forgotten */
      const char *del[] = {"HDEL", "mpe:hosts", k->str};
      redisReply *d;
      if (mpe__redis_cmd(r, &d, 3, del, NULL) == 0) mpe__redis_free(d);
      continue;
    }
    if (n < max) out[n] = h;
    n++;
  }
  mpe__redis_free(rep);
  return n;
}

static int runs(mpe__redis *r, mpe_broker_run_info *out, int max) {
  char names[64][128]; /* each < 128 bytes (mpe__broker_runs) */
  int n = mpe__broker_runs(r, names, 64);
  if (n < 0) return n;
  int k = 0;
  for (int i = 0; i < n; i++) {
    char hash[160] = "mpe:run:";
    size_t len = strnlen(names[i], 127);
    memcpy(hash + 8, names[i], len);
    hash[8 + len] = 0;
    const char *argv[] = {"HMGET", hash, "c:script_path", "c:sent", "c:running", "c:done", "c:failed"};
    redisReply *rep;
    int rc = mpe__redis_cmd(r, &rep, 7, argv, NULL);
    if (rc < 0) return rc;
    if (rep->type == REDIS_REPLY_ARRAY && rep->elements == 5) {
      mpe_broker_run_info ri = {0};
      memcpy(ri.run, names[i], sizeof ri.run);
      ri.run[sizeof ri.run - 1] = 0;
      redisReply *s = rep->element[0];
      snprintf(ri.script, sizeof ri.script, "%s", s->type == REDIS_REPLY_STRING ? s->str : "-");
      long long sent = num(rep->element[1]);
      ri.running = num(rep->element[2]);
      ri.done = num(rep->element[3]);
      ri.failed = num(rep->element[4]);
      ri.queued = sent - ri.running - ri.done - ri.failed;
      if (ri.queued < 0) ri.queued = 0;
      if (ri.running < 0) ri.running = 0;
      if (k < max) out[k] = ri;
      k++;
    }
    mpe__redis_free(rep);
  }
  return k;
}

int mpe_broker_status(const char *url, mpe_broker_host_info *h, int *nh, mpe_broker_run_info *ru, int *nr,
                      char *err, size_t errlen) {
  mpe__redis *r;
  int rc = mpe__redis_connect(&r, url, 5.0, err, errlen);
  if (rc < 0) return rc;
  int a = hosts(r, h, *nh), b = a < 0 ? a : runs(r, ru, *nr);
  if (a < 0 || b < 0) snprintf(err, errlen, "%s", mpe__redis_error(r));
  mpe__redis_close(r);
  if (a < 0) return a;
  if (b < 0) return b;
  *nh = a;
  *nr = b;
  return 0;
}
