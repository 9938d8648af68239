/* embed_signals.c - a C host with its own lua_State and its own SIGUSR1
 * handler (no SA_RESTART), as an embedding program may have. A process
 * signals the host every millisecond while its Lua job waits on a Lock, an
 * RLock, a Semaphore, an Event, a Condition and a Barrier: each wait must
 * end as if no signal had come (no "Interrupted system call" raised in Lua,
 * the barrier not broken), since the host did not ask the run to stop. */
#define _GNU_SOURCE
#include <lauxlib.h>
#include <lualib.h>
#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "mpengine_lua.h"

/* Shared with every process of the run: [0] signals the host handled,
 * [1] set to stop the signalling process. */
static _Atomic long *shared;

static void on_usr1(int sig) {
  (void)sig;
  atomic_fetch_add(&shared[0], 1);
}

/* host_signals() -> how many SIGUSR1 the host has handled (any process). */
static int host_signals(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)atomic_load(&shared[0]));
  return 1;
}

/* Every wait starts after the host sets `go`; the child acts only after the
 * host has handled 10 more signals, so they land while the host waits. */
static const char *job =
    "local mp = require 'mpengine'\n"
    "local function after_signals(go, act)\n"
    "  local p = mp.Process{target = function()\n"
    "    assert(go:wait(60))\n"
    "    local n = host_signals()\n"
    "    while host_signals() < n + 10 do mp.sleep(0.001) end\n"
    "    act()\n"
    "  end}\n"
    "  p:start()\n"
    "  return p\n"
    "end\n"
    "local function check(what, p, n0, ...)\n"
    "  p:join()\n"
    "  assert(p.exitcode == 0, what .. ': the helper process failed')\n"
    "  assert(host_signals() >= n0 + 10, what .. ': the signals did not come')\n"
    "  return ...\n"
    "end\n"
    "local got = {}\n"
    "for _, make in ipairs{mp.Lock, mp.RLock} do\n"
    "  local l, held, go = make(), mp.Event(), mp.Event()\n"
    "  local p = mp.Process{target = function()\n"
    "    l:acquire(); held:set(); assert(go:wait(60))\n"
    "    local n = host_signals()\n"
    "    while host_signals() < n + 10 do mp.sleep(0.001) end\n"
    "    l:release()\n"
    "  end}\n"
    "  p:start()\n"
    "  assert(held:wait(60))\n"
    "  local n0 = host_signals(); go:set()\n"
    "  local r = table.pack(check('lock', p, n0, l:acquire()))\n"
    "  got[#got + 1] = r.n == 1 and r[1] == true and l:locked()\n"
    "  l:release()\n"
    "end\n"
    "do\n"
    "  local s, go = mp.Semaphore(0), mp.Event()\n"
    "  local p = after_signals(go, function() s:release() end)\n"
    "  local n0 = host_signals(); go:set()\n"
    "  got[#got + 1] = check('semaphore', p, n0, s:acquire()) == true\n"
    "end\n"
    "do\n"
    "  local e, go = mp.Event(), mp.Event()\n"
    "  local p = after_signals(go, function() e:set(); e:clear() end)\n"
    "  local n0 = host_signals(); go:set()\n"
    "  got[#got + 1] = check('event', p, n0, e:wait()) == true\n"
    "end\n"
    "do\n"
    "  local c, go = mp.Condition(), mp.Event()\n"
    "  local p = after_signals(go, function() c:acquire(); c:notify(); c:release() end)\n"
    "  c:acquire()\n"
    "  local n0 = host_signals(); go:set()\n"
    "  got[#got + 1] = check('condition', p, n0, c:wait()) == true\n"
    "  assert(c:get_lock():locked()); c:release()\n"
    "end\n"
    "do\n"
    "  local b, go = mp.Barrier(2), mp.Event()\n"
    "  local p = after_signals(go, function() assert(b:wait(60)) end)\n"
    "  local n0 = host_signals(); go:set()\n"
    "  got[#got + 1] = check('barrier', p, n0, b:wait()) ~= nil and not b.broken\n"
    "end\n"
    "return table.unpack(got)\n";

int main(void) {
  shared = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  CHECK(shared != MAP_FAILED);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_usr1; /* no SA_RESTART: sleeping calls end with EINTR */
  sigemptyset(&sa.sa_mask);
  CHECK(sigaction(SIGUSR1, &sa, NULL) == 0);
  pid_t host = getpid();
  pid_t sender = fork();
  CHECK(sender >= 0);
  if (sender == 0) {
    struct timespec ms = {0, 1000000};
    while (!atomic_load(&shared[1]) && getppid() == host) {
      kill(host, SIGUSR1);
      nanosleep(&ms, NULL);
    }
    _exit(0);
  }

  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  mpengine_lua_open(L);
  lua_register(L, "host_signals", host_signals);
  char *err = NULL;
  int n = mpengine_lua_run_string(L, job, "=signals", 0, NULL, &err);
  if (n < 0) fprintf(stderr, "%s\n", err);
  CHECK(n == 6);
  /* lock, rlock: acquire() gave exactly true and the lock was held after;
   * semaphore, event, condition: true; barrier: passed, not broken */
  for (int i = 1; i <= 6; i++) CHECK(lua_isboolean(L, i) && lua_toboolean(L, i));
  lua_close(L);

  atomic_store(&shared[1], 1);
  int status;
  while (waitpid(sender, &status, 0) < 0 && errno == EINTR) continue;
  printf("embed_signals: %ld signals handled, no wait cut short\n", atomic_load(&shared[0]));
  return 0;
}
