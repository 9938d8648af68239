/* broker.h - the broker: a Redis server that hands a run's batches to worker
 * hosts (issue: the pool across hosts). Two layers, both internal for now:
 *
 * redis_conn.c: one connection to Redis through hiredis (RESP2, no TLS):
 * the URL (redis://[[user]:password@]host[:port][/db] or
 * unix:///path?password=..), AUTH, SELECT, its masked form for messages (the
 * password never appears in any text this layer makes), the rule that a host
 * off loopback must carry a password, timeouts, reconnecting with backoff,
 * server-side scripts by their SHA1 (loaded again after a broker restart).
 *
 * broker.c: the task protocol over streams and consumer groups (the key
 * layout, the leases, delivery counts and fencing are described there). */
#ifndef MPE_BROKER_H
#define MPE_BROKER_H

#include <stddef.h>
#include <stdint.h>

/* ------------------------------------------------------------ connection */

typedef struct mpe__redis_url {
  char host[256]; /* empty for a unix socket */
  int port;
  char path[108]; /* the socket's path, or empty */
  char user[128];
  char pass[256];
  int db;
} mpe__redis_url;

/* Parses url into *u: 0, or -EINVAL with why in err (the password never). */
int mpe__redis_url_parse(const char *url, mpe__redis_url *u, char *err, size_t errlen);
/* "redis://host:port" or "unix:///path": what messages show. */
void mpe__redis_url_display(const mpe__redis_url *u, char *buf, size_t n);
/* 1 when u names this machine (a unix socket, localhost, 127.0.0.0/8, ::1). */
int mpe__redis_url_is_local(const mpe__redis_url *u);

typedef struct mpe__redis mpe__redis;
struct redisReply;

/* Connects, authenticates and selects the database: 0, or < 0 with the
 * reason in err: -EINVAL (bad URL), -EACCES (no password off loopback, or
 * refused), -ECONNREFUSED/-EHOSTUNREACH/MPE_ETIMEDOUT/-EIO (not reached).
 * timeout bounds the connect and each command (seconds). */
int mpe__redis_connect(mpe__redis **out, const char *url, double timeout, char *err, size_t errlen);
void mpe__redis_close(mpe__redis *r);
/* Frees a handle inherited through fork without touching its socket: the
 * parent's, whose descriptor number may be another file's here by now. */
void mpe__redis_abandon(mpe__redis *r);
/* The last error's text ("redis://host:port: ..."), never the password. */
const char *mpe__redis_error(const mpe__redis *r);
const char *mpe__redis_display(const mpe__redis *r);
/* 1 while the connection is usable (no I/O error since it was made). */
int mpe__redis_ok(const mpe__redis *r);
/* Connects again until it works or deadline (mpe_time; < 0: forever),
 * waiting 50 ms, doubling to 2 s, with jitter, between tries: 0, or < 0. */
int mpe__redis_reconnect(mpe__redis *r, double deadline);

/* One command, argv form: 0 with *reply (free with mpe__redis_free), or < 0
 * (the connection is then broken: reconnect). An error reply is a reply. */
int mpe__redis_cmd(mpe__redis *r, struct redisReply **reply, int argc, const char **argv, const size_t *lens);
/* Pipelining: queue commands, then take their replies in order. */
int mpe__redis_append(mpe__redis *r, int argc, const char **argv, const size_t *lens);
int mpe__redis_take(mpe__redis *r, struct redisReply **reply);
void mpe__redis_free(struct redisReply *reply);
/* The read timeout for the next commands (seconds; a blocking read adds its
 * own wait to the usual one). */
int mpe__redis_set_timeout(mpe__redis *r, double timeout);
double mpe__redis_timeout(const mpe__redis *r);

/* A server-side script: its source and SHA1 (hex, filled on first use). */
typedef struct mpe__redis_script {
  const char *src;
  char sha[41];
} mpe__redis_script;
/* Pipelines EVALSHA of s (numkeys keys first in argv); after NOSCRIPT (a
 * restarted server) it loads the script and runs it again. */
int mpe__redis_eval(mpe__redis *r, mpe__redis_script *s, struct redisReply **reply, int numkeys, int argc,
                    const char **argv, const size_t *lens);

/* -------------------------------------------------------------- protocol */

/* A run's settings, kept on the broker beside its batches. */
typedef struct mpe__broker_opts {
  double lease; /* seconds a holder may be silent before its batch is taken over (10) */
  int attempts; /* times a batch may be lost before it fails (3) */
  double ttl;   /* seconds the run's keys outlive the driver's last refresh (30) */
} mpe__broker_opts;

/* A batch handed to a worker host: the stream entry's id, the fencing token
 * (its delivery count when claimed), the driver's number for it, the bytes. */
typedef struct mpe__broker_task {
  char id[48];
  uint64_t token;
  int64_t seq;
  const char *data;
  size_t len;
} mpe__broker_task;

enum { MPE__BROKER_OK = 1, MPE__BROKER_LOST = 2 };

/* A batch's one result: done (data, by host), or lost `lost` times (last on host). */
typedef struct mpe__broker_result {
  char id[48];
  int64_t seq;
  int kind;
  int lost;
  char host[128];
  const char *data;
  size_t len;
} mpe__broker_result;

/* Bytes of replies the tasks and results above point into: keep until used. */
typedef struct mpe__broker_hold {
  struct redisReply *rep[2];
} mpe__broker_hold;
void mpe__broker_release(mpe__broker_hold *h);

/* Driver. open: 0, or -EEXIST when the run is already there. refresh: keeps
 * every key of the run alive for ttl more (1), or 0 when the broker lost the
 * run. submit: n batches, numbered first_seq.., pipelined: n, or < 0. results:
 * up to max results after *last (an entry id, "0" at first), waiting up to
 * timeout for the first; consumed ones are trimmed: the count, 0 on timeout. */
int mpe__broker_open(mpe__redis *r, const char *run, const mpe__broker_opts *o);
int mpe__broker_refresh(mpe__redis *r, const char *run);
int mpe__broker_submit(mpe__redis *r, const char *run, int64_t first_seq, int n, const void *const *data,
                       const size_t *lens);
int mpe__broker_results(mpe__redis *r, const char *run, char last[48], double timeout, mpe__broker_result *out,
                        int max, mpe__broker_hold *hold);
int mpe__broker_close(mpe__redis *r, const char *run);

/* Worker host; me is "HOST/instance" (unique per worker host process).
 * claim: up to max batches, first those whose lease lapsed (a batch lost
 * `attempts` times fails instead), then new ones, waiting up to block for
 * new ones when there were none: the count, or -ENOENT (the run is gone).
 * renew: held[i] = 1 while me still holds batch i (its lease restarts), 0
 * when it was taken over; -ENOENT when the run is gone. complete: results of
 * n batches held; accepted[i] = 1, or 0 when me no longer holds batch i (its
 * result is dropped); -ENOENT when the run is gone. */
int mpe__broker_claim(mpe__redis *r, const char *run, const char *me, int max, double block,
                      mpe__broker_task *out, mpe__broker_hold *hold);
int mpe__broker_renew(mpe__redis *r, const char *run, const char *me, int n, const mpe__broker_task *tasks,
                      int *held);
int mpe__broker_complete(mpe__redis *r, const char *run, const char *me, int n, const mpe__broker_task *tasks,
                         const void *const *data, const size_t *lens, int *accepted);
/* handback: each batch me still holds goes back to the stream as a new one
 * (back[i] = 1; its next claim is a first delivery), 0 when no longer held.
 * lease: the run's lease in seconds, or < 0. runs: names of the live runs
 * (up to max): the count, or < 0. */
int mpe__broker_handback(mpe__redis *r, const char *run, const char *me, int n, const mpe__broker_task *tasks,
                         int *back);
double mpe__broker_lease(mpe__redis *r, const char *run);
int mpe__broker_runs(mpe__redis *r, char (*runs)[128], int max);
/* The run's context: what its driver stores for the hosts (the Lua
 * module's code, key and script; the pool's options), kept and expired with
 * the run. put: 0 or < 0. get: 1 with the bytes appended to out, 0 when
 * missing, < 0. */
struct mpe_buf;
int mpe__broker_put(mpe__redis *r, const char *run, const char *field, const void *data, size_t len);
int mpe__broker_get(mpe__redis *r, const char *run, const char *field, struct mpe_buf *out);
/* An idle host's wait: blocks until a driver submits (mpe:events, one entry
 * per submit) after the event last[] (empty at first: the newest now), or
 * timeout: 1 (last[] moved on), 0, or < 0. */
int mpe__broker_wait_work(mpe__redis *r, char last[48], double timeout);
/* "Pool: task lost 3 times (last on host NAME)" */
void mpe__broker_lost_text(const mpe__broker_result *res, char *buf, size_t n);

#endif
