/* embed_states.c - a C program with two lua_States at once, each opening
 * mpengine, then a third opened after the first is closed: each state's
 * Processes are its own (active_children), and each state can start and
 * join children whatever the others did. */
#include <lauxlib.h>
#include <lualib.h>
#include <stdio.h>

#include "check.h" /* CHECK: print where and why, then exit 1 */
#include "mpengine_lua.h"

static lua_State *open_state(void) {
  lua_State *L = luaL_newstate();
  CHECK(L);
  luaL_openlibs(L);
  mpengine_lua_open(L);
  /* start(k): k more children that wait for a word on their pipe;
   * active(): how many children this state has running; stop(): release
   * and join them all, true when every one exited 0. */
  const char *lib =
      "local mp = require 'mpengine'\n"
      "kids = {}\n"
      "function start(k)\n"
      "  for _ = 1, k do\n"
      "    local r, w = mp.Pipe(false)\n"
      "    local p = mp.Process{args = {r}, target = function(c) c:recv(30) end}\n"
      "    p:start()\n"
      "    r:close()\n"
      "    kids[#kids + 1] = {p = p, w = w}\n"
      "  end\n"
      "end\n"
      "function active() return #mp.active_children() end\n"
      "function stop()\n"
      "  local ok = true\n"
      "  for _, k in ipairs(kids) do k.w:send(true) end\n"
      "  for _, k in ipairs(kids) do ok = ok and k.p:join(30) and k.p.exitcode == 0 end\n"
      "  kids = {}\n"
      "  return ok and #mp.active_children() == 0\n"
      "end\n";
  if (luaL_dostring(L, lib) != LUA_OK) fprintf(stderr, "%s\n", lua_tostring(L, -1));
  CHECK(lua_gettop(L) == 0);
  return L;
}

static lua_Integer call_int(lua_State *L, const char *fn, int arg) {
  lua_getglobal(L, fn);
  int nargs = 0;
  if (arg >= 0) {
    lua_pushinteger(L, arg);
    nargs = 1;
  }
  if (lua_pcall(L, nargs, 1, 0) != LUA_OK) {
    fprintf(stderr, "%s: %s\n", fn, lua_tostring(L, -1));
    CHECK(0);
  }
  lua_Integer r = lua_isboolean(L, -1) ? lua_toboolean(L, -1) : lua_tointeger(L, -1);
  lua_pop(L, 1);
  return r;
}

int main(void) {
  lua_State *a = open_state(), *b = open_state();
  call_int(a, "start", 2);
  CHECK(call_int(a, "active", -1) == 2);
  call_int(b, "start", 1);
  CHECK(call_int(b, "active", -1) == 1);
  CHECK(call_int(a, "active", -1) == 2);
  call_int(a, "start", 1);
  CHECK(call_int(a, "active", -1) == 3);
  CHECK(call_int(b, "active", -1) == 1);
  CHECK(call_int(b, "stop", -1) == 1);
  CHECK(call_int(a, "active", -1) == 3);
  CHECK(call_int(a, "stop", -1) == 1);
  lua_close(a);

  /* a state opened after another was closed */
  lua_State *c = open_state();
  call_int(c, "start", 2);
  call_int(b, "start", 1);
  CHECK(call_int(c, "active", -1) == 2);
  CHECK(call_int(b, "active", -1) == 1);
  CHECK(call_int(c, "stop", -1) == 1);
  CHECK(call_int(b, "stop", -1) == 1);
  lua_close(c);
  lua_close(b);
  printf("embed_states: all exact\n");
  return 0;
}
