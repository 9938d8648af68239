/* test_seal.c - even a message sealed by this run (as if the run had made
 * it) never sets the metatable of a table the decode did not make: not a
 * module's (_G), not one met before in the message. Such messages are made
 * here by hand and sealed with the run's key, which Lua cannot do. */
#include <lauxlib.h>
#include <lualib.h>
#include <string.h>

#include "../bindings/codec.h"
#include "check.h"
#include "mpengine_lua.h"

/* Decodes body sealed; 1 if it decoded, else 0 with the error at the top. */
static int decode_sealed(lua_State *L, const char *body, size_t n) {
  char buf[256];
  CHECK(n + MPEL_SEAL_LEN <= sizeof buf);
  mpel_seal_header(body, n, (unsigned char *)buf);
  memcpy(buf + MPEL_SEAL_LEN, body, n);
  lua_getglobal(L, "decode");
  lua_pushlstring(L, buf, n + MPEL_SEAL_LEN);
  return lua_pcall(L, 1, 1, 0) == LUA_OK;
}

int main(void) {
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  mpengine_lua_open(L);
  CHECK(luaL_dostring(L, "decode = require('mpengine').decode") == LUA_OK);

  /* MTTABLE {MODULE "_G", {__newindex = {}}} */
  static const char on_module[] = "\xc7\x12\x05"
                                  "\xc7\x02\x02_G"
                                  "\x81\xaa__newindex\x80";
  CHECK(!decode_sealed(L, on_module, sizeof on_module - 1));
  CHECK(strstr(lua_tostring(L, -1), "metatable on a table not made here") != NULL);
  lua_pop(L, 1);
  CHECK(luaL_dostring(L, "return getmetatable(_G) == nil") == LUA_OK && lua_toboolean(L, -1));
  lua_pop(L, 1);

  /* [{}, MTTABLE {REF 2, {}}]: the table met before keeps no metatable */
  static const char on_ref[] = "\x92\x80"
                               "\xc7\x07\x05"
                               "\xd6\x01\x00\x00\x00\x02"
                               "\x80";
  CHECK(!decode_sealed(L, on_ref, sizeof on_ref - 1));
  CHECK(strstr(lua_tostring(L, -1), "metatable on a table not made here") != NULL);
  lua_pop(L, 1);

  /* the same shapes on fresh tables decode, sealed: MTTABLE {{1}, {}} */
  static const char fresh[] = "\xc7\x03\x05\x91\x01\x80";
  CHECK(decode_sealed(L, fresh, sizeof fresh - 1));
  CHECK(lua_istable(L, -1) && lua_getmetatable(L, -1));
  lua_pop(L, 2);
  /* and unsealed, the same bytes are refused */
  lua_getglobal(L, "decode");
  lua_pushlstring(L, fresh, sizeof fresh - 1);
  CHECK(lua_pcall(L, 1, 1, 0) != LUA_OK);
  CHECK(strstr(lua_tostring(L, -1), "carries a metatable but was not encoded by this run") != NULL);
  lua_pop(L, 1);
  lua_close(L);
  puts("ok test_seal");
  return 0;
}
