/* dict.c - a hash map of byte keys to values, in the arena.
 *
 * Layout: the dict points (tab, one 64-bit arena reference) at a table of
 * 2^k slots, open addressing with linear probing. A slot is 0 (empty),
 * TOMB (a deleted entry: probing goes on past it), or the arena reference
 * of an entry with the top 16 bits of the key's hash above it, so a probe
 * rarely touches an entry whose key differs. An entry is one arena block:
 * the key's hash, its bytes, and a value, which is a number (INT or FLOAT,
 * kept inline in one 64-bit word) or opaque bytes with a 32-bit tag (the
 * Lua binding's codec output). The table keeps its live and used (live +
 * tombstones) counts; above half full it is rebuilt (grown, or cleaned of
 * tombstones).
 *
 * Robustness: every operation runs under one robust mutex (m), and every
 * change commits with one store made last: a slot (a new entry's reference,
 * or TOMB), a number in place (an incr, a set of a number over a number of
 * the same kind), or tab (a rebuild, a clear). A replaced entry is freed
 * only after its commit, outside the lock. The counts are stored after the
 * commit, so a holder killed in between leaves them off by one: the next
 * holder is told MPE_EOWNERDEAD by the mutex and recounts them (repair).
 * So a process killed at any point leaves the old state or the new one;
 * what it can leak is the block it was installing or freeing.
 *
 * update: a read-modify-write whose function runs in the caller (in Lua)
 * between mpe_dict_update_begin and _end, outside m. A second robust mutex
 * (upd) is held for that time, and the key's hash is published (upd_hash,
 * under m); a writer of that key from another process waits for upd (other
 * keys go on; readers too). Updates of one dict therefore run one at a time.
 * A process killed inside its function left nothing half-written (its write
 * is one set or delete); whoever takes upd over from it clears the mark and
 * sets lost, and the next update_begin returns MPE_EOWNERDEAD: the caller
 * is told that an update was lost.
 *
 * Lock order: upd, then m, then the arena's lock. */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>

#include "mutex.h"

#define TOMB ((uint64_t)1)
#define REF_MASK (((uint64_t)1 << 48) - 1)
#define MIN_CAP 16

typedef struct entry {
  uint64_t hash;
  uint32_t klen, vlen;
  uint32_t kind, tag;
  _Atomic uint64_t num; /* INT or FLOAT bits */
  char bytes[];         /* the key, then the value's bytes */
} entry;

typedef struct table {
  uint64_t cap; /* a power of two */
  uint64_t live, used;
  _Atomic uint64_t slot[];
} table;

struct mpe_dict {
  mpe__obj hdr;
  mpe__mutex m;   /* the table */
  mpe__mutex upd; /* held by a process inside an update */
  _Atomic uint64_t upd_hash; /* the key being updated (0: none); set under m */
  _Atomic uint32_t lost;     /* an update died and nobody has been told yet */
  _Atomic uint64_t tab;      /* arena reference of the table */
  mpe_lock *lock;            /* the user's lock (mpe_dict_lock) */
};

MPE__DEFINE_REFS(dict, mpe_dict, MPE__KIND_DICT)

static table *tab_of(mpe_dict *d) { return mpe_deref(atomic_load(&d->tab)); }
static entry *ent(uint64_t s) { return mpe_deref(s & REF_MASK); }
static int is_entry(uint64_t s) { return s != 0 && s != TOMB; }

static uint64_t hash_key(const void *key, size_t klen) {
  static const unsigned char zero[16];
  const unsigned char *k = mpe__run_key();
  uint64_t h = mpe__siphash(k ? k : zero, key, klen);
  return h ? h : 1; /* 0 means "no key" in upd_hash */
}

static table *table_new(uint64_t cap) {
  table *t = mpe_alloc(sizeof *t + cap * sizeof(uint64_t));
  if (!t) return NULL;
  memset(t, 0, sizeof *t + cap * sizeof(uint64_t));
  t->cap = cap;
  return t;
}

/* Frees the entries of a table no process can reach any more, and it. */
static void table_free(table *t) {
  for (uint64_t i = 0; i < t->cap; i++)
    if (is_entry(t->slot[i])) mpe_free(ent(t->slot[i]));
  mpe_free(t);
}

/* Holding m: the slot of key (its index), or -1; *free_at gets the first
 * empty or TOMB slot on the way (where the key would go). */
static int64_t find(table *t, const void *key, size_t klen, uint64_t h, int64_t *free_at) {
  uint64_t mask = t->cap - 1, frag = h & ~REF_MASK;
  if (free_at) *free_at = -1;
  for (uint64_t i = h & mask, n = 0; n < t->cap; i = (i + 1) & mask, n++) {
    uint64_t s = atomic_load_explicit(&t->slot[i], memory_order_relaxed);
    if (s == 0) {
      if (free_at && *free_at < 0) *free_at = (int64_t)i;
      return -1;
    }
    if (s == TOMB) {
      if (free_at && *free_at < 0) *free_at = (int64_t)i;
      continue;
    }
    if ((s & ~REF_MASK) != frag) continue;
    entry *e = ent(s);
    if (e->hash == h && e->klen == klen && memcmp(e->bytes, key, klen) == 0) return (int64_t)i;
  }
  return -1;
}

/* Holding m after a holder died: the counts may be one off; recount. */
static void repair(mpe_dict *d) {
  table *t = tab_of(d);
  uint64_t live = 0, used = 0;
  for (uint64_t i = 0; i < t->cap; i++) {
    uint64_t s = atomic_load(&t->slot[i]);
    live += is_entry(s);
    used += s != 0;
  }
  t->live = live;
  t->used = used;
}

static void lock_table(mpe_dict *d) {
  int rc = mpe__mutex_lock(&d->m, NULL, 0);
  if (rc == MPE_EOWNERDEAD) repair(d);
  else MPE__CHECK(rc == 0);
}

/* Holding m: rebuilds the table with room for one more entry (grown when
 * half of it is live, else cleaned of tombstones). Commits with the store to
 * tab; the old table is freed (its entries moved). */
static int rebuild(mpe_dict *d) {
  table *t = tab_of(d);
  uint64_t cap = MIN_CAP;
  while (cap < (t->live + 1) * 4) cap *= 2;
  table *n = table_new(cap);
  if (!n) return -ENOMEM;
  for (uint64_t i = 0; i < t->cap; i++) {
    uint64_t s = t->slot[i];
    if (!is_entry(s)) continue;
    uint64_t j = ent(s)->hash & (cap - 1);
    while (n->slot[j]) j = (j + 1) & (cap - 1);
    n->slot[j] = s;
  }
  n->live = n->used = t->live;
  atomic_store(&d->tab, mpe_ref(n)); /* the commit */
  mpe_free(t);
  return 0;
}

int mpe_dict_new(mpe_dict **out) {
  mpe_dict *d = mpe__obj_new(sizeof *d, MPE__KIND_DICT);
  if (!d) return mpe_initialized() ? -ENOMEM : MPE_ENOINIT;
  table *t = table_new(MIN_CAP);
  int rc = t ? mpe_lock_new(&d->lock, 1) : -ENOMEM;
  if (rc < 0) {
    mpe_free(t);
    mpe_free(d);
    return rc;
  }
  mpe__ledger_note(d->lock, -1); /* the dict holds this reference, not this process */
  mpe__mutex_init(&d->m);
  mpe__mutex_init(&d->upd);
  atomic_init(&d->tab, mpe_ref(t));
  *out = d;
  return 0;
}

void mpe_dict_free(mpe_dict *d) {
  if (!d || !mpe__obj_release(d)) return;
  table_free(tab_of(d));
  mpe_lock_free(d->lock);
  mpe_free(d);
}

mpe_lock *mpe_dict_lock(mpe_dict *d) { return d->lock; }

size_t mpe_dict_len(mpe_dict *d) {
  lock_table(d);
  size_t n = (size_t)tab_of(d)->live;
  mpe__mutex_unlock(&d->m);
  return n;
}

void mpe_dval_done(mpe_dval *v) {
  if (v->block) mpe_free(v->block);
  v->block = NULL;
  v->kind = MPE_DICT_NONE;
  v->data = NULL;
  v->len = 0;
}

void mpe_dval_free(mpe_dval *v) {
  mpe_dval_done(v);
  free(v->buf);
  v->buf = NULL;
  v->cap = 0;
}

static void num_out(const entry *e, mpe_dval *v) {
  uint64_t u = atomic_load_explicit((_Atomic uint64_t *)&e->num, memory_order_relaxed);
  v->kind = (int)e->kind;
  v->tag = e->tag;
  v->i = (int64_t)u;
  memcpy(&v->f, &u, sizeof v->f);
  v->data = NULL;
  v->len = 0;
}

/* Hands the unlinked entry e to v (the caller frees it with mpe_dval_done),
 * or frees it when v is NULL. */
static void hand_over(entry *e, mpe_dval *v) {
  if (!v) {
    mpe_free(e);
    return;
  }
  mpe_dval_done(v);
  num_out(e, v);
  if (e->kind == MPE_DICT_BYTES) {
    v->data = e->bytes + e->klen;
    v->len = e->vlen;
  }
  v->block = e;
}

/* Holding m: 1 if another live process is inside an update of this key
 * (the caller must wait for it: wait_update). */
static int busy(mpe_dict *d, uint64_t h) {
  uint32_t o = mpe__mutex_owner(&d->upd);
  if (!o || o == (uint32_t)mpe__self_pid()) return 0;
  uint64_t u = atomic_load(&d->upd_hash);
  return u != 0 && (h == 0 || u == h); /* h 0: any key */
}

/* Not holding m: waits until the update in progress ends (or its process is
 * found dead, which this process then reports through lost). */
static int wait_update(mpe_dict *d) {
  int rc = mpe__mutex_lock(&d->upd, NULL, 1);
  if (rc == MPE_EINTR) return rc;
  if (rc == MPE_EOWNERDEAD) {
    lock_table(d);
    atomic_store(&d->upd_hash, 0);
    atomic_store(&d->lost, 1);
    mpe__mutex_unlock(&d->m);
  }
  mpe__mutex_unlock(&d->upd);
  return 0;
}

/* Takes m for a change of the key of hash h (0: of every key), once no
 * other process is updating it: 0 or MPE_EINTR. */
static int lock_for_write(mpe_dict *d, uint64_t h) {
  for (;;) {
    lock_table(d);
    if (!busy(d, h)) return 0;
    mpe__mutex_unlock(&d->m);
    int rc = wait_update(d);
    if (rc < 0) return rc;
  }
}

static entry *entry_new(const void *key, size_t klen, uint64_t h, const mpe_dval *v) {
  size_t vlen = v->kind == MPE_DICT_BYTES ? v->len : 0;
  if (klen > UINT32_MAX || vlen > UINT32_MAX) return NULL;
  entry *e = mpe_alloc(sizeof *e + klen + vlen);
  if (!e) return NULL;
  e->hash = h;
  e->klen = (uint32_t)klen;
  e->vlen = (uint32_t)vlen;
  e->kind = (uint32_t)v->kind;
  e->tag = v->tag;
  uint64_t u = (uint64_t)v->i;
  if (v->kind == MPE_DICT_FLOAT) memcpy(&u, &v->f, sizeof u);
  atomic_init(&e->num, v->kind == MPE_DICT_BYTES ? 0 : u);
  memcpy(e->bytes, key, klen);
  if (vlen) memcpy(e->bytes + klen, v->data, vlen);
  return e;
}

/* Holding m: puts e at the key's place: slot i if found (i >= 0), else
 * the free slot at (from find; -1 if none). Returns the replaced entry or
 * NULL; -ENOMEM in *rc if the table could not grow. */
static entry *install(mpe_dict *d, entry *e, int64_t i, int64_t at, int *rc) {
  table *t = tab_of(d);
  uint64_t s = mpe_ref(e) | (e->hash & ~REF_MASK);
  *rc = 0;
  if (i >= 0) {
    entry *old = ent(t->slot[i]);
    atomic_store(&t->slot[i], s); /* the commit */
    return old;
  }
  if (t->used + 1 > t->cap / 2 && (at < 0 || t->slot[at] == 0)) {
    if ((*rc = rebuild(d)) < 0) return NULL;
    t = tab_of(d);
    find(t, e->bytes, e->klen, e->hash, &at);
  }
  MPE__CHECK(at >= 0); /* at most half full: there is room */
  uint64_t j = (uint64_t)at;
  int fresh = t->slot[j] == 0;
  atomic_store(&t->slot[j], s); /* the commit */
  t->live++;
  t->used += fresh;
  return NULL;
}

int mpe_dict_get(mpe_dict *d, const void *key, size_t klen, mpe_dval *out) {
  uint64_t h = hash_key(key, klen);
  mpe_dval_done(out);
  for (;;) {
    lock_table(d);
    int64_t i = find(tab_of(d), key, klen, h, NULL);
    if (i < 0) {
      mpe__mutex_unlock(&d->m);
      return 0;
    }
    entry *e = ent(tab_of(d)->slot[i]);
    num_out(e, out);
    if (e->kind != MPE_DICT_BYTES) break;
    if (e->vlen <= out->cap) {
      memcpy(out->buf, e->bytes + e->klen, e->vlen);
      out->data = out->buf;
      out->len = e->vlen;
      break;
    }
    size_t need = e->vlen;
    mpe__mutex_unlock(&d->m); /* grown outside the lock, then looked up again */
    char *b = realloc(out->buf, need);
    if (!b) return -ENOMEM;
    out->buf = b;
    out->cap = need;
  }
  mpe__mutex_unlock(&d->m);
  return 1;
}

int mpe_dict_set(mpe_dict *d, const void *key, size_t klen, const mpe_dval *v, mpe_dval *old) {
  if (v->kind != MPE_DICT_INT && v->kind != MPE_DICT_FLOAT && v->kind != MPE_DICT_BYTES) return -EINVAL;
  uint64_t h = hash_key(key, klen);
  entry *e = entry_new(key, klen, h, v); /* made outside the lock */
  if (!e) return -ENOMEM;
  int rc = lock_for_write(d, h);
  if (rc < 0) {
    mpe_free(e);
    return rc;
  }
  int64_t at, i = find(tab_of(d), key, klen, h, &at);
  entry *was = NULL;
  if (i >= 0 && v->kind != MPE_DICT_BYTES && ent(tab_of(d)->slot[i])->kind == (uint32_t)v->kind) {
    was = ent(tab_of(d)->slot[i]); /* a number over a number of its kind: in place */
    if (old) {
      mpe_dval_done(old);
      num_out(was, old);
    }
    atomic_store(&was->num, atomic_load(&e->num)); /* the commit */
    mpe__mutex_unlock(&d->m);
    mpe_free(e);
    return 1;
  }
  was = install(d, e, i, at, &rc);
  mpe__mutex_unlock(&d->m);
  if (rc < 0) {
    mpe_free(e);
    return rc;
  }
  if (!was) return 0;
  hand_over(was, old);
  return 1;
}

int mpe_dict_delete(mpe_dict *d, const void *key, size_t klen, mpe_dval *old) {
  uint64_t h = hash_key(key, klen);
  int rc = lock_for_write(d, h);
  if (rc < 0) return rc;
  table *t = tab_of(d);
  int64_t i = find(t, key, klen, h, NULL);
  if (i < 0) {
    mpe__mutex_unlock(&d->m);
    return 0;
  }
  entry *was = ent(t->slot[i]);
  atomic_store(&t->slot[i], TOMB); /* the commit */
  t->live--;
  mpe__mutex_unlock(&d->m);
  hand_over(was, old);
  return 1;
}

int mpe_dict_incr(mpe_dict *d, const void *key, size_t klen, const mpe_dval *delta, mpe_dval *now) {
  if (delta->kind != MPE_DICT_INT && delta->kind != MPE_DICT_FLOAT) return -EINVAL;
  uint64_t h = hash_key(key, klen);
  int rc = lock_for_write(d, h);
  if (rc < 0) return rc;
  table *t = tab_of(d);
  int64_t at, i = find(t, key, klen, h, &at);
  entry *e = i >= 0 ? ent(t->slot[i]) : NULL;
  mpe_dval sum = *delta;
  sum.tag = 0;
  sum.data = NULL;
  sum.len = 0;
  if (e && e->kind == MPE_DICT_BYTES) {
    mpe__mutex_unlock(&d->m);
    return -EINVAL;
  }
  if (e) {
    mpe_dval cur;
    num_out(e, &cur);
    if (cur.kind == MPE_DICT_INT && delta->kind == MPE_DICT_INT) {
      sum.i = (int64_t)((uint64_t)cur.i + (uint64_t)delta->i); /* wraps, as Lua's integers do */
    } else {
      sum.kind = MPE_DICT_FLOAT;
      sum.f = (cur.kind == MPE_DICT_INT ? (double)cur.i : cur.f) +
              (delta->kind == MPE_DICT_INT ? (double)delta->i : delta->f);
    }
  }
  entry *was = NULL;
  if (e && (uint32_t)sum.kind == e->kind) {
    uint64_t u = (uint64_t)sum.i;
    if (sum.kind == MPE_DICT_FLOAT) memcpy(&u, &sum.f, sizeof u);
    atomic_store(&e->num, u); /* the commit */
  } else {
    entry *n = entry_new(key, klen, h, &sum);
    if (n) was = install(d, n, i, at, &rc);
    else rc = -ENOMEM;
    if (rc < 0) {
      mpe__mutex_unlock(&d->m);
      mpe_free(n);
      return rc;
    }
  }
  mpe__mutex_unlock(&d->m);
  if (was) mpe_free(was);
  if (now) {
    mpe_dval_done(now);
    now->kind = sum.kind;
    now->i = sum.i;
    now->f = sum.f;
  }
  return 0;
}

int mpe_dict_clear(mpe_dict *d, mpe_dict_iter *gone) {
  table *n = table_new(MIN_CAP);
  if (!n) return -ENOMEM;
  int rc = lock_for_write(d, 0);
  if (rc < 0) {
    mpe_free(n);
    return rc;
  }
  table *t = tab_of(d);
  atomic_store(&d->tab, mpe_ref(n)); /* the commit */
  mpe__mutex_unlock(&d->m);
  if (!gone) {
    table_free(t);
    return 0;
  }
  mpe_dict_iter_done(gone);
  gone->table = t;
  gone->pos = 0;
  return 0;
}

/* ------------------------------------------------------------ iteration */

/* A snapshot record: klen, vlen, kind, tag (4 x u32), num (u64), key,
 * value, padded to 8 bytes. */
#define SNAP_HDR 24
static size_t pad8(size_t n) { return (n + 7) & ~(size_t)7; }

int mpe_dict_items(mpe_dict *d, mpe_dict_iter *it, int values) {
  mpe_dict_iter_done(it);
  for (;;) {
    lock_table(d);
    table *t = tab_of(d);
    size_t need = 0;
    for (uint64_t i = 0; i < t->cap; i++) {
      uint64_t s = t->slot[i];
      if (is_entry(s)) need += SNAP_HDR + pad8(ent(s)->klen + (values ? ent(s)->vlen : 0));
    }
    if (need <= it->cap) {
      char *p = it->buf;
      for (uint64_t i = 0; i < t->cap; i++) {
        uint64_t s = t->slot[i];
        if (!is_entry(s)) continue;
        entry *e = ent(s);
        uint32_t hdr[4] = {e->klen, values ? e->vlen : 0, e->kind, e->tag};
        uint64_t num = atomic_load(&e->num);
        memcpy(p, hdr, sizeof hdr);
        memcpy(p + 16, &num, 8);
        memcpy(p + SNAP_HDR, e->bytes, hdr[0] + hdr[1]);
        p += SNAP_HDR + pad8(hdr[0] + hdr[1]);
      }
      it->len = need;
      mpe__mutex_unlock(&d->m);
      return 0;
    }
    mpe__mutex_unlock(&d->m); /* grown outside the lock, then taken again */
    char *b = realloc(it->buf, need);
    if (!b) return -ENOMEM;
    it->buf = b;
    it->cap = need;
  }
}

int mpe_dict_iter_next(mpe_dict_iter *it, const void **key, size_t *klen, mpe_dval *v) {
  mpe_dval_done(v);
  if (it->table) {
    table *t = it->table;
    while (it->pos < t->cap && !is_entry(t->slot[it->pos])) it->pos++;
    if (it->pos == t->cap) return 0;
    entry *e = ent(t->slot[it->pos++]);
    num_out(e, v);
    if (e->kind == MPE_DICT_BYTES) {
      v->data = e->bytes + e->klen;
      v->len = e->vlen;
    }
    *key = e->bytes;
    *klen = e->klen;
    return 1;
  }
  if (it->pos >= it->len) return 0;
  const char *p = it->buf + it->pos;
  uint32_t hdr[4];
  uint64_t num;
  memcpy(hdr, p, sizeof hdr);
  memcpy(&num, p + 16, 8);
  v->kind = (int)hdr[2];
  v->tag = hdr[3];
  v->i = (int64_t)num;
  memcpy(&v->f, &num, sizeof v->f);
  v->data = p + SNAP_HDR + hdr[0];
  v->len = hdr[1];
  *key = p + SNAP_HDR;
  *klen = hdr[0];
  it->pos += SNAP_HDR + pad8(hdr[0] + hdr[1]);
  return 1;
}

void mpe_dict_iter_done(mpe_dict_iter *it) {
  if (it->table) table_free(it->table);
  it->table = NULL;
  it->pos = it->len = 0;
}

void mpe_dict_iter_free(mpe_dict_iter *it) {
  mpe_dict_iter_done(it);
  free(it->buf);
  it->buf = NULL;
  it->cap = 0;
}

/* --------------------------------------------------------------- update */

int mpe_dict_update_begin(mpe_dict *d, const void *key, size_t klen, mpe_dval *old) {
  if (mpe__mutex_owner(&d->upd) == (uint32_t)mpe__self_pid()) return -EDEADLK;
  int rc = mpe__mutex_lock(&d->upd, NULL, 1);
  if (rc == MPE_EINTR) return rc;
  int died = rc == MPE_EOWNERDEAD;
  uint64_t h = hash_key(key, klen);
  lock_table(d);
  atomic_store(&d->upd_hash, h); /* writers of this key wait from now on */
  died |= (int)atomic_exchange(&d->lost, 0);
  mpe__mutex_unlock(&d->m);
  rc = mpe_dict_get(d, key, klen, old);
  if (rc < 0) {
    mpe_dict_update_end(d);
    return rc;
  }
  if (rc == 0) old->kind = MPE_DICT_NONE;
  return died ? MPE_EOWNERDEAD : 0;
}

void mpe_dict_update_end(mpe_dict *d) {
  if (mpe__mutex_owner(&d->upd) != (uint32_t)mpe__self_pid()) return;
  lock_table(d);
  atomic_store(&d->upd_hash, 0);
  mpe__mutex_unlock(&d->m);
  mpe__mutex_unlock(&d->upd);
}

int mpe_dict_updating(mpe_dict *d) {
  return mpe__mutex_owner(&d->upd) == (uint32_t)mpe__self_pid();
}

int mpe_dict_check(mpe_dict *d) {
  lock_table(d);
  table *t = tab_of(d);
  uint64_t live = 0, used = 0;
  int ok = (t->cap & (t->cap - 1)) == 0 && t->cap >= MIN_CAP;
  for (uint64_t i = 0; ok && i < t->cap; i++) {
    uint64_t s = t->slot[i];
    used += s != 0;
    if (!is_entry(s)) continue;
    live++;
    entry *e = ent(s);
    ok = e->hash == hash_key(e->bytes, e->klen) && (s & ~REF_MASK) == (e->hash & ~REF_MASK) &&
         (e->kind == MPE_DICT_INT || e->kind == MPE_DICT_FLOAT || e->kind == MPE_DICT_BYTES) &&
         find(t, e->bytes, e->klen, e->hash, NULL) == (int64_t)i;
  }
  ok = ok && live == t->live && used == t->used && used <= t->cap / 2 + 1;
  mpe__mutex_unlock(&d->m);
  return ok ? 0 : MPE_ECORRUPT;
}
