/* bench_fork.c - a Lua module for the benchmarks only: a bare fork() and
 * waitpid() from the calling Lua process, the floor that Process start +
 * join is measured against. The probe's fork_wait_ns forks a tiny C program;
 * a fork of the benchmark's own process copies its page tables and the
 * parent then takes a copy-on-write fault on each page it writes again, so
 * this is the honest floor for a Lua process of that size.
 *
 *   local bf = package.loadlib("build/tests/bench_fork.so", "luaopen_bench_fork")()
 *   bf.fork_wait() -> seconds taken by one fork + waitpid of a child that
 *                     _exit(0)s at once; nil and the errno text on failure
 *   bf.fork_call(f) -> the same, the child calling the Lua function f (no
 *                     arguments, protected) before it leaves: the least a
 *                     child that runs Lua costs (its first run of liblua's
 *                     code, a write to the Lua stack) */
#define _GNU_SOURCE
#include <errno.h>
#include <lauxlib.h>
#include <lua.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static int fork_run(lua_State *L, int call) {
  double t0 = now();
  pid_t pid = fork();
  if (pid == 0) {
    if (call) {
      lua_pushvalue(L, 1);
      _exit(lua_pcall(L, 0, 0, 0) == LUA_OK ? 0 : 1);
    }
    _exit(0);
  }
  int e = errno, status = 0;
  if (pid < 0 || waitpid(pid, &status, 0) != pid) {
    luaL_pushfail(L);
    lua_pushstring(L, strerror(pid < 0 ? e : errno));
    return 2;
  }
  lua_pushnumber(L, now() - t0);
  return 1;
}

static int fork_wait(lua_State *L) { return fork_run(L, 0); }

static int fork_call(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  return fork_run(L, 1);
}

int luaopen_bench_fork(lua_State *L);
int luaopen_bench_fork(lua_State *L) {
  lua_newtable(L);
  lua_pushcfunction(L, fork_wait);
  lua_setfield(L, -2, "fork_wait");
  lua_pushcfunction(L, fork_call);
  lua_setfield(L, -2, "fork_call");
  return 1;
}
