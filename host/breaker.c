/* breaker: a circuit breaker per participant service. After too many failed calls (timeouts and
 * retryable error replies) in a window the breaker opens; sagas that would call the service park
 * (no attempt is spent) until a half-open probe succeeds. */
#include <inttypes.h>
#include <stdio.h>

#include "engine_int.h"

static const char *br_names[] = {"closed", "open", "half_open"};

struct breaker *eng_breaker_get(struct sg_engine *en, const char *service) {
  struct breaker *b = sg_map_get(&en->breakers, service);
  if (!b) {
    b = sg_xcalloc(1, sizeof *b);
    b->service = sg_strdup(service);
    b->window_start = sg_now_ms();
    b->cfg.failure_rate = en->cfg.breaker_failure_rate;
    b->cfg.min_calls = en->cfg.breaker_min_calls;
    b->cfg.window_ms = en->cfg.breaker_window_ms;
    b->cfg.open_ms = en->cfg.breaker_open_ms;
    sg_map_put(&en->breakers, b->service, b);
  }
  return b;
}

/* May a call to this service go out now? A half-open breaker lets a single probe through. */
int eng_breaker_admit(struct breaker *b) {
  if (b->state == BR_CLOSED || b->cfg.failure_rate <= 0) return 1;
  if (b->state == BR_HALF_OPEN && !b->probing) { b->probing = 1; return 1; }
  return 0;
}

static void release_parked(struct sg_engine *en, struct breaker *b, size_t max);

static void breaker_open(struct sg_engine *en, struct breaker *b, const char *why) {
  b->state = BR_OPEN;
  b->opened_at = sg_now_ms();
  b->opens++;
  b->probing = 0;
  sg_warn("circuit breaker of service %s opened (%s); calls to it wait %" PRId64 " ms before a probe", b->service, why,
          b->cfg.open_ms);
}

/* Counts the outcome of a call (failed = timeout or retryable error reply). */
void eng_breaker_record(struct sg_engine *en, const char *service, int failed) {
  if (!service) return;
  struct breaker *b = eng_breaker_get(en, service);
  if (b->cfg.failure_rate <= 0) return;
  int64_t now = sg_now_ms();
  if (b->state == BR_HALF_OPEN) {
    if (!b->probing) return;
    if (failed) { breaker_open(en, b, "the probe failed"); return; }
    b->state = BR_CLOSED;
    b->probing = 0;
    b->calls = b->failures = 0;
    b->window_start = now;
    sg_info("circuit breaker of service %s closed: the probe succeeded; %zu parked saga(s) resume", b->service, b->nparked);
    release_parked(en, b, SIZE_MAX);
    return;
  }
  if (b->state == BR_OPEN) return; /* late outcomes of calls sent before it opened */
  if (now - b->window_start > b->cfg.window_ms) {
    b->calls = b->failures = 0;
    b->window_start = now;
  }
  b->calls++;
  if (failed) b->failures++;
  if (b->calls >= b->cfg.min_calls && (double)b->failures >= b->cfg.failure_rate * b->calls) {
    char why[96];
    snprintf(why, sizeof why, "%d of the last %d calls failed", b->failures, b->calls);
    breaker_open(en, b, why);
  }
}

void eng_unpark(struct sg_engine *en, struct sg_saga *s) {
  if (s->parked_op.op == SG_OP_NONE) return;
  struct breaker *b = sg_map_get(&en->breakers, s->parked_op.service);
  if (b) {
    for (size_t i = 0; i < b->nparked; i++)
      if (b->parked[i] == s) { memmove(&b->parked[i], &b->parked[i + 1], (b->nparked - i - 1) * sizeof *b->parked); b->nparked--; break; }
  }
  sg_run_out_clear(&s->parked_op);
}

/* Every parked saga is forgotten (they were dropped: this host was fenced). */
void eng_breakers_unpark_all(struct sg_engine *en) {
  for (size_t i = 0; i < en->breakers.cap; i++) {
    if (!sg_map_live(&en->breakers, i)) continue;
    struct breaker *b = en->breakers.slots[i].val;
    b->nparked = 0;
    b->probing = 0;
  }
}

/* Lets up to max parked sagas issue their call (the first one as the half-open probe). */
static void release_parked(struct sg_engine *en, struct breaker *b, size_t max) {
  size_t n = b->nparked < max ? b->nparked : max;
  struct sg_saga **list = sg_xmalloc((n ? n : 1) * sizeof *list);
  memcpy(list, b->parked, n * sizeof *list);
  memmove(b->parked, b->parked + n, (b->nparked - n) * sizeof *b->parked);
  b->nparked -= n;
  for (size_t i = 0; i < n; i++) {
    struct sg_saga *s = list[i];
    struct sg_run_out op = s->parked_op;
    memset(&s->parked_op, 0, sizeof s->parked_op);
    s->wait_seq = 0;
    s->seq--; /* eng_process() issues the same operation again under the same seq */
    s->admitted = 1;
    const struct sg_def_step *ds = &s->def->steps[s->row.step];
    if (ds->timeout_ms > 0 && !s->t_step) s->t_step = eng_timer_new(en, s, TM_STEP_TIMEOUT, sg_now_ms() + ds->timeout_ms, s->row.attempt);
    eng_process(en, s, &op);
  }
  free(list);
}

/* A call that an open breaker holds back: the saga waits without spending an attempt. */
void eng_park(struct sg_engine *en, struct sg_saga *s, struct sg_run_out *out, int seq) {
  struct breaker *b = eng_breaker_get(en, out->service);
  s->parked_op = *out;
  memset(out, 0, sizeof *out);
  s->wait_seq = seq;
  eng_timer_cancel(en, &s->t_step); /* time parked is not the step's time */
  PUSH(b->parked, b->nparked, b->capparked, s);
  sg_debug("saga %s parked: breaker of %s is %s", s->row.id, b->service, br_names[b->state]);
}

void sg_engine_breakers_each(struct sg_engine *en, sg_breaker_cb cb, void *ud) {
  for (size_t i = 0; i < en->breakers.cap; i++) {
    if (!sg_map_live(&en->breakers, i)) continue;
    struct breaker *br = en->breakers.slots[i].val;
    cb(ud, br->service, br_names[br->state], br->nparked);
  }
}

char *sg_engine_breakers_json(struct sg_engine *en) {
  struct sg_buf b;
  sg_buf_init(&b);
  sg_buf_adds(&b, "{\"breakers\":[");
  int first = 1;
  for (size_t i = 0; i < en->breakers.cap; i++) {
    if (!sg_map_live(&en->breakers, i)) continue;
    struct breaker *br = en->breakers.slots[i].val;
    sg_buf_adds(&b, first ? "{" : ",{");
    first = 0;
    sg_buf_adds(&b, "\"service\":");
    sg_buf_add_json_str(&b, br->service);
    sg_buf_printf(&b, ",\"state\":\"%s\",\"calls\":%d,\"failures\":%d,\"parked\":%zu,\"opens\":%" PRId64
                  ",\"failure_rate\":%g,\"min_calls\":%d,\"window_ms\":%" PRId64 ",\"open_ms\":%" PRId64,
                  br_names[br->state], br->calls, br->failures, br->nparked, br->opens, br->cfg.failure_rate,
                  br->cfg.min_calls, br->cfg.window_ms, br->cfg.open_ms);
    if (br->opened_at) {
      char ts[32];
      sg_iso8601(br->opened_at, ts);
      sg_buf_adds(&b, ",\"opened_at\":");
      sg_buf_add_json_str(&b, ts);
    }
    sg_buf_adds(&b, "}");
  }
  sg_buf_printf(&b, "],\"failure_rate\":%g,\"min_calls\":%d,\"window_ms\":%" PRId64 ",\"open_ms\":%" PRId64 "}",
                en->cfg.breaker_failure_rate, en->cfg.breaker_min_calls, en->cfg.breaker_window_ms, en->cfg.breaker_open_ms);
  return sg_buf_steal(&b);
}


/* Open breakers whose wait is over go half-open and let one parked saga through as the probe. */
void eng_breakers_tick(struct sg_engine *en, int64_t now) {
  for (size_t i = 0; i < en->breakers.cap; i++) {
    if (!sg_map_live(&en->breakers, i)) continue;
    struct breaker *b = en->breakers.slots[i].val;
    if (b->state == BR_OPEN && now - b->opened_at >= b->cfg.open_ms) {
      b->state = BR_HALF_OPEN;
      b->probing = 0;
      sg_info("circuit breaker of service %s half-open: probing", b->service);
      if (b->nparked) { b->probing = 1; release_parked(en, b, 1); }
    }
  }
}

void eng_breakers_free(struct sg_engine *en) {
  for (size_t i = 0; i < en->breakers.cap; i++) {
    if (!sg_map_live(&en->breakers, i)) continue;
    struct breaker *b = en->breakers.slots[i].val;
    free(b->parked);
    free(b->service);
    free(b);
  }
  sg_map_free(&en->breakers);
}

void sg_engine_breaker_config(struct sg_engine *en, const char *service, const struct sg_breaker_config *c) {
  struct breaker *b = eng_breaker_get(en, service);
  /* unset fields (negative rate, zero counts and durations) keep the host's settings */
  b->cfg.failure_rate = c->failure_rate >= 0 ? c->failure_rate : en->cfg.breaker_failure_rate;
  b->cfg.min_calls = c->min_calls > 0 ? c->min_calls : en->cfg.breaker_min_calls;
  b->cfg.window_ms = c->window_ms > 0 ? c->window_ms : en->cfg.breaker_window_ms;
  b->cfg.open_ms = c->open_ms > 0 ? c->open_ms : en->cfg.breaker_open_ms;
  if (c->failure_rate <= 0 && b->state != BR_CLOSED) {
    b->state = BR_CLOSED; /* breaker turned off: whoever waits goes now */
    b->probing = 0;
    release_parked(en, b, SIZE_MAX);
  }
}
