/* lvalue.c - mp.Value and mp.Array: shared numbers of a C type.
 *
 * v.value and a[i] read and write one element atomically (engine value.c):
 * no lock is taken for them, and none is needed. The lock (an RLock unless
 * {lock = false} or {lock = some_lock}) is for compound updates the script
 * makes under get_lock(); v:add(n) is atomic without it. Indexes are 1-based
 * as everything in Lua; out of range, a bad typecode, a value that does not
 * fit the typecode, or a float for an integer typecode raise. */
#include <math.h>
#include <string.h>

#include "mpe_lua.h"

MPEL_SHARED_WRAPPERS(value, mpe_value)

/* user values: 1 guard (unused), 2 the Lock object */
static const mpel_shared_type value_type = {MPEL_SHARED_CLASS("Value", MPEL_VALUE), MPEL_SHARED_FUNCS(value), 2,
                                            NULL};
static const mpel_shared_type array_type = {MPEL_SHARED_CLASS("Array", MPEL_ARRAY), MPEL_SHARED_FUNCS(value), 2,
                                            NULL};

static const char TYPECODES[] = "bBhHiIlLqQfd";

static char check_typecode(lua_State *L, int idx) {
  size_t n;
  const char *t = luaL_checklstring(L, idx, &n);
  if (n != 1 || !strchr(TYPECODES, t[0]))
    luaL_error(L, "bad typecode '%s' (expected one of b B h H i I l L q Q f d)", t);
  return t[0];
}

/* Stores the Lua number at idx into element i, raising what does not fit. */
static void store(lua_State *L, mpe_value *v, size_t i, int idx, const char *what) {
  char t = mpe_value_typecode(v);
  if (mpe_typecode_is_float(t)) {
    mpe_value_set_float(v, i, (double)luaL_checknumber(L, idx));
    return;
  }
  int isint;
  lua_Integer x = lua_tointegerx(L, idx, &isint);
  if (!isint) {
    if (lua_type(L, idx) == LUA_TNUMBER)
      luaL_error(L, "%s: typecode '%c' holds integers, got %s", what, t, lua_tostring(L, idx));
    luaL_error(L, "%s: number expected, got %s", what, luaL_typename(L, idx));
  }
  if (mpe_value_set_int(v, i, (int64_t)x) != 0)
    luaL_error(L, "%s: %I is out of range for typecode '%c'", what, x, t);
}

static void push_elem(lua_State *L, mpe_value *v, size_t i) {
  if (mpe_typecode_is_float(mpe_value_typecode(v))) lua_pushnumber(L, mpe_value_get_float(v, i));
  else lua_pushinteger(L, (lua_Integer)mpe_value_get_int(v, i));
}

/* opts at idx: {lock = true | false | Lock | RLock}; returns the lock to use
 * (NULL: none), with *made set if a new one must be freed by the caller. */
static mpe_lock *opt_lock(lua_State *L, int idx, int *made) {
  *made = 0;
  if (!lua_isnoneornil(L, idx)) {
    luaL_checktype(L, idx, LUA_TTABLE);
    lua_pushnil(L);
    while (lua_next(L, idx)) {
      lua_pop(L, 1);
      if (lua_type(L, -1) != LUA_TSTRING || strcmp(lua_tostring(L, -1), "lock") != 0)
        luaL_error(L, "unknown option '%s' (expected lock)", luaL_tolstring(L, -1, NULL));
    }
    lua_getfield(L, idx, "lock");
    if (!lua_isnil(L, -1) && !lua_isboolean(L, -1)) {
      mpe_lock *l = mpel_test_lock(L, -1);
      if (!l) luaL_error(L, "option lock: true, false, a Lock or an RLock expected");
      lua_pop(L, 1);
      return l;
    }
    int want = lua_isnil(L, -1) || lua_toboolean(L, -1);
    lua_pop(L, 1);
    if (!want) return NULL;
  }
  mpe_lock *l;
  int rc = mpe_lock_new(&l, 1);
  if (rc < 0) luaL_error(L, "cannot make a lock: %s", mpe_strerror(rc));
  *made = 1;
  return l;
}

static int new_value(lua_State *L, const mpel_shared_type *t, size_t count, int opts) {
  char tc = check_typecode(L, 1);
  int made;
  mpe_lock *l = opt_lock(L, opts, &made);
  mpe_value *v;
  int rc = mpe_value_new(&v, tc, count, l);
  if (made) mpe_lock_free(l); /* the value holds its own reference */
  if (rc < 0) return mpel_fail(L, t->cls.name, rc);
  mpel_push_shared(L, t, v);
  return 1;
}

static int l_value(lua_State *L) {
  check_typecode(L, 1);
  if (!lua_isnoneornil(L, 2)) luaL_checknumber(L, 2);
  new_value(L, &value_type, 1, 3);
  mpe_value *v = ((mpel_obj *)lua_touserdata(L, -1))->o;
  if (!lua_isnoneornil(L, 2)) store(L, v, 0, 2, "Value");
  return 1;
}

static int l_array(lua_State *L) {
  check_typecode(L, 1);
  size_t n;
  if (lua_istable(L, 2)) n = (size_t)lua_rawlen(L, 2);
  else {
    lua_Integer k = luaL_checkinteger(L, 2);
    luaL_argcheck(L, k >= 0, 2, "size must be >= 0");
    n = (size_t)k;
  }
  new_value(L, &array_type, n, 3);
  mpe_value *v = ((mpel_obj *)lua_touserdata(L, -1))->o;
  if (lua_istable(L, 2)) {
    for (size_t i = 0; i < n; i++) {
      lua_rawgeti(L, 2, (lua_Integer)i + 1);
      store(L, v, i, lua_gettop(L), "Array");
      lua_pop(L, 1);
    }
  }
  return 1;
}

static mpe_value *check_any(lua_State *L, int idx) {
  mpel_obj *h = mpel_test_shared(L, idx, &value_type);
  if (!h) h = mpel_test_shared(L, idx, &array_type);
  if (!h) luaL_typeerror(L, idx, "Value");
  return h->o;
}

static int get_lock(lua_State *L) {
  mpe_value *v = check_any(L, 1);
  if (lua_getiuservalue(L, 1, 2) != LUA_TNIL) return 1;
  mpe_lock *l = mpe_value_lock(v);
  if (!l) return luaL_error(L, "this %s was made with {lock = false}: it has no lock", luaL_typename(L, 1));
  mpel_push_lock(L, l);
  lua_pushvalue(L, -1);
  lua_setiuservalue(L, 1, 2);
  return 1;
}

static int value_add(lua_State *L) {
  mpe_value *v = check_any(L, 1);
  if (mpe_typecode_is_float(mpe_value_typecode(v))) {
    double out;
    mpe_value_add_float(v, 0, (double)luaL_checknumber(L, 2), &out);
    lua_pushnumber(L, out);
    return 1;
  }
  lua_Integer d = luaL_checkinteger(L, 2);
  int64_t out;
  if (mpe_value_add_int(v, 0, d, &out) != 0)
    return luaL_error(L, "Value: adding %I goes out of range for typecode '%c'", d, mpe_value_typecode(v));
  lua_pushinteger(L, (lua_Integer)out);
  return 1;
}

static int value_index(lua_State *L) {
  mpe_value *v = check_any(L, 1);
  if (lua_rawequal(L, 2, lua_upvalueindex(1))) { /* "value", the hot path */
    push_elem(L, v, 0);
    return 1;
  }
  const char *k = luaL_checkstring(L, 2);
  if (strcmp(k, "typecode") == 0) {
    char t = mpe_value_typecode(v);
    lua_pushlstring(L, &t, 1);
    return 1;
  }
  lua_getmetatable(L, 1);
  lua_getfield(L, -1, "methods");
  lua_getfield(L, -1, k);
  return 1;
}

static int value_newindex(lua_State *L) {
  mpe_value *v = check_any(L, 1);
  if (!lua_rawequal(L, 2, lua_upvalueindex(1)))
    return luaL_error(L, "Value: cannot set field '%s' (only value)", luaL_tolstring(L, 2, NULL));
  store(L, v, 0, 3, "Value");
  return 0;
}

static size_t check_index(lua_State *L, mpe_value *v, int idx) {
  int isint;
  lua_Integer i = lua_tointegerx(L, idx, &isint);
  size_t n = mpe_value_count(v);
  if (!isint || i < 1 || (lua_Unsigned)i > n)
    luaL_error(L, "Array index %s out of range (1..%I)", luaL_tolstring(L, idx, NULL), (lua_Integer)n);
  return (size_t)i - 1;
}

static int array_index(lua_State *L) {
  mpe_value *v = check_any(L, 1);
  if (lua_type(L, 2) == LUA_TNUMBER) {
    push_elem(L, v, check_index(L, v, 2));
    return 1;
  }
  return value_index(L);
}

static int array_newindex(lua_State *L) {
  mpe_value *v = check_any(L, 1);
  store(L, v, check_index(L, v, 2), 3, "Array");
  return 0;
}

static int array_len(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)mpe_value_count(check_any(L, 1)));
  return 1;
}

static int array_totable(lua_State *L) {
  mpe_value *v = check_any(L, 1);
  mpe_lock *l = mpe_value_lock(v);
  int take = l && !mpe_lock_held(l) && mpe_lock_acquire(l, 5) >= 0; /* a consistent copy */
  size_t n = mpe_value_count(v);
  lua_createtable(L, (int)n, 0);
  for (size_t i = 0; i < n; i++) {
    push_elem(L, v, i);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  if (take) mpe_lock_release(l);
  return 1;
}

static int array_add(lua_State *L) {
  mpe_value *v = check_any(L, 1);
  size_t i = check_index(L, v, 2);
  if (mpe_typecode_is_float(mpe_value_typecode(v))) {
    double out;
    mpe_value_add_float(v, i, (double)luaL_checknumber(L, 3), &out);
    lua_pushnumber(L, out);
    return 1;
  }
  lua_Integer d = luaL_checkinteger(L, 3);
  int64_t out;
  if (mpe_value_add_int(v, i, d, &out) != 0)
    return luaL_error(L, "Array: adding %I goes out of range for typecode '%c'", d, mpe_value_typecode(v));
  lua_pushinteger(L, (lua_Integer)out);
  return 1;
}

/* stamp(cid|nil, index [, timed]): the pool's per-task stamp, three doubles
 * at a fixed place of an Array (chunk id, task index, start time), written
 * without a metamethod lookup: it runs once per task. */
static void put_double(double *at, double x) {
  uint64_t u;
  memcpy(&u, &x, sizeof u);
  __atomic_store_n((uint64_t *)(void *)at, u, __ATOMIC_RELEASE); /* whole, never torn */
}

static int stamp(lua_State *L) {
  /* upvalue 1 keeps the Array alive; upvalue 2 is the address of its stamps */
  double *at = lua_touserdata(L, lua_upvalueindex(2));
  if (lua_toboolean(L, 3)) put_double(at + 2, mpe_time());
  put_double(at + 1, (double)lua_tointeger(L, 2));
  if (!lua_isnoneornil(L, 1)) put_double(at, (double)lua_tointeger(L, 1));
  return 0;
}

static int l_stamper(lua_State *L) {
  mpe_value *v = check_any(L, 1);
  lua_Integer base = luaL_checkinteger(L, 2);
  luaL_argcheck(L, mpe_value_typecode(v) == 'd' && base >= 0 && (size_t)base + 3 <= mpe_value_count(v), 2,
                "a 'd' Array with room for three stamps expected");
  lua_settop(L, 1);
  lua_pushlightuserdata(L, (double *)mpe_value_data(v) + base);
  lua_pushcclosure(L, stamp, 2);
  return 1;
}

/* ---- bulk moves for the Pool's packed numbers (not part of the API) */

/* arr:_slice(first, n): a table of elements first .. first + n - 1. */
static int a_slice(lua_State *L) {
  mpe_value *v = check_any(L, 1);
  lua_Integer first = luaL_checkinteger(L, 2), n = luaL_checkinteger(L, 3);
  luaL_argcheck(L, first >= 1 && n >= 0 && (size_t)(first - 1 + n) <= mpe_value_count(v), 2, "out of range");
  int isfloat = mpe_typecode_is_float(mpe_value_typecode(v));
  const int64_t *qi = mpe_value_data(v);
  const double *qd = mpe_value_data(v);
  lua_createtable(L, (int)n, 0);
  for (lua_Integer i = 0; i < n; i++) {
    if (isfloat) lua_pushnumber(L, (lua_Number)qd[first - 1 + i]);
    else lua_pushinteger(L, (lua_Integer)qi[first - 1 + i]);
    lua_rawseti(L, -2, i + 1);
  }
  return 1;
}

/* arr:_store(t, first, n [, from]): t[from .. from + n - 1] (from = 1 by
 * default) into elements first ..; true if every one was a number of the
 * Array's kind (else false, and the caller sends them the ordinary way). */
static int a_store(lua_State *L) {
  mpe_value *v = check_any(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_Integer first = luaL_checkinteger(L, 3), n = luaL_checkinteger(L, 4);
  lua_Integer from = luaL_optinteger(L, 5, 1) - 1;
  luaL_argcheck(L, first >= 1 && n >= 0 && (size_t)(first - 1 + n) <= mpe_value_count(v), 3, "out of range");
  int isfloat = mpe_typecode_is_float(mpe_value_typecode(v));
  int64_t *qi = mpe_value_data(v);
  double *qd = mpe_value_data(v);
  /* in blocks: push a block of elements, read them, drop them at once */
  enum { BLOCK = 64 };
  luaL_checkstack(L, BLOCK, "_store");
  int base = lua_gettop(L);
  for (lua_Integer i = 1; i <= n; i += BLOCK) {
    lua_Integer m = n - i + 1 < BLOCK ? n - i + 1 : BLOCK;
    for (lua_Integer j = 0; j < m; j++) lua_rawgeti(L, 2, from + i + j);
    for (lua_Integer j = 0; j < m; j++) {
      int at = base + 1 + (int)j, isint;
      lua_Integer x = lua_tointegerx(L, at, &isint);
      int ok = isfloat ? lua_type(L, at) == LUA_TNUMBER && !lua_isinteger(L, at)
                       : isint && lua_isinteger(L, at);
      if (!ok) {
        lua_pushboolean(L, 0);
        return 1;
      }
      if (isfloat) qd[first - 2 + i + j] = (double)lua_tonumber(L, at);
      else qi[first - 2 + i + j] = (int64_t)x;
    }
    lua_settop(L, base);
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* arr:_into(t, first, n): elements first .. first + n - 1 into t[first ..]. */
static int a_into(lua_State *L) {
  mpe_value *v = check_any(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_Integer first = luaL_checkinteger(L, 3), n = luaL_checkinteger(L, 4);
  luaL_argcheck(L, first >= 1 && n >= 0 && (size_t)(first - 1 + n) <= mpe_value_count(v), 3, "out of range");
  int isfloat = mpe_typecode_is_float(mpe_value_typecode(v));
  const int64_t *qi = mpe_value_data(v);
  const double *qd = mpe_value_data(v);
  for (lua_Integer i = first; i < first + n; i++) {
    if (isfloat) lua_pushnumber(L, (lua_Number)qd[i - 1]);
    else lua_pushinteger(L, (lua_Integer)qi[i - 1]);
    lua_rawseti(L, 2, i);
  }
  return 0;
}

static const luaL_Reg value_methods[] = {{"get_lock", get_lock}, {"add", value_add}, {NULL, NULL}};
static const luaL_Reg array_methods[] = {
    {"get_lock", get_lock}, {"add", array_add}, {"totable", array_totable},
    {"_slice", a_slice},    {"_store", a_store}, {"_into", a_into}, {NULL, NULL},
};

static void set_access(lua_State *L, const char *name, lua_CFunction index, lua_CFunction newindex) {
  luaL_getmetatable(L, name);
  lua_pushliteral(L, "value");
  lua_pushcclosure(L, index, 1);
  lua_setfield(L, -2, "__index");
  lua_pushliteral(L, "value");
  lua_pushcclosure(L, newindex, 1);
  lua_setfield(L, -2, "__newindex");
  lua_pop(L, 1);
}

void mpel_open_value(lua_State *L) {
  mpel_shared_open(L, &value_type, value_methods, value_index, l_value);
  mpel_shared_open(L, &array_type, array_methods, array_index, l_array);
  set_access(L, "Value", value_index, value_newindex);
  set_access(L, "Array", array_index, array_newindex);
  luaL_getmetatable(L, "Array");
  lua_pushcfunction(L, array_len);
  lua_setfield(L, -2, "__len");
  lua_pop(L, 1);
  lua_pushcfunction(L, l_stamper);
  lua_setfield(L, -2, "_stamper");

}
