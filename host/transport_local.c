/* transport_local: the in-process transport used without --amqp.
 *
 * Messages go through the same outbox/inbox path as with a broker: the engine publishes a committed
 * outbox row, this transport queues it and delivers it from an ev_idle watcher (a later loop
 * iteration, never re-entrantly), and confirms it only once the consumer has acked it, i.e. once the
 * consumer's effect is committed. So a crash at any point leaves the message in the outbox and the
 * engine re-publishes it at start (on_ready), exactly as it would to a broker. */
#include <stdlib.h>
#include <string.h>

#include "transport.h"

/* A queued or delivered message. */
struct lmsg {
  struct sg_msg m;     /* owned copy */
  uint64_t tag;        /* delivery tag */
  int delivered;       /* handed to on_message, waiting for ack */
  struct lmsg *next;   /* queue / in-flight list */
};

struct local {
  struct sg_transport base;
  struct ev_loop *loop;
  ev_idle idle;            /* runs deliveries while the queue is non-empty */
  ev_timer ready;          /* announces on_ready once the loop runs */
  struct lmsg *head, *tail; /* undelivered */
  struct lmsg *inflight;   /* delivered, not yet acked */
  uint64_t next_tag;
};

static void deliver(struct ev_loop *loop, ev_idle *w, int revents) {
  struct local *l = w->data;
  /* take the current queue: deliveries may publish more, which wait for the next round */
  struct lmsg *q = l->head;
  l->head = l->tail = NULL;
  ev_idle_stop(loop, &l->idle);
  while (q) {
    struct lmsg *m = q;
    q = q->next;
    if (m->m.outbox_id <= 0) {
      /* no outbox row to confirm: nothing to track once it is handed over */
      l->base.ev.on_message(l->base.ev.ud, &m->m, m->tag, 0);
      sg_msg_free(&m->m);
      free(m);
      continue;
    }
    m->delivered = 1;
    m->next = l->inflight;
    l->inflight = m;
    l->base.ev.on_message(l->base.ev.ud, &m->m, m->tag, 0);
  }
}

static void on_ready_timer(struct ev_loop *loop, ev_timer *w, int revents) {
  struct local *l = w->data;
  l->base.ev.on_ready(l->base.ev.ud);
}

static int l_subscribe(struct sg_transport *t, const char *service, struct sg_error *e) { return 0; }
static int l_declare(struct sg_transport *t, const char *service, struct sg_error *e) { return 0; }

static int l_publish(struct sg_transport *t, const struct sg_msg *m, struct sg_error *e) {
  struct local *l = (struct local *)t;
  if (m->exchange && strcmp(m->exchange, "saga.events") == 0) {
    /* no in-process event subscribers: the event is delivered to nobody, as with an unbound exchange */
    l->base.ev.on_confirm(l->base.ev.ud, m->outbox_id);
    return 0;
  }
  struct lmsg *q = sg_xcalloc(1, sizeof *q);
  sg_msg_copy(&q->m, m);
  q->tag = ++l->next_tag;
  if (l->tail) l->tail->next = q; else l->head = q;
  l->tail = q;
  ev_idle_start(l->loop, &l->idle);
  return 0;
}

static struct lmsg *take_inflight(struct local *l, uint64_t tag) {
  for (struct lmsg **p = &l->inflight; *p; p = &(*p)->next) {
    if ((*p)->tag == tag) {
      struct lmsg *m = *p;
      *p = m->next;
      return m;
    }
  }
  return NULL;
}

static void l_ack(struct sg_transport *t, uint64_t tag) {
  struct local *l = (struct local *)t;
  struct lmsg *m = take_inflight(l, tag);
  if (!m) return;
  l->base.ev.on_confirm(l->base.ev.ud, m->m.outbox_id);
  sg_msg_free(&m->m);
  free(m);
}

static void l_nack(struct sg_transport *t, uint64_t tag, const struct sg_msg *msg, const char *reason) {
  struct local *l = (struct local *)t;
  struct lmsg *m = take_inflight(l, tag);
  if (!m) {
    sg_err("dead-lettered message %s (%s): %s", msg && msg->message_id ? msg->message_id : "?",
           msg && msg->routing_key ? msg->routing_key : "?", reason);
    return;
  }
  sg_err("dead-lettered message %s (%s): %s", m->m.message_id ? m->m.message_id : "?",
         m->m.routing_key ? m->m.routing_key : "?", reason);
  l->base.ev.on_confirm(l->base.ev.ud, m->m.outbox_id);
  sg_msg_free(&m->m);
  free(m);
}

static const char *l_reply_queue(struct sg_transport *t) { return "local"; }
static int l_connected(struct sg_transport *t) { return 1; }

static void free_list(struct lmsg *m) {
  while (m) {
    struct lmsg *n = m->next;
    sg_msg_free(&m->m);
    free(m);
    m = n;
  }
}

static void l_close(struct sg_transport *t) {
  struct local *l = (struct local *)t;
  ev_idle_stop(l->loop, &l->idle);
  ev_timer_stop(l->loop, &l->ready);
  free_list(l->head);
  free_list(l->inflight);
  free(l);
}

static const struct sg_transport_ops local_ops = {
  "local", 1, l_subscribe, l_declare, l_publish, l_ack, l_nack, l_reply_queue, l_connected, l_close, NULL, NULL,
};

struct sg_transport *sg_transport_local_new(struct ev_loop *loop, const struct sg_transport_events *ev) {
  struct local *l = sg_xcalloc(1, sizeof *l);
  l->base.ops = &local_ops;
  l->base.ev = *ev;
  l->loop = loop;
  ev_idle_init(&l->idle, deliver);
  l->idle.data = l;
  ev_timer_init(&l->ready, on_ready_timer, 0., 0.);
  l->ready.data = l;
  ev_timer_start(loop, &l->ready);
  return &l->base;
}

/* PLACEHOLDER until the faults branch (i14-faults) lands: no faults, counts of deliveries only */
void sg_transport_local_faults(struct sg_transport *t, const struct sg_faults *f) { (void)t; (void)f; }
int sg_transport_local_idle(struct sg_transport *t) {
  struct local *l = (struct local *)t;
  return !l->head && !l->inflight;
}
int64_t sg_transport_local_next_due(struct sg_transport *t) { (void)t; return -1; }
void sg_transport_local_counts(struct sg_transport *t, struct sg_fault_counts *c) { (void)t; memset(c, 0, sizeof *c); }
