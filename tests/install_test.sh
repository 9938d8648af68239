#!/bin/sh
# Installs the build into a temporary prefix and uses it as a user would,
# with the README's commands as written (no extra flags, no LD_LIBRARY_PATH):
# the CLI, the Lua module from plain lua5.4, the embedding examples built
# with find_package(mpengine) and with pkg-config, a user's busted specs run
# from a folder outside the repository, and, when luarocks is there, a rock.
# Usage: install_test.sh BUILD_DIR SOURCE_DIR
set -eu
build=$1
src=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
prefix=$tmp/prefix
cmake --install "$build" --prefix "$prefix" >/dev/null
unset LUA_PATH LUA_CPATH LUA_PATH_5_4 LUA_CPATH_5_4 LD_LIBRARY_PATH MPENGINE_CLI

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

echo "== pkg-config, as the README says"
export PKG_CONFIG_PATH="$prefix/lib/pkgconfig"
pkg-config --modversion mpengine
cc -o "$tmp/embed_c_pc" "$src/tests/embed_c.c" $(pkg-config --cflags --libs mpengine)
"$tmp/embed_c_pc"
cc -o "$tmp/embed_lua_pc" "$src/tests/embed_lua.c" $(pkg-config --cflags --libs mpengine-lua)
"$tmp/embed_lua_pc" "$src/scripts"
# libmpengine_lua.a holds the module and the engine: no libmpengine.so needed
if ldd "$tmp/embed_lua_pc" | grep -q libmpengine; then
  echo "embed_lua built with mpengine-lua.pc loads libmpengine.so"; exit 1
fi

echo "== a user's busted specs, from a folder outside the repository"
cp -r "$src/examples/busted" "$tmp/myjobs"
(cd "$tmp/myjobs" && PATH="$prefix/bin:$PATH" mpengine run "$(command -v busted)" spec/)
# a failing spec fails the run
cat >"$tmp/myjobs/spec/fails_spec.lua" <<'EOF'
it("fails", function() assert.are.equal(1, 2) end)
EOF
if (cd "$tmp/myjobs" && PATH="$prefix/bin:$PATH" mpengine run "$(command -v busted)" spec/ >/dev/null 2>&1); then
  echo "a failing spec did not fail the run"; exit 1
fi

if command -v luarocks >/dev/null 2>&1; then
  echo "== luarocks make --lua-version=5.4 into a tree"
  rock=$tmp/rock
  mkdir "$rock"
  tar -C "$src" --exclude='./build*' --exclude=./.git -cf - . | tar -C "$rock" -xf -
  (cd "$rock" && CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) luarocks make --lua-version=5.4 --tree "$tmp/tree" \
    >"$tmp/rock.log" 2>&1) || {
    cat "$tmp/rock.log"; exit 1
  }
  test "$(LUA_CPATH="$tmp/tree/lib/lua/5.4/?.so" lua5.4 -e 'io.write(require("mpengine")._VERSION)')" = \
    "$("$prefix/bin/mpengine" --version | cut -d' ' -f2)"
  "$tmp/tree/bin/mpengine" --version
  # the module and the command, nothing that points nowhere
  extra=$(cd "$tmp/tree" && find lib/lua bin -type f | grep -v -e '^lib/lua/5.4/mpengine.so$' -e '^bin/mpengine$' || true)
  if [ -n "$extra" ]; then echo "the rock installed more than the module and the command:"; echo "$extra"; exit 1; fi
fi
echo "install test: ok"
