/* lqueue.c - mp.Queue, mp.JoinableQueue and mp.SimpleQueue over the
 * engine's shared-memory queue.
 *
 * A handle holds one reference to the engine queue; a message in flight that
 * names a queue holds another (taken by the encoder, adopted by the decoder),
 * so a Queue sent through a Queue is the same queue on the other side and is
 * never freed under a reader. The handle keeps a reusable receive buffer, so
 * a get of a small value allocates nothing but the value itself. */
#include <errno.h>
#include <string.h>

#include "mpe_lua.h"

enum { PLAIN = 0, JOINABLE = 1, SIMPLE = 2 };
static const char *const class_names[] = {"Queue", "JoinableQueue", "SimpleQueue"};

typedef struct lqueue {
  mpe_queue *q;
  int variant;
  mpe_qmsg m;
} lqueue;

static const char QUEUE_KEY = 'q'; /* marks the three queue metatables */

static lqueue *check_q(lua_State *L, int idx) {
  lqueue *h = lua_touserdata(L, idx);
  if (h && lua_getmetatable(L, idx)) {
    int ok = lua_rawgetp(L, -1, &QUEUE_KEY) == LUA_TBOOLEAN;
    lua_pop(L, 2);
    if (ok) {
      if (!h->q) luaL_error(L, "%s is released", class_names[h->variant]);
      return h;
    }
  }
  luaL_typeerror(L, idx, "Queue");
  return NULL;
}

static void push_queue(lua_State *L, mpe_queue *q, int variant) {
  lqueue *h = lua_newuserdatauv(L, sizeof *h, 0);
  memset(h, 0, sizeof *h);
  h->q = q;
  h->variant = variant;
  luaL_setmetatable(L, class_names[variant]);
  mpel_track(L, -1);
}

static int new_queue(lua_State *L, int variant) {
  lua_Integer maxsize = 0;
  if (variant != SIMPLE && !lua_isnoneornil(L, 1)) {
    maxsize = luaL_checkinteger(L, 1);
    luaL_argcheck(L, maxsize >= 0, 1, "maxsize must be >= 0 (0: unbounded)");
  }
  mpe_queue *q;
  int rc = mpe_queue_new(&q, (size_t)maxsize);
  if (rc == -ENOMEM) { /* garbage handles may hold queues: Lua's GC cannot see the arena */
    lua_gc(L, LUA_GCCOLLECT);
    rc = mpe_queue_new(&q, (size_t)maxsize);
  }
  if (rc < 0) return mpel_fail(L, class_names[variant], rc);
  push_queue(L, q, variant);
  return 1;
}

static int l_queue(lua_State *L) { return new_queue(L, PLAIN); }
static int l_joinable(lua_State *L) { return new_queue(L, JOINABLE); }
static int l_simple(lua_State *L) { return new_queue(L, SIMPLE); }

static int do_put(lua_State *L, double timeout, int nowait) {
  lqueue *h = check_q(L, 1);
  luaL_checkany(L, 2);
  if (lua_isnil(L, 2)) return luaL_argerror(L, 2, "cannot put nil");
  if (mpe_queue_is_closed(h->q)) return luaL_error(L, "%s is closed", class_names[h->variant]);
  mpel_wire *w = mpel_wire_get(L, 0);
  mpel_encode(L, 2, "item", w);
  double deadline = mpel_deadline(timeout);
  int rc;
  while ((rc = mpe_queue_put(h->q, w->buf, w->len, 1, mpel_left(deadline))) == MPE_EINTR) {
    if (mpel_signal) mpel_wire_done(w);
    mpel_check_signal(L);
  }
  mpel_wire_done(w);
  if (rc == 0) {
    lua_pushboolean(L, 1);
    return 1;
  }
  if (rc == MPE_ECLOSED) return luaL_error(L, "%s is closed", class_names[h->variant]);
  if (rc == MPE_ETIMEDOUT) return mpel_push_reason(L, nowait ? MPE_EFULL : rc);
  return mpel_fail(L, "put", rc);
}

static int q_put(lua_State *L) { return do_put(L, mpel_opt_timeout(L, 3), 0); }
static int q_put_nowait(lua_State *L) { return do_put(L, 0, 1); }

static int do_get(lua_State *L, double timeout, int nowait) {
  lqueue *h = check_q(L, 1);
  double deadline = mpel_deadline(timeout);
  int rc;
  while ((rc = mpe_queue_get(h->q, mpel_left(deadline), &h->m)) == MPE_EINTR) mpel_check_signal(L);
  if (rc == MPE_ETIMEDOUT) return mpel_push_reason(L, nowait ? MPE_EEMPTY : rc);
  if (rc == MPE_ECLOSED) return mpel_push_reason(L, rc);
  if (rc < 0) return mpel_fail(L, "get", rc);
  mpel_decode(L, h->m.data, h->m.len, NULL, 0);
  mpe_qmsg_done(&h->m);
  return 1;
}

static int q_get(lua_State *L) { return do_get(L, mpel_opt_timeout(L, 2), 0); }
static int q_get_nowait(lua_State *L) { return do_get(L, 0, 1); }

static int q_qsize(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)mpe_queue_size(check_q(L, 1)->q));
  return 1;
}

static int q_empty(lua_State *L) {
  lua_pushboolean(L, mpe_queue_size(check_q(L, 1)->q) == 0);
  return 1;
}

static int q_full(lua_State *L) {
  mpe_queue *q = check_q(L, 1)->q;
  size_t max = mpe_queue_maxsize(q);
  lua_pushboolean(L, max > 0 && mpe_queue_size(q) >= max);
  return 1;
}

static int q_maxsize(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)mpe_queue_maxsize(check_q(L, 1)->q));
  return 1;
}

static int q_close(lua_State *L) {
  mpe_queue_close(check_q(L, 1)->q);
  return 0;
}

static int iter_next(lua_State *L) {
  lua_settop(L, 0);
  lua_pushvalue(L, lua_upvalueindex(1));
  return do_get(L, -1, 0) == 2 ? (lua_pushnil(L), 1) : 1;
}

static int q_iter(lua_State *L) {
  check_q(L, 1);
  lua_settop(L, 1);
  lua_pushcclosure(L, iter_next, 1);
  return 1;
}

static int q_task_done(lua_State *L) {
  lqueue *h = check_q(L, 1);
  if (mpe_queue_task_done(h->q) != 0) return luaL_error(L, "task_done() called more times than items were put");
  return 0;
}

static int q_join(lua_State *L) {
  lqueue *h = check_q(L, 1);
  double timeout = mpel_opt_timeout(L, 2);
  double deadline = mpel_deadline(timeout);
  int rc;
  while ((rc = mpe_queue_join(h->q, mpel_left(deadline))) == MPE_EINTR) mpel_check_signal(L);
  return mpel_push_bool(L, rc == 0); /* false, "timeout" when it timed out */
}

static int q_gc(lua_State *L) {
  lqueue *h = lua_touserdata(L, 1);
  mpe_qmsg_free(&h->m);
  if (h->q) mpe_queue_free(h->q);
  h->q = NULL;
  return 0;
}

static int q_is_closed(lua_State *L) {
  lua_pushboolean(L, mpe_queue_is_closed(check_q(L, 1)->q));
  return 1;
}

static int q_tostring(lua_State *L) {
  lqueue *h = check_q(L, 1);
  lua_pushfstring(L, "%s (%I items%s)", class_names[h->variant], (lua_Integer)mpe_queue_size(h->q),
                  mpe_queue_is_closed(h->q) ? ", closed" : "");
  return 1;
}

static const char *queue_encode(lua_State *L, int idx, mpel_wire *w) {
  lqueue *h = lua_touserdata(L, idx);
  if (!h->q) return "Queue (released)";
  unsigned char p[9];
  uint64_t ref = mpe_queue_ref(h->q);
  p[0] = (unsigned char)h->variant;
  memcpy(p + 1, &ref, 8);
  const char *why = mpel_put_object(w, MPEL_QUEUE, p, sizeof p);
  if (!why && w->transfer) mpe_queue_retain(h->q); /* the reference in flight */
  return why;
}

static int queue_decode(lua_State *L, const mpel_class *cls, const unsigned char *p, size_t len,
                        mpe_pipe **ends, size_t nends) {
  (void)cls;
  (void)ends;
  (void)nends;
  uint64_t ref;
  if (len != 9 || p[0] > SIMPLE) return -1;
  memcpy(&ref, p + 1, 8);
  mpe_queue *q = mpe_queue_from_ref(ref);
  if (!q) return -1;
  if (mpel_decoding_copy) mpe_queue_retain(q);
  push_queue(L, q, p[0]); /* adopts the reference in flight */
  mpe_obj_held(q);        /* ours now: if we are killed, our parent gives it back */
  return 0;
}

static void queue_retain(void *ud) {
  lqueue *h = ud;
  if (h->q) mpe_queue_retain(h->q);
}

static void queue_release(void *ud, int forget) {
  lqueue *h = ud;
  if (h->q) mpe_queue_free(h->q);
  if (forget) h->q = NULL;
}

static const mpel_class queue_class = {"Queue", MPEL_QUEUE, queue_encode, queue_decode,
                                       queue_retain, queue_release};

static const luaL_Reg simple_methods[] = {
    {"put", q_put},     {"get", q_get},   {"empty", q_empty},
    {"close", q_close}, {"iter", q_iter}, {"is_closed", q_is_closed}, {NULL, NULL},
};

static const luaL_Reg queue_methods[] = {
    {"put_nowait", q_put_nowait}, {"get_nowait", q_get_nowait}, {"qsize", q_qsize}, {"full", q_full},
    {"maxsize", q_maxsize}, {NULL, NULL},
};

static const luaL_Reg joinable_methods[] = {{"task_done", q_task_done}, {"join", q_join}, {NULL, NULL}};

void mpel_open_queue(lua_State *L) {
  for (int v = 0; v < 3; v++) {
    if (luaL_newmetatable(L, class_names[v])) {
      luaL_newlib(L, simple_methods);
      if (v != SIMPLE) luaL_setfuncs(L, queue_methods, 0);
      if (v == JOINABLE) luaL_setfuncs(L, joinable_methods, 0);
      lua_setfield(L, -2, "__index");
      lua_pushboolean(L, 1);
      lua_rawsetp(L, -2, &QUEUE_KEY);
      lua_pushcfunction(L, q_gc);
      lua_setfield(L, -2, "__gc");
      lua_pushcfunction(L, q_tostring);
      lua_setfield(L, -2, "__tostring");
      mpel_register_class(L, &queue_class);
    }
    lua_pop(L, 1);
  }
  lua_pushcfunction(L, l_queue);
  lua_setfield(L, -2, "Queue");
  lua_pushcfunction(L, l_joinable);
  lua_setfield(L, -2, "JoinableQueue");
  lua_pushcfunction(L, l_simple);
  lua_setfield(L, -2, "SimpleQueue");
}
