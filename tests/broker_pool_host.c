/* broker_pool_host.c - a worker host for the pool-on-a-broker tests:
 * mpe_broker_worker_run with a task that answers "INPUT@NAME", sleeps MS
 * milliseconds first for an input "sMS:...", and SIGKILLs its own worker
 * process for "die". Prints "started PID" and, when it returns, "stopped RC".
 * Usage: MPE_TEST_BROKER=URL broker_pool_host NAME PROCS */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mpengine.h"

static volatile sig_atomic_t stop;
static void on_signal(int sig) { (void)sig, stop = 1; }

static int task(void *ctx, const void *in, size_t n, mpe_buf *out) {
  const char *s = in;
  if (n == 3 && !memcmp(s, "die", 3)) kill(getpid(), SIGKILL);
  if (n > 1 && s[0] == 's') mpe_sleep(atoi(s + 1) / 1000.0, NULL);
  if (mpe_buf_add(out, in, n) < 0 || mpe_buf_add(out, "@", 1) < 0) return 1;
  return mpe_buf_add(out, ctx, strlen(ctx)) < 0;
}

int main(int argc, char **argv) {
  if (argc != 3 || !getenv("MPE_TEST_BROKER")) return 2;
  if (mpe_init(0) < 0) return 1;
  struct sigaction sa = {.sa_handler = on_signal};
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  mpe_interrupt_flag(&stop);
  setvbuf(stdout, NULL, _IOLBF, 0);
  printf("started %d\n", (int)getpid());
  int rc = mpe_broker_worker_run(getenv("MPE_TEST_BROKER"), atoi(argv[2]), argv[1], task, argv[1], NULL);
  printf("stopped %d\n", rc);
  return rc < 0;
}
