/* embed_c.c - a C program that uses only mpengine's C API: a pool of C tasks
 * (one of which kills its worker and one of which fails, on workers replaced
 * every 40 tasks), a queue between producers and consumers, and a lock
 * around a shared counter. Every result is checked exactly; exit 0 means all
 * held. */
#define _POSIX_C_SOURCE 200809L
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h" /* CHECK: print where and why, then exit 1 */
#include "mpengine.h"


/* A task: the square of a 64-bit number; 13 kills its worker, 7 fails. */
static int square(void *ctx, const void *in, size_t len, mpe_buf *out) {
  (void)ctx;
  uint64_t x;
  if (len != sizeof x) return 2;
  memcpy(&x, in, sizeof x);
  if (x == 13) raise(SIGKILL);
  if (x == 7) {
    mpe_buf_add(out, "seven is not allowed", strlen("seven is not allowed"));
    return 3;
  }
  uint64_t y = x * x;
  return mpe_buf_add(out, &y, sizeof y);
}

static int ready(void *arg) { return *(int *)arg; } /* the initializer: 0 is fine */

static void pool_of_c_tasks(void) {
  int ok = 0;
  mpe_pool_options o = {.processes = 2, .maxtasksperchild = 40, .initializer = ready, .initarg = &ok};
  mpe_pool *p;
  CHECK(mpe_pool_start(&p, square, NULL, &o) == 0);
  CHECK(mpe_pool_size(p) == 2);
  enum { N = 100 };
  uint64_t xs[N];
  const void *in[N];
  size_t len[N];
  for (int i = 0; i < N; i++) {
    xs[i] = (uint64_t)i;
    in[i] = &xs[i];
    len[i] = sizeof xs[i];
  }
  mpe_task_result r[N];
  CHECK(mpe_pool_map(p, N, in, len, r) == 0);
  for (int i = 0; i < N; i++) {
    CHECK(r[i].id == (uint64_t)i);
    if (i == 13) {
      CHECK(r[i].status == MPE_EDIED && r[i].code == -SIGKILL);
    } else if (i == 7) {
      CHECK(r[i].status == MPE_ETASK && r[i].code == 3);
      CHECK(r[i].len == strlen("seven is not allowed") && memcmp(r[i].data, "seven", 5) == 0);
    } else {
      uint64_t y;
      CHECK(r[i].status == 0 && r[i].len == sizeof y);
      memcpy(&y, r[i].data, sizeof y);
      CHECK(y == (uint64_t)i * (uint64_t)i);
    }
    mpe_task_result_clear(&r[i]);
  }
  /* many tasks in one buffer, collected in any order; the pool goes on */
  uint64_t batch[10], first, sum = 0;
  size_t lens[10];
  for (int i = 0; i < 10; i++) batch[i] = 12, lens[i] = sizeof batch[i];
  CHECK(mpe_pool_submit_batch(p, batch, lens, 10, &first) == 0);
  mpe_pool_close(p); /* no more submits; join waits for these */
  CHECK(mpe_pool_join(p, 60) == 0);
  mpe_task_result one;
  int got = 0;
  while (mpe_pool_collect(p, 30, &one) == 0) {
    uint64_t y;
    CHECK(one.id >= first && one.id < first + 10);
    memcpy(&y, one.data, sizeof y);
    sum += y;
    got++;
    mpe_task_result_clear(&one);
  }
  CHECK(got == 10 && sum == 1440);
  mpe_pool_free(p, 0);
}

static mpe_queue *q, *sums;

static int producer(void *arg) {
  uint64_t base = (uint64_t)(uintptr_t)arg;
  for (uint64_t i = 1; i <= 5000; i++) {
    uint64_t v = base + i;
    if (mpe_queue_put(q, &v, sizeof v, 0, -1) != 0) return 1;
  }
  return 0;
}

static int consumer(void *arg) {
  (void)arg;
  mpe_qmsg m = {0};
  uint64_t sum = 0;
  int rc;
  while ((rc = mpe_queue_get(q, -1, &m)) == 0) {
    uint64_t v;
    memcpy(&v, m.data, sizeof v);
    sum += v;
  }
  mpe_qmsg_free(&m);
  return rc == MPE_ECLOSED && mpe_queue_put(sums, &sum, sizeof sum, 0, -1) == 0 ? 0 : 1;
}

static void queue_between_processes(void) {
  CHECK(mpe_queue_new(&q, 64) == 0);
  CHECK(mpe_queue_new(&sums, 0) == 0);
  mpe_process *p[4];
  CHECK(mpe_process_spawn(&p[0], producer, (void *)(uintptr_t)0, NULL) == 0);
  CHECK(mpe_process_spawn(&p[1], producer, (void *)(uintptr_t)1000000, NULL) == 0);
  CHECK(mpe_process_spawn(&p[2], consumer, NULL, NULL) == 0);
  CHECK(mpe_process_spawn(&p[3], consumer, NULL, NULL) == 0);
  CHECK(mpe_process_wait(p[0], 60) == 0 && mpe_process_wait(p[1], 60) == 0);
  mpe_queue_close(q);
  uint64_t total = 0;
  mpe_qmsg m = {0};
  for (int i = 0; i < 2; i++) {
    uint64_t s;
    CHECK(mpe_queue_get(sums, 60, &m) == 0);
    memcpy(&s, m.data, sizeof s);
    total += s;
  }
  mpe_qmsg_free(&m);
  CHECK(total == 2 * (5000ull * 5001 / 2) + 5000ull * 1000000);
  for (int i = 0; i < 4; i++) {
    int code;
    CHECK(mpe_process_wait(p[i], 60) == 0 && mpe_process_exitcode(p[i], &code) == 1 && code == 0);
    mpe_process_free(p[i]);
  }
  mpe_queue_free(q);
  mpe_queue_free(sums);
}

static mpe_lock *lock;
static mpe_value *counter;

static int add_under_lock(void *arg) {
  (void)arg;
  for (int i = 0; i < 1000; i++) {
    if (mpe_lock_acquire(lock, -1) != 0) return 1;
    int64_t v = mpe_value_get_int(counter, 0); /* read, then write: needs the lock */
    mpe_value_set_int(counter, 0, v + 1);
    if (mpe_lock_release(lock) != 0) return 2;
  }
  return 0;
}

static void lock_around_a_counter(void) {
  CHECK(mpe_lock_new(&lock, 0) == 0);
  CHECK(mpe_value_new(&counter, 'q', 1, lock) == 0);
  mpe_process *p[4];
  for (int i = 0; i < 4; i++) CHECK(mpe_process_spawn(&p[i], add_under_lock, NULL, NULL) == 0);
  for (int i = 0; i < 4; i++) {
    CHECK(mpe_process_wait(p[i], 60) == 0);
    mpe_process_free(p[i]);
  }
  CHECK(mpe_value_get_int(counter, 0) == 4000);
  mpe_value_free(counter);
  mpe_lock_free(lock);
}

int main(void) {
  CHECK(mpe_init(0) == 0);
  printf("mpengine %s\n", mpe_version());
  pool_of_c_tasks();
  queue_between_processes();
  lock_around_a_counter();
  size_t used;
  mpe_arena_stats(&used, NULL);
  CHECK(used == 0);
  printf("embed_c: all exact\n");
  return 0;
}
