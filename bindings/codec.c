/* codec.c - Lua values to bytes and back: MessagePack with extension types.
 *
 * Scalars are plain MessagePack (integers stay integers, floats are always
 * float64 so 1.0 stays a float; NaN and infinities travel as they are;
 * strings are binary-safe). A table is an array when it is a proper sequence,
 * otherwise a map. What MessagePack has no word for is an extension type:
 *
 *   1 REF      u32 id: the id-th table/function/object of this message again
 *              (shared references and cycles)
 *   2 MODULE   name: package.loaded[name] on the receiving side
 *   3 MODFIELD "mod\0key": a C function (or a module's function or
 *              userdata) by name, e.g. string.format, io.stdout
 *   4 FUNC     bin bytecode, array of upvalues: a Lua function (debug info
 *              kept, so tracebacks show file:line); an upvalue named _ENV
 *              always travels as MODULE "_G": the receiver's globals
 *   5 MTTABLE  table, metatable
 *   6 OBJECT   kind byte, reference: an engine object (see mpe_lua.h)
 *   7 UPJOIN   u32 function id, u16 index: in place of an upvalue, "the same
 *              variable as upvalue index of that function" (closures that
 *              share a variable still share it on the other side)
 *   8 SEAL     u64 tag: only first, see below
 *
 * Ids: tables, Lua functions and engine objects get ids 1, 2, ... in the order
 * the encoder meets them (depth first), and the decoder counts the same way,
 * so no id is written except in REF. Modules and module fields are named, not
 * counted. Nothing is sent until the whole value has encoded, so a value that
 * cannot travel raises with its path and nothing half-sent reaches a peer.
 *
 * Sealing: a message with any extension but REF reaches code or live state
 * when decoded (it loads code, requires modules, sets metatables, names
 * engine objects), so the encoder seals it: SEAL, the keyed tag (mpe_mac,
 * the run's secret) of every byte after it, goes first. The decoder checks
 * the tag before it decodes anything and refuses those extensions in a
 * message that is not sealed by this run. Plain data (what MessagePack
 * itself can say, shared references and cycles included) is never sealed
 * and costs nothing extra.
 *
 * References: the encoder takes none, except for a real send (w->transfer:
 * a Queue put, a Pipe send), where each engine object in the message gets
 * one reference in flight, taken once the whole message encoded and adopted
 * by the one receiver. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"

#define MAX_SEG 24
#define SEG_LEN 48
#define WIRE_KEEP (64u << 20)

/* ------------------------------------------------------------- the wire */

static int wire_gc(lua_State *L) {
  mpel_wire *w = lua_touserdata(L, 1);
  free(w->buf);
  w->buf = NULL;
  w->cap = w->len = 0;
  return 0;
}

void mpel_push_wire(lua_State *L) {
  if (lua_getfield(L, LUA_REGISTRYINDEX, "mpengine.wire") == LUA_TUSERDATA) return;
  lua_pop(L, 1); /* the nil */
  mpel_wire *w = lua_newuserdatauv(L, sizeof *w, 0);
  memset(w, 0, sizeof *w);
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, wire_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  lua_pushvalue(L, -1);
  lua_setfield(L, LUA_REGISTRYINDEX, "mpengine.wire");
}

mpel_wire *mpel_wire_begin(mpel_wire *w, int allow_ends) {
  w->len = 0;
  w->nends = 0;
  w->allow_ends = allow_ends;
  w->transfer = 1;
  w->inflight = 0;
  w->remote = 0;
  w->check = 0;
  return w;
}

mpel_wire *mpel_wire_get(lua_State *L, int allow_ends) {
  mpel_push_wire(L);
  mpel_wire *w = lua_touserdata(L, -1);
  lua_pop(L, 1); /* the registry keeps it alive */
  return mpel_wire_begin(w, allow_ends);
}

void mpel_wire_trim(mpel_wire *w, size_t keep) {
  w->nends = 0;
  if (w->cap > keep) { /* do not sit on a huge buffer */
    free(w->buf);
    w->buf = NULL;
    w->cap = 0;
  }
  w->len = 0;
}

void mpel_wire_done(mpel_wire *w) { mpel_wire_trim(w, WIRE_KEEP); }

int mpel_wire_reserve(mpel_wire *w, size_t more) {
  if (w->cap - w->len >= more) return 0;
  size_t cap = w->cap ? w->cap : 256;
  while (cap - w->len < more) {
    if (cap > SIZE_MAX / 2) return -1;
    cap *= 2;
  }
  char *b = realloc(w->buf, cap);
  if (!b) return -1;
  w->buf = b;
  w->cap = cap;
  return 0;
}

/* ------------------------------------------------------------- encoder */

typedef struct enc {
  lua_State *L;
  mpel_wire *w;
  int seen; /* stack index: value -> id; nil until a second table or function */
  int first; /* stack index: the first table or function met (id 1) */
  int upids; /* stack index: upvalue id -> function id << 16 | index; nil until needed */
  int rev;  /* stack index: value -> "mod" or "mod\0key"; nil until needed */
  int plain; /* stack index of a root that is never a module by name, or 0 */
  int nextid;
  int depth;
  int ext;  /* an extension but REF was written: the message is sealed */
  int objs; /* stack index: the engine objects met, handle and class by turns */
  int nobjs;
  const char *why;
  char whybuf[128];
  int nseg;
  char seg[MAX_SEG][SEG_LEN];
} enc;

static void grow(enc *e, size_t n) {
  if (mpel_wire_reserve(e->w, n) != 0) luaL_error(e->L, "cannot send value: out of memory");
}

static inline void need(enc *e, size_t n) {
  if (e->w->cap - e->w->len < n) grow(e, n);
}

static void put(enc *e, const void *p, size_t n) {
  need(e, n);
  memcpy(e->w->buf + e->w->len, p, n);
  e->w->len += n;
}

static void put1(enc *e, unsigned char b) {
  need(e, 1);
  e->w->buf[e->w->len++] = (char)b;
}

static void put_be(enc *e, unsigned char tag, uint64_t v, int bytes) {
  unsigned char b[9];
  b[0] = tag;
  for (int i = 0; i < bytes; i++) b[1 + i] = (unsigned char)(v >> (8 * (bytes - 1 - i)));
  put(e, b, (size_t)bytes + 1);
}

static void patch32(enc *e, size_t at, size_t v) {
  unsigned char *b = (unsigned char *)e->w->buf + at;
  b[0] = (unsigned char)(v >> 24);
  b[1] = (unsigned char)(v >> 16);
  b[2] = (unsigned char)(v >> 8);
  b[3] = (unsigned char)v;
}

static void put_int(enc *e, lua_Integer i) {
  if (i >= 0) {
    if (i < 128) put1(e, (unsigned char)i);
    else if (i < 256) put_be(e, 0xcc, (uint64_t)i, 1);
    else if (i < 65536) put_be(e, 0xcd, (uint64_t)i, 2);
    else if (i <= 0xffffffffLL) put_be(e, 0xce, (uint64_t)i, 4);
    else put_be(e, 0xcf, (uint64_t)i, 8);
  } else {
    if (i >= -32) put1(e, (unsigned char)(0xe0 | (i + 32)));
    else if (i >= -128) put_be(e, 0xd0, (uint64_t)i & 0xff, 1);
    else if (i >= -32768) put_be(e, 0xd1, (uint64_t)i & 0xffff, 2);
    else if (i >= INT32_MIN) put_be(e, 0xd2, (uint64_t)i & 0xffffffffu, 4);
    else put_be(e, 0xd3, (uint64_t)i, 8);
  }
}

static void put_float(enc *e, double d) {
  uint64_t u;
  memcpy(&u, &d, 8);
  put_be(e, 0xcb, u, 8);
}

static void put_str(enc *e, const char *s, size_t n) {
  if (n < 32) put1(e, (unsigned char)(0xa0 | n));
  else if (n < 256) put_be(e, 0xd9, n, 1);
  else if (n < 65536) put_be(e, 0xda, n, 2);
  else put_be(e, 0xdb, n, 4);
  put(e, s, n);
}

static void put_count(enc *e, int map, size_t n) {
  if (n < 16) put1(e, (unsigned char)((map ? 0x80 : 0x90) | n));
  else if (n < 65536) put_be(e, map ? 0xde : 0xdc, n, 2);
  else put_be(e, map ? 0xdf : 0xdd, n, 4);
}

static void put_ext(enc *e, int type, const void *p, size_t n) {
  if (type != EXT_REF) e->ext = 1;
  if (n == 1 || n == 2 || n == 4 || n == 8 || n == 16) {
    put1(e, n == 1 ? 0xd4 : n == 2 ? 0xd5 : n == 4 ? 0xd6 : n == 8 ? 0xd7 : 0xd8);
  } else if (n < 256) {
    put_be(e, 0xc7, n, 1);
  } else if (n < 65536) {
    put_be(e, 0xc8, n, 2);
  } else {
    put_be(e, 0xc9, n, 4);
  }
  put1(e, (unsigned char)type);
  put(e, p, n);
}

/* Opens an ext32 whose length is patched by close_ext. */
static size_t open_ext(enc *e, int type) {
  e->ext = 1;
  put_be(e, 0xc9, 0, 4);
  put1(e, (unsigned char)type);
  return e->w->len;
}

static void close_ext(enc *e, size_t start) {
  size_t n = e->w->len - start;
  if (n > 0xffffffffu) luaL_error(e->L, "cannot send value: a function or table over 4 GiB");
  patch32(e, start - 5, n);
}

static int fail(enc *e, const char *why) {
  e->why = why;
  return -1;
}

/* Records one path segment while unwinding from a failure. */
static void seg_key(enc *e, int key) {
  if (e->nseg >= MAX_SEG) return;
  char *s = e->seg[e->nseg++];
  lua_State *L = e->L;
  if (lua_type(L, key) == LUA_TNUMBER && lua_isinteger(L, key)) {
    snprintf(s, SEG_LEN, "[%lld]", (long long)lua_tointeger(L, key));
  } else if (lua_type(L, key) == LUA_TSTRING) {
    const char *k = lua_tostring(L, key);
    int ident = *k == '_' || ((*k | 32) >= 'a' && (*k | 32) <= 'z');
    for (const char *c = k; *c && ident; c++)
      ident = *c == '_' || ((*c | 32) >= 'a' && (*c | 32) <= 'z') || (*c >= '0' && *c <= '9');
    if (ident) snprintf(s, SEG_LEN, ".%s", k);
    else snprintf(s, SEG_LEN, "[\"%.40s\"]", k);
  } else {
    snprintf(s, SEG_LEN, "[%s key]", luaL_typename(L, key));
  }
}

static void seg_text(enc *e, const char *prefix, const char *arg, const char *suffix) {
  if (e->nseg >= MAX_SEG) return;
  snprintf(e->seg[e->nseg++], SEG_LEN, "%s%s%s", prefix, arg, suffix);
}

static int enc_value(enc *e, int idx);

/* 1 if the value at idx was seen (a REF was written); else gives it an id.
 * Most messages hold one table or function: the table of those seen is
 * made when a second one comes, so that sending one flat table allocates
 * nothing for it (and a Process start's check, often nothing at all). */
static int enc_seen(enc *e, int idx) {
  lua_State *L = e->L;
  if (lua_isnil(L, e->seen)) {
    if (e->nextid == 0) {
      lua_pushvalue(L, idx);
      lua_replace(L, e->first);
      e->nextid = 1;
      return 0;
    }
    lua_createtable(L, 0, 4);
    lua_pushvalue(L, e->first);
    lua_pushinteger(L, 1);
    lua_rawset(L, -3);
    lua_replace(L, e->seen);
  }
  lua_pushvalue(L, idx);
  if (lua_rawget(L, e->seen) != LUA_TNIL) {
    uint32_t id = (uint32_t)lua_tointeger(L, -1);
    lua_pop(L, 1);
    unsigned char b[4] = {(unsigned char)(id >> 24), (unsigned char)(id >> 16),
                          (unsigned char)(id >> 8), (unsigned char)id};
    put_ext(e, EXT_REF, b, 4);
    return 1;
  }
  lua_pop(L, 1);
  lua_pushvalue(L, idx);
  lua_pushinteger(L, ++e->nextid);
  lua_rawset(L, e->seen);
  return 0;
}

/* 1 if the value at idx is a module or a module's field (written by name). */
static void rev_push(lua_State *L);

static int enc_named(enc *e, int idx) {
  lua_State *L = e->L;
  if (idx == e->plain) return 0;
  if (lua_isnil(L, e->rev)) { /* the map, checked against package.loaded, at the first need */
    luaL_checkstack(L, 8, "cannot send value");
    rev_push(L);
    lua_replace(L, e->rev);
  }
  lua_pushvalue(L, idx);
  if (lua_rawget(L, e->rev) != LUA_TSTRING) {
    lua_pop(L, 1);
    return 0;
  }
  size_t n;
  const char *name = lua_tolstring(L, -1, &n);
  put_ext(e, memchr(name, 0, n) ? EXT_MODFIELD : EXT_MODULE, name, n);
  lua_pop(L, 1);
  return 1;
}

/* Clears the entries of the table at t whose integer value, shifted right
 * by shift, is above id (clearing a field while traversing is allowed). */
static void drop_above(lua_State *L, int t, int shift, int id) {
  lua_pushnil(L);
  while (lua_next(L, t)) {
    int drop = (lua_tointeger(L, -1) >> shift) > id;
    lua_pop(L, 1);
    if (drop) {
      lua_pushvalue(L, -1);
      lua_pushnil(L);
      lua_rawset(L, t);
    }
  }
}

/* Where an array encoding began: what it must undo if it is abandoned. */
typedef struct mark {
  size_t len, nends;
  int nextid, nobjs;
} mark;

static mark mark_of(const enc *e) { return (mark){e->w->len, e->w->nends, e->nextid, e->nobjs}; }

/* Undoes what an abandoned array encoding wrote: the bytes, the pipe ends
 * and engine objects it listed (listed again when the table is encoded as
 * a map: a second reference in flight for one object would outlive every
 * handle), the ids it gave and the upvalues of the functions it gave them
 * to. */
static void rewind_to(enc *e, mark m) {
  lua_State *L = e->L;
  e->w->len = m.len;
  e->w->nends = m.nends;
  if (e->nobjs != m.nobjs) {
    for (int i = m.nobjs + 1; i <= e->nobjs; i++) {
      lua_pushnil(L);
      lua_rawseti(L, e->objs, i);
    }
    e->nobjs = m.nobjs;
    lua_pushinteger(L, e->nobjs);
    lua_rawseti(L, e->objs, 0);
  }
  int nextid = m.nextid;
  if (e->nextid == nextid) return;
  e->nextid = nextid;
  if (lua_isnil(L, e->seen)) return; /* only the first has an id, and it stays */
  drop_above(L, e->seen, 0, nextid);
  if (!lua_isnil(L, e->upids)) drop_above(L, e->upids, 16, nextid);
}

/* Encodes the table at idx as an array of its n = #t elements, in one pass:
 * the traversal must yield exactly the keys 1..n in order (the array part
 * comes first). 1 done, 0 it is not such a table (nothing written), -1 a
 * value failed. */
static int enc_array(enc *e, int idx, lua_Unsigned n) {
  lua_State *L = e->L;
  mark m = mark_of(e);
  put_count(e, 0, n);
  lua_Unsigned i = 0;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    int isint;
    lua_Integer k = lua_tointegerx(L, -2, &isint);
    if (!isint || lua_type(L, -2) != LUA_TNUMBER || (lua_Unsigned)k != i + 1 || i == n) {
      lua_pop(L, 2);
      rewind_to(e, m);
      return 0; /* not 1..n in order: a map after all */
    }
    i++;
    if (enc_value(e, lua_gettop(L)) != 0) {
      luaL_checkstack(L, 1, "cannot send value"); /* every level of the way back pushes one */
      lua_pushinteger(L, (lua_Integer)i); /* the stack above is the failed value's */
      seg_key(e, lua_gettop(L));
      return -1;
    }
    lua_pop(L, 1);
  }
  if (i != n) {
    rewind_to(e, m);
    return 0;
  }
  return 1;
}

static int enc_table(enc *e, int idx) {
  lua_State *L = e->L;
  if (enc_named(e, idx)) return 0;
  size_t ext = 0;
  int has_mt = lua_getmetatable(L, idx);
  if (has_mt) ext = open_ext(e, EXT_MTTABLE); /* before the id: the decoder meets the body first */
  if (enc_seen(e, idx)) {
    /* A table already sent is a REF, metatable included. Undo the ext. */
    if (has_mt) {
      size_t reflen = e->w->len - ext;
      memmove(e->w->buf + ext - 6, e->w->buf + ext, reflen);
      e->w->len -= 6;
      lua_pop(L, 1);
    }
    return 0;
  }
  if (++e->depth > MAX_DEPTH) return fail(e, "table nested too deeply (cycles are fine, depth is not)");
  luaL_checkstack(L, 6, "cannot send value");
  lua_Unsigned n = lua_rawlen(L, idx);
  int as_array = 0;
  if (n > 0) {
    int r = enc_array(e, idx, n);
    if (r < 0) return -1;
    as_array = r == 1;
  }
  if (!as_array) {
    /* one pass: a map32 header whose count is patched at the end */
    put_be(e, 0xdf, 0, 4);
    size_t at = e->w->len - 4;
    size_t count = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
      int k = lua_gettop(L) - 1;
      if (enc_value(e, k) != 0 || enc_value(e, k + 1) != 0) {
        seg_key(e, k);
        return -1;
      }
      lua_pop(L, 1);
      count++;
    }
    patch32(e, at, count);
  }
  if (has_mt) {
    int mt = lua_gettop(L);
    if (enc_value(e, mt) != 0) {
      seg_text(e, "[metatable]", "", "");
      return -1;
    }
    lua_pop(L, 1);
    close_ext(e, ext);
  }
  e->depth--;
  return 0;
}

static int dump_writer(lua_State *L, const void *p, size_t n, void *ud) {
  (void)L;
  put(ud, p, n);
  return 0;
}

static int enc_function(enc *e, int idx) {
  lua_State *L = e->L;
  if (enc_named(e, idx)) return 0;
  if (lua_iscfunction(L, idx)) {
    if (lua_getupvalue(L, idx, 1)) {
      lua_pop(L, 1);
      return fail(e, "C closure with upvalues (not a field of a loaded module)");
    }
    return fail(e, "C function (not a field of a loaded module)");
  }
  if (enc_seen(e, idx)) return 0;
  int fid = e->nextid; /* the id enc_seen just gave */
  if (++e->depth > MAX_DEPTH) return fail(e, "functions nested too deeply");
  luaL_checkstack(L, 6, "cannot send value");
  size_t ext = open_ext(e, EXT_FUNC);
  put_be(e, 0xc6, 0, 4); /* bin32, length patched below */
  size_t code = e->w->len;
  if (!e->w->check) { /* a dump cannot fail: a check needs none */
    lua_pushvalue(L, idx);
    lua_dump(L, dump_writer, e, 0); /* keep debug info: tracebacks need it */
    lua_pop(L, 1);
  }
  patch32(e, code - 4, e->w->len - code);
  int n = 0;
  while (lua_getupvalue(L, idx, n + 1)) {
    lua_pop(L, 1);
    n++;
  }
  put_count(e, 0, (size_t)n);
  for (int i = 1; i <= n; i++) {
    const char *name = lua_getupvalue(L, idx, i);
    if (name && strcmp(name, "_ENV") == 0) {
      /* The contract: a function's _ENV is the receiving process's globals. */
      put_ext(e, EXT_MODULE, "_G", 2);
      lua_pop(L, 1);
      continue;
    }
    /* a variable another closure of this message shares: name it, do not copy it */
    if (lua_isnil(L, e->upids)) {
      lua_newtable(L);
      lua_replace(L, e->upids);
    }
    lua_pushlightuserdata(L, lua_upvalueid(L, idx, i));
    if (lua_rawget(L, e->upids) == LUA_TNUMBER) {
      lua_Integer at = lua_tointeger(L, -1);
      unsigned char b[6] = {(unsigned char)(at >> 40), (unsigned char)(at >> 32), (unsigned char)(at >> 24),
                            (unsigned char)(at >> 16), (unsigned char)(at >> 8), (unsigned char)at};
      put_ext(e, EXT_UPJOIN, b, 6);
      lua_pop(L, 2);
      continue;
    }
    lua_pop(L, 1);
    lua_pushlightuserdata(L, lua_upvalueid(L, idx, i));
    lua_pushinteger(L, ((lua_Integer)fid << 16) | i);
    lua_rawset(L, e->upids);
    if (enc_value(e, lua_gettop(L)) != 0) {
      seg_text(e, "[upvalue ", name && *name ? name : "?", "]");
      return -1;
    }
    lua_pop(L, 1);
  }
  close_ext(e, ext);
  e->depth--;
  return 0;
}

/* Puts at slot the table that lists the objects of a message (one for the
 * state, reused): weak, so that it keeps none alive once the message went,
 * and emptied of the last message's. */
static void objs_open(lua_State *L, int slot) {
  mpel_weak_registry(L, "mpengine.inflight", "v");
  lua_Integer n = (lua_rawgeti(L, -1, 0), lua_tointeger(L, -1));
  lua_pop(L, 1);
  for (lua_Integer i = 1; i <= n; i++) {
    lua_pushnil(L);
    lua_rawseti(L, -2, i);
  }
  lua_pushinteger(L, 0);
  lua_rawseti(L, -2, 0);
  lua_replace(L, slot);
}

static int enc_userdata(enc *e, int idx) {
  lua_State *L = e->L;
  if (lua_getmetatable(L, idx)) {
    lua_getfield(L, LUA_REGISTRYINDEX, "mpengine.kinds");
    lua_pushvalue(L, -2);
    const mpel_class *cls = lua_rawget(L, -2) == LUA_TLIGHTUSERDATA ? lua_touserdata(L, -1) : NULL;
    lua_pop(L, 3);
    if (cls) {
      if (enc_seen(e, idx)) return 0;
      e->ext = 1;
      if (e->w->remote && !cls->anywhere) {
        snprintf(e->whybuf, sizeof e->whybuf,
                 "%s: an object of this host cannot reach a task on another host (make it on the broker: "
                 "{broker = URL}, or in a broker run)", cls->name);
        return fail(e, e->whybuf);
      }
      const char *why = cls->encode(L, idx, e->w);
      if (why) return fail(e, why);
      if (cls->retain) { /* a reference in flight for a real send, once all encoded */
        if (lua_type(L, e->objs) == LUA_TNIL) objs_open(L, e->objs);
        lua_pushvalue(L, idx);
        lua_rawseti(L, e->objs, ++e->nobjs);
        lua_pushlightuserdata(L, (void *)cls);
        lua_rawseti(L, e->objs, ++e->nobjs);
        lua_pushinteger(L, e->nobjs); /* [0]: how many, even if the encoding fails later */
        lua_rawseti(L, e->objs, 0);
      }
      return 0;
    }
  }
  if (enc_named(e, idx)) return 0;
  const char *tn = NULL;
  if (luaL_getmetafield(L, idx, "__name") == LUA_TSTRING) tn = lua_tostring(L, -1);
  if (tn && strcmp(tn, LUA_FILEHANDLE) == 0)
    snprintf(e->whybuf, sizeof e->whybuf, "userdata (%s): an open file cannot travel; open files in the child", tn);
  else if (tn) snprintf(e->whybuf, sizeof e->whybuf, "userdata (%s)", tn);
  else snprintf(e->whybuf, sizeof e->whybuf, "userdata");
  if (tn) lua_pop(L, 1);
  return fail(e, e->whybuf);
}

static int enc_value(enc *e, int idx) {
  lua_State *L = e->L;
  switch (lua_type(L, idx)) {
  case LUA_TNIL: put1(e, 0xc0); return 0;
  case LUA_TBOOLEAN: put1(e, lua_toboolean(L, idx) ? 0xc3 : 0xc2); return 0;
  case LUA_TNUMBER:
    if (lua_isinteger(L, idx)) put_int(e, lua_tointeger(L, idx));
    else put_float(e, (double)lua_tonumber(L, idx));
    return 0;
  case LUA_TSTRING: {
    size_t n;
    const char *s = lua_tolstring(L, idx, &n);
    if (n > 0xffffffffu) return fail(e, "string over 4 GiB");
    put_str(e, s, n);
    return 0;
  }
  case LUA_TTABLE: return enc_table(e, idx);
  case LUA_TFUNCTION: return enc_function(e, idx);
  case LUA_TUSERDATA: return enc_userdata(e, idx);
  case LUA_TLIGHTUSERDATA: return fail(e, "light userdata");
  case LUA_TTHREAD: return fail(e, "thread");
  default: return fail(e, luaL_typename(L, idx));
  }
}

/* ------------------------------------------- modules known by their names */

static void rev_add(lua_State *L, int rev, int val, const char *name, size_t nlen) {
  lua_pushvalue(L, val);
  if (lua_rawget(L, rev) == LUA_TNIL) {
    lua_pushvalue(L, val);
    lua_pushlstring(L, name, nlen);
    lua_rawset(L, rev);
  }
  lua_pop(L, 1);
}

/* Builds value -> name for package.loaded; pushes it. */
static void rev_build(lua_State *L, int loaded) {
  lua_newtable(L);
  int rev = lua_gettop(L);
  lua_pushnil(L);
  while (lua_next(L, loaded)) { /* the modules themselves */
    int t = lua_type(L, -1);
    if (lua_type(L, -2) == LUA_TSTRING && (t == LUA_TTABLE || t == LUA_TFUNCTION || t == LUA_TUSERDATA)) {
      size_t n;
      const char *name = lua_tolstring(L, -2, &n);
      rev_add(L, rev, lua_gettop(L), name, n);
    }
    lua_pop(L, 1);
  }
  for (int pass = 0; pass < 2; pass++) { /* their fields; _G's last */
    lua_pushnil(L);
    while (lua_next(L, loaded)) {
      if (lua_type(L, -2) == LUA_TSTRING && lua_type(L, -1) == LUA_TTABLE) {
        const char *name = lua_tostring(L, -2);
        int is_g = strcmp(name, "_G") == 0;
        if (is_g == pass) {
          int mod = lua_gettop(L);
          lua_pushnil(L);
          while (lua_next(L, mod)) {
            int t = lua_type(L, -1);
            int take = t == LUA_TUSERDATA ||
                       (t == LUA_TFUNCTION && (!is_g || lua_iscfunction(L, -1)));
            if (take && lua_type(L, -2) == LUA_TSTRING) {
              luaL_Buffer b;
              size_t kn;
              const char *k = lua_tolstring(L, -2, &kn);
              int val = lua_gettop(L);
              luaL_buffinit(L, &b);
              luaL_addstring(&b, name);
              luaL_addchar(&b, '\0');
              luaL_addlstring(&b, k, kn);
              luaL_pushresult(&b);
              size_t fn;
              const char *full = lua_tolstring(L, -1, &fn);
              rev_add(L, rev, val, full, fn);
              lua_pop(L, 1);
            }
            lua_pop(L, 1);
          }
        }
      }
      lua_pop(L, 1);
    }
  }
}

/* Pushes the cached reverse map, rebuilding it when package.loaded changed. */
static void rev_push(lua_State *L) {
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  int loaded = lua_gettop(L);
  int fresh = lua_getfield(L, LUA_REGISTRYINDEX, "mpengine.revsnap") == LUA_TTABLE;
  int snap = lua_gettop(L);
  if (fresh) {
    lua_Integer count = 0;
    lua_pushnil(L);
    while (fresh && lua_next(L, loaded)) {
      count++;
      lua_pushvalue(L, -2);
      lua_rawget(L, snap);
      fresh = lua_rawequal(L, -1, -2);
      lua_pop(L, 2);
      if (!fresh) lua_pop(L, 1); /* the key */
    }
    lua_pushboolean(L, 1);
    lua_rawget(L, snap);
    fresh = fresh && lua_tointeger(L, -1) == count;
    lua_pop(L, 1);
  }
  if (fresh) {
    lua_getfield(L, LUA_REGISTRYINDEX, "mpengine.rev");
  } else {
    lua_newtable(L); /* new snapshot */
    int ns = lua_gettop(L);
    lua_Integer count = 0;
    lua_pushnil(L);
    while (lua_next(L, loaded)) {
      count++;
      lua_pushvalue(L, -2);
      lua_insert(L, -2);
      lua_rawset(L, ns);
    }
    lua_pushboolean(L, 1);
    lua_pushinteger(L, count);
    lua_rawset(L, ns);
    lua_setfield(L, LUA_REGISTRYINDEX, "mpengine.revsnap");
    rev_build(L, loaded);
    lua_pushvalue(L, -1);
    lua_setfield(L, LUA_REGISTRYINDEX, "mpengine.rev");
  }
  lua_replace(L, loaded);
  lua_settop(L, loaded);
}

/* Pushes "file:line: " of the script's call that is sending: the first Lua
 * frame outside mpengine's own Lua parts (the Pool), or "". */
static void push_where(lua_State *L) {
  lua_Debug ar;
  for (int level = 1; lua_getstack(L, level, &ar); level++) {
    lua_getinfo(L, "Sl", &ar);
    if (ar.currentline > 0 && strncmp(ar.source, "=mpengine.", 10) != 0) {
      lua_pushfstring(L, "%s:%d: ", ar.short_src, ar.currentline);
      return;
    }
  }
  lua_pushliteral(L, "");
}

static _Noreturn void raise_failure(enc *e, const char *root) {
  lua_State *L = e->L;
  luaL_checkstack(L, 4, "cannot send value");
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  push_where(L);
  luaL_addvalue(&b);
  luaL_addstring(&b, "cannot send value at ");
  luaL_addstring(&b, root);
  for (int i = e->nseg - 1; i >= 0; i--) luaL_addstring(&b, e->seg[i]);
  luaL_addstring(&b, ": ");
  luaL_addstring(&b, e->why);
  luaL_pushresult(&b);
  lua_error(L);
  abort(); /* not reached */
}

void mpel_seal_header(const void *body, size_t n, unsigned char out[MPEL_SEAL_LEN]) {
  uint64_t tag = mpe_mac(body, n);
  out[0] = 0xd7; /* fixext8 */
  out[1] = EXT_SEAL;
  for (int i = 0; i < 8; i++) out[2 + i] = (unsigned char)(tag >> (56 - 8 * i));
}

/* Seals w->buf[start..]: the seal goes first, the body moves after it. */
static void seal(enc *e, size_t start) {
  mpel_wire *w = e->w;
  need(e, MPEL_SEAL_LEN);
  memmove(w->buf + start + MPEL_SEAL_LEN, w->buf + start, w->len - start);
  w->len += MPEL_SEAL_LEN;
  mpel_seal_header(w->buf + start + MPEL_SEAL_LEN, w->len - start - MPEL_SEAL_LEN,
                   (unsigned char *)w->buf + start);
}

static void encode(lua_State *L, int idx, const char *root, mpel_wire *w, int plain_root) {
  idx = lua_absindex(L, idx);
  int t = lua_type(L, idx);
  if (t != LUA_TTABLE && t != LUA_TFUNCTION && t != LUA_TUSERDATA) {
    enc e; /* scalars need only these fields: no need to clear the rest */
    e.L = L;
    e.w = w;
    e.nseg = 0;
    if (enc_value(&e, idx) != 0) raise_failure(&e, root);
    return;
  }
  int top = lua_gettop(L);
  luaL_checkstack(L, 20, "cannot send value");
  enc e;
  memset(&e, 0, sizeof e);
  e.L = L;
  e.w = w;
  lua_pushnil(L);
  e.seen = lua_gettop(L);
  lua_pushnil(L);
  e.first = lua_gettop(L);
  lua_pushnil(L);
  e.rev = lua_gettop(L);
  e.plain = plain_root && t == LUA_TTABLE ? idx : 0;
  lua_pushnil(L);
  e.upids = lua_gettop(L);
  lua_pushnil(L); /* made at the first engine object */
  e.objs = lua_gettop(L);
  size_t start = w->len;
  size_t ends0 = w->nends;
  if (enc_value(&e, idx) != 0) {
    w->len = start;
    w->nends = ends0;
    raise_failure(&e, root);
  }
  if (e.ext && !w->check) seal(&e, start);
  if (w->transfer && e.nobjs) {
    for (int i = 1; i < e.nobjs; i += 2) {
      lua_rawgeti(L, e.objs, i);
      lua_rawgeti(L, e.objs, i + 1);
      const mpel_class *cls = lua_touserdata(L, -1);
      cls->retain(lua_touserdata(L, -2));
      lua_pop(L, 2);
    }
    w->inflight = 1; /* mpengine.inflight lists them, for mpel_wire_unsend */
  }
  lua_settop(L, top);
}

void mpel_encode(lua_State *L, int idx, const char *root, mpel_wire *w) { encode(L, idx, root, w, 0); }

void mpel_encode_args(lua_State *L, int idx, const char *root, mpel_wire *w) { encode(L, idx, root, w, 1); }

void mpel_wire_unsend(lua_State *L, mpel_wire *w) {
  if (!w->inflight) return;
  w->inflight = 0;
  luaL_checkstack(L, 3, "cannot send value");
  if (lua_getfield(L, LUA_REGISTRYINDEX, "mpengine.inflight") == LUA_TTABLE) {
    /* the message's values are still on the sender's stack: none was collected */
    lua_Integer n = (lua_rawgeti(L, -1, 0), lua_tointeger(L, -1));
    lua_pop(L, 1);
    for (lua_Integer i = 1; i < n; i += 2) {
      lua_rawgeti(L, -1, i);
      lua_rawgeti(L, -2, i + 1);
      const mpel_class *cls = lua_touserdata(L, -1);
      cls->release(lua_touserdata(L, -2), 0);
      lua_pop(L, 2);
    }
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
}

size_t mpel_encode_scalar(lua_State *L, int idx, unsigned char out[9]) {
  uint64_t u;
  int n;
  switch (lua_type(L, idx)) {
  case LUA_TNIL: out[0] = 0xc0; return 1;
  case LUA_TBOOLEAN: out[0] = lua_toboolean(L, idx) ? 0xc3 : 0xc2; return 1;
  case LUA_TNUMBER: break;
  default: return 0;
  }
  int isnum;
  lua_Integer i = lua_tointegerx(L, idx, &isnum);
  if (isnum && lua_isinteger(L, idx)) { /* as put_int */
    if (i >= 0 && i < 128) {
      out[0] = (unsigned char)i;
      return 1;
    }
    if (i < 0 && i >= -32) {
      out[0] = (unsigned char)(0xe0 | (i + 32));
      return 1;
    }
    u = (uint64_t)i;
    if (i >= 0) {
      n = i < 256 ? 1 : i < 65536 ? 2 : i <= 0xffffffffLL ? 4 : 8;
      out[0] = n == 1 ? 0xcc : n == 2 ? 0xcd : n == 4 ? 0xce : 0xcf;
    } else {
      n = i >= -128 ? 1 : i >= -32768 ? 2 : i >= INT32_MIN ? 4 : 8;
      out[0] = n == 1 ? 0xd0 : n == 2 ? 0xd1 : n == 4 ? 0xd2 : 0xd3;
    }
  } else { /* as put_float */
    double d = (double)lua_tonumber(L, idx);
    memcpy(&u, &d, 8);
    out[0] = 0xcb;
    n = 8;
  }
  for (int k = 0; k < n; k++) out[1 + k] = (unsigned char)(u >> (8 * (n - 1 - k)));
  return (size_t)n + 1;
}
