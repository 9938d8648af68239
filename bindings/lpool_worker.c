/* lpool_worker.c - mp.Pool in a worker: the engine pool's task function
 * and hooks, for Lua (lpool.c is the parent's side).
 *
 * A worker is a fork: the Lua state is the parent's as it was. setup makes
 * it a child (mpel_child_begin), makes the thread tasks run on (a traceback
 * and an error's position then end at the task) and runs the initializer.
 * A task is {uint32 function id, uint64 arena ref of the function's
 * encoding, uint8 star, the item}: the function is decoded once per worker
 * (a cache by id, started over past CACHE_MAX), the item decoded (a number
 * needs no protected decoder), the function called, and its result encoded;
 * or its error: {msg, tb [, value]} (code 1), or a plain message (code 2: a
 * result that cannot travel, no memory left). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lpool.h"

#define CACHE_MAX 512 /* functions a worker keeps decoded */

/* Pushes tostring of an error value as a task's message says it. */
static void push_describe(lua_State *L, int idx) {
  idx = lua_absindex(L, idx);
  int t = lua_type(L, idx);
  if (t == LUA_TSTRING)
    lua_pushvalue(L, idx);
  else if (luaL_callmeta(L, idx, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
    return;
  else if (t == LUA_TNUMBER || t == LUA_TBOOLEAN)
    luaL_tolstring(L, idx, NULL);
  else
    lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, idx));
}

static lpool *w_pool;           /* in a worker: the pool it works for */
static lua_State *w_co;         /* the thread tasks run on */
static int w_cache = LUA_NOREF; /* function id -> function */
static int w_cached;
static uint32_t w_last; /* the id of the function at 2 on w_co's stack (0: none) */
static char w_name[32];

typedef struct task_in {
  const char *in;
  size_t n;
  int star;
} task_in;

/* On the task thread: fn at 1, the task_in at 2; calls fn with the item. */
static int call_task(lua_State *co) {
  const task_in *t = lua_touserdata(co, 2);
  lua_settop(co, 1);
  mpel_decode_copy(co, t->in, t->n);
  int nargs = 1;
  if (t->star) {
    luaL_checktype(co, 2, LUA_TTABLE);
    lua_Integer n = (lua_Integer)lua_rawlen(co, 2);
    luaL_checkstack(co, (int)n + 2, "too many arguments");
    for (lua_Integer i = 1; i <= n; i++)
      lua_rawgeti(co, 2, i);
    lua_remove(co, 2);
    nargs = (int)n;
  }
  lua_call(co, nargs, 1);
  return 1;
}

/* On the task thread: the function encoded in the task_in at 1. */
static int decode_fn(lua_State *co) {
  const task_in *f = lua_touserdata(co, 1);
  mpel_decode_copy(co, f->in, f->n);
  return 1;
}

/* The frames of the task only: lines 1 .. k of a traceback taken in the
 * handler, where level k + 1 is call_task. */
static void push_frames(lua_State *co) {
  lua_Debug ar;
  int k = 0;
  for (int level = 1; lua_getstack(co, level, &ar); level++) {
    lua_getinfo(co, "f", &ar);
    int ours = lua_tocfunction(co, -1) == call_task;
    lua_pop(co, 1);
    if (ours) break;
    k = level;
  }
  luaL_traceback(co, co, NULL, 1);
  const char *tb = lua_tostring(co, -1), *p = strchr(tb, '\n');
  const char *end = p ? p : tb + strlen(tb);
  for (int i = 0; i < k && end && *end; i++) {
    const char *nl = strchr(end + 1, '\n');
    end = nl ? nl : end + strlen(end);
  }
  lua_pushlstring(co, p ? p + 1 : "", p && end > p ? (size_t)(end - p - 1) : 0);
  lua_remove(co, -2);
}

/* The message handler of a task: {msg, tb [, value]}. */
static int task_handler(lua_State *co) {
  lua_createtable(co, 0, 3);
  push_describe(co, 1);
  if (w_pool && w_pool->memory_limit && strcmp(lua_tostring(co, -1), "not enough memory") == 0) {
    lua_pop(co, 1);
    lua_pushfstring(co, "Pool: the task ran out of memory (the pool's memory_limit is %I bytes a worker)",
                    (lua_Integer)w_pool->memory_limit);
  }
  lua_setfield(co, -2, "msg");
  push_frames(co);
  lua_setfield(co, -2, "tb");
  if (mpe_broker_host()) {
    lua_pushstring(co, mpe_broker_host());
    lua_setfield(co, -2, "host");
  }
  if (lua_type(co, 1) != LUA_TSTRING && !lua_isnil(co, 1)) {
    lua_pushvalue(co, 1);
    lua_setfield(co, -2, "value");
  }
  return 1;
}

/* The initializer's message handler: the message and the traceback. */
static int init_handler(lua_State *co) {
  push_describe(co, 1);
  luaL_traceback(co, co, lua_tostring(co, -1), 1);
  return 1;
}

/* On a thread: the value at 1 appended to the buffer at 2, root at 3. */
static int encode_value(lua_State *co) {
  mpe_buf *out = lua_touserdata(co, 2);
  mpel_wire *w = mpel_wire_get(co, 0);
  w->transfer = 0;
  mpel_encode(co, 1, lua_tostring(co, 3), w);
  int rc = mpe_buf_add(out, w->buf, w->len);
  mpel_wire_done(w);
  if (rc < 0) luaL_error(co, "cannot send value: out of memory");
  return 0;
}

/* Encodes the value at the top of co into out (protected): 0, or -1 with
 * the error at the top instead. */
static int encode_top(lua_State *co, mpe_buf *out, const char *root) {
  lua_pushcfunction(co, encode_value);
  lua_insert(co, -2);
  lua_pushlightuserdata(co, out);
  lua_pushstring(co, root);
  return lua_pcall(co, 3, 0, 0) == LUA_OK ? 0 : -1;
}

/* A plain message as the task's failure (code 2). */
static int fail_plain(lua_State *co, mpe_buf *out) {
  out->len = 0;
  if (!lua_isstring(co, -1)) {
    lua_pop(co, 1);
    lua_pushliteral(co, "Pool: the task failed");
  }
  if (mpe_broker_host()) { /* on a broker's host: which one */
    lua_pushfstring(co, "%s (on host %s)", lua_tostring(co, -1), mpe_broker_host());
    lua_remove(co, -2);
  }
  if (encode_top(co, out, "value") < 0) return 2;
  return 2;
}

int mpel_pool_task(void *ctx, const void *in, size_t n, mpe_buf *out) {
  (void)ctx;
  lua_State *co = w_co;
  uint32_t fid;
  if (n < HDR) return 3;
  memcpy(&fid, in, 4);
  task_in t = {(const char *)in + HDR, n - HDR, ((const unsigned char *)in)[12]};
  if (fid == w_last && lua_gettop(co) >= 2) { /* the stack keeps the handler and the last function */
    lua_settop(co, 2);
    goto call;
  }
  w_last = 0;
  lua_settop(co, 0);
  lua_pushcfunction(co, task_handler);         /* 1 */
  lua_rawgeti(co, LUA_REGISTRYINDEX, w_cache); /* 2 */
  if (lua_rawgeti(co, 2, fid) == LUA_TNIL) {   /* a function this worker has not met */
    lua_pop(co, 1);
    if (++w_cached > CACHE_MAX) { /* many distinct closures: start over */
      lua_newtable(co);
      lua_pushvalue(co, -1);
      lua_rawseti(co, LUA_REGISTRYINDEX, w_cache);
      lua_replace(co, 2);
      w_cached = 1;
    }
    uint64_t ref;
    memcpy(&ref, (const char *)in + 4, 8);
    task_in f;
    mpe_buf fb = {0};
    if (ref) {
      const char *blk = mpe_deref(ref);
      uint64_t len;
      memcpy(&len, blk, 8);
      f = (task_in){blk + 8, (size_t)len, 0};
    } else { /* a broker's run: the function is in the run's context */
      char field[32];
      snprintf(field, sizeof field, "f%u", (unsigned)fid);
      int rc = mpe_broker_context(field, &fb);
      if (rc <= 0) {
        free(fb.data);
        lua_pushfstring(co, "Pool: host %s cannot read the task's function from the broker: %s",
                        mpe_broker_host() ? mpe_broker_host() : "?",
                        rc == 0 ? "the run is gone" : mpe_strerror(rc));
        return fail_plain(co, out);
      }
      f = (task_in){fb.data, fb.len, 0};
    }
    lua_pushcfunction(co, decode_fn);
    lua_pushlightuserdata(co, &f);
    int dst = lua_pcall(co, 1, 1, 1);
    free(fb.data);
    if (dst != LUA_OK) goto failed;
    lua_pushvalue(co, -1);
    lua_rawseti(co, 2, fid);
  }
  lua_remove(co, 2); /* 2: the function */
  w_last = fid;
call:
  lua_pushvalue(co, 2);
  int st;
  if (!t.star && mpel_decode_scalar(co, t.in, t.n)) { /* the common case: no decoder to protect */
    st = lua_pcall(co, 1, 1, 1);
  } else {
    lua_pushcfunction(co, call_task);
    lua_insert(co, 3);
    lua_pushlightuserdata(co, &t);
    st = lua_pcall(co, 2, 1, 1);
  }
  if (st == LUA_OK) {
    unsigned char sc[9];
    size_t k = mpel_encode_scalar(co, -1, sc);
    if (k) return mpe_buf_add(out, sc, k) < 0 ? -ENOMEM : 0;
    if (encode_top(co, out, "the result of task 1") == 0) return 0;
    return fail_plain(co, out);
  }
  if (st == LUA_ERRMEM) {
    lua_pop(co, 1);
    lua_gc(co, LUA_GCCOLLECT);
    if (w_pool->memory_limit)
      lua_pushfstring(co, "Pool: the task ran out of memory (the pool's memory_limit is %I bytes a worker)",
                      (lua_Integer)w_pool->memory_limit);
    else
      lua_pushliteral(co, "not enough memory");
    return fail_plain(co, out);
  }
failed:
  if (!lua_istable(co, -1)) return fail_plain(co, out);
  out->len = 0;
  lua_pushvalue(co, -1);
  if (encode_top(co, out, "value") == 0) return 1;
  lua_pop(co, 1); /* the value cannot travel: its text still does */
  lua_pushnil(co);
  lua_setfield(co, -2, "value");
  out->len = 0;
  if (encode_top(co, out, "value") == 0) return 1;
  return fail_plain(co, out);
}

int mpel_pool_setup(void *arg, mpe_buf *why) {
  lpool *lp = arg;
  lua_State *L = lp->L;
  w_pool = lp;
  snprintf(w_name, sizeof w_name, "PoolWorker-%ld", (long)getpid());
  mpel_child_begin(L, lp->owner, w_name, 1);
  w_co = lua_newthread(L);
  luaL_ref(L, LUA_REGISTRYINDEX);
  lua_sethook(w_co, NULL, 0, 0);
  lua_newtable(L);
  w_cache = luaL_ref(L, LUA_REGISTRYINDEX);
  if (lp->init == LUA_NOREF) return 0;
  lua_State *co = w_co;
  lua_settop(co, 0);
  lua_pushcfunction(co, init_handler);
  lua_rawgeti(co, LUA_REGISTRYINDEX, lp->init);
  int nargs = 0;
  if (lua_rawgeti(co, LUA_REGISTRYINDEX, lp->initargs) == LUA_TTABLE) {
    lua_Integer n = (lua_Integer)lua_rawlen(co, 3);
    if (lua_checkstack(co, (int)n + 2)) {
      for (lua_Integer i = 1; i <= n; i++)
        lua_rawgeti(co, 3, i);
      nargs = (int)n;
    }
  }
  lua_remove(co, 3);
  if (lua_pcall(co, nargs, 0, 1) == LUA_OK) return 0;
  const char *msg = lua_tostring(co, -1);
  if (!msg) msg = "not enough memory";
  mpe_buf_add(why, msg, strlen(msg));
  return 1;
}

/* The run's start in a broker host's worker (on the task thread): its key
 * first (what it sealed is then read), then pool.lua's B.run_start: the
 * build, the script, its modules, the initializer. */
int mpel_broker_setup(void *arg, mpe_buf *why) {
  int rc = mpel_pool_setup(arg, why);
  if (rc) return rc;
  mpe_buf key = {0};
  rc = mpe_broker_context("key", &key);
  if (rc != 1 || key.len != 16) {
    free(key.data);
    const char *msg = rc < 0 ? mpe_strerror(rc) : "the run is gone";
    mpe_buf_add(why, "cannot read the run from the broker: ", 37);
    mpe_buf_add(why, msg, strlen(msg));
    return 1;
  }
  mpe_seal_key_set((const unsigned char *)key.data);
  memset(key.data, 0, key.len);
  free(key.data);
  mpe_buf opt = {0}; /* the run's memory_limit and timeout, for the messages */
  if (mpe_broker_context("options", &opt) == 1 && mpe_buf_add(&opt, "", 1) == 0) {
    double t = 0;
    size_t mt = 0, ml = 0;
    if (sscanf(opt.data, "%lf %zu %zu", &t, &mt, &ml) == 3) {
      w_pool->memory_limit = ml;
      w_pool->timeout = t;
    }
  }
  free(opt.data);
  lua_State *co = w_co;
  lua_settop(co, 0);
  lua_pushcfunction(co, init_handler);
  lua_getfield(co, LUA_REGISTRYINDEX, "mpengine.poolB");
  lua_getfield(co, -1, "run_start");
  lua_remove(co, 2);
  if (lua_pcall(co, 0, 0, 1) == LUA_OK) {
    lua_settop(co, 0);
    return 0;
  }
  const char *msg = lua_tostring(co, -1);
  if (!msg) msg = "not enough memory";
  mpe_buf_add(why, msg, strlen(msg));
  lua_settop(co, 0);
  return 1;
}

void mpel_pool_exit(void *arg) {
  lpool *lp = arg;
  mpel_handles_fork(lp->L, MPEL_CHILD_ENDS); /* our references go back */
}

const char *mpel_pool_worker_token(void) { return w_pool ? w_pool->token : NULL; }
