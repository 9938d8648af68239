/* ledger.c - what each child holds, so that a killed child's references
 * are given back by the parent that reaps it.
 *
 * A shared object lives while references to it are held (arena.c). A child
 * gives its references back when it ends normally; a child that is killed
 * cannot, and every object it held would stay forever (a Pool that kills
 * timed-out workers lost each one's inbox). So each child spawned after
 * mpe_spawn_refs_begin() has a ledger in the arena: a table of (object,
 * references) that it alone writes while it lives. The parent fills it with
 * the references it takes for the child before fork; the child adds the
 * objects it creates and takes one off at every reference it gives back.
 * When the parent reaps the child, it gives back whatever the table still
 * counts, and frees the table.
 *
 * The rule that keeps this safe: a ledger counts at most the references its
 * process holds, never more. References are fungible (a message in flight
 * holds one that another process gives back later), so a child may give
 * back more than its ledger counts; that only takes the count to zero.
 * References that reach a child in messages count once the binding says
 * the process holds them (mpe_obj_held, when a handle adopts one); those it
 * does not report stay taken if the child is killed. Order: the count goes
 * up after the reference is taken and down before it is given back, so a
 * process killed in between leaves a ledger that counts less, not more.
 *
 * Table: open addressing, linear probing, 2^k slots of one 64-bit word each:
 * (object offset / 16) << 20 | count, 0 for an empty slot. A slot is
 * changed with one store; growing builds a new table and commits it with
 * one store of the descriptor (table offset << 8 | k). So whatever point a
 * child is killed at, the parent reads a whole table. */
#define _GNU_SOURCE
#include "internal.h"

#include <errno.h>
#include <stdatomic.h>

#define LEDGER_MAGIC 0x6d70656cu
#define COUNT_BITS 20
#define COUNT_MAX ((1u << COUNT_BITS) - 1)
#define MIN_LG 5

typedef struct ledger {
  uint32_t magic;
  uint32_t keys;          /* slots in use (count may be 0); the owner's bookkeeping */
  _Atomic uint64_t desc; /* table offset << 8 | log2(slots) */
} ledger;

static ledger *mine;     /* this process's, NULL if its parent did not make one */
static ledger *pending;  /* the next child's, between mpe_spawn_refs_begin and spawn */
static int settling;     /* giving back a dead child's references: not ours */

static _Atomic uint64_t *table(const ledger *l, unsigned *lg) {
  uint64_t d = atomic_load(&l->desc);
  *lg = (unsigned)(d & 63);
  return mpe_deref(d >> 8);
}

static size_t slot_of(uint64_t key, unsigned lg) {
  return (size_t)((key * 0x9e3779b97f4a7c15ULL) >> (64 - lg));
}

static int alloc_table(ledger *l, unsigned lg) {
  _Atomic uint64_t *t = mpe_alloc(sizeof *t << lg);
  if (!t) return -ENOMEM;
  for (size_t i = 0; i < ((size_t)1 << lg); i++) atomic_init(&t[i], 0);
  atomic_store(&l->desc, mpe_ref(t) << 8 | lg);
  return 0;
}

static ledger *ledger_new(void) {
  ledger *l = mpe_alloc(sizeof *l);
  if (!l) return NULL;
  l->magic = LEDGER_MAGIC;
  l->keys = 0;
  atomic_init(&l->desc, 0);
  if (alloc_table(l, MIN_LG) < 0) {
    mpe_free(l);
    return NULL;
  }
  return l;
}

static void ledger_free(ledger *l) {
  unsigned lg;
  void *t = table(l, &lg);
  l->magic = 0;
  mpe_free(t);
  mpe_free(l);
}

/* Rebuilds the table, keeping the slots that count something. */
static int grow(ledger *l) {
  unsigned lg;
  _Atomic uint64_t *old = table(l, &lg);
  size_t live = 0;
  for (size_t i = 0; i < ((size_t)1 << lg); i++) live += (atomic_load(&old[i]) & COUNT_MAX) != 0;
  unsigned nlg = MIN_LG;
  while (((size_t)1 << nlg) < live * 4) nlg++;
  _Atomic uint64_t *t = mpe_alloc(sizeof *t << nlg);
  if (!t) return -ENOMEM;
  for (size_t i = 0; i < ((size_t)1 << nlg); i++) atomic_init(&t[i], 0);
  for (size_t i = 0; i < ((size_t)1 << lg); i++) {
    uint64_t s = atomic_load(&old[i]);
    if (!(s & COUNT_MAX)) continue;
    size_t j = slot_of(s >> COUNT_BITS, nlg);
    while (atomic_load(&t[j])) j = (j + 1) & (((size_t)1 << nlg) - 1);
    atomic_store(&t[j], s);
  }
  l->keys = (uint32_t)live;
  atomic_store(&l->desc, mpe_ref(t) << 8 | nlg); /* the commit */
  mpe_free(old);
  return 0;
}

/* delta: +1 a reference taken, -1 one given back, 0 the block is freed. */
static void bump(ledger *l, uint64_t ref, int delta) {
  uint64_t key = ref >> 4;
  for (;;) {
    unsigned lg;
    _Atomic uint64_t *t = table(l, &lg);
    size_t mask = ((size_t)1 << lg) - 1;
    for (size_t i = slot_of(key, lg);; i = (i + 1) & mask) {
      uint64_t s = atomic_load_explicit(&t[i], memory_order_relaxed), c = s & COUNT_MAX;
      if (s && s >> COUNT_BITS != key) continue;
      if (!s) {
        if (delta <= 0) return; /* not counted here */
        if ((size_t)(l->keys + 1) * 2 > mask + 1) break; /* grow first */
        l->keys++;
      }
      if (delta > 0 && c < COUNT_MAX) c++; /* past the maximum: counts less, safe */
      else if (delta < 0 && c > 0) c--;
      else if (delta == 0) c = 0;
      atomic_store(&t[i], key << COUNT_BITS | c);
      return;
    }
    if (grow(l) < 0) return; /* not counted: it will leak if we are killed */
  }
}

void mpe__ledger_note(const void *obj, int delta) {
  if (mine && !settling) bump(mine, mpe_ref(obj), delta);
}

void mpe_obj_held(const void *obj) {
  if (obj) mpe__ledger_note(obj, 1);
}

void mpe__ledger_forget(uint64_t ref) {
  if (mine && !settling) bump(mine, ref, 0);
}

void mpe__ledger_for_child(const void *obj) {
  if (pending) bump(pending, mpe_ref(obj), 1);
}

int mpe_spawn_refs_begin(void) {
  if (!mpe_initialized()) return MPE_ENOINIT;
  if (pending) ledger_free(pending);
  pending = ledger_new();
  return pending ? 0 : -ENOMEM;
}

uint64_t mpe__ledger_take_pending(void) {
  uint64_t r = mpe_ref(pending);
  pending = NULL;
  return r;
}

void mpe__ledger_drop(uint64_t ref) {
  ledger *l = mpe_deref(ref);
  if (l) ledger_free(l);
}

MPE_CHILD_PATH void mpe__ledger_adopt(void *l) {
  /* In the child: the ledger made for it is ours; our parent's is not. */
  mine = l;
}

/* Gives one reference back to an object of any kind. */
static void give_back(mpe__obj *o) {
  switch (o->kind) {
  case MPE__KIND_QUEUE: mpe_queue_free((mpe_queue *)o); break;
  case MPE__KIND_LOCK: mpe_lock_free((mpe_lock *)o); break;
  case MPE__KIND_SEM: mpe_sem_free((mpe_sem *)o); break;
  case MPE__KIND_EVENT: mpe_event_free((mpe_event *)o); break;
  case MPE__KIND_COND: mpe_cond_free((mpe_cond *)o); break;
  case MPE__KIND_BARRIER: mpe_barrier_free((mpe_barrier *)o); break;
  case MPE__KIND_VALUE: mpe_value_free((mpe_value *)o); break;
  default: break;
  }
}

void mpe__ledger_settle(uint64_t ref) {
  ledger *l = mpe_deref(ref);
  if (!l) return;
  MPE__CHECK(l->magic == LEDGER_MAGIC);
  if (l->keys == 0) { /* nothing counted: no flag to write (a page to copy, after a fork) */
    ledger_free(l);
    return;
  }
  settling = 1;
  unsigned lg;
  _Atomic uint64_t *t = table(l, &lg);
  for (size_t i = 0; i < ((size_t)1 << lg); i++) {
    uint64_t s = atomic_load(&t[i]);
    mpe__obj *o = mpe_deref((s >> COUNT_BITS) << 4);
    for (uint64_t c = s & COUNT_MAX; o && c > 0; c--) {
      /* The dead held these, so the object lives; look anyway rather than
       * trust a count more than the object's own. */
      if (o->magic != MPE__OBJ_MAGIC || (uint32_t)atomic_load(&o->life) == 0) break;
      give_back(o);
    }
  }
  settling = 0;
  ledger_free(l);
}
