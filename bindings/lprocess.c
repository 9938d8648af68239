/* lprocess.c - mp.Process and the module's view of its children.
 *
 * start() forks: the child is a copy of the parent at that moment and calls
 * the target there, so closures, globals and loaded modules are simply
 * present. Target and args are still checked with the codec first, so what a
 * Process accepts is exactly what every other channel accepts (and the pipe
 * ends they reach are the ones the child keeps; the child closes all others,
 * so EOF works without a ritual of closes).
 *
 * The registry table "mpengine.children" holds every started, unreaped
 * Process (as Python's _children): start() and active_children() drop the
 * ended ones from it, join() its own, and the sentinel's __gc (lmodule.c)
 * ends the run through mpel_processes_atexit. It is an array whose slots
 * are reused, and each Process knows its slot: a start or a join writes one
 * slot, not a hash node and the table's header (two pages to copy, after a
 * fork).
 *
 * A handle is in one of five states: NEW, STARTED (ours: it can be joined
 * and signalled), CLOSED, FOREIGN (received from another process, or the
 * parent as mp.parent_process() gives it: pid, name and is_alive only) and
 * SELF (mp.current_process()). On the wire a handle is its pid and name; a
 * pid of 0 (an unstarted handle) or beyond any pid names no process. */
/* dladdr, RTLD_NODELETE: _GNU_SOURCE is set by the build */
#include <dlfcn.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "mpe_lua.h"

enum { NEW, STARTED, CLOSED, FOREIGN, SELF };

/* A Process keeps its name, target and args as user values (no table of
 * its own: a start allocates as little as it can). A default name is made
 * when asked, from num. */
enum { UV_NAME = 1, UV_TARGET, UV_ARGS, NUV = UV_ARGS };

typedef struct lproc {
  mpe_process *h;
  int state;
  int daemon;
  lua_Integer pid; /* the pid a FOREIGN handle names, a CLOSED one named; 0: none
                      (a STARTED one asks h: see proc_pid) */
  lua_Integer num; /* the N of the default name "Process-N", while UV_NAME is nil */
  lua_Integer slot; /* its slot in the children table while STARTED; 0: none */
} lproc;

static lua_Integer counter;
static int self_daemon; /* in a child: the daemon flag of the Process it runs */

/* What a child changes in the registry, it changes when first asked, not
 * at start: every page a new child writes is a page fault (a copy of the
 * parent's page), and a child that never starts a process nor asks for its
 * parent should pay for none of it. The flags below are set by
 * mpel_child_begin and say "the registry's entry is the parent's". What the
 * child needs first the parent makes before fork (mpel_child_prepare): its
 * own name for the child's parent_process(), the os.exit a child uses, the
 * thread the target runs on. These variables share one page with the rest
 * of the module's, which the child writes anyway. */
static int stale_children, stale_self, stale_parent;
static lua_Integer nslots; /* slots of the children table used so far */
static const void *slots_of; /* the children table nslots counts (a program may have several states) */
static lua_Integer parent_pid;
/* The parent's name, copied (its string may be collected here): two
 * buffers, so that preparing a child of our own (into the other one) leaves
 * ours alone. A name that does not fit: the child makes the handle at once. */
static char name_buf[2][256];
static int own_buf, next_buf, next_long;
/* A child's own default name, by the same turns (its parent's string is
 * made only when asked). */
static char default_name[2][32];
static int spare_busy;        /* in a child: the spare thread runs this process's target */

static lproc *check_proc(lua_State *L, int idx) { return luaL_checkudata(L, idx, "Process"); }

/* start() marks a handle started, and the engine gives it its record,
 * before fork, so that the parent writes neither after it (this
 * userdata's page would be copied while the child runs). The record's pid
 * comes after fork, in the parent only: so the child's copy of the handle
 * it was started from, pid 0, is the handle as it was, not started. */
static int state_of(const lproc *p) {
  if (p->state == STARTED && p->h && mpe_process_pid(p->h) == 0) return NEW;
  return p->state;
}

/* A started handle's pid is the engine's (see state_of). */
static lua_Integer proc_pid(const lproc *p) {
  return state_of(p) == STARTED ? (lua_Integer)mpe_process_pid(p->h) : p->pid;
}

/* Before the engine handle goes: the pid stays known. */
static void keep_pid(lproc *p) { p->pid = proc_pid(p); }

static void push_children(lua_State *L) {
  if (lua_getfield(L, LUA_REGISTRYINDEX, "mpengine.children") != LUA_TTABLE || stale_children) {
    stale_children = 0; /* the parent's children are our siblings */
    nslots = 0;
    lua_pop(L, 1);
    lua_createtable(L, 8, 0);
    lua_pushvalue(L, -1);
    lua_setfield(L, LUA_REGISTRYINDEX, "mpengine.children");
  } else if (lua_topointer(L, -1) != slots_of) { /* another state's: count its slots */
    nslots = 0;
    lua_pushnil(L);
    while (lua_next(L, -2)) {
      lua_pop(L, 1);
      if (lua_tointeger(L, -1) > nslots) nslots = lua_tointeger(L, -1);
    }
  }
  slots_of = lua_topointer(L, -1);
}

static void check_open(lua_State *L, const lproc *p) {
  if (state_of(p) == CLOSED) luaL_error(L, "Process: closed");
}

mpe_process *mpel_test_process(lua_State *L, int idx) {
  lproc *p = luaL_testudata(L, idx, "Process");
  if (!p) return NULL;
  check_open(L, p);
  int st = state_of(p);
  if (st == NEW) luaL_error(L, "Process: not started");
  if (st != STARTED) luaL_error(L, "Process: only a child of this process can be waited on");
  return p->h;
}

/* 1 and *code once exited (reaping), 0 while running or not started. */
static int proc_exitcode(lproc *p, int *code) {
  if (state_of(p) != STARTED || !p->h) return 0;
  return mpe_process_exitcode(p->h, code) == 1;
}

/* Drops what the spare thread holds for the last start: the child has its
 * own copy. Done by join(), when an ended child leaves the children table
 * (a Process dropped unjoined is then collectable, and so must its args
 * be: a pipe end among them closes) and by the next start, not right after
 * fork, where it would write the page the thread sits on while the child
 * runs (a copy, and a slow one while the child faults too). Until then the
 * thread keeps the last target and its arguments alive, as the Process
 * itself does. In a child running its target on it, it is left alone. */
static void clear_spare(lua_State *L) {
  if (spare_busy) return;
  if (lua_getfield(L, LUA_REGISTRYINDEX, "mpengine.spare") == LUA_TTHREAD) lua_settop(lua_tothread(L, -1), 0);
  lua_pop(L, 1);
}

/* Drops the ended children from the children table at ch; appends the
 * running ones to the list at list, if list is not 0. Returns the first
 * free slot. */
static lua_Integer prune_children(lua_State *L, int ch, int list) {
  lua_Integer n = 0, free_slot = 0;
  int dropped = 0;
  for (lua_Integer i = 1; i <= nslots; i++) {
    lproc *p = lua_rawgeti(L, ch, i) == LUA_TUSERDATA ? lua_touserdata(L, -1) : NULL;
    int code;
    if (p && state_of(p) == STARTED && !proc_exitcode(p, &code)) {
      if (list) {
        lua_pushvalue(L, -1);
        lua_rawseti(L, list, ++n);
      }
    } else {
      if (p) {
        p->slot = 0;
        lua_pushnil(L);
        lua_rawseti(L, ch, i);
        dropped = 1;
      }
      if (!free_slot) free_slot = i;
    }
    lua_pop(L, 1);
  }
  if (dropped) clear_spare(L);
  return free_slot ? free_slot : nslots + 1;
}

/* Lists the Process at idx in the children table at ch, in its first free
 * slot (ended children are dropped on the way). */
static void take_slot(lua_State *L, int ch, int idx) {
  lproc *p = lua_touserdata(L, idx);
  p->slot = prune_children(L, ch, 0);
  if (p->slot > nslots) nslots = p->slot;
  lua_pushvalue(L, idx);
  lua_rawseti(L, ch, p->slot);
}

/* Takes the Process at idx out of the children table at ch. */
static void drop_child(lua_State *L, int ch, int idx) {
  lproc *p = lua_touserdata(L, idx);
  if (!p->slot) return;
  if (lua_rawgeti(L, ch, p->slot) == LUA_TUSERDATA && lua_rawequal(L, -1, idx)) {
    lua_pushnil(L);
    lua_rawseti(L, ch, p->slot);
  }
  lua_pop(L, 1);
  p->slot = 0;
}

/* "Process-N" into buf (by hand: snprintf's frame would reach a page of
 * stack that nothing else here writes, to be copied after each fork). */
static const char *default_name_of(char buf[32], lua_Integer num) {
  char digits[24];
  int n = 0;
  unsigned long long v = (unsigned long long)num;
  do digits[n++] = (char)('0' + v % 10); while ((v /= 10) != 0 && n < (int)sizeof digits);
  memcpy(buf, "Process-", 8);
  for (int i = 0; i < n; i++) buf[8 + i] = digits[n - 1 - i];
  buf[8 + n] = 0;
  return buf;
}

/* Pushes the name of the handle at idx. */
static void p_name(lua_State *L, int idx) {
  lproc *p = lua_touserdata(L, idx);
  if (state_of(p) == SELF) {
    lua_pushstring(L, mpel_process_name);
    return;
  }
  if (lua_getiuservalue(L, idx, UV_NAME) == LUA_TSTRING) return;
  lua_pop(L, 1);
  char buf[32];
  lua_pushstring(L, default_name_of(buf, p->num));
}

/* Pushes a handle of state st naming pid (0: no process) and name. */
static void push_handle(lua_State *L, int st, lua_Integer pid, const char *name, size_t len) {
  lproc *p = lua_newuserdatauv(L, sizeof *p, NUV);
  memset(p, 0, sizeof *p);
  p->state = st;
  p->pid = pid;
  luaL_setmetatable(L, "Process");
  lua_pushlstring(L, name, len);
  lua_setiuservalue(L, -2, UV_NAME);
}

static const char *const allowed[] = {"target", "args", "name", "daemon", NULL};

static int l_process(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_pushnil(L);
  while (lua_next(L, 1)) {
    lua_pop(L, 1);
    const char *k = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
    int ok = 0;
    for (int i = 0; k && allowed[i] && !ok; i++) ok = strcmp(k, allowed[i]) == 0;
    if (!ok) return luaL_error(L, "Process: unknown option '%s' (expected target, args, name, daemon)",
                               k ? k : luaL_typename(L, -1));
  }
  lproc *p = lua_newuserdatauv(L, sizeof *p, NUV);
  memset(p, 0, sizeof *p);
  luaL_setmetatable(L, "Process");
  if (lua_getfield(L, 1, "target") != LUA_TFUNCTION) return luaL_error(L, "Process: target must be a function");
  lua_setiuservalue(L, -2, UV_TARGET);
  int t = lua_getfield(L, 1, "args");
  if (t != LUA_TNIL && t != LUA_TTABLE) return luaL_error(L, "Process: args must be a table");
  lua_setiuservalue(L, -2, UV_ARGS); /* nil: none */
  t = lua_getfield(L, 1, "name");
  if (t != LUA_TNIL && t != LUA_TSTRING) return luaL_error(L, "Process: name must be a string");
  if (t == LUA_TNIL) p->num = ++counter;
  lua_setiuservalue(L, -2, UV_NAME);
  t = lua_getfield(L, 1, "daemon");
  if (t != LUA_TNIL && t != LUA_TBOOLEAN) return luaL_error(L, "Process: daemon must be a boolean");
  p->daemon = lua_toboolean(L, -1);
  lua_pop(L, 1);
  return 1;
}

static int child_exit(lua_State *L) {
  /* os.exit in a child: leave at once, with none of the parent's clean-up;
   * our own children are joined first, as when the target returns. */
  int code = lua_isboolean(L, 1) ? !lua_toboolean(L, 1) : (int)luaL_optinteger(L, 1, 0);
  mpel_handles_fork(L, MPEL_CHILD_ENDS);
  mpe_process_join_all(-1);
  fflush(NULL);
  _exit(code & 255);
}

/* os.exit: in a child of the run, child_exit; elsewhere the os.exit it
 * replaced (upvalue 1). The parent installs it before fork, so that a child
 * finds it in place and writes nothing. */
static int os_exit(lua_State *L) {
  if (mpe_in_child()) return child_exit(L);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
  return lua_gettop(L);
}

static void install_os_exit(lua_State *L) {
  if (lua_getglobal(L, "os") == LUA_TTABLE) {
    lua_getfield(L, -1, "exit");
    if (lua_tocfunction(L, -1) != os_exit) {
      lua_pushcclosure(L, os_exit, 1);
      lua_setfield(L, -2, "exit");
    } else {
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1);
}

void mpel_child_prepare(lua_State *L) {
  size_t len = strlen(mpel_process_name);
  next_buf = !own_buf;
  next_long = len >= sizeof name_buf[0];
  if (!next_long) memcpy(name_buf[next_buf], mpel_process_name, len + 1);
  install_os_exit(L);
}

MPE_CHILD_PATH void mpel_child_begin(lua_State *L, pid_t parent, const char *name, int daemon) {
  /* The engine gave the child default signal handlers: Ctrl-C, which
   * reaches the whole process group, just ends it. */
  mpel_signal = 0;
  if (lua_gethookmask(L)) lua_sethook(L, NULL, 0, 0);
  /* mp.parent_process(), mp.current_process() and the children table are
   * made when first asked (see stale_children) */
  stale_children = stale_self = 1;
  parent_pid = (lua_Integer)parent;
  own_buf = next_buf;
  stale_parent = !next_long;
  if (next_long) { /* a long name: the handle now */
    push_handle(L, FOREIGN, (lua_Integer)parent, mpel_process_name, strlen(mpel_process_name));
    lua_setfield(L, LUA_REGISTRYINDEX, "mpengine.parent");
  }
  self_daemon = daemon;
  mpel_process_name = name;
  mpel_handles_child_begin();
}

/* Pushes the thread a child runs its target on: one per process, made and
 * run once here, so that it has a call frame ready. The parent puts the
 * target and its arguments on it before fork, and the child only resumes
 * it: a child that touched the parent's stack, or allocated, would copy
 * more of the parent's pages. The child gets its copy; this process keeps
 * its own for the next start (join, or that start, clears it). */
static int return_nothing(lua_State *L) {
  (void)L;
  return 0;
}

/* The spare thread's memory (its state, stack and first call frame) sits
 * here, among the variables above: a child writes this page anyway, and
 * would otherwise copy two more of the heap's to run its target. Lua takes
 * memory only from the state's allocator, so the module puts spare_alloc in
 * front of it: it hands out this block while the thread is being made, and
 * passes every other call through, with the allocator's own ud, to the
 * allocator it found. A block here is never freed (the state is closed, or
 * the thread grew into the heap); it is made once per process. The module's
 * code must then outlive the state: it is pinned in memory (or linked into
 * the program, mpel_resident), or the thread is made in the heap. */
static unsigned char spare_mem[1536] __attribute__((aligned(16)));
static size_t spare_used;
static int spare_placing;
static lua_Alloc base_alloc;
int mpel_resident;

static int in_spare_mem(const void *ptr) {
  const unsigned char *b = ptr;
  return b >= spare_mem && b < spare_mem + sizeof spare_mem;
}

static void *spare_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  if (ptr && in_spare_mem(ptr)) {
    if (nsize <= osize) return nsize ? ptr : NULL; /* freed or shrunk: the space stays */
    void *n = base_alloc(ud, NULL, 0, nsize);      /* grown: into the heap */
    if (n) memcpy(n, ptr, osize);
    return n;
  }
  size_t need = (nsize + 15) & ~(size_t)15;
  if (!ptr && spare_placing && nsize && spare_used + need <= sizeof spare_mem) {
    void *r = spare_mem + spare_used;
    spare_used += need;
    return r;
  }
  return base_alloc(ud, ptr, osize, nsize);
}

/* 1 if this module's code stays mapped until the process ends. */
static int code_stays(void) {
  if (mpel_resident) return 1;
  Dl_info di;
  return dladdr((void *)spare_alloc, &di) && di.dli_fname &&
         dlopen(di.dli_fname, RTLD_LAZY | RTLD_NOLOAD | RTLD_NODELETE) != NULL;
}

/* Before the spare thread is made: its memory comes from spare_mem if this
 * is the first one, in this process, of a state spare_alloc can front. */
static void place_spare(lua_State *L) {
  void *ud;
  lua_Alloc f = lua_getallocf(L, &ud);
  if (f == spare_alloc) {
    spare_placing = 1;
  } else if (!base_alloc && spare_used == 0 && code_stays()) {
    base_alloc = f;
    lua_setallocf(L, spare_alloc, ud);
    spare_placing = 1;
  }
}

static lua_State *push_spare(lua_State *L) {
  if (!spare_busy && lua_getfield(L, LUA_REGISTRYINDEX, "mpengine.spare") == LUA_TTHREAD) {
    lua_State *co = lua_tothread(L, -1);
    lua_settop(co, 0);
    return co;
  }
  if (!spare_busy) lua_pop(L, 1);
  place_spare(L);
  lua_State *co = lua_newthread(L);
  int nres;
  lua_pushcfunction(co, return_nothing);
  if (lua_resume(co, L, 0, &nres) != LUA_OK) luaL_error(L, "Process: cannot start (%s)", lua_tostring(co, -1));
  spare_placing = 0;
  lua_settop(co, 0);
  lua_pushvalue(L, -1);
  lua_setfield(L, LUA_REGISTRYINDEX, "mpengine.spare");
  spare_busy = 0; /* the one in use stays on its child's stack */
  return co;
}

typedef struct child_ctx {
  lua_State *L;
  lua_State *co;    /* the spare thread: the target and its arguments on it */
  int nargs;
  const char *name; /* the Process's name, kept alive by its table */
  int daemon;
  pid_t parent;     /* the process that starts it */
} child_ctx;

MPE_CHILD_PATH static int child_main(void *arg) {
  child_ctx *c = arg;
  lua_State *L = c->L, *co = c->co;
  mpel_child_begin(L, c->parent, c->name, c->daemon);
  if (lua_gethookmask(co)) lua_sethook(co, NULL, 0, 0);
  spare_busy = 1;
  /* The target runs in its own coroutine, so a traceback shows the child's
   * frames only, not the parent's call to start() it was forked from. */
  int nres = 0;
  int st = lua_resume(co, L, c->nargs, &nres);
  if (st == LUA_OK) {
    mpel_handles_fork(L, MPEL_CHILD_ENDS);
    return 0;
  }
  if (st == LUA_YIELD) lua_pushliteral(co, "attempt to yield from outside a coroutine");
  const char *msg = lua_tostring(co, -1);
  if (!msg) {
    if (luaL_callmeta(co, -1, "__tostring") && lua_type(co, -1) == LUA_TSTRING) msg = lua_tostring(co, -1);
    else msg = lua_pushfstring(co, "(error object is a %s value)", luaL_typename(co, -1));
  }
  luaL_traceback(L, co, msg, 0);
  /* As the main script's error does: our own children are killed (the
   * engine then reaps them), not waited for. */
  mpe_process_signal_all(SIGKILL);
  mpel_handles_fork(L, MPEL_CHILD_ENDS); /* a controlled end: give our references back */
  fflush(stdout);
  fprintf(stderr, "Process %s (pid %ld) failed:\n%s\n", mpel_process_name, (long)getpid(),
          lua_tostring(L, -1));
  return 1;
}

static int p_start(lua_State *L) {
  lproc *p = check_proc(L, 1);
  lua_settop(L, 1);
  if (state_of(p) != NEW) return luaL_error(L, "Process: cannot start a process twice");
  /* A check only: nothing is sent, no reference taken. Its wire is this
   * file's, on the page start() writes anyway. */
  static mpel_wire check_wire;
  mpel_wire *w = mpel_wire_begin(&check_wire, 1);
  w->transfer = 0;
  w->check = 1;
  lua_getiuservalue(L, 1, UV_TARGET); /* 2 */
  mpel_encode(L, 2, "target", w);
  if (lua_getiuservalue(L, 1, UV_ARGS) == LUA_TTABLE) mpel_encode(L, 3, "args", w); /* 3, or nil */
  mpe_pipe *keep[MPEL_MAX_ENDS];
  size_t nkeep = w->nends;
  memcpy(keep, w->ends, nkeep * sizeof *keep);
  mpel_wire_trim(w, 64u << 10); /* a start with big args leaves no big buffer behind */
  /* This process writes what it can before fork: after it, each page it
   * writes is copied while the child lives. So the Process is listed now
   * (and taken out if fork fails), and the child's thread is ready. */
  push_children(L); /* 4 */
  take_slot(L, 4, 1);
  mpe_spawn_options o = {.daemon = p->daemon, .keep = keep, .nkeep = nkeep};
  child_ctx c = {.L = L, .co = push_spare(L), .daemon = p->daemon, .parent = mpe_self_pid()};
  if (lua_getiuservalue(L, 1, UV_NAME) == LUA_TSTRING)
    c.name = lua_tostring(L, -1); /* kept alive by the Process */
  lua_Integer n = lua_istable(L, 3) ? (lua_Integer)lua_rawlen(L, 3) : 0;
  luaL_checkstack(L, (int)n + 4, "too many arguments");
  luaL_checkstack(c.co, (int)n + 4, "too many arguments");
  lua_pushvalue(L, 2);
  for (lua_Integer i = 1; i <= n; i++) lua_rawgeti(L, 3, i);
  lua_xmove(L, c.co, (int)n + 1);
  c.nargs = (int)n;
  mpel_child_prepare(L);
  if (!c.name) c.name = default_name_of(default_name[next_buf], p->num);
  /* The child's references to the shared objects it inherits are taken
   * here, before fork: taken in the child, an object this process drops
   * meanwhile could be freed before the child holds it. */
  mpel_handles_fork(L, MPEL_FOR_CHILD);
  p->state = STARTED; /* and p->h is set before fork: nothing here after it */
  int rc = mpe_process_spawn(&p->h, child_main, &c, &o);
  if (rc < 0) {
    lua_settop(c.co, 0);
    p->state = NEW;
    mpel_handles_fork(L, MPEL_FORK_FAILED);
    drop_child(L, 4, 1);
    return mpel_fail(L, "Process: cannot start", rc);
  }
  return 0;
}

static int p_join(lua_State *L) {
  lproc *p = check_proc(L, 1);
  double timeout = mpel_opt_timeout(L, 2);
  int st = state_of(p);
  if (st == NEW) return luaL_error(L, "Process: cannot join a process that was not started");
  if (st == SELF) return luaL_error(L, "Process: the current process cannot join itself");
  if (st != STARTED) return luaL_error(L, "Process: cannot join a %s process", st == CLOSED ? "closed" : "foreign");
  double deadline = mpel_deadline(timeout);
  int rc;
  while ((rc = mpe_process_wait(p->h, mpel_left(deadline))) == MPE_EINTR) mpel_check_signal(L);
  if (rc < 0 && rc != MPE_ETIMEDOUT) return mpel_fail(L, "join", rc);
  if (rc == 0) { /* joined: no longer an active child (as Python's join) */
    clear_spare(L);
    push_children(L);
    drop_child(L, lua_gettop(L), 1);
    lua_pop(L, 1);
  }
  return mpel_push_bool(L, rc == 0); /* false, "timeout" when it timed out */
}

static int p_is_alive(lua_State *L) {
  lproc *p = check_proc(L, 1);
  check_open(L, p);
  int code;
  /* pid 0 names no process: kill(0, 0) would ask about our process group */
  int st = state_of(p);
  if (st == FOREIGN) lua_pushboolean(L, p->pid > 0 && kill((pid_t)p->pid, 0) == 0);
  else lua_pushboolean(L, st == SELF || (st == STARTED && !proc_exitcode(p, &code)));
  return 1;
}

static int send_signal(lua_State *L, int sig) {
  lproc *p = check_proc(L, 1);
  check_open(L, p);
  int st = state_of(p);
  if (st == NEW) return luaL_error(L, "Process: not started");
  if (st == STARTED) mpe_process_signal(p->h, sig);
  else if (st == FOREIGN) return luaL_error(L, "Process: a handle received from another process cannot signal");
  else if (st == SELF) return luaL_error(L, "Process: the current process cannot signal itself (use os.exit)");
  return 0;
}

static int p_terminate(lua_State *L) { return send_signal(L, SIGTERM); }
static int p_kill(lua_State *L) { return send_signal(L, SIGKILL); }

static int p_close(lua_State *L) {
  lproc *p = check_proc(L, 1);
  int code;
  int st = state_of(p);
  if (st == SELF) return 0; /* mp.current_process() stays usable */
  if (st == STARTED && !proc_exitcode(p, &code))
    return luaL_error(L, "Process: cannot close a process that is still running");
  keep_pid(p);
  if (p->h) mpe_process_free(p->h);
  p->h = NULL;
  p->state = CLOSED;
  return 0;
}

static int p_gc(lua_State *L) {
  lproc *p = check_proc(L, 1);
  int code;
  if (p->h) {
    keep_pid(p);
    if (proc_exitcode(p, &code)) mpe_process_free(p->h);
    else mpe_process_detach(p->h); /* still running: the engine reaps it */
  }
  p->h = NULL;
  /* Other finalizers may still see this handle while the state closes. */
  if (state_of(p) == STARTED) p->state = CLOSED;
  return 0;
}

static int p_index(lua_State *L) {
  lproc *p = check_proc(L, 1);
  const char *k = luaL_checkstring(L, 2);
  int code;
  if (strcmp(k, "pid") == 0) {
    lua_Integer pid = proc_pid(p);
    if (pid > 0 && state_of(p) != CLOSED) lua_pushinteger(L, pid);
    else lua_pushnil(L);
  } else if (strcmp(k, "exitcode") == 0) {
    if (proc_exitcode(p, &code)) lua_pushinteger(L, code);
    else lua_pushnil(L);
  } else if (strcmp(k, "name") == 0) {
    p_name(L, 1);
  } else if (strcmp(k, "daemon") == 0) {
    lua_pushboolean(L, state_of(p) == SELF ? self_daemon : p->daemon);
  } else {
    lua_getmetatable(L, 1);
    lua_getfield(L, -1, "methods");
    lua_getfield(L, -1, k);
  }
  return 1;
}

static int p_newindex(lua_State *L) {
  lproc *p = check_proc(L, 1);
  const char *k = luaL_checkstring(L, 2);
  if (strcmp(k, "name") == 0) {
    luaL_checktype(L, 3, LUA_TSTRING);
    if (state_of(p) == SELF) { /* the name errors and children report */
      lua_pushvalue(L, 3);
      lua_setfield(L, LUA_REGISTRYINDEX, "mpengine.self_name"); /* keeps it alive */
      mpel_process_name = lua_tostring(L, 3);
      return 0;
    }
    lua_pushvalue(L, 3);
    lua_setiuservalue(L, 1, UV_NAME);
  } else if (strcmp(k, "daemon") == 0) {
    luaL_checktype(L, 3, LUA_TBOOLEAN);
    if (state_of(p) != NEW) return luaL_error(L, "Process: cannot set daemon after start");
    p->daemon = lua_toboolean(L, 3);
  } else {
    return luaL_error(L, "Process: cannot set field '%s'", k);
  }
  return 0;
}

static int p_tostring(lua_State *L) {
  lproc *p = check_proc(L, 1);
  int code = 0;
  p_name(L, 1);
  int st = state_of(p);
  const char *says = st == NEW ? "initial" : st == CLOSED ? "closed" : st == SELF ? "current"
                   : st == FOREIGN ? "foreign" : proc_exitcode(p, &code) ? "stopped" : "started";
  lua_pushfstring(L, "Process %s (%s)", lua_tostring(L, -1), says);
  return 1;
}

static int l_active_children(lua_State *L) {
  push_children(L);
  lua_newtable(L);
  prune_children(L, lua_gettop(L) - 1, lua_gettop(L));
  return 1;
}

static int l_current_process(lua_State *L) {
  if (lua_getfield(L, LUA_REGISTRYINDEX, "mpengine.self") == LUA_TNIL || stale_self) {
    stale_self = 0; /* the parent's is not ours */
    lua_pop(L, 1);
    push_handle(L, SELF, (lua_Integer)mpe_self_pid(), "", 0);
    lua_pushvalue(L, -1);
    lua_setfield(L, LUA_REGISTRYINDEX, "mpengine.self");
  }
  return 1;
}

static int l_parent_process(lua_State *L) {
  if (stale_parent) { /* the parent as a foreign handle, under its name */
    stale_parent = 0;
    push_handle(L, FOREIGN, parent_pid, name_buf[own_buf], strlen(name_buf[own_buf]));
    lua_pushvalue(L, -1);
    lua_setfield(L, LUA_REGISTRYINDEX, "mpengine.parent");
    return 1;
  }
  lua_getfield(L, LUA_REGISTRYINDEX, "mpengine.parent"); /* nil in the main process */
  return 1;
}

void mpel_processes_atexit(lua_State *L) {
  (void)L;
  if (mpe_in_child()) return;
  mpe_process_join_all(-1); /* daemons get SIGTERM, the rest are waited for */
}

/* On the wire: a 32-bit pid (0: none), then the name (cut to 250 bytes). */
static const char *proc_encode(lua_State *L, int idx, mpel_wire *w) {
  lproc *p = lua_touserdata(L, idx);
  unsigned char b[4 + 250];
  lua_Integer pid = state_of(p) == SELF ? (lua_Integer)mpe_self_pid() : proc_pid(p);
  for (int i = 0; i < 4; i++) b[i] = (unsigned char)(pid >> (24 - 8 * i));
  size_t len;
  p_name(L, idx);
  const char *name = lua_tolstring(L, -1, &len);
  if (len > sizeof b - 4) len = sizeof b - 4;
  memcpy(b + 4, name, len);
  lua_pop(L, 1);
  return mpel_put_object(w, MPEL_PROCESS, b, 4 + len);
}

static int proc_decode(lua_State *L, const mpel_class *cls, const unsigned char *ref, size_t len,
                       mpe_pipe **ends, size_t nends) {
  (void)cls;
  (void)ends;
  (void)nends;
  if (len < 4) return -1;
  uint32_t pid = ((uint32_t)ref[0] << 24) | ((uint32_t)ref[1] << 16) | ((uint32_t)ref[2] << 8) | ref[3];
  if (pid > INT32_MAX) pid = 0; /* as a pid_t it would be negative: no process */
  if (len > 4) {
    push_handle(L, FOREIGN, (lua_Integer)pid, (const char *)ref + 4, len - 4);
  } else { /* the older form, without a name */
    char name[32];
    snprintf(name, sizeof name, "pid-%lu", (unsigned long)pid);
    push_handle(L, FOREIGN, (lua_Integer)pid, name, strlen(name));
  }
  return 0;
}

static const mpel_class proc_class = {"Process", MPEL_PROCESS, proc_encode, proc_decode, NULL, NULL, 0};

static const luaL_Reg methods[] = {
    {"start", p_start}, {"join", p_join}, {"is_alive", p_is_alive}, {"terminate", p_terminate},
    {"kill", p_kill},   {"close", p_close}, {NULL, NULL},
};

void mpel_open_process(lua_State *L) {
  if (luaL_newmetatable(L, "Process")) {
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "methods");
    lua_pushcfunction(L, p_index);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, p_newindex);
    lua_setfield(L, -2, "__newindex");
    lua_pushcfunction(L, p_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, p_tostring);
    lua_setfield(L, -2, "__tostring");
    mpel_register_class(L, &proc_class);
  }
  lua_pop(L, 1);
  lua_pushcfunction(L, l_process);
  lua_setfield(L, -2, "Process");
  lua_pushcfunction(L, l_active_children);
  lua_setfield(L, -2, "active_children");
  lua_pushcfunction(L, l_current_process);
  lua_setfield(L, -2, "current_process");
  lua_pushcfunction(L, l_parent_process);
  lua_setfield(L, -2, "parent_process");
}
