/* mac.c - a keyed tag for bytes with the run's secret (SipHash-2-4).
 *
 * mpe_init draws a 128-bit key from the kernel (getrandom) and keeps it in
 * the arena header, so every process of the run shares it and nothing
 * outside the run knows it. The Lua codec seals every message that carries
 * code, modules, metatables or engine objects with a tag of all its bytes,
 * and decodes those only from a message whose tag matches: a forged or
 * damaged message cannot feed the Lua VM arbitrary bytecode (which it does
 * not verify) nor reach live state. Shared objects' checks (arena.c) are
 * keyed the same way. */
#include <errno.h>
#include <string.h>

#include "internal.h"

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))

static uint64_t le64(const unsigned char *p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
  return v;
}

#define SIPROUND                                                             \
  do {                                                                       \
    v0 += v1; v1 = ROTL(v1, 13); v1 ^= v0; v0 = ROTL(v0, 32);                \
    v2 += v3; v3 = ROTL(v3, 16); v3 ^= v2;                                   \
    v0 += v3; v3 = ROTL(v3, 21); v3 ^= v0;                                   \
    v2 += v1; v1 = ROTL(v1, 17); v1 ^= v2; v2 = ROTL(v2, 32);                \
  } while (0)

uint64_t mpe__siphash(const unsigned char key[16], const void *data, size_t len) {
  uint64_t k0 = le64(key), k1 = le64(key + 8);
  uint64_t v0 = k0 ^ 0x736f6d6570736575ULL, v1 = k1 ^ 0x646f72616e646f6dULL;
  uint64_t v2 = k0 ^ 0x6c7967656e657261ULL, v3 = k1 ^ 0x7465646279746573ULL;
  const unsigned char *p = data;
  size_t whole = len & ~(size_t)7;
  for (size_t i = 0; i < whole; i += 8) {
    uint64_t m = le64(p + i);
    v3 ^= m;
    SIPROUND;
    SIPROUND;
    v0 ^= m;
  }
  uint64_t b = (uint64_t)len << 56;
  for (size_t i = 0; i < (len & 7); i++) b |= (uint64_t)p[whole + i] << (8 * i);
  v3 ^= b;
  SIPROUND;
  SIPROUND;
  v0 ^= b;
  v2 ^= 0xff;
  SIPROUND;
  SIPROUND;
  SIPROUND;
  SIPROUND;
  return v0 ^ v1 ^ v2 ^ v3;
}

/* A broker host's worker seals with the key of the run it serves. */
static unsigned char seal_key[16];
static int seal_key_set;

uint64_t mpe_mac(const void *data, size_t len) {
  const unsigned char *key = seal_key_set ? seal_key : mpe__run_key();
  return key ? mpe__siphash(key, data, len) : 0;
}

int mpe_seal_key(unsigned char out[16]) {
  const unsigned char *key = seal_key_set ? seal_key : mpe__run_key();
  if (!key) return -EINVAL;
  memcpy(out, key, 16);
  return 0;
}

void mpe_seal_key_set(const unsigned char key[16]) {
  memcpy(seal_key, key, 16);
  seal_key_set = 1;
}
