/* lsync.c - mp.Lock, RLock, Semaphore, BoundedSemaphore, Event, Condition
 * and Barrier over the engine's primitives (lock.c, sem.c, sync.c).
 *
 * Every blocking call goes through wait_for(): the engine returns MPE_EINTR
 * when a signal handler ran (or the run's stop flag, mpel_signal, which the
 * engine watches, is set); then an interruption of the run raises, and any
 * other signal (an embedding host's SIGUSR1, say) makes the call go on with
 * the time left, as if nothing happened. The engine keeps the place of an
 * interrupted wait, so nothing is lost in between. */
#include <errno.h>
#include <string.h>

#include "mpe_lua.h"

/* One engine wait: fn(obj, timeout, ctx) returns an engine code. */
typedef int (*wait_fn)(void *obj, double timeout, void *ctx);

/* Calls fn until it returns something other than MPE_EINTR: after each
 * interruption raises if the run is being stopped (first calling give_up,
 * if given), else calls again with what is left of timeout (-1: forever). */
static int wait_for(lua_State *L, wait_fn fn, void *obj, void *ctx, double timeout, void (*give_up)(void *)) {
  double deadline = mpel_deadline(timeout);
  int rc = fn(obj, timeout, ctx);
  while (rc == MPE_EINTR) {
    if (mpel_signal && give_up) give_up(obj);
    mpel_check_signal(L);
    rc = fn(obj, mpel_left(deadline), ctx);
  }
  return rc;
}

MPEL_SHARED_WRAPPERS(lock, mpe_lock)
MPEL_SHARED_WRAPPERS(sem, mpe_sem)
MPEL_SHARED_WRAPPERS(event, mpe_event)
MPEL_SHARED_WRAPPERS(cond, mpe_cond)
MPEL_SHARED_WRAPPERS(barrier, mpe_barrier)

static void sem_on_exit(void *o) { mpe_sem_forget_process(o); }

const mpel_shared_type mpel_lock_type = {MPEL_SHARED_CLASS("Lock", MPEL_LOCK), MPEL_SHARED_FUNCS(lock), 1, NULL};
const mpel_shared_type mpel_rlock_type = {MPEL_SHARED_CLASS("RLock", MPEL_RLOCK), MPEL_SHARED_FUNCS(lock), 1, NULL};
static const mpel_shared_type sem_type = {MPEL_SHARED_CLASS("Semaphore", MPEL_SEM), MPEL_SHARED_FUNCS(sem), 1,
                                          sem_on_exit};
static const mpel_shared_type bsem_type = {MPEL_SHARED_CLASS("BoundedSemaphore", MPEL_BSEM),
                                           MPEL_SHARED_FUNCS(sem), 1, sem_on_exit};
static const mpel_shared_type event_type = {MPEL_SHARED_CLASS("Event", MPEL_EVENT), MPEL_SHARED_FUNCS(event), 1,
                                            NULL};
/* user values: 1 guard, 2 the Lock object */
static const mpel_shared_type cond_type = {MPEL_SHARED_CLASS("Condition", MPEL_COND), MPEL_SHARED_FUNCS(cond), 2,
                                           NULL};
/* user values: 1 unused, 2 the decoded action */
static const mpel_shared_type barrier_type = {MPEL_SHARED_CLASS("Barrier", MPEL_BARRIER),
                                              MPEL_SHARED_FUNCS(barrier), 2, NULL};

/* ------------------------------------------------------------ Lock, RLock */

mpe_lock *mpel_test_lock(lua_State *L, int idx) {
  mpel_obj *h = mpel_test_shared(L, idx, &mpel_lock_type);
  if (!h) h = mpel_test_shared(L, idx, &mpel_rlock_type);
  return h ? h->o : NULL;
}

void mpel_push_lock(lua_State *L, mpe_lock *l) {
  mpe_lock_retain(l);
  mpel_push_shared(L, mpe_lock_is_recursive(l) ? &mpel_rlock_type : &mpel_lock_type, l);
}

/* check_lock past the handle seen last: a method called on a handle of its
 * own class (upvalue 1 is the class's metatable), then any Lock or RLock.
 * The stack is left as it was. */
static mpe_lock *check_lock_slow(lua_State *L, int idx, mpel_obj *h) {
  if (h && lua_getmetatable(L, idx)) {
    int own = lua_rawequal(L, -1, lua_upvalueindex(1));
    lua_pop(L, 1);
    if (own && h->o) {
      mpel_seen_set(L, MPEL_SEEN_LOCK, idx, h);
      return h->o;
    }
  }
  mpe_lock *l = mpel_test_lock(L, idx);
  if (!l) luaL_typeerror(L, idx, "Lock");
  mpel_seen_set(L, MPEL_SEEN_LOCK, idx, h);
  return l;
}

/* The hot path: the handle seen last (lshared.c), one compare. */
static inline mpe_lock *check_lock(lua_State *L, int idx) {
  mpel_obj *h = lua_touserdata(L, idx);
  if (h && h == mpel_seen[MPEL_SEEN_LOCK] && h->o) return h->o;
  return check_lock_slow(L, idx, h);
}

static int new_lock(lua_State *L, int recursive) {
  mpe_lock *l;
  int rc = mpe_lock_new(&l, recursive);
  if (rc < 0) return mpel_fail(L, recursive ? "RLock" : "Lock", rc);
  mpel_push_shared(L, recursive ? &mpel_rlock_type : &mpel_lock_type, l);
  return 1;
}

static int l_lock(lua_State *L) { return new_lock(L, 0); }
static int l_rlock(lua_State *L) { return new_lock(L, 1); }

static int lock_wait(void *l, double timeout, void *ctx) {
  (void)ctx;
  return mpe_lock_acquire(l, timeout);
}

/* Acquires with a timeout (-1: forever); returns the engine code. */
static int acquire_lock(lua_State *L, mpe_lock *l, double timeout) {
  if (timeout >= 0) return wait_for(L, lock_wait, l, NULL, timeout, NULL);
  int rc; /* forever: no deadline to keep */
  while ((rc = mpe_lock_acquire(l, -1)) == MPE_EINTR) mpel_check_signal(L);
  return rc;
}

/* true; true, "owner died" (recovered); false on timeout. */
static int push_acquired(lua_State *L, int rc, double timeout, const char *what) {
  if (rc == 0) {
    lua_pushboolean(L, 1);
    return 1;
  }
  if (rc == MPE_EOWNERDEAD) {
    lua_pushboolean(L, 1);
    lua_pushliteral(L, "owner died");
    return 2;
  }
  if (rc == MPE_ETIMEDOUT) {
    lua_pushboolean(L, 0);
    lua_pushliteral(L, "timeout");
    return 2;
  }
  if (rc == -EDEADLK) {
    if (timeout < 0)
      return luaL_error(L, "%s: already held by this process; waiting for it would never end (use an RLock)", what);
    double left = timeout;
    while (mpe_sleep(left, &left) == MPE_EINTR) mpel_check_signal(L);
    lua_pushboolean(L, 0);
    lua_pushliteral(L, "timeout");
    return 2;
  }
  return mpel_fail(L, what, rc);
}

static const char *lock_name(mpe_lock *l) { return mpe_lock_is_recursive(l) ? "RLock" : "Lock"; }

static int lock_acquire(lua_State *L) {
  mpe_lock *l = check_lock(L, 1);
  double timeout = lua_gettop(L) < 2 ? -1 : mpel_opt_timeout(L, 2); /* acquire(): no parsing */
  int rc = acquire_lock(L, l, timeout);
  if (rc == 0) { /* the common case first */
    lua_pushboolean(L, 1);
    return 1;
  }
  return push_acquired(L, rc, timeout, lock_name(l));
}

static int lock_release(lua_State *L) {
  mpe_lock *l = check_lock(L, 1);
  if (mpe_lock_release(l) != 0)
    return luaL_error(L, "%s: cannot release a lock this process does not hold", lock_name(l));
  return 0;
}

static int lock_locked(lua_State *L) {
  lua_pushboolean(L, mpe_lock_locked(check_lock(L, 1)));
  return 1;
}

static int lock_guard(lua_State *L) {
  mpe_lock *l = check_lock(L, 1);
  push_acquired(L, acquire_lock(L, l, -1), -1, lock_name(l));
  lua_settop(L, 1);
  mpel_push_guard(L, 1);
  return 1;
}

static const luaL_Reg lock_methods[] = {
    {"acquire", lock_acquire}, {"release", lock_release}, {"locked", lock_locked}, {"guard", lock_guard},
    {NULL, NULL},
};

/* --------------------------------------------- Semaphore, BoundedSemaphore */

static mpe_sem *check_sem(lua_State *L, int idx) {
  mpel_obj *h = mpel_test_shared(L, idx, &sem_type);
  if (!h) h = mpel_test_shared(L, idx, &bsem_type);
  if (!h) luaL_typeerror(L, idx, "Semaphore");
  return h->o;
}

static int new_sem(lua_State *L, int bounded) {
  lua_Integer n = luaL_optinteger(L, 1, 1);
  luaL_argcheck(L, n >= 0 && n <= 0x7fffffff, 1, "value must be >= 0");
  luaL_argcheck(L, !bounded || n > 0, 1, "a BoundedSemaphore needs a value > 0");
  mpe_sem *s;
  int rc = mpe_sem_new(&s, (unsigned)n, bounded ? (unsigned)n : 0);
  if (rc < 0) return mpel_fail(L, "Semaphore", rc);
  mpel_push_shared(L, bounded ? &bsem_type : &sem_type, s);
  return 1;
}

static int l_sem(lua_State *L) { return new_sem(L, 0); }
static int l_bsem(lua_State *L) { return new_sem(L, 1); }

static int sem_wait(void *s, double timeout, void *ctx) {
  (void)ctx;
  return mpe_sem_acquire(s, timeout);
}

static int sem_acquire(lua_State *L) {
  mpe_sem *s = check_sem(L, 1);
  double timeout = mpel_opt_timeout(L, 2);
  return push_acquired(L, wait_for(L, sem_wait, s, NULL, timeout, NULL), timeout, "Semaphore");
}

static int sem_release(lua_State *L) {
  mpe_sem *s = check_sem(L, 1);
  if (mpe_sem_release(s) != 0) return luaL_error(L, "BoundedSemaphore: released too many times");
  return 0;
}

static int sem_get_value(lua_State *L) {
  lua_pushinteger(L, mpe_sem_value(check_sem(L, 1)));
  return 1;
}

static int sem_guard(lua_State *L) {
  sem_acquire(L);
  lua_settop(L, 1);
  mpel_push_guard(L, 1);
  return 1;
}

static const luaL_Reg sem_methods[] = {
    {"acquire", sem_acquire}, {"release", sem_release}, {"get_value", sem_get_value}, {"guard", sem_guard},
    {NULL, NULL},
};

/* ------------------------------------------------------------------ Event */

static mpe_event *check_event(lua_State *L, int idx) { return mpel_check_shared(L, idx, &event_type)->o; }

static int l_event(lua_State *L) {
  mpe_event *e;
  int rc = mpe_event_new(&e);
  if (rc < 0) return mpel_fail(L, "Event", rc);
  mpel_push_shared(L, &event_type, e);
  return 1;
}

static int event_set(lua_State *L) { mpe_event_set(check_event(L, 1)); return 0; }
static int event_clear(lua_State *L) { mpe_event_clear(check_event(L, 1)); return 0; }

static int event_is_set(lua_State *L) {
  lua_pushboolean(L, mpe_event_is_set(check_event(L, 1)));
  return 1;
}

static int event_wait_fn(void *e, double timeout, void *ctx) {
  (void)ctx;
  return mpe_event_wait(e, timeout);
}

static int event_wait(lua_State *L) {
  mpe_event *e = check_event(L, 1);
  double timeout = mpel_opt_timeout(L, 2);
  int rc = wait_for(L, event_wait_fn, e, NULL, timeout, NULL);
  return mpel_push_bool(L, rc == 0); /* false, "timeout" when it timed out */
}

/* e:_waiting(): processes inside wait() now (a handshake for tests). */
static int event_waiting(lua_State *L) {
  lua_pushinteger(L, mpe_event_waiting(check_event(L, 1)));
  return 1;
}

static const luaL_Reg event_methods[] = {
    {"set", event_set}, {"clear", event_clear}, {"is_set", event_is_set}, {"wait", event_wait},
    {"_waiting", event_waiting}, {NULL, NULL},
};

/* -------------------------------------------------------------- Condition */

static mpe_cond *check_cond(lua_State *L, int idx) { return mpel_check_shared(L, idx, &cond_type)->o; }

static int l_cond(lua_State *L) {
  mpe_lock *l = NULL;
  if (!lua_isnoneornil(L, 1)) l = check_lock(L, 1);
  mpe_cond *c;
  int rc = mpe_cond_new(&c, l);
  if (rc < 0) return mpel_fail(L, "Condition", rc);
  mpel_push_shared(L, &cond_type, c);
  return 1;
}

/* Pushes the condition's Lock object (made once per handle). */
static void push_cond_lock(lua_State *L, int idx) {
  if (lua_getiuservalue(L, idx, 2) != LUA_TNIL) return;
  lua_pop(L, 1);
  mpel_push_lock(L, mpe_cond_lock(check_cond(L, idx)));
  lua_pushvalue(L, -1);
  lua_setiuservalue(L, idx, 2);
}

static int cond_forward(lua_State *L, const char *method) {
  lua_settop(L, 2);
  push_cond_lock(L, 1);
  lua_getfield(L, -1, method);
  lua_insert(L, -2);
  lua_pushvalue(L, 2);
  lua_call(L, 2, LUA_MULTRET);
  return lua_gettop(L) - 2;
}

static int cond_acquire(lua_State *L) { return cond_forward(L, "acquire"); }
static int cond_release(lua_State *L) { return cond_forward(L, "release"); }

static int cond_get_lock(lua_State *L) {
  check_cond(L, 1);
  push_cond_lock(L, 1);
  return 1;
}

static int cond_guard(lua_State *L) {
  cond_forward(L, "acquire");
  lua_settop(L, 1);
  mpel_push_guard(L, 1);
  return 1;
}

static int cond_wait_fn(void *c, double timeout, void *ctx) {
  (void)ctx;
  return mpe_cond_wait(c, timeout);
}

/* One wait until the deadline: true notified, false timeout. */
static int cond_wait_once(lua_State *L, mpe_cond *c, double deadline) {
  int rc = wait_for(L, cond_wait_fn, c, NULL, mpel_left(deadline), NULL);
  if (rc == 0) return 1;
  if (rc == MPE_ETIMEDOUT) return 0;
  return luaL_error(L, "Condition: cannot wait without holding its lock");
}

static int cond_wait(lua_State *L) {
  mpe_cond *c = check_cond(L, 1);
  double timeout = mpel_opt_timeout(L, 2);
  if (!mpe_lock_held(mpe_cond_lock(c))) return luaL_error(L, "Condition: cannot wait without holding its lock");
  return mpel_push_bool(L, cond_wait_once(L, c, mpel_deadline(timeout)));
}

static int cond_wait_for(lua_State *L) {
  mpe_cond *c = check_cond(L, 1);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  double timeout = mpel_opt_timeout(L, 3);
  if (!mpe_lock_held(mpe_cond_lock(c))) return luaL_error(L, "Condition: cannot wait without holding its lock");
  double deadline = mpel_deadline(timeout);
  for (;;) {
    lua_pushvalue(L, 2);
    lua_call(L, 0, 1);
    if (lua_toboolean(L, -1) || (deadline >= 0 && mpel_left(deadline) <= 0)) return 1;
    lua_pop(L, 1);
    cond_wait_once(L, c, deadline);
  }
}

static int cond_notify(lua_State *L) {
  mpe_cond *c = check_cond(L, 1);
  lua_Integer n = luaL_optinteger(L, 2, 1);
  luaL_argcheck(L, n >= 1, 2, "n must be >= 1");
  if (!mpe_lock_held(mpe_cond_lock(c))) return luaL_error(L, "Condition: cannot notify without holding its lock");
  mpe_cond_notify(c, n > 0x7fffffff ? 0x7fffffff : (int)n);
  return 0;
}

static int cond_notify_all(lua_State *L) {
  mpe_cond *c = check_cond(L, 1);
  if (!mpe_lock_held(mpe_cond_lock(c))) return luaL_error(L, "Condition: cannot notify without holding its lock");
  mpe_cond_notify(c, 0x7fffffff);
  return 0;
}

/* c:_waiting(): processes inside wait() now; a notify from now on reaches
 * them (a handshake for tests). */
static int cond_waiting(lua_State *L) {
  lua_pushinteger(L, mpe_cond_waiting(check_cond(L, 1)));
  return 1;
}

static const luaL_Reg cond_methods[] = {
    {"acquire", cond_acquire}, {"release", cond_release}, {"wait", cond_wait},
    {"wait_for", cond_wait_for}, {"notify", cond_notify}, {"notify_all", cond_notify_all},
    {"get_lock", cond_get_lock}, {"guard", cond_guard}, {"_waiting", cond_waiting}, {NULL, NULL},
};

/* ---------------------------------------------------------------- Barrier */

static mpel_obj *check_barrier(lua_State *L, int idx) { return mpel_check_shared(L, idx, &barrier_type); }

static int l_barrier(lua_State *L) {
  lua_Integer parties = luaL_checkinteger(L, 1);
  luaL_argcheck(L, parties >= 1 && parties <= 0x7fffffff, 1, "parties must be >= 1");
  if (!lua_isnoneornil(L, 2)) luaL_checktype(L, 2, LUA_TFUNCTION);
  double timeout = mpel_opt_timeout(L, 3);
  /* The action and the default timeout travel with the barrier, encoded. */
  lua_createtable(L, 0, 2);
  lua_pushvalue(L, 2);
  lua_setfield(L, -2, "action");
  lua_pushnumber(L, timeout);
  lua_setfield(L, -2, "timeout");
  mpel_wire *w = mpel_wire_get(L, 0); /* the store keeps its objects alive */
  mpel_encode(L, -1, "action", w);
  mpe_barrier *b;
  int rc = mpe_barrier_new(&b, (unsigned)parties, w->buf, w->len);
  mpel_wire_done(w);
  if (rc < 0) return mpel_fail(L, "Barrier", rc);
  mpel_push_shared(L, &barrier_type, b);
  return 1;
}

/* Pushes {action =, timeout =} for the barrier at idx (decoded once). */
static void push_settings(lua_State *L, int idx, mpe_barrier *b) {
  if (lua_getiuservalue(L, idx, 2) == LUA_TTABLE) return;
  lua_pop(L, 1);
  size_t len;
  const char *data = mpe_barrier_data(b, &len);
  mpel_decode_copy(L, data, len);
  lua_pushvalue(L, -1);
  lua_setiuservalue(L, idx, 2);
}

static int barrier_wait_fn(void *b, double timeout, void *last) { return mpe_barrier_wait(b, timeout, last); }

/* Raising out of a wait leaves the barrier: the round breaks, as in Python. */
static void barrier_give_up(void *b) { mpe_barrier_abort(b); }

static int barrier_wait(lua_State *L) {
  mpe_barrier *b = check_barrier(L, 1)->o;
  lua_settop(L, 2);
  push_settings(L, 1, b);
  double timeout;
  if (lua_isnil(L, 2)) {
    lua_getfield(L, 3, "timeout");
    timeout = lua_tonumber(L, -1);
    lua_pop(L, 1);
  } else {
    timeout = mpel_opt_timeout(L, 2);
  }
  int last = 0;
  int rc = wait_for(L, barrier_wait_fn, b, &last, timeout, barrier_give_up);
  if (rc == MPE_ETIMEDOUT) return mpel_push_reason(L, rc);
  if (rc == MPE_ECLOSED) {
    mpel_push_reason(L, rc);
    pid_t dead = mpe_barrier_dead_pid(b);
    if (dead) lua_pushfstring(L, "broken: process %d died in the barrier", (int)dead);
    else lua_pushliteral(L, "broken");
    return 3;
  }
  if (rc < 0) return mpel_fail(L, "Barrier", rc);
  if (last) {
    int ok = 1;
    if (lua_getfield(L, 3, "action") == LUA_TFUNCTION) ok = lua_pcall(L, 0, 0, 0) == LUA_OK;
    mpe_barrier_pass(b, ok);
    if (!ok) return lua_error(L); /* the action's error, here; the others see it broken */
  }
  lua_pushinteger(L, rc);
  return 1;
}

static int barrier_abort(lua_State *L) { mpe_barrier_abort(check_barrier(L, 1)->o); return 0; }
static int barrier_reset(lua_State *L) { mpe_barrier_reset(check_barrier(L, 1)->o); return 0; }

static int barrier_index(lua_State *L) {
  mpe_barrier *b = check_barrier(L, 1)->o;
  const char *k = luaL_checkstring(L, 2);
  if (strcmp(k, "broken") == 0) lua_pushboolean(L, mpe_barrier_broken(b));
  else if (strcmp(k, "parties") == 0) lua_pushinteger(L, mpe_barrier_parties(b));
  else if (strcmp(k, "n_waiting") == 0) lua_pushinteger(L, mpe_barrier_waiting(b));
  else {
    lua_getmetatable(L, 1);
    lua_getfield(L, -1, "methods");
    lua_getfield(L, -1, k);
  }
  return 1;
}

static const luaL_Reg barrier_methods[] = {
    {"wait", barrier_wait}, {"abort", barrier_abort}, {"reset", barrier_reset}, {NULL, NULL},
};

void mpel_open_sync(lua_State *L) {
  mpe_interrupt_flag(&mpel_signal); /* a wait sees the run's interruption even without EINTR */
  mpel_shared_open(L, &mpel_lock_type, lock_methods, NULL, l_lock);
  mpel_shared_open(L, &mpel_rlock_type, lock_methods, NULL, l_rlock);
  mpel_shared_open(L, &sem_type, sem_methods, NULL, l_sem);
  mpel_shared_open(L, &bsem_type, sem_methods, NULL, l_bsem);
  mpel_shared_open(L, &event_type, event_methods, NULL, l_event);
  mpel_shared_open(L, &cond_type, cond_methods, NULL, l_cond);
  mpel_shared_open(L, &barrier_type, barrier_methods, barrier_index, l_barrier);
}
