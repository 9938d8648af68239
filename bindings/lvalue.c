/* lvalue.c - mp.Value and mp.Array: shared numbers of a C type.
 *
 * v.value and a[i] read and write one element atomically (engine value.c):
 * no lock is taken for them, and none is needed. The lock (an RLock unless
 * {lock = false} or {lock = some_lock}) is for compound updates the script
 * makes under get_lock(); v:add(n) is atomic without it. Indexes are 1-based
 * as everything in Lua; out of range, a bad typecode, a value that does not
 * fit the typecode, or a float for an integer typecode raise. */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <string.h>

#include "mpe_lua.h"

MPEL_SHARED_WRAPPERS(value, mpe_value)

/* user values: 1 guard (unused), 2 the Lock object */
static const mpel_shared_type value_type = {MPEL_SHARED_CLASS("Value", MPEL_VALUE), MPEL_SHARED_FUNCS(value), 2,
                                            NULL};
static const mpel_shared_type array_type = {MPEL_SHARED_CLASS("Array", MPEL_ARRAY), MPEL_SHARED_FUNCS(value), 2,
                                            NULL};

static const char TYPECODES[] = "bBhHiIlLqQfdc";

static char check_typecode(lua_State *L, int idx) {
  size_t n;
  const char *t = luaL_checklstring(L, idx, &n);
  if (n != 1 || !strchr(TYPECODES, t[0]))
    luaL_error(L, "bad typecode '%s' (expected one of b B h H i I l L q Q f d c)", t);
  return t[0];
}

/* Raises "what: msg" (with the list position k when k > 0). */
static void elem_fail(lua_State *L, const char *what, lua_Integer k, const char *msg) {
  if (k > 0) luaL_error(L, "%s: %s (list[%I])", what, msg, k);
  luaL_error(L, "%s: %s", what, msg);
}

/* Raises unless the Lua value at idx can be an element of typecode t: a
 * one-byte string for 'c', a number for 'f' and 'd', an integer for the
 * others (whether it is in range is the engine's to say, at the store). */
static void check_elem(lua_State *L, int idx, char t, const char *what, lua_Integer k) {
  if (t == 'c') {
    size_t n = 0;
    if (lua_type(L, idx) == LUA_TSTRING) lua_tolstring(L, idx, &n);
    if (n != 1) {
      const char *got = lua_type(L, idx) == LUA_TSTRING ? lua_pushfstring(L, "a string of length %d", (int)n)
                                                        : luaL_typename(L, idx);
      elem_fail(L, what, k, lua_pushfstring(L, "typecode 'c' holds one-byte strings, got %s", got));
    }
    return;
  }
  if (mpe_typecode_is_float(t)) {
    if (!lua_isnumber(L, idx))
      elem_fail(L, what, k, lua_pushfstring(L, "number expected, got %s", luaL_typename(L, idx)));
    return;
  }
  int isint;
  lua_tointegerx(L, idx, &isint);
  if (!isint) {
    if (lua_type(L, idx) == LUA_TNUMBER)
      elem_fail(L, what, k, lua_pushfstring(L, "typecode '%c' holds integers, got %s", t, lua_tostring(L, idx)));
    elem_fail(L, what, k, lua_pushfstring(L, "number expected, got %s", luaL_typename(L, idx)));
  }
}

/* Stores the (checked) Lua value at idx into element i: 0, or -ERANGE when
 * it does not fit the typecode (nothing stored). */
static int put_elem(lua_State *L, mpe_value *v, size_t i, int idx) {
  char t = mpe_value_typecode(v);
  if (t == 'c') return mpe_value_set_int(v, i, (unsigned char)lua_tostring(L, idx)[0]);
  if (mpe_typecode_is_float(t)) return mpe_value_set_float(v, i, (double)lua_tonumber(L, idx));
  return mpe_value_set_int(v, i, (int64_t)lua_tointeger(L, idx));
}

/* Stores the Lua value at idx into element i, raising what does not fit. */
static void store(lua_State *L, mpe_value *v, size_t i, int idx, const char *what) {
  char t = mpe_value_typecode(v);
  check_elem(L, idx, t, what, 0);
  if (put_elem(L, v, i, idx) != 0)
    luaL_error(L, "%s: %I is out of range for typecode '%c'", what, lua_tointeger(L, idx), t);
}

static void push_elem(lua_State *L, mpe_value *v, size_t i) {
  char t = mpe_value_typecode(v);
  if (t == 'c') {
    char ch = (char)mpe_value_get_int(v, i);
    lua_pushlstring(L, &ch, 1);
  } else if (mpe_typecode_is_float(t)) {
    lua_pushnumber(L, mpe_value_get_float(v, i));
  } else {
    lua_pushinteger(L, (lua_Integer)mpe_value_get_int(v, i));
  }
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
  lua_settop(L, 3); /* the handle goes at 4 */
  char tc = check_typecode(L, 1);
  if (!lua_isnoneornil(L, 2)) check_elem(L, 2, tc, "Value", 0);
  new_value(L, &value_type, 1, 3);
  mpe_value *v = ((mpel_obj *)lua_touserdata(L, -1))->o;
  if (!lua_isnoneornil(L, 2)) store(L, v, 0, 2, "Value");
  return 1;
}

static int l_array(lua_State *L) {
  lua_settop(L, 3);
  char tc = check_typecode(L, 1);
  size_t n;
  if (lua_istable(L, 2)) n = (size_t)lua_rawlen(L, 2);
  else if (tc == 'c' && lua_type(L, 2) == LUA_TSTRING) n = lua_rawlen(L, 2); /* Array('c', "bytes") */
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
  } else if (lua_type(L, 2) == LUA_TSTRING) {
    const unsigned char *bytes = (const unsigned char *)lua_tostring(L, 2);
    for (size_t i = 0; i < n; i++) mpe_value_set_int(v, i, bytes[i]);
  }
  return 1;
}

static mpe_value *check_any(lua_State *L, int idx) {
  mpel_obj *h = mpel_test_shared(L, idx, &value_type);
  if (!h) h = mpel_test_shared(L, idx, &array_type);
  if (!h) luaL_typeerror(L, idx, "Value");
  return h->o;
}

/* "Value" or "Array": the handle at 1, as its messages name it. */
static const char *kind_name(lua_State *L) {
  return mpel_test_shared(L, 1, &array_type) ? array_type.cls.name : value_type.cls.name;
}

static int get_lock(lua_State *L) {
  mpe_value *v = check_any(L, 1);
  if (lua_getiuservalue(L, 1, 2) != LUA_TNIL) return 1;
  mpe_lock *l = mpe_value_lock(v);
  if (!l) return luaL_error(L, "this %s was made with {lock = false}: it has no lock", kind_name(L));
  mpel_push_lock(L, l);
  lua_pushvalue(L, -1);
  lua_setiuservalue(L, 1, 2);
  return 1;
}

/* add() is for numbers: a byte ('c') is a one-byte string in Lua. */
static void check_addable(lua_State *L, mpe_value *v) {
  if (mpe_value_typecode(v) == 'c') luaL_error(L, "%s: add needs a number typecode, not 'c'", kind_name(L));
}

static int value_add(lua_State *L) {
  mpe_value *v = check_any(L, 1);
  check_addable(L, v);
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

/* The metamethods' own check (the hot path of v.value): the handle seen
 * last (lshared.c), else one whose metatable is the one in upvalue 2 (the
 * handle's class), else anything check_any takes. The stack is left as it
 * was. */
static mpe_value *check_own_slow(lua_State *L, mpel_obj *h) {
  if (h && lua_getmetatable(L, 1)) {
    int own = lua_rawequal(L, -1, lua_upvalueindex(2));
    lua_pop(L, 1);
    if (own && h->o) {
      mpel_seen_set(L, MPEL_SEEN_VALUE, 1, h);
      return h->o;
    }
  }
  return check_any(L, 1);
}

static inline mpe_value *check_own(lua_State *L) {
  mpel_obj *h = lua_touserdata(L, 1);
  if (h && h == mpel_seen[MPEL_SEEN_VALUE] && h->o) return h->o;
  return check_own_slow(L, h);
}

/* Whether the key at 2 is "value": one look at its bytes (a number key
 * becomes its string here, as luaL_checkstring would make it). */
static int is_value_key(lua_State *L) {
  size_t n;
  const char *k = lua_tolstring(L, 2, &n);
  return k && n == 5 && memcmp(k, "value", 5) == 0;
}

static int value_index(lua_State *L) {
  mpe_value *v = check_own(L);
  if (is_value_key(L)) { /* the hot path: an integer first */
    char t = mpe_value_typecode(v);
    if (t != 'c' && !mpe_typecode_is_float(t)) lua_pushinteger(L, (lua_Integer)mpe_value_get_int(v, 0));
    else push_elem(L, v, 0);
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
  mpe_value *v = check_own(L);
  if (!is_value_key(L))
    return luaL_error(L, "Value: cannot set field '%s' (only value)", luaL_tolstring(L, 2, NULL));
  /* an integer into an integer typecode: one conversion, one engine call
   * (what converts here is what store would take) */
  char t = mpe_value_typecode(v);
  if (t != 'c' && !mpe_typecode_is_float(t)) {
    int isint;
    lua_Integer x = lua_tointegerx(L, 3, &isint);
    if (isint && mpe_value_set_int(v, 0, (int64_t)x) == 0) return 0;
  }
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
  mpe_value *v = check_own(L);
  if (lua_type(L, 2) == LUA_TNUMBER) {
    push_elem(L, v, check_index(L, v, 2));
    return 1;
  }
  return value_index(L);
}

static int array_newindex(lua_State *L) {
  mpe_value *v = check_own(L);
  store(L, v, check_index(L, v, 2), 3, "Array");
  return 0;
}

static int array_len(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)mpe_value_count(check_any(L, 1)));
  return 1;
}

static int array_add(lua_State *L) {
  mpe_value *v = check_any(L, 1);
  check_addable(L, v);
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

/* ---- runs of elements: a:slice(i, j), a:store(list [, i]) */

/* Takes the Array's lock for one run of elements, unless it has none or this
 * process holds it already (then the run is inside the caller's own update);
 * returns the lock to release, or NULL. */
static mpe_lock *lock_run(lua_State *L, mpe_value *v) {
  mpe_lock *l = mpe_value_lock(v);
  if (!l || mpe_lock_held(l)) return NULL;
  for (;;) {
    int rc = mpe_lock_acquire(l, 0.05); /* in slices: a signal that ends the run is seen */
    if (rc == 0 || rc == MPE_EOWNERDEAD) return l;
    if (rc != MPE_ETIMEDOUT && rc != -EINTR) luaL_error(L, "Array: cannot take its lock: %s", mpe_strerror(rc));
    mpel_check_signal(L);
  }
}

/* Elements i .. j (1-based, j = i - 1 for none) as 0-based first and count;
 * raises when the run is not inside the Array. */
static void check_run(lua_State *L, mpe_value *v, lua_Integer i, lua_Integer j, size_t *first, size_t *count) {
  lua_Integer n = (lua_Integer)mpe_value_count(v);
  if (i < 1 || j > n || j < i - 1)
    luaL_error(L, "Array: elements %I..%I out of range (1..%I)", i, j, n);
  *first = (size_t)(i - 1);
  *count = (size_t)(j - i + 1);
}

/* a:slice([i [, j]]): a list of elements i .. j (default 1 .. #a), read
 * under the Array's lock if it has one. */
static int array_slice(lua_State *L) {
  mpe_value *v = check_any(L, 1);
  lua_Integer i = luaL_optinteger(L, 2, 1), j = luaL_optinteger(L, 3, (lua_Integer)mpe_value_count(v));
  size_t first, count;
  check_run(L, v, i, j, &first, &count);
  lua_createtable(L, count < INT_MAX ? (int)count : 0, 0);
  mpe_lock *l = lock_run(L, v); /* nothing below raises (the table has room) */
  char t = mpe_value_typecode(v);
  if (t == 'd' || t == 'q' || t == 'l') { /* the Pool's packed numbers: straight reads */
    const uint64_t *at = (const uint64_t *)mpe_value_data(v) + first;
    for (size_t k = 0; k < count; k++) {
      uint64_t u = __atomic_load_n(at + k, __ATOMIC_RELAXED);
      if (t == 'd') {
        double d;
        memcpy(&d, &u, sizeof d);
        lua_pushnumber(L, (lua_Number)d);
      } else {
        lua_pushinteger(L, (lua_Integer)u);
      }
      lua_rawseti(L, -2, (lua_Integer)k + 1);
    }
  } else {
    for (size_t k = 0; k < count; k++) {
      push_elem(L, v, first + k);
      lua_rawseti(L, -2, (lua_Integer)k + 1);
    }
  }
  if (l) mpe_lock_release(l);
  return 1;
}

/* a:store(list [, i]): list[1 .. #list] into elements i .. (default 1),
 * under the Array's lock if it has one. Every element is checked first: a
 * wrong type, or a run past the end, raises with nothing stored; a number out
 * of the typecode's range raises with the elements already written put back. */
static int array_store(lua_State *L) {
  mpe_value *v = check_any(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_Integer m = (lua_Integer)lua_rawlen(L, 2), i = luaL_optinteger(L, 3, 1);
  size_t first, count;
  check_run(L, v, i, i + m - 1, &first, &count);
  char t = mpe_value_typecode(v);
  for (size_t k = 0; k < count; k++) { /* types first: nothing is written yet */
    lua_rawgeti(L, 2, (lua_Integer)k + 1);
    check_elem(L, -1, t, "Array:store", (lua_Integer)k + 1);
    lua_pop(L, 1);
  }
  /* the old values, to put back if a number does not fit */
  uint64_t *old = count ? lua_newuserdatauv(L, count * sizeof *old, 0) : NULL;
  int isfloat = mpe_typecode_is_float(t);
  mpe_lock *l = lock_run(L, v);
  for (size_t k = 0; k < count; k++) {
    if (isfloat) {
      double d = mpe_value_get_float(v, first + k);
      memcpy(&old[k], &d, sizeof d);
    } else {
      old[k] = (uint64_t)mpe_value_get_int(v, first + k);
    }
  }
  size_t bad = count;
  for (size_t k = 0; k < count && bad == count; k++) {
    lua_rawgeti(L, 2, (lua_Integer)k + 1);
    if (put_elem(L, v, first + k, -1) != 0) bad = k;
    lua_pop(L, 1);
  }
  if (bad < count) {
    for (size_t k = 0; k < bad; k++) {
      if (isfloat) {
        double d;
        memcpy(&d, &old[k], sizeof d);
        mpe_value_set_float(v, first + k, d);
      } else {
        mpe_value_set_int(v, first + k, (int64_t)old[k]);
      }
    }
  }
  if (l) mpe_lock_release(l);
  if (bad < count) {
    lua_rawgeti(L, 2, (lua_Integer)bad + 1);
    return luaL_error(L, "Array:store: %s (list[%I]) is out of range for typecode '%c'", lua_tostring(L, -1),
                      (lua_Integer)bad + 1, t);
  }
  return 0;
}

/* a:totable(): every element, as a:slice() (one consistent copy). */
static int array_totable(lua_State *L) {
  lua_settop(L, 1);
  return array_slice(L);
}

static const luaL_Reg value_methods[] = {{"get_lock", get_lock}, {"add", value_add}, {NULL, NULL}};
static const luaL_Reg array_methods[] = {
    {"get_lock", get_lock}, {"add", array_add},     {"totable", array_totable},
    {"slice", array_slice}, {"store", array_store}, {NULL, NULL},
};

static void set_access(lua_State *L, const char *name, lua_CFunction index, lua_CFunction newindex) {
  /* upvalues: 1 the key "value" (unused: is_value_key looks at the bytes), 2 the metatable (check_own) */
  luaL_getmetatable(L, name);
  lua_pushliteral(L, "value");
  lua_pushvalue(L, -2);
  lua_pushcclosure(L, index, 2);
  lua_setfield(L, -2, "__index");
  lua_pushliteral(L, "value");
  lua_pushvalue(L, -2);
  lua_pushcclosure(L, newindex, 2);
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
}
