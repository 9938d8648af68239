/* test_queue.c - the engine's queue through the public header: FIFO order,
 * bounds and timeouts, close, messages larger than the ring, many producers
 * and consumers across processes, join, and holders killed mid-operation. */
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "../engine/src/spin.h" /* the waiters' spin policy (internal) */

static int put_u64(mpe_queue *q, uint64_t v, double timeout) {
  return mpe_queue_put(q, &v, sizeof v, 0, timeout);
}

static uint64_t get_u64(mpe_queue *q, double timeout, int *rc) {
  mpe_qmsg m = {0};
  uint64_t v = 0;
  *rc = mpe_queue_get(q, timeout, &m);
  if (*rc == 0) {
    CHECK(m.len == sizeof v);
    memcpy(&v, m.data, sizeof v);
  }
  mpe_qmsg_free(&m);
  return v;
}

TEST(test_fifo_bounds_timeouts) {
  mpe_queue *q;
  CHECK_RC(mpe_queue_new(&q, 3), 0);
  CHECK(mpe_queue_maxsize(q) == 3);
  int rc;
  double t0 = mpe_time();
  get_u64(q, 0.05, &rc);
  CHECK(rc == MPE_ETIMEDOUT && mpe_time() - t0 >= 0.049);
  get_u64(q, 0, &rc);
  CHECK(rc == MPE_ETIMEDOUT);
  for (uint64_t i = 1; i <= 3; i++) CHECK_RC(put_u64(q, i, -1), 0);
  CHECK(mpe_queue_size(q) == 3);
  CHECK_RC(put_u64(q, 4, 0), MPE_ETIMEDOUT);
  t0 = mpe_time();
  CHECK_RC(put_u64(q, 4, 0.05), MPE_ETIMEDOUT);
  CHECK(mpe_time() - t0 >= 0.049);
  for (uint64_t i = 1; i <= 3; i++) CHECK(get_u64(q, 0, &rc) == i && rc == 0);
  CHECK(mpe_queue_size(q) == 0);
  mpe_queue_free(q);
}

TEST(test_close_drains_then_reports_closed) {
  mpe_queue *q;
  CHECK_RC(mpe_queue_new(&q, 0), 0);
  CHECK_RC(put_u64(q, 7, -1), 0);
  mpe_queue_close(q);
  CHECK(mpe_queue_is_closed(q));
  CHECK_RC(put_u64(q, 8, -1), MPE_ECLOSED);
  int rc;
  CHECK(get_u64(q, -1, &rc) == 7 && rc == 0);
  get_u64(q, -1, &rc); /* closed and drained: no wait */
  CHECK(rc == MPE_ECLOSED);
  mpe_queue_free(q);
}

TEST(test_messages_of_every_size_through_a_small_bound) {
  mpe_queue *q;
  CHECK_RC(mpe_queue_new(&q, 2), 0);
  static const size_t sizes[] = {0, 1, 15, 16, 17, 4096, 16384, 16385, 70000, 8u << 20};
  mpe_qmsg m = {0};
  for (int round = 0; round < 3; round++) {
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
      size_t n = sizes[i];
      unsigned char *b = malloc(n + 1);
      for (size_t k = 0; k < n; k++) b[k] = (unsigned char)(k * 7 + i);
      CHECK_RC(mpe_queue_put(q, b, n, (uint32_t)i, 1), 0);
      CHECK_RC(mpe_queue_get(q, 1, &m), 0);
      CHECK(m.len == n && m.tag == i && (n == 0 || memcmp(m.data, b, n) == 0));
      free(b);
    }
  }
  /* many small ones: the ring grows past its first size, order is kept */
  mpe_queue *u;
  CHECK_RC(mpe_queue_new(&u, 0), 0);
  char buf[1000];
  memset(buf, 'x', sizeof buf);
  for (uint32_t i = 0; i < 5000; i++) CHECK_RC(mpe_queue_put(u, buf, 1 + i % 999, i, 0), 0);
  CHECK(mpe_queue_size(u) == 5000);
  for (uint32_t i = 0; i < 5000; i++) {
    CHECK_RC(mpe_queue_get(u, 0, &m), 0);
    CHECK(m.tag == i && m.len == 1 + i % 999);
  }
  mpe_qmsg_free(&m);
  mpe_queue_free(u);
  mpe_queue_free(q);
}

enum { PRODUCERS = 2, CONSUMERS = 3, PER_PRODUCER = 15000 };
static mpe_queue *work, *results;

static int producer(void *arg) {
  uint64_t id = (uint64_t)(uintptr_t)arg;
  for (uint64_t i = 0; i < PER_PRODUCER; i++)
    if (put_u64(work, id << 32 | i, -1) != 0) return 1;
  return 0;
}

static int consumer(void *arg) {
  (void)arg;
  uint64_t sum = 0, n = 0, last[PRODUCERS] = {0};
  int first[PRODUCERS] = {1, 1};
  for (;;) {
    int rc;
    uint64_t v = get_u64(work, -1, &rc);
    if (rc == MPE_ECLOSED) break;
    if (rc != 0) return 1;
    uint64_t id = v >> 32, i = v & 0xffffffffu;
    if (id >= PRODUCERS) return 2;
    if (!first[id] && i <= last[id]) return 3; /* FIFO per producer */
    first[id] = 0;
    last[id] = i;
    sum += v;
    n++;
    if (mpe_queue_task_done(work) != 0) return 4;
  }
  uint64_t out[2] = {sum, n};
  return mpe_queue_put(results, out, sizeof out, 0, -1) == 0 ? 0 : 5;
}

TEST(test_producers_consumers_every_item_once) {
  CHECK_RC(mpe_queue_new(&work, 100), 0);
  CHECK_RC(mpe_queue_new(&results, 0), 0);
  mpe_process *p[PRODUCERS + CONSUMERS];
  for (int i = 0; i < CONSUMERS; i++) CHECK_RC(mpe_process_spawn(&p[i], consumer, NULL, NULL), 0);
  for (int i = 0; i < PRODUCERS; i++)
    CHECK_RC(mpe_process_spawn(&p[CONSUMERS + i], producer, (void *)(uintptr_t)i, NULL), 0);
  for (int i = CONSUMERS; i < CONSUMERS + PRODUCERS; i++) CHECK_RC(mpe_process_wait(p[i], 60), 0);
  CHECK_RC(mpe_queue_join(work, 60), 0); /* every item was marked done */
  mpe_queue_close(work);
  uint64_t sum = 0, n = 0, want = 0;
  for (int i = 0; i < CONSUMERS; i++) {
    mpe_qmsg m = {0};
    CHECK_RC(mpe_queue_get(results, 60, &m), 0);
    uint64_t out[2];
    memcpy(out, m.data, sizeof out);
    sum += out[0];
    n += out[1];
    mpe_qmsg_free(&m);
  }
  for (uint64_t id = 0; id < PRODUCERS; id++)
    for (uint64_t i = 0; i < PER_PRODUCER; i++) want += id << 32 | i;
  CHECK(n == (uint64_t)PRODUCERS * PER_PRODUCER);
  CHECK(sum == want);
  for (int i = 0; i < PRODUCERS + CONSUMERS; i++) {
    int code = -1;
    CHECK_RC(mpe_process_wait(p[i], 60), 0);
    CHECK(mpe_process_exitcode(p[i], &code) == 1 && code == 0);
    mpe_process_free(p[i]);
  }
  CHECK_RC(mpe_queue_task_done(work), -22); /* more done than put: -EINVAL */
  mpe_queue_free(work);
  mpe_queue_free(results);
}

static mpe_queue *shared;

/* Puts and gets as fast as it can, so a SIGKILL lands inside a call. */
static int churn(void *arg) {
  (void)arg;
  mpe_qmsg m = {0};
  char buf[64] = "churn";
  for (;;) {
    if (mpe_queue_put(shared, buf, sizeof buf, 1, -1) != 0) return 1;
    if (mpe_queue_get(shared, -1, &m) != 0) return 2;
  }
}

TEST(test_killed_holders_leave_the_queue_usable) {
  CHECK_RC(mpe_queue_new(&shared, 0), 0);
  mpe_qmsg m = {0};
  /* Churn here first, until the ring has grown to its streaming size: a
   * holder killed inside a growth leaks a ring (the last tests), and the
   * arena's count at the end of main must not depend on when a kill lands. */
  char buf[64] = "warm";
  for (int i = 0; i < 40000; i++) {
    CHECK_RC(mpe_queue_put(shared, buf, sizeof buf, 1, 5), 0);
    CHECK_RC(mpe_queue_get(shared, 5, &m), 0);
  }
  for (int round = 0; round < 150; round++) {
    mpe_process *c;
    CHECK_RC(mpe_process_spawn(&c, churn, NULL, NULL), 0);
    mpe_sleep(0.001 + (round % 7) * 0.0007, NULL);
    CHECK_RC(mpe_process_signal(c, SIGKILL), 0);
    CHECK_RC(mpe_process_wait(c, 10), 0);
    mpe_process_free(c);
    /* Whatever the dead one left is whole: at most one message (the size is
     * only exact once a locker has repaired what a dead holder left). */
    int drained = 0, rc;
    while ((rc = mpe_queue_get(shared, 0, &m)) == 0) {
      CHECK(m.len == 64 && strcmp(m.data, "churn") == 0);
      drained++;
    }
    CHECK(rc == MPE_ETIMEDOUT && drained <= 1);
    CHECK(mpe_queue_size(shared) == 0);
    CHECK_RC(mpe_queue_put(shared, "alive", 6, 2, 5), 0);
    CHECK_RC(mpe_queue_get(shared, 5, &m), 0);
    CHECK(m.tag == 2 && strcmp(m.data, "alive") == 0);
    CHECK(mpe_queue_size(shared) == 0);
  }
  mpe_qmsg_free(&m);
  mpe_queue_free(shared);
}

/* A producer and a consumer churn on their own; each is killed at a random
 * point (inside a put, a get, or a growth of the ring, each side's commit
 * included). What is left must be a contiguous run of the producer's
 * numbers: a get removes only the oldest, a put adds only after the newest,
 * and neither leaves half a record. */
static int produce_numbers(void *arg) {
  uint64_t round = (uint64_t)(uintptr_t)arg;
  char buf[1000];
  for (uint64_t i = 0;; i++) {
    uint64_t v = round << 32 | i;
    size_t n = sizeof v + (size_t)(i * 37 % (sizeof buf - sizeof v)); /* sizes vary: the ring grows */
    memcpy(buf, &v, sizeof v);
    memset(buf + sizeof v, (int)(i & 0xff), n - sizeof v);
    if (mpe_queue_put(shared, buf, n, (uint32_t)n, -1) != 0) return 1;
  }
}

static int consume_numbers(void *arg) {
  (void)arg;
  mpe_qmsg m = {0};
  for (;;)
    if (mpe_queue_get(shared, -1, &m) != 0) return 2;
}

TEST(test_killed_producer_and_consumer_leave_a_contiguous_run) {
  mpe_qmsg m = {0};
  for (uint64_t round = 0; round < 100; round++) {
    CHECK_RC(mpe_queue_new(&shared, round % 3 == 0 ? 50 : 0), 0);
    mpe_process *pr, *co;
    CHECK_RC(mpe_process_spawn(&pr, produce_numbers, (void *)(uintptr_t)round, NULL), 0);
    CHECK_RC(mpe_process_spawn(&co, consume_numbers, NULL, NULL), 0);
    mpe_sleep(0.001 + (double)(round % 5) * 0.0009, NULL);
    mpe_process *first = round % 2 ? pr : co, *second = round % 2 ? co : pr;
    CHECK_RC(mpe_process_signal(first, SIGKILL), 0);
    mpe_sleep((double)(round % 3) * 0.0005, NULL);
    CHECK_RC(mpe_process_signal(second, SIGKILL), 0);
    CHECK_RC(mpe_process_wait(pr, 10), 0);
    CHECK_RC(mpe_process_wait(co, 10), 0);
    mpe_process_free(pr);
    mpe_process_free(co);
    size_t size = mpe_queue_size(shared), drained = 0;
    uint64_t prev = 0;
    int rc;
    while ((rc = mpe_queue_get(shared, 0, &m)) == 0) {
      uint64_t v;
      CHECK(m.len == m.tag && m.len >= sizeof v);
      memcpy(&v, m.data, sizeof v);
      CHECK(v >> 32 == round);
      for (size_t k = sizeof v; k < m.len; k++) CHECK((unsigned char)m.data[k] == (v & 0xff));
      CHECK(drained == 0 || v == prev + 1); /* no hole, no duplicate */
      prev = v;
      drained++;
    }
    CHECK(rc == MPE_ETIMEDOUT && drained == size && mpe_queue_size(shared) == 0);
    CHECK_RC(mpe_queue_put(shared, "alive", 6, 2, 5), 0); /* both locks still work */
    CHECK_RC(mpe_queue_get(shared, 5, &m), 0);
    CHECK(m.tag == 2 && strcmp(m.data, "alive") == 0);
    mpe_queue_free(shared);
  }
  mpe_qmsg_free(&m);
}

/* A holder killed at each step of a call, exactly there (mpe__queue_kill_at):
 * a churning child (put, get) or a filling one (puts only) arms the step
 * after WARM messages, so its ring has wrapped (or is full) by then, and
 * dies the next time it reaches the step. Left behind: exactly the
 * message the step had committed, no other, and a queue that works. */
enum { WARM = 300 };
typedef struct kill_plan {
  int step, fill;
  int left; /* messages the dead one leaves; -1: a run 0, 1, ... of any length */
} kill_plan;

static size_t fill_msg(char *buf, uint64_t i) {
  size_t n = sizeof i + (size_t)(i * 37 % 992); /* sizes vary: the ring wraps with skips */
  memcpy(buf, &i, sizeof i);
  memset(buf + sizeof i, (int)(i & 0xff), n - sizeof i);
  return n;
}

static int die_at(void *arg) {
  const kill_plan *k = arg;
  mpe_qmsg m = {0};
  char buf[1000];
  for (uint64_t i = 0;; i++) {
    if (i == WARM) mpe__queue_kill_at = k->step;
    size_t n = fill_msg(buf, i);
    if (mpe_queue_put(shared, buf, n, (uint32_t)n, -1) != 0) return 1;
    if (!k->fill && mpe_queue_get(shared, -1, &m) != 0) return 2;
  }
}

/* A fresh shared queue, and a child that dies in it as k says. */
static void die_in_fresh_queue(const kill_plan *k) {
  CHECK_RC(mpe_queue_new(&shared, 0), 0);
  mpe_process *c;
  CHECK_RC(mpe_process_spawn(&c, die_at, (void *)k, NULL), 0);
  int code = 0;
  CHECK_RC(mpe_process_wait(c, 60), 0);
  CHECK(mpe_process_exitcode(c, &code) == 1 && code == -SIGKILL);
  mpe_process_free(c);
}

/* Drains the queue, checking every message whole and the numbers a run
 * with no hole (each one after the last); returns how many. */
static int drain_run(uint64_t *first) {
  mpe_qmsg m = {0};
  int n = 0, rc;
  uint64_t prev = 0;
  while ((rc = mpe_queue_get(shared, 0, &m)) == 0) {
    uint64_t v;
    CHECK(m.len == m.tag && m.len >= sizeof v);
    memcpy(&v, m.data, sizeof v);
    CHECK(m.len == sizeof v + v * 37 % 992);
    for (size_t k = sizeof v; k < m.len; k++) CHECK((unsigned char)m.data[k] == (v & 0xff));
    CHECK(n == 0 || v == prev + 1);
    if (n == 0) *first = v;
    prev = v;
    n++;
  }
  CHECK(rc == MPE_ETIMEDOUT && mpe_queue_size(shared) == 0);
  mpe_qmsg_free(&m);
  return n;
}

TEST(test_killed_at_each_step) {
  static const kill_plan plans[] = {
      {MPE__QK_PUT_WRITTEN, 0, 0}, {MPE__QK_PUT_COMMITTED, 0, 1}, {MPE__QK_PUT_SKIP, 0, 1},
      {MPE__QK_PUT_DONE, 0, 1},    {MPE__QK_GET_READ, 0, 1},      {MPE__QK_GET_DONE, 0, 0},
      {MPE__QK_PUT_COMMITTED, 1, -1},
  };
  for (size_t i = 0; i < sizeof plans / sizeof *plans; i++) {
    const kill_plan *k = &plans[i];
    die_in_fresh_queue(k);
    uint64_t first = 0;
    int left = drain_run(&first);
    if (k->left >= 0) CHECK(left == k->left);
    else CHECK(left == WARM + 1 && first == 0); /* the one it died committing included */
    if (left == 1 && !k->fill) CHECK(first >= WARM);
    /* whatever step it died at, the queue works: through wraps and a growth */
    char buf[1000];
    mpe_qmsg m = {0};
    for (uint64_t v = 0; v < 3000; v++) {
      size_t n = fill_msg(buf, v);
      CHECK_RC(mpe_queue_put(shared, buf, n, (uint32_t)n, 5), 0);
      if (v % 3 == 2) {
        int got = drain_run(&first);
        CHECK(got == 3 && first == v - 2);
      }
    }
    CHECK(drain_run(&first) == 0);
    CHECK_RC(mpe_queue_put(shared, "alive", 6, 2, 5), 0);
    CHECK_RC(mpe_queue_get(shared, 5, &m), 0);
    CHECK(m.tag == 2 && strcmp(m.data, "alive") == 0);
    mpe_qmsg_free(&m);
    mpe_queue_free(shared);
  }
}

/* A putter killed after its commit, before it wakes anyone, while a getter
 * with no timeout sleeps: the getter still gets the message (a sleeper
 * looks again by itself). The getter says when it is about to get, and the
 * test waits until the kernel shows it asleep before the putter starts. */
static mpe_queue *hello; /* the getter's handshake (spawn closes inherited descriptors) */

static int sleepy_get(void *arg) {
  (void)arg;
  mpe_spin_set(0); /* sleep at once */
  mpe_qmsg m = {0};
  if (mpe_queue_put(hello, "g", 1, 1, -1) != 0) return 4;
  int rc = mpe_queue_get(shared, -1, &m);
  int ok = rc == 0 && m.tag == 7 && m.len == 6 && strcmp(m.data, "found") == 0;
  mpe_qmsg_free(&m);
  return ok ? 0 : 3;
}

static int put_and_die(void *arg) {
  mpe__queue_kill_at = *(const int *)arg;
  mpe_queue_put(shared, "found", 6, 7, -1);
  return 5; /* not reached */
}

TEST(test_a_sleeping_getter_gets_what_a_killed_putter_committed) {
  static const int steps[] = {MPE__QK_PUT_COMMITTED, MPE__QK_PUT_DONE};
  for (size_t i = 0; i < sizeof steps / sizeof *steps; i++) {
    CHECK_RC(mpe_queue_new(&shared, 0), 0);
    CHECK_RC(mpe_queue_new(&hello, 0), 0);
    mpe_process *g, *p;
    CHECK_RC(mpe_process_spawn(&g, sleepy_get, NULL, NULL), 0);
    mpe_qmsg hi = {0};
    CHECK_RC(mpe_queue_get(hello, 60, &hi), 0);
    mpe_qmsg_free(&hi);
    /* after its handshake the getter only gets: once it sleeps, it is in the queue's wait */
    char st;
    while ((st = check_proc_state(mpe_process_pid(g))) == 'R') sched_yield();
    CHECK(st == 'S');
    CHECK_RC(mpe_process_spawn(&p, put_and_die, (void *)&steps[i], NULL), 0);
    int code = 0;
    CHECK_RC(mpe_process_wait(p, 60), 0);
    CHECK(mpe_process_exitcode(p, &code) == 1 && code == -SIGKILL);
    int rc = mpe_process_wait(g, 30); /* a hang is the failure */
    if (rc != 0) mpe_process_signal(g, SIGKILL), mpe_process_wait(g, -1);
    CHECK_RC(rc, 0);
    CHECK(mpe_process_exitcode(g, &code) == 1 && code == 0);
    mpe_process_free(p);
    mpe_process_free(g);
    mpe_queue_free(hello);
    CHECK(mpe_queue_size(shared) == 0);
    mpe_queue_free(shared);
  }
}

/* Killed inside a growth of the ring (a full ring, or a busy one growing
 * at a wrap), before and after its commit: the puts before it are all
 * there, the one it was making is not. The dead one's rings are lost. */
TEST(test_killed_inside_a_growth) {
  static const kill_plan plans[] = {
      {MPE__QK_GROW_COPIED, 1, -1}, {MPE__QK_GROW_DONE, 1, -1},
      {MPE__QK_GROW_COPIED, 0, 0},  {MPE__QK_GROW_DONE, 0, 0},
  };
  for (size_t i = 0; i < sizeof plans / sizeof *plans; i++) {
    const kill_plan *k = &plans[i];
    die_in_fresh_queue(k);
    uint64_t first = 0;
    size_t size = mpe_queue_size(shared);
    int left = drain_run(&first);
    CHECK((size_t)left == size);
    if (k->left >= 0) CHECK(left == k->left);
    else CHECK(left > WARM && first == 0); /* a full ring: everything put before the growth */
    char buf[1000];
    for (uint64_t v = 0; v < 2000; v++) {
      size_t n = fill_msg(buf, v);
      CHECK_RC(mpe_queue_put(shared, buf, n, (uint32_t)n, 5), 0);
    }
    CHECK(drain_run(&first) == 2000 && first == 0);
    mpe_queue_free(shared);
  }
}

/* Where the queue is empty, the header at the tail is the next record's,
 * not a stale one: a lap of 16-byte records, a lap of 24-byte ones (whose
 * padding keeps stamps of the first lap intact), then 16-byte records
 * again, each put taken at once and a get on the empty queue after it. */
TEST(test_no_stale_record_where_the_queue_is_empty) {
  mpe_queue *q;
  CHECK_RC(mpe_queue_new(&q, 0), 0);
  mpe_qmsg m = {0};
  char buf[16] = {0};
  /* 4096 records of 16 bytes fill 64 KiB; 2730 of 24 bytes, and a skip */
  static const size_t lens[] = {8, 9, 8, 9, 8};
  static const uint32_t counts[] = {4096, 2730, 4096, 2730, 4096};
  for (int lap = 0; lap < 5; lap++) {
    for (uint32_t i = 0; i < counts[lap]; i++) {
      buf[0] = (char)i;
      CHECK_RC(mpe_queue_put(q, buf, lens[lap], i, 0), 0);
      CHECK_RC(mpe_queue_get(q, 0, &m), 0);
      CHECK(m.tag == i && m.len == lens[lap] && m.data[0] == (char)i);
      CHECK_RC(mpe_queue_get(q, 0, &m), MPE_ETIMEDOUT);
    }
  }
  /* a ring filled up to its last byte grows instead: the header after the
   * newest record is never the oldest one's */
  for (uint32_t i = 0; i < 20000; i++) CHECK_RC(mpe_queue_put(q, buf, 8, i, 0), 0);
  for (uint32_t i = 0; i < 20000; i++) {
    CHECK_RC(mpe_queue_get(q, 0, &m), 0);
    CHECK(m.tag == i && m.len == 8);
  }
  CHECK_RC(mpe_queue_get(q, 0, &m), MPE_ETIMEDOUT);
  mpe_qmsg_free(&m);
  mpe_queue_free(q);
}

/* With more processes wanting to run than there are CPUs, a waiter does not
 * spin at all: it looks once and goes to sleep. */
static _Atomic int *busy_stop;
static int busy(void *arg) {
  _Atomic int *started = arg;
  atomic_fetch_add(started, 1);
  while (!atomic_load(busy_stop)) {
  }
  return 0;
}
static int looks;
static int never_ready(void *arg) {
  (void)arg;
  looks++;
  return 0;
}

TEST(test_no_spin_without_a_free_cpu) {
  _Atomic int *flags = mpe_alloc(2 * sizeof *flags);
  CHECK(flags != NULL);
  atomic_store(&flags[0], 0);
  atomic_store(&flags[1], 0);
  busy_stop = &flags[1];
  int n = mpe_cpu_count();
  mpe_process *p[64];
  CHECK(n < 64);
  for (int i = 0; i < n; i++) CHECK_RC(mpe_process_spawn(&p[i], busy, &flags[0], NULL), 0);
  while (atomic_load(&flags[0]) < n) mpe_sleep(0.001, NULL);
  /* n busy processes and this one: no CPU is free (the sample may be 2 ms old) */
  mpe_sleep(0.005, NULL);
  CHECK(!mpe__cpu_free());
  long old = mpe_spin_set(1000000); /* even with a 1 ms budget */
  mpe__spin s = {0};
  looks = 0;
  CHECK(mpe__spin_wait(&s, never_ready, NULL) == 0);
  CHECK(looks == 1);
  mpe_spin_set(old);
  atomic_store(&flags[1], 1);
  for (int i = 0; i < n; i++) {
    CHECK_RC(mpe_process_wait(p[i], 60), 0);
    mpe_process_free(p[i]);
  }
  mpe_free(flags);
}

TEST(test_refs) {
  mpe_queue *q;
  CHECK_RC(mpe_queue_new(&q, 0), 0);
  uint64_t ref = mpe_queue_ref(q);
  CHECK(mpe_queue_from_ref(ref) == q);
  CHECK(mpe_queue_from_ref(ref + 16) == NULL);
  CHECK(mpe_queue_from_ref(12345) == NULL);
  mpe_queue_retain(q);
  mpe_queue_free(q);
  CHECK(mpe_queue_from_ref(ref) == q); /* one reference left */
  mpe_queue_free(q);
  CHECK(mpe_queue_from_ref(ref) == NULL);
}

int main(void) {
  CHECK_RC(mpe_init(256u << 20), 0);
  size_t used0;
  mpe_arena_stats(&used0, NULL);
  RUN(test_fifo_bounds_timeouts);
  RUN(test_close_drains_then_reports_closed);
  RUN(test_messages_of_every_size_through_a_small_bound);
  RUN(test_producers_consumers_every_item_once);
  RUN(test_killed_holders_leave_the_queue_usable);
  RUN(test_killed_at_each_step);
  RUN(test_a_sleeping_getter_gets_what_a_killed_putter_committed);
  RUN(test_no_stale_record_where_the_queue_is_empty);
  RUN(test_refs);
  RUN(test_no_spin_without_a_free_cpu);
  size_t used1;
  mpe_arena_stats(&used1, NULL);
  printf("arena in use: %zu bytes before, %zu after\n", used0, used1);
  CHECK(used1 <= used0 + 4096); /* at most what killed holders were holding */
  /* Last: a process killed inside a growth of the ring leaks that ring. */
  RUN(test_killed_producer_and_consumer_leave_a_contiguous_run);
  RUN(test_killed_inside_a_growth);
  return 0;
}
