/* store_common: the parts of store.h shared by every store implementation (names, row helpers). */
#include "store.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Indexed by enum sg_status; these texts are what the database and the API carry. */
static const char *const status_names[] = {
  "running", "compensating", "completed", "compensated", "compensation_failed", "resolved",
  "terminated",
};
#define N_STATUS ((int)(sizeof status_names / sizeof status_names[0]))

const char *sg_status_name(int st) {
  return st >= 0 && st < N_STATUS ? status_names[st] : "unknown";
}

int sg_status_parse(const char *s) {
  if (!s) return -1;
  for (int i = 0; i < N_STATUS; i++)
    if (strcmp(s, status_names[i]) == 0) return i;
  return -1;
}

const char *sg_phase_name(int ph) {
  switch (ph) {
  case SG_PH_ACTION: return "action";
  case SG_PH_COMPENSATE:
  case SG_PH_PARTIAL: return "compensate";
  default: return "saga"; /* phase -1: saga-level history events */
  }
}

void sg_store_saga_row_free(struct sg_saga_row *r) {
  if (!r) return;
  if (!r->interned) {
    free(r->type);
    free(r->def_hash);
  }
  r->interned = 0;
  free(r->input);
  free(r->data);
  free(r->error);
  free(r->idem_key);
  free(r->biz_key);
  free(r->trace);
  free(r->partial);
  free(r->parent);
  free(r->children);
  r->type = r->def_hash = r->input = r->data = r->error = r->idem_key = r->biz_key = r->trace = r->partial = NULL;
  r->parent = r->children = NULL;
}

void sg_store_saga_row_copy(struct sg_saga_row *dst, const struct sg_saga_row *src) {
  *dst = *src;
  dst->interned = 0;
  dst->type = sg_strdup(src->type);
  dst->def_hash = sg_strdup(src->def_hash);
  dst->input = sg_strdup(src->input);
  dst->data = sg_strdup(src->data);
  dst->error = sg_strdup(src->error);
  dst->idem_key = sg_strdup(src->idem_key);
  dst->biz_key = sg_strdup(src->biz_key);
  dst->trace = sg_strdup(src->trace);
  dst->partial = sg_strdup(src->partial);
  dst->parent = sg_strdup(src->parent);
  dst->children = sg_strdup(src->children);
}

/* How much earlier than its created_at a saga's id may say it was made: rows written before created_at
 * was taken from the id read the clock twice (a millisecond or so apart). */
#define ID_SLACK_MS 60000

/* the smallest id-order string above every id made in a millisecond before ms (its hex time prefix) */
static void id_prefix(int64_t ms, char *out) {
  if (ms < 0) ms = 0;
  if (ms > 0xffffffffffffLL) ms = 0xffffffffffffLL;
  snprintf(out, 40, "%08x-%04x", (unsigned)(ms >> 16), (unsigned)(ms & 0xffff));
}

void sg_saga_filter_id_range(const struct sg_saga_filter *f, char *lo, char *hi) {
  lo[0] = hi[0] = 0;
  if (f->since > 0) id_prefix(f->since - ID_SLACK_MS, lo);
  if (f->until > 0) id_prefix(f->until, hi); /* an id is never later than its created_at */
  if (f->after && *f->after) {
    char *b = f->desc ? hi : lo;
    int tighter = f->desc ? (!*b || strcmp(f->after, b) < 0) : strcmp(f->after, b) > 0;
    if (tighter) snprintf(b, 40, "%s", f->after);
  }
}

void sg_msg_free(struct sg_msg *m) {
  if (!m) return;
  free(m->service);
  free(m->name);
  free(m->reply_to);
  free(m->message_id);
  free(m->correlation_id);
  free(m->saga_id);
  free(m->saga_type);
  free(m->status);
  free(m->body);
  for (size_t i = 0; i < m->nheaders; i++) {
    free(m->headers[i].name);
    free(m->headers[i].value);
  }
  free(m->headers);
  m->service = m->name = m->reply_to = m->message_id = m->correlation_id = NULL;
  m->saga_id = m->saga_type = m->status = m->body = NULL;
  m->headers = NULL;
  m->nheaders = 0;
}

void sg_msg_copy(struct sg_msg *dst, const struct sg_msg *src) {
  /* Scalars first, then replace every pointer so dst never aliases src. */
  *dst = *src;
  dst->service = sg_strdup(src->service);
  dst->name = sg_strdup(src->name);
  dst->reply_to = sg_strdup(src->reply_to);
  dst->message_id = sg_strdup(src->message_id);
  dst->correlation_id = sg_strdup(src->correlation_id);
  dst->saga_id = sg_strdup(src->saga_id);
  dst->saga_type = sg_strdup(src->saga_type);
  dst->status = sg_strdup(src->status);
  dst->body = sg_strdup(src->body);
  dst->headers = NULL;
  if (src->nheaders) {
    dst->headers = sg_xmalloc(src->nheaders * sizeof *dst->headers);
    for (size_t i = 0; i < src->nheaders; i++) {
      dst->headers[i].name = sg_strdup(src->headers[i].name);
      dst->headers[i].value = sg_strdup(src->headers[i].value);
    }
  }
}

const char *sg_msg_header(const struct sg_msg *m, const char *name) {
  for (size_t i = 0; i < m->nheaders; i++)
    if (strcmp(m->headers[i].name, name) == 0) return m->headers[i].value;
  return NULL;
}

void sg_msg_set_header(struct sg_msg *m, const char *name, const char *value) {
  for (size_t i = 0; i < m->nheaders; i++) {
    if (strcmp(m->headers[i].name, name) != 0) continue;
    free(m->headers[i].value);
    if (value) {
      m->headers[i].value = sg_strdup(value);
    } else {
      free(m->headers[i].name);
      memmove(m->headers + i, m->headers + i + 1, (m->nheaders - i - 1) * sizeof *m->headers);
      m->nheaders--;
    }
    return;
  }
  if (!value) return;
  m->headers = sg_xrealloc(m->headers, (m->nheaders + 1) * sizeof *m->headers);
  m->headers[m->nheaders].name = sg_strdup(name);
  m->headers[m->nheaders].value = sg_strdup(value);
  m->nheaders++;
}

const char *sg_msg_kind_name(enum sg_msg_kind k) {
  switch (k) {
  case SG_MSG_COMMAND: return "command";
  case SG_MSG_REPLY: return "reply";
  case SG_MSG_EVENT: return "event";
  case SG_MSG_SIGNAL: return "signal";
  }
  return "?";
}

const char *sg_msg_what(const struct sg_msg *m, char *buf, size_t n) {
  if (m->kind == SG_MSG_REPLY) snprintf(buf, n, "reply to %s", m->reply_to ? m->reply_to : "?");
  else if (m->kind == SG_MSG_SIGNAL) snprintf(buf, n, "signal");
  else snprintf(buf, n, "%s.%s", m->service ? m->service : "?", m->name ? m->name : "?");
  return buf;
}

void sg_msg_classify(struct sg_msg *m) {
  if (m->kind == SG_MSG_COMMAND && m->service && strcmp(m->service, SG_SIGNAL_SERVICE) == 0 && m->name &&
      strcmp(m->name, SG_SIGNAL_COMMAND) == 0)
    m->kind = SG_MSG_SIGNAL;
}

void sg_msg_row_route(const struct sg_msg *m, const char **exchange, char *buf, size_t n) {
  if (m->kind == SG_MSG_REPLY) {
    *exchange = "";
    snprintf(buf, n, "%s", m->reply_to ? m->reply_to : "");
    return;
  }
  *exchange = m->kind == SG_MSG_EVENT ? "saga.events" : "saga.commands";
  snprintf(buf, n, "%s.%s", m->service ? m->service : "", m->name ? m->name : "");
}

void sg_msg_from_row(struct sg_msg *m, const char *exchange, const char *routing_key, const char *type,
                     const char *reply_to_col, char *svc, size_t n) {
  const char *rk = routing_key ? routing_key : "";
  m->name = (char *)type;
  if (!exchange || !*exchange) {
    m->kind = SG_MSG_REPLY;
    m->reply_to = (char *)rk;
    m->service = NULL;
    return;
  }
  m->kind = strcmp(exchange, "saga.events") == 0 ? SG_MSG_EVENT : SG_MSG_COMMAND;
  m->reply_to = (char *)reply_to_col;
  /* "<service>.<name>": the name is the type column (a topic may hold dots); else up to the first dot */
  size_t len = strlen(rk), tl = type ? strlen(type) : 0;
  size_t cut = tl && len > tl + 1 && rk[len - tl - 1] == '.' && strcmp(rk + len - tl, type) == 0
                 ? len - tl - 1 : strcspn(rk, ".");
  if (cut >= n) cut = n - 1;
  memcpy(svc, rk, cut);
  svc[cut] = 0;
  m->service = svc;
  sg_msg_classify(m);
}

/* ---- reads without waiting ---- */

struct sg_read *sg_read_new(int kind, const char *a, const char *b, void (*done)(struct sg_read *), void *ud) {
  struct sg_read *rd = sg_xcalloc(1, sizeof *rd);
  rd->kind = kind;
  rd->a = a ? sg_strdup(a) : NULL;
  rd->b = b ? sg_strdup(b) : NULL;
  rd->status = -1;
  rd->done = done;
  rd->ud = ud;
  return rd;
}

void sg_read_free(struct sg_read *rd) {
  if (!rd) return;
  free(rd->a);
  free(rd->b);
  free(rd->key);
  free(rd->parent);
  for (size_t i = 0; i < rd->nrows; i++) sg_store_saga_row_free(&rd->rows[i]);
  free(rd->rows);
  for (size_t i = 0; i < rd->nhist; i++) {
    free((char *)rd->hist[i].saga_id);
    free((char *)rd->hist[i].step_name);
    free((char *)rd->hist[i].status);
    free((char *)rd->hist[i].error);
  }
  free(rd->hist);
  free(rd->status_s);
  free(rd->body);
  for (size_t i = 0; i < rd->nmsgs; i++) sg_msg_free(&rd->msgs[i]);
  free(rd->msgs);
  for (size_t i = 0; i < rd->nmail; i++) {
    free(rd->mail[i].saga_id);
    free(rd->mail[i].kind);
    free(rd->mail[i].body);
  }
  free(rd->mail);
  for (size_t i = 0; i < rd->ntimers; i++) {
    free((char *)rd->timers[i].saga_id);
    free((char *)rd->timers[i].kind);
  }
  free(rd->timers);
  for (size_t i = 0; i < rd->njournals; i++) {
    free((char *)rd->journals[i].saga_id);
    free((char *)rd->journals[i].kind);
    free((char *)rd->journals[i].result);
  }
  free(rd->journals);
  for (size_t i = 0; i < rd->nevents; i++) { free(rd->events[i].body); free(rd->events[i].host_id); }
  free(rd->events);
  free(rd);
}

static int read_row_cb(void *ud, const struct sg_saga_row *r) {
  struct sg_read *rd = ud;
  rd->rows = sg_xrealloc(rd->rows, (rd->nrows + 1) * sizeof *rd->rows);
  sg_store_saga_row_copy(&rd->rows[rd->nrows++], r);
  return 0;
}

void sg_read_add_hist(struct sg_read *rd, const struct sg_hist_row *h) {
  rd->hist = sg_xrealloc(rd->hist, (rd->nhist + 1) * sizeof *rd->hist);
  struct sg_hist_row *o = &rd->hist[rd->nhist++];
  *o = *h;
  o->saga_id = sg_strdup(h->saga_id);
  o->step_name = sg_strdup(h->step_name);
  o->status = sg_strdup(h->status);
  o->error = sg_strdup(h->error);
}

void sg_read_add_events(struct sg_read *rd, const char *pos, int64_t at, int n, const char *body, const char *host_id) {
  rd->events = sg_xrealloc(rd->events, (rd->nevents + 1) * sizeof *rd->events);
  struct sg_event_batch *o = &rd->events[rd->nevents++];
  snprintf(o->pos, sizeof o->pos, "%s", pos);
  o->at = at;
  o->n = n;
  o->body = sg_strdup(body ? body : "");
  o->host_id = sg_strdup(host_id);
  snprintf(rd->pos, sizeof rd->pos, "%s", pos);
}

/* a field of an event line: \ tab and newline escaped (\\ \t \n); NULL is "\N" */
/* a text field and its tab at p (room for twice its length + 3 made by the caller); returns the end */
static char *line_text(char *p, const char *v) {
  if (!v) { memcpy(p, "\\N\t", 3); return p + 3; }
  for (;;) {
    size_t k = strcspn(v, "\\\t\n");
    memcpy(p, v, k);
    p += k;
    v += k;
    if (!*v) break;
    *p++ = '\\';
    *p++ = *v == '\\' ? '\\' : *v == '\t' ? 't' : 'n';
    v++;
  }
  *p++ = '\t';
  return p;
}

/* One line per event (one per saga step, so formatted straight into the buffer: its room is made
 * once, for the worst case of every byte escaped) */
void sg_event_line(struct sg_buf *b, const struct sg_event_row *r) {
  const char *texts[7] = {r->kind, r->saga_id, r->type, r->status, r->step_name, r->outcome, r->detail};
  size_t room = 5 * 22;
  for (int i = 0; i < 7; i++) room += (texts[i] ? 2 * strlen(texts[i]) : 0) + 3;
  sg_buf_reserve(b, room);
  char *p = b->data + b->len;
  for (int i = 0; i < 7; i++) p = line_text(p, texts[i]);
  const int64_t nums[5] = {r->step, r->phase, r->attempt, r->at, r->duration_ms};
  for (int i = 0; i < 5; i++) {
    p = sg_fmt_i64(p, nums[i]);
    *p++ = i < 4 ? '\t' : '\n';
  }
  *p = 0;
  b->len = (size_t)(p - b->data);
}

/* the next field of a line, unescaped in place; NULL for \N */
static char *line_take(char **at) {
  char *p = *at;
  if (p[0] == '\\' && p[1] == 'N' && (p[2] == '\t' || p[2] == '\n' || !p[2])) {
    *at = p[2] == '\t' ? p + 3 : p + 2;
    return NULL;
  }
  char *o = p, *start = p;
  while (*p && *p != '\t' && *p != '\n') {
    if (*p == '\\' && p[1]) {
      p++;
      *o++ = *p == 't' ? '\t' : *p == 'n' ? '\n' : *p;
      p++;
    } else {
      *o++ = *p++;
    }
  }
  char *next = *p == '\t' ? p + 1 : p; /* a newline ends the text fields: the numbers follow a tab */
  *o = 0;
  *at = next;
  return start;
}

int sg_event_line_next(char **at, struct sg_event_row *r) {
  if (!**at) return 0;
  memset(r, 0, sizeof *r);
  r->kind = line_take(at);
  r->saga_id = line_take(at);
  r->type = line_take(at);
  r->status = line_take(at);
  r->step_name = line_take(at);
  r->outcome = line_take(at);
  r->detail = line_take(at);
  char *end;
  r->step = (int)strtol(*at, &end, 10);
  r->phase = (int)strtol(end, &end, 10);
  r->attempt = (int)strtol(end, &end, 10);
  r->at = strtoll(end, &end, 10);
  r->duration_ms = strtoll(end, &end, 10);
  while (*end && *end != '\n') end++;
  *at = *end ? end + 1 : end;
  return 1;
}


static int read_hist_cb(void *ud, const struct sg_hist_row *h) {
  sg_read_add_hist(ud, h);
  return 0;
}

static int read_msg_cb(void *ud, const struct sg_msg *m) {
  struct sg_read *rd = ud;
  rd->msgs = sg_xrealloc(rd->msgs, (rd->nmsgs + 1) * sizeof *rd->msgs);
  sg_msg_copy(&rd->msgs[rd->nmsgs++], m);
  return 0;
}

/* a store whose reads are local (SQLite): the blocking ops, answered at once */
static void read_now(struct sg_store *s, struct sg_read *rd) {
  const struct sg_store_ops *o = s->ops;
  struct sg_saga_row r = {0};
  switch (rd->kind) {
  case SG_READ_SAGA:
  case SG_READ_IDEM:
    rd->rc = rd->kind == SG_READ_SAGA ? o->saga_get(s, rd->a, &r, &rd->err) : o->saga_find_idem(s, rd->a, rd->b, &r, &rd->err);
    if (rd->rc == 1) {
      rd->rows = sg_xcalloc(1, sizeof *rd->rows);
      rd->rows[0] = r;
      rd->nrows = 1;
      if (rd->with_hist && o->hist_each(s, rd->a, read_hist_cb, rd, &rd->err) < 0) rd->rc = -1;
    }
    break;
  case SG_READ_LIST: {
    struct sg_saga_filter f = { .status = rd->status, .type = rd->a, .after = rd->b, .limit = rd->limit,
                                .key = rd->key, .since = rd->since, .until = rd->until, .desc = rd->desc,
                                .parent = rd->parent };
    rd->rc = o->saga_list(s, &f, read_row_cb, rd, &rd->err) < 0 ? -1 : 0;
    break;
  }
  case SG_READ_COUNTS:
    rd->rc = o->saga_counts(s, rd->a, rd->counts, &rd->err) < 0 ? -1 : 0;
    break;
  case SG_READ_INBOX:
    rd->rc = o->inbox_get(s, rd->a, &rd->status_s, &rd->body, &rd->err);
    break;
  case SG_READ_OUTBOX:
    rd->rc = o->outbox_each(s, read_msg_cb, rd, &rd->err) < 0 ? -1 : 0;
    break;
  case SG_READ_PRUNE:
    rd->rc = !strcmp(rd->a, "inbox")    ? o->inbox_prune(s, rd->before, &rd->count, &rd->err)
             : !strcmp(rd->a, "events") ? o->event_prune(s, rd->before, &rd->count, &rd->err)
                                        : o->saga_prune(s, rd->before, rd->limit, &rd->count, &rd->err);
    if (rd->rc > 0) rd->rc = 0;
    break;
  case SG_READ_EVENTS:
    rd->rc = o->event_read(s, rd, &rd->err) < 0 ? -1 : 0;
    break;
  case SG_READ_TAKEOVER: /* one host: nothing to take */
  case SG_READ_MAIL: /* one host: no mail */
  case SG_READ_PROBE: /* one host, which owns everything */
    rd->rc = 0;
    rd->flags = 0;
    break;
  default:
    rd->rc = sg_errorf(&rd->err, SG_E_INTERNAL, "unknown read %d", rd->kind);
  }
  if (rd->rc < 0 && !rd->err.msg[0]) sg_errorf(&rd->err, SG_E_INTERNAL, "read failed");
}

void sg_store_read(struct sg_store *s, struct sg_read *rd) {
  if (s->ops->read_start) { s->ops->read_start(s, rd); return; }
  read_now(s, rd);
  rd->done(rd);
}
