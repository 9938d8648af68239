/* test_arena.c - the shared arena: visible across fork, reusable, bounded. */
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"

static int child_writes(void *arg) {
  char *p = arg;
  strcpy(p, "written by the child");
  return 0;
}

TEST(test_alloc_shared_across_fork) {
  char *p = mpe_alloc(64);
  CHECK(p != NULL);
  CHECK(((uintptr_t)p & 15) == 0);
  p[0] = 0;
  mpe_process *c;
  CHECK_RC(mpe_process_spawn(&c, child_writes, p, NULL), 0);
  CHECK_RC(mpe_process_wait(c, 10), 0);
  CHECK(strcmp(p, "written by the child") == 0);
  mpe_process_free(c);
  mpe_free(p);
}

static int child_allocates(void *arg) {
  uint64_t *slot = arg;
  char *q = mpe_alloc(100);
  if (!q) return 1;
  strcpy(q, "made after the fork");
  *slot = mpe_ref(q);
  return 0;
}

TEST(test_object_made_by_child_reaches_parent) {
  uint64_t *slot = mpe_alloc(sizeof *slot);
  *slot = 0;
  mpe_process *c;
  CHECK_RC(mpe_process_spawn(&c, child_allocates, slot, NULL), 0);
  CHECK_RC(mpe_process_wait(c, 10), 0);
  int code = -1;
  CHECK(mpe_process_exitcode(c, &code) == 1 && code == 0);
  char *q = mpe_deref(*slot);
  CHECK(q && strcmp(q, "made after the fork") == 0);
  mpe_free(q);
  mpe_free(slot);
  mpe_process_free(c);
}

TEST(test_reuse_and_stats) {
  size_t used0, size;
  mpe_arena_stats(&used0, &size);
  void *a = mpe_alloc(1000);
  size_t used1;
  mpe_arena_stats(&used1, NULL);
  CHECK(used1 >= used0 + 1000);
  mpe_free(a);
  void *b = mpe_alloc(1000);
  CHECK(a == b); /* the freed block of that class is reused */
  mpe_free(b);
  size_t used2;
  mpe_arena_stats(&used2, NULL);
  CHECK(used2 == used0);
  CHECK(mpe_alloc(size) == NULL); /* larger than the arena: NULL, no crash */
  CHECK(mpe_ref(NULL) == 0 && mpe_deref(0) == NULL);
}

TEST(test_large_block_roundtrip) {
  size_t n = 8u << 20;
  unsigned char *p = mpe_alloc(n);
  CHECK(p != NULL);
  for (size_t i = 0; i < n; i += 4096) p[i] = (unsigned char)i;
  mpe_free(p);
  unsigned char *q = mpe_alloc(n);
  CHECK(q == p);
  mpe_free(q);
}

int main(void) {
  CHECK_RC(mpe_init(64u << 20), 0);
  CHECK(mpe_initialized());
  CHECK_RC(mpe_init(0), 0); /* idempotent */
  RUN(test_alloc_shared_across_fork);
  RUN(test_object_made_by_child_reaches_parent);
  RUN(test_reuse_and_stats);
  RUN(test_large_block_roundtrip);
  return 0;
}
