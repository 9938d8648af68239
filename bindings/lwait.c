/* lwait.c - mp.wait(objects [, timeout]): Python's
 * multiprocessing.connection.wait. The engine decides readiness and sleeps
 * (mpe_wait_any); this maps the Lua handles to its items and back, in the
 * order given. Like every blocking call it ends on the run's SIGINT/SIGTERM
 * and goes on with the time left after any other signal. */
#include "mpe_lua.h"

/* The engine item for objects[i] (at the top of the stack); raises for a
 * value that cannot be waited on. */
static void to_item(lua_State *L, lua_Integer i, mpe_wait_item *it) {
  it->ready = 0;
  if ((it->obj = mpel_test_connection(L, -1))) {
    it->kind = MPE_WAIT_PIPE;
    return;
  }
  if (luaL_testudata(L, -1, "Process")) {
    it->kind = MPE_WAIT_PROCESS;
    it->obj = mpel_test_process(L, -1);
    return;
  }
  mpel_obj *h = mpel_test_shared_any(L, -1);
  int kind = h ? h->t->cls.kind : 0;
  if (kind == MPEL_QUEUE || kind == MPEL_EVENT) {
    if (!h->o) luaL_error(L, "mp.wait: objects[%I] (%s) is released", i, h->t->cls.name);
    it->kind = kind == MPEL_QUEUE ? MPE_WAIT_QUEUE : MPE_WAIT_EVENT;
    it->obj = h->o;
    return;
  }
  luaL_error(L, "mp.wait: objects[%I] is a %s, not a Connection, Process, Queue or Event", i,
             luaL_typename(L, -1));
}

int mpel_l_wait(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  double timeout = mpel_opt_timeout(L, 2);
  lua_Integer n = (lua_Integer)lua_rawlen(L, 1);
  if (n == 0 && timeout < 0) return luaL_error(L, "mp.wait: no objects and no timeout (would wait forever)");
  /* a userdata, so a raise below frees it */
  mpe_wait_item *items = lua_newuserdatauv(L, (size_t)n * sizeof *items + 1, 0);
  for (lua_Integer i = 1; i <= n; i++) {
    lua_rawgeti(L, 1, i);
    to_item(L, i, &items[i - 1]);
    lua_pop(L, 1);
  }
  double deadline = mpel_deadline(timeout);
  int rc = mpe_wait_any(items, (size_t)n, timeout);
  while (rc == MPE_EINTR) {
    mpel_check_signal(L);
    rc = mpe_wait_any(items, (size_t)n, mpel_left(deadline));
  }
  if (rc < 0) return mpel_fail(L, "mp.wait", rc);
  lua_createtable(L, rc, 0);
  lua_Integer k = 0;
  for (lua_Integer i = 1; i <= n; i++) {
    if (!items[i - 1].ready) continue;
    lua_rawgeti(L, 1, i);
    lua_rawseti(L, -2, ++k);
  }
  return 1;
}
