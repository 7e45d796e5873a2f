/* transport_local: the in-process transport used without --amqp.
 *
 * Messages go through the same outbox/inbox path as with a broker: the engine publishes a committed
 * outbox row, this transport queues it and delivers it from an ev_idle watcher (a later loop
 * iteration, never re-entrantly), and confirms it only once the consumer has acked it, i.e. once the
 * consumer's effect is committed. So a crash at any point leaves the message in the outbox and the
 * engine re-publishes it at start (on_ready), exactly as it would to a broker.
 *
 * Fault injection (sg_transport_local_faults, for the testing kit): each publish but an event's
 * draws, from the transport's own PRNG seeded by the caller, whether it is dropped (lost, and the same
 * message re-sent after 200..2000 ms, once: the re-send is not dropped again), duplicated (a second,
 * fresh delivery: redelivered = 0, as a broker gives a message published twice) and how long each copy
 * is delayed; with reorder, the messages deliverable in one round are shuffled. Times are sg_now_ms()
 * (a virtual clock when one is set): an ev_timer wakes the loop at the earliest due time in real time,
 * and sg_transport_local_poke re-checks after the caller moved a virtual clock. Only one delivery per
 * outbox id confirms it (the original; copies and second publishes of a row being delivered do not),
 * so a row is confirmed once, and only after a consumer acked a delivery of it. */
#include <stdlib.h>
#include <string.h>

#include "transport.h"

/* A queued, delayed or delivered message. */
struct lmsg {
  struct sg_msg m;     /* owned copy */
  uint64_t tag;        /* delivery tag */
  int delivered;       /* handed to on_message, waiting for ack */
  int confirms;        /* its ack confirms m.outbox_id (one delivery per outbox id) */
  int64_t due;         /* delayed: deliverable once sg_now_ms() reaches it */
  uint64_t seq;        /* publish order (ties between equal due times) */
  struct lmsg *next;   /* queue / delayed / in-flight list */
};

struct local {
  struct sg_transport base;
  struct ev_loop *loop;
  ev_idle idle;            /* runs deliveries while the queue is non-empty */
  ev_timer ready;          /* announces on_ready once the loop runs */
  ev_timer due_timer;      /* wakes at the earliest delayed message (real time) */
  struct lmsg *head, *tail; /* undelivered */
  struct lmsg *delayed;    /* waiting for their due time, unordered */
  struct lmsg *inflight;   /* delivered, not yet acked */
  uint64_t next_tag, next_seq;
  int faulty;              /* faults on */
  struct sg_faults f;
  uint64_t rng;            /* splitmix64 state */
  struct sg_fault_counts counts;
};

static const struct sg_transport_ops local_ops;

static struct local *as_local(struct sg_transport *t) {
  return t && t->ops == &local_ops ? (struct local *)t : NULL;
}

/* ---- the PRNG: splitmix64 (same seed, same sequence) ---- */

static uint64_t rnd(struct local *l) {
  uint64_t z = (l->rng += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

static double rnd_unit(struct local *l) { return (double)(rnd(l) >> 11) * 0x1.0p-53; } /* [0, 1) */

static int64_t rnd_range(struct local *l, int64_t lo, int64_t hi) { /* [lo, hi] */
  uint64_t r = rnd(l);
  if (hi <= lo) return lo;
  return lo + (int64_t)(r % (uint64_t)(hi - lo + 1));
}

/* ---- queues ---- */

static void enqueue(struct local *l, struct lmsg *q) {
  q->next = NULL;
  if (l->tail) l->tail->next = q; else l->head = q;
  l->tail = q;
  ev_idle_start(l->loop, &l->idle);
}

static void free_msg(struct lmsg *m) {
  sg_msg_free(&m->m);
  free(m);
}

static void free_list(struct lmsg *m) {
  while (m) {
    struct lmsg *n = m->next;
    free_msg(m);
    m = n;
  }
}

static void arm_due_timer(struct local *l) {
  ev_timer_stop(l->loop, &l->due_timer);
  if (!l->delayed) return;
  int64_t first = l->delayed->due;
  for (struct lmsg *m = l->delayed->next; m; m = m->next)
    if (m->due < first) first = m->due;
  int64_t wait = first - sg_now_ms();
  ev_timer_set(&l->due_timer, wait > 0 ? (double)wait / 1000. : 0., 0.);
  ev_timer_start(l->loop, &l->due_timer);
}

static int due_cmp(const void *pa, const void *pb) {
  const struct lmsg *a = *(struct lmsg *const *)pa, *b = *(struct lmsg *const *)pb;
  if (a->due != b->due) return a->due < b->due ? -1 : 1;
  return a->seq < b->seq ? -1 : a->seq > b->seq;
}

/* Moves the delayed messages whose time has come to the queue, in due order (publish order for
 * equal due times). */
static void release_due(struct local *l) {
  int64_t now = sg_now_ms();
  size_t n = 0;
  for (struct lmsg *m = l->delayed; m; m = m->next) n += m->due <= now;
  if (n) {
    struct lmsg **due = sg_xcalloc(n, sizeof *due);
    size_t i = 0;
    for (struct lmsg **p = &l->delayed; *p;) {
      if ((*p)->due <= now) {
        due[i++] = *p;
        *p = (*p)->next;
      } else {
        p = &(*p)->next;
      }
    }
    qsort(due, n, sizeof *due, due_cmp);
    for (i = 0; i < n; i++) enqueue(l, due[i]);
    free(due);
  }
  arm_due_timer(l);
}

static void hold(struct local *l, struct lmsg *q, int64_t delay) {
  q->due = sg_now_ms() + delay;
  q->next = l->delayed;
  l->delayed = q;
}

/* Fisher-Yates over the round's list; counts the messages that changed places. */
static struct lmsg *shuffle(struct local *l, struct lmsg *q) {
  size_t n = 0;
  for (struct lmsg *m = q; m; m = m->next) n++;
  if (n < 2) return q;
  struct lmsg **a = sg_xcalloc(n, sizeof *a);
  size_t i = 0;
  for (struct lmsg *m = q; m; m = m->next) a[i++] = m;
  struct lmsg **orig = sg_xcalloc(n, sizeof *orig);
  memcpy(orig, a, n * sizeof *a);
  for (i = n - 1; i > 0; i--) {
    size_t j = (size_t)(rnd(l) % (i + 1));
    struct lmsg *t = a[i]; a[i] = a[j]; a[j] = t;
  }
  for (i = 0; i < n; i++) {
    if (a[i] != orig[i]) l->counts.reordered++;
    a[i]->next = i + 1 < n ? a[i + 1] : NULL;
  }
  q = a[0];
  free(a);
  free(orig);
  return q;
}

static void deliver(struct ev_loop *loop, ev_idle *w, int revents) {
  struct local *l = w->data;
  /* take the current queue: deliveries may publish more, which wait for the next round */
  struct lmsg *q = l->head;
  l->head = l->tail = NULL;
  ev_idle_stop(loop, &l->idle);
  if (l->faulty && l->f.reorder) q = shuffle(l, q);
  while (q) {
    struct lmsg *m = q;
    q = q->next;
    l->counts.delivered++;
    if (m->m.outbox_id <= 0) {
      /* no outbox row to confirm: nothing to track once it is handed over */
      l->base.ev.on_message(l->base.ev.ud, &m->m, m->tag, 0);
      free_msg(m);
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

static void on_due_timer(struct ev_loop *loop, ev_timer *w, int revents) {
  release_due(w->data);
}

static int l_subscribe(struct sg_transport *t, const char *service, struct sg_error *e) { return 0; }
static int l_declare(struct sg_transport *t, const char *service, struct sg_error *e) { return 0; }

/* Some delivery of this outbox row (queued, delayed or in flight) confirms it already. */
static int confirmer_exists(struct local *l, int64_t outbox_id) {
  struct lmsg *lists[3] = { l->head, l->delayed, l->inflight };
  for (int i = 0; i < 3; i++)
    for (struct lmsg *m = lists[i]; m; m = m->next)
      if (m->confirms && m->m.outbox_id == outbox_id) return 1;
  return 0;
}

static struct lmsg *new_lmsg(struct local *l, const struct sg_msg *m) {
  struct lmsg *q = sg_xcalloc(1, sizeof *q);
  sg_msg_copy(&q->m, m);
  q->tag = ++l->next_tag;
  q->seq = ++l->next_seq;
  return q;
}

/* A copy of q, delivered on its own (a fresh delivery that confirms nothing). */
static struct lmsg *dup_lmsg(struct local *l, const struct lmsg *q) {
  return new_lmsg(l, &q->m);
}

/* Sends q under the faults: the draws are the same number per publish, so one seed gives one
 * sequence of faults for one sequence of publishes. */
static void publish_faulty(struct local *l, struct lmsg *q) {
  double u_drop = rnd_unit(l), u_dup = rnd_unit(l);
  int64_t resend = rnd_range(l, 200, 2000);
  int64_t d1 = rnd_range(l, l->f.delay_min_ms, l->f.delay_max_ms);
  int64_t d2 = rnd_range(l, l->f.delay_min_ms, l->f.delay_max_ms);
  int delaying = l->f.delay_max_ms > 0;
  struct lmsg *copy = NULL;
  if (u_dup < l->f.duplicate) {
    copy = dup_lmsg(l, q);
    l->counts.duplicated++;
  }
  if (u_drop < l->f.drop) {
    /* lost on the way; the outbox sends the same message again later */
    l->counts.dropped++;
    hold(l, q, resend);
  } else if (delaying && d1 > 0) {
    l->counts.delayed++;
    hold(l, q, d1);
  } else {
    enqueue(l, q);
  }
  if (copy) {
    if (delaying && d2 > 0) {
      l->counts.delayed++;
      hold(l, copy, d2);
    } else {
      enqueue(l, copy);
    }
  }
  arm_due_timer(l);
}

static int l_publish(struct sg_transport *t, const struct sg_msg *m, struct sg_error *e) {
  struct local *l = (struct local *)t;
  if (m->kind == SG_MSG_EVENT) {
    /* no in-process event subscribers: the event is delivered to nobody, as with an unbound exchange */
    l->base.ev.on_confirm(l->base.ev.ud, m->outbox_id);
    return 0;
  }
  struct lmsg *q = new_lmsg(l, m);
  /* a row published again while a delivery of it is on its way (the outbox read at start): the first
   * delivery's ack confirms it, this one's would confirm a row that is gone */
  q->confirms = m->outbox_id > 0 && !confirmer_exists(l, m->outbox_id);
  if (l->faulty) publish_faulty(l, q);
  else enqueue(l, q);
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
  if (m->confirms) l->base.ev.on_confirm(l->base.ev.ud, m->m.outbox_id);
  free_msg(m);
}

static void l_nack(struct sg_transport *t, uint64_t tag, const struct sg_msg *msg, const char *reason) {
  struct local *l = (struct local *)t;
  struct lmsg *m = take_inflight(l, tag);
  if (!m) {
    char what[300] = "?";
    if (msg) sg_msg_what(msg, what, sizeof what);
    sg_err("dead-lettered message %s (%s): %s", msg && msg->message_id ? msg->message_id : "?", what, reason);
    return;
  }
  char what[300];
  sg_err("dead-lettered message %s (%s): %s", m->m.message_id ? m->m.message_id : "?",
         sg_msg_what(&m->m, what, sizeof what), reason);
  if (m->confirms) l->base.ev.on_confirm(l->base.ev.ud, m->m.outbox_id);
  free_msg(m);
}

static const char *l_reply_queue(struct sg_transport *t) { return "local"; }
static int l_connected(struct sg_transport *t) { return 1; }

static void l_close(struct sg_transport *t) {
  struct local *l = (struct local *)t;
  ev_idle_stop(l->loop, &l->idle);
  ev_timer_stop(l->loop, &l->ready);
  ev_timer_stop(l->loop, &l->due_timer);
  free_list(l->head);
  free_list(l->delayed);
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
  ev_timer_init(&l->due_timer, on_due_timer, 0., 0.);
  l->due_timer.data = l;
  return &l->base;
}

/* ---- fault injection (the testing kit) ---- */

void sg_transport_local_faults(struct sg_transport *t, const struct sg_faults *f) {
  struct local *l = as_local(t);
  if (!l) return;
  if (!f) {
    l->faulty = 0; /* what is delayed already still comes, at its time */
    memset(&l->f, 0, sizeof l->f);
    return;
  }
  l->faulty = 1;
  l->f = *f;
  if (l->f.delay_min_ms < 0) l->f.delay_min_ms = 0;
  if (l->f.delay_max_ms < l->f.delay_min_ms) l->f.delay_max_ms = l->f.delay_min_ms;
  l->rng = f->seed;
}

int sg_transport_local_faulty(struct sg_transport *t) {
  struct local *l = as_local(t);
  return l && l->faulty;
}

int sg_transport_local_idle(struct sg_transport *t) {
  struct local *l = as_local(t);
  return !l || (!l->head && !l->delayed && !l->inflight);
}

int sg_transport_local_busy(struct sg_transport *t) {
  struct local *l = as_local(t);
  if (!l) return 0;
  if (l->head || l->inflight) return 1;
  int64_t now = sg_now_ms();
  for (struct lmsg *m = l->delayed; m; m = m->next)
    if (m->due <= now) return 1;
  return 0;
}

int64_t sg_transport_local_next_due(struct sg_transport *t) {
  struct local *l = as_local(t);
  if (!l || !l->delayed) return -1;
  int64_t first = l->delayed->due;
  for (struct lmsg *m = l->delayed->next; m; m = m->next)
    if (m->due < first) first = m->due;
  return first;
}

void sg_transport_local_poke(struct sg_transport *t) {
  struct local *l = as_local(t);
  if (l) release_due(l);
}

void sg_transport_local_counts(struct sg_transport *t, struct sg_fault_counts *c) {
  struct local *l = as_local(t);
  if (l) *c = l->counts;
  else memset(c, 0, sizeof *c);
}
