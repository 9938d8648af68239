/* test_sync.c - locks, semaphores, events, conditions, barriers and shared
 * values through the public header, across processes, with killed holders
 * and a contender that cannot read /proc. */
#define _GNU_SOURCE /* unshare */
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/mount.h>
#include <unistd.h>

#include "check.h"

static mpe_lock *lock;
static mpe_value *counter;
static int use_lock;

/* Read, pause, write: loses updates unless the lock is held. */
static int incrementer(void *arg) {
  (void)arg;
  for (int i = 0; i < 20; i++) {
    if (use_lock && mpe_lock_acquire(lock, -1) != 0) return 1;
    int64_t v = mpe_value_get_int(counter, 0);
    mpe_sleep(0.0002, NULL);
    mpe_value_set_int(counter, 0, v + 1);
    if (use_lock && mpe_lock_release(lock) != 0) return 2;
  }
  return 0;
}

static void run_counter(int locked) {
  use_lock = locked;
  mpe_value_set_int(counter, 0, 0);
  mpe_process *p[10];
  for (int i = 0; i < 10; i++) CHECK_RC(mpe_process_spawn(&p[i], incrementer, NULL, NULL), 0);
  for (int i = 0; i < 10; i++) {
    int code = -1;
    CHECK_RC(mpe_process_wait(p[i], 60), 0);
    CHECK(mpe_process_exitcode(p[i], &code) == 1 && code == 0);
    mpe_process_free(p[i]);
  }
}

TEST(test_counter_is_exactly_200_with_the_lock) {
  CHECK_RC(mpe_lock_new(&lock, 0), 0);
  CHECK_RC(mpe_value_new(&counter, 'i', 1, lock), 0);
  CHECK(mpe_value_lock(counter) == lock);
  run_counter(1);
  CHECK(mpe_value_get_int(counter, 0) == 200);
  mpe_value_free(counter);
  mpe_lock_free(lock);
}

TEST(test_lock_ownership) {
  mpe_lock *l, *r;
  CHECK_RC(mpe_lock_new(&l, 0), 0);
  CHECK_RC(mpe_lock_new(&r, 1), 0);
  CHECK_RC(mpe_lock_release(l), -EPERM);
  CHECK_RC(mpe_lock_acquire(l, 0), 0);
  CHECK(mpe_lock_locked(l) && mpe_lock_held(l) == 1);
  CHECK_RC(mpe_lock_acquire(l, -1), -EDEADLK); /* would wait for itself */
  CHECK_RC(mpe_lock_release(l), 0);
  CHECK(!mpe_lock_locked(l));
  for (int i = 0; i < 3; i++) CHECK_RC(mpe_lock_acquire(r, -1), 0);
  CHECK(mpe_lock_held(r) == 3);
  for (int i = 0; i < 3; i++) CHECK_RC(mpe_lock_release(r), 0);
  CHECK_RC(mpe_lock_release(r), -EPERM);
  mpe_lock_free(l);
  mpe_lock_free(r);
}

static int fds[2];

static int hold_and_report(void *arg) {
  mpe_lock *l = arg;
  if (mpe_lock_acquire(l, -1) != 0) return 1;
  char c = 'h';
  if (write(fds[1], &c, 1) != 1) return 2;
  for (;;) pause();
}

TEST(test_lock_recovers_from_a_killed_holder) {
  for (int recursive = 0; recursive < 2; recursive++) {
    mpe_lock *l;
    CHECK_RC(mpe_lock_new(&l, recursive), 0);
    CHECK(pipe(fds) == 0);
    mpe_process *p;
    mpe_spawn_options o = {.keep_fds = fds, .nkeep_fds = 2}; /* it reports on the pipe */
    CHECK_RC(mpe_process_spawn(&p, hold_and_report, l, &o), 0);
    char c;
    CHECK(read(fds[0], &c, 1) == 1); /* it holds the lock now */
    CHECK_RC(mpe_lock_acquire(l, 0.05), MPE_ETIMEDOUT);
    CHECK_RC(mpe_process_signal(p, SIGKILL), 0);
    CHECK_RC(mpe_process_wait(p, 10), 0);
    CHECK_RC(mpe_lock_acquire(l, 10), MPE_EOWNERDEAD); /* acquired, and told why */
    CHECK_RC(mpe_lock_release(l), 0);
    CHECK_RC(mpe_lock_acquire(l, 0), 0); /* an ordinary lock again */
    CHECK_RC(mpe_lock_release(l), 0);
    mpe_process_free(p);
    close(fds[0]);
    close(fds[1]);
    mpe_lock_free(l);
  }
}

static int take_permit_and_report(void *arg) {
  mpe_sem *s = arg;
  if (mpe_sem_acquire(s, -1) != 0) return 1;
  char c = 's';
  if (write(fds[1], &c, 1) != 1) return 2;
  for (;;) pause();
}

static int take_permit_and_leave(void *arg) {
  return mpe_sem_acquire(arg, -1) == 0 ? 0 : 1;
}

TEST(test_semaphore) {
  mpe_sem *s, *b;
  CHECK_RC(mpe_sem_new(&s, 2, 0), 0);
  CHECK_RC(mpe_sem_acquire(s, -1), 0);
  CHECK_RC(mpe_sem_acquire(s, 0), 0);
  CHECK(mpe_sem_value(s) == 0);
  double t0 = mpe_time();
  CHECK_RC(mpe_sem_acquire(s, 0.12), MPE_ETIMEDOUT);
  CHECK(mpe_time() - t0 >= 0.119);
  CHECK_RC(mpe_sem_release(s), 0);
  CHECK_RC(mpe_sem_release(s), 0);
  CHECK_RC(mpe_sem_release(s), 0); /* unbounded: may go above the start */
  CHECK(mpe_sem_value(s) == 3);
  mpe_sem_free(s);

  CHECK_RC(mpe_sem_new(&b, 1, 1), 0);
  CHECK_RC(mpe_sem_release(b), -EOVERFLOW);
  /* a permit taken by a killed process comes back */
  CHECK(pipe(fds) == 0);
  mpe_process *p;
  mpe_spawn_options o = {.keep_fds = fds, .nkeep_fds = 2};
  CHECK_RC(mpe_process_spawn(&p, take_permit_and_report, b, &o), 0);
  char c;
  CHECK(read(fds[0], &c, 1) == 1);
  CHECK_RC(mpe_sem_acquire(b, 0.05), MPE_ETIMEDOUT);
  CHECK_RC(mpe_process_signal(p, SIGKILL), 0);
  CHECK_RC(mpe_process_wait(p, 10), 0);
  CHECK_RC(mpe_sem_acquire(b, 10), 0);
  mpe_process_free(p);
  close(fds[0]);
  close(fds[1]);
  /* ... and one taken by a process that ended normally stays taken */
  CHECK_RC(mpe_sem_release(b), 0);
  CHECK_RC(mpe_process_spawn(&p, take_permit_and_leave, b, NULL), 0);
  CHECK_RC(mpe_process_wait(p, 10), 0);
  CHECK(mpe_sem_value(b) == 0);
  mpe_process_free(p);
  mpe_sem_free(b);
}

static mpe_event *ev;
static int set_later(void *arg) {
  (void)arg;
  mpe_sleep(0.02, NULL);
  mpe_event_set(ev);
  return 0;
}

TEST(test_event) {
  CHECK_RC(mpe_event_new(&ev), 0);
  CHECK(!mpe_event_is_set(ev));
  CHECK_RC(mpe_event_wait(ev, 0.02), MPE_ETIMEDOUT);
  mpe_process *p;
  CHECK_RC(mpe_process_spawn(&p, set_later, NULL, NULL), 0);
  CHECK_RC(mpe_event_wait(ev, 10), 0);
  CHECK(mpe_event_is_set(ev));
  CHECK_RC(mpe_event_wait(ev, 0), 0);
  mpe_event_clear(ev);
  CHECK(!mpe_event_is_set(ev));
  CHECK_RC(mpe_process_wait(p, 10), 0);
  mpe_process_free(p);
  mpe_event_free(ev);
}

static mpe_cond *cond;
static mpe_value *flag;
static int notifier(void *arg) {
  (void)arg;
  mpe_lock *l = mpe_cond_lock(cond);
  if (mpe_lock_acquire(l, -1) != 0) return 1;
  mpe_value_set_int(flag, 0, 1);
  mpe_cond_notify(cond, 1);
  return mpe_lock_release(l) == 0 ? 0 : 2;
}

TEST(test_condition) {
  CHECK_RC(mpe_cond_new(&cond, NULL), 0);
  CHECK_RC(mpe_value_new(&flag, 'i', 1, NULL), 0);
  mpe_lock *l = mpe_cond_lock(cond);
  CHECK(mpe_lock_is_recursive(l));
  CHECK_RC(mpe_cond_wait(cond, 0.01), -EPERM); /* not held */
  CHECK_RC(mpe_lock_acquire(l, -1), 0);
  CHECK_RC(mpe_lock_acquire(l, -1), 0); /* twice: wait drops both levels */
  CHECK_RC(mpe_cond_wait(cond, 0.02), MPE_ETIMEDOUT);
  CHECK(mpe_lock_held(l) == 2);
  mpe_process *p;
  CHECK_RC(mpe_process_spawn(&p, notifier, NULL, NULL), 0);
  while (mpe_value_get_int(flag, 0) == 0) {
    int rc = mpe_cond_wait(cond, 10);
    CHECK(rc == 0);
  }
  CHECK(mpe_lock_held(l) == 2);
  CHECK_RC(mpe_lock_release(l), 0);
  CHECK_RC(mpe_lock_release(l), 0);
  CHECK_RC(mpe_process_wait(p, 10), 0);
  int code;
  CHECK(mpe_process_exitcode(p, &code) == 1 && code == 0);
  mpe_process_free(p);
  mpe_value_free(flag);
  mpe_cond_free(cond);
}

static mpe_barrier *bar;
static mpe_value *phase_sum;
static int party(void *arg) {
  int seen = 0;
  for (int round = 0; round < 5; round++) {
    mpe_value_add_int(phase_sum, 0, 1, NULL);
    int last;
    int idx = mpe_barrier_wait(bar, 10, &last);
    if (idx < 0) return 1;
    if (last) mpe_barrier_pass(bar, 1);
    seen |= 1 << idx;
    /* after each round, everyone has added: sum is a multiple of 3 */
    if (mpe_value_get_int(phase_sum, 0) < 3 * (round + 1)) return 2;
  }
  (void)arg;
  return seen ? 0 : 3;
}

TEST(test_barrier) {
  CHECK_RC(mpe_barrier_new(&bar, 3, "data", 4), 0);
  size_t dlen;
  CHECK(memcmp(mpe_barrier_data(bar, &dlen), "data", 4) == 0 && dlen == 4);
  CHECK_RC(mpe_value_new(&phase_sum, 'q', 1, NULL), 0);
  mpe_process *p[3];
  for (int i = 0; i < 3; i++) CHECK_RC(mpe_process_spawn(&p[i], party, NULL, NULL), 0);
  for (int i = 0; i < 3; i++) {
    int code = -1;
    CHECK_RC(mpe_process_wait(p[i], 30), 0);
    CHECK(mpe_process_exitcode(p[i], &code) == 1 && code == 0);
    mpe_process_free(p[i]);
  }
  CHECK(mpe_value_get_int(phase_sum, 0) == 15);
  /* a lone waiter times out and breaks the barrier */
  int last;
  CHECK_RC(mpe_barrier_wait(bar, 0.02, &last), MPE_ETIMEDOUT);
  CHECK(mpe_barrier_broken(bar));
  CHECK_RC(mpe_barrier_wait(bar, 1, &last), MPE_ECLOSED);
  mpe_barrier_reset(bar);
  CHECK(!mpe_barrier_broken(bar) && mpe_barrier_waiting(bar) == 0);
  mpe_barrier_abort(bar);
  CHECK(mpe_barrier_broken(bar));
  mpe_value_free(phase_sum);
  mpe_barrier_free(bar);
}

static int take_and_give_back(void *arg) {
  mpe_sem *s = arg;
  if (mpe_sem_acquire(s, 10) != 0) return 1;
  return mpe_sem_release(s) == 0 ? 0 : 2;
}

static int take_and_leave_forgetting(void *arg) {
  if (mpe_sem_acquire(arg, 10) != 0) return 1;
  if (mpe_sem_release(arg) != 0) return 2;
  if (mpe_sem_acquire(arg, 10) != 0) return 3;
  mpe_sem_release(arg);
  mpe_sem_forget_process(arg); /* what the binding does when a child ends */
  return 0;
}

/* 100 holders one after another (more than the 32 slots), then a killed
 * holder's permit still comes back. */
TEST(test_semaphore_any_number_of_holders) {
  mpe_sem *s;
  CHECK_RC(mpe_sem_new(&s, 1, 1), 0);
  for (int i = 0; i < 100; i++) {
    mpe_process *p;
    int code = -1;
    CHECK_RC(mpe_process_spawn(&p, i % 2 ? take_and_give_back : take_and_leave_forgetting, s, NULL), 0);
    CHECK_RC(mpe_process_wait(p, 30), 0);
    CHECK(mpe_process_exitcode(p, &code) == 1 && code == 0);
    mpe_process_free(p);
  }
  CHECK(mpe_sem_value(s) == 1);
  CHECK(pipe(fds) == 0);
  mpe_process *p;
  mpe_spawn_options o = {.keep_fds = fds, .nkeep_fds = 2};
  CHECK_RC(mpe_process_spawn(&p, take_permit_and_report, s, &o), 0);
  char c;
  CHECK(read(fds[0], &c, 1) == 1);
  CHECK_RC(mpe_process_signal(p, SIGKILL), 0);
  CHECK_RC(mpe_process_wait(p, 10), 0);
  CHECK_RC(mpe_sem_acquire(s, 10), 0); /* the killed holder's permit */
  CHECK_RC(mpe_sem_release(s), 0);
  mpe_process_free(p);
  close(fds[0]);
  close(fds[1]);
  mpe_sem_free(s);
}

/* ------------------------------------------- a contender without /proc */

static mpe_lock *np_lock;
static mpe_sem *np_sem;
static int np_go[2], np_back[2];

static int holds_both(void *arg) {
  (void)arg;
  if (mpe_lock_acquire(np_lock, -1) != 0 || mpe_sem_acquire(np_sem, -1) != 0) return 1;
  char c = 'h';
  if (write(np_back[1], &c, 1) != 1) return 2;
  for (;;) pause();
}

/* In a mount namespace of its own, /proc is an empty tmpfs. 0, or -errno. */
static int hide_proc(void) {
  if (unshare(CLONE_NEWNS) != 0 && unshare(CLONE_NEWUSER | CLONE_NEWNS) != 0) return -errno;
  if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0) return -errno;
  if (mount("none", "/proc", "tmpfs", 0, "size=16k") != 0) return -errno;
  return 0;
}

/* Phase one: the holder lives; 0 or the failed step. */
static int contend_while_alive(void) {
  if (access("/proc/self/stat", F_OK) == 0) return 10; /* /proc must be empty here */
  /* the holder is alive: no failed read may count as its death */
  if (mpe_lock_acquire(np_lock, 0) != MPE_ETIMEDOUT) return 11;
  if (mpe_lock_acquire(np_lock, 0.3) != MPE_ETIMEDOUT) return 12;
  if (mpe_sem_acquire(np_sem, 0.3) != MPE_ETIMEDOUT) return 13;
  return 0;
}

static int contends_without_proc(void *arg) {
  (void)arg;
  int rc = hide_proc();
  char c = rc == 0 ? 'n' : 's'; /* s: this system cannot hide /proc */
  if (write(np_back[1], &c, 1) != 1 || rc != 0) return rc == 0 ? 9 : 0;
  rc = contend_while_alive();
  c = rc == 0 ? 'w' : 'f';
  if (write(np_back[1], &c, 1) != 1 || rc != 0) return rc ? rc : 14;
  if (read(np_go[0], &c, 1) != 1) return 15;
  /* now it is dead: evidence without /proc */
  if (mpe_lock_acquire(np_lock, 10) != MPE_EOWNERDEAD) return 16;
  if (mpe_sem_acquire(np_sem, 10) != 0) return 17;
  return mpe_lock_release(np_lock) == 0 ? 0 : 18;
}

TEST(test_no_proc_is_no_evidence_of_death) {
  CHECK_RC(mpe_lock_new(&np_lock, 0), 0);
  CHECK_RC(mpe_sem_new(&np_sem, 1, 0), 0);
  CHECK(pipe(np_go) == 0 && pipe(np_back) == 0);
  int keep[] = {np_go[0], np_go[1], np_back[0], np_back[1]};
  mpe_spawn_options o = {.keep_fds = keep, .nkeep_fds = 4};
  mpe_process *h, *w;
  CHECK_RC(mpe_process_spawn(&h, holds_both, NULL, &o), 0);
  char c;
  CHECK(read(np_back[0], &c, 1) == 1 && c == 'h');
  CHECK_RC(mpe_process_spawn(&w, contends_without_proc, NULL, &o), 0);
  CHECK(read(np_back[0], &c, 1) == 1);
  if (c == 's') {
    printf("skip test_no_proc_is_no_evidence_of_death: cannot make a mount namespace here\n");
  } else {
    CHECK(read(np_back[0], &c, 1) == 1);
    if (c == 'w') {
      CHECK_RC(mpe_process_signal(h, SIGKILL), 0);
      CHECK_RC(mpe_process_wait(h, 10), 0); /* reaped: no such process */
      CHECK(write(np_go[1], "k", 1) == 1);
    }
  }
  int code = -1;
  CHECK_RC(mpe_process_wait(w, 60), 0);
  CHECK(mpe_process_exitcode(w, &code) == 1);
  if (code != 0) fprintf(stderr, "contender without /proc failed at step %d\n", code);
  CHECK(code == 0);
  mpe_process_free(w);
  mpe_process_free(h);
  for (int i = 0; i < 4; i++) close(keep[i]);
  mpe_sem_free(np_sem);
  mpe_lock_free(np_lock);
}

TEST(test_values) {
  mpe_value *v;
  CHECK_RC(mpe_value_new(&v, 'x', 1, NULL), -EINVAL);
  CHECK_RC(mpe_value_new(&v, 'b', 4, NULL), 0);
  CHECK(mpe_value_count(v) == 4 && mpe_value_typecode(v) == 'b');
  CHECK_RC(mpe_value_set_int(v, 0, 127), 0);
  CHECK_RC(mpe_value_set_int(v, 1, 128), -ERANGE);
  CHECK_RC(mpe_value_set_int(v, 1, -128), 0);
  CHECK(mpe_value_get_int(v, 1) == -128);
  int64_t out;
  CHECK_RC(mpe_value_add_int(v, 0, 1, &out), -ERANGE);
  CHECK(mpe_value_get_int(v, 0) == 127);
  CHECK_RC(mpe_value_add_int(v, 0, -27, &out), 0);
  CHECK(out == 100);
  mpe_value_free(v);
  static const char codes[] = "BhHiIlLqQ";
  for (const char *t = codes; *t; t++) {
    CHECK_RC(mpe_value_new(&v, *t, 2, NULL), 0);
    CHECK_RC(mpe_value_set_int(v, 1, 42), 0);
    CHECK(mpe_value_get_int(v, 1) == 42 && mpe_value_get_int(v, 0) == 0);
    CHECK_RC(mpe_value_add_int(v, 1, 8, &out), 0);
    CHECK(out == 50);
    mpe_value_free(v);
  }
  CHECK_RC(mpe_value_new(&v, 'd', 1, NULL), 0);
  double d;
  CHECK_RC(mpe_value_add_float(v, 0, 0.5, &d), 0);
  CHECK_RC(mpe_value_add_float(v, 0, 0.25, &d), 0);
  CHECK(d == 0.75 && mpe_value_get_float(v, 0) == 0.75);
  mpe_value_free(v);
}

static int add_many(void *arg) {
  mpe_value *v = arg;
  for (int i = 0; i < 100000; i++)
    if (mpe_value_add_int(v, 0, 1, NULL) != 0) return 1;
  return 0;
}

TEST(test_atomic_add_across_processes) {
  mpe_value *v;
  CHECK_RC(mpe_value_new(&v, 'q', 1, NULL), 0);
  mpe_process *p[2];
  for (int i = 0; i < 2; i++) CHECK_RC(mpe_process_spawn(&p[i], add_many, v, NULL), 0);
  for (int i = 0; i < 2; i++) {
    CHECK_RC(mpe_process_wait(p[i], 60), 0);
    mpe_process_free(p[i]);
  }
  CHECK(mpe_value_get_int(v, 0) == 200000);
  mpe_value_free(v);
}

int main(void) {
  CHECK_RC(mpe_init(64u << 20), 0);
  RUN(test_counter_is_exactly_200_with_the_lock);
  RUN(test_lock_ownership);
  RUN(test_lock_recovers_from_a_killed_holder);
  RUN(test_semaphore);
  RUN(test_event);
  RUN(test_condition);
  RUN(test_barrier);
  RUN(test_semaphore_any_number_of_holders);
  RUN(test_no_proc_is_no_evidence_of_death);
  RUN(test_values);
  RUN(test_atomic_add_across_processes);
  size_t used;
  mpe_arena_stats(&used, NULL);
  CHECK(used == 0); /* every object freed */
  return 0;
}
