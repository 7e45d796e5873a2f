/* duration: "250ms", "30s", "5m", "1h", "2d" or a number of seconds. */
#include "duration.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int sg_duration_from_seconds(double secs, int64_t *ms, struct sg_error *e) {
  if (isnan(secs) || secs < 0 || secs > 1e12)
    return sg_errorf(e, SG_E_INVALID, "invalid duration %g: must be a non-negative number of seconds", secs);
  *ms = (int64_t)llround(secs * 1000.0);
  return 0;
}

int sg_duration_parse(const char *s, int64_t *ms, struct sg_error *e) {
  if (!s || !*s) return sg_errorf(e, SG_E_INVALID, "invalid duration '': expected e.g. \"250ms\", \"30s\", \"5m\", \"1h\"");
  char *end;
  double v = strtod(s, &end);
  if (end == s || v < 0 || isnan(v) || isinf(v))
    return sg_errorf(e, SG_E_INVALID, "invalid duration '%s': expected a number followed by ms, s, m, h or d", s);
  double mult;
  if (*end == 0 || strcmp(end, "s") == 0) mult = 1000;
  else if (strcmp(end, "ms") == 0) mult = 1;
  else if (strcmp(end, "m") == 0) mult = 60e3;
  else if (strcmp(end, "h") == 0) mult = 3600e3;
  else if (strcmp(end, "d") == 0) mult = 86400e3;
  else return sg_errorf(e, SG_E_INVALID, "invalid duration '%s': unknown unit '%s' (use ms, s, m, h or d)", s, end);
  double r = v * mult;
  if (r > 1e15) return sg_errorf(e, SG_E_INVALID, "invalid duration '%s': too large", s);
  *ms = (int64_t)llround(r);
  return 0;
}
