/* embed_lua.c - a C program with its own lua_State: opens mpengine, runs a
 * job script from scripts/ and a job given as a string, and reads the
 * results back from the stack. Usage: embed_lua SCRIPTS_DIR */
#define _POSIX_C_SOURCE 200809L /* mkstemp */
#include <lauxlib.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h" /* CHECK: print where and why, then exit 1 */
#include "mpengine_lua.h"


int main(int argc, char **argv) {
  CHECK(argc == 2);
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  mpengine_lua_open(L);

  /* 1. scripts/tickets.lua, as `mpengine run` would run it: main returns
   *    true when exactly 3 of 10 buyers got a ticket and the file is at 0. */
  char script[4096], db[] = "/tmp/mpengine-embed-XXXXXX";
  snprintf(script, sizeof script, "%s/tickets.lua", argv[1]);
  int fd = mkstemp(db);
  CHECK(fd >= 0);
  const char *args[] = {script, db};
  char *err = NULL;
  int n = mpengine_lua_run_file(L, script, 2, args, &err);
  if (n < 0) fprintf(stderr, "%s\n", err);
  CHECK(n == 1 && lua_isboolean(L, -1) && lua_toboolean(L, -1));
  lua_pop(L, 1);
  remove(db);

  /* 2. a job in a string: a Pool maps over its arguments; read the table. */
  const char *job =
      "local mp = require 'mpengine'\n"
      "local pool <close> = mp.Pool(2)\n"
      "local xs = {}\n"
      "for i, a in ipairs({...}) do xs[i] = tonumber(a) end\n"
      "return pool:map(function(x) return x * x end, xs)\n";
  const char *nums[] = {"job", "3", "4", "5"};
  n = mpengine_lua_run_string(L, job, "=job", 4, nums, &err);
  if (n < 0) fprintf(stderr, "%s\n", err);
  CHECK(n == 1 && lua_istable(L, -1));
  long long want[] = {9, 16, 25};
  for (int i = 0; i < 3; i++) {
    lua_rawgeti(L, -1, i + 1);
    CHECK(lua_tointeger(L, -1) == want[i]);
    lua_pop(L, 1);
  }
  lua_pop(L, 1);

  /* 3. an error comes back as a string with file:line and a traceback. */
  n = mpengine_lua_run_string(L, "local function f() error('boom') end\nf()", "=failing", 0, NULL, &err);
  CHECK(n == -1 && err && strstr(err, "failing:1: boom") && strstr(err, "stack traceback"));
  free(err);
  CHECK(lua_gettop(L) == 0);

  lua_close(L);
  printf("embed_lua: all exact\n");
  return 0;
}
