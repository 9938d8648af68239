/* wait.c - waiting on many engine objects at once (mpe_wait_any).
 *
 * Readiness is the engine's own: a pipe end is readable (a message, part of
 * one, or EOF), a queue holds a message or is closed, an event is set, a
 * child has ended. Descriptors tell about pipes (the socket) and processes
 * (the pidfd); queues and events tell through their futex sequence words.
 *
 * One sleep covers them all. Each round reads every sequence word, then
 * looks at every item, then sleeps expecting the values read: a change in
 * between makes the sleep return at once, so no wake-up is lost. The sleep
 * is poll() when there are only descriptors, futex_waitv() (Linux 5.16) when
 * there are only words, and for a mix poll() on the descriptors plus an
 * eventfd that a private helper thread writes once its futex_waitv() on the
 * words returns. The helper blocks every signal, touches nothing but the
 * words and the eventfd, and is woken (through a word of its own) and
 * joined before the round ends, so the caller stays the one thread that
 * uses the engine. Queues and events only wake sleepers they know of: the
 * wait counts itself among the object's waiters (and a queue's watchers,
 * which make a put wake every sleeper, not one, so that a wait never takes
 * a getter's wake-up).
 *
 * Like every interruptible wait (futex.c) a round sleeps at most SLICE
 * seconds and looks at the host's stop flag between rounds. Without
 * futex_waitv (older kernels) or without pidfds, the rounds are SHORT
 * seconds long instead: a wait that is slower to notice, never a spin. */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "futex.h"

#define SLICE     0.1
#define SHORT     0.01
#define WAITV_MAX 128 /* the kernel's FUTEX_WAITV_MAX */
#define WAITV_U32 2   /* FUTEX_32 */

/* The kernel's struct futex_waitv (declared here: older headers lack it). */
typedef struct waitv {
  uint64_t val, uaddr;
  uint32_t flags, reserved;
} waitv;

static long futex_waitv(waitv *w, size_t n, const struct timespec *at) {
#ifdef SYS_futex_waitv
  return syscall(SYS_futex_waitv, w, (unsigned)n, 0, at, CLOCK_MONOTONIC);
#else
  (void)w, (void)n, (void)at;
  errno = ENOSYS;
  return -1;
#endif
}

/* 1 if the kernel has futex_waitv (asked once: an empty vector is EINVAL). */
static int have_waitv(void) {
  static int known = -1;
  if (known < 0) known = futex_waitv(NULL, 0, NULL) < 0 && errno != ENOSYS;
  return known;
}

typedef struct plan {
  mpe_wait_item *items;
  size_t n;
  struct pollfd *pf; /* one per pipe or process item, then the eventfd */
  size_t nfd;
  waitv *w; /* one per queue or event item, then the helper's quit word */
  size_t nw;
  int *slot;  /* per item: its index in pf or w */
  int coarse; /* a process without a pidfd: short rounds */
} plan;

/* Every item's readiness now: the number ready, or < 0. */
static int look(plan *p) {
  if (p->nfd && poll(p->pf, p->nfd, 0) < 0 && errno != EINTR) return -errno;
  int k = 0;
  for (size_t i = 0; i < p->n; i++) {
    mpe_wait_item *it = &p->items[i];
    int r = 0;
    switch (it->kind) {
    case MPE_WAIT_PIPE: r = p->pf[p->slot[i]].revents != 0; break;
    case MPE_WAIT_QUEUE: r = mpe__queue_readable(it->obj); break;
    case MPE_WAIT_EVENT: r = mpe_event_is_set(it->obj); break;
    case MPE_WAIT_PROCESS:
      r = mpe_process_exitcode(it->obj, NULL);
      if (r < 0) return r;
      break;
    }
    it->ready = r != 0;
    k += it->ready;
  }
  return k;
}

typedef struct helper {
  waitv *w;
  size_t nw;
  int efd;
} helper;

static void *helper_main(void *arg) {
  helper *h = arg;
  futex_waitv(h->w, h->nw, NULL); /* ends on a word's change, or quit */
  uint64_t one = 1;
  ssize_t wr = write(h->efd, &one, sizeof one);
  (void)wr;
  return NULL;
}

static int poll_ms(struct pollfd *pf, size_t n, int ms) {
  int r = poll(pf, n, ms);
  if (r >= 0) return 0;
  return errno == EINTR ? MPE_EINTR : -errno;
}

/* One sleep of at most until: 0 (look again), MPE_EINTR, or < 0. */
static int sleep_once(plan *p, const mpe__deadline *until, int efd) {
  int ms = mpe__deadline_ms(until);
  if (p->nw == 0 || (!have_waitv() && p->nfd)) return poll_ms(p->pf, p->nfd, ms);
  if (!have_waitv()) { /* words only, no futex_waitv: the first, in short rounds */
    int rc = mpe__futex_wait((_Atomic uint32_t *)(uintptr_t)p->w[0].uaddr, (uint32_t)p->w[0].val, until);
    return rc == MPE_ETIMEDOUT ? 0 : rc;
  }
  if (p->nfd == 0) {
    long r = futex_waitv(p->w, p->nw, until->forever ? NULL : &until->at);
    if (r >= 0 || errno == EAGAIN || errno == ETIMEDOUT) return 0;
    return errno == EINTR ? MPE_EINTR : -errno;
  }
  /* a mix: the helper sleeps on the words, this thread in poll() */
  _Atomic uint32_t quit = 0;
  p->w[p->nw] = (waitv){.val = 0, .uaddr = (uintptr_t)&quit, .flags = WAITV_U32};
  helper h = {p->w, p->nw + 1, efd};
  p->pf[p->nfd] = (struct pollfd){.fd = efd, .events = POLLIN};
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  pthread_t t;
  int cr = pthread_create(&t, NULL, helper_main, &h);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (cr != 0) { /* no thread: short rounds over the descriptors */
    mpe__deadline s;
    mpe__slice_end(until, SHORT, &s);
    return poll_ms(p->pf, p->nfd, mpe__deadline_ms(&s));
  }
  int rc = poll_ms(p->pf, p->nfd + 1, ms);
  atomic_store(&quit, 1);
  mpe__futex_wake(&quit, 1);
  pthread_join(t, NULL);
  uint64_t v;
  ssize_t rd = read(efd, &v, sizeof v); /* empties it for the next round */
  (void)rd;
  return rc;
}

/* Checks an item and counts its descriptor or word: 0, or < 0. */
static int classify(const mpe_wait_item *it, size_t *nfd, size_t *nw) {
  if (!it->obj) return -EINVAL;
  switch (it->kind) {
  case MPE_WAIT_PIPE:
    if (mpe_pipe_fileno(it->obj) < 0 || !mpe_pipe_can_recv(it->obj)) return -EBADF;
    ++*nfd;
    return 0;
  case MPE_WAIT_PROCESS: {
    int r = mpe_process_exitcode(it->obj, NULL);
    if (r < 0) return r;
    ++*nfd;
    return 0;
  }
  case MPE_WAIT_QUEUE:
  case MPE_WAIT_EVENT: ++*nw; return 0;
  default: return -EINVAL;
  }
}

/* Counts (delta +1) or uncounts (-1) the wait among each object's waiters. */
static void watch(plan *p, int delta) {
  for (size_t i = 0; i < p->n; i++) {
    mpe_wait_item *it = &p->items[i];
    _Atomic uint32_t *seq = NULL;
    if (it->kind == MPE_WAIT_QUEUE)
      seq = mpe__queue_watch(it->obj, delta);
    else if (it->kind == MPE_WAIT_EVENT)
      seq = mpe__event_watch(it->obj, delta);
    if (seq) p->w[p->slot[i]] = (waitv){.uaddr = (uintptr_t)seq, .flags = WAITV_U32};
  }
}

static int run(plan *p, double timeout, int efd) {
  mpe__deadline d = mpe__deadline_in(timeout);
  for (;;) {
    for (size_t j = 0; j < p->nw; j++) /* the words first, then the state */
      p->w[j].val = atomic_load((_Atomic uint32_t *)(uintptr_t)p->w[j].uaddr);
    int k = look(p);
    if (k != 0) return k;
    if (mpe__deadline_ms(&d) == 0) return 0;
    if (mpe__stop_requested()) return MPE_EINTR;
    mpe__deadline until;
    int coarse = p->coarse || (p->nw && !have_waitv());
    mpe__slice_end(&d, coarse ? SHORT : SLICE, &until);
    int rc = sleep_once(p, &until, efd);
    if (rc < 0) return rc;
  }
}

int mpe_wait_any(mpe_wait_item *items, size_t n, double timeout) {
  size_t nfd = 0, nw = 0;
  for (size_t i = 0; i < n; i++) {
    items[i].ready = 0;
    int rc = classify(&items[i], &nfd, &nw);
    if (rc < 0) return rc;
  }
  if (nw > WAITV_MAX - 1) return -E2BIG;
  plan p = {.items = items, .n = n};
  p.pf = calloc(nfd + 1, sizeof *p.pf);
  p.w = calloc(nw + 1, sizeof *p.w);
  p.slot = calloc(n + 1, sizeof *p.slot);
  int efd = nfd && nw && have_waitv() ? eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK) : -2;
  int rc = -ENOMEM;
  if (p.pf && p.w && p.slot && efd != -1) {
    for (size_t i = 0; i < n; i++) {
      mpe_wait_item *it = &items[i];
      if (it->kind == MPE_WAIT_QUEUE || it->kind == MPE_WAIT_EVENT) {
        p.slot[i] = (int)p.nw++;
        continue;
      }
      int fd = it->kind == MPE_WAIT_PIPE ? mpe_pipe_fileno(it->obj) : mpe__process_pidfd(it->obj);
      if (fd < 0) p.coarse = 1; /* a process without a pidfd */
      p.slot[i] = (int)p.nfd;
      p.pf[p.nfd++] = (struct pollfd){.fd = fd, .events = POLLIN};
    }
    watch(&p, 1);
    rc = run(&p, timeout, efd);
    watch(&p, -1);
  } else if (efd == -1) {
    rc = -errno;
  }
  if (efd >= 0) close(efd);
  free(p.pf);
  free(p.w);
  free(p.slot);
  return rc;
}
