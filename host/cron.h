/* cron: standard 5-field cron expressions (minute hour day-of-month month day-of-week) and the next
 * time one matches. Pure functions on minute indexes (minutes since the epoch), no allocation.
 *
 * Fields take `*`, numbers, ranges `a-b`, steps `*\/n`, `a-b/n`, `a/n` and lists `a,b-c`; months
 * JAN..DEC and days SUN..SAT by name too (either case); day-of-week 0 and 7 are Sunday. As in cron,
 * when both day fields are restricted a day matches either of them. */
#ifndef SG_CRON_H
#define SG_CRON_H

#include <stddef.h>
#include <stdint.h>

struct sg_cron {
  uint64_t minute;   /* bit m: minute m (0-59) */
  uint32_t hour;     /* bit h: hour h (0-23) */
  uint32_t dom;      /* bit d: day of month d (1-31) */
  uint16_t month;    /* bit m: month m (1-12) */
  uint8_t dow;       /* bit d: weekday d (0-6, 0 = Sunday) */
  int dom_any;       /* the day-of-month field was `*` */
  int dow_any;       /* the day-of-week field was `*` */
};

/* Parses expr; 0, or -1 with a message saying which field is wrong and why in err. */
int sg_cron_parse(const char *expr, struct sg_cron *c, char *err, size_t errn);
/* Whether minute index m matches (local: in the host's time zone, else UTC). */
int sg_cron_match(const struct sg_cron *c, int64_t m, int local);
/* The first minute index after `after` that matches, or -1 if none within 5 years. */
int64_t sg_cron_next(const struct sg_cron *c, int64_t after, int local);

#endif
