/* host.c - the mpengine command: `mpengine run SCRIPT [ARGS...]`.
 *
 * main() does nothing but run pmain() under lua_pcall. The module is opened
 * into package.loaded before the script runs, so scripts need no cpath.
 *
 * The script convention lives in embed.c (mpengine_lua_run_file): a job
 * script may return a table with a `main` function, which gets the script's
 * arguments; main's first result is the exit status (nil/true/0: success,
 * false: 1, an integer: itself). A chunk that returns an integer or a
 * boolean gives its exit status the same way.
 *
 * Ending: on a normal end the run joins its non-daemon children and
 * terminates daemon ones (as Python does); on an error or a signal every
 * child is killed first. SIGINT/SIGTERM interrupt a blocking call or the
 * running Lua code with an error; a second one ends the process at once.
 * Children also carry PR_SET_PDEATHSIG, so none outlives the run. */
#include <lualib.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mpe_lua.h"
#include "mpengine_lua.h"

#define EXIT_USAGE 2

static lua_State *globalL;
static const char *progname = "mpengine";

static void stop_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  lua_sethook(L, NULL, 0, 0);
  mpel_check_signal(L);
}

static void on_signal(int sig) {
  if (mpel_signal) { /* the second one: no more waiting */
    mpe_process_signal_all(SIGKILL);
    _exit(128 + sig);
  }
  mpel_signal = sig;
  /* As lua.c does: a hook raises the error at the next Lua instruction. */
  if (globalL) lua_sethook(globalL, stop_hook, LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT, 1);
}

static void install_signals(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal; /* no SA_RESTART: blocking waits return EINTR */
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
}

static void usage(FILE *f) {
  fprintf(f,
          "usage: %s run [--progress] SCRIPT [ARGS...]\n"
          "       %s --version | --help\n\n"
          "Runs a Lua 5.4 job script with the mpengine module loaded.\n"
          "A script that returns a table with a main function has main(...)\n"
          "called with ARGS; its result is the exit status.\n\n"
          "exit status: 0 success, 1 script error, 2 usage error,\n"
          "             128+N ended by signal N (130 for SIGINT)\n",
          progname, progname);
}

/* pmain(argc, argv, first): runs the job; returns the exit code and, on an
 * error, its message. */
/* os.exit(code) in the main script ends the run the normal way: it unwinds
 * to here (to-be-closed variables close), and the run's end then joins the
 * children that are not daemons, as Python's sys.exit does. (In a child,
 * os.exit leaves at once: see lprocess.c.) */
static int exit_requested = -1;

static int host_exit(lua_State *L) {
  int code = lua_isboolean(L, 1) ? !lua_toboolean(L, 1) : (int)luaL_optinteger(L, 1, 0);
  exit_requested = code & 255;
  lua_pushliteral(L, "os.exit");
  return lua_error(L);
}

static int pmain(lua_State *L) {
  int argc = (int)lua_tointeger(L, 1);
  char **argv = lua_touserdata(L, 2);
  int first = (int)lua_tointeger(L, 3);
  luaL_openlibs(L);
  mpengine_lua_open(L);
  lua_getglobal(L, "os");
  lua_pushcfunction(L, host_exit);
  lua_setfield(L, -2, "exit");
  lua_settop(L, 0);
  char *err = NULL;
  int n = mpengine_lua_run_file(L, argv[first], argc - first, (const char *const *)argv + first, &err);
  if (n < 0 && exit_requested >= 0) {
    free(err);
    lua_pushinteger(L, exit_requested);
    return 1;
  }
  if (n < 0) {
    lua_pushinteger(L, mpel_signal ? 128 + mpel_signal : 1);
    lua_pushstring(L, err ? err : "out of memory");
    free(err);
    return 2;
  }
  int code = 0;
  if (n > 0) { /* main's (or the chunk's) first result is the exit status */
    if (lua_isboolean(L, 1)) code = !lua_toboolean(L, 1);
    else if (lua_isinteger(L, 1)) code = (int)lua_tointeger(L, 1);
  }
  lua_pushinteger(L, code);
  return 1;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    usage(stderr);
    return EXIT_USAGE;
  }
  if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
    usage(stdout);
    return 0;
  }
  if (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "-v") == 0) {
    printf("mpengine %s (%s)\n", mpe_version(), LUA_RELEASE);
    return 0;
  }
  if (strcmp(argv[1], "run") != 0) {
    fprintf(stderr, "%s: unknown command '%s'\n", progname, argv[1]);
    usage(stderr);
    return EXIT_USAGE;
  }
  int first = 2;
  while (first < argc && argv[first][0] == '-' && argv[first][1]) {
    if (strcmp(argv[first], "--progress") == 0) {
      setenv("MPENGINE_PROGRESS", "1", 1);
    } else if (strcmp(argv[first], "--") == 0) {
      first++;
      break;
    } else {
      fprintf(stderr, "%s: unknown option '%s'\n", progname, argv[first]);
      return EXIT_USAGE;
    }
    first++;
  }
  if (first >= argc) {
    fprintf(stderr, "%s: run needs a SCRIPT\n", progname);
    return EXIT_USAGE;
  }
  lua_State *L = luaL_newstate();
  if (!L) {
    fprintf(stderr, "%s: cannot create a Lua state (out of memory)\n", progname);
    return 1;
  }
  globalL = L;
  install_signals();
  lua_pushcfunction(L, pmain);
  lua_pushinteger(L, argc);
  lua_pushlightuserdata(L, argv);
  lua_pushinteger(L, first);
  int status = lua_pcall(L, 3, 2, 0);
  int code;
  if (status != LUA_OK) {
    code = 1;
    lua_pushinteger(L, code);
    lua_insert(L, -2);
  }
  code = (int)lua_tointeger(L, -2);
  int failed = !lua_isnil(L, -1) && !lua_isinteger(L, -1); /* an error message came back */
  if (failed) {
    const char *msg = lua_tostring(L, -1);
    fflush(stdout);
    fprintf(stderr, "%s: %s\n", progname, msg ? msg : "(error object is not a string)");
    if (code == 0) code = 1;
  }
  if (failed || mpel_signal) {
    /* A failed or interrupted run leaves nothing behind: kill, then reap. */
    mpe_process_signal_all(SIGKILL);
    if (mpel_signal && code == 0) code = 128 + mpel_signal;
  }
  lua_settop(L, 0);
  lua_close(L); /* the module's sentinel joins or reaps the children */
  globalL = NULL;
  if (mpel_signal && code == 0) code = 128 + mpel_signal; /* interrupted while joining */
  return code;
}
