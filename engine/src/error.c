/* error.c - error codes and their messages.
 *
 * Codes are negative: -errno for what the OS reports, reserved values below
 * -4000 for conditions errno cannot name (one X-macro in mpengine.h lists
 * them, so a name and its message are never out of step). */
#include "internal.h"

#include <stdio.h>
#include <string.h>

const char *mpe_strerror(int err) {
  switch (err) {
#define MPE__MSG(name, code, msg) \
  case code:                      \
    return msg;
    MPE_ERRORS(MPE__MSG)
#undef MPE__MSG
  default:
    break;
  }
  if (err < 0 && err > -4000) return strerror(-err);
  return "unknown error";
}

const char *mpe_err_name(int err) {
  switch (err) {
#define MPE__NAME(name, code, msg) \
  case code:                       \
    return #name;
    MPE_ERRORS(MPE__NAME)
#undef MPE__NAME
  case MPE_ETIMEDOUT:
    return "ETIMEDOUT";
  case MPE_EINTR:
    return "EINTR";
  case -11:
    return "EAGAIN";
  case -12:
    return "ENOMEM";
  case -9:
    return "EBADF";
  case -22:
    return "EINVAL";
  case -24:
    return "EMFILE";
  default:
    return err < 0 ? "EOTHER" : "OK";
  }
}

void mpe__abort(const char *what, const char *file, int line) {
  /* The one place the engine writes: a broken invariant, then abort(). */
  fprintf(stderr, "mpengine: invariant failed: %s (%s:%d)\n", what, file, line);
  abort();
}
