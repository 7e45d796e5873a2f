/* util: small helpers shared by every module.
 * Owns nothing global except the log level. Strings returned by sg_strdup/sg_buf are malloc'd and
 * freed by the caller with free(). */
#ifndef SG_UTIL_H
#define SG_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdarg.h>

/* An expected failure: functions return -1 and fill one of these. */
struct sg_error {
  char msg[512]; /* what went wrong and where, ready to show a user */
  int code;      /* SG_E_* class, lets the HTTP layer pick a status */
};

enum {
  SG_E_NONE = 0,
  SG_E_INVALID,   /* bad input from the caller (400) */
  SG_E_NOTFOUND,  /* unknown id/type (404) */
  SG_E_CONFLICT,  /* state does not allow it (409) */
  SG_E_TOOBIG,    /* payload over a limit (413/400) */
  SG_E_INTERNAL,  /* store or system failure (500) */
  SG_E_UNAVAILABLE, /* the store cannot write for now (disk full, I/O error): retry later (503) */
  SG_E_FENCED,    /* this host's claim on its sagas was taken over (its lease ran out): drop them (503) */
  SG_E_ELSEWHERE, /* the saga is owned by another host (several hosts on one database) */
};

int sg_errorf(struct sg_error *e, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4))); /* always returns -1 */

enum { SG_LOG_DEBUG, SG_LOG_INFO, SG_LOG_WARN, SG_LOG_ERROR };
extern int sg_log_level;
int sg_log_parse_level(const char *s); /* -1 if unknown */
void sg_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define sg_debug(...) do { if (sg_log_level <= SG_LOG_DEBUG) sg_log(SG_LOG_DEBUG, __VA_ARGS__); } while (0)
#define sg_info(...) sg_log(SG_LOG_INFO, __VA_ARGS__)
#define sg_warn(...) sg_log(SG_LOG_WARN, __VA_ARGS__)
#define sg_err(...) sg_log(SG_LOG_ERROR, __VA_ARGS__)

int64_t sg_now_ms(void);          /* wall clock, ms since the epoch (what is persisted); the virtual
                                   * clock instead while one is set */
/* The testing kit's virtual clock: from now on sg_now_ms() returns ms (and only moves when this is
 * called again); 0 = back to the wall clock. Every time the engine keeps (timers, deadlines, backoff,
 * ctx:now, schedules, breakers) comes from sg_now_ms, so the virtual clock drives all of it. */
void sg_clock_set_virtual(int64_t ms); /* 0 = back to the wall clock */
int64_t sg_clock_virtual(void);   /* the virtual time, 0 while the wall clock is in use */
int64_t sg_mono_ns(void);         /* monotonic clock, ns (durations; async-signal-safe) */
void sg_iso8601(int64_t ms, char out[32]); /* "2026-11-26T09:20:00.123Z" */
void sg_uuid(char out[37]);       /* time-ordered v7 uuid (ms time + random from a /dev/urandom-seeded PRNG) */
/* the ms time an id made by sg_uuid starts with, or -1 when s is not such an id (36 characters,
 * lowercase hex in groups 8-4-4-4-12) */
int64_t sg_uuid_time_ms(const char *s);
/* "2026-11-30T12:00:00Z", with an optional fraction (".123", up to 9 digits: cut to ms) and "Z" or an
 * offset ("+02:00"), or an integer of ms since the epoch: 0 and *ms, or -1 */
int sg_time_parse(const char *s, int64_t *ms);
void sg_sha256_hex(const char *data, size_t len, char out[65]);

char *sg_asprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2))); /* malloc'd */
char *sg_strdup(const char *s);   /* NULL-safe, aborts on OOM */
char *sg_concat3(const char *a, const char *b, const char *c); /* a b c joined, malloc'd (no printf) */
/* v in decimal at out (at least 21 bytes); returns the end (not NUL-terminated) */
char *sg_fmt_i64(char *out, int64_t v);
void *sg_xmalloc(size_t n);       /* aborts on OOM: allocation failure is not recoverable here */
void *sg_xcalloc(size_t n, size_t sz);
void *sg_xrealloc(void *p, size_t n);

/* Growable byte buffer; data is always NUL-terminated. */
struct sg_buf {
  char *data; /* owned */
  size_t len; /* bytes used, excluding the NUL */
  size_t cap; /* bytes allocated */
};
void sg_buf_init(struct sg_buf *b);
void sg_buf_add(struct sg_buf *b, const char *s, size_t n);
/* room for extra more bytes and the NUL after them (data may move): for writing at data + len */
void sg_buf_reserve(struct sg_buf *b, size_t extra);
void sg_buf_adds(struct sg_buf *b, const char *s);
void sg_buf_printf(struct sg_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void sg_buf_add_i64(struct sg_buf *b, int64_t v); /* v in decimal */
/* One shared copy of s (NULL for NULL), kept until the process ends: for the few distinct strings that
 * many objects carry (saga types, definition hashes). Thread-safe. */
const char *sg_intern(const char *s);
void sg_buf_add_json_str(struct sg_buf *b, const char *s); /* adds "s" with JSON escaping; NULL -> null */
char *sg_buf_steal(struct sg_buf *b); /* returns data, leaves b empty */
void sg_buf_free(struct sg_buf *b);

char *sg_read_file(const char *path, size_t *len, struct sg_error *e);

/* 0 when dir is a directory this process can list and read files in; else -1 and e (SG_E_INVALID)
 * says which directory (what, e.g. "script directory") and why. */
int sg_dir_check(const char *dir, const char *what, struct sg_error *e);

/* A small seeded generator (splitmix64) for choices that must differ between processes, such as
 * retry jitter: not for secrets. The state is the caller's, so tests can seed it. */
struct sg_rand {
  uint64_t s; /* the whole state: advanced by a constant every draw */
};
/* The testing kit: from now on the process's random choices (the uuids of sg_uuid, the seeds
 * sg_rand_os_seed gives, so retry jitter) come from seed, so a run with the same seed repeats; 0 = back
 * to the OS's randomness. Each call starts a new generation (sg_rand_generation): who keeps a
 * generator seeded from sg_rand_os_seed seeds it again when the generation changed. */
void sg_rand_replay(uint64_t seed);
uint64_t sg_rand_generation(void);
uint64_t sg_rand_os_seed(void);                      /* getrandom(), else clock ^ pid: differs per process */
void sg_rand_seed(struct sg_rand *r, uint64_t seed);
uint64_t sg_rand_next(struct sg_rand *r);
/* uniform in [delay/2, delay] (delay <= 0 gives delay) */
int64_t sg_rand_jitter(struct sg_rand *r, int64_t delay);

#endif
