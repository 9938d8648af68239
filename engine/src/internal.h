/* internal.h - what the engine's files share and users never see.
 * Internal non-static names are mpe__*. */
#ifndef MPE_INTERNAL_H
#define MPE_INTERNAL_H

#define MPE_BUILDING 1
#include "mpengine.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>

/* A broken invariant is a bug: stop here rather than corrupt shared state. */
#define MPE__CHECK(cond)                                                     \
  do {                                                                       \
    if (!(cond)) mpe__abort(#cond, __FILE__, __LINE__);                      \
  } while (0)

void mpe__abort(const char *what, const char *file, int line);

/* Absolute CLOCK_MONOTONIC deadline for a timeout (negative: none). */
typedef struct mpe__deadline {
  int forever;
  struct timespec at;
} mpe__deadline;

mpe__deadline mpe__deadline_in(double timeout);
/* Milliseconds left for poll(): -1 forever, 0 when passed. */
int mpe__deadline_ms(const mpe__deadline *d);

/* Every shared object in the arena starts with this header. References are
 * counted across processes: each handle, and each message in flight that
 * names the object, holds one. */
#define MPE__OBJ_MAGIC 0x6d70656fu
enum { MPE__KIND_QUEUE = 1, MPE__KIND_LOCK, MPE__KIND_SEM, MPE__KIND_EVENT,
       MPE__KIND_COND, MPE__KIND_BARRIER, MPE__KIND_VALUE, MPE__KIND_DICT };
typedef struct mpe__obj {
  uint32_t magic;
  uint32_t kind;
  /* One word, so that taking a reference also checks the allocation: the
   * references (low 32 bits) and this allocation's serial (high 32 bits,
   * random, never nonzero while alive and never on the wire). */
  _Atomic uint64_t life;
} mpe__obj;

/* Allocates size bytes (header included), zeroed, with one reference. */
void *mpe__obj_new(size_t size, uint32_t kind);
/* The live object of that kind behind ref, or NULL. */
void *mpe__obj_from_ref(uint64_t ref, uint32_t kind);
void mpe__obj_retain(void *o);
/* Drops one reference; 1 if it was the last (the caller frees). */
int mpe__obj_release(void *o);

/* The boilerplate every shared object type shares. */
#define MPE__DEFINE_REFS(name, type, KIND)                                       \
  void mpe_##name##_retain(type *o) { mpe__obj_retain(o); }                     \
  uint64_t mpe_##name##_ref(const type *o) { return mpe_ref(o); }               \
  type *mpe_##name##_from_ref(uint64_t r) { return mpe__obj_from_ref(r, KIND); }

/* Block serial of an mpe_alloc'd pointer: the run-wide number of its
 * allocation, never 0 while it is in use (arena.c). */
uint32_t mpe__block_serial(const void *p);
/* Merges the blocks kept for quick reuse, walks the arena and checks its
 * invariants: 0, or -EFAULT. Counts the free blocks, the largest, the blocks
 * in use, and the repairs after dead lockers so far (for tests). */
int mpe__arena_check(size_t *nfree, size_t *largest_free, size_t *nused, unsigned *repairs);

/* Reference ledgers (ledger.c): what a child holds, given back by its parent
 * when it reaps the child. */
void mpe__ledger_note(const void *obj, int delta); /* this process took (+1) or gave back (-1) one */
void mpe__ledger_forget(uint64_t ref);             /* the block at ref is freed */
void mpe__ledger_for_child(const void *obj);       /* one taken for the next child */
uint64_t mpe__ledger_take_pending(void);           /* parent, before fork: the child's ledger */
void mpe__ledger_drop(uint64_t ref);               /* parent: the fork failed */
void mpe__ledger_adopt(void *ledger);              /* child, after fork: its own (from mpe_deref) */
void mpe__ledger_settle(uint64_t ledger);          /* parent, the child reaped */

/* This process's pid, cached (getpid is a system call), reset after fork. */
pid_t mpe__self_pid(void);
/* Start time of a process (clock ticks since boot), 0 if it is gone or a
 * zombie: with the pid it names one process even if pids are reused. */
unsigned long long mpe__start_time(pid_t pid);
/* *out: the earlier of deadline d and now + slice (a wait that wakes to look
 * around without stretching d). */
void mpe__slice_end(const mpe__deadline *d, double slice, mpe__deadline *out);

static inline void mpe__cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

/* SipHash-2-4 of data under a 128-bit key (mac.c). */
uint64_t mpe__siphash(const unsigned char key[16], const void *data, size_t len);
/* The run's secret key (arena.c), NULL before mpe_init. */
const unsigned char *mpe__run_key(void);

/* Nanoseconds a waiter spins before it sleeps in the kernel. */
long mpe__spin_ns(void);

/* Child-side hooks run right after fork: close what the child must not keep. */
void mpe__pipes_after_fork(const mpe_spawn_options *opts);
void mpe__processes_after_fork(const mpe_spawn_options *opts);
/* The descriptors of the pipe ends open in this process (up to max). */
size_t mpe__pipes_fds(int *out, size_t max);

/* For mpe_wait_any (wait.c): count a wait among the object's waiters (delta
 * +1) or stop counting it (-1), and give the word its wakers bump. */
_Atomic uint32_t *mpe__queue_watch(mpe_queue *q, int delta);
_Atomic uint32_t *mpe__event_watch(mpe_event *e, int delta);
/* 1 if a get would not wait (a message, or closed). */
int mpe__queue_readable(mpe_queue *q);
/* For the tests (tests/test_queue.c): a queue call of this process kills
 * the process (SIGKILL) when it reaches the step named here, so a test
 * can leave exactly what a holder killed there leaves. 0: never (always,
 * outside those tests). */
enum {
  MPE__QK_PUT_WRITTEN = 1, /* a record written, before the commit */
  MPE__QK_PUT_COMMITTED,   /* committed, before the record's stamp */
  MPE__QK_PUT_SKIP,        /* a record after a wrap stamped, before the skip's stamp */
  MPE__QK_PUT_DONE,        /* all done, plock still held */
  MPE__QK_GET_READ,        /* a message copied out, before the commit */
  MPE__QK_GET_DONE,        /* committed, clock still held */
  MPE__QK_GROW_COPIED,     /* a new ring filled, before the commit */
  MPE__QK_GROW_DONE,       /* the new ring committed, clock still held */
};
extern int mpe__queue_kill_at;
/* The child's pidfd, -1 when it has none (reaped, foreign, old kernel). */
int mpe__process_pidfd(const mpe_process *p);

#endif
