/* probe.c - this machine's floors, for the benchmarks to print beside their
 * figures ("how far from the limit"). Plain C, no engine: it measures what
 * the hardware and the kernel allow between two processes.
 *
 *   probe [SECONDS_PER_MEASURE]      prints one JSON object on stdout
 *
 * cacheline_rt_ns  one cache line bounced between two processes and back
 *                  (shared-memory ping-pong on one word, both sides spinning)
 * futex_rt_ns      a futex wake of the other process and its wake back
 * futex_rt_1cpu_ns the same with both processes on one CPU: two context
 *                  switches a round, the floor of a round trip between two
 *                  processes that sleep when the other CPUs are busy
 * pipe_rt_ns       one byte over a pipe and back
 * fork_wait_ns     fork() of a child that _exit()s at once, and waitpid()
 * memcpy_gbps      memcpy of 32 MiB into another 32 MiB (GB/s)
 *
 * Each figure is the fastest of several batches (a floor is what the machine
 * can do; slower batches met other programs), and *_median keys give the
 * median of the same batches. The two processes of a round
 * trip are pinned to different CPUs when there are two or more, so the
 * figures are cross-CPU costs. A spinner yields after a while, so the probe
 * ends even on a machine where the other side is not running. */
#define _GNU_SOURCE
#include <linux/futex.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum { BATCHES = 21 };

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double medians[6]; /* of the last figures, in the order they are measured */
static int nmedians;

/* The best of n batches (the lowest; highest with best_high), and its median kept. */
static double best(double *xs, int n, int best_high) {
  qsort(xs, (size_t)n, sizeof *xs, cmp);
  medians[nmedians++] = n % 2 ? xs[n / 2] : (xs[n / 2 - 1] + xs[n / 2]) / 2;
  return best_high ? xs[n - 1] : xs[0];
}

static void relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

static cpu_set_t allowed; /* the CPUs we were started with */

/* Pins this process to the n-th allowed CPU (no-op with one CPU). */
static void pin(int n) {
  if (CPU_COUNT(&allowed) < 2) return;
  for (int c = 0; c < CPU_SETSIZE; c++) {
    if (!CPU_ISSET(c, &allowed)) continue;
    if (n-- == 0) {
      cpu_set_t one;
      CPU_ZERO(&one);
      CPU_SET(c, &one);
      sched_setaffinity(0, sizeof one, &one);
      return;
    }
  }
}

typedef struct shared {
  _Alignas(64) _Atomic uint32_t ball; /* odd: the child's turn; even: ours */
  _Alignas(64) _Atomic uint32_t f[2]; /* futex words, one per direction */
  _Atomic int stop;
} shared;

static shared *sh;

/* Spins before a spinner yields: none when this process may use one CPU
 * only (taskset -c 0): the other side cannot run while we spin, and 100,000
 * spins a round made the probe take hours there. */
static unsigned spin_limit = 100000;

static void wait_while(_Atomic uint32_t *w, uint32_t v) {
  for (unsigned i = 0; atomic_load_explicit(w, memory_order_acquire) == v; i++) {
    if (i < spin_limit) relax();
    else sched_yield(); /* the other side is not running: let it */
  }
}

static void fwait(_Atomic uint32_t *w, uint32_t v) {
  while (atomic_load(w) == v) syscall(SYS_futex, (uint32_t *)w, FUTEX_WAIT, v, NULL, NULL, 0);
}

static void fwake(_Atomic uint32_t *w) {
  atomic_fetch_add(w, 1);
  syscall(SYS_futex, (uint32_t *)w, FUTEX_WAKE, 1, NULL, NULL, 0);
}

typedef struct rt_kind {
  void (*child)(long rounds);
  void (*parent_round)(void);
} rt_kind;

static int pfd[2][2]; /* pipes: [0] parent->child, [1] child->parent */
static uint32_t turn;

static void cl_child(long rounds) {
  for (uint32_t v = 1; rounds-- > 0; v += 2) {
    wait_while(&sh->ball, v - 1);
    atomic_store_explicit(&sh->ball, v + 1, memory_order_release);
  }
}
static void cl_round(void) {
  atomic_store_explicit(&sh->ball, turn + 1, memory_order_release);
  wait_while(&sh->ball, turn + 1);
  turn += 2;
}

static void fx_child(long rounds) {
  for (uint32_t seen = 0; rounds-- > 0; seen++) {
    fwait(&sh->f[0], seen);
    fwake(&sh->f[1]);
  }
}
static void fx_round(void) {
  fwake(&sh->f[0]);
  fwait(&sh->f[1], turn);
  turn++;
}

static void pp_child(long rounds) {
  char c;
  while (rounds-- > 0)
    if (read(pfd[0][0], &c, 1) != 1 || write(pfd[1][1], &c, 1) != 1) _exit(1);
}
static void pp_round(void) {
  char c = 'x';
  if (write(pfd[0][1], &c, 1) != 1 || read(pfd[1][0], &c, 1) != 1) exit(1);
}

/* Best nanoseconds of one round trip of kind k, batches of n rounds; both
 * processes on the first CPU when one_cpu, else on the first two. */
static double round_trip_on(rt_kind k, long n, int one_cpu) {
  memset(sh, 0, sizeof *sh);
  turn = 0;
  pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    pin(one_cpu ? 0 : 1);
    k.child(n * (BATCHES + 1));
    _exit(0);
  }
  pin(0);
  double xs[BATCHES];
  for (long i = 0; i < n; i++) k.parent_round(); /* warm up */
  for (int b = 0; b < BATCHES; b++) {
    double t0 = now();
    for (long i = 0; i < n; i++) k.parent_round();
    xs[b] = (now() - t0) / (double)n * 1e9;
  }
  waitpid(pid, NULL, 0);
  sched_setaffinity(0, sizeof allowed, &allowed);
  return best(xs, BATCHES, 0);
}

static double round_trip(rt_kind k, long n) { return round_trip_on(k, n, 0); }

static double fork_wait(long n) {
  double xs[BATCHES];
  for (int b = 0; b < BATCHES; b++) {
    double t0 = now();
    for (long i = 0; i < n; i++) {
      pid_t pid = fork();
      if (pid == 0) _exit(0);
      if (pid < 0 || waitpid(pid, NULL, 0) != pid) return -1;
    }
    xs[b] = (now() - t0) / (double)n * 1e9;
  }
  return best(xs, BATCHES, 0);
}

static double memcpy_gbps(void) {
  size_t size = (size_t)32 << 20;
  char *a = malloc(size), *b = malloc(size);
  if (!a || !b) return -1;
  memset(a, 1, size);
  memset(b, 2, size);
  double xs[BATCHES];
  for (int r = 0; r < BATCHES; r++) {
    double t0 = now();
    memcpy(r % 2 ? a : b, r % 2 ? b : a, size);
    xs[r] = (double)size / (now() - t0) / 1e9;
  }
  volatile char sink = a[size / 2] + b[size / 3];
  (void)sink;
  free(a);
  free(b);
  return best(xs, BATCHES, 1);
}

/* Rounds per batch so that a batch lasts about `seconds` at `ns` a round. */
static long rounds_for(double seconds, double ns) {
  long n = (long)(seconds * 1e9 / ns);
  return n < 10 ? 10 : n;
}

int main(int argc, char **argv) {
  double secs = argc > 1 ? atof(argv[1]) : 0.01; /* per batch */
  if (secs <= 0) secs = 0.01;
  sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (sh == MAP_FAILED || pipe(pfd[0]) != 0 || pipe(pfd[1]) != 0) return 1;
  if (sched_getaffinity(0, sizeof allowed, &allowed) != 0) CPU_ZERO(&allowed);
  int cpus = CPU_COUNT(&allowed) > 0 ? CPU_COUNT(&allowed) : 1;
  if (cpus < 2) spin_limit = 0;
  double cl = round_trip((rt_kind){cl_child, cl_round}, rounds_for(secs, 300));
  double fx = round_trip((rt_kind){fx_child, fx_round}, rounds_for(secs, 20000));
  double pp = round_trip((rt_kind){pp_child, pp_round}, rounds_for(secs, 20000));
  double fw = fork_wait(rounds_for(secs, 500000));
  double mc = memcpy_gbps();
  double f1 = round_trip_on((rt_kind){fx_child, fx_round}, rounds_for(secs, 20000), 1);
  printf("{\"cpus\": %d, \"cacheline_rt_ns\": %.1f, \"futex_rt_ns\": %.1f, \"pipe_rt_ns\": %.1f, "
         "\"fork_wait_ns\": %.1f, \"memcpy_gbps\": %.2f, \"futex_rt_1cpu_ns\": %.1f, "
         "\"cacheline_rt_ns_median\": %.1f, \"futex_rt_ns_median\": %.1f, \"pipe_rt_ns_median\": %.1f, "
         "\"fork_wait_ns_median\": %.1f, \"memcpy_gbps_median\": %.2f, \"futex_rt_1cpu_ns_median\": %.1f}\n",
         cpus, cl, fx, pp, fw, mc, f1, medians[0], medians[1], medians[2], medians[3], medians[4], medians[5]);
  return cl > 0 && fx > 0 && pp > 0 && fw > 0 && mc > 0 && f1 > 0 ? 0 : 1;
}
