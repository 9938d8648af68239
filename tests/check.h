/* check.h - the C tests' assertions: print where and why, then fail. */
#ifndef MPE_TEST_CHECK_H
#define MPE_TEST_CHECK_H
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#include "mpengine.h"

#define CHECK(cond)                                                          \
  do {                                                                       \
    if (!(cond)) {                                                           \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
      exit(1);                                                               \
    }                                                                        \
  } while (0)

#define CHECK_RC(expr, want)                                                 \
  do {                                                                       \
    int rc_ = (expr);                                                        \
    if (rc_ != (want)) {                                                     \
      fprintf(stderr, "%s:%d: %s returned %d (%s), expected %d\n", __FILE__, \
              __LINE__, #expr, rc_, mpe_strerror(rc_), (want));              \
      exit(1);                                                               \
    }                                                                        \
  } while (0)

#define TEST(name) static void name(void)
#define RUN(name)                                                            \
  do {                                                                       \
    name();                                                                  \
    printf("ok %s\n", #name);                                                \
  } while (0)

/* A process's state letter in /proc/PID/stat ('S': asleep), or 0. Tests
 * wait for a peer to sleep this way: a handshake on what the kernel shows. */
static inline char check_proc_state(pid_t pid) {
  char path[64], buf[256];
  snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
  FILE *f = fopen(path, "r");
  if (!f) return 0;
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = 0;
  const char *p = strrchr(buf, ')'); /* "pid (comm) S ...": comm may hold ')' */
  return p && p[1] == ' ' ? p[2] : 0;
}
#endif
