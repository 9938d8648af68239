/* test_broker_conn.c - the broker's Redis connection against a real server
 * (tests/broker/with_redis.sh starts it): URLs and their masked form, AUTH
 * with and without a user, SELECT, unix sockets, the password rule off
 * loopback, timeouts, reconnecting, scripts surviving SCRIPT FLUSH. No text
 * this layer makes ever holds a password. */
#define _GNU_SOURCE
#include <errno.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "broker.h"
#include "check.h"

static const char *pass, *sock;
static int port;
static char err[512];

static void no_secret(const char *text, const char *secret) {
  if (secret[0] && strstr(text, secret)) {
    fprintf(stderr, "the text shows a password: %s\n", text);
    exit(1);
  }
}

static redisReply *cmd(mpe__redis *r, const char *a, const char *b, const char *c) {
  const char *argv[] = {a, b, c};
  redisReply *rep;
  CHECK_RC(mpe__redis_cmd(r, &rep, c ? 3 : b ? 2 : 1, argv, NULL), 0);
  return rep;
}

TEST(url_forms) {
  mpe__redis_url u;
  char d[300];
  CHECK_RC(mpe__redis_url_parse("redis://h", &u, err, sizeof err), 0);
  CHECK(!strcmp(u.host, "h") && u.port == 6379 && u.db == 0 && !u.pass[0] && !u.user[0]);
  CHECK_RC(mpe__redis_url_parse("redis://:s3cret@broker.example:7000/4", &u, err, sizeof err), 0);
  CHECK(!strcmp(u.host, "broker.example") && u.port == 7000 && u.db == 4 && !strcmp(u.pass, "s3cret"));
  mpe__redis_url_display(&u, d, sizeof d);
  CHECK(!strcmp(d, "redis://broker.example:7000"));
  CHECK_RC(mpe__redis_url_parse("redis://al:p%40ss@w@[::1]:7001", &u, err, sizeof err), 0);
  CHECK(!strcmp(u.user, "al") && !strcmp(u.pass, "p@ss@w") && !strcmp(u.host, "::1") && u.port == 7001);
  CHECK(mpe__redis_url_is_local(&u));
  mpe__redis_url_display(&u, d, sizeof d);
  CHECK(!strcmp(d, "redis://[::1]:7001"));
  CHECK_RC(mpe__redis_url_parse("unix:///run/r.sock?password=x%2Fy&db=3", &u, err, sizeof err), 0);
  CHECK(!strcmp(u.path, "/run/r.sock") && !strcmp(u.pass, "x/y") && u.db == 3 && mpe__redis_url_is_local(&u));
  mpe__redis_url_display(&u, d, sizeof d);
  CHECK(!strcmp(d, "unix:///run/r.sock"));
  CHECK_RC(mpe__redis_url_parse("redis://127.8.9.1", &u, err, sizeof err), 0);
  CHECK(mpe__redis_url_is_local(&u));
  CHECK_RC(mpe__redis_url_parse("redis://10.0.0.1", &u, err, sizeof err), 0);
  CHECK(!mpe__redis_url_is_local(&u));
  const char *bad[] = {"http://h", "redis://", "redis://:pw@h:0", "redis://:pw@h:99999", "redis://:pw@h:12x",
                       "redis://:pw@h/db", "redis://pw@h", "redis://:p%zz@h", "unix://rel.sock",
                       "unix:///s?password", "unix:///s?pass=1", "redis://:pw@[::1", NULL};
  for (int i = 0; bad[i]; i++) {
    err[0] = 0;
    CHECK_RC(mpe__redis_url_parse(bad[i], &u, err, sizeof err), -EINVAL);
    CHECK(err[0]);
    no_secret(err, "pw");
  }
}

TEST(password_required_off_loopback) {
  mpe__redis *r;
  /* refused before any connection is tried (nothing listens there) */
  CHECK_RC(mpe__redis_connect(&r, "redis://192.0.2.1:6379", 0.2, err, sizeof err), -EACCES);
  CHECK(r == NULL && strstr(err, "redis://192.0.2.1:6379") && strstr(err, "password"));
  CHECK_RC(mpe__redis_connect(&r, "redis://broker.invalid", 0.2, err, sizeof err), -EACCES);
  /* on loopback it is allowed: this server then asks for one */
  char url[128];
  snprintf(url, sizeof url, "redis://127.0.0.1:%d", port);
  CHECK_RC(mpe__redis_connect(&r, url, 2, err, sizeof err), -EACCES);
  CHECK(strstr(err, "NOAUTH") || strstr(err, "auth"));
}

TEST(auth_select_user_unix) {
  mpe__redis *r, *r2;
  char url[600];
  CHECK_RC(mpe__redis_connect(&r, getenv("MPE_TEST_BROKER"), 2, err, sizeof err), 0);
  CHECK(!strstr(mpe__redis_display(r), pass));
  /* a wrong password: refused, and no password in the text */
  snprintf(url, sizeof url, "redis://:wrong%s@127.0.0.1:%d", pass, port);
  CHECK_RC(mpe__redis_connect(&r2, url, 2, err, sizeof err), -EACCES);
  no_secret(err, "wrong");
  /* a user (ACL) with a password needing escapes, and a database */
  redisReply *rep = cmd(r, "ACL", "SETUSER", "mpeuser");
  mpe__redis_free(rep);
  const char *acl[] = {"ACL", "SETUSER", "mpeuser", "on", ">p@ss/w:rd", "~*", "+@all"};
  CHECK_RC(mpe__redis_cmd(r, &rep, 7, acl, NULL), 0);
  CHECK(rep->type == REDIS_REPLY_STATUS);
  mpe__redis_free(rep);
  snprintf(url, sizeof url, "redis://mpeuser:p%%40ss%%2Fw%%3Ard@127.0.0.1:%d/2", port);
  CHECK_RC(mpe__redis_connect(&r2, url, 2, err, sizeof err), 0);
  mpe__redis_free(cmd(r2, "SET", "mpe:test:db", "two"));
  rep = cmd(r, "GET", "mpe:test:db", NULL);
  CHECK(rep->type == REDIS_REPLY_NIL); /* r is on database 0 */
  mpe__redis_free(rep);
  rep = cmd(r2, "ACL", "WHOAMI", NULL);
  CHECK(rep->type == REDIS_REPLY_STRING && !strcmp(rep->str, "mpeuser"));
  mpe__redis_free(rep);
  mpe__redis_close(r2);
  snprintf(url, sizeof url, "redis://mpeuser:nope@127.0.0.1:%d/2", port);
  CHECK_RC(mpe__redis_connect(&r2, url, 2, err, sizeof err), -EACCES);
  no_secret(err, "nope");
  /* a unix socket, the password in the query */
  snprintf(url, sizeof url, "unix://%s?password=%s", sock, pass);
  CHECK_RC(mpe__redis_connect(&r2, url, 2, err, sizeof err), 0);
  char want[300];
  snprintf(want, sizeof want, "unix://%s", sock);
  CHECK(!strcmp(mpe__redis_display(r2), want));
  rep = cmd(r2, "PING", NULL, NULL);
  CHECK(rep->type == REDIS_REPLY_STATUS && !strcmp(rep->str, "PONG"));
  mpe__redis_free(rep);
  mpe__redis_close(r2);
  mpe__redis_close(r);
}

TEST(timeouts_and_reconnect) {
  /* a server that accepts but never answers: the handshake times out */
  int s = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t al = sizeof a;
  CHECK(s >= 0 && bind(s, (struct sockaddr *)&a, sizeof a) == 0 && listen(s, 4) == 0);
  CHECK(getsockname(s, (struct sockaddr *)&a, &al) == 0);
  char url[600];
  mpe__redis *r;
  snprintf(url, sizeof url, "redis://:%s@127.0.0.1:%d", pass, ntohs(a.sin_port));
  CHECK_RC(mpe__redis_connect(&r, url, 0.2, err, sizeof err), MPE_ETIMEDOUT);
  no_secret(err, pass);
  close(s);
  /* nothing listening: refused; reconnecting gives up at its deadline */
  snprintf(url, sizeof url, "redis://:%s@127.0.0.1:%d", pass, ntohs(a.sin_port));
  CHECK_RC(mpe__redis_connect(&r, url, 0.2, err, sizeof err), -ECONNREFUSED);
  no_secret(err, pass);
  /* a connection killed by the server: the next command fails, a reconnect mends it */
  mpe__redis *k;
  CHECK_RC(mpe__redis_connect(&r, getenv("MPE_TEST_BROKER"), 2, err, sizeof err), 0);
  CHECK_RC(mpe__redis_connect(&k, getenv("MPE_TEST_BROKER"), 2, err, sizeof err), 0);
  redisReply *rep = cmd(r, "CLIENT", "ID", NULL);
  char id[32];
  snprintf(id, sizeof id, "%lld", rep->integer);
  mpe__redis_free(rep);
  const char *kill[] = {"CLIENT", "KILL", "ID", id};
  CHECK_RC(mpe__redis_cmd(k, &rep, 4, kill, NULL), 0);
  CHECK(rep->type == REDIS_REPLY_INTEGER && rep->integer == 1);
  mpe__redis_free(rep);
  const char *ping[] = {"PING"};
  CHECK(mpe__redis_cmd(r, &rep, 1, ping, NULL) < 0);
  CHECK(!mpe__redis_ok(r) && strstr(mpe__redis_error(r), "redis://127.0.0.1:"));
  no_secret(mpe__redis_error(r), pass);
  CHECK_RC(mpe__redis_reconnect(r, mpe_time() + 10), 0);
  rep = cmd(r, "PING", NULL, NULL);
  CHECK(rep->type == REDIS_REPLY_STATUS);
  mpe__redis_free(rep);
  /* a script survives SCRIPT FLUSH (as after a restart): loaded again */
  static mpe__redis_script add = {"return tonumber(ARGV[1]) + 1", ""};
  const char *one[] = {"41"};
  for (int i = 0; i < 3; i++) {
    CHECK_RC(mpe__redis_eval(r, &add, &rep, 0, 1, one, NULL), 0);
    CHECK(rep->type == REDIS_REPLY_INTEGER && rep->integer == 42);
    mpe__redis_free(rep);
    mpe__redis_free(cmd(k, "SCRIPT", "FLUSH", NULL));
  }
  mpe__redis_close(k);
  mpe__redis_close(r);
}

int main(void) {
  pass = getenv("MPE_TEST_BROKER_PASS");
  sock = getenv("MPE_TEST_BROKER_SOCK");
  const char *p = getenv("MPE_TEST_BROKER_PORT");
  if (!pass || !sock || !p) {
    fprintf(stderr, "run me with tests/broker/with_redis.sh\n");
    return 77;
  }
  port = atoi(p);
  RUN(url_forms);
  RUN(password_required_off_loopback);
  RUN(auth_select_user_unix);
  RUN(timeouts_and_reconnect);
  return 0;
}
