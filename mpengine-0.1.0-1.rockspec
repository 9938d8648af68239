-- luarocks make (from a clone) builds and installs mpengine with CMake:
-- the Lua module into the rock tree's lib/lua/5.4, the mpengine command,
-- the engine's C library and headers.
package = "mpengine"
version = "0.1.0-1"
source = {
   url = "git+https://example.invalid/mpengine.git",
   tag = "v0.1.0",
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
      MPE_LUA_CMOD_DIR = "$(LIBDIR)",
      MPE_BUILD_TESTS = "OFF",
   },
}
