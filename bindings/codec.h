/* codec.h - what the encoder (codec.c) and the decoder (decode.c) share. */
#ifndef MPE_CODEC_H
#define MPE_CODEC_H
#include "mpe_lua.h"

/* The extension types (codec.c describes them); never renumber. */
enum { EXT_REF = 1, EXT_MODULE, EXT_MODFIELD, EXT_FUNC, EXT_MTTABLE, EXT_OBJECT, EXT_UPJOIN, EXT_SEAL };

/* A sealed message starts with fixext8 SEAL: 0xd7, EXT_SEAL, the 64-bit tag
 * (big-endian) of the bytes after it. */
#define MPEL_SEAL_LEN 10
/* Writes the seal of body[n] (this run's key) to out. */
void mpel_seal_header(const void *body, size_t n, unsigned char out[MPEL_SEAL_LEN]);

/* Nesting limit of the encoder; the decoder allows twice as much (a table
 * with a metatable, a function with upvalues, take two levels). */
#define MAX_DEPTH 120

#endif
