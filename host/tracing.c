/* tracing: the engine's spans (docs/operations.md, "Tracing"), formatted by otel.c.
 *
 * Sagas and step attempts come from the lifecycle events (an observer: only what committed is
 * traced); calls, sends, publishes and handled commands from hooks in the engine (eng_trace_*), which
 * run only when the engine has an exporter (sg_engine_set_otel): with tracing off nothing here runs.
 * Every id except a server span's is derived from the saga's stored context, so a restart continues
 * the same trace and a command sent again carries the same traceparent. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine_int.h"
#include "otel.h"

/* the messaging.system of the engine's transport */
static const char *msg_system(struct sg_engine *en) {
  if (en->tr && !strcmp(en->tr->ops->name, "amqp")) return "rabbitmq";
  if (en->tr && !strcmp(en->tr->ops->name, "kafka")) return "kafka";
  if (en->tr && !strcmp(en->tr->ops->name, "amqp1")) return "amqp1";
  return "sagahost";
}

/* the context of an attempt's span: a child of the saga's */
static void attempt_ctx(const struct sg_tctx *saga, int step, int phase, int attempt, struct sg_tctx *c) {
  char label[64];
  snprintf(label, sizeof label, "attempt/%d/%d/%d", step, phase, attempt);
  *c = *saga;
  memcpy(c->parent, saga->span, 8);
  sg_otel_derive(saga->span, label, c->span);
}

/* the context of a call's (send's, publish's) span: a child of its attempt's, id from its message id */
static void message_ctx(const struct sg_tctx *saga, const char *message_id, int step, int phase, int attempt,
                        struct sg_tctx *c) {
  attempt_ctx(saga, step, phase, attempt, c);
  memcpy(c->parent, c->span, 8);
  char label[160];
  snprintf(label, sizeof label, "message/%s", message_id);
  sg_otel_derive(saga->span, label, c->span);
}

static void saga_attrs(struct sg_span *sp, const char *id, const char *type) {
  sg_span_str(sp, "saga.id", id);
  sg_span_str(sp, "saga.type", type);
}

static void msg_attrs(struct sg_engine *en, struct sg_span *sp, const struct sg_msg *m, const char *operation) {
  sg_span_str(sp, "messaging.system", msg_system(en));
  sg_span_str(sp, "messaging.operation", operation);
  sg_span_str(sp, "messaging.operation.type", operation);
  char what[300];
  sg_msg_what(m, what, sizeof what);
  /* the logical destination (RabbitMQ's exchange): commands and replies, or events */
  sg_span_str(sp, "messaging.destination.name", m->kind == SG_MSG_EVENT ? "saga.events" : "saga.commands");
  sg_span_str(sp, "messaging.rabbitmq.destination.routing_key", what);
  sg_span_str(sp, "messaging.message.id", m->message_id);
  if (m->correlation_id) sg_span_str(sp, "messaging.message.conversation_id", m->correlation_id);
  if (m->body) sg_span_int(sp, "messaging.message.body.size", (int64_t)strlen(m->body));
}

/* ---- the engine's hooks ---- */

void eng_trace_outgoing(struct sg_engine *en, const struct sg_saga *s, struct sg_msg *m, int is_call) {
  struct sg_tctx saga, c;
  sg_otel_saga_ctx(s->row.trace, s->row.id, &saga);
  message_ctx(&saga, m->message_id, s->row.step, s->row.phase, s->row.attempt, &c);
  char tp[56];
  sg_otel_traceparent(c.trace, c.span, tp);
  sg_msg_set_header(m, SG_HDR_TRACEPARENT, tp);
  sg_msg_set_header(m, SG_HDR_TRACESTATE, c.state);
  if (is_call) return; /* its span ends with its reply (eng_trace_reply) */
  /* a send or publish: a producer span, ended once it is handed over */
  int64_t now = sg_now_ms() * 1000;
  struct sg_span sp;
  int publish = m->kind == SG_MSG_EVENT;
  char name[300], what[300];
  snprintf(name, sizeof name, "%s %s", publish ? "publish" : "send", sg_msg_what(m, what, sizeof what));
  sg_span_begin(&sp, &c, name, SG_SPAN_PRODUCER, now, now);
  msg_attrs(en, &sp, m, publish ? "publish" : "send");
  saga_attrs(&sp, s->row.id, s->row.type);
  sg_span_end(en->otel, &sp, 0, NULL);
}

void eng_trace_republish(struct sg_engine *en, const struct sg_msg *m, struct sg_msg *copy) {
  struct sg_saga *s = m->saga_id ? sg_map_get(&en->sagas, m->saga_id) : NULL;
  sg_msg_copy(copy, m);
  if (!s || !m->reply_to) return;
  struct sg_tctx saga, c;
  sg_otel_saga_ctx(s->row.trace, s->row.id, &saga);
  message_ctx(&saga, m->message_id, m->step, s->row.phase, m->attempt, &c);
  char tp[56];
  sg_otel_traceparent(c.trace, c.span, tp);
  sg_msg_set_header(copy, SG_HDR_TRACEPARENT, tp);
  sg_msg_set_header(copy, SG_HDR_TRACESTATE, c.state);
}

void eng_trace_reply(struct sg_engine *en, const struct sg_saga *s, const struct sg_msg *reply, const char *service,
                     int64_t start_us, int is_error) {
  struct sg_tctx saga, c;
  sg_otel_saga_ctx(s->row.trace, s->row.id, &saga);
  message_ctx(&saga, reply->correlation_id, s->row.step, s->row.phase, s->row.attempt, &c);
  int64_t now = sg_now_ms() * 1000;
  if (start_us <= 0) start_us = s->row.attempt_started_at > 0 ? s->row.attempt_started_at * 1000 : now;
  char name[300];
  const char *cmd = reply->name && *reply->name ? reply->name : NULL;
  if (service && cmd) snprintf(name, sizeof name, "call %s.%s", service, cmd);
  else snprintf(name, sizeof name, "call %s", service ? service : "?");
  struct sg_span sp;
  sg_span_begin(&sp, &c, name, SG_SPAN_CLIENT, start_us, now);
  struct sg_msg cm = { .kind = SG_MSG_COMMAND, .service = (char *)service, .name = (char *)cmd,
                       .message_id = reply->correlation_id, .correlation_id = reply->correlation_id };
  msg_attrs(en, &sp, &cm, "send");
  sg_span_str(&sp, "messaging.operation.name", "call");
  saga_attrs(&sp, s->row.id, s->row.type);
  sg_span_str(&sp, "saga.reply.status", is_error ? "error" : "ok");
  const char *rtp = sg_msg_header(reply, SG_HDR_TRACEPARENT);
  if (rtp) sg_span_str(&sp, "saga.reply.traceparent", rtp);
  sg_span_end(en->otel, &sp, is_error, is_error ? reply->body : NULL);
}

void eng_trace_call_given_up(struct sg_engine *en, const struct sg_saga *s, const char *message_id,
                             const char *service, const char *cmd, int64_t start_us, const char *why) {
  struct sg_tctx saga, c;
  sg_otel_saga_ctx(s->row.trace, s->row.id, &saga);
  message_ctx(&saga, message_id, s->row.step, s->row.phase, s->row.attempt, &c);
  int64_t now = sg_now_ms() * 1000;
  if (start_us <= 0) start_us = s->row.attempt_started_at > 0 ? s->row.attempt_started_at * 1000 : now;
  char name[300];
  if (cmd) snprintf(name, sizeof name, "call %s.%s", service, cmd);
  else snprintf(name, sizeof name, "call %s", service);
  struct sg_span sp;
  sg_span_begin(&sp, &c, name, SG_SPAN_CLIENT, start_us, now);
  struct sg_msg cm = { .kind = SG_MSG_COMMAND, .service = (char *)service, .name = (char *)cmd,
                       .message_id = (char *)message_id, .correlation_id = (char *)message_id };
  msg_attrs(en, &sp, &cm, "send");
  sg_span_str(&sp, "messaging.operation.name", "call");
  saga_attrs(&sp, s->row.id, s->row.type);
  sg_span_str(&sp, "saga.reply.status", "none");
  sg_span_end(en->otel, &sp, 1, why);
}

void eng_trace_retry(struct sg_engine *en, struct sg_saga *s) {
  (void)en;
  struct sg_tctx c, r;
  sg_otel_saga_ctx(s->row.trace, s->row.id, &c);
  char label[64];
  snprintf(label, sizeof label, "retry/%d", s->row.attempt);
  r = c;
  memcpy(r.parent, c.span, 8);
  sg_otel_derive(c.span, label, r.span);
  r.since_ms = sg_now_ms();
  char *text = sg_otel_trace_text(&r);
  free(s->row.trace);
  s->row.trace = text;
}

void eng_trace_command(struct sg_engine *en, const struct sg_msg *m, int64_t start_us, const char *status,
                       const char *body, char tp[56]) {
  struct sg_tctx c = {0};
  uint8_t parent[8];
  if (sg_otel_parse_traceparent(sg_msg_header(m, SG_HDR_TRACEPARENT), c.trace, parent) == 0) {
    memcpy(c.parent, parent, 8);
    c.state = sg_msg_header(m, SG_HDR_TRACESTATE);
  } else {
    uint8_t a[8], b[8];
    sg_otel_random_span(a);
    sg_otel_random_span(b);
    memcpy(c.trace, a, 8);
    memcpy(c.trace + 8, b, 8);
  }
  sg_otel_random_span(c.span);
  int64_t now = sg_now_ms() * 1000;
  if (start_us <= 0 || start_us > now) start_us = now;
  char name[300];
  char what[300];
  snprintf(name, sizeof name, "process %s", sg_msg_what(m, what, sizeof what));
  struct sg_span sp;
  sg_span_begin(&sp, &c, name, SG_SPAN_SERVER, start_us, now);
  msg_attrs(en, &sp, m, "process");
  if (m->service) {
    char q[200];
    snprintf(q, sizeof q, "saga.svc.%s", m->service);
    sg_span_str(&sp, "messaging.consumer.group.name", q);
  }
  if (m->saga_id) saga_attrs(&sp, m->saga_id, m->saga_type);
  int err = !status || strcmp(status, "ok") != 0;
  sg_span_str(&sp, "saga.reply.status", err ? "error" : "ok");
  sg_span_end(en->otel, &sp, err, err ? body : NULL);
  sg_otel_traceparent(c.trace, c.span, tp);
}

/* ---- sagas and attempts, from the lifecycle events ---- */

static void on_event(void *ud, const struct sg_event *ev) {
  struct sg_engine *en = ud;
  if (!en->otel || !ev->saga_id) return;
  if (ev->kind != SG_EV_ATTEMPT_ENDED && ev->kind != SG_EV_TERMINAL && ev->kind != SG_EV_OPERATOR) return;
  /* resolved follows compensation_failed, which ended the saga's (or the retry's) span already */
  if (ev->kind == SG_EV_TERMINAL && ev->status == SG_ST_RESOLVED) return;
  struct sg_tctx saga;
  sg_otel_saga_ctx(ev->trace, ev->saga_id, &saga);
  struct sg_span sp;
  char name[300];
  if (ev->kind == SG_EV_OPERATOR) {
    /* an instant span under the saga's (or the retry's) span: the verb, who and why */
    struct sg_tctx c = saga;
    char label[160];
    snprintf(label, sizeof label, "operator/%s/%" PRId64 "/%d", ev->outcome ? ev->outcome : "?", ev->at, ev->attempt);
    memcpy(c.parent, saga.span, 8);
    sg_otel_derive(saga.span, label, c.span);
    const char *verb = ev->outcome && !strncmp(ev->outcome, "operator_", 9) ? ev->outcome + 9 : ev->outcome;
    snprintf(name, sizeof name, "operator %s", verb ? verb : "?");
    sg_span_begin(&sp, &c, name, SG_SPAN_INTERNAL, ev->at * 1000, ev->at * 1000);
    saga_attrs(&sp, ev->saga_id, ev->type);
    sg_span_str(&sp, "saga.operator.action", verb);
    sg_span_str(&sp, "saga.operator.detail", ev->detail);
    sg_span_str(&sp, "saga.step", ev->step_name);
    sg_span_end(en->otel, &sp, 0, NULL);
    return;
  }
  if (ev->kind == SG_EV_TERMINAL) {
    /* the saga's span ends at its first terminal status; after an operator's retry the context is the
     * retry's (since_ms set): a span of its own from the retry to the status it reached */
    int retry = saga.since_ms > 0;
    snprintf(name, sizeof name, retry ? "retry saga %s" : "saga %s", ev->type);
    sg_span_begin(&sp, &saga, name, SG_SPAN_INTERNAL, (retry ? saga.since_ms : ev->created_at) * 1000, ev->at * 1000);
    saga_attrs(&sp, ev->saga_id, ev->type);
    sg_span_str(&sp, "saga.status", sg_status_name(ev->status));
    int err = ev->status != SG_ST_COMPLETED;
    sg_span_end(en->otel, &sp, err, err ? (ev->detail ? ev->detail : sg_status_name(ev->status)) : NULL);
    return;
  }
  struct sg_tctx c;
  attempt_ctx(&saga, ev->step, ev->phase, ev->attempt, &c);
  snprintf(name, sizeof name, "%s %s", ev->phase == SG_PH_ACTION ? "step" : "compensate", ev->step_name ? ev->step_name : "?");
  int64_t dur = ev->duration_ms > 0 ? ev->duration_ms : 0;
  sg_span_begin(&sp, &c, name, SG_SPAN_INTERNAL, (ev->at - dur) * 1000, ev->at * 1000);
  saga_attrs(&sp, ev->saga_id, ev->type);
  sg_span_str(&sp, "saga.step", ev->step_name);
  sg_span_int(&sp, "saga.step.index", ev->step);
  sg_span_str(&sp, "saga.phase", sg_phase_name(ev->phase));
  sg_span_int(&sp, "saga.attempt", ev->attempt);
  sg_span_str(&sp, "saga.outcome", ev->outcome);
  int err = ev->outcome && strcmp(ev->outcome, "completed") != 0;
  sg_span_end(en->otel, &sp, err, err ? ev->detail : NULL);
}

int sg_engine_set_otel(struct sg_engine *en, struct sg_otel *o) {
  if (!o) { en->otel = NULL; return 0; }
  if (sg_engine_observe(en, on_event, en) < 0) return -1;
  en->otel = o;
  return 0;
}

struct sg_otel *sg_engine_otel(struct sg_engine *en) {
  return en->otel;
}
