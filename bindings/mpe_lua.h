/* mpe_lua.h - what the binding files share (never installed).
 *
 * The seam: every engine object Lua sees is a userdata whose metatable is
 * registered under its class name and carries its kind in the registry
 * table "mpengine.kinds". The codec asks a kind's class how to put it on the
 * wire (mpel_class.encode/decode), so another transport (several machines)
 * can bring its own classes without touching scripts or the codec. */
#ifndef MPE_LUA_H
#define MPE_LUA_H

#include <lauxlib.h>
#include <lua.h>
#include <signal.h>

#include "mpengine.h"

#define MPEL_MAX_ENDS 64

/* Engine object kinds (wire byte; never renumber). */
enum { MPEL_CONNECTION = 1, MPEL_PROCESS = 2, MPEL_QUEUE = 3 };

/* Bytes being built for the wire, plus the pipe ends that ride along. */
typedef struct mpel_wire {
  char *buf;
  size_t len, cap;
  mpe_pipe *ends[MPEL_MAX_ENDS];
  size_t nends;
  int allow_ends; /* the channel can carry pipe ends (a Pipe, a Process) */
  int transfer;   /* a real send: shared objects get a reference in flight */
} mpel_wire;

/* One kind of engine object (see the seam above). */
typedef struct mpel_class {
  const char *name; /* metatable name, e.g. "Connection" */
  int kind;
  /* Appends the object's reference at idx to w; returns NULL or the reason
   * it cannot travel. */
  const char *(*encode)(lua_State *L, int idx, mpel_wire *w);
  /* Pushes the object for a reference; returns 0, or -1 if malformed. */
  int (*decode)(lua_State *L, const unsigned char *ref, size_t len, mpe_pipe **ends, size_t nends);
  /* Shared objects: a forked child takes its own reference to every handle
   * it inherits, and gives them back when it ends normally. NULL otherwise. */
  void (*retain)(void *ud);
  void (*release)(void *ud);
} mpel_class;

/* Registers cls with its metatable at the top of the stack. */
void mpel_register_class(lua_State *L, const mpel_class *cls);

/* Tracks the shared-object handle at idx (a weak registry), so a forked
 * child can take its own references (mpel_handles_fork). */
void mpel_track(lua_State *L, int idx);
/* In a child: retain (take=1) or release (take=0) every tracked handle. */
void mpel_handles_fork(lua_State *L, int take);
/* Appends an OBJECT extension {kind, payload} to w; NULL or a reason. */
const char *mpel_put_object(mpel_wire *w, int kind, const void *payload, size_t n);

/* ---- codec (codec.c) */
/* A reusable wire buffer for this state; release it with mpel_wire_done.
 * transfer: 1 for a real send (see mpel_wire.transfer). */
mpel_wire *mpel_wire_get(lua_State *L, int allow_ends);
void mpel_wire_done(mpel_wire *w);
int mpel_wire_reserve(mpel_wire *w, size_t more);
/* Appends the value at idx to w; raises "cannot send value at ROOT...: TYPE". */
void mpel_encode(lua_State *L, int idx, const char *root, mpel_wire *w);
/* Pushes the value encoded in buf; ends[] may be claimed (set to NULL). Raises
 * on malformed input. */
void mpel_decode(lua_State *L, const char *buf, size_t len, mpe_pipe **ends, size_t nends);

/* ---- module helpers (lmodule.c) */
/* Optional timeout at idx: nil -> -1 (forever); raises when negative. */
double mpel_opt_timeout(lua_State *L, int idx);
/* On MPE_EINTR: raises if the host asked to stop, else returns so the caller
 * retries with the time left. */
void mpel_check_signal(lua_State *L);
/* Raises a Lua error for an engine code, prefixed with what. */
int mpel_fail(lua_State *L, const char *what, int err);
/* Pushes nil and a reason word ("timeout", "closed", ...) for err. */
int mpel_push_reason(lua_State *L, int err);
/* Seconds left to a deadline made by mpe_time() + timeout (-1 stays -1). */
double mpel_left(double deadline);
extern volatile sig_atomic_t mpel_signal;
extern const char *mpel_process_name;

/* ---- object families */
void mpel_open_process(lua_State *L);
void mpel_open_pipe(lua_State *L);
void mpel_open_queue(lua_State *L);
/* Pushes a new Connection owning p. */
void mpel_push_connection(lua_State *L, mpe_pipe *p);
/* Ends the run for this state's processes (see lprocess.c). */
void mpel_processes_atexit(lua_State *L);

int luaopen_mpengine(lua_State *L);
#endif
