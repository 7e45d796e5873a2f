/* engine_int: what the engine's files share (engine.c: the state machine, group commit, timers,
 * messages and recovery; breaker.c: circuit breakers; operator.c: operator verbs and plans; runq.c:
 * preempted steps and handlers). Not part of the engine's interface: only those files include it. */
#ifndef SG_ENGINE_INT_H
#define SG_ENGINE_INT_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "map.h"
#include "timers.h"

enum { TM_SLEEP = 1, TM_RETRY, TM_STEP_TIMEOUT, TM_SAGA_TIMEOUT, TM_CALL_TIMEOUT, TM_WAIT_TIMEOUT };
/* a timer without a saga (struct sg_engine_timer: schedules); never stored */
#define TM_NO_SAGA 100

/* One journaled operation of the current attempt. */
struct jent {
  int seq;      /* 1-based position in the attempt */
  int done;     /* result known */
  int is_error; /* result is an error reply */
  char *result; /* JSON, NULL while waiting */
  char *service; /* call: the service called (for its circuit breaker); NULL after a restart */
  int64_t t0_us; /* call with tracing on: when it was issued (its client span's start); 0 after a restart */
  char *cmd;     /* call with tracing on: the command (its client span's name if it is given up), else NULL */
  char *target;  /* call: "service.command" (kept in the journal row's kind: ctx.journal of a partial step) */
  const char *kind; /* "call", "sleep", ... (static strings) */
  int dirty;    /* changed since the last commit: written at the next one if the attempt still runs */
};

/* Circuit breaker of one participant service. */
enum { BR_CLOSED, BR_OPEN, BR_HALF_OPEN };
struct breaker {
  char *service;         /* the participant service */
  int state;             /* BR_* */
  int calls, failures;   /* outcomes in the current window */
  int64_t window_start;  /* when the window began */
  int64_t opened_at;     /* when it last opened */
  int64_t opens;         /* times it opened */
  int probing;           /* half-open: the probe call is in flight */
  struct sg_breaker_config cfg; /* its settings (the host's unless a script set them) */
  struct sg_saga **parked; /* sagas waiting to call this service */
  size_t nparked, capparked;
};

struct sg_saga {
  struct sg_saga_row row;    /* the persisted state (written at the commit when dirty) */
  const struct sg_def *def;  /* the version it runs on */
  int co;                    /* runner coroutine handle, 0 = none (not started, or evicted) */
  int seq;                   /* operations the current run has issued (replay cursor) */
  int wait_seq;              /* operation it is parked on, 0 = not parked on one */
  struct jent *journal;      /* the current attempt's journal, by seq order */
  int njournal, capjournal;
  int stored;                /* its row exists in the store (a new saga is inserted at its first commit) */
  int journaled;             /* journal rows of it may be in the store (deleted when it finishes) */
  int adopting;              /* taken over: its timers and journal are being loaded, it goes on after */
  char *idem_mkey;           /* "type\x1fkey" in en->idem while not yet stored, else NULL */
  struct sg_timer *t_wait;   /* sleep or call timeout */
  struct sg_timer *t_retry;  /* next attempt */
  struct sg_timer *t_step;   /* attempt timeout */
  struct sg_timer *t_saga;   /* saga deadline */
  int dirty;                 /* row changed in this batch */
  int terminal;              /* reached a terminal status in this batch: freed after the commit */
  int stored_status;         /* the status the store has (saga_update skips the status index if same) */
  int admitted;              /* released by its breaker: the next call goes out without asking again */
  int preempted;             /* its step's slice ended: it waits in the run queue to go on */
  struct sg_run_out parked_op; /* a call held back by an open breaker (op != NULL while parked) */
  struct fanout *fan;        /* fan-out (fanout.c): the round of calls it waits on (wait_seq = -its first), or NULL */
  struct sigq *sigq;         /* signals.c: its signals as this host knows them, NULL until first needed */
  struct sg_saga *next_dirty;
};

/* A saga that parked on a reply, to have its coroutine dropped if it still waits later. */
struct evict {
  char id[40];   /* saga id (the saga may be gone by then) */
  int seq;       /* the operation it waits on */
  int attempt;   /* ... in this attempt */
  int64_t at;    /* when it parked */
};

/* Waiting sagas keep no coroutine for long: a sleep of a second or more drops it at once, a reply
 * wait after EVICT_AFTER_MS. The journal restores the step when the saga wakes (replay). */
#define EVICT_SLEEP_MS 1000
#define EVICT_AFTER_MS 2000

/* A command whose handler was preempted: it waits in the run queue with what finishing it needs. */
struct pending_cmd {
  struct sg_msg m;           /* the command (a copy) */
  uint64_t tag;              /* its delivery, acked after the answer commits */
  int chained;               /* a call from a saga of this host: answered without an inbox row */
  int handle;                /* the runner's handler coroutine */
  int64_t t0_us;             /* tracing on: when its handler began (its server span's start) */
  uint64_t *extra_tags;      /* later deliveries of the same message id, acked with it */
  size_t nextra, capextra;
};

/* An entry of the run queue: a step or a handler to continue for one more slice. */
struct runq_ent {
  char id[40];               /* a step: its saga (it may be gone or have moved on by its turn) */
  int co;                    /* a step: the coroutine handle that was preempted */
  struct pending_cmd *cmd;   /* a handler: its command (owned by the entry), NULL for a step */
};

/* A deferred after-commit action. */
struct pending_cb {
  sg_committed_cb cb;
  void *ud;
};

/* A delivery that arrived while the store could not write: handled once it can. */
struct parked_msg {
  struct sg_msg m;           /* a copy */
  uint64_t tag;
  int redelivered;
};

/* A delivered command whose inbox entry is being read (a store with reads without waiting). */
struct inbox_check {
  struct sg_engine *en;
  struct sg_msg m;           /* the command (a copy) */
  uint64_t tag;
  int redelivered;
  int64_t gen;               /* en->st.fenced when the read was sent: a fence in between drops it */
  struct sg_read *rd;        /* the answer, once it came */
  struct parked_msg *extra;  /* deliveries of the same message id meanwhile: handled after it */
  size_t nextra, capextra;
  struct inbox_check *next;  /* the next check in delivery order */
};

/* A start waiting for the store (its idempotency key's read) or for the commit on its way. */
struct start_req {
  struct sg_engine *en;
  char *type, *input, *key, *mkey; /* mkey: "type\x1fkey", NULL without a key */
  char *trace;               /* tracing on: the new saga's trace context (otel.h), else NULL */
  sg_started_cb cb;
  void *ud;
  int64_t gen;
  int looked_up;             /* the store has no saga with the key (read before any saga with it started) */
  int64_t start_at;          /* a delayed start: when its first step starts (ms; 0 = at once) */
  struct start_req *same;    /* later starts with the same key: answered with this one */
};

/* A definition version loaded while a commit was on its way: written in the next batch. */
struct pending_def {
  char *hash, *file, *source; /* a version to record (hash NULL: a failed load, see error) */
  char *error;                /* a file that failed to load: only its event */
};

/* An operator verb whose saga is being read (a store with reads without waiting), or that waits for
 * the commit on its way. */
struct verb_req {
  struct sg_engine *en;
  char id[40];
  char verb[16];
  char *arg, *who;
  sg_verb_cb cb;
  void *ud;
  int64_t gen;               /* en->st.fenced when the read was sent */
  int64_t commits_at;        /* en->st.commits then */
  int tries;
  struct sg_read *rd;        /* the saga as read, NULL before */
};

/* An operator verb sent to the host that owns its saga, waiting for that host's answer. */
struct fwd {
  char req[40];              /* request id, in the answer */
  int64_t deadline;          /* ms */
  sg_forward_cb cb;
  void *ud;
};

/* A delivery to ack once its effect is committed. */
struct pending_ack {
  uint64_t tag;
};

#define READ_CONNS_MAX 8

struct sg_engine {
  struct ev_loop *loop;
  struct sg_store *store;
  struct sg_runner runner;
  struct sg_engine_config cfg;
  struct sg_transport *tr;
  struct sg_timers *timers;
  ev_prepare prepare;        /* group commit point */
  struct sg_map sagas;       /* id -> struct sg_saga*, the live (non-terminal) ones */
  struct sg_map breakers;    /* service -> struct breaker* */
  struct sg_map idem;        /* "type\x1fkey" -> saga started in this batch (not yet in the store) */
  ev_timer sweep;            /* breaker half-open transitions and the stalled-saga sweep */
  int64_t sweeps;            /* sweep ticks so far */
  struct evict *evict;       /* sagas waiting on a reply, oldest first: their coroutines go after a while */
  size_t evict_head, nevict, capevict;
  int in_txn;                /* a store transaction is open */
  int committing;            /* its commit is on its way (commit_start): the next batch waits for it */
  ev_io commit_io;           /* ... on the store's socket */
  int go_on_due;             /* a commit ended inside a caller (settle): the next prepare resumes the rest */
  int broken;                /* a commit failed: the loop was stopped, state must be recovered */
  int stalled;               /* the store refused the batch's commit for a passing reason: it holds the
                              * batch and the engine takes no new work until retry_commit succeeds */
  ev_timer stall_timer;      /* the next retry_commit */
  double stall_delay;        /* its backoff, seconds */
  int64_t stall_since;       /* ms, when the stall began */
  int64_t stall_tries;       /* retries in this stall */
  char stall_error[256];     /* the store's last message */
  struct parked_msg *parked; /* deliveries that arrived meanwhile (or whose inbox read failed), in order */
  ev_timer parked_timer;     /* re-dispatches them after a failed read when there is no stall */
  size_t nparked, capparked;
  int stopped;               /* sg_engine_stop ran */
  struct sg_saga *dirty;     /* sagas to flush before the commit */
  struct sg_saga **done;     /* terminal in this batch, freed after the commit */
  size_t ndone, capdone;
  struct sg_msg *out;        /* messages written to the outbox in this batch */
  size_t nout, capout;
  struct sg_msg *chain;      /* in-process calls to answer before this batch commits */
  size_t nchain, capchain;
  struct pending_ack *acks;  size_t nacks, capacks;
  struct pending_cb *cbs;    size_t ncbs, capcbs;
  int64_t *confirmed;        /* outbox ids to delete in the next batch */
  size_t nconfirmed, capconfirmed;
  int republish;             /* transport (re)connected: publish the whole outbox after the commit */
  struct runq_ent *rq;       /* preempted steps and handlers, in turn order */
  size_t nrq, caprq;
  ev_check rq_check;         /* continues them after the loop has served I/O and timers */
  ev_idle rq_idle;           /* keeps the loop from sleeping while any wait */
  struct sg_map inflight;    /* message id -> struct pending_cmd whose handler is in the run queue */
  sg_terminal_cb on_terminal;
  void *on_terminal_ud;
  sg_commit_cb on_commit;    /* commit durations (/metrics), or NULL */
  void *on_commit_ud;
  int64_t commit_t0;         /* sg_mono_ns() when the commit on its way (or held by a stall) started */
  /* several hosts on one database (owner.c) */
  int multi;                 /* the store has host_register */
  ev_timer lease_timer;      /* every lease/3: renew the lease, look for sagas to take over, read mail */
  ev_io note_io;             /* the store's socket: notes (mail, answers to forwarded verbs) */
  int note_fd;
  int claim_due, mail_due;   /* the next prepare takes over / reads mail */
  int probing;               /* the lease timer's look for work (a read) is on its way */
  int mail_reading;          /* a mail read is on its way */
  int taking;                /* a takeover round (a read) is on its way */
  struct sg_read *taken_wait; /* its answer, come while a commit was on its way: taken in after it */
  int64_t take_t0;           /* ms, when it was sent */
  struct sg_map mail_taken;  /* mail id -> 0 (acted on, its deletion not committed) or 1 + the commit count
                              * after which it is deleted (owner.c) */
  int reloading;             /* fenced: registering again and loading what this host owns */
  ev_timer reload_timer;     /* ... retried while the store cannot be reached */
  int64_t last_commit_ms;
  int64_t quiet_until;       /* ms: no takeover before (just back from an outage: the others renew first) */
  struct fwd *fwd;           /* forwarded verbs waiting for an answer */
  size_t nfwd, capfwd;
  /* reads without waiting (a store with read_start: PostgreSQL) */
  ev_io read_io[READ_CONNS_MAX]; /* the sockets of the store's reads' connections */
  unsigned read_serial[READ_CONNS_MAX]; /* their connections, as read_fd numbers them */
  int read_conns;
  int pruning;               /* retention statements on their way: 1 inbox, 2 sagas, 4 events */
  struct sg_map checking;    /* message id -> struct inbox_check whose read is on its way or waits */
  struct inbox_check *checks, *checks_tail; /* in delivery order: answers are taken in that order
                              * (reads on several connections may come back in any order) */
  struct inbox_check **checked; /* answered while a commit was on its way: handled after it, in order */
  size_t nchecked, capchecked;
  struct sg_map idem_reads;  /* mkey -> struct start_req whose idempotency key is being read */
  struct start_req **starts; /* starts that came while a commit was on its way */
  size_t nstarts, capstarts;
  struct verb_req **verbs;   /* operator verbs likewise */
  size_t nverbs, capverbs;
  struct sg_read *op_pre;    /* the saga a verb read before it runs (saga_for_operator uses it) */
  struct pending_def *defs;  /* definitions loaded while a commit was on its way */
  size_t ndefs, capdefs;
  struct sg_event *pev;      /* lifecycle events of the batch, shown to the observers after its commit */
  size_t npev, cappev;
  struct { sg_event_cb cb; void *ud; } obs[8];
  int nobs;
  struct sg_otel *otel;      /* the span exporter (tracing.c), NULL: tracing off */
  int64_t cmd_t0_us;         /* tracing on: when the handler of the command being answered began */
  /* child sagas (children.c) */
  struct sg_map awaited;     /* child id -> its id (malloc'd, the key too): children some saga here waits on */
  int child_polls;           /* reads of children owned elsewhere on their way (one round at a time) */
  sg_mock_cb mock;           /* the testing kit's mocked participants (sg_engine_set_mock), or NULL */
  void *mock_ud;
  int no_direct;             /* sg_engine_set_direct_calls(en, 0): in-process calls and replies take the transport */
  struct sg_engine_stats st;
};

#define PUSH(arr, n, cap, val) do {                                   \
    if ((n) == (cap)) {                                               \
      (cap) = (cap) ? (cap) * 2 : 16;                                 \
      (arr) = sg_xrealloc((arr), (cap) * sizeof *(arr));              \
    }                                                                 \
    (arr)[(n)++] = (val);                                             \
  } while (0)

/* engine.c */
/* a lifecycle event of s, shown to the observers after the batch commits (outcome, detail copied) */
void eng_event(struct sg_engine *en, int kind, const struct sg_saga *s, const char *outcome, const char *detail,
               int64_t duration_ms);
int eng_refuse_stalled(struct sg_engine *en, struct sg_error *e); /* SG_E_UNAVAILABLE with the store's reason */
int eng_txn(struct sg_engine *en);           /* opens the batch's transaction if needed; -1 if the store failed */
void eng_mark_dirty(struct sg_engine *en, struct sg_saga *s);
struct sg_timer *eng_timer_new(struct sg_engine *en, struct sg_saga *s, int kind, int64_t due, int64_t ref);
void eng_timer_cancel(struct sg_engine *en, struct sg_timer **slot);
const char *eng_step_name(const struct sg_saga *s);
void eng_drop_co(struct sg_engine *en, struct sg_saga *s);
struct sg_saga *eng_saga_new(const struct sg_saga_row *r);
void eng_saga_free(struct sg_saga *s);
void eng_hist_event(struct sg_engine *en, struct sg_saga *s, const char *event, const char *detail);
void eng_finish(struct sg_engine *en, struct sg_saga *s, int status, const char *error);
void eng_give_up(struct sg_engine *en, struct sg_saga *s, const char *why);
void eng_end_attempt(struct sg_engine *en, struct sg_saga *s, const char *status, const char *error);
void eng_begin_attempt(struct sg_engine *en, struct sg_saga *s);
void eng_process(struct sg_engine *en, struct sg_saga *s, struct sg_run_out *out);

/* the attempt number users see: a partial compensation's (SG_PH_PARTIAL) counts from 1 */
int eng_shown_attempt(const struct sg_saga *s);

void eng_command_answered(struct sg_engine *en, const struct sg_msg *m, uint64_t tag, int chained, int record,
                          const char *status, const char *body);

/* fan-out (fanout.c) */
struct jent *eng_journal_find(struct sg_saga *s, int seq);
int eng_perform(struct sg_engine *en, struct sg_saga *s, struct sg_run_out *op, int seq, char **result, char **err);
void eng_replay(struct sg_engine *en, struct sg_saga *s);
void eng_park_co(struct sg_engine *en, struct sg_saga *s, const struct sg_run_out *op); /* eviction bookkeeping */
void eng_step_failed(struct sg_engine *en, struct sg_saga *s, const char *err, int retryable);
/* op "all" (a round of calls): 1 = the saga parked or its step ended, 0 = out holds the step's next run */
int eng_fanout_op(struct sg_engine *en, struct sg_saga *s, struct sg_run_out *out);
/* a call of the round the saga waits on ended: the step goes on once all have */
void eng_fanout_progress(struct sg_engine *en, struct sg_saga *s);
void eng_fanout_clear(struct sg_saga *s);
/* engine.c, for signals.c */
struct jent *eng_journal_add(struct sg_saga *s, int seq, int done, int is_error, const char *result);
void eng_journal_write(struct sg_engine *en, struct sg_saga *s, const char *kind, struct jent *j); /* at the commit */
void eng_wake(struct sg_engine *en, struct sg_saga *s, struct jent *j); /* its operation j has its result */
void eng_store_failed(struct sg_engine *en, const char *what, struct sg_error *e); /* stops the loop */

/* signals.c */
/* SG_OP_WAIT, the handler of ctx:wait (op->name, op->ms = timeout or 0): 0 = *result now, 1 = parked,
 * -1 = *err (engine.c: op_handler) */
int eng_signal_wait(struct sg_engine *en, struct sg_saga *s, struct sg_run_out *op, int seq, char **result,
                    char **err);
void eng_signal_timeout(struct sg_engine *en, struct sg_saga *s, int seq); /* its wait's timeout fired */
void eng_signal_offer(struct sg_engine *en, struct sg_saga *s); /* parked on a wait: a kept signal, if any, wakes it */
int eng_signal_poke(struct sg_engine *en, const char *id, struct sg_error *e); /* mail: signals came from elsewhere */
int eng_signal_message(struct sg_engine *en, const struct sg_msg *m, uint64_t tag); /* 1 = a signal, handled */
void eng_signal_give_back(struct sg_engine *en, struct sg_saga *s); /* its attempt failed: its waits' signals go back */
void eng_signal_free(struct sg_saga *s);

/* tracing.c (called only when en->otel is set) */
struct sg_otel;
/* a call, send or publish of s gets its traceparent (a send's or publish's span is ended at once) */
void eng_trace_outgoing(struct sg_engine *en, const struct sg_saga *s, struct sg_msg *m, int is_call);
/* copy: m, with the traceparent its saga gives it (an outbox row read back from the store) */
void eng_trace_republish(struct sg_engine *en, const struct sg_msg *m, struct sg_msg *copy);
/* the reply to a call of s came: its client span ends */
void eng_trace_reply(struct sg_engine *en, const struct sg_saga *s, const struct sg_msg *reply, const char *service,
                     int64_t start_us, int is_error);
/* a call (message id) that will get no reply: it timed out, or its attempt or saga ended without it;
 * its client span ends now, an error with why */
void eng_trace_call_given_up(struct sg_engine *en, const struct sg_saga *s, const char *message_id,
                             const char *service, const char *cmd, int64_t start_us, const char *why);
/* an operator retries s: what follows is a span of its own, a child of the saga's (s->row.trace changes) */
void eng_trace_retry(struct sg_engine *en, struct sg_saga *s);
/* a command was handled: its server span (a child of its traceparent), whose traceparent goes into tp */
void eng_trace_command(struct sg_engine *en, const struct sg_msg *m, int64_t start_us, const char *status,
                       const char *body, char tp[56]);

void eng_fenced(struct sg_engine *en, const struct sg_error *e); /* drop everything, register again, reload */
int eng_load_owned(struct sg_engine *en, struct sg_error *e);     /* what the store says this host owns */
/* a saga taken over: eng_adopt makes it live (NULL: it is live already, or its definition cannot be
 * loaded), eng_adopt_timer and eng_adopt_journal give it its timers and journal rows (those of other
 * sagas are ignored), eng_adopt_done lets it go on */
struct sg_saga *eng_adopt(struct sg_engine *en, const struct sg_saga_row *r);
void eng_adopt_timer(struct sg_engine *en, const struct sg_timer_row *r);
void eng_adopt_journal(struct sg_engine *en, const struct sg_journal_row *r);
void eng_adopt_done(struct sg_engine *en, struct sg_saga *s);
void eng_park_delivery(struct sg_engine *en, const struct sg_msg *m, uint64_t tag, int redelivered);
void eng_redispatch_parked(struct sg_engine *en);
/* operator.c: verbs that waited for a commit go on (stop: at most until one commits), or are refused */
void eng_verbs_go_on(struct sg_engine *en);
void eng_verbs_refuse(struct sg_engine *en, int code, const char *why);
/* owner.c: a takeover's answer that waited for a commit goes on; or is dropped (a fence, a stop) */
void eng_owner_go_on(struct sg_engine *en);
void eng_owner_drop(struct sg_engine *en);

/* owner.c */
void eng_owner_init(struct sg_engine *en);
int eng_owner_start(struct sg_engine *en, struct sg_error *e); /* registers this host */
void eng_owner_prepare(struct sg_engine *en); /* notes; starts a takeover round or a mail read when due */
void eng_owner_committed(struct sg_engine *en);
void eng_owner_stop(struct sg_engine *en);
void eng_owner_free(struct sg_engine *en);

/* runq.c */
void eng_runq_init(struct sg_engine *en);
void eng_runq_saga(struct sg_engine *en, struct sg_saga *s);          /* s was preempted */
void eng_runq_command(struct sg_engine *en, struct pending_cmd *pc);  /* takes pc */
void eng_runq_stop(struct sg_engine *en);
void eng_runq_free(struct sg_engine *en);

/* engine.c, for children.c */
/* (and eng_journal_add, eng_journal_find, eng_journal_write, eng_wake, declared above) */
void eng_compensate_from(struct sg_engine *en, struct sg_saga *s, int from); /* steps from..0, reverse */
/* starts a saga as a child would (no request trace); looked_up: key is known to be unused */
int eng_start_child(struct sg_engine *en, const char *type, const char *input_json, const char *key, int looked_up,
                    char id[40], int *existed, struct sg_error *e);

/* children.c: child sagas (ctx:run). A parent's wait on a child is a journal entry of kind "run"
 * (or "child_compensate" while its compensation compensates a child) whose result, while pending,
 * names the child: {"child": id, "op": "run" | "compensate"}. */
/* the handler of SG_OP_RUN and SG_OP_CHILD_COMPENSATE (engine.c's ops[]): 1 parked, 0 *result now, -1 *err */
int eng_child_perform(struct sg_engine *en, struct sg_saga *s, struct sg_run_out *op, int seq, char **result,
                      char **err);
int eng_child_pending(const struct jent *j);  /* j waits on a child */
void eng_child_waiting(struct sg_engine *en, struct sg_saga *s, struct jent *j); /* s parked on j again (replay, recovery) */
void eng_child_finished(struct sg_engine *en, struct sg_saga *s); /* s reached a terminal status: its waiters go on */
void eng_child_abandon(struct sg_engine *en, struct sg_saga *s, const char *why); /* s stops waiting: the child gives up */
int eng_child_ran(const struct sg_saga *s); /* its running attempt ran a child that completed, of its own */
int eng_child_in_step(const char *children, int step); /* sagas.children: step started children (compensated with it) */
void eng_children_tick(struct sg_engine *en); /* the sweep: children owned by other hosts are read */
void eng_children_drop(struct sg_engine *en); /* every wait forgotten (fence, free) */

/* breaker.c */
struct breaker *eng_breaker_get(struct sg_engine *en, const char *service);
int eng_breaker_admit(struct breaker *b);   /* may a call go out now (a half-open breaker admits one probe) */
void eng_breaker_record(struct sg_engine *en, const char *service, int failed);
void eng_park(struct sg_engine *en, struct sg_saga *s, struct sg_run_out *out, int seq);
void eng_unpark(struct sg_engine *en, struct sg_saga *s);
void eng_breakers_tick(struct sg_engine *en, int64_t now);
void eng_breakers_free(struct sg_engine *en);
void eng_breakers_unpark_all(struct sg_engine *en);

#endif
