/* arena.c - the shared-memory arena and its process-shared allocator.
 *
 * mpe_init() maps one anonymous MAP_SHARED region before any fork. Every
 * process of the run inherits it at the same address, so any object made in
 * it, by any process and at any time, can be handed to any other process by
 * reference. Being anonymous, it has no name in /dev/shm and nothing can leak
 * past the last process of the run; MAP_NORESERVE means only touched pages
 * cost memory.
 *
 * Allocator: power-of-two size classes, one LIFO free list per class, and a
 * bump pointer for fresh space, all under one robust mutex. Each block has a
 * 16-byte header (magic, class). Every update commits with one store, so a
 * process killed inside the allocator leaks at most one block and never
 * corrupts a list. Large freed blocks give their pages back (MADV_REMOVE).
 *
 * Invariants: top <= size; a free block's header names its class; block
 * offsets are 16-byte aligned. */
#define _GNU_SOURCE
#include "mutex.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <unistd.h>

#define ARENA_MAGIC 0x4d50454e47494e45ULL /* "MPENGINE" */
#define BLOCK_MAGIC 0x6d706562u
#define MIN_CLASS 5  /* 32 bytes */
#define NCLASSES 48
#define HDR 16
#define RELEASE_BYTES ((size_t)32 << 20) /* below this, keep pages: re-faulting costs more */

typedef struct block_hdr {
  uint32_t magic;
  uint32_t cls;
  uint64_t next; /* offset of the next free block while free */
} block_hdr;

typedef struct arena_hdr {
  uint64_t magic;
  size_t size;
  size_t top;
  _Atomic size_t used;
  mpe__mutex lock;
  uint64_t bins[NCLASSES];
  unsigned char key[16]; /* the run's secret (mac.c) */
} arena_hdr;

static arena_hdr *arena;

static size_t default_size(void) {
  const char *e = getenv("MPENGINE_ARENA_SIZE");
  if (e && *e) {
    char *end;
    unsigned long long v = strtoull(e, &end, 10);
    if (*end == 'K' || *end == 'k') v <<= 10;
    if (*end == 'M' || *end == 'm') v <<= 20;
    if (*end == 'G' || *end == 'g') v <<= 30;
    if (v >= (1u << 20)) return (size_t)v;
  }
  return (size_t)1 << 30;
}

int mpe_init(size_t arena_size) {
  if (arena) return 0;
  size_t size = arena_size ? arena_size : default_size();
  long page = sysconf(_SC_PAGESIZE);
  size = (size + (size_t)page - 1) & ~((size_t)page - 1);
  void *p = mmap(NULL, size, PROT_READ | PROT_WRITE,
                 MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) return -errno;
  arena = p;
  arena->magic = ARENA_MAGIC;
  arena->size = size;
  arena->top = (sizeof(arena_hdr) + 63) & ~(size_t)63;
  atomic_init(&arena->used, 0);
  mpe__mutex_init(&arena->lock);
  if (getrandom(arena->key, sizeof arena->key, 0) != (ssize_t)sizeof arena->key) {
    munmap(p, size);
    arena = NULL;
    return -EIO;
  }
  return 0;
}

const unsigned char *mpe__run_key(void) { return arena ? arena->key : NULL; }

int mpe_initialized(void) { return arena != NULL; }

static unsigned class_of(size_t total) {
  unsigned c = MIN_CLASS;
  while (((size_t)1 << c) < total) c++;
  return c;
}

void *mpe_alloc(size_t n) {
  if (!arena || n > arena->size) return NULL;
  unsigned c = class_of(n + HDR);
  if (c >= NCLASSES) return NULL;
  size_t bsize = (size_t)1 << c;
  char *base = (char *)arena;
  block_hdr *b = NULL;
  mpe__mutex_lock(&arena->lock, NULL, 0); /* a dead holder leaked one block at most */
  uint64_t off = arena->bins[c];
  if (off) {
    b = (block_hdr *)(base + off);
    MPE__CHECK(b->magic == BLOCK_MAGIC && b->cls == c);
    arena->bins[c] = b->next;
  } else if (arena->top + bsize <= arena->size) {
    b = (block_hdr *)(base + arena->top);
    arena->top += bsize;
  }
  mpe__mutex_unlock(&arena->lock);
  if (!b) return NULL;
  b->magic = BLOCK_MAGIC;
  b->cls = c;
  b->next = 0;
  atomic_fetch_add(&arena->used, bsize);
  return (char *)b + HDR;
}

void mpe_free(void *p) {
  if (!p) return;
  block_hdr *b = (block_hdr *)((char *)p - HDR);
  MPE__CHECK(arena && b->magic == BLOCK_MAGIC && b->cls < NCLASSES);
  size_t bsize = (size_t)1 << b->cls;
  if (bsize >= RELEASE_BYTES) {
    /* Give the pages back to the system; the block keeps its address. */
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    uintptr_t from = ((uintptr_t)b + HDR + page - 1) & ~(uintptr_t)(page - 1);
    uintptr_t to = ((uintptr_t)b + bsize) & ~(uintptr_t)(page - 1);
    if (to > from) madvise((void *)from, to - from, MADV_REMOVE);
  }
  atomic_fetch_sub(&arena->used, bsize);
  mpe__mutex_lock(&arena->lock, NULL, 0);
  b->next = arena->bins[b->cls];
  arena->bins[b->cls] = (uint64_t)((char *)b - (char *)arena);
  mpe__mutex_unlock(&arena->lock);
}

void mpe_arena_stats(size_t *used, size_t *size) {
  if (used) *used = arena ? atomic_load(&arena->used) : 0;
  if (size) *size = arena ? arena->size : 0;
}

uint64_t mpe_ref(const void *p) {
  if (!p || !arena) return 0;
  return (uint64_t)((const char *)p - (const char *)arena);
}

void *mpe_deref(uint64_t ref) {
  if (!ref || !arena || ref >= arena->size) return NULL;
  return (char *)arena + ref;
}

/* ------------------------------------------------ shared objects' header */

/* A fresh serial for the object at o: keyed, so nobody can predict it; the
 * pid, a count and the clock make the input new every time. */
static uint32_t new_serial(const void *o) {
  static uint64_t count;
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  uint64_t in[4] = {mpe_ref(o), (uint64_t)mpe__self_pid(), ++count,
                    (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec};
  uint32_t s = (uint32_t)mpe__siphash(arena->key, in, sizeof in);
  return s ? s : 1;
}

void *mpe__obj_new(size_t size, uint32_t kind) {
  mpe__obj *o = mpe_alloc(size);
  if (!o) return NULL;
  memset(o, 0, size);
  o->magic = MPE__OBJ_MAGIC;
  o->kind = kind;
  atomic_init(&o->life, (uint64_t)new_serial(o) << 32 | 1);
  return o;
}

void *mpe__obj_from_ref(uint64_t ref, uint32_t kind) {
  /* A reference from a message is checked before it is trusted: inside the
   * arena, on a live block, with the right kind and references left. */
  if (!arena || ref < sizeof(arena_hdr) + HDR || ref >= arena->top || (ref & 15) != 0) return NULL;
  block_hdr *b = (block_hdr *)((char *)arena + ref - HDR);
  if (b->magic != BLOCK_MAGIC || b->cls >= NCLASSES) return NULL;
  mpe__obj *o = (mpe__obj *)((char *)arena + ref);
  if (o->magic != MPE__OBJ_MAGIC || o->kind != kind || (uint32_t)atomic_load(&o->life) == 0) return NULL;
  return o;
}

void mpe__obj_retain(void *p) {
  uint64_t before = atomic_fetch_add(&((mpe__obj *)p)->life, 1);
  MPE__CHECK((uint32_t)before != 0 && (uint32_t)before != UINT32_MAX);
}

int mpe__obj_release(void *p) {
  mpe__obj *o = p;
  uint64_t before = atomic_fetch_sub(&o->life, 1);
  MPE__CHECK((uint32_t)before > 0);
  if ((uint32_t)before != 1) return 0;
  o->magic = 0;
  atomic_store(&o->life, 0); /* the serial is forgotten: no check matches again */
  return 1;
}

static uint64_t obj_check(const mpe__obj *o, uint32_t serial) {
  uint64_t in[3] = {mpe_ref(o), serial, o->kind};
  return mpe__siphash(arena->key, in, sizeof in);
}

uint64_t mpe_obj_check(const void *p) {
  const mpe__obj *o = p;
  return obj_check(o, (uint32_t)(atomic_load(&o->life) >> 32));
}

int mpe_obj_claim(void *p, uint64_t check, int retain) {
  mpe__obj *o = p;
  uint64_t life = atomic_load(&o->life);
  for (;;) {
    uint32_t refs = (uint32_t)life, serial = (uint32_t)(life >> 32);
    if (refs == 0 || serial == 0 || obj_check(o, serial) != check) return -ESTALE;
    if (!retain) return 0;
    if (refs == UINT32_MAX) return -EOVERFLOW;
    /* the whole word: fails if the object was freed (and its place reused) meanwhile */
    if (atomic_compare_exchange_weak(&o->life, &life, life + 1)) return 0;
  }
}
