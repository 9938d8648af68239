# Writes a C file holding Lua sources as byte arrays, at build time:
#   cmake -DOUT=file.c -DDIR=folder -DNAMES="a;b" -P embed_lua.cmake
# gives, for each name, mpel_<name>_lua[] (NUL-terminated) and
# mpel_<name>_lua_len, from DIR/<name>.lua.
set(text "/* generated from the Lua sources in bindings/ by cmake/embed_lua.cmake */\n#include <stddef.h>\n")
foreach(name ${NAMES})
  file(READ ${DIR}/${name}.lua hex HEX)
  string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
  string(APPEND text
    "extern const unsigned char mpel_${name}_lua[];\nextern const size_t mpel_${name}_lua_len;\n"
    "const unsigned char mpel_${name}_lua[] = {${bytes} 0};\n"
    "const size_t mpel_${name}_lua_len = sizeof mpel_${name}_lua - 1;\n")
endforeach()
file(WRITE ${OUT} "${text}")
