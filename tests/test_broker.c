/* test_broker.c - the broker's task protocol against a real Redis
 * (tests/broker/with_redis.sh): every batch exactly one result while worker
 * hosts die holding work; a holder that stops renewing loses its batch, one
 * that renews keeps it; a late completion is fenced off; a batch lost
 * `attempts` times fails naming the last host; a dead driver's keys expire
 * and no worker brings them back. Leases are short; the tests wait on what
 * Redis holds, never on a duration. */
#define _GNU_SOURCE
#include <errno.h>
#include <hiredis/hiredis.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "broker.h"
#include "check.h"

static const char *url;
static char err[1024];

static mpe__redis *conn(void) {
  mpe__redis *r;
  if (mpe__redis_connect(&r, url, 5, err, sizeof err) < 0) {
    fprintf(stderr, "connect: %s\n", err);
    exit(1);
  }
  return r;
}

/* A run id of its own for each test and process. */
static void run_id(char *buf, size_t n, const char *what) {
  snprintf(buf, n, "test-%s-%d", what, (int)getpid());
}

static long long integer(mpe__redis *r, int argc, const char **argv) {
  redisReply *rep;
  CHECK_RC(mpe__redis_cmd(r, &rep, argc, argv, NULL), 0);
  CHECK(rep->type == REDIS_REPLY_INTEGER);
  long long v = rep->integer;
  mpe__redis_free(rep);
  return v;
}

/* The result a worker gives for a batch's bytes. */
static void answer(const mpe__broker_task *t, char *out, size_t n) {
  snprintf(out, n, "done:%.*s", (int)t->len, t->data);
}

/* Claims until it has something (or the run is gone, or give_up passes). */
static int claim_some(mpe__redis *r, const char *run, const char *me, int max, mpe__broker_task *t,
                      mpe__broker_hold *h, double give_up) {
  for (;;) {
    int n = mpe__broker_claim(r, run, me, max, 0.02, t, h);
    if (n != 0) return n;
    mpe__broker_release(h);
    CHECK(mpe_time() < give_up);
  }
}

/* Completes n claimed batches with their answers: how many were accepted. */
static int complete(mpe__redis *r, const char *run, const char *me, int n, const mpe__broker_task *t) {
  char res[64][80];
  const void *data[64] = {0};
  size_t lens[64] = {0};
  int acc[64] = {0}, got = 0;
  CHECK(n <= 64);
  for (int i = 0; i < n; i++) {
    answer(&t[i], res[i], sizeof res[i]);
    data[i] = res[i];
    lens[i] = strlen(res[i]);
  }
  int rc = mpe__broker_complete(r, run, me, n, t, data, lens, acc);
  if (rc < 0) return rc;
  for (int i = 0; i < n; i++) got += acc[i];
  return got;
}

/* A worker host process: serves the run until it is gone. */
static void worker(const char *run, const char *me, int die_after_claim) {
  mpe__redis *r = conn();
  mpe__broker_task t[8];
  mpe__broker_hold h;
  for (;;) {
    int n = mpe__broker_claim(r, run, me, 8, 0.05, t, &h);
    if (n == -ENOENT) break;
    if (n < 0) fprintf(stderr, "%s: claim: %d %s\n", me, n, mpe__redis_error(r));
    CHECK(n >= 0);
    if (n > 0 && die_after_claim) raise(SIGKILL); /* the host lost, holding n batches */
    if (n > 0) CHECK(complete(r, run, me, n, t) >= 0);
    mpe__broker_release(&h);
  }
  mpe__redis_close(r);
  _exit(0);
}

TEST(exactly_one_result_each) {
  enum { N = 300, WORKERS = 3 };
  char run[64];
  run_id(run, sizeof run, "once");
  mpe__redis *d = conn();
  mpe__broker_opts o = {0.3, 5, 30};
  int doomed_ran = 0;
  CHECK_RC(mpe__broker_open(d, run, &o), 0);
  CHECK_RC(mpe__broker_open(d, run, &o), -EEXIST);
  char in[N][32];
  const void *data[N];
  size_t lens[N];
  for (int i = 0; i < N; i++) {
    snprintf(in[i], sizeof in[i], "task %d", i);
    data[i] = in[i];
    lens[i] = strlen(in[i]);
  }
  /* in chunks, pipelined */
  for (int i = 0; i < N; i += 100) CHECK_RC(mpe__broker_submit(d, run, i, 100, data + i, lens + i), 100);
  /* two hosts die holding work (each claims, then is killed), then three serve */
  fflush(stdout);
  pid_t pids[WORKERS + 2];
  for (int i = 0; i < WORKERS + 2; i++) {
    int k = (i + WORKERS) % (WORKERS + 2); /* the doomed first */
    pids[k] = fork();
    CHECK(pids[k] >= 0);
    if (pids[k] == 0) {
      char me[64];
      snprintf(me, sizeof me, "%s%d/%d", k < WORKERS ? "host" : "doomed", k, (int)getpid());
      worker(run, me, k >= WORKERS);
    }
    if (k >= WORKERS) {
      int st;
      CHECK(waitpid(pids[k], &st, 0) == pids[k]);
      if (!WIFSIGNALED(st) || WTERMSIG(st) != SIGKILL) fprintf(stderr, "doomed host: status %#x\n", st);
      CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
      doomed_ran++;
    }
  }
  int seen[N] = {0}, got = 0;
  char last[48] = "0";
  mpe__broker_result res[64];
  double give_up = mpe_time() + 60;
  while (got < N) {
    mpe__broker_hold h;
    int n = mpe__broker_results(d, run, last, 0.5, res, 64, &h);
    CHECK(n >= 0);
    for (int i = 0; i < n; i++) {
      CHECK(res[i].kind == MPE__BROKER_OK && res[i].seq >= 0 && res[i].seq < N);
      CHECK(seen[res[i].seq]++ == 0); /* never a second result */
      char want[80];
      snprintf(want, sizeof want, "done:task %d", (int)res[i].seq);
      CHECK(res[i].len == strlen(want) && !memcmp(res[i].data, want, res[i].len));
      CHECK(strncmp(res[i].host, "doomed", 6) != 0);
      got++;
    }
    mpe__broker_release(&h);
    CHECK(mpe_time() < give_up);
    CHECK_RC(mpe__broker_refresh(d, run), 1);
  }
  /* nothing is left that could give another result */
  char q[128];
  snprintf(q, sizeof q, "mpe:run:%s:q", run);
  CHECK(integer(d, 2, (const char *[]){"XLEN", q}) == 0);
  redisReply *rep;
  CHECK_RC(mpe__redis_cmd(d, &rep, 3, (const char *[]){"XPENDING", q, "w"}, NULL), 0);
  CHECK(rep->type == REDIS_REPLY_ARRAY && rep->element[0]->integer == 0);
  mpe__redis_free(rep);
  CHECK_RC(mpe__broker_close(d, run), 0);
  for (int i = 0; i < WORKERS; i++) {
    int st;
    CHECK(waitpid(pids[i], &st, 0) == pids[i] && WIFEXITED(st) && WEXITSTATUS(st) == 0);
  }
  CHECK(doomed_ran == 2); /* both claimed work and died with it */
  mpe__redis_close(d);
}

TEST(takeover_and_fencing) {
  char run[64];
  run_id(run, sizeof run, "fence");
  mpe__redis *d = conn(), *a = conn(), *b = conn();
  mpe__broker_opts o = {0.2, 3, 30};
  CHECK_RC(mpe__broker_open(d, run, &o), 0);
  const void *data[] = {"x"};
  size_t lens[] = {1};
  CHECK_RC(mpe__broker_submit(d, run, 7, 1, data, lens), 1);
  mpe__broker_task ta[1], tb[1];
  mpe__broker_hold ha, hb;
  CHECK_RC(claim_some(a, run, "hostA/1", 1, ta, &ha, mpe_time() + 30), 1);
  CHECK(ta[0].token == 1 && ta[0].seq == 7);
  /* A goes silent: B takes the batch over once the lease lapses */
  CHECK_RC(claim_some(b, run, "hostB/1", 1, tb, &hb, mpe_time() + 30), 1);
  CHECK(!strcmp(ta[0].id, tb[0].id) && tb[0].token == 2 && tb[0].seq == 7);
  int held = -1;
  CHECK_RC(mpe__broker_renew(a, run, "hostA/1", 1, ta, &held), 0);
  CHECK(held == 0);
  /* A comes back and completes: dropped; B's result is the one */
  CHECK_RC(complete(a, run, "hostA/1", 1, ta), 0);
  CHECK_RC(complete(b, run, "hostB/1", 1, tb), 1);
  CHECK_RC(complete(a, run, "hostA/1", 1, ta), 0);
  CHECK_RC(complete(b, run, "hostB/1", 1, tb), 0);
  char last[48] = "0";
  mpe__broker_result res[4];
  mpe__broker_hold h;
  CHECK_RC(mpe__broker_results(d, run, last, 0, res, 4, &h), 1);
  CHECK(res[0].kind == MPE__BROKER_OK && res[0].seq == 7 && !strcmp(res[0].host, "hostB"));
  mpe__broker_release(&h);
  CHECK_RC(mpe__broker_results(d, run, last, 0, res, 4, &h), 0);
  mpe__broker_release(&ha);
  mpe__broker_release(&hb);
  CHECK_RC(mpe__broker_close(d, run), 0);
  mpe__redis_close(a);
  mpe__redis_close(b);
  mpe__redis_close(d);
}

TEST(renewing_holder_keeps_its_batch) {
  char run[64];
  run_id(run, sizeof run, "renew");
  mpe__redis *d = conn(), *a = conn(), *b = conn();
  mpe__broker_opts o = {1.0, 3, 30};
  CHECK_RC(mpe__broker_open(d, run, &o), 0);
  const void *data[] = {"y"};
  size_t lens[] = {1};
  CHECK_RC(mpe__broker_submit(d, run, 0, 1, data, lens), 1);
  mpe__broker_task ta[1], tb[1];
  mpe__broker_hold ha, hb;
  CHECK_RC(claim_some(a, run, "hostA/2", 1, ta, &ha, mpe_time() + 30), 1);
  /* for three leases, A renews and B finds nothing to take */
  double until = mpe_time() + 3 * o.lease;
  while (mpe_time() < until) {
    int held = 0;
    CHECK_RC(mpe__broker_renew(a, run, "hostA/2", 1, ta, &held), 0);
    CHECK(held == 1);
    CHECK_RC(mpe__broker_claim(b, run, "hostB/2", 1, 0, tb, &hb), 0);
    mpe__broker_release(&hb);
    CHECK_RC(mpe_sleep(o.lease / 3, NULL), 0);
  }
  CHECK_RC(complete(a, run, "hostA/2", 1, ta), 1);
  mpe__broker_release(&ha);
  CHECK_RC(mpe__broker_close(d, run), 0);
  mpe__redis_close(a);
  mpe__redis_close(b);
  mpe__redis_close(d);
}

TEST(lost_attempts_times_fails) {
  char run[64];
  run_id(run, sizeof run, "lost");
  mpe__redis *d = conn(), *w = conn();
  mpe__broker_opts o = {0.1, 3, 30};
  CHECK_RC(mpe__broker_open(d, run, &o), 0);
  const void *data[] = {"z"};
  size_t lens[] = {1};
  CHECK_RC(mpe__broker_submit(d, run, 42, 1, data, lens), 1);
  /* three hosts in turn claim it and vanish */
  const char *hosts[] = {"hostA/3", "hostB/3", "hostC/3"};
  for (int i = 0; i < 3; i++) {
    mpe__broker_task t[1];
    mpe__broker_hold h;
    CHECK_RC(claim_some(w, run, hosts[i], 1, t, &h, mpe_time() + 30), 1);
    CHECK(t[0].token == (uint64_t)i + 1 && t[0].seq == 42);
    mpe__broker_release(&h);
  }
  /* the next claimer gets nothing: the batch fails, naming the last host */
  char last[48] = "0";
  mpe__broker_result res[4];
  mpe__broker_hold h;
  double give_up = mpe_time() + 30;
  int n;
  for (;;) {
    mpe__broker_task t[1];
    CHECK_RC(mpe__broker_claim(w, run, "hostD/3", 1, 0.02, t, &h), 0);
    mpe__broker_release(&h);
    if ((n = mpe__broker_results(d, run, last, 0.02, res, 4, &h)) != 0) break;
    mpe__broker_release(&h);
    CHECK(mpe_time() < give_up);
  }
  CHECK(n == 1 && res[0].kind == MPE__BROKER_LOST && res[0].seq == 42 && res[0].lost == 3);
  char text[200];
  mpe__broker_lost_text(&res[0], text, sizeof text);
  CHECK(!strcmp(text, "Pool: task lost 3 times (last on host hostC)"));
  mpe__broker_release(&h);
  CHECK_RC(mpe__broker_close(d, run), 0);
  mpe__redis_close(w);
  mpe__redis_close(d);
}

static int exists(mpe__redis *r, const char *key) {
  return (int)integer(r, 2, (const char *[]){"EXISTS", key});
}

TEST(dead_driver_leaves_nothing) {
  char run[64];
  run_id(run, sizeof run, "dead");
  int ready[2];
  CHECK(pipe(ready) == 0);
  fflush(stdout);
  pid_t drv = fork();
  CHECK(drv >= 0);
  if (drv == 0) {
    mpe__redis *d = conn();
    mpe__broker_opts o = {0.2, 3, 0.3};
    const void *data[] = {"a", "b", "c"};
    size_t lens[] = {1, 1, 1};
    if (mpe__broker_open(d, run, &o) < 0 || mpe__broker_submit(d, run, 0, 3, data, lens) != 3) _exit(1);
    if (write(ready[1], "r", 1) != 1) _exit(1);
    for (;;) { /* the live driver refreshes its keys */
      mpe__broker_refresh(d, run);
      mpe_sleep(0.05, NULL);
    }
  }
  char c;
  CHECK(read(ready[0], &c, 1) == 1);
  mpe__redis *w = conn();
  mpe__broker_task t[1];
  mpe__broker_hold h;
  CHECK_RC(mpe__broker_claim(w, run, "hostA/4", 1, 0, t, &h), 1);
  CHECK(kill(drv, SIGKILL) == 0 && waitpid(drv, NULL, 0) == drv);
  char keys[4][128];
  snprintf(keys[0], sizeof keys[0], "mpe:run:%s", run);
  snprintf(keys[1], sizeof keys[1], "mpe:run:%s:q", run);
  snprintf(keys[2], sizeof keys[2], "mpe:run:%s:r", run);
  double give_up = mpe_time() + 30;
  for (;;) {
    int left = exists(w, keys[0]) + exists(w, keys[1]) + exists(w, keys[2]);
    redisReply *rep;
    CHECK_RC(mpe__redis_cmd(w, &rep, 3, (const char *[]){"ZSCORE", "mpe:runs", run}, NULL), 0);
    left += rep->type != REDIS_REPLY_NIL;
    mpe__redis_free(rep);
    if (!left) break;
    CHECK(mpe_time() < give_up);
    mpe_sleep(0.02, NULL);
  }
  /* the worker learns the run is gone, and writes nothing back */
  int flag;
  CHECK_RC(mpe__broker_renew(w, run, "hostA/4", 1, t, &flag), -ENOENT);
  const void *data[] = {"late"};
  size_t lens[] = {4};
  CHECK_RC(mpe__broker_complete(w, run, "hostA/4", 1, t, data, lens, &flag), -ENOENT);
  mpe__broker_release(&h);
  CHECK_RC(mpe__broker_claim(w, run, "hostA/4", 1, 0.02, t, &h), -ENOENT);
  for (int i = 0; i < 3; i++) CHECK(exists(w, keys[i]) == 0);
  redisReply *rep;
  char pat[128];
  snprintf(pat, sizeof pat, "mpe:run:%s*", run);
  CHECK_RC(mpe__redis_cmd(w, &rep, 2, (const char *[]){"KEYS", pat}, NULL), 0);
  CHECK(rep->type == REDIS_REPLY_ARRAY && rep->elements == 0);
  mpe__redis_free(rep);
  mpe__redis_close(w);
}

int main(void) {
  url = getenv("MPE_TEST_BROKER");
  if (!url) {
    fprintf(stderr, "run me with tests/broker/with_redis.sh\n");
    return 77;
  }
  RUN(takeover_and_fencing);
  RUN(renewing_holder_keeps_its_batch);
  RUN(lost_attempts_times_fails);
  RUN(dead_driver_leaves_nothing);
  RUN(exactly_one_result_each);
  return 0;
}
