/* lbroker.c - what the objects on a broker (bindings/bobj.lua) need from C:
 * connections to Redis, one per broker and process, and the class that puts
 * those objects on the wire.
 *
 * A connection is made on first use and kept in the registry under the
 * broker's masked URL ("redis://host:port/db"), so an object that arrives in
 * a message (it carries only that masked URL and its key prefix) finds this
 * process's connection to the same broker: the run's (`mpengine run
 * --broker URL`), or one a constructor made with {broker = URL}. A forked
 * child never uses its parent's socket: a connection remembers its pid and
 * the child opens its own. The URL with its password stays in C.
 *
 * Replies become Lua values: strings and statuses strings, integers
 * integers, nil nil (false inside an array), arrays tables; an error reply
 * raises "Broker redis://host:port: MESSAGE". A connection lost is tried
 * again with backoff (up to 30 s) and the call that met it raises: the
 * command may or may not have run. Blocking commands are given a read
 * timeout of their own wait plus the usual one, and the objects call them in
 * bounded slices, so the run's SIGINT ends every wait (bobj.lua). */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "mpe_lua.h"

#define CONN_MT   "mpengine.BrokerConnection"
#define SCRIPT_MT "mpengine.BrokerScript"
#define OBJ_KIND  15 /* wire byte of every object on a broker (payload: sub-kind, URL, prefix) */

#ifdef MPE_HAVE_BROKER
#include <hiredis/hiredis.h>

#include "broker.h"

typedef struct bconn {
  mpe__redis *r;
  pid_t pid;
  char *url; /* with its password: a forked child connects again with it */
  char display[320];
} bconn;

static bconn *check_conn(lua_State *L, int idx) {
  bconn *c = luaL_checkudata(L, idx, CONN_MT);
  if (!c->r) luaL_error(L, "Broker: connection closed");
  if (c->pid != getpid()) luaL_error(L, "Broker %s: a connection of another process", c->display);
  return c;
}

static int conn_gc(lua_State *L) {
  bconn *c = luaL_checkudata(L, 1, CONN_MT);
  if (c->r && c->pid == getpid())
    mpe__redis_close(c->r);
  else if (c->r)
    mpe__redis_abandon(c->r); /* a parent's, inherited through fork */
  c->r = NULL;
  if (c->url) {
    memset(c->url, 0, strlen(c->url));
    free(c->url);
    c->url = NULL;
  }
  return 0;
}

/* "redis://host:port" plus "/db" when not 0: the key connections are kept by. */
static int display_of(const char *url, char *buf, size_t n) {
  mpe__redis_url u;
  int rc = mpe__redis_url_parse(url, &u, buf, n);
  if (rc == 0) {
    mpe__redis_url_display(&u, buf, n);
    if (u.db) {
      size_t l = strlen(buf);
      snprintf(buf + l, n - l, "/%d", u.db);
    }
  }
  memset(&u, 0, sizeof u);
  return rc;
}

static int new_conn(lua_State *L, const char *url, const char *display);

/* Pushes this process's connection kept under display (a forked child's
 * own, made on first use from its parent's URL), or nothing (0). */
static int cached(lua_State *L, const char *display) {
  mpel_weak_registry(L, "mpengine.brokers", "");
  if (lua_getfield(L, -1, display) == LUA_TUSERDATA) {
    bconn *c = lua_touserdata(L, -1);
    if (c->r && c->pid == getpid()) {
      lua_remove(L, -2);
      return 1;
    }
    if (c->url) {
      lua_pop(L, 2);
      return new_conn(L, c->url, display);
    }
  }
  lua_pop(L, 2);
  return 0;
}

static int new_conn(lua_State *L, const char *url, const char *display) {
  char err[512];
  mpe__redis *r;
  int rc = mpe__redis_connect(&r, url, 5.0, err, sizeof err);
  if (rc < 0) return luaL_error(L, "Broker: %s", err);
  bconn *c = lua_newuserdatauv(L, sizeof *c, 0);
  memset(c, 0, sizeof *c);
  c->r = r;
  luaL_setmetatable(L, CONN_MT);
  c->pid = getpid();
  c->url = strdup(url);
  snprintf(c->display, sizeof c->display, "%s", display);
  mpel_weak_registry(L, "mpengine.brokers", "");
  lua_pushvalue(L, -2);
  lua_setfield(L, -2, display);
  lua_pop(L, 1);
  return 1;
}

/* B.connect([url]) -> the connection to url (default: the run's broker). */
static int b_connect(lua_State *L) {
  const char *url = luaL_optstring(L, 1, NULL);
  if (!url) url = mpel_run_broker();
  if (!url) return luaL_error(L, "Broker: no broker (give {broker = URL}, or run with --broker URL)");
  char display[320];
  if (display_of(url, display, sizeof display) < 0) return luaL_error(L, "%s", display);
  if (cached(L, display)) return 1;
  return new_conn(L, url, display);
}

/* B.lookup(display) -> this process's connection to that broker: one made
 * already, or the run's when it is that broker; nil otherwise. */
static int b_lookup(lua_State *L) {
  const char *display = luaL_checkstring(L, 1);
  if (cached(L, display)) return 1;
  const char *run = mpel_run_broker();
  char mine[320];
  if (run && display_of(run, mine, sizeof mine) == 0 && !strcmp(mine, display)) {
    lua_settop(L, 0);
    return b_connect(L);
  }
  return 0;
}

/* B.display([url]) -> the masked form of url (default: the run's), or nil. */
static int b_display(lua_State *L) {
  const char *url = luaL_optstring(L, 1, NULL);
  if (!url) url = mpel_run_broker();
  if (!url) return 0;
  char display[320];
  if (display_of(url, display, sizeof display) < 0) return luaL_error(L, "%s", display);
  lua_pushstring(L, display);
  return 1;
}

static void push_reply(lua_State *L, bconn *c, redisReply *rep, int in_array) {
  switch (rep->type) {
  case REDIS_REPLY_STRING:
  case REDIS_REPLY_STATUS: lua_pushlstring(L, rep->str, rep->len); break;
  case REDIS_REPLY_INTEGER: lua_pushinteger(L, (lua_Integer)rep->integer); break;
  case REDIS_REPLY_ARRAY:
    luaL_checkstack(L, 4, "broker reply");
    lua_createtable(L, (int)rep->elements, 1);
    for (size_t i = 0; i < rep->elements; i++) {
      push_reply(L, c, rep->element[i], 1);
      lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    lua_pushinteger(L, (lua_Integer)rep->elements);
    lua_setfield(L, -2, "n");
    break;
  case REDIS_REPLY_ERROR: lua_pushfstring(L, "Broker %s: %s", c->display, rep->str); break;
  default:
    if (in_array)
      lua_pushboolean(L, 0);
    else
      lua_pushnil(L);
    break;
  }
}

/* The arguments first..top as strings (numbers formatted as Lua does). */
static int gather(lua_State *L, int first, const char ***av, size_t **al) {
  int n = lua_gettop(L) - first + 1;
  luaL_argcheck(L, n > 0, first, "a command");
  *av = lua_newuserdatauv(L, sizeof **av * (size_t)n, 0);
  *al = lua_newuserdatauv(L, sizeof **al * (size_t)n, 0);
  for (int i = 0; i < n; i++) {
    if (lua_type(L, first + i) == LUA_TNUMBER) {
      lua_pushvalue(L, first + i);
      lua_tostring(L, -1);
      lua_replace(L, first + i);
    }
    (*av)[i] = luaL_checklstring(L, first + i, &(*al)[i]);
  }
  return n;
}

/* A lost connection: reconnect (with backoff, up to 30 s) for the next
 * call, and raise for this one. */
static int lost(lua_State *L, bconn *c) {
  const char *why = lua_pushstring(L, mpe__redis_error(c->r));
  mpe__redis_reconnect(c->r, mpe_time() + 30);
  mpel_check_signal(L);
  return luaL_error(L, "Broker: %s", why);
}

static int finish(lua_State *L, bconn *c, redisReply *rep) {
  push_reply(L, c, rep, 0);
  int err = rep->type == REDIS_REPLY_ERROR;
  mpe__redis_free(rep);
  if (err) return lua_error(L);
  return 1;
}

/* c:call(cmd, args...) -> the reply. */
static int c_call(lua_State *L) {
  bconn *c = check_conn(L, 1);
  const char **av;
  size_t *al;
  int n = gather(L, 2, &av, &al);
  redisReply *rep;
  if (!mpe__redis_ok(c->r) && mpe__redis_reconnect(c->r, mpe_time() + 30) < 0) return lost(L, c);
  if (mpe__redis_cmd(c->r, &rep, n, av, al) < 0) return lost(L, c);
  return finish(L, c, rep);
}

/* c:bcall(wait, cmd, args...): a blocking command that may take wait seconds. */
static int c_bcall(lua_State *L) {
  bconn *c = check_conn(L, 1);
  double wait = luaL_checknumber(L, 2);
  const char **av;
  size_t *al;
  int n = gather(L, 3, &av, &al);
  redisReply *rep;
  if (!mpe__redis_ok(c->r) && mpe__redis_reconnect(c->r, mpe_time() + 30) < 0) return lost(L, c);
  double base = mpe__redis_timeout(c->r);
  mpe__redis_set_timeout(c->r, base + wait);
  int rc = mpe__redis_cmd(c->r, &rep, n, av, al);
  if (rc < 0) return lost(L, c);
  mpe__redis_set_timeout(c->r, base);
  return finish(L, c, rep);
}

/* c:pipe({cmd, args...}, ...) -> a list of replies, one round trip; an
 * error reply raises once every reply was read. */
static int c_pipe(lua_State *L) {
  bconn *c = check_conn(L, 1);
  int top = lua_gettop(L);
  if (!mpe__redis_ok(c->r) && mpe__redis_reconnect(c->r, mpe_time() + 30) < 0) return lost(L, c);
  for (int i = 2; i <= top; i++) {
    luaL_checktype(L, i, LUA_TTABLE);
    int base = lua_gettop(L);
    lua_Integer m = luaL_len(L, i);
    luaL_checkstack(L, (int)m + 4, "broker command");
    for (lua_Integer j = 1; j <= m; j++)
      lua_geti(L, i, j);
    const char **av;
    size_t *al;
    int n = gather(L, base + 1, &av, &al);
    if (mpe__redis_append(c->r, n, av, al) < 0) return lost(L, c);
    lua_settop(L, base);
  }
  lua_createtable(L, top - 1, 0);
  int failed = 0;
  for (int i = 2; i <= top; i++) {
    redisReply *rep;
    if (mpe__redis_take(c->r, &rep) < 0) return lost(L, c);
    push_reply(L, c, rep, 1);
    if (rep->type == REDIS_REPLY_ERROR && !failed) {
      failed = 1;
      lua_pushvalue(L, -1);
      lua_insert(L, top + 1);
    }
    mpe__redis_free(rep);
    lua_rawseti(L, -2, i - 1);
  }
  if (failed) {
    lua_pushvalue(L, top + 1);
    return lua_error(L);
  }
  return 1;
}

typedef struct bscript {
  mpe__redis_script s;
} bscript;

/* B.script(src) -> a server-side script, run by its SHA1. */
static int b_script(lua_State *L) {
  luaL_checkstring(L, 1);
  bscript *s = lua_newuserdatauv(L, sizeof *s, 1);
  memset(s, 0, sizeof *s);
  lua_pushvalue(L, 1); /* keeps the source alive */
  lua_setiuservalue(L, -2, 1);
  s->s.src = lua_tostring(L, 1);
  luaL_setmetatable(L, SCRIPT_MT);
  return 1;
}

/* c:eval(script, nkeys, keys and args...) -> the reply. */
static int c_eval(lua_State *L) {
  bconn *c = check_conn(L, 1);
  bscript *s = luaL_checkudata(L, 2, SCRIPT_MT);
  int nkeys = (int)luaL_checkinteger(L, 3);
  const char **av = NULL;
  size_t *al = NULL;
  int n = lua_gettop(L) > 3 ? gather(L, 4, &av, &al) : 0;
  redisReply *rep;
  if (!mpe__redis_ok(c->r) && mpe__redis_reconnect(c->r, mpe_time() + 30) < 0) return lost(L, c);
  int rc = mpe__redis_eval(c->r, &s->s, &rep, nkeys, n, av, al);
  if (rc < 0) return lost(L, c);
  return finish(L, c, rep);
}

static int c_display(lua_State *L) {
  bconn *c = luaL_checkudata(L, 1, CONN_MT);
  lua_pushstring(L, c->display);
  return 1;
}


/* ------------------------------------------------------- lease renewal
 *
 * The leases this process holds (its broker Locks) are renewed by a thread
 * of its own, every lease/3, whatever the Lua side is doing (a long
 * computation, a sleep, a local wait): the holder's host renews while it
 * lives. The thread has its own connection per broker, blocks every signal
 * (the run's SIGINT stays the main thread's), and never touches Lua. A
 * forked child starts with no leases and no thread (a renewer of another
 * pid is left alone: its mutex may have been held at the fork). */

#define MAX_LEASES 64
#define MAX_RCONNS 4

typedef struct held_lease {
  char key[256], token[200];
  int url; /* index in rconn */
  long ms;
  double due;
} held_lease;

typedef struct renewer {
  pid_t pid;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int started;
  held_lease v[MAX_LEASES];
  int n;
  char *url[MAX_RCONNS];
  mpe__redis *conn[MAX_RCONNS];
} renewer;

static renewer *ren;

static const char renew_src[] = "if redis.call('HGET', KEYS[1], 'o') == ARGV[1] then "
                                "redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end return 0";

static void *renew_loop(void *arg) {
  renewer *R = arg;
  mpe__redis_script script = {renew_src, {0}};
  pthread_mutex_lock(&R->mu);
  for (;;) {
    double now = mpe_time(), next = now + 3600;
    for (int i = 0; i < R->n; i++) {
      if (R->v[i].due > now) {
        if (R->v[i].due < next) next = R->v[i].due;
        continue;
      }
      held_lease l = R->v[i];
      mpe__redis **c = &R->conn[l.url];
      const char *url = R->url[l.url];
      pthread_mutex_unlock(&R->mu);
      char err[256], ms[32];
      snprintf(ms, sizeof ms, "%ld", l.ms);
      if (!*c) mpe__redis_connect(c, url, 5.0, err, sizeof err);
      else if (!mpe__redis_ok(*c)) mpe__redis_reconnect(*c, mpe_time() + (double)l.ms / 3000.0);
      if (*c && mpe__redis_ok(*c)) {
        const char *av[3] = {l.key, l.token, ms};
        struct redisReply *rep = NULL;
        if (mpe__redis_eval(*c, &script, &rep, 1, 3, av, NULL) == 0) mpe__redis_free(rep);
      }
      pthread_mutex_lock(&R->mu);
      /* the next renewal of that key, if it is still held (releases may have moved it) */
      for (int j = 0; j < R->n; j++)
        if (!strcmp(R->v[j].key, l.key)) R->v[j].due = mpe_time() + (double)l.ms / 3000.0;
      now = mpe_time();
      next = now;
      break; /* look again from the start: the list may have changed */
    }
    if (next > now) {
      struct timespec ts;
      ts.tv_sec = (time_t)next;
      ts.tv_nsec = (long)((next - (double)ts.tv_sec) * 1e9);
      pthread_cond_timedwait(&R->cv, &R->mu, &ts);
    }
  }
  return NULL;
}

static renewer *renewer_get(void) {
  if (ren && ren->pid == getpid()) return ren;
  renewer *R = calloc(1, sizeof *R);
  if (!R) return NULL;
  R->pid = getpid();
  pthread_mutex_init(&R->mu, NULL);
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC); /* mpe_time's clock */
  pthread_cond_init(&R->cv, &ca);
  pthread_condattr_destroy(&ca);
  ren = R;
  return R;
}

/* B.lease_hold(conn, key, token, lease_seconds): renew key while held. */
static int b_lease_hold(lua_State *L) {
  bconn *c = check_conn(L, 1);
  const char *key = luaL_checkstring(L, 2), *token = luaL_checkstring(L, 3);
  double lease = luaL_checknumber(L, 4);
  renewer *R = renewer_get();
  if (!R || strlen(key) >= sizeof R->v[0].key || strlen(token) >= sizeof R->v[0].token)
    return luaL_error(L, "Lock: cannot renew this lease");
  pthread_mutex_lock(&R->mu);
  int u = 0;
  while (u < MAX_RCONNS && R->url[u] && strcmp(R->url[u], c->url)) u++;
  int ok = u < MAX_RCONNS && R->n < MAX_LEASES;
  if (ok && !R->url[u]) ok = (R->url[u] = strdup(c->url)) != NULL;
  if (ok) {
    held_lease *l = &R->v[R->n++];
    snprintf(l->key, sizeof l->key, "%s", key);
    snprintf(l->token, sizeof l->token, "%s", token);
    l->url = u;
    l->ms = (long)(lease * 1000);
    l->due = mpe_time() + lease / 3;
    pthread_cond_signal(&R->cv);
  }
  if (ok && !R->started) {
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    pthread_t th;
    R->started = pthread_create(&th, NULL, renew_loop, R) == 0;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (R->started) pthread_detach(th);
    else ok = 0;
  }
  pthread_mutex_unlock(&R->mu);
  if (!ok) return luaL_error(L, "Lock: cannot renew this lease (too many held at once, or no thread)");
  return 0;
}

/* B.lease_drop(key): no longer held. */
static int b_lease_drop(lua_State *L) {
  const char *key = luaL_checkstring(L, 1);
  renewer *R = ren && ren->pid == getpid() ? ren : NULL;
  if (!R) return 0;
  pthread_mutex_lock(&R->mu);
  for (int i = 0; i < R->n; i++)
    if (!strcmp(R->v[i].key, key)) {
      R->v[i] = R->v[--R->n];
      break;
    }
  pthread_mutex_unlock(&R->mu);
  return 0;
}

static const luaL_Reg conn_methods[] = {
    {"call", c_call}, {"bcall", c_bcall},     {"pipe", c_pipe},
    {"eval", c_eval}, {"display", c_display}, {NULL, NULL},
};

static void open_conn_meta(lua_State *L) {
  luaL_newmetatable(L, CONN_MT);
  luaL_newlib(L, conn_methods);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, conn_gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
  luaL_newmetatable(L, SCRIPT_MT);
  lua_pop(L, 1);
}
#else
static int no_broker(lua_State *L) {
  return luaL_error(L, "Broker: this build has no broker (hiredis was not found when it was built)");
}
#define b_connect     no_broker
#define b_lookup      no_broker
#define b_lease_hold  no_broker
#define b_lease_drop  no_broker
static int b_script(lua_State *L) { /* kept for a connection that never comes */
  luaL_checkstring(L, 1);
  lua_settop(L, 1);
  return 1;
}
static int b_display(lua_State *L) {
  if (!mpel_run_broker()) return 0;
  return no_broker(L);
}
static void open_conn_meta(lua_State *L) { (void)L; }
#endif

/* ---------------------------------------------------------- the objects */

/* An object's handle: a userdata whose user value is its Lua state table
 * {sub = N, display = "...", prefix = "..."} (and whatever bobj.lua keeps);
 * every metatable of these objects is registered with this one class. */
static const char *obj_encode(lua_State *L, int idx, mpel_wire *w) {
  char buf[256];
  size_t dl, pl;
  lua_getiuservalue(L, idx, 1);
  lua_getfield(L, -1, "sub");
  lua_getfield(L, -2, "display");
  lua_getfield(L, -3, "prefix");
  int sub = (int)lua_tointeger(L, -3);
  const char *d = lua_tolstring(L, -2, &dl), *p = lua_tolstring(L, -1, &pl);
  const char *why = NULL;
  if (!d || !p || dl + pl + 2 > sizeof buf)
    why = "a broker object's reference is too long";
  else {
    buf[0] = (char)sub;
    memcpy(buf + 1, d, dl + 1);
    memcpy(buf + 2 + dl, p, pl);
    why = mpel_put_object(w, OBJ_KIND, buf, dl + pl + 2);
  }
  lua_pop(L, 4);
  return why;
}

static int obj_decode(lua_State *L, const mpel_class *cls, const unsigned char *ref, size_t len,
                      mpe_pipe **ends, size_t nends) {
  const unsigned char *nul = len > 1 ? memchr(ref + 1, 0, len - 1) : NULL;
  if (!nul) return -1;
  if (lua_getfield(L, LUA_REGISTRYINDEX, "mpengine.battach") != LUA_TFUNCTION) return -1;
  lua_pushinteger(L, ref[0]);
  lua_pushstring(L, (const char *)ref + 1);
  lua_pushlstring(L, (const char *)nul + 1, len - (size_t)(nul + 1 - ref));
  lua_call(L, 3, 1);
  return 0;
}

static const mpel_class obj_class = {"BrokerObject", OBJ_KIND, obj_encode, obj_decode, NULL, NULL, 1};

/* B.register(mt): mt becomes the metatable of one kind of broker object. */
static int b_register(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  mpel_register_class(L, &obj_class);
  return 0;
}

/* B.wrap(state, mt) -> a handle with state as its user value. */
static int b_wrap(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_newuserdatauv(L, 1, 1);
  lua_pushvalue(L, 1);
  lua_setiuservalue(L, -2, 1);
  lua_pushvalue(L, 2);
  lua_setmetatable(L, -2);
  return 1;
}

/* B.state(handle) -> its state table (no check: the methods' own). */
static int b_state(lua_State *L) {
  if (lua_type(L, 1) != LUA_TUSERDATA || lua_getiuservalue(L, 1, 1) != LUA_TTABLE) return 0;
  return 1;
}

static int b_check_signal(lua_State *L) {
  mpel_check_signal(L);
  return 0;
}

/* B.token() -> "HOST:PID:RANDOM", this process's name on brokers (new after a fork). */
static int b_token(lua_State *L) {
  char host[128] = "host";
  unsigned char rnd[6];
  gethostname(host, sizeof host - 1);
  host[sizeof host - 1] = 0;
  if (getrandom(rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd) memset(rnd, 0, sizeof rnd);
  char buf[200];
  snprintf(buf, sizeof buf, "%s:%d:%02x%02x%02x%02x%02x%02x", host, (int)getpid(), rnd[0], rnd[1], rnd[2],
           rnd[3], rnd[4], rnd[5]);
  lua_pushstring(L, buf);
  return 1;
}

static const luaL_Reg bfuncs[] = {
    {"connect", b_connect},       {"lookup", b_lookup},
    {"display", b_display},       {"script", b_script},
    {"register", b_register},     {"wrap", b_wrap},
    {"state", b_state},           {"encode", mpel_l_encode_remote},
    {"decode", mpel_l_decode},         {"check_signal", b_check_signal},
    {"token", b_token},           {"lease_hold", b_lease_hold},
    {"lease_drop", b_lease_drop}, {NULL, NULL},
};

extern const unsigned char mpel_bobj_lua[];
extern const size_t mpel_bobj_lua_len;

void mpel_open_broker_objects(lua_State *L) {
  int mod = lua_gettop(L);
  open_conn_meta(L);
  if (luaL_loadbufferx(L, (const char *)mpel_bobj_lua, mpel_bobj_lua_len, "=mpengine.bobj", "t") != LUA_OK)
    lua_error(L);
  lua_pushvalue(L, mod);
  luaL_newlib(L, bfuncs);
  lua_call(L, 2, 1); /* the attach function, for obj_decode */
  lua_setfield(L, LUA_REGISTRYINDEX, "mpengine.battach");
  lua_settop(L, mod);
}
