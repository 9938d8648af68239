/* broker_none.c - the broker's calls in a build without hiredis: each
 * fails with -ENOSYS (mpe_strerror: "Function not implemented"), so a
 * script or C host asking for a broker is told at the call. */
#include <errno.h>
#include <stdio.h>

#include "internal.h"

int mpe_pool_start_broker(mpe_pool **out, const char *url, const mpe_pool_options *opts,
                          const mpe_broker_options *bo) {
  (void)out, (void)url, (void)opts, (void)bo;
  return -ENOSYS;
}

int mpe_broker_worker_run(const char *url, int procs, const char *name, mpe_pool_fn fn, void *ctx,
                          const mpe_pool_options *opts) {
  (void)url, (void)procs, (void)name, (void)fn, (void)ctx, (void)opts;
  return -ENOSYS;
}

int mpe_broker_url_display(const char *url, char *buf, size_t n) {
  (void)url;
  if (buf && n) snprintf(buf, n, "this build has no broker (hiredis was not found when it was built)");
  return -ENOSYS;
}

int mpe_pool_broker_put(mpe_pool *p, const char *field, const void *data, size_t len) {
  (void)p, (void)field, (void)data, (void)len;
  return -ENOSYS;
}

int mpe_broker_context(const char *field, mpe_buf *out) {
  (void)field, (void)out;
  return -ENOENT;
}

const char *mpe_broker_host(void) { return NULL; }

void mpe_broker_on_event(void (*fn)(void *arg, const char *line), void *arg) { (void)fn, (void)arg; }

int mpe_broker_status(const char *url, mpe_broker_host_info *h, int *nh, mpe_broker_run_info *r, int *nr,
                      char *err, size_t errlen) {
  (void)url, (void)h, (void)nh, (void)r, (void)nr;
  if (err && errlen) snprintf(err, errlen, "this build has no broker (hiredis was not found when it was built)");
  return -ENOSYS;
}
