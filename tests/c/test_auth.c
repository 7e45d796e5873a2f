/* Unit tests for auth.c: the --auth file format (every malformed line names file:line), the token
 * lookup, the bearer header parser, and the loopback test that decides whether --auth is required. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "auth.h"
#include "check.h"
#include "http.h"

static char path[64];

static struct sg_auth *load(const char *text, struct sg_error *e) {
  FILE *f = fopen(path, "w");
  fputs(text, f);
  fclose(f);
  memset(e, 0, sizeof *e);
  return sg_auth_load(path, e);
}

/* the file's lines, comments and blank lines; the entries and their roles */
static void test_load_good(void) {
  struct sg_error e;
  struct sg_auth *a = load("# tokens\n\n  alice read 0123456789abcdef   # trailing comment\n"
                           "bob\toperate\tfedcba9876543210fe\r\nsvc.x@y-z admin tok#en-with-hash-0000\n", &e);
  if (!CHECK(a != NULL)) { fprintf(stderr, "%s\n", e.msg); return; }
  CHECK_EQ_INT(sg_auth_count(a), 3);
  const struct sg_auth_entry *x = sg_auth_find(a, "0123456789abcdef");
  if (CHECK(x != NULL)) { CHECK_STR(x->name, "alice"); CHECK_EQ_INT(x->role, SG_ROLE_READ); }
  x = sg_auth_find(a, "fedcba9876543210fe");
  if (CHECK(x != NULL)) { CHECK_STR(x->name, "bob"); CHECK_EQ_INT(x->role, SG_ROLE_OPERATE); }
  x = sg_auth_find(a, "tok#en-with-hash-0000");
  if (CHECK(x != NULL)) CHECK_EQ_INT(x->role, SG_ROLE_ADMIN);
  CHECK(sg_auth_find(a, "0123456789abcdeF") == NULL);
  CHECK(sg_auth_find(a, "") == NULL);
  CHECK(sg_auth_find(a, NULL) == NULL);
  CHECK(SG_ROLE_READ < SG_ROLE_START && SG_ROLE_START < SG_ROLE_OPERATE && SG_ROLE_OPERATE < SG_ROLE_ADMIN);
  sg_auth_free(a);
}

static void expect_error(const char *text, const char *where) {
  struct sg_error e;
  struct sg_auth *a = load(text, &e);
  CHECK(a == NULL);
  char want[128];
  snprintf(want, sizeof want, "%s%s", path, where);
  if (!CHECK(strstr(e.msg, want) != NULL)) fprintf(stderr, "  got: %s\n  want: %s\n", e.msg, want);
  CHECK(strstr(e.msg, "short") == NULL); /* a token is never echoed */
  sg_auth_free(a);
}

static void test_load_bad(void) {
  expect_error("alice read 0123456789abcdef extra\n", ":1: expected `name role token`");
  expect_error("\n# c\nalice read\n", ":3: expected");
  expect_error("alice reader 0123456789abcdef\n", ":1: unknown role 'reader'");
  expect_error("al/ice read 0123456789abcdef\n", ":1: bad name");
  expect_error("alice read short\n", ":1: the token of alice must be 16");
  expect_error("a read 0123456789abcdef\nb start 0123456789abcdef\n", ":2: the token of b is already given to a");
  expect_error("# only comments\n\n", ": no tokens");
  struct sg_error e = {0};
  CHECK(sg_auth_load("/nonexistent/tokens", &e) == NULL);
  CHECK(strstr(e.msg, "/nonexistent/tokens") != NULL);
}

static void test_bearer(void) {
  char t[32];
  CHECK_EQ_INT(sg_auth_bearer("Bearer abc", t, sizeof t), 0);
  CHECK_STR(t, "abc");
  CHECK_EQ_INT(sg_auth_bearer("  bearer \t xyz  ", t, sizeof t), 0);
  CHECK_STR(t, "xyz");
  CHECK_EQ_INT(sg_auth_bearer("Basic dXNlcjpwYXNz", t, sizeof t), -1);
  CHECK_EQ_INT(sg_auth_bearer("Bearer", t, sizeof t), -1);
  CHECK_EQ_INT(sg_auth_bearer("Bearer   ", t, sizeof t), -1);
  CHECK_EQ_INT(sg_auth_bearer("Bearerabc", t, sizeof t), -1);
  CHECK_EQ_INT(sg_auth_bearer(NULL, t, sizeof t), -1);
  CHECK_EQ_INT(sg_auth_bearer("Bearer 0123456789012345678901234567890123456789", t, sizeof t), -1);
}

static void test_loopback(void) {
  CHECK(sg_http_listen_is_loopback("127.0.0.1:7070"));
  CHECK(sg_http_listen_is_loopback("127.1.2.3:0"));
  CHECK(sg_http_listen_is_loopback("localhost:0"));
  CHECK(sg_http_listen_is_loopback("::1:80"));
  CHECK(sg_http_listen_is_loopback("[::1]:80"));
  CHECK(!sg_http_listen_is_loopback("0.0.0.0:7070"));
  CHECK(!sg_http_listen_is_loopback("10.0.0.1:7070"));
  CHECK(!sg_http_listen_is_loopback("128.0.0.1:7070"));
  CHECK(!sg_http_listen_is_loopback("localhost.example.com:1"));
  CHECK(!sg_http_listen_is_loopback("7070"));
  CHECK(!sg_http_listen_is_loopback(NULL));
}

int main(void) {
  snprintf(path, sizeof path, "/tmp/sg-test-auth-%d", (int)getpid());
  test_load_good();
  test_load_bad();
  test_bearer();
  test_loopback();
  unlink(path);
  return check_report();
}
