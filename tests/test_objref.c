/* test_objref.c - shared objects named across processes: (ref, check) names
 * one allocation for its whole life; bytes made to look like an object and a
 * later object in the same place are refused; a claim never revives an
 * object that is being freed. */
#include <errno.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"

TEST(test_claim_names_one_allocation) {
  mpe_value *v;
  CHECK_RC(mpe_value_new(&v, 'q', 4, NULL), 0);
  uint64_t check = mpe_obj_check(v);
  CHECK_RC(mpe_obj_claim(v, check, 0), 0);
  CHECK_RC(mpe_obj_claim(v, check ^ 1, 0), -ESTALE);
  CHECK_RC(mpe_obj_claim(v, check, 1), 0); /* a second reference */
  mpe_value_free(v);
  CHECK_RC(mpe_obj_claim(v, check, 0), 0); /* one left */
  mpe_value_free(v);
  CHECK_RC(mpe_obj_claim(v, check, 1), -ESTALE); /* gone: nothing taken */
  /* a later object in the same place has another check */
  mpe_value *w;
  CHECK_RC(mpe_value_new(&w, 'q', 4, NULL), 0);
  if ((void *)w == (void *)v) CHECK_RC(mpe_obj_claim(w, check, 1), -ESTALE);
  CHECK(mpe_obj_check(w) != check);
  CHECK_RC(mpe_obj_claim(w, mpe_obj_check(w), 0), 0);
  mpe_value_free(w);
}

TEST(test_imitation_is_refused) {
  mpe_value *v, *a;
  CHECK_RC(mpe_value_new(&v, 'q', 4, NULL), 0);
  CHECK_RC(mpe_value_new(&a, 'B', 4096, NULL), 0);
  /* a copy of v's block and object headers inside a's data, at a 16-byte
   * aligned place: the place checks of old pass, the check does not */
  unsigned char *data = mpe_value_data(a);
  unsigned char *fake = (unsigned char *)(((uintptr_t)data + 64 + 15) & ~(uintptr_t)15);
  size_t head = 64;
  memcpy(fake - 16, (unsigned char *)v - 16, 16 + head);
  mpe_value *forged = mpe_value_from_ref(mpe_ref(fake));
  uint64_t check = mpe_obj_check(v);
  if (forged) CHECK_RC(mpe_obj_claim(forged, check, 1), -ESTALE);
  CHECK_RC(mpe_obj_claim(v, check, 0), 0);
  mpe_value_free(a);
  mpe_value_free(v);
}

TEST(test_claims_race_the_last_release) {
  /* a child claims and frees while the parent drops its reference: the
   * object is freed exactly once and every claim after that fails */
  for (int round = 0; round < 200; round++) {
    mpe_lock *l;
    CHECK_RC(mpe_lock_new(&l, 0), 0);
    uint64_t check = mpe_obj_check(l);
    int go[2];
    CHECK(pipe(go) == 0);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
      char c;
      if (read(go[0], &c, 1) != 1) _exit(2);
      while (mpe_obj_claim(l, check, 1) == 0) mpe_lock_free(l); /* until it is gone */
      _exit(0);
    }
    mpe_lock_retain(l); /* the child's, dropped below as the race's other side */
    if (write(go[1], "x", 1) != 1) CHECK(0);
    mpe_lock_free(l);
    mpe_lock_free(l);
    int st;
    CHECK(waitpid(pid, &st, 0) == pid);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    CHECK_RC(mpe_obj_claim(l, check, 1), -ESTALE);
    close(go[0]);
    close(go[1]);
  }
}

int main(void) {
  CHECK_RC(mpe_init(64u << 20), 0);
  size_t used0;
  mpe_arena_stats(&used0, NULL);
  RUN(test_claim_names_one_allocation);
  RUN(test_imitation_is_refused);
  RUN(test_claims_race_the_last_release);
  size_t used1;
  mpe_arena_stats(&used1, NULL);
  CHECK(used1 == used0);
  return 0;
}
