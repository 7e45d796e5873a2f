/* engine: the saga state machine. Knows nothing of Lua.
 *
 * It owns the in-memory table of live sagas, the group-commit batch (one store transaction per loop
 * iteration, committed from an ev_prepare watcher before the loop sleeps), the durable timers, and the
 * outbox/inbox flow through a transport. Step code runs behind `struct sg_runner` (script.c implements
 * it with one Lua coroutine per running saga).
 *
 * Ownership: the engine borrows the store, the transport and the runner (main.c creates and frees
 * them, after sg_engine_free). Definitions (struct sg_def) belong to the runner and live as long as it. */
#ifndef SG_ENGINE_H
#define SG_ENGINE_H

#include <ev.h>
#include "store.h"
#include "timers.h"
#include "transport.h"

/* A retry policy, with durations already in ms. */
struct sg_retry {
  int attempts;       /* total attempts, >= 1 */
  int exponential;    /* 0 = fixed delay, 1 = exponential backoff */
  int64_t initial_ms; /* first delay */
  int64_t max_ms;     /* cap of the delay */
  double multiplier;  /* growth per attempt (exponential) */
  int jitter;         /* randomise each delay in [delay/2, delay] */
};

/* One step of a definition. */
struct sg_def_step {
  char *name;                  /* step name, unique in its saga */
  int has_compensate;          /* a compensate function exists */
  int compensate_partial;      /* compensate also runs for an attempt that failed after some of its calls
                                * completed (the default; compensate_partial = false turns it off) */
  int64_t timeout_ms;          /* per attempt, 0 = none */
  struct sg_retry retry;       /* policy for the action (step wins over saga over default) */
  struct sg_retry comp_retry;  /* policy for the compensation */
};

/* One version of one saga type. */
struct sg_def {
  char *type;                  /* saga name */
  char *hash;                  /* version: content hash of the file that defined it */
  char *file;                  /* path it was loaded from */
  int nsteps;
  struct sg_def_step *steps;   /* nsteps entries */
  int64_t timeout_ms;          /* whole-saga deadline, 0 = none */
  int has_key;                 /* saga.define{key = ...}: each saga gets a business key (runner.key) */
};

/* What a step run ended with, filled by the runner. Strings are malloc'd and freed by the engine. */
enum sg_run_result {
  SG_RUN_DONE = 0, /* the step function returned: data holds the new ctx.data */
  SG_RUN_OP,       /* it yielded a durable operation: op/a/b/c describe it */
  SG_RUN_ERROR,    /* it raised: error, retryable */
  SG_RUN_FAIL,     /* ctx:fail(reason): give up at once */
  SG_RUN_PREEMPTED, /* its time slice ended: continue it (cont) once the loop has served others */
};
/* The durable operations a step can yield. Each has one handler in engine.c's table (ops[]) and one
 * name: the journal's kind and what lua/saga.lua yields. A new operation is one enum value, one name,
 * one decoder case (sg_op_decode) and one handler. */
enum sg_op {
  SG_OP_NONE = 0,
  SG_OP_CALL,    /* service.name(payload), waits for the reply; ms = timeout (0 = none) */
  SG_OP_SEND,    /* service.name(payload), no reply */
  SG_OP_PUBLISH, /* event name on topic service, payload */
  SG_OP_SLEEP,   /* ms */
  SG_OP_NOW,     /* the time, journaled */
  SG_OP_UUID,    /* a UUID, journaled */
  SG_OP_ALL,     /* fan-out (fanout.c): a round of calls, payload = their JSON list; it takes one operation
                  * number per call, so eng_process hands it to fanout.c instead of ops[]; service: while
                  * an open breaker holds the round back, that breaker's service */
  SG_OP_WAIT,    /* the next signal called name (signals.c); ms = timeout (0 = none) */
  SG_OP_RUN,     /* a child saga of type name with input payload, waited for; key = its idempotency key or NULL */
  SG_OP_CHILD_COMPENSATE, /* a compensation compensates child saga name (its id) and waits for it */
  SG_OP__COUNT
};
/* "call", "send", ...; NULL for SG_OP_NONE or out of range */
const char *sg_op_name(enum sg_op op);
/* the operation named name, or SG_OP_NONE */
enum sg_op sg_op_from_name(const char *name);

struct sg_run_out {
  int result;       /* enum sg_run_result */
  char *data;       /* DONE: ctx.data as JSON */
  enum sg_op op;    /* OP: which operation; its arguments follow */
  char *service;    /* call/send: the service; publish: the topic */
  char *name;       /* call/send: the command; publish: the event; wait: the signal */
  char *payload;    /* call/send/publish: the JSON body (NULL = "{}") */
  int64_t ms;       /* call, wait: its timeout (0 = none); sleep: how long */
  char *key;        /* run: the child's idempotency key ({id = key}), NULL = the parent's own */
  char *error;      /* ERROR/FAIL: message with file:line */
  int retryable;    /* ERROR: may another attempt help */
};
void sg_run_out_clear(struct sg_run_out *o);

struct sg_saga; /* a live saga; defined in engine.c */

/* The step runner (script.c). Every function returns 0, or -1 with e filled for a host-level failure. */
struct sg_runner {
  void *ud;
  /* the definition of type at version hash (NULL hash = newest good version); NULL + e if none */
  const struct sg_def *(*def_get)(void *ud, const char *type, const char *hash, struct sg_error *e);
  /* starts running step `step` of a saga in phase `phase` on a new coroutine (replacing any old one)
   * until it finishes or yields. *handle receives the runner's coroutine handle. */
  int (*start)(void *ud, const struct sg_def *d, const struct sg_saga_row *r, int *handle, struct sg_run_out *out,
               struct sg_error *e);
  /* resumes the coroutine with the result of its last operation */
  int (*resume)(void *ud, int handle, int ok, const char *result, struct sg_run_out *out);
  /* continues a step that returned SG_RUN_PREEMPTED, for one more slice */
  int (*cont)(void *ud, int handle, struct sg_run_out *out);
  /* frees a coroutine (the saga finished its step, or is evicted while it waits; or a preempted
   * handler that will not be continued) */
  void (*drop)(void *ud, int handle);
  /* answers one command for a local participant: returns 0 with *status "ok"/"error" and *body
   * JSON (malloc'd), or 1 when its slice ended first: *handle is set, continue with handle_cont */
  int (*handle)(void *ud, const struct sg_msg *m, int *handle, char **status, char **body);
  /* continues a preempted handler for one more slice; returns like handle */
  int (*handle_cont)(void *ud, int handle, char **status, char **body);
  /* the business key of a new saga of d (d->has_key) with this input: 0 and *key (malloc'd, NULL =
   * none), or -1 with e (SG_E_INVALID: the key function failed or gave no usable key, said how) */
  int (*key)(void *ud, const struct sg_def *d, const char *input_json, char **key, struct sg_error *e);
};

struct sg_engine_config {
  int64_t max_payload;       /* bytes: larger inputs, payloads and ctx.data are refused */
  double breaker_failure_rate; /* a service's breaker opens at this share of failed calls (0 = no breakers) */
  int breaker_min_calls;     /* ... once at least this many calls are in the window */
  int64_t breaker_window_ms; /* the counting window */
  int64_t breaker_open_ms;   /* how long it stays open before a half-open probe */
  int max_deliveries;        /* a redelivered command not handled after this many deliveries is dead-lettered */
  int64_t inbox_retention_ms; /* handled message ids are remembered this long (0 = forever) */
  int64_t saga_retention_ms;  /* finished sagas (not compensation_failed) are kept this long (0 = forever) */
  int64_t event_retention_ms; /* lifecycle events are kept this long (0 = forever) */
  const char *host_id;       /* this host (several hosts on one database: its sagas are claimed under it) */
  int64_t lease_ms;          /* several hosts: how long a host's claim lasts without renewal (default 10 s) */
};

struct sg_engine;

struct sg_engine *sg_engine_new(struct ev_loop *loop, struct sg_store *store, const struct sg_runner *runner,
                                const struct sg_engine_config *cfg);
/* the transport is set after creation because its callbacks point at the engine */
void sg_engine_set_transport(struct sg_engine *en, struct sg_transport *t);
/* the callbacks the transport must be created with */
struct sg_transport_events sg_engine_transport_events(struct sg_engine *en);
/* loads every non-terminal saga, its timers and unsent outbox rows, and resumes them */
int sg_engine_recover(struct sg_engine *en, struct sg_error *e);
/* Several hosts on one database (a store with host_register): registers this host under
 * cfg.host_id, before anything is written (a no-op with a one-host store). */
int sg_engine_register(struct sg_engine *en, struct sg_error *e);
/* commits what is pending and stops the watchers (NULL or a second call: nothing) */
void sg_engine_stop(struct sg_engine *en);
/* as kill -9 (sg_host_crash): stops the watchers like sg_engine_stop but commits nothing pending; a
 * commit already on its way (PostgreSQL) is not waited for, so it may or may not land; who waits for
 * a commit is answered -1 (not acknowledged: not committed, or with PostgreSQL perhaps committed) */
void sg_engine_crash(struct sg_engine *en);
/* a store failure stopped the loop: the process should exit non-zero and be restarted */
int sg_engine_broken(struct sg_engine *en);
void sg_engine_free(struct sg_engine *en);

/* A definition version was loaded: record its source (same batch as everything else). */
int sg_engine_def_loaded(struct sg_engine *en, const char *hash, const char *file, const char *source, struct sg_error *e);
/* a script file failed to load: its event (SG_EV_DEF_FAILED) */
void sg_engine_def_failed(struct sg_engine *en, const char *file, const char *error);

/* Called after the batch holding a request's effect has committed (status: 0 ok, -1 the commit failed,
 * -2 the batch was dropped because another host took this host's sagas over: nothing of it happened). */
typedef void (*sg_committed_cb)(void *ud, int status);
/* Run cb once everything done so far is durable (the next group commit). */
void sg_engine_after_commit(struct sg_engine *en, sg_committed_cb cb, void *ud);

/* Starts a saga. idem_key may be NULL. *id receives its id; *existed = 1 when the key was known.
 * The start is durable once the next after_commit callback runs. */
int sg_engine_start(struct sg_engine *en, const char *type, const char *input_json, const char *idem_key,
                    char id[40], int *existed, struct sg_error *e);
/* The same without waiting for the store: cb gets the answer (id and existed, or e), perhaps before
 * this returns. With a store whose reads do not wait (PostgreSQL) an idempotency key is looked up
 * without blocking the loop, and a start that comes while a commit is on its way waits for its end
 * (instead of blocking on it); starts with the same key share one look-up. */
typedef void (*sg_started_cb)(void *ud, const char *id, int existed, const struct sg_error *e);
/* traceparent, tracestate: W3C Trace Context of the request (may be NULL): with tracing on, the saga's
 * span is a child of it */
void sg_engine_start_cb(struct sg_engine *en, const char *type, const char *input_json, const char *idem_key,
                        const char *traceparent, const char *tracestate, sg_started_cb cb, void *ud);
/* ---- delayed starts and schedules (schedule.c) ----
 * sg_engine_start_cb whose first step starts at start_at (ms since the epoch; 0 or a time that has
 * passed: at once). Until then the saga is stored as running with attempt 0 and attempt_started_at =
 * start_at (the API shows it as "scheduled"); a durable timer (kind retry, attempt 1) starts it. */
void sg_engine_start_at_cb(struct sg_engine *en, const char *type, const char *input_json, const char *idem_key,
                           const char *traceparent, const char *tracestate, int64_t start_at, sg_started_cb cb,
                           void *ud);
/* A timer without a saga, in the engine's timer heap (not stored): cb runs when it is due and the
 * store can be written. The caller owns the struct (t.idx = SIZE_MAX before its first arm); arm again
 * to move it, disarm it before freeing it or the engine. */
struct sg_engine_timer {
  struct sg_timer t;           /* the heap's entry (kind TM_NO_SAGA) */
  void (*cb)(void *ud);        /* called once per arming, out of the heap */
  void *ud;
};
void sg_engine_timer_arm(struct sg_engine *en, struct sg_engine_timer *et, int64_t due);
void sg_engine_timer_disarm(struct sg_engine *en, struct sg_engine_timer *et);
/* One fire of a schedule: claims fire time `at` of `schedule` in the store and, with type (NULL: only
 * claim it: a skipped fire), starts a saga of type with input_json due at once, its idempotency key
 * "schedule:<name>@<at>". 1 = claimed (id filled when a saga started), 0 = claimed before (by this
 * host before a restart, or by another host), -1 e (SG_E_UNAVAILABLE: the store cannot write now). */
int sg_engine_fire(struct sg_engine *en, const char *schedule, int64_t at, const char *type, const char *input_json,
                   char id[40], struct sg_error *e);
/* The store's (for schedule.c's reads of the last fire times). */
struct sg_store *sg_engine_store(struct sg_engine *en);

/* An operator verb ("compensate", "retry", "resolve"; arg is the reason or note) without blocking the
 * loop on the store: cb gets NULL when it is applied (durable at the next after_commit callback) or
 * the error (SG_E_ELSEWHERE: another host owns the saga), perhaps before this returns. */
typedef void (*sg_verb_cb)(void *ud, const struct sg_error *e);
void sg_engine_verb_cb(struct sg_engine *en, const char *id, const char *verb, const char *arg, const char *who,
                       sg_verb_cb cb, void *ud);
/* Lifecycle events. The engine gives them to its observers after the commit that made them true
 * (nothing uncommitted is ever shown; a batch dropped by a fence shows nothing), in the order they
 * happened. Strings are borrowed for the call. */
enum sg_event_kind {
  SG_EV_STARTED,          /* a saga was started (not: recovered or taken over) */
  SG_EV_ATTEMPT_STARTED,  /* an attempt of a step's action or compensation began */
  SG_EV_ATTEMPT_ENDED,    /* it ended: outcome "completed" or "failed" (detail: the error), duration_ms */
  SG_EV_COMPENSATING,     /* the saga gave up going forward (detail: why) and compensates */
  SG_EV_TERMINAL,         /* the saga reached status (outcome: its name) */
  SG_EV_OPERATOR,         /* an operator action (outcome: "operator_compensate", ...; detail: who and why) */
  SG_EV_DEF_LOADED,       /* a script file loaded (step_name: the file, outcome: its version); no saga */
  SG_EV_DEF_FAILED,       /* a script file failed to load (step_name: the file, detail: the error); no saga */
};
struct sg_event {
  int kind;
  const char *saga_id, *type;
  int step, phase, attempt;  /* where the saga is (step 0-based, enum sg_phase) */
  const char *step_name;
  const char *outcome;       /* see the kinds, else NULL */
  int status;                /* the saga's status after the event (enum sg_status) */
  const char *detail;        /* or NULL */
  int64_t at;                /* ms */
  int64_t duration_ms;       /* SG_EV_ATTEMPT_ENDED */
  const char *trace;         /* the saga's trace context (sagas.trace, otel.h), or NULL */
  int64_t created_at;        /* the saga's start, ms */
};
typedef void (*sg_event_cb)(void *ud, const struct sg_event *ev);
/* adds an observer (at most 8); -1 when full */
int sg_engine_observe(struct sg_engine *en, sg_event_cb cb, void *ud);
const char *sg_event_name(int kind); /* "started", "attempt_started", ... */
/* the live (running or compensating) sagas of each type on this host */
void sg_engine_live_by_type(struct sg_engine *en, void (*cb)(void *ud, const char *type, int64_t n), void *ud);

/* 1 = the saga runs on this host (live in its memory): no terminal status of it is committed yet,
 * so its terminal event is still to come (GET ?wait= needs no read of it until then) */
int sg_engine_running_here(struct sg_engine *en, const char *id);

/* Starts a read of the store (store.h: sg_store_read) and watches its answer on the loop. */
struct sg_read;
void sg_engine_read(struct sg_engine *en, struct sg_read *rd);

/* Operator verbs. `who` names the operator (recorded in the history with the reason/note).
 * Each returns 0, or -1 with e: SG_E_NOTFOUND (no such saga), SG_E_CONFLICT (its status does not
 * allow it), SG_E_INVALID (missing note). The change is durable at the next after_commit. */
int sg_engine_compensate(struct sg_engine *en, const char *id, const char *reason, const char *who, struct sg_error *e);
int sg_engine_retry(struct sg_engine *en, const char *id, const char *who, struct sg_error *e);
int sg_engine_resolve(struct sg_engine *en, const char *id, const char *note, const char *who, struct sg_error *e);
/* moves a running, compensating or compensation_failed saga to the current version of its type when the
 * steps up to where it stands keep their names and compensations (else SG_E_CONFLICT saying why); a
 * waiting step replays on the new code when it wakes. sg_engine_upgrade_plan: the same checks, nothing
 * changed: what would change (JSON, malloc'd) or NULL + e. */
int sg_engine_upgrade(struct sg_engine *en, const char *id, const char *who, struct sg_error *e);
char *sg_engine_upgrade_plan(struct sg_engine *en, const char *id, struct sg_error *e);
/* stops a running or compensating saga without compensating anything: status terminated (reason required) */
int sg_engine_terminate(struct sg_engine *en, const char *id, const char *reason, const char *who, struct sg_error *e);
/* JSON list of the compensations still to run for a compensating or compensation_failed saga
 * ([{"step": n, "name": ...}], malloc'd), NULL otherwise */
char *sg_engine_pending_compensations(struct sg_engine *en, const struct sg_saga_row *r);
/* the name of the saga's current step ("?" if its definition is not loaded) */
const char *sg_engine_step_name(struct sg_engine *en, const struct sg_saga_row *r);
/* Which compensations would run, in order, if the saga were aborted now (JSON, malloc'd), or NULL + e. */
char *sg_engine_plan(struct sg_engine *en, const char *id, struct sg_error *e);

/* A circuit breaker's settings for one service (saga.breaker in a script; the host flags otherwise).
 * For sg_engine_breaker_config, a negative rate and zero counts or durations mean "the host's". */
struct sg_breaker_config {
  double failure_rate; /* opens at this share of failed calls (0 = no breaker for the service) */
  int min_calls;       /* ... once at least this many calls are in the window */
  int64_t window_ms;   /* the counting window */
  int64_t open_ms;     /* how long it stays open before a half-open probe */
};
void sg_engine_breaker_config(struct sg_engine *en, const char *service, const struct sg_breaker_config *c);

/* {"breakers": [{"service", "state", "calls", "failures", "parked", "opens", "opened_at"}], ...} */
char *sg_engine_breakers_json(struct sg_engine *en);
/* each breaker: its service, state ("closed", "open", "half_open") and parked sagas (for /metrics) */
typedef void (*sg_breaker_cb)(void *ud, const char *service, const char *state, size_t parked);
void sg_engine_breakers_each(struct sg_engine *en, sg_breaker_cb cb, void *ud);

/* statistics for /healthz and bench */
struct sg_engine_stats {
  int64_t live;        /* sagas in memory (non-terminal) */
  int64_t coroutines;  /* of those, holding a coroutine */
  int64_t started, completed, compensated, compensation_failed, resolved, terminated; /* since start */
  int64_t commits;     /* store commits */
  int64_t timers;      /* armed timers */
  int64_t store_failures; /* commits the store refused for a passing reason (disk full, I/O error) */
  int stalled;         /* 1 while a refused commit waits to be written again: no new work is taken */
  int64_t stalled_ms;  /* for how long */
  char stall_error[256]; /* why (the store's message), "" when not stalled */
  /* several hosts on one database (0 with a one-host store) */
  int multi;           /* the store is shared: this host works on the sagas it has claimed */
  int64_t taken_over;  /* sagas taken over from hosts whose lease ran out */
  int64_t fenced;      /* times this host found itself fenced (its sagas taken) and reloaded what it owns */
  int64_t forwarded;   /* operator verbs sent to the host that owns the saga */
  int reloading;       /* fenced, and not yet registered again (the store cannot be reached) */
  char host_id[96];    /* this host's id */
  int64_t outbox;      /* outbox rows committed and not yet confirmed by the broker (counted by this host;
                        * recounted from the store whenever the transport (re)connects) */
};
void sg_engine_stats(struct sg_engine *en, struct sg_engine_stats *st);
/* 1 while the store cannot write (see "Disk full" in docs/operations.md): sg_engine_start and the
 * operator verbs fail with SG_E_UNAVAILABLE, sg_engine_after_commit callbacks run at once (reads see
 * the last commit), deliveries and timers wait, and the refused commit is retried with backoff. */
int sg_engine_stalled(struct sg_engine *en);

/* Several hosts: a verb on a saga another host owns fails with SG_E_ELSEWHERE (e->msg names the
 * owner). sg_engine_forward sends it there through the database; cb runs once the owner has applied
 * it (e == NULL) or refused it (e filled), or with e->code SG_E_ELSEWHERE when the owner did not
 * answer within timeout_ms (the verb is still applied when the saga's owner reads it). */
typedef void (*sg_forward_cb)(void *ud, const struct sg_error *e);
int sg_engine_forward(struct sg_engine *en, const char *id, const char *verb, const char *arg, const char *who,
                      int64_t timeout_ms, sg_forward_cb cb, void *ud, struct sg_error *e);

/* Called after every commit that went through with how long it took from its start, in microseconds
 * (a commit the store refused and held counts until it went through): /metrics. NULL cb: none. */
typedef void (*sg_commit_cb)(void *ud, int64_t duration_us);
void sg_engine_on_commit(struct sg_engine *en, sg_commit_cb cb, void *ud);
/* Tracing (tracing.c): the engine's spans go to o (NULL: tracing off, the default). -1 when the
 * engine takes no more observers. o must outlive the engine's loop. */
struct sg_otel;
int sg_engine_set_otel(struct sg_engine *en, struct sg_otel *o);
struct sg_otel *sg_engine_otel(struct sg_engine *en); /* NULL when off */
/* the transport given to sg_engine_set_transport (NULL before) */
struct sg_transport *sg_engine_transport(struct sg_engine *en);

/* Called for every saga that reaches a terminal status, after its commit (bench latency figures). */
typedef void (*sg_terminal_cb)(void *ud, const char *id, int status, int64_t created_at);
void sg_engine_on_terminal(struct sg_engine *en, sg_terminal_cb cb, void *ud);

/* ---- the testing kit (lmodule.c, lua/saga/testing.lua) ----
 * A mocked participant: called for every command delivered to this host before the scripts' handler
 * (after the inbox: a message id the inbox has answered is not asked again). Returns 0 = not mocked
 * (the script's handler runs), 1 = answered (*status "ok"/"error", *body JSON, both malloc'd; recorded
 * in the inbox and replied as a handler's answer), 2 = taken and never answered (the delivery is acked,
 * nothing is recorded, no reply goes out: the caller's timeout decides). */
typedef int (*sg_mock_cb)(void *ud, const struct sg_msg *m, char **status, char **body);
void sg_engine_set_mock(struct sg_engine *en, sg_mock_cb cb, void *ud); /* NULL cb: none */
/* 1 when nothing is runnable now: no batch open or on its way, nothing preempted, queued, parked or
 * waiting for a commit, and no timer due at sg_now_ms() (the transport's queue is not looked at) */
int sg_engine_quiescent(struct sg_engine *en);
/* runs the breakers' tick and the timers due at sg_now_ms() (a virtual clock moved: nothing else
 * fires them in time) */
void sg_engine_tick(struct sg_engine *en);
/* 1 (the default): with the in-process transport, a call from a stored saga is answered before its
 * batch commits and the reply taken at once, without a round trip through the transport; 0: calls and
 * replies go through the transport as every other message does (its fault injection reaches them) */
void sg_engine_set_direct_calls(struct sg_engine *en, int on);
/* the earliest time something of the engine falls due (a timer, an open breaker's probe), -1 none */
int64_t sg_engine_next_due(struct sg_engine *en);

#endif
