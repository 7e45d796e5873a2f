/* duration: parses "250ms", "30s", "5m", "1h", "1d", "1.5s", or a plain number of seconds. */
#ifndef SG_DURATION_H
#define SG_DURATION_H
#include <stdint.h>
#include "util.h"

/* Parses s into milliseconds. Returns 0 or -1 with e filled ("invalid duration 'x': ..."). */
int sg_duration_parse(const char *s, int64_t *ms, struct sg_error *e);
/* Seconds given as a number (Lua numbers): rejects negatives and NaN. */
int sg_duration_from_seconds(double secs, int64_t *ms, struct sg_error *e);
#endif
