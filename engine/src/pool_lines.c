/* pool_lines.c - the parent's lines: blocks of inputs and the pending line
 * of spans going in, kept replies and the parent's outcomes coming out.
 *
 * A submit is one block (its lengths, then its inputs end to end) and one
 * span in the line, however many tasks it holds; a batch takes spans off
 * the front (a span split where the batch ends). A reply is copied whole
 * into a buffer and its results are read from there, ids from the spans
 * its batch was cut from. Blocks and reply buffers are kept for reuse
 * (their pages are there; fresh ones would fault in, a cost that shows in
 * every big map). No scheduling here: pool.c decides what goes where. */
#define _GNU_SOURCE
#include <errno.h>
#include <stddef.h>
#include <string.h>

#include "pool_parent.h"

/* The lines' capacities are powers of two (16, then doubled): an index
 * wraps with a mask. */
static int grow(void **v, size_t *cap, size_t head, size_t len, size_t size) {
  size_t ncap = *cap ? 2 * *cap : 16;
  char *nv = malloc(ncap * size);
  if (!nv) return -ENOMEM;
  for (size_t i = 0; i < len; i++) memcpy(nv + i * size, (char *)*v + ((head + i) & (*cap - 1)) * size, size);
  free(*v);
  *v = nv;
  *cap = ncap;
  return 0;
}

int mpe__pend_reserve(mpe_pool *p, size_t more) {
  while (p->pcap - p->plen < more) {
    if (grow((void **)&p->pend, &p->pcap, p->phead, p->plen, sizeof *p->pend) < 0) return -ENOMEM;
    p->phead = 0;
  }
  return 0;
}

/* Back to the front of the line (room reserved by the caller or freed by
 * the dispatch that took it). */
void mpe__pend_front(mpe_pool *p, const span *s) {
  p->phead = (p->phead + p->pcap - 1) & (p->pcap - 1);
  p->pend[p->phead] = *s;
  p->plen++;
  p->pending += s->n;
}

/* Bytes of the inputs of tasks from .. from + n - 1 of b. */
static size_t bytes_of(const block *b, size_t from, size_t n) {
  size_t s = 0;
  for (size_t i = 0; i < n; i++) s += b->lens[from + i];
  return s;
}

/* Takes the first n tasks of the front span; *nb: their input bytes. */
span mpe__pend_take(mpe_pool *p, size_t n, size_t *nb) {
  span *f = mpe__pend_at(p, 0), s = *f;
  *nb = bytes_of(f->blk, f->from, n);
  if (n < f->n) {
    s.n = n;
    f->off += *nb;
    f->from += n;
    f->n -= n;
  } else {
    p->phead = (p->phead + 1) & (p->pcap - 1);
    p->plen--;
  }
  p->pending -= s.n;
  return s;
}

/* n tasks of blk have their results (or are dropped): the last frees it,
 * or keeps it for a later submit (its pages are there; a fresh block's
 * would fault in, a cost that shows in every big map). */
void mpe__drop_input(mpe_pool *p, block *blk, size_t n) {
  if (!blk || (blk->left -= n) > 0) return;
  if (p->nblks < BLOCKS && p->kept_bytes + blk->cap <= BLOCK_BYTES) {
    p->blks[p->nblks++] = blk;
    p->kept_bytes += blk->cap;
  } else {
    free(blk);
  }
}

/* A block of at least need bytes: a kept one that is not much bigger. */
static block *block_get(mpe_pool *p, size_t need) {
  for (size_t i = p->nblks; i-- > 0;) {
    block *b = p->blks[i];
    if (b->cap >= need && need >= b->cap / 4) {
      p->blks[i] = p->blks[--p->nblks];
      p->kept_bytes -= b->cap;
      return b;
    }
  }
  block *b = malloc(need);
  if (b) b->cap = need;
  return b;
}

/* An outcome the parent decided for task id of blk. */
int mpe__finish(mpe_pool *p, block *blk, uint64_t id, int status, int code) {
  if (p->dlen == p->dcap) {
    if (grow((void **)&p->done, &p->dcap, p->dhead, p->dlen, sizeof *p->done) < 0) return -ENOMEM;
    p->dhead = 0;
  }
  pid_t pid = status == MPE_EDIED || status == MPE_ETIMEDOUT ? p->gone_pid : 0;
  p->done[(p->dhead + p->dlen++) & (p->dcap - 1)] =
      (mpe_task_result){.id = id, .status = status, .code = code, .pid = pid};
  mpe__drop_input(p, blk, 1);
  p->unfinished--;
  return 0;
}

/* Every task of s fails with status (none lost: what has no room is dropped
 * and no longer counted). */
void mpe__finish_span(mpe_pool *p, const span *s, int status) {
  for (size_t i = 0; i < s->n; i++)
    if (mpe__finish(p, s->blk, s->blk->first + s->from + i, status, 0) < 0) {
      mpe__drop_input(p, s->blk, 1);
      p->unfinished--;
    }
}

/* A reply buffer of at least len bytes: a spare if one is big enough. */
static char *buf_get(mpe_pool *p, size_t len, size_t *cap) {
  for (size_t i = p->nspares; i-- > 0;)
    if (p->spares[i].cap >= len) {
      spare s = p->spares[i];
      p->spares[i] = p->spares[--p->nspares];
      *cap = s.cap;
      return s.buf;
    }
  for (*cap = 4096; *cap < len && *cap <= SIZE_MAX / 2;) *cap *= 2; /* sizes that fit again */
  if (*cap < len) *cap = len;
  return malloc(*cap);
}

static void buf_put(mpe_pool *p, char *buf, size_t cap) {
  size_t least = 0; /* a full list keeps the bigger buffers */
  for (size_t i = 1; i < p->nspares; i++)
    if (p->spares[i].cap < p->spares[least].cap) least = i;
  if (p->nspares == SPARES && p->spares[least].cap < cap) {
    free(p->spares[least].buf);
    p->spares[least] = p->spares[--p->nspares];
  }
  if (p->nspares < SPARES) p->spares[p->nspares++] = (spare){buf, cap};
  else free(buf);
}

/* The caller is done with what the last collect gave: its buffers go back. */
void mpe__recycle(mpe_pool *p) {
  if (p->retired.buf) buf_put(p, p->retired.buf, p->retired.cap);
  p->retired.buf = NULL;
}

/* The part of b's span j that holds its tasks from .. to - 1, in *t: 0 if
 * none does. */
int mpe__part_of(const batch *b, size_t j, size_t base, size_t from, size_t to, span *t) {
  const span *s = &b->seg[j];
  if (from >= to || to <= base || from >= base + s->n) return 0; /* none: no empty span */
  size_t lo = from > base ? from - base : 0, hi = to < base + s->n ? to - base : s->n;
  *t = (span){s->blk, s->from + lo, hi - lo, s->off + bytes_of(s->blk, s->from, lo), 0};
  return 1;
}

/* Keeps the results of tasks b->done .. + n - 1, at data[len] (checked). */
int mpe__keep_reply(mpe_pool *p, batch *b, const char *data, size_t len, size_t n, int full) {
  size_t runs = 0, base = 0;
  span t;
  for (size_t j = 0; j < b->nseg; base += b->seg[j++].n) runs += mpe__part_of(b, j, base, b->done, b->done + n, &t);
  if (p->klen == p->kcap) {
    if (grow((void **)&p->kp, &p->kcap, p->khead, p->klen, sizeof *p->kp) < 0) return -ENOMEM;
    p->khead = 0;
  }
  size_t at = (len + 7) & ~(size_t)7, cap;
  char *buf = buf_get(p, at + runs * sizeof(idrun), &cap);
  if (!buf) return -ENOMEM;
  memcpy(buf, data, len);
  kept *x = &p->kp[(p->khead + p->klen++) & (p->kcap - 1)];
  *x = (kept){.buf = buf, .cap = cap, .left = n, .ids = (idrun *)(buf + at), .full = full};
  runs = base = 0;
  for (size_t j = 0; j < b->nseg; base += b->seg[j++].n)
    if (mpe__part_of(b, j, base, b->done, b->done + n, &t)) {
      x->ids[runs++] = (idrun){t.blk->first + t.from, t.n};
      mpe__drop_input(p, t.blk, t.n);
    }
  return 0;
}

/* A block for n tasks (lens[i] bytes each, total in all), its inputs unset. */
int mpe__new_block(mpe_pool *p, const size_t *lens, size_t n, block **out, size_t *total) {
  *out = NULL;
  if (p->broken) return MPE_EBROKEN;
  if (p->state != RUN) return MPE_ECLOSED;
  *total = 0;
  for (size_t i = 0; i < n; i++) {
    if (lens[i] > UINT32_MAX || *total + lens[i] < *total) return -EINVAL;
    *total += lens[i];
  }
  if (!n) return 0;
  if (n > (SIZE_MAX - sizeof(block) - *total) / sizeof(uint32_t)) return -ENOMEM;
  size_t need = sizeof(block) + n * sizeof(uint32_t) + *total;
  block *b = block_get(p, need);
  if (!b) return -ENOMEM;
  b->left = n;
  b->in = (char *)(b->lens + n);
  for (size_t i = 0; i < n; i++) b->lens[i] = (uint32_t)lens[i];
  *out = b;
  return 0;
}

/* The next result into *r (copy: its data malloc'ed): 1, 0 when none is
 * here, -ENOMEM. A reply whose last result this was is retired: its buffer
 * is reused only at the next collect. */
int mpe__next_result(mpe_pool *p, mpe_task_result *r, int copy) {
  if (p->dlen) {
    *r = p->done[p->dhead];
    p->dhead = (p->dhead + 1) & (p->dcap - 1);
    p->dlen--;
    p->outstanding--;
    return 1;
  }
  if (!p->klen) return 0;
  kept *x = &p->kp[p->khead];
  const char *q = x->buf + x->pos;
  if (x->full) {
    mpe__result_full f;
    memcpy(&f, q, sizeof f);
    *r = (mpe_task_result){.status = f.status, .code = f.code, .len = f.len, .pid = f.pid};
    q += sizeof f;
  } else {
    mpe__result_hdr h;
    memcpy(&h, q, sizeof h);
    *r = (mpe_task_result){.status = h.code ? MPE_ETASK : 0, .code = h.code, .len = h.len};
    q += sizeof h;
  }
  if (r->len) {
    r->data = copy ? malloc(r->len) : (void *)q;
    if (!r->data) return -ENOMEM;
    if (copy) memcpy(r->data, q, r->len);
  }
  x->pos = (size_t)(q - x->buf) + r->len;
  r->id = x->ids[x->at].id + x->k;
  if (++x->k == x->ids[x->at].n) x->at++, x->k = 0;
  p->outstanding--;
  if (--x->left == 0) {
    p->retired = (spare){x->buf, x->cap};
    p->khead = (p->khead + 1) & (p->kcap - 1);
    p->klen--;
  }
  return 1;
}

void mpe__lines_free(mpe_pool *p) {
  for (size_t i = 0; i < p->plen; i++) mpe__drop_input(p, mpe__pend_at(p, i)->blk, mpe__pend_at(p, i)->n);
  for (size_t i = 0; i < p->klen; i++) free(p->kp[(p->khead + i) & (p->kcap - 1)].buf);
  mpe__recycle(p);
  for (size_t i = 0; i < p->nspares; i++) free(p->spares[i].buf);
  for (size_t i = 0; i < p->nblks; i++) free(p->blks[i]);
  free(p->pend);
  free(p->done);
  free(p->kp);
}
