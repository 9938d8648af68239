/* version.c - the library's version, from the CMake project version. */
#include "internal.h"

#ifndef MPE_VERSION_STRING
#error "MPE_VERSION_STRING comes from CMakeLists.txt"
#endif

const char *mpe_version(void) { return MPE_VERSION_STRING; }
