/*
 * mpengine.h - the one public header of the mpengine C library.
 *
 * The engine runs work on many forked processes and gives them the means to
 * talk: a shared-memory arena mapped before any fork (every cross-process
 * object lives there and is handed around by reference), processes, and
 * framed pipes. It has no Lua dependency; the Lua module is one client.
 *
 * Conventions (libuv style):
 *   - every fallible call returns int: >= 0 success, < 0 an MPE_E* code, which
 *     is -errno or one of the reserved codes below; mpe_strerror() names it;
 *   - timeouts are seconds as double: a negative value waits forever, 0 polls;
 *   - objects are opaque and paired _new/_free; nothing is allocated behind
 *     the caller's back except where a prototype says so;
 *   - the engine never prints and never exits; it aborts only on a broken
 *     invariant (a failed unlock, a corrupt arena header);
 *   - one thread per process uses the engine; processes are the unit of
 *     parallelism. No function is thread-safe; every one is fork-safe in the
 *     sense that matters here: objects in the arena (queues, locks, values,
 *     ...) work from every process of the run, whoever made them, while
 *     process-local handles (mpe_process, mpe_pipe, mpe_pool) belong to the
 *     process that made them (a child made by mpe_process_spawn forgets its
 *     siblings and closes the pipe ends it was not given);
 *   - "blocks" below means: may sleep in the kernel until the timeout; every
 *     other call returns at once.
 */
#ifndef MPENGINE_H
#define MPENGINE_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(MPE_BUILDING) && defined(__GNUC__)
#define MPE_API __attribute__((visibility("default")))
#else
#define MPE_API
#endif

/* Marks a function that every new child runs (its entry function, say).
 * The linker keeps such functions together (.text.hot), and a new child
 * maps its code a page group at a time, each a fault that costs tens of
 * microseconds on a virtual machine: one group for them all, not one for
 * each file they come from. */
#if defined(__GNUC__)
#define MPE_CHILD_PATH __attribute__((hot))
#else
#define MPE_CHILD_PATH
#endif

#define MPE_VERSION_MAJOR 0
#define MPE_VERSION_MINOR 1
#define MPE_VERSION_PATCH 0

/* ---------------------------------------------------------------- errors */

/* Reserved codes for conditions errno has no name for (below -4000). */
#define MPE_ERRORS(XX)                                                       \
  XX(ECLOSED, -4001, "closed: the other side has gone or the object was closed") \
  XX(EDIED, -4002, "a worker process died")                                  \
  XX(EOWNERDEAD, -4003, "the previous holder died; state was recovered")     \
  XX(ENOINIT, -4004, "the engine is not initialised (call mpe_init)")        \
  XX(ECORRUPT, -4005, "malformed message")                                   \
  XX(EFULL, -4006, "full")                                                   \
  XX(EEMPTY, -4007, "empty")                                                 \
  XX(ETASK, -4008, "the task reported an error")                             \
  XX(ETERMINATED, -4009, "the pool was terminated before the task finished") \
  XX(EBROKEN, -4010, "the pool is broken (see mpe_pool_error)")

enum {
#define MPE__ENUM(name, code, msg) MPE_##name = (code),
  MPE_ERRORS(MPE__ENUM)
#undef MPE__ENUM
  MPE_ETIMEDOUT = -110, /* -ETIMEDOUT on Linux */
  MPE_EINTR = -4        /* -EINTR: a signal arrived while waiting */
};

/* Message for any code this library returns (never NULL, static storage). */
MPE_API const char *mpe_strerror(int err);
/* Short name of a code ("ETIMEDOUT", "ECLOSED"), static storage. */
MPE_API const char *mpe_err_name(int err);

/* ---------------------------------------------------------------- engine */

/* Version string "MAJOR.MINOR.PATCH", static storage. */
MPE_API const char *mpe_version(void);

/* Maps the shared arena of arena_size bytes (0: $MPENGINE_ARENA_SIZE, else
 * 1 GiB of address space, backed only as it is touched). Call once before
 * the first fork; later calls return 0 and do nothing. */
MPE_API int mpe_init(size_t arena_size);
/* 1 once mpe_init succeeded in this process or an ancestor. */
MPE_API int mpe_initialized(void);
/* Number of online CPUs usable by this process (at least 1). */
MPE_API int mpe_cpu_count(void);
/* Monotonic clock in seconds. */
MPE_API double mpe_time(void);
/* Sleeps for seconds; returns 0, or MPE_EINTR if a signal cut it short
 * (*left, if given, then holds the seconds that remained). */
MPE_API int mpe_sleep(double seconds, double *left);

/* Interruptions. A signal handler that runs while a call of this process
 * sleeps (SA_RESTART or not) makes the waits of locks, semaphores, events,
 * conditions and barriers return MPE_EINTR. Nothing was taken and nothing
 * is lost: calling the same wait again, with the time left, continues it (a
 * set(), a notify or the end of a barrier round that came in between counts,
 * and a barrier arrival is not counted twice). A host looks at its own flags
 * on MPE_EINTR, then calls again or gives up (a barrier wait given up:
 * mpe_barrier_abort). Because a signal can land just before the sleep
 * begins, a host that stops on a signal names the flag its handler sets:
 * once *flag is nonzero those waits return MPE_EINTR within about 0.1 s,
 * signal or not. NULL: no flag. */
MPE_API void mpe_interrupt_flag(volatile sig_atomic_t *flag);

/* How long a wait of this process spins before it sleeps in the kernel, in
 * nanoseconds (default: $MPENGINE_SPIN_US microseconds, else 20 us, or 0 on
 * one CPU). Sets it (ns < 0: leaves it), returns the previous value. Spinning shortens hand-offs
 * when a CPU is free and steals one when none is: a dispatcher with a busy
 * worker on every CPU should not spin. */
MPE_API long mpe_spin_set(long ns);

/* A 64-bit keyed tag of data[len] under this run's secret key (SipHash-2-4;
 * the key is drawn when the arena is mapped and shared by every process of
 * the run). 0 before mpe_init. */
MPE_API uint64_t mpe_mac(const void *data, size_t len);
/* The key mpe_mac uses, copied to out (0, -EINVAL before mpe_init); and,
 * in a process that serves another run (a broker host's worker), that
 * run's key in its place, for mpe_mac only. */
MPE_API int mpe_seal_key(unsigned char out[16]);
MPE_API void mpe_seal_key_set(const unsigned char key[16]);

/* ----------------------------------------------------------------- arena */

/* Allocates n bytes (16-byte aligned) in the shared arena; visible to every
 * process of the run at the same address. NULL when the arena is full. */
MPE_API void *mpe_alloc(size_t n);
/* Returns a block from mpe_alloc to the arena (any process may free it). */
MPE_API void mpe_free(void *p);
/* Bytes of the arena in use and in all (for reports and leak checks). */
MPE_API void mpe_arena_stats(size_t *used, size_t *size);
/* Process-independent reference of an arena pointer, and back; 0 <-> NULL. */
MPE_API uint64_t mpe_ref(const void *p);
MPE_API void *mpe_deref(uint64_t ref);

/* Shared objects (queues, locks, values, ... below) named across processes
 * safely. mpe_<type>_ref gives an object's place in the arena, which a later
 * object may take once this one is freed; mpe_obj_check gives a 64-bit check
 * of this very allocation, keyed with the run's secret, so (ref, check)
 * names one object for its whole life and can be neither reused nor forged
 * (bytes written to look like an object do not have it). */
MPE_API uint64_t mpe_obj_check(const void *obj);
/* For obj from mpe_<type>_from_ref: 0 if check names it and it is still
 * alive, after taking a new reference to it when retain is set (atomically:
 * never one to an object that is being freed); -ESTALE if it is gone. */
MPE_API int mpe_obj_claim(void *obj, uint64_t check, int retain);

/* -------------------------------------------------------------- processes */

typedef struct mpe_process mpe_process;
typedef struct mpe_pipe mpe_pipe;

/* Body of a child; its return value is the child's exit code (0..255). */
typedef int (*mpe_entry_fn)(void *arg);

typedef struct mpe_spawn_options {
  int daemon;              /* informational: the host decides what it means */
  int inherit_pipes;       /* 1: the child keeps every pipe end; 0: only keep[] */
  mpe_pipe *const *keep;   /* pipe ends the child keeps open */
  size_t nkeep;
  int inherit_fds;         /* 1: keep every other descriptor too (plain fork) */
  const int *keep_fds;     /* descriptors (beyond 0, 1, 2) the child keeps */
  size_t nkeep_fds;
} mpe_spawn_options;

/* Starts the reference ledger of the next child: the references taken with
 * the mpe_*_retain functions from now until the next mpe_process_spawn are
 * the child's, and so are the objects the child creates. The child gives
 * them back as usual (mpe_*_free); whatever it has not given back when its
 * parent reaps it (it was killed, or ended without) the parent gives back
 * then (references that reach it later count once it says so: mpe_obj_held).
 * Nothing but those references may be taken between this call and the spawn.
 * 0, or -ENOMEM: the child then runs without a ledger. */
MPE_API int mpe_spawn_refs_begin(void);
/* Tells the ledger that this process now holds one more reference to the
 * shared object obj (a queue, lock, value, ...) that it did not create or
 * inherit: one adopted from a message, say. Call it after the reference is
 * this process's; it is given back by the parent if this child is killed. */
MPE_API void mpe_obj_held(const void *obj);
/* Forks a child that runs fn(arg) and leaves with its return value via
 * _exit(). The child dies with its parent (SIGKILL on parent death), starts
 * with the parent's signal mask and default signal handlers (ignored signals
 * stay ignored), keeps no descriptor of the engine it was
 * not given, and, once fn returns, joins its own children as
 * mpe_process_join_all(-1) does and flushes stdio before leaving. Children
 * of the caller that have ended are reaped first (mpe_process_reap), so
 * starting children forever holds descriptors only for the running ones.
 * opts may be NULL (keep no pipe ends). On success *out owns the handle
 * (free with mpe_process_free); it is set before the fork (the child sees
 * it too), and to NULL when the fork fails. */
MPE_API int mpe_process_spawn(mpe_process **out, mpe_entry_fn fn, void *arg,
                              const mpe_spawn_options *opts);
/* Pid of the child. */
MPE_API pid_t mpe_process_pid(const mpe_process *p);
/* Waits up to timeout for the child to exit and reaps it: 0 once exited,
 * MPE_ETIMEDOUT, or MPE_EINTR when a signal interrupted the wait. */
MPE_API int mpe_process_wait(mpe_process *p, double timeout);
/* Non-blocking: 1 and *code set (exit code, or -N for signal N) once the
 * child has exited (reaping it if needed), 0 while it runs. */
MPE_API int mpe_process_exitcode(mpe_process *p, int *code);
/* Sends sig to a running child; 0 if it has already exited. Never signals
 * a pid <= 0 (-ESRCH). */
MPE_API int mpe_process_signal(mpe_process *p, int sig);
/* Releases the handle; a child still running is killed and reaped first. */
MPE_API void mpe_process_free(mpe_process *p);
/* Gives the handle to the engine: it is freed once the child is reaped (by
 * mpe_process_reap or mpe_process_join_all). The caller must not use it. */
MPE_API void mpe_process_detach(mpe_process *p);
/* Ends this process's part of the run: SIGTERM to daemon children, waits up
 * to timeout (negative: forever) for the others, then SIGKILLs and reaps what
 * is left. Returns how many children had to be killed. */
MPE_API int mpe_process_join_all(double timeout);
/* Sends sig to every running child of this process; returns their count. */
MPE_API int mpe_process_signal_all(int sig);
/* Reaps every child that has exited; returns how many still run. */
MPE_API int mpe_process_reap(void);
/* 1 in a process the engine forked, 0 in the original one. */
MPE_API int mpe_in_child(void);
/* This process's pid, as getpid() but without a system call after the first
 * (remembered, and forgotten in the child of any fork). A system call costs
 * about a microsecond on a VM: checks "am I the owner?" made several times
 * per operation should use this. */
MPE_API pid_t mpe_self_pid(void);

/* ------------------------------------------------------------------ pipes */

/* One received message: data is malloc'ed and owned by the caller along with
 * the received pipe ends; release both with mpe_msg_clear(). */
typedef struct mpe_msg {
  char *data;
  size_t len;
  uint32_t tag;       /* the sender's tag, opaque to the engine */
  mpe_pipe **ends;    /* pipe ends that travelled with the message */
  size_t nends;
} mpe_msg;

/* Creates a pipe. duplex: both ends send and receive. Otherwise *a only
 * receives and *b only sends (Python's order). Messages are framed: any size
 * up to memory, delivered whole or not at all. Any number of processes may
 * hold one end: their sends are serialised (each message goes out whole),
 * and so are their receives (each message comes in whole, to one of them). */
MPE_API int mpe_pipe_new(mpe_pipe **a, mpe_pipe **b, int duplex);
/* Sends one framed message with an opaque tag and, optionally, pipe ends
 * (duplicated into the receiver). Blocks until written, with no timeout;
 * 0, MPE_ECLOSED when the peer is gone or this direction is broken, -EBADF on
 * a closed or receive-only end, or MPE_EINTR when a signal arrived (a handler
 * without SA_RESTART). After MPE_EINTR with part of the message gone, the end
 * holds it unfinished (and other senders of the end wait): call again with
 * the same arguments to finish it, or mpe_pipe_abort() to give it up. */
MPE_API int mpe_pipe_send(mpe_pipe *p, const void *buf, size_t len,
                          uint32_t tag, mpe_pipe *const *ends, size_t nends);
/* Gives up a message mpe_pipe_send left unfinished: the receiver cannot find
 * the next message's start, so this direction of the pipe is broken for
 * every process (MPE_ECLOSED from then on). Nothing unfinished: no effect. */
MPE_API void mpe_pipe_abort(mpe_pipe *p);
/* Receives one message into *m: 0, MPE_ETIMEDOUT, MPE_ECLOSED (every writing
 * end closed and nothing left, or this direction is broken), MPE_EINTR.
 * The timeout holds for the whole message. A message half read when the
 * time is up or a signal arrives stays with this process, which finishes
 * it on its next receive from this end (other receivers of the end wait). A
 * sender that dies in the middle of a message breaks the direction: the
 * receiver returns MPE_ECLOSED instead of waiting for the rest. */
MPE_API int mpe_pipe_recv(mpe_pipe *p, double timeout, mpe_msg *m);
/* mpe_pipe_recv, refusing a message longer than maxlen bytes with -EMSGSIZE;
 * its header is consumed, so this direction is then broken. */
MPE_API int mpe_pipe_recv_max(mpe_pipe *p, double timeout, size_t maxlen, mpe_msg *m);
/* Why a direction of this end broke (sending: the one out of it, else the
 * one into it), static storage; NULL when it did not. */
MPE_API const char *mpe_pipe_broken(const mpe_pipe *p, int sending);
/* Frees what a received message owns (data and unclaimed ends). */
MPE_API void mpe_msg_clear(mpe_msg *m);
/* 1 when a message (or EOF) is ready, 0 on timeout, MPE_EINTR, or an error. */
MPE_API int mpe_pipe_poll(mpe_pipe *p, double timeout);
/* The end's descriptor (for an outside event loop: readable when poll would
 * say ready), -EBADF once closed. Keep reading and writing to the engine. */
MPE_API int mpe_pipe_fileno(const mpe_pipe *p);
/* Closes the descriptor; the handle stays valid and reports -EBADF. */
MPE_API int mpe_pipe_close(mpe_pipe *p);
/* 1 while open. */
MPE_API int mpe_pipe_is_open(const mpe_pipe *p);
/* 1 if the end may send, 1 if it may receive. */
MPE_API int mpe_pipe_can_send(const mpe_pipe *p);
MPE_API int mpe_pipe_can_recv(const mpe_pipe *p);
/* Closes (if open) and frees the handle. */
MPE_API void mpe_pipe_free(mpe_pipe *p);

/* ----------------------------------------------------------------- queues */

/* A multi-producer, multi-consumer FIFO of byte messages in the arena, usable
 * from every process of the run. Timeouts: negative waits forever, 0 tries
 * once. A process killed inside any call leaves the queue usable; only the
 * message it was putting or had just taken is lost. */
typedef struct mpe_queue mpe_queue;

/* One message taken from a queue. buf is a reusable buffer owned by the
 * caller (start with {0}); data/len point at the message until the next get
 * or mpe_qmsg_done. */
typedef struct mpe_qmsg {
  char *buf;
  size_t cap;
  const char *data;
  size_t len;
  uint32_t tag;
  void *block; /* a large message read in place, released by mpe_qmsg_done */
} mpe_qmsg;

/* Creates a queue holding at most maxsize messages (0: only memory limits
 * it). The caller owns one reference. */
MPE_API int mpe_queue_new(mpe_queue **out, size_t maxsize);
/* Adds a reference (for another handle, or a message in flight). */
MPE_API void mpe_queue_retain(mpe_queue *q);
/* Drops a reference; the last one frees the queue and what it holds. */
MPE_API void mpe_queue_free(mpe_queue *q);
/* Process-independent reference, and back (NULL unless a live queue; the
 * caller adopts no reference). */
MPE_API uint64_t mpe_queue_ref(const mpe_queue *q);
MPE_API mpe_queue *mpe_queue_from_ref(uint64_t ref);
/* Appends a copy of buf. Blocks while the queue is full: 0, MPE_ETIMEDOUT,
 * MPE_ECLOSED (closed for puts), MPE_EINTR, -ENOMEM (arena full). Messages
 * of any size fit, larger than the ring included. */
MPE_API int mpe_queue_put(mpe_queue *q, const void *buf, size_t len, uint32_t tag, double timeout);
/* Takes the oldest message into *m: 0, MPE_ETIMEDOUT, MPE_ECLOSED (closed
 * and drained), MPE_EINTR, -ENOMEM. Spins briefly, then sleeps in the kernel;
 * no system call when a message is ready and nobody waits. */
MPE_API int mpe_queue_get(mpe_queue *q, double timeout, mpe_qmsg *m);
/* Releases what the last get holds; m->buf stays for reuse. */
MPE_API void mpe_qmsg_done(mpe_qmsg *m);
/* Frees m->buf as well. */
MPE_API void mpe_qmsg_free(mpe_qmsg *m);
/* Messages in the queue now; the bound given to mpe_queue_new. */
MPE_API size_t mpe_queue_size(const mpe_queue *q);
MPE_API size_t mpe_queue_maxsize(const mpe_queue *q);
/* Closes the queue for puts; getters drain it, then get MPE_ECLOSED. */
MPE_API void mpe_queue_close(mpe_queue *q);
MPE_API int mpe_queue_is_closed(const mpe_queue *q);
/* Marks one message as processed: 0, or -EINVAL when called more often than
 * messages were put. */
MPE_API int mpe_queue_task_done(mpe_queue *q);
/* Waits until every message put has been marked done: 0, MPE_ETIMEDOUT,
 * MPE_EINTR. */
MPE_API int mpe_queue_join(mpe_queue *q, double timeout);

/* ------------------------------------------------------- waiting on many */
/* What mpe_wait_any watches: obj is an mpe_pipe (a receiving end: a message,
 * part of one, or EOF), an mpe_process (a started child of this process:
 * ended), an mpe_queue (a message, or closed) or an mpe_event (set). */
enum { MPE_WAIT_PIPE = 1, MPE_WAIT_PROCESS, MPE_WAIT_QUEUE, MPE_WAIT_EVENT };
typedef struct mpe_wait_item {
  int kind;  /* MPE_WAIT_* */
  void *obj;
  int ready; /* out: 1 if ready when the call returned */
} mpe_wait_item;
/* Sleeps (one poll/futex sleep, no spinning) until one item or more is
 * ready, at most timeout seconds (negative: forever; 0: look once), and sets
 * every item's ready flag: the number ready, 0 on timeout, MPE_EINTR (a
 * signal handler ran, or the host's stop flag is set), -EINVAL (an unknown
 * kind, a NULL obj), -EBADF (a closed or send-only pipe end), -ECHILD (a
 * process that is not this process's child), -E2BIG (over 127 queues and
 * events), -ENOMEM. Nothing is taken: a ready queue keeps its message. */
MPE_API int mpe_wait_any(mpe_wait_item *items, size_t n, double timeout);

/* ------------------------------------------------------------------ locks */

/* Locks, semaphores, events, conditions, barriers and shared values live in
 * the arena like queues: any process of the run may use them, they are
 * reference counted (_retain adds a reference, _free drops one and the last
 * frees), and _ref/_from_ref give a process-independent reference. Owners
 * are processes. Waits take a timeout in seconds (negative: forever). */
typedef struct mpe_lock mpe_lock;

/* A lock; recursive: the owning process may acquire it again (an RLock). */
MPE_API int mpe_lock_new(mpe_lock **out, int recursive);
MPE_API void mpe_lock_retain(mpe_lock *l);
MPE_API void mpe_lock_free(mpe_lock *l);
MPE_API uint64_t mpe_lock_ref(const mpe_lock *l);
MPE_API mpe_lock *mpe_lock_from_ref(uint64_t ref);
MPE_API int mpe_lock_is_recursive(const mpe_lock *l);
/* Acquires: 0; MPE_EOWNERDEAD (acquired; the previous owner died holding
 * it: "died" only on evidence, a killed or exited process, never because
 * /proc cannot be read); MPE_ETIMEDOUT; -EDEADLK (a plain lock this process
 * already holds: waiting would never end); MPE_EINTR (see Interruptions:
 * not acquired, call again with the time left). */
MPE_API int mpe_lock_acquire(mpe_lock *l, double timeout);
/* Releases one level: 0, or -EPERM when this process does not hold it. */
MPE_API int mpe_lock_release(mpe_lock *l);
/* 1 if any process holds it. */
MPE_API int mpe_lock_locked(const mpe_lock *l);
/* Levels this process holds (0 if none). */
MPE_API int mpe_lock_held(const mpe_lock *l);
/* For a condition wait: drops every level this process holds (returning how
 * many, or -EPERM), and takes them back (0, MPE_EOWNERDEAD, MPE_ETIMEDOUT,
 * -EDEADLK if already held; never MPE_EINTR: a condition wait returns
 * holding its lock). */
MPE_API int mpe_lock_release_all(mpe_lock *l);
MPE_API int mpe_lock_reacquire(mpe_lock *l, int levels, double timeout);

/* ------------------------------------------------------------- semaphores */

typedef struct mpe_sem mpe_sem;

/* A counting semaphore holding value permits; bound > 0 makes releases
 * above bound fail (a BoundedSemaphore). Permits taken by a process that is
 * killed before giving them back return to the semaphore; a process that
 * ends normally keeps what it took (producer/consumer hand permits over). */
MPE_API int mpe_sem_new(mpe_sem **out, unsigned value, unsigned bound);
MPE_API void mpe_sem_retain(mpe_sem *s);
MPE_API void mpe_sem_free(mpe_sem *s);
MPE_API uint64_t mpe_sem_ref(const mpe_sem *s);
MPE_API mpe_sem *mpe_sem_from_ref(uint64_t ref);
/* 0, MPE_ETIMEDOUT, MPE_EINTR (nothing taken: call again). Any number of
 * processes may hold permits over the semaphore's life; up to 32 at once
 * are tracked for recovery. */
MPE_API int mpe_sem_acquire(mpe_sem *s, double timeout);
/* 0, or -EOVERFLOW above the bound. */
MPE_API int mpe_sem_release(mpe_sem *s);
MPE_API unsigned mpe_sem_value(mpe_sem *s);
MPE_API unsigned mpe_sem_bound(const mpe_sem *s);
/* This process ends normally: what it took stays taken. */
MPE_API void mpe_sem_forget_process(mpe_sem *s);

/* ----------------------------------------------------------------- events */

typedef struct mpe_event mpe_event;

MPE_API int mpe_event_new(mpe_event **out);
MPE_API void mpe_event_retain(mpe_event *e);
MPE_API void mpe_event_free(mpe_event *e);
MPE_API uint64_t mpe_event_ref(const mpe_event *e);
MPE_API mpe_event *mpe_event_from_ref(uint64_t ref);
MPE_API void mpe_event_set(mpe_event *e);
MPE_API void mpe_event_clear(mpe_event *e);
MPE_API int mpe_event_is_set(const mpe_event *e);
/* 0 once set, or when a set() happened while it waited (even if clear()
 * followed at once); MPE_ETIMEDOUT; MPE_EINTR (call again: it goes on). */
MPE_API int mpe_event_wait(mpe_event *e, double timeout);
/* Processes waiting now (for handshakes in tests and demos). */
MPE_API unsigned mpe_event_waiting(const mpe_event *e);

/* ------------------------------------------------------------- conditions */

typedef struct mpe_cond mpe_cond;

/* A condition variable over lock (retained; NULL: a new RLock). */
MPE_API int mpe_cond_new(mpe_cond **out, mpe_lock *lock);
MPE_API void mpe_cond_retain(mpe_cond *c);
MPE_API void mpe_cond_free(mpe_cond *c);
MPE_API uint64_t mpe_cond_ref(const mpe_cond *c);
MPE_API mpe_cond *mpe_cond_from_ref(uint64_t ref);
/* The condition's lock (no new reference). */
MPE_API mpe_lock *mpe_cond_lock(mpe_cond *c);
/* With the lock held: releases it, waits for a notify, takes it back.
 * 0 notified, MPE_ETIMEDOUT, MPE_EINTR (call again: a notify that came in
 * between counts), the lock held again in every case; -EPERM when the lock
 * is not held. */
MPE_API int mpe_cond_wait(mpe_cond *c, double timeout);
MPE_API void mpe_cond_notify(mpe_cond *c, int n);
/* Processes inside mpe_cond_wait now: each read its notify point while it
 * held the lock, so a notify from now on reaches them (for handshakes). */
MPE_API unsigned mpe_cond_waiting(const mpe_cond *c);

/* --------------------------------------------------------------- barriers */

typedef struct mpe_barrier mpe_barrier;

/* A barrier for parties processes; data (len bytes, may be NULL) is copied
 * into the arena with it, for the host (the Lua binding keeps the encoded
 * action there). */
MPE_API int mpe_barrier_new(mpe_barrier **out, unsigned parties, const void *data, size_t len);
/* The bytes given to mpe_barrier_new (NULL if none); *len gets their size. */
MPE_API const void *mpe_barrier_data(const mpe_barrier *b, size_t *len);
MPE_API void mpe_barrier_retain(mpe_barrier *b);
MPE_API void mpe_barrier_free(mpe_barrier *b);
MPE_API uint64_t mpe_barrier_ref(const mpe_barrier *b);
MPE_API mpe_barrier *mpe_barrier_from_ref(uint64_t ref);
MPE_API unsigned mpe_barrier_parties(const mpe_barrier *b);
/* Arrives: the arrival index (0..parties-1) once everyone is there, with
 * *last set for the one that completed the round (it runs the action, then
 * calls mpe_barrier_pass); MPE_ETIMEDOUT (the barrier is now broken),
 * MPE_ECLOSED (broken by someone else, or by the death of a party of the
 * round: mpe_barrier_dead_pid), MPE_EINTR (still arrived: call again to go
 * on waiting, or mpe_barrier_abort). parties pids are kept in the arena. */
MPE_API int mpe_barrier_wait(mpe_barrier *b, double timeout, int *last);
/* The last arrival lets the round go (ok = 0: its action failed: break). */
MPE_API void mpe_barrier_pass(mpe_barrier *b, int ok);
MPE_API void mpe_barrier_abort(mpe_barrier *b);
MPE_API void mpe_barrier_reset(mpe_barrier *b);
MPE_API int mpe_barrier_broken(const mpe_barrier *b);
/* Processes waiting now. */
MPE_API unsigned mpe_barrier_waiting(const mpe_barrier *b);
/* The pid of the party whose death broke the barrier (a waiter, or the last
 * arrival inside its action), 0 if it is not broken or broke otherwise. */
MPE_API pid_t mpe_barrier_dead_pid(const mpe_barrier *b);

/* ---------------------------------------------------------- shared values */

typedef struct mpe_value mpe_value;

/* count elements of a Python typecode: b B h H i I l L q Q f d c; -EINVAL for
 * another. lock: the lock that guards compound updates (retained), or NULL. */
MPE_API int mpe_value_new(mpe_value **out, char typecode, size_t count, mpe_lock *lock);
MPE_API void mpe_value_retain(mpe_value *v);
MPE_API void mpe_value_free(mpe_value *v);
MPE_API uint64_t mpe_value_ref(const mpe_value *v);
MPE_API mpe_value *mpe_value_from_ref(uint64_t ref);
MPE_API char mpe_value_typecode(const mpe_value *v);
MPE_API size_t mpe_value_count(const mpe_value *v);
MPE_API mpe_lock *mpe_value_lock(mpe_value *v);
/* Element i (0-based) as int64 or double (each read and write is atomic). */
MPE_API int64_t mpe_value_get_int(mpe_value *v, size_t i);
MPE_API double mpe_value_get_float(mpe_value *v, size_t i);
/* 0, or -ERANGE when x does not fit the typecode. */
MPE_API int mpe_value_set_int(mpe_value *v, size_t i, int64_t x);
MPE_API int mpe_value_set_float(mpe_value *v, size_t i, double x);
/* Atomically adds delta; *out gets the new value. -ERANGE leaves it as was. */
MPE_API int mpe_value_add_int(mpe_value *v, size_t i, int64_t delta, int64_t *out);
MPE_API int mpe_value_add_float(mpe_value *v, size_t i, double delta, double *out);
/* Address of element 0 (naturally aligned; elements follow each other).
 * For hot paths: use atomic accesses when other processes write too. */
MPE_API void *mpe_value_data(mpe_value *v);
/* 1 for 'f' and 'd'. */
MPE_API int mpe_typecode_is_float(char typecode);

/* ------------------------------------------------------------------ dicts */

/* A hash map in the arena from byte keys to values: numbers (kept inline,
 * so mpe_dict_incr adds to them in place) or opaque bytes with a tag. A
 * process killed inside any call leaves the dict usable and every entry old
 * or new; it may leak the block it was installing or freeing. */
typedef struct mpe_dict mpe_dict;

enum { MPE_DICT_NONE = 0, MPE_DICT_INT, MPE_DICT_FLOAT, MPE_DICT_BYTES };

/* One value, given (kind, tag, i, f, data, len) or received. buf is a
 * reusable buffer owned by the caller (start with {0}); a value received
 * points into buf, or into block (an entry handed over by set, delete or
 * clear), until the next call with it or mpe_dval_done. */
typedef struct mpe_dval {
  int kind;         /* MPE_DICT_INT, _FLOAT, _BYTES; _NONE: no value */
  uint32_t tag;     /* BYTES: the caller's, opaque */
  int64_t i;        /* INT */
  double f;         /* FLOAT */
  const void *data; /* BYTES */
  size_t len;
  char *buf;
  size_t cap;
  void *block;
} mpe_dval;

/* Entries one by one: a snapshot (mpe_dict_items) or the entries a clear
 * took out (mpe_dict_clear). Start with {0}. */
typedef struct mpe_dict_iter {
  char *buf;
  size_t cap, len, pos;
  void *table;
} mpe_dict_iter;

/* An empty dict, with its own RLock for the caller's multi-key work. */
MPE_API int mpe_dict_new(mpe_dict **out);
MPE_API void mpe_dict_retain(mpe_dict *d);
/* Drops a reference; the last frees the dict, its entries and its lock's reference. */
MPE_API void mpe_dict_free(mpe_dict *d);
MPE_API uint64_t mpe_dict_ref(const mpe_dict *d);
MPE_API mpe_dict *mpe_dict_from_ref(uint64_t ref);
/* The dict's lock (no new reference): the engine never takes it. */
MPE_API mpe_lock *mpe_dict_lock(mpe_dict *d);
/* Entries now. */
MPE_API size_t mpe_dict_len(mpe_dict *d);
/* Copies key's value into *out: 1 found, 0 missing, -ENOMEM. */
MPE_API int mpe_dict_get(mpe_dict *d, const void *key, size_t klen, mpe_dval *out);
/* Stores a copy of v under key: 1 replaced (the old value in *old, if
 * given), 0 added, -ENOMEM, -EINVAL (no kind), MPE_EINTR (a signal came while
 * it waited for another process's update of key: nothing changed). */
MPE_API int mpe_dict_set(mpe_dict *d, const void *key, size_t klen, const mpe_dval *v, mpe_dval *old);
/* Removes key: 1 removed (its value in *old, if given), 0 missing, MPE_EINTR. */
MPE_API int mpe_dict_delete(mpe_dict *d, const void *key, size_t klen, mpe_dval *old);
/* Adds delta (INT or FLOAT) to key's number (missing: 0) in one step: 0
 * with the new number in *now (if given); -EINVAL when the value is bytes
 * (unchanged); MPE_EINTR. INT + INT wraps around; any FLOAT gives a FLOAT. */
MPE_API int mpe_dict_incr(mpe_dict *d, const void *key, size_t klen, const mpe_dval *delta, mpe_dval *now);
/* Empties the dict: 0, -ENOMEM, MPE_EINTR. gone (may be NULL) receives
 * the entries taken out, which mpe_dict_iter_done frees. */
MPE_API int mpe_dict_clear(mpe_dict *d, mpe_dict_iter *gone);
/* A snapshot of every entry (values too if values): 0, -ENOMEM. */
MPE_API int mpe_dict_items(mpe_dict *d, mpe_dict_iter *it, int values);
/* The next entry: 1 with *key, *klen and *v set (valid until the next call), 0 at the end. */
MPE_API int mpe_dict_iter_next(mpe_dict_iter *it, const void **key, size_t *klen, mpe_dval *v);
/* Frees what the iteration holds; mpe_dict_iter_free frees buf as well. */
MPE_API void mpe_dict_iter_done(mpe_dict_iter *it);
MPE_API void mpe_dict_iter_free(mpe_dict_iter *it);
/* Frees what a received value holds (block); mpe_dval_free frees buf too. */
MPE_API void mpe_dval_done(mpe_dval *v);
MPE_API void mpe_dval_free(mpe_dval *v);
/* Starts a read-modify-write of key: waits (blocks) until no other update
 * of the dict runs, copies key's value into *old (kind NONE if missing);
 * until mpe_dict_update_end no other process changes key (they wait; reads
 * go on). 0; MPE_EOWNERDEAD (begun: an earlier update's process died inside
 * it, its change was not stored); MPE_EINTR; -EDEADLK (this process is
 * inside an update of this dict). Set or delete key, then end. */
MPE_API int mpe_dict_update_begin(mpe_dict *d, const void *key, size_t klen, mpe_dval *old);
/* Ends this process's update (nothing if none). */
MPE_API void mpe_dict_update_end(mpe_dict *d);
/* 1 while this process is inside an update of d. */
MPE_API int mpe_dict_updating(mpe_dict *d);
/* Checks the table's invariants (for tests): 0, or MPE_ECORRUPT. */
MPE_API int mpe_dict_check(mpe_dict *d);

/* ------------------------------------------------------------------- pool */

/* A pool of worker processes running a C function over byte buffers, no Lua
 * involved. The parent hands tasks out in batches (many tasks in one
 * message), each worker stamps the task it runs, and every task submitted
 * gets exactly one result: its output, its error, how its worker died (the
 * task it was running is named; the rest of its batch goes to other
 * workers), a timeout, or "terminated". A dead worker is replaced. Use a
 * pool only from the process that made it; fn, ctx and the options'
 * pointers are inherited by the forked workers. */

/* A growable byte buffer a task appends its output to. */
typedef struct mpe_buf {
  char *data;
  size_t len, cap;
} mpe_buf;
/* Appends data[n] (malloc'ed growth; data NULL: n bytes of room, unset): 0 or -ENOMEM. */
MPE_API int mpe_buf_add(mpe_buf *b, const void *data, size_t n);

/* A task: reads in[n], appends its output to out (empty at the call). 0 is
 * success; nonzero fails the task with that code (MPE_ETASK; out then holds
 * the message). Runs in a worker. */
typedef int (*mpe_pool_fn)(void *ctx, const void *in, size_t n, mpe_buf *out);
/* Runs once in each worker before its first task; nonzero breaks the pool. */
typedef int (*mpe_pool_init_fn)(void *arg);
/* Hooks for a host that keeps state of its own in the workers (a language
 * binding), each given initarg. setup runs in each worker before the
 * initializer: nonzero breaks the pool, and what it appended to why ends
 * mpe_pool_error's text. at_exit runs in a worker that leaves normally.
 * before_fork runs in the parent just before each worker is forked (failed
 * 0), and again with failed 1 if that fork failed. */
typedef int (*mpe_pool_setup_fn)(void *arg, mpe_buf *why);
typedef void (*mpe_pool_exit_fn)(void *arg);
typedef void (*mpe_pool_fork_fn)(void *arg, int failed);

typedef struct mpe_pool_options {
  int processes;            /* workers (0: mpe_cpu_count()) */
  size_t maxtasksperchild;  /* a worker is replaced after this many tasks (0: never) */
  double timeout;           /* seconds a task may run before its worker is killed (<= 0: none) */
  mpe_pool_init_fn initializer; /* may be NULL */
  void *initarg;
  size_t memory_limit;      /* private bytes a worker may allocate beyond its start (0: no limit) */
  size_t chunksize;         /* tasks per batch (0: adaptive, from the measured task time) */
  mpe_pool_setup_fn setup;  /* the host's hooks (see above); each may be NULL */
  mpe_pool_exit_fn at_exit;
  mpe_pool_fork_fn before_fork;
} mpe_pool_options;

typedef struct mpe_pool mpe_pool;

/* The outcome of one task; data is malloc'ed and owned by the caller
 * (mpe_task_result_clear frees it). */
typedef struct mpe_task_result {
  uint64_t id;   /* the task's index: from the submit call; the input's index for mpe_pool_map */
  int status;    /* 0; MPE_ETASK (code: the task's return; data: its message);
                    MPE_EDIED (code: the worker's exit code, or -N for signal N);
                    MPE_ETIMEDOUT (ran past the timeout; its worker was killed);
                    MPE_ETERMINATED; MPE_EBROKEN (the pool broke before it ran) */
  int code;
  void *data;    /* the task's output (or message) */
  size_t len;
  pid_t pid;     /* MPE_EDIED, MPE_ETIMEDOUT: the worker that ran it (0 if not known) */
} mpe_task_result;

/* Starts a pool running fn(ctx, ...) (opts may be NULL: defaults). Returns at
 * once; the initializer runs in each worker as it starts. */
MPE_API int mpe_pool_start(mpe_pool **out, mpe_pool_fn fn, void *ctx, const mpe_pool_options *opts);
/* Queues n tasks whose inputs lie end to end in data (task i has lens[i]
 * bytes; data is copied). Ids are *first_id .. *first_id + n - 1 (first_id
 * may be NULL). Never blocks: 0, MPE_ECLOSED (closed or terminated),
 * MPE_EBROKEN, -ENOMEM. */
MPE_API int mpe_pool_submit_batch(mpe_pool *p, const void *data, const size_t *lens, size_t n,
                                  uint64_t *first_id);
/* One task: mpe_pool_submit_batch of in[len]. */
MPE_API int mpe_pool_submit(mpe_pool *p, const void *in, size_t len, uint64_t *id);
/* Waits for the next finished task (any order): 0 with *r filled,
 * MPE_ETIMEDOUT, MPE_EEMPTY (every task submitted was collected),
 * MPE_EBROKEN (the same, on a broken pool), MPE_EINTR. */
MPE_API int mpe_pool_collect(mpe_pool *p, double timeout, mpe_task_result *r);
/* As mpe_pool_collect, for many: waits for the first, then fills rs[0..max-1]
 * with what is here (the parent's outcomes, and results of one worker reply
 * at most) and returns how many (>= 1). No copies: a result's data points
 * into the pool's reply buffer, valid until the next collect call on p (or
 * mpe_pool_map, mpe_pool_free); never free it. */
MPE_API int mpe_pool_collect_many(mpe_pool *p, double timeout, mpe_task_result *rs, size_t max);
/* Runs fn over n inputs and fills results[0..n-1] in input order (ids are
 * the indexes; nothing else may be outstanding: -EBUSY). Blocks until all
 * are done: 0, or MPE_EBROKEN (every result still filled), or an engine
 * error (MPE_EINTR once the host's interrupt flag is set). Tasks that fail, time out or whose worker dies are reported in
 * their result. */
MPE_API int mpe_pool_map(mpe_pool *p, size_t n, const void *const *in, const size_t *len,
                         mpe_task_result *results);
/* This process may allocate about extra more bytes of private memory
 * (RLIMIT_DATA above what it uses now; the shared arena is not counted,
 * as memory_limit in a worker): 0 or -errno. */
MPE_API int mpe_limit_memory(size_t extra);
/* Frees the data of a result. */
MPE_API void mpe_task_result_clear(mpe_task_result *r);
/* Number of worker processes. */
MPE_API int mpe_pool_size(const mpe_pool *p);
/* Pids of the live workers into pids[0..max-1]; returns how many. */
MPE_API int mpe_pool_pids(const mpe_pool *p, pid_t *pids, int max);
/* Why the pool broke (a failing initializer, workers dying before their
 * first task too many times in a row), or NULL while it works. */
MPE_API const char *mpe_pool_error(const mpe_pool *p);
/* No more submits; the tasks queued still run. */
MPE_API void mpe_pool_close(mpe_pool *p);
/* After close: waits until every task has finished, then stops the workers
 * (results stay to be collected): 0, MPE_ETIMEDOUT, MPE_EINTR, MPE_EBROKEN;
 * -EINVAL before close or terminate. After terminate: 0. */
MPE_API int mpe_pool_join(mpe_pool *p, double timeout);
/* Kills the workers at once; results already back stay, every other task
 * submitted gets MPE_ETERMINATED. No worker is left. */
MPE_API void mpe_pool_terminate(mpe_pool *p);
/* Stops the workers (waits for the tasks they run; kill: at once) and frees
 * the pool, results not collected included. */
MPE_API void mpe_pool_free(mpe_pool *p, int kill);

/* The pool across hosts, through a Redis broker (the broker library,
 * libmpengine_broker, built when hiredis is there; URL as
 * redis://[[user]:password@]host[:port][/db] or unix:///path?password=..).
 * A broker pool has the same submit/collect/map calls; processes > 0 caps
 * how many of its tasks run at once (one a lane), 0: 16 lanes of batches
 * (no cap beyond the hosts' workers); its tasks run on the
 * worker hosts' fn. A task whose remote worker died gets MPE_EDIED with its
 * pid and a text naming the host; one lost `attempts` times with its hosts
 * gets MPE_EDIED, pid 0 and "Pool: task lost N times (last on host NAME)". */
typedef struct mpe_broker_options {
  double lease; /* seconds a host may be silent before its batches are taken over (0: 10) */
  int attempts; /* times a batch may be lost before it fails (0: 3) */
  double broker_timeout; /* seconds the broker may stay away before a call fails (0: 30); one
                            that comes back without the run (restarted) gets it again */
} mpe_broker_options;
/* url as messages show it ("redis://host:port", "unix:///path": never the
 * password) into buf: 0, or -EINVAL with why in buf (-ENOSYS: no broker). */
MPE_API int mpe_broker_url_display(const char *url, char *buf, size_t n);
/* Opens a run on the broker at url (opts: chunksize, processes; bo may be NULL). */
MPE_API int mpe_pool_start_broker(mpe_pool **out, const char *url, const mpe_pool_options *opts,
                                  const mpe_broker_options *bo);
/* Stores bytes under field in the run's context on the broker (kept and
 * expired with the run), which worker processes serving the run read with
 * mpe_broker_context: 0, or < 0 (-EINVAL: not a broker pool). */
MPE_API int mpe_pool_broker_put(mpe_pool *p, const char *field, const void *data, size_t len);
/* In a worker process of a broker host: appends field of the context of the
 * run it serves to out: 1, 0 when the run has no such field, < 0 (-ENOENT:
 * not serving a broker run). */
MPE_API int mpe_broker_context(const char *field, mpe_buf *out);
/* In a worker process of a broker host: the host's name, else NULL. */
MPE_API const char *mpe_broker_host(void);
/* Serves every run on the broker with a local pool of procs workers running
 * fn (opts as mpe_pool_start's; name: the host's, NULL: the host name):
 * claims batches, renews their leases every lease/3, completes them (fenced);
 * reconnects with backoff when the broker is lost; once the host's interrupt
 * flag is set, hands back what it holds and returns 0 (< 0: cannot start). */
/* What `mpengine status` shows: the worker hosts alive (seen: seconds since
 * one last said so) and the runs in progress with their tasks' counts. */
typedef struct mpe_broker_host_info {
  char name[128];
  int pid, procs, busy; /* busy: batches it holds */
  uint64_t done, failed;
  double seen;
} mpe_broker_host_info;
typedef struct mpe_broker_run_info {
  char run[128], script[256];
  long long queued, running, done, failed;
} mpe_broker_run_info;
/* Up to *nh hosts and *nr runs (set to how many there are): 0, or < 0 with
 * why in err (never the password). */
MPE_API int mpe_broker_status(const char *url, mpe_broker_host_info *h, int *nh, mpe_broker_run_info *r, int *nr,
                              char *err, size_t errlen);
/* A line for people at each start, stop, loss of the broker and reconnect
 * of mpe_broker_worker_run (none per task); fn NULL: none (the default). */
MPE_API void mpe_broker_on_event(void (*fn)(void *arg, const char *line), void *arg);
MPE_API int mpe_broker_worker_run(const char *url, int procs, const char *name, mpe_pool_fn fn, void *ctx,
                                  const mpe_pool_options *opts);

/* The first pool API, kept: a task reads in[len] and may set *out /
 * *out_len to a malloc'ed buffer (the engine frees it); 0 or an error code. */
typedef int (*mpe_task_fn)(const void *in, size_t len, void **out, size_t *out_len, void *ctx);
/* mpe_pool_start with that task shape and workers processes (0: one per CPU). */
MPE_API int mpe_pool_new(mpe_pool **out, int workers, mpe_task_fn fn, void *ctx);

#ifdef __cplusplus
}
#endif
#endif /* MPENGINE_H */
