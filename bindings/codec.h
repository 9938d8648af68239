/* codec.h - what the encoder (codec.c) and the decoder (decode.c) share. */
#ifndef MPE_CODEC_H
#define MPE_CODEC_H
#include "mpe_lua.h"

/* The extension types (codec.c describes them); never renumber. */
enum { EXT_REF = 1, EXT_MODULE, EXT_MODFIELD, EXT_FUNC, EXT_MTTABLE, EXT_OBJECT, EXT_UPJOIN };

/* Nesting limit of the encoder; the decoder allows twice as much (a table
 * with a metatable, a function with upvalues, take two levels). */
#define MAX_DEPTH 120

#endif
