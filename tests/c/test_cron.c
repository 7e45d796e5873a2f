/* Unit tests for cron.c: the expressions saga.schedule takes, and the next fire time after a moment. */
#include <string.h>

#include "check.h"
#include "cron.h"

/* minute index of a UTC date and time */
static int64_t at(int y, int mo, int d, int h, int mi) {
  /* days from civil (Howard Hinnant's algorithm) */
  y -= mo <= 2;
  int64_t era = (y >= 0 ? y : y - 399) / 400;
  int64_t yoe = y - era * 400;
  int64_t doy = (153 * (mo + (mo > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  int64_t days = era * 146097 + doe - 719468;
  return days * 1440 + h * 60 + mi;
}

static void next_is(const char *expr, int64_t after, int64_t want) {
  struct sg_cron c;
  char err[200] = "";
  if (!CHECK(sg_cron_parse(expr, &c, err, sizeof err) == 0)) { fprintf(stderr, "  '%s': %s\n", expr, err); return; }
  int64_t got = sg_cron_next(&c, after, 0);
  if (got != want) fprintf(stderr, "  '%s' after %lld\n", expr, (long long)after);
  CHECK_EQ_INT(got, want);
}

static void bad(const char *expr, const char *says) {
  struct sg_cron c;
  char err[200] = "";
  if (!CHECK(sg_cron_parse(expr, &c, err, sizeof err) == -1)) { fprintf(stderr, "  '%s' was accepted\n", expr); return; }
  if (!CHECK(strstr(err, says) != NULL)) fprintf(stderr, "  '%s': '%s' does not say '%s'\n", expr, err, says);
}

int main(void) {
  int64_t t0 = at(2026, 12, 1, 10, 2); /* a Tuesday */
  next_is("* * * * *", t0, t0 + 1);
  next_is("*/5 * * * *", t0, at(2026, 12, 1, 10, 5));
  next_is("*/5 * * * *", at(2026, 12, 1, 10, 5), at(2026, 12, 1, 10, 10));
  next_is("0 * * * *", t0, at(2026, 12, 1, 11, 0));
  next_is("30 2 * * *", t0, at(2026, 12, 2, 2, 30));
  next_is("0 0 1 * *", t0, at(2027, 1, 1, 0, 0));
  next_is("15,45 9-17/4 * * *", t0, at(2026, 12, 1, 13, 15));
  next_is("0 12 * * mon", t0, at(2026, 12, 7, 12, 0));
  next_is("0 12 * * 7", t0, at(2026, 12, 6, 12, 0));          /* 7 = Sunday */
  next_is("0 12 * * SUN", t0, at(2026, 12, 6, 12, 0));
  next_is("0 0 * feb *", t0, at(2027, 2, 1, 0, 0));
  next_is("0 0 29 2 *", t0, at(2028, 2, 29, 0, 0));           /* leap day */
  next_is("0 0 13 * fri", t0, at(2026, 12, 4, 0, 0));         /* either day field: Friday the 4th */
  next_is("5/20 * * * *", t0, at(2026, 12, 1, 10, 5));
  next_is("5/20 * * * *", at(2026, 12, 1, 10, 45), at(2026, 12, 1, 11, 5));
  next_is("0 0 31 4 *", t0, -1);                              /* April has no 31st */

  struct sg_cron c;
  char err[200];
  CHECK(sg_cron_parse("*/15 * * * *", &c, err, sizeof err) == 0);
  CHECK(sg_cron_match(&c, at(2026, 12, 1, 10, 30), 0));
  CHECK(!sg_cron_match(&c, at(2026, 12, 1, 10, 31), 0));

  bad("* * * *", "has 4 fields");
  bad("* * * * * *", "more than 5 fields");
  bad("", "has 0 fields");
  bad("60 * * * *", "minute field '60'");
  bad("* 24 * * *", "hour field");
  bad("* * 0 * *", "day of month field");
  bad("* * * 13 *", "month field");
  bad("* * * * 8", "day of week field");
  bad("*/0 * * * *", "not a cron field");
  bad("5-1 * * * *", "reversed");
  bad("a * * * *", "not a cron field");
  bad("* * * foo *", "month field 'foo'");
  bad("1,,2 * * * *", "not a cron field");
  return check_report();
}
