/* spin.h - how a waiter spins before it sleeps (see spin.c). */
#ifndef MPE_SPIN_H
#define MPE_SPIN_H
#include "internal.h"

/* One waiting place's memory (process-local; zero is a valid start). */
typedef struct mpe__spin {
  long budget_ns; /* 0: not yet set; adapts between SPIN_MIN and the cap */
  int stream;     /* set by the caller: the answer is one of a stream (the
                     last wait did not have to wait), so look first after the
                     longest gap and let a batch gather (see spin.c) */
} mpe__spin;

/* Spins until ready(arg) is true (returns 1) or spinning stops paying
 * (returns 0: the caller then sleeps in the kernel). Never spins while the
 * machine has no free CPU, nor on one CPU, nor with MPENGINE_SPIN_US=0 (a
 * waiter in a stream then gives its CPU away once and looks again). */
int mpe__spin_wait(mpe__spin *s, int (*ready)(void *), void *arg);
/* 1 if fewer processes want to run than there are CPUs (sampled at most
 * every 2 ms from /proc/loadavg; 1 when it cannot be read). */
int mpe__cpu_free(void);
#endif
