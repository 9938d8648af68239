/* mutex.h - robust process-shared mutex (see mutex.c). */
#ifndef MPE_MUTEX_H
#define MPE_MUTEX_H
#include "internal.h"

#include <pthread.h>

void mpe__mutex_init(pthread_mutex_t *m);
/* 0, MPE_EOWNERDEAD (locked; the previous holder died), MPE_ETIMEDOUT. */
int mpe__mutex_lock(pthread_mutex_t *m, const mpe__deadline *d);
int mpe__mutex_trylock(pthread_mutex_t *m);
void mpe__mutex_unlock(pthread_mutex_t *m);
#endif
