/* embed.c - running job scripts: the one place that knows the script
 * convention, used by the mpengine command (host.c) and by C hosts through
 * mpengine_lua.h.
 *
 * The convention: a job script may return a table with a `main` function;
 * running the script then calls main(...) with its arguments (a plain
 * require or dofile, as busted does, does not), and main's results are the
 * script's results. */
#include <stdlib.h>
#include <string.h>

#include "mpe_lua.h"
#include "mpengine_lua.h"

void mpengine_lua_open(lua_State *L) {
  mpel_resident = 1; /* linked into the program: its code is never unloaded */
  luaL_requiref(L, "mpengine", luaopen_mpengine, 0);
  lua_pop(L, 1);
}

static int msghandler(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (!msg) {
    if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING) return 1;
    msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
  }
  if (mpel_signal) { /* an interruption needs no traceback */
    lua_pushstring(L, msg);
    return 1;
  }
  luaL_traceback(L, L, msg, 1);
  return 1;
}

/* Calls the function below its nargs arguments under msghandler. */
static int docall(lua_State *L, int nargs, int nres) {
  int base = lua_gettop(L) - nargs;
  lua_pushcfunction(L, msghandler);
  lua_insert(L, base);
  int status = lua_pcall(L, nargs, nres, base);
  lua_remove(L, base);
  return status;
}

static void set_args(lua_State *L, const char *script, int argc, const char *const *argv) {
  lua_createtable(L, argc > 1 ? argc - 1 : 0, 1);
  lua_pushstring(L, argc > 0 && argv[0] ? argv[0] : script);
  lua_rawseti(L, -2, 0);
  for (int i = 1; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i);
  }
  lua_setglobal(L, "arg");
}

static void add_script_folder(lua_State *L, const char *script) {
  /* As Python puts a script's folder on sys.path. */
  const char *slash = strrchr(script, '/');
  lua_getglobal(L, "package");
  if (!lua_istable(L, -1)) {
    lua_pop(L, 1);
    return;
  }
  if (slash) lua_pushlstring(L, script, (size_t)(slash - script));
  else lua_pushliteral(L, ".");
  const char *dir = lua_tostring(L, -1);
  lua_getfield(L, -2, "path");
  lua_pushfstring(L, "%s/?.lua;%s/?/init.lua;%s", dir, dir, lua_tostring(L, -1));
  lua_setfield(L, -4, "path");
  lua_pop(L, 3);
}

static int fail(lua_State *L, int top, char **err) {
  if (err) {
    size_t n;
    const char *msg = lua_tolstring(L, -1, &n);
    if (!msg) msg = "(error object is not a string)", n = strlen(msg);
    *err = malloc(n + 1);
    if (*err) memcpy(*err, msg, n + 1);
  }
  lua_settop(L, top);
  return -1;
}

/* Runs the loaded chunk at the top with the convention; see the header. */
static int run_chunk(lua_State *L, int top, int argc, const char *const *argv, char **err) {
  int nargs = argc > 1 ? argc - 1 : 0;
  luaL_checkstack(L, nargs + 4, "too many arguments");
  for (int i = 1; i < argc; i++) lua_pushstring(L, argv[i]);
  if (docall(L, nargs, LUA_MULTRET) != LUA_OK) return fail(L, top, err);
  int ran_main = lua_gettop(L) > top && lua_istable(L, top + 1) &&
                 lua_getfield(L, top + 1, "main") == LUA_TFUNCTION;
  lua_pushboolean(L, ran_main); /* for the host: main's results, or the chunk's */
  lua_setfield(L, LUA_REGISTRYINDEX, "mpengine.ran_main");
  if (ran_main) {
    lua_replace(L, top + 1); /* main in place of the module, then its arguments */
    lua_settop(L, top + 1);
    for (int i = 1; i < argc; i++) lua_pushstring(L, argv[i]);
    if (docall(L, nargs, LUA_MULTRET) != LUA_OK) return fail(L, top, err);
  } else if (lua_gettop(L) > top && lua_istable(L, top + 1)) {
    lua_pop(L, 1); /* the nil from getfield */
  }
  return lua_gettop(L) - top;
}

int mpengine_lua_run_file(lua_State *L, const char *path, int argc, const char *const *argv, char **err) {
  int top = lua_gettop(L);
  set_args(L, path, argc, argv);
  add_script_folder(L, path);
  lua_pushstring(L, path); /* a broker run's hosts load it (pool.lua) */
  lua_setfield(L, LUA_REGISTRYINDEX, "mpengine.script");
  if (luaL_loadfile(L, path) != LUA_OK) return fail(L, top, err);
  return run_chunk(L, top, argc, argv, err);
}

int mpengine_lua_run_string(lua_State *L, const char *code, const char *name, int argc,
                            const char *const *argv, char **err) {
  int top = lua_gettop(L);
  set_args(L, name, argc, argv);
  if (luaL_loadbufferx(L, code, strlen(code), name, "t") != LUA_OK) return fail(L, top, err);
  return run_chunk(L, top, argc, argv, err);
}
