/* events: GET /v1/events (Server-Sent Events) and the waits of GET /v1/sagas/{id}?wait=, on the table
 * of lifecycle events the engine writes in the commit that made each one true.
 *
 * One tail per host follows the table (sg_store_read SG_READ_EVENTS, never blocking the loop): after
 * every local commit that made events (an observer of the engine), and every EV_POLL_S on a store
 * shared by several hosts, whose events arrive only through the table. What the tail reads goes to
 * a ring of the latest events and to every live subscriber whose filters match. A subscriber that
 * resumes (Last-Event-ID) reads the table from its position, a page at a time, until it reaches the
 * ring, then joins the live ones: a reconnect misses nothing that is still in the store.
 *
 * Bounds: a live subscriber with more than LAG bytes unsent stops getting events pushed and reads
 * them from the store instead, at its own pace (the store is its buffer: nothing is skipped); it
 * joins the live ones again when it has caught up. One whose unsent bytes do not go down for STALL_S
 * is dropped (it resumes from the store when it reconnects), so a stalled client never holds up the
 * host or grows its memory. The ring keeps the last RING events. The tail runs only while someone
 * subscribes or waits. */
#include "events.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store.h"

#define RING 4096               /* latest events kept for subscribers joining the live stream */
#define LAG (256u << 10)        /* unsent bytes past which a subscriber reads from the store */
#define SUB_CAP SG_EVENTS_SUB_CAP /* unsent bytes no subscriber may have (LAG + what one event adds) */
#define STALL_S 10.0            /* a subscriber whose unsent bytes do not go down for this long is dropped */
#define CATCHUP_PAGE 4          /* batches per read of a subscriber catching up */
#define PAGE 16                 /* batches (commits) per read */
#define EV_POLL_S 0.1           /* several hosts: how often the table is read for the others' events */
#define KEEPALIVE_S 15.0        /* a comment line to every subscriber (proxies close quiet connections) */

/* A position in the stream: the event's batch (the row of the commit that wrote it: (txid, id) on
 * PostgreSQL, (0, id) on SQLite) and its place k in it (1-based). An id without ".k" stands for the
 * whole batch (k = ALL): a batch position the store gave, or "0" (before everything). Event ids are
 * "id.k" (SQLite) and "txid-id.k" (PostgreSQL). */
#define ALL UINT32_MAX
struct pos { uint64_t t, i; uint32_t k; };

static int digits(const char *s, const char *end) {
  if (s == end || end - s > 20) return 0;
  for (; s < end; s++) if (*s < '0' || *s > '9') return 0;
  return 1;
}

static int pos_parse(const char *s, struct pos *p) {
  const char *dash = strchr(s, '-'), *dot = strchr(s, '.');
  const char *i0 = dash ? dash + 1 : s, *i1 = dot ? dot : s + strlen(s);
  if ((dash && (!digits(s, dash) || dash > i1)) || !digits(i0, i1) || (dot && !digits(dot + 1, dot + 1 + strlen(dot + 1))))
    return -1;
  p->t = dash ? strtoull(s, NULL, 10) : 0;
  p->i = strtoull(i0, NULL, 10);
  p->k = ALL;
  if (dot) {
    unsigned long long k = strtoull(dot + 1, NULL, 10);
    if (k < 1 || k >= ALL) return -1;
    p->k = (uint32_t)k;
  }
  return 0;
}

static int pos_cmp(struct pos a, struct pos b) {
  if (a.t != b.t) return a.t < b.t ? -1 : 1;
  if (a.i != b.i) return a.i < b.i ? -1 : 1;
  return a.k < b.k ? -1 : a.k > b.k;
}

/* the batch part as the store writes it */
static void batch_pos(char out[48], struct pos p, int dashed) {
  if (dashed) snprintf(out, 48, "%" PRIu64 "-%" PRIu64, p.t, p.i);
  else snprintf(out, 48, "%" PRIu64, p.i);
}

/* One event of a batch read back (sg_event_line_next), with its position and its batch's host */
struct line {
  struct pos pos;
  struct sg_event_row ev;
};

static int next_line(char **at, struct line *l, const char *host_id) {
  if (!sg_event_line_next(at, &l->ev)) return 0;
  l->ev.host_id = host_id;
  return 1;
}

/* the event id of the event at p (docs/events.md) */
static void event_id(char id[80], struct pos p, int dashed) {
  if (dashed) snprintf(id, 80, "%" PRIu64 "-%" PRIu64 ".%u", p.t, p.i, p.k);
  else snprintf(id, 80, "%" PRIu64 ".%u", p.i, p.k);
}

/* "id: ...\ndata: {...}\n\n" (docs/events.md) */
static void frame(struct sg_buf *b, const struct line *l, int dashed) {
  const struct sg_event_row *ev = &l->ev;
  char id[80], ts[32];
  event_id(id, l->pos, dashed);
  sg_buf_printf(b, "id: %s\ndata: {\"event_id\":\"%s\",\"kind\":", id, id);
  sg_buf_add_json_str(b, ev->kind);
  if (!ev->saga_id) { /* a definition's */
    sg_buf_adds(b, ",\"file\":"); sg_buf_add_json_str(b, ev->step_name);
    sg_buf_adds(b, ",\"version\":"); sg_buf_add_json_str(b, ev->outcome);
    sg_buf_adds(b, ",\"error\":"); sg_buf_add_json_str(b, ev->detail);
  } else {
    sg_buf_adds(b, ",\"saga_id\":"); sg_buf_add_json_str(b, ev->saga_id);
    sg_buf_adds(b, ",\"type\":"); sg_buf_add_json_str(b, ev->type);
    sg_buf_adds(b, ",\"status\":"); sg_buf_add_json_str(b, ev->status);
    sg_buf_printf(b, ",\"step\":%d,\"step_name\":", ev->step + 1);
    sg_buf_add_json_str(b, ev->step_name);
    sg_buf_adds(b, ",\"phase\":"); sg_buf_add_json_str(b, sg_phase_name(ev->phase));
    sg_buf_printf(b, ",\"attempt\":%d,\"outcome\":", ev->attempt);
    sg_buf_add_json_str(b, ev->outcome);
    sg_buf_adds(b, ",\"detail\":"); sg_buf_add_json_str(b, ev->detail);
    sg_buf_printf(b, ",\"duration_ms\":%" PRId64, ev->duration_ms);
  }
  sg_iso8601(ev->at, ts);
  sg_buf_printf(b, ",\"at\":\"%s\",\"host_id\":", ts);
  sg_buf_add_json_str(b, ev->host_id);
  sg_buf_adds(b, "}\n\n");
}

/* one event of the ring, formatted once for every subscriber */
struct rec {
  struct line l;                /* its strings point into blob */
  char *blob;
  int terminal;
  char *frame;                  /* "id: ...\ndata: {...}\n\n", made when a subscriber first wants it */
  size_t len;
};

enum sub_state { SUB_INIT, SUB_CATCHUP, SUB_LIVE };

/* A subscriber's output (an HTTP stream of Server-Sent Events, or another API's, sg_events_subscribe_sink);
 * out is NULL once it has ended. */
struct sg_events_sub {
  struct sg_events *h;
  const struct sg_events_sink *sink;
  void *out;
  struct sg_http_req *req;      /* GET /v1/events kept until the tail's position is known (out is NULL) */
  char *saga, *type;            /* filters, NULL = any */
  int status;                   /* filter, -1 = any */
  char from[48];                /* Last-Event-ID, "" = new events only */
  struct pos pos;               /* the last event this subscriber has been given (or skipped by filter) */
  enum sub_state state;
  int reading;                  /* a catch-up read on its way */
  ev_timer again;               /* a paused catch-up goes on */
  size_t unsent;                /* while paused: the least unsent bytes seen, and since when */
  ev_tstamp since;
  struct sg_events_sub *prev, *next;
};

struct waiter {
  struct sg_events *h;
  char id[40];
  sg_events_wait_cb cb;
  void *ud;
  int armed;
  ev_timer timer;
  struct waiter *prev, *next;
};

struct sg_events {
  struct ev_loop *loop;
  struct sg_engine *en;
  int shared;                   /* several hosts write the table: poll it */
  int inited;                   /* pos is the tail's position */
  char pos[48];                 /* where the tail is (the store's text) */
  struct pos tail;              /* the same, parsed */
  struct pos base;              /* the position just before ring[0] */
  struct rec ring[RING];
  size_t head, n;               /* ring[head] is the oldest of n */
  int reading, again;           /* a tail read on its way; another one is due after it */
  int dashed;                   /* positions are txid-id (PostgreSQL) */
  ev_timer poll, keepalive;
  struct sg_events_sub *subs;
  struct waiter *waiters;
  size_t nsubs, nwaiters;
  int64_t dropped;              /* subscribers dropped for not reading */
  int inflight;                 /* reads and after-commit calls on their way (they hold pointers to us) */
  int stopping;                 /* sg_events_free was called: freed when inflight reaches 0 */
};

static void final_free(struct sg_events *h);

/* a read or after-commit call of ours has come back; 1 when the host is stopping (and h may be gone) */
static int came_back(struct sg_events *h) {
  h->inflight--;
  if (!h->stopping) return 0;
  if (!h->inflight) final_free(h);
  return 1;
}

static void tail_kick(struct sg_events *h);

static void rec_free(struct rec *r) {
  free(r->blob); free(r->frame);
  memset(r, 0, sizeof *r);
}

/* a copy of l in r: its strings in one allocation */
static void rec_set(struct rec *r, const struct line *l) {
  const char **f[] = { &r->l.ev.kind, &r->l.ev.saga_id, &r->l.ev.type, &r->l.ev.status, &r->l.ev.step_name,
                       &r->l.ev.outcome, &r->l.ev.detail, &r->l.ev.host_id };
  r->l = *l;
  size_t n = 0;
  for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) n += *f[i] ? strlen(*f[i]) + 1 : 0;
  char *o = r->blob = sg_xmalloc(n ? n : 1);
  for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) {
    if (!*f[i]) continue;
    size_t len = strlen(*f[i]) + 1;
    memcpy(o, *f[i], len);
    *f[i] = o;
    o += len;
  }
  r->terminal = l->ev.kind && !strcmp(l->ev.kind, "terminal");
  r->frame = NULL;
  r->len = 0;
}

static int matches(const struct sg_events_sub *s, const char *saga_id, const char *type, const char *status);

static void rec_frame(const struct sg_events *h, struct rec *r) {
  struct sg_buf b;
  sg_buf_init(&b);
  frame(&b, &r->l, h->dashed);
  r->len = b.len;
  r->frame = sg_buf_steal(&b);
}

static int rec_matches(const struct sg_events_sub *s, const struct rec *r) {
  return matches(s, r->l.ev.saga_id, r->l.ev.type, r->l.ev.status);
}

static void ring_clear(struct sg_events *h) {
  for (size_t k = 0; k < h->n; k++) rec_free(&h->ring[(h->head + k) % RING]);
  h->head = h->n = 0;
}

static int active(const struct sg_events *h) { return h->nsubs + h->nwaiters > 0; }

/* nobody follows any more: forget the tail (it is read again, from the end, when someone comes) */
static void http_open(struct sg_events_sub *s);

static void maybe_idle(struct sg_events *h) {
  if (active(h)) return;
  ev_timer_stop(h->loop, &h->poll);
  ev_timer_stop(h->loop, &h->keepalive);
  if (!h->reading) {
    h->inited = 0;
    ring_clear(h);
  }
}

static int matches(const struct sg_events_sub *s, const char *saga_id, const char *type, const char *status) {
  if (s->saga && (!saga_id || strcmp(s->saga, saga_id))) return 0;
  if (s->type && (!type || strcmp(s->type, type))) return 0;
  if (s->status >= 0 && (!status || sg_status_parse(status) != s->status)) return 0;
  return 1;
}

static void sub_free(struct sg_events_sub *s) {
  struct sg_events *h = s->h;
  ev_timer_stop(h->loop, &s->again);
  if (s->prev) s->prev->next = s->next;
  else h->subs = s->next;
  if (s->next) s->next->prev = s->prev;
  h->nsubs--;
  free(s->saga);
  free(s->type);
  free(s);
}

static size_t sub_pending(const struct sg_events_sub *s) { return s->sink->pending(s->out); }

/* ends a subscriber's output: what is buffered is still sent, unless it does not read (abort) */
static void sub_drop(struct sg_events_sub *s, int abort, int code, const char *why) {
  sg_info("events: dropping a subscriber: %s", why);
  s->sink->end(s->out, abort, code, why);
  if (s->reading) { s->out = NULL; s->state = SUB_INIT; return; } /* freed when its read answers */
  struct sg_events *h = s->h;
  sub_free(s);
  maybe_idle(h);
}

/* 0, or -1 after dropping s (it does not read fast enough) */
static int sub_write(struct sg_events_sub *s, const char *frame, size_t len) {
  if (s->sink->write(s->out, frame, len) == 0) return 0;
  s->h->dropped++;
  sub_drop(s, 1, SG_E_TOOBIG, "it does not read (its unsent events are over 4 MiB); it resumes from its last event"
           " id when it reconnects");
  return -1;
}

/* one event's bytes for s, added to b: an SSE frame, or what the sink makes of it */
static void sub_format(struct sg_events_sub *s, struct sg_buf *b, const struct line *l) {
  if (!s->sink->format) { frame(b, l, s->h->dashed); return; }
  char id[80];
  event_id(id, l->pos, s->h->dashed);
  s->sink->format(s->out, b, id, &l->ev);
}

/* an event of the ring to s (an SSE frame is made once for every HTTP subscriber); as sub_write */
static int sub_write_rec(struct sg_events_sub *s, struct rec *r) {
  if (!s->sink->format) {
    if (!r->frame) rec_frame(s->h, r);
    return sub_write(s, r->frame, r->len);
  }
  struct sg_buf b;
  sg_buf_init(&b);
  sub_format(s, &b, &r->l);
  int rc = b.len ? sub_write(s, b.data, b.len) : 0;
  sg_buf_free(&b);
  return rc;
}

/* the ring's events after s->pos, then s is live */
static void catchup_pause(struct sg_events_sub *s);

/* s has more than LAG unsent: it reads from the store from its position once it has sent some */
static void sub_lag(struct sg_events_sub *s) {
  s->state = SUB_CATCHUP;
  catchup_pause(s);
}

/* the ring's events after s->pos, then s is live (or, if that was too much at once, it catches up) */
static int sub_join(struct sg_events_sub *s) {
  struct sg_events *h = s->h;
  for (size_t k = 0; k < h->n; k++) {
    struct rec *r = &h->ring[(h->head + k) % RING];
    if (pos_cmp(r->l.pos, s->pos) <= 0) continue;
    s->pos = r->l.pos;
    if (!rec_matches(s, r)) continue;
    if (sub_write_rec(s, r) < 0) return -1;
    if (sub_pending(s) > LAG) { sub_lag(s); return 0; }
  }
  s->pos = h->tail; /* (a position past the end is another store's: live from here) */
  s->state = SUB_LIVE;
  return 0;
}

static void catchup_read(struct sg_events_sub *s);

static void on_catchup(struct sg_read *rd) {
  struct sg_events_sub *s = rd->ud;
  struct sg_events *h = s->h;
  s->reading = 0;
  if (h->stopping) {
    sg_read_free(rd);
    sub_free(s);
    came_back(h);
    return;
  }
  came_back(h);
  if (!s->out) { /* dropped meanwhile */
    sub_free(s);
    sg_read_free(rd);
    maybe_idle(h);
    return;
  }
  if (rd->rc < 0) {
    char line[700];
    snprintf(line, sizeof line, "cannot resume from %s: %s", rd->a, rd->err.msg);
    int code = rd->err.code == SG_E_INVALID ? SG_E_INVALID : SG_E_UNAVAILABLE;
    sg_read_free(rd);
    sub_drop(s, 0, code, line);
    return;
  }
  struct sg_buf b;
  sg_buf_init(&b);
  int full = 0;
  size_t room = LAG - (sub_pending(s) < LAG ? sub_pending(s) : LAG);
  for (size_t k = 0; k < rd->nevents && !full; k++) {
    struct pos bp;
    if (pos_parse(rd->events[k].pos, &bp) < 0) continue;
    char *at = rd->events[k].body;
    struct line l;
    for (uint32_t n = 1; next_line(&at, &l, rd->events[k].host_id); n++) {
      l.pos = bp;
      l.pos.k = n;
      if (pos_cmp(l.pos, s->pos) <= 0) continue; /* the first batch: what the client had */
      s->pos = l.pos;
      if (matches(s, l.ev.saga_id, l.ev.type, l.ev.status)) sub_format(s, &b, &l);
      if (b.len >= room) { full = 1; break; } /* the rest when these are sent (read again from here) */
    }
    if (!full) {
      bp.k = ALL; /* the whole batch is behind */
      s->pos = bp;
    }
  }
  size_t got = rd->nevents;
  sg_read_free(rd);
  if (b.len && sub_write(s, b.data, b.len) < 0) { sg_buf_free(&b); return; }
  sg_buf_free(&b);
  if (full) { catchup_pause(s); return; }
  /* reached the ring (or the end of what the store has): live from here */
  if (pos_cmp(s->pos, s->h->base) >= 0 || got < CATCHUP_PAGE) { sub_join(s); return; }
  catchup_read(s);
}

static void catchup_read(struct sg_events_sub *s) {
  char at[48];
  batch_pos(at, s->pos, s->h->dashed);
  struct sg_read *rd = sg_read_new(SG_READ_EVENTS, at, NULL, on_catchup, s);
  rd->limit = CATCHUP_PAGE;
  rd->incl = s->pos.k != ALL; /* within a batch: the rest of it too */
  s->reading = 1;
  s->h->inflight++;
  sg_engine_read(s->h->en, rd);
}

/* s goes on reading from the store once its client has taken some of what is unsent */
static void catchup_pause(struct sg_events_sub *s) {
  s->unsent = sub_pending(s);
  s->since = ev_now(s->h->loop);
  ev_timer_again(s->h->loop, &s->again);
}

static void on_again(struct ev_loop *loop, ev_timer *w, int revents) {
  struct sg_events_sub *s = w->data;
  size_t unsent = sub_pending(s);
  if (unsent > LAG / 2) {
    if (unsent < s->unsent) { /* it reads, slowly */
      s->unsent = unsent;
      s->since = ev_now(loop);
    } else if (ev_now(loop) - s->since > STALL_S) {
      ev_timer_stop(loop, w);
      s->h->dropped++;
      sub_drop(s, 1, SG_E_TOOBIG, "it does not read (nothing of its unsent events was taken for 10 s); it resumes from its last"
                     " event id when it reconnects");
    }
    return;
  }
  ev_timer_stop(loop, w);
  catchup_read(s);
}

/* the tail is known: s starts (from its Last-Event-ID, or from now) */
static void sub_start(struct sg_events_sub *s) {
  if (!s->from[0]) {
    s->pos = s->h->tail;
    s->state = SUB_LIVE;
    return;
  }
  struct pos p;
  if (pos_parse(s->from, &p) < 0) {
    char line[200];
    int n = snprintf(line, sizeof line, ": malformed Last-Event-ID '%.60s': starting with new events\n\n", s->from);
    if (!s->sink->format && sub_write(s, line, (size_t)n) < 0) return; /* an SSE comment */
    s->pos = s->h->tail;
    s->state = SUB_LIVE;
    return;
  }
  s->pos = p;
  if (pos_cmp(p, s->h->base) >= 0) { sub_join(s); return; }
  s->state = SUB_CATCHUP;
  catchup_read(s);
}

static void waiter_free(struct waiter *w) {
  struct sg_events *h = w->h;
  ev_timer_stop(h->loop, &w->timer);
  if (w->prev) w->prev->next = w->next;
  else h->waiters = w->next;
  if (w->next) w->next->prev = w->prev;
  h->nwaiters--;
  free(w);
}

/* a waiter's callback; it is freed when the callback says it is done */
static void waiter_call(struct waiter *w, int what) {
  struct sg_events *h = w->h;
  if (w->cb(w->ud, what)) {
    waiter_free(w);
    maybe_idle(h);
  }
}

static void on_wait_timeout(struct ev_loop *loop, ev_timer *t, int revents) {
  waiter_call(t->data, SG_EVENTS_WAIT_TIMEOUT);
}

/* events read by the tail: into the ring, to the live subscribers, to the waiters */
static void tail_deliver(struct sg_events *h, struct sg_read *rd) {
  for (size_t k = 0; k < rd->nevents; k++) {
    struct pos bp;
    if (pos_parse(rd->events[k].pos, &bp) < 0) continue;
    char *at = rd->events[k].body;
    struct line l;
    for (uint32_t n = 1; next_line(&at, &l, rd->events[k].host_id); n++) {
      l.pos = bp;
      l.pos.k = n;
      if (h->n == RING) { /* the oldest goes */
        struct rec *old = &h->ring[h->head];
        h->base = old->l.pos;
        rec_free(old);
        h->head = (h->head + 1) % RING;
        h->n--;
      }
      struct rec *r = &h->ring[(h->head + h->n++) % RING];
      rec_set(r, &l);
      h->tail = l.pos;
      for (struct sg_events_sub *s = h->subs, *next; s; s = next) {
        next = s->next;
        if (s->state != SUB_LIVE || pos_cmp(l.pos, s->pos) <= 0) continue;
        s->pos = l.pos;
        if (!rec_matches(s, r)) continue;
        if (sub_write_rec(s, r) < 0) continue; /* an SSE frame is formatted once, for the first that wants it */
        if (sub_pending(s) > LAG) sub_lag(s); /* the rest from the store, at its pace */
      }
      if (r->terminal && r->l.ev.saga_id)
        for (struct waiter *w = h->waiters, *next; w; w = next) {
          next = w->next;
          if (w->armed && !strcmp(w->id, r->l.ev.saga_id)) waiter_call(w, SG_EVENTS_WAIT_TERMINAL);
        }
    }
  }
}

static void on_tail(struct sg_read *rd) {
  struct sg_events *h = rd->ud;
  h->reading = 0;
  if (came_back(h)) { sg_read_free(rd); return; }
  if (rd->rc < 0) {
    sg_warn("events: reading the event table: %s", rd->err.msg);
    sg_read_free(rd);
    if (!active(h)) maybe_idle(h);
    return; /* the next commit or poll tries again */
  }
  size_t got = rd->nevents;
  if (!h->inited) {
    snprintf(h->pos, sizeof h->pos, "%s", rd->pos);
    pos_parse(h->pos, &h->tail); /* a batch position: k = ALL, the whole batch is behind */
    h->dashed = strchr(h->pos, '-') != NULL;
    h->base = h->tail;
    h->inited = 1;
    sg_read_free(rd);
    for (struct sg_events_sub *s = h->subs, *next; s; s = next) {
      next = s->next;
      if (s->state == SUB_INIT && !s->out && s->req) http_open(s);
      else if (s->state == SUB_INIT && s->out) sub_start(s);
    }
    for (struct waiter *w = h->waiters, *next; w; w = next) {
      next = w->next;
      if (!w->armed) {
        w->armed = 1;
        waiter_call(w, SG_EVENTS_WAIT_ARMED);
      }
    }
  } else {
    tail_deliver(h, rd);
    snprintf(h->pos, sizeof h->pos, "%s", rd->pos);
    struct pos end;
    if (pos_parse(h->pos, &end) == 0) h->tail = end; /* the last batch is behind, whole */
    sg_read_free(rd);
  }
  if (!active(h)) { maybe_idle(h); return; }
  if (h->again || got == PAGE) { h->again = 0; tail_kick(h); }
}

static void tail_read(void *ud, int status) {
  struct sg_events *h = ud;
  (void)status;
  if (came_back(h)) return;
  if (!active(h)) { h->reading = 0; maybe_idle(h); return; }
  struct sg_read *rd = sg_read_new(SG_READ_EVENTS, h->inited ? h->pos : NULL, NULL, on_tail, h);
  rd->limit = PAGE;
  h->inflight++;
  sg_engine_read(h->en, rd);
}

/* reads the table after the commit on its way (reads never show what is not committed) */
static void tail_kick(struct sg_events *h) {
  if (h->stopping || !active(h)) return;
  if (h->reading) { h->again = 1; return; }
  h->reading = 1;
  h->inflight++;
  sg_engine_after_commit(h->en, tail_read, h);
}

static void on_poll(struct ev_loop *loop, ev_timer *w, int revents) { tail_kick(w->data); }

static void on_keepalive(struct ev_loop *loop, ev_timer *w, int revents) {
  struct sg_events *h = w->data;
  for (struct sg_events_sub *s = h->subs, *next; s; s = next) {
    next = s->next;
    if (s->out && !s->sink->format) sub_write(s, ": keepalive\n\n", 13); /* SSE only */
  }
}

/* someone follows now: the tail runs */
static void wake(struct sg_events *h) {
  if (h->shared && !ev_is_active(&h->poll)) ev_timer_again(h->loop, &h->poll);
  if (h->nsubs && !ev_is_active(&h->keepalive)) ev_timer_again(h->loop, &h->keepalive);
  if (!h->inited) tail_kick(h);
}

static void on_event(void *ud, const struct sg_event *ev) {
  (void)ev;
  tail_kick(ud);
}

struct sg_events *sg_events_new(struct ev_loop *loop, struct sg_engine *en, int shared) {
  struct sg_events *h = sg_xcalloc(1, sizeof *h);
  h->loop = loop;
  h->en = en;
  h->shared = shared;
  ev_timer_init(&h->poll, on_poll, 0., EV_POLL_S);
  h->poll.data = h;
  ev_timer_init(&h->keepalive, on_keepalive, 0., KEEPALIVE_S);
  h->keepalive.data = h;
  sg_engine_observe(en, on_event, h);
  return h;
}

static void final_free(struct sg_events *h) {
  ring_clear(h);
  free(h);
}

void sg_events_free(struct sg_events *h) {
  if (!h) return;
  h->stopping = 1;
  ev_timer_stop(h->loop, &h->poll);
  ev_timer_stop(h->loop, &h->keepalive);
  for (struct sg_events_sub *s = h->subs, *next; s; s = next) {
    next = s->next;
    if (s->out) s->sink->end(s->out, 0, 0, "the host is stopping");
    s->out = NULL;
    if (!s->reading) sub_free(s); /* else when its read comes back */
  }
  while (h->waiters) waiter_free(h->waiters);
  if (!h->inflight) final_free(h);
}

void sg_events_unsubscribe(struct sg_events_sub *s) {
  s->out = NULL;
  if (s->reading) return; /* freed when its read answers */
  struct sg_events *h = s->h;
  sub_free(s);
  maybe_idle(h);
}

static void on_stream_closed(void *ud, struct sg_http_stream *st) {
  sg_http_stream_end(st); /* frees it: the client is gone */
  sg_events_unsubscribe(ud);
}

/* GET /v1/events: Server-Sent Events on an HTTP stream */
static int http_write(void *out, const char *data, size_t n) { return sg_http_stream_write(out, data, n) == 0 ? 0 : -1; }
static size_t http_pending(void *out) { return sg_http_stream_pending(out); }
static void http_end(void *out, int abort, int code, const char *why) {
  if (code && code != SG_E_TOOBIG) { /* say why in a comment line (a client that does not read would not see it) */
    char line[800];
    int n = snprintf(line, sizeof line, ": %s\n\n", why);
    sg_http_stream_write(out, line, (size_t)(n < (int)sizeof line ? n : (int)sizeof line - 1));
  }
  if (abort) sg_http_stream_abort(out);
  else sg_http_stream_end(out);
}
static const struct sg_events_sink http_sink = { NULL, http_write, http_pending, http_end };

/* a new subscriber on sink/out (not yet started) */
static struct sg_events_sub *sub_new(struct sg_events *h, const char *saga, const char *type, int status, const char *from) {
  struct sg_events_sub *s = sg_xcalloc(1, sizeof *s);
  s->h = h;
  s->saga = saga && *saga ? sg_strdup(saga) : NULL;
  s->type = type && *type ? sg_strdup(type) : NULL;
  s->status = status;
  snprintf(s->from, sizeof s->from, "%s", from ? from : "");
  ev_timer_init(&s->again, on_again, 0., 0.05);
  s->again.data = s;
  return s;
}

static void sub_link(struct sg_events *h, struct sg_events_sub *s) {
  s->next = h->subs;
  if (h->subs) h->subs->prev = s;
  h->subs = s;
  h->nsubs++;
}

/* the filters' and the resume id's error, or NULL; *st the status (-1 = any) */
static const char *check_filters(const char *status, const char *from, int *st) {
  struct pos p;
  *st = -1;
  if (status && *status && (*st = sg_status_parse(status)) < 0)
    return "unknown status (use running, compensating, completed, compensated, compensation_failed or resolved)";
  if (from && strlen(from) >= 48) return "malformed Last-Event-ID: too long to be an event id";
  if (from && *from && pos_parse(from, &p) < 0)
    return "malformed Last-Event-ID: send back the id of an event this stream gave (e.g. 12.3 or 745-12.3), or 0";
  return NULL;
}

struct sg_events_sub *sg_events_subscribe_sink(struct sg_events *h, const struct sg_events_filter *f,
                                               const struct sg_events_sink *sink, void *out, struct sg_error *e) {
  int st;
  const char *bad = check_filters(f->status, f->last_event_id, &st);
  if (bad) { sg_errorf(e, SG_E_INVALID, "%s", bad); return NULL; }
  struct sg_events_sub *s = sub_new(h, f->saga, f->type, st, f->last_event_id);
  s->sink = sink;
  s->out = out;
  sub_link(h, s);
  wake(h);
  if (h->inited) sub_start(s);
  return s;
}

/* the answer to a GET /v1/events that waited for the tail's position: the stream opens now, so that
 * whatever its client does once it sees it open comes after that position */
static void http_open(struct sg_events_sub *s) {
  struct sg_http_req *req = s->req;
  s->req = NULL;
  s->out = sg_http_stream_open(req, "text/event-stream", SUB_CAP, on_stream_closed, s);
  if (!s->out) {
    struct sg_events *h = s->h;
    sub_free(s);
    maybe_idle(h);
    return;
  }
  /* the first bytes: the client knows it is connected */
  if (sub_write(s, "retry: 2000\n\n", 13) < 0) return;
  sub_start(s);
}

void sg_events_subscribe(struct sg_events *h, struct sg_http_req *req) {
  const char *saga = sg_http_query(req, "saga");
  const char *type = sg_http_query(req, "type");
  const char *status = sg_http_query(req, "status");
  const char *from = sg_http_header(req, "Last-Event-ID");
  if (!from || !*from) from = sg_http_query(req, "last_event_id");
  int st;
  const char *bad = check_filters(status, from, &st);
  if (bad) { sg_http_reply_error(req, 400, bad); return; }
  struct sg_events_sub *s = sub_new(h, saga, type, st, from);
  s->sink = &http_sink;
  if (!h->inited) { /* answered when the tail's position is known (http_open) */
    s->req = req;
    sub_link(h, s);
    wake(h);
    return;
  }
  s->out = sg_http_stream_open(req, "text/event-stream", SUB_CAP, on_stream_closed, s);
  if (!s->out) {
    free(s->saga); free(s->type); free(s);
    return;
  }
  sub_link(h, s);
  /* the first bytes send the headers: the client knows it is connected */
  if (sub_write(s, "retry: 2000\n\n", 13) < 0) return;
  wake(h);
  if (h->inited) sub_start(s);
}

void sg_events_wait(struct sg_events *h, const char *saga_id, double timeout_s, sg_events_wait_cb cb, void *ud) {
  struct waiter *w = sg_xcalloc(1, sizeof *w);
  w->h = h;
  snprintf(w->id, sizeof w->id, "%s", saga_id);
  w->cb = cb;
  w->ud = ud;
  ev_timer_init(&w->timer, on_wait_timeout, timeout_s, 0.);
  w->timer.data = w;
  ev_timer_start(h->loop, &w->timer);
  w->next = h->waiters;
  if (h->waiters) h->waiters->prev = w;
  h->waiters = w;
  h->nwaiters++;
  wake(h);
  if (h->inited) {
    w->armed = 1;
    waiter_call(w, SG_EVENTS_WAIT_ARMED);
  }
}

void sg_events_wait_cancel(struct sg_events *h, void *ud) {
  for (struct waiter *w = h->waiters; w; w = w->next)
    if (w->ud == ud) {
      waiter_free(w);
      maybe_idle(h);
      return;
    }
}

void sg_events_stats(const struct sg_events *h, size_t *subscribers, int64_t *dropped) {
  *subscribers = h->nsubs;
  *dropped = h->dropped;
}
