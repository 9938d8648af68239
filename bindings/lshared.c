/* lshared.c - handles for the engine objects that live in the arena.
 *
 * Queues, locks, semaphores, events, conditions, barriers and shared values
 * all follow one pattern: a userdata {object, type} holding one reference;
 * two handles of one object are == (__eq); the wire form is {type's kind,
 * [variant,] 64-bit arena reference, 64-bit check (mpe_obj_check)}, which
 * names that very allocation, so a reference to a freed object, or bytes
 * made to look like one, never become a handle. A real send's message holds
 * a reference in flight (taken by the codec once the message encoded,
 * adopted by the decoder); any other decode takes a new reference, only
 * while the object is alive (mpe_obj_claim). The parent takes a reference
 * for a child before forking it (retain), which the child gives back when
 * it ends normally (release). Only the methods differ, and they live in
 * lqueue.c, lsync.c and lvalue.c. */
#include <errno.h>
#include <string.h>

#include "mpe_lua.h"

static const char TYPE_KEY = 't'; /* metatable field: the mpel_shared_type */

mpel_obj *mpel_push_shared(lua_State *L, const mpel_shared_type *t, void *o) {
  return mpel_push_shared_sized(L, t, o, sizeof(mpel_obj));
}

mpel_obj *mpel_push_shared_sized(lua_State *L, const mpel_shared_type *t, void *o, size_t size) {
  mpel_obj *h = lua_newuserdatauv(L, size, t->nuv);
  if (size > sizeof *h) memset(h + 1, 0, size - sizeof *h);
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

mpel_obj *mpel_test_shared_any(lua_State *L, int idx) {
  mpel_obj *h = lua_touserdata(L, idx);
  if (!h || !lua_getmetatable(L, idx)) return NULL;
  int is = lua_rawgetp(L, -1, &TYPE_KEY) == LUA_TLIGHTUSERDATA;
  lua_pop(L, 2);
  return is ? h : NULL;
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

mpel_obj *mpel_seen[MPEL_SEEN_N];

void mpel_seen_set(lua_State *L, int slot, int idx, mpel_obj *h) {
  mpel_seen[slot] = h;
  lua_pushvalue(L, idx); /* kept alive while the slot names it: its memory cannot be reused */
  lua_rawsetp(L, LUA_REGISTRYINDEX, &mpel_seen[slot]);
}

/* A metamethod may meet a table that a script gave the class's metatable
 * (setmetatable({}, getmetatable(handle))): no handle, nothing to free. */
int mpel_shared_gc(lua_State *L) {
  mpel_obj *h = lua_touserdata(L, 1);
  if (!h) return 0;
  for (int i = 0; i < MPEL_SEEN_N; i++)
    if (mpel_seen[i] == h) mpel_seen[i] = NULL;
  if (h->o) h->t->obj_free(h->o);
  h->o = NULL;
  return 0;
}

/* Two handles are equal when they hold the same object. */
static int shared_eq(lua_State *L) {
  mpel_obj *a = mpel_test_shared_any(L, 1), *b = mpel_test_shared_any(L, 2);
  lua_pushboolean(L, a && b && a->o && a->o == b->o);
  return 1;
}

static int shared_tostring(lua_State *L) {
  mpel_obj *h = mpel_test_shared_any(L, 1);
  if (!h) return luaL_typeerror(L, 1, "shared object");
  lua_pushfstring(L, "%s (%p)", h->t->cls.name, h->o);
  return 1;
}

const char *mpel_shared_put(mpel_wire *w, const mpel_obj *h, const void *prefix, size_t npre) {
  unsigned char p[32];
  uint64_t ref = h->t->obj_ref(h->o), check = mpe_obj_check(h->o);
  if (npre > sizeof p - 16) return "object reference too long";
  if (npre) memcpy(p, prefix, npre);
  memcpy(p + npre, &ref, 8);
  memcpy(p + npre + 8, &check, 8);
  return mpel_put_object(w, h->t->cls.kind, p, npre + 16);
}

const char *mpel_shared_encode(lua_State *L, int idx, mpel_wire *w) {
  mpel_obj *h = lua_touserdata(L, idx);
  if (!h->o) return "released object";
  return mpel_shared_put(w, h, NULL, 0);
}

void *mpel_shared_take(lua_State *L, const mpel_shared_type *t, const unsigned char *p, size_t len) {
  uint64_t ref, check;
  if (len != 16) return NULL;
  memcpy(&ref, p, 8);
  memcpy(&check, p + 8, 8);
  void *o = t->obj_from_ref(ref);
  /* adopting: the message's reference keeps it alive; else take one, if alive */
  int rc = o ? mpe_obj_claim(o, check, mpel_decoding_copy) : -ESTALE;
  if (rc == -ESTALE && mpel_decoding_copy)
    luaL_error(L, "cannot receive value: the %s it names is gone (every handle to it was released)",
               t->cls.name);
  if (rc < 0) return NULL;
  mpe_obj_held(o); /* ours now: if this process is killed, its parent gives it back */
  return o;
}

int mpel_shared_decode(lua_State *L, const mpel_class *cls, const unsigned char *p, size_t len,
                       mpe_pipe **ends, size_t nends) {
  (void)ends;
  (void)nends;
  const mpel_shared_type *t = (const mpel_shared_type *)cls;
  void *o = mpel_shared_take(L, t, p, len);
  if (!o) return -1;
  mpel_push_shared(L, t, o); /* owns the reference taken or adopted */
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


void mpel_shared_metatable(lua_State *L, const mpel_shared_type *t) {
  lua_pushlightuserdata(L, (void *)t);
  lua_rawsetp(L, -2, &TYPE_KEY);
  lua_pushcfunction(L, mpel_shared_gc);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, shared_eq);
  lua_setfield(L, -2, "__eq");
  lua_pushcfunction(L, shared_tostring);
  lua_setfield(L, -2, "__tostring");
  mpel_register_class(L, &t->cls);
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
    mpel_shared_metatable(L, t);
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
