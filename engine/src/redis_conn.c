/* redis_conn.c - one connection to the broker's Redis (see broker.h).
 *
 * hiredis's blocking API: each command is written and its reply read with
 * the connection's timeout (a blocking read passes a longer one). Any I/O
 * error leaves the connection broken; the caller reconnects (with backoff)
 * and redoes what it was doing: every broker operation is idempotent or
 * fenced, so a command whose reply was lost can be sent again. Messages name
 * the server by its masked URL only: the password is kept in the handle for
 * reconnecting and is written nowhere else. */
#define _GNU_SOURCE
#include "broker.h"

#include <arpa/inet.h>
#include <errno.h>
#include <hiredis/hiredis.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

struct mpe__redis {
  redisContext *c;
  mpe__redis_url url;
  char display[300];
  char err[1024];
  double timeout;
  unsigned seed;
};

__attribute__((format(printf, 3, 4))) static void fail_text(char *err, size_t n, const char *fmt, ...) {
  if (!err || !n) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, n, fmt, ap);
  va_end(ap);
}

/* Decodes %XX escapes of s[0..len) into out (n bytes): 0, or -1. */
static int unescape(const char *s, size_t len, char *out, size_t n) {
  size_t j = 0;
  for (size_t i = 0; i < len; i++) {
    char ch = s[i];
    if (ch == '%') {
      unsigned v;
      char hex[3] = {0, 0, 0};
      if (i + 2 >= len) return -1;
      hex[0] = s[i + 1];
      hex[1] = s[i + 2];
      if (sscanf(hex, "%2x", &v) != 1) return -1;
      ch = (char)v;
      i += 2;
    }
    if (j + 1 >= n) return -1;
    out[j++] = ch;
  }
  out[j] = 0;
  return 0;
}

static int parse_int(const char *s, size_t len, int lo, int hi, int *out) {
  if (len == 0 || len > 9) return -1;
  int v = 0;
  for (size_t i = 0; i < len; i++) {
    if (s[i] < '0' || s[i] > '9') return -1;
    v = v * 10 + (s[i] - '0');
  }
  if (v < lo || v > hi) return -1;
  *out = v;
  return 0;
}

/* unix:///path[?password=..&user=..&db=N] */
static int parse_unix(const char *p, mpe__redis_url *u, char *err, size_t errlen) {
  const char *q = strchr(p, '?');
  size_t plen = q ? (size_t)(q - p) : strlen(p);
  if (plen == 0 || p[0] != '/' || plen >= sizeof u->path) {
    fail_text(err, errlen, "broker URL unix://...: the socket's absolute path is missing or too long");
    return -EINVAL;
  }
  memcpy(u->path, p, plen);
  u->path[plen] = 0;
  while (q && *q) {
    const char *k = q + 1, *amp = strchr(k, '&'), *eq = strchr(k, '=');
    size_t klen = amp ? (size_t)(amp - k) : strlen(k);
    if (!eq || eq > k + klen) {
      fail_text(err, errlen, "broker URL unix://%s: a query item without '='", u->path);
      return -EINVAL;
    }
    const char *v = eq + 1;
    size_t vlen = (size_t)(k + klen - v), nlen = (size_t)(eq - k);
    int bad;
    if (nlen == 8 && !memcmp(k, "password", 8)) bad = unescape(v, vlen, u->pass, sizeof u->pass);
    else if (nlen == 4 && !memcmp(k, "user", 4)) bad = unescape(v, vlen, u->user, sizeof u->user);
    else if (nlen == 2 && !memcmp(k, "db", 2)) bad = parse_int(v, vlen, 0, 1 << 20, &u->db);
    else bad = -2;
    if (bad) {
      fail_text(err, errlen, "broker URL unix://%s: %s '%.*s'", u->path,
                bad == -2 ? "unknown query item" : "bad value for", (int)nlen, k);
      return -EINVAL;
    }
    q = amp;
  }
  return 0;
}

int mpe__redis_url_parse(const char *url, mpe__redis_url *u, char *err, size_t errlen) {
  memset(u, 0, sizeof *u);
  u->port = 6379;
  if (!url) url = "";
  if (!strncmp(url, "unix://", 7)) return parse_unix(url + 7, u, err, errlen);
  if (strncmp(url, "redis://", 8)) {
    fail_text(err, errlen, "broker URL: must start with redis:// or unix://");
    return -EINVAL;
  }
  const char *a = url + 8, *at = strrchr(a, '@');
  if (at) { /* [user]:password@ */
    const char *colon = memchr(a, ':', (size_t)(at - a));
    if (!colon) {
      fail_text(err, errlen, "broker URL: credentials must be [user]:password@");
      return -EINVAL;
    }
    if (unescape(a, (size_t)(colon - a), u->user, sizeof u->user) ||
        unescape(colon + 1, (size_t)(at - colon - 1), u->pass, sizeof u->pass)) {
      fail_text(err, errlen, "broker URL: bad %%-escape or credentials too long");
      return -EINVAL;
    }
    a = at + 1;
  }
  const char *slash = strchr(a, '/'), *end = slash ? slash : a + strlen(a), *hend, *port = NULL;
  if (*a == '[') { /* [v6]:port */
    const char *rb = memchr(a, ']', (size_t)(end - a));
    if (!rb) {
      fail_text(err, errlen, "broker URL: unclosed '[' in the host");
      return -EINVAL;
    }
    if (rb + 1 < end) {
      if (rb[1] != ':') {
        fail_text(err, errlen, "broker URL: junk after the host");
        return -EINVAL;
      }
      port = rb + 2;
    }
    a++;
    hend = rb;
  } else {
    const char *colon = memchr(a, ':', (size_t)(end - a));
    hend = colon ? colon : end;
    if (colon) port = colon + 1;
  }
  if (hend == a || (size_t)(hend - a) >= sizeof u->host) {
    fail_text(err, errlen, "broker URL: the host is missing or too long");
    return -EINVAL;
  }
  memcpy(u->host, a, (size_t)(hend - a));
  u->host[hend - a] = 0;
  if (port && parse_int(port, (size_t)(end - port), 1, 65535, &u->port)) {
    fail_text(err, errlen, "broker URL redis://%s: the port must be 1-65535", u->host);
    return -EINVAL;
  }
  if (slash && slash[1] && parse_int(slash + 1, strlen(slash + 1), 0, 1 << 20, &u->db)) {
    fail_text(err, errlen, "broker URL redis://%s:%d: the database must be a number", u->host, u->port);
    return -EINVAL;
  }
  return 0;
}

void mpe__redis_url_display(const mpe__redis_url *u, char *buf, size_t n) {
  if (u->path[0]) snprintf(buf, n, "unix://%s", u->path);
  else if (strchr(u->host, ':')) snprintf(buf, n, "redis://[%s]:%d", u->host, u->port);
  else snprintf(buf, n, "redis://%s:%d", u->host, u->port);
}

int mpe_broker_url_display(const char *url, char *buf, size_t n) {
  mpe__redis_url u;
  if (!url || !buf || !n) return -EINVAL;
  int rc = mpe__redis_url_parse(url, &u, buf, n);
  if (rc == 0) mpe__redis_url_display(&u, buf, n);
  memset(&u, 0, sizeof u);
  return rc;
}

int mpe__redis_url_is_local(const mpe__redis_url *u) {
  if (u->path[0] || !strcmp(u->host, "localhost")) return 1;
  struct in_addr a4;
  struct in6_addr a6;
  if (inet_pton(AF_INET, u->host, &a4) == 1) return (ntohl(a4.s_addr) >> 24) == 127;
  if (inet_pton(AF_INET6, u->host, &a6) == 1) return IN6_IS_ADDR_LOOPBACK(&a6);
  return 0;
}

static struct timeval tv_of(double s) {
  struct timeval tv;
  if (s < 0) s = 0;
  tv.tv_sec = (time_t)s;
  tv.tv_usec = (suseconds_t)((s - (double)tv.tv_sec) * 1e6);
  return tv;
}

/* The code for the context's error, its text in r->err. */
static int io_error(mpe__redis *r, const char *what) {
  int code = -EIO;
  if (r->c && r->c->err == REDIS_ERR_IO) {
    int e = errno;
    if (e == EAGAIN || e == EWOULDBLOCK || e == ETIMEDOUT) code = MPE_ETIMEDOUT;
    else if (e == ECONNREFUSED || e == EHOSTUNREACH || e == ENETUNREACH || e == ECONNRESET) code = -e;
  }
  snprintf(r->err, sizeof r->err, "%s: %s: %s", r->display, what,
           code == MPE_ETIMEDOUT ? "timed out" : (r->c && r->c->errstr[0] ? r->c->errstr : "connection lost"));
  if (r->c) {
    redisFree(r->c);
    r->c = NULL;
  }
  return code;
}

/* AUTH and SELECT on a fresh context. */
static int handshake(mpe__redis *r) {
  char db[16];
  if (r->url.pass[0]) {
    const char *argv[3] = {"AUTH", r->url.user, r->url.pass};
    const char **av = r->url.user[0] ? argv : (const char *[]){"AUTH", r->url.pass};
    redisReply *rep = redisCommandArgv(r->c, r->url.user[0] ? 3 : 2, av, NULL);
    if (!rep) return io_error(r, "AUTH");
    int bad = rep->type == REDIS_REPLY_ERROR;
    if (bad) snprintf(r->err, sizeof r->err, "%s: authentication refused: %.200s", r->display, rep->str);
    freeReplyObject(rep);
    if (bad) return -EACCES;
  }
  if (r->url.db) {
    snprintf(db, sizeof db, "%d", r->url.db);
    redisReply *rep = redisCommand(r->c, "SELECT %s", db);
    if (!rep) return io_error(r, "SELECT");
    int bad = rep->type == REDIS_REPLY_ERROR;
    if (bad) snprintf(r->err, sizeof r->err, "%s: SELECT %s refused: %.200s", r->display, db, rep->str);
    freeReplyObject(rep);
    if (bad) return -EINVAL;
  }
  /* a server that asks for a password we do not have says so on first use */
  redisReply *rep = redisCommand(r->c, "PING");
  if (!rep) return io_error(r, "PING");
  int noauth = rep->type == REDIS_REPLY_ERROR;
  if (noauth) snprintf(r->err, sizeof r->err, "%s: %.200s", r->display, rep->str);
  freeReplyObject(rep);
  return noauth ? -EACCES : 0;
}

static int open_ctx(mpe__redis *r) {
  struct timeval tv = tv_of(r->timeout);
  r->c = r->url.path[0] ? redisConnectUnixWithTimeout(r->url.path, tv)
                        : redisConnectWithTimeout(r->url.host, r->url.port, tv);
  if (!r->c) {
    snprintf(r->err, sizeof r->err, "%s: out of memory", r->display);
    return -ENOMEM;
  }
  if (r->c->err) return io_error(r, "cannot connect");
  redisSetTimeout(r->c, tv);
  if (!r->url.path[0]) redisEnableKeepAlive(r->c);
  int rc = handshake(r);
  if (rc < 0 && r->c) {
    redisFree(r->c);
    r->c = NULL;
  }
  return rc;
}

int mpe__redis_connect(mpe__redis **out, const char *url, double timeout, char *err, size_t errlen) {
  *out = NULL;
  mpe__redis *r = calloc(1, sizeof *r);
  if (!r) return -ENOMEM;
  int rc = mpe__redis_url_parse(url, &r->url, err, errlen);
  if (rc < 0) {
    free(r);
    return rc;
  }
  mpe__redis_url_display(&r->url, r->display, sizeof r->display);
  if (!r->url.pass[0] && !mpe__redis_url_is_local(&r->url)) {
    fail_text(err, errlen,
              "%s: a broker off loopback needs a password in its URL (whoever can write to the broker "
              "runs code on every worker)",
              r->display);
    free(r);
    return -EACCES;
  }
  r->timeout = timeout > 0 ? timeout : 5.0;
  r->seed = (unsigned)getpid() ^ (unsigned)(mpe_time() * 1e6);
  rc = open_ctx(r);
  if (rc < 0) {
    fail_text(err, errlen, "%s", r->err);
    mpe__redis_close(r);
    return rc;
  }
  *out = r;
  return 0;
}

void mpe__redis_close(mpe__redis *r) {
  if (!r) return;
  if (r->c) redisFree(r->c);
  /* the password does not outlive the handle in freed memory */
  memset(&r->url, 0, sizeof r->url);
  free(r);
}

void mpe__redis_abandon(mpe__redis *r) {
  if (!r) return;
  if (r->c) {
    r->c->fd = -1; /* not ours to close: another process's socket (or a number reused since) */
    redisFree(r->c);
    r->c = NULL;
  }
  mpe__redis_close(r);
}

const char *mpe__redis_error(const mpe__redis *r) { return r->err; }
const char *mpe__redis_display(const mpe__redis *r) { return r->display; }
int mpe__redis_ok(const mpe__redis *r) { return r->c != NULL; }

int mpe__redis_reconnect(mpe__redis *r, double deadline) {
  double wait = 0.05;
  for (;;) {
    if (r->c) {
      redisFree(r->c);
      r->c = NULL;
    }
    int rc = open_ctx(r);
    if (rc == 0 || rc == -EACCES || rc == -EINVAL || rc == -ENOMEM) return rc;
    double now = mpe_time();
    if (deadline >= 0 && now >= deadline) return rc;
    /* jitter: hosts that lost the broker together do not come back together */
    double d = wait * (0.5 + (double)rand_r(&r->seed) / RAND_MAX);
    if (deadline >= 0 && now + d > deadline) d = deadline - now;
    if (mpe_sleep(d, NULL) == MPE_EINTR) return MPE_EINTR;
    if (wait < 2.0) wait *= 2;
  }
}

int mpe__redis_set_timeout(mpe__redis *r, double timeout) {
  if (!r->c) return -ENOTCONN;
  return redisSetTimeout(r->c, tv_of(timeout)) == REDIS_OK ? 0 : -EIO;
}

double mpe__redis_timeout(const mpe__redis *r) { return r->timeout; }

int mpe__redis_append(mpe__redis *r, int argc, const char **argv, const size_t *lens) {
  if (!r->c) return -ENOTCONN;
  if (redisAppendCommandArgv(r->c, argc, argv, lens) != REDIS_OK) return io_error(r, "write");
  return 0;
}

int mpe__redis_take(mpe__redis *r, redisReply **reply) {
  *reply = NULL;
  if (!r->c) return -ENOTCONN;
  void *rep = NULL;
  if (redisGetReply(r->c, &rep) != REDIS_OK || !rep) return io_error(r, "read");
  *reply = rep;
  return 0;
}

int mpe__redis_cmd(mpe__redis *r, redisReply **reply, int argc, const char **argv, const size_t *lens) {
  int rc = mpe__redis_append(r, argc, argv, lens);
  return rc < 0 ? rc : mpe__redis_take(r, reply);
}

void mpe__redis_free(redisReply *reply) {
  if (reply) freeReplyObject(reply);
}

static int load_script(mpe__redis *r, mpe__redis_script *s) {
  const char *argv[3] = {"SCRIPT", "LOAD", s->src};
  redisReply *rep;
  int rc = mpe__redis_cmd(r, &rep, 3, argv, NULL);
  if (rc < 0) return rc;
  if (rep->type != REDIS_REPLY_STRING || rep->len != 40) {
    snprintf(r->err, sizeof r->err, "%s: SCRIPT LOAD failed: %.200s", r->display,
             rep->type == REDIS_REPLY_ERROR ? rep->str : "unexpected reply");
    mpe__redis_free(rep);
    return -EPROTO;
  }
  memcpy(s->sha, rep->str, 40);
  s->sha[40] = 0;
  mpe__redis_free(rep);
  return 0;
}

static int eval_argv(mpe__redis *r, mpe__redis_script *s, redisReply **reply, int argc, const char **av,
                     const size_t *al) {
  for (int tries = 0; tries < 2; tries++) {
    int rc;
    if (!s->sha[0] && (rc = load_script(r, s)) < 0) return rc;
    if ((rc = mpe__redis_cmd(r, reply, argc, av, al)) < 0) return rc;
    if ((*reply)->type != REDIS_REPLY_ERROR || strncmp((*reply)->str, "NOSCRIPT", 8)) return 0;
    mpe__redis_free(*reply);
    *reply = NULL;
    s->sha[0] = 0; /* the server restarted: load it again */
  }
  return -EPROTO;
}

int mpe__redis_eval(mpe__redis *r, mpe__redis_script *s, redisReply **reply, int numkeys, int argc,
                    const char **argv, const size_t *lens) {
  char nk[16];
  *reply = NULL;
  const char **av = malloc(sizeof *av * (size_t)(argc + 3));
  size_t *al = malloc(sizeof *al * (size_t)(argc + 3));
  if (!av || !al) {
    free(av);
    free(al);
    return -ENOMEM;
  }
  snprintf(nk, sizeof nk, "%d", numkeys);
  av[0] = "EVALSHA";
  av[1] = s->sha;
  av[2] = nk;
  al[0] = 7;
  al[1] = 40;
  al[2] = strlen(nk);
  for (int i = 0; i < argc; i++) {
    av[i + 3] = argv[i];
    al[i + 3] = lens ? lens[i] : strlen(argv[i]);
  }
  int rc = eval_argv(r, s, reply, argc + 3, av, al);
  free(av);
  free(al);
  return rc;
}
