/* lmodule.c - the Lua module "mpengine": entry point, module functions, and
 * the helpers every object family shares (timeouts, reasons, signals).
 *
 * Opening the module maps the engine's arena (mpe_init), so it must happen
 * before the first Process starts: `require "mpengine"` at the top of a
 * script does that. A sentinel userdata in the registry ends the run when
 * the state closes (see mpel_processes_atexit). */
#include <errno.h>
#include <stdio.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mpe_lua.h"

volatile sig_atomic_t mpel_signal;
const char *mpel_process_name; /* set when the module opens: in .bss, beside what a child writes */

double mpel_opt_timeout(lua_State *L, int idx) {
  if (lua_isnoneornil(L, idx)) return -1;
  lua_Number t = luaL_checknumber(L, idx);
  if (isnan(t) || t < 0) luaL_argerror(L, idx, "timeout must be a number of seconds >= 0 (nil waits forever)");
  return (double)t;
}

double mpel_deadline(double timeout) { return timeout < 0 ? -1 : mpe_time() + timeout; }

double mpel_left(double deadline) {
  if (deadline < 0) return -1;
  double l = deadline - mpe_time();
  return l > 0 ? l : 0;
}

void mpel_check_signal(lua_State *L) {
  int sig = mpel_signal;
  if (sig) luaL_error(L, "interrupted by %s", sig == SIGINT ? "SIGINT" : sig == SIGTERM ? "SIGTERM" : "a signal");
}

int mpel_push_reason(lua_State *L, int err) {
  lua_pushnil(L);
  switch (err) {
  case MPE_ETIMEDOUT: lua_pushliteral(L, "timeout"); break;
  case MPE_ECLOSED: lua_pushliteral(L, "closed"); break;
  case MPE_EFULL: lua_pushliteral(L, "full"); break;
  case MPE_EEMPTY: lua_pushliteral(L, "empty"); break;
  default: lua_pushstring(L, mpe_strerror(err)); break;
  }
  return 2;
}

int mpel_push_bool(lua_State *L, int ok) {
  lua_pushboolean(L, ok);
  if (ok) return 1;
  lua_pushliteral(L, "timeout");
  return 2;
}

int mpel_fail(lua_State *L, const char *what, int err) {
  return luaL_error(L, "%s: %s", what, mpe_strerror(err));
}

void mpel_register_class(lua_State *L, const mpel_class *cls) {
  /* metatable at top */
  lua_getfield(L, LUA_REGISTRYINDEX, "mpengine.kinds");
  lua_pushvalue(L, -2);
  lua_pushlightuserdata(L, (void *)cls);
  lua_rawset(L, -3);
  lua_pop(L, 1);
  lua_getfield(L, LUA_REGISTRYINDEX, "mpengine.classes");
  lua_pushlightuserdata(L, (void *)cls);
  lua_rawseti(L, -2, cls->kind);
  lua_pop(L, 1);
}

void mpel_weak_registry(lua_State *L, const char *name, const char *mode) {
  if (lua_getfield(L, LUA_REGISTRYINDEX, name) == LUA_TTABLE) return;
  lua_pop(L, 1);
  lua_newtable(L);
  lua_createtable(L, 0, 1);
  lua_pushstring(L, mode);
  lua_setfield(L, -2, "__mode");
  lua_setmetatable(L, -2);
  lua_pushvalue(L, -1);
  lua_setfield(L, LUA_REGISTRYINDEX, name);
}

/* Handles tracked so far, and what the next child inherits: a child that
 * inherited none and made none has nothing to give back when it ends, and
 * skips the walk (which would touch pages of its parent's). */
static unsigned long tracked, next_base, own_base;
static int next_inherits, own_inherits;

MPE_CHILD_PATH void mpel_handles_child_begin(void) {
  own_base = next_base;
  own_inherits = next_inherits;
}

void mpel_track(lua_State *L, int idx) {
  tracked++;
  idx = lua_absindex(L, idx);
  mpel_weak_registry(L, "mpengine.handles", "k");
  lua_pushvalue(L, idx);
  lua_pushboolean(L, 1);
  lua_rawset(L, -3);
  lua_pop(L, 1);
}

MPE_CHILD_PATH void mpel_handles_fork(lua_State *L, int how) {
  /* The references taken for a child go in its ledger: if it is killed,
   * this process gives them back when it reaps it. */
  if (how == MPEL_CHILD_ENDS && !own_inherits && tracked == own_base) return;
  if (how == MPEL_FOR_CHILD) {
    mpe_spawn_refs_begin();
    next_base = tracked;
    next_inherits = 0;
  }
  if (lua_getfield(L, LUA_REGISTRYINDEX, "mpengine.handles") != LUA_TTABLE) {
    lua_pop(L, 1);
    return;
  }
  lua_getfield(L, LUA_REGISTRYINDEX, "mpengine.kinds");
  lua_pushnil(L);
  while (lua_next(L, -3)) {
    lua_pop(L, 1);
    if (lua_getmetatable(L, -1)) {
      const mpel_class *cls = lua_rawget(L, -3) == LUA_TLIGHTUSERDATA ? lua_touserdata(L, -1) : NULL;
      lua_pop(L, 1);
      void *ud = lua_touserdata(L, -1);
      if (cls && how == MPEL_FOR_CHILD && cls->retain) {
        cls->retain(ud);
        next_inherits = 1;
      }
      if (cls && how != MPEL_FOR_CHILD && cls->release) cls->release(ud, how == MPEL_CHILD_ENDS);
    }
  }
  lua_pop(L, 2);
}

const char *mpel_put_object(mpel_wire *w, int kind, const void *payload, size_t n) {
  if (n + 1 > 255) return "object reference too long";
  if (mpel_wire_reserve(w, n + 4) != 0) return "out of memory";
  unsigned char *b = (unsigned char *)w->buf + w->len;
  b[0] = 0xc7; /* ext8 */
  b[1] = (unsigned char)(n + 1);
  b[2] = 6; /* EXT_OBJECT */
  b[3] = (unsigned char)kind;
  memcpy(b + 4, payload, n);
  w->len += n + 4;
  return NULL;
}

static int l_sleep(lua_State *L) {
  lua_Number s = luaL_checknumber(L, 1);
  luaL_argcheck(L, !isnan(s) && s >= 0, 1, "seconds must be >= 0");
  double left = (double)s;
  while (mpe_sleep(left, &left) == MPE_EINTR) mpel_check_signal(L);
  return 0;
}

static int l_time(lua_State *L) {
  lua_pushnumber(L, (lua_Number)mpe_time());
  return 1;
}

static int l_cpu_count(lua_State *L) {
  lua_pushinteger(L, mpe_cpu_count());
  return 1;
}

static int l_getpid(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)mpe_self_pid());
  return 1;
}

static int l_arena_stats(lua_State *L) {
  size_t used, size;
  mpe_arena_stats(&used, &size);
  lua_pushinteger(L, (lua_Integer)used);
  lua_pushinteger(L, (lua_Integer)size);
  return 2;
}

/* mp.encode(v) / mp.decode(s): the codec, for tests and for storing values.
 * Bytes take no references: each decode takes its own (see mpel_decode). */
/* The encoding of the value at 1 (remote: for another host, objects of
 * this host refused with their path). */
static int encode_at_1(lua_State *L, int remote) {
  luaL_checkany(L, 1);
  lua_settop(L, 1);
  mpel_wire *w = mpel_wire_get(L, 0);
  w->transfer = 0;
  w->remote = remote;
  mpel_encode(L, 1, "value", w);
  lua_pushlstring(L, w->buf, w->len);
  mpel_wire_done(w);
  return 1;
}

static int l_encode(lua_State *L) { return encode_at_1(L, 0); }

int mpel_l_encode_remote(lua_State *L) { return encode_at_1(L, 1); }

int mpel_l_decode(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  mpel_decode_copy(L, s, n);
  return 1;
}

static int l_isatty(lua_State *L) {
  lua_pushboolean(L, isatty((int)luaL_checkinteger(L, 1)));
  return 1;
}

/* mp._term_width(fd): the columns of the terminal on fd, or nil if fd is
 * not a terminal or does not say (the progress bar fits its lines to it). */
static int l_term_width(lua_State *L) {
  struct winsize ws;
  if (ioctl((int)luaL_checkinteger(L, 1), TIOCGWINSZ, &ws) != 0 || ws.ws_col == 0) return 0;
  lua_pushinteger(L, ws.ws_col);
  return 1;
}

/* mp._limit_memory(bytes): this process may allocate about bytes more of
 * private memory (mpe_limit_memory). Returns true, or nil and why. */
static int l_limit_memory(lua_State *L) {
  lua_Integer extra = luaL_checkinteger(L, 1);
  luaL_argcheck(L, extra > 0, 1, "bytes must be > 0");
  int rc = mpe_limit_memory((size_t)extra);
  if (rc < 0) return mpel_push_reason(L, rc);
  lua_pushboolean(L, 1);
  return 1;
}

static char *run_broker;

const char *mpel_run_broker(void) { return run_broker; }

int mpel_set_run_broker(const char *url) {
  char *copy = url ? strdup(url) : NULL;
  if (url && !copy) return -ENOMEM;
  free(run_broker);
  run_broker = copy;
  return 0;
}

/* mp.broker() -> the run's broker URL as messages show it (no password), or nil. */
static int l_broker(lua_State *L) {
  if (!run_broker) {
    lua_pushnil(L);
    return 1;
  }
  char buf[512];
  if (mpe_broker_url_display(run_broker, buf, sizeof buf) < 0) return luaL_error(L, "%s", buf);
  lua_pushstring(L, buf);
  return 1;
}

static int sentinel_gc(lua_State *L) {
  mpel_processes_atexit(L);
  return 0;
}

static const luaL_Reg funcs[] = {
    {"sleep", l_sleep},
    {"wait", mpel_l_wait},
    {"time", l_time},
    {"cpu_count", l_cpu_count},
    {"broker", l_broker},
    {"getpid", l_getpid},
    {"arena_stats", l_arena_stats},
    {"encode", l_encode},
    {"decode", mpel_l_decode},
    {"_limit_memory", l_limit_memory},
    {"_isatty", l_isatty},
    {"_term_width", l_term_width},
    {NULL, NULL},
};

__attribute__((visibility("default"))) int luaopen_mpengine(lua_State *L) {
  int rc = mpe_init(0);
  if (rc < 0) return luaL_error(L, "mpengine: cannot map the shared arena: %s", mpe_strerror(rc));
  if (!mpel_process_name) mpel_process_name = "MainProcess";
  if (lua_getfield(L, LUA_REGISTRYINDEX, "mpengine.kinds") != LUA_TTABLE) {
    lua_newtable(L);
    lua_setfield(L, LUA_REGISTRYINDEX, "mpengine.kinds");
    lua_newtable(L);
    lua_setfield(L, LUA_REGISTRYINDEX, "mpengine.classes");
    /* The sentinel: its __gc ends the run when this state closes. */
    lua_newuserdatauv(L, 1, 0);
    lua_createtable(L, 0, 1);
    lua_pushcfunction(L, sentinel_gc);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);
    lua_setfield(L, LUA_REGISTRYINDEX, "mpengine.sentinel");
  }
  lua_pop(L, 1);
  luaL_newlib(L, funcs);
  lua_pushstring(L, mpe_version());
  lua_setfield(L, -2, "_VERSION");
  mpel_open_process(L);
  mpel_open_pipe(L);
  mpel_open_queue(L);
  mpel_open_sync(L);
  mpel_open_value(L);
  mpel_open_dict(L);
  mpel_open_pool(L);
  mpel_open_broker_objects(L);
  return 1;
}
