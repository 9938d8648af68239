/* fuzz_decode.c - feeds arbitrary bytes to the codec's decoder.
 *
 * Built two ways: with clang -fsanitize=fuzzer (cmake -DMPE_FUZZ=ON) it is a
 * libFuzzer target; built normally (fuzz_replay.c supplies main) it replays
 * the corpus and every crasher found so far as a regression test. The
 * decoder must raise a Lua error or return a value: never crash, leak or
 * hang. */
#include <lauxlib.h>
#include <lualib.h>
#include <stddef.h>
#include <stdint.h>

#include "mpengine_lua.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static lua_State *L;

static int decode(lua_State *S) {
  size_t n;
  const char *s = lua_tolstring(S, 1, &n);
  lua_getglobal(S, "mpengine_decode");
  lua_pushlstring(S, s, n);
  lua_call(S, 1, 1);
  return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!L) {
    L = luaL_newstate();
    luaL_openlibs(L);
    mpengine_lua_open(L);
    /* no files are loaded while fuzzing: a module name in the input is
     * looked up in package.loaded and otherwise fails */
    luaL_dostring(L, "package.path = '' package.cpath = '' "
                     "mpengine_decode = require('mpengine').decode");
  }
  lua_pushcfunction(L, decode);
  lua_pushlstring(L, (const char *)data, size);
  lua_pcall(L, 1, 0, 0); /* an error is a fine answer; a crash is not */
  lua_settop(L, 0);
  static unsigned calls;
  if (++calls % 1000 == 0) lua_gc(L, LUA_GCCOLLECT);
  return 0;
}
