/* pipe.c - framed message pipes over AF_UNIX stream sockets.
 *
 * A pipe is a socketpair, so the kernel gives us what a user expects for
 * free: EOF once every end that could write is closed (in every process,
 * dead ones included), and descriptors can travel inside messages
 * (SCM_RIGHTS), which is how a pipe end is sent through a pipe. One-way pipes
 * are a socketpair with the unused directions shut down. Socket buffers are
 * raised to 1 MiB (capped by net.core.wmem_max): on a 2-core machine that
 * moves 1 MiB messages several times faster than a pipe(2), and 64 KiB ones
 * faster than 4 MiB buffers did (less of the data in flight falls out of
 * the caches before it is read).
 *
 * Frame: a 16-byte header {magic:16, nends:16, tag:32, len:64} (host order,
 * both ends are on one machine), then one direction byte per passed end, then
 * len bytes, then zeros up to FIRST bytes if it is shorter. The descriptors
 * ride on the header as SCM_RIGHTS, two per end: its socket and its lock
 * page. A frame goes out in one sendmsg(); a receiver reads FIRST bytes
 * first (never more than one frame, thanks to the padding), so a small
 * message comes in with one recvmsg(), header and payload together.
 *
 * Many processes may hold one end (fork, or an end sent through a pipe), and
 * a stream socket interleaves what two writers send. So every pipe has a lock
 * page: one page of a memfd that travels with its ends, so that it lives
 * exactly as long as some process holds an end (the kernel counts). It holds,
 * per end, a robust mutex for its senders and one for its receivers (a frame
 * goes out or comes in whole under it), a flag set while a frame is part
 * written or part read, and why the stream out of that end broke, if it did.
 *
 * Invariants:
 * - A sender holds its end's send lock from the frame's first byte to its
 *   last; a receiver its end's receive lock from the header's first byte to
 *   the payload's last. A call that returns in the middle of a frame
 *   (timeout, signal) keeps the lock and the frame's state in this process;
 *   its next call on that end finishes the frame.
 * - A stream that lost its framing (a sender or receiver died, or gave up,
 *   in the middle of a frame) is broken for good: the reason is stored first,
 *   then the direction is shut down in the kernel, which wakes every waiter
 *   of both sides. Later receives and sends of that direction return
 *   MPE_ECLOSED, and mpe_pipe_broken() says why.
 * - Receivers wait in poll() (after a spin by the shared policy, spin.c, on
 *   the lock page's count of frames sent), never in a blocking read, and say
 *   "receiving" before a read can consume a byte: one killed while it waits
 *   breaks nothing. A receiver in the middle of a frame wakes every WATCH
 *   seconds to look at the frame's sender; if it is dead (or gone without
 *   finishing), the stream is broken instead of waiting forever.
 * - Every descriptor is opened close-on-exec, and a child keeps only the ends
 *   it was given; it forgets the frames its parent left unfinished. */
#define _GNU_SOURCE
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "mutex.h"
#include "spin.h"

#define FRAME_MAGIC 0x4d50u
#define PAGE_MAGIC  0x4d50504cu
#define PAGE_BYTES  4096
#define MAX_ENDS    64
#define MAX_FDS     (2 * MAX_ENDS)
#define SOCKBUF     (1 << 20)
#define WATCH_MS    20    /* a receiver stuck in a frame looks at its sender this often */
#define FIRST       128   /* a frame's least length on the wire: the receiver's first read */
#define OPEN_BYTES  65536 /* read before signals are blocked: a longer copy could hide one */
#define SPARE_MAX   (4u << 20) /* the largest payload buffer kept for the next message */

enum { CAN_SEND = 1, CAN_RECV = 2 };

/* Why a stream broke (stored in the lock page; 0: it did not). */
enum {
  WHY_NONE,
  WHY_SENDER_DIED,
  WHY_SENDER_STOPPED,
  WHY_SEND_GIVEN_UP,
  WHY_SEND_FAILED,
  WHY_RECEIVER_DIED,
  WHY_RECEIVER_CLOSED,
  WHY_ENDED,
  WHY_MALFORMED,
  WHY_TOO_LONG,
  WHY_NO_MEMORY,
  WHY_COUNT
};

static const char *const why_text[WHY_COUNT] = {
    NULL,
    "a sender died in the middle of a message",
    "a sender stopped in the middle of a message",
    "a send was given up in the middle of a message (interrupted)",
    "a send failed in the middle of a message",
    "a receiver died in the middle of a message",
    "a receiver closed its end in the middle of a message",
    "every writing end closed in the middle of a message",
    "malformed message",
    "a message longer than the receiver's maxlength was refused",
    "no memory for a message",
};

typedef struct frame_hdr {
  uint16_t magic;
  uint16_t nends;
  uint32_t tag;
  uint64_t len;
} frame_hdr;

/* One socket of the pair, as every process holding it sees it. */
typedef struct page_side {
  mpe__mutex send;            /* held while a frame goes out of this end */
  mpe__mutex recv;            /* held while a frame comes in at this end */
  _Atomic uint32_t sending;   /* a frame out of this end is part written */
  _Atomic uint32_t receiving; /* a frame at this end is part read */
  _Atomic uint32_t broken;    /* why the stream out of this end broke */
  _Atomic uint32_t sent;      /* bumped after each frame out of this end (and a break) */
  uint64_t ino; /* the socket's inode: tells a received end which side it is */
} __attribute__((aligned(64))) page_side;

typedef struct lock_page {
  uint32_t magic;
  page_side side[2];
} lock_page;

/* A frame this process has begun to read at one end. */
typedef struct rx_state {
  int active; /* bytes of it are consumed: this process holds the receive lock */
  int bad;    /* descriptors were lost on the way: malformed */
  size_t hgot; /* of first */
  unsigned char first[FIRST];
  frame_hdr h;
  int fds[MAX_FDS];
  size_t nfds;
  unsigned char dirs[MAX_ENDS];
  char *data;
  size_t got; /* of dirs and payload */
} rx_state;

/* A frame this process has begun to write out of one end. */
typedef struct tx_state {
  int active; /* this process holds the send lock */
  const void *buf;
  size_t len, nends, done; /* done: bytes of the whole frame written */
  uint32_t tag;
  frame_hdr h;
  unsigned char dirs[MAX_ENDS];
} tx_state;

/* This process's mapping of one pipe's lock page, shared by its handles. */
typedef struct page_map {
  lock_page *pg;
  int memfd;
  dev_t dev;
  ino_t ino;
  int users[2]; /* open handles of each side */
  mpe__spin spin[2]; /* receivers' spin budget, per side */
  rx_state rx[2];
  tx_state tx[2];
  struct page_map *next;
} page_map;

struct mpe_pipe {
  int fd;
  int dir;  /* CAN_SEND | CAN_RECV */
  int side; /* which socket of the pair */
  page_map *pm;
  mpe_pipe *prev, *next; /* process-local list of open ends */
};

static mpe_pipe *open_pipes;
static page_map *maps;

/* ------------------------------------------------------------ lock pages */

static page_map *map_find(dev_t dev, ino_t ino) {
  for (page_map *m = maps; m; m = m->next)
    if (m->dev == dev && m->ino == ino) return m;
  return NULL;
}

/* Maps memfd's page (taking the descriptor); NULL if it is not one. */
static page_map *map_open(int memfd, const struct stat *st) {
  page_map *m = calloc(1, sizeof *m);
  void *pg = mmap(NULL, PAGE_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
  if (!m || pg == MAP_FAILED) {
    free(m);
    if (pg != MAP_FAILED) munmap(pg, PAGE_BYTES);
    return NULL;
  }
  m->pg = pg;
  m->memfd = memfd;
  m->dev = st->st_dev;
  m->ino = st->st_ino;
  m->next = maps;
  maps = m;
  return m;
}

static void map_unused(page_map *m) {
  if (m->users[0] || m->users[1]) return;
  for (page_map **pp = &maps; *pp; pp = &(*pp)->next)
    if (*pp == m) {
      *pp = m->next;
      break;
    }
  munmap(m->pg, PAGE_BYTES);
  close(m->memfd);
  free(m);
}

/* A new lock page for the sockets sv. */
static page_map *map_new(const int sv[2], int *err) {
  int fd = memfd_create("mpengine-pipe", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  struct stat st, s0, s1;
  if (fd < 0 || ftruncate(fd, PAGE_BYTES) != 0 ||
      fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0 || fstat(fd, &st) != 0 ||
      fstat(sv[0], &s0) != 0 || fstat(sv[1], &s1) != 0) {
    *err = -errno;
    if (fd >= 0) close(fd);
    return NULL;
  }
  page_map *m = map_open(fd, &st);
  if (!m) {
    *err = -ENOMEM;
    close(fd);
    return NULL;
  }
  lock_page *pg = m->pg;
  for (int i = 0; i < 2; i++) {
    mpe__mutex_init(&pg->side[i].send);
    mpe__mutex_init(&pg->side[i].recv);
  }
  pg->side[0].ino = s0.st_ino;
  pg->side[1].ino = s1.st_ino;
  pg->magic = PAGE_MAGIC;
  return m;
}

/* ---------------------------------------------------------------- handles */

static void list_add(mpe_pipe *p) {
  p->prev = NULL;
  p->next = open_pipes;
  if (open_pipes) open_pipes->prev = p;
  open_pipes = p;
}

static void list_del(mpe_pipe *p) {
  if (p->prev)
    p->prev->next = p->next;
  else if (open_pipes == p)
    open_pipes = p->next;
  if (p->next) p->next->prev = p->prev;
  p->prev = p->next = NULL;
}

static mpe_pipe *wrap(int fd, int dir, page_map *pm, int side) {
  mpe_pipe *p = calloc(1, sizeof *p);
  if (!p) return NULL;
  p->fd = fd;
  p->dir = dir;
  p->pm = pm;
  p->side = side;
  pm->users[side]++;
  list_add(p);
  return p;
}

/* A received end (taking both descriptors); NULL if they are not one. */
static mpe_pipe *adopt(int sock, int memfd, int dir) {
  struct stat ss, ms;
  int seals = fcntl(memfd, F_GET_SEALS);
  if (fstat(sock, &ss) != 0 || !S_ISSOCK(ss.st_mode) || fstat(memfd, &ms) != 0 || !S_ISREG(ms.st_mode) ||
      ms.st_size != PAGE_BYTES || seals < 0 || !(seals & F_SEAL_SHRINK)) {
    close(sock);
    close(memfd);
    return NULL;
  }
  page_map *m = map_find(ms.st_dev, ms.st_ino);
  if (m)
    close(memfd);
  else if (!(m = map_open(memfd, &ms))) {
    close(sock);
    close(memfd);
    return NULL;
  }
  lock_page *pg = m->pg;
  int side = pg->magic != PAGE_MAGIC        ? -1
             : pg->side[0].ino == ss.st_ino ? 0
             : pg->side[1].ino == ss.st_ino ? 1
                                            : -1;
  mpe_pipe *p = side < 0 ? NULL : wrap(sock, dir, m, side);
  if (!p) {
    close(sock);
    map_unused(m);
  }
  return p;
}

int mpe_pipe_new(mpe_pipe **a, mpe_pipe **b, int duplex) {
  int sv[2], rc = 0;
  *a = *b = NULL;
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) return -errno;
  int sz = SOCKBUF;
  for (int i = 0; i < 2; i++) {
    setsockopt(sv[i], SOL_SOCKET, SO_SNDBUF, &sz, sizeof sz);
    setsockopt(sv[i], SOL_SOCKET, SO_RCVBUF, &sz, sizeof sz);
  }
  page_map *pm = map_new(sv, &rc);
  if (!pm) {
    close(sv[0]);
    close(sv[1]);
    return rc;
  }
  int da = CAN_SEND | CAN_RECV, db = da;
  if (!duplex) {
    shutdown(sv[0], SHUT_WR);
    shutdown(sv[1], SHUT_RD);
    da = CAN_RECV;
    db = CAN_SEND;
  }
  *a = wrap(sv[0], da, pm, 0);
  *b = wrap(sv[1], db, pm, 1);
  if (!*a || !*b) {
    mpe_pipe_free(*a);
    mpe_pipe_free(*b);
    if (!*a) close(sv[0]);
    if (!*b) close(sv[1]);
    map_unused(pm);
    *a = *b = NULL;
    return -ENOMEM;
  }
  return 0;
}

int mpe_pipe_is_open(const mpe_pipe *p) { return p->fd >= 0; }
int mpe_pipe_can_send(const mpe_pipe *p) { return (p->dir & CAN_SEND) != 0; }
int mpe_pipe_can_recv(const mpe_pipe *p) { return (p->dir & CAN_RECV) != 0; }
int mpe_pipe_fileno(const mpe_pipe *p) { return p->fd >= 0 ? p->fd : -EBADF; }

const char *mpe_pipe_broken(const mpe_pipe *p, int sending) {
  if (p->fd < 0) return NULL;
  uint32_t why = atomic_load(&p->pm->pg->side[sending ? p->side : 1 - p->side].broken);
  return why < WHY_COUNT ? why_text[why] : why_text[WHY_MALFORMED];
}

/* Breaks the stream out of side `from` for every process: the reason first,
 * then a shutdown that wakes all its waiters (either socket can do it). */
static void break_stream(mpe_pipe *p, int from, uint32_t why) {
  uint32_t none = WHY_NONE;
  atomic_compare_exchange_strong(&p->pm->pg->side[from].broken, &none, why);
  atomic_fetch_add(&p->pm->pg->side[from].sent, 1); /* a spinning receiver looks again */
  shutdown(p->fd, from == p->side ? SHUT_WR : SHUT_RD);
}

static void close_fds(const int *fds, size_t n) {
  for (size_t i = 0; i < n; i++)
    close(fds[i]);
}

static void buf_give(char *b);

static void rx_forget(rx_state *r) {
  close_fds(r->fds, r->nfds);
  buf_give(r->data);
  memset(r, 0, sizeof *r);
}

static void tx_end(mpe_pipe *p, uint32_t why);
static void rx_give_up(mpe_pipe *p, uint32_t why);

int mpe_pipe_close(mpe_pipe *p) {
  if (p->fd < 0) return -EBADF;
  page_map *pm = p->pm;
  if (pm->users[p->side] == 1) { /* this process's last handle of the end */
    if (pm->tx[p->side].active) tx_end(p, WHY_SEND_GIVEN_UP);
    if (pm->rx[p->side].active) {
      rx_give_up(p, WHY_RECEIVER_CLOSED);
      mpe__mutex_unlock(&pm->pg->side[p->side].recv);
    }
  }
  close(p->fd);
  p->fd = -1;
  list_del(p);
  pm->users[p->side]--;
  p->pm = NULL;
  map_unused(pm);
  return 0;
}

void mpe_pipe_free(mpe_pipe *p) {
  if (!p) return;
  if (p->fd >= 0) mpe_pipe_close(p);
  free(p);
}

MPE_CHILD_PATH void mpe__pipes_after_fork(const mpe_spawn_options *opts) {
  /* Frames the parent left unfinished are the parent's (and so are their
   * locks): forget them without touching the stream. */
  for (page_map *m = maps; m; m = m->next)
    for (int s = 0; s < 2; s++) {
      rx_forget(&m->rx[s]);
      memset(&m->tx[s], 0, sizeof m->tx[s]);
    }
  if (opts && opts->inherit_pipes) return;
  for (mpe_pipe *p = open_pipes, *n; p; p = n) {
    n = p->next;
    int keep = 0;
    for (size_t i = 0; opts && i < opts->nkeep && !keep; i++)
      keep = opts->keep[i] == p;
    if (!keep) mpe_pipe_close(p); /* so the peer sees EOF when the owner closes */
  }
}

MPE_CHILD_PATH size_t mpe__pipes_fds(int *out, size_t max) {
  size_t n = 0;
  for (mpe_pipe *p = open_pipes; p && n < max; p = p->next)
    out[n++] = p->fd;
  for (page_map *m = maps; m && n < max; m = m->next)
    out[n++] = m->memfd;
  return n;
}

/* ------------------------------------------------------------------- send */

/* Leaves the frame being sent: why != 0 breaks the stream (it was cut). */
static void tx_end(mpe_pipe *p, uint32_t why) {
  page_side *s = &p->pm->pg->side[p->side];
  if (why) break_stream(p, p->side, why);
  memset(&p->pm->tx[p->side], 0, sizeof p->pm->tx[p->side]);
  atomic_store(&s->sending, 0);
  mpe__mutex_unlock(&s->send);
}

/* Writes what is left of the frame; ends' descriptors go with its first byte. */
static int tx_write(mpe_pipe *p, mpe_pipe *const *ends) {
  tx_state *t = &p->pm->tx[p->side];
  static const char zeros[FIRST];
  size_t frame = sizeof t->h + t->nends + t->len;
  size_t parts[4] = {sizeof t->h, t->nends, t->len, frame < FIRST ? FIRST - frame : 0};
  const char *base[4] = {(const char *)&t->h, (const char *)t->dirs, t->buf, zeros};
  struct iovec iov[4];
  size_t skip = t->done, total = parts[0] + parts[1] + parts[2] + parts[3];
  int niov = 0;
  for (int i = 0; i < 4; i++) {
    if (skip >= parts[i]) {
      skip -= parts[i];
      continue;
    }
    iov[niov].iov_base = (void *)(base[i] + skip);
    iov[niov++].iov_len = parts[i] - skip;
    skip = 0;
  }
  struct msghdr msg;
  memset(&msg, 0, sizeof msg);
  msg.msg_iov = iov;
  msg.msg_iovlen = (size_t)niov;
  union {
    char buf[CMSG_SPACE(sizeof(int) * MAX_FDS)];
    struct cmsghdr align;
  } ctl;
  if (t->nends && t->done == 0) {
    memset(&ctl, 0, sizeof ctl); /* the control message's padding goes out too */
    msg.msg_control = ctl.buf;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * 2 * t->nends);
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * 2 * t->nends);
    int fds[MAX_FDS] = {0};
    for (size_t i = 0; i < t->nends; i++) {
      fds[2 * i] = ends[i]->fd;
      fds[2 * i + 1] = ends[i]->pm->memfd;
    }
    memcpy(CMSG_DATA(c), fds, sizeof(int) * 2 * t->nends);
  }
  ssize_t n = sendmsg(p->fd, &msg, MSG_NOSIGNAL);
  if (n < 0) {
    if (errno == EINTR) {
      if (t->done == 0) tx_end(p, WHY_NONE); /* nothing went: nothing to finish */
      return MPE_EINTR;                      /* else the caller calls again to finish */
    }
    int rc = errno == EPIPE || errno == ECONNRESET ? MPE_ECLOSED : -errno;
    tx_end(p, t->done > 0 && rc != MPE_ECLOSED ? WHY_SEND_FAILED : WHY_NONE);
    return rc;
  }
  t->done += (size_t)n;
  if (t->done == total) {
    atomic_fetch_add(&p->pm->pg->side[p->side].sent, 1); /* after its last byte is in */
    tx_end(p, WHY_NONE);
    return 0;
  }
  /* A blocking send stops short only when a signal arrived (or the peer
   * went, which the next call reports): let the caller look. */
  return MPE_EINTR;
}

int mpe_pipe_send(mpe_pipe *p, const void *buf, size_t len, uint32_t tag, mpe_pipe *const *ends,
                  size_t nends) {
  if (p->fd < 0 || !(p->dir & CAN_SEND)) return -EBADF;
  if (nends > MAX_ENDS) return -EINVAL;
  page_side *s = &p->pm->pg->side[p->side];
  tx_state *t = &p->pm->tx[p->side];
  if (t->active) {
    if (t->buf == buf && t->len == len && t->tag == tag && t->nends == nends) return tx_write(p, ends);
    tx_end(p, t->done ? WHY_SEND_GIVEN_UP : WHY_NONE); /* another message: the old one is given up */
    if (atomic_load(&s->broken)) return MPE_ECLOSED;
  }
  for (size_t i = 0; i < nends; i++)
    if (ends[i]->fd < 0) return -EBADF;
  int rc = mpe__mutex_lock(&s->send, NULL, 1);
  if (rc == MPE_EINTR) return rc;
  if (rc == MPE_EOWNERDEAD && atomic_load(&s->sending)) break_stream(p, p->side, WHY_SENDER_DIED);
  if (atomic_load(&s->broken)) {
    atomic_store(&s->sending, 0);
    mpe__mutex_unlock(&s->send);
    return MPE_ECLOSED;
  }
  t->active = 1;
  t->buf = buf;
  t->len = len;
  t->tag = tag;
  t->nends = nends;
  t->done = 0;
  t->h = (frame_hdr){FRAME_MAGIC, (uint16_t)nends, tag, len};
  for (size_t i = 0; i < nends; i++)
    t->dirs[i] = (unsigned char)ends[i]->dir;
  atomic_store(&s->sending, 1); /* before the first byte: a death from here on cuts the stream */
  return tx_write(p, ends);
}

void mpe_pipe_abort(mpe_pipe *p) {
  if (p->fd < 0) return;
  tx_state *t = &p->pm->tx[p->side];
  if (t->active) tx_end(p, t->done ? WHY_SEND_GIVEN_UP : WHY_NONE);
}

/* ---------------------------------------------------------------- receive */

/* One payload buffer kept from the last message cleared: a message a
 * process receives and clears in a loop reuses it, instead of a malloc and a
 * free each time (for sizes near glibc's trim threshold, each free gave the
 * heap back and each malloc took it again, page faults and all). */
static char *spare;

static char *buf_take(size_t len) {
  if (spare && malloc_usable_size(spare) >= len) {
    char *b = spare;
    spare = NULL;
    return b;
  }
  return malloc(len);
}

static void buf_give(char *b) {
  size_t n = b ? malloc_usable_size(b) : 0;
  if (n == 0 || n > SPARE_MAX || (spare && malloc_usable_size(spare) >= n)) {
    free(b);
    return;
  }
  free(spare);
  spare = b;
}

int mpe_pipe_poll(mpe_pipe *p, double timeout) {
  if (p->fd < 0 || !(p->dir & CAN_RECV)) return -EBADF;
  mpe__deadline d = mpe__deadline_in(timeout);
  struct pollfd pf = {.fd = p->fd, .events = POLLIN};
  int n = poll(&pf, 1, mpe__deadline_ms(&d));
  if (n > 0) return 1;
  if (n == 0) return 0;
  return errno == EINTR ? MPE_EINTR : -errno;
}

/* Leaves the frame being read; why != 0 breaks the stream (it lost framing). */
static void rx_give_up(mpe_pipe *p, uint32_t why) {
  if (why) break_stream(p, 1 - p->side, why);
  rx_forget(&p->pm->rx[p->side]);
  atomic_store(&p->pm->pg->side[p->side].receiving, 0);
}

static int rx_fail(mpe_pipe *p, int rc, uint32_t why) {
  rx_give_up(p, why);
  return rc;
}

/* The frame's first bytes are in: checks the header, makes room for the
 * rest and keeps what of it came along. */
static int rx_header(mpe_pipe *p, size_t maxlen) {
  rx_state *r = &p->pm->rx[p->side];
  const frame_hdr *h = &r->h;
  memcpy(&r->h, r->first, sizeof r->h);
  if (r->bad || h->magic != FRAME_MAGIC || h->nends > MAX_ENDS || r->nfds != 2u * h->nends ||
      h->len > (uint64_t)SIZE_MAX / 2)
    return rx_fail(p, MPE_ECORRUPT, WHY_MALFORMED);
  if (h->len > maxlen) return rx_fail(p, -EMSGSIZE, WHY_TOO_LONG);
  r->data = buf_take(h->len ? h->len : 1);
  if (!r->data) return rx_fail(p, -ENOMEM, WHY_NO_MEMORY);
  size_t nd = h->nends, rest = nd + h->len, k = FIRST - sizeof r->h; /* the rest, and what came */
  if (k > rest) k = rest;                                           /* the padding is left */
  size_t kd = k < nd ? k : nd;
  memcpy(r->dirs, r->first + sizeof r->h, kd);
  memcpy(r->data, r->first + sizeof r->h + kd, k - kd);
  r->got = k;
  return 0;
}

/* Reads (more of) the frame's first bytes and the descriptors riding on them. */
static ssize_t rx_first(mpe_pipe *p) {
  rx_state *r = &p->pm->rx[p->side];
  struct iovec iov = {r->first + r->hgot, FIRST - r->hgot};
  union {
    char buf[CMSG_SPACE(sizeof(int) * MAX_FDS)];
    struct cmsghdr align;
  } ctl;
  struct msghdr msg;
  memset(&msg, 0, sizeof msg);
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = ctl.buf;
  msg.msg_controllen = sizeof ctl.buf;
  ssize_t n = recvmsg(p->fd, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
  if (n <= 0) return n;
  for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
      size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int), room = MAX_FDS - r->nfds;
      int got[MAX_FDS];
      if (k > MAX_FDS) k = MAX_FDS; /* the buffer holds no more */
      memcpy(got, CMSG_DATA(c), k * sizeof(int));
      for (size_t i = room; i < k; i++)
        close(got[i]);
      memcpy(r->fds + r->nfds, got, (k < room ? k : room) * sizeof(int));
      r->nfds += k < room ? k : room;
      if (k > room) r->bad = 1;
    }
  }
  if (msg.msg_flags & MSG_CTRUNC) r->bad = 1;
  return n;
}

/* The frame is in: hands it over in *m. */
static int rx_done(mpe_pipe *p, mpe_msg *m) {
  rx_state *r = &p->pm->rx[p->side];
  size_t nends = r->h.nends;
  if (nends && !(m->ends = calloc(nends, sizeof *m->ends))) {
    rx_give_up(p, WHY_NONE); /* the stream is whole: only this message is lost */
    return -ENOMEM;
  }
  m->data = r->data;
  m->len = r->h.len;
  m->tag = r->h.tag;
  for (size_t i = 0; i < nends; i++)
    m->ends[i] = adopt(r->fds[2 * i], r->fds[2 * i + 1], r->dirs[i] & (CAN_SEND | CAN_RECV));
  m->nends = nends;
  r->data = NULL;
  r->nfds = 0; /* adopted or closed */
  rx_give_up(p, WHY_NONE);
  return 1;
}

/* Reads as far as the socket allows without blocking, and (budget) at most
 * *budget bytes of payload: 1 a whole frame is in *m, 0 nothing more to read
 * now (or the budget is spent), < 0 an error. */
static int rx_step(mpe_pipe *p, size_t maxlen, mpe_msg *m, size_t *budget) {
  rx_state *r = &p->pm->rx[p->side];
  page_side *mine = &p->pm->pg->side[p->side];
  for (;;) {
    if (atomic_load(&p->pm->pg->side[1 - p->side].broken)) return rx_fail(p, MPE_ECLOSED, WHY_NONE);
    ssize_t n;
    if (r->hgot < FIRST) {
      if (r->hgot == 0) atomic_store(&mine->receiving, 1); /* before a byte can be consumed */
      n = rx_first(p);
    } else {
      size_t nd = r->h.nends, off = r->got;
      struct iovec iov[2];
      int k = 0;
      if (off < nd) iov[k++] = (struct iovec){r->dirs + off, nd - off};
      size_t poff = off > nd ? off - nd : 0, want = r->h.len - poff;
      if (budget && *budget == 0) return 0;
      if (budget && want > *budget) want = *budget;
      iov[k++] = (struct iovec){r->data + poff, want};
      struct msghdr msg;
      memset(&msg, 0, sizeof msg);
      msg.msg_iov = iov;
      msg.msg_iovlen = (size_t)k;
      n = recvmsg(p->fd, &msg, MSG_DONTWAIT);
    }
    if (n < 0) {
      int e = errno;
      if (!r->active) atomic_store(&mine->receiving, 0);
      if (e == EAGAIN || e == EWOULDBLOCK || e == EINTR) return 0;
      return rx_fail(p, e == ECONNRESET ? MPE_ECLOSED : -e, r->active ? WHY_ENDED : WHY_NONE);
    }
    if (n == 0) return rx_fail(p, MPE_ECLOSED, r->active ? WHY_ENDED : WHY_NONE); /* EOF */
    r->active = 1;
    if (r->hgot < FIRST) {
      r->hgot += (size_t)n;
      if (r->hgot == FIRST) {
        int rc = rx_header(p, maxlen);
        if (rc < 0) return rc;
      }
    } else {
      r->got += (size_t)n;
      if (budget) *budget -= (size_t)n < *budget ? (size_t)n : *budget;
    }
    if (r->hgot == FIRST && r->got == r->h.nends + r->h.len) return rx_done(p, m);
  }
}

/* The frame half read has not moved for a while: 1 if its sender is gone
 * (dead, or left without finishing), which breaks the stream. */
static int sender_gone(mpe_pipe *p) {
  page_side *peer = &p->pm->pg->side[1 - p->side];
  int rc = mpe__mutex_trylock(&peer->send, 1);
  if (rc == MPE_ETIMEDOUT) return 0; /* a live sender holds it: still writing */
  char c;
  int gone = rc == MPE_EOWNERDEAD && atomic_load(&peer->sending);
  if (!gone)
    gone = recv(p->fd, &c, 1, MSG_PEEK | MSG_DONTWAIT) < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
  if (gone) break_stream(p, 1 - p->side, rc == MPE_EOWNERDEAD ? WHY_SENDER_DIED : WHY_SENDER_STOPPED);
  if (rc == MPE_EOWNERDEAD) atomic_store(&peer->sending, 0);
  mpe__mutex_unlock(&peer->send);
  return gone;
}

/* A spinning receiver's question: has a frame gone out since it looked? */
typedef struct sent_watch {
  _Atomic uint32_t *sent;
  uint32_t seen;
} sent_watch;

static int sent_moved(void *arg) {
  sent_watch *w = arg;
  return atomic_load_explicit(w->sent, memory_order_acquire) != w->seen;
}

/* With the receive lock held: reads a frame, or the rest of one. */
static int rx_wait(mpe_pipe *p, const mpe__deadline *d, double timeout, size_t maxlen, mpe_msg *m) {
  /* First non-blocking reads, and while the socket is empty a spin by the
   * shared policy (spin.c: only while a CPU is free) on the count of frames
   * the peer side has finished sending: a peer on another CPU usually
   * answers within microseconds, and a sleeping receiver costs a cross-CPU
   * wake-up (about 20 us on a small VM). The count is read before the read
   * that found nothing, so a frame finished after it moves the count. A
   * small message is read here whole; a big one goes on below, where a
   * signal cannot slip by unseen. */
  sent_watch w = {&p->pm->pg->side[1 - p->side].sent, 0};
  size_t budget = OPEN_BYTES;
  for (;;) {
    w.seen = atomic_load_explicit(w.sent, memory_order_acquire);
    int rc = rx_step(p, maxlen, m, &budget);
    if (rc != 0) return rc > 0 ? 0 : rc;
    if (timeout == 0 || budget == 0 || !mpe__spin_wait(&p->pm->spin[p->side], sent_moved, &w)) break;
  }
  if (budget > 0 && mpe__deadline_ms(d) == 0) return MPE_ETIMEDOUT; /* nothing more is there */
  /* Then wait in the kernel, in ppoll(), in slices while a frame is half
   * read, to look at its sender. Signals are blocked but in ppoll: one that
   * comes while we read (a long copy) or look at the sender is not lost, it
   * ends the next ppoll, so the first SIGINT ends the wait. The socket was
   * found empty just now (unless the budget stopped the reading): ppoll
   * comes first, and sees whatever arrived since. */
  sigset_t block, old;
  sigfillset(&block);
  static const int faults[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGABRT};
  for (size_t i = 0; i < sizeof faults / sizeof *faults; i++)
    sigdelset(&block, faults[i]);
  pthread_sigmask(SIG_BLOCK, &block, &old);
  rx_state *r = &p->pm->rx[p->side];
  int rc, step = budget == 0;
  for (;;) {
    if (step) {
      rc = rx_step(p, maxlen, m, NULL);
      if (rc != 0) {
        rc = rc > 0 ? 0 : rc;
        break;
      }
    }
    step = 1;
    int ms = mpe__deadline_ms(d);
    if (ms == 0) {
      rc = MPE_ETIMEDOUT;
      break;
    }
    if (r->active && (ms < 0 || ms > WATCH_MS)) ms = WATCH_MS;
    struct pollfd pf = {.fd = p->fd, .events = POLLIN};
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    int n = ppoll(&pf, 1, ms < 0 ? NULL : &ts, &old);
    if (n < 0) {
      rc = errno == EINTR ? MPE_EINTR : -errno;
      break;
    }
    if (n == 0 && r->active) sender_gone(p); /* if so, the next step sees the stream broken */
  }
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  return rc;
}

int mpe_pipe_recv_max(mpe_pipe *p, double timeout, size_t maxlen, mpe_msg *m) {
  memset(m, 0, sizeof *m);
  if (p->fd < 0 || !(p->dir & CAN_RECV)) return -EBADF;
  page_side *mine = &p->pm->pg->side[p->side];
  rx_state *r = &p->pm->rx[p->side];
  mpe__deadline d = mpe__deadline_in(timeout);
  if (!r->active) { /* else this process holds the lock since its last call */
    int rc = timeout == 0 ? mpe__mutex_trylock(&mine->recv, 1) : mpe__mutex_lock(&mine->recv, &d, 1);
    if (rc == MPE_EOWNERDEAD && atomic_load(&mine->receiving)) {
      break_stream(p, 1 - p->side, WHY_RECEIVER_DIED);
      atomic_store(&mine->receiving, 0);
    } else if (rc < 0 && rc != MPE_EOWNERDEAD) {
      return rc;
    }
  }
  int rc = rx_wait(p, &d, timeout, maxlen, m);
  if (!r->active) mpe__mutex_unlock(&mine->recv);
  return rc;
}

int mpe_pipe_recv(mpe_pipe *p, double timeout, mpe_msg *m) {
  return mpe_pipe_recv_max(p, timeout, SIZE_MAX, m);
}

void mpe_msg_clear(mpe_msg *m) {
  buf_give(m->data);
  for (size_t i = 0; i < m->nends; i++)
    mpe_pipe_free(m->ends[i]);
  free(m->ends);
  memset(m, 0, sizeof *m);
}
