/* host.c - the mpengine command: `mpengine run SCRIPT [ARGS...]` (or
 * `run -e CODE`, `run -` for standard input) and `mpengine test [ARGS...]`,
 * which is `run` of busted's own Lua script.
 *
 * main() parses the command line into a job and runs pmain() under
 * lua_pcall. The module is opened into package.loaded before the script
 * runs, so scripts need no cpath.
 *
 * The script convention lives in embed.c (mpengine_lua_run_file): a job
 * script may return a table with a `main` function, which gets the script's
 * arguments. What comes back is the exit status, and this file says how
 * (exit_status): nothing, nil or true: 0; false: 1; an integer 0..255:
 * itself; anything else is a mistake the run reports (exit 2) instead of
 * ending with a status nobody meant. A script that returns nothing while it
 * defines a field `main` has forgotten `return M`: a warning says so.
 *
 * Ending: on a normal end the run joins its non-daemon children and
 * terminates daemon ones (as Python does); on an error or a signal every
 * child is killed first. SIGINT/SIGTERM interrupt a blocking call or the
 * running Lua code with an error; a second one ends the process at once.
 * Children also carry PR_SET_PDEATHSIG, so none outlives the run. */
#include <errno.h>
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
          "usage: %s run [--progress] [--broker URL] SCRIPT [ARGS...]\n"
          "       %s run [--progress] -e CODE [ARGS...]\n"
          "       %s run [--progress] - [ARGS...]     (the script from standard input)\n"
          "       %s worker [--broker URL] [--procs N] [--name NAME]\n"
          "       %s status [--broker URL] [--json]\n"
          "       %s test [BUSTED-ARGS...]\n"
          "       %s --version | --help\n\n"
          "run:  runs a Lua 5.4 job script with the mpengine module loaded.\n"
          "      A script that returns a table with a main function has main(...)\n"
          "      called with ARGS. The result is the exit status: nothing or true: 0,\n"
          "      false: 1, an integer 0-255: itself.\n"
          "test: runs busted under Lua 5.4 with the mpengine module loaded, in the\n"
          "      current folder. It takes $MPENGINE_BUSTED, else busted on PATH,\n"
          "      else /usr/bin/busted.\n"
          "worker: serves the pools of every run on the broker with N processes a\n"
          "      run (default: the CPUs) until SIGINT/SIGTERM, then hands back what it\n"
          "      holds. status: the broker's worker hosts and runs in progress.\n"
          "      --broker URL (default $MPENGINE_BROKER): redis://[[user]:password@]host[:port][/db]\n"
          "      or unix:///path/redis.sock[?password=...]; the environment keeps the\n"
          "      password out of ps.\n\n"
          "exit status: 0 success, 1 script error, 2 usage error (or a result that\n"
          "             is not an exit status), 128+N ended by signal N (130 for SIGINT,\n"
          "             143 for SIGTERM)\n",
          progname, progname, progname, progname, progname, progname, progname);
}

/* The broker URL of --broker (or $MPENGINE_BROKER), kept by the module;
 * a URL given on the command line is then blanked in argv, so its password
 * is not left in ps or /proc/PID/cmdline (the environment is the way that
 * never shows it: README). 0, or 2 with the reason said. */
static int take_broker(char *url) {
  char shown[512];
  if (mpe_broker_url_display(url, shown, sizeof shown) < 0) {
    fprintf(stderr, "%s: %s\n", progname, shown);
    return EXIT_USAGE;
  }
  if (mpel_set_run_broker(url) < 0) {
    fprintf(stderr, "%s: out of memory\n", progname);
    return 1;
  }
  return 0;
}

static void blank(char *arg) {
  char *at = strrchr(arg, '@'), *q = strstr(arg, "password=");
  if (at)
    for (char *p = strstr(arg, "://") ? strstr(arg, "://") + 3 : arg; p < at; p++) *p = '*';
  if (q)
    for (q += 9; *q && *q != '&'; q++) *q = '*';
}

/* What to run: a script file, a file read into memory first (standard
 * input as "-", or busted's script), or code given with -e. */
typedef struct job {
  const char *path;      /* run as a script file (its folder goes on package.path) */
  const char *read;      /* or read into memory: a file, or "-" */
  const char *code;      /* or -e CODE */
  const char *chunkname; /* for read and code */
  int argc;              /* argv[0] is what `arg[0]` shows */
  char **argv;
} job;

static int open_module(lua_State *L) {
  mpengine_lua_open(L);
  return 0;
}

/* Opens the module into L, protected: 0, or 1 with the error on top. */
static int lua_cpcall_open(lua_State *L) {
  lua_pushcfunction(L, open_module);
  return lua_pcall(L, 0, 0, 0) != LUA_OK;
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

/* Pushes the whole of f (a script from standard input, or busted's) with a
 * first line starting with '#' blanked, as lua.c skips it. Raises on a read
 * error. */
static void push_contents(lua_State *L, FILE *f, const char *what) {
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  size_t n;
  do {
    char *p = luaL_prepbuffer(&b);
    n = fread(p, 1, LUAL_BUFFERSIZE, f);
    luaL_addsize(&b, n);
  } while (n == LUAL_BUFFERSIZE);
  if (ferror(f)) luaL_error(L, "cannot read %s", what);
  luaL_pushresult(&b);
  const char *s = lua_tostring(L, -1);
  if (s[0] == '#') {
    const char *nl = strchr(s, '\n');
    lua_pushstring(L, nl ? nl : "");
    lua_replace(L, -2);
  }
}

/* Pushes a short picture of the value at idx for a message: a string
 * quoted (cut at 40 bytes), a number as Lua writes it, else its type. */
static const char *describe(lua_State *L, int idx) {
  if (lua_type(L, idx) == LUA_TSTRING) {
    size_t n;
    const char *s = lua_tolstring(L, idx, &n);
    if (n <= 40) return lua_pushfstring(L, "\"%s\"", s);
    return lua_pushfstring(L, "\"%s...\"", lua_pushlstring(L, s, 40));
  }
  if (lua_type(L, idx) == LUA_TNUMBER) return luaL_tolstring(L, idx, NULL);
  return lua_pushfstring(L, "a %s", luaL_typename(L, idx));
}

/* The exit status that n results from idx stand for, or -1 with a message
 * pushed when they stand for none. */
static int exit_status(lua_State *L, int idx, int n, int ran_main, const char *script) {
  if (n == 0 || lua_isnil(L, idx)) return 0;
  if (lua_isboolean(L, idx)) return !lua_toboolean(L, idx);
  int exact = 0;
  lua_Integer v = lua_type(L, idx) == LUA_TNUMBER ? lua_tointegerx(L, idx, &exact) : 0;
  if (exact && v >= 0 && v <= 255) return (int)v;
  const char *what = describe(L, idx);
  if (ran_main)
    lua_pushfstring(L, "main returned %s: expected nothing, true/false or an integer 0-255", what);
  else if (lua_istable(L, idx))
    lua_pushfstring(L, "%s returned a table without a main function: nothing to run "
                       "(a job script returns a table with main)", script);
  else
    lua_pushfstring(L, "%s returned %s: expected nothing, a table with main, true/false "
                       "or an integer 0-255", script, what);
  return -1;
}

/* A script that returned nothing but defines a field `main` (function
 * M.main, M.main = function) most likely forgot `return M`. */
static const char *const forgot_return =
    "local s = ...\n"
    "return s:find('function%s+[%w_.:]-[.:]%s*main%s*%(') or s:find('[.:]%s*main%s*=%s*function')";

static void warn_if_forgot_return(lua_State *L, const job *j, int source, const char *script) {
  int top = lua_gettop(L);
  if (source) lua_pushvalue(L, source);
  else if (j->code) lua_pushstring(L, j->code);
  else {
    FILE *f = fopen(j->path, "r");
    if (!f) return;
    push_contents(L, f, j->path);
    fclose(f);
  }
  if (luaL_loadstring(L, forgot_return) == LUA_OK) {
    lua_insert(L, -2);
    if (lua_pcall(L, 1, 1, 0) == LUA_OK && lua_toboolean(L, -1)) {
      fflush(stdout);
      fprintf(stderr, "%s: warning: %s defines a main function but returns nothing, so main "
                      "was not called (end the script with `return M`)\n", progname, script);
    }
  }
  lua_settop(L, top);
}

/* pmain(job): runs the job; returns the exit code and, on an error, its
 * message, and whether that error ended the run early. */
static int pmain(lua_State *L) {
  job *j = lua_touserdata(L, 1);
  luaL_openlibs(L);
  mpengine_lua_open(L);
  lua_getglobal(L, "os");
  lua_pushcfunction(L, host_exit);
  lua_setfield(L, -2, "exit");
  lua_settop(L, 0);
  char *err = NULL;
  const char *const *args = (const char *const *)j->argv;
  int n, source = 0; /* source: the index of a script read into memory */
  const char *script = j->path ? j->path : j->code ? "the -e code"
                     : strcmp(j->read, "-") == 0 ? "the script from standard input" : j->read;
  if (j->path) {
    n = mpengine_lua_run_file(L, j->path, j->argc, args, &err);
  } else {
    if (j->read) {
      FILE *f = strcmp(j->read, "-") == 0 ? stdin : fopen(j->read, "r");
      if (!f) return luaL_error(L, "cannot open %s", j->read);
      push_contents(L, f, script);
      if (f != stdin) fclose(f);
      source = 1;
    }
    n = mpengine_lua_run_string(L, j->code ? j->code : lua_tostring(L, 1), j->chunkname, j->argc,
                                args, &err);
  }
  if (n < 0 && exit_requested >= 0) {
    free(err);
    lua_pushinteger(L, exit_requested);
    return 1;
  }
  if (n < 0) {
    lua_pushinteger(L, mpel_signal ? 128 + mpel_signal : 1);
    lua_pushstring(L, err ? err : "out of memory");
    free(err);
    lua_pushboolean(L, 1);
    return 3;
  }
  lua_getfield(L, LUA_REGISTRYINDEX, "mpengine.ran_main");
  int ran_main = lua_toboolean(L, -1);
  lua_pop(L, 1);
  if (n == 0 && !ran_main) warn_if_forgot_return(L, j, source, script);
  int code = exit_status(L, source + 1, n, ran_main, script);
  if (code < 0) { /* a result that is no exit status: said, but the run ends normally */
    lua_pushinteger(L, EXIT_USAGE);
    lua_insert(L, -2);
    lua_pushboolean(L, 0);
    return 3;
  }
  lua_pushinteger(L, code);
  return 1;
}

/* ------------------------------------------------- worker and status */

static void print_event(void *arg, const char *line) {
  (void)arg;
  printf("%s: %s\n", progname, line);
  fflush(stdout);
}

/* The broker of --broker URL / --broker=URL at argv[*i] (blanked in argv),
 * else NULL. */
static char *broker_arg(int argc, char **argv, int *i) {
  if (strncmp(argv[*i], "--broker=", 9) == 0) return argv[*i] + 9;
  if (strcmp(argv[*i], "--broker") == 0 && *i + 1 < argc) return argv[++*i];
  return NULL;
}

/* mpengine worker --broker URL [--procs N] [--name NAME] */
static int cmd_worker(int argc, char **argv) {
  char *url = NULL;
  const char *name = NULL;
  long procs = 0;
  for (int i = 2; i < argc; i++) {
    char *b = broker_arg(argc, argv, &i);
    if (b) {
      url = b;
    } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
      usage(stdout);
      return 0;
    } else if (strcmp(argv[i], "--procs") == 0 && i + 1 < argc) {
      char *end;
      procs = strtol(argv[++i], &end, 10);
      if (*end || procs < 1 || procs > 4096) {
        fprintf(stderr, "%s: --procs needs a number of processes >= 1\n", progname);
        return EXIT_USAGE;
      }
    } else if (strcmp(argv[i], "--name") == 0 && i + 1 < argc) {
      name = argv[++i];
    } else {
      fprintf(stderr, "%s: worker: unknown or incomplete option '%s'\n", progname, argv[i]);
      return EXIT_USAGE;
    }
  }
  if (!url) url = getenv("MPENGINE_BROKER");
  if (!url || !*url) {
    fprintf(stderr, "%s: worker needs --broker URL (or MPENGINE_BROKER)\n", progname);
    return EXIT_USAGE;
  }
  int rc = take_broker(url);
  if (rc) return rc;
  if (url != getenv("MPENGINE_BROKER")) blank(url);
  const char *full = mpel_run_broker();
  lua_State *L = luaL_newstate();
  if (!L) return 1;
  luaL_openlibs(L);
  globalL = NULL; /* no Lua runs here: the host's loop sees the stop flag */
  install_signals();
  if (lua_cpcall_open(L) != 0) {
    fprintf(stderr, "%s: %s\n", progname, lua_tostring(L, -1));
    lua_close(L);
    return 1;
  }
  mpe_broker_on_event(print_event, NULL);
  rc = mpel_serve_broker(L, full, (int)procs, name);
  char shown[512];
  mpe_broker_url_display(full, shown, sizeof shown);
  if (rc < 0)
    fprintf(stderr, "%s: worker: cannot serve %s: %s\n", progname, shown,
            rc == -EACCES ? "refused (a broker off loopback needs a password in its URL: whoever can write to it "
                            "runs code on every worker; or the password is wrong)"
                          : mpe_strerror(rc));
  lua_close(L);
  return rc < 0 ? 1 : 0;
}

static void json_str(const char *s) {
  putchar('"');
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\') printf("\\%c", c);
    else if (c < 0x20) printf("\\u%04x", c);
    else putchar(c);
  }
  putchar('"');
}

/* mpengine status --broker URL [--json] */
static int cmd_status(int argc, char **argv) {
  char *url = NULL;
  int json = 0;
  for (int i = 2; i < argc; i++) {
    char *b = broker_arg(argc, argv, &i);
    if (b) url = b;
    else if (strcmp(argv[i], "--json") == 0) json = 1;
    else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
      usage(stdout);
      return 0;
    }
    else {
      fprintf(stderr, "%s: status: unknown or incomplete option '%s'\n", progname, argv[i]);
      return EXIT_USAGE;
    }
  }
  if (!url) url = getenv("MPENGINE_BROKER");
  if (!url || !*url) {
    fprintf(stderr, "%s: status needs --broker URL (or MPENGINE_BROKER)\n", progname);
    return EXIT_USAGE;
  }
  char *copy = strdup(url), err[512] = "";
  if (!copy) return 1;
  if (url != getenv("MPENGINE_BROKER")) blank(url);
  static mpe_broker_host_info h[256];
  static mpe_broker_run_info r[64];
  int nh = 256, nr = 64;
  int rc = mpe_broker_status(copy, h, &nh, r, &nr, err, sizeof err);
  memset(copy, 0, strlen(copy));
  free(copy);
  if (rc < 0) {
    fprintf(stderr, "%s: status: %s\n", progname, err[0] ? err : mpe_strerror(rc));
    return rc == -EINVAL ? EXIT_USAGE : 1;
  }
  if (nh > 256) nh = 256;
  if (nr > 64) nr = 64;
  if (json) {
    printf("{\"hosts\": [");
    for (int i = 0; i < nh; i++) {
      printf("%s{\"name\": ", i ? ", " : "");
      json_str(h[i].name);
      printf(", \"pid\": %d, \"procs\": %d, \"busy\": %d, \"done\": %llu, \"failed\": %llu, "
             "\"last_seen\": %.1f}", h[i].pid, h[i].procs, h[i].busy, (unsigned long long)h[i].done,
             (unsigned long long)h[i].failed, h[i].seen);
    }
    printf("], \"runs\": [");
    for (int i = 0; i < nr; i++) {
      printf("%s{\"run\": ", i ? ", " : "");
      json_str(r[i].run);
      printf(", \"script\": ");
      json_str(r[i].script);
      printf(", \"queued\": %lld, \"running\": %lld, \"done\": %lld, \"failed\": %lld}", r[i].queued,
             r[i].running, r[i].done, r[i].failed);
    }
    printf("]}\n");
    return 0;
  }
  printf("worker hosts: %d\n", nh);
  if (nh) printf("  %-20s %8s %6s %5s %10s %8s %10s\n", "NAME", "PID", "PROCS", "BUSY", "DONE", "FAILED", "LAST SEEN");
  for (int i = 0; i < nh; i++)
    printf("  %-20s %8d %6d %5d %10llu %8llu %9.1fs\n", h[i].name, h[i].pid, h[i].procs, h[i].busy,
           (unsigned long long)h[i].done, (unsigned long long)h[i].failed, h[i].seen);
  printf("runs in progress: %d\n", nr);
  if (nr) printf("  %-30s %10s %10s %10s %8s  %s\n", "RUN", "QUEUED", "RUNNING", "DONE", "FAILED", "SCRIPT");
  for (int i = 0; i < nr; i++)
    printf("  %-30s %10lld %10lld %10lld %8lld  %s\n", r[i].run, r[i].queued, r[i].running, r[i].done,
           r[i].failed, r[i].script);
  return 0;
}

/* busted's Lua script: $MPENGINE_BUSTED, `busted` on PATH, /usr/bin/busted. */
static const char *find_busted(char *buf, size_t size) {
  const char *env = getenv("MPENGINE_BUSTED");
  if (env && *env) return env;
  const char *path = getenv("PATH");
  while (path && *path) {
    size_t len = strcspn(path, ":");
    if (len > 0 && len + sizeof "/busted" <= size) {
      memcpy(buf, path, len);
      memcpy(buf + len, "/busted", sizeof "/busted");
      if (access(buf, R_OK) == 0) return buf;
    }
    path += len + (path[len] == ':');
  }
  return access("/usr/bin/busted", R_OK) == 0 ? "/usr/bin/busted" : NULL;
}

/* 0 if path looks like a Lua script (busted's), else says why not. */
static int check_busted(const char *path) {
  FILE *f = fopen(path, "r");
  if (!f) {
    fprintf(stderr, "%s: cannot open busted at %s\n", progname, path);
    return -1;
  }
  char line[256] = "";
  if (!fgets(line, sizeof line, f)) line[0] = 0;
  fclose(f);
  if (strncmp(line, "#!", 2) == 0 && !strstr(line, "lua")) {
    fprintf(stderr,
            "%s: %s is not busted's Lua script (a wrapper made by luarocks?); set MPENGINE_BUSTED\n"
            "to the Lua script it runs (.../rocks/busted/VERSION/bin/busted)\n",
            progname, path);
    return -1;
  }
  return 0;
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
  if (strcmp(argv[1], "worker") == 0) return cmd_worker(argc, argv);
  if (strcmp(argv[1], "status") == 0) return cmd_status(argc, argv);
  job j = {0};
  char busted[4096], chunkname[4100];
  if (strcmp(argv[1], "test") == 0) {
    /* argv[1] becomes arg[0]: busted's path, then its own arguments */
    const char *b = find_busted(busted, sizeof busted);
    if (!b) {
      fprintf(stderr, "%s: busted not found (install busted, or set MPENGINE_BUSTED)\n", progname);
      return EXIT_USAGE;
    }
    if (check_busted(b) != 0) return EXIT_USAGE;
    /* read into memory, so that busted's folder does not go on package.path */
    j.read = find_busted(busted, sizeof busted);
    argv[1] = (char *)j.read;
    snprintf(chunkname, sizeof chunkname, "@%s", j.read);
    j.chunkname = chunkname;
    j.argc = argc - 1;
    j.argv = argv + 1;
  } else if (strcmp(argv[1], "run") == 0) {
    int first = 2, broker_given = 0;
    while (first < argc && argv[first][0] == '-' && argv[first][1]) {
      if (strcmp(argv[first], "--progress") == 0) {
        setenv("MPENGINE_PROGRESS", "1", 1);
      } else if (strcmp(argv[first], "--broker") == 0 || strncmp(argv[first], "--broker=", 9) == 0) {
        char *url = argv[first][8] == '=' ? argv[first] + 9 : first + 1 < argc ? argv[++first] : NULL;
        if (!url) {
          fprintf(stderr, "%s: --broker needs a URL\n", progname);
          return EXIT_USAGE;
        }
        int rc = take_broker(url);
        if (rc) return rc;
        blank(url);
        broker_given = 1;
      } else if (strcmp(argv[first], "--help") == 0 || strcmp(argv[first], "-h") == 0) {
        usage(stdout);
        return 0;
      } else if (strcmp(argv[first], "-e") == 0) {
        if (first + 1 >= argc) {
          fprintf(stderr, "%s: -e needs CODE\n", progname);
          return EXIT_USAGE;
        }
        j.code = argv[first + 1];
        j.chunkname = "=(command line)";
        first++; /* argv[first] ("-e") becomes arg[0] */
        break;
      } else if (strcmp(argv[first], "--") == 0) {
        first++;
        break;
      } else {
        fprintf(stderr, "%s: unknown option '%s'\n", progname, argv[first]);
        return EXIT_USAGE;
      }
      first++;
    }
    const char *env = getenv("MPENGINE_BROKER");
    if (!broker_given && env && *env) {
      int rc = take_broker((char *)env);
      if (rc) return rc;
    }
    if (first >= argc) {
      fprintf(stderr, "%s: run needs a SCRIPT (or -e CODE, or - for standard input)\n", progname);
      return EXIT_USAGE;
    }
    if (j.code) {
      argv[first] = "-e";
      j.argc = argc - first;
      j.argv = argv + first;
    } else {
      if (strcmp(argv[first], "-") == 0) j.read = "-";
      else j.path = argv[first];
      j.chunkname = "=stdin";
      j.argc = argc - first;
      j.argv = argv + first;
    }
  } else {
    fprintf(stderr, "%s: unknown command '%s'\n", progname, argv[1]);
    usage(stderr);
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
  lua_pushlightuserdata(L, &j);
  int status = lua_pcall(L, 1, 3, 0);
  int code;
  if (status != LUA_OK) {
    code = 1;
    lua_pushinteger(L, code);
    lua_insert(L, -2);
    lua_pushboolean(L, 1);
  }
  code = (int)lua_tointeger(L, -3);
  int said = lua_type(L, -2) == LUA_TSTRING || (!lua_isnil(L, -2) && !lua_isinteger(L, -2));
  int failed = said && lua_toboolean(L, -1); /* an error, not a bad result */
  if (said) {
    const char *msg = lua_tostring(L, -2);
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
