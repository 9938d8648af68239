/* lqueue.c - mp.Queue, mp.JoinableQueue and mp.SimpleQueue over the
 * engine's shared-memory queue.
 *
 * The three are shared objects like the others (lshared.c: references,
 * the wire, ==), one wire kind with a variant each. A handle also keeps a
 * reusable receive buffer, so a get of a small value allocates nothing but
 * the value itself. */
#include <errno.h>
#include <string.h>

#include "mpe_lua.h"

enum { PLAIN = 0, JOINABLE = 1, SIMPLE = 2 };
static const char *const class_names[] = {"Queue", "JoinableQueue", "SimpleQueue"};

typedef struct lqueue {
  mpel_obj base; /* first: a shared-object handle (o: the mpe_queue) */
  int variant;
  mpe_qmsg m;
} lqueue;

#define QOF(h) ((mpe_queue *)(h)->base.o)
#define VARIANT(h) ((h)->variant)

static lqueue *check_q(lua_State *L, int idx) {
  /* The hot path, a method called on a handle of its own class (upvalue 1
   * is the class's metatable): the metatable stays on the stack, under the
   * method's results. */
  lqueue *h = lua_touserdata(L, idx);
  if (h && lua_getmetatable(L, idx)) {
    if (lua_rawequal(L, -1, lua_upvalueindex(1)) && h->base.o) return h;
    lua_pop(L, 1);
  }
  h = (lqueue *)mpel_test_shared_any(L, idx);
  if (h && h->base.t->cls.kind == MPEL_QUEUE) {
    if (!h->base.o) luaL_error(L, "%s is released", class_names[VARIANT(h)]);
    return h;
  }
  luaL_typeerror(L, idx, "Queue");
  return NULL;
}

static const mpel_shared_type queue_types[3];

static void push_queue(lua_State *L, mpe_queue *q, int variant) {
  lqueue *h = (lqueue *)mpel_push_shared_sized(L, &queue_types[variant], q, sizeof(lqueue));
  h->variant = variant;
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
  int nargs = lua_gettop(L); /* check_q may leave the metatable above the arguments */
  lqueue *h = check_q(L, 1);
  if (nargs < 2) return luaL_argerror(L, 2, "value expected");
  if (lua_isnil(L, 2)) return luaL_argerror(L, 2, "cannot put nil");
  if (mpe_queue_is_closed(QOF(h))) return luaL_error(L, "%s is closed", class_names[VARIANT(h)]);
  /* upvalue 2: the state's wire (a method called from its class) */
  mpel_wire *w = lua_touserdata(L, lua_upvalueindex(2));
  w = w ? mpel_wire_begin(w, 0) : mpel_wire_get(L, 0);
  mpel_encode(L, 2, "item", w);
  double deadline = mpel_deadline(timeout);
  int rc;
  while ((rc = mpe_queue_put(QOF(h), w->buf, w->len, 1, mpel_left(deadline))) == MPE_EINTR) {
    if (mpel_signal) {
      mpel_wire_unsend(L, w);
      mpel_wire_done(w);
    }
    mpel_check_signal(L);
  }
  if (rc != 0) mpel_wire_unsend(L, w); /* not sent: its references in flight go back */
  mpel_wire_done(w);
  if (rc == 0) {
    lua_pushboolean(L, 1);
    return 1;
  }
  if (rc == MPE_ECLOSED) return luaL_error(L, "%s is closed", class_names[VARIANT(h)]);
  if (rc == MPE_ETIMEDOUT) return mpel_push_reason(L, nowait ? MPE_EFULL : rc);
  return mpel_fail(L, "put", rc);
}

static int q_put(lua_State *L) { return do_put(L, mpel_opt_timeout(L, 3), 0); }
static int q_put_nowait(lua_State *L) { return do_put(L, 0, 1); }

static int do_get(lua_State *L, double timeout, int nowait) {
  lqueue *h = check_q(L, 1);
  double deadline = mpel_deadline(timeout);
  int rc;
  while ((rc = mpe_queue_get(QOF(h), mpel_left(deadline), &h->m)) == MPE_EINTR) mpel_check_signal(L);
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
  lua_pushinteger(L, (lua_Integer)mpe_queue_size(QOF(check_q(L, 1))));
  return 1;
}

static int q_empty(lua_State *L) {
  lua_pushboolean(L, mpe_queue_size(QOF(check_q(L, 1))) == 0);
  return 1;
}

static int q_full(lua_State *L) {
  mpe_queue *q = QOF(check_q(L, 1));
  size_t max = mpe_queue_maxsize(q);
  lua_pushboolean(L, max > 0 && mpe_queue_size(q) >= max);
  return 1;
}

static int q_maxsize(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)mpe_queue_maxsize(QOF(check_q(L, 1))));
  return 1;
}

static int q_close(lua_State *L) {
  mpe_queue_close(QOF(check_q(L, 1)));
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
  if (mpe_queue_task_done(QOF(h)) != 0) return luaL_error(L, "task_done() called more times than items were put");
  return 0;
}

static int q_join(lua_State *L) {
  lua_settop(L, 2); /* check_q may leave one value above the arguments */
  lqueue *h = check_q(L, 1);
  double timeout = mpel_opt_timeout(L, 2);
  double deadline = mpel_deadline(timeout);
  int rc;
  while ((rc = mpe_queue_join(QOF(h), mpel_left(deadline))) == MPE_EINTR) mpel_check_signal(L);
  return mpel_push_bool(L, rc == 0); /* false, "timeout" when it timed out */
}

static int q_gc(lua_State *L) {
  lqueue *h = lua_touserdata(L, 1);
  if (h) mpe_qmsg_free(&h->m); /* not a handle: see mpel_shared_gc */
  return mpel_shared_gc(L);
}

static int q_is_closed(lua_State *L) {
  lua_pushboolean(L, mpe_queue_is_closed(QOF(check_q(L, 1))));
  return 1;
}

static int q_tostring(lua_State *L) {
  lqueue *h = check_q(L, 1);
  lua_pushfstring(L, "%s (%I items%s)", class_names[VARIANT(h)], (lua_Integer)mpe_queue_size(QOF(h)),
                  mpe_queue_is_closed(QOF(h)) ? ", closed" : "");
  return 1;
}

/* The wire: the variant, then the shared objects' form. */
static const char *queue_encode(lua_State *L, int idx, mpel_wire *w) {
  lqueue *h = lua_touserdata(L, idx);
  if (!h->base.o) return "Queue (released)";
  unsigned char variant = (unsigned char)h->variant;
  return mpel_shared_put(w, &h->base, &variant, 1);
}

static int queue_decode(lua_State *L, const mpel_class *cls, const unsigned char *p, size_t len,
                        mpe_pipe **ends, size_t nends) {
  (void)cls;
  (void)ends;
  (void)nends;
  if (len < 1 || p[0] > SIMPLE) return -1;
  mpe_queue *q = mpel_shared_take(L, &queue_types[p[0]], p + 1, len - 1);
  if (!q) return -1;
  push_queue(L, q, p[0]); /* owns the reference taken or adopted (lshared.c notes it held) */
  return 0;
}

MPEL_SHARED_WRAPPERS(queue, mpe_queue)
#define QUEUE_TYPE(name)                                                                     \
  {{name, MPEL_QUEUE, queue_encode, queue_decode, mpel_shared_retain, mpel_shared_release, 0}, \
   MPEL_SHARED_FUNCS(queue), 0, NULL}
static const mpel_shared_type queue_types[3] = {QUEUE_TYPE("Queue"), QUEUE_TYPE("JoinableQueue"),
                                                QUEUE_TYPE("SimpleQueue")};

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
      /* the methods, each with upvalues 1 the metatable (check_q), 2 the wire (do_put) */
      lua_newtable(L);
      for (int set = 0; set < 3; set++) {
        static const luaL_Reg *const sets[] = {simple_methods, queue_methods, joinable_methods};
        if ((set == 1 && v == SIMPLE) || (set == 2 && v != JOINABLE)) continue;
        lua_pushvalue(L, -2);
        mpel_push_wire(L);
        luaL_setfuncs(L, sets[set], 2);
      }
      lua_setfield(L, -2, "__index");
      mpel_shared_metatable(L, &queue_types[v]);
      lua_pushcfunction(L, q_gc);
      lua_setfield(L, -2, "__gc");
      lua_pushcfunction(L, q_tostring);
      lua_setfield(L, -2, "__tostring");
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
