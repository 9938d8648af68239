-- mpengine as a rock: the Lua module (into the tree's lib/lua/5.4, where
-- Lua 5.4 finds it) and the `mpengine` command (into the tree's bin).
-- The C engine's libraries and headers are not part of a rock: C hosts
-- install with CMake (see the README's Install section).
--
-- From a clone:  luarocks make --lua-version=5.4 [--tree DIR | --local]
-- (without --lua-version=5.4, luarocks uses its default Lua, often 5.1).
--
-- The project has no public home yet, so the source is the release archive
-- made from a clone, beside this file:
--   git archive --prefix=mpengine-0.1.0/ -o mpengine-0.1.0.tar.gz v0.1.0
-- (HEAD instead of v0.1.0 until the release is tagged)
--   luarocks build --lua-version=5.4 mpengine-0.1.0-1.rockspec
-- (`luarocks make` builds the clone it runs in and fetches nothing).
package = "mpengine"
version = "0.1.0-1"
source = {
   url = "mpengine-0.1.0.tar.gz",
   dir = "mpengine-0.1.0",
}
description = {
   summary = "Run Lua job pipelines on many processes",
   detailed = [[
      A C engine with a Lua 5.4 module: processes, pipes, queues, locks,
      shared values and a process pool, with the names of Python's
      multiprocessing. Closures travel to workers; a crashed worker is
      reported, never a hang; children never outlive the run.
   ]],
   license = "MIT",
}
dependencies = {
   "lua >= 5.4, < 5.5",
}
build = {
   type = "cmake",
   variables = {
      CMAKE_INSTALL_PREFIX = "$(PREFIX)",
      CMAKE_BUILD_TYPE = "Release",
      MPE_ROCK = "ON",
      MPE_LUA_CMOD_DIR = "$(LIBDIR)",
      CMAKE_INSTALL_BINDIR = "$(BINDIR)",
      LUA_INCDIR = "$(LUA_INCDIR)",
      LUA_DIR = "$(LUA_DIR)",
      MPE_BUILD_TESTS = "OFF",
   },
}
