/* broker.c - the broker's task protocol: a run's batches in a Redis stream,
 * handed to worker hosts through a consumer group.
 *
 * Keys of run R (each expires ttl after the driver's last refresh, so a dead
 * driver leaves nothing; a worker's script never creates a key, so it cannot
 * bring one back):
 *   mpe:runs     zset: run -> the server time (ms) its keys expire
 *   mpe:run:R    hash: lease (ms), attempts, ttl (ms)
 *   mpe:run:R:q  stream of batches {s: the driver's number, d: bytes};
 *                consumer group "w", one consumer per worker host process
 *   mpe:run:R:r  stream of results {s, k: ok|lost, h: host, n: losses, d}
 *
 * A batch is held by the consumer whose pending list has it; its delivery
 * count is the fencing token. The holder renews (XCLAIM JUSTID: idle time 0,
 * count unchanged) while owner and count are still its own. A claim first
 * takes over batches idle longer than the lease (XCLAIM: count + 1), or fails
 * one delivered `attempts` times with "lost" naming the last holder's host,
 * then reads new ones. A completion is one script: accepted only when owner
 * and count are the completer's own, then the batch is acked and deleted and
 * its one result appended: whatever a host that lost its lease sends later
 * finds the batch gone or held by another, and is dropped. Round trips: the
 * driver's n batches one (pipelined); a worker's claim of up to max batches
 * one, their completion one, each renewal one; the driver reads results with
 * blocking XREAD, many at a time. */
#define _GNU_SOURCE
#include <errno.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker.h"
#include "internal.h"

/* KEYS: runs, hash, q, r. ARGV: run, lease ms, attempts, ttl ms. */
static mpe__redis_script open_script = {
  "if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end\n"
  "redis.call('HSET', KEYS[2], 'lease', ARGV[2], 'attempts', ARGV[3], 'ttl', ARGV[4])\n"
  "redis.call('XGROUP', 'CREATE', KEYS[3], 'w', '$', 'MKSTREAM')\n"
  "redis.call('XGROUP', 'CREATE', KEYS[4], 'd', '$', 'MKSTREAM')\n"
  "return 1\n", ""};

/* KEYS: runs, hash, q, r. ARGV: run. The ttl is the run's own. */
static mpe__redis_script refresh_script = {
  "local ttl = redis.call('HGET', KEYS[2], 'ttl')\n"
  "if not ttl or redis.call('EXISTS', KEYS[3]) == 0 or redis.call('EXISTS', KEYS[4]) == 0 then return 0 end\n"
  "ttl = tonumber(ttl)\n"
  "for i = 2, 4 do redis.call('PEXPIRE', KEYS[i], ttl) end\n"
  "local t = redis.call('TIME')\n"
  "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
  "redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])\n"
  "redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)\n"
  "if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end\n"
  "return 1\n", ""};

/* The tasks of a batch (its header's n) and of a reply (done, failed), for
 * the run's counts that `mpengine status` shows (c:sent, c:running, c:done,
 * c:failed in the run's hash). */
#define NTASKS                                                                                  \
  "local function fld(f, name)\n"                                                               \
  "  if type(f) ~= 'table' then return nil end\n"                                               \
  "  for i = 1, #f - 1, 2 do if f[i] == name then return f[i + 1] end end\n"                    \
  "end\n"                                                                                       \
  "local function ntasks(d)\n"                                                                  \
  "  if type(d) == 'string' and #d >= 16 then return (struct.unpack('<I4', d, 9)) end\n"        \
  "  return 0\n"                                                                                \
  "end\n"                                                                                       \
  "local function add(key, f, v) if v ~= 0 then redis.call('HINCRBY', key, f, v) end end\n"
#define OUTCOMES                                                                                \
  "local function outcomes(d)\n"                                                               \
  "  if #d < 32 then return 0, 0 end\n"                                                         \
  "  local n, pos, ok = (struct.unpack('<I4', d, 17)), 33, 0\n"                                 \
  "  for _ = 1, n do\n"                                                                         \
  "    if pos + 15 > #d then break end\n"                                                       \
  "    local st = struct.unpack('<i4', d, pos)\n"                                               \
  "    if st == 0 then ok = ok + 1 end\n"                                                       \
  "    pos = pos + 16 + struct.unpack('<I4', d, pos + 12)\n"                                    \
  "  end\n"                                                                                     \
  "  return ok, n - ok\n"                                                                       \
  "end\n"

/* A consumer "HOST/instance" -> HOST. */
#define HOST_OF "local function host(c) return string.match(c, '^(.*)/[^/]*$') or c end\n"

/* KEYS: hash, q, r. ARGV: me, max. Flat reply: id, token, s, d per batch;
 * -1 when the run is gone. */
static mpe__redis_script claim_script = {
  HOST_OF NTASKS
  "local cfg = redis.call('HMGET', KEYS[1], 'lease', 'attempts')\n"
  "if not cfg[1] or redis.call('EXISTS', KEYS[2]) == 0 then return -1 end\n"
  "local lease, attempts, max = tonumber(cfg[1]), tonumber(cfg[2]), tonumber(ARGV[2])\n"
  "if not lease or not attempts or not max then return -1 end\n"
  "local out = {}\n"
  "local function bad(id) redis.call('XACK', KEYS[2], 'w', id) redis.call('XDEL', KEYS[2], id) end\n"
  "for _, e in ipairs(redis.call('XPENDING', KEYS[2], 'w', 'IDLE', lease, '-', '+', max)) do\n"
  "  local id, n = e[1], e[4]\n"
  "  if n >= attempts then\n"
  "    local ent = redis.call('XRANGE', KEYS[2], id, id)\n"
  "    local f = ent[1] and ent[1][2]\n"
  "    local seq = fld(f, 's') or '-1'\n"
  "    bad(id)\n"
  "    local t = ntasks(fld(f, 'd'))\n"
  "    add(KEYS[1], 'c:running', -t)\n"
  "    add(KEYS[1], 'c:failed', t)\n"
  "    redis.call('XADD', KEYS[3], '*', 's', seq, 'k', 'lost', 'h', host(e[2]), 'n', n)\n"
  "  else\n"
  "    local c = redis.call('XCLAIM', KEYS[2], 'w', ARGV[1], lease, id)\n"
  "    local f = c[1] and c[1][2]\n"
  "    local seq, d = fld(f, 's'), fld(f, 'd')\n"
  "    if seq and d then\n"
  "      out[#out + 1] = id; out[#out + 1] = n + 1\n"
  "      out[#out + 1] = seq; out[#out + 1] = d\n"
  "    elseif c[1] then bad(id) end\n"
  "  end\n"
  "end\n"
  "local left = max - #out / 4\n"
  "if left > 0 then\n"
  "  local rd = redis.call('XREADGROUP', 'GROUP', 'w', ARGV[1], 'COUNT', left, 'STREAMS', KEYS[2], '>')\n"
  "  if rd then\n"
  "    for _, ent in ipairs(rd[1][2]) do\n"
  "      local seq, d = fld(ent[2], 's'), fld(ent[2], 'd')\n"
  "      if seq and d then\n"
  "        out[#out + 1] = ent[1]; out[#out + 1] = 1\n"
  "        add(KEYS[1], 'c:running', ntasks(d))\n"
  "        out[#out + 1] = seq; out[#out + 1] = d\n"
  "      else bad(ent[1]) end\n"
  "    end\n"
  "  end\n"
  "end\n"
  "return out\n", ""};

/* Is batch ARGV[i] still held by ARGV[1] with token ARGV[i + 1]? */
#define HELD                                                                                 \
  "local function held(i)\n"                                                                 \
  "  local p = redis.call('XPENDING', KEYS[1], 'w', ARGV[i], ARGV[i], 1)\n"                  \
  "  return p[1] ~= nil and p[1][2] == ARGV[1] and p[1][4] == tonumber(ARGV[i + 1])\n"       \
  "end\n"

/* KEYS: q. ARGV: me, then id, token per batch. */
static mpe__redis_script renew_script = {
  HELD
  "if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end\n"
  "local out = {}\n"
  "for i = 2, #ARGV, 2 do\n"
  "  if held(i) then\n"
  "    redis.call('XCLAIM', KEYS[1], 'w', ARGV[1], 0, ARGV[i], 'JUSTID')\n"
  "    out[#out + 1] = 1\n"
  "  else out[#out + 1] = 0 end\n"
  "end\n"
  "return out\n", ""};

/* KEYS: q, r, hash. ARGV: me, then id, token, result per batch. */
static mpe__redis_script complete_script = {
  HOST_OF HELD NTASKS OUTCOMES
  "if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('EXISTS', KEYS[2]) == 0 or\n"
  "   redis.call('EXISTS', KEYS[3]) == 0 then return -1 end\n"
  "local out = {}\n"
  "for i = 2, #ARGV, 3 do\n"
  "  if held(i) then\n"
  "    local ent = redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i])\n"
  "    local f = ent[1] and ent[1][2]\n"
  "    redis.call('XACK', KEYS[1], 'w', ARGV[i])\n"
  "    redis.call('XDEL', KEYS[1], ARGV[i])\n"
  "    redis.call('XADD', KEYS[2], '*', 's', fld(f, 's') or '-1', 'k', 'ok', 'h', host(ARGV[1]), 'd', ARGV[i + 2])\n"
  "    local ok, bad = outcomes(ARGV[i + 2])\n"
  "    add(KEYS[3], 'c:running', -ntasks(fld(f, 'd')))\n"
  "    add(KEYS[3], 'c:done', ok)\n"
  "    add(KEYS[3], 'c:failed', bad)\n"
  "    out[#out + 1] = 1\n"
  "  else out[#out + 1] = 0 end\n"
  "end\n"
  "return out\n", ""};

/* KEYS: q, hash. ARGV: me, then id, token per batch: a batch still held is put
 * back as a new entry (same s, d), so the next claim is a first delivery. */
static mpe__redis_script handback_script = {
  HELD NTASKS
  "if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('EXISTS', KEYS[2]) == 0 then return -1 end\n"
  "local out = {}\n"
  "for i = 2, #ARGV, 2 do\n"
  "  if held(i) then\n"
  "    local ent = redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i])\n"
  "    local f = ent[1] and ent[1][2]\n"
  "    redis.call('XACK', KEYS[1], 'w', ARGV[i])\n"
  "    redis.call('XDEL', KEYS[1], ARGV[i])\n"
  "    if fld(f, 's') and fld(f, 'd') then\n"
  "      redis.call('XADD', KEYS[1], '*', 's', fld(f, 's'), 'd', fld(f, 'd'))\n"
  "    end\n"
  "    add(KEYS[2], 'c:running', -ntasks(fld(f, 'd')))\n"
  "    out[#out + 1] = 1\n"
  "  else out[#out + 1] = 0 end\n"
  "end\n"
  "return out\n", ""};

typedef struct keys {
  char hash[160], q[164], r[164];
} keys;

static int keys_of(const char *run, keys *k) {
  if (!run || !run[0] || strlen(run) > 120) return -EINVAL;
  snprintf(k->hash, sizeof k->hash, "mpe:run:%s", run);
  snprintf(k->q, sizeof k->q, "mpe:run:%s:q", run);
  snprintf(k->r, sizeof k->r, "mpe:run:%s:r", run);
  return 0;
}

void mpe__broker_release(mpe__broker_hold *h) {
  for (int i = 0; i < 2; i++) {
    mpe__redis_free(h->rep[i]);
    h->rep[i] = NULL;
  }
}

/* An error reply is a protocol error: its text goes nowhere but r's error. */
static int reply_error(redisReply *rep) {
  int bad = rep->type == REDIS_REPLY_ERROR;
  mpe__redis_free(rep);
  return bad ? -EPROTO : 0;
}

int mpe__broker_open(mpe__redis *r, const char *run, const mpe__broker_opts *o) {
  keys k;
  if (keys_of(run, &k) < 0) return -EINVAL;
  mpe__broker_opts d = {10.0, 3, 30.0};
  if (o) d = *o;
  if (d.lease <= 0 || d.attempts < 1 || d.ttl <= 0) return -EINVAL;
  char lease[32], attempts[32], ttl[32];
  snprintf(lease, sizeof lease, "%.0f", d.lease * 1000);
  snprintf(attempts, sizeof attempts, "%d", d.attempts);
  snprintf(ttl, sizeof ttl, "%.0f", d.ttl * 1000);
  const char *argv[] = {"mpe:runs", k.hash, k.q, k.r, run, lease, attempts, ttl};
  redisReply *rep;
  int rc = mpe__redis_eval(r, &open_script, &rep, 4, 8, argv, NULL);
  if (rc < 0) return rc;
  int made = rep->type == REDIS_REPLY_INTEGER && rep->integer == 1;
  if ((rc = reply_error(rep)) < 0) return rc;
  if (!made) return -EEXIST;
  rc = mpe__broker_refresh(r, run);
  return rc < 0 ? rc : 0;
}

int mpe__broker_refresh(mpe__redis *r, const char *run) {
  keys k;
  if (keys_of(run, &k) < 0) return -EINVAL;
  const char *argv[] = {"mpe:runs", k.hash, k.q, k.r, run};
  redisReply *rep;
  int rc = mpe__redis_eval(r, &refresh_script, &rep, 4, 5, argv, NULL);
  if (rc < 0) return rc;
  int alive = rep->type == REDIS_REPLY_INTEGER && rep->integer == 1;
  if ((rc = reply_error(rep)) < 0) return rc;
  return alive;
}

int mpe__broker_submit(mpe__redis *r, const char *run, int64_t first_seq, int n, const void *const *data,
                       const size_t *lens) {
  keys k;
  if (keys_of(run, &k) < 0 || n < 0) return -EINVAL;
  for (int i = 0; i < n; i++) {
    char seq[32];
    snprintf(seq, sizeof seq, "%" PRId64, first_seq + i);
    const char *argv[] = {"XADD", k.q, "*", "s", seq, "d", (const char *)data[i]};
    size_t al[] = {4, strlen(k.q), 1, 1, strlen(seq), 1, lens[i]};
    int rc = mpe__redis_append(r, 7, argv, al);
    if (rc < 0) return rc;
    uint32_t t = 0; /* the batch's tasks (its header's n), for status */
    if (lens[i] >= 16) memcpy(&t, (const char *)data[i] + 8, sizeof t);
    char tasks[16];
    snprintf(tasks, sizeof tasks, "%u", (unsigned)t);
    const char *inc[] = {"HINCRBY", k.hash, "c:sent", tasks};
    if ((rc = mpe__redis_append(r, 4, inc, NULL)) < 0) return rc;
  }
  /* wakes idle hosts (mpe__broker_wait_work) */
  const char *ev[] = {"XADD", "mpe:events", "MAXLEN", "~", "1000", "*", "r", run};
  const char *evx[] = {"PEXPIRE", "mpe:events", "3600000"};
  int rc = mpe__redis_append(r, 8, ev, NULL);
  if (rc < 0 || (rc = mpe__redis_append(r, 3, evx, NULL)) < 0) return rc;
  int bad = 0;
  for (int i = 0; i < 2 * n + 2; i++) {
    redisReply *rep;
    if ((rc = mpe__redis_take(r, &rep)) < 0) return rc;
    if (reply_error(rep) < 0 && i < 2 * n) bad = 1; /* a broken wake-up only delays hosts */
  }
  return bad ? -EPROTO : n;
}

/* An entry's fields {f, v, ...}: the value of f (NULL if none). */
static redisReply *field(redisReply *fields, const char *f) {
  if (!fields || fields->type != REDIS_REPLY_ARRAY) return NULL;
  for (size_t i = 0; i + 1 < fields->elements; i += 2) {
    redisReply *name = fields->element[i];
    if (name->type == REDIS_REPLY_STRING && !strcmp(name->str, f)) return fields->element[i + 1];
  }
  return NULL;
}

static int64_t num_of(redisReply *v) {
  if (!v) return -1;
  if (v->type == REDIS_REPLY_INTEGER) return v->integer;
  if (v->type == REDIS_REPLY_STRING) return strtoll(v->str, NULL, 10);
  return -1;
}

static void copy_id(char dst[48], const redisReply *v) {
  snprintf(dst, 48, "%s", v && v->type == REDIS_REPLY_STRING ? v->str : "");
}

/* The entries of the one stream an XREAD/XREADGROUP reply holds: 1 with
 * *ents, each entry checked (an array whose first element is a string id);
 * 0 for a nil reply (the wait ended empty); -ENOENT for an error reply;
 * -EPROTO for any other shape: what the broker sends is checked before use. */
static int stream_entries(const redisReply *rep, redisReply **ents) {
  if (rep->type == REDIS_REPLY_NIL) return 0;
  if (rep->type == REDIS_REPLY_ERROR) return -ENOENT;
  if (rep->type != REDIS_REPLY_ARRAY || rep->elements < 1 || rep->element[0]->type != REDIS_REPLY_ARRAY ||
      rep->element[0]->elements < 2 || rep->element[0]->element[1]->type != REDIS_REPLY_ARRAY)
    return -EPROTO;
  redisReply *e = rep->element[0]->element[1];
  for (size_t i = 0; i < e->elements; i++) {
    const redisReply *x = e->element[i];
    if (x->type != REDIS_REPLY_ARRAY || x->elements < 1 || x->element[0]->type != REDIS_REPLY_STRING)
      return -EPROTO;
  }
  *ents = e;
  return 1;
}

int mpe__broker_results(mpe__redis *r, const char *run, char last[48], double timeout, mpe__broker_result *out,
                        int max, mpe__broker_hold *hold) {
  keys k;
  hold->rep[0] = hold->rep[1] = NULL;
  if (keys_of(run, &k) < 0 || max < 1) return -EINVAL;
  char count[16], block[32];
  snprintf(count, sizeof count, "%d", max);
  snprintf(block, sizeof block, "%.0f", timeout > 0 ? timeout * 1000 : 0);
  int rc, trim = strcmp(last, "0") != 0;
  if (trim) { /* what was read before goes, in the same round trip */
    const char *targv[] = {"XTRIM", k.r, "MINID", last};
    if ((rc = mpe__redis_append(r, 4, targv, NULL)) < 0) return rc;
  }
  const char *argv[] = {"XREAD", "COUNT", count, "BLOCK", block, "STREAMS", k.r, last};
  /* timeout <= 0: no BLOCK at all (BLOCK 0 would wait forever) */
  int argc = timeout > 0 ? 8 : 6;
  if (timeout <= 0) {
    argv[3] = "STREAMS";
    argv[4] = k.r;
    argv[5] = last;
  }
  if ((rc = mpe__redis_set_timeout(r, mpe__redis_timeout(r) + (timeout > 0 ? timeout : 0))) < 0) return rc;
  if ((rc = mpe__redis_append(r, argc, argv, NULL)) < 0) return rc;
  redisReply *rep;
  if (trim) {
    if ((rc = mpe__redis_take(r, &rep)) < 0) return rc;
    mpe__redis_free(rep);
  }
  rc = mpe__redis_take(r, &rep);
  if (rc < 0) return rc;
  mpe__redis_set_timeout(r, mpe__redis_timeout(r));
  redisReply *ents = NULL;
  if ((rc = stream_entries(rep, &ents)) <= 0) {
    mpe__redis_free(rep);
    return rc == -ENOENT ? -EPROTO : rc;
  }
  int n = 0;
  for (size_t i = 0; i < ents->elements && n < max; i++) {
    redisReply *e = ents->element[i], *f = e->elements > 1 ? e->element[1] : NULL, *v;
    mpe__broker_result *o = &out[n++];
    memset(o, 0, sizeof *o);
    copy_id(o->id, e->element[0]);
    copy_id(last, e->element[0]);
    o->seq = num_of(field(f, "s"));
    v = field(f, "k");
    o->kind = v && v->type == REDIS_REPLY_STRING && !strcmp(v->str, "ok") ? MPE__BROKER_OK : MPE__BROKER_LOST;
    o->lost = (int)num_of(field(f, "n"));
    v = field(f, "h");
    snprintf(o->host, sizeof o->host, "%s", v && v->type == REDIS_REPLY_STRING ? v->str : "?");
    if ((v = field(f, "d")) && v->type == REDIS_REPLY_STRING) {
      o->data = v->str;
      o->len = v->len;
    }
  }
  hold->rep[0] = rep;
  return n;
}

int mpe__broker_close(mpe__redis *r, const char *run) {
  keys k;
  if (keys_of(run, &k) < 0) return -EINVAL;
  const char *del[] = {"DEL", k.hash, k.q, k.r};
  const char *zrem[] = {"ZREM", "mpe:runs", run};
  int rc;
  if ((rc = mpe__redis_append(r, 4, del, NULL)) < 0 || (rc = mpe__redis_append(r, 3, zrem, NULL)) < 0)
    return rc;
  for (int i = 0; i < 2; i++) {
    redisReply *rep;
    if ((rc = mpe__redis_take(r, &rep)) < 0) return rc;
    mpe__redis_free(rep);
  }
  return 0;
}

/* Fills out from the flat claim reply. */
static int claimed(redisReply *rep, mpe__broker_task *out, int max) {
  int n = 0;
  for (size_t i = 0; i + 3 < rep->elements && n < max; i += 4) {
    mpe__broker_task *t = &out[n++];
    copy_id(t->id, rep->element[i]);
    t->token = (uint64_t)num_of(rep->element[i + 1]);
    t->seq = num_of(rep->element[i + 2]);
    const redisReply *d = rep->element[i + 3];
    t->data = d->type == REDIS_REPLY_STRING ? d->str : NULL;
    t->len = d->type == REDIS_REPLY_STRING ? d->len : 0;
  }
  return n;
}

int mpe__broker_claim(mpe__redis *r, const char *run, const char *me, int max, double block,
                      mpe__broker_task *out, mpe__broker_hold *hold) {
  keys k;
  hold->rep[0] = hold->rep[1] = NULL;
  if (keys_of(run, &k) < 0 || max < 1 || !me || !strchr(me, '/')) return -EINVAL;
  char smax[16];
  snprintf(smax, sizeof smax, "%d", max);
  const char *argv[] = {k.hash, k.q, k.r, me, smax};
  redisReply *rep;
  int rc = mpe__redis_eval(r, &claim_script, &rep, 3, 5, argv, NULL);
  if (rc < 0) return rc;
  if (rep->type == REDIS_REPLY_INTEGER) {
    mpe__redis_free(rep);
    return -ENOENT;
  }
  if (rep->type != REDIS_REPLY_ARRAY) return reply_error(rep) < 0 ? -EPROTO : -EPROTO;
  if (rep->elements > 0 || block <= 0) {
    hold->rep[0] = rep;
    return claimed(rep, out, max);
  }
  mpe__redis_free(rep);
  /* nothing there: wait for new batches in a blocking read */
  char ms[32];
  snprintf(ms, sizeof ms, "%.0f", block * 1000 < 1 ? 1 : block * 1000);
  const char *rd[] = {"XREADGROUP", "GROUP", "w", me, "COUNT", smax, "BLOCK", ms, "STREAMS", k.q, ">"};
  if ((rc = mpe__redis_set_timeout(r, mpe__redis_timeout(r) + block)) < 0) return rc;
  rc = mpe__redis_cmd(r, &rep, 11, rd, NULL);
  if (rc < 0) return rc;
  mpe__redis_set_timeout(r, mpe__redis_timeout(r));
  redisReply *ents = NULL;
  if ((rc = stream_entries(rep, &ents)) <= 0) { /* -ENOENT: NOGROUP, the stream expired meanwhile */
    mpe__redis_free(rep);
    return rc;
  }
  int n = 0;
  for (size_t i = 0; i < ents->elements && n < max; i++) {
    redisReply *e = ents->element[i], *f = e->elements > 1 ? e->element[1] : NULL, *d = field(f, "d");
    mpe__broker_task *t = &out[n++];
    copy_id(t->id, e->element[0]);
    t->token = 1; /* a first delivery */
    t->seq = num_of(field(f, "s"));
    t->data = d && d->type == REDIS_REPLY_STRING ? d->str : NULL;
    t->len = d && d->type == REDIS_REPLY_STRING ? d->len : 0;
  }
  hold->rep[0] = rep;
  return n;
}

/* Runs script with me and per batch its id, token (and a result): the
 * integer per batch into flags. */
static int per_batch(mpe__redis *r, mpe__redis_script *s, int nkeys, const char *const *kv, const char *me,
                     int n, const mpe__broker_task *tasks, const void *const *data, const size_t *lens,
                     int *flags) {
  int per = data ? 3 : 2, argc = nkeys + 1 + per * n;
  const char **argv = calloc((size_t)argc, sizeof *argv);
  size_t *al = calloc((size_t)argc, sizeof *al);
  char(*tok)[24] = calloc((size_t)n + 1, sizeof *tok);
  int rc = -ENOMEM;
  if (!argv || !al || !tok) goto out;
  for (int i = 0; i < nkeys; i++) argv[i] = kv[i], al[i] = strlen(kv[i]);
  argv[nkeys] = me;
  al[nkeys] = strlen(me);
  for (int i = 0; i < n; i++) {
    int j = nkeys + 1 + per * i;
    snprintf(tok[i], sizeof tok[i], "%" PRIu64, tasks[i].token);
    argv[j] = tasks[i].id, al[j] = strlen(tasks[i].id);
    argv[j + 1] = tok[i], al[j + 1] = strlen(tok[i]);
    if (data) argv[j + 2] = (const char *)data[i], al[j + 2] = lens[i];
  }
  redisReply *rep;
  if ((rc = mpe__redis_eval(r, s, &rep, nkeys, argc, argv, al)) < 0) goto out;
  if (rep->type == REDIS_REPLY_INTEGER) rc = -ENOENT;
  else if (rep->type != REDIS_REPLY_ARRAY || rep->elements != (size_t)n) rc = -EPROTO;
  else {
    for (int i = 0; i < n; i++) flags[i] = rep->element[i]->integer == 1;
    rc = 0;
  }
  mpe__redis_free(rep);
out:
  free(argv);
  free(al);
  free(tok);
  return rc;
}

int mpe__broker_renew(mpe__redis *r, const char *run, const char *me, int n, const mpe__broker_task *tasks,
                      int *held) {
  keys k;
  if (keys_of(run, &k) < 0 || n < 0) return -EINVAL;
  if (n == 0) return 0;
  const char *kv[] = {k.q};
  return per_batch(r, &renew_script, 1, kv, me, n, tasks, NULL, NULL, held);
}

int mpe__broker_complete(mpe__redis *r, const char *run, const char *me, int n, const mpe__broker_task *tasks,
                         const void *const *data, const size_t *lens, int *accepted) {
  keys k;
  if (keys_of(run, &k) < 0 || n < 0) return -EINVAL;
  if (n == 0) return 0;
  const char *kv[] = {k.q, k.r, k.hash};
  return per_batch(r, &complete_script, 3, kv, me, n, tasks, data, lens, accepted);
}

int mpe__broker_handback(mpe__redis *r, const char *run, const char *me, int n, const mpe__broker_task *tasks,
                         int *back) {
  keys k;
  if (keys_of(run, &k) < 0 || n < 0) return -EINVAL;
  if (n == 0) return 0;
  const char *kv[] = {k.q, k.hash};
  return per_batch(r, &handback_script, 2, kv, me, n, tasks, NULL, NULL, back);
}

double mpe__broker_lease(mpe__redis *r, const char *run) {
  keys k;
  if (keys_of(run, &k) < 0) return -1;
  const char *argv[] = {"HGET", k.hash, "lease"};
  redisReply *rep;
  if (mpe__redis_cmd(r, &rep, 3, argv, NULL) < 0) return -1;
  double lease = rep->type == REDIS_REPLY_STRING ? atof(rep->str) / 1000 : -1;
  mpe__redis_free(rep);
  return lease;
}

/* KEYS: runs. The runs whose keys have not expired (the others leave the set). */
static mpe__redis_script runs_script = {
  "local t = redis.call('TIME')\n"
  "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
  "redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)\n"
  "return redis.call('ZRANGE', KEYS[1], 0, -1)\n", ""};

int mpe__broker_runs(mpe__redis *r, char (*runs)[128], int max) {
  const char *argv[] = {"mpe:runs"};
  redisReply *rep;
  int rc = mpe__redis_eval(r, &runs_script, &rep, 1, 1, argv, NULL);
  if (rc < 0) return rc;
  int n = 0;
  for (size_t i = 0; rep->type == REDIS_REPLY_ARRAY && i < rep->elements && n < max; i++)
    if (rep->element[i]->type == REDIS_REPLY_STRING && rep->element[i]->len < 128)
      snprintf(runs[n++], 128, "%s", rep->element[i]->str);
  mpe__redis_free(rep);
  return n;
}

void mpe__broker_lost_text(const mpe__broker_result *res, char *buf, size_t n) {
  snprintf(buf, n, "Pool: task lost %d time%s (last on host %s)", res->lost, res->lost == 1 ? "" : "s",
           res->host);
}

/* A context field lives in the run's hash as "c:FIELD": it expires and goes
 * with the run. */
static int ctx_field(const char *field, char *buf, size_t n) {
  if (!field || !field[0] || strlen(field) + 3 > n) return -EINVAL;
  snprintf(buf, n, "c:%s", field);
  return 0;
}

int mpe__broker_put(mpe__redis *r, const char *run, const char *field, const void *data, size_t len) {
  keys k;
  char f[200];
  if (keys_of(run, &k) < 0 || ctx_field(field, f, sizeof f) < 0) return -EINVAL;
  const char *argv[] = {"HSET", k.hash, f, data ? (const char *)data : ""};
  size_t al[] = {4, strlen(k.hash), strlen(f), data ? len : 0};
  redisReply *rep;
  int rc = mpe__redis_cmd(r, &rep, 4, argv, al);
  return rc < 0 ? rc : reply_error(rep);
}

int mpe__broker_get(mpe__redis *r, const char *run, const char *field, mpe_buf *out) {
  keys k;
  char f[200];
  if (keys_of(run, &k) < 0 || ctx_field(field, f, sizeof f) < 0) return -EINVAL;
  const char *argv[] = {"HGET", k.hash, f};
  redisReply *rep;
  int rc = mpe__redis_cmd(r, &rep, 3, argv, NULL);
  if (rc < 0) return rc;
  if (rep->type == REDIS_REPLY_NIL) rc = 0;
  else if (rep->type != REDIS_REPLY_STRING) rc = -EPROTO;
  else rc = mpe_buf_add(out, rep->str, rep->len) < 0 ? -ENOMEM : 1;
  mpe__redis_free(rep);
  return rc;
}

int mpe__broker_wait_work(mpe__redis *r, char last[48], double timeout) {
  redisReply *rep;
  int rc;
  if (!last[0]) { /* the newest event now: what comes later wakes */
    const char *argv[] = {"XREVRANGE", "mpe:events", "+", "-", "COUNT", "1"};
    if ((rc = mpe__redis_cmd(r, &rep, 6, argv, NULL)) < 0) return rc;
    if (rep->type == REDIS_REPLY_ARRAY && rep->elements == 1 && rep->element[0]->type == REDIS_REPLY_ARRAY &&
        rep->element[0]->elements >= 1 && rep->element[0]->element[0]->type == REDIS_REPLY_STRING &&
        rep->element[0]->element[0]->len < 48)
      snprintf(last, 48, "%s", rep->element[0]->element[0]->str);
    else
      strcpy(last, "0-0");
    mpe__redis_free(rep);
  }
  char ms[32];
  snprintf(ms, sizeof ms, "%ld", (long)(timeout * 1000) > 0 ? (long)(timeout * 1000) : 1);
  const char *argv[] = {"XREAD", "COUNT", "100", "BLOCK", ms, "STREAMS", "mpe:events", last};
  double before = mpe__redis_timeout(r);
  mpe__redis_set_timeout(r, before + timeout);
  rc = mpe__redis_cmd(r, &rep, 8, argv, NULL);
  mpe__redis_set_timeout(r, before);
  if (rc < 0) return rc;
  redisReply *ents = NULL;
  int n = stream_entries(rep, &ents);
  if (n < 0) { /* not a stream (written by hand?): wait as if nothing came */
    mpe__redis_free(rep);
    mpe_sleep(timeout, NULL);
    return 0;
  }
  if (n > 0 && ents->elements > 0) {
    redisReply *e = ents->element[ents->elements - 1];
    if (e->type == REDIS_REPLY_ARRAY && e->elements >= 1 && e->element[0]->type == REDIS_REPLY_STRING &&
        e->element[0]->len < 48)
      snprintf(last, 48, "%s", e->element[0]->str);
  }
  mpe__redis_free(rep);
  return n > 0 ? 1 : 0;
}
