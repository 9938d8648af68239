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
enum {
  MPEL_CONNECTION = 1, MPEL_PROCESS, MPEL_QUEUE, MPEL_LOCK, MPEL_RLOCK, MPEL_SEM, MPEL_BSEM,
  MPEL_EVENT, MPEL_COND, MPEL_BARRIER, MPEL_VALUE, MPEL_ARRAY, MPEL_DICT, MPEL_POOL
};

/* Bytes being built for the wire, plus the pipe ends that ride along. */
typedef struct mpel_wire {
  char *buf;
  size_t len, cap;
  mpe_pipe *ends[MPEL_MAX_ENDS];
  size_t nends;
  int allow_ends; /* the channel can carry pipe ends (a Pipe, a Process) */
  int transfer;   /* a real send (a Queue put, a Pipe send): each engine object
                     in the message gets a reference in flight, which the one
                     receiver adopts (mpel_decode); 0: none is taken */
  int inflight;   /* references in flight were taken for the message in buf */
  int remote;     /* for another host (a broker pool's task): only classes
                     that are `anywhere` may be in it */
  int check;      /* a check only, never sent (Process start): values are
                     walked and judged as for a send, but a function's code
                     is not dumped and nothing is sealed */
} mpel_wire;

/* One kind of engine object (see the seam above). */
struct mpel_class;
typedef struct mpel_class {
  const char *name; /* metatable name, e.g. "Connection" */
  int kind;
  /* Appends the object's reference at idx to w; returns NULL or the reason
   * it cannot travel. */
  const char *(*encode)(lua_State *L, int idx, mpel_wire *w);
  /* Pushes the object for a reference; returns 0, or -1 if malformed. */
  int (*decode)(lua_State *L, const struct mpel_class *cls, const unsigned char *ref, size_t len,
                mpe_pipe **ends, size_t nends);
  /* Shared objects: before a fork the parent takes a reference for the
   * child to every handle (retain); the child gives them back when it ends
   * normally (release with forget = 1: the handle is done with), or the
   * parent does if the fork failed (forget = 0). NULL for other kinds. */
  void (*retain)(void *ud);
  void (*release)(void *ud, int forget);
  int anywhere; /* its reference means the same on every host (a broker's objects) */
} mpel_class;

/* Engine objects that live in the arena (queues, locks, values, ...) share
 * one handle layout and one way onto the wire: a reference and its check
 * (mpe_obj_check), which the receiver verifies. Each type wraps its engine
 * functions in these four. */
struct mpel_obj;
typedef struct mpel_shared_type {
  mpel_class cls; /* first: the codec sees the class */
  void (*obj_retain)(void *o);
  void (*obj_free)(void *o);
  uint64_t (*obj_ref)(const void *o);
  void *(*obj_from_ref)(uint64_t ref);
  int nuv; /* user values a handle carries (the first holds its guard) */
  void (*on_exit)(void *o); /* a child ends normally (may be NULL) */
} mpel_shared_type;

typedef struct mpel_obj {
  void *o;
  const mpel_shared_type *t;
} mpel_obj;

/* The shared-object handle at idx, of any type, or NULL. */
mpel_obj *mpel_test_shared_any(lua_State *L, int idx);
/* Makes the metatable at the top of the stack one of t's handles (its type,
 * __gc, __eq, __tostring) and registers t's class. */
void mpel_shared_metatable(lua_State *L, const mpel_shared_type *t);
/* For types whose handle holds more (a Queue): pushes a handle of size bytes
 * (an mpel_obj first, the rest zeroed); the __gc to call last. */
mpel_obj *mpel_push_shared_sized(lua_State *L, const mpel_shared_type *t, void *o, size_t size);
int mpel_shared_gc(lua_State *L);
/* The wire form with a prefix of the type's own (a Queue's variant):
 * appends {kind, prefix, reference, check} for the handle h; and gives the
 * object of {reference, check} at p (what follows the prefix) with one
 * reference for the caller's new handle (adopted or taken, as
 * mpel_decoding_copy says), NULL if malformed; raises if it is gone. */
const char *mpel_shared_put(mpel_wire *w, const mpel_obj *h, const void *prefix, size_t npre);
void *mpel_shared_take(lua_State *L, const mpel_shared_type *t, const unsigned char *p, size_t len);

const char *mpel_shared_encode(lua_State *L, int idx, mpel_wire *w);
int mpel_shared_decode(lua_State *L, const mpel_class *cls, const unsigned char *p, size_t len,
                       mpe_pipe **ends, size_t nends);
void mpel_shared_retain(void *ud);
void mpel_shared_release(void *ud, int forget);
#define MPEL_SHARED_CLASS(name, kind) \
  {name, kind, mpel_shared_encode, mpel_shared_decode, mpel_shared_retain, mpel_shared_release, 0}
/* Wraps an engine type's retain/free/ref/from_ref for mpel_shared_type. */
#define MPEL_SHARED_WRAPPERS(name, type)                                          \
  static void name##_w_retain(void *o) { mpe_##name##_retain((type *)o); }       \
  static void name##_w_free(void *o) { mpe_##name##_free((type *)o); }           \
  static uint64_t name##_w_ref(const void *o) { return mpe_##name##_ref((const type *)o); } \
  static void *name##_w_from_ref(uint64_t r) { return mpe_##name##_from_ref(r); }
#define MPEL_SHARED_FUNCS(name) name##_w_retain, name##_w_free, name##_w_ref, name##_w_from_ref

/* Pushes a handle owning one reference to o (tracked for fork). */
mpel_obj *mpel_push_shared(lua_State *L, const mpel_shared_type *t, void *o);
/* The handle at idx if its type is t (or t2, if given); raises otherwise. */
mpel_obj *mpel_check_shared(lua_State *L, int idx, const mpel_shared_type *t);
mpel_obj *mpel_test_shared(lua_State *L, int idx, const mpel_shared_type *t);
/* In a method: the handle at idx if its metatable is the method's own (its
 * upvalue 1), NULL otherwise (then check the slow way). */
mpel_obj *mpel_fast_shared(lua_State *L, int idx);
/* Handles seen last: a slot names the last handle of its classes that
 * passed a full check, so the next call on that handle is one pointer
 * compare (a locked increment calls four methods on two handles). A
 * handle's __gc empties the slots that name it, so a slot never names
 * freed memory. */
enum { MPEL_SEEN_LOCK, MPEL_SEEN_VALUE, MPEL_SEEN_N };
extern mpel_obj *mpel_seen[MPEL_SEEN_N];
/* Names the handle at idx (h) in a slot, and keeps that handle alive in the
 * registry while the slot names it (a handle whose metatable a script took
 * away is freed without its __gc; pinned, its address is never reused). */
void mpel_seen_set(lua_State *L, int slot, int idx, mpel_obj *h);
/* Makes t's metatable (with methods, and __index = index or the methods),
 * registers its class, and sets mp[name] = ctor; the module at -1. */
void mpel_shared_open(lua_State *L, const mpel_shared_type *t, const luaL_Reg *methods,
                      lua_CFunction index, lua_CFunction ctor);
/* Pushes the to-be-closed guard of the object at idx (cached): closing it
 * calls the object's release method. */
void mpel_push_guard(lua_State *L, int idx);

/* Registers cls with its metatable at the top of the stack. */
void mpel_register_class(lua_State *L, const mpel_class *cls);

/* Tracks the shared-object handle at idx (a weak registry), so a forked
 * child gets references of its own (mpel_handles_fork). */
void mpel_track(lua_State *L, int idx);
/* Pushes the registry's weak table name (mode "k" or "v"), made on first use. */
void mpel_weak_registry(lua_State *L, const char *name, const char *mode);
/* The references a child holds to the shared objects it inherits: taken by
 * the parent before fork (MPEL_FOR_CHILD, so none can be freed in between),
 * given back by the child when it ends (MPEL_CHILD_ENDS), or by the parent
 * if the fork failed (MPEL_FORK_FAILED). */
enum { MPEL_FOR_CHILD, MPEL_CHILD_ENDS, MPEL_FORK_FAILED };
void mpel_handles_fork(lua_State *L, int how);
/* Appends an OBJECT extension {kind, payload} to w; NULL or a reason. */
const char *mpel_put_object(mpel_wire *w, int kind, const void *payload, size_t n);

/* ---- codec (codec.c) */
/* A reusable wire buffer for this state; release it with mpel_wire_done.
 * transfer: 1 for a real send (see mpel_wire.transfer). */
mpel_wire *mpel_wire_get(lua_State *L, int allow_ends);
/* The same in two steps, for a hot path that keeps the wire as an upvalue:
 * pushes the state's wire (a userdata), and readies one for a message. */
void mpel_push_wire(lua_State *L);
mpel_wire *mpel_wire_begin(mpel_wire *w, int allow_ends);
void mpel_wire_done(mpel_wire *w);
/* mpel_wire_done, keeping a buffer of at most keep bytes. */
void mpel_wire_trim(mpel_wire *w, size_t keep);
/* The send of w's message failed: gives back its references in flight. */
void mpel_wire_unsend(lua_State *L, mpel_wire *w);
int mpel_wire_reserve(mpel_wire *w, size_t more);
/* Appends the value at idx to w; raises "cannot send value at ROOT...: TYPE". */
void mpel_encode(lua_State *L, int idx, const char *root, mpel_wire *w);
/* The same for a table of arguments, which the receiver unpacks: the table
 * itself is never sent as a module by name (what it holds may be), so a
 * message of plain values needs no look at package.loaded. */
void mpel_encode_args(lua_State *L, int idx, const char *root, mpel_wire *w);
/* Pushes the value encoded in buf; ends[] may be claimed (set to NULL).
 * Raises on malformed input, and on code, modules, metatables or objects in
 * a message this run did not seal. mpel_decode adopts the references in
 * flight of a real send (decode such a message once); mpel_decode_copy
 * takes new ones, to objects still alive, so any bytes (mp.decode, a stored
 * encoding) decode any number of times. */
void mpel_decode(lua_State *L, const char *buf, size_t len, mpe_pipe **ends, size_t nends);
/* The fast path for the values most tasks carry: writes the nil, boolean or
 * number at idx to out (its length), else 0; and pushes the one that
 * buf[len] holds (1), else 0. Neither raises. */
size_t mpel_encode_scalar(lua_State *L, int idx, unsigned char out[9]);
int mpel_decode_scalar(lua_State *L, const char *buf, size_t len);
void mpel_decode_copy(lua_State *L, const char *buf, size_t len);
/* Set by the decoder before each object decoder runs: 1 take a new
 * reference (mpe_obj_claim), 0 adopt the message's. */
extern int mpel_decoding_copy;

/* ---- module helpers (lmodule.c) */
/* Optional timeout at idx: nil -> -1 (forever); raises when negative. */
double mpel_opt_timeout(lua_State *L, int idx);
/* On MPE_EINTR: raises if the host asked to stop, else returns so the caller
 * retries with the time left. */
void mpel_check_signal(lua_State *L);
/* Pushes true, or false and "timeout" (the shape of join and wait). */
int mpel_push_bool(lua_State *L, int ok);
/* Raises a Lua error for an engine code, prefixed with what. */
int mpel_fail(lua_State *L, const char *what, int err);
/* Pushes nil and a reason word ("timeout", "closed", ...) for err. */
int mpel_push_reason(lua_State *L, int err);
/* The deadline of a timeout (-1: none), and the seconds left to it (-1
 * stays -1): a wait retried after EINTR never stretches. */
double mpel_deadline(double timeout);
/* Seconds left to a deadline made by mpel_deadline (-1 stays -1). */
double mpel_left(double deadline);
extern volatile sig_atomic_t mpel_signal;
extern const char *mpel_process_name;
/* Set by a program that links the module in (embed.c): its code is never
 * unloaded, so the module may put an allocator of its own in front of the
 * state's (lprocess.c). */
extern int mpel_resident;
/* The broker of this run (`mpengine run --broker URL`, MPENGINE_BROKER): its
 * URL, password included, or NULL; set by the host before the script runs. */
const char *mpel_run_broker(void);
int mpel_set_run_broker(const char *url);
/* mp.decode, and the encoding of a value for another host (lmodule.c). */
int mpel_l_decode(lua_State *L);
int mpel_l_encode_remote(lua_State *L);
/* `mpengine worker`: serves the broker's runs until SIGINT/SIGTERM (lpool.c). */
int mpel_serve_broker(lua_State *L, const char *url, int procs, const char *name);

/* ---- object families */
void mpel_open_process(lua_State *L);
void mpel_open_pipe(lua_State *L);
void mpel_open_queue(lua_State *L);
void mpel_open_sync(lua_State *L);
void mpel_open_value(lua_State *L);
void mpel_open_dict(lua_State *L);
extern const mpel_shared_type mpel_lock_type, mpel_rlock_type;
/* Pushes the Lua handle for an engine lock (a new reference is taken). */
void mpel_push_lock(lua_State *L, mpe_lock *l);
/* The engine lock of a Lock or RLock at idx, NULL if it is neither. */
mpe_lock *mpel_test_lock(lua_State *L, int idx);
/* Pushes a new Connection owning p. */
void mpel_push_connection(lua_State *L, mpe_pipe *p);
/* The end of the Connection at idx, NULL if it is none; raises if it is
 * closed or cannot receive. */
mpe_pipe *mpel_test_connection(lua_State *L, int idx);
/* The child of the Process at idx, NULL if it is none; raises if it is
 * closed, not started, or not this process's child. */
mpe_process *mpel_test_process(lua_State *L, int idx);
/* mp.wait(objects [, timeout]) (lwait.c). */
int mpel_l_wait(lua_State *L);
/* In the parent, just before fork: what a child of it reads first (its
 * parent's name, os.exit). Every fork of a Lua child calls it. */
void mpel_child_prepare(lua_State *L);
/* In a child just forked (a Process's target, a Pool's worker): the
 * parent's children, hook and interruption are not its own, os.exit leaves
 * at once, and name (kept alive by the caller) is its name. */
void mpel_child_begin(lua_State *L, pid_t parent, const char *name, int daemon);
/* In the child: what mpel_handles_fork(MPEL_CHILD_ENDS) gives back. */
void mpel_handles_child_begin(void);
/* mp.Pool and its worker side (lpool.c); the module at -1. */
void mpel_open_pool(lua_State *L);
/* The objects on a broker (lbroker.c, bobj.lua): wraps the constructors; the module at -1. */
void mpel_open_broker_objects(lua_State *L);
/* Ends the run for this state's processes (see lprocess.c). */
void mpel_processes_atexit(lua_State *L);

int luaopen_mpengine(lua_State *L);
#endif
