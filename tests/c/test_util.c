/* Unit tests for the helpers of util.c that decide behaviour: the seeded generator behind retry
 * jitter, the script directory check that refuses to start a host on a wrong path, the
 * buffer formatting of the hot path and string interning. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "util.h"

#define DRAWS 10000

/* the same seed gives the same sequence (tests and replays can rely on it), two seeds do not */
static void test_rand_seeds(void) {
  struct sg_rand a, b, c;
  sg_rand_seed(&a, 1);
  sg_rand_seed(&b, 1);
  sg_rand_seed(&c, 2);
  int same_ab = 0, same_ac = 0;
  for (int i = 0; i < 100; i++) {
    uint64_t x = sg_rand_next(&a), y = sg_rand_next(&b), z = sg_rand_next(&c);
    same_ab += x == y;
    same_ac += x == z;
  }
  CHECK_EQ_INT(same_ab, 100);
  CHECK_EQ_INT(same_ac, 0);

  /* the OS seed differs call to call, so two processes (or a restart) draw different delays */
  uint64_t s1 = sg_rand_os_seed(), s2 = sg_rand_os_seed();
  CHECK(s1 != s2);
  sg_rand_seed(&a, s1);
  sg_rand_seed(&b, s2);
  int same = 0;
  for (int i = 0; i < 20; i++) same += sg_rand_jitter(&a, 10000) == sg_rand_jitter(&b, 10000);
  CHECK(same < 5); /* 5001 values each: a few coincidences at most */
}

/* every delay lands in [delay/2, delay], both ends are reached, and the spread is even */
static void test_jitter_range(void) {
  static const int64_t delays[] = {1, 2, 3, 7, 200, 1000, 5000, 86400000};
  struct sg_rand r;
  sg_rand_seed(&r, 0x5eed);
  for (size_t k = 0; k < sizeof delays / sizeof *delays; k++) {
    int64_t d = delays[k], lo = d / 2, min = d, max = 0;
    int out = 0, low_half = 0;
    for (int i = 0; i < DRAWS; i++) {
      int64_t j = sg_rand_jitter(&r, d);
      out += j < lo || j > d;
      if (j < min) min = j;
      if (j > max) max = j;
      low_half += j < lo + (d - lo + 1) / 2;
    }
    if (!CHECK(out == 0)) fprintf(stderr, "  delay %lld: %d draws outside [%lld, %lld]\n", (long long)d, out,
                                  (long long)lo, (long long)d);
    if (d <= 1000) { /* small ranges: both ends show up in 10,000 draws */
      CHECK_EQ_INT(min, lo);
      CHECK_EQ_INT(max, d);
    }
    if (d >= 200) CHECK(low_half > DRAWS * 4 / 10 && low_half < DRAWS * 6 / 10);
  }
  /* nothing to spread: returned as is */
  CHECK_EQ_INT(sg_rand_jitter(&r, 0), 0);
  CHECK_EQ_INT(sg_rand_jitter(&r, -5), -5);
}

static void test_dir_check(void) {
  char dir[] = "/tmp/sg_test_util.XXXXXX";
  if (!CHECK(mkdtemp(dir) != NULL)) return;
  struct sg_error e = {0};
  CHECK_EQ_INT(sg_dir_check(dir, "script directory", &e), 0);

  char missing[64], file[64];
  snprintf(missing, sizeof missing, "%s/nope", dir);
  snprintf(file, sizeof file, "%s/file.lua", dir);
  CHECK_EQ_INT(sg_dir_check(missing, "script directory", &e), -1);
  CHECK_EQ_INT(e.code, SG_E_INVALID);
  CHECK(strstr(e.msg, "script directory") && strstr(e.msg, missing) && strstr(e.msg, "No such file"));

  FILE *f = fopen(file, "w");
  if (f) fclose(f);
  CHECK_EQ_INT(sg_dir_check(file, "script directory", &e), -1);
  CHECK(strstr(e.msg, file) && strstr(e.msg, "not a directory"));

  /* unreadable: only observable without root, which reads everything */
  if (geteuid() != 0) {
    chmod(dir, 0);
    CHECK_EQ_INT(sg_dir_check(dir, "script directory", &e), -1);
    CHECK(strstr(e.msg, "cannot be read") != NULL);
    chmod(dir, 0700);
  }
  unlink(file);
  rmdir(dir);
}

/* the times GET /v1/sagas takes for since= and until=, and the time in a saga id */
static void test_time_parse(void) {
  int64_t ms = -1;
  CHECK_EQ_INT(sg_time_parse("2026-11-30T12:00:00Z", &ms), 0);
  CHECK_EQ_INT(ms, 1796040000000LL);
  CHECK_EQ_INT(sg_time_parse("2026-11-30T12:00:00.123Z", &ms), 0);
  CHECK_EQ_INT(ms, 1796040000123LL);
  CHECK_EQ_INT(sg_time_parse("2026-11-30T12:00:00.5z", &ms), 0);
  CHECK_EQ_INT(ms, 1796040000500LL);
  CHECK_EQ_INT(sg_time_parse("2026-11-30T12:00:00.123456789Z", &ms), 0);
  CHECK_EQ_INT(ms, 1796040000123LL);
  CHECK_EQ_INT(sg_time_parse("2026-11-30T13:30:00+01:30", &ms), 0);
  CHECK_EQ_INT(ms, 1796040000000LL);
  CHECK_EQ_INT(sg_time_parse("2026-11-30T10:00:00-02:00", &ms), 0);
  CHECK_EQ_INT(ms, 1796040000000LL);
  CHECK_EQ_INT(sg_time_parse("1970-01-01T00:00:00Z", &ms), 0);
  CHECK_EQ_INT(ms, 0);
  CHECK_EQ_INT(sg_time_parse("2024-02-29T00:00:00Z", &ms), 0);
  CHECK_EQ_INT(ms, 1709164800000LL);
  CHECK_EQ_INT(sg_time_parse("1796040000123", &ms), 0);
  CHECK_EQ_INT(ms, 1796040000123LL);
  static const char *bad[] = {
    "", "yesterday", "2026-11-30", "2026-11-30T12:00:00", "2026-11-30 12:00:00Z", "2026-13-01T00:00:00Z",
    "2026-02-29T00:00:00Z", "2026-11-31T00:00:00Z", "2026-11-30T24:00:00Z", "2026-11-30T12:60:00Z",
    "2026-11-30T12:00:60Z", "2026-11-30T12:00:00.Z", "2026-11-30T12:00:00.1234567890Z", "2026-11-30T12:00:00ZZ",
    "2026-11-30T12:00:00+0100", "-5", "12.5", "1796040000123x", "99999999999999999999",
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    if (!CHECK(sg_time_parse(bad[i], &ms) < 0)) fprintf(stderr, "  accepted '%s'\n", bad[i]);

  char id[37];
  int64_t before = sg_now_ms();
  sg_uuid(id);
  int64_t t = sg_uuid_time_ms(id);
  CHECK(t >= before && t <= sg_now_ms());
  CHECK_EQ_INT(sg_uuid_time_ms("01a22edc-9e48-7580-b506-f5f3507e8de4"), 0x01a22edc9e48LL);
  CHECK_EQ_INT(sg_uuid_time_ms("01a22edc-9e48-7580-b506-f5f3507e8de"), -1);
  CHECK_EQ_INT(sg_uuid_time_ms("01a22edc-9e48-7580-b506-f5f3507e8de45"), -1);
  CHECK_EQ_INT(sg_uuid_time_ms("01A22EDC-9e48-7580-b506-f5f3507e8de4"), -1);
  CHECK_EQ_INT(sg_uuid_time_ms("01a22edc_9e48-7580-b506-f5f3507e8de4"), -1);
  CHECK_EQ_INT(sg_uuid_time_ms(""), -1);
  /* the layout, formatted by hand: 8-4-4-4-12 lowercase hex, version 7, variant 10, ids in time order */
  char prev[37] = "";
  for (int i = 0; i < 2000; i++) {
    sg_uuid(id);
    int ok = strlen(id) == 36 && id[14] == '7' && strchr("89ab", id[19]) && sg_uuid_time_ms(id) >= before;
    for (int k = 0; k < 36; k++)
      ok = ok && ((k == 8 || k == 13 || k == 18 || k == 23) ? id[k] == '-' : (strchr("0123456789abcdef", id[k]) && id[k]));
    if (!CHECK(ok)) { fprintf(stderr, "  bad id '%s'\n", id); break; }
    CHECK(strncmp(prev, id, 13) <= 0); /* the ms time (first 48 bits) never goes back */
    memcpy(prev, id, sizeof prev);
  }
  char *c3 = sg_concat3("pay", ".", "Charge");
  CHECK_STR(c3, "pay.Charge");
  free(c3);
  c3 = sg_concat3("", "", "");
  CHECK_STR(c3, "");
  free(c3);
}

/* sg_buf_printf formats into the room there is, again after growing when there was not enough */
static void test_buf_format(void) {
  struct sg_buf b;
  sg_buf_init(&b);
  char want[4096] = "";
  for (int i = 0; i < 300; i++) {
    sg_buf_printf(&b, "%d:%s;", i, i % 7 ? "x" : "a longer piece of text than the rest, to make the buffer grow");
    size_t l = strlen(want);
    snprintf(want + l, sizeof want - l, "%d:%s;", i, i % 7 ? "x" : "a longer piece of text than the rest, to make the buffer grow");
    if (l > 3000) break;
  }
  CHECK(b.len == strlen(want) && strcmp(b.data, want) == 0);
  sg_buf_free(&b);
  sg_buf_init(&b);
  const int64_t v[] = {0, 7, -7, 1234567890123LL, INT64_MAX, INT64_MIN};
  for (size_t i = 0; i < sizeof v / sizeof *v; i++) {
    sg_buf_add_i64(&b, v[i]);
    sg_buf_adds(&b, " ");
  }
  CHECK(strcmp(b.data, "0 7 -7 1234567890123 9223372036854775807 -9223372036854775808 ") == 0);
  sg_buf_free(&b);
}

/* sg_intern: equal strings give one pointer, whoever asks (the engine's thread and the store's reader
 * threads), different strings different pointers, and the copy does not depend on the caller's buffer */
#define INTERN_THREADS 4
#define INTERN_KEYS 500
static const char *interned[INTERN_THREADS][INTERN_KEYS];

static void *intern_worker(void *arg) {
  int t = (int)(intptr_t)arg;
  char key[64];
  for (int i = 0; i < INTERN_KEYS; i++) {
    int k = (i * 7 + t * 131) % INTERN_KEYS; /* each thread its own order */
    snprintf(key, sizeof key, "SagaType%d", k);
    interned[t][k] = sg_intern(key);
  }
  return NULL;
}

static void test_intern(void) {
  CHECK(sg_intern(NULL) == NULL);
  char a[32] = "OrderProcessing", b[32] = "OrderProcessing";
  const char *pa = sg_intern(a), *pb = sg_intern(b);
  CHECK(pa == pb && pa != a && pa != b && strcmp(pa, "OrderProcessing") == 0);
  strcpy(a, "Changed");
  CHECK(strcmp(pa, "OrderProcessing") == 0 && sg_intern("OrderProcessing") == pa);
  CHECK(sg_intern("Changed") != pa && sg_intern("") != pa && *sg_intern("") == 0);
  pthread_t th[INTERN_THREADS];
  for (int t = 0; t < INTERN_THREADS; t++) pthread_create(&th[t], NULL, intern_worker, (void *)(intptr_t)t);
  for (int t = 0; t < INTERN_THREADS; t++) pthread_join(th[t], NULL);
  int mismatched = 0, wrong = 0;
  char key[64];
  for (int k = 0; k < INTERN_KEYS; k++) {
    snprintf(key, sizeof key, "SagaType%d", k);
    for (int t = 0; t < INTERN_THREADS; t++) mismatched += interned[t][k] != interned[0][k];
    wrong += strcmp(interned[0][k], key) != 0 || sg_intern(key) != interned[0][k];
    if (k && interned[0][k] == interned[0][k - 1]) wrong++;
  }
  if (!CHECK(mismatched == 0 && wrong == 0)) fprintf(stderr, "  %d mismatched, %d wrong\n", mismatched, wrong);
}

/* sg_iso8601 keeps the current second's text: times within a second, across seconds and back, and
 * before 1970, each as gmtime + strftime would write them */
static void test_iso8601(void) {
  const int64_t ms[] = { 1796212800000, 1796212800999, 1796212801000, 1796212800001, 1796212801001, 0, 999,
                         1796212859999, 1796212860000, 4102444799999, 1796212800123, -1, -1000, -86400001,
                         1796212800123 };
  for (size_t i = 0; i < sizeof ms / sizeof ms[0]; i++) {
    char got[32], want[64];
    sg_iso8601(ms[i], got);
    time_t secs = (time_t)(ms[i] / 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    size_t n = strftime(want, sizeof want, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(want + n, sizeof want - n, ".%03dZ", (int)(ms[i] % 1000));
    if (!CHECK(strcmp(got, want) == 0)) fprintf(stderr, "  %lld: '%s', want '%s'\n", (long long)ms[i], got, want);
  }
  char t[32];
  sg_iso8601(1796212800123, t);
  CHECK(strcmp(t, "2026-12-02T12:00:00.123Z") == 0);
}

int main(void) {
  test_iso8601();
  test_intern();
  test_buf_format();
  test_time_parse();
  test_rand_seeds();
  test_jitter_range();
  test_dir_check();
  return check_report();
}
