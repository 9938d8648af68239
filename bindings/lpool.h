/* lpool.h - what the two sides of mp.Pool's binding share: lpool.c (the
 * parent: submitting, collecting, the Pool object) and lpool_worker.c (what
 * runs in a worker). Never installed. */
#ifndef MPE_LPOOL_H
#define MPE_LPOOL_H

#include "mpe_lua.h"

#define HDR   13        /* task header: uint32 function id, uint64 its encoding's arena ref, uint8 star */
#define DRAIN (1 << 16) /* results taken by one collect call, at most */
#define BATCH 4096      /* results taken from the engine at once */
#define CHUNK 16384     /* items encoded into one engine submit, at most */

/* A function's encoding, in the arena where every worker reads it: freed
 * once pool.lua forgot it and no task that names it is outstanding. */
typedef struct fnblock {
  uint32_t fid;
  int forgotten;
  uint64_t ref; /* {uint64 len, bytes} */
  size_t uses;  /* tasks outstanding */
} fnblock;

typedef struct range {
  uint32_t fid;
  uint64_t first;   /* engine id of its first task */
  lua_Integer base; /* the job's index of that task */
  size_t n, left;
  int job;    /* registry reference to the job table */
  int stream; /* indexes go to job.stream as they finish */
} range;

typedef struct lpool {
  mpe_pool *p; /* NULL in a copy that travelled, and once freed */
  pid_t owner;
  char token[40];
  lua_State *L; /* the thread of the last call: a worker forked then runs on it */
  size_t memory_limit;
  double timeout;
  int init, initargs, on_error; /* registry references */
  fnblock *fns;
  size_t nfns, fcap;
  range *r;
  size_t rhead, rlen, rcap; /* ranges in id order */
  size_t *lens;
  size_t lcap;
  mpe_task_result *res; /* BATCH results (mpe_pool_collect_many) */
  int broker; /* its tasks run on a broker's hosts: functions go there by id */
  double broker_timeout;
  char shown[512]; /* the broker's URL as messages show it */
} lpool;

/* The worker side (lpool_worker.c), given to the engine as the task
 * function and the setup and at_exit hooks (ctx and arg: the lpool). */
int mpel_pool_task(void *ctx, const void *in, size_t n, mpe_buf *out);
int mpel_pool_setup(void *arg, mpe_buf *why);
void mpel_pool_exit(void *arg);
/* A broker host's worker: the setup hook (the run's key, build, script,
 * modules and initializer, through pool.lua's B.run_start). */
int mpel_broker_setup(void *arg, mpe_buf *why);
/* In a worker: the token of the pool it works for; else NULL. */
const char *mpel_pool_worker_token(void);

#endif
