/* owner: several hosts on one database (a store with host_register: PostgreSQL).
 *
 * Each host works on the sagas it owns: those it started and those it took over. Its claim is a
 * lease on its row in the store, renewed by every commit (the store's fence) and, when the host is
 * idle, by an empty batch every lease/3. Every lease/3 the host also looks for hosts whose lease ran
 * out (and for mail), and when there are some takes their sagas over, a bounded number per round
 * (another round as soon as one ends while there is more, so that several hosts share a dead host's
 * sagas). All of it goes through the store's reads without waiting: the loop never waits for it. A host that finds itself fenced
 * (its epoch moved on: its sagas were taken) drops everything and loads what it still owns
 * (engine.c: eng_fenced).
 *
 * A saga owned by another host is reached through the database: an operator verb is written as mail
 * to the saga (the owner is woken by NOTIFY on its channel, and looks for mail every lease/3 anyway);
 * the owner applies it in a batch that also notifies the sender, which then answers its client.
 * Replies reach the owner by their reply queue: a host that takes a saga over sends the call it waits
 * on again with its own reply queue. */
#include <inttypes.h>
#include <stdio.h>

#include <jansson.h>

#include "engine_int.h"

#define TAKE_PER_ROUND 100
#define MAIL_KIND_VERB "verb"

static struct sg_engine *EN(void *p) { return p; }

/* ---- answers to forwarded verbs ---- */

static void fwd_finish(struct sg_engine *en, size_t i, const struct sg_error *e) {
  struct fwd f = en->fwd[i];
  memmove(&en->fwd[i], &en->fwd[i + 1], (en->nfwd - i - 1) * sizeof *en->fwd);
  en->nfwd--;
  f.cb(f.ud, e);
}

/* "done <req> <code> <message>" from the owner */
static void on_answer(struct sg_engine *en, const char *payload) {
  char req[40];
  int code = 0, off = 0;
  if (sscanf(payload, "done %39s %d %n", req, &code, &off) < 2) return;
  for (size_t i = 0; i < en->nfwd; i++) {
    if (strcmp(en->fwd[i].req, req) != 0) continue;
    if (code == 0) { fwd_finish(en, i, NULL); return; }
    struct sg_error e = {0};
    sg_errorf(&e, code, "%s", off ? payload + off : "refused by the owner");
    fwd_finish(en, i, &e);
    return;
  }
}

static void on_note(void *ud, const char *payload) {
  struct sg_engine *en = EN(ud);
  if (!strcmp(payload, "mail")) en->mail_due = 1;
  else if (!strncmp(payload, "done ", 5)) on_answer(en, payload);
}

static void watch_notes(struct sg_engine *en) {
  int fd = en->store->ops->note_fd(en->store);
  if (fd == en->note_fd) return;
  ev_io_stop(en->loop, &en->note_io);
  en->note_fd = fd;
  if (fd < 0) return;
  ev_io_set(&en->note_io, fd, EV_READ);
  ev_io_start(en->loop, &en->note_io);
}

static void on_note_io(struct ev_loop *loop, ev_io *w, int revents) {
  struct sg_engine *en = w->data;
  en->store->ops->notes(en->store, 1, on_note, en); /* the prepare that follows acts on them */
}

static void expire_forwards(struct sg_engine *en, int64_t now) {
  for (size_t i = 0; i < en->nfwd;) {
    if (en->fwd[i].deadline > now) { i++; continue; }
    struct sg_error e = {0};
    sg_errorf(&e, SG_E_ELSEWHERE, "the host that owns the saga has not confirmed it yet: the verb waits in the"
              " saga's mail and is applied when its owner (or the host that takes it over) reads it");
    fwd_finish(en, i, &e);
  }
}

/* Whether a takeover round or a mail read would find anything (a cheap read without locks): they run
 * only when the answer says so, or when a note says there is mail. */
static void on_probe(struct sg_read *rd) {
  struct sg_engine *en = rd->ud;
  en->probing = 0;
  if (rd->rc == 0 && !en->stopped) {
    if (rd->flags & 1) en->claim_due = 1;
    if (rd->flags & 2) en->mail_due = 1;
  } else if (rd->rc < 0 && !en->stopped) {
    sg_debug("looking for sagas to take over: %s", rd->err.msg);
  }
  sg_read_free(rd);
}

static void on_lease_timer(struct ev_loop *loop, ev_timer *w, int revents) {
  struct sg_engine *en = w->data;
  if (en->broken || en->stopped) return;
  int64_t now = sg_now_ms();
  if (!en->probing) {
    en->probing = 1;
    sg_engine_read(en, sg_read_new(SG_READ_PROBE, en->cfg.host_id, NULL, on_probe, en));
  }
  /* a host that could not reach the store gives the others a lease to renew theirs after it is back:
   * the first one back would otherwise take everyone's sagas (they were cut off as long as it was) */
  if (en->stalled || en->reloading) en->quiet_until = now + en->cfg.lease_ms;
  /* an idle host renews its lease with an empty batch (the commit's fence renews it) */
  if (!en->stalled && !en->reloading && !en->committing && !en->in_txn && now - en->last_commit_ms >= en->cfg.lease_ms / 6) eng_txn(en);
  expire_forwards(en, now);
}

void eng_owner_init(struct sg_engine *en) {
  en->multi = en->store->ops->host_register != NULL;
  en->note_fd = -1;
  if (!en->cfg.host_id || !*en->cfg.host_id) en->cfg.host_id = "sagahost";
  if (en->cfg.lease_ms <= 0) en->cfg.lease_ms = 10000;
  ev_init(&en->lease_timer, on_lease_timer);
  en->lease_timer.data = en;
  ev_init(&en->note_io, on_note_io);
  en->note_io.data = en;
  sg_map_init(&en->mail_taken);
}

int eng_owner_start(struct sg_engine *en, struct sg_error *e) {
  const char *id = en->cfg.host_id && *en->cfg.host_id ? en->cfg.host_id : "sagahost";
  if (en->store->ops->host_register(en->store, id, en->cfg.lease_ms, e) < 0) return -1;
  watch_notes(en);
  if (!ev_is_active(&en->lease_timer)) {
    double every = en->cfg.lease_ms / 3000.0;
    ev_timer_set(&en->lease_timer, every, every);
    ev_timer_start(en->loop, &en->lease_timer);
    ev_unref(en->loop); /* like the sweep: it alone must not keep the loop alive */
  }
  en->claim_due = en->mail_due = 1;
  en->last_commit_ms = sg_now_ms();
  sg_info("host %s registered on the shared database (lease %" PRId64 " ms, renewed every %" PRId64 " ms)", id,
          en->cfg.lease_ms, en->cfg.lease_ms / 3);
  return 0;
}

/* ---- takeover ---- */

static void took_over_log(const char *dead, int64_t expired, int64_t n, int64_t ms) {
  if (!dead[0])
    sg_info("took over %" PRId64 " saga(s) nobody owned (written by a one-host version, or released)", n);
  else if (expired < 0)
    sg_info("took over %" PRId64 " saga(s) of host %s (it stopped and released them) in %" PRId64 " ms", n, dead, ms);
  else
    sg_info("took over %" PRId64 " saga(s) of host %s (lease expired %.1fs ago) in %" PRId64 " ms", n, dead,
            expired / 1000.0, ms);
}

/* A round without blocking the loop (a store with reads without waiting): the claim and what the
 * claimed sagas need run in one transaction on a reads' connection; the sagas go on when it answers. */
static void on_taken(struct sg_read *rd) {
  struct sg_engine *en = rd->ud;
  if (!en->stopped && !en->broken && rd->gen != en->st.fenced && rd->rc > 0 && rd->nrows > 0) {
    /* the host reloaded while the round was on its way: what it took may have committed after the
     * load read what the host owns, so load again */
    en->taking = 0;
    struct sg_error e = {0};
    sg_errorf(&e, SG_E_FENCED, "a takeover round of %zu saga(s) ended after this host reloaded", rd->nrows);
    sg_read_free(rd);
    if (en->reloading) return; /* the reload on its way reads them */
    eng_fenced(en, &e);
    return;
  }
  if (en->stopped || en->broken || rd->gen != en->st.fenced) { /* a reload loaded what this host owns */
    en->taking = 0;
    sg_read_free(rd);
    return;
  }
  if (en->committing || en->stalled) { /* the sagas go on once the store takes the next batch */
    en->taken_wait = rd;
    return;
  }
  en->taking = 0;
  if (rd->rc < 0) {
    if (rd->err.code == SG_E_FENCED) eng_fenced(en, &rd->err);
    else sg_warn("takeover: %s", rd->err.msg);
    sg_read_free(rd);
    return;
  }
  if (rd->rc > 0) {
    struct sg_saga **list = sg_xcalloc(rd->nrows + 1, sizeof *list); /* made live, to go on once loaded */
    size_t n = 0;
    for (size_t i = 0; i < rd->nrows; i++)
      if ((list[n] = eng_adopt(en, &rd->rows[i]))) n++;
    for (size_t i = 0; i < rd->ntimers; i++) eng_adopt_timer(en, &rd->timers[i]);
    for (size_t i = 0; i < rd->njournals; i++) eng_adopt_journal(en, &rd->journals[i]);
    for (size_t i = 0; i < n; i++) eng_adopt_done(en, list[i]);
    free(list);
    took_over_log(rd->owner, rd->before, (int64_t)rd->nrows, sg_now_ms() - en->take_t0);
    en->republish = 1; /* the outbox rows that came with them go out after the next commit */
    eng_txn(en);
    if (rd->nrows >= (size_t)rd->limit) en->claim_due = 1; /* more may be left: another round */
  }
  sg_read_free(rd);
}

void eng_owner_go_on(struct sg_engine *en) {
  struct sg_read *rd = en->taken_wait;
  if (!rd || en->committing || en->stalled) return;
  en->taken_wait = NULL;
  on_taken(rd);
}

void eng_owner_drop(struct sg_engine *en) {
  if (!en->taken_wait) return;
  sg_read_free(en->taken_wait); /* a fence (a reload loads what this host owns) or a stop */
  en->taken_wait = NULL;
  en->taking = 0;
}

static void take_over_start(struct sg_engine *en) {
  en->taking = 1;
  en->take_t0 = sg_now_ms();
  struct sg_read *rd = sg_read_new(SG_READ_TAKEOVER, NULL, NULL, on_taken, en);
  rd->limit = TAKE_PER_ROUND;
  rd->gen = en->st.fenced;
  sg_engine_read(en, rd);
}

/* ---- mail ----
 * One read at a time. Mail acted on is deleted in the batch that acts on it; until a read sent after
 * that batch's commit has come back, a read may still return it: en->mail_taken remembers its id
 * (with the commit count once committed) so that it is not acted on twice. */

struct taken {
  struct sg_engine *en;
  char key[24];              /* the mail id, the map's key */
  int64_t at;                /* 0 = its deletion not committed yet, else 1 + the commit count after it */
};

static struct taken *taken_get(struct sg_engine *en, int64_t id) {
  char key[24];
  snprintf(key, sizeof key, "%" PRId64, id);
  return sg_map_get(&en->mail_taken, key);
}

static void taken_del(struct sg_engine *en, struct taken *t) {
  sg_map_del(&en->mail_taken, t->key);
  free(t);
}

/* The mail a read returned, acted on one at a time, in order, each verb without blocking the loop
 * (sg_engine_verb_cb); a mail is deleted, and its sender answered, in the batch that holds its effect. */
struct mail_job {
  struct sg_engine *en;
  struct sg_read *rd;        /* the read: its mail rows */
  size_t next;               /* the next row to act on */
  struct taken *cur;         /* the one being acted on */
  char *from, *req;          /* its sender */
  char verb[16];
};

static void mail_next(struct mail_job *job);

static void on_mail_committed(void *ud, int status) {
  struct taken *t = ud;
  struct sg_engine *en = t->en;
  if (status == 0) t->at = en->st.commits + 1;
  else taken_del(en, t); /* not deleted: read and acted on again (a fence dropped its effect too) */
}

static void on_mail_verb(void *ud, const struct sg_error *e) {
  struct mail_job *job = ud;
  struct sg_engine *en = job->en;
  struct taken *t = job->cur;
  const struct sg_mail_row *m = &job->rd->mail[job->next - 1];
  job->cur = NULL;
  struct sg_error ne = {0};
  if (e && (e->code == SG_E_FENCED || e->code == SG_E_UNAVAILABLE || en->stopped)) {
    /* it did not happen (the host is stalled, fenced or stopping): the mail stays, read again later */
    taken_del(en, t);
    if (!en->stopped) en->mail_due = 1;
    job->next = job->rd->nmail;
  } else if (eng_txn(en) < 0 || en->store->ops->mail_done(en->store, &m->id, 1, &ne) < 0) {
    sg_warn("mail %" PRId64 ": %s", m->id, ne.msg[0] ? ne.msg : "the store cannot take it now");
    taken_del(en, t);
    job->next = job->rd->nmail;
  } else {
    sg_info("saga %s: %s from host %s (mail %" PRId64 "): %s", m->saga_id, job->verb[0] ? job->verb : "?",
            job->from ? job->from : "?", m->id, e ? e->msg : "applied");
    if (job->from && job->req) {
      char *note = e ? sg_asprintf("done %s %d %.7000s", job->req, e->code, e->msg) : sg_asprintf("done %s 0", job->req);
      if (en->store->ops->notify(en->store, job->from, note, &ne) < 0) sg_warn("answer to %s: %s", job->from, ne.msg);
      free(note);
    }
    sg_engine_after_commit(en, on_mail_committed, t);
  }
  free(job->from);
  free(job->req);
  job->from = job->req = NULL;
  mail_next(job);
}

static void mail_next(struct mail_job *job) {
  struct sg_engine *en = job->en;
  while (job->next < job->rd->nmail) {
    const struct sg_mail_row *m = &job->rd->mail[job->next++];
    if (taken_get(en, m->id)) continue; /* acted on already, its deletion not seen by this read */
    struct taken *t = sg_xcalloc(1, sizeof *t);
    t->en = en;
    snprintf(t->key, sizeof t->key, "%" PRId64, m->id);
    sg_map_put(&en->mail_taken, t->key, t);
    job->cur = t;
    json_t *j = strcmp(m->kind, MAIL_KIND_VERB) == 0 ? json_loads(m->body, 0, NULL) : NULL;
    const char *verb = json_string_value(json_object_get(j, "verb"));
    const char *from = json_string_value(json_object_get(j, "from"));
    const char *req = json_string_value(json_object_get(j, "req"));
    job->from = from ? sg_strdup(from) : NULL;
    job->req = req ? sg_strdup(req) : NULL;
    snprintf(job->verb, sizeof job->verb, "%.15s", verb ? verb : "");
    if (!verb) {
      struct sg_error e = {0};
      sg_errorf(&e, SG_E_INVALID, "malformed mail of kind '%.40s': dropped", m->kind);
      json_decref(j);
      on_mail_verb(job, &e); /* deleted (and its sender, if known, told) */
      return;
    }
    sg_engine_verb_cb(en, m->saga_id, verb, json_string_value(json_object_get(j, "arg")),
                      json_string_value(json_object_get(j, "who")), on_mail_verb, job);
    json_decref(j);
    return; /* on_mail_verb goes on with the next */
  }
  /* the read's last mail is done with: what a read sent after their deletion's commit did not return
   * is gone for good */
  for (size_t i = 0; i < en->mail_taken.cap; i++) { /* (a deletion leaves a tombstone: iterating goes on) */
    if (!sg_map_live(&en->mail_taken, i)) continue;
    struct taken *t = en->mail_taken.slots[i].val;
    if (t->at > 0 && t->at - 1 <= job->rd->before) taken_del(en, t);
  }
  if (job->rd->nmail >= 200) en->mail_due = 1; /* a full page: there may be more */
  en->mail_reading = 0;
  sg_read_free(job->rd);
  free(job);
}

static void on_mail_read(struct sg_read *rd) {
  struct sg_engine *en = rd->ud;
  if (en->stopped || en->broken || rd->gen != en->st.fenced || rd->rc < 0) {
    if (rd->rc < 0 && !en->stopped) sg_warn("mail: %s", rd->err.msg);
    en->mail_reading = 0;
    sg_read_free(rd);
    return;
  }
  struct mail_job *job = sg_xcalloc(1, sizeof *job);
  job->en = en;
  job->rd = rd;
  mail_next(job); /* en->mail_reading stays set until the last one is done with */
}

static void mail_read(struct sg_engine *en) {
  if (en->mail_reading) { en->mail_due = 1; return; }
  en->mail_reading = 1;
  struct sg_read *rd = sg_read_new(SG_READ_MAIL, NULL, NULL, on_mail_read, en);
  rd->gen = en->st.fenced;
  rd->before = en->st.commits; /* the commits this read sees (at least) */
  sg_engine_read(en, rd);
}

void eng_owner_prepare(struct sg_engine *en) {
  en->store->ops->notes(en->store, 0, on_note, en); /* what blocking calls queued meanwhile */
  watch_notes(en);
  if (en->claim_due && sg_now_ms() >= en->quiet_until) {
    en->claim_due = 0;
    if (!en->taking) take_over_start(en);
  }
  if (en->mail_due && !en->taking) { /* (mail may be for sagas being taken: after the round) */
    en->mail_due = 0;
    mail_read(en);
  }
}

void eng_owner_stop(struct sg_engine *en) {
  if (!en->multi) return;
  ev_ref(en->loop);
  ev_timer_stop(en->loop, &en->lease_timer);
  ev_io_stop(en->loop, &en->note_io);
  while (en->nfwd) {
    struct sg_error e = {0};
    sg_errorf(&e, SG_E_UNAVAILABLE, "the host is stopping");
    fwd_finish(en, 0, &e);
  }
  if (en->broken || en->stalled || en->reloading) return; /* its lease runs out by itself */
  struct sg_error e = {0};
  if (en->store->ops->host_release(en->store, &e) < 0) sg_warn("releasing the lease: %s", e.msg);
  else sg_info("lease released: other hosts take over this host's sagas at once");
}

void eng_owner_free(struct sg_engine *en) {
  free(en->fwd);
  for (size_t i = 0; i < en->mail_taken.cap; i++)
    if (sg_map_live(&en->mail_taken, i)) free(en->mail_taken.slots[i].val);
  sg_map_free(&en->mail_taken);
}

/* ---- forwarding ---- */

int sg_engine_forward(struct sg_engine *en, const char *id, const char *verb, const char *arg, const char *who,
                      int64_t timeout_ms, sg_forward_cb cb, void *ud, struct sg_error *e) {
  if (!en->multi) return sg_errorf(e, SG_E_INTERNAL, "no other host shares this store");
  if (en->stalled || en->reloading) return eng_refuse_stalled(en, e);
  if (eng_txn(en) < 0) return sg_errorf(e, SG_E_UNAVAILABLE, "the store cannot write now");
  struct fwd f = { .deadline = sg_now_ms() + timeout_ms, .cb = cb, .ud = ud };
  sg_uuid(f.req);
  json_t *j = json_pack("{s:s, s:s?, s:s?, s:s, s:s}", "verb", verb, "arg", arg, "who", who, "from",
                        en->cfg.host_id ? en->cfg.host_id : "sagahost", "req", f.req);
  char *body = json_dumps(j, JSON_COMPACT);
  json_decref(j);
  int rc = en->store->ops->mail_put(en->store, id, MAIL_KIND_VERB, body, e);
  free(body);
  if (rc < 0) return -1;
  PUSH(en->fwd, en->nfwd, en->capfwd, f);
  en->st.forwarded++;
  return 0;
}
