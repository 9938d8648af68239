/* test_wait.c - mpe_wait_any through the public header: each kind ready at
 * once and becoming ready from another process, a mix where only one item
 * becomes ready, timeouts, closed queues and pipe EOF, and the errors. */
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

#include "check.h"

static mpe_event *go;
static mpe_queue *q;
static mpe_event *ev;
static mpe_pipe *tx;

static int putter(void *arg) {
  (void)arg;
  if (mpe_event_wait(go, 60) != 0) return 1;
  int v = 7;
  return mpe_queue_put(q, &v, sizeof v, 0, -1) == 0 ? 0 : 2;
}

static int setter(void *arg) {
  (void)arg;
  if (mpe_event_wait(go, 60) != 0) return 1;
  mpe_event_set(ev);
  return 0;
}

static int sender(void *arg) {
  (void)arg;
  if (mpe_event_wait(go, 60) != 0) return 1;
  return mpe_pipe_send(tx, "hi", 2, 0, NULL, 0) == 0 ? 0 : 2;
}

static int ender(void *arg) {
  (void)arg;
  return mpe_event_wait(go, 60) == 0 ? 0 : 1;
}

static int sleeper(void *arg) {
  (void)arg;
  mpe_sleep(60, NULL);
  return 0;
}

TEST(test_each_kind_ready_at_once) {
  mpe_pipe *r, *s;
  CHECK_RC(mpe_pipe_new(&r, &s, 0), 0);
  CHECK_RC(mpe_pipe_send(s, "x", 1, 0, NULL, 0), 0);
  int v = 1;
  CHECK_RC(mpe_queue_put(q, &v, sizeof v, 0, -1), 0);
  mpe_event_set(ev);
  mpe_process *p;
  CHECK_RC(mpe_process_spawn(&p, sleeper, NULL, NULL), 0);
  CHECK_RC(mpe_process_signal(p, SIGKILL), 0);
  mpe_wait_item it[4] = {
      {MPE_WAIT_PIPE, r, 0}, {MPE_WAIT_QUEUE, q, 0}, {MPE_WAIT_EVENT, ev, 0}, {MPE_WAIT_PROCESS, p, 0}};
  for (int i = 0; i < 3; i++) { /* alone */
    CHECK_RC(mpe_wait_any(&it[i], 1, 0), 1);
    CHECK(it[i].ready == 1);
  }
  CHECK_RC(mpe_wait_any(&it[3], 1, 60), 1); /* the kill lands */
  CHECK_RC(mpe_wait_any(it, 4, -1), 4);
  CHECK(mpe_queue_size(q) == 1); /* nothing taken */
  mpe_qmsg m = {0};
  CHECK_RC(mpe_queue_get(q, 0, &m), 0);
  mpe_qmsg_free(&m);
  mpe_event_clear(ev);
  mpe_process_free(p);
  mpe_pipe_free(r);
  mpe_pipe_free(s);
}

/* The mix {pipe, event, other child, queue}; child fn makes item `want` ready. */
static void mix(mpe_entry_fn fn, int want) {
  mpe_pipe *r;
  CHECK_RC(mpe_pipe_new(&r, &tx, 0), 0);
  mpe_event_clear(go);
  mpe_event_clear(ev);
  mpe_process *other, *child;
  CHECK_RC(mpe_process_spawn(&other, sleeper, NULL, NULL), 0);
  mpe_spawn_options o = {.keep = &tx, .nkeep = 1};
  CHECK_RC(mpe_process_spawn(&child, fn, NULL, &o), 0);
  mpe_wait_item it[5] = {{MPE_WAIT_PIPE, r, 0},
                         {MPE_WAIT_EVENT, ev, 0},
                         {MPE_WAIT_PROCESS, other, 0},
                         {MPE_WAIT_QUEUE, q, 0},
                         {MPE_WAIT_PROCESS, child, 0}};
  size_t n = want == 4 ? 5 : 4; /* the child itself only when it is the one */
  CHECK_RC(mpe_wait_any(it, n, 0.01), 0);
  for (size_t i = 0; i < n; i++)
    CHECK(it[i].ready == 0);
  mpe_event_set(go);
  CHECK_RC(mpe_wait_any(it, n, -1), 1);
  for (size_t i = 0; i < n; i++)
    CHECK(it[i].ready == ((int)i == want));
  int code = -1;
  CHECK_RC(mpe_process_wait(child, 60), 0);
  CHECK(mpe_process_exitcode(child, &code) == 1 && code == 0);
  CHECK_RC(mpe_process_signal(other, SIGKILL), 0);
  mpe_process_free(other);
  mpe_process_free(child);
  if (want == 3) {
    mpe_qmsg m = {0};
    CHECK_RC(mpe_queue_get(q, 0, &m), 0);
    mpe_qmsg_free(&m);
  }
  mpe_pipe_free(r);
  mpe_pipe_free(tx);
}

TEST(test_mixed_only_one_becomes_ready) {
  mix(sender, 0);
  mix(setter, 1);
  mix(putter, 3);
  mix(ender, 4);
}

TEST(test_closed_queue_and_eof_are_ready) {
  mpe_queue *c;
  CHECK_RC(mpe_queue_new(&c, 0), 0);
  mpe_wait_item it = {MPE_WAIT_QUEUE, c, 0};
  CHECK_RC(mpe_wait_any(&it, 1, 0), 0);
  mpe_queue_close(c);
  CHECK_RC(mpe_wait_any(&it, 1, -1), 1);
  mpe_queue_free(c);
  mpe_pipe *r, *s;
  CHECK_RC(mpe_pipe_new(&r, &s, 0), 0);
  mpe_wait_item pi = {MPE_WAIT_PIPE, r, 0};
  CHECK_RC(mpe_wait_any(&pi, 1, 0), 0);
  mpe_pipe_close(s);
  CHECK_RC(mpe_wait_any(&pi, 1, -1), 1);
  mpe_pipe_free(r);
  mpe_pipe_free(s);
}

TEST(test_errors_and_the_stop_flag) {
  mpe_pipe *r, *s;
  CHECK_RC(mpe_pipe_new(&r, &s, 0), 0);
  mpe_wait_item it[2] = {{MPE_WAIT_QUEUE, q, 0}, {MPE_WAIT_PIPE, s, 0}};
  CHECK_RC(mpe_wait_any(it, 2, 0), -EBADF); /* send-only */
  it[1] = (mpe_wait_item){99, q, 0};
  CHECK_RC(mpe_wait_any(it, 2, 0), -EINVAL);
  mpe_pipe_close(r);
  it[1] = (mpe_wait_item){MPE_WAIT_PIPE, r, 0};
  CHECK_RC(mpe_wait_any(it, 2, 0), -EBADF); /* closed */
  CHECK_RC(mpe_wait_any(NULL, 0, 0), 0);
  static volatile sig_atomic_t stop = 1;
  mpe_interrupt_flag(&stop);
  CHECK_RC(mpe_wait_any(it, 1, -1), MPE_EINTR);
  mpe_interrupt_flag(NULL);
  mpe_pipe_free(r);
  mpe_pipe_free(s);
}

int main(void) {
  CHECK_RC(mpe_init(16u << 20), 0);
  CHECK_RC(mpe_event_new(&go), 0);
  CHECK_RC(mpe_event_new(&ev), 0);
  CHECK_RC(mpe_queue_new(&q, 0), 0);
  RUN(test_each_kind_ready_at_once);
  RUN(test_mixed_only_one_becomes_ready);
  RUN(test_closed_queue_and_eof_are_ready);
  RUN(test_errors_and_the_stop_flag);
  mpe_queue_free(q);
  mpe_event_free(ev);
  mpe_event_free(go);
  return 0;
}
