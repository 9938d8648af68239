/* test_dict.c - the engine's dict: values of every kind, growth and
 * tombstones, snapshots, clear, incr and update across processes, and
 * processes killed inside every call (invariants checked after each). */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "check.h"

static mpe_dict *shared;

static mpe_dval num(int64_t i) {
  mpe_dval v = {0};
  v.kind = MPE_DICT_INT;
  v.i = i;
  return v;
}

static mpe_dval bytes(const char *s, uint32_t tag) {
  mpe_dval v = {0};
  v.kind = MPE_DICT_BYTES;
  v.data = s;
  v.len = strlen(s);
  v.tag = tag;
  return v;
}

static int set_s(mpe_dict *d, const char *k, mpe_dval v) { return mpe_dict_set(d, k, strlen(k), &v, NULL); }

TEST(test_values_of_every_kind) {
  mpe_dict *d;
  CHECK_RC(mpe_dict_new(&d), 0);
  mpe_dval out = {0}, old = {0};
  CHECK_RC(mpe_dict_get(d, "a", 1, &out), 0);
  CHECK_RC(set_s(d, "a", num(5)), 0);
  CHECK_RC(mpe_dict_get(d, "a", 1, &out), 1);
  CHECK(out.kind == MPE_DICT_INT && out.i == 5);
  mpe_dval f = {0};
  f.kind = MPE_DICT_FLOAT;
  f.f = 2.5;
  CHECK_RC(mpe_dict_set(d, "a", 1, &f, &old), 1); /* a float over an int: a new entry */
  CHECK(old.kind == MPE_DICT_INT && old.i == 5 && old.block);
  CHECK_RC(mpe_dict_get(d, "a", 1, &out), 1);
  CHECK(out.kind == MPE_DICT_FLOAT && out.f == 2.5);
  mpe_dval b = bytes("hello world", 7);
  CHECK_RC(mpe_dict_set(d, "a", 1, &b, &old), 1);
  CHECK(old.kind == MPE_DICT_FLOAT && old.f == 2.5);
  CHECK_RC(mpe_dict_get(d, "a", 1, &out), 1);
  CHECK(out.kind == MPE_DICT_BYTES && out.tag == 7 && out.len == 11 && memcmp(out.data, "hello world", 11) == 0);
  CHECK_RC(mpe_dict_incr(d, "a", 1, &f, NULL), -EINVAL); /* bytes are not a number */
  CHECK_RC(mpe_dict_delete(d, "a", 1, &old), 1);
  CHECK(old.kind == MPE_DICT_BYTES && old.len == 11 && memcmp(old.data, "hello world", 11) == 0);
  CHECK_RC(mpe_dict_delete(d, "a", 1, &old), 0);
  CHECK(mpe_dict_len(d) == 0);
  /* a key of zero bytes, and keys differing only after a NUL */
  CHECK_RC(mpe_dict_set(d, "", 0, &f, NULL), 0);
  CHECK_RC(mpe_dict_set(d, "x\0y", 3, &b, NULL), 0);
  CHECK_RC(mpe_dict_set(d, "x\0z", 3, &f, NULL), 0);
  CHECK(mpe_dict_len(d) == 3);
  CHECK_RC(mpe_dict_get(d, "x\0y", 3, &out), 1);
  CHECK(out.kind == MPE_DICT_BYTES);
  /* incr: missing counts as 0; int + int stays int and wraps; a float makes a float */
  mpe_dval one = num(1), now = {0};
  CHECK_RC(mpe_dict_incr(d, "n", 1, &one, &now), 0);
  CHECK(now.kind == MPE_DICT_INT && now.i == 1);
  mpe_dval big = num(INT64_MAX);
  CHECK_RC(mpe_dict_incr(d, "n", 1, &big, &now), 0);
  CHECK(now.kind == MPE_DICT_INT && now.i == INT64_MIN);
  CHECK_RC(mpe_dict_incr(d, "n", 1, &f, &now), 0);
  CHECK(now.kind == MPE_DICT_FLOAT && now.f == (double)INT64_MIN + 2.5);
  CHECK_RC(mpe_dict_get(d, "n", 1, &out), 1);
  CHECK(out.kind == MPE_DICT_FLOAT);
  CHECK_RC(mpe_dict_check(d), 0);
  mpe_dval_free(&out);
  mpe_dval_free(&old);
  mpe_dict_free(d);
}

TEST(test_growth_tombstones_snapshot_clear) {
  size_t used0;
  mpe_arena_stats(&used0, NULL);
  mpe_dict *d;
  CHECK_RC(mpe_dict_new(&d), 0);
  char k[32];
  for (int i = 0; i < 5000; i++) {
    snprintf(k, sizeof k, "key%d", i);
    CHECK_RC(set_s(d, k, i % 2 ? num(i) : bytes(k, 1)), 0);
  }
  CHECK(mpe_dict_len(d) == 5000);
  for (int i = 0; i < 5000; i += 2) { /* tombstones everywhere */
    snprintf(k, sizeof k, "key%d", i);
    CHECK_RC(mpe_dict_delete(d, k, strlen(k), NULL), 1);
  }
  CHECK_RC(mpe_dict_check(d), 0);
  for (int round = 0; round < 20; round++) /* churn over tombstones: the table stays bounded */
    for (int i = 0; i < 500; i++) {
      snprintf(k, sizeof k, "t%d", i);
      CHECK_RC(set_s(d, k, num(i)), 0);
      CHECK_RC(mpe_dict_delete(d, k, strlen(k), NULL), 1);
    }
  CHECK_RC(mpe_dict_check(d), 0);
  mpe_dict_iter it = {0};
  mpe_dval v = {0};
  const void *key;
  size_t klen, n = 0;
  int64_t sum = 0;
  CHECK_RC(mpe_dict_items(d, &it, 1), 0);
  while (mpe_dict_iter_next(&it, &key, &klen, &v)) {
    CHECK(v.kind == MPE_DICT_INT && klen > 3 && memcmp(key, "key", 3) == 0);
    n++;
    sum += v.i;
  }
  CHECK(n == 2500 && sum == 2500LL * 2500);
  CHECK_RC(mpe_dict_clear(d, &it), 0);
  CHECK(mpe_dict_len(d) == 0);
  n = 0;
  while (mpe_dict_iter_next(&it, &key, &klen, &v)) n++;
  CHECK(n == 2500);
  mpe_dict_iter_free(&it);
  CHECK_RC(set_s(d, "after", num(1)), 0);
  CHECK_RC(mpe_dict_check(d), 0);
  mpe_dict_free(d);
  size_t used1;
  mpe_arena_stats(&used1, NULL);
  CHECK(used1 == used0); /* every entry, table and the lock went back */
}

enum { KEYS = 100, INCRS = 100000 };

static int incr_many(void *arg) {
  int seed = (int)(intptr_t)arg;
  mpe_dval one = num(1);
  char k[16];
  for (int i = 0; i < INCRS; i++) {
    snprintf(k, sizeof k, "k%d", (i * 7 + seed) % KEYS);
    if (mpe_dict_incr(shared, k, strlen(k), &one, NULL) != 0) return 1;
  }
  return 0;
}

TEST(test_incr_from_two_processes_is_exact) {
  CHECK_RC(mpe_dict_new(&shared), 0);
  mpe_process *p[2];
  for (int i = 0; i < 2; i++) CHECK_RC(mpe_process_spawn(&p[i], incr_many, (void *)(intptr_t)i, NULL), 0);
  int code;
  for (int i = 0; i < 2; i++) {
    CHECK_RC(mpe_process_wait(p[i], 60), 0);
    CHECK(mpe_process_exitcode(p[i], &code) == 1 && code == 0);
    mpe_process_free(p[i]);
  }
  mpe_dval v = {0};
  char k[16];
  for (int i = 0; i < KEYS; i++) {
    snprintf(k, sizeof k, "k%d", i);
    CHECK_RC(mpe_dict_get(shared, k, strlen(k), &v), 1);
    CHECK(v.kind == MPE_DICT_INT && v.i == 2 * INCRS / KEYS);
  }
  mpe_dict_free(shared);
}

enum { UPDATES = 3000 };

/* The read-modify-write of update, spelled out: a lost update would show. */
static int update_many(void *arg) {
  (void)arg;
  mpe_dval old = {0};
  for (int i = 0; i < UPDATES; i++) {
    int rc = mpe_dict_update_begin(shared, "c", 1, &old);
    if (rc != 0) return 1;
    mpe_dval n = num(old.kind == MPE_DICT_INT ? old.i + 1 : 1);
    if (mpe_dict_set(shared, "c", 1, &n, NULL) < 0) return 2;
    mpe_dict_update_end(shared);
    n = num(1);
    if (mpe_dict_incr(shared, "c", 1, &n, NULL) != 0) return 3; /* writers of "c" wait for updates */
  }
  mpe_dval_free(&old);
  return 0;
}

TEST(test_update_is_atomic_under_contention) {
  CHECK_RC(mpe_dict_new(&shared), 0);
  mpe_process *p[3];
  for (int i = 0; i < 3; i++) CHECK_RC(mpe_process_spawn(&p[i], update_many, NULL, NULL), 0);
  int code;
  for (int i = 0; i < 3; i++) {
    CHECK_RC(mpe_process_wait(p[i], 60), 0);
    CHECK(mpe_process_exitcode(p[i], &code) == 1 && code == 0);
    mpe_process_free(p[i]);
  }
  mpe_dval v = {0};
  CHECK_RC(mpe_dict_get(shared, "c", 1, &v), 1);
  CHECK(v.kind == MPE_DICT_INT && v.i == 3 * 2 * UPDATES);
  mpe_dict_free(shared);
}

static mpe_pipe *ready_tx;

static int die_inside_update(void *arg) {
  (void)arg;
  mpe_dval old = {0};
  if (mpe_dict_update_begin(shared, "k", 1, &old) != 0) return 1;
  mpe_pipe_send(ready_tx, "in", 2, 0, NULL, 0);
  for (;;) mpe_sleep(10, NULL);
}

TEST(test_killed_inside_update_is_reported_and_changes_nothing) {
  CHECK_RC(mpe_dict_new(&shared), 0);
  CHECK_RC(set_s(shared, "k", num(41)), 0);
  mpe_pipe *rx;
  CHECK_RC(mpe_pipe_new(&rx, &ready_tx, 0), 0);
  mpe_spawn_options o = {0};
  o.keep = &ready_tx;
  o.nkeep = 1;
  mpe_process *p;
  CHECK_RC(mpe_process_spawn(&p, die_inside_update, NULL, &o), 0);
  mpe_msg m = {0};
  CHECK_RC(mpe_pipe_recv(rx, 30, &m), 0);
  mpe_msg_clear(&m);
  /* inside its update: other keys and reads go on */
  CHECK_RC(set_s(shared, "other", num(1)), 0);
  mpe_dval v = {0};
  CHECK_RC(mpe_dict_get(shared, "k", 1, &v), 1);
  CHECK(v.i == 41);
  CHECK_RC(mpe_process_signal(p, SIGKILL), 0);
  CHECK_RC(mpe_process_wait(p, 10), 0);
  mpe_process_free(p);
  /* a writer of the key takes the dead update over; the next update is told */
  mpe_dval one = num(1);
  CHECK_RC(mpe_dict_incr(shared, "k", 1, &one, &v), 0);
  CHECK(v.i == 42);
  CHECK_RC(mpe_dict_update_begin(shared, "k", 1, &v), MPE_EOWNERDEAD);
  CHECK(v.kind == MPE_DICT_INT && v.i == 42);
  CHECK_RC(mpe_dict_update_begin(shared, "k", 1, &v), -EDEADLK);
  mpe_dict_update_end(shared);
  CHECK_RC(mpe_dict_update_begin(shared, "k", 1, &v), 0); /* told once */
  mpe_dict_update_end(shared);
  CHECK_RC(mpe_dict_check(shared), 0);
  mpe_dval_free(&v);
  mpe_pipe_free(rx);
  mpe_pipe_free(ready_tx);
  mpe_dict_free(shared);
}

/* Every call, as fast as it can, so a SIGKILL lands inside each of them. */
static _Noreturn int churn(void *arg) {
  unsigned x = (unsigned)(intptr_t)arg * 2654435761u + 1;
  mpe_dval v = {0};
  mpe_dict_iter it = {0};
  char k[16];
  for (;;) {
    x = x * 1103515245u + 12345u;
    snprintf(k, sizeof k, "c%u", (x >> 8) % 300);
    size_t n = strlen(k);
    mpe_dval b = bytes("some bytes of a value", x & 1), one = num(1);
    switch ((x >> 20) % 16) {
    case 0: case 1: case 2: mpe_dict_set(shared, k, n, &b, &v); break;
    case 3: case 4: mpe_dict_delete(shared, k, n, &v); break;
    case 5: case 6: case 7: case 8: mpe_dict_incr(shared, k, n, &one, NULL); break;
    case 9: case 10: mpe_dict_get(shared, k, n, &v); break;
    case 11:
      if (mpe_dict_update_begin(shared, k, n, &v) >= 0) {
        mpe_dict_set(shared, k, n, &one, NULL);
        mpe_dict_update_end(shared);
      }
      break;
    case 12: mpe_dict_items(shared, &it, 1); break;
    case 13: if ((x >> 24) % 8 == 0) mpe_dict_clear(shared, NULL); break;
    default: mpe_dict_set(shared, k, n, &one, NULL); break;
    }
    mpe_dval_done(&v);
  }
}

TEST(test_killed_churners_leave_the_dict_consistent) {
  CHECK_RC(mpe_dict_new(&shared), 0);
  mpe_dval v = {0};
  for (int round = 0; round < 150; round++) {
    mpe_process *c;
    CHECK_RC(mpe_process_spawn(&c, churn, (void *)(intptr_t)round, NULL), 0);
    mpe_sleep(0.001 + (round % 7) * 0.0007, NULL);
    CHECK_RC(mpe_process_signal(c, SIGKILL), 0);
    CHECK_RC(mpe_process_wait(c, 10), 0);
    mpe_process_free(c);
    CHECK_RC(mpe_dict_check(shared), 0);
    int rc = mpe_dict_update_begin(shared, "alive", 5, &v);
    CHECK(rc == 0 || rc == MPE_EOWNERDEAD);
    int64_t was = v.kind == MPE_DICT_INT ? v.i : 0; /* a churner's clear may have taken it */
    mpe_dval one = num(1);
    CHECK_RC(mpe_dict_incr(shared, "alive", 5, &one, &v), 0);
    CHECK(v.kind == MPE_DICT_INT && v.i == was + 1);
    mpe_dict_update_end(shared);
    /* every key a dead process may have touched is readable and whole */
    mpe_dict_iter it = {0};
    const void *key;
    size_t klen, n = 0;
    CHECK_RC(mpe_dict_items(shared, &it, 1), 0);
    while (mpe_dict_iter_next(&it, &key, &klen, &v)) {
      CHECK(v.kind == MPE_DICT_INT || (v.kind == MPE_DICT_BYTES && v.len == 21));
      n++;
    }
    mpe_dict_iter_free(&it);
    CHECK(n == mpe_dict_len(shared));
  }
  mpe_dval_free(&v);
  mpe_dict_free(shared);
}

int main(void) {
  CHECK_RC(mpe_init(256u << 20), 0);
  RUN(test_values_of_every_kind);
  RUN(test_growth_tombstones_snapshot_clear);
  RUN(test_incr_from_two_processes_is_exact);
  RUN(test_update_is_atomic_under_contention);
  RUN(test_killed_inside_update_is_reported_and_changes_nothing);
  RUN(test_killed_churners_leave_the_dict_consistent);
  return 0;
}
