/* cron: the parser and the next-match search (see cron.h). */
#include "cron.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

/* one field's bounds and names */
struct field {
  const char *what;
  int lo, hi;
  const char *const *names; /* names[i] is the value lo + i (NULL: none) */
};

static const char *const month_names[] = {"jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"};
static const char *const day_names[] = {"sun", "mon", "tue", "wed", "thu", "fri", "sat"};

static const struct field fields[5] = {
  {"minute", 0, 59, NULL}, {"hour", 0, 23, NULL}, {"day of month", 1, 31, NULL},
  {"month", 1, 12, month_names}, {"day of week", 0, 7, day_names},
};

/* a number or a name at *p (advanced past it): 0, or -1 */
static int value(const struct field *f, const char **p, int *v) {
  const char *s = *p;
  if (isdigit((unsigned char)*s)) {
    long n = 0;
    while (isdigit((unsigned char)*s) && n < 1000) n = n * 10 + (*s++ - '0');
    if (isdigit((unsigned char)*s)) return -1;
    *v = (int)n;
    *p = s;
    return 0;
  }
  if (f->names && isalpha((unsigned char)s[0]) && isalpha((unsigned char)s[1]) && isalpha((unsigned char)s[2]) &&
      !isalpha((unsigned char)s[3])) {
    int n = f == &fields[3] ? 12 : 7;
    for (int i = 0; i < n; i++)
      if (strncasecmp(s, f->names[i], 3) == 0) {
        *v = f->lo + i;
        *p = s + 3;
        return 0;
      }
  }
  return -1;
}

/* one comma-separated field of text [s, end) into bits; 0, or -1 with err */
static int parse_field(const struct field *f, const char *s, const char *end, uint64_t *bits, int *any, char *err,
                       size_t errn) {
  char text[64];
  snprintf(text, sizeof text, "%.*s", (int)(end - s), s);
  *bits = 0;
  *any = strcmp(text, "*") == 0;
  const char *p = text;
  for (;;) {
    int a, b, step = 1;
    if (*p == '*') {
      a = f->lo;
      b = f->hi;
      p++;
    } else {
      if (value(f, &p, &a) < 0) goto bad;
      b = a;
      if (*p == '-') {
        p++;
        if (value(f, &p, &b) < 0) goto bad;
      }
    }
    if (*p == '/') {
      p++;
      const char *q = p;
      if (value(&fields[0], &p, &step) < 0 || p == q || step < 1) goto bad;
      if (b == a && text[0] != '*') b = f->hi; /* "a/n": from a to the end */
    }
    if (a < f->lo || b > f->hi || a > b) {
      snprintf(err, errn, "%s field '%s': %d-%d is outside %d-%d (or reversed)", f->what, text, a, b, f->lo, f->hi);
      return -1;
    }
    for (int v = a; v <= b; v += step) *bits |= (uint64_t)1 << v;
    if (*p == ',') { p++; continue; }
    if (*p == 0) break;
    goto bad;
  }
  return 0;
bad:
  snprintf(err, errn, "%s field '%s' is not a cron field (use *, n, a-b, */n, a-b/n or lists of them%s)", f->what, text,
           f->names ? "; names like jan or mon too" : "");
  return -1;
}

int sg_cron_parse(const char *expr, struct sg_cron *c, char *err, size_t errn) {
  memset(c, 0, sizeof *c);
  if (!expr) { snprintf(err, errn, "no cron expression"); return -1; }
  const char *start[6], *end[6];
  int n = 0;
  const char *p = expr;
  while (*p) {
    while (*p == ' ' || *p == '\t') p++;
    if (!*p) break;
    if (n == 5) { snprintf(err, errn, "cron expression '%s' has more than 5 fields (minute hour day month weekday)", expr); return -1; }
    start[n] = p;
    while (*p && *p != ' ' && *p != '\t') p++;
    end[n++] = p;
  }
  if (n != 5) {
    snprintf(err, errn, "cron expression '%s' has %d field%s, not 5 (minute hour day month weekday)", expr, n, n == 1 ? "" : "s");
    return -1;
  }
  uint64_t bits[5];
  int any[5];
  for (int i = 0; i < 5; i++)
    if (parse_field(&fields[i], start[i], end[i], &bits[i], &any[i], err, errn) < 0) return -1;
  c->minute = bits[0];
  c->hour = (uint32_t)bits[1];
  c->dom = (uint32_t)bits[2];
  c->month = (uint16_t)bits[3];
  c->dow = (uint8_t)((bits[4] | (bits[4] >> 7)) & 0x7f); /* 7 is Sunday too */
  c->dom_any = any[2];
  c->dow_any = any[4];
  return 0;
}

static void broken_down(int64_t m, int local, struct tm *tm) {
  time_t t = (time_t)(m * 60);
  if (local) localtime_r(&t, tm);
  else gmtime_r(&t, tm);
}

static int day_matches(const struct sg_cron *c, const struct tm *tm) {
  if (!(c->month >> (tm->tm_mon + 1) & 1)) return 0;
  int dom = c->dom >> tm->tm_mday & 1, dow = c->dow >> tm->tm_wday & 1;
  if (c->dom_any || c->dow_any) return dom && dow;
  return dom || dow;
}

int sg_cron_match(const struct sg_cron *c, int64_t m, int local) {
  struct tm tm;
  broken_down(m, local, &tm);
  return day_matches(c, &tm) && (c->hour >> tm.tm_hour & 1) && (c->minute >> tm.tm_min & 1);
}

int64_t sg_cron_next(const struct sg_cron *c, int64_t after, int local) {
  int64_t m = after + 1, limit = after + 5LL * 366 * 1440;
  while (m <= limit) {
    struct tm tm;
    broken_down(m, local, &tm);
    int into_day = tm.tm_hour * 60 + tm.tm_min;
    if (!day_matches(c, &tm)) { m += 1440 - into_day; continue; }   /* to the next midnight */
    if (!(c->hour >> tm.tm_hour & 1)) { m += 60 - tm.tm_min; continue; } /* to the next hour */
    if (c->minute >> tm.tm_min & 1) return m;
    m++;
  }
  return -1;
}
