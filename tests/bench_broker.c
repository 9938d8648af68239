/* bench_broker.c - the broker protocol's figures on this machine, beside
 * Redis's own round trip (PING) as the floor: one task's trip (submit, a
 * worker's blocking claim, its completion, the driver's blocking read of the
 * result), and items/s through one worker host process in batches of 100
 * 8-byte items. Prints medians and ranges of 5 runs; asserts nothing but
 * that every result came back once.
 * Usage (beside a server, tests/broker/with_redis.sh): bench_broker [BATCHES] */
#define _GNU_SOURCE
#include <hiredis/hiredis.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "broker.h"
#include "check.h"

enum { ITEMS = 100, ROUNDS = 5 };
static const char *url;

static mpe__redis *conn(void) {
  mpe__redis *r;
  char err[1024];
  if (mpe__redis_connect(&r, url, 5, err, sizeof err) < 0) {
    fprintf(stderr, "%s\n", err);
    exit(1);
  }
  return r;
}

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static void report(const char *what, double *v, int n, const char *unit, double scale) {
  qsort(v, (size_t)n, sizeof *v, cmp);
  printf("%-44s median %10.1f %s  (range %.1f - %.1f)\n", what, v[n / 2] * scale, unit, v[0] * scale,
         v[n - 1] * scale);
}

static pid_t serve(const char *run) {
  pid_t p = fork();
  CHECK(p >= 0);
  if (p) return p;
  mpe__redis *r = conn();
  mpe__broker_task t[16];
  const void *data[16];
  size_t lens[16];
  int acc[16];
  char me[64];
  snprintf(me, sizeof me, "bench/%d", (int)getpid());
  for (;;) {
    mpe__broker_hold h;
    int n = mpe__broker_claim(r, run, me, 16, 1.0, t, &h);
    if (n < 0) break;
    for (int i = 0; i < n; i++) data[i] = t[i].data, lens[i] = t[i].len; /* echo */
    if (n > 0 && mpe__broker_complete(r, run, me, n, t, data, lens, acc) < 0) break;
    mpe__broker_release(&h);
  }
  _exit(0);
}

int main(int argc, char **argv) {
  url = getenv("MPE_TEST_BROKER");
  if (!url) return 77;
  int batches = argc > 1 ? atoi(argv[1]) : 2000;
  mpe__redis *d = conn();
  double v[200];
  /* the floor: one PING */
  for (int i = 0; i < 200; i++) {
    redisReply *rep;
    double t0 = mpe_time();
    CHECK_RC(mpe__redis_cmd(d, &rep, 1, (const char *[]){"PING"}, NULL), 0);
    v[i] = mpe_time() - t0;
    mpe__redis_free(rep);
  }
  report("Redis round trip (PING)", v, 200, "us", 1e6);
  char run[64];
  snprintf(run, sizeof run, "bench-%d", (int)getpid());
  CHECK_RC(mpe__broker_open(d, run, NULL), 0);
  pid_t w = serve(run);
  char last[48] = "0";
  /* one task's trip */
  for (int i = 0; i < 200; i++) {
    const void *one[] = {"x"};
    size_t l1[] = {1};
    mpe__broker_result res[1];
    mpe__broker_hold h;
    double t0 = mpe_time();
    CHECK_RC(mpe__broker_submit(d, run, i, 1, one, l1), 1);
    CHECK_RC(mpe__broker_results(d, run, last, 5, res, 1, &h), 1);
    v[i] = mpe_time() - t0;
    mpe__broker_release(&h);
  }
  report("one task: submit, claim, complete, result", v, 200, "us", 1e6);
  /* items/s in batches of ITEMS */
  uint64_t *blob = calloc(ITEMS, sizeof *blob);
  const void **data = calloc((size_t)batches, sizeof *data);
  size_t *lens = calloc((size_t)batches, sizeof *lens);
  mpe__broker_result *res = calloc(256, sizeof *res);
  for (int i = 0; i < batches; i++) data[i] = blob, lens[i] = ITEMS * sizeof *blob;
  int64_t seq = 1000;
  for (int round = 0; round < ROUNDS; round++) {
    double t0 = mpe_time();
    for (int i = 0; i < batches; i += 100) {
      int n = batches - i < 100 ? batches - i : 100;
      CHECK_RC(mpe__broker_submit(d, run, seq, n, data + i, lens + i), n);
      seq += n;
    }
    for (int got = 0; got < batches;) {
      mpe__broker_hold h;
      int n = mpe__broker_results(d, run, last, 5, res, 256, &h);
      CHECK(n > 0);
      got += n;
      mpe__broker_release(&h);
    }
    v[round] = (double)batches * ITEMS / (mpe_time() - t0);
  }
  char what[80];
  snprintf(what, sizeof what, "items/s, batches of %d, 1 worker process", ITEMS);
  report(what, v, ROUNDS, "k/s", 1e-3);
  CHECK_RC(mpe__broker_close(d, run), 0);
  CHECK(waitpid(w, NULL, 0) == w);
  free(blob);
  free(data);
  free(lens);
  free(res);
  mpe__redis_close(d);
  return 0;
}
