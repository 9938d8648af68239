/* broker_drive.c - the driver of the multi-host tests: submits N batches,
 * refreshes the run, reads results until each batch has one, and fails on
 * a second result or a wrong one. Prints "all N" and the hosts that gave
 * results; then waits for a line on stdin, takes whatever results arrived
 * meanwhile (a late one would be a second), and closes the run.
 * Usage: MPE_TEST_BROKER=URL broker_drive RUN N LEASE */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker.h"

int main(int argc, char **argv) {
  if (argc != 4 || !getenv("MPE_TEST_BROKER")) return 2;
  const char *run = argv[1];
  int n = atoi(argv[2]), got = 0;
  mpe__broker_opts o = {atof(argv[3]), 3, 30};
  mpe__redis *r;
  char err[1024], last[48] = "0";
  if (mpe__redis_connect(&r, getenv("MPE_TEST_BROKER"), 5, err, sizeof err) < 0 || mpe__broker_open(r, run, &o) < 0) {
    fprintf(stderr, "driver: %s\n", err);
    return 1;
  }
  setvbuf(stdout, NULL, _IOLBF, 0);
  char (*in)[24] = calloc((size_t)n, sizeof *in);
  const void **data = calloc((size_t)n, sizeof *data);
  size_t *lens = calloc((size_t)n, sizeof *lens);
  int *seen = calloc((size_t)n, sizeof *seen);
  for (int i = 0; i < n; i++) {
    snprintf(in[i], sizeof in[i], "%d", i);
    data[i] = in[i];
    lens[i] = strlen(in[i]);
  }
  if (mpe__broker_submit(r, run, 0, n, data, lens) != n) return 1;
  for (int phase = 0; phase < 2; phase++) {
    while (phase == 1 || got < n) {
      mpe__broker_result res[32];
      mpe__broker_hold h;
      int k = mpe__broker_results(r, run, last, phase ? 0 : 0.2, res, 32, &h);
      if (k < 0 || mpe__broker_refresh(r, run) != 1) return 1;
      for (int i = 0; i < k; i++) {
        char want[40];
        snprintf(want, sizeof want, "done:%d", (int)res[i].seq);
        if (res[i].kind != MPE__BROKER_OK || res[i].seq < 0 || res[i].seq >= n || seen[res[i].seq]++ ||
            res[i].len != strlen(want) || memcmp(res[i].data, want, res[i].len)) {
          printf("driver: a wrong or second result for batch %d (from %s)\n", (int)res[i].seq, res[i].host);
          return 1;
        }
        printf("result %d from %s\n", (int)res[i].seq, res[i].host);
        got++;
      }
      mpe__broker_release(&h);
      if (phase == 1) break;
    }
    if (phase == 0) {
      printf("all %d\n", n);
      char line[16];
      if (!fgets(line, sizeof line, stdin)) return 1;
    }
  }
  printf("closed, %d results\n", got);
  mpe__broker_close(r, run);
  mpe__redis_close(r);
  free(in);
  free(data);
  free(lens);
  free(seen);
  return 0;
}
