#!/bin/sh
# Installs the build into a temporary prefix and uses it as a user would:
# the CLI, the Lua module from plain lua5.4, and the embedding examples
# built with find_package(mpengine) and with pkg-config.
# Usage: install_test.sh BUILD_DIR SOURCE_DIR
set -eu
build=$1
src=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
prefix=$tmp/prefix
cmake --install "$build" --prefix "$prefix" >/dev/null

echo "== the installed CLI and module"
"$prefix/bin/mpengine" --version
test "$("$prefix/bin/mpengine" --version | cut -d' ' -f2)" = \
  "$(LUA_CPATH="$prefix/lib/lua/5.4/?.so" lua5.4 -e 'io.write(require("mpengine")._VERSION)')"
test -f "$prefix/include/mpengine.h" && test -f "$prefix/include/mpengine_lua.h"
test -f "$prefix/share/mpengine/scripts/wordcount.lua"

echo "== find_package(mpengine)"
cmake -S "$src/tests/embed" -B "$tmp/consumer" -DCMAKE_PREFIX_PATH="$prefix" >/dev/null
cmake --build "$tmp/consumer" >/dev/null
"$tmp/consumer/embed_c"
"$tmp/consumer/embed_lua" "$src/scripts"

echo "== pkg-config"
export PKG_CONFIG_PATH="$prefix/lib/pkgconfig"
pkg-config --modversion mpengine
cc -o "$tmp/embed_c_pc" "$src/tests/embed_c.c" $(pkg-config --cflags mpengine) \
  $(pkg-config --libs mpengine) -Wl,-rpath,"$prefix/lib"
"$tmp/embed_c_pc"
cc -o "$tmp/embed_lua_pc" "$src/tests/embed_lua.c" $(pkg-config --cflags mpengine-lua) \
  $(pkg-config --libs mpengine-lua) -Wl,-rpath,"$prefix/lib"
"$tmp/embed_lua_pc" "$src/scripts"
echo "install test: ok"
