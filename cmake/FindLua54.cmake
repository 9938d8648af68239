# Finds Lua 5.4 through CMake's usual search, with hints first:
#   -DLUA_INCDIR=...  the folder of lua.h (luarocks passes it), or $ENV{LUA_INCDIR}
#   -DLUA_LIBDIR=...  the folder of the Lua library, or $ENV{LUA_LIBDIR}
#   -DLUA_DIR=...     a prefix holding include/ and lib/, or $ENV{LUA_DIR}
# then CMAKE_PREFIX_PATH and the system's folders (include/lua5.4, include/lua54,
# include/lua-5.4 before include/).
# Sets LUA_INCLUDE_DIR (checked to be 5.4's; from CMake 3.25 on, another
# Lua's lua.h met first is passed over) and LUA_LIBRARY (may be
# LUA_LIBRARY-NOTFOUND: a Lua module needs only the headers).
function(mpe_is_lua54_header result candidate)
  if(IS_DIRECTORY ${candidate})
    set(candidate ${candidate}/lua.h)
  endif()
  file(STRINGS ${candidate} v REGEX "^#define[ \t]+LUA_VERSION_NUM[ \t]+504")
  if(NOT v)
    set(${result} FALSE PARENT_SCOPE)
  endif()
endfunction()
set(mpe_lua_find_args lua.h
  HINTS ${LUA_INCDIR} $ENV{LUA_INCDIR} ${LUA_DIR} $ENV{LUA_DIR}
  PATH_SUFFIXES include/lua5.4 include/lua54 include/lua-5.4 include lua5.4 lua54 lua-5.4
  DOC "Folder of Lua 5.4's lua.h")
if(NOT CMAKE_VERSION VERSION_LESS 3.25)
  list(APPEND mpe_lua_find_args VALIDATOR mpe_is_lua54_header) # pass over another Lua's lua.h
endif()
find_path(LUA_INCLUDE_DIR ${mpe_lua_find_args})
if(NOT LUA_INCLUDE_DIR)
  message(FATAL_ERROR "Lua 5.4's lua.h not found: install liblua5.4-dev (Debian), "
    "or give its folder with -DLUA_INCDIR=... or a prefix with -DLUA_DIR=...")
endif()
file(STRINGS ${LUA_INCLUDE_DIR}/lua.h lua_version_num REGEX "^#define[ \t]+LUA_VERSION_NUM[ \t]+[0-9]+")
string(REGEX REPLACE ".*[ \t]([0-9]+)$" "\\1" lua_version_num "${lua_version_num}")
if(NOT lua_version_num STREQUAL "504")
  message(FATAL_ERROR "${LUA_INCLUDE_DIR}/lua.h is Lua ${lua_version_num}, not 5.4 (504): "
    "give Lua 5.4's folder with -DLUA_INCDIR=... (and clear LUA_INCLUDE_DIR from the cache)")
endif()
find_library(LUA_LIBRARY NAMES lua5.4 lua54 lua-5.4 lua
  HINTS ${LUA_LIBDIR} $ENV{LUA_LIBDIR} ${LUA_DIR} $ENV{LUA_DIR}
  PATH_SUFFIXES lib lib64
  DOC "Lua 5.4's library (for the mpengine command and C hosts)")
