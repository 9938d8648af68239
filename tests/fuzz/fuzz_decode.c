/* fuzz_decode.c - feeds arbitrary bytes to the codec's decoder.
 *
 * Built two ways: with clang -fsanitize=fuzzer (cmake -DMPE_FUZZ=ON) it is a
 * libFuzzer target; built normally (fuzz_replay.c supplies main) it replays
 * the corpus and every crasher found so far as a regression test. The
 * decoder must raise a Lua error or return a value: never crash, leak or
 * hang.
 *
 * Each input is decoded twice: as it is (bytes from anywhere: plain data or
 * a refusal), and sealed with this run's key, as if the run had made it, so
 * the paths of functions, modules, module fields, metatables and engine
 * objects are fuzzed too. Sealed, the decoder trusts the message to be the
 * run's own, so two things stay out of reach: Lua bytecode (the Lua VM does
 * not verify it: an input holding a bytecode signature is not sealed), and
 * modules whose functions could act when a decoded finalizer calls them
 * (only string, table, math and utf8 are loaded, nothing can be required). */
#include <lauxlib.h>
#include <lualib.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../bindings/codec.h"
#include "mpengine_lua.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static lua_State *L;
static unsigned char *sealed;
static size_t sealed_cap;

static int decode(lua_State *S) {
  size_t n;
  const char *s = lua_tolstring(S, 1, &n);
  lua_getglobal(S, "mpengine_decode");
  lua_pushlstring(S, s, n);
  lua_call(S, 1, 1);
  return 1;
}

static void try_decode(const void *p, size_t n) {
  lua_pushcfunction(L, decode);
  lua_pushlstring(L, (const char *)p, n);
  lua_pcall(L, 1, 0, 0); /* an error is a fine answer; a crash is not */
  lua_settop(L, 0);
}

static int has_bytecode(const uint8_t *data, size_t size) {
  for (size_t i = 0; i + 4 <= size; i++)
    if (memcmp(data + i, LUA_SIGNATURE, 4) == 0) return 1;
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!L) {
    L = luaL_newstate();
    luaL_openlibs(L);
    mpengine_lua_open(L);
    /* no files are loaded while fuzzing: a module name in the input is
     * looked up in package.loaded and otherwise fails */
    luaL_dostring(L, "package.path = '' package.cpath = '' "
                     "mpengine_decode = require('mpengine').decode "
                     "local keep = {string = true, table = true, math = true, utf8 = true} "
                     "for name in pairs(package.loaded) do "
                     "  if not keep[name] then package.loaded[name] = nil end "
                     "end");
  }
  try_decode(data, size);
  if (!has_bytecode(data, size)) {
    if (sealed_cap < size + MPEL_SEAL_LEN) {
      free(sealed);
      sealed_cap = size + MPEL_SEAL_LEN;
      sealed = malloc(sealed_cap);
      if (!sealed) abort();
    }
    memcpy(sealed + MPEL_SEAL_LEN, data, size);
    mpel_seal_header(data, size, sealed);
    try_decode(sealed, size + MPEL_SEAL_LEN);
  }
  static unsigned calls;
  if (++calls % 1000 == 0) lua_gc(L, LUA_GCCOLLECT);
  return 0;
}
