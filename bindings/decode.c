/* decode.c - bytes back to Lua values: the decoder of the codec (codec.c
 * describes the format). The decoder trusts nothing: every length and count
 * is checked against the bytes left, every value counts towards the nesting
 * limit, and engine object references are checked by their class.
 *
 * What a message may do depends on its seal, checked before anything is
 * decoded. Unsealed bytes (from anywhere) give plain data only: nil,
 * booleans, numbers, strings and fresh tables, never a metatable; any other
 * extension is refused at once, before it has any effect. A message sealed
 * by this run may also load code, name modules (require), set metatables on
 * the tables it makes (never on others) and name engine objects.
 *
 * Memory: a table preallocates only what the bytes left could still fill
 * across the whole message (a budget), so a small message claiming huge
 * counts at every level of nesting costs no more than a small multiple of
 * its size. A malformed message raises "cannot receive value: malformed
 * message (...)". */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"

/* ------------------------------------------------------------- decoder */

typedef struct dec {
  lua_State *L;
  const unsigned char *p, *end;
  int refs; /* stack index: id -> value (nil until the first id is given) */
  int nrefs;
  int depth;
  mpe_pipe **ends;
  size_t nends;
  int sealed; /* the message carries this run's seal */
  int claim;  /* objects: take new references (else adopt the message's) */
  uint64_t budget; /* elements tables may still preallocate */
} dec;

static _Noreturn void bad(dec *d, const char *what) {
  luaL_error(d->L, "cannot receive value: malformed message (%s)", what);
  abort(); /* not reached: luaL_error does not return */
}

static uint64_t take_be(dec *d, int n) {
  if (d->end - d->p < n) bad(d, "truncated");
  uint64_t v = 0;
  for (int i = 0; i < n; i++) v = (v << 8) | d->p[i];
  d->p += n;
  return v;
}

static void dec_value(dec *d);

static void reg(dec *d) {
  if (!d->nrefs) { /* the first table or function: the id table, in the slot kept for it */
    lua_newtable(d->L);
    lua_replace(d->L, d->refs);
  }
  lua_pushvalue(d->L, -1);
  lua_rawseti(d->L, d->refs, ++d->nrefs);
}

static void dec_string(dec *d, uint64_t n) {
  if ((uint64_t)(d->end - d->p) < n) bad(d, "truncated string");
  lua_pushlstring(d->L, (const char *)d->p, (size_t)n);
  d->p += n;
}

static void dec_table(dec *d, uint64_t n, int map) {
  lua_State *L = d->L;
  if (n > (uint64_t)(d->end - d->p)) bad(d, "count beyond the message");
  luaL_checkstack(L, 4, "cannot receive value");
  /* Each element takes a byte at least (a pair two), in this table or in
   * none other: preallocate within what the whole message can hold, and let
   * a table that claims more grow as its elements really arrive. */
  uint64_t per = map ? 2 : 1, room = n <= d->budget / per ? n : d->budget / per;
  d->budget -= room * per;
  lua_createtable(L, map ? 0 : (int)room, map ? (int)room : 0);
  reg(d);
  for (uint64_t i = 1; i <= n; i++) {
    if (map) {
      dec_value(d);
      if (lua_isnil(L, -1) || (lua_type(L, -1) == LUA_TNUMBER && isnan(lua_tonumber(L, -1))))
        bad(d, "nil or NaN key");
      dec_value(d);
      lua_rawset(L, -3);
    } else {
      /* the common elements, small integers and floats, without a call */
      unsigned char b = d->p < d->end ? *d->p : 0xc1;
      if (b <= 0x7f) {
        d->p++;
        lua_pushinteger(L, b);
      } else if (b >= 0xcc && b <= 0xce) { /* uint8, uint16, uint32 */
        d->p++;
        lua_pushinteger(L, (lua_Integer)take_be(d, 1 << (b - 0xcc)));
      } else if (b == 0xcb && d->end - d->p >= 9) {
        d->p++;
        uint64_t u = take_be(d, 8);
        double f;
        memcpy(&f, &u, 8);
        lua_pushnumber(L, (lua_Number)f);
      } else {
        dec_value(d);
      }
      lua_rawseti(L, -2, (lua_Integer)i);
    }
  }
}

static void push_module(dec *d, const char *name, size_t n) {
  lua_State *L = d->L;
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_pushlstring(L, name, n);
  if (lua_rawget(L, -2) == LUA_TNIL) {
    lua_pop(L, 1);
    lua_getglobal(L, "require");
    lua_pushlstring(L, name, n);
    lua_call(L, 1, 1);
  }
  lua_remove(L, -2);
}

typedef struct load_src {
  const char *p;
  size_t n;
} load_src;

static const char *load_reader(lua_State *L, void *ud, size_t *size) {
  (void)L;
  load_src *s = ud;
  *size = s->n;
  s->n = 0;
  return *size ? s->p : NULL;
}

static void dec_function(dec *d, uint64_t len) {
  lua_State *L = d->L;
  const unsigned char *end = d->p + len;
  if (d->end - d->p < 5 || *d->p != 0xc6) bad(d, "function without code");
  d->p++;
  uint64_t n = take_be(d, 4);
  if ((uint64_t)(end - d->p) < n) bad(d, "truncated function");
  const unsigned char *code = d->p;
  d->p += n;
  load_src src = {(const char *)code, (size_t)n};
  if (n < 4 || memcmp(code, LUA_SIGNATURE, 4) != 0 || lua_load(L, load_reader, &src, "=?", "b") != LUA_OK)
    bad(d, "bad function code");
  reg(d);
  int f = lua_gettop(L);
  if (d->p >= end) bad(d, "function without upvalues");
  unsigned char b = *d->p++;
  uint64_t nup = 0;
  if ((b & 0xf0) == 0x90) nup = b & 0x0f;
  else if (b == 0xdc) nup = take_be(d, 2);
  else if (b == 0xdd) nup = take_be(d, 4);
  else bad(d, "function upvalues");
  for (uint64_t i = 1; i <= nup; i++) {
    if (end - d->p >= 9 && d->p[0] == 0xc7 && d->p[1] == 6 && d->p[2] == EXT_UPJOIN) {
      /* the same variable as an upvalue of a function decoded before */
      d->p += 3;
      uint64_t other = take_be(d, 4), j = take_be(d, 2);
      if (other < 1 || other > (uint64_t)d->nrefs || i > 255) bad(d, "shared upvalue");
      lua_rawgeti(L, d->refs, (lua_Integer)other);
      int o = lua_gettop(L);
      if (lua_type(L, o) != LUA_TFUNCTION || lua_iscfunction(L, o) || j < 1 ||
          !lua_getupvalue(L, o, (int)j) || !lua_getupvalue(L, f, (int)i))
        bad(d, "shared upvalue");
      lua_pop(L, 2);
      lua_upvaluejoin(L, f, (int)i, o, (int)j);
      lua_pop(L, 1);
      continue;
    }
    dec_value(d);
    if (!lua_setupvalue(L, f, (int)i)) bad(d, "too many upvalues");
  }
  if (d->p != end) bad(d, "trailing bytes in a function");
}

/* An extension in a message this run did not seal: refused before it acts. */
static _Noreturn void refuse(dec *d, int type) {
  static const char *const what[] = {NULL, NULL, "a module", "a module field", "a function",
                                     "a metatable", "an engine object", "a function", NULL};
  const char *w = type > 0 && type <= EXT_SEAL && what[type] ? what[type] : NULL;
  if (w)
    luaL_error(d->L, "cannot receive value: the message carries %s but was not encoded by this run "
                     "(functions, modules, metatables and engine objects decode only from a message "
                     "this run made and sealed; plain data decodes from anywhere)", w);
  luaL_error(d->L, "cannot receive value: the message carries extension type %d (only plain data "
                   "decodes from a message this run did not seal)", type);
  abort(); /* not reached */
}

static void dec_ext(dec *d, int type, uint64_t len) {
  lua_State *L = d->L;
  if (!d->sealed && type != EXT_REF) refuse(d, type);
  if ((uint64_t)(d->end - d->p) < len) bad(d, "truncated extension");
  const unsigned char *start = d->p;
  switch (type) {
  case EXT_REF: {
    if (len != 4) bad(d, "reference size");
    uint64_t id = take_be(d, 4);
    if (id < 1 || id > (uint64_t)d->nrefs) bad(d, "reference to nothing");
    lua_rawgeti(L, d->refs, (lua_Integer)id);
    return;
  }
  case EXT_MODULE:
    d->p += len;
    push_module(d, (const char *)start, (size_t)len);
    return;
  case EXT_MODFIELD: {
    d->p += len;
    const char *s = (const char *)start, *z = memchr(s, 0, (size_t)len);
    if (!z) bad(d, "module field");
    push_module(d, s, (size_t)(z - s));
    lua_pushlstring(L, z + 1, (size_t)(len - (uint64_t)(z - s) - 1));
    if (lua_gettable(L, -2) == LUA_TNIL)
      luaL_error(L, "cannot receive value: module '%s' has no field '%s'",
                 lua_pushlstring(L, s, (size_t)(z - s)), z + 1);
    lua_remove(L, -2);
    return;
  }
  case EXT_FUNC:
    dec_function(d, len);
    return;
  case EXT_MTTABLE: {
    const unsigned char *end = d->end;
    d->end = d->p + len;
    /* the table must be one this decode makes now (a map or an array
     * header), never a table met before nor a module */
    unsigned char b = d->p < d->end ? *d->p : 0xc1;
    if (!((b & 0xe0) == 0x80 || (b >= 0xdc && b <= 0xdf))) bad(d, "metatable on a table not made here");
    dec_value(d);
    if (!lua_istable(L, -1)) bad(d, "metatable on a non-table");
    dec_value(d);
    if (!lua_istable(L, -1)) bad(d, "metatable is not a table");
    lua_setmetatable(L, -2);
    if (d->p != d->end) bad(d, "trailing bytes after a metatable");
    d->end = end;
    return;
  }
  case EXT_OBJECT: {
    if (len < 1) bad(d, "object");
    lua_getfield(L, LUA_REGISTRYINDEX, "mpengine.classes");
    const mpel_class *cls = lua_rawgeti(L, -1, start[0]) == LUA_TLIGHTUSERDATA ? lua_touserdata(L, -1) : NULL;
    lua_pop(L, 2);
    if (!cls) bad(d, "unknown object kind");
    d->p += len;
    mpel_decoding_copy = d->claim; /* set for each: a module required above may have decoded too */
    if (cls->decode(L, cls, start + 1, (size_t)len - 1, d->ends, d->nends) != 0) bad(d, "object reference");
    reg(d);
    return;
  }
  default:
    bad(d, "unknown extension type");
  }
}

static void dec_one(dec *d);

/* Every value counts towards the nesting limit: tables, functions and
 * extensions nest through here, so no input can exhaust the C stack. */
static void dec_value(dec *d) {
  if (++d->depth > 2 * MAX_DEPTH + 8) bad(d, "nested too deeply");
  dec_one(d);
  d->depth--;
}

static void dec_one(dec *d) {
  lua_State *L = d->L;
  if (d->p >= d->end) bad(d, "truncated");
  luaL_checkstack(L, 3, "cannot receive value");
  unsigned char b = *d->p++;
  if (b <= 0x7f) { lua_pushinteger(L, b); return; }
  if (b >= 0xe0) { lua_pushinteger(L, (lua_Integer)(int8_t)b); return; }
  if ((b & 0xf0) == 0x80) { dec_table(d, b & 0x0f, 1); return; }
  if ((b & 0xf0) == 0x90) { dec_table(d, b & 0x0f, 0); return; }
  if ((b & 0xe0) == 0xa0) { dec_string(d, b & 0x1f); return; }
  switch (b) {
  case 0xc0: lua_pushnil(L); return;
  case 0xc2: lua_pushboolean(L, 0); return;
  case 0xc3: lua_pushboolean(L, 1); return;
  case 0xc4: case 0xd9: dec_string(d, take_be(d, 1)); return;
  case 0xc5: case 0xda: dec_string(d, take_be(d, 2)); return;
  case 0xc6: case 0xdb: dec_string(d, take_be(d, 4)); return;
  case 0xc7: case 0xc8: case 0xc9: {
    uint64_t n = take_be(d, b == 0xc7 ? 1 : b == 0xc8 ? 2 : 4);
    int type = (int)take_be(d, 1);
    dec_ext(d, type, n);
    return;
  }
  case 0xd4: case 0xd5: case 0xd6: case 0xd7: case 0xd8: {
    int type = (int)take_be(d, 1);
    dec_ext(d, type, (uint64_t)1 << (b - 0xd4));
    return;
  }
  case 0xca: {
    uint32_t u = (uint32_t)take_be(d, 4);
    float f;
    memcpy(&f, &u, 4);
    lua_pushnumber(L, (lua_Number)f);
    return;
  }
  case 0xcb: {
    uint64_t u = take_be(d, 8);
    double f;
    memcpy(&f, &u, 8);
    lua_pushnumber(L, (lua_Number)f);
    return;
  }
  case 0xcc: lua_pushinteger(L, (lua_Integer)take_be(d, 1)); return;
  case 0xcd: lua_pushinteger(L, (lua_Integer)take_be(d, 2)); return;
  case 0xce: lua_pushinteger(L, (lua_Integer)take_be(d, 4)); return;
  case 0xcf: lua_pushinteger(L, (lua_Integer)take_be(d, 8)); return;
  case 0xd0: lua_pushinteger(L, (int8_t)take_be(d, 1)); return;
  case 0xd1: lua_pushinteger(L, (int16_t)take_be(d, 2)); return;
  case 0xd2: lua_pushinteger(L, (int32_t)take_be(d, 4)); return;
  case 0xd3: lua_pushinteger(L, (lua_Integer)take_be(d, 8)); return;
  case 0xdc: dec_table(d, take_be(d, 2), 0); return;
  case 0xdd: dec_table(d, take_be(d, 4), 0); return;
  case 0xde: dec_table(d, take_be(d, 2), 1); return;
  case 0xdf: dec_table(d, take_be(d, 4), 1); return;
  default: bad(d, "reserved byte");
  }
}

int mpel_decoding_copy;

static void decode(lua_State *L, const char *buf, size_t len, mpe_pipe **ends, size_t nends, int claim) {
  dec d;
  memset(&d, 0, sizeof d);
  d.L = L;
  d.p = (const unsigned char *)buf;
  d.end = d.p + len;
  d.ends = ends;
  d.nends = nends;
  d.claim = claim;
  d.budget = len;
  if (len >= MPEL_SEAL_LEN && d.p[0] == 0xd7 && d.p[1] == EXT_SEAL) {
    unsigned char want[MPEL_SEAL_LEN];
    mpel_seal_header(d.p + MPEL_SEAL_LEN, len - MPEL_SEAL_LEN, want);
    unsigned diff = !mpe_initialized(); /* no key, no seal */
    for (int i = 2; i < MPEL_SEAL_LEN; i++) diff |= want[i] ^ d.p[i];
    if (diff)
      luaL_error(L, "cannot receive value: the message's seal does not match: it was not encoded by "
                    "this run, or was changed since (nothing in it was decoded)");
    d.sealed = 1;
    d.p += MPEL_SEAL_LEN;
  }
  lua_pushnil(L); /* a plain scalar needs no id table: made on first use (reg) */
  d.refs = lua_gettop(L);
  dec_value(&d);
  if (d.p != d.end) bad(&d, "trailing bytes");
  lua_replace(L, d.refs); /* the value where the id table (or its slot) was */
}

void mpel_decode(lua_State *L, const char *buf, size_t len, mpe_pipe **ends, size_t nends) {
  decode(L, buf, len, ends, nends, 0);
}

void mpel_decode_copy(lua_State *L, const char *buf, size_t len) {
  decode(L, buf, len, NULL, 0, 1);
}

int mpel_decode_scalar(lua_State *L, const char *buf, size_t len) {
  const unsigned char *p = (const unsigned char *)buf;
  if (len == 0) return 0;
  unsigned c = p[0];
  uint64_t v = 0;
  for (size_t i = 1; i < len && i < 9; i++) v = (v << 8) | p[i];
  if (len == 1) {
    if (c < 0x80) lua_pushinteger(L, (lua_Integer)c);
    else if (c >= 0xe0) lua_pushinteger(L, (lua_Integer)c - 256);
    else if (c == 0xc0) lua_pushnil(L);
    else if (c == 0xc2 || c == 0xc3) lua_pushboolean(L, c == 0xc3);
    else return 0;
    return 1;
  }
  switch (c) {
  case 0xcc: if (len != 2) return 0; lua_pushinteger(L, (lua_Integer)v); return 1;
  case 0xcd: if (len != 3) return 0; lua_pushinteger(L, (lua_Integer)v); return 1;
  case 0xce: if (len != 5) return 0; lua_pushinteger(L, (lua_Integer)v); return 1;
  case 0xcf: if (len != 9) return 0; lua_pushinteger(L, (lua_Integer)v); return 1;
  case 0xd0: if (len != 2) return 0; lua_pushinteger(L, (int8_t)v); return 1;
  case 0xd1: if (len != 3) return 0; lua_pushinteger(L, (int16_t)v); return 1;
  case 0xd2: if (len != 5) return 0; lua_pushinteger(L, (int32_t)v); return 1;
  case 0xd3: if (len != 9) return 0; lua_pushinteger(L, (lua_Integer)v); return 1;
  case 0xcb: {
    if (len != 9) return 0;
    double d;
    memcpy(&d, &v, 8);
    lua_pushnumber(L, (lua_Number)d);
    return 1;
  }
  default: return 0;
  }
}
