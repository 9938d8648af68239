/* test_pipe.c - framing at every size, EOF, poll timeouts, one-way pipes,
 * pipe ends travelling through pipes. */
#include <string.h>
#include <unistd.h>

#include "check.h"

static const size_t sizes[] = {0, 1, 65536, 16u << 20};

static void fill(unsigned char *b, size_t n, unsigned seed) {
  for (size_t i = 0; i < n; i++) b[i] = (unsigned char)(i * 31 + seed);
}

static mpe_pipe *child_end;

/* Echoes every frame back, tag + 1, until EOF. */
static int echo(void *arg) {
  (void)arg;
  for (;;) {
    mpe_msg m;
    int rc = mpe_pipe_recv(child_end, -1, &m);
    if (rc == MPE_ECLOSED) return 0;
    if (rc < 0) return 2;
    if (mpe_pipe_send(child_end, m.data, m.len, m.tag + 1, NULL, 0) != 0) return 3;
    mpe_msg_clear(&m);
  }
}

TEST(test_framing_all_sizes_across_processes) {
  mpe_pipe *a, *b;
  CHECK_RC(mpe_pipe_new(&a, &b, 1), 0);
  child_end = b;
  mpe_pipe *keep[1] = {b};
  mpe_spawn_options o = {.keep = keep, .nkeep = 1};
  mpe_process *p;
  CHECK_RC(mpe_process_spawn(&p, echo, NULL, &o), 0);
  mpe_pipe_free(b); /* ours; the child keeps its copy */
  for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
    size_t n = sizes[i];
    unsigned char *buf = malloc(n ? n : 1);
    fill(buf, n, (unsigned)i);
    CHECK_RC(mpe_pipe_send(a, buf, n, 40 + (uint32_t)i, NULL, 0), 0);
    mpe_msg m;
    CHECK_RC(mpe_pipe_recv(a, 30, &m), 0);
    CHECK(m.len == n);
    CHECK(m.tag == 41 + (uint32_t)i);
    CHECK(n == 0 || memcmp(m.data, buf, n) == 0);
    mpe_msg_clear(&m);
    free(buf);
  }
  CHECK_RC(mpe_pipe_close(a), 0); /* the child sees EOF and exits 0 */
  CHECK_RC(mpe_process_wait(p, 30), 0);
  int code;
  CHECK_RC(mpe_process_exitcode(p, &code), 1);
  CHECK(code == 0);
  mpe_process_free(p);
  mpe_pipe_free(a);
}

TEST(test_eof_and_poll_timeout) {
  mpe_pipe *a, *b;
  CHECK_RC(mpe_pipe_new(&a, &b, 1), 0);
  double t0 = mpe_time();
  CHECK_RC(mpe_pipe_poll(a, 0.05), 0);
  CHECK(mpe_time() - t0 >= 0.049);
  CHECK_RC(mpe_pipe_poll(a, 0), 0);
  mpe_msg m;
  CHECK_RC(mpe_pipe_recv(a, 0.02, &m), MPE_ETIMEDOUT);
  CHECK_RC(mpe_pipe_send(b, "x", 1, 0, NULL, 0), 0);
  CHECK_RC(mpe_pipe_poll(a, 0), 1);
  CHECK_RC(mpe_pipe_close(b), 0);
  /* What was sent before the close still arrives, then EOF. */
  CHECK_RC(mpe_pipe_recv(a, 1, &m), 0);
  CHECK(m.len == 1 && m.data[0] == 'x');
  mpe_msg_clear(&m);
  CHECK_RC(mpe_pipe_poll(a, 1), 1); /* EOF is "ready" */
  CHECK_RC(mpe_pipe_recv(a, 1, &m), MPE_ECLOSED);
  CHECK_RC(mpe_pipe_send(a, "y", 1, 0, NULL, 0), MPE_ECLOSED); /* no SIGPIPE */
  CHECK_RC(mpe_pipe_close(b), -9);                              /* -EBADF */
  CHECK_RC(mpe_pipe_send(b, "y", 1, 0, NULL, 0), -9);
  mpe_pipe_free(a);
  mpe_pipe_free(b);
}

TEST(test_one_way) {
  mpe_pipe *r, *w;
  CHECK_RC(mpe_pipe_new(&r, &w, 0), 0);
  CHECK(mpe_pipe_can_recv(r) && !mpe_pipe_can_send(r));
  CHECK(mpe_pipe_can_send(w) && !mpe_pipe_can_recv(w));
  CHECK_RC(mpe_pipe_send(r, "x", 1, 0, NULL, 0), -9);
  mpe_msg m;
  CHECK_RC(mpe_pipe_recv(w, 0, &m), -9);
  CHECK_RC(mpe_pipe_send(w, "hello", 5, 3, NULL, 0), 0);
  CHECK_RC(mpe_pipe_recv(r, 1, &m), 0);
  CHECK(m.len == 5 && memcmp(m.data, "hello", 5) == 0 && m.tag == 3);
  mpe_msg_clear(&m);
  mpe_pipe_free(w);
  CHECK_RC(mpe_pipe_recv(r, 1, &m), MPE_ECLOSED);
  mpe_pipe_free(r);
}

TEST(test_end_travels_through_pipe) {
  mpe_pipe *a, *b, *x, *y;
  CHECK_RC(mpe_pipe_new(&a, &b, 1), 0);
  CHECK_RC(mpe_pipe_new(&x, &y, 0), 0); /* x receives, y sends */
  mpe_pipe *ends[1] = {y};
  CHECK_RC(mpe_pipe_send(a, "end", 3, 9, ends, 1), 0);
  mpe_pipe_free(y); /* the copy in flight keeps the pipe alive */
  mpe_msg m;
  CHECK_RC(mpe_pipe_recv(b, 1, &m), 0);
  CHECK(m.nends == 1 && mpe_pipe_can_send(m.ends[0]) && !mpe_pipe_can_recv(m.ends[0]));
  CHECK_RC(mpe_pipe_send(m.ends[0], "via", 3, 0, NULL, 0), 0);
  mpe_msg_clear(&m); /* closes the received end: now x sees EOF after "via" */
  CHECK_RC(mpe_pipe_recv(x, 1, &m), 0);
  CHECK(m.len == 3 && memcmp(m.data, "via", 3) == 0);
  mpe_msg_clear(&m);
  CHECK_RC(mpe_pipe_recv(x, 1, &m), MPE_ECLOSED);
  mpe_pipe_free(a);
  mpe_pipe_free(b);
  mpe_pipe_free(x);
}

int main(void) {
  CHECK_RC(mpe_init(16u << 20), 0);
  RUN(test_framing_all_sizes_across_processes);
  RUN(test_eof_and_poll_timeout);
  RUN(test_one_way);
  RUN(test_end_travels_through_pipe);
  return 0;
}
