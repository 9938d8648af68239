/* lpipe.c - mp.Pipe([duplex]) and its Connection objects.
 *
 * A Connection wraps one engine pipe end. send() encodes with the codec and
 * sends one frame tagged VALUE; send_bytes() sends the string (or a slice of
 * it) as it is, tagged BYTES. recv() decodes VALUE frames and returns BYTES
 * frames as strings; recv_bytes() returns any frame's bytes. Pipe ends met
 * while encoding ride along as descriptors, so a Connection sent through a
 * Pipe is the same pipe on the other side.
 *
 * Signals: a wait the engine ends with MPE_EINTR is resumed (with what is
 * left of the timeout) unless the host asked to stop (mpel_signal); then a
 * send the signal cut in the middle of a message is given up, which breaks
 * that direction of the pipe, and the call raises. A receive keeps its half
 * message in the engine, so the next recv finishes it. */
#include <errno.h>
#include <stdint.h>
#include <string.h>

#include "mpe_lua.h"

enum { TAG_VALUE = 1, TAG_BYTES = 2 };

/* Waits are cut in slices this long (seconds), so that a signal the engine
 * could not see (it came just before the wait began) still ends the call;
 * a message half read at the end of a slice is finished by the next one. */
#define SLICE 0.1

/* The engine's wait in slices: its code once done, or the deadline passed. */
static double slice_left(double deadline) {
  double left = mpel_left(deadline);
  return left < 0 || left > SLICE ? SLICE : left;
}
static int slice_again(int rc, double deadline) {
  return rc == MPE_EINTR || (rc == MPE_ETIMEDOUT && (deadline < 0 || mpel_left(deadline) > 0));
}

typedef struct lconn {
  mpe_pipe *p;
} lconn;

static lconn *check_conn(lua_State *L, int idx) { return luaL_checkudata(L, idx, "Connection"); }

static lconn *check_open(lua_State *L, int idx) {
  lconn *c = check_conn(L, idx);
  if (!c->p || !mpe_pipe_is_open(c->p)) luaL_error(L, "Connection is closed");
  return c;
}

mpe_pipe *mpel_test_connection(lua_State *L, int idx) {
  lconn *c = luaL_testudata(L, idx, "Connection");
  if (!c) return NULL;
  if (!c->p || !mpe_pipe_is_open(c->p)) luaL_error(L, "Connection is closed");
  if (!mpe_pipe_can_recv(c->p)) luaL_error(L, "Connection is send-only");
  return c->p;
}

void mpel_push_connection(lua_State *L, mpe_pipe *p) {
  lconn *c = lua_newuserdatauv(L, sizeof *c, 0);
  c->p = p;
  luaL_setmetatable(L, "Connection");
}

static int l_pipe(lua_State *L) {
  int duplex = lua_isnoneornil(L, 1) ? 1 : (luaL_checktype(L, 1, LUA_TBOOLEAN), lua_toboolean(L, 1));
  mpe_pipe *a, *b;
  int rc = mpe_pipe_new(&a, &b, duplex);
  if (rc < 0) return mpel_fail(L, "Pipe", rc);
  mpel_push_connection(L, a);
  mpel_push_connection(L, b);
  return 2;
}

/* nil, "closed" and, if a direction broke in the middle of a message, why. */
static int push_closed(lua_State *L, lconn *c, int sending) {
  const char *why = mpe_pipe_broken(c->p, sending);
  mpel_push_reason(L, MPE_ECLOSED);
  if (!why) return 2;
  lua_pushstring(L, why);
  return 3;
}

/* A value's frame that will not go out whole: its references in flight go
 * back (nobody will adopt them), and the wire is done with. */
static void give_back(lua_State *L, mpel_wire *w) {
  if (!w) return;
  mpel_wire_unsend(L, w);
  mpel_wire_done(w);
}

/* Sends one frame. w: the wire of an encoded value (NULL for bytes). */
static int send_frame(lua_State *L, lconn *c, const char *buf, size_t len, uint32_t tag,
                      mpe_pipe *const *ends, size_t nends, mpel_wire *w) {
  if (mpel_signal) { /* one that came while we encoded: nothing went yet */
    give_back(L, w);
    mpel_check_signal(L);
  }
  int rc;
  while ((rc = mpe_pipe_send(c->p, buf, len, tag, ends, nends)) == MPE_EINTR) {
    if (mpel_signal) {
      mpe_pipe_abort(c->p); /* what went of the message cannot be taken back */
      give_back(L, w);
      mpel_check_signal(L);
    }
  }
  if (rc < 0 && w) mpel_wire_unsend(L, w); /* not sent whole: nobody adopts them */
  if (rc == MPE_ECLOSED) return push_closed(L, c, 1);
  if (rc < 0) return mpel_fail(L, "send", rc);
  lua_pushboolean(L, 1);
  return 1;
}

static int c_send(lua_State *L) {
  lconn *c = check_open(L, 1);
  luaL_checkany(L, 2);
  if (lua_isnil(L, 2)) return luaL_argerror(L, 2, "cannot send nil");
  if (!mpe_pipe_can_send(c->p)) return luaL_error(L, "Connection is read-only");
  mpel_wire *w = mpel_wire_get(L, 1);
  mpel_encode(L, 2, "value", w);
  int n = send_frame(L, c, w->buf, w->len, TAG_VALUE, w->ends, w->nends, w);
  mpel_wire_done(w);
  return n;
}

/* send_bytes(s [, i [, n]]): n bytes of s from position i (1-based, as
 * string.sub counts); i defaults to 1, n to the rest. Out of range raises. */
static int c_send_bytes(lua_State *L) {
  lconn *c = check_open(L, 1);
  size_t len;
  const char *s = luaL_checklstring(L, 2, &len);
  lua_Integer i = luaL_optinteger(L, 3, 1);
  luaL_argcheck(L, i >= 1 && (lua_Unsigned)i - 1 <= len, 3, "position out of range");
  size_t from = (size_t)i - 1;
  lua_Integer n = luaL_optinteger(L, 4, (lua_Integer)(len - from));
  luaL_argcheck(L, n >= 0 && (lua_Unsigned)n <= len - from, 4, "size out of range");
  if (!mpe_pipe_can_send(c->p)) return luaL_error(L, "Connection is read-only");
  return send_frame(L, c, s + from, (size_t)n, TAG_BYTES, NULL, 0, NULL);
}

/* A received message while it is decoded: freed even if decoding raises. */
static int msgbox_gc(lua_State *L) {
  mpe_msg_clear(lua_touserdata(L, 1));
  return 0;
}

static mpe_msg *push_msgbox(lua_State *L) {
  mpe_msg *m = lua_newuserdatauv(L, sizeof *m, 0);
  memset(m, 0, sizeof *m);
  if (luaL_newmetatable(L, "mpengine.msgbox")) {
    lua_pushcfunction(L, msgbox_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  return m;
}

static int recv_frame(lua_State *L, int raw) {
  lconn *c = check_open(L, 1);
  double timeout = mpel_opt_timeout(L, 2);
  size_t maxlen = SIZE_MAX;
  if (raw && !lua_isnoneornil(L, 3)) {
    lua_Integer n = luaL_checkinteger(L, 3);
    luaL_argcheck(L, n >= 0, 3, "maxlength must be >= 0");
    maxlen = (size_t)n;
  }
  if (!mpe_pipe_can_recv(c->p)) return luaL_error(L, "Connection is write-only");
  double deadline = mpel_deadline(timeout);
  mpe_msg *m = push_msgbox(L);
  int rc;
  do {
    mpel_check_signal(L);
    rc = mpe_pipe_recv_max(c->p, slice_left(deadline), maxlen, m);
  } while (slice_again(rc, deadline));
  if (rc == MPE_ETIMEDOUT) return mpel_push_reason(L, rc);
  if (rc == MPE_ECLOSED) return push_closed(L, c, 0);
  if (rc == -EMSGSIZE)
    return luaL_error(
        L, "recv_bytes: message longer than maxlength (%I bytes); this direction of the pipe is now closed",
        (lua_Integer)maxlen);
  if (rc < 0) return mpel_fail(L, "recv", rc);
  if (raw || m->tag == TAG_BYTES)
    lua_pushlstring(L, m->data, m->len);
  else
    mpel_decode(L, m->data, m->len, m->ends, m->nends);
  mpe_msg_clear(m);
  return 1;
}

static int c_recv(lua_State *L) { return recv_frame(L, 0); }
static int c_recv_bytes(lua_State *L) { return recv_frame(L, 1); }

static int c_poll(lua_State *L) {
  lconn *c = check_open(L, 1);
  double timeout = lua_isnone(L, 2) ? 0 : mpel_opt_timeout(L, 2); /* Python: no argument polls */
  if (!mpe_pipe_can_recv(c->p)) return luaL_error(L, "Connection is write-only");
  double deadline = mpel_deadline(timeout);
  int rc;
  do {
    mpel_check_signal(L);
    rc = mpe_pipe_poll(c->p, slice_left(deadline));
  } while (rc == MPE_EINTR || (rc == 0 && slice_again(MPE_ETIMEDOUT, deadline)));
  if (rc < 0) return mpel_fail(L, "poll", rc);
  lua_pushboolean(L, rc > 0);
  return 1;
}

static int c_fileno(lua_State *L) {
  lconn *c = check_open(L, 1);
  lua_pushinteger(L, mpe_pipe_fileno(c->p));
  return 1;
}

static int c_close(lua_State *L) {
  lconn *c = check_conn(L, 1);
  if (c->p) mpe_pipe_close(c->p);
  return 0;
}

static int c_gc(lua_State *L) {
  lconn *c = check_conn(L, 1);
  mpe_pipe_free(c->p);
  c->p = NULL;
  return 0;
}

static int c_index(lua_State *L) {
  lconn *c = check_conn(L, 1);
  const char *k = luaL_checkstring(L, 2);
  if (strcmp(k, "closed") == 0) {
    lua_pushboolean(L, !c->p || !mpe_pipe_is_open(c->p));
    return 1;
  }
  if (strcmp(k, "readable") == 0 || strcmp(k, "writable") == 0) {
    int can = c->p && (k[0] == 'r' ? mpe_pipe_can_recv(c->p) : mpe_pipe_can_send(c->p));
    lua_pushboolean(L, can);
    return 1;
  }
  lua_getmetatable(L, 1);
  lua_getfield(L, -1, "methods");
  lua_getfield(L, -1, k);
  return 1;
}

static int c_tostring(lua_State *L) {
  lconn *c = check_conn(L, 1);
  lua_pushfstring(L, "Connection (%s)", c->p && mpe_pipe_is_open(c->p) ? "open" : "closed");
  return 1;
}

static const char *conn_encode(lua_State *L, int idx, mpel_wire *w) {
  lconn *c = lua_touserdata(L, idx);
  if (!w->allow_ends) return "Connection (pipe ends travel through a Pipe or to a Process, not here)";
  if (!c->p || !mpe_pipe_is_open(c->p)) return "Connection (closed)";
  if (w->nends >= MPEL_MAX_ENDS) return "Connection (more than 64 in one message)";
  unsigned char ref[2] = {MPEL_CONNECTION, (unsigned char)w->nends};
  w->ends[w->nends++] = c->p;
  /* fixext2: kind, index of the end */
  if (mpel_wire_reserve(w, 4) != 0) return "out of memory";
  w->buf[w->len++] = (char)0xd5;
  w->buf[w->len++] = 6; /* EXT_OBJECT */
  memcpy(w->buf + w->len, ref, 2);
  w->len += 2;
  return NULL;
}

static int conn_decode(lua_State *L, const mpel_class *cls, const unsigned char *ref, size_t len,
                       mpe_pipe **ends, size_t nends) {
  (void)cls;
  if (len != 1 || ref[0] >= nends || !ends || !ends[ref[0]]) return -1;
  mpel_push_connection(L, ends[ref[0]]);
  ends[ref[0]] = NULL; /* claimed: the Connection owns it now */
  return 0;
}

static const mpel_class conn_class = {"Connection", MPEL_CONNECTION, conn_encode, conn_decode, NULL, NULL, 0};

static const luaL_Reg methods[] = {
    {"send", c_send}, {"recv", c_recv},   {"send_bytes", c_send_bytes}, {"recv_bytes", c_recv_bytes},
    {"poll", c_poll}, {"close", c_close}, {"fileno", c_fileno},         {NULL, NULL},
};

void mpel_open_pipe(lua_State *L) {
  if (luaL_newmetatable(L, "Connection")) {
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "methods");
    lua_pushcfunction(L, c_index);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, c_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, c_close);
    lua_setfield(L, -2, "__close");
    lua_pushcfunction(L, c_tostring);
    lua_setfield(L, -2, "__tostring");
    mpel_register_class(L, &conn_class);
  }
  lua_pop(L, 1);
  lua_pushcfunction(L, l_pipe);
  lua_setfield(L, -2, "Pipe");
}
