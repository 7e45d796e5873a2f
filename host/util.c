/* util: logging, time, ids, buffers. */
#include "util.h"
#include "map.h"

/* GCC with UBSan warns about vsnprintf(NULL, 0, ...), the standard way to measure a formatted string
 * (clang has no such warning group and would reject the pragma under -Werror) */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wformat-truncation"
#endif

#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int sg_log_level = SG_LOG_INFO;

int sg_errorf(struct sg_error *e, int code, const char *fmt, ...) {
  if (e) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
    e->code = code;
  }
  return -1;
}

int sg_log_parse_level(const char *s) {
  static const char *names[] = {"debug", "info", "warn", "error"};
  for (int i = 0; i < 4; i++)
    if (strcmp(s, names[i]) == 0) return i;
  return -1;
}

static int64_t wall_ms(void);

void sg_log(int level, const char *fmt, ...) {
  static const char *tags[] = {"debug", "info", "warn", "error"};
  if (level < sg_log_level) return;
  char ts[32];
  sg_iso8601(wall_ms(), ts); /* the log keeps the wall clock, also under a virtual one */
  char line[4096];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  if (n >= (int)sizeof line) memcpy(line + sizeof line - 12, "... [cut]", 10); /* say so, never silently */
  fprintf(stderr, "%s %-5s %s\n", ts, tags[level], line);
}

/* the virtual clock (the testing kit): 0 = the wall clock */
static int64_t virtual_ms;

void sg_clock_set_virtual(int64_t ms) { virtual_ms = ms > 0 ? ms : 0; }

int64_t sg_clock_virtual(void) { return virtual_ms; }

static int64_t wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t sg_now_ms(void) { return virtual_ms ? virtual_ms : wall_ms(); }

int64_t sg_mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* A JSON answer has several times (a saga's, each attempt's) and every log line one, mostly within the
 * same second: that second's text is kept (per thread) and only the milliseconds are written each time. */
void sg_iso8601(int64_t ms, char out[32]) {
  static __thread int64_t cached_secs = -1;
  static __thread char cached[32];
  static __thread size_t cached_n;
  if (ms < 0) { /* before 1970: not kept */
    time_t secs = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    size_t n = strftime(out, 32, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, 32 - n, ".%03dZ", (int)(ms % 1000));
    return;
  }
  int64_t secs = ms / 1000;
  if (secs != cached_secs) {
    time_t t = (time_t)secs;
    struct tm tm;
    gmtime_r(&t, &tm);
    cached_n = strftime(cached, sizeof cached - 6, "%Y-%m-%dT%H:%M:%S", &tm);
    cached_secs = secs;
  }
  int frac = (int)(ms % 1000);
  memcpy(out, cached, cached_n);
  char *p = out + cached_n;
  p[0] = '.';
  p[1] = (char)('0' + frac / 100);
  p[2] = (char)('0' + frac / 10 % 10);
  p[3] = (char)('0' + frac % 10);
  p[4] = 'Z';
  p[5] = 0;
}

/* xoshiro256** seeded from /dev/urandom: ids need to be unique, not secret. */
static uint64_t rng_s[4];
static int rng_seeded;

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t rng_next(void) {
  if (!rng_seeded) {
    int fd = open("/dev/urandom", O_RDONLY);
    ssize_t got = fd >= 0 ? read(fd, rng_s, sizeof rng_s) : -1;
    if (fd >= 0) close(fd);
    if (got != (ssize_t)sizeof rng_s) {
      rng_s[0] = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
      rng_s[1] = 0x9e3779b97f4a7c15ULL; rng_s[2] = (uint64_t)clock(); rng_s[3] = 0xdeadbeefULL;
    }
    rng_seeded = 1;
  }
  uint64_t result = rotl(rng_s[1] * 5, 7) * 9, t = rng_s[1] << 17;
  rng_s[2] ^= rng_s[0]; rng_s[3] ^= rng_s[1]; rng_s[1] ^= rng_s[2]; rng_s[0] ^= rng_s[3];
  rng_s[2] ^= t; rng_s[3] = rotl(rng_s[3], 45);
  return result;
}

void sg_uuid(char out[37]) {
  /* UUIDv7: 48 bits of ms time first, so ids sort by creation and inserts keyed by them append to
   * the end of the index instead of dirtying random pages */
  uint64_t ms = (uint64_t)sg_now_ms();
  uint64_t r1 = rng_next(), r2 = rng_next();
  uint64_t a = (ms << 16) | 0x7000ULL | (r1 & 0x0fffULL);
  uint64_t b = (r2 & 0x3fffffffffffffffULL) | 0x8000000000000000ULL; /* variant 10 */
  /* "%08x-%04x-%04x-%04x-%012llx" of a's 64 bits and b's 64, by hand (one per saga) */
  static const char hex[] = "0123456789abcdef";
  char *p = out;
  for (int i = 60; i >= 0; i -= 4) {
    if (i == 28 || i == 12) *p++ = '-';
    *p++ = hex[(a >> i) & 0xf];
  }
  for (int i = 60; i >= 0; i -= 4) {
    if (i == 60 || i == 44) *p++ = '-';
    *p++ = hex[(b >> i) & 0xf];
  }
  *p = 0;
}

int64_t sg_uuid_time_ms(const char *s) {
  int64_t ms = 0;
  for (int i = 0; i < 36; i++) {
    char c = s[i];
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      if (c != '-') return -1;
      continue;
    }
    int v = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
    if (v < 0) return -1; /* a NUL too: the id is shorter */
    if (i < 13) ms = ms * 16 + v; /* the first 48 bits */
  }
  return s[36] ? -1 : ms;
}

/* days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil) */
static int64_t days_from_civil(int64_t y, int m, int d) {
  y -= m <= 2;
  int64_t era = (y >= 0 ? y : y - 399) / 400;
  int64_t yoe = y - era * 400;
  int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + doe - 719468;
}

/* n digits at *p as a number (*p moves past them), -1 if they are not all digits */
static int digits(const char **p, int n) {
  int v = 0;
  for (int i = 0; i < n; i++, (*p)++) {
    if (**p < '0' || **p > '9') return -1;
    v = v * 10 + (**p - '0');
  }
  return v;
}

int sg_time_parse(const char *s, int64_t *ms) {
  if (!s || !*s) return -1;
  const char *p = s;
  if (strspn(s, "0123456789") == strlen(s)) { /* ms since the epoch */
    if (strlen(s) > 15) return -1;           /* past the year 33000: surely a mistake */
    *ms = strtoll(s, NULL, 10);
    return 0;
  }
  int y = digits(&p, 4);
  if (y < 0 || *p++ != '-') return -1;
  int mo = digits(&p, 2);
  if (mo < 1 || mo > 12 || *p++ != '-') return -1;
  int d = digits(&p, 2);
  static const int mdays[] = { 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
  int leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
  if (d < 1 || d > mdays[mo - 1] || (mo == 2 && d == 29 && !leap)) return -1;
  if (*p != 'T' && *p != 't') return -1;
  p++;
  int h = digits(&p, 2);
  if (h < 0 || h > 23 || *p++ != ':') return -1;
  int mi = digits(&p, 2);
  if (mi < 0 || mi > 59 || *p++ != ':') return -1;
  int sec = digits(&p, 2);
  if (sec < 0 || sec > 59) return -1;
  int frac = 0;
  if (*p == '.') {
    p++;
    int n = 0;
    for (; *p >= '0' && *p <= '9'; p++, n++)
      if (n < 3) frac = frac * 10 + (*p - '0');
    if (n == 0 || n > 9) return -1;
    for (; n < 3; n++) frac *= 10;
  }
  int off = 0; /* minutes east of UTC */
  if (*p == 'Z' || *p == 'z') {
    p++;
  } else if (*p == '+' || *p == '-') {
    int sign = *p++ == '-' ? -1 : 1;
    int oh = digits(&p, 2);
    if (oh < 0 || oh > 23 || *p++ != ':') return -1;
    int om = digits(&p, 2);
    if (om < 0 || om > 59) return -1;
    off = sign * (oh * 60 + om);
  } else {
    return -1; /* no zone: local time would depend on the host's TZ */
  }
  if (*p) return -1;
  int64_t t = days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + sec - (int64_t)off * 60;
  *ms = t * 1000 + frac;
  return 0;
}

void sg_sha256_hex(const char *data, size_t len, char out[65]) {
  unsigned char md[32];
  unsigned int mdlen = 0;
  EVP_Digest(data, len, md, &mdlen, EVP_sha256(), NULL);
  for (int i = 0; i < 32; i++) snprintf(out + 2 * i, 3, "%02x", md[i]);
}

void *sg_xmalloc(size_t n) {
  void *p = malloc(n ? n : 1);
  if (!p) { fputs("sagahost: out of memory\n", stderr); abort(); }
  return p;
}
void *sg_xcalloc(size_t n, size_t sz) {
  void *p = calloc(n ? n : 1, sz ? sz : 1);
  if (!p) { fputs("sagahost: out of memory\n", stderr); abort(); }
  return p;
}
void *sg_xrealloc(void *p, size_t n) {
  p = realloc(p, n ? n : 1);
  if (!p) { fputs("sagahost: out of memory\n", stderr); abort(); }
  return p;
}
char *sg_asprintf(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  char *p = sg_xmalloc((size_t)n + 1);
  va_start(ap, fmt);
  vsnprintf(p, (size_t)n + 1, fmt, ap);
  va_end(ap);
  return p;
}

char *sg_concat3(const char *a, const char *b, const char *c) {
  size_t na = strlen(a), nb = strlen(b), nc = strlen(c);
  char *p = sg_xmalloc(na + nb + nc + 1);
  memcpy(p, a, na);
  memcpy(p + na, b, nb);
  memcpy(p + na + nb, c, nc + 1);
  return p;
}

char *sg_fmt_i64(char *out, int64_t v) {
  char t[24], *p = t + sizeof t;
  uint64_t u = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
  do *--p = (char)('0' + u % 10); while (u /= 10);
  if (v < 0) *--p = '-';
  size_t n = (size_t)(t + sizeof t - p);
  memcpy(out, p, n);
  return out + n;
}

char *sg_strdup(const char *s) {
  if (!s) return NULL;
  size_t n = strlen(s) + 1;
  return memcpy(sg_xmalloc(n), s, n);
}

void sg_buf_init(struct sg_buf *b) { b->data = NULL; b->len = b->cap = 0; }

void sg_buf_reserve(struct sg_buf *b, size_t extra) {
  if (b->len + extra + 1 <= b->cap) return;
  size_t cap = b->cap ? b->cap : 64;
  while (cap < b->len + extra + 1) cap *= 2;
  b->data = sg_xrealloc(b->data, cap);
  b->cap = cap;
}
void sg_buf_add(struct sg_buf *b, const char *s, size_t n) {
  sg_buf_reserve(b, n);
  memcpy(b->data + b->len, s, n);
  b->len += n;
  b->data[b->len] = 0;
}
void sg_buf_adds(struct sg_buf *b, const char *s) { sg_buf_add(b, s, strlen(s)); }
void sg_buf_printf(struct sg_buf *b, const char *fmt, ...) {
  /* formatted once into the room there is (mostly enough), a second time only when it was not */
  sg_buf_reserve(b, 63);
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(b->data + b->len, b->cap - b->len, fmt, ap);
  va_end(ap);
  if (n < 0) { b->data[b->len] = 0; return; }
  if ((size_t)n >= b->cap - b->len) {
    sg_buf_reserve(b, (size_t)n);
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
  }
  b->len += (size_t)n;
}
void sg_buf_add_i64(struct sg_buf *b, int64_t v) {
  char t[24];
  sg_buf_add(b, t, (size_t)(sg_fmt_i64(t, v) - t));
}
void sg_buf_add_json_str(struct sg_buf *b, const char *s) {
  if (!s) { sg_buf_adds(b, "null"); return; }
  sg_buf_add(b, "\"", 1);
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    switch (*p) {
    case '"': sg_buf_add(b, "\\\"", 2); break;
    case '\\': sg_buf_add(b, "\\\\", 2); break;
    case '\n': sg_buf_add(b, "\\n", 2); break;
    case '\r': sg_buf_add(b, "\\r", 2); break;
    case '\t': sg_buf_add(b, "\\t", 2); break;
    default:
      if (*p < 0x20) sg_buf_printf(b, "\\u%04x", *p);
      else sg_buf_add(b, (const char *)p, 1);
    }
  }
  sg_buf_add(b, "\"", 1);
}
char *sg_buf_steal(struct sg_buf *b) {
  char *d = b->data ? b->data : sg_strdup("");
  sg_buf_init(b);
  return d;
}
void sg_buf_free(struct sg_buf *b) { free(b->data); sg_buf_init(b); }

char *sg_read_file(const char *path, size_t *len, struct sg_error *e) {
  FILE *f = fopen(path, "rb");
  if (!f) { sg_errorf(e, SG_E_NOTFOUND, "%s: %s", path, strerror(errno)); return NULL; }
  struct sg_buf b;
  sg_buf_init(&b);
  char chunk[8192];
  size_t n;
  while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) sg_buf_add(&b, chunk, n);
  int bad = ferror(f);
  fclose(f);
  if (bad) { sg_buf_free(&b); sg_errorf(e, SG_E_INTERNAL, "%s: read error", path); return NULL; }
  if (len) *len = b.len;
  return sg_buf_steal(&b);
}

int sg_dir_check(const char *dir, const char *what, struct sg_error *e) {
  const char *hint = "create it (it may be empty) or name the directory that holds your .lua files";
  struct stat st;
  if (stat(dir, &st) < 0)
    return sg_errorf(e, SG_E_INVALID, "%s %s: %s; %s", what, dir, strerror(errno), hint);
  if (!S_ISDIR(st.st_mode))
    return sg_errorf(e, SG_E_INVALID, "%s %s is not a directory; %s", what, dir, hint);
  /* listing needs read, opening the files in it needs search (x) */
  DIR *d = opendir(dir);
  if (!d || access(dir, R_OK | X_OK) < 0) {
    int err = errno;
    if (d) closedir(d);
    return sg_errorf(e, SG_E_INVALID, "%s %s cannot be read: %s; give this user read and search (r-x) "
                     "permission on it", what, dir, strerror(err));
  }
  closedir(d);
  return 0;
}

/* sg_rand_replay: 0 = the OS's randomness; else the state the process's seeds are drawn from */
static uint64_t replay_state, replay_gen;

static uint64_t splitmix(uint64_t *s) {
  uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

void sg_rand_replay(uint64_t seed) {
  replay_gen++;
  replay_state = seed ? seed : 0;
  if (!seed) return;
  uint64_t s = seed;
  for (int i = 0; i < 4; i++) rng_s[i] = splitmix(&s);
  rng_seeded = 1;
}

uint64_t sg_rand_generation(void) { return replay_gen; }

uint64_t sg_rand_os_seed(void) {
  if (replay_state) return splitmix(&replay_state);
  uint64_t seed;
  if (getrandom(&seed, sizeof seed, GRND_NONBLOCK) == (ssize_t)sizeof seed) return seed;
  /* no entropy yet (early boot) or no getrandom: still distinct per process and per start */
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 30) ^ ((uint64_t)getpid() << 48) ^ (uint64_t)sg_now_ms();
}

void sg_rand_seed(struct sg_rand *r, uint64_t seed) { r->s = seed; }

/* splitmix64 (Steele, Lea, Flood): every seed gives a full-period, well-mixed sequence */
uint64_t sg_rand_next(struct sg_rand *r) {
  uint64_t z = (r->s += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

int64_t sg_rand_jitter(struct sg_rand *r, int64_t delay) {
  if (delay <= 0) return delay;
  int64_t lo = delay / 2;
  uint64_t span = (uint64_t)(delay - lo) + 1; /* both ends included */
  return lo + (int64_t)(sg_rand_next(r) % span);
}

/* sg_intern's table: the strings themselves are its keys and values */
static struct sg_map intern_map;
static pthread_mutex_t intern_mu = PTHREAD_MUTEX_INITIALIZER;

const char *sg_intern(const char *s) {
  if (!s) return NULL;
  pthread_mutex_lock(&intern_mu);
  const char *v = sg_map_get(&intern_map, s);
  if (!v) {
    char *c = sg_strdup(s);
    sg_map_put(&intern_map, c, c);
    v = c;
  }
  pthread_mutex_unlock(&intern_mu);
  return v;
}
