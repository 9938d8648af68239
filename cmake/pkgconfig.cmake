# Run by `cmake --install` (CMakeLists.txt passes the variables): writes the
# pkg-config files for the prefix being installed to, so that the documented
#   cc app.c $(pkg-config --cflags --libs mpengine)
# builds a program that starts. A prefix whose library folder the dynamic
# loader does not search by default (/usr/local/lib on most systems until
# ldconfig runs, /opt/..., a home folder) gets -Wl,-rpath in Libs.
#   MPE_SRC MPE_BIN CMAKE_INSTALL_LIBDIR CMAKE_INSTALL_INCLUDEDIR PROJECT_VERSION
#   MPE_SYSTEM_LIBDIRS  the loader's and linker's default folders
#   MPE_LUA_INCLUDE_DIR MPE_LUA_LIBRARY
#   MPE_HAVE_BROKER     the engine has the broker (links hiredis)
set(MPE_PC_PREFIX "${CMAKE_INSTALL_PREFIX}")
get_filename_component(libdir "${CMAKE_INSTALL_PREFIX}/${CMAKE_INSTALL_LIBDIR}" ABSOLUTE)
set(MPE_PC_RPATH "")
list(FIND MPE_SYSTEM_LIBDIRS "${libdir}" at)
if(at EQUAL -1)
  set(MPE_PC_RPATH " -Wl,-rpath,\${libdir}")
endif()
# Lua: the library found at configure time, as -L/-l (no -L for a default folder)
get_filename_component(lua_dir "${MPE_LUA_LIBRARY}" DIRECTORY)
get_filename_component(lua_name "${MPE_LUA_LIBRARY}" NAME)
string(REGEX REPLACE "^lib(.*)\\.(so|a|dylib)(\\..*)?$" "\\1" lua_name "${lua_name}")
set(MPE_PC_LUA_LIBS "-l${lua_name}")
list(FIND MPE_SYSTEM_LIBDIRS "${lua_dir}" at)
if(at EQUAL -1)
  set(MPE_PC_LUA_LIBS "-L${lua_dir} -Wl,-rpath,${lua_dir} ${MPE_PC_LUA_LIBS}")
endif()
set(MPE_PC_LUA_CFLAGS "")
if(NOT MPE_LUA_INCLUDE_DIR STREQUAL "/usr/include")
  set(MPE_PC_LUA_CFLAGS " -I${MPE_LUA_INCLUDE_DIR}")
endif()
set(MPE_PC_BROKER_LIBS "")
if(MPE_HAVE_BROKER)
  set(MPE_PC_BROKER_LIBS " -lhiredis")
endif()
configure_file(${MPE_SRC}/cmake/mpengine.pc.in ${MPE_BIN}/pkgconfig/mpengine.pc @ONLY)
configure_file(${MPE_SRC}/cmake/mpengine-lua.pc.in ${MPE_BIN}/pkgconfig/mpengine-lua.pc @ONLY)
