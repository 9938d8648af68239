/* ldict.c - mp.Dict over the engine's dict (dict.c).
 *
 * A Dict is a shared object like the others (lshared.c: references, the
 * wire, ==). Keys go to the engine as bytes: a type letter, then the
 * string's bytes, an integer or a float (8 bytes), or a boolean; a float
 * with an integer value is that integer, as Lua's tables treat t[1.0] and
 * t[1] as one key. Numbers are stored as the engine's numbers, so incr adds
 * to them in place; any other value goes through the codec (mpel_encode, as
 * a real send), and its tag says whether it holds references to engine
 * objects. Those references belong to the stored value: taken when it is
 * encoded, given back when it leaves the dict (overwritten, deleted,
 * cleared) by decoding it once more, adopting them (mpel_decode), while a
 * get decodes a copy that takes references of its own (mpel_decode_copy).
 *
 * This file is the local backend of the Dict class; another backend (a
 * broker) would bring its own class of the same name and methods. */
#include <errno.h>
#include <math.h>
#include <string.h>

#include "mpe_lua.h"

#define KEY_SMALL 128
#define TAG_REFS 1u /* the stored bytes hold references in flight */

MPEL_SHARED_WRAPPERS(dict, mpe_dict)
static int dict_decode(lua_State *L, const mpel_class *cls, const unsigned char *p, size_t len,
                       mpe_pipe **ends, size_t nends);
/* user values: 1 guard (unused), 2 the lock's handle */
static const mpel_shared_type dict_type = {
    {"Dict", MPEL_DICT, mpel_shared_encode, dict_decode, mpel_shared_retain, mpel_shared_release, 0},
    MPEL_SHARED_FUNCS(dict), 2, NULL};

typedef struct ldict {
  mpel_obj base; /* first: a shared-object handle (o: the mpe_dict) */
  mpe_dval v;    /* a reusable value buffer */
} ldict;

typedef struct dkey {
  const char *p;
  size_t n;
  char small[KEY_SMALL];
} dkey;

static ldict *check_dict(lua_State *L, int idx) {
  ldict *h = (ldict *)mpel_fast_shared(L, idx);
  if (h) return h;
  return (ldict *)mpel_check_shared(L, idx, &dict_type);
}

#define DOF(h) ((mpe_dict *)(h)->base.o)

/* The key at idx as bytes in k (a long string's on the stack, which the
 * caller leaves there); raises for a type a key cannot have. */
static void key_of(lua_State *L, int idx, dkey *k) {
  k->p = k->small;
  switch (lua_type(L, idx)) {
  case LUA_TSTRING: {
    size_t n;
    const char *s = lua_tolstring(L, idx, &n);
    if (n + 1 <= KEY_SMALL) {
      k->small[0] = 's';
      memcpy(k->small + 1, s, n);
      k->n = n + 1;
    } else {
      luaL_Buffer b;
      luaL_buffinit(L, &b);
      luaL_addchar(&b, 's');
      luaL_addlstring(&b, s, n);
      luaL_pushresult(&b);
      k->p = lua_tolstring(L, -1, &k->n);
    }
    return;
  }
  case LUA_TNUMBER: {
    lua_Integer i;
    if (!lua_isinteger(L, idx)) {
      double d = (double)lua_tonumber(L, idx);
      if (isnan(d)) luaL_error(L, "Dict key is NaN");
      if (d >= -9223372036854775808.0 && d < 9223372036854775808.0 && d == floor(d)) {
        i = (lua_Integer)d; /* 1.0 is the key 1, as in a Lua table */
      } else {
        k->small[0] = 'f';
        memcpy(k->small + 1, &d, 8);
        k->n = 9;
        return;
      }
    } else {
      i = lua_tointeger(L, idx);
    }
    k->small[0] = 'i';
    memcpy(k->small + 1, &i, 8);
    k->n = 9;
    return;
  }
  case LUA_TBOOLEAN:
    k->small[0] = 'b';
    k->small[1] = (char)lua_toboolean(L, idx);
    k->n = 2;
    return;
  default:
    luaL_error(L, "Dict key must be a string, a number or a boolean, got %s", luaL_typename(L, idx));
  }
}

static void push_key(lua_State *L, const char *p, size_t n) {
  if (n >= 1 && p[0] == 's') {
    lua_pushlstring(L, p + 1, n - 1);
  } else if (n == 9 && p[0] == 'i') {
    lua_Integer i;
    memcpy(&i, p + 1, 8);
    lua_pushinteger(L, i);
  } else if (n == 9 && p[0] == 'f') {
    double d;
    memcpy(&d, p + 1, 8);
    lua_pushnumber(L, (lua_Number)d);
  } else if (n == 2 && p[0] == 'b') {
    lua_pushboolean(L, p[1]);
  } else {
    luaL_error(L, "Dict: malformed key");
  }
}

/* Pushes a value read from the dict. adopt: it left the dict, and takes
 * over the references it held; else it is a copy with references of its own. */
static void push_value(lua_State *L, const mpe_dval *v, int adopt) {
  switch (v->kind) {
  case MPE_DICT_INT: lua_pushinteger(L, (lua_Integer)v->i); break;
  case MPE_DICT_FLOAT: lua_pushnumber(L, (lua_Number)v->f); break;
  case MPE_DICT_BYTES:
    if (adopt) mpel_decode(L, v->data, v->len, NULL, 0);
    else mpel_decode_copy(L, v->data, v->len);
    break;
  default: lua_pushnil(L); break;
  }
}

/* A value that left the dict: its references go back (by its handles'
 * collection). */
static void drop_value(lua_State *L, mpe_dval *v) {
  if (v->kind == MPE_DICT_BYTES && (v->tag & TAG_REFS)) {
    push_value(L, v, 1);
    lua_pop(L, 1);
  }
  mpe_dval_done(v);
}

/* Reads key into the handle's buffer, then pushes it: the buffer is the
 * handle's no more while the value decodes (a decode may load a module
 * that uses this very handle). */
static int push_get(lua_State *L, ldict *h, const dkey *k) {
  mpe_dval v = h->v;
  memset(&h->v, 0, sizeof h->v);
  int rc = mpe_dict_get(DOF(h), k->p, k->n, &v);
  if (rc < 0) {
    mpe_dval_free(&v);
    return mpel_fail(L, "Dict", rc);
  }
  if (rc == 1) push_value(L, &v, 0);
  if (h->v.buf) mpe_dval_free(&h->v);
  h->v = v;
  return rc;
}

static int l_dict(lua_State *L) {
  mpe_dict *d;
  int rc = mpe_dict_new(&d);
  if (rc == -ENOMEM) { /* garbage handles may hold dicts: Lua's GC cannot see the arena */
    lua_gc(L, LUA_GCCOLLECT);
    rc = mpe_dict_new(&d);
  }
  if (rc < 0) return mpel_fail(L, "Dict", rc);
  mpel_push_shared_sized(L, &dict_type, d, sizeof(ldict));
  return 1;
}

/* The shared objects' wire form; the handle is an ldict. */
static int dict_decode(lua_State *L, const mpel_class *cls, const unsigned char *p, size_t len,
                       mpe_pipe **ends, size_t nends) {
  (void)cls;
  (void)ends;
  (void)nends;
  mpe_dict *d = mpel_shared_take(L, &dict_type, p, len);
  if (!d) return -1;
  mpel_push_shared_sized(L, &dict_type, d, sizeof(ldict)); /* owns the reference taken or adopted */
  return 0;
}

static int d_get(lua_State *L) {
  ldict *h = check_dict(L, 1);
  dkey k;
  key_of(L, 2, &k);
  if (push_get(L, h, &k) == 0) lua_pushvalue(L, 3); /* the default, or nil */
  return 1;
}

/* Stores the value at vidx under k (nil: deletes); pushes nothing. */
static void store(lua_State *L, ldict *h, const dkey *k, int vidx) {
  mpe_dval v = {0}, old = {0};
  int rc;
  mpel_wire *w = NULL;
  if (lua_isnil(L, vidx)) {
    while ((rc = mpe_dict_delete(DOF(h), k->p, k->n, &old)) == MPE_EINTR) mpel_check_signal(L);
  } else {
    if (lua_type(L, vidx) == LUA_TNUMBER) {
      v.kind = lua_isinteger(L, vidx) ? MPE_DICT_INT : MPE_DICT_FLOAT;
      if (v.kind == MPE_DICT_INT) v.i = (int64_t)lua_tointeger(L, vidx);
      else v.f = (double)lua_tonumber(L, vidx);
    } else {
      w = mpel_wire_get(L, 0);
      mpel_encode(L, vidx, "value", w);
      v.kind = MPE_DICT_BYTES;
      v.data = w->buf;
      v.len = w->len;
      v.tag = w->inflight ? TAG_REFS : 0;
    }
    while ((rc = mpe_dict_set(DOF(h), k->p, k->n, &v, &old)) == MPE_EINTR) {
      if (mpel_signal && w) mpel_wire_unsend(L, w); /* not stored: its references go back */
      mpel_check_signal(L);
    }
    if (w) {
      if (rc < 0) mpel_wire_unsend(L, w);
      mpel_wire_done(w);
    }
  }
  if (rc < 0) mpel_fail(L, "Dict", rc);
  drop_value(L, &old);
}

static int d_set(lua_State *L) {
  ldict *h = check_dict(L, 1);
  luaL_checkany(L, 3);
  dkey k;
  key_of(L, 2, &k);
  store(L, h, &k, 3);
  return 0;
}

static int d_newindex(lua_State *L) {
  ldict *h = (ldict *)mpel_check_shared(L, 1, &dict_type);
  dkey k;
  key_of(L, 2, &k);
  store(L, h, &k, 3);
  return 0;
}

/* d[k]: a method of that name, else the value (d:get(k) for any key). */
static int d_index(lua_State *L) {
  ldict *h = (ldict *)mpel_check_shared(L, 1, &dict_type);
  if (lua_type(L, 2) == LUA_TSTRING) {
    lua_pushvalue(L, 2);
    if (lua_rawget(L, lua_upvalueindex(1)) != LUA_TNIL) return 1;
    lua_pop(L, 1);
  }
  dkey k;
  key_of(L, 2, &k);
  if (push_get(L, h, &k) == 0) lua_pushnil(L);
  return 1;
}

static int d_delete(lua_State *L) {
  ldict *h = check_dict(L, 1);
  dkey k;
  key_of(L, 2, &k);
  mpe_dval old = {0};
  int rc;
  while ((rc = mpe_dict_delete(DOF(h), k.p, k.n, &old)) == MPE_EINTR) mpel_check_signal(L);
  if (rc < 0) return mpel_fail(L, "Dict", rc);
  push_value(L, &old, 1); /* nil when missing; the removed value takes its references over */
  mpe_dval_done(&old);
  return 1;
}

static int d_len(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)mpe_dict_len(DOF(check_dict(L, 1))));
  return 1;
}

static int d_len_mm(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)mpe_dict_len(DOF((ldict *)mpel_check_shared(L, 1, &dict_type))));
  return 1;
}

/* Pushes a snapshot: a list of keys (values 0) or a table key -> value. */
static void snapshot(lua_State *L, ldict *h, int values) {
  mpe_dict_iter it = {0};
  int rc = mpe_dict_items(DOF(h), &it, values);
  if (rc < 0) {
    mpe_dict_iter_free(&it);
    mpel_fail(L, "Dict", rc);
  }
  mpe_dval v = {0};
  const void *key;
  size_t klen;
  lua_createtable(L, values ? 0 : 16, values ? 16 : 0);
  lua_Integer n = 0;
  luaL_checkstack(L, 4, "Dict");
  while (mpe_dict_iter_next(&it, &key, &klen, &v)) {
    push_key(L, key, klen);
    if (values) {
      push_value(L, &v, 0);
      lua_rawset(L, -3);
    } else {
      lua_rawseti(L, -2, ++n);
    }
  }
  mpe_dict_iter_free(&it);
}

static int d_keys(lua_State *L) {
  snapshot(L, check_dict(L, 1), 0);
  return 1;
}

static int d_items(lua_State *L) {
  snapshot(L, check_dict(L, 1), 1);
  return 1;
}

static int snap_next(lua_State *L) {
  lua_settop(L, 2);
  if (lua_next(L, 1)) return 2;
  lua_pushnil(L);
  return 1;
}

/* pairs(d): over a snapshot taken now. */
static int d_pairs(lua_State *L) {
  lua_pushcfunction(L, snap_next);
  snapshot(L, (ldict *)mpel_check_shared(L, 1, &dict_type), 1);
  lua_pushnil(L);
  return 3;
}

static int d_clear(lua_State *L) {
  ldict *h = check_dict(L, 1);
  mpe_dict_iter gone = {0};
  int rc;
  while ((rc = mpe_dict_clear(DOF(h), &gone)) == MPE_EINTR) mpel_check_signal(L);
  if (rc < 0) return mpel_fail(L, "Dict", rc);
  mpe_dval v = {0};
  const void *key;
  size_t klen;
  while (mpe_dict_iter_next(&gone, &key, &klen, &v)) {
    if (v.kind == MPE_DICT_BYTES && (v.tag & TAG_REFS)) {
      push_value(L, &v, 1);
      lua_pop(L, 1);
    }
  }
  mpe_dict_iter_free(&gone);
  return 0;
}

static int d_incr(lua_State *L) {
  ldict *h = check_dict(L, 1);
  dkey k;
  key_of(L, 2, &k);
  mpe_dval delta = {0}, now = {0};
  delta.kind = MPE_DICT_INT;
  delta.i = 1;
  if (!lua_isnoneornil(L, 3)) {
    luaL_checktype(L, 3, LUA_TNUMBER);
    lua_Number n = lua_tonumber(L, 3);
    if (lua_isinteger(L, 3)) delta.i = (int64_t)lua_tointeger(L, 3);
    else delta.kind = MPE_DICT_FLOAT, delta.f = (double)n;
  }
  int rc;
  while ((rc = mpe_dict_incr(DOF(h), k.p, k.n, &delta, &now)) == MPE_EINTR) mpel_check_signal(L);
  if (rc == -EINVAL) {
    push_key(L, k.p, k.n);
    return luaL_error(L, "Dict: incr: the value at key %s is not a number", luaL_tolstring(L, -1, NULL));
  }
  if (rc < 0) return mpel_fail(L, "Dict", rc);
  push_value(L, &now, 0);
  return 1;
}

/* The part of update that may raise: fn(old), then the store.
 * Arguments: handle, key (as given), fn, old. */
static int update_body(lua_State *L) {
  ldict *h = lua_touserdata(L, 1);
  lua_pushvalue(L, 3);
  lua_pushvalue(L, 4);
  lua_call(L, 1, 1);
  dkey k;
  key_of(L, 2, &k);
  store(L, h, &k, 5);
  lua_settop(L, 5);
  return 1;
}

static int d_update(lua_State *L) {
  ldict *h = check_dict(L, 1);
  luaL_checktype(L, 3, LUA_TFUNCTION);
  lua_settop(L, 3);
  dkey k;
  key_of(L, 2, &k);
  mpe_dval old = {0};
  int rc;
  while ((rc = mpe_dict_update_begin(DOF(h), k.p, k.n, &old)) == MPE_EINTR) mpel_check_signal(L);
  if (rc == -EDEADLK) return luaL_error(L, "Dict: update called inside an update of the same Dict");
  if (rc < 0 && rc != MPE_EOWNERDEAD) return mpel_fail(L, "Dict", rc);
  int died = rc == MPE_EOWNERDEAD;
  lua_pushcfunction(L, update_body);
  lua_pushvalue(L, 1);
  lua_pushvalue(L, 2);
  lua_pushvalue(L, 3);
  int st = lua_checkstack(L, 8) ? LUA_OK : LUA_ERRMEM;
  if (st == LUA_OK) {
    push_value(L, &old, 0);
    st = lua_pcall(L, 4, 1, 0);
  }
  mpe_dval_free(&old);
  mpe_dict_update_end(DOF(h));
  if (st != LUA_OK) return lua_error(L);
  if (!died) return 1;
  lua_pushliteral(L, "owner died");
  return 2;
}

static int d_get_lock(lua_State *L) {
  ldict *h = check_dict(L, 1);
  if (lua_getiuservalue(L, 1, 2) != LUA_TNIL) return 1;
  mpel_push_lock(L, mpe_dict_lock(DOF(h)));
  lua_pushvalue(L, -1);
  lua_setiuservalue(L, 1, 2);
  return 1;
}

static int d_gc(lua_State *L) {
  ldict *h = lua_touserdata(L, 1);
  if (h) mpe_dval_free(&h->v); /* not a handle: see mpel_shared_gc */
  return mpel_shared_gc(L);
}

static const luaL_Reg dict_methods[] = {
    {"get", d_get},       {"set", d_set},     {"delete", d_delete}, {"len", d_len},
    {"keys", d_keys},     {"items", d_items}, {"clear", d_clear},   {"incr", d_incr},
    {"update", d_update}, {"get_lock", d_get_lock}, {NULL, NULL},
};

void mpel_open_dict(lua_State *L) {
  mpel_shared_open(L, &dict_type, dict_methods, d_index, l_dict);
  luaL_getmetatable(L, "Dict");
  lua_getfield(L, -1, "methods");
  lua_pushcclosure(L, d_index, 1); /* upvalue 1: the methods */
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, d_newindex);
  lua_setfield(L, -2, "__newindex");
  lua_pushcfunction(L, d_len_mm);
  lua_setfield(L, -2, "__len");
  lua_pushcfunction(L, d_pairs);
  lua_setfield(L, -2, "__pairs");
  lua_pushcfunction(L, d_gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
}
