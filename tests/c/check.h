/* check: a header-only harness for the C unit tests.
 * A failed check prints file:line and what differed, then the test goes on, so one run shows every
 * failure. main() ends with `return check_report();`, which prints "N passed, M failed" and returns
 * non-zero if anything failed (what ctest looks at). Include it from one .c file per test binary. */
#ifndef SG_CHECK_H
#define SG_CHECK_H

#include <stdio.h>
#include <string.h>

static int check_passed; /* checks that held */
static int check_failed; /* checks that did not */

/* Counts one check. Returns ok, so CHECK() can guard checks that depend on it. */
static inline int check_note(int ok) {
  if (ok) check_passed++;
  else check_failed++;
  return ok;
}

#define CHECK(cond)                                                                  \
  (check_note(!!(cond))                                         \
       ? 1                                                                           \
       : (fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond), 0))

#define CHECK_EQ_INT(got, want)                                                          \
  do {                                                                                   \
    long long check_g_ = (long long)(got), check_w_ = (long long)(want);                 \
    if (!check_note(check_g_ == check_w_))                           \
      fprintf(stderr, "%s:%d: CHECK_EQ_INT failed: %s == %lld, expected %lld\n", __FILE__, \
              __LINE__, #got, check_g_, check_w_);                                       \
  } while (0)

/* NULL equals only NULL. */
#define CHECK_STR(got, want)                                                               \
  do {                                                                                     \
    const char *check_g_ = (got), *check_w_ = (want);                                      \
    int check_ok_ = (!check_g_ || !check_w_) ? check_g_ == check_w_ : strcmp(check_g_, check_w_) == 0; \
    if (!check_note(check_ok_))                                        \
      fprintf(stderr, "%s:%d: CHECK_STR failed: %s == %s%s%s, expected %s%s%s\n", __FILE__, __LINE__, \
              #got, check_g_ ? "\"" : "", check_g_ ? check_g_ : "NULL", check_g_ ? "\"" : "",  \
              check_w_ ? "\"" : "", check_w_ ? check_w_ : "NULL", check_w_ ? "\"" : "");     \
  } while (0)

/* Prints the tally; the return value is main's exit status. */
static inline int check_report(void) {
  printf("%d passed, %d failed\n", check_passed, check_failed);
  return check_failed ? 1 : 0;
}

#endif
