/* lshared.c - handles for the engine objects that live in the arena.
 *
 * Locks, semaphores, events, conditions, barriers and shared values all
 * follow one pattern: a userdata {object, type} holding one reference; the
 * wire form is {type's kind, 64-bit arena reference}; a message in flight
 * holds a reference of its own (taken by the encoder, adopted by the
 * decoder); the parent takes a reference for a child before forking it
 * (retain), which the child gives back when it ends normally (release).
 * Only the methods differ, and they live in lsync.c and lvalue.c. */
#include <string.h>

#include "mpe_lua.h"

static const char TYPE_KEY = 't'; /* metatable field: the mpel_shared_type */

mpel_obj *mpel_push_shared(lua_State *L, const mpel_shared_type *t, void *o) {
  mpel_obj *h = lua_newuserdatauv(L, sizeof *h, t->nuv);
  h->o = o;
  h->t = t;
  luaL_setmetatable(L, t->cls.name);
  mpel_track(L, -1);
  return h;
}

mpel_obj *mpel_test_shared(lua_State *L, int idx, const mpel_shared_type *t) {
  mpel_obj *h = lua_touserdata(L, idx);
  if (!h || !lua_getmetatable(L, idx)) return NULL;
  const void *mt_type = lua_rawgetp(L, -1, &TYPE_KEY) == LUA_TLIGHTUSERDATA ? lua_touserdata(L, -1) : NULL;
  lua_pop(L, 2);
  return mt_type == t ? h : NULL;
}

mpel_obj *mpel_fast_shared(lua_State *L, int idx) {
  mpel_obj *h = lua_touserdata(L, idx);
  if (!h || !lua_getmetatable(L, idx)) return NULL;
  int same = lua_rawequal(L, -1, lua_upvalueindex(1));
  lua_pop(L, 1);
  return same && h->o ? h : NULL;
}

mpel_obj *mpel_check_shared(lua_State *L, int idx, const mpel_shared_type *t) {
  mpel_obj *h = mpel_test_shared(L, idx, t);
  if (!h) luaL_typeerror(L, idx, t->cls.name);
  if (!h->o) luaL_error(L, "%s is released", t->cls.name);
  return h;
}

static int shared_gc(lua_State *L) {
  mpel_obj *h = lua_touserdata(L, 1);
  if (h->o) h->t->obj_free(h->o);
  h->o = NULL;
  return 0;
}

static int shared_tostring(lua_State *L) {
  mpel_obj *h = lua_touserdata(L, 1);
  lua_pushfstring(L, "%s (%p)", h->t->cls.name, h->o);
  return 1;
}

const char *mpel_shared_encode(lua_State *L, int idx, mpel_wire *w) {
  mpel_obj *h = lua_touserdata(L, idx);
  if (!h->o) return "released object";
  uint64_t ref = h->t->obj_ref(h->o);
  const char *why = mpel_put_object(w, h->t->cls.kind, &ref, sizeof ref);
  if (!why && w->transfer) h->t->obj_retain(h->o); /* the reference in flight */
  return why;
}

int mpel_shared_decode(lua_State *L, const mpel_class *cls, const unsigned char *p, size_t len,
                         mpe_pipe **ends, size_t nends) {
  (void)ends;
  (void)nends;
  const mpel_shared_type *t = (const mpel_shared_type *)cls;
  uint64_t ref;
  if (len != sizeof ref) return -1;
  memcpy(&ref, p, sizeof ref);
  void *o = t->obj_from_ref(ref);
  if (!o) return -1;
  if (mpel_decoding_copy) t->obj_retain(o);
  mpel_push_shared(L, t, o); /* adopts the reference in flight */
  return 0;
}

void mpel_shared_retain(void *ud) {
  mpel_obj *h = ud;
  if (h->o) h->t->obj_retain(h->o);
}

void mpel_shared_release(void *ud, int forget) {
  mpel_obj *h = ud;
  if (!h->o) return;
  if (forget && h->t->on_exit) h->t->on_exit(h->o);
  h->t->obj_free(h->o);
  if (forget) h->o = NULL;
}


void mpel_shared_open(lua_State *L, const mpel_shared_type *t, const luaL_Reg *methods,
                      lua_CFunction index, lua_CFunction ctor) {
  if (luaL_newmetatable(L, t->cls.name)) {
    lua_newtable(L);
    lua_pushvalue(L, -2);
    luaL_setfuncs(L, methods, 1); /* upvalue 1: the metatable, for mpel_fast_shared */
    if (index) {
      lua_setfield(L, -2, "methods");
      lua_pushcfunction(L, index);
    }
    lua_setfield(L, -2, "__index");
    lua_pushlightuserdata(L, (void *)t);
    lua_rawsetp(L, -2, &TYPE_KEY);
    lua_pushcfunction(L, shared_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, shared_tostring);
    lua_setfield(L, -2, "__tostring");
    mpel_register_class(L, &t->cls);
  }
  lua_pop(L, 1);
  lua_pushcfunction(L, ctor);
  lua_setfield(L, -2, t->cls.name);
}

static int guard_close(lua_State *L) {
  lua_getiuservalue(L, 1, 1);
  if (lua_getfield(L, -1, "release") != LUA_TFUNCTION) return luaL_error(L, "guard: no release method");
  lua_insert(L, -2);
  lua_call(L, 1, 0);
  return 0;
}

void mpel_push_guard(lua_State *L, int idx) {
  idx = lua_absindex(L, idx);
  /* The guard is cached in the handle's first user value. */
  if (lua_getiuservalue(L, idx, 1) == LUA_TUSERDATA) return;
  lua_pop(L, 1);
  lua_newuserdatauv(L, 1, 1);
  lua_pushvalue(L, idx);
  lua_setiuservalue(L, -2, 1);
  if (luaL_newmetatable(L, "mpengine.guard")) {
    lua_pushcfunction(L, guard_close);
    lua_setfield(L, -2, "__close");
    lua_pushliteral(L, "guard");
    lua_setfield(L, -2, "__name");
  }
  lua_setmetatable(L, -2);
  lua_pushvalue(L, -1);
  lua_setiuservalue(L, idx, 1);
}
