/* store_common: the parts of store.h shared by every store implementation (names, row helpers). */
#include "store.h"

#include <stdlib.h>
#include <string.h>

/* Indexed by enum sg_status; these texts are what the database and the API carry. */
static const char *const status_names[] = {
  "running", "compensating", "completed", "compensated", "compensation_failed", "resolved",
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
  case SG_PH_COMPENSATE: return "compensate";
  default: return "saga"; /* phase -1: saga-level history events */
  }
}

void sg_store_saga_row_free(struct sg_saga_row *r) {
  if (!r) return;
  free(r->type);
  free(r->def_hash);
  free(r->input);
  free(r->data);
  free(r->error);
  free(r->idem_key);
  r->type = r->def_hash = r->input = r->data = r->error = r->idem_key = NULL;
}

void sg_msg_free(struct sg_msg *m) {
  if (!m) return;
  free(m->message_id);
  free(m->correlation_id);
  free(m->exchange);
  free(m->routing_key);
  free(m->reply_to);
  free(m->type);
  free(m->saga_id);
  free(m->saga_type);
  free(m->status);
  free(m->body);
  m->message_id = m->correlation_id = m->exchange = m->routing_key = m->reply_to = NULL;
  m->type = m->saga_id = m->saga_type = m->status = m->body = NULL;
}

void sg_msg_copy(struct sg_msg *dst, const struct sg_msg *src) {
  /* Scalars first, then replace every pointer so dst never aliases src. */
  *dst = *src;
  dst->message_id = sg_strdup(src->message_id);
  dst->correlation_id = sg_strdup(src->correlation_id);
  dst->exchange = sg_strdup(src->exchange);
  dst->routing_key = sg_strdup(src->routing_key);
  dst->reply_to = sg_strdup(src->reply_to);
  dst->type = sg_strdup(src->type);
  dst->saga_id = sg_strdup(src->saga_id);
  dst->saga_type = sg_strdup(src->saga_type);
  dst->status = sg_strdup(src->status);
  dst->body = sg_strdup(src->body);
}
