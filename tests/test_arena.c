/* test_arena.c - the shared arena: visible across fork, reusable for any
 * size, whole after a process is killed inside the allocator; and reference
 * ledgers: a killed child's references come back. */
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"

/* The engine's internal check (engine/src/internal.h): walks the blocks,
 * checks every invariant, counts free and used blocks. */
int mpe__arena_check(size_t *nfree, size_t *largest_free, size_t *nused, unsigned *repairs);

#define ARENA (64u << 20)

static void check_arena(size_t *nused) { CHECK_RC(mpe__arena_check(NULL, NULL, nused, NULL), 0); }

static unsigned long long rng = 88172645463325252ULL;
static unsigned rnd(unsigned n) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return (unsigned)(rng % n);
}

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

TEST(test_fragmented_arena_serves_one_large_block) {
  /* Fill the arena with blocks of many sizes, free them in a random order,
   * then ask for nearly all of it at once: freed memory serves any size. */
  size_t used0, size, n = 0;
  mpe_arena_stats(&used0, &size);
  enum { MAX = 20000 };
  static void *blocks[MAX];
  static const size_t sizes[] = {1, 24, 100, 1000, 4000, 40000, 300000, 3u << 20};
  for (;;) {
    void *p = n < MAX ? mpe_alloc(sizes[rnd(8)] + rnd(64)) : NULL;
    if (!p) p = n < MAX ? mpe_alloc(1 + rnd(64)) : NULL; /* the last crumbs */
    if (!p) break;
    memset(p, 0xab, 16);
    blocks[n++] = p;
  }
  size_t used1;
  mpe_arena_stats(&used1, NULL);
  CHECK(n > 100 && used1 > size - (1u << 20));
  check_arena(NULL);
  for (size_t i = n; i > 1; i--) { /* shuffle, then free all */
    size_t j = rnd((unsigned)i);
    void *t = blocks[i - 1];
    blocks[i - 1] = blocks[j];
    blocks[j] = t;
  }
  for (size_t i = 0; i < n; i++) {
    mpe_free(blocks[i]);
    if (i % 997 == 0) check_arena(NULL);
  }
  size_t used2, nfree;
  mpe_arena_stats(&used2, NULL);
  CHECK(used2 == used0);
  CHECK_RC(mpe__arena_check(&nfree, NULL, NULL, NULL), 0);
  CHECK(nfree == 0); /* everything merged back into fresh space */
  void *big = mpe_alloc(size - (1u << 20));
  CHECK(big != NULL);
  mpe_free(big);
}

TEST(test_neighbours_merge) {
  char *a = mpe_alloc(1000), *b = mpe_alloc(3000), *c = mpe_alloc(500), *guard = mpe_alloc(10);
  CHECK(a && b && c && guard && a < b && b < c && c < guard);
  size_t nfree, largest;
  mpe_free(a);
  mpe_free(c);
  CHECK_RC(mpe__arena_check(&nfree, NULL, NULL, NULL), 0);
  CHECK(nfree == 2);
  mpe_free(b); /* merges with both neighbours: one free block from a to guard */
  CHECK_RC(mpe__arena_check(&nfree, &largest, NULL, NULL), 0);
  CHECK(nfree == 1 && largest == (size_t)(guard - a));
  char *whole = mpe_alloc((size_t)(guard - a) - 16); /* exactly that block */
  CHECK(whole == a);
  CHECK_RC(mpe__arena_check(&nfree, NULL, NULL, NULL), 0);
  CHECK(nfree == 0);
  char *small = mpe_alloc(100); /* from fresh space, after guard */
  CHECK(small > guard);
  mpe_free(whole);
  char *x = mpe_alloc(100), *y = mpe_alloc(200); /* split from the front of the free block */
  CHECK(x == a && y > x && y < guard);
  CHECK_RC(mpe__arena_check(&nfree, NULL, NULL, NULL), 0);
  CHECK(nfree == 1);
  mpe_free(y);
  mpe_free(x);
  mpe_free(guard);
  mpe_free(small); /* the last block: everything goes back to fresh space */
  CHECK_RC(mpe__arena_check(&nfree, NULL, NULL, NULL), 0);
  CHECK(nfree == 0);
}

/* Crash test: children allocate and free blocks of random sizes as fast as
 * they can, each block recorded in a shared table (set after mpe_alloc,
 * cleared before mpe_free), and are killed at random points, often inside
 * the allocator. After each kill the arena must be whole, and once the
 * parent frees what the table records, every block but the one a child may
 * have been taking or giving back at its death comes back. */
#define SLOTS 64
static uint64_t *slots;

static int churn(void *arg) {
  (void)arg;
  for (unsigned i = 0;; i++) {
    unsigned k = rnd(SLOTS);
    if (slots[k]) {
      void *p = mpe_deref(slots[k]);
      slots[k] = 0;
      mpe_free(p);
    } else {
      size_t n = i % 97 == 0 ? 200000 : 1 + rnd(i % 3 ? 200 : 6000);
      char *p = mpe_alloc(n);
      if (!p) return 1;
      p[n - 1] = 1;
      slots[k] = mpe_ref(p);
    }
  }
}

TEST(test_killed_inside_the_allocator_leaves_it_whole) {
  size_t used0, nused0;
  slots = mpe_alloc(SLOTS * sizeof *slots);
  memset(slots, 0, SLOTS * sizeof *slots);
  mpe_arena_stats(&used0, NULL);
  check_arena(&nused0);
  enum { ROUNDS = 200 };
  for (int round = 0; round < ROUNDS; round++) {
    rng += (unsigned long long)round * 7919; /* each child churns its own way */
    mpe_process *c;
    CHECK_RC(mpe_process_spawn(&c, churn, NULL, NULL), 0);
    mpe_sleep(0.0005 + (round % 9) * 0.0004, NULL);
    CHECK_RC(mpe_process_signal(c, SIGKILL), 0);
    CHECK_RC(mpe_process_wait(c, 10), 0);
    int code = 0;
    CHECK(mpe_process_exitcode(c, &code) == 1 && code == -SIGKILL);
    mpe_process_free(c);
    check_arena(NULL); /* the first locker repaired what the dead left */
    for (int k = 0; k < SLOTS; k++) {
      if (slots[k]) mpe_free(mpe_deref(slots[k]));
      slots[k] = 0;
    }
    /* and it serves */
    void *p = mpe_alloc(12345);
    CHECK(p != NULL);
    mpe_free(p);
  }
  size_t used1, nused1;
  unsigned repairs;
  mpe_arena_stats(&used1, NULL);
  CHECK_RC(mpe__arena_check(NULL, NULL, &nused1, &repairs), 0);
  printf("killed %d churning children, %u inside the allocator; %zu blocks (%zu bytes) lost in flight\n",
         ROUNDS, repairs, nused1 - nused0, used1 - used0);
  CHECK(nused1 - nused0 <= ROUNDS);            /* at most one block a kill */
  CHECK(used1 - used0 <= (nused1 - nused0) * 200032);
  mpe_free(slots);
}

/* Ledgers: the references a child inherits and the objects it creates come
 * back when it is killed; a child that gives its own back is not counted twice. */
static mpe_queue *inherited;

static int holds_and_dies(void *arg) {
  int *fd = arg;
  mpe_value *v;
  if (mpe_value_new(&v, 'd', 1000, 0) < 0) return 1; /* created here, never freed */
  mpe_queue *q2;
  if (mpe_queue_new(&q2, 0) < 0) return 1;
  if (write(fd[1], "r", 1) != 1) return 1;
  pause();
  return 0;
}

static int gives_back(void *arg) {
  (void)arg;
  mpe_value *v;
  if (mpe_value_new(&v, 'i', 10, 0) < 0) return 1;
  mpe_value_free(v);
  mpe_queue_free(inherited); /* the reference taken for us */
  return 0;
}

TEST(test_killed_child_references_come_back) {
  size_t used0, used1;
  mpe_arena_stats(&used0, NULL);
  CHECK_RC(mpe_queue_new(&inherited, 0), 0);
  mpe_arena_stats(&used1, NULL);
  for (int round = 0; round < 50; round++) {
    int fd[2];
    CHECK(pipe(fd) == 0);
    CHECK_RC(mpe_spawn_refs_begin(), 0);
    mpe_queue_retain(inherited); /* the child's */
    mpe_queue_retain(inherited); /* another, so a count above one is seen */
    mpe_process *c;
    mpe_spawn_options o = {.keep_fds = &fd[1], .nkeep_fds = 1};
    CHECK_RC(mpe_process_spawn(&c, holds_and_dies, fd, &o), 0);
    char r;
    CHECK(read(fd[0], &r, 1) == 1); /* it holds all it will hold */
    close(fd[0]);
    close(fd[1]);
    CHECK_RC(mpe_process_signal(c, SIGKILL), 0);
    CHECK_RC(mpe_process_wait(c, 10), 0); /* reaped: its references given back */
    mpe_process_free(c);
    size_t used;
    mpe_arena_stats(&used, NULL);
    CHECK(used == used1);

    CHECK_RC(mpe_spawn_refs_begin(), 0);
    mpe_queue_retain(inherited);
    CHECK_RC(mpe_process_spawn(&c, gives_back, NULL, NULL), 0);
    CHECK_RC(mpe_process_wait(c, 10), 0);
    int code = -1;
    CHECK(mpe_process_exitcode(c, &code) == 1 && code == 0);
    mpe_process_free(c);
    mpe_arena_stats(&used, NULL);
    CHECK(used == used1);
  }
  CHECK(mpe_queue_from_ref(mpe_queue_ref(inherited)) == inherited);
  mpe_queue_free(inherited); /* our own, the last */
  CHECK(mpe_queue_from_ref(mpe_queue_ref(inherited)) == NULL);
  size_t used;
  mpe_arena_stats(&used, NULL);
  CHECK(used == used0);
}

int main(void) {
  CHECK_RC(mpe_init(ARENA), 0);
  CHECK(mpe_initialized());
  CHECK_RC(mpe_init(0), 0); /* idempotent */
  RUN(test_alloc_shared_across_fork);
  RUN(test_object_made_by_child_reaches_parent);
  RUN(test_reuse_and_stats);
  RUN(test_large_block_roundtrip);
  RUN(test_fragmented_arena_serves_one_large_block);
  RUN(test_neighbours_merge);
  RUN(test_killed_inside_the_allocator_leaves_it_whole);
  RUN(test_killed_child_references_come_back);
  check_arena(NULL);
  return 0;
}
