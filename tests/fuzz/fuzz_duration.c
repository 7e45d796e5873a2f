/* libFuzzer target: sg_duration_parse on any text (a NUL-terminated copy of the input), and
 * sg_duration_from_seconds on its first 8 bytes read as a double. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "duration.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size > 256) return -1; /* durations are short; longer inputs only slow the search */
  char *s = malloc(size + 1);
  memcpy(s, data, size);
  s[size] = 0;
  int64_t ms = -1;
  struct sg_error e = {0};
  if (sg_duration_parse(s, &ms, &e) == 0) {
    if (ms < 0 || ms > (int64_t)1e15) abort(); /* the contract: non-negative and bounded */
  } else if (!e.msg[0]) {
    abort(); /* a failure always says why */
  }
  free(s);
  /* the same bytes as a double, as Lua hands a number of seconds over */
  if (size >= 8) {
    double secs;
    memcpy(&secs, data, sizeof secs);
    if (sg_duration_from_seconds(secs, &ms, &e) == 0 && (ms < 0 || ms > (int64_t)1e15)) abort();
  }
  return 0;
}
