/* arena.c - the shared-memory arena and its process-shared allocator.
 *
 * mpe_init() maps one anonymous MAP_SHARED region before any fork. Every
 * process of the run inherits it at the same address, so any object made in
 * it, by any process and at any time, can be handed to any other process by
 * reference. Being anonymous, it has no name in /dev/shm and nothing can leak
 * past the last process of the run; MAP_NORESERVE means only touched pages
 * cost memory.
 *
 * Allocator: blocks with boundary tags, one robust mutex. The blocks tile
 * [START, top) with no gap; above top is fresh space (the wilderness). A
 * block's 16-byte header holds its size and two flags (in use; the block
 * before it is free); a free block also keeps its size in its last 8 bytes
 * (the footer), so the block after it can find its start. Free blocks sit
 * in segregated lists: one exact list per size up to 1 KiB, four per power
 * of two above, with a bitmap of the non-empty ones. mpe_alloc takes the
 * first fit from the smallest list that can hold the request and splits off
 * the rest; mpe_free merges the block with free neighbours at once, and a
 * free block that reaches top lowers top. So two free blocks are never
 * neighbours, and any freed memory serves a request of any size. Large
 * freed blocks give their pages back to the system (MADV_REMOVE).
 *
 * Small blocks (up to QUICK_MAX) are merged lazily: mpe_free puts one on an
 * exact-size LIFO quick list, still "in use" for the tiling (flag QUICK),
 * and mpe_alloc of that size takes it back: the common small free/alloc
 * touches no neighbour. The quick lists are merged in (consolidate()) before
 * any request over SMALL_MAX and whenever a request finds no room, so they
 * never make a request fail.
 *
 * Robustness: a process killed inside the allocator must leave it usable.
 * The tiling is what every other field is rebuilt from, and each step keeps
 * it whole with one store: a split writes the remainder's header inside the
 * block first, then commits size and "in use" with one store to the block's
 * header word; a merge is one store of the merged size; growing or lowering
 * top is one store; putting a block on a quick list, or taking it off, is
 * one store of its flags. The lists, footers, "previous is free" flags and
 * the `used` count are derived: the next locker sees MPE_EOWNERDEAD and
 * repair() rebuilds them from one walk over the blocks (merging QUICK
 * blocks as free ones, and neighbours the dead left unmerged). What can be
 * lost is the block the dead was taking or giving back.
 *
 * Invariants (outside the lock, or after repair()): blocks tile [START,
 * top); sizes are multiples of 16 and >= MIN_BLOCK; no two free blocks are
 * neighbours and the block before top is in use (a QUICK block counts as in
 * use); every free block is in the list bin_of(size) and has its footer;
 * every QUICK block is on the quick list of its size; PREV_FREE is set
 * exactly on blocks after a free one; `used` is the sum of the sizes of the
 * blocks in use and not QUICK. */
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
#define HDR 16
#define MIN_BLOCK 48 /* header, two list links, footer */
#define SMALL_MAX 1024
#define NSMALL (SMALL_MAX / 16 - 2) /* exact lists for 48, 64, ..., 1024 */
#define NBINS 256
#define USED 1u
#define PREV_FREE 2u
#define QUICK 4u /* in use for the tiling, free for its owner: on a quick list */
#define FLAGS 15u
#define QUICK_MAX 512 /* blocks up to this size are freed to quick lists */
#define NQUICK (QUICK_MAX / 16 - 2)
#define RELEASE_BYTES ((size_t)32 << 20) /* below this, keep pages: re-faulting costs more */

/* A block's header. Layout (16 bytes, so payloads stay 16-byte aligned):
 *   bytes 0-3   magic   BLOCK_MAGIC in every block, in use or free
 *   bytes 4-7   serial  in use: the run-wide number of this allocation
 *                       (1, 2, ... wrapping past 0); free: 0
 *   bytes 8-15  word    size in bytes (header included, multiple of 16)
 *                       | USED (bit 0) | PREV_FREE (bit 1) | QUICK (bit 2)
 * The payload follows. A free block's payload starts with the offsets of
 * the next and previous free block of its list (0 ends a list), and its
 * last 8 bytes hold its size (the footer). A block on a quick list has
 * USED | QUICK and its payload starts with the next block of that list. */
typedef struct block_hdr {
  uint32_t magic;
  uint32_t serial;
  _Atomic uint64_t word;
} block_hdr;

typedef struct free_links {
  uint64_t next, prev;
} free_links;

typedef struct arena_hdr {
  uint64_t magic;
  size_t size;
  _Atomic size_t top; /* end of the last block; fresh space above */
  _Atomic size_t used;
  mpe__mutex lock;
  uint32_t serial; /* the last allocation's serial */
  uint32_t repairs; /* times repair() ran (for tests) */
  uint64_t nquick; /* blocks on the quick lists */
  uint64_t quick[NQUICK]; /* head of each quick list (linked through the payload) */
  uint64_t nonempty[NBINS / 64];
  uint64_t bins[NBINS]; /* head of each free list */
  unsigned char key[16]; /* the run's secret (mac.c) */
} arena_hdr;

#define START (((sizeof(arena_hdr) + 63) & ~(size_t)63))

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
  if (size >= ((size_t)1 << 47)) return -EINVAL;
  void *p = mmap(NULL, size, PROT_READ | PROT_WRITE,
                 MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) return -errno;
  arena = p;
  arena->magic = ARENA_MAGIC;
  arena->size = size;
  atomic_init(&arena->top, START);
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

/* ------------------------------------------------------------ blocks */

static block_hdr *blk(uint64_t off) { return (block_hdr *)((char *)arena + off); }
static uint64_t word_of(uint64_t off) { return atomic_load_explicit(&blk(off)->word, memory_order_relaxed); }
static void set_word(uint64_t off, uint64_t w) {
  atomic_store_explicit(&blk(off)->word, w, memory_order_relaxed);
}
static uint64_t size_of(uint64_t off) { return word_of(off) & ~(uint64_t)FLAGS; }
static free_links *links(uint64_t off) { return (free_links *)((char *)arena + off + HDR); }
static void set_footer(uint64_t off, uint64_t size) {
  *(uint64_t *)((char *)arena + off + size - 8) = size;
}

static unsigned bin_of(uint64_t size) {
  if (size <= SMALL_MAX) return (unsigned)(size >> 4) - 3;
  unsigned k = 63u - (unsigned)__builtin_clzll(size); /* size in [2^k, 2^(k+1)) */
  return NSMALL + (k - 10) * 4 + (unsigned)((size >> (k - 2)) & 3);
}

static void bin_insert(uint64_t off, uint64_t size) {
  unsigned i = bin_of(size);
  free_links *l = links(off);
  l->next = arena->bins[i];
  l->prev = 0;
  if (l->next) links(l->next)->prev = off;
  arena->bins[i] = off;
  arena->nonempty[i / 64] |= (uint64_t)1 << (i % 64);
}

static void bin_remove(uint64_t off, uint64_t size) {
  unsigned i = bin_of(size);
  free_links *l = links(off);
  if (l->prev) links(l->prev)->next = l->next;
  else arena->bins[i] = l->next;
  if (l->next) links(l->next)->prev = l->prev;
  if (!arena->bins[i]) arena->nonempty[i / 64] &= ~((uint64_t)1 << (i % 64));
}

/* The first non-empty list from i on, or NBINS. */
static unsigned next_bin(unsigned i) {
  while (i < NBINS) {
    uint64_t m = arena->nonempty[i / 64] & (~(uint64_t)0 << (i % 64));
    if (m) return (i & ~63u) + (unsigned)__builtin_ctzll(m);
    i = (i & ~63u) + 64;
  }
  return NBINS;
}

/* A free block of at least need bytes, or 0. */
static uint64_t find_fit(uint64_t need) {
  unsigned i = bin_of(need);
  if (i >= NSMALL) /* the sizes of a large list vary: first fit */
    for (uint64_t off = arena->bins[i]; off; off = links(off)->next)
      if (size_of(off) >= need) return off;
  unsigned j = next_bin(i >= NSMALL ? i + 1 : i); /* every block there fits */
  return j < NBINS ? arena->bins[j] : 0;
}

/* After a locker died: rebuild the lists, flags, footers and `used` from
 * the tiling, merging free neighbours, and lower top over a free tail. */
__attribute__((cold, noinline)) static void repair(void) {
  memset(arena->bins, 0, sizeof arena->bins);
  memset(arena->nonempty, 0, sizeof arena->nonempty);
  memset(arena->quick, 0, sizeof arena->quick);
  arena->nquick = 0;
  uint64_t top = atomic_load(&arena->top), last_free = 0, used = 0;
  for (uint64_t off = START; off < top;) {
    block_hdr *b = blk(off);
    uint64_t w = word_of(off), size = w & ~(uint64_t)FLAGS;
    MPE__CHECK(b->magic == BLOCK_MAGIC && size >= MIN_BLOCK && (size & 15) == 0 && size <= top - off);
    if (w & QUICK) { /* free for its owner: free */
      w = size | (w & PREV_FREE);
      set_word(off, w);
    }
    if (w & USED) {
      used += size;
      last_free = 0;
    } else if (last_free) {
      set_word(last_free, (size_of(last_free) + size) | (word_of(last_free) & PREV_FREE));
    } else {
      b->serial = 0;
      last_free = off;
    }
    off += size;
  }
  if (last_free) atomic_store(&arena->top, last_free); /* the commit */
  top = atomic_load(&arena->top);
  int prev_free = 0;
  for (uint64_t off = START; off < top;) {
    uint64_t w = word_of(off), size = w & ~(uint64_t)FLAGS;
    set_word(off, size | (w & USED) | (prev_free ? PREV_FREE : 0));
    prev_free = !(w & USED);
    if (prev_free) {
      set_footer(off, size);
      bin_insert(off, size);
    }
    off += size;
  }
  atomic_store(&arena->used, used);
  arena->repairs++;
}

/* top and used change only under the lock; readers outside it look only. */
static uint64_t get_top(void) { return atomic_load_explicit(&arena->top, memory_order_relaxed); }
static void set_top(uint64_t t) { atomic_store_explicit(&arena->top, t, memory_order_release); }
static void add_used(int64_t d) {
  atomic_store_explicit(&arena->used, atomic_load_explicit(&arena->used, memory_order_relaxed) + (size_t)d,
                        memory_order_relaxed);
}

static void alock(void) {
  if (mpe__mutex_lock(&arena->lock, NULL, 0) == MPE_EOWNERDEAD) repair();
}

static void aunlock(void) { mpe__mutex_unlock(&arena->lock); }

/* Locked: frees the block at off (in use, or QUICK and off its list) and
 * merges it with free neighbours. */
static void release(uint64_t off) {
  uint64_t w = word_of(off), size = w & ~(uint64_t)FLAGS;
  set_word(off, size | (w & PREV_FREE)); /* the commit: free */
  uint64_t top = get_top(), next = off + size;
  if (next < top && !(word_of(next) & USED)) { /* merge with the next block */
    uint64_t nsize = size_of(next);
    bin_remove(next, nsize);
    size += nsize;
    set_word(off, size | (w & PREV_FREE)); /* the commit */
  }
  if (w & PREV_FREE) { /* merge with the previous block */
    uint64_t psize = *(uint64_t *)((char *)arena + off - 8), prev = off - psize;
    MPE__CHECK(psize >= MIN_BLOCK && prev >= START && size_of(prev) == psize && !(word_of(prev) & USED));
    bin_remove(prev, psize);
    size += psize;
    off = prev;
    set_word(off, size | (word_of(off) & PREV_FREE)); /* the commit */
  }
  if (off + size == top) {
    set_top(off); /* the commit: back to fresh space */
  } else {
    set_footer(off, size);
    set_word(off + size, word_of(off + size) | PREV_FREE);
    bin_insert(off, size);
  }
}

/* Locked: merges every block of the quick lists in. */
static void consolidate(void) {
  for (unsigned i = 0; i < NQUICK; i++) {
    uint64_t off = arena->quick[i];
    arena->quick[i] = 0;
    while (off) {
      uint64_t next = links(off)->next; /* read before the merge writes over it */
      release(off);
      off = next;
    }
  }
  arena->nquick = 0;
}

void *mpe_alloc(size_t n) {
  if (!arena || n > arena->size) return NULL;
  uint64_t need = ((uint64_t)n + HDR + 15) & ~(uint64_t)15;
  if (need < MIN_BLOCK) need = MIN_BLOCK;
  uint64_t off;
  alock();
  uint32_t serial = ++arena->serial ? arena->serial : ++arena->serial;
  if (need <= QUICK_MAX && (off = arena->quick[(need >> 4) - 3]) != 0) {
    arena->quick[(need >> 4) - 3] = links(off)->next;
    arena->nquick--;
    blk(off)->serial = serial;
    set_word(off, word_of(off) & ~(uint64_t)QUICK); /* the commit */
    add_used((int64_t)need);
    aunlock();
    return (char *)arena + off + HDR;
  }
  if (arena->nquick && (need > SMALL_MAX || (!find_fit(need) && need > arena->size - get_top())))
    consolidate();
  off = find_fit(need);
  if (off) {
    uint64_t w = word_of(off), size = w & ~(uint64_t)FLAGS;
    bin_remove(off, size);
    blk(off)->serial = serial;
    if (size - need >= MIN_BLOCK) { /* split: the rest stays free */
      uint64_t rest = off + need;
      blk(rest)->magic = BLOCK_MAGIC;
      blk(rest)->serial = 0;
      set_word(rest, size - need);
      set_word(off, need | USED | (w & PREV_FREE)); /* the commit */
      set_footer(rest, size - need);
      bin_insert(rest, size - need);
    } else {
      need = size;
      set_word(off, size | USED | (w & PREV_FREE)); /* the commit */
      uint64_t next = off + size;
      if (next < get_top()) set_word(next, word_of(next) & ~(uint64_t)PREV_FREE);
    }
  } else {
    off = get_top();
    if (need > arena->size - off) {
      aunlock();
      return NULL;
    }
    block_hdr *b = blk(off);
    b->magic = BLOCK_MAGIC;
    b->serial = serial;
    set_word(off, need | USED); /* the block before top is never free */
    set_top(off + need); /* the commit */
  }
  add_used((int64_t)need);
  aunlock();
  return (char *)arena + off + HDR;
}

void mpe_free(void *p) {
  if (!p) return;
  MPE__CHECK(arena && (char *)p > (char *)arena && (char *)p < (char *)arena + arena->size);
  uint64_t off = (uint64_t)((char *)p - (char *)arena) - HDR;
  uint64_t size = size_of(off);
  MPE__CHECK(blk(off)->magic == BLOCK_MAGIC && (word_of(off) & (USED | QUICK)) == USED && size >= MIN_BLOCK);
  mpe__ledger_forget(off + HDR);
  if (size <= QUICK_MAX) {
    alock();
    uint64_t w = word_of(off);
    MPE__CHECK((w & (USED | QUICK)) == USED); /* freed twice */
    blk(off)->serial = 0;
    set_word(off, w | QUICK); /* the commit */
    unsigned i = (unsigned)(size >> 4) - 3;
    links(off)->next = arena->quick[i];
    arena->quick[i] = off;
    arena->nquick++;
    add_used(-(int64_t)size);
    aunlock();
    return;
  }
  if (size >= RELEASE_BYTES) {
    /* Give the pages back to the system while the block is still ours. */
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    uintptr_t from = ((uintptr_t)p + page - 1) & ~(uintptr_t)(page - 1);
    uintptr_t to = ((uintptr_t)p - HDR + size - 8) & ~(uintptr_t)(page - 1); /* keep the footer's page */
    if (to > from) madvise((void *)from, to - from, MADV_REMOVE);
  }
  alock();
  uint64_t w = word_of(off);
  MPE__CHECK((w & (USED | QUICK)) == USED); /* freed twice */
  blk(off)->serial = 0;
  add_used(-(int64_t)size);
  release(off);
  aunlock();
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

uint32_t mpe__block_serial(const void *p) {
  const block_hdr *b = (const block_hdr *)((const char *)p - HDR);
  return b->serial;
}

int mpe__arena_check(size_t *nfree, size_t *largest_free, size_t *nused, unsigned *repairs) {
  /* Merges the quick lists in, then walks the blocks under the lock and
   * checks every invariant above. */
  if (!arena) return MPE_ENOINIT;
  alock();
  consolidate();
  uint64_t top = get_top(), used = 0, nf = 0, nu = 0, big = 0, inlists = 0;
  int prev_free = 0, ok = 1;
  for (uint64_t off = START; ok && off < top;) {
    uint64_t w = word_of(off), size = w & ~(uint64_t)FLAGS;
    ok = blk(off)->magic == BLOCK_MAGIC && size >= MIN_BLOCK && (size & 15) == 0 && size <= top - off &&
         !!(w & PREV_FREE) == prev_free && !(w & QUICK);
    if (!ok) break;
    if (w & USED) {
      used += size;
      nu++;
      prev_free = 0;
    } else {
      ok = !prev_free && off + size < top && *(uint64_t *)((char *)arena + off + size - 8) == size &&
           blk(off)->serial == 0;
      prev_free = 1;
      nf++;
      if (size > big) big = size;
    }
    off += size;
  }
  for (unsigned i = 0; ok && i < NBINS; i++) {
    ok = !!(arena->nonempty[i / 64] & ((uint64_t)1 << (i % 64))) == (arena->bins[i] != 0);
    for (uint64_t off = arena->bins[i], prev = 0; ok && off; prev = off, off = links(off)->next) {
      ok = off >= START && off < top && !(word_of(off) & USED) && bin_of(size_of(off)) == i &&
           links(off)->prev == prev && ++inlists <= nf;
    }
  }
  ok = ok && inlists == nf && used == atomic_load(&arena->used);
  aunlock();
  if (nfree) *nfree = (size_t)nf;
  if (largest_free) *largest_free = (size_t)big;
  if (nused) *nused = (size_t)nu;
  if (repairs) *repairs = arena->repairs;
  return ok ? 0 : -EFAULT;
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
  mpe__ledger_note(o, 1); /* the creator holds it */
  return o;
}

void *mpe__obj_from_ref(uint64_t ref, uint32_t kind) {
  /* A reference from a message is checked before it is trusted: inside the
   * arena, on a live block, with the right kind and references left. */
  if (!arena || ref < START + HDR || ref >= atomic_load(&arena->top) || (ref & 15) != 0) return NULL;
  uint64_t off = ref - HDR;
  if (blk(off)->magic != BLOCK_MAGIC || (word_of(off) & (USED | QUICK)) != USED) return NULL;
  mpe__obj *o = (mpe__obj *)((char *)arena + ref);
  if (o->magic != MPE__OBJ_MAGIC || o->kind != kind || (uint32_t)atomic_load(&o->life) == 0) return NULL;
  return o;
}

void mpe__obj_retain(void *p) {
  uint64_t before = atomic_fetch_add(&((mpe__obj *)p)->life, 1);
  MPE__CHECK((uint32_t)before != 0 && (uint32_t)before != UINT32_MAX);
  mpe__ledger_for_child(p); /* taken for the next child, if one is being made */
}

int mpe__obj_release(void *p) {
  mpe__obj *o = p;
  mpe__ledger_note(o, -1); /* first: a ledger may count less than is held, never more */
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
