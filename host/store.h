/* store: the durable state of the host behind one small interface.
 *
 * Implementations: store_sqlite.c (embedded default), store_pg.c (later, shared by several hosts).
 * The engine batches the changes of one loop iteration between begin() and commit() (group commit).
 * Reads may happen inside or outside a transaction.
 *
 * Ownership: rows passed in are borrowed (copied by the store if it keeps them). Rows handed to
 * callbacks are borrowed for the duration of the callback only. sg_store_saga_row_free() frees a row
 * filled by get/find.
 * Times are ms since the epoch (sg_now_ms). JSON columns are text and stored as given. */
#ifndef SG_STORE_H
#define SG_STORE_H

#include <stdint.h>
#include "util.h"

/* Saga statuses, persisted as their text names. */
enum sg_status {
  SG_ST_RUNNING = 0,
  SG_ST_COMPENSATING,
  SG_ST_COMPLETED,
  SG_ST_COMPENSATED,
  SG_ST_COMPENSATION_FAILED,
  SG_ST_RESOLVED,            /* compensation_failed, then marked resolved by an operator with a note */
  SG_ST_TERMINATED,          /* stopped by an operator without compensating (terminate, with a reason) */
  SG_ST__COUNT
};
const char *sg_status_name(int st);  /* "running", ... */
int sg_status_parse(const char *s);  /* -1 if unknown */
#define SG_ST_TERMINAL(st) ((st) >= SG_ST_COMPLETED)

/* Step phases. */
/* SG_PH_PARTIAL: the step's compensate function runs for an action attempt that failed or was aborted
 * after some of its calls completed (sg_saga_row.partial says which and what completed); its history
 * shows it as "compensate" */
enum sg_phase { SG_PH_ACTION = 0, SG_PH_COMPENSATE = 1, SG_PH_PARTIAL = 2 };
const char *sg_phase_name(int ph); /* "action", "compensate" (also for SG_PH_PARTIAL) */

/* One saga instance (table sagas). */
struct sg_saga_row {
  char id[40];        /* uuid */
  char *type;         /* saga type name */
  char *def_hash;     /* definition version (content hash of its file) */
  int status;         /* enum sg_status */
  int step;           /* index of the current step (0-based); during compensation the step compensated */
  int phase;          /* enum sg_phase */
  int attempt;        /* current attempt of the current step/phase, 1-based */
  char *input;        /* JSON text */
  char *data;         /* JSON text (ctx.data at the last checkpoint) */
  char *error;        /* why it gave up/failed, or NULL */
  char *idem_key;     /* Idempotency-Key given at start, or NULL */
  char *biz_key;      /* business key (saga.define{key = ...}) computed at start, or NULL; never changes */
  char *trace;        /* its trace context (otel.h), or NULL; changes only at an operator's retry */
  char *partial;      /* phase SG_PH_PARTIAL (or about to be): JSON {"attempt": the action attempt it undoes,
                       * "base": that attempt's attempt_base, "journal": [the calls that completed]}; else NULL */
  int64_t created_at;
  int64_t updated_at;
  int64_t deadline;   /* saga timeout due time, 0 = none */
  int64_t version;    /* optimistic concurrency counter, bumped by every update */
  int64_t attempt_started_at; /* start of the running attempt, 0 = none (its history row is written when it ends) */
  int attempt_base;   /* attempts made before an operator's retry: the retry policy counts from here */
  int same_status;    /* saga_update hint: the status is the one stored (its index needs no update) */
  char *parent;       /* a child saga (ctx:run): the id of the saga that started it, else NULL; never changes */
  char *children;     /* a parent: the children its steps started, JSON [{"id","type","step"[,"key":true]}]
                       * (step 0-based, in start order; key: started with {id = key}), else NULL (children.c) */
  int interned;       /* type and def_hash are sg_intern's (shared, never freed): the engine's sagas */
};
void sg_store_saga_row_free(struct sg_saga_row *r); /* frees the strings, not r itself */
void sg_store_saga_row_copy(struct sg_saga_row *dst, const struct sg_saga_row *src); /* deep copy into dst */

/* One attempt of an action or compensation (table history). */
struct sg_hist_row {
  int64_t id;         /* row id, assigned by hist_insert */
  const char *saga_id;
  int step;           /* step index */
  const char *step_name;
  int phase;          /* enum sg_phase, or -1 for a saga-level event (operator action, timeout) */
  int attempt;
  const char *status; /* "running", "completed", "failed" (or an event name when phase == -1) */
  int64_t started_at;
  int64_t finished_at; /* 0 while running */
  const char *error;  /* NULL unless failed */
};

/* A lifecycle event, written in the commit that made it true. The store keeps the events of a
 * transaction as one row of table events (one write per commit, however many events): its body has
 * one line per event (sg_event_line), read back as struct sg_event_batch. */
struct sg_event_row {
  int64_t at;         /* ms */
  const char *kind;   /* "started", "attempt_started", "attempt_ended", "compensating", "terminal",
                       * "operator", "definition_loaded", "definition_failed" */
  const char *saga_id, *type, *status; /* NULL for a definition's events */
  int step, phase, attempt;            /* step 0-based; phase enum sg_phase */
  const char *step_name, *outcome, *detail;
  int64_t duration_ms;
  const char *host_id;
};
/* an event as a line of a batch's body: its fields tab-separated (text with \\, \\t, \\n escaped,
 * \\N for NULL), host_id left out (the batch's) */
void sg_event_line(struct sg_buf *b, const struct sg_event_row *r);
/* the next event of a body (*at walks it, unescaping in place: the strings point into it): 1, or 0 at
 * the end */
int sg_event_line_next(char **at, struct sg_event_row *r);
/* the events of one commit, as read back */
struct sg_event_batch {
  char pos[48];       /* the row's position: an opaque string ("id" in SQLite, "txid-id" in PostgreSQL) */
  int64_t at;         /* its first event's */
  int n;              /* events (lines) */
  char *body;         /* owned */
  char *host_id;      /* the host whose commit it was (owned) */
};

/* A journaled durable operation inside one step attempt (table journal). */
struct sg_journal_row {
  const char *saga_id;
  int step, phase, attempt, seq; /* key: the seq-th operation of that attempt, 1-based */
  const char *kind;   /* "call", "send", "publish", "sleep", "now", "uuid", "wait"; a call also names its
                       * target: "call hotel.Book" */
  int done;           /* 0 = issued and waiting (call/sleep/wait), 1 = result known */
  int is_error;       /* result is an error reply */
  const char *result; /* JSON text, NULL while waiting (a wait: the signal's name as a JSON string) */
};

/* A signal sent to a saga (table signals): kept until a ctx:wait of its name takes it (signals.c). */
struct sg_signal_row {
  const char *id;        /* uuid, given by the host that received it */
  const char *saga_id;
  const char *name;      /* the signal's name (letters, digits, '_', '-') */
  const char *payload;   /* JSON text */
  const char *idem_key;  /* Idempotency-Key / AMQP message_id, or NULL: a second signal with the same key
                          * for the same saga is not stored */
  int64_t seq;           /* arrival order (us since the epoch, made unique by the receiving host) */
  int64_t received_at;   /* ms */
  int64_t delivered_at;  /* ms; 0 = pending (no wait has taken it) */
};
typedef int (*sg_signal_cb)(void *ud, const struct sg_signal_row *r);

/* A durable timer (table timers). One saga may have several (sleep, retry, timeouts). */
struct sg_timer_row {
  int64_t id;         /* assigned by timer_put */
  const char *saga_id;
  int64_t due_at;
  const char *kind;   /* "sleep", "retry", "step_timeout", "saga_timeout", ... */
  int64_t ref;        /* kind-specific: journal seq for sleep, attempt for retry */
};

/* A logical message: what the engine sends (through the outbox) and receives, whatever the transport.
 * Each transport maps it to its wire format in one place (transport_amqp.c through amqp_envelope.c,
 * transport_amqp1.c, transport_kafka.c; docs/protocol.md): the engine never names an exchange, a queue
 * or a topic. */
enum sg_msg_kind {
  SG_MSG_COMMAND = 1, /* to a service (ctx:call, ctx:send; a handler's input) */
  SG_MSG_REPLY,       /* to the host that sent a command, at the command's reply_to */
  SG_MSG_EVENT,       /* ctx:publish: to a topic's subscribers (hosts consume none) */
  SG_MSG_SIGNAL,      /* to a saga (ctx:wait): service "saga", name "signal" on the wire */
};
/* well-known headers (struct sg_msg.headers) */
#define SG_HDR_TRACEPARENT "traceparent" /* W3C Trace Context */
#define SG_HDR_TRACESTATE "tracestate"
#define SG_HDR_SAGA_KEY "saga-key"       /* signals: the saga by business key (with saga_type) */
#define SG_HDR_SIGNAL "signal-name"      /* signals: the name ctx:wait waits for */
struct sg_msg_header {
  char *name, *value;
};
struct sg_msg {
  int64_t outbox_id;     /* outbox row id (0 when not from the outbox) */
  enum sg_msg_kind kind;
  char *service;         /* commands: the service they are for; events: the topic; else NULL */
  char *name;            /* commands: the command ("Reserve"); events: the event; replies: the command's, or NULL */
  char *reply_to;        /* commands expecting a reply: where it goes (the sender's transport's reply_queue());
                          * replies: where they go (the command's reply_to); else NULL */
  char *message_id;      /* unique and stable across re-sends */
  char *correlation_id;  /* replies: the command's message_id */
  char *saga_id, *saga_type; /* the saga (NULL for foreign messages) */
  int step, attempt;
  char *status;          /* replies: "ok" or "error"; else NULL */
  char *body;            /* JSON text */
  struct sg_msg_header *headers; /* the rest, in order (SG_HDR_*); owned like the strings */
  size_t nheaders;
  int64_t created_at;
};
void sg_msg_free(struct sg_msg *m); /* frees the strings and headers, not m itself */
void sg_msg_copy(struct sg_msg *dst, const struct sg_msg *src); /* deep copy */
/* a header's value, NULL when absent */
const char *sg_msg_header(const struct sg_msg *m, const char *name);
/* sets (replaces) a header, copying value; value NULL removes it */
void sg_msg_set_header(struct sg_msg *m, const char *name, const char *value);
const char *sg_msg_kind_name(enum sg_msg_kind k); /* "command", "reply", "event", "signal" */
/* what m is, for logs: "inventory.Reserve" (a command or an event: service or topic, then name),
 * "reply to saga.reply.h1", "signal"; written into buf, returned */
const char *sg_msg_what(const struct sg_msg *m, char *buf, size_t n);
/* A command to service "saga" named "signal" is a signal (docs/protocol.md, Signals): every transport
 * decodes its commands through this. */
void sg_msg_classify(struct sg_msg *m);
#define SG_SIGNAL_SERVICE "saga"
#define SG_SIGNAL_COMMAND "signal"

/* How an outbox row stores a message (the store's own format, older than the logical message; kept so
 * that rows written by an older host are read back alike): column exchange "saga.commands" (command),
 * "saga.events" (event) or "" (reply); column routing_key "<service>.<name>", or for a reply the address
 * it goes to. sg_msg_row_route gives both for m (routing_key into buf); sg_msg_from_row fills m's kind,
 * service (into svc), name and reply_to from the columns (pointers into them: borrowed). */
void sg_msg_row_route(const struct sg_msg *m, const char **exchange, char *buf, size_t n);
void sg_msg_from_row(struct sg_msg *m, const char *exchange, const char *routing_key, const char *type,
                     const char *reply_to_col, char *svc, size_t n);

struct sg_saga_filter {
  int status;          /* -1 = any */
  const char *type;    /* NULL = any */
  const char *after;   /* page cursor: id of the last row of the previous page (the rows after it in the
                        * order asked: greater ids, or smaller with desc), NULL = start */
  int limit;           /* max rows */
  const char *key;     /* business key, NULL = any */
  int64_t since, until; /* created_at bounds in ms: since <= created_at < until; 0 = no bound */
  int desc;            /* newest first (descending ids) instead of oldest first */
  const char *parent;  /* the children of this saga (ctx:run), NULL = any */
};
/* For stores: the bounds on ids that a filter's created_at bounds and cursor imply, so that the list is
 * a range of the id index (ids start with their creation ms, see sg_uuid): lo and hi (40 bytes each) get
 * "rows have lo < id < hi" (lo "" = none, hi "" = none). The created_at bounds are still checked on the
 * rows themselves: these only narrow the range read. */
void sg_saga_filter_id_range(const struct sg_saga_filter *f, char *lo, char *hi);

typedef int (*sg_saga_cb)(void *ud, const struct sg_saga_row *r);  /* return non-zero to stop */
typedef int (*sg_hist_cb)(void *ud, const struct sg_hist_row *r);
typedef int (*sg_journal_cb)(void *ud, const struct sg_journal_row *r);
typedef int (*sg_timer_cb)(void *ud, const struct sg_timer_row *r);
typedef int (*sg_msg_cb)(void *ud, const struct sg_msg *m);
typedef int (*sg_def_cb)(void *ud, const char *hash, const char *file, const char *source);

struct sg_store;

/* ---- reads without waiting ----
 * A read is described by a struct sg_read (sg_read_new) and started with sg_store_read. Its done
 * callback is called once, with the answer filled in: at once in a store without read_start (SQLite,
 * whose reads are local), else later, from read_poll, when the database has answered (PostgreSQL: a
 * connection of its own, pipelined, watched by the loop). Reads are answered in the order they were
 * started, from committed state: a read started after a commit ended sees that commit. After done,
 * the read is the callee's to free (sg_read_free). */
enum sg_read_kind {
  SG_READ_SAGA,   /* a = saga id: rc 1 and rows[0], or rc 0; with_hist: its history rows too, in order;
                   * with_owner (several hosts): its owner and whether the owner's lease runs */
  SG_READ_IDEM,   /* a = type, b = idempotency key: rc 1 and rows[0], or rc 0 */
  SG_READ_LIST,   /* filter (a = type or NULL, b = cursor or NULL, key, parent, since, until, desc, status, limit):
                   * rc 0 and rows, in the order asked (see struct sg_saga_filter) */
  SG_READ_INBOX,  /* a = message id: rc 1 and status, body (each may be NULL), or rc 0 */
  SG_READ_OUTBOX, /* the outbox rows this host owns, in id order: rc 0 and msgs */
  SG_READ_MAIL,   /* several hosts: the mail of the sagas this host owns, in order (up to 200): rc 0 and mail;
                   * delete what was acted on with mail_done, in the batch that acts on it */
  SG_READ_PRUNE,  /* retention, a statement of its own: a = "inbox" (entries received before `before`), "events" (events before `before`, up to 20000) or
                   * "sagas" (up to limit finished sagas updated before `before`, as saga_prune): rc 0, count */
  SG_READ_TAKEOVER, /* several hosts: one takeover round, in a transaction of its own: the sagas of the
                   * host whose lease ran out longest ago (or of nobody: a database written by a one-host
                   * version) become this host's (their version bumped), and so does its outbox: rc 1 when something was taken (rc 0: nothing), rows = the sagas
                   * claimed (limit at most), timers and journals = theirs (current attempts), owner =
                   * the host they were taken from ("" = nobody's), before = how long ago its lease ran
                   * out (-1: it released it), count = outbox rows taken. -1 with SG_E_FENCED: this host
                   * is fenced, or the answer was lost (it may have taken some: load what it owns) */
  SG_READ_PROBE,  /* several hosts: a = this host's id: rc 0 and flags: 1 = sagas or outbox rows to take over
                   * (a host's whose lease ran out, or nobody's), 2 = mail for this host's sagas */
  SG_READ_COUNTS, /* a = type or NULL: rc 0 and counts, the sagas of the whole store by status */
  SG_READ_EVENTS, /* a = a batch position (sg_event_batch.pos): rc 0 and up to limit batches after it (incl:
                   * from it), in position order, and pos = the last one's (a when none); a = NULL: no
                   * batches, pos = the end of the stream now (what a reader starting now starts after);
                   * a = NULL and before > 0: pos = the last batch written before `before` (ms; "0"/"0-0": none).
                   * Only batches that can no longer be preceded by others are given (PostgreSQL: those
                   * below every open transaction), so a reader following pos misses none. A malformed
                   * a: rc -1, SG_E_INVALID */
};
struct sg_read {
  int kind;
  char *a, *b;               /* arguments (owned) */
  int with_hist, with_owner; /* SG_READ_SAGA (not both) */
  int status, limit;         /* SG_READ_LIST: status (-1 = any), limit (0 = none) */
  char *key;                 /* SG_READ_LIST: business key or NULL (owned) */
  int64_t since, until;      /* SG_READ_LIST: created_at bounds, as in struct sg_saga_filter */
  int desc;                  /* SG_READ_LIST: newest first */
  char *parent;              /* SG_READ_LIST: the children of this saga, or NULL (owned) */
  /* the answer */
  int rc;                    /* 1 found, 0 not found (or a list), -1 failed (err) */
  struct sg_error err;       /* SG_E_UNAVAILABLE: the database cannot be reached now */
  struct sg_saga_row *rows;  /* owned (sg_read_free frees them) */
  size_t nrows;
  struct sg_hist_row *hist;  /* its strings are owned */
  size_t nhist;
  char *status_s, *body;     /* SG_READ_INBOX */
  int flags;                 /* SG_READ_PROBE */
  int64_t before, count;     /* SG_READ_PRUNE; before: SG_READ_EVENTS too */
  int64_t counts[SG_ST__COUNT]; /* SG_READ_COUNTS: by enum sg_status */
  struct sg_msg *msgs;       /* SG_READ_OUTBOX (owned) */
  size_t nmsgs;
  struct sg_mail_row { int64_t id; char *saga_id, *kind, *body; } *mail; /* SG_READ_MAIL (owned) */
  size_t nmail;
  struct sg_timer_row *timers;      /* SG_READ_TAKEOVER (strings owned) */
  size_t ntimers;
  struct sg_journal_row *journals;  /* SG_READ_TAKEOVER (strings owned) */
  size_t njournals;
  struct sg_event_batch *events; /* SG_READ_EVENTS (owned) */
  size_t nevents;
  char pos[48];              /* SG_READ_EVENTS */
  int incl;                  /* SG_READ_EVENTS: the batch at a too */
  char owner[128];           /* SG_READ_SAGA with_owner: "" = none */
  int owner_alive;
  void (*done)(struct sg_read *rd);
  void *ud;
  int64_t gen;               /* the caller's (e.g. what it must still be for the answer to count) */
  /* the store's */
  struct sg_read *next;
  void *res[6];              /* its results so far */
  int nres, failed, tries;
  int64_t at;                /* when it was sent */
};
struct sg_read *sg_read_new(int kind, const char *a, const char *b, void (*done)(struct sg_read *), void *ud);
void sg_read_free(struct sg_read *rd);
/* starts rd; done is called once (perhaps before this returns) */
void sg_store_read(struct sg_store *s, struct sg_read *rd);
/* for stores: a copy of h (its strings too) at the end of rd->hist */
void sg_read_add_hist(struct sg_read *rd, const struct sg_hist_row *h);
/* for stores: a batch of events at the end of rd->events (body copied), and rd->pos set to its */
void sg_read_add_events(struct sg_read *rd, const char *pos, int64_t at, int n, const char *body, const char *host_id);

/* The interface. Every function returns 0 on success or -1 with e filled, unless noted. */
struct sg_store_ops {
  const char *name; /* "sqlite", "postgres" */
  void (*close)(struct sg_store *s);

  int (*begin)(struct sg_store *s, struct sg_error *e);
  /* -1 with e->code SG_E_UNAVAILABLE: the transaction could not be made durable for a reason that
   * may pass (disk full, an I/O error, a lock held too long). It was rolled back, but the store
   * keeps every write of it: retry_commit writes them again, in order, in a new transaction. Until
   * then the store is "held": reads see the last commit, and begin must not be called. A write op
   * that meets such a failure inside the transaction also returns 0 and puts the store in that
   * state; the later writes of the transaction are only kept, and commit reports the failure. */
  int (*commit)(struct sg_store *s, struct sg_error *e);
  int (*rollback)(struct sg_store *s, struct sg_error *e);
  /* the held transaction again: 0 = committed (the store is no longer held), -1 with
   * SG_E_UNAVAILABLE = still failing (held, try later), other codes = the store is broken */
  int (*retry_commit)(struct sg_store *s, struct sg_error *e);
  /* The commit without waiting (NULL: only commit): commit_start sends the transaction and returns,
   * 0 = on its way, -1 = as commit. Until commit_poll has given the outcome no other op is called
   * but commit_poll, note_fd and notes(read = 0); a read made meanwhile anyway (the HTTP API's) first
   * reads the commit to its end, and keeps the outcome for commit_poll. commit_poll reads what
   * arrived on note_fd (block: waits for the end): 1 = still on its way (*want_write: the store has
   * more to send, wait for the socket to be writable too), 0 = committed, -1 = as commit. */
  int (*commit_start)(struct sg_store *s, struct sg_error *e);
  int (*commit_poll)(struct sg_store *s, int block, int *want_write, struct sg_error *e);

  /* definition versions: (hash, file, source); put is a no-op if the hash exists */
  int (*def_put)(struct sg_store *s, const char *hash, const char *file, const char *source, struct sg_error *e);
  /* *source is malloc'd, or NULL (and 0 returned) when the hash is unknown */
  int (*def_get)(struct sg_store *s, const char *hash, char **file, char **source, struct sg_error *e);

  int (*saga_insert)(struct sg_store *s, const struct sg_saga_row *r, struct sg_error *e);
  /* writes every mutable column (def_hash, status, step, phase, attempt, data, error, updated_at, deadline)
   * and sets version = r->version; fails with SG_E_CONFLICT if the stored version is not r->version - 1 */
  int (*saga_update)(struct sg_store *s, const struct sg_saga_row *r, struct sg_error *e);
  /* returns 1 and fills out if found, 0 if not, -1 on error */
  int (*saga_get)(struct sg_store *s, const char *id, struct sg_saga_row *out, struct sg_error *e);
  int (*saga_find_idem)(struct sg_store *s, const char *type, const char *key, struct sg_saga_row *out, struct sg_error *e);
  /* ordered by id, ascending or (f->desc) descending: ids are time-ordered uuids (sg_uuid), so this is
   * creation order, ties within a millisecond broken by the id's random bits (stable, good for paging) */
  int (*saga_list)(struct sg_store *s, const struct sg_saga_filter *f, sg_saga_cb cb, void *ud, struct sg_error *e);
  /* how many sagas (of type, NULL = all) there are by status: counts[enum sg_status] */
  int (*saga_counts)(struct sg_store *s, const char *type, int64_t counts[SG_ST__COUNT], struct sg_error *e);
  int (*saga_each_active)(struct sg_store *s, sg_saga_cb cb, void *ud, struct sg_error *e); /* non-terminal */

  int (*hist_insert)(struct sg_store *s, struct sg_hist_row *r, struct sg_error *e); /* sets r->id */
  int (*hist_each)(struct sg_store *s, const char *saga_id, sg_hist_cb cb, void *ud, struct sg_error *e); /* in id order */

  /* insert or replace on (saga_id, step, phase, attempt, seq) */
  int (*journal_put)(struct sg_store *s, const struct sg_journal_row *r, struct sg_error *e);
  int (*journal_each)(struct sg_store *s, const char *saga_id, int step, int phase, int attempt, sg_journal_cb cb, void *ud, struct sg_error *e); /* seq order */

  int (*timer_put)(struct sg_store *s, struct sg_timer_row *r, struct sg_error *e); /* sets r->id */
  int (*timer_del)(struct sg_store *s, int64_t id, struct sg_error *e);
  int (*timer_each)(struct sg_store *s, sg_timer_cb cb, void *ud, struct sg_error *e); /* all, due order */

  int (*outbox_put)(struct sg_store *s, struct sg_msg *m, struct sg_error *e); /* sets m->outbox_id */
  int (*outbox_del)(struct sg_store *s, int64_t id, struct sg_error *e);       /* after the confirm */
  int (*outbox_each)(struct sg_store *s, sg_msg_cb cb, void *ud, struct sg_error *e); /* id order */

  /* inbox: processed message ids with the reply that was sent (so a redelivery re-sends it).
   * inbox_get returns 1 and *reply (malloc'd, may be NULL) if seen, 0 if not. */
  int (*inbox_get)(struct sg_store *s, const char *message_id, char **reply_status, char **reply_body, struct sg_error *e);
  int (*inbox_put)(struct sg_store *s, const char *message_id, const char *reply_status, const char *reply_body, struct sg_error *e);
  /* retention: forget inbox entries received before `before` (*deleted: how many) */
  int (*inbox_prune)(struct sg_store *s, int64_t before, int64_t *deleted, struct sg_error *e);
  /* retention: deletes up to `limit` completed, compensated or resolved sagas (with their history)
   * last updated before `before`; compensation_failed ones are kept for their operators */
  int (*saga_prune)(struct sg_store *s, int64_t before, int limit, int64_t *deleted, struct sg_error *e);
  /* a lifecycle event (in the transaction: its events are written as one row when it commits) */
  int (*event_put)(struct sg_store *s, const struct sg_event_row *r, struct sg_error *e);
  /* SG_READ_EVENTS answered at once (a store without read_start) */
  int (*event_read)(struct sg_store *s, struct sg_read *rd, struct sg_error *e);
  /* retention: forget events older than `before` (*deleted: how many) */
  int (*event_prune)(struct sg_store *s, int64_t before, int64_t *deleted, struct sg_error *e);
  /* a finished saga's journal is of no more use */
  int (*journal_del)(struct sg_store *s, const char *saga_id, struct sg_error *e);

  /* ---- signals (signals.c); saga_prune deletes the signals of the sagas it deletes ----
   * signal_put inserts r unless the saga has a signal with r->idem_key already (then nothing: a
   * repeat is stored once; the engine tells a repeat from what it reads with signal_find and what it
   * holds in memory); signal_done marks it taken by a wait at `at` (in the batch of the wait's journal
   * row), or pending again with at = 0 (the wait's attempt failed); signal_find: 1 when the saga has a signal (pending or taken) with that key, 0 when not;
   * signal_each: the saga's pending signals, in arrival order (seq) */
  int (*signal_put)(struct sg_store *s, const struct sg_signal_row *r, struct sg_error *e);
  int (*signal_done)(struct sg_store *s, const char *id, int64_t at, struct sg_error *e);
  int (*signal_find)(struct sg_store *s, const char *saga_id, const char *idem_key, struct sg_error *e);
  int (*signal_each)(struct sg_store *s, const char *saga_id, sg_signal_cb cb, void *ud, struct sg_error *e);
  /* ---- schedules (schedule.c) ----
   * The last fire time claimed for schedule `name`: 1 and *last, or 0 when it never had one. */
  int (*schedule_last)(struct sg_store *s, const char *name, int64_t *last, struct sg_error *e);
  /* Claims fire time `at` (ms) of schedule `name`: the claim holds when the stored last fire time is
   * before `at` (or there is none), which then becomes `at`. With r (NULL: only the claim, for a fire
   * that is skipped or the first time a schedule is seen) the saga r is inserted in the same transaction.
   * 1 = claimed (and r inserted), 0 = the fire was claimed before (by this host or another: nothing is
   * written), -1 e. SQLite writes it in the open transaction (begin first: it commits with the batch);
   * PostgreSQL commits it at once in a transaction of its own, so two hosts claim each fire once. */
  int (*schedule_claim)(struct sg_store *s, const char *name, int64_t at, const struct sg_saga_row *r,
                        struct sg_error *e);

  /* ---- several hosts on one database (PostgreSQL; NULL in a store that has one host, which owns
   * everything) ----
   * A host registers under its id: the store takes the id's session lock (a second live host with the
   * same id is refused with SG_E_CONFLICT naming it), bumps the id's epoch and sets its lease. From then
   * on the store works for that host: saga_each_active, timer_each and outbox_each see only what it
   * owns, saga_insert and outbox_put write it as the owner, and every commit renews the lease and
   * fails with SG_E_FENCED (rolled back) when the epoch has moved on: another host found the lease
   * expired and took the sagas over. Then the engine drops everything and registers again.
   * Such a store also has read_start and answers SG_READ_PROBE, SG_READ_TAKEOVER and SG_READ_MAIL:
   * taking sagas over and reading mail go through those reads. */
  int (*host_register)(struct sg_store *s, const char *host_id, int64_t lease_ms, struct sg_error *e);
  /* the journal rows of the current attempts of every saga saga_each_active gives, by saga then seq,
   * in one round trip (NULL: journal_each per saga); rows of other sagas or attempts may come too
   * (SQLite gives the whole table: it holds live sagas' journals only), the caller keeps its own */
  int (*journal_each_active)(struct sg_store *s, sg_journal_cb cb, void *ud, struct sg_error *e);
  /* a clean stop: the lease ends now, so other hosts take the sagas over at once */
  int (*host_release)(struct sg_store *s, struct sg_error *e);
  /* the owner of a saga (owner[0] = 0: none) and whether that owner's lease runs: 1 found, 0 not, -1 e */
  int (*saga_owner)(struct sg_store *s, const char *saga_id, char owner[128], int *alive, struct sg_error *e);
  /* mail to the owner of a saga (in the batch; its owner is woken at the commit) */
  int (*mail_put)(struct sg_store *s, const char *saga_id, const char *kind, const char *body, struct sg_error *e);
  /* deletes mail read with SG_READ_MAIL (in the batch: at its commit) */
  int (*mail_done)(struct sg_store *s, const int64_t *ids, size_t n, struct sg_error *e);
  /* a note to another host, delivered at the commit */
  int (*notify)(struct sg_store *s, const char *host_id, const char *payload, struct sg_error *e);
  /* the socket notes arrive on (-1 = none now; it changes on a reconnect), and the notes that arrived:
   * read = 1 reads the socket first (it was readable). cb's payload is "mail" or what notify sent. */
  int (*note_fd)(struct sg_store *s);
  void (*notes)(struct sg_store *s, int read, void (*cb)(void *ud, const char *payload), void *ud);

  /* ---- reads without waiting (NULL: sg_store_read answers at once through the ops above) ----
   * read_start queues rd (it may answer at once: done is then called before it returns) on one of
   * read_conns connections; for connection i, read_wants says what the loop must wait for on
   * read_fd: 0 nothing (no read on its way), else 1 (readable) | 2 (writable); read_poll reads what
   * arrived and calls done of each finished read. Reads on different connections may be answered
   * in any order (a read stuck behind a lock does not hold up the others); read_cancel
   * ends every read on its way now (rc -1, SG_E_UNAVAILABLE "stopping"). */
  void (*read_start)(struct sg_store *s, struct sg_read *rd);
  int read_conns;            /* how many connections the reads use (i = 0 .. read_conns - 1 below) */
  int (*read_fd)(struct sg_store *s, int i, unsigned *serial); /* serial: changes with each new connection */
  int (*read_wants)(struct sg_store *s, int i);
  void (*read_poll)(struct sg_store *s, int i);
  void (*read_cancel)(struct sg_store *s);

  /* One read snapshot for a run of reads (NULL: none; SQLite): after read_hold, the reads until
   * read_release share one read transaction instead of locking and unlocking the file each (the
   * answers after a commit read the state that commit made). A write (begin, or any write op) ends
   * it first; read_hold inside a transaction does nothing. */
  void (*read_hold)(struct sg_store *s);
  void (*read_release)(struct sg_store *s);

  /* counters for benchmarks and /healthz */
  int64_t (*commit_count)(struct sg_store *s);
};

struct sg_store {
  const struct sg_store_ops *ops; /* the implementation */
};

/* Opens (creating and migrating) an SQLite database at path. NULL and e filled on failure.
 * One store per file: the store holds an exclusive lock on <path>.lock (with the holder's pid in it)
 * until close, and an open while another store (in any process) holds it fails with SG_E_CONFLICT
 * and a message naming the file and that pid. The lock dies with its process; the file stays. */
struct sg_store *sg_store_sqlite_open(const char *path, struct sg_error *e);
/* 1 (and e filled with the refusal an open would give) when a store anywhere holds path's lock now,
 * else 0: for callers that would otherwise delete a live database before opening it (bench --db). */
int sg_store_sqlite_in_use(const char *path, struct sg_error *e);

/* PostgreSQL (store_pg.c): url is a libpq URL, postgres://user:pass@host:port/db (postgresql:// too).
 * Opens (migrating) the database; NULL and e filled on failure (SG_E_UNAVAILABLE when the server
 * cannot be reached). Several hosts share a database, each registered under its own id
 * (host_register). Commits (commit_start) and the reads of sg_store_read do not block; the other ops
 * block the loop thread for a round trip each. */
struct sg_store *sg_store_pg_open(const char *url, struct sg_error *e);
/* 1 (and e filled) when a host is registered and alive on that database now (it holds a host id's
 * session lock), else 0: for callers that would otherwise wipe a live database */
int sg_store_pg_in_use(const char *url, struct sg_error *e);
/* 1 when db names a PostgreSQL database (postgres:// or postgresql://), else 0 (an SQLite path) */
int sg_store_is_pg_url(const char *db);
/* url with its password (if any) replaced by *** into out (n bytes): for logs and messages */
void sg_store_pg_redact(const char *url, char *out, size_t n);

#endif
