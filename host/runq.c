/* runq: the steps and handlers whose time slice ended (the script runner's forced yield), continued
 * one slice each, in turn, from an ev_check watcher: after the loop has served I/O and timers, so
 * replies, HTTP requests and other sagas go ahead while a long step runs. An ev_idle watcher keeps
 * the loop from sleeping while anything waits here. Part of the engine (engine_int.h). */
#include "engine_int.h"


#include "util.h"

/* One pass over the queue stops after this long, so the loop polls again between passes. */
#define PASS_NS (5 * 1000000LL)

static void push(struct sg_engine *en, struct runq_ent ent) {
  PUSH(en->rq, en->nrq, en->caprq, ent);
  if (!ev_is_active(&en->rq_check) && !en->stopped && !en->stalled && !en->committing) {
    ev_check_start(en->loop, &en->rq_check);
    ev_idle_start(en->loop, &en->rq_idle);
  }
}

void eng_runq_saga(struct sg_engine *en, struct sg_saga *s) {
  struct runq_ent ent = { .co = s->co };
  memcpy(ent.id, s->row.id, sizeof ent.id);
  s->preempted = 1;
  push(en, ent);
}

void eng_runq_command(struct sg_engine *en, struct pending_cmd *pc) {
  struct runq_ent ent = { .cmd = pc };
  push(en, ent);
}

static void cmd_free(struct pending_cmd *pc) {
  sg_msg_free(&pc->m);
  free(pc->extra_tags);
  free(pc);
}

/* One more slice of a preempted step. */
static void step_slice(struct sg_engine *en, const struct runq_ent *ent) {
  struct sg_saga *s = sg_map_get(&en->sagas, ent->id);
  /* it may have finished, timed out, been compensated or moved on while it waited its turn */
  if (!s || s->terminal || !s->preempted || s->co != ent->co) return;
  s->preempted = 0;
  if (eng_txn(en) < 0) return;
  struct sg_run_out out = {0};
  if (en->runner.cont(en->runner.ud, s->co, &out) < 0) {
    sg_run_out_clear(&out);
    out.result = SG_RUN_ERROR;
    out.error = sg_strdup("the step's coroutine could not be continued");
    out.retryable = 1;
  }
  eng_process(en, s, &out);
}

/* One more slice of a preempted handler; 1 if it is still not done. */
static int command_slice(struct sg_engine *en, struct pending_cmd *pc) {
  char *status = NULL, *body = NULL;
  if (en->runner.handle_cont(en->runner.ud, pc->handle, &status, &body) == 1) return 1;
  sg_map_del(&en->inflight, pc->m.message_id);
  en->cmd_t0_us = pc->t0_us;
  eng_command_answered(en, &pc->m, pc->tag, pc->chained, 1, status, body);
  for (size_t i = 0; i < pc->nextra; i++) eng_command_answered(en, &pc->m, pc->extra_tags[i], pc->chained, 0, status, body);
  free(status);
  free(body);
  cmd_free(pc);
  return 0;
}

static void on_check(struct ev_loop *loop, ev_check *w, int revents) {
  struct sg_engine *en = w->data;
  /* this pass takes the queue as it is; what is preempted again goes to the back */
  struct runq_ent *list = en->rq;
  size_t n = en->nrq, i = 0;
  en->rq = NULL;
  en->nrq = en->caprq = 0;
  int64_t end = sg_mono_ns() + PASS_NS;
  for (; i < n && !en->broken && !en->stopped && !en->stalled && !en->committing; i++) {
    if (i > 0 && sg_mono_ns() > end) break;
    if (list[i].cmd) {
      if (command_slice(en, list[i].cmd)) eng_runq_command(en, list[i].cmd);
    } else {
      step_slice(en, &list[i]);
    }
  }
  if (i < n) { /* the rest keep their turn ahead of what was queued during this pass */
    struct runq_ent *again = en->rq;
    size_t nagain = en->nrq;
    en->rq = list;
    en->caprq = n;
    memmove(en->rq, en->rq + i, (n - i) * sizeof *en->rq);
    en->nrq = n - i;
    for (size_t j = 0; j < nagain; j++) PUSH(en->rq, en->nrq, en->caprq, again[j]);
    free(again);
  } else {
    free(list);
  }
  if (!en->nrq || en->stalled || en->committing) { /* stalled: continued when the store can write again */
    ev_check_stop(loop, &en->rq_check);
    ev_idle_stop(loop, &en->rq_idle);
  }
}

static void on_idle(struct ev_loop *loop, ev_idle *w, int revents) {}

void eng_runq_init(struct sg_engine *en) {
  ev_check_init(&en->rq_check, on_check);
  en->rq_check.data = en;
  ev_idle_init(&en->rq_idle, on_idle);
  en->rq_idle.data = en;
}

void eng_runq_stop(struct sg_engine *en) {
  ev_check_stop(en->loop, &en->rq_check);
  ev_idle_stop(en->loop, &en->rq_idle);
}

/* Preempted handlers are dropped unanswered: their deliveries were never acked, so the broker (or a
 * replay of the calling step, in-process) brings them again. */
void eng_runq_free(struct sg_engine *en) {
  for (size_t i = 0; i < en->nrq; i++) {
    struct pending_cmd *pc = en->rq[i].cmd;
    if (!pc) continue;
    en->runner.drop(en->runner.ud, pc->handle);
    cmd_free(pc);
  }
  free(en->rq);
  en->rq = NULL;
  en->nrq = en->caprq = 0;
}
