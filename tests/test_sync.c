/* test_sync.c - locks, semaphores, events, conditions, barriers and shared
 * values through the public header, across processes, with killed holders,
 * a contender that cannot read /proc, signals during every wait, and dead
 * barrier parties. */
#define _GNU_SOURCE /* unshare */
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
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

/* Waits (a handshake, not a guess) until v[i] >= want; fails after 60 s. */
static void await_count(mpe_value *v, size_t i, int64_t want) {
  double t0 = mpe_time();
  while (mpe_value_get_int(v, i) < want) {
    CHECK(mpe_time() - t0 < 60);
    mpe_sleep(0.001, NULL);
  }
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

/* ------------------------------------------- signals during every wait */

enum { W_LOCK, W_RLOCK, W_SEM, W_EVENT, W_COND, W_BARRIER, W_KINDS };
static const char *const kind_names[] = {"Lock", "RLock", "Semaphore", "Event", "Condition", "Barrier"};
static mpe_lock *w_lock, *w_rlock;
static mpe_sem *w_sem;
static mpe_event *w_event;
static mpe_cond *w_cond;
static mpe_barrier *w_bar;
static mpe_value *w_state; /* [0] waiter ready, [1] MPE_EINTR returns seen, [2] waiter done */

static void on_usr1(int sig) { (void)sig; }

/* One wait of the kind; the engine's code. */
static int wait_once(int kind, double timeout, int *last) {
  switch (kind) {
  case W_LOCK: return mpe_lock_acquire(w_lock, timeout);
  case W_RLOCK: return mpe_lock_acquire(w_rlock, timeout);
  case W_SEM: return mpe_sem_acquire(w_sem, timeout);
  case W_EVENT: return mpe_event_wait(w_event, timeout);
  case W_COND: return mpe_cond_wait(w_cond, timeout);
  default: return mpe_barrier_wait(w_bar, timeout, last);
  }
}

/* Waits with a handler for SIGUSR1 that has no SA_RESTART: every MPE_EINTR
 * is counted and the wait called again with the time left, as the header
 * says; the wait must then end as if no signal had come. */
static int interrupted_waiter(void *arg) {
  int kind = (int)(intptr_t)arg;
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_usr1;
  sigemptyset(&sa.sa_mask);
  if (sigaction(SIGUSR1, &sa, NULL) != 0) return 20;
  if (kind == W_COND && mpe_lock_acquire(mpe_cond_lock(w_cond), -1) != 0) return 21;
  mpe_value_set_int(w_state, 0, 1);
  double deadline = mpe_time() + 60;
  int rc, last = 0;
  while ((rc = wait_once(kind, deadline - mpe_time(), &last)) == MPE_EINTR)
    mpe_value_add_int(w_state, 1, 1, NULL);
  mpe_value_set_int(w_state, 2, 1);
  switch (kind) {
  case W_LOCK: return rc == 0 && mpe_lock_release(w_lock) == 0 ? 0 : 1;
  case W_RLOCK: return rc == 0 && mpe_lock_release(w_rlock) == 0 ? 0 : 1;
  case W_SEM: case W_EVENT: return rc == 0 ? 0 : 1;
  case W_COND: return rc == 0 && mpe_lock_held(mpe_cond_lock(w_cond)) == 1 &&
                             mpe_lock_release(mpe_cond_lock(w_cond)) == 0 ? 0 : 1;
  default: return rc == 0 && !last ? 0 : 1; /* the first arrival, counted once */
  }
}

static int signaller(void *arg) {
  pid_t pid = (pid_t)(intptr_t)arg;
  while (mpe_value_get_int(w_state, 2) == 0 && kill(pid, SIGUSR1) == 0) mpe_sleep(0.001, NULL);
  return 0;
}

TEST(test_signals_during_every_wait) {
  CHECK_RC(mpe_lock_new(&w_lock, 0), 0);
  CHECK_RC(mpe_lock_new(&w_rlock, 1), 0);
  CHECK_RC(mpe_sem_new(&w_sem, 0, 0), 0);
  CHECK_RC(mpe_event_new(&w_event), 0);
  CHECK_RC(mpe_cond_new(&w_cond, NULL), 0);
  CHECK_RC(mpe_barrier_new(&w_bar, 2, NULL, 0), 0);
  CHECK_RC(mpe_value_new(&w_state, 'q', 3, NULL), 0);
  for (int kind = 0; kind < W_KINDS; kind++) {
    for (int i = 0; i < 3; i++) mpe_value_set_int(w_state, (size_t)i, 0);
    if (kind == W_LOCK) CHECK_RC(mpe_lock_acquire(w_lock, -1), 0);
    if (kind == W_RLOCK) CHECK_RC(mpe_lock_acquire(w_rlock, -1), 0);
    mpe_process *w, *s;
    CHECK_RC(mpe_process_spawn(&w, interrupted_waiter, (void *)(intptr_t)kind, NULL), 0);
    await_count(w_state, 0, 1);
    CHECK_RC(mpe_process_spawn(&s, signaller, (void *)(intptr_t)mpe_process_pid(w), NULL), 0);
    double t0 = mpe_time();
    while (mpe_value_get_int(w_state, 1) < 3) { /* interrupted three times ... */
      CHECK(mpe_value_get_int(w_state, 2) == 0); /* ... and waiting still */
      CHECK(mpe_time() - t0 < 60);
      mpe_sleep(0.001, NULL);
    }
    int last = 0;
    switch (kind) {
    case W_LOCK: CHECK_RC(mpe_lock_release(w_lock), 0); break;
    case W_RLOCK: CHECK_RC(mpe_lock_release(w_rlock), 0); break;
    case W_SEM: CHECK_RC(mpe_sem_release(w_sem), 0); break;
    case W_EVENT: /* set and at once clear: the waiter still saw it */
      mpe_event_set(w_event);
      mpe_event_clear(w_event);
      break;
    case W_COND:
      CHECK_RC(mpe_lock_acquire(mpe_cond_lock(w_cond), -1), 0);
      mpe_cond_notify(w_cond, 1);
      CHECK_RC(mpe_lock_release(mpe_cond_lock(w_cond)), 0);
      break;
    default: /* the second arrival ends the round: the first is counted once */
      CHECK_RC(mpe_barrier_wait(w_bar, 30, &last), 1);
      CHECK(last);
      mpe_barrier_pass(w_bar, 1);
      break;
    }
    int code = -1;
    CHECK_RC(mpe_process_wait(w, 60), 0);
    CHECK(mpe_process_exitcode(w, &code) == 1);
    if (code != 0) fprintf(stderr, "%s: the interrupted wait ended wrong (%d)\n", kind_names[kind], code);
    CHECK(code == 0);
    CHECK_RC(mpe_process_wait(s, 60), 0);
    mpe_process_free(s);
    mpe_process_free(w);
  }
  CHECK(!mpe_barrier_broken(w_bar));
  mpe_value_free(w_state);
  mpe_barrier_free(w_bar);
  mpe_cond_free(w_cond);
  mpe_event_free(w_event);
  mpe_sem_free(w_sem);
  mpe_lock_free(w_rlock);
  mpe_lock_free(w_lock);
}

/* The host's stop flag, once set, ends every wait with MPE_EINTR even when
 * no signal comes (the signal may have landed before the wait slept). */
TEST(test_stop_flag_ends_every_wait) {
  CHECK_RC(mpe_lock_new(&w_lock, 0), 0);
  CHECK_RC(mpe_sem_new(&w_sem, 0, 0), 0);
  CHECK_RC(mpe_event_new(&w_event), 0);
  CHECK_RC(mpe_cond_new(&w_cond, NULL), 0);
  CHECK_RC(mpe_barrier_new(&w_bar, 2, NULL, 0), 0);
  CHECK(pipe(fds) == 0);
  mpe_process *h;
  mpe_spawn_options o = {.keep_fds = fds, .nkeep_fds = 2};
  CHECK_RC(mpe_process_spawn(&h, hold_and_report, w_lock, &o), 0);
  char c;
  CHECK(read(fds[0], &c, 1) == 1);
  static volatile sig_atomic_t stop;
  stop = 1;
  mpe_interrupt_flag(&stop);
  int last = 0;
  CHECK_RC(mpe_lock_acquire(w_lock, 60), MPE_EINTR);
  CHECK_RC(mpe_sem_acquire(w_sem, 60), MPE_EINTR);
  CHECK_RC(mpe_event_wait(w_event, 60), MPE_EINTR);
  CHECK_RC(mpe_lock_acquire(mpe_cond_lock(w_cond), -1), 0); /* uncontended: taken at once */
  CHECK_RC(mpe_cond_wait(w_cond, 60), MPE_EINTR);
  CHECK(mpe_lock_held(mpe_cond_lock(w_cond)) == 1); /* held again */
  CHECK_RC(mpe_lock_release(mpe_cond_lock(w_cond)), 0);
  CHECK_RC(mpe_barrier_wait(w_bar, 60, &last), MPE_EINTR);
  CHECK(!mpe_barrier_broken(w_bar) && mpe_barrier_waiting(w_bar) == 1); /* still arrived */
  mpe_barrier_abort(w_bar);                                            /* the host gives up */
  CHECK(mpe_barrier_broken(w_bar));
  mpe_interrupt_flag(NULL);
  CHECK_RC(mpe_process_signal(h, SIGKILL), 0);
  CHECK_RC(mpe_process_wait(h, 10), 0);
  mpe_process_free(h);
  close(fds[0]);
  close(fds[1]);
  mpe_barrier_free(w_bar);
  mpe_cond_free(w_cond);
  mpe_event_free(w_event);
  mpe_sem_free(w_sem);
  mpe_lock_free(w_lock);
}

/* ------------------------------------------------ Event: set then clear */

static int event_waiter(void *arg) { return mpe_event_wait(arg, 30) == 0 ? 0 : 1; }

TEST(test_event_set_then_clear_wakes_every_waiter) {
  mpe_event *e;
  CHECK_RC(mpe_event_new(&e), 0);
  for (int round = 0; round < 3; round++) {
    mpe_process *p[5];
    for (int i = 0; i < 5; i++) CHECK_RC(mpe_process_spawn(&p[i], event_waiter, e, NULL), 0);
    double t0 = mpe_time();
    while (mpe_event_waiting(e) < 5) { /* all five are inside wait */
      CHECK(mpe_time() - t0 < 60);
      mpe_sleep(0.001, NULL);
    }
    mpe_event_set(e);
    mpe_event_clear(e);
    for (int i = 0; i < 5; i++) {
      int code = -1;
      CHECK_RC(mpe_process_wait(p[i], 60), 0);
      CHECK(mpe_process_exitcode(p[i], &code) == 1 && code == 0);
      mpe_process_free(p[i]);
    }
    CHECK(!mpe_event_is_set(e) && mpe_event_waiting(e) == 0);
  }
  mpe_event_free(e);
}

/* ---------------------------------------------- Barrier: a dead party */

static mpe_barrier *dp_bar;
static int dp_pipe[2];

static int barrier_waiter(void *arg) {
  pid_t want = (pid_t)(intptr_t)arg; /* 0: any */
  int last;
  int rc = mpe_barrier_wait(dp_bar, 60, &last);
  if (rc != MPE_ECLOSED) return 1;
  pid_t dead = mpe_barrier_dead_pid(dp_bar);
  return dead != 0 && (want == 0 || dead == want) ? 0 : 2;
}

/* Arrives last, says so, and hangs inside what would be the action. */
static int last_in_action(void *arg) {
  (void)arg;
  int last = 0;
  if (mpe_barrier_wait(dp_bar, 60, &last) < 0 || !last) return 1;
  if (write(dp_pipe[1], "a", 1) != 1) return 2;
  for (;;) pause();
}

static void await_waiting(mpe_barrier *b, unsigned n) {
  double t0 = mpe_time();
  while (mpe_barrier_waiting(b) < n) {
    CHECK(mpe_time() - t0 < 60);
    mpe_sleep(0.001, NULL);
  }
}

TEST(test_barrier_a_dead_party_breaks_it) {
  /* 1. the last arrival killed inside the action */
  CHECK_RC(mpe_barrier_new(&dp_bar, 3, NULL, 0), 0);
  CHECK(pipe(dp_pipe) == 0);
  mpe_process *w[2], *l;
  for (int i = 0; i < 2; i++) CHECK_RC(mpe_process_spawn(&w[i], barrier_waiter, NULL, NULL), 0);
  await_waiting(dp_bar, 2);
  mpe_spawn_options o = {.keep_fds = dp_pipe, .nkeep_fds = 2};
  CHECK_RC(mpe_process_spawn(&l, last_in_action, NULL, &o), 0);
  char c;
  CHECK(read(dp_pipe[0], &c, 1) == 1);
  CHECK_RC(mpe_process_signal(l, SIGKILL), 0);
  for (int i = 0; i < 2; i++) {
    int code = -1;
    CHECK_RC(mpe_process_wait(w[i], 60), 0);
    CHECK(mpe_process_exitcode(w[i], &code) == 1 && code == 0);
    mpe_process_free(w[i]);
  }
  CHECK(mpe_barrier_broken(dp_bar) && mpe_barrier_dead_pid(dp_bar) == mpe_process_pid(l));
  mpe_process_free(l);
  mpe_barrier_reset(dp_bar);
  CHECK(!mpe_barrier_broken(dp_bar) && mpe_barrier_dead_pid(dp_bar) == 0);

  /* 2. a waiter killed while the others gather: the next waiter does not
   *    wait for the round forever */
  mpe_process *k;
  CHECK_RC(mpe_process_spawn(&k, barrier_waiter, NULL, NULL), 0);
  await_waiting(dp_bar, 1);
  pid_t kpid = mpe_process_pid(k);
  CHECK_RC(mpe_process_signal(k, SIGKILL), 0);
  CHECK_RC(mpe_process_wait(k, 10), 0); /* reaped this time */
  mpe_process_free(k);
  CHECK_RC(barrier_waiter((void *)(intptr_t)kpid), 0);
  close(dp_pipe[0]);
  close(dp_pipe[1]);
  mpe_barrier_free(dp_bar);
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
  RUN(test_signals_during_every_wait);
  RUN(test_stop_flag_ends_every_wait);
  RUN(test_event_set_then_clear_wakes_every_waiter);
  RUN(test_barrier_a_dead_party_breaks_it);
  RUN(test_values);
  RUN(test_atomic_add_across_processes);
  size_t used;
  mpe_arena_stats(&used, NULL);
  CHECK(used == 0); /* every object freed */
  return 0;
}
