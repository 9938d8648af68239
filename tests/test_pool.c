/* test_pool.c - the engine pool's guarantees, from C: every task submitted
 * gets exactly one result, whatever happens to its worker. Synchronised by
 * handshakes (queues, results); no duration is asserted. */
#define _GNU_SOURCE
#include <errno.h>
#include <malloc.h>
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"

static uint64_t get64(const void *p) {
  uint64_t x;
  memcpy(&x, p, sizeof x);
  return x;
}

/* x -> x * x; 77777 kills its worker; 1000000007 fails with a message. */
static int square(void *ctx, const void *in, size_t n, mpe_buf *out) {
  (void)ctx;
  if (n != 8) return 2;
  uint64_t x = get64(in), y = x * x;
  if (x == 77777) raise(SIGKILL);
  if (x == 1000000007) {
    mpe_buf_add(out, "no", 2);
    return 5;
  }
  return mpe_buf_add(out, &y, sizeof y);
}

/* square after about a microsecond of work: a SIGKILL often lands inside */
static int slow_square(void *ctx, const void *in, size_t n, mpe_buf *out) {
  volatile uint64_t spin = 0;
  for (int i = 0; i < 1000; i++) spin += (uint64_t)i;
  return square(ctx, in, n, out);
}

/* allocates 64 MiB: 0 if it could, 9 if not */
static int alloc_big(void *ctx, const void *in, size_t n, mpe_buf *out) {
  (void)ctx;
  (void)in;
  (void)n;
  (void)out;
  char *big = malloc((size_t)64 << 20);
  if (!big) return 9;
  memset(big, 1, (size_t)64 << 20);
  free(big);
  return 0;
}

static mpe_queue *started; /* a blocking task says it has started (its pid) */

/* x -> x; 5 blocks forever (after saying so); the output carries the pid. */
static int echo_pid(void *ctx, const void *in, size_t n, mpe_buf *out) {
  (void)ctx;
  (void)n;
  uint64_t x = get64(in), pid = (uint64_t)getpid();
  if (x == 5 || x >= 1000) {
    mpe_queue_put(started, &pid, sizeof pid, 0, -1);
    for (;;) pause();
  }
  mpe_buf_add(out, &x, sizeof x);
  return mpe_buf_add(out, &pid, sizeof pid);
}

static int init_fails(void *arg) { return *(int *)arg; }
static int init_dies(void *arg) {
  (void)arg;
  raise(SIGKILL);
  return 0;
}

static void map_u64(mpe_pool *p, size_t n, const uint64_t *xs, mpe_task_result *r, int want) {
  const void **in = malloc(n * sizeof *in);
  size_t *len = malloc(n * sizeof *len);
  CHECK(in && len);
  for (size_t i = 0; i < n; i++) in[i] = &xs[i], len[i] = 8;
  CHECK_RC(mpe_pool_map(p, n, in, len, r), want);
  free(in);
  free(len);
}

static void check_gone(const pid_t *pids, int n) {
  for (int i = 0; i < n; i++) {
    CHECK(kill(pids[i], 0) == -1 && errno == ESRCH);
    CHECK(waitpid(pids[i], NULL, WNOHANG) == -1 && errno == ECHILD);
  }
}

static size_t arena_used(void) {
  size_t used;
  mpe_arena_stats(&used, NULL);
  return used;
}

TEST(batch_results_and_errors) {
  mpe_pool *p;
  mpe_pool_options o = {.processes = 2};
  CHECK_RC(mpe_pool_start(&p, square, NULL, &o), 0);
  enum { N = 1000 };
  uint64_t xs[N];
  size_t lens[N];
  for (int i = 0; i < N; i++) xs[i] = i == 500 ? 1000000007 : (uint64_t)i, lens[i] = 8;
  uint64_t first;
  CHECK_RC(mpe_pool_submit_batch(p, xs, lens, N, &first), 0);
  CHECK(first == 0);
  static char seen[N];
  mpe_task_result r;
  int got = 0;
  while (mpe_pool_collect(p, -1, &r) == 0) {
    CHECK(r.id < N && !seen[r.id]);
    seen[r.id] = 1;
    if (r.id == 500) {
      CHECK(r.status == MPE_ETASK && r.code == 5 && r.len == 2 && memcmp(r.data, "no", 2) == 0);
    } else {
      CHECK(r.status == 0 && r.len == 8 && get64(r.data) == r.id * r.id);
    }
    mpe_task_result_clear(&r);
    got++;
  }
  CHECK(got == N);
  CHECK_RC(mpe_pool_collect(p, 0, &r), MPE_EEMPTY);
  /* ids go on from where they were */
  CHECK_RC(mpe_pool_submit(p, &xs[3], 8, &first), 0);
  CHECK(first == N);
  CHECK_RC(mpe_pool_collect(p, -1, &r), 0);
  CHECK(r.id == N && get64(r.data) == 9);
  mpe_task_result_clear(&r);
  mpe_pool_free(p, 0);
}

/* The task that kills its worker is named; the rest of its batch (and the
 * batches the worker held) come back from other workers. */
TEST(worker_killed_mid_batch) {
  size_t before = arena_used();
  mpe_pool *p;
  mpe_pool_options o = {.processes = 2, .chunksize = 50};
  CHECK_RC(mpe_pool_start(&p, square, NULL, &o), 0);
  enum { N = 400 };
  uint64_t xs[N];
  mpe_task_result r[N];
  for (int i = 0; i < N; i++) xs[i] = i == 77 ? 77777 : (uint64_t)i;
  map_u64(p, N, xs, r, 0);
  for (int i = 0; i < N; i++) {
    CHECK(r[i].id == (uint64_t)i);
    if (i == 77) CHECK(r[i].status == MPE_EDIED && r[i].code == -SIGKILL && !r[i].data);
    else CHECK(r[i].status == 0 && get64(r[i].data) == (uint64_t)i * i);
    mpe_task_result_clear(&r[i]);
  }
  CHECK(mpe_pool_error(p) == NULL);
  mpe_pool_free(p, 0);
  CHECK(arena_used() == before);
}

/* A task past the timeout: its worker is killed and replaced, it fails with
 * MPE_ETIMEDOUT, and the others are answered. */
TEST(task_timeout) {
  mpe_pool *p;
  mpe_pool_options o = {.processes = 2, .timeout = 1.0};
  CHECK_RC(mpe_pool_start(&p, echo_pid, NULL, &o), 0);
  enum { N = 40 };
  uint64_t xs[N];
  mpe_task_result r[N];
  for (int i = 0; i < N; i++) xs[i] = (uint64_t)i;
  map_u64(p, N, xs, r, 0);
  mpe_qmsg m = {0};
  CHECK_RC(mpe_queue_get(started, 0, &m), 0); /* it did start */
  uint64_t killed = get64(m.data);
  mpe_qmsg_free(&m);
  for (int i = 0; i < N; i++) {
    if (i == 5) CHECK(r[i].status == MPE_ETIMEDOUT && r[i].code == -SIGKILL);
    else CHECK(r[i].status == 0 && r[i].len == 16 && get64(r[i].data) == (uint64_t)i);
    mpe_task_result_clear(&r[i]);
  }
  pid_t pids[2];
  CHECK(mpe_pool_pids(p, pids, 2) == 2);
  CHECK(pids[0] != (pid_t)killed && pids[1] != (pid_t)killed);
  check_gone((pid_t[]){(pid_t)killed}, 1);
  mpe_pool_free(p, 0);
}

/* With one worker, maxtasksperchild = 3: tasks 0-2 run in one process,
 * 3-5 in the next, and so on. */
TEST(maxtasksperchild) {
  mpe_pool *p;
  mpe_pool_options o = {.processes = 1, .maxtasksperchild = 3};
  CHECK_RC(mpe_pool_start(&p, echo_pid, NULL, &o), 0);
  enum { N = 10 };
  uint64_t xs[N];
  mpe_task_result r[N];
  for (int i = 0; i < N; i++) xs[i] = 100 + (uint64_t)i;
  map_u64(p, N, xs, r, 0);
  pid_t pid[N];
  for (int i = 0; i < N; i++) {
    CHECK(r[i].status == 0 && r[i].len == 16);
    pid[i] = (pid_t)get64((char *)r[i].data + 8);
    mpe_task_result_clear(&r[i]);
  }
  for (int i = 0; i < N; i++) {
    if (i % 3) CHECK(pid[i] == pid[i - 1]);
    else if (i) CHECK(pid[i] != pid[i - 1] && pid[i] != pid[0]);
  }
  check_gone((pid_t[]){pid[0], pid[3], pid[6]}, 3);
  mpe_pool_free(p, 0);
}

/* A failing initializer breaks the pool: every task says so, the error
 * says why, nothing hangs, no worker is left. */
TEST(initializer_fails) {
  int code = 7;
  mpe_pool *p;
  mpe_pool_options o = {.processes = 2, .initializer = init_fails, .initarg = &code};
  CHECK_RC(mpe_pool_start(&p, square, NULL, &o), 0);
  uint64_t xs[5] = {1, 2, 3, 4, 5};
  mpe_task_result r[5];
  map_u64(p, 5, xs, r, MPE_EBROKEN);
  for (int i = 0; i < 5; i++) CHECK(r[i].id == (uint64_t)i && r[i].status == MPE_EBROKEN);
  const char *why = mpe_pool_error(p);
  CHECK(why && strstr(why, "initializer failed") && strstr(why, "returned 7"));
  CHECK_RC(mpe_pool_submit(p, xs, 8, NULL), MPE_EBROKEN);
  mpe_task_result one;
  CHECK_RC(mpe_pool_collect(p, -1, &one), MPE_EBROKEN);
  pid_t pids[2];
  CHECK(mpe_pool_pids(p, pids, 2) == 0);
  mpe_pool_free(p, 0);
}

/* Workers that die before their first task, again and again: the pool
 * breaks instead of starting them forever. */
TEST(crash_loop_stopped) {
  mpe_pool *p;
  mpe_pool_options o = {.processes = 1, .initializer = init_dies};
  CHECK_RC(mpe_pool_start(&p, square, NULL, &o), 0);
  uint64_t xs[3] = {1, 2, 3};
  mpe_task_result r[3];
  map_u64(p, 3, xs, r, MPE_EBROKEN);
  for (int i = 0; i < 3; i++) CHECK(r[i].status == MPE_EBROKEN);
  const char *why = mpe_pool_error(p);
  CHECK(why && strstr(why, "6 workers in a row died before finishing a task") &&
        strstr(why, "killed by signal 9"));
  pid_t pids[2];
  CHECK(mpe_pool_pids(p, pids, 2) == 0);
  mpe_pool_free(p, 0);
}

/* terminate with tasks running, queued in inboxes and pending: results
 * already back stay, every other task is MPE_ETERMINATED, no worker is left. */
TEST(terminate_in_flight) {
  mpe_pool *p;
  mpe_pool_options o = {.processes = 2};
  CHECK_RC(mpe_pool_start(&p, echo_pid, NULL, &o), 0);
  enum { N = 30, QUICK = 10 };
  uint64_t xs[N];
  size_t lens[N];
  for (int i = 0; i < N; i++) xs[i] = i < QUICK ? 100 + (uint64_t)i : 1000 + (uint64_t)i, lens[i] = 8;
  CHECK_RC(mpe_pool_submit_batch(p, xs, lens, N, NULL), 0);
  /* until both workers are inside a task that never ends (the quick tasks
   * answered meanwhile are kept) */
  static char seen[N];
  int blocked = 0, got = 0;
  mpe_qmsg m = {0};
  mpe_task_result r;
  while (blocked < 2) {
    int rc = mpe_pool_collect(p, 0.01, &r);
    if (rc == 0) {
      CHECK(r.id < QUICK && r.status == 0 && !seen[r.id]);
      seen[r.id] = 1;
      got++;
      mpe_task_result_clear(&r);
    } else {
      CHECK_RC(rc, MPE_ETIMEDOUT);
    }
    if (mpe_queue_get(started, 0, &m) == 0) blocked++;
  }
  mpe_qmsg_free(&m);
  pid_t pids[2];
  CHECK(mpe_pool_pids(p, pids, 2) == 2);
  mpe_pool_terminate(p);
  check_gone(pids, 2);
  int terminated = 0;
  while (mpe_pool_collect(p, -1, &r) == 0) {
    CHECK(r.id < N && !seen[r.id]);
    seen[r.id] = 1;
    if (r.id >= QUICK) CHECK(r.status == MPE_ETERMINATED);
    else CHECK(r.status == 0 || r.status == MPE_ETERMINATED);
    terminated += r.status == MPE_ETERMINATED;
    mpe_task_result_clear(&r);
    got++;
  }
  CHECK(got == N && terminated >= N - QUICK);
  CHECK_RC(mpe_pool_collect(p, 0, &r), MPE_EEMPTY);
  CHECK_RC(mpe_pool_submit(p, xs, 8, NULL), MPE_ECLOSED);
  CHECK_RC(mpe_pool_join(p, -1), 0);
  mpe_pool_free(p, 0);
}

/* close: no more submits; join: every task finished, then no worker. */
TEST(close_join) {
  mpe_pool *p;
  CHECK_RC(mpe_pool_start(&p, square, NULL, NULL), 0);
  enum { N = 100 };
  uint64_t xs[N];
  size_t lens[N];
  for (int i = 0; i < N; i++) xs[i] = (uint64_t)i, lens[i] = 8;
  CHECK_RC(mpe_pool_submit_batch(p, xs, lens, N, NULL), 0);
  CHECK_RC(mpe_pool_join(p, 0), -EINVAL);
  mpe_pool_close(p);
  CHECK_RC(mpe_pool_submit(p, xs, 8, NULL), MPE_ECLOSED);
  pid_t pids[64];
  int n = mpe_pool_pids(p, pids, 64);
  CHECK(n == mpe_pool_size(p));
  CHECK_RC(mpe_pool_join(p, -1), 0);
  check_gone(pids, n);
  mpe_task_result r;
  int got = 0;
  uint64_t sum = 0;
  while (mpe_pool_collect(p, -1, &r) == 0) {
    CHECK(r.status == 0);
    sum += get64(r.data);
    mpe_task_result_clear(&r);
    got++;
  }
  CHECK(got == N && sum == (uint64_t)(N - 1) * N * (2 * N - 1) / 6);
  mpe_pool_free(p, 0);
}

/* 100,000 tasks while workers are SIGKILLed at random: every task gets
 * exactly one result, its value or the death of the worker running it. */
TEST(random_kills) {
  mpe_pool *p;
  mpe_pool_options o = {.processes = 3};
  CHECK_RC(mpe_pool_start(&p, slow_square, NULL, &o), 0);
  enum { N = 100000 };
  uint64_t *xs = malloc(N * sizeof *xs);
  size_t *lens = malloc(N * sizeof *lens);
  char *seen = calloc(N, 1);
  CHECK(xs && lens && seen);
  for (int i = 0; i < N; i++) xs[i] = (uint64_t)i + 100000, lens[i] = 8; /* none kills itself */
  CHECK_RC(mpe_pool_submit_batch(p, xs, lens, N, NULL), 0);
  unsigned seed = 12345;
  int got = 0, died = 0, kills = 0;
  mpe_task_result r;
  pid_t all[4096];
  int nall = 0;
  while (mpe_pool_collect(p, -1, &r) == 0) {
    CHECK(r.id < N && !seen[r.id]);
    seen[r.id] = 1;
    if (r.status == 0) {
      CHECK(r.len == 8 && get64(r.data) == xs[r.id] * xs[r.id]);
    } else {
      CHECK(r.status == MPE_EDIED && r.code == -SIGKILL);
      died++;
    }
    mpe_task_result_clear(&r);
    if (++got % 997 == 0) {
      pid_t pids[3];
      int n = mpe_pool_pids(p, pids, 3);
      if (n > 0) {
        pid_t victim = pids[rand_r(&seed) % (unsigned)n];
        /* ESRCH: a worker killed before and already reaped (spawning a
         * replacement reaps every ended child) that the pool has yet to see */
        int k = kill(victim, SIGKILL);
        CHECK(k == 0 || errno == ESRCH);
        if (k == 0 && nall < 4096) all[nall++] = victim;
        kills += k == 0;
      }
    }
  }
  CHECK(got == N && kills > 50 && died <= kills);
  CHECK(mpe_pool_error(p) == NULL);
  pid_t pids[3];
  int n = mpe_pool_pids(p, pids, 3);
  mpe_pool_free(p, 1);
  check_gone(pids, n);
  check_gone(all, nall);
  printf("# %d kills, %d tasks answered by their worker's death\n", kills, died);
  free(xs);
  free(lens);
  free(seen);
}

/* memory_limit: a worker cannot allocate past it (malloc fails in the task);
 * without it the same task succeeds. The sanitizers' and valgrind's
 * allocators do not go through the limit the same way: skipped there. */
TEST(memory_limit) {
#if defined(__SANITIZE_ADDRESS__)
  return;
#endif
  const char *pre = getenv("LD_PRELOAD");
  if (pre && (strstr(pre, "vgpreload") || strstr(pre, "asan"))) return;
  for (int limited = 0; limited < 2; limited++) {
    mpe_pool *p;
    mpe_pool_options o = {.processes = 1, .memory_limit = limited ? (size_t)16 << 20 : 0};
    CHECK_RC(mpe_pool_start(&p, alloc_big, NULL, &o), 0);
    mpe_task_result r;
    CHECK_RC(mpe_pool_submit(p, "", 0, NULL), 0);
    CHECK_RC(mpe_pool_collect(p, -1, &r), 0);
    if (limited) CHECK(r.status == MPE_ETASK && r.code == 9);
    else CHECK(r.status == 0);
    mpe_pool_free(p, 0);
  }
}

/* The first API (mpe_pool_new with an mpe_task_fn) rides on the new one. */
static int legacy_square(const void *in, size_t len, void **out, size_t *out_len, void *ctx) {
  (void)ctx;
  uint64_t y = get64(in) * get64(in);
  if (len != 8 || !(*out = malloc(8))) return 1;
  memcpy(*out, &y, 8);
  *out_len = 8;
  return 0;
}

TEST(first_api) {
  mpe_pool *p;
  CHECK_RC(mpe_pool_new(&p, 2, legacy_square, NULL), 0);
  CHECK(mpe_pool_size(p) == 2);
  uint64_t xs[64];
  mpe_task_result r[64];
  for (int i = 0; i < 64; i++) xs[i] = (uint64_t)i;
  map_u64(p, 64, xs, r, 0);
  for (int i = 0; i < 64; i++) {
    CHECK(r[i].status == 0 && get64(r[i].data) == (uint64_t)i * i);
    mpe_task_result_clear(&r[i]);
  }
  mpe_pool_free(p, 1);
}

/* The host's hooks: before_fork runs in the parent once per worker, setup
 * in each worker first (its failure, with its text, breaks the pool), and
 * at_exit in each worker that leaves normally. */
static int forks, setup_code;
static void fork_hook(void *arg, int failed) {
  (void)arg;
  if (!failed) forks++;
}
static int setup_hook(void *arg, mpe_buf *why) {
  (void)arg;
  if (setup_code) mpe_buf_add(why, "no config here", 14);
  return setup_code;
}
static void exit_hook(void *arg) {
  (void)arg;
  uint64_t pid = (uint64_t)getpid();
  mpe_queue_put(started, &pid, sizeof pid, 0, -1);
}

TEST(host_hooks) {
  mpe_pool *p;
  mpe_pool_options o = {.processes = 2, .setup = setup_hook, .at_exit = exit_hook, .before_fork = fork_hook};
  forks = setup_code = 0;
  CHECK_RC(mpe_pool_start(&p, square, NULL, &o), 0);
  CHECK(forks == 2);
  uint64_t xs[4] = {1, 2, 3, 4};
  mpe_task_result r[4];
  map_u64(p, 4, xs, r, 0);
  for (int i = 0; i < 4; i++) mpe_task_result_clear(&r[i]);
  mpe_pool_close(p);
  CHECK_RC(mpe_pool_join(p, -1), 0);
  mpe_qmsg m = {0};
  for (int i = 0; i < 2; i++) CHECK_RC(mpe_queue_get(started, 30, &m), 0); /* each worker's at_exit */
  CHECK_RC(mpe_queue_get(started, 0, &m), MPE_ETIMEDOUT);
  mpe_qmsg_free(&m);
  mpe_pool_free(p, 0);
  setup_code = 3;
  CHECK_RC(mpe_pool_start(&p, square, NULL, &o), 0);
  map_u64(p, 4, xs, r, MPE_EBROKEN);
  const char *why = mpe_pool_error(p);
  CHECK(why && strstr(why, "initializer failed") && strstr(why, "no config here"));
  mpe_pool_free(p, 0);
}

/* A task whose worker died names that worker's pid; a poll (timeout 0)
 * takes the replies already there. */
TEST(died_pid_and_poll) {
  mpe_pool *p;
  mpe_pool_options o = {.processes = 1};
  CHECK_RC(mpe_pool_start(&p, square, NULL, &o), 0);
  pid_t pid;
  CHECK(mpe_pool_pids(p, &pid, 1) == 1);
  uint64_t x = 77777;
  CHECK_RC(mpe_pool_submit(p, &x, 8, NULL), 0);
  mpe_task_result r;
  CHECK_RC(mpe_pool_collect(p, -1, &r), 0);
  CHECK(r.status == MPE_EDIED && r.code == -SIGKILL && r.pid == pid);
  x = 3;
  CHECK_RC(mpe_pool_submit(p, &x, 8, NULL), 0);
  int rc = MPE_ETIMEDOUT;
  for (int i = 0; i < 30000 && rc == MPE_ETIMEDOUT; i++) { /* bounded: fail, never hang */
    rc = mpe_pool_collect(p, 0, &r);
    if (rc == MPE_ETIMEDOUT) mpe_sleep(0.001, NULL);
  }
  CHECK_RC(rc, 0);
  CHECK(r.status == 0 && r.pid == 0 && get64(r.data) == 9);
  mpe_task_result_clear(&r);
  mpe_pool_free(p, 0);
}

/* The host's interrupt flag set (a signal that landed outside a sleep):
 * collect and map return MPE_EINTR instead of waiting on. */
TEST(interrupt_flag) {
  mpe_pool *p;
  mpe_pool_options o = {.processes = 1};
  CHECK_RC(mpe_pool_start(&p, echo_pid, NULL, &o), 0);
  uint64_t x = 5, pid;
  CHECK_RC(mpe_pool_submit(p, &x, 8, NULL), 0);
  mpe_qmsg m = {0};
  CHECK_RC(mpe_queue_get(started, 30, &m), 0); /* the task blocks */
  memcpy(&pid, m.data, sizeof pid);
  mpe_qmsg_free(&m);
  static volatile sig_atomic_t stop = 1;
  mpe_interrupt_flag(&stop);
  mpe_task_result r;
  CHECK_RC(mpe_pool_collect(p, 5, &r), MPE_EINTR);
  mpe_interrupt_flag(NULL);
  mpe_pool_terminate(p);
  CHECK_RC(mpe_pool_collect(p, -1, &r), 0);
  CHECK(r.status == MPE_ETERMINATED);
  mpe_pool_free(p, 1);
  check_gone((pid_t[]){(pid_t)pid}, 1);
}

/* Results many at a time, without copies: every task once, through batches
 * that cross many small submits (a worker killed in one of them names its
 * task, the rest of its batch comes back from the others). */
TEST(collect_many_across_submits) {
  mpe_pool *p;
  mpe_pool_options o = {.processes = 2, .chunksize = 50};
  CHECK_RC(mpe_pool_start(&p, square, NULL, &o), 0);
  enum { N = 7 * 700, MAX = 256 };
  static uint64_t xs[N];
  static char seen[N];
  size_t lens[7];
  for (int i = 0; i < N; i++) xs[i] = i == 1234 ? 77777 : i == 2000 ? 1000000007 : (uint64_t)i;
  for (int i = 0; i < 7; i++) lens[i] = 8;
  for (int i = 0; i < N; i += 7) { /* submits of 7: a batch of 50 spans several */
    uint64_t first;
    CHECK_RC(mpe_pool_submit_batch(p, &xs[i], lens, 7, &first), 0);
    CHECK(first == (uint64_t)i);
  }
  mpe_task_result rs[MAX];
  int got = 0, n;
  while ((n = mpe_pool_collect_many(p, -1, rs, MAX)) > 0) {
    CHECK(n <= MAX);
    for (int k = 0; k < n; k++) {
      mpe_task_result *r = &rs[k];
      CHECK(r->id < N && !seen[r->id]);
      seen[r->id] = 1;
      if (r->id == 1234) CHECK(r->status == MPE_EDIED && r->code == -SIGKILL && r->pid > 0 && !r->len);
      else if (r->id == 2000) CHECK(r->status == MPE_ETASK && r->code == 5 && r->len == 2 && !memcmp(r->data, "no", 2));
      else CHECK(r->status == 0 && r->len == 8 && get64(r->data) == r->id * r->id);
    }
    got += n;
  }
  CHECK_RC(n, MPE_EEMPTY);
  CHECK(got == N);
  CHECK_RC(mpe_pool_collect_many(p, 0, rs, 0), -EINVAL);
  mpe_pool_free(p, 0);
}

/* Submitting many tasks costs their input bytes and lengths, not an entry
 * per task (the pending line holds one span per submit). Seen through the
 * allocator's count; skipped where that count does not see the heap (a
 * sanitizer's allocator). */
TEST(submit_memory) {
  mpe_pool *p;
  mpe_pool_options o = {.processes = 2};
  CHECK_RC(mpe_pool_start(&p, square, NULL, &o), 0);
  enum { N = 200000 };
  uint64_t *xs = malloc(N * sizeof *xs);
  size_t *lens = malloc(N * sizeof *lens);
  CHECK(xs && lens);
  for (size_t i = 0; i < N; i++) xs[i] = 1000000 + i, lens[i] = 8; /* none that kills */
  struct mallinfo2 a = mallinfo2();
  CHECK_RC(mpe_pool_submit_batch(p, xs, lens, N, NULL), 0);
  struct mallinfo2 b = mallinfo2();
  size_t grew = (b.uordblks + b.hblkhd) - (a.uordblks + a.hblkhd);
  if (grew >= (size_t)N * 8) CHECK(grew < (size_t)N * (8 + sizeof(uint32_t)) + 65536);
  else printf("submit_memory: the allocator's count does not see the heap here; skipped\n");
  mpe_task_result rs[512];
  size_t got = 0;
  int n;
  while ((n = mpe_pool_collect_many(p, -1, rs, 512)) > 0)
    for (int k = 0; k < n; k++, got++) CHECK(rs[k].status == 0 && get64(rs[k].data) == (1000000 + rs[k].id) * (1000000 + rs[k].id));
  CHECK_RC(n, MPE_EEMPTY);
  CHECK(got == N);
  free(xs);
  free(lens);
  mpe_pool_free(p, 0);
}

int main(void) {
  CHECK_RC(mpe_init(0), 0);
  CHECK_RC(mpe_queue_new(&started, 0), 0);
  RUN(batch_results_and_errors);
  RUN(worker_killed_mid_batch);
  RUN(task_timeout);
  RUN(maxtasksperchild);
  RUN(initializer_fails);
  RUN(crash_loop_stopped);
  RUN(terminate_in_flight);
  RUN(close_join);
  RUN(random_kills);
  RUN(memory_limit);
  RUN(first_api);
  RUN(host_hooks);
  RUN(died_pid_and_poll);
  RUN(interrupt_flag);
  RUN(collect_many_across_submits);
  RUN(submit_memory);
  mpe_queue_free(started);
  return 0;
}
