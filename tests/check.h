/* check.h - the C tests' assertions: print where and why, then fail. */
#ifndef MPE_TEST_CHECK_H
#define MPE_TEST_CHECK_H
#include <stdio.h>
#include <stdlib.h>

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
#endif
