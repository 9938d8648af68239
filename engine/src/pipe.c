/* pipe.c - framed message pipes over AF_UNIX stream sockets.
 *
 * A pipe is a socketpair, so the kernel gives us what a user expects for
 * free: EOF once every end that could write is closed (in every process,
 * dead ones included), and descriptors can travel inside messages
 * (SCM_RIGHTS), which is how a pipe end is sent through a pipe. One-way pipes
 * are a socketpair with the unused directions shut down. Socket buffers are
 * raised to 4 MiB (capped by net.core.wmem_max): on a 2-core machine that
 * moves 1 MiB messages several times faster than a pipe(2).
 *
 * Frame: a 16-byte header {magic:16, nends:16, tag:32, len:64} (host order,
 * both ends are on one machine), then one direction byte per passed end, then
 * len bytes. The descriptors ride on the header as SCM_RIGHTS.
 *
 * Invariants: a frame is written whole by one send call (we loop over partial
 * writes, retrying EINTR once bytes have gone); a receiver that has read a
 * header reads the whole frame. A receive that is interrupted before the
 * first byte returns MPE_EINTR with nothing consumed. Every descriptor is
 * opened close-on-exec, and a child keeps only the ends it was given. */
#define _GNU_SOURCE
#include "internal.h"

#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#define FRAME_MAGIC 0x4d50u
#define MAX_ENDS 64
#define SOCKBUF (4 << 20)

enum { CAN_SEND = 1, CAN_RECV = 2 };

struct mpe_pipe {
  int fd;
  int dir;    /* CAN_SEND | CAN_RECV */
  int broken; /* the stream lost framing (a malformed header) */
  mpe_pipe *prev, *next; /* process-local list of open ends */
};

typedef struct frame_hdr {
  uint16_t magic;
  uint16_t nends;
  uint32_t tag;
  uint64_t len;
} frame_hdr;

static mpe_pipe *open_pipes;

static void list_add(mpe_pipe *p) {
  p->prev = NULL;
  p->next = open_pipes;
  if (open_pipes) open_pipes->prev = p;
  open_pipes = p;
}

static void list_del(mpe_pipe *p) {
  if (p->prev) p->prev->next = p->next;
  else if (open_pipes == p) open_pipes = p->next;
  if (p->next) p->next->prev = p->prev;
  p->prev = p->next = NULL;
}

static mpe_pipe *wrap(int fd, int dir) {
  mpe_pipe *p = calloc(1, sizeof *p);
  if (!p) return NULL;
  p->fd = fd;
  p->dir = dir;
  list_add(p);
  return p;
}

int mpe_pipe_new(mpe_pipe **a, mpe_pipe **b, int duplex) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) return -errno;
  int sz = SOCKBUF;
  for (int i = 0; i < 2; i++) {
    setsockopt(sv[i], SOL_SOCKET, SO_SNDBUF, &sz, sizeof sz);
    setsockopt(sv[i], SOL_SOCKET, SO_RCVBUF, &sz, sizeof sz);
  }
  int da = CAN_SEND | CAN_RECV, db = da;
  if (!duplex) {
    shutdown(sv[0], SHUT_WR);
    shutdown(sv[1], SHUT_RD);
    da = CAN_RECV;
    db = CAN_SEND;
  }
  *a = wrap(sv[0], da);
  *b = wrap(sv[1], db);
  if (!*a || !*b) {
    mpe_pipe_free(*a);
    mpe_pipe_free(*b);
    if (!*a) close(sv[0]);
    if (!*b) close(sv[1]);
    *a = *b = NULL;
    return -ENOMEM;
  }
  return 0;
}

int mpe_pipe_is_open(const mpe_pipe *p) { return p->fd >= 0; }
int mpe_pipe_can_send(const mpe_pipe *p) { return (p->dir & CAN_SEND) != 0; }
int mpe_pipe_can_recv(const mpe_pipe *p) { return (p->dir & CAN_RECV) != 0; }

int mpe_pipe_close(mpe_pipe *p) {
  if (p->fd < 0) return -EBADF;
  close(p->fd);
  p->fd = -1;
  list_del(p);
  return 0;
}

void mpe_pipe_free(mpe_pipe *p) {
  if (!p) return;
  if (p->fd >= 0) mpe_pipe_close(p);
  free(p);
}

void mpe__pipes_after_fork(const mpe_spawn_options *opts) {
  if (opts && opts->inherit_pipes) return;
  for (mpe_pipe *p = open_pipes, *n; p; p = n) {
    n = p->next;
    int keep = 0;
    for (size_t i = 0; opts && i < opts->nkeep && !keep; i++) keep = opts->keep[i] == p;
    if (!keep) mpe_pipe_close(p); /* so the peer sees EOF when the owner closes */
  }
}

/* Writes all of iov, the first call carrying msg's control data. */
static int send_all(int fd, struct msghdr *msg) {
  int first = 1;
  while (msg->msg_iovlen > 0) {
    ssize_t n = sendmsg(fd, msg, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue; /* bytes may be out: finish the frame */
      if (errno == EPIPE || errno == ECONNRESET) return MPE_ECLOSED;
      if (first) return -errno;
      return -errno;
    }
    first = 0;
    msg->msg_control = NULL;
    msg->msg_controllen = 0;
    size_t left = (size_t)n;
    while (msg->msg_iovlen > 0 && left >= msg->msg_iov->iov_len) {
      left -= msg->msg_iov->iov_len;
      msg->msg_iov++;
      msg->msg_iovlen--;
    }
    if (msg->msg_iovlen > 0) {
      msg->msg_iov->iov_base = (char *)msg->msg_iov->iov_base + left;
      msg->msg_iov->iov_len -= left;
    }
  }
  return 0;
}

int mpe_pipe_send(mpe_pipe *p, const void *buf, size_t len, uint32_t tag,
                  mpe_pipe *const *ends, size_t nends) {
  if (p->fd < 0 || !(p->dir & CAN_SEND)) return -EBADF;
  if (nends > MAX_ENDS) return -EINVAL;
  frame_hdr h = {FRAME_MAGIC, (uint16_t)nends, tag, len};
  unsigned char dirs[MAX_ENDS];
  int fds[MAX_ENDS];
  for (size_t i = 0; i < nends; i++) {
    if (ends[i]->fd < 0) return -EBADF;
    fds[i] = ends[i]->fd;
    dirs[i] = (unsigned char)ends[i]->dir;
  }
  struct iovec iov[3] = {{&h, sizeof h}, {dirs, nends}, {(void *)buf, len}};
  struct msghdr msg;
  memset(&msg, 0, sizeof msg);
  msg.msg_iov = iov;
  msg.msg_iovlen = 3;
  union {
    char buf[CMSG_SPACE(sizeof(int) * MAX_ENDS)];
    struct cmsghdr align;
  } ctl;
  memset(&ctl, 0, sizeof ctl); /* the control message's padding goes out too */
  if (nends) {
    msg.msg_control = ctl.buf;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * nends);
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * nends);
    memcpy(CMSG_DATA(c), fds, sizeof(int) * nends);
  }
  return send_all(p->fd, &msg);
}

/* Reads exactly n bytes; 0, MPE_ECLOSED on EOF, -errno. */
static int read_all(int fd, void *buf, size_t n) {
  char *b = buf;
  while (n > 0) {
    ssize_t k = read(fd, b, n);
    if (k == 0) return MPE_ECLOSED;
    if (k < 0) {
      if (errno == EINTR) continue;
      if (errno == ECONNRESET) return MPE_ECLOSED;
      return -errno;
    }
    b += k;
    n -= (size_t)k;
  }
  return 0;
}

int mpe_pipe_poll(mpe_pipe *p, double timeout) {
  if (p->fd < 0 || !(p->dir & CAN_RECV)) return -EBADF;
  mpe__deadline d = mpe__deadline_in(timeout);
  for (;;) {
    struct pollfd pf = {.fd = p->fd, .events = POLLIN};
    int n = poll(&pf, 1, mpe__deadline_ms(&d));
    if (n > 0) return 1;
    if (n == 0) return 0;
    if (errno == EINTR) return MPE_EINTR;
    return -errno;
  }
}

static void close_fds(const int *fds, size_t n) {
  for (size_t i = 0; i < n; i++) close(fds[i]);
}

/* Reads the header and its descriptors; returns count of fds in *nfds. */
static int read_header(mpe_pipe *p, frame_hdr *h, int *fds, size_t *nfds, int flags) {
  struct iovec iov = {h, sizeof *h};
  union {
    char buf[CMSG_SPACE(sizeof(int) * MAX_ENDS)];
    struct cmsghdr align;
  } ctl;
  struct msghdr msg;
  memset(&msg, 0, sizeof msg);
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = ctl.buf;
  msg.msg_controllen = sizeof ctl.buf;
  ssize_t n = recvmsg(p->fd, &msg, MSG_CMSG_CLOEXEC | flags);
  if (n < 0 && errno == EINTR) return MPE_EINTR; /* nothing consumed yet */
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return MPE_ETIMEDOUT;
  if (n == 0) return MPE_ECLOSED;
  if (n < 0) return errno == ECONNRESET ? MPE_ECLOSED : -errno;
  *nfds = 0;
  for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
      size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      if (*nfds + k > MAX_ENDS) k = MAX_ENDS - *nfds;
      memcpy(fds + *nfds, CMSG_DATA(c), k * sizeof(int));
      *nfds += k;
    }
  }
  if ((size_t)n < sizeof *h) {
    int r = read_all(p->fd, (char *)h + n, sizeof *h - (size_t)n);
    if (r < 0) {
      close_fds(fds, *nfds);
      return r;
    }
  }
  return 0;
}

int mpe_pipe_recv(mpe_pipe *p, double timeout, mpe_msg *m) {
  memset(m, 0, sizeof *m);
  if (p->fd < 0 || !(p->dir & CAN_RECV)) return -EBADF;
  if (p->broken) return MPE_ECORRUPT;
  /* First spin briefly on a non-blocking read: a peer on another CPU usually
   * answers within microseconds, and a sleeping receiver costs a cross-CPU
   * wake-up (about 20 us on a small VM). Then wait in the kernel: in poll()
   * when a timeout asks for it, else in a blocking read. */
  frame_hdr h;
  int fds[MAX_ENDS];
  size_t nfds = 0;
  int r = read_header(p, &h, fds, &nfds, MSG_DONTWAIT);
  if (r == MPE_ETIMEDOUT && timeout != 0 && mpe__spin_ns() > 0) {
    double until = mpe_time() + (double)mpe__spin_ns() * 1e-9;
    do r = read_header(p, &h, fds, &nfds, MSG_DONTWAIT);
    while (r == MPE_ETIMEDOUT && mpe_time() < until);
  }
  if (r == MPE_ETIMEDOUT) {
    if (timeout >= 0) {
      r = mpe_pipe_poll(p, timeout);
      if (r <= 0) return r == 0 ? MPE_ETIMEDOUT : r;
    }
    r = read_header(p, &h, fds, &nfds, 0);
  }
  if (r < 0) return r;
  if (h.magic != FRAME_MAGIC || h.nends != nfds || h.len > (uint64_t)SIZE_MAX / 2) {
    close_fds(fds, nfds);
    p->broken = 1;
    return MPE_ECORRUPT;
  }
  unsigned char dirs[MAX_ENDS];
  r = read_all(p->fd, dirs, nfds);
  if (r == 0) {
    m->data = malloc(h.len ? h.len : 1);
    if (!m->data) r = -ENOMEM, p->broken = 1;
  }
  if (r == 0) r = read_all(p->fd, m->data, h.len);
  if (r == 0 && nfds) {
    m->ends = calloc(nfds, sizeof *m->ends);
    if (!m->ends) r = -ENOMEM;
  }
  if (r < 0) {
    free(m->data);
    free(m->ends);
    memset(m, 0, sizeof *m);
    close_fds(fds, nfds);
    return r;
  }
  m->len = h.len;
  m->tag = h.tag;
  for (size_t i = 0; i < nfds; i++) {
    m->ends[i] = wrap(fds[i], dirs[i] & (CAN_SEND | CAN_RECV));
    if (!m->ends[i]) close(fds[i]);
  }
  m->nends = nfds;
  return 0;
}

void mpe_msg_clear(mpe_msg *m) {
  free(m->data);
  for (size_t i = 0; i < m->nends; i++) mpe_pipe_free(m->ends[i]);
  free(m->ends);
  memset(m, 0, sizeof *m);
}

size_t mpe__pipes_fds(int *out, size_t max) {
  size_t n = 0;
  for (mpe_pipe *p = open_pipes; p && n < max; p = p->next) out[n++] = p->fd;
  return n;
}
