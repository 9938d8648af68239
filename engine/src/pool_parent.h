/* pool_parent.h - what the parent side's two files share: pool.c
 * (scheduling, blame, the public calls) and pool_lines.c (the blocks, the
 * pending line, kept replies and outcomes it works on). Never installed. */
#ifndef MPE_POOL_PARENT_H
#define MPE_POOL_PARENT_H

#include "pool.h"

#define SPARES 8                /* reply buffers kept for reuse */
#define BLOCKS 32               /* blocks kept for reuse, at most */
#define BLOCK_BYTES ((size_t)64 << 20) /* and their bytes */

enum { RUN, CLOSED, JOINED, TERMINATED };

/* One submit: n lengths, then the n inputs end to end. */
typedef struct block {
  size_t left;    /* tasks without a result */
  size_t cap;     /* bytes malloc'ed */
  uint64_t first; /* the id of its first task */
  char *in;       /* the inputs (after lens) */
  uint32_t lens[];
} block;

/* Tasks from .. from + n - 1 of blk; off: where task from's input starts. */
typedef struct span {
  block *blk;
  size_t from, n, off;
  int solo; /* each goes alone (a rerun to name a culprit) */
} span;

typedef struct batch {
  uint64_t bid;
  size_t n, done; /* done: tasks answered (a prefix) */
  size_t nseg;
  span seg[];
} batch;

/* A run of consecutive ids. */
typedef struct idrun {
  uint64_t id;
  size_t n;
} idrun;

/* A reply kept for collecting: left results from pos, their ids in runs
 * (stored in buf after the results). */
typedef struct kept {
  char *buf;
  size_t cap, pos, left, at, k; /* ids: run at, its k-th */
  idrun *ids;
  int full;
} kept;

typedef struct spare {
  char *buf;
  size_t cap;
} spare;

typedef struct worker {
  int alive, retiring, timed_out;
  uint64_t kill_seq;
  batch **held; /* in the order sent */
  size_t nheld, hcap;
  size_t tasks_held, dispatched, finished;
} worker;

typedef struct legacy {
  mpe_task_fn fn;
  void *ctx;
} legacy;

struct mpe_pool {
  int n, state, broken, shut;
  mpe__pool_transport *tr;
  mpe__pool_cfg cfg;
  size_t chunksize;
  int one_each; /* a worker (a broker's lane) holds one task at most */
  double timeout;
  span *pend; /* deque of spans; pending: the tasks in them */
  size_t phead, plen, pcap, pending;
  mpe_task_result *done; /* ring: the parent's outcomes */
  size_t dhead, dlen, dcap;
  kept *kp; /* deque: replies */
  size_t khead, klen, kcap;
  spare spares[SPARES], retired; /* retired: in the caller's hands until its next collect */
  size_t nspares;
  worker *w;
  size_t unfinished, outstanding;
  uint64_t next_id, next_bid;
  double task_time, last_check;
  int crashes;
  mpe_buf msg;
  block *blks[BLOCKS]; /* blocks freed, kept for later submits */
  size_t nblks, kept_bytes;
  legacy *lg;
  pid_t gone_pid; /* the worker whose tasks worker_gone() is failing */
  char error[4096];
};

/* pool_lines.c: the line of spans (one entry per submit, not per task). */
int mpe__pend_reserve(mpe_pool *p, size_t more);
void mpe__pend_front(mpe_pool *p, const span *s);
static inline span *mpe__pend_at(mpe_pool *p, size_t i) { return &p->pend[(p->phead + i) & (p->pcap - 1)]; }
span mpe__pend_take(mpe_pool *p, size_t n, size_t *nb);
/* Blocks: a new one for n tasks (inputs unset), and n of its tasks done. */
int mpe__new_block(mpe_pool *p, const size_t *lens, size_t n, block **out, size_t *total);
void mpe__drop_input(mpe_pool *p, block *blk, size_t n);
/* The part of batch b's span j (tasks base ..) holding its tasks from .. to - 1. */
int mpe__part_of(const batch *b, size_t j, size_t base, size_t from, size_t to, span *t);
/* Outcomes: the parent's for one task or a span, and a worker's reply kept. */
int mpe__finish(mpe_pool *p, block *blk, uint64_t id, int status, int code);
void mpe__finish_span(mpe_pool *p, const span *s, int status);
int mpe__keep_reply(mpe_pool *p, batch *b, const char *data, size_t len, size_t n, int full);
int mpe__next_result(mpe_pool *p, mpe_task_result *r, int copy);
/* The caller is done with what the last collect gave. */
void mpe__recycle(mpe_pool *p);
void mpe__lines_free(mpe_pool *p);

#endif
