/* Unit tests for duration.c: the strings and numbers users write for timeouts, backoffs and sleeps. */
#include <math.h>
#include <string.h>

#include "check.h"
#include "duration.h"

/* Parses s and checks it gives want milliseconds. */
static void ok(const char *s, int64_t want) {
  struct sg_error e = {0};
  int64_t ms = -12345;
  int rc = sg_duration_parse(s, &ms, &e);
  if (!CHECK(rc == 0)) fprintf(stderr, "  parsing '%s': %s\n", s, e.msg);
  CHECK_EQ_INT(ms, want);
}

/* Checks s is rejected with an SG_E_INVALID message that quotes it. */
static void bad(const char *s) {
  struct sg_error e = {0};
  int64_t ms = -12345;
  int rc = sg_duration_parse(s, &ms, &e);
  if (!CHECK(rc == -1)) fprintf(stderr, "  '%s' was accepted as %lld ms\n", s ? s : "NULL", (long long)ms);
  CHECK_EQ_INT(e.code, SG_E_INVALID);
  CHECK(strstr(e.msg, "invalid duration") != NULL);
  CHECK_EQ_INT(ms, -12345); /* out untouched on failure */
}

int main(void) {
  ok("250ms", 250);
  ok("30s", 30000);
  ok("5m", 300000);
  ok("1h", 3600000);
  ok("1d", 86400000);
  ok("1.5s", 1500);
  ok("0.25m", 15000);
  ok("10", 10000);
  ok("0", 0);
  ok("0ms", 0);

  bad("");
  bad(NULL);
  bad("abc");
  bad("5x");
  bad("-1s");
  bad("-5");
  bad("5 s");
  bad("s");
  bad("1e300h");
  bad("inf");
  bad("nan");

  /* the message names the bad input so a script author can find it */
  struct sg_error e = {0};
  int64_t ms = -1;
  sg_duration_parse("5x", &ms, &e);
  CHECK(strstr(e.msg, "'5x'") != NULL);

  CHECK_EQ_INT(sg_duration_from_seconds(1.5, &ms, &e), 0);
  CHECK_EQ_INT(ms, 1500);
  CHECK_EQ_INT(sg_duration_from_seconds(0, &ms, &e), 0);
  CHECK_EQ_INT(ms, 0);
  CHECK_EQ_INT(sg_duration_from_seconds(0.0004, &ms, &e), 0);
  CHECK_EQ_INT(ms, 0);
  CHECK_EQ_INT(sg_duration_from_seconds(0.0006, &ms, &e), 0);
  CHECK_EQ_INT(ms, 1); /* rounds to the nearest ms, not down */
  CHECK_EQ_INT(sg_duration_from_seconds(3600, &ms, &e), 0);
  CHECK_EQ_INT(ms, 3600000);
  ms = -7;
  CHECK_EQ_INT(sg_duration_from_seconds(-1, &ms, &e), -1);
  CHECK_EQ_INT(e.code, SG_E_INVALID);
  CHECK_EQ_INT(ms, -7);
  CHECK_EQ_INT(sg_duration_from_seconds(NAN, &ms, &e), -1);
  CHECK_EQ_INT(sg_duration_from_seconds(INFINITY, &ms, &e), -1);

  return check_report();
}
