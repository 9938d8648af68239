/* broker_pool_drive.c - a C driver whose pool runs on a broker: maps N
 * inputs with mpe_pool_map and checks every result is its own input's,
 * answered by a host ("INPUT@HOST"), each exactly once and in order.
 * Inputs are "i", or "sMS:i" (a task of MS milliseconds); the input at index
 * DIE (if given) is "die": its result must be MPE_EDIED naming a host and a pid.
 * Prints "ok N" (and "died: TEXT") or what was wrong.
 * Usage: MPE_TEST_BROKER=URL broker_pool_drive N MS LEASE ATTEMPTS CHUNK [DIE] */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mpengine.h"

int main(int argc, char **argv) {
  if (argc < 6 || !getenv("MPE_TEST_BROKER")) return 2;
  size_t n = (size_t)atol(argv[1]);
  int ms = atoi(argv[2]);
  long die = argc > 6 ? atol(argv[6]) : -1;
  if (mpe_init(0) < 0) return 1;
  setvbuf(stdout, NULL, _IOLBF, 0);
  char(*in)[32] = calloc(n, sizeof *in);
  const void **ins = calloc(n, sizeof *ins);
  size_t *lens = calloc(n, sizeof *lens);
  mpe_task_result *res = calloc(n, sizeof *res);
  if (!in || !ins || !lens || !res) return 1;
  for (size_t i = 0; i < n; i++) {
    if ((long)i == die)
      snprintf(in[i], sizeof in[i], "die");
    else if (ms)
      snprintf(in[i], sizeof in[i], "s%d:%zu", ms, i);
    else
      snprintf(in[i], sizeof in[i], "%zu", i);
    ins[i] = in[i];
    lens[i] = strlen(in[i]);
  }
  mpe_pool_options o = {.chunksize = (size_t)atol(argv[5]), .processes = 4};
  mpe_broker_options bo = {.lease = atof(argv[3]), .attempts = atoi(argv[4])};
  mpe_pool *p;
  int rc = mpe_pool_start_broker(&p, getenv("MPE_TEST_BROKER"), &o, &bo);
  if (rc < 0) {
    printf("start: %s\n", mpe_strerror(rc));
    return 1;
  }
  printf("started\n");
  rc = mpe_pool_map(p, n, ins, lens, res);
  int bad = rc < 0;
  if (rc < 0) printf("map: %s\n", mpe_strerror(rc));
  char hosts[8][64] = {{0}};
  int nhosts = 0;
  for (size_t i = 0; i < n && !bad; i++) {
    mpe_task_result *r = &res[i];
    if ((long)i == die) {
      if (r->status != MPE_EDIED || r->pid <= 0 || !r->data || !memmem(r->data, r->len, "(host ", 6)) {
        printf("result %zu: status %d pid %d, not a named death\n", i, r->status, (int)r->pid);
        bad = 1;
      } else {
        printf("died: %.*s\n", (int)r->len, (char *)r->data);
      }
      continue;
    }
    if (r->id != i || r->status != 0 || r->len <= lens[i] || memcmp(r->data, in[i], lens[i]) ||
        ((char *)r->data)[lens[i]] != '@') {
      printf("result %zu: status %d: %.*s\n", i, r->status, (int)r->len, r->data ? (char *)r->data : "");
      bad = 1;
      continue;
    }
    char h[64];
    snprintf(h, sizeof h, "%.*s", (int)(r->len - lens[i] - 1), (char *)r->data + lens[i] + 1);
    int k;
    for (k = 0; k < nhosts && strcmp(hosts[k], h); k++) {
    }
    if (k == nhosts && nhosts < 8) strcpy(hosts[nhosts++], h);
  }
  if (!bad) printf("from %d hosts\n", nhosts);
  for (size_t i = 0; i < n; i++)
    mpe_task_result_clear(&res[i]);
  mpe_pool_close(p);
  mpe_pool_join(p, -1);
  mpe_pool_free(p, 0);
  if (!bad) printf("ok %zu\n", n);
  free(in), free(ins), free(lens), free(res);
  return bad;
}
