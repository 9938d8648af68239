/* value.c - shared values and arrays of a C type, by Python typecode.
 *
 * Elements are naturally aligned in the arena, so every read and write of
 * one element is a single atomic access: no torn values, no lock needed for
 * them. The optional lock (a reference to an mpe_lock) is for compound
 * updates the caller makes; add() needs none: a compare-and-swap loop adds,
 * checks the typecode's range, and commits only a value that fits.
 *
 * Typecodes as Python's array module on 64-bit Linux: b B h H i I (8, 16,
 * 32 bits), l L q Q (64 bits), f (float), d (double), and c (a byte, as
 * ctypes' c_char; stored as B). Unsigned 64-bit values
 * are limited to 0 .. 2^63-1, what a Lua integer holds. */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>

#include "internal.h"

struct mpe_value {
  mpe__obj hdr;
  uint64_t lock; /* reference of the guarding mpe_lock, 0 for none */
  uint64_t count;
  char typecode;
  uint8_t size;
  uint8_t pad[6];
  _Alignas(8) unsigned char data[];
};

MPE__DEFINE_REFS(value, mpe_value, MPE__KIND_VALUE)

static int size_of(char t) {
  switch (t) {
  case 'b': case 'B': case 'c': return 1;
  case 'h': case 'H': return 2;
  case 'i': case 'I': case 'f': return 4;
  case 'l': case 'L': case 'q': case 'Q': case 'd': return 8;
  default: return 0;
  }
}

int mpe_typecode_is_float(char t) { return t == 'f' || t == 'd'; }

int mpe_value_new(mpe_value **out, char typecode, size_t count, mpe_lock *lock) {
  int size = size_of(typecode);
  if (!size) return -EINVAL;
  if (count > ((size_t)1 << 40) / (size_t)size) return -ENOMEM;
  mpe_value *v = mpe__obj_new(sizeof *v + (size_t)size * count, MPE__KIND_VALUE);
  if (!v) return mpe_initialized() ? -ENOMEM : MPE_ENOINIT;
  v->typecode = typecode;
  v->size = (uint8_t)size;
  v->count = count;
  if (lock) {
    mpe_lock_retain(lock);
    v->lock = mpe_lock_ref(lock);
  }
  *out = v;
  return 0;
}

void mpe_value_free(mpe_value *v) {
  if (!v || !mpe__obj_release(v)) return;
  if (v->lock) mpe_lock_free(mpe_deref(v->lock));
  mpe_free(v);
}

char mpe_value_typecode(const mpe_value *v) { return v->typecode; }
void *mpe_value_data(mpe_value *v) { return v->data; }
size_t mpe_value_count(const mpe_value *v) { return (size_t)v->count; }
mpe_lock *mpe_value_lock(mpe_value *v) { return v->lock ? mpe_deref(v->lock) : NULL; }

static int fits(char t, int64_t x) {
  switch (t) {
  case 'b': return x >= INT8_MIN && x <= INT8_MAX;
  case 'B': case 'c': return x >= 0 && x <= UINT8_MAX;
  case 'h': return x >= INT16_MIN && x <= INT16_MAX;
  case 'H': return x >= 0 && x <= UINT16_MAX;
  case 'i': return x >= INT32_MIN && x <= INT32_MAX;
  case 'I': return x >= 0 && x <= UINT32_MAX;
  case 'L': case 'Q': return x >= 0;
  default: return 1;
  }
}

#define AT(type, v, i) ((type *)(void *)(v)->data + (i))

int64_t mpe_value_get_int(mpe_value *v, size_t i) {
  switch (v->typecode) {
  case 'b': return __atomic_load_n(AT(int8_t, v, i), __ATOMIC_SEQ_CST);
  case 'B': case 'c': return __atomic_load_n(AT(uint8_t, v, i), __ATOMIC_SEQ_CST);
  case 'h': return __atomic_load_n(AT(int16_t, v, i), __ATOMIC_SEQ_CST);
  case 'H': return __atomic_load_n(AT(uint16_t, v, i), __ATOMIC_SEQ_CST);
  case 'i': return __atomic_load_n(AT(int32_t, v, i), __ATOMIC_SEQ_CST);
  case 'I': return __atomic_load_n(AT(uint32_t, v, i), __ATOMIC_SEQ_CST);
  case 'f': return (int64_t)mpe_value_get_float(v, i);
  case 'd': return (int64_t)mpe_value_get_float(v, i);
  default: return __atomic_load_n(AT(int64_t, v, i), __ATOMIC_SEQ_CST);
  }
}

double mpe_value_get_float(mpe_value *v, size_t i) {
  if (v->typecode == 'f') {
    uint32_t u = __atomic_load_n(AT(uint32_t, v, i), __ATOMIC_SEQ_CST);
    float f;
    memcpy(&f, &u, 4);
    return f;
  }
  if (v->typecode == 'd') {
    uint64_t u = __atomic_load_n(AT(uint64_t, v, i), __ATOMIC_SEQ_CST);
    double d;
    memcpy(&d, &u, 8);
    return d;
  }
  return (double)mpe_value_get_int(v, i);
}

/* Compare-and-swap of the element's bits: 1 if it still held old. */
static int cas(mpe_value *v, size_t i, uint64_t old, uint64_t new) {
  switch (v->size) {
  case 1: {
    uint8_t o = (uint8_t)old;
    return __atomic_compare_exchange_n(AT(uint8_t, v, i), &o, (uint8_t)new, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
  }
  case 2: {
    uint16_t o = (uint16_t)old;
    return __atomic_compare_exchange_n(AT(uint16_t, v, i), &o, (uint16_t)new, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
  }
  case 4: {
    uint32_t o = (uint32_t)old;
    return __atomic_compare_exchange_n(AT(uint32_t, v, i), &o, (uint32_t)new, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
  }
  default:
    return __atomic_compare_exchange_n(AT(uint64_t, v, i), &old, new, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
  }
}

static uint64_t bits_of_int(int64_t x) { return (uint64_t)x; }

static int64_t int_of_bits(char t, uint64_t b) {
  switch (t) {
  case 'b': return (int8_t)b;
  case 'B': case 'c': return (uint8_t)b;
  case 'h': return (int16_t)b;
  case 'H': return (uint16_t)b;
  case 'i': return (int32_t)b;
  case 'I': return (uint32_t)b;
  default: return (int64_t)b;
  }
}

static uint64_t bits_of_float(char t, double x) {
  if (t == 'f') {
    float f = (float)x;
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
  }
  uint64_t u;
  memcpy(&u, &x, 8);
  return u;
}

static void store(mpe_value *v, size_t i, uint64_t bits) {
  switch (v->size) {
  case 1: __atomic_store_n(AT(uint8_t, v, i), (uint8_t)bits, __ATOMIC_SEQ_CST); break;
  case 2: __atomic_store_n(AT(uint16_t, v, i), (uint16_t)bits, __ATOMIC_SEQ_CST); break;
  case 4: __atomic_store_n(AT(uint32_t, v, i), (uint32_t)bits, __ATOMIC_SEQ_CST); break;
  default: __atomic_store_n(AT(uint64_t, v, i), bits, __ATOMIC_SEQ_CST); break;
  }
}

static uint64_t load_bits(mpe_value *v, size_t i) {
  switch (v->size) {
  case 1: return __atomic_load_n(AT(uint8_t, v, i), __ATOMIC_SEQ_CST);
  case 2: return __atomic_load_n(AT(uint16_t, v, i), __ATOMIC_SEQ_CST);
  case 4: return __atomic_load_n(AT(uint32_t, v, i), __ATOMIC_SEQ_CST);
  default: return __atomic_load_n(AT(uint64_t, v, i), __ATOMIC_SEQ_CST);
  }
}

int mpe_value_set_int(mpe_value *v, size_t i, int64_t x) {
  if (mpe_typecode_is_float(v->typecode)) return mpe_value_set_float(v, i, (double)x);
  if (!fits(v->typecode, x)) return -ERANGE;
  store(v, i, bits_of_int(x));
  return 0;
}

int mpe_value_set_float(mpe_value *v, size_t i, double x) {
  if (!mpe_typecode_is_float(v->typecode)) return -EINVAL;
  store(v, i, bits_of_float(v->typecode, x));
  return 0;
}

int mpe_value_add_int(mpe_value *v, size_t i, int64_t delta, int64_t *out) {
  if (mpe_typecode_is_float(v->typecode)) {
    double d;
    int rc = mpe_value_add_float(v, i, (double)delta, &d);
    if (out) *out = (int64_t)d;
    return rc;
  }
  for (;;) {
    uint64_t bits = load_bits(v, i);
    int64_t old = int_of_bits(v->typecode, bits), sum;
    if (__builtin_add_overflow(old, delta, &sum) || !fits(v->typecode, sum)) return -ERANGE;
    if (cas(v, i, bits, bits_of_int(sum))) {
      if (out) *out = sum;
      return 0;
    }
  }
}

int mpe_value_add_float(mpe_value *v, size_t i, double delta, double *out) {
  if (!mpe_typecode_is_float(v->typecode)) return -EINVAL;
  for (;;) {
    uint64_t bits = load_bits(v, i);
    double old;
    if (v->typecode == 'f') {
      float f;
      uint32_t u = (uint32_t)bits;
      memcpy(&f, &u, 4);
      old = f;
    } else {
      memcpy(&old, &bits, 8);
    }
    double sum = old + delta;
    if (cas(v, i, bits, bits_of_float(v->typecode, sum))) {
      if (out) *out = v->typecode == 'f' ? (double)(float)sum : sum;
      return 0;
    }
  }
}
