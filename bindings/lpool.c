/* lpool.c - mp.Pool's C side in the parent: the Lua binding of the engine
 * pool (lpool_worker.c is what runs in a worker).
 *
 * The engine owns the pool: workers and their replacement, batches,
 * stamps, timeouts, blame, the crash-loop guard, maxtasksperchild, the
 * initializer's failure and memory_limit (engine/src/pool*.c). Here, a run
 * of a Lua list becomes tasks (each item encoded by the codec behind a
 * 13-byte header: the function's id, the arena ref of its encoding, whether
 * the item is an argument list), submitted as one engine batch; results
 * come back as Lua values stored straight into the job's tables
 * (job.values[i], or job.errors[i] through pool.lua's on_error), many per
 * call. A range maps the engine's task ids of one submit to the job's
 * indexes. A function's encoding lives in the arena (B.fn) while pool.lua
 * names it or a task outstanding uses it.
 *
 * pool.lua keeps what is Lua's only: function ids, jobs, AsyncResult, the
 * imaps, callbacks and the progress bar. A Pool that travels (a task that
 * captured it) arrives as a copy that knows only its owner and token: its
 * methods refuse to run anywhere but in the process that made it. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lpool.h"

static const mpel_class pool_class;

/* ------------------------------------------------------------- helpers */

static lpool *to_pool(lua_State *L, int idx) {
  lpool *lp = luaL_checkudata(L, idx, "Pool");
  lp->L = L;
  return lp;
}

/* The pool at idx, which must be this process's own and running. */
static lpool *own_pool(lua_State *L, int idx) {
  lpool *lp = to_pool(L, idx);
  if (!lp->p || lp->owner != mpe_self_pid()) luaL_error(L, "Pool: can only be used from the process that made it");
  return lp;
}

static const char *signame(int sig) {
  switch (sig) {
  case SIGHUP: return " (SIGHUP)";
  case SIGINT: return " (SIGINT)";
  case SIGQUIT: return " (SIGQUIT)";
  case SIGILL: return " (SIGILL)";
  case SIGABRT: return " (SIGABRT)";
  case SIGBUS: return " (SIGBUS)";
  case SIGFPE: return " (SIGFPE)";
  case SIGKILL: return " (SIGKILL)";
  case SIGSEGV: return " (SIGSEGV)";
  case SIGPIPE: return " (SIGPIPE)";
  case SIGALRM: return " (SIGALRM)";
  case SIGTERM: return " (SIGTERM)";
  case SIGUSR1: return " (SIGUSR1)";
  case SIGUSR2: return " (SIGUSR2)";
  default: return "";
  }
}

/* In the parent, around each worker's fork: the references it inherits. */
static void p_before_fork(void *arg, int failed) {
  lpool *lp = arg;
  if (!failed) mpel_child_prepare(lp->L);
  mpel_handles_fork(lp->L, failed ? MPEL_FORK_FAILED : MPEL_FOR_CHILD);
}

/* ------------------------------------------------------------ the ranges */

static range *find_range(lpool *lp, uint64_t id) {
  size_t lo = 0, hi = lp->rlen;
  while (lo < hi) { /* the last range whose first id <= id */
    size_t mid = (lo + hi) / 2;
    if (lp->r[lp->rhead + mid].first <= id)
      lo = mid + 1;
    else
      hi = mid;
  }
  if (lo == 0) return NULL;
  range *g = &lp->r[lp->rhead + lo - 1];
  return id - g->first < g->n ? g : NULL;
}

static fnblock *find_fn(lpool *lp, uint32_t fid) {
  for (size_t i = lp->nfns; i-- > 0;)
    if (lp->fns[i].fid == fid) return &lp->fns[i];
  return NULL;
}

/* Frees the function's block once it is forgotten and unused. */
static void fn_settle(lpool *lp, fnblock *f) {
  if (!f->forgotten || f->uses) return;
  if (f->ref) mpe_free(mpe_deref(f->ref));
  *f = lp->fns[--lp->nfns];
}

/* A range whose last task has its result: its function is used less. */
static void range_done(lpool *lp, range *g) {
  fnblock *f = find_fn(lp, g->fid);
  if (!f) return;
  f->uses -= g->n;
  fn_settle(lp, f);
}

static void pop_ranges(lua_State *L, lpool *lp) {
  while (lp->rlen && lp->r[lp->rhead].left == 0) {
    luaL_unref(L, LUA_REGISTRYINDEX, lp->r[lp->rhead].job);
    lp->rhead++;
    lp->rlen--;
  }
  if (!lp->rlen) lp->rhead = 0;
}

static void add_range(lua_State *L, lpool *lp, int job, uint32_t fid, uint64_t first, lua_Integer base,
                      size_t n, int stream) {
  if (lp->rhead + lp->rlen == lp->rcap) {
    if (lp->rhead) {
      memmove(lp->r, lp->r + lp->rhead, lp->rlen * sizeof *lp->r);
      lp->rhead = 0;
    } else {
      size_t cap = lp->rcap ? 2 * lp->rcap : 16;
      range *r = realloc(lp->r, cap * sizeof *r);
      if (!r) luaL_error(L, "Pool: out of memory");
      lp->r = r;
      lp->rcap = cap;
    }
  }
  lua_pushvalue(L, job);
  range g = {fid, first, base, n, n, luaL_ref(L, LUA_REGISTRYINDEX), stream};
  lp->r[lp->rhead + lp->rlen++] = g;
}

/* Raises the pool's failure rc; on a broker, one that reached no broker
 * says which and for how long it was tried. */
static int pool_fail(lua_State *L, lpool *lp, int rc) {
  int lost = rc == -ECONNREFUSED || rc == -ECONNRESET || rc == -EHOSTUNREACH || rc == -ENETUNREACH ||
             rc == -ENOTCONN || rc == -EPIPE || rc == -EIO || rc == MPE_ETIMEDOUT || rc == -ETIMEDOUT;
  char t[32];
  snprintf(t, sizeof t, "%g", lp->broker_timeout);
  if (lp->broker && lost)
    lua_pushfstring(L, "Pool: the broker %s could not be reached for broker_timeout (%s s): %s", lp->shown, t,
                    mpe_strerror(rc));
  else if (lp->broker)
    lua_pushfstring(L, "Pool: on the broker %s: %s", lp->shown, mpe_strerror(rc));
  else
    return mpel_fail(L, "Pool", rc);
  return lua_error(L);
}

/* ------------------------------------------------------------ submitting */

typedef struct enc_state {
  lpool *lp;
  uint64_t ref;
  mpel_wire *w;
  int list;
  lua_Integer from, to, at; /* at: the item being encoded */
  size_t k;                 /* items encoded so far */
  uint32_t fid;
  unsigned char star;
} enc_state;

/* Protected: encodes items at .. to behind their headers, counting them. */
static int encode_items(lua_State *L) {
  enc_state *s = lua_touserdata(L, 1);
  lpool *lp = s->lp;
  for (; s->at <= s->to; s->at++) {
    if (s->k == lp->lcap) {
      size_t cap = lp->lcap ? 2 * lp->lcap : 256;
      size_t *l = realloc(lp->lens, cap * sizeof *l);
      if (!l) return luaL_error(L, "Pool: out of memory");
      lp->lens = l;
      lp->lcap = cap;
    }
    size_t start = s->w->len;
    if (mpel_wire_reserve(s->w, HDR) != 0) return luaL_error(L, "Pool: out of memory");
    memcpy(s->w->buf + start, &s->fid, 4);
    memcpy(s->w->buf + start + 4, &s->ref, 8);
    s->w->buf[start + 12] = (char)s->star;
    s->w->len += HDR;
    lua_rawgeti(L, s->list, s->at);
    unsigned char sc[9];
    size_t n = s->star ? 0 : mpel_encode_scalar(L, -1, sc);
    if (n) {
      if (mpel_wire_reserve(s->w, n) != 0) return luaL_error(L, "Pool: out of memory");
      memcpy(s->w->buf + s->w->len, sc, n);
      s->w->len += n;
    } else {
      (s->star ? mpel_encode_args : mpel_encode)(L, -1, "value", s->w);
    }
    lua_pop(L, 1);
    lp->lens[s->k++] = s->w->len - start;
  }
  return 0;
}

/* Pushes msg with its first "at value" made "at ROOT". */
static void push_with_root(lua_State *L, const char *msg, const char *root, lua_Integer i) {
  const char *at = strstr(msg, "at value");
  if (!at) {
    lua_pushstring(L, msg);
    return;
  }
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  luaL_addlstring(&b, msg, (size_t)(at - msg) + 3);
  if (root)
    luaL_addstring(&b, root);
  else
    lua_pushfstring(L, "list[%I]", i), luaL_addvalue(&b);
  luaL_addstring(&b, at + 8);
  luaL_pushresult(&b);
}

/* B.submit(pool, job, fid, star, list, from, to, base, root, stream):
 * list[from .. to] become tasks of job, whose indexes start at base; an
 * item that cannot travel fails its own task at once (root names it in
 * the message: "args", or nil for "list[i]"). Returns the items submitted. */
static int l_submit(lua_State *L) {
  lpool *lp = own_pool(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  enc_state s = {.lp = lp, .list = 2}; /* in encode_items' frame */
  s.fid = (uint32_t)luaL_checkinteger(L, 3);
  s.star = (unsigned char)lua_toboolean(L, 4);
  luaL_checktype(L, 5, LUA_TTABLE);
  lua_Integer from = luaL_checkinteger(L, 6), to = luaL_checkinteger(L, 7);
  lua_Integer base = luaL_checkinteger(L, 8);
  const char *root = luaL_optstring(L, 9, NULL);
  int stream = lua_toboolean(L, 10);
  lua_settop(L, 10);
  fnblock *fn = find_fn(lp, s.fid);
  if (!fn) return luaL_error(L, "Pool: function %d is not known", (int)s.fid);
  s.ref = fn->ref; /* 0 on a broker: the hosts read the function by its id */
  lua_Integer sent = 0;
  s.at = from;
  while (s.at <= to) { /* CHUNK items a submit: the buffers stay small, and warm */
    s.to = to - s.at >= CHUNK ? s.at + CHUNK - 1 : to;
    s.w = mpel_wire_get(L, 0);
    s.w->transfer = 0;
    s.w->remote = lp->broker;
    s.k = 0;
    lua_Integer first_at = s.at;
    lua_pushcfunction(L, encode_items);
    lua_pushlightuserdata(L, &s);
    lua_pushvalue(L, 5);
    int st = lua_pcall(L, 2, 0, 0);
    if (st != LUA_OK) { /* item s.at cannot travel: what came before goes */
      size_t len = 0;
      for (size_t i = 0; i < s.k; i++)
        len += lp->lens[i];
      s.w->len = len;
    }
    if (s.k) {
      uint64_t first;
      int rc = mpe_pool_submit_batch(lp->p, s.w->buf, lp->lens, s.k, &first);
      if (rc < 0) {
        mpel_wire_done(s.w);
        if (st != LUA_OK) lua_pop(L, 1);
        return pool_fail(L, lp, rc);
      }
      add_range(L, lp, 2, s.fid, first, base + (first_at - from), s.k, stream);
      fn = find_fn(lp, s.fid); /* (on_error below may have moved it) */
      fn->uses += s.k;
      sent += (lua_Integer)s.k;
    }
    mpel_wire_done(s.w);
    if (st == LUA_OK) continue;
    if (st == LUA_ERRMEM) return lua_error(L);
    /* the item's failure: on_error(job, i, message), counted done */
    const char *msg = lua_tostring(L, -1);
    lua_rawgeti(L, LUA_REGISTRYINDEX, lp->on_error);
    lua_pushvalue(L, 2);
    lua_Integer idx = base + (s.at - from);
    lua_pushinteger(L, idx);
    push_with_root(L, msg ? msg : "cannot send value", root, idx);
    lua_pushboolean(L, 1); /* counted there: no engine task carries it */
    lua_call(L, 4, 0);
    lua_pop(L, 1);
    s.at++;
  }
  lua_pushinteger(L, sent);
  return 1;
}

/* ------------------------------------------------------------ collecting */

/* Protected: pushes the value encoded in the lightuserdata at 1 (len at 2). */
static int decode_value(lua_State *L) {
  const char *data = lua_touserdata(L, 1);
  size_t len = (size_t)lua_tointeger(L, 2);
  lua_settop(L, 0);
  mpel_decode_copy(L, data, len);
  return 1;
}

/* Pushes the Lua side of an engine result that is not a success. */
static void push_failure(lua_State *L, lpool *lp, const mpe_task_result *r) {
  if (r->status != MPE_ETASK && r->data && r->len) { /* a broker host's text, naming it */
    lua_pushlstring(L, r->data, r->len);
    return;
  }
  switch (r->status) {
  case MPE_ETASK:
    lua_pushcfunction(L, decode_value);
    lua_pushlightuserdata(L, r->data);
    lua_pushinteger(L, (lua_Integer)r->len);
    if (lua_pcall(L, 2, 1, 0) != LUA_OK) {
      lua_pop(L, 1);
      lua_pushfstring(L, "Pool: the task failed (code %d) and its error could not be read", r->code);
    }
    return;
  case MPE_EDIED:
    if (r->code < 0)
      lua_pushfstring(L, "Pool: the worker running this task (pid %d) was killed by signal %d%s", (int)r->pid,
                      -r->code, signame(-r->code));
    else
      lua_pushfstring(L, "Pool: the worker running this task (pid %d) exited with code %d", (int)r->pid,
                      r->code);
    return;
  case MPE_ETIMEDOUT: {
    char t[32];
    snprintf(t, sizeof t, "%g", lp->timeout);
    lua_pushfstring(L, "Pool: task timed out after %s s; its worker (pid %d) was killed and replaced", t,
                    (int)r->pid);
    return;
  }
  case MPE_ETERMINATED: lua_pushliteral(L, "Pool: terminated before the task finished"); return;
  default: {
    const char *why = mpe_pool_error(lp->p);
    lua_pushstring(L, why ? why : mpe_strerror(r->status));
  }
  }
}

typedef struct cur_job {
  range *g;
  int job, values, stream; /* stack indexes (0: none) */
  lua_Integer done, stream_n;
  int cancelled;
} cur_job;

static void flush_job(lua_State *L, cur_job *c) {
  if (!c->g) return;
  lua_getfield(L, c->job, "done");
  lua_pushinteger(L, lua_tointeger(L, -1) + c->done);
  lua_setfield(L, c->job, "done");
  lua_pop(L, 1);
  if (c->stream) {
    lua_pushinteger(L, c->stream_n);
    lua_setfield(L, c->job, "stream_n");
  }
  c->g = NULL;
}

static void load_job(lua_State *L, cur_job *c, range *g, int touched, int base_top) {
  flush_job(L, c);
  lua_settop(L, base_top);
  c->g = g;
  lua_rawgeti(L, LUA_REGISTRYINDEX, g->job);
  c->job = lua_gettop(L);
  lua_pushvalue(L, c->job);
  if (lua_rawget(L, touched) == LUA_TNIL) { /* a list, in the order first met, and a set */
    lua_pushvalue(L, c->job);
    lua_rawseti(L, touched, (lua_Integer)lua_rawlen(L, touched) + 1);
    lua_pushvalue(L, c->job);
    lua_pushboolean(L, 1);
    lua_rawset(L, touched);
  }
  lua_pop(L, 1);
  lua_getfield(L, c->job, "cancelled");
  c->cancelled = lua_toboolean(L, -1);
  lua_pop(L, 1);
  lua_getfield(L, c->job, "values");
  c->values = lua_gettop(L);
  c->stream = 0;
  if (g->stream) {
    lua_getfield(L, c->job, "stream");
    c->stream = lua_gettop(L);
    lua_getfield(L, c->job, "stream_n");
    c->stream_n = lua_tointeger(L, -1);
    lua_pop(L, 1);
  }
  c->done = 0;
}

/* B.collect(pool [, timeout]) -> the jobs that got results (a list, in the
 * order they got their first; each is also a key), or nil and "timeout" |
 * "empty" (nothing outstanding). */
static int l_collect(lua_State *L) {
  lpool *lp = own_pool(L, 1);
  double deadline = mpel_deadline(mpel_opt_timeout(L, 2));
  lua_settop(L, 1);
  if (!lp->res && !(lp->res = malloc(BATCH * sizeof *lp->res))) return luaL_error(L, "Pool: out of memory");
  int rc;
  while ((rc = mpe_pool_collect_many(lp->p, mpel_left(deadline), lp->res, BATCH)) == MPE_EINTR)
    mpel_check_signal(L);
  if (rc == MPE_ETIMEDOUT) {
    lua_pushnil(L);
    lua_pushliteral(L, "timeout");
    return 2;
  }
  if (rc == MPE_EEMPTY || rc == MPE_EBROKEN) {
    lua_pushnil(L);
    lua_pushliteral(L, "empty");
    return 2;
  }
  if (rc < 0) return pool_fail(L, lp, rc);
  lua_newtable(L);
  int touched = lua_gettop(L);
  cur_job c = {0};
  /* each result is used before the next engine call: its data is the engine's */
  for (int taken = 0; rc > 0; rc = taken >= DRAIN ? 0 : mpe_pool_collect_many(lp->p, 0, lp->res, BATCH)) {
    taken += rc;
    for (int k = 0; k < rc; k++) {
      const mpe_task_result *r = &lp->res[k];
      range *g = c.g && r->id - c.g->first < c.g->n ? c.g : find_range(lp, r->id);
      if (!g) continue;
      if (g != c.g) load_job(L, &c, g, touched, touched);
      lua_Integer idx = g->base + (lua_Integer)(r->id - g->first);
      if (!c.cancelled) {
        if (r->status == 0 && mpel_decode_scalar(L, r->data, r->len)) {
          lua_rawseti(L, c.values, idx);
        } else if (r->status == 0) {
          lua_pushcfunction(L, decode_value);
          lua_pushlightuserdata(L, r->data);
          lua_pushinteger(L, (lua_Integer)r->len);
          if (lua_pcall(L, 2, 1, 0) == LUA_OK) {
            lua_rawseti(L, c.values, idx);
          } else { /* it cannot be read here (an object gone): the task fails */
            lua_rawgeti(L, LUA_REGISTRYINDEX, lp->on_error);
            lua_pushvalue(L, c.job);
            lua_pushinteger(L, idx);
            lua_pushvalue(L, -4);
            lua_pushboolean(L, 0);
            lua_call(L, 4, 0);
            lua_pop(L, 1);
          }
        } else {
          lua_rawgeti(L, LUA_REGISTRYINDEX, lp->on_error);
          lua_pushvalue(L, c.job);
          lua_pushinteger(L, idx);
          push_failure(L, lp, r);
          lua_pushboolean(L, 0);
          lua_call(L, 4, 0);
        }
        if (c.stream) {
          lua_pushinteger(L, idx);
          lua_rawseti(L, c.stream, ++c.stream_n);
        }
      }
      c.done++;
      if (--g->left == 0) range_done(lp, g);
    }
  }
  flush_job(L, &c);
  lua_settop(L, touched);
  pop_ranges(L, lp);
  if (rc < 0 && rc != MPE_ETIMEDOUT && rc != MPE_EEMPTY && rc != MPE_EBROKEN && rc != MPE_EINTR)
    return pool_fail(L, lp, rc);
  return 1;
}

/* ------------------------------------------------------------ the pool */

static int ref_or_none(lua_State *L, int idx) {
  if (lua_isnoneornil(L, idx)) return LUA_NOREF;
  lua_pushvalue(L, idx);
  return luaL_ref(L, LUA_REGISTRYINDEX);
}

static void release(lua_State *L, lpool *lp, int kill) {
  if (lp->p && lp->owner == mpe_self_pid()) mpe_pool_free(lp->p, kill);
  lp->p = NULL;
  for (size_t i = 0; i < lp->nfns; i++)
    if (lp->fns[i].ref) mpe_free(mpe_deref(lp->fns[i].ref));
  free(lp->fns);
  lp->fns = NULL;
  lp->nfns = lp->fcap = 0;
  int *refs[] = {&lp->init, &lp->initargs, &lp->on_error};
  for (size_t i = 0; i < sizeof refs / sizeof *refs; i++) {
    luaL_unref(L, LUA_REGISTRYINDEX, *refs[i]);
    *refs[i] = LUA_NOREF;
  }
  for (size_t i = 0; i < lp->rlen; i++)
    luaL_unref(L, LUA_REGISTRYINDEX, lp->r[lp->rhead + i].job);
  free(lp->r);
  free(lp->lens);
  free(lp->res);
  lp->r = NULL;
  lp->lens = NULL;
  lp->res = NULL;
  lp->rlen = lp->rhead = lp->rcap = lp->lcap = 0;
}

static lpool *push_pool(lua_State *L) {
  lpool *lp = lua_newuserdatauv(L, sizeof *lp, 0);
  memset(lp, 0, sizeof *lp);
  lp->init = lp->initargs = lp->on_error = LUA_NOREF;
  lp->L = L;
  luaL_setmetatable(L, "Pool");
  return lp;
}

/* This Lua build, as a host compares it with the driver's. */
static void push_build(lua_State *L) {
  lua_pushfstring(L, "%s (%d-bit integers, %d-bit floats, %d-bit pointers)", LUA_RELEASE,
                  (int)(8 * sizeof(lua_Integer)), (int)(8 * sizeof(lua_Number)), (int)(8 * sizeof(void *)));
}

/* The pool of B.new on a broker (at 9: its URL, or true for the run's;
 * 10, 11: lease, attempts): opened, with the run's key and build stored for
 * the hosts. */
static int start_broker(lua_State *L, lpool *lp, mpe_pool_options *o) {
  const char *url = lua_type(L, 9) == LUA_TSTRING ? lua_tostring(L, 9) : mpel_run_broker();
  if (!url) return luaL_error(L, "Pool: this run has no broker (mpengine run --broker URL, or MPENGINE_BROKER)");
  char shown[512];
  if (mpe_broker_url_display(url, shown, sizeof shown) < 0) return luaL_error(L, "Pool: %s", shown);
  mpe_broker_options bo = {luaL_optnumber(L, 10, 0), (int)luaL_optinteger(L, 11, 0), luaL_optnumber(L, 12, 0)};
  lp->broker_timeout = bo.broker_timeout > 0 ? bo.broker_timeout : 30;
  snprintf(lp->shown, sizeof lp->shown, "%s", shown);
  o->initializer = NULL;
  int rc = mpe_pool_start_broker(&lp->p, url, o, &bo);
  if (rc < 0) {
    lp->p = NULL;
    return luaL_error(L, "Pool: cannot open a run on the broker %s: %s", shown,
                      rc == -EACCES ? "refused (a broker off loopback needs a password in its URL: whoever can "
                                      "write to it runs code on every worker; or the password is wrong)"
                                    : mpe_strerror(rc));
  }
  lp->broker = 1;
  unsigned char key[16];
  push_build(L);
  size_t blen;
  const char *build = lua_tolstring(L, -1, &blen);
  if ((rc = mpe_seal_key(key)) < 0 || (rc = mpe_pool_broker_put(lp->p, "key", key, sizeof key)) < 0 ||
      (rc = mpe_pool_broker_put(lp->p, "build", build, blen)) < 0) {
    memset(key, 0, sizeof key);
    return mpel_fail(L, "Pool: cannot store the run on the broker", rc);
  }
  memset(key, 0, sizeof key);
  lua_pop(L, 1);
  return 1;
}

/* B.new(processes, timeout, maxtasks, memory_limit, initializer, initargs,
 * on_error, token [, broker, lease, attempts]) -> the pool (its workers
 * started; on a broker, its run opened). */
static int l_new(lua_State *L) {
  mpe_pool_options o = {0};
  o.processes = (int)luaL_checkinteger(L, 1);
  o.timeout = luaL_optnumber(L, 2, 0);
  o.maxtasksperchild = (size_t)luaL_optinteger(L, 3, 0);
  o.memory_limit = (size_t)luaL_optinteger(L, 4, 0);
  luaL_checktype(L, 7, LUA_TFUNCTION);
  const char *token = luaL_checkstring(L, 8);
  lpool *lp = push_pool(L);
  lp->owner = mpe_self_pid();
  snprintf(lp->token, sizeof lp->token, "%s", token);
  lp->memory_limit = o.memory_limit;
  lp->timeout = o.timeout;
  lp->init = ref_or_none(L, 5);
  lp->initargs = ref_or_none(L, 6);
  lp->on_error = ref_or_none(L, 7);
  if (!lua_isnoneornil(L, 9)) return start_broker(L, lp, &o);
  o.setup = mpel_pool_setup;
  o.at_exit = mpel_pool_exit;
  o.before_fork = p_before_fork;
  o.initarg = lp;
  int rc = mpe_pool_start(&lp->p, mpel_pool_task, lp, &o);
  if (rc < 0) {
    lp->p = NULL;
    return mpel_fail(L, "Pool: cannot start", rc);
  }
  return 1;
}

static int l_gc(lua_State *L) {
  lpool *lp = lua_touserdata(L, 1);
  if (lp->p && lp->owner == mpe_self_pid() && !mpe_in_child()) mpe_pool_terminate(lp->p);
  if (lp->owner == mpe_self_pid()) release(L, lp, 1);
  return 0;
}

/* B.owner(pool) -> the pid that made it, its token, and whether it is
 * still running here. */
static int l_owner(lua_State *L) {
  lpool *lp = to_pool(L, 1);
  lua_pushinteger(L, lp->owner);
  lua_pushstring(L, lp->token);
  return 2;
}

/* B.worker_of() -> the token of the pool this process works for, or nil. */
static int l_worker_of(lua_State *L) {
  const char *token = mpel_pool_worker_token();
  if (!token) return 0;
  lua_pushstring(L, token);
  return 1;
}

static int l_close(lua_State *L) {
  mpe_pool_close(own_pool(L, 1)->p);
  return 0;
}

static int l_terminate(lua_State *L) {
  mpe_pool_terminate(own_pool(L, 1)->p);
  return 0;
}

/* B.join(pool [, timeout]) -> true, or false and "timeout". */
static int l_join(lua_State *L) {
  lpool *lp = own_pool(L, 1);
  double deadline = mpel_deadline(mpel_opt_timeout(L, 2));
  int rc;
  while ((rc = mpe_pool_join(lp->p, mpel_left(deadline))) == MPE_EINTR)
    mpel_check_signal(L);
  if (rc == MPE_EBROKEN) rc = 0;
  if (rc < 0 && rc != MPE_ETIMEDOUT) return mpel_fail(L, "Pool", rc);
  return mpel_push_bool(L, rc == 0);
}

/* B.error(pool) -> why the pool broke, or nil. */
static int l_error(lua_State *L) {
  const char *why = mpe_pool_error(own_pool(L, 1)->p);
  if (!why) return 0;
  lua_pushstring(L, why);
  return 1;
}

/* B.pids(pool) -> the live workers' pids. */
static int l_pids(lua_State *L) {
  lpool *lp = own_pool(L, 1);
  int n = mpe_pool_size(lp->p);
  pid_t *pids = lua_newuserdatauv(L, (size_t)n * sizeof *pids, 0);
  int k = mpe_pool_pids(lp->p, pids, n);
  lua_createtable(L, k, 0);
  for (int i = 0; i < k; i++) {
    lua_pushinteger(L, pids[i]);
    lua_rawseti(L, -2, i + 1);
  }
  return 1;
}

/* B.kill(pool, pid): SIGKILL to that worker of this pool, if it lives. */
static int l_kill(lua_State *L) {
  lpool *lp = own_pool(L, 1);
  lua_Integer pid = luaL_checkinteger(L, 2);
  int n = mpe_pool_size(lp->p);
  pid_t pids[256];
  int k = mpe_pool_pids(lp->p, pids, n < 256 ? n : 256);
  for (int i = 0; i < k; i++)
    if (pids[i] == (pid_t)pid && pid > 0) kill((pid_t)pid, SIGKILL);
  return 0;
}

/* B.fn(pool, fid, bytes): stores function fid's encoding for the workers. */
static int l_fn(lua_State *L) {
  lpool *lp = own_pool(L, 1);
  uint32_t fid = (uint32_t)luaL_checkinteger(L, 2);
  size_t len;
  const char *bytes = luaL_checklstring(L, 3, &len);
  if (lp->broker) { /* the hosts read it from the run's context */
    char field[32];
    snprintf(field, sizeof field, "f%u", (unsigned)fid);
    int rc = mpe_pool_broker_put(lp->p, field, bytes, len);
    if (rc < 0) return pool_fail(L, lp, rc);
  }
  if (lp->nfns == lp->fcap) {
    size_t cap = lp->fcap ? 2 * lp->fcap : 16;
    fnblock *f = realloc(lp->fns, cap * sizeof *f);
    if (!f) return luaL_error(L, "Pool: out of memory");
    lp->fns = f;
    lp->fcap = cap;
  }
  if (lp->broker) {
    lp->fns[lp->nfns++] = (fnblock){fid, 0, 0, 0};
    return 0;
  }
  char *blk = mpe_alloc(8 + len);
  if (!blk) {
    lua_gc(L, LUA_GCCOLLECT); /* garbage handles may hold arena memory */
    blk = mpe_alloc(8 + len);
  }
  if (!blk) return mpel_fail(L, "Pool", -ENOMEM);
  uint64_t n = len;
  memcpy(blk, &n, 8);
  memcpy(blk + 8, bytes, len);
  lp->fns[lp->nfns++] = (fnblock){fid, 0, mpe_ref(blk), 0};
  return 0;
}

/* B.forget(pool, fid): pool.lua no longer names fid (its block goes once
 * no task outstanding does). */
static int l_forget(lua_State *L) {
  lpool *lp = own_pool(L, 1);
  fnblock *f = find_fn(lp, (uint32_t)luaL_checkinteger(L, 2));
  if (f) {
    f->forgotten = 1;
    fn_settle(lp, f);
  }
  return 0;
}

/* B.put(pool, field, bytes): stored in the run's context on the broker. */
static int l_put(lua_State *L) {
  lpool *lp = own_pool(L, 1);
  const char *field = luaL_checkstring(L, 2);
  size_t len;
  const char *bytes = luaL_checklstring(L, 3, &len);
  if (!lp->broker) return luaL_error(L, "Pool: not a pool on a broker");
  int rc = mpe_pool_broker_put(lp->p, field, bytes, len);
  if (rc < 0) return pool_fail(L, lp, rc);
  return 0;
}

/* B.context(field) -> in a broker host's worker, the run's field, or nil. */
static int l_context(lua_State *L) {
  mpe_buf b = {0};
  int rc = mpe_broker_context(luaL_checkstring(L, 1), &b);
  if (rc == 1) lua_pushlstring(L, b.data ? b.data : "", b.len);
  free(b.data);
  if (rc < 0) return mpel_fail(L, "Pool: cannot read the run from the broker", rc);
  return rc == 1;
}

/* B.build() -> this Lua build's description. B.host() -> the broker host's
 * name in its workers, else nil. */
static int l_build(lua_State *L) {
  push_build(L);
  return 1;
}

/* B.script() -> the job script's path (nil for -e code or an embedder's
 * string) and whether it follows the convention (returned a table with main). */
static int l_script(lua_State *L) {
  lua_getfield(L, LUA_REGISTRYINDEX, "mpengine.script");
  lua_getfield(L, LUA_REGISTRYINDEX, "mpengine.ran_main");
  lua_pushboolean(L, lua_toboolean(L, -1));
  lua_remove(L, -2);
  return 2;
}

static int l_host(lua_State *L) {
  const char *h = mpe_broker_host();
  if (!h) return 0;
  lua_pushstring(L, h);
  return 1;
}

/* B.size(pool) -> its workers (on a broker: its lanes). */
static int l_size(lua_State *L) {
  lua_pushinteger(L, mpe_pool_size(own_pool(L, 1)->p));
  return 1;
}

/* B.table(n): a table with room for n list elements. */
static int l_table(lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1);
  lua_createtable(L, n > 0 && n < (1 << 30) ? (int)n : 0, 0);
  return 1;
}

/* B.in_child() -> true in a process this one's run forked. */
static int l_in_child(lua_State *L) {
  lua_pushboolean(L, mpe_in_child());
  return 1;
}

/* `mpengine worker`: serves every run on the broker at url with procs
 * processes a run (0: one per CPU) until SIGINT/SIGTERM: 0 or < 0. */
int mpel_serve_broker(lua_State *L, const char *url, int procs, const char *name) {
  lpool *lp = push_pool(L);
  lp->owner = mpe_self_pid();
  snprintf(lp->token, sizeof lp->token, "host.%d", (int)mpe_self_pid());
  lua_setfield(L, LUA_REGISTRYINDEX, "mpengine.serving");
  mpe_pool_options o = {0};
  o.processes = procs;
  o.setup = mpel_broker_setup;
  o.at_exit = mpel_pool_exit;
  o.before_fork = p_before_fork;
  o.initarg = lp;
  return mpe_broker_worker_run(url, procs, name, mpel_pool_task, lp, &o);
}

/* ------------------------------------------------------------ travelling */

typedef struct pool_ref {
  int64_t owner;
  char token[40];
} pool_ref;

static const char *pool_encode(lua_State *L, int idx, mpel_wire *w) {
  lpool *lp = lua_touserdata(L, idx);
  pool_ref ref = {.owner = lp->owner};
  memcpy(ref.token, lp->token, sizeof ref.token);
  return mpel_put_object(w, MPEL_POOL, &ref, sizeof ref);
}

static int pool_decode(lua_State *L, const mpel_class *cls, const unsigned char *p, size_t len,
                       mpe_pipe **ends, size_t nends) {
  (void)cls, (void)ends, (void)nends;
  pool_ref ref;
  if (len != sizeof ref) return -1;
  memcpy(&ref, p, sizeof ref);
  lpool *lp = push_pool(L);
  lp->owner = (pid_t)ref.owner;
  memcpy(lp->token, ref.token, sizeof lp->token);
  lp->token[sizeof lp->token - 1] = '\0';
  return 0;
}

static const mpel_class pool_class = {"Pool", MPEL_POOL, pool_encode, pool_decode, NULL, NULL, 0};

static const luaL_Reg funcs[] = {
    {"new", l_new},
    {"submit", l_submit},
    {"collect", l_collect},
    {"close", l_close},
    {"join", l_join},
    {"terminate", l_terminate},
    {"error", l_error},
    {"pids", l_pids},
    {"kill", l_kill},
    {"owner", l_owner},
    {"worker_of", l_worker_of},
    {"table", l_table},
    {"in_child", l_in_child},
    {"fn", l_fn},
    {"forget", l_forget},
    {"put", l_put},
    {"encode_remote", mpel_l_encode_remote},
    {"context", l_context},
    {"build", l_build},
    {"host", l_host},
    {"script", l_script},
    {"size", l_size},
    {NULL, NULL},
};

extern const unsigned char mpel_pool_lua[], mpel_progress_lua[];
extern const size_t mpel_pool_lua_len, mpel_progress_lua_len;

static void load_chunk(lua_State *L, const unsigned char *code, size_t len, const char *name) {
  if (luaL_loadbufferx(L, (const char *)code, len, name, "t") != LUA_OK) lua_error(L);
}

void mpel_open_pool(lua_State *L) {
  int mod = lua_gettop(L);
  luaL_newmetatable(L, "Pool");
  lua_pushcfunction(L, l_gc);
  lua_setfield(L, -2, "__gc");
  mpel_register_class(L, &pool_class);
  int meta = lua_gettop(L);
  load_chunk(L, mpel_progress_lua, mpel_progress_lua_len, "=mpengine.progress");
  lua_pushvalue(L, mod);
  lua_call(L, 1, 1);
  int progress = lua_gettop(L);
  load_chunk(L, mpel_pool_lua, mpel_pool_lua_len, "=mpengine.pool");
  lua_pushvalue(L, mod);
  luaL_newlib(L, funcs);
  lua_pushvalue(L, -1);
  lua_setfield(L, LUA_REGISTRYINDEX, "mpengine.poolB");
  lua_pushvalue(L, meta);
  lua_setfield(L, -2, "meta");
  lua_pushvalue(L, progress);
  lua_call(L, 3, 0);
  lua_settop(L, mod);
}
