/*
 * mpengine_lua.h - embedding mpengine's Lua side in a C host.
 *
 * A host that has its own lua_State (Lua 5.4) opens the module into it and
 * runs job scripts the way `mpengine run` does. Link with libmpengine_lua
 * (which holds the module and the engine) and Lua 5.4. The engine's own C
 * API is in mpengine.h.
 */
#ifndef MPENGINE_LUA_H
#define MPENGINE_LUA_H

#include <lua.h>

#include "mpengine.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The module's opener, for package.preload or luaL_requiref. Maps the
 * engine's arena on first use: call it before the state forks anything. */
MPE_API int luaopen_mpengine(lua_State *L);

/* Puts the module in package.loaded["mpengine"], so `require "mpengine"`
 * finds it. The "package" library must be open already (luaL_openlibs).
 * Leaves the stack as it was. */
MPE_API void mpengine_lua_open(lua_State *L);

/* Runs a job script file as `mpengine run` does: `arg` and `...` hold argv
 * (argv[0] is the script), the script's folder goes on package.path, and a
 * script that returns a table with `main` has main(argv[1..]) called. On
 * success returns how many results (main's, or the chunk's) it left on the
 * stack; what they mean (an exit status) is the host's to decide. On failure returns -1 and sets *err (if err is not NULL) to a
 * malloc'ed message with file:line and a traceback, which the caller frees. */
MPE_API int mpengine_lua_run_file(lua_State *L, const char *path, int argc, const char *const *argv,
                                  char **err);

/* The same for a script held in a string; name is its chunk name (e.g.
 * "=job"), and arg[0] is argv[0] (name when argc is 0). No folder goes on
 * package.path. */
MPE_API int mpengine_lua_run_string(lua_State *L, const char *code, const char *name, int argc,
                                    const char *const *argv, char **err);

#ifdef __cplusplus
}
#endif
#endif
