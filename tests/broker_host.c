/* broker_host.c - a worker host for the multi-host tests: serves one run
 * with the broker protocol, each batch taking WORK seconds, renewing what it
 * holds every lease/3, riding out a lost broker (reconnects with backoff).
 * A result the broker drops (the lease was lost meanwhile) is reported on
 * stdout as "late result dropped", the one line the tests wait for.
 * Usage: MPE_TEST_BROKER=URL broker_host RUN NAME WORK LEASE (the URL, with
 * its password, in the environment: not in ps) */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "broker.h"
#include "mpengine.h"

static mpe__redis *r;

/* Runs op until it gets through to the broker. */
#define RETRY(rc, op)                                                        \
  while (((rc) = (op)) < 0 && (rc) != -ENOENT) {                             \
    if (mpe__redis_reconnect(r, -1) < 0) return 1;                           \
  }

int main(int argc, char **argv) {
  if (argc != 5 || !getenv("MPE_TEST_BROKER")) return 2;
  const char *run = argv[1];
  double work = atof(argv[3]), lease = atof(argv[4]);
  char me[160], err[1024];
  snprintf(me, sizeof me, "%s/%d", argv[2], (int)getpid());
  if (mpe__redis_connect(&r, getenv("MPE_TEST_BROKER"), 1.0, err, sizeof err) < 0) {
    fprintf(stderr, "%s\n", err);
    return 1;
  }
  setvbuf(stdout, NULL, _IOLBF, 0);
  for (;;) {
    mpe__broker_task t[1];
    mpe__broker_hold h = {{0}};
    int n, rc, held = 1, acc = 0;
    RETRY(n, mpe__broker_claim(r, run, me, 1, lease / 3, t, &h));
    if (n == -ENOENT) break;
    if (n == 0) continue;
    for (double end = mpe_time() + work; mpe_time() < end;) {
      mpe_sleep(lease / 3, NULL);
      if (held) RETRY(rc, mpe__broker_renew(r, run, me, 1, t, &held));
    }
    char out[64];
    snprintf(out, sizeof out, "done:%.*s", (int)t[0].len, t[0].data);
    const void *data[] = {out};
    size_t lens[] = {strlen(out)};
    RETRY(rc, mpe__broker_complete(r, run, me, 1, t, data, lens, &acc));
    if (rc == 0 && !acc) printf("late result dropped\n");
    mpe__broker_release(&h);
    if (rc == -ENOENT) break;
  }
  mpe__redis_close(r);
  return 0;
}
