/* test_process.c - spawn, wait with timeouts, signals, exit statuses,
 * parent death, descriptors, grandchildren joined, ended children reaped. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"

static int exit_with(void *arg) { return (int)(intptr_t)arg; }

static int sleep_forever(void *arg) {
  (void)arg;
  for (;;) pause();
  return 0;
}

static int sleep_a_bit(void *arg) {
  mpe_sleep(*(double *)arg, NULL);
  return 7;
}

static int raise_usr1(void *arg) {
  (void)arg;
  raise(SIGUSR1); /* not SIGSEGV: sanitizers catch that one */
  return 0;
}

TEST(test_exit_codes) {
  for (int want = 0; want < 256; want += 51) {
    mpe_process *p;
    CHECK_RC(mpe_process_spawn(&p, exit_with, (void *)(intptr_t)want, NULL), 0);
    CHECK(mpe_process_pid(p) > 0);
    CHECK_RC(mpe_process_wait(p, -1), 0);
    int code = -1;
    CHECK_RC(mpe_process_exitcode(p, &code), 1);
    CHECK(code == want);
    mpe_process_free(p);
  }
}

TEST(test_signal_statuses) {
  mpe_process *p;
  CHECK_RC(mpe_process_spawn(&p, sleep_forever, NULL, NULL), 0);
  int code = 0;
  CHECK_RC(mpe_process_exitcode(p, &code), 0); /* running */
  CHECK_RC(mpe_process_wait(p, 0.05), MPE_ETIMEDOUT);
  CHECK_RC(mpe_process_signal(p, SIGTERM), 0);
  CHECK_RC(mpe_process_wait(p, 10), 0);
  CHECK_RC(mpe_process_exitcode(p, &code), 1);
  CHECK(code == -SIGTERM);
  CHECK_RC(mpe_process_signal(p, SIGKILL), 0); /* already gone: harmless */
  mpe_process_free(p);

  CHECK_RC(mpe_process_spawn(&p, sleep_forever, NULL, NULL), 0);
  CHECK_RC(mpe_process_signal(p, SIGKILL), 0);
  CHECK_RC(mpe_process_wait(p, 10), 0);
  CHECK_RC(mpe_process_exitcode(p, &code), 1);
  CHECK(code == -SIGKILL);
  mpe_process_free(p);

  CHECK_RC(mpe_process_spawn(&p, raise_usr1, NULL, NULL), 0);
  CHECK_RC(mpe_process_wait(p, 10), 0);
  CHECK_RC(mpe_process_exitcode(p, &code), 1);
  CHECK(code == -SIGUSR1);
  mpe_process_free(p);
}

static void swallow(int sig) { (void)sig; }

TEST(test_child_starts_with_default_handlers) {
  /* A parent's handler must not swallow a SIGTERM sent right after fork. */
  struct sigaction sa, old;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = swallow;
  sigaction(SIGTERM, &sa, &old);
  for (int i = 0; i < 20; i++) {
    mpe_process *p;
    CHECK_RC(mpe_process_spawn(&p, sleep_forever, NULL, NULL), 0);
    CHECK_RC(mpe_process_signal(p, SIGTERM), 0);
    CHECK_RC(mpe_process_wait(p, 10), 0);
    int code;
    CHECK_RC(mpe_process_exitcode(p, &code), 1);
    CHECK(code == -SIGTERM);
    mpe_process_free(p);
  }
  sigaction(SIGTERM, &old, NULL);
}

static void swallow_info(int sig, siginfo_t *si, void *uc) {
  (void)sig;
  (void)si;
  (void)uc;
}

static int is_handler(int sig, void (*h)(int)) {
  struct sigaction sa;
  return sigaction(sig, NULL, &sa) == 0 && sa.sa_handler == h;
}

/* 31 when the child sees: the caught signals (real-time ones too, and an
 * SA_SIGINFO one) back to default, the ignored one still ignored, an
 * untouched one default. */
static int report_handlers(void *arg) {
  (void)arg;
  return is_handler(SIGRTMIN + 5, SIG_DFL) | is_handler(SIGUSR2, SIG_DFL) << 1 |
         is_handler(SIGRTMIN + 3, SIG_DFL) << 2 | is_handler(SIGHUP, SIG_IGN) << 3 |
         is_handler(SIGWINCH, SIG_DFL) << 4;
}

TEST(test_child_resets_exactly_the_caught_signals) {
  struct sigaction sa, info, ign, old[4];
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = swallow;
  memset(&info, 0, sizeof info);
  info.sa_sigaction = swallow_info;
  info.sa_flags = SA_SIGINFO;
  memset(&ign, 0, sizeof ign);
  ign.sa_handler = SIG_IGN;
  /* not SIGRTMAX: valgrind keeps the highest signals for itself */
  CHECK(sigaction(SIGRTMIN + 5, &info, &old[0]) == 0);
  CHECK(sigaction(SIGUSR2, &sa, &old[1]) == 0);
  CHECK(sigaction(SIGRTMIN + 3, &sa, &old[2]) == 0);
  CHECK(sigaction(SIGHUP, &ign, &old[3]) == 0);
  mpe_process *p;
  CHECK_RC(mpe_process_spawn(&p, report_handlers, NULL, NULL), 0);
  CHECK_RC(mpe_process_wait(p, 10), 0);
  int code;
  CHECK_RC(mpe_process_exitcode(p, &code), 1);
  CHECK(code == 31);
  mpe_process_free(p);
  CHECK(is_handler(SIGUSR2, swallow)); /* the parent keeps its own */
  sigaction(SIGRTMIN + 5, &old[0], NULL);
  sigaction(SIGUSR2, &old[1], NULL);
  sigaction(SIGRTMIN + 3, &old[2], NULL);
  sigaction(SIGHUP, &old[3], NULL);
}

TEST(test_wait_timeout_is_honoured) {
  double nap = 0.2;
  mpe_process *p;
  CHECK_RC(mpe_process_spawn(&p, sleep_a_bit, &nap, NULL), 0);
  double t0 = mpe_time();
  CHECK_RC(mpe_process_wait(p, 0.05), MPE_ETIMEDOUT);
  CHECK(mpe_time() - t0 >= 0.049); /* not early */
  CHECK_RC(mpe_process_wait(p, 30), 0);
  int code;
  CHECK_RC(mpe_process_exitcode(p, &code), 1);
  CHECK(code == 7);
  mpe_process_free(p);
}

TEST(test_free_kills_and_reaps) {
  mpe_process *p;
  CHECK_RC(mpe_process_spawn(&p, sleep_forever, NULL, NULL), 0);
  pid_t pid = mpe_process_pid(p);
  mpe_process_free(p);
  CHECK(kill(pid, 0) < 0 && errno == ESRCH); /* no zombie: reaped */
}

TEST(test_join_all_terminates_daemons) {
  mpe_process *d, *w;
  mpe_spawn_options daemon = {.daemon = 1};
  double nap = 0.05;
  CHECK_RC(mpe_process_spawn(&d, sleep_forever, NULL, &daemon), 0);
  CHECK_RC(mpe_process_spawn(&w, sleep_a_bit, &nap, NULL), 0);
  pid_t dp = mpe_process_pid(d), wp = mpe_process_pid(w);
  mpe_process_detach(d);
  mpe_process_detach(w);
  CHECK(mpe_process_join_all(30) == 0);
  CHECK(kill(dp, 0) < 0 && kill(wp, 0) < 0);
  CHECK(mpe_process_reap() == 0);
}

/* The grandchild reports its pid, then its parent is SIGKILLed: the
 * grandchild must die too (PR_SET_PDEATHSIG). */
static int fds[2];
static int spawn_grandchild(void *arg) {
  (void)arg;
  mpe_process *g;
  mpe_spawn_options o = {.inherit_fds = 1};
  if (mpe_process_spawn(&g, sleep_forever, NULL, &o) != 0) return 1;
  pid_t pid = mpe_process_pid(g);
  if (write(fds[1], &pid, sizeof pid) != sizeof pid) return 1;
  for (;;) pause();
}

TEST(test_children_die_with_parent) {
  CHECK(pipe(fds) == 0);
  mpe_process *c;
  mpe_spawn_options o = {.keep_fds = fds, .nkeep_fds = 2}; /* keep the report pipe */
  CHECK_RC(mpe_process_spawn(&c, spawn_grandchild, NULL, &o), 0);
  pid_t g = 0;
  CHECK(read(fds[0], &g, sizeof g) == sizeof g);
  CHECK_RC(mpe_process_signal(c, SIGKILL), 0);
  CHECK_RC(mpe_process_wait(c, 10), 0);
  /* The grandchild was reparented to init, which reaps it once it dies. */
  int gone = 0;
  for (int i = 0; i < 500 && !gone; i++) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)g);
    FILE *f = fopen(path, "r");
    if (!f) gone = 1;
    else {
      char st = 0;
      if (fscanf(f, "%*d %*s %c", &st) == 1 && st == 'Z') gone = 1;
      fclose(f);
    }
    if (!gone) mpe_sleep(0.01, NULL);
  }
  CHECK(gone);
  mpe_process_free(c);
  close(fds[0]);
  close(fds[1]);
}

static int count_fds(void) {
  DIR *d = opendir("/proc/self/fd");
  int n = 0;
  struct dirent *e;
  /* below 1000: tools such as valgrind keep descriptors of their own at
   * the top of the range, which a child cannot close */
  while ((e = readdir(d)) != NULL)
    if (e->d_name[0] != '.' && atoi(e->d_name) < 1000) n++;
  closedir(d);
  return n - 1; /* the DIR's own */
}

static int report_fds(void *arg) { return count_fds() == (int)(intptr_t)arg ? 0 : 100 + count_fds(); }

TEST(test_no_descriptor_leaks_into_child) {
  int base = 3; /* stdin, stdout, stderr: nothing else comes along */
  int extra[2];
  CHECK(pipe(extra) == 0); /* not given to the child: closed there */
  mpe_pipe *a, *b;
  CHECK_RC(mpe_pipe_new(&a, &b, 1), 0);
  mpe_process *other;
  CHECK_RC(mpe_process_spawn(&other, sleep_forever, NULL, NULL), 0); /* holds a pidfd */
  mpe_process *p;
  CHECK_RC(mpe_process_spawn(&p, report_fds, (void *)(intptr_t)base, NULL), 0);
  CHECK_RC(mpe_process_wait(p, 10), 0);
  int code;
  CHECK_RC(mpe_process_exitcode(p, &code), 1);
  CHECK(code == 0); /* neither the pipe nor the sibling's pidfd came along */
  mpe_process_free(p);
  mpe_pipe *keep[1] = {b};
  mpe_spawn_options o = {.keep = keep, .nkeep = 1};
  CHECK_RC(mpe_process_spawn(&p, report_fds, (void *)(intptr_t)(base + 2), &o), 0);
  CHECK_RC(mpe_process_wait(p, 10), 0);
  CHECK_RC(mpe_process_exitcode(p, &code), 1);
  CHECK(code == 0); /* exactly the end it was given, and its pipe's lock page */
  mpe_process_free(p);
  /* a descriptor given by number is kept */
  mpe_spawn_options k = {.keep_fds = extra, .nkeep_fds = 1};
  CHECK_RC(mpe_process_spawn(&p, report_fds, (void *)(intptr_t)(base + 1), &k), 0);
  CHECK_RC(mpe_process_wait(p, 10), 0);
  CHECK_RC(mpe_process_exitcode(p, &code), 1);
  CHECK(code == 0);
  mpe_process_free(p);
  mpe_process_free(other);
  mpe_pipe_free(a);
  mpe_pipe_free(b);
  close(extra[0]);
  close(extra[1]);
}

/* A child that returns without waiting for its own child: the grandchild
 * still finishes its work (the child joins it before leaving), instead of
 * dying with its parent. */
static int report[2];
static int late_writer(void *arg) {
  mpe_sleep(*(double *)arg, NULL);
  return write(report[1], "g", 1) == 1 ? 0 : 1;
}

static int leave_grandchild(void *arg) {
  mpe_process *g;
  mpe_spawn_options o = {.inherit_fds = 1};
  return mpe_process_spawn(&g, late_writer, arg, &o) == 0 ? 0 : 1; /* no wait */
}

TEST(test_child_joins_its_children) {
  CHECK(pipe(report) == 0);
  double nap = 0.2;
  mpe_process *c;
  mpe_spawn_options o = {.keep_fds = report, .nkeep_fds = 2};
  CHECK_RC(mpe_process_spawn(&c, leave_grandchild, &nap, &o), 0);
  CHECK_RC(mpe_process_wait(c, 30), 0);
  int code = -1;
  CHECK_RC(mpe_process_exitcode(c, &code), 1);
  CHECK(code == 0);
  close(report[1]);
  char b = 0;
  CHECK(read(report[0], &b, 1) == 1 && b == 'g'); /* written before the child left */
  close(report[0]);
  mpe_process_free(c);
}

/* 1 once pid has ended (a zombie or gone), without reaping it. */
static int ended(pid_t pid) {
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
  FILE *f = fopen(path, "r");
  if (!f) return 1;
  char st = 0;
  int n = fscanf(f, "%*d %*s %c", &st);
  fclose(f);
  return n == 1 && st == 'Z';
}

TEST(test_spawn_reaps_ended_children) {
  enum { N = 40 };
  mpe_process *p[N];
  int base = count_fds();
  for (int i = 0; i < N; i++) {
    CHECK_RC(mpe_process_spawn(&p[i], exit_with, (void *)(intptr_t)i, NULL), 0);
    /* only the child started last holds a pidfd: the others were reaped */
    CHECK(count_fds() <= base + 1);
    while (!ended(mpe_process_pid(p[i]))) mpe_sleep(0.001, NULL);
  }
  for (int i = 0; i < N; i++) {
    int code = -1;
    CHECK_RC(mpe_process_exitcode(p[i], &code), 1); /* the status was kept */
    CHECK(code == i);
    mpe_process_free(p[i]);
  }
  CHECK(count_fds() == base);
}

TEST(test_errors_have_names) {
  CHECK(strcmp(mpe_err_name(MPE_ECLOSED), "ECLOSED") == 0);
  CHECK(strcmp(mpe_err_name(MPE_ETIMEDOUT), "ETIMEDOUT") == 0);
  CHECK(strstr(mpe_strerror(MPE_ECLOSED), "closed") != NULL);
  CHECK(strstr(mpe_strerror(-ENOMEM), "memory") != NULL);
  CHECK(mpe_strerror(12345) != NULL);
  CHECK(mpe_cpu_count() >= 1);
  CHECK(strlen(mpe_version()) >= 5);
}

static int child_reports_self_pid(void *arg) {
  (void)arg;
  return mpe_self_pid() == getpid() ? 0 : 1;
}

TEST(test_self_pid_follows_every_fork) {
  CHECK(mpe_self_pid() == getpid());
  CHECK(mpe_self_pid() == getpid()); /* remembered */
  mpe_process *p;
  CHECK_RC(mpe_process_spawn(&p, child_reports_self_pid, NULL, NULL), 0);
  CHECK_RC(mpe_process_wait(p, -1), 0);
  int code = -1;
  CHECK_RC(mpe_process_exitcode(p, &code), 1);
  CHECK(code == 0);
  mpe_process_free(p);
  pid_t pid = fork(); /* a fork the engine did not make */
  CHECK(pid >= 0);
  if (pid == 0) _exit(mpe_self_pid() == getpid() ? 0 : 1);
  int status;
  CHECK(waitpid(pid, &status, 0) == pid);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  CHECK(mpe_self_pid() == getpid());
}

/* A child sees the pids of the siblings started before it, whether the
 * engine forks it or the program does: the parent learns a pid after fork,
 * and keeps it in a page children do not inherit until the next fork. */
typedef struct sibling {
  mpe_process *p;
  pid_t pid;
} sibling;

static int sees_sibling(void *arg) {
  const sibling *s = arg;
  return mpe_process_pid(s->p) == s->pid ? 0 : 1;
}

TEST(test_child_sees_siblings_pids) {
  sibling s;
  CHECK_RC(mpe_process_spawn(&s.p, sleep_forever, NULL, NULL), 0);
  s.pid = mpe_process_pid(s.p);
  CHECK(s.pid > 0 && kill(s.pid, 0) == 0);
  for (int inherit = 0; inherit < 2; inherit++) {
    mpe_spawn_options o = {.inherit_fds = inherit};
    mpe_process *c;
    CHECK_RC(mpe_process_spawn(&c, sees_sibling, &s, &o), 0);
    CHECK_RC(mpe_process_wait(c, 30), 0);
    int code = -1;
    CHECK_RC(mpe_process_exitcode(c, &code), 1);
    CHECK(code == 0);
    CHECK(mpe_process_pid(c) > 0 && mpe_process_pid(c) != s.pid); /* still known once reaped */
    mpe_process_free(c);
  }
  pid_t pid = fork(); /* a fork the engine did not make */
  CHECK(pid >= 0);
  if (pid == 0) _exit(sees_sibling(&s));
  int status;
  CHECK(waitpid(pid, &status, 0) == pid);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  CHECK(mpe_process_pid(s.p) == s.pid);
  mpe_process_free(s.p);
}

/* A fork that runs no atfork handler (glibc's _Fork): its child reads a
 * handle's pid from the handle, as it was at the last fork, and never from
 * the parent's page of records (which it does not have). */
TEST(test_fork_without_handlers_reads_handles) {
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 34))
  mpe_process *p, *q;
  CHECK_RC(mpe_process_spawn(&p, sleep_forever, NULL, NULL), 0);
  CHECK_RC(mpe_process_spawn(&q, sleep_forever, NULL, NULL), 0); /* its fork settles p */
  pid_t want = mpe_process_pid(p);
  CHECK(want > 0);
  pid_t pid = _Fork();
  CHECK(pid >= 0);
  if (pid == 0) _exit(mpe_process_pid(p) == want ? 0 : 1);
  int status;
  CHECK(waitpid(pid, &status, 0) == pid);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  mpe_process_free(q);
  mpe_process_free(p);
#endif
}

/* A fork in a thread that does not use the engine leaves the engine's list
 * alone (the thread that does may be changing it): that fork's child sees
 * a sibling started since the last fork of the engine's thread as not
 * started (pid 0), not a half-written record. */
static void *fork_in_thread(void *arg) {
  const mpe_process *p = arg;
  pid_t pid = fork();
  if (pid == 0) _exit(mpe_process_pid(p) == 0 ? 0 : 1);
  int status = 0;
  if (pid < 0 || waitpid(pid, &status, 0) != pid) return (void *)(intptr_t)-1;
  return (void *)(intptr_t)(WIFEXITED(status) ? WEXITSTATUS(status) : 100);
}

TEST(test_fork_in_another_thread_leaves_the_list) {
  mpe_process *p;
  CHECK_RC(mpe_process_spawn(&p, sleep_forever, NULL, NULL), 0);
  CHECK(mpe_process_pid(p) > 0);
  pthread_t t;
  void *rc = NULL;
  CHECK(pthread_create(&t, NULL, fork_in_thread, p) == 0);
  CHECK(pthread_join(t, &rc) == 0);
  CHECK(rc == (void *)0);
  pid_t pid = fork(); /* in this thread: settled first */
  CHECK(pid >= 0);
  if (pid == 0) _exit(mpe_process_pid(p) > 0 ? 0 : 1);
  int status;
  CHECK(waitpid(pid, &status, 0) == pid);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  mpe_process_free(p);
}

/* In the child of a fork the program makes itself, the engine's children
 * are the parent's: joining "all" there neither signals them nor waits on
 * them (it used to SIGTERM the daemons, then loop for ever on ECHILD). */
TEST(test_join_all_in_a_hosts_fork_child) {
  mpe_process *p, *d;
  mpe_spawn_options daemon = {.daemon = 1};
  CHECK_RC(mpe_process_spawn(&p, sleep_forever, NULL, NULL), 0);
  CHECK_RC(mpe_process_spawn(&d, sleep_forever, NULL, &daemon), 0);
  pid_t pid = fork();
  CHECK(pid >= 0);
  if (pid == 0) {
    alarm(20); /* a hang is the failure: SIGALRM ends it */
    int killed = mpe_process_join_all(-1);
    _exit(killed == 0 && mpe_process_reap() == 0 ? 0 : 1);
  }
  int status;
  CHECK(waitpid(pid, &status, 0) == pid);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  int code = 0;
  CHECK_RC(mpe_process_exitcode(p, &code), 0); /* both still running, untouched */
  CHECK_RC(mpe_process_exitcode(d, &code), 0);
  mpe_process_free(d);
  mpe_process_free(p);
}

/* More children running at once than the page of pids holds (511): the
 * rest keep theirs in their handles; each is signalled, reaped and
 * reported as its own. Then the page serves new children again. */
TEST(test_many_children_at_once) {
  enum { N = 540 };
  static mpe_process *p[N];
  static pid_t pid[N];
  for (int i = 0; i < N; i++) {
    CHECK_RC(mpe_process_spawn(&p[i], sleep_forever, NULL, NULL), 0);
    pid[i] = mpe_process_pid(p[i]);
    CHECK(pid[i] > 0);
    for (int j = 0; j < i; j++) CHECK(pid[j] != pid[i]);
  }
  for (int i = 0; i < N; i++) CHECK(mpe_process_pid(p[i]) == pid[i]);
  for (int i = N - 1; i >= 0; i--) CHECK_RC(mpe_process_signal(p[i], SIGKILL), 0);
  for (int i = 0; i < N; i++) {
    CHECK_RC(mpe_process_wait(p[i], 30), 0);
    int code = 0;
    CHECK_RC(mpe_process_exitcode(p[i], &code), 1);
    CHECK(code == -SIGKILL);
    CHECK(mpe_process_pid(p[i]) == pid[i]);
    CHECK(kill(pid[i], 0) < 0 && errno == ESRCH); /* reaped, no zombie */
  }
  for (int i = 0; i < N; i++) mpe_process_free(p[i]);
  for (int i = 0; i < 3; i++) {
    mpe_process *c;
    CHECK_RC(mpe_process_spawn(&c, child_reports_self_pid, NULL, NULL), 0);
    CHECK(mpe_process_pid(c) > 0);
    CHECK_RC(mpe_process_wait(c, 30), 0);
    int code = -1;
    CHECK_RC(mpe_process_exitcode(c, &code), 1);
    CHECK(code == 0);
    mpe_process_free(c);
  }
}

int main(void) {
  CHECK_RC(mpe_init(16u << 20), 0);
  RUN(test_self_pid_follows_every_fork);
  RUN(test_exit_codes);
  RUN(test_signal_statuses);
  RUN(test_child_starts_with_default_handlers);
  RUN(test_child_resets_exactly_the_caught_signals);
  RUN(test_wait_timeout_is_honoured);
  RUN(test_free_kills_and_reaps);
  RUN(test_join_all_terminates_daemons);
  RUN(test_children_die_with_parent);
  RUN(test_no_descriptor_leaks_into_child);
  RUN(test_child_joins_its_children);
  RUN(test_spawn_reaps_ended_children);
  RUN(test_errors_have_names);
  RUN(test_child_sees_siblings_pids);
  RUN(test_fork_without_handlers_reads_handles);
  RUN(test_fork_in_another_thread_leaves_the_list);
  RUN(test_join_all_in_a_hosts_fork_child);
  RUN(test_many_children_at_once);
  CHECK(mpe_process_reap() == 0);
  return 0;
}
