/* rawsys.h - system calls made inline, for the code a new child runs.
 *
 * A new child maps afresh each code page it runs, and libc's syscall()
 * sits on a page nothing else there needs: a fault, tens of microseconds on
 * a virtual machine, for five calls. These make the call in place. They
 * return the kernel's result, -errno on failure, and leave errno alone.
 * Elsewhere than x86-64 and AArch64, they go through syscall(). */
#ifndef MPE_RAWSYS_H
#define MPE_RAWSYS_H

#include <errno.h>
#include <sys/syscall.h>
#include <unistd.h>

static inline long mpe__sys(long nr, long a, long b, long c, long d) {
#if defined(__x86_64__)
  long ret;
  register long r10 __asm__("r10") = d;
  __asm__ volatile("syscall"
                   : "=a"(ret)
                   : "a"(nr), "D"(a), "S"(b), "d"(c), "r"(r10)
                   : "rcx", "r11", "memory");
  return ret;
#elif defined(__aarch64__)
  register long x8 __asm__("x8") = nr;
  register long x0 __asm__("x0") = a;
  register long x1 __asm__("x1") = b;
  register long x2 __asm__("x2") = c;
  register long x3 __asm__("x3") = d;
  __asm__ volatile("svc #0" : "+r"(x0) : "r"(x8), "r"(x1), "r"(x2), "r"(x3) : "memory");
  return x0;
#else
  int saved = errno;
  long ret = syscall(nr, a, b, c, d);
  if (ret == -1) ret = -errno;
  errno = saved;
  return ret;
#endif
}

#endif
