/* process.c - forking children, waiting with a timeout, exit statuses.
 *
 * Each child is a plain fork() that runs a callback and leaves with _exit().
 * The parent keeps a pidfd per child so that a wait with a timeout is one
 * poll() (no SIGCHLD handler, no busy loop), and a process-local list of its
 * children so they can be signalled and reaped together.
 *
 * Invariants: a handle is in the list while its child is ours and unreaped,
 * and may stay there once reaped until the next spawn or reap pass takes it
 * out (the list's head is a page the parent would otherwise write again
 * after each fork);
 * `exited` is set exactly once, when the child is reaped; a child forgets the
 * list it inherited (those processes are its siblings, not its children).
 * A handle belongs to the process that made it (`owner`): in any other, a
 * child that inherited it, it is foreign, and neither waits nor closes.
 *
 * Lifetimes, as Python's: spawn first reaps the children that have ended, so
 * a program that starts children forever holds a descriptor only for those
 * still running; and a child whose function returns joins its own children
 * (SIGTERM to daemon ones) before it leaves, since leaving would kill them
 * (PR_SET_PDEATHSIG). No pid <= 0 is ever signalled: kill() would take it
 * for a process group or for every process we may signal.
 *
 * Start cost: after fork every page either side writes is a copy-on-write
 * fault (a page copied while the other side lives; tens of microseconds on a
 * virtual machine, and slower still while the child faults at the same
 * time), and every code page the child runs is mapped afresh. So the parent
 * writes what it can before fork (the handle, the list, the child's ledger)
 * and after it only the pid and pidfd, into a page no child inherits
 * (MADV_WIPEONFORK: fork leaves it writable; see struct fresh); the child marks none
 * of the handles it inherited (they are foreign by owner), and it asks the
 * kernel directly (syscall) rather than through a libc function per call,
 * each on its own code page. The parent does not yield after fork: a child
 * queued on its CPU would then run a whole time slice (milliseconds, for a
 * busy target) before start() returns. */
#define _GNU_SOURCE
#include "internal.h"
#include "rawsys.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <pthread.h>
#include <string.h>
#include <unistd.h>

static void register_atfork(void);

/* What the parent learns after fork, pid and pidfd, it writes into a page
 * of these records that children do not inherit, so the write copies no
 * page. A handle points to its record while its child is unreaped, in the
 * process that made it; its own pid and pidfd fields get the values before
 * any later fork (the atfork prepare handler), so that a child sees its
 * siblings' pids, and when the child is reaped, when the record is given
 * back. With no record (the page is full, or could not be made) a handle
 * keeps them in its own fields, as before. A child gets the page zeroed
 * (MADV_WIPEONFORK), not unmapped: the child of a fork that runs no atfork
 * handler (glibc's _Fork) still takes itself for the owner, and finds no
 * mark there, so it reads the handles, not the records. */
typedef struct fresh {
  pid_t pid; /* in a free record: the index of the next free one */
  int pidfd; /* in the first: FRESH_MARK */
} fresh;

enum { NFRESH = 4096 / sizeof(fresh), FRESH_MARK = 0x6672 };

struct mpe_process {
  pid_t pid;      /* see fresh: valid in a child, and in the owner once f is NULL */
  int pidfd;      /* -1 when reaped or pidfds are unavailable; a foreign one's is not ours */
  fresh *f;       /* in the owner, while unreaped: the record pid and pidfd live in */
  int exited;     /* reaped; code is valid */
  pid_t owner;    /* the process that made it; in any other it is foreign */
  int code;       /* exit code, or -signal */
  int daemon;
  int detached;   /* owned by the engine: freed once reaped */
  uint64_t ledger; /* the child's references (ledger.c), settled when reaped */
  mpe_process *prev, *next;
};

static mpe_process *children;
static mpe_process *inherited; /* in a child: the list it had from its parent */
static int in_child;
static pid_t self_pid;
static fresh *fresh_page; /* NFRESH records; [0].pid: the first free one (0: none) */
static pthread_t spawner;  /* the thread that last spawned: the one that uses the engine */
static int have_spawner;

/* In the child of any fork: the records' page is the parent's, and zeroed. */
/* In the child of any fork (the engine's or the program's own): the
 * parent's children are siblings here, not to be signalled, joined or
 * reaped. */
MPE_CHILD_PATH static void forget_pid(void) {
  self_pid = 0;
  fresh_page = NULL;
  inherited = children;
  children = NULL;
}

pid_t mpe__self_pid(void) {
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  if (!self_pid) {
    pthread_once(&once, register_atfork);
    self_pid = getpid();
  }
  return self_pid;
}

unsigned long long mpe__start_time(pid_t pid) {
  char path[64], buf[1024];
  snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
  FILE *f = fopen(path, "re");
  if (!f) return 0;
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = 0;
  char *p = strrchr(buf, ')'); /* the name may hold spaces and parentheses */
  if (!p || p[1] != ' ') return 0;
  char state = p[2];
  if (state == 'Z' || state == 'X') return 0;
  /* fields after the name: state is field 3, starttime field 22 */
  p += 2;
  for (int field = 3; field < 22 && p; field++) {
    p = strchr(p, ' ');
    if (p) p++;
  }
  return p ? strtoull(p, NULL, 10) : 0;
}

int mpe_in_child(void) { return in_child; }
pid_t mpe_self_pid(void) { return mpe__self_pid(); }
/* The page of records, if this process has it (see struct fresh). */
static int have_page(void) { return fresh_page && fresh_page[0].pidfd == FRESH_MARK; }

/* The process that made a handle reads its record; any other, the copy. */
static fresh *rec_of(const mpe_process *p) {
  return p->f && p->owner == mpe__self_pid() && have_page() &&
                 (uintptr_t)p->f - (uintptr_t)fresh_page < sizeof(fresh[NFRESH])
             ? p->f
             : NULL;
}
static pid_t pid_of(const mpe_process *p) {
  const fresh *f = rec_of(p);
  return f ? f->pid : p->pid;
}
static int pidfd_of(const mpe_process *p) {
  const fresh *f = rec_of(p);
  return f ? f->pidfd : p->pidfd;
}

pid_t mpe_process_pid(const mpe_process *p) { return pid_of(p); }

/* A record for a new child (pid 0, pidfd -1), or NULL. */
static fresh *take_fresh(void) {
  if (!have_page()) {
    void *pg = mmap(NULL, NFRESH * sizeof(fresh), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (pg == MAP_FAILED) return NULL;
    if (madvise(pg, NFRESH * sizeof(fresh), MADV_WIPEONFORK) != 0) {
      munmap(pg, NFRESH * sizeof(fresh));
      return NULL;
    }
    fresh_page = pg;
    for (int i = 0; i < (int)NFRESH; i++) fresh_page[i].pid = i + 1 < (int)NFRESH ? i + 1 : 0;
    fresh_page[0].pidfd = FRESH_MARK;
  }
  int i = fresh_page[0].pid;
  if (i == 0) return NULL;
  fresh_page[0].pid = fresh_page[i].pid;
  fresh_page[i].pid = 0;
  fresh_page[i].pidfd = -1;
  return &fresh_page[i];
}

/* Copies p's record into its own fields; and gives the record back if
 * release. Only in the process that made p. */
static void settle(mpe_process *p, int release) {
  fresh *f = rec_of(p);
  if (!f) return;
  if (p->pid != f->pid) p->pid = f->pid;
  if (p->pidfd != f->pidfd) p->pidfd = f->pidfd;
  if (!release) return;
  f->pid = fresh_page[0].pid;
  fresh_page[0].pid = (int)(f - fresh_page);
  p->f = NULL;
}

/* Before any fork (pthread_atfork): a child sees its siblings' pids. */
static void settle_all(void) {
  /* Only in the thread that uses the engine: a fork in another thread
   * (which the engine does not own) must not walk the list while that
   * thread changes it. Its children see pid 0 for siblings started since. */
  if (!have_spawner || !pthread_equal(pthread_self(), spawner)) return;
  for (mpe_process *p = children; p; p = p->next) settle(p, 0);
}

/* Inherited across fork: the sibling of this process, not its child. This
 * holds in a child of any fork() (the atfork handler forgets our pid), also
 * one a C host makes itself, which the old marking in the child missed. A
 * pid is reused only once its process is gone; an owner's children die
 * with it (PR_SET_PDEATHSIG), and so do their descendants. */
static int foreign(const mpe_process *p) { return p->owner != mpe__self_pid(); }

int mpe__process_pidfd(const mpe_process *p) { return foreign(p) ? -1 : pidfd_of(p); }

static void link_child(mpe_process *p) {
  p->next = children;
  if (children) children->prev = p;
  children = p;
}

static void unlink_child(mpe_process *p) {
  if (p->prev) p->prev->next = p->next;
  else if (children == p) children = p->next;
  if (p->next) p->next->prev = p->prev;
  p->prev = p->next = NULL;
}

static void record_status(mpe_process *p, int status) {
  settle(p, 1);
  p->code = WIFSIGNALED(status) ? -WTERMSIG(status) : WEXITSTATUS(status);
  p->exited = 1;
  mpe__ledger_settle(p->ledger); /* what the child did not give back */
  p->ledger = 0;
  if (p->pidfd >= 0) close(p->pidfd);
  p->pidfd = -1;
}

/* Non-blocking reap: 1 if the child has exited, 0 if it runs, < 0 error. */
static int try_reap(mpe_process *p) {
  if (p->exited) return 1;
  if (foreign(p)) return -ECHILD;
  pid_t pid = pid_of(p);
  if (pid <= 0) return 0; /* being forked: waitpid(0) would reap any child */
  int status;
  pid_t r = waitpid(pid, &status, WNOHANG);
  if (r == pid) {
    record_status(p, status);
    return 1;
  }
  if (r < 0 && errno == ECHILD) { /* reaped behind our back (SIGCHLD ignored) */
    record_status(p, 0);
    return 1;
  }
  return 0;
}

/* An ended child out of the list; a detached one, which no one else
 * holds, freed. */
static void ended(mpe_process *p) {
  unlink_child(p);
  if (p->detached) free(p);
}

/* Reaps p if it has ended and takes it out of the list then: 1 ended (p
 * may have been freed), 0 running, < 0 error. */
static int reap_unlink(mpe_process *p) {
  int r = try_reap(p);
  if (r > 0) ended(p);
  return r;
}

/* mpe_process_wait, and out of the list once ended (p may have been freed). */
static int wait_unlink(mpe_process *p, double timeout) {
  int r = mpe_process_wait(p, timeout);
  if (r == 0) ended(p);
  return r;
}

MPE_CHILD_PATH void mpe__processes_after_fork(const mpe_spawn_options *opts) {
  /* The inherited children are our siblings: their handles are foreign (by
   * owner) and written to by no one here, so they cost this child no page.
   * Their pidfds are closed with every other descriptor, or here when the
   * child keeps the others. Their ledgers are our parent's to settle. */
  if (opts && opts->inherit_fds)
    for (const mpe_process *p = inherited; p; p = p->next)
      if (p->pidfd >= 0) close(p->pidfd);
  children = NULL;
}

/* In a child: closes every descriptor but stdio, the pipe ends it kept and
 * opts->keep_fds: files, sockets and pipes the parent had open are not the
 * child's (an inherited writing end would also keep a reader from EOF). */
MPE_CHILD_PATH static void close_other_fds(const mpe_spawn_options *opts) {
  enum { MAX = 256 };
  int keep[MAX + 2];
  size_t n = mpe__pipes_fds(keep, MAX);
  for (size_t i = 0; opts && i < opts->nkeep_fds && n < MAX; i++) keep[n++] = opts->keep_fds[i];
  for (size_t i = 1; i < n; i++) { /* a few, in order: no qsort's code page to fault in */
    int v = keep[i];
    size_t j = i;
    for (; j > 0 && keep[j - 1] > v; j--) keep[j] = keep[j - 1];
    keep[j] = v;
  }
  keep[n++] = INT32_MAX; /* a sentinel past every descriptor */
  int from = 3;
  for (size_t i = 0; i < n; i++) {
    if (keep[i] < from) continue;
    if (keep[i] > from) {
      unsigned int to = keep[i] == INT32_MAX ? ~0u : (unsigned int)keep[i] - 1;
      if (mpe__sys(SYS_close_range, from, (long)to, 0, 0) != 0) {
        /* old kernel: close one by one, up to the descriptor limit */
        long max = sysconf(_SC_OPEN_MAX);
        for (long fd = from; fd <= (long)to && fd < max; fd++) close((int)fd);
      }
    }
    from = keep[i] == INT32_MAX ? keep[i] : keep[i] + 1;
  }
}

/* Sets bit sig-1 of caught[] for each signal with a handler, from the
 * SigCgt line of /proc/self/status (one read, where asking each signal is
 * 62 system calls). Returns 0, or -1 if the line cannot be read. */
static int caught_signals(unsigned char caught[(NSIG + 7) / 8]) {
  /* A small window slid over the file: a 4 KiB buffer would reach a page of
   * stack that nothing else here writes, and so copy it after every fork. */
  char buf[512];
  int fd = open("/proc/self/status", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  size_t len = 0;
  char *line = NULL;
  for (;;) {
    ssize_t n = read(fd, buf + len, sizeof buf - 1 - len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    len += (size_t)n;
    buf[len] = 0;
    if ((line = strstr(buf, "\nSigCgt:")) && strchr(line + 1, '\n')) break;
    line = NULL;
    char *last = strrchr(buf, '\n'); /* keep the unfinished line, from its newline */
    if (!last || last == buf) { /* a line longer than the window: not the one */
      len = 0;
      continue;
    }
    len = (size_t)(buf + len - last);
    memmove(buf, last, len);
  }
  close(fd);
  if (!line) return -1;
  char *d = line + 8, *end;
  while (*d == ' ' || *d == '\t') d++;
  for (end = d; isxdigit((unsigned char)*end); end++) {
  }
  if (end == d) return -1;
  memset(caught, 0, (NSIG + 7) / 8);
  /* the last hex digit holds signals 1-4, the one before it 5-8, ... */
  for (int bit = 0; end > d; bit += 4) {
    int c = *--end, v = c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10;
    for (int i = 0; i < 4; i++)
      if ((v >> i & 1) && bit + i + 1 < NSIG) caught[(bit + i) / 8] |= (unsigned char)(1u << ((bit + i) % 8));
  }
  return 0;
}

/* The signals with a handler, read in the parent before fork (a read there
 * costs no page of the child's; in the child, the open, the read and the
 * parsing each touch code pages the child must fault in). known = 0: the
 * line could not be read, so the child asks each signal itself. */
typedef struct caught_set {
  int known;
  unsigned char bits[(NSIG + 7) / 8];
} caught_set;

/* 1 if a stdio stream may hold output not yet written. glibc lists its
 * streams in _IO_list_all (exported, the fields public in <stdio.h>):
 * reading them costs a child nothing, where fflush(NULL) locks every stream
 * and so copies libc's pages. Wide streams, and other libcs: 1. */
MPE_CHILD_PATH static int stdio_pending(void) {
#ifdef __GLIBC__
  extern FILE *_IO_list_all;
  for (const FILE *f = _IO_list_all; f; f = f->_chain)
    if (f->_mode > 0 || f->_IO_write_ptr > f->_IO_write_base) return 1;
  return 0;
#else
  return 1;
#endif
}

/* The system calls of a child's set-up are made in place (rawsys.h): each
 * libc wrapper sits on its own code page, which a new child must fault in. */
MPE_CHILD_PATH static long sys_sigmask(const sigset_t *set) {
  return mpe__sys(SYS_rt_sigprocmask, SIG_SETMASK, (long)set, 0, _NSIG / 8);
}

/* In a child, signals blocked: every signal the parent catches goes back to
 * its default action; ignored ones stay ignored, as across exec. */
MPE_CHILD_PATH static void default_handlers(const caught_set *c) {
  struct { /* the kernel's struct sigaction */
    void (*handler)(int);
    unsigned long flags;
    void (*restorer)(void);
    unsigned char mask[_NSIG / 8];
  } dfl;
  memset(&dfl, 0, sizeof dfl);
  dfl.handler = SIG_DFL;
  for (int sig = 1; sig < NSIG; sig++) {
    if (sig == SIGKILL || sig == SIGSTOP) continue;
    if (c->known) {
      if (c->bits[(sig - 1) / 8] >> ((sig - 1) % 8) & 1)
        mpe__sys(SYS_rt_sigaction, sig, (long)&dfl, 0, sizeof dfl.mask);
      continue;
    }
    struct sigaction sa; /* no /proc: ask each signal */
    if (sigaction(sig, NULL, &sa) == 0 && sa.sa_handler != SIG_DFL && sa.sa_handler != SIG_IGN)
      mpe__sys(SYS_rt_sigaction, sig, (long)&dfl, 0, sizeof dfl.mask);
  }
}

MPE_CHILD_PATH int mpe_process_spawn(mpe_process **out, mpe_entry_fn fn, void *arg,
                      const mpe_spawn_options *opts) {
  mpe_process_reap(); /* ended children give their pidfds back */
  mpe_process *p = calloc(1, sizeof *p);
  if (!p) return -ENOMEM;
  pid_t parent = mpe__self_pid();
  spawner = pthread_self();
  have_spawner = 1;
  p->pidfd = -1;
  p->f = take_fresh();
  p->owner = parent;
  p->daemon = opts ? opts->daemon : 0;
  p->ledger = mpe__ledger_take_pending();
  void *ledger = mpe_deref(p->ledger); /* read here: the arena's pages are the child's to fault in */
  link_child(p);
  *out = p; /* pid 0 until fork returns: nothing signals or waits on it */
  /* Flush stdio first: buffered output would otherwise be written twice. */
  if (stdio_pending()) fflush(NULL);
  /* Block signals across fork so no handler of the parent runs in the child
   * before the child has set itself up; each side restores the old mask. */
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  caught_set caught; /* a handler set by another thread from here to fork stays in the child */
  caught.known = caught_signals(caught.bits) == 0;
  pid_t pid = fork();
  if (pid < 0) {
    int e = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    unlink_child(p);
    mpe__ledger_drop(p->ledger);
    settle(p, 1);
    free(p);
    *out = NULL;
    return -e;
  }
  if (pid == 0) {
    /* Die with the parent; and if it already died before prctl, go now. */
    mpe__sys(SYS_prctl, PR_SET_PDEATHSIG, SIGKILL, 0, 0);
    if ((pid_t)mpe__sys(SYS_getppid, 0, 0, 0, 0) != parent) _exit(128 + SIGKILL);
    in_child = 1;
    mpe__ledger_adopt(ledger);
    /* The parent's handlers belong to the parent's state: a signal caught by
     * one of them here (a SIGTERM sent right after fork) would be swallowed.
     * Start from default dispositions, while signals are still blocked;
     * ignored signals stay ignored, as across exec. */
    default_handlers(&caught);
    mpe__processes_after_fork(opts);
    mpe__pipes_after_fork(opts);
    if (!opts || !opts->inherit_fds) close_other_fds(opts);
    sys_sigmask(&old);
    int code = fn(arg);
    if (children) mpe_process_join_all(-1); /* our own children end before we do */
    if (stdio_pending()) fflush(NULL);
    /* _exit: the parent's atexit handlers and stdio buffers are not ours. */
    _exit(code & 255);
  }
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  int fd = (int)syscall(SYS_pidfd_open, pid, 0); /* close-on-exec by design */
  if (fd < 0) fd = -1;                              /* old kernel: poll waitpid */
  if (rec_of(p)) { /* see struct fresh */
    p->f->pid = pid;
    p->f->pidfd = fd;
  } else {
    p->pid = pid;
    p->pidfd = fd;
  }
  return 0;
}

int mpe_process_wait(mpe_process *p, double timeout) {
  mpe__deadline d = mpe__deadline_in(timeout);
  for (;;) {
    /* With a pidfd, poll first: it is readable once the child has ended, so
     * a join costs poll + waitpid, not a waitpid that finds it running too. */
    int fd = foreign(p) ? -1 : pidfd_of(p);
    if (fd >= 0 && !p->exited) {
      struct pollfd pf = {.fd = fd, .events = POLLIN};
      int n = poll(&pf, 1, mpe__deadline_ms(&d));
      if (n < 0 && errno == EINTR) return MPE_EINTR;
      if (n < 0) return -errno;
      if (n == 0) {
        if (mpe__deadline_ms(&d) == 0) return MPE_ETIMEDOUT;
        continue; /* a wait longer than poll's limit */
      }
    }
    int r = try_reap(p);
    if (r != 0) return r > 0 ? 0 : r;
    int ms = mpe__deadline_ms(&d);
    if (ms == 0) return MPE_ETIMEDOUT;
    if (fd < 0) {
      double left;
      if (mpe_sleep(ms < 0 || ms > 2 ? 0.002 : ms * 1e-3, &left) == MPE_EINTR) return MPE_EINTR;
    }
  }
}

int mpe_process_exitcode(mpe_process *p, int *code) {
  int r = try_reap(p);
  if (r < 0) return r;
  if (r > 0 && code) *code = p->code;
  return r;
}

int mpe_process_signal(mpe_process *p, int sig) {
  int r = try_reap(p);
  if (r != 0) return r > 0 ? 0 : r;
  pid_t pid = pid_of(p);
  if (pid <= 0) return -ESRCH;
  if (kill(pid, sig) < 0) return errno == ESRCH ? 0 : -errno;
  return 0;
}

void mpe_process_free(mpe_process *p) {
  if (!p) return;
  if (foreign(p)) { /* its pidfd and list are our parent's */
    free(p);
    return;
  }
  if (!p->exited && pid_of(p) > 0) {
    kill(pid_of(p), SIGKILL);
    while (mpe_process_wait(p, -1) == MPE_EINTR) {
    }
  }
  settle(p, 1);
  if (p->pidfd >= 0) close(p->pidfd);
  unlink_child(p);
  free(p);
}

int mpe_process_signal_all(int sig) {
  int n = 0;
  for (mpe_process *p = children; p; p = p->next)
    if (!p->exited && pid_of(p) > 0 && kill(pid_of(p), sig) == 0) n++;
  return n;
}

int mpe_process_reap(void) {
  int running = 0;
  for (mpe_process *p = children, *n; p; p = n) {
    n = p->next;
    if (reap_unlink(p) == 0) running++;
  }
  return running;
}

void mpe_process_detach(mpe_process *p) {
  if (!p) return;
  if (p->exited || foreign(p)) {
    mpe_process_free(p);
    return;
  }
  p->detached = 1;
}

int mpe_process_join_all(double timeout) {
  for (mpe_process *p = children; p; p = p->next)
    if (p->daemon && !p->exited && pid_of(p) > 0) kill(pid_of(p), SIGTERM);
  mpe__deadline d = mpe__deadline_in(timeout);
  while (children) {
    int ms = mpe__deadline_ms(&d);
    if (ms == 0 || wait_unlink(children, ms < 0 ? -1 : ms * 1e-3) != 0) break;
  }
  int killed = 0;
  while (children) {
    mpe_process *p = children;
    if (!p->exited) { /* a reaped one may wait in the list to be taken out */
      if (pid_of(p) > 0) kill(pid_of(p), SIGKILL);
      killed++;
    }
    while (wait_unlink(p, -1) == MPE_EINTR) {
    }
  }
  return killed;
}

static void register_atfork(void) { pthread_atfork(settle_all, NULL, forget_pid); }
