/* pool.h - what the pool's files share: the transport seam, the stamp a
 * worker keeps of what it runs, and the bytes of a batch and of a reply.
 *
 * The parent side (pool.c) owns jobs: task ids, the pending line, batches,
 * results, timeouts, blame, the crash-loop guard. It reaches "where tasks
 * run" only through mpe__pool_transport: start a worker in a slot, send it a
 * batch, take replies, ask whether it has gone and what it was running,
 * kill it, stop it. pool_local.c is one implementation (forked workers,
 * an arena inbox each, one results queue, stamps in the arena); pool_broker.c
 * the other (a slot is a lane of a run on a Redis broker; its replies carry
 * each task's status and pid as the worker host saw them). pool_worker.c is the worker's loop, which any transport
 * runs wherever its workers live. */
#ifndef MPE_POOL_H
#define MPE_POOL_H

#include "internal.h"

/* What the workers are given when they start (inherited across fork). */
typedef struct mpe__pool_cfg {
  mpe_pool_fn fn;
  void *ctx;
  mpe_pool_init_fn init;
  void *initarg;
  mpe_pool_setup_fn setup; /* the host's hooks (mpengine.h), given initarg */
  mpe_pool_exit_fn at_exit;
  mpe_pool_fork_fn before_fork;
  size_t maxtasks;     /* a worker leaves after this many tasks (0: never) */
  size_t memory_limit; /* private bytes a worker may add (0: no limit) */
  int timed;           /* stamp each task's start time (a timeout is set) */
} mpe__pool_cfg;

/* A worker's stamp, written by the worker only, read by the parent. A task
 * starts with since_ns, then task, then seq (tasks started): a reader that
 * sees a task's index sees its start, and one that sees the same seq before
 * and after reading the rest has one consistent picture. */
typedef struct mpe__stamp {
  _Atomic uint64_t seq;
  _Atomic uint64_t batch;    /* batch being run, 0 between batches */
  _Atomic uint64_t task;     /* index in the batch + 1 while a task runs, else 0 */
  _Atomic uint64_t since_ns; /* start of that task (timed pools only) */
  char pad[32];              /* one cache line a worker */
} mpe__stamp;

/* What a worker runs, as its transport knows it. */
typedef struct mpe__running {
  uint64_t seq;
  uint64_t batch; /* 0: none */
  long task;      /* index in the batch, -1: between tasks */
  int exact;      /* 0: only the batch is known (the parent reruns it one task at a time) */
  double since;   /* the task's start (mpe_time), when timed */
} mpe__running;

typedef struct mpe__pool_transport mpe__pool_transport;
struct mpe__pool_transport {
  /* Starts the worker of slot (a replacement reuses its slot). */
  int (*start)(mpe__pool_transport *t, int slot);
  /* Sends one batch (the bytes below) to the worker of slot. */
  int (*send)(mpe__pool_transport *t, int slot, const void *batch, size_t len);
  /* Takes one reply of any worker: 0 with *data, *len (valid until the next
   * take), MPE_ETIMEDOUT, MPE_EINTR, or an error. */
  int (*take)(mpe__pool_transport *t, double timeout, const char **data, size_t *len, uint32_t *tag);
  /* 1 and *code (exit code or -signal) once the worker of slot has gone. */
  int (*gone)(mpe__pool_transport *t, int slot, int *code);
  /* What the worker of slot runs now (or ran when it died). */
  void (*running)(mpe__pool_transport *t, int slot, mpe__running *r);
  /* Kills the worker of slot; gone() reports it later. */
  void (*kill)(mpe__pool_transport *t, int slot);
  /* Ends the worker of slot (quit: after what it holds; else killed) and
   * forgets it; also what is called once gone() said 1. */
  void (*release)(mpe__pool_transport *t, int slot, int quit);
  /* Its process id where that means something (0 otherwise). */
  pid_t (*pid)(mpe__pool_transport *t, int slot);
  void (*destroy)(mpe__pool_transport *t);
};

/* Local forked workers (pool_local.c). */
int mpe__pool_local_new(mpe__pool_transport **out, int workers, const mpe__pool_cfg *cfg);

/* The worker's loop (pool_worker.c): runs the initializer, then batches from
 * next() until told to quit; replies through put(). Returns the exit code. */
typedef struct mpe__worker_io {
  void *self;
  int slot;
  mpe__stamp *stamp;
  /* 0 with a batch, 1 when told to quit, < 0 an error */
  int (*next)(void *self, const char **data, size_t *len);
  int (*put)(void *self, const void *data, size_t len, uint32_t tag);
} mpe__worker_io;
int mpe__pool_worker_run(const mpe__pool_cfg *cfg, const mpe__worker_io *io);

/* ------------------------------------------------------------- the bytes */

/* A batch: header, n uint32 lengths, the n inputs end to end. */
typedef struct mpe__batch_hdr {
  uint64_t bid;
  uint32_t n;
  uint32_t pad;
} mpe__batch_hdr;

/* Reply tags. */
enum {
  MPE__REPLY_RESULTS = 1,
  MPE__REPLY_INIT_FAILED = 2,
  MPE__MSG_BATCH = 3,
  MPE__MSG_QUIT = 4,
  MPE__REPLY_FULL = 5 /* results as mpe__result_full: a remote host's outcomes */
};

/* A reply: results of tasks from .. from + n - 1 of batch bid, each as
 * {int32 code, uint32 len, bytes}; for INIT_FAILED, n holds the code (-1:
 * memory_limit could not be set) and the setup hook's text follows. */
typedef struct mpe__reply_hdr {
  uint64_t bid;
  uint32_t slot;
  uint32_t from;
  uint32_t n;
  uint32_t pad;
  double dt; /* seconds a task took, on average */
} mpe__reply_hdr;

typedef struct mpe__result_hdr {
  int32_t code;
  uint32_t len;
} mpe__result_hdr;

/* A result of a MPE__REPLY_FULL reply: the outcome as the host that ran it
 * saw it (status MPE_EDIED with its pid, and the text naming its host). */
typedef struct mpe__result_full {
  int32_t status;
  int32_t code;
  int32_t pid;
  uint32_t len;
} mpe__result_full;

/* mpe_pool_start with a transport made by mk(out, workers, cfg, arg). */
typedef int (*mpe__pool_mk)(mpe__pool_transport **out, int workers, const mpe__pool_cfg *cfg, void *arg);
int mpe__pool_start_with(mpe_pool **out, mpe_pool_fn fn, void *ctx, const mpe_pool_options *opts,
                         mpe__pool_mk mk, void *arg);

/* Each worker of p holds one task at most (a broker pool's exact cap). */
void mpe__pool_one_each(mpe_pool *p);
/* The transport a pool reaches its workers through. */
mpe__pool_transport *mpe__pool_transport_of(mpe_pool *p);

#endif
