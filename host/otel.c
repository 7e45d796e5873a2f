/* otel: spans as OTLP JSON, a bounded queue and an exporting worker thread (see otel.h). */
#include "otel.h"

#include <curl/curl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define DEFAULT_QUEUE 8192
#define BATCH 2048         /* spans per request at most */
#define FLUSH_MS 500       /* a partial batch waits at most this long */

struct sg_otel {
  char *url;               /* the traces endpoint */
  char *resource;          /* the resource part of every request, JSON, up to the spans */
  pthread_t worker;        /* sends batches */
  pthread_mutex_t mu;      /* guards everything below */
  pthread_cond_t cv;       /* signalled when a batch is full or at stop */
  struct sg_span *q;       /* ring of spans; the worker formats the first `taken` in place */
  int cap, head, n;        /* ring size, first, count (taken ones included: not overwritten) */
  int stop;                /* sg_otel_free: send what is left and end */
  int64_t queued, exported, dropped;
};

static const char hexd[] = "0123456789abcdef";

static void hex(struct sg_buf *b, const uint8_t *p, size_t n) {
  char s[33];
  for (size_t i = 0; i < n; i++) { s[2 * i] = hexd[p[i] >> 4]; s[2 * i + 1] = hexd[p[i] & 15]; }
  sg_buf_add(b, s, 2 * n);
}

static int unhex(const char *s, uint8_t *out, size_t n) {
  for (size_t i = 0; i < 2 * n; i++) {
    char c = s[i];
    int v = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
    if (v < 0) return -1;
    if (i % 2) out[i / 2] = (uint8_t)(out[i / 2] | v);
    else out[i / 2] = (uint8_t)(v << 4);
  }
  return 0;
}

static int zero(const uint8_t *p, size_t n) {
  for (size_t i = 0; i < n; i++) if (p[i]) return 0;
  return 1;
}

/* ---- ids ---- */

static uint64_t fnv(uint64_t h, const void *p, size_t n) {
  const uint8_t *s = p;
  for (size_t i = 0; i < n; i++) { h ^= s[i]; h *= 0x100000001b3ULL; }
  return h;
}

static uint64_t mix(uint64_t z) { /* splitmix64's finaliser: spreads fnv's bits */
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

static void put64(uint8_t out[8], uint64_t v) {
  for (int i = 0; i < 8; i++) out[i] = (uint8_t)(v >> (56 - 8 * i));
  if (zero(out, 8)) out[7] = 1; /* an all-zero id is invalid */
}

void sg_otel_derive(const uint8_t span[8], const char *label, uint8_t out[8]) {
  uint64_t h = fnv(0xcbf29ce484222325ULL, span, 8);
  put64(out, mix(fnv(h, label, strlen(label))));
}

static void random_bytes(uint8_t *out, size_t n) {
  while (n) { /* sg_uuid's PRNG; its version nibbles are mixed away */
    char u[37];
    sg_uuid(u);
    uint64_t v = mix(fnv(0xcbf29ce484222325ULL, u, 36));
    for (int i = 0; i < 8 && n; i++, n--) *out++ = (uint8_t)(v >> (8 * i));
  }
}

void sg_otel_random_span(uint8_t out[8]) {
  do random_bytes(out, 8); while (zero(out, 8));
}

void sg_otel_traceparent(const uint8_t trace[16], const uint8_t span[8], char out[56]) {
  struct sg_buf b;
  sg_buf_init(&b);
  sg_buf_adds(&b, "00-");
  hex(&b, trace, 16);
  sg_buf_adds(&b, "-");
  hex(&b, span, 8);
  sg_buf_adds(&b, "-01");
  snprintf(out, 56, "%s", b.data);
  sg_buf_free(&b);
}

int sg_otel_parse_traceparent(const char *tp, uint8_t trace[16], uint8_t span[8]) {
  /* version-format: 2 hex, '-', 32 hex, '-', 16 hex, '-', 2 hex; a later version may append "-..." */
  if (!tp || strlen(tp) < 55 || tp[2] != '-' || tp[35] != '-' || tp[52] != '-') return -1;
  if (tp[55] && tp[55] != '-') return -1;
  uint8_t ver;
  if (unhex(tp, &ver, 1) < 0 || ver == 0xff || (ver == 0 && tp[55])) return -1;
  uint8_t fl;
  if (unhex(tp + 3, trace, 16) < 0 || unhex(tp + 36, span, 8) < 0 || unhex(tp + 53, &fl, 1) < 0) return -1;
  return zero(trace, 16) || zero(span, 8) ? -1 : 0;
}

char *sg_otel_saga_trace_new(const char *traceparent, const char *tracestate) {
  uint8_t trace[16], parent[8], span[8];
  int child = sg_otel_parse_traceparent(traceparent, trace, parent) == 0;
  if (!child) do random_bytes(trace, 16); while (zero(trace, 16));
  sg_otel_random_span(span);
  struct sg_buf b;
  sg_buf_init(&b);
  hex(&b, trace, 16);
  sg_buf_adds(&b, "-");
  hex(&b, span, 8);
  if (child) { sg_buf_adds(&b, "-"); hex(&b, parent, 8); }
  if (child && tracestate && *tracestate && strlen(tracestate) <= 512 && !strpbrk(tracestate, "\r\n")) {
    sg_buf_adds(&b, " ");
    sg_buf_adds(&b, tracestate);
  }
  return sg_buf_steal(&b);
}

char *sg_otel_trace_text(const struct sg_tctx *c) {
  struct sg_buf b;
  sg_buf_init(&b);
  hex(&b, c->trace, 16);
  sg_buf_adds(&b, "-");
  hex(&b, c->span, 8);
  if (!zero(c->parent, 8)) {
    sg_buf_adds(&b, "-");
    hex(&b, c->parent, 8);
    if (c->since_ms > 0) sg_buf_printf(&b, "@%" PRId64, c->since_ms);
  }
  if (c->state) { sg_buf_adds(&b, " "); sg_buf_adds(&b, c->state); }
  return sg_buf_steal(&b);
}

void sg_otel_saga_ctx(const char *trace, const char *saga_id, struct sg_tctx *c) {
  memset(c, 0, sizeof *c);
  size_t n = trace ? strlen(trace) : 0;
  if (n >= 49 && trace[32] == '-' && unhex(trace, c->trace, 16) == 0 && unhex(trace + 33, c->span, 8) == 0) {
    if (n >= 66 && trace[49] == '-' && unhex(trace + 50, c->parent, 8) == 0) {
      n = 66;
      if (trace[n] == '@') {
        char *end;
        c->since_ms = strtoll(trace + n + 1, &end, 10);
        n = (size_t)(end - trace);
      }
    } else { memset(c->parent, 0, 8); n = 49; }
    if (trace[n] == ' ' && trace[n + 1]) c->state = trace + n + 1;
    return;
  }
  const char *id = saga_id ? saga_id : "";
  uint64_t h = fnv(0xcbf29ce484222325ULL, id, strlen(id));
  put64(c->trace, mix(h));
  put64(c->trace + 8, mix(h ^ 0x5a5a5a5a5a5a5a5aULL));
  put64(c->span, mix(h + 1));
}

/* ---- spans ---- */

/* s into the pool: its offset, or -1 when the pool is full (what fits is kept) */
static int16_t pool_add(struct sg_span *sp, const char *s) {
  size_t room = SG_SPAN_POOL - sp->used;
  if (room < 2) return -1;
  size_t n = strlen(s);
  if (n > room - 1) n = room - 1;
  int16_t off = (int16_t)sp->used;
  memcpy(sp->pool + off, s, n);
  sp->pool[off + n] = 0;
  sp->used = (uint16_t)(sp->used + n + 1);
  return off;
}

void sg_span_begin(struct sg_span *sp, const struct sg_tctx *c, const char *name, int kind, int64_t start_us,
                   int64_t end_us) {
  if (end_us < start_us) end_us = start_us;
  memcpy(sp->trace, c->trace, 16);
  memcpy(sp->span, c->span, 8);
  memcpy(sp->parent, c->parent, 8);
  sp->used = 0;
  sp->nattr = 0;
  sp->kind = (uint8_t)kind;
  sp->error = 0;
  sp->msg = -1;
  sp->start_us = start_us;
  sp->end_us = end_us;
  sp->name = pool_add(sp, name);
  sp->state = c->state ? pool_add(sp, c->state) : -1;
}

void sg_span_str(struct sg_span *sp, const char *key, const char *val) {
  if (!val || sp->nattr == SG_SPAN_ATTRS) return;
  int16_t off = pool_add(sp, val);
  if (off < 0) return;
  sp->attr[sp->nattr++] = (struct sg_span_attr){ .key = key, .off = off };
}

void sg_span_int(struct sg_span *sp, const char *key, int64_t val) {
  if (sp->nattr == SG_SPAN_ATTRS) return;
  sp->attr[sp->nattr++] = (struct sg_span_attr){ .key = key, .ival = val, .off = -1 };
}

void sg_span_end(struct sg_otel *o, struct sg_span *sp, int error, const char *msg) {
  sp->error = (uint8_t)(error != 0);
  if (error && msg) sp->msg = pool_add(sp, msg);
  /* only what is used: the header and the used part of the pool */
  size_t n = offsetof(struct sg_span, pool) + sp->used;
  pthread_mutex_lock(&o->mu);
  if (o->n == o->cap) {
    o->dropped++;
    pthread_mutex_unlock(&o->mu);
    return;
  }
  memcpy(&o->q[(o->head + o->n) % o->cap], sp, n);
  o->n++;
  o->queued++;
  if (o->n == BATCH) pthread_cond_signal(&o->cv);
  pthread_mutex_unlock(&o->mu);
}

/* one span as OTLP JSON (in the worker) */
static void span_json(struct sg_buf *b, const struct sg_span *sp) {
  sg_buf_adds(b, "{\"traceId\":\"");
  hex(b, sp->trace, 16);
  sg_buf_adds(b, "\",\"spanId\":\"");
  hex(b, sp->span, 8);
  if (!zero(sp->parent, 8)) {
    sg_buf_adds(b, "\",\"parentSpanId\":\"");
    hex(b, sp->parent, 8);
  }
  sg_buf_adds(b, "\"");
  if (sp->state >= 0) { sg_buf_adds(b, ",\"traceState\":"); sg_buf_add_json_str(b, sp->pool + sp->state); }
  sg_buf_adds(b, ",\"name\":");
  sg_buf_add_json_str(b, sp->name >= 0 ? sp->pool + sp->name : "?");
  sg_buf_printf(b, ",\"kind\":%d,\"startTimeUnixNano\":\"%" PRId64 "000\",\"endTimeUnixNano\":\"%" PRId64
                "000\",\"attributes\":[", sp->kind, sp->start_us, sp->end_us);
  for (int i = 0; i < sp->nattr; i++) {
    const struct sg_span_attr *a = &sp->attr[i];
    if (i) sg_buf_adds(b, ",");
    sg_buf_adds(b, "{\"key\":");
    sg_buf_add_json_str(b, a->key);
    if (a->off < 0) {
      sg_buf_printf(b, ",\"value\":{\"intValue\":\"%" PRId64 "\"}}", a->ival);
    } else {
      sg_buf_adds(b, ",\"value\":{\"stringValue\":");
      sg_buf_add_json_str(b, sp->pool + a->off);
      sg_buf_adds(b, "}}");
    }
  }
  sg_buf_adds(b, "],\"status\":{");
  if (sp->error) {
    sg_buf_adds(b, "\"code\":2");
    if (sp->msg >= 0) { sg_buf_adds(b, ",\"message\":"); sg_buf_add_json_str(b, sp->pool + sp->msg); }
  } else {
    sg_buf_adds(b, "\"code\":0");
  }
  sg_buf_adds(b, "}}");
}

/* ---- export ---- */

static size_t discard(void *p, size_t sz, size_t n, void *ud) {
  (void)p; (void)ud;
  return sz * n;
}

/* formats the n spans from the ring's head (the producer does not touch them: they still count in o->n) */
static void batch_json(struct sg_otel *o, struct sg_buf *b, int head, int n) {
  sg_buf_adds(b, o->resource);
  for (int i = 0; i < n; i++) {
    if (i) sg_buf_adds(b, ",");
    span_json(b, &o->q[(head + i) % o->cap]);
  }
  sg_buf_adds(b, "]}]}]}");
}

/* POSTs one batch's JSON; 0 when the collector took it */
static int post(struct sg_otel *o, CURL *c, struct sg_buf *bb, int n) {
  struct sg_buf b = *bb;
  struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
  curl_easy_setopt(c, CURLOPT_URL, o->url);
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
  curl_easy_setopt(c, CURLOPT_POSTFIELDS, b.data);
  curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)b.len);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, discard);
  curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 5000L);
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, 2000L);
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  CURLcode rc = curl_easy_perform(c);
  long status = 0;
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
  curl_slist_free_all(h);
  if (rc != CURLE_OK || status < 200 || status >= 300) {
    sg_debug("otlp: %d span(s) to %s not delivered: %s", n, o->url,
             rc != CURLE_OK ? curl_easy_strerror(rc) : "the collector refused them");
    return -1;
  }
  return 0;
}

static void *worker(void *ud) {
  struct sg_otel *o = ud;
  CURL *c = curl_easy_init();
  struct sg_buf b;
  sg_buf_init(&b);
  pthread_mutex_lock(&o->mu);
  for (;;) {
    if (!o->stop && o->n < BATCH) {
      struct timespec ts;
      clock_gettime(CLOCK_REALTIME, &ts);
      ts.tv_nsec += FLUSH_MS * 1000000L;
      if (ts.tv_nsec >= 1000000000L) { ts.tv_sec++; ts.tv_nsec -= 1000000000L; }
      pthread_cond_timedwait(&o->cv, &o->mu, &ts);
    }
    if (!o->n) {
      if (o->stop) break;
      continue;
    }
    int n = o->n < BATCH ? o->n : BATCH, head = o->head;
    pthread_mutex_unlock(&o->mu);
    b.len = 0;
    batch_json(o, &b, head, n);
    pthread_mutex_lock(&o->mu);
    o->head = (o->head + n) % o->cap; /* formatted: their slots are free again */
    o->n -= n;
    pthread_mutex_unlock(&o->mu);
    int ok = c && post(o, c, &b, n) == 0;
    pthread_mutex_lock(&o->mu);
    if (ok) o->exported += n;
    else o->dropped += n;
  }
  sg_buf_free(&b);
  pthread_mutex_unlock(&o->mu);
  if (c) curl_easy_cleanup(c);
  return NULL;
}

struct sg_otel *sg_otel_new(const char *url, const char *service, const char *host_id, int queue, struct sg_error *e) {
  curl_global_init(CURL_GLOBAL_DEFAULT);
  struct sg_otel *o = sg_xcalloc(1, sizeof *o);
  o->url = sg_strdup(url);
  o->cap = queue > 0 ? queue : DEFAULT_QUEUE;
  o->q = sg_xcalloc((size_t)o->cap, sizeof *o->q);
  struct sg_buf b;
  sg_buf_init(&b);
  sg_buf_adds(&b, "{\"resourceSpans\":[{\"resource\":{\"attributes\":[{\"key\":\"service.name\",\"value\":{\"stringValue\":");
  sg_buf_add_json_str(&b, service);
  sg_buf_adds(&b, "}},{\"key\":\"service.instance.id\",\"value\":{\"stringValue\":");
  sg_buf_add_json_str(&b, host_id ? host_id : "");
  sg_buf_adds(&b, "}}]},\"scopeSpans\":[{\"scope\":{\"name\":\"sagahost\",\"version\":");
  sg_buf_add_json_str(&b, SG_VERSION);
  sg_buf_adds(&b, "},\"spans\":[");
  o->resource = sg_buf_steal(&b);
  pthread_mutex_init(&o->mu, NULL);
  pthread_cond_init(&o->cv, NULL);
  if (pthread_create(&o->worker, NULL, worker, o) != 0) {
    sg_errorf(e, SG_E_INTERNAL, "cannot start the OTLP exporter's thread");
    pthread_mutex_destroy(&o->mu);
    pthread_cond_destroy(&o->cv);
    free(o->q); free(o->url); free(o->resource); free(o);
    return NULL;
  }
  return o;
}

void sg_otel_free(struct sg_otel *o) {
  if (!o) return;
  pthread_mutex_lock(&o->mu);
  o->stop = 1;
  pthread_cond_signal(&o->cv);
  pthread_mutex_unlock(&o->mu);
  pthread_join(o->worker, NULL);
  pthread_mutex_destroy(&o->mu);
  pthread_cond_destroy(&o->cv);
  free(o->q); free(o->url); free(o->resource); free(o);
}

void sg_otel_stats(struct sg_otel *o, struct sg_otel_stats *st) {
  pthread_mutex_lock(&o->mu);
  st->queued = o->queued;
  st->exported = o->exported;
  st->dropped = o->dropped;
  st->queue = o->n;
  pthread_mutex_unlock(&o->mu);
}
