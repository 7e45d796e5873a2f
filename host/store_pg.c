/* store_pg: the store on PostgreSQL (libpq), with the interface and semantics of store_sqlite.c, shared
 * by several hosts.
 *
 * Several hosts: each registers under its id (host_register: the id's session advisory lock, a row in
 * hosts with an epoch and a lease on the database's clock). Sagas and outbox rows carry their owner;
 * the reads the engine recovers from see only the host's own. Every commit ends with sg_fence(host,
 * epoch, seq), which renews the lease and records the commit's sequence number, or aborts the
 * transaction (SQLSTATE SG001) when another host has bumped the epoch to take the sagas over
 * (SG_READ_TAKEOVER: the expired host's row locked FOR UPDATE SKIP LOCKED, its epoch bumped, up to N
 * of its sagas claimed FOR UPDATE SKIP LOCKED with their version bumped, and its outbox). Mail to a saga
 * (operator verbs from other hosts) wakes its owner with NOTIFY on the owner's channel.
 *
 * A transaction's writes are kept and sent at its commit in one round trip (pipeline mode), without
 * waiting: commit_start sends, commit_poll reads the results as they arrive on the socket. The reads
 * of sg_store_read (a saga, a page of the list, an idempotency key, an inbox entry: what the API and
 * every delivered command need) do not wait either: they go over a second connection (see "reads
 * without waiting"). The other ops' reads (recovery, takeover, operator verbs) are BLOCKING round trips
 * on the loop thread (statements are prepared once per connection and run with PQexecPrepared, text
 * parameters); such a read made while a commit is on its way first reads that commit to its end.
 *
 * Durability is that of SQLite's synchronous=FULL: synchronous_commit = on for the session.
 *
 * Held transactions: every write of the open transaction is kept (statement and text parameters, in
 * an arena). A failure that may pass (a lost connection, a server shutdown or restart, a full disk on
 * the server, a serialization failure or deadlock: SQLSTATE classes 08, 53, 58 and 57P01-57P03, 40001,
 * 40P01, 55P03, 57014, 25006) puts the store in the held state: PostgreSQL has aborted the
 * transaction, later writes are only kept, commit returns SG_E_UNAVAILABLE, and retry_commit
 * reconnects if needed (re-taking the host id's lock and preparing the statements again) and writes
 * the kept writes again in a new transaction. When the connection was lost while the COMMIT was on its
 * way, the outcome is unknown: the retry reads the host's commit_seq back first so that a transaction
 * the server did commit is not written twice. Ids of timers and outbox rows come from the host's
 * block (so a rewrite keeps them); history ids from a sequence.
 *
 * Rows handed to callbacks point into the PGresult of the op, valid during the callback. A callback
 * may call other ops of the store (the result is fully read before the first callback). */
#include "store.h"
#include "map.h"

#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Advisory lock keys (per database): HOST_LOCK_KEY is held shared by every host's session (so a tool
 * can tell a live database: sg_store_pg_in_use), MIGRATE_LOCK_KEY serialises migrations, and
 * (ID_LOCK_CLASS, hash of the host id) is held by the session of the host registered under that id. */
#define HOST_LOCK_KEY 1935763272LL    /* "sagah" in spirit: any constant, the same in every version */
#define MIGRATE_LOCK_KEY 1935763273LL
#define ID_LOCK_CLASS 1935763274

/* Schema migrations, applied in order, each in its own transaction under MIGRATE_LOCK_KEY. Never
 * edit a step that has shipped: append a new one. 1-5 are SQLite's, translated (BIGINT for times,
 * ids and versions; "C" collation on the columns that are paged or compared so that order is byte
 * order as in SQLite, whatever the database's locale); 6 is PostgreSQL's own. */
static const char *const migrations[] = {
  /* 1: initial schema */
  "CREATE TABLE definitions ("
  "  hash TEXT PRIMARY KEY, file TEXT NOT NULL, source TEXT NOT NULL, created_at BIGINT NOT NULL);"
  "CREATE TABLE sagas ("
  "  id TEXT COLLATE \"C\" PRIMARY KEY, type TEXT COLLATE \"C\" NOT NULL, def_hash TEXT NOT NULL,"
  "  status TEXT COLLATE \"C\" NOT NULL, step INTEGER NOT NULL, phase INTEGER NOT NULL, attempt INTEGER NOT NULL,"
  "  input TEXT, data TEXT, error TEXT, idem_key TEXT COLLATE \"C\","
  "  created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL, deadline BIGINT NOT NULL,"
  "  version BIGINT NOT NULL);"
  "CREATE UNIQUE INDEX sagas_idem ON sagas(type, idem_key) WHERE idem_key IS NOT NULL;"
  "CREATE INDEX sagas_status ON sagas(status, id);"
  "CREATE INDEX sagas_type ON sagas(type, id);"
  "CREATE TABLE history ("
  "  id BIGINT PRIMARY KEY, saga_id TEXT COLLATE \"C\" NOT NULL, step INTEGER NOT NULL,"
  "  step_name TEXT, phase INTEGER NOT NULL, attempt INTEGER NOT NULL, status TEXT NOT NULL,"
  "  started_at BIGINT NOT NULL, finished_at BIGINT NOT NULL, error TEXT);"
  "CREATE INDEX history_saga ON history(saga_id, id);"
  "CREATE TABLE journal ("
  "  saga_id TEXT COLLATE \"C\" NOT NULL, step INTEGER NOT NULL, phase INTEGER NOT NULL, attempt INTEGER NOT NULL,"
  "  seq INTEGER NOT NULL, kind TEXT NOT NULL, done INTEGER NOT NULL, is_error INTEGER NOT NULL,"
  "  result TEXT, PRIMARY KEY (saga_id, step, phase, attempt, seq));"
  /* ids come from the store (never reused: see store_state) */
  "CREATE TABLE timers ("
  "  id BIGINT PRIMARY KEY, saga_id TEXT NOT NULL, due_at BIGINT NOT NULL,"
  "  kind TEXT NOT NULL, ref BIGINT NOT NULL);"
  "CREATE INDEX timers_due ON timers(due_at, id);"
  "CREATE TABLE outbox ("
  "  id BIGINT PRIMARY KEY, message_id TEXT NOT NULL, correlation_id TEXT,"
  "  exchange TEXT, routing_key TEXT, reply_to TEXT, type TEXT, saga_id TEXT, saga_type TEXT,"
  "  step INTEGER NOT NULL, attempt INTEGER NOT NULL, status TEXT, body TEXT,"
  "  created_at BIGINT NOT NULL);"
  "CREATE TABLE inbox ("
  "  message_id TEXT PRIMARY KEY, reply_status TEXT, reply_body TEXT, received_at BIGINT NOT NULL);",
  /* 2: the running attempt's start lives on the saga row; history rows are written when an attempt ends */
  "ALTER TABLE sagas ADD COLUMN attempt_started_at BIGINT NOT NULL DEFAULT 0;",
  /* 3: attempts made before an operator's retry (the retry policy counts from there) */
  "ALTER TABLE sagas ADD COLUMN attempt_base INTEGER NOT NULL DEFAULT 0;",
  /* 4: the inbox is pruned by age */
  "CREATE INDEX inbox_received ON inbox(received_at);",
  /* 5: finished sagas are pruned by age */
  "CREATE INDEX sagas_finished ON sagas(status, updated_at);",
  /* 6 (PostgreSQL only): one row the commit writes: the sequence number of the last commit (to tell,
   * after a connection lost during a COMMIT, whether it committed) and the next timer and outbox ids
   * (SQLite's AUTOINCREMENT: an id is never given out twice, even once its row is deleted) */
  "CREATE TABLE store_state (one INTEGER PRIMARY KEY CHECK (one = 1), commit_seq BIGINT NOT NULL,"
  "  next_timer BIGINT NOT NULL, next_outbox BIGINT NOT NULL);"
  "INSERT INTO store_state VALUES (1, 0, 1, 1);",
  /* 7 (PostgreSQL only): several hosts. Each host has a row: its epoch (bumped when it registers and
   * when another host takes its sagas over: the fencing token every commit checks), its lease (ms on
   * the database's clock), the sequence number of its last commit, and its block of timer and outbox
   * ids (block << 32 | n: ids no other host gives out). Sagas and outbox rows carry their owner
   * (NULL: written by a one-host version, taken by the first host that looks). History ids come
   * from a sequence (their order is the order of writes, whichever host wrote). Mail is how a host
   * reaches a saga another host owns (operator verbs); NOTIFY wakes the owner. */
  "CREATE TABLE hosts (host_id TEXT COLLATE \"C\" PRIMARY KEY, epoch BIGINT NOT NULL, lease_until BIGINT NOT NULL,"
  "  lease_ms BIGINT NOT NULL, commit_seq BIGINT NOT NULL, id_block BIGINT NOT NULL, started_at BIGINT NOT NULL,"
  "  info TEXT);"
  "ALTER TABLE sagas ADD COLUMN owner TEXT COLLATE \"C\";"
  "CREATE INDEX sagas_owner ON sagas(owner, id) WHERE status IN ('running', 'compensating');"
  "ALTER TABLE outbox ADD COLUMN owner TEXT COLLATE \"C\";"
  "CREATE INDEX outbox_owner ON outbox(owner, id);"
  "CREATE INDEX timers_saga ON timers(saga_id);"
  "CREATE SEQUENCE id_blocks;"
  "CREATE SEQUENCE history_ids;"
  "SELECT setval('history_ids', coalesce((SELECT max(id) FROM history), 0) + 1, false);"
  "CREATE TABLE mail (id BIGSERIAL PRIMARY KEY, saga_id TEXT COLLATE \"C\" NOT NULL, kind TEXT NOT NULL,"
  "  body TEXT NOT NULL, created_at BIGINT NOT NULL);"
  "CREATE INDEX mail_saga ON mail(saga_id, id);"
  "CREATE FUNCTION sg_now() RETURNS BIGINT LANGUAGE sql VOLATILE AS"
  "  $$ SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint $$;"
  "CREATE FUNCTION sg_channel(h TEXT) RETURNS TEXT LANGUAGE sql IMMUTABLE AS"
  "  $$ SELECT 'sg_' || left(encode(sha256(convert_to(h, 'UTF8')), 'hex'), 16) $$;"
  /* the last statement of every commit: renews the lease and records the commit, or aborts the
   * transaction (SQLSTATE SG001) when the host's epoch moved on */
  /* the check of a write that must change one row (sent in a pipeline: a failure aborts the rest) */
  "CREATE FUNCTION sg_one(n BIGINT, what TEXT) RETURNS INTEGER LANGUAGE plpgsql AS $$"
  " BEGIN"
  "  IF n <> 1 THEN"
  "   RAISE EXCEPTION '%: % rows changed instead of 1 (another writer changed it, or it exists)', what, n"
  "    USING ERRCODE = 'SG002';"
  "  END IF;"
  "  RETURN 1;"
  " END $$;"
  "CREATE FUNCTION sg_fence(h TEXT, ep BIGINT, seq BIGINT) RETURNS VOID LANGUAGE plpgsql AS $$"
  " BEGIN"
  "  UPDATE hosts SET commit_seq = seq, lease_until = sg_now() + lease_ms WHERE host_id = h AND epoch = ep;"
  "  IF NOT FOUND THEN"
  "   RAISE EXCEPTION 'host % is fenced: its lease ran out and another host took its sagas over (epoch % is"
  " past)', h, ep USING ERRCODE = 'SG001';"
  "  END IF;"
  " END $$;",
  /* 8: the business key of a saga (saga.define{key = ...}), found by GET /v1/sagas?key= */
  "ALTER TABLE sagas ADD COLUMN biz_key TEXT COLLATE \"C\";"
  "CREATE INDEX sagas_key ON sagas(biz_key, id) WHERE biz_key IS NOT NULL;",
  /* 9: lifecycle events (GET /v1/events): one row per commit that made any, its events a line each.
   * Readers follow (txid, id): every transaction whose xid is below the oldest running one has ended,
   * so rows below that horizon never change, whichever host wrote them and in whatever order their
   * ids were taken. */
  "CREATE TABLE events (id BIGSERIAL PRIMARY KEY, txid xid8 NOT NULL DEFAULT pg_current_xact_id(),"
  "  at BIGINT NOT NULL, n INTEGER NOT NULL, host_id TEXT, body TEXT NOT NULL);"
  "CREATE INDEX events_txid ON events(txid, id);",
  /* 10: the saga's trace context (otel.h: "<trace id>-<span id>[-<parent span id>][ <tracestate>]"),
   * NULL when it started with tracing off */
  "ALTER TABLE sagas ADD COLUMN trace TEXT;",
  /* 11: a step's compensation running for an action attempt that failed after some of its calls
   * completed (sg_saga_row.partial) */
  "ALTER TABLE sagas ADD COLUMN partial TEXT;",
  /* 12: signals sent to sagas (signals.c), kept until a ctx:wait takes them; a taken one stays (its
   * idempotency key answers a repeat) until its saga is pruned. Any host writes them; the saga's owner
   * takes them (woken by mail) */
  "CREATE TABLE signals (id TEXT COLLATE \"C\" PRIMARY KEY, saga_id TEXT COLLATE \"C\" NOT NULL, name TEXT NOT NULL,"
  "  payload TEXT NOT NULL, idem_key TEXT COLLATE \"C\", seq BIGINT NOT NULL, received_at BIGINT NOT NULL,"
  "  delivered_at BIGINT NOT NULL DEFAULT 0);"
  "CREATE UNIQUE INDEX signals_idem ON signals(saga_id, idem_key) WHERE idem_key IS NOT NULL;"
  "CREATE INDEX signals_pending ON signals(saga_id, seq) WHERE delivered_at = 0;",
  /* 13: child sagas (ctx:run): a child names its parent; a parent lists the children its steps started */
  "ALTER TABLE sagas ADD COLUMN parent TEXT COLLATE \"C\";"
  "ALTER TABLE sagas ADD COLUMN children TEXT;"
  "CREATE INDEX sagas_parent ON sagas(parent, id) WHERE parent IS NOT NULL;",
  /* 14: schedules (saga.schedule): the last fire time claimed for each; a claim moves it forward in
   * the transaction that inserts the fire's saga, so two hosts never start one fire twice */
  "CREATE TABLE schedules (name TEXT COLLATE \"C\" PRIMARY KEY, last_fire BIGINT NOT NULL);",
};
#define N_MIGRATIONS ((int)(sizeof migrations / sizeof migrations[0]))

/* The prepared statements, one per operation (saga_list's SQL is made for its filter: list_query). */
enum {
  ST_DEF_PUT, ST_DEF_GET,
  ST_SAGA_INSERT, ST_SAGA_UPDATE, ST_SAGA_PROGRESS, ST_SAGA_GET, ST_SAGA_FIND_IDEM,
  ST_SAGA_COUNTS, ST_SAGA_COUNTS_TYPE, ST_SAGA_ACTIVE,
  ST_HIST_INSERT, ST_HIST_EACH,
  ST_JOURNAL_PUT, ST_JOURNAL_EACH,
  ST_TIMER_PUT, ST_TIMER_DEL, ST_TIMER_EACH,
  ST_OUTBOX_PUT, ST_OUTBOX_DEL, ST_OUTBOX_EACH,
  ST_INBOX_GET, ST_INBOX_PUT, ST_INBOX_PRUNE, ST_JOURNAL_DEL, ST_SAGA_PRUNE,
  ST_SAGA_OWNER, ST_MAIL_PUT, ST_MAIL_READ, ST_MAIL_DEL, ST_NOTIFY,
  ST_EVENT_PUT, ST_EVENT_AFTER, ST_EVENT_FROM, ST_EVENT_END, ST_EVENT_BEFORE, ST_EVENT_PRUNE,
  ST_SIGNAL_PUT, ST_SIGNAL_DONE, ST_SIGNAL_FIND, ST_SIGNAL_EACH,
  ST_SCHED_LAST, ST_SCHED_CLAIM,
  /* a batch's rows of one kind in one statement (pipeline_send): each parameter an array */
  ST_SAGA_INSERT_N, ST_SAGA_UPDATE_N, ST_SAGA_PROGRESS_N, ST_HIST_INSERT_N,
  ST_COUNT
};

#define SAGA_COLS "id, type, def_hash, status, step, phase, attempt, input, data, error, idem_key," \
                  " created_at, updated_at, deadline, version, attempt_started_at, attempt_base, biz_key, trace," \
                  " partial, parent, children"

static const char *const stmt_sql[ST_COUNT] = {
  [ST_SCHED_LAST] = "SELECT last_fire FROM schedules WHERE name = $1",
  /* the claim (an upsert that changes the row only when the fire is newer: a second claim of the same
   * fire waits for the first's row lock, then sees it and changes nothing), and the saga only with it */
  [ST_SCHED_CLAIM] = "WITH c AS (INSERT INTO schedules(name, last_fire) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE"
                     " SET last_fire = EXCLUDED.last_fire WHERE schedules.last_fire < EXCLUDED.last_fire RETURNING 1),"
                     " w AS (INSERT INTO sagas(" SAGA_COLS ", owner) SELECT $3::text, $4::text, $5::text, $6::text,"
                     " $7::int, $8::int, $9::int, $10::text, $11::text, $12::text, $13::text, $14::bigint, $15::bigint,"
                     " $16::bigint, $17::bigint, $18::bigint, $19::int, $20::text, $21::text, $22::text, $23::text, $24::text,"
                     " $25::text FROM c"
                     " WHERE $3::text IS NOT NULL RETURNING 1)"
                     " SELECT (SELECT count(*) FROM c), (SELECT count(*) FROM w)",
  [ST_DEF_PUT] = "INSERT INTO definitions(hash, file, source, created_at) VALUES ($1, $2, $3, $4)"
                 " ON CONFLICT DO NOTHING",
  [ST_DEF_GET] = "SELECT file, source FROM definitions WHERE hash = $1",
  /* DO NOTHING: a duplicate id or (type, idem_key) is reported as a conflict (0 rows) without
   * aborting the transaction, as SQLite's failed statement leaves its transaction usable */
  [ST_SAGA_INSERT] = "WITH w AS (INSERT INTO sagas(" SAGA_COLS ", owner) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9,"
                     " $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23) ON CONFLICT DO NOTHING RETURNING 1)"
                     " SELECT sg_one(count(*), 'saga ' || $1 || ' insert') FROM w",
  [ST_SAGA_UPDATE] = "WITH w AS (UPDATE sagas SET def_hash = $2, status = $3, step = $4, phase = $5, attempt = $6,"
                     " data = $7, error = $8, updated_at = $9, deadline = $10, version = $11,"
                     " attempt_started_at = $12, attempt_base = $13, owner = $14, trace = COALESCE($15, trace), partial = $16,"
                     " children = $17"
                     " WHERE id = $1"
                     " AND version = $11::bigint - 1 RETURNING 1) SELECT sg_one(count(*), 'saga ' || $1 || ' update') FROM w",
  /* the same without status and def_hash: no index column changes, so PostgreSQL can update in place (HOT) */
  [ST_SAGA_PROGRESS] = "WITH w AS (UPDATE sagas SET step = $2, phase = $3, attempt = $4,"
                       " data = $5, error = $6, updated_at = $7, deadline = $8, version = $9,"
                       " attempt_started_at = $10, attempt_base = $11, partial = $12, children = $13"
                       " WHERE id = $1 AND version = $9::bigint - 1"
                       " RETURNING 1) SELECT sg_one(count(*), 'saga ' || $1 || ' update') FROM w",
  [ST_SAGA_GET] = "SELECT " SAGA_COLS " FROM sagas WHERE id = $1",
  [ST_SAGA_FIND_IDEM] = "SELECT " SAGA_COLS " FROM sagas WHERE type = $1 AND idem_key = $2",
  [ST_SAGA_COUNTS] = "SELECT status, count(*) FROM sagas GROUP BY status",
  [ST_SAGA_COUNTS_TYPE] = "SELECT status, count(*) FROM sagas WHERE type = $1 GROUP BY status",
  [ST_SAGA_ACTIVE] = "SELECT " SAGA_COLS " FROM sagas WHERE status IN ('running', 'compensating') AND owner = $1"
                     " ORDER BY id",
  [ST_HIST_INSERT] = "INSERT INTO history(saga_id, step, step_name, phase, attempt, status, started_at,"
                     " finished_at, error, id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, nextval('history_ids'))",
  [ST_HIST_EACH] = "SELECT id, saga_id, step, step_name, phase, attempt, status, started_at, finished_at, error"
                   " FROM history WHERE saga_id = $1 ORDER BY id",
  [ST_JOURNAL_PUT] = "INSERT INTO journal(saga_id, step, phase, attempt, seq, kind, done, is_error, result)"
                     " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (saga_id, step, phase, attempt, seq)"
                     " DO UPDATE SET kind = EXCLUDED.kind, done = EXCLUDED.done, is_error = EXCLUDED.is_error,"
                     " result = EXCLUDED.result",
  [ST_JOURNAL_EACH] = "SELECT saga_id, step, phase, attempt, seq, kind, done, is_error, result FROM journal"
                      " WHERE saga_id = $1 AND step = $2 AND phase = $3 AND attempt = $4 ORDER BY seq",
  [ST_TIMER_PUT] = "INSERT INTO timers(saga_id, due_at, kind, ref, id) VALUES ($1, $2, $3, $4, $5)",
  [ST_TIMER_DEL] = "DELETE FROM timers WHERE id = $1",
  [ST_TIMER_EACH] = "SELECT t.id, t.saga_id, t.due_at, t.kind, t.ref FROM timers t JOIN sagas s ON s.id = t.saga_id"
                    " WHERE s.owner = $1 ORDER BY t.due_at, t.id",
  [ST_OUTBOX_PUT] = "INSERT INTO outbox(message_id, correlation_id, exchange, routing_key, reply_to, type,"
                    " saga_id, saga_type, step, attempt, status, body, created_at, id, owner)"
                    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
  [ST_OUTBOX_DEL] = "DELETE FROM outbox WHERE id = $1",
  [ST_OUTBOX_EACH] = "SELECT id, message_id, correlation_id, exchange, routing_key, reply_to, type, saga_id,"
                     " saga_type, step, attempt, status, body, created_at FROM outbox WHERE owner = $1 ORDER BY id",
  [ST_INBOX_GET] = "SELECT reply_status, reply_body FROM inbox WHERE message_id = $1",
  /* a row that only counts deliveries ("delivered") is replaced; one with a reply is another host's
   * handling of the same message, committed first: 0 rows, SG002, and this batch is a conflict */
  [ST_INBOX_PUT] = "WITH w AS (INSERT INTO inbox(message_id, reply_status, reply_body, received_at)"
                   " VALUES ($1, $2, $3, $4) ON CONFLICT (message_id) DO UPDATE SET"
                   " reply_status = EXCLUDED.reply_status, reply_body = EXCLUDED.reply_body,"
                   " received_at = EXCLUDED.received_at WHERE inbox.reply_status = 'delivered' RETURNING 1)"
                   " SELECT sg_one(count(*), 'message ' || $1 || ' handled') FROM w",
  [ST_INBOX_PRUNE] = "DELETE FROM inbox WHERE received_at < $1",
  [ST_JOURNAL_DEL] = "DELETE FROM journal WHERE saga_id = $1",
  /* retention in one statement: pick (the CTE is read twice, so it is computed once), then delete the
   * history and the sagas; the row count is that of the sagas */
  [ST_SAGA_PRUNE] = "WITH p AS (SELECT id FROM sagas WHERE status IN ('completed', 'compensated', 'resolved')"
                    " AND updated_at < $1 LIMIT $2),"
                    " h AS (DELETE FROM history WHERE saga_id IN (SELECT id FROM p)),"
                    " g AS (DELETE FROM signals WHERE saga_id IN (SELECT id FROM p))"
                    " DELETE FROM sagas WHERE id IN (SELECT id FROM p)",
  [ST_SAGA_OWNER] = "SELECT s.owner, coalesce(h.lease_until > sg_now(), false) FROM sagas s"
                    " LEFT JOIN hosts h ON h.host_id = s.owner WHERE s.id = $1",
  /* the mail, and a wake-up to the saga's owner (delivered when the transaction commits) */
  [ST_MAIL_PUT] = "WITH m AS (INSERT INTO mail(saga_id, kind, body, created_at) VALUES ($1, $2, $3, $4) RETURNING saga_id)"
                  " SELECT pg_notify(sg_channel(s.owner), 'mail') FROM sagas s JOIN m ON s.id = m.saga_id"
                  " WHERE s.owner IS NOT NULL",
  [ST_MAIL_READ] = "SELECT m.id, m.saga_id, m.kind, m.body FROM mail m JOIN sagas s ON s.id = m.saga_id"
                   " WHERE s.owner = $1 ORDER BY m.id LIMIT 200",
  [ST_MAIL_DEL] = "DELETE FROM mail WHERE id = ANY($1::bigint[])",
  [ST_NOTIFY] = "SELECT pg_notify(sg_channel($1), $2)",
  /* DO NOTHING: a repeat of an idempotency key (signals_idem), from this host or another, is not stored
   * again and does not abort the batch */
  [ST_SIGNAL_PUT] = "INSERT INTO signals(id, saga_id, name, payload, idem_key, seq, received_at, delivered_at)"
                    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
  [ST_SIGNAL_DONE] = "UPDATE signals SET delivered_at = $2 WHERE id = $1",
  [ST_SIGNAL_FIND] = "SELECT 1 FROM signals WHERE saga_id = $1 AND idem_key = $2",
  [ST_SIGNAL_EACH] = "SELECT id, saga_id, name, payload, idem_key, seq, received_at, delivered_at FROM signals"
                     " WHERE saga_id = $1 AND delivered_at = 0 ORDER BY seq",
  [ST_EVENT_PUT] = "INSERT INTO events(at, n, host_id, body) VALUES ($1, $2, $3, $4)",
  /* positions are (txid, id): only rows below every open transaction, which no commit can precede any more */
  [ST_EVENT_AFTER] = "SELECT txid::text, id, at, n, host_id, body FROM events WHERE (txid, id) > ($1::xid8, $2::bigint)"
                     " AND txid < pg_snapshot_xmin(pg_current_snapshot()) ORDER BY txid, id LIMIT $3",
  [ST_EVENT_FROM] = "SELECT txid::text, id, at, n, host_id, body FROM events WHERE (txid, id) >= ($1::xid8, $2::bigint)"
                    " AND txid < pg_snapshot_xmin(pg_current_snapshot()) ORDER BY txid, id LIMIT $3",
  [ST_EVENT_END] = "SELECT txid::text, id FROM events WHERE txid < pg_snapshot_xmin(pg_current_snapshot())"
                   " ORDER BY txid DESC, id DESC LIMIT 1",
  /* the last batch written before a time, from the newest back (no index on at: cheap for a recent time) */
  [ST_EVENT_BEFORE] = "SELECT txid::text, id FROM events WHERE txid < pg_snapshot_xmin(pg_current_snapshot())"
                      " AND at < $1 ORDER BY txid DESC, id DESC LIMIT 1",
  /* by id (no index on at: one index less to write per event): the oldest 20000 before the first kept */
  [ST_EVENT_PRUNE] = "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE id < coalesce((SELECT id FROM events"
                     " WHERE at >= $1 ORDER BY id LIMIT 1), 9223372036854775807) ORDER BY id LIMIT 20000)",
  /* The merged writes (pipeline_send): parameter i is the array of parameter i of the single-row
   * statement above, one element per row, in order; the last one is the number of rows. A row that
   * is not written (a duplicate, a version that moved on) fails the whole statement with SG002, as it
   * fails the single-row one. */
  [ST_SAGA_INSERT_N] = "WITH w AS (INSERT INTO sagas(" SAGA_COLS ", owner) SELECT * FROM unnest($1::text[], $2::text[],"
                       " $3::text[], $4::text[], $5::int[], $6::int[], $7::int[], $8::text[], $9::text[], $10::text[],"
                       " $11::text[], $12::bigint[], $13::bigint[], $14::bigint[], $15::bigint[], $16::bigint[],"
                       " $17::int[], $18::text[], $19::text[], $20::text[], $21::text[], $22::text[], $23::text[])"
                       " ON CONFLICT DO NOTHING RETURNING 1)"
                       " SELECT sg_one((count(*) = $24::bigint)::int, 'a batch of ' || $24 || ' saga inserts (only ' || count(*)"
                       " || ' written); the batch as a whole') FROM w",
  [ST_SAGA_UPDATE_N] = "WITH w AS (UPDATE sagas s SET def_hash = u.def_hash, status = u.status, step = u.step,"
                       " phase = u.phase, attempt = u.attempt, data = u.data, error = u.error, updated_at = u.updated_at,"
                       " deadline = u.deadline, version = u.version, attempt_started_at = u.attempt_started_at,"
                       " attempt_base = u.attempt_base, owner = u.owner, trace = COALESCE(u.trace, s.trace),"
                       " partial = u.partial, children = u.children"
                       " FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::int[], $6::int[], $7::text[],"
                       " $8::text[], $9::bigint[], $10::bigint[], $11::bigint[], $12::bigint[], $13::int[], $14::text[],"
                       " $15::text[], $16::text[], $17::text[]) AS u(id, def_hash, status, step, phase, attempt, data,"
                       " error, updated_at, deadline, version, attempt_started_at, attempt_base, owner, trace, partial,"
                       " children)"
                       " WHERE s.id = u.id COLLATE \"C\" AND s.version = u.version - 1 RETURNING 1)"
                       " SELECT sg_one((count(*) = $18::bigint)::int, 'a batch of ' || $18 || ' saga updates (only ' || count(*)"
                       " || ' written); the batch as a whole') FROM w",
  [ST_SAGA_PROGRESS_N] = "WITH w AS (UPDATE sagas s SET step = u.step, phase = u.phase, attempt = u.attempt,"
                         " data = u.data, error = u.error, updated_at = u.updated_at, deadline = u.deadline,"
                         " version = u.version, attempt_started_at = u.attempt_started_at, attempt_base = u.attempt_base,"
                         " partial = u.partial, children = u.children"
                         " FROM unnest($1::text[], $2::int[], $3::int[], $4::int[], $5::text[], $6::text[], $7::bigint[],"
                         " $8::bigint[], $9::bigint[], $10::bigint[], $11::int[], $12::text[], $13::text[])"
                         " AS u(id, step, phase, attempt, data, error, updated_at, deadline, version, attempt_started_at,"
                         " attempt_base, partial, children)"
                         " WHERE s.id = u.id COLLATE \"C\" AND s.version = u.version - 1 RETURNING 1)"
                         " SELECT sg_one((count(*) = $14::bigint)::int, 'a batch of ' || $14 || ' saga updates (only ' || count(*)"
                         " || ' written); the batch as a whole') FROM w",
  [ST_HIST_INSERT_N] = "INSERT INTO history(saga_id, step, step_name, phase, attempt, status, started_at,"
                       " finished_at, error, id) SELECT u.*, nextval('history_ids') FROM unnest($1::text[], $2::int[],"
                       " $3::text[], $4::int[], $5::int[], $6::text[], $7::bigint[], $8::bigint[], $9::text[]) AS u",
};

/* The parameters of one statement, as text (libpq's text format); integers are printed in place. */
#define MAX_PARAMS 26 /* schedule_claim: the schedule, its fire time, the saga columns and its owner */
struct params {
  int n;
  const char *v[MAX_PARAMS];
  char num[MAX_PARAMS][24];
};
static void p_full(const struct params *p) {
  if (p->n >= MAX_PARAMS) { sg_warn("postgres: more than %d statement parameters (MAX_PARAMS)", MAX_PARAMS); abort(); }
}
static void p_text(struct params *p, const char *v) { p_full(p); p->v[p->n++] = v; }
static void p_int(struct params *p, int64_t x) {
  p_full(p);
  snprintf(p->num[p->n], sizeof p->num[p->n], "%lld", (long long)x);
  p->v[p->n] = p->num[p->n];
  p->n++;
}

/* PostgreSQL refuses text that is not valid in the database's encoding, where SQLite stores any bytes.
 * With a UTF-8 client encoding (a UTF8 database, the usual case) text that is not valid UTF-8 (a
 * script's binary string in ctx.data, a foreign message body) would be an error that does not pass
 * and stop the host on every restart; instead every invalid byte is replaced by U+FFFD (JSON must be
 * UTF-8 anyway). Valid text, nearly always, is passed as is. */

/* The length of the valid UTF-8 sequence at s (as PostgreSQL checks it: no overlong forms, no
 * surrogates, nothing past U+10FFFF), or 0. */
static int utf8_seq(const unsigned char *s) {
  unsigned c = s[0];
  if (c < 0x80) return 1;
  if (c >= 0xc2 && c <= 0xdf) return (s[1] & 0xc0) == 0x80 ? 2 : 0;
  if (c >= 0xe0 && c <= 0xef) {
    unsigned lo = c == 0xe0 ? 0xa0 : 0x80, hi = c == 0xed ? 0x9f : 0xbf;
    return s[1] >= lo && s[1] <= hi && (s[2] & 0xc0) == 0x80 ? 3 : 0;
  }
  if (c >= 0xf0 && c <= 0xf4) {
    unsigned lo = c == 0xf0 ? 0x90 : 0x80, hi = c == 0xf4 ? 0x8f : 0xbf;
    return s[1] >= lo && s[1] <= hi && (s[2] & 0xc0) == 0x80 && (s[3] & 0xc0) == 0x80 ? 4 : 0;
  }
  return 0;
}

/* NULL when v is valid UTF-8, else a malloc'd copy with U+FFFD for each invalid byte. */
static char *utf8_fixed(const char *v) {
  const unsigned char *u = (const unsigned char *)v;
  size_t i = 0;
  int k;
  while (u[i] && (k = utf8_seq(u + i)) > 0) i += (size_t)k; /* a NUL stops every multi-byte check */
  if (!u[i]) return NULL;
  struct sg_buf b;
  sg_buf_init(&b);
  sg_buf_add(&b, v, i);
  while (u[i]) {
    if ((k = utf8_seq(u + i)) > 0) { sg_buf_add(&b, v + i, (size_t)k); i += (size_t)k; }
    else { sg_buf_add(&b, "\xef\xbf\xbd", 3); i++; }
  }
  return sg_buf_steal(&b);
}

/* Replaces p's invalid text in place (own[] holds the copies, freed with params_free). */
static void params_fix_utf8(struct params *p, char **own) {
  for (int i = 0; i < p->n; i++) {
    own[i] = p->v[i] ? utf8_fixed(p->v[i]) : NULL;
    if (own[i]) p->v[i] = own[i];
  }
}
static void params_free(int n, char **own) {
  for (int i = 0; i < n; i++) free(own[i]);
}

/* One write of the open transaction, kept until the commit so that a transaction that met a passing
 * failure can be written again (retry_commit). Text lives in the store's arena (offsets: it grows). */
struct redo {
  int st;                    /* the statement (ST_*) */
  int n;                     /* parameters */
  long off[MAX_PARAMS];      /* each one's NUL-terminated copy in the arena, -1 = NULL */
};

/* A connection of the reads without waiting. */
#define RD_CONNS 3
struct rdc {
  PGconn *pq;
  int state;                 /* RD_NONE, RD_CONNECTING, RD_READY */
  int poll_want;             /* while connecting: 1 readable, 2 writable */
  int want_write;            /* the pipeline has more to send */
  int64_t last_try;          /* connections are tried at most once a second */
  unsigned serial;           /* connections made so far */
  struct sg_read *sent, *sent_tail; /* sent, answered in this order */
  struct sg_read *wait, *wait_tail; /* waiting for the connection */
  int n;                     /* reads on it (sent or waiting) */
};

struct pg_store {
  struct sg_store base;      /* ops table; first, so a struct sg_store * is a struct pg_store * */
  PGconn *conn;              /* one connection, used from the loop thread only */
  char where[256];           /* postgres://user@host:port/db (no password), for messages */
  int prepared;              /* the statements exist on this connection */
  int lost_lock;             /* a reconnection found the host lock taken by another session: broken */
  int64_t commits;           /* successful commits, for benchmarks and /healthz */
  int in_txn;                /* between begin and a commit that succeeded */
  int held;                  /* the transaction met a passing failure: its writes are kept, not run */
  int commit_unknown;        /* the connection was lost while the COMMIT was on its way */
  char held_why[400];        /* that failure, for the commit's error */
  int64_t commit_seq;        /* store_state.commit_seq of the last commit */
  int64_t last_reconnect_ms; /* reads try to reconnect at most once a second */
  int utf8;                  /* the client encoding is UTF8: text is made valid UTF-8 first */
  struct redo *redo;         /* the writes of the transaction, in order */
  size_t nredo, capredo;
  struct sg_buf arena;       /* text parameters of redo */
  struct sg_buf evbody;      /* the transaction's events (sg_event_line each): one row when the commit is sent */
  int nev;
  int64_t ev_at;             /* the first one's time */
  char ev_host[128];         /* and host */
  struct sg_map kept_inbox;  /* message id (own copy) -> 1 + index in redo of its last inbox_put: the
                              * batch's writes reach the server only at the commit, so inbox_get looks
                              * here first (a repeat arriving before the commit is a repeat) */
  /* ids of new rows, assigned here so that a kept write gets the same id when written again */
  int64_t next_timer, next_outbox;
  /* the host this store works for (host_register), "" before */
  char me[128];
  int64_t epoch;             /* its epoch: the fencing token of every commit */
  int64_t lease_ms;
  char channel[32];          /* sg_channel(me): where its notes arrive */
  char *url;                 /* as given to open: the reads' connection is made from it */
  struct rdc rd[RD_CONNS];   /* the reads without waiting (sg_store_read): connections of their own */
  struct {                   /* the commit on its way (pipeline) */
    int active, sent, sending, await_null, committed_ok;
    size_t nq, q;            /* queries sent, whose results were read */
    PGresult *first_bad;
    const char *what;
    int finished;            /* a read finished it: rc and err wait for commit_poll */
    int rc;
    struct sg_error err;
    int *qst;                /* each query's statement (ST_*; -1 BEGIN, fence, COMMIT), for the error */
    size_t capq;
  } fl;
  struct sg_buf arrays;      /* pipeline_send: the merged writes' array parameters */
  struct sg_map merged_ids;  /* pipeline_send: saga ids in the merged writes not sent yet */
};

static struct pg_store *S(struct sg_store *s) { return (struct pg_store *)s; }

/* libpq's messages may span lines (and end with a newline); ours are one line. */
static void trim_nl(char *m) {
  char *w = m;
  for (const char *r = m; *r; r++) {
    if (*r == '\n' || *r == '\t' || *r == '\r') {
      if (w > m && w[-1] != ' ') *w++ = ' ';
    } else {
      *w++ = *r;
    }
  }
  while (w > m && w[-1] == ' ') w--;
  *w = 0;
}

/* The error of a failed result (r may be NULL: then the connection's), as "SQLSTATE message". */
static void res_msg(struct pg_store *s, const PGresult *r, char *out, size_t n) {
  const char *state = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
  const char *msg = r ? PQresultErrorMessage(r) : NULL;
  if (!msg || !*msg) msg = PQerrorMessage(s->conn);
  if (!msg || !*msg) msg = "unknown error";
  snprintf(out, n, "%s%s%s", state ? state : "", state ? " " : "", msg);
  trim_nl(out);
}

static int fail_res(struct pg_store *s, struct sg_error *e, int code, const PGresult *r, const char *what) {
  char m[400];
  res_msg(s, r, m, sizeof m);
  return sg_errorf(e, code, "postgres: %s: %s", what, m);
}

static int conn_ok(struct pg_store *s) { return s->conn && PQstatus(s->conn) == CONNECTION_OK; }

/* A failure that may pass by itself or by an operator's hand; not: constraints, syntax, missing tables. */
static int passing_state(const char *st) {
  if (!st) return 0;
  if (!strncmp(st, "08", 2) || !strncmp(st, "53", 2)) return 1; /* connection exception, insufficient resources */
  static const char *const list[] = {
    "57P01", "57P02", "57P03",  /* admin shutdown, crash shutdown, cannot connect now */
    "40001", "40P01",           /* serialization failure, deadlock */
    "55P03", "57014",           /* lock not available, query canceled (a timeout, an operator) */
    "25006",                    /* read-only transaction (a standby, or default_transaction_read_only) */
    "58000", "58030",           /* system error, I/O error */
  };
  for (size_t i = 0; i < sizeof list / sizeof list[0]; i++)
    if (!strcmp(st, list[i])) return 1;
  return 0;
}

static int res_passing(struct pg_store *s, const PGresult *r) {
  if (!conn_ok(s) || !r) return 1; /* the connection is gone (or libpq ran out of memory) */
  return passing_state(PQresultErrorField(r, PG_DIAG_SQLSTATE));
}

static int res_is(const PGresult *r, const char *state) {
  const char *st = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
  return st && !strcmp(st, state);
}

static int64_t cmd_rows(PGresult *r) { return strtoll(PQcmdTuples(r), NULL, 10); }

static void quiet_notices(void *arg, const char *message) { (void)arg; (void)message; }

/* ---- the session: lock, prepared statements ---- */

/* The second key of a host id's lock: FNV-1a, 31 bits (pg_locks shows it as objid, unsigned). */
static unsigned id_key(const char *id) {
  uint32_t h = 2166136261u;
  for (const unsigned char *p = (const unsigned char *)id; *p; p++) h = (h ^ *p) * 16777619u;
  return h & 0x7fffffffu;
}

/* Names the session that holds an advisory lock (pid, client, application) into who: key1 0 and
 * key2 HOST_LOCK_KEY for the database's lock, else (ID_LOCK_CLASS, id_key). */
static void lock_holder(struct pg_store *s, long long classid, long long objid, int subid, char *who, size_t n) {
  char sql[600];
  snprintf(sql, sizeof sql,
           "SELECT l.pid, coalesce(host(a.client_addr), 'a local socket'), coalesce(a.application_name, '')"
           " FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid"
           " WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %lld AND l.objid = %lld AND l.objsubid = %d"
           " AND l.pid <> pg_backend_pid()"
           " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) LIMIT 1",
           classid, objid, subid);
  PGresult *r = PQexec(s->conn, sql);
  if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1) {
    const char *app = PQgetvalue(r, 0, 2);
    snprintf(who, n, "%s%s(PostgreSQL backend pid %s, client %s)", *app ? app : "another session",
             *app ? " " : " ", PQgetvalue(r, 0, 0), PQgetvalue(r, 0, 1));
  } else {
    snprintf(who, n, "another session (it could not be named)");
  }
  PQclear(r);
}

/* A boolean query about a lock: 1 t, 0 f, -1 e. */
static int query_bool(struct pg_store *s, const char *sql, struct sg_error *e, const char *what) {
  PGresult *r = PQexec(s->conn, sql);
  if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
    fail_res(s, e, res_passing(s, r) ? SG_E_UNAVAILABLE : SG_E_INTERNAL, r, what);
    PQclear(r);
    return -1;
  }
  int yes = PQgetvalue(r, 0, 0)[0] == 't';
  PQclear(r);
  return yes;
}

static int take_id(struct pg_store *s, struct sg_error *e);
static void finish_flight(struct pg_store *s);
static int exec_sql(struct pg_store *s, const char *sql, PGresult **out, struct sg_error *e, const char *what);

/* The session's locks: the database's, shared; and the host id's (once registered): 0, or -1 with
 * SG_E_CONFLICT naming the session that holds the id. */
static int take_locks(struct pg_store *s, struct sg_error *e) {
  char sql[160];
  snprintf(sql, sizeof sql, "SELECT pg_try_advisory_lock_shared(%lld)", HOST_LOCK_KEY);
  int got = query_bool(s, sql, e, "take the database's shared lock");
  if (got < 0) return -1;
  if (!got) return sg_errorf(e, SG_E_CONFLICT, "database %s is locked by a tool that must have it alone", s->where);
  return s->me[0] ? take_id(s, e) : 0;
}

/* The host id's lock, and LISTEN on its channel. */
static int take_id(struct pg_store *s, struct sg_error *e) {
  char sql[160];
  snprintf(sql, sizeof sql, "SELECT pg_try_advisory_lock(%d, %d)", ID_LOCK_CLASS, (int)id_key(s->me));
  int got = query_bool(s, sql, e, "take the host id's lock");
  if (got < 0) return -1;
  if (got) {
    snprintf(sql, sizeof sql, "LISTEN %s", s->channel);
    return exec_sql(s, sql, NULL, e, "listen");
  }
  char who[300];
  lock_holder(s, ID_LOCK_CLASS, id_key(s->me), 2, who, sizeof who);
  return sg_errorf(e, SG_E_CONFLICT, "host id '%s' is in use on %s by %s: each host needs its own --host-id",
                   s->me, s->where, who);
}

static int prepare_all(struct pg_store *s, struct sg_error *e) {
  for (int i = 0; i < ST_COUNT; i++) {
    char name[16];
    snprintf(name, sizeof name, "sg%d", i);
    PGresult *r = PQprepare(s->conn, name, stmt_sql[i], 0, NULL);
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
      char what[100];
      snprintf(what, sizeof what, "prepare '%.60s'", stmt_sql[i]);
      fail_res(s, e, res_passing(s, r) ? SG_E_UNAVAILABLE : SG_E_INTERNAL, r, what);
      PQclear(r);
      return -1;
    }
    PQclear(r);
  }
  s->prepared = 1;
  return 0;
}

/* Runs SQL text (possibly several statements) expecting no error; the last result is returned in
 * *out when out is given (else cleared). */
static int exec_sql(struct pg_store *s, const char *sql, PGresult **out, struct sg_error *e, const char *what) {
  finish_flight(s);
  PGresult *r = PQexec(s->conn, sql);
  ExecStatusType st = PQresultStatus(r);
  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
    fail_res(s, e, res_passing(s, r) ? SG_E_UNAVAILABLE : SG_E_INTERNAL, r, what);
    PQclear(r);
    return -1;
  }
  if (out) *out = r;
  else PQclear(r);
  return 0;
}

/* What every connection needs before its first op: durable commits, the host lock, the statements. */
static int session_setup(struct pg_store *s, struct sg_error *e) {
  s->prepared = 0;
  PQsetNoticeProcessor(s->conn, quiet_notices, NULL);
  if (exec_sql(s, "SET synchronous_commit = on", NULL, e, "set synchronous_commit") < 0) return -1;
  const char *enc = PQparameterStatus(s->conn, "client_encoding");
  s->utf8 = enc && (!strcmp(enc, "UTF8") || !strcmp(enc, "UTF-8"));
  return take_locks(s, e);
}

/* A new session on the same parameters (the server restarted, the network came back). Reads call it
 * at most once a second (throttle), retry_commit at the engine's back-off. */
static int reconnect(struct pg_store *s, int throttle, struct sg_error *e) {
  if (s->lost_lock)
    return sg_errorf(e, SG_E_INTERNAL, "postgres: %s: another session took the host lock while this host was"
                     " disconnected; this host must stop", s->where);
  int64_t now = sg_now_ms();
  if (throttle && now - s->last_reconnect_ms < 1000) {
    char m[300];
    snprintf(m, sizeof m, "%s", PQerrorMessage(s->conn));
    trim_nl(m);
    return sg_errorf(e, SG_E_UNAVAILABLE, "postgres: the connection to %s is lost: %s", s->where, m);
  }
  s->last_reconnect_ms = now;
  PQreset(s->conn);
  if (!conn_ok(s)) {
    char m[300];
    snprintf(m, sizeof m, "%s", PQerrorMessage(s->conn));
    trim_nl(m);
    return sg_errorf(e, SG_E_UNAVAILABLE, "postgres: cannot reconnect to %s: %s", s->where, m);
  }
  if (session_setup(s, e) < 0 || prepare_all(s, e) < 0) {
    if (e->code == SG_E_CONFLICT) {
      s->lost_lock = 1;
      char m[sizeof e->msg];
      snprintf(m, sizeof m, "%s", e->msg);
      sg_errorf(e, SG_E_INTERNAL, "postgres: reconnected, but %s", m);
    }
    return -1;
  }
  sg_info("postgres: reconnected to %s", s->where);
  return 0;
}

/* ---- held transactions ---- */

static void redo_clear(struct pg_store *s) {
  s->nredo = 0;
  s->arena.len = 0;
  s->evbody.len = 0;
  s->nev = 0;
  if (s->kept_inbox.n) {
    for (size_t i = 0; i < s->kept_inbox.cap; i++)
      if (sg_map_live(&s->kept_inbox, i)) free((char *)s->kept_inbox.slots[i].key);
    sg_map_free(&s->kept_inbox);
    sg_map_init(&s->kept_inbox);
  }
}

static void redo_add(struct pg_store *s, int st, const struct params *p) {
  if (s->nredo == s->capredo) {
    s->capredo = s->capredo ? s->capredo * 2 : 64;
    s->redo = sg_xrealloc(s->redo, s->capredo * sizeof *s->redo);
  }
  struct redo *r = &s->redo[s->nredo++];
  r->st = st;
  r->n = p->n;
  for (int i = 0; i < p->n; i++) {
    if (!p->v[i]) { r->off[i] = -1; continue; }
    r->off[i] = (long)s->arena.len;
    sg_buf_add(&s->arena, p->v[i], strlen(p->v[i]) + 1);
  }
  if (st == ST_INBOX_PUT && p->v[0]) {
    void *at = (void *)(uintptr_t)s->nredo; /* 1 + index */
    if (sg_map_get(&s->kept_inbox, p->v[0])) {
      for (size_t i = 0; i < s->kept_inbox.cap; i++)
        if (sg_map_live(&s->kept_inbox, i) && !strcmp(s->kept_inbox.slots[i].key, p->v[0])) s->kept_inbox.slots[i].val = at;
    } else {
      sg_map_put(&s->kept_inbox, sg_strdup(p->v[0]), at);
    }
  }
}

/* Rolls back what PostgreSQL left of the transaction (if the connection still stands). */
static void roll_back_open(struct pg_store *s) {
  if (!conn_ok(s) || PQtransactionStatus(s->conn) == PQTRANS_IDLE) return;
  PQclear(PQexec(s->conn, "ROLLBACK")); /* if it fails, the connection is gone: nothing is left open */
}

/* The transaction met a passing failure: note why (r may be NULL), and roll back; its writes stay kept. */
static void hold(struct pg_store *s, const PGresult *r, const char *what) {
  if (!s->held) {
    char m[340];
    res_msg(s, r, m, sizeof m);
    snprintf(s->held_why, sizeof s->held_why, "postgres: %s: %s", what, m);
    sg_warn("%s (the transaction is kept and will be written again)", s->held_why);
  }
  s->held = 1;
  roll_back_open(s);
}

/* Runs a write. Inside a transaction the write is kept first; a passing failure holds the store and
 * counts as done; once held, writes are only kept. 1 = it ran (*rows: rows changed), 0 = only kept,
 * -1 = failed. */
static int wr_exec_valid(struct pg_store *s, int st, const struct params *p, int64_t *rows, struct sg_error *e,
                         const char *what);
static int wr_exec(struct pg_store *s, int st, const struct params *p, int64_t *rows, struct sg_error *e,
                   const char *what) {
  if (!s->utf8) return wr_exec_valid(s, st, p, rows, e, what);
  struct params q = *p;
  char *own[MAX_PARAMS];
  params_fix_utf8(&q, own);
  int rc = wr_exec_valid(s, st, &q, rows, e, what);
  params_free(q.n, own);
  return rc;
}

static int wr_exec_valid(struct pg_store *s, int st, const struct params *p, int64_t *rows, struct sg_error *e,
                         const char *what) {
  if (rows) *rows = 0;
  /* retention runs on its own (autocommit) so that it can say how many rows it deleted */
  int own = st == ST_SAGA_PRUNE || st == ST_INBOX_PRUNE;
  if (s->in_txn && !own) { /* kept, and sent with the commit */
    redo_add(s, st, p);
    return 0;
  }
  if (s->held && !own) return 0;
  finish_flight(s);
  if (s->lost_lock) return reconnect(s, 0, e);
  if (!conn_ok(s) || !s->prepared) {
    if (own) return sg_errorf(e, SG_E_UNAVAILABLE, "postgres: %s: the connection is lost", what);
    if (s->in_txn) { hold(s, NULL, what); return 0; }
  }
  char name[16];
  snprintf(name, sizeof name, "sg%d", st);
  PGresult *r = PQexecPrepared(s->conn, name, p->n, p->v, NULL, NULL, 0);
  if (PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK) {
    if (rows) *rows = cmd_rows(r);
    PQclear(r);
    return 1;
  }
  if (res_passing(s, r)) {
    if (s->in_txn && !own) {
      hold(s, r, what);
      PQclear(r);
      return 0;
    }
    fail_res(s, e, SG_E_UNAVAILABLE, r, what);
    PQclear(r);
    return -1;
  }
  /* a duplicate id is a conflict the caller can act on, not a store failure */
  fail_res(s, e, res_is(r, "23505") || res_is(r, "SG002") ? SG_E_CONFLICT : SG_E_INTERNAL, r, what);
  PQclear(r);
  return -1;
}

static int wr_done(struct pg_store *s, int st, const struct params *p, struct sg_error *e, const char *what) {
  return wr_exec(s, st, p, NULL, e, what) < 0 ? -1 : 0;
}

/* Runs a read: the PGresult (the caller clears it), or NULL with e filled. A lost connection is tried
 * again once on a new one when the read may see the last commit anyway (no transaction, or a held
 * one); inside a transaction that was going well, the transaction is lost: the store is held (its
 * writes are kept) and the read answers from the new connection. */
static PGresult *rd_exec_valid(struct pg_store *s, int st, const struct params *p, struct sg_error *e,
                               const char *what);
static PGresult *rd_exec(struct pg_store *s, int st, const struct params *p, struct sg_error *e, const char *what) {
  if (!s->utf8 || !p) return rd_exec_valid(s, st, p, e, what);
  struct params q = *p;
  char *own[MAX_PARAMS];
  params_fix_utf8(&q, own);
  PGresult *r = rd_exec_valid(s, st, &q, e, what);
  params_free(q.n, own);
  return r;
}

static PGresult *rd_exec_valid(struct pg_store *s, int st, const struct params *p, struct sg_error *e,
                               const char *what) {
  char name[16];
  snprintf(name, sizeof name, "sg%d", st);
  finish_flight(s);
  for (int tries = 0;; tries++) {
    if (s->lost_lock || !conn_ok(s) || !s->prepared) {
      if (s->in_txn && !s->held) hold(s, NULL, what);
      if (reconnect(s, 1, e) < 0) return NULL;
    }
    PGresult *r = PQexecPrepared(s->conn, name, p ? p->n : 0, p ? p->v : NULL, NULL, NULL, 0);
    if (PQresultStatus(r) == PGRES_TUPLES_OK) return r;
    int passing = res_passing(s, r);
    /* PostgreSQL aborts a transaction on any error: a passing one holds it (its writes are kept) */
    if (passing && s->in_txn && !s->held) hold(s, r, what);
    if (passing && !conn_ok(s) && tries == 0) { PQclear(r); continue; }
    fail_res(s, e, passing ? SG_E_UNAVAILABLE : SG_E_INTERNAL, r, what);
    PQclear(r);
    return NULL;
  }
}

/* ---- transactions ---- */

static int pg_begin(struct sg_store *base, struct sg_error *e) {
  struct pg_store *s = S(base);
  if (s->held)
    return sg_errorf(e, SG_E_UNAVAILABLE, "%s (a transaction is waiting to be written again)", s->held_why);
  if (s->in_txn) return sg_errorf(e, SG_E_INTERNAL, "postgres: begin: a transaction is already open");
  if (s->lost_lock) return reconnect(s, 0, e);
  redo_clear(s);
  s->in_txn = 1;
  s->commit_unknown = 0;
  /* nothing goes to the server before the commit: the writes are kept and sent together */
  return 0;
}

static void committed(struct pg_store *s) {
  s->commit_seq++;
  s->held = s->in_txn = s->commit_unknown = 0;
  redo_clear(s);
  s->commits++;
}

/* Whether the commit whose answer was lost went through: the host's commit_seq tells. 1 yes, 0 no, -1 e. */
static int lost_commit_went_through(struct pg_store *s, struct sg_error *e) {
  PGresult *r = NULL;
  char sql[300];
  if (s->me[0]) {
    char *lit = PQescapeLiteral(s->conn, s->me, strlen(s->me));
    snprintf(sql, sizeof sql, "SELECT commit_seq FROM hosts WHERE host_id = %s", lit ? lit : "''");
    PQfreemem(lit);
  } else {
    snprintf(sql, sizeof sql, "SELECT commit_seq FROM store_state");
  }
  if (exec_sql(s, sql, &r, e, "read the last commit") < 0) return -1;
  int yes = PQntuples(r) == 1 && strtoll(PQgetvalue(r, 0, 0), NULL, 10) == s->commit_seq + 1;
  PQclear(r);
  return yes;
}

/* The transaction's writes, kept in order, are sent at the commit in one round trip (libpq's pipeline
 * mode): BEGIN, each write, the fence (or, for a store no host registered on, the store_state
 * update), COMMIT. A write that must change one row (saga insert and updates) raises SG002 when it
 * does not, which aborts the transaction like the fence's SG001.
 *
 * The pipeline is sent in non-blocking mode and its results read as they arrive (commit_start,
 * commit_poll: the engine waits on the socket), or at once (block: retry_commit, and a read that
 * comes while a commit is on its way, which keeps the outcome for commit_poll).
 * Outcome: 0 = committed; -1 with e: SG_E_UNAVAILABLE (a passing failure: the writes stay kept, the
 * store is held), SG_E_FENCED, SG_E_CONFLICT, SG_E_INTERNAL (the writes are dropped). */
static void events_flush(struct pg_store *s);

/* Writes merged at the commit: the saga rows and history rows of a batch go as one statement per
 * kind (ST_*_N: each parameter an array, one element per row) instead of one per row, which is most of
 * what the server spends on a batch (its per-statement work, and the per-row CTE and check). They may
 * move later than they were made, past writes that touch neither sagas nor history (neutral_write);
 * any other write sends what is merged so far first. Two writes of one saga row are never merged
 * together (the first group goes before the second write joins a new one). */
enum { MG_SAGA_INSERT, MG_SAGA_UPDATE, MG_SAGA_PROGRESS, MG_HIST, MG_KINDS };
static const int mg_single[MG_KINDS] = { ST_SAGA_INSERT, ST_SAGA_UPDATE, ST_SAGA_PROGRESS, ST_HIST_INSERT };
static const int mg_multi[MG_KINDS] = { ST_SAGA_INSERT_N, ST_SAGA_UPDATE_N, ST_SAGA_PROGRESS_N, ST_HIST_INSERT_N };

static int merge_kind(int st) {
  for (int k = 0; k < MG_KINDS; k++)
    if (mg_single[k] == st) return k;
  return -1;
}

static int neutral_write(int st) {
  switch (st) {
  case ST_JOURNAL_PUT: case ST_JOURNAL_DEL: case ST_TIMER_PUT: case ST_TIMER_DEL: case ST_OUTBOX_PUT:
  case ST_OUTBOX_DEL: case ST_INBOX_PUT: case ST_EVENT_PUT: case ST_SIGNAL_PUT: case ST_SIGNAL_DONE:
    return 1;
  default:
    return 0;
  }
}

/* an array literal's element: quoted, with " and \ escaped; NULL unquoted */
static void arr_elem(struct sg_buf *b, const char *v, int first) {
  if (!first) sg_buf_add(b, ",", 1);
  if (!v) { sg_buf_add(b, "NULL", 4); return; }
  sg_buf_add(b, "\"", 1);
  while (*v) {
    size_t n = strcspn(v, "\"\\");
    sg_buf_add(b, v, n);
    v += n;
    if (*v) { char esc[2] = { '\\', *v++ }; sg_buf_add(b, esc, 2); }
  }
  sg_buf_add(b, "\"", 1);
}

struct mgroup { size_t *at; size_t n, cap; };

static int pl_query(struct pg_store *s, int st, int n, const char *const *v) {
  if (s->fl.nq == s->fl.capq) {
    s->fl.capq = s->fl.capq ? s->fl.capq * 2 : 64;
    s->fl.qst = sg_xrealloc(s->fl.qst, s->fl.capq * sizeof *s->fl.qst);
  }
  s->fl.qst[s->fl.nq++] = st;
  if (st < 0) return 1;
  char name[16];
  snprintf(name, sizeof name, "sg%d", st);
  return PQsendQueryPrepared(s->conn, name, n, v, NULL, NULL, 0);
}

static int pl_redo(struct pg_store *s, const struct redo *w) {
  const char *v[MAX_PARAMS];
  for (int i = 0; i < w->n; i++) v[i] = w->off[i] < 0 ? NULL : s->arena.data + w->off[i];
  return pl_query(s, w->st, w->n, v);
}

/* sends what is merged so far: a kind with one row as its single-row statement */
static int pl_merged(struct pg_store *s, struct mgroup g[MG_KINDS]) {
  int ok = 1;
  for (int k = 0; ok && k < MG_KINDS; k++) {
    if (!g[k].n) continue;
    if (g[k].n == 1) {
      ok = pl_redo(s, &s->redo[g[k].at[0]]);
      g[k].n = 0;
      continue;
    }
    const struct redo *w0 = &s->redo[g[k].at[0]];
    int np = w0->n;
    size_t off[MAX_PARAMS + 1];
    s->arrays.len = 0;
    for (int i = 0; i < np; i++) {
      off[i] = s->arrays.len;
      sg_buf_add(&s->arrays, "{", 1);
      for (size_t r = 0; r < g[k].n; r++) {
        const struct redo *w = &s->redo[g[k].at[r]];
        arr_elem(&s->arrays, w->off[i] < 0 ? NULL : s->arena.data + w->off[i], r == 0);
      }
      sg_buf_add(&s->arrays, "}", 2); /* with its NUL */
    }
    off[np] = s->arrays.len;
    sg_buf_add_i64(&s->arrays, (int64_t)g[k].n);
    sg_buf_add(&s->arrays, "", 1);
    const char *v[MAX_PARAMS + 1];
    for (int i = 0; i <= np; i++) v[i] = s->arrays.data + off[i];
    ok = pl_query(s, mg_multi[k], k == MG_HIST ? np : np + 1, v);
    g[k].n = 0;
  }
  if (s->merged_ids.n) {
    sg_map_free(&s->merged_ids);
    sg_map_init(&s->merged_ids);
  }
  return ok;
}

/* the transaction's writes, merged where they can be (see merge_kind) */
static int pl_writes(struct pg_store *s) {
  struct mgroup g[MG_KINDS];
  memset(g, 0, sizeof g);
  int ok = 1;
  for (size_t k = 0; ok && k < s->nredo; k++) {
    const struct redo *w = &s->redo[k];
    int kind = merge_kind(w->st);
    /* rows whose arity differs from the kind's first (cannot happen today) go one by one */
    if (kind >= 0 && g[kind].n && s->redo[g[kind].at[0]].n != w->n) kind = -1;
    if (kind < 0) {
      if (!neutral_write(w->st)) ok = pl_merged(s, g);
      ok = ok && pl_redo(s, w);
      continue;
    }
    if (kind != MG_HIST) {
      const char *id = w->off[0] < 0 ? "" : s->arena.data + w->off[0];
      if (sg_map_get(&s->merged_ids, id)) ok = pl_merged(s, g);
      sg_map_put(&s->merged_ids, id, (void *)1);
    }
    if (g[kind].n == g[kind].cap) {
      g[kind].cap = g[kind].cap ? g[kind].cap * 2 : 64;
      g[kind].at = sg_xrealloc(g[kind].at, g[kind].cap * sizeof *g[kind].at);
    }
    g[kind].at[g[kind].n++] = k;
  }
  ok = ok && pl_merged(s, g);
  for (int k = 0; k < MG_KINDS; k++) free(g[k].at);
  if (s->merged_ids.n) {
    sg_map_free(&s->merged_ids);
    sg_map_init(&s->merged_ids);
  }
  return ok;
}

static int pipeline_send(struct pg_store *s) {
  char seq[24], ep[24], ntimer[24], noutbox[24];
  snprintf(seq, sizeof seq, "%lld", (long long)s->commit_seq + 1);
  snprintf(ep, sizeof ep, "%lld", (long long)s->epoch);
  snprintf(ntimer, sizeof ntimer, "%lld", (long long)s->next_timer);
  snprintf(noutbox, sizeof noutbox, "%lld", (long long)s->next_outbox);
  int *qst = s->fl.qst;
  size_t capq = s->fl.capq;
  memset(&s->fl, 0, sizeof s->fl);
  s->fl.qst = qst;
  s->fl.capq = capq;
  s->fl.what = "commit";
  events_flush(s);
  if (PQsetnonblocking(s->conn, 1) != 0 || !PQenterPipelineMode(s->conn)) return -1;
  int ok = PQsendQueryParams(s->conn, "BEGIN", 0, NULL, NULL, NULL, NULL, 0) && pl_query(s, -1, 0, NULL);
  ok = ok && pl_writes(s);
  if (ok && s->me[0]) {
    const char *v[] = { s->me, ep, seq };
    ok = PQsendQueryParams(s->conn, "SELECT sg_fence($1, $2::bigint, $3::bigint)", 3, NULL, v, NULL, NULL, 0);
  } else if (ok) {
    const char *v[] = { seq, ntimer, noutbox };
    ok = PQsendQueryParams(s->conn, "UPDATE store_state SET commit_seq = $1::bigint, next_timer = $2::bigint,"
                           " next_outbox = $3::bigint", 3, NULL, v, NULL, NULL, 0);
  }
  ok = ok && pl_query(s, -1, 0, NULL);
  ok = ok && PQsendQueryParams(s->conn, "COMMIT", 0, NULL, NULL, NULL, NULL, 0) && pl_query(s, -1, 0, NULL)
       && PQpipelineSync(s->conn);
  if (!ok) return -1;
  s->fl.active = 1;
  s->fl.sent = 1; /* the COMMIT is queued: from here a broken connection leaves the outcome unknown */
  int f = PQflush(s->conn);
  if (f < 0) return -1;
  s->fl.sending = f == 1;
  return 0;
}

/* The connection failed under the pipeline. */
static int pipeline_broken(struct pg_store *s, struct sg_error *e) {
  char m[300];
  snprintf(m, sizeof m, "%s", PQerrorMessage(s->conn));
  trim_nl(m);
  if (s->fl.sent) s->commit_unknown = 1; /* only the host's commit_seq can tell */
  PQclear(s->fl.first_bad);
  s->fl.first_bad = NULL;
  s->fl.active = 0;
  if (!s->held) {
    snprintf(s->held_why, sizeof s->held_why, "postgres: %s: the connection failed: %s", s->fl.what, m);
    sg_warn("%s (the transaction is kept and will be written again)", s->held_why);
  }
  s->held = 1;
  /* a half-read pipeline cannot be used again: the next use reconnects (a new session, with the
   * host id's lock, LISTEN and the statements prepared again) */
  s->prepared = 0;
  return sg_errorf(e, SG_E_UNAVAILABLE, "%s", s->held_why);
}

/* The end of a pipeline whose sync arrived. */
static int pipeline_end(struct pg_store *s, struct sg_error *e) {
  PQexitPipelineMode(s->conn);
  PQsetnonblocking(s->conn, 0);
  s->fl.active = 0;
  PGresult *bad = s->fl.first_bad;
  s->fl.first_bad = NULL;
  if (s->fl.committed_ok && !bad) return 0;
  roll_back_open(s); /* what the failure left: an aborted transaction block */
  if (!bad) return sg_errorf(e, SG_E_INTERNAL, "postgres: commit: the transaction was rolled back");
  int code = res_is(bad, "SG001") ? SG_E_FENCED : res_is(bad, "SG002") || res_is(bad, "23505")
           ? SG_E_CONFLICT : res_passing(s, bad) ? SG_E_UNAVAILABLE : SG_E_INTERNAL;
  char wh[80];
  snprintf(wh, sizeof wh, "%.60s", s->fl.what);
  if (code == SG_E_UNAVAILABLE) hold(s, bad, wh);
  fail_res(s, e, code, bad, wh);
  PQclear(bad);
  return -1;
}

/* Reads the pipeline's results: 1 = more to come (non-blocking), 0 / -1 = its outcome (e). The
 * results come in order, each query's followed by a NULL; the first failure says why, what follows
 * it is aborted; the sync ends it. */
static int pipeline_recv(struct pg_store *s, int block, struct sg_error *e) {
  if (block) {
    PQsetnonblocking(s->conn, 0);
    if (PQflush(s->conn) < 0) return pipeline_broken(s, e);
    s->fl.sending = 0;
  } else {
    if (s->fl.sending) {
      int f = PQflush(s->conn);
      if (f < 0) return pipeline_broken(s, e);
      s->fl.sending = f == 1;
    }
    if (!PQconsumeInput(s->conn)) return pipeline_broken(s, e);
  }
  for (;;) {
    if (!block && PQisBusy(s->conn)) return 1;
    PGresult *r = PQgetResult(s->conn);
    if (s->fl.q == s->fl.nq) { /* the sync */
      int synced = r && PQresultStatus(r) == PGRES_PIPELINE_SYNC;
      PQclear(r);
      if (!synced) return pipeline_broken(s, e);
      return pipeline_end(s, e);
    }
    if (s->fl.await_null) { /* the end of a query's results */
      if (r) { PQclear(r); continue; }
      s->fl.await_null = 0;
      s->fl.q++;
      continue;
    }
    if (!r) return pipeline_broken(s, e);
    ExecStatusType st = PQresultStatus(r);
    size_t q = s->fl.q;
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) {
      if (q == s->fl.nq - 1 && !strcmp(PQcmdStatus(r), "COMMIT")) s->fl.committed_ok = 1;
    } else if (st != PGRES_PIPELINE_ABORTED && !s->fl.first_bad) {
      if (!conn_ok(s)) { PQclear(r); return pipeline_broken(s, e); }
      s->fl.first_bad = r;
      s->fl.what = q == 0 ? "begin" : q == s->fl.nq - 1 ? "commit" : s->fl.qst[q] < 0 ? "fence" : stmt_sql[s->fl.qst[q]];
      r = NULL;
    }
    PQclear(r);
    s->fl.await_null = 1;
  }
}

static int run_pipeline(struct pg_store *s, struct sg_error *e) {
  if (pipeline_send(s) < 0) return pipeline_broken(s, e);
  return pipeline_recv(s, 1, e);
}

/* The end of a commit attempt: committed, or the writes dropped (only a passing failure keeps them). */
static int commit_outcome(struct pg_store *s, int rc, struct sg_error *e) {
  if (rc == 0) { committed(s); return 0; }
  if (e->code != SG_E_UNAVAILABLE) {
    s->in_txn = s->held = s->commit_unknown = 0;
    redo_clear(s);
  }
  return -1;
}

static int pg_commit_start(struct sg_store *base, struct sg_error *e) {
  struct pg_store *s = S(base);
  if (s->held) return sg_errorf(e, SG_E_UNAVAILABLE, "%s", s->held_why);
  if (!s->in_txn) return sg_errorf(e, SG_E_INTERNAL, "postgres: commit: no transaction is open");
  if (s->fl.active || s->fl.finished) return sg_errorf(e, SG_E_INTERNAL, "postgres: a commit is already on its way");
  if (s->lost_lock || !conn_ok(s) || !s->prepared) {
    hold(s, NULL, "commit (the connection is lost)");
    return sg_errorf(e, SG_E_UNAVAILABLE, "%s", s->held_why);
  }
  if (pipeline_send(s) < 0) return commit_outcome(s, pipeline_broken(s, e), e);
  return 0;
}

static int pg_commit_poll(struct sg_store *base, int block, int *want_write, struct sg_error *e) {
  struct pg_store *s = S(base);
  *want_write = 0;
  if (s->fl.finished) { /* a read finished it meanwhile */
    s->fl.finished = 0;
    if (s->fl.rc < 0) *e = s->fl.err;
    return s->fl.rc;
  }
  if (!s->fl.active) return sg_errorf(e, SG_E_INTERNAL, "postgres: no commit is on its way");
  int rc = pipeline_recv(s, block, e);
  if (rc == 1) { *want_write = s->fl.sending; return 1; }
  return commit_outcome(s, rc, e);
}

/* Before any other use of the connection: the commit on its way is read to its end, and its outcome
 * kept for commit_poll. */
static void finish_flight(struct pg_store *s) {
  if (!s->fl.active) return;
  struct sg_error e = {0};
  int rc = commit_outcome(s, pipeline_recv(s, 1, &e), &e);
  s->fl.finished = 1;
  s->fl.rc = rc;
  s->fl.err = e;
}

static int pg_commit(struct sg_store *base, struct sg_error *e) {
  struct pg_store *s = S(base);
  if (s->held) return sg_errorf(e, SG_E_UNAVAILABLE, "%s", s->held_why);
  if (!s->in_txn) return sg_errorf(e, SG_E_INTERNAL, "postgres: commit: no transaction is open");
  if (s->lost_lock || !conn_ok(s) || !s->prepared) {
    hold(s, NULL, "commit (the connection is lost)");
    return sg_errorf(e, SG_E_UNAVAILABLE, "%s", s->held_why);
  }
  return commit_outcome(s, run_pipeline(s, e), e);
}

static int pg_rollback(struct sg_store *base, struct sg_error *e) {
  struct pg_store *s = S(base);
  s->in_txn = s->held = s->commit_unknown = 0;
  redo_clear(s);
  if (!conn_ok(s) || PQtransactionStatus(s->conn) == PQTRANS_IDLE) return 0;
  return exec_sql(s, "ROLLBACK", NULL, e, "rollback");
}

/* Writes the held transaction again: the same statements with the same parameters, from the same
 * committed state, so it yields the same rows (ids included) as the first time would have. */
static int pg_retry_commit(struct sg_store *base, struct sg_error *e) {
  struct pg_store *s = S(base);
  if (!s->held) return 0;
  if (s->lost_lock || !conn_ok(s) || !s->prepared) {
    if (reconnect(s, 0, e) < 0) return -1;
  } else {
    roll_back_open(s);
  }
  if (s->commit_unknown) {
    int done = lost_commit_went_through(s, e);
    if (done < 0) return -1;
    if (done) {
      sg_info("postgres: the commit whose answer was lost went through");
      committed(s);
      return 0;
    }
    s->commit_unknown = 0;
  }
  s->held = 0; /* a passing failure of this attempt holds it again */
  int rc = run_pipeline(s, e);
  if (rc < 0 && e->code == SG_E_UNAVAILABLE) s->held = 1;
  return commit_outcome(s, rc, e);
}

static int64_t pg_commit_count(struct sg_store *base) { return S(base)->commits; }

/* ---- row helpers ---- */

/* A column as text: NULL for SQL NULL; points into the result. */
static const char *col(const PGresult *r, int row, int c) {
  return PQgetisnull(r, row, c) ? NULL : PQgetvalue(r, row, c);
}
static int64_t col_i64(const PGresult *r, int row, int c) { return strtoll(PQgetvalue(r, row, c), NULL, 10); }
static int col_int(const PGresult *r, int row, int c) { return (int)col_i64(r, row, c); }

/* ---- definitions ---- */

static int pg_def_put(struct sg_store *base, const char *hash, const char *file, const char *source,
                      struct sg_error *e) {
  struct pg_store *s = S(base);
  struct params p = {0};
  p_text(&p, hash);
  p_text(&p, file);
  p_text(&p, source);
  p_int(&p, sg_now_ms());
  return wr_done(s, ST_DEF_PUT, &p, e, "def_put");
}

static int pg_def_get(struct sg_store *base, const char *hash, char **file, char **source, struct sg_error *e) {
  struct pg_store *s = S(base);
  struct params p = {0};
  p_text(&p, hash);
  if (file) *file = NULL;
  *source = NULL;
  PGresult *r = rd_exec(s, ST_DEF_GET, &p, e, "def_get");
  if (!r) return -1;
  if (PQntuples(r) > 0) {
    if (file) *file = sg_strdup(col(r, 0, 0));
    *source = sg_strdup(col(r, 0, 1));
  }
  PQclear(r);
  return 0;
}

/* ---- sagas ---- */

/* Reads a row selected with SAGA_COLS. own: the strings are copies the caller frees with
 * sg_store_saga_row_free; otherwise they are borrowed from the result for a callback. */
static void saga_from_row_at(const PGresult *res, int i, int o, struct sg_saga_row *r, int own);
static void saga_from_row(const PGresult *res, int i, struct sg_saga_row *r, int own) {
  saga_from_row_at(res, i, 0, r, own);
}

/* the same, with the saga's columns from column o on */
static void saga_from_row_at(const PGresult *res, int i, int o, struct sg_saga_row *r, int own) {
  const char *id = col(res, i, o + 0);
  snprintf(r->id, sizeof r->id, "%s", id ? id : "");
#define STR(c) (own ? sg_strdup(col(res, i, o + (c))) : (char *)col(res, i, o + (c)))
  r->type = STR(1);
  r->def_hash = STR(2);
  r->status = sg_status_parse(col(res, i, o + 3));
  r->step = col_int(res, i, o + 4);
  r->phase = col_int(res, i, o + 5);
  r->attempt = col_int(res, i, o + 6);
  r->input = STR(7);
  r->data = STR(8);
  r->error = STR(9);
  r->idem_key = STR(10);
#undef STR
  r->created_at = col_i64(res, i, o + 11);
  r->updated_at = col_i64(res, i, o + 12);
  r->deadline = col_i64(res, i, o + 13);
  r->version = col_i64(res, i, o + 14);
  r->attempt_started_at = col_i64(res, i, o + 15);
  r->attempt_base = col_int(res, i, o + 16);
  r->biz_key = own ? sg_strdup(col(res, i, o + 17)) : (char *)col(res, i, o + 17);
  r->trace = own ? sg_strdup(col(res, i, o + 18)) : (char *)col(res, i, o + 18);
  r->partial = own ? sg_strdup(col(res, i, o + 19)) : (char *)col(res, i, o + 19);
  r->parent = own ? sg_strdup(col(res, i, o + 20)) : (char *)col(res, i, o + 20);
  r->children = own ? sg_strdup(col(res, i, o + 21)) : (char *)col(res, i, o + 21);
  r->same_status = 0;
}

static int pg_saga_insert(struct sg_store *base, const struct sg_saga_row *r, struct sg_error *e) {
  struct pg_store *s = S(base);
  struct params p = {0};
  p_text(&p, r->id);
  p_text(&p, r->type);
  p_text(&p, r->def_hash);
  p_text(&p, sg_status_name(r->status));
  p_int(&p, r->step);
  p_int(&p, r->phase);
  p_int(&p, r->attempt);
  p_text(&p, r->input);
  p_text(&p, r->data);
  p_text(&p, r->error);
  p_text(&p, r->idem_key);
  p_int(&p, r->created_at);
  p_int(&p, r->updated_at);
  p_int(&p, r->deadline);
  p_int(&p, r->version);
  p_int(&p, r->attempt_started_at);
  p_int(&p, r->attempt_base);
  p_text(&p, r->biz_key);
  p_text(&p, r->trace);
  p_text(&p, r->partial);
  p_text(&p, r->parent);
  p_text(&p, r->children);
  p_text(&p, s->me[0] ? s->me : NULL);
  int64_t rows = 0;
  int ran = wr_exec(s, ST_SAGA_INSERT, &p, &rows, e, "saga_insert");
  if (ran < 0) return -1;
  if (ran && rows == 0) {
    if (s->in_txn) s->nredo--; /* not part of the transaction: the caller decides what follows */
    return sg_errorf(e, SG_E_CONFLICT, "postgres: saga_insert: saga %s (or type %s with idempotency key %s)"
                     " exists", r->id, r->type, r->idem_key ? r->idem_key : "-");
  }
  return 0;
}

static int pg_saga_update(struct sg_store *base, const struct sg_saga_row *r, struct sg_error *e) {
  struct pg_store *s = S(base);
  struct params p = {0};
  p_text(&p, r->id);
  if (!r->same_status) {
    p_text(&p, r->def_hash);
    p_text(&p, sg_status_name(r->status));
  }
  p_int(&p, r->step);
  p_int(&p, r->phase);
  p_int(&p, r->attempt);
  p_text(&p, r->data);
  p_text(&p, r->error);
  p_int(&p, r->updated_at);
  p_int(&p, r->deadline);
  p_int(&p, r->version);
  p_int(&p, r->attempt_started_at);
  p_int(&p, r->attempt_base);
  if (!r->same_status) p_text(&p, s->me[0] ? s->me : NULL); /* an operator's verb on a finished saga makes it ours */
  if (!r->same_status) p_text(&p, r->trace); /* an operator's retry changes it */
  p_text(&p, r->partial);
  p_text(&p, r->children);
  int64_t rows = 0;
  int ran = wr_exec(s, r->same_status ? ST_SAGA_PROGRESS : ST_SAGA_UPDATE, &p, &rows, e, "saga_update");
  if (ran < 0) return -1;
  if (ran && rows == 0) {
    if (s->in_txn) s->nredo--;
    return sg_errorf(e, SG_E_CONFLICT,
                     "saga %s: version conflict: expected stored version %lld (changed by another writer, or gone)",
                     r->id, (long long)(r->version - 1));
  }
  return 0;
}

static int saga_get_one(struct pg_store *s, int st, const struct params *p, struct sg_saga_row *out,
                        struct sg_error *e, const char *what) {
  PGresult *r = rd_exec(s, st, p, e, what);
  if (!r) return -1;
  int found = PQntuples(r) > 0;
  if (found) saga_from_row(r, 0, out, 1);
  PQclear(r);
  return found;
}

static int pg_saga_get(struct sg_store *base, const char *id, struct sg_saga_row *out, struct sg_error *e) {
  struct params p = {0};
  p_text(&p, id);
  return saga_get_one(S(base), ST_SAGA_GET, &p, out, e, "saga_get");
}

static int pg_saga_find_idem(struct sg_store *base, const char *type, const char *key, struct sg_saga_row *out,
                             struct sg_error *e) {
  struct params p = {0};
  p_text(&p, type);
  p_text(&p, key);
  return saga_get_one(S(base), ST_SAGA_FIND_IDEM, &p, out, e, "saga_find_idem");
}

static int saga_iter(struct pg_store *s, int st, const struct params *p, sg_saga_cb cb, void *ud,
                     struct sg_error *e, const char *what) {
  PGresult *r = rd_exec(s, st, p, e, what);
  if (!r) return -1;
  int n = PQntuples(r);
  for (int i = 0; i < n; i++) {
    struct sg_saga_row row;
    saga_from_row(r, i, &row, 0);
    if (cb(ud, &row)) break;
  }
  PQclear(r);
  return 0;
}

/* The SQL of saga_list for f (into sql, n bytes) and its parameters (p points into lo and hi, the
 * caller's 40-byte buffers). Each filter names a column with an index ending in id, and the created_at
 * bounds and the cursor narrow the range of ids read (sg_saga_filter_id_range). */
static void list_query(const struct sg_saga_filter *f, char *sql, size_t n, struct params *p, char *lo, char *hi) {
  struct sg_buf b;
  sg_buf_init(&b);
  sg_buf_adds(&b, "SELECT " SAGA_COLS " FROM sagas WHERE true");
  sg_saga_filter_id_range(f, lo, hi);
#define COND(sql_, add) do { add; sg_buf_printf(&b, sql_, p->n); } while (0)
  if (f->key) COND(" AND biz_key = $%d", p_text(p, f->key));
  if (f->parent) COND(" AND parent = $%d", p_text(p, f->parent));
  if (f->type) COND(" AND type = $%d", p_text(p, f->type));
  if (f->status >= 0) COND(" AND status = $%d", p_text(p, sg_status_name(f->status)));
  if (lo[0]) COND(" AND id > $%d", p_text(p, lo));
  if (hi[0]) COND(" AND id < $%d", p_text(p, hi));
  if (f->since > 0) COND(" AND created_at >= $%d", p_int(p, f->since));
  if (f->until > 0) COND(" AND created_at < $%d", p_int(p, f->until));
#undef COND
  sg_buf_adds(&b, f->desc ? " ORDER BY id DESC" : " ORDER BY id");
  if (f->limit > 0) {
    p_int(p, f->limit);
    sg_buf_printf(&b, " LIMIT $%d", p->n);
  }
  snprintf(sql, n, "%s", b.data);
  sg_buf_free(&b);
}

static PGresult *exec_params(struct pg_store *s, const char *sql, int n, const char *const *v, struct sg_error *e,
                             const char *what);

static int pg_saga_list(struct sg_store *base, const struct sg_saga_filter *f, sg_saga_cb cb, void *ud,
                        struct sg_error *e) {
  struct pg_store *s = S(base);
  char sql[1024], lo[40], hi[40];
  struct params p = {0};
  list_query(f, sql, sizeof sql, &p, lo, hi);
  char *own[MAX_PARAMS] = {0};
  if (s->utf8) params_fix_utf8(&p, own);
  PGresult *r = exec_params(s, sql, p.n, p.v, e, "saga_list");
  if (s->utf8) params_free(p.n, own);
  if (!r) return -1;
  int rows = PQntuples(r);
  for (int i = 0; i < rows; i++) {
    struct sg_saga_row row;
    saga_from_row(r, i, &row, 0);
    if (cb(ud, &row)) break;
  }
  PQclear(r);
  return 0;
}

/* a counts answer (status, count) into counts */
static void counts_from(const PGresult *r, int64_t counts[SG_ST__COUNT]) {
  for (int i = 0; i < SG_ST__COUNT; i++) counts[i] = 0;
  for (int i = 0; i < PQntuples(r); i++) {
    int status = sg_status_parse(PQgetvalue(r, i, 0));
    if (status >= 0) counts[status] = col_i64(r, i, 1);
  }
}

static int pg_saga_counts(struct sg_store *base, const char *type, int64_t counts[SG_ST__COUNT],
                          struct sg_error *e) {
  struct params p = {0};
  if (type) p_text(&p, type);
  PGresult *r = rd_exec(S(base), type ? ST_SAGA_COUNTS_TYPE : ST_SAGA_COUNTS, &p, e, "saga_counts");
  if (!r) return -1;
  counts_from(r, counts);
  PQclear(r);
  return 0;
}

static int pg_saga_each_active(struct sg_store *base, sg_saga_cb cb, void *ud, struct sg_error *e) {
  struct params p = {0};
  p_text(&p, S(base)->me);
  return saga_iter(S(base), ST_SAGA_ACTIVE, &p, cb, ud, e, "saga_each_active");
}

/* ---- history ---- */

static int pg_hist_insert(struct sg_store *base, struct sg_hist_row *r, struct sg_error *e) {
  struct pg_store *s = S(base);
  struct params p = {0};
  p_text(&p, r->saga_id);
  p_int(&p, r->step);
  p_text(&p, r->step_name);
  p_int(&p, r->phase);
  p_int(&p, r->attempt);
  p_text(&p, r->status);
  p_int(&p, r->started_at);
  p_int(&p, r->finished_at);
  p_text(&p, r->error);
  if (wr_exec(s, ST_HIST_INSERT, &p, NULL, e, "hist_insert") < 0) return -1;
  r->id = 0; /* from a sequence: not known here (nothing needs it) */
  return 0;
}

static int pg_hist_each(struct sg_store *base, const char *saga_id, sg_hist_cb cb, void *ud, struct sg_error *e) {
  struct params p = {0};
  p_text(&p, saga_id);
  PGresult *res = rd_exec(S(base), ST_HIST_EACH, &p, e, "hist_each");
  if (!res) return -1;
  for (int i = 0, n = PQntuples(res); i < n; i++) {
    struct sg_hist_row r = {
      .id = col_i64(res, i, 0),
      .saga_id = col(res, i, 1),
      .step = col_int(res, i, 2),
      .step_name = col(res, i, 3),
      .phase = col_int(res, i, 4),
      .attempt = col_int(res, i, 5),
      .status = col(res, i, 6),
      .started_at = col_i64(res, i, 7),
      .finished_at = col_i64(res, i, 8),
      .error = col(res, i, 9),
    };
    if (cb(ud, &r)) break;
  }
  PQclear(res);
  return 0;
}

/* ---- journal ---- */

static int pg_journal_put(struct sg_store *base, const struct sg_journal_row *r, struct sg_error *e) {
  struct params p = {0};
  p_text(&p, r->saga_id);
  p_int(&p, r->step);
  p_int(&p, r->phase);
  p_int(&p, r->attempt);
  p_int(&p, r->seq);
  p_text(&p, r->kind);
  p_int(&p, r->done);
  p_int(&p, r->is_error);
  p_text(&p, r->result);
  return wr_done(S(base), ST_JOURNAL_PUT, &p, e, "journal_put");
}

/* A row of the journal's columns (ST_JOURNAL_EACH's order); its strings point into the result. */
static struct sg_journal_row journal_from_row(const PGresult *res, int i) {
  struct sg_journal_row r = {
    .saga_id = col(res, i, 0),
    .step = col_int(res, i, 1),
    .phase = col_int(res, i, 2),
    .attempt = col_int(res, i, 3),
    .seq = col_int(res, i, 4),
    .kind = col(res, i, 5),
    .done = col_int(res, i, 6),
    .is_error = col_int(res, i, 7),
    .result = col(res, i, 8),
  };
  return r;
}

/* each row of res to cb (until it says stop), then res is cleared */
static void journal_rows(PGresult *res, sg_journal_cb cb, void *ud) {
  for (int i = 0, n = PQntuples(res); i < n; i++) {
    struct sg_journal_row r = journal_from_row(res, i);
    if (cb(ud, &r)) break;
  }
  PQclear(res);
}

static int pg_journal_each(struct sg_store *base, const char *saga_id, int step, int phase, int attempt,
                           sg_journal_cb cb, void *ud, struct sg_error *e) {
  struct params p = {0};
  p_text(&p, saga_id);
  p_int(&p, step);
  p_int(&p, phase);
  p_int(&p, attempt);
  PGresult *res = rd_exec(S(base), ST_JOURNAL_EACH, &p, e, "journal_each");
  if (!res) return -1;
  journal_rows(res, cb, ud);
  return 0;
}

/* ---- events ---- */

/* the transaction's events as one row (before the commit is sent; nothing when there are none) */
static void events_flush(struct pg_store *s) {
  if (!s->nev) return;
  struct params p = {0};
  p_int(&p, s->ev_at);
  p_int(&p, s->nev);
  p_text(&p, s->ev_host[0] ? s->ev_host : NULL);
  p_text(&p, s->evbody.data);
  redo_add(s, ST_EVENT_PUT, &p);
  s->evbody.len = 0;
  s->nev = 0;
}

/* kept in the transaction, and sent with its commit as one row (the line is UTF-8 already: JSON
 * escapes, and text that is not valid UTF-8 is mended as every parameter is) */
static int pg_event_put(struct sg_store *base, const struct sg_event_row *r, struct sg_error *e) {
  struct pg_store *s = S(base);
  if (!s->in_txn) return sg_errorf(e, SG_E_INTERNAL, "postgres: event_put outside a transaction");
  if (!s->nev++) {
    s->ev_at = r->at;
    snprintf(s->ev_host, sizeof s->ev_host, "%s", r->host_id ? r->host_id : "");
  }
  size_t at = s->evbody.len;
  sg_event_line(&s->evbody, r);
  if (s->utf8) {
    char *fixed = utf8_fixed(s->evbody.data + at);
    if (fixed) {
      s->evbody.len = at;
      sg_buf_adds(&s->evbody, fixed);
      free(fixed);
    }
  }
  return 0;
}

/* an event position "txid-id" (both decimal): 0, or -1 when malformed */
static int event_pos_parse(const char *pos, char txid[24], char id[24]) {
  const char *dash = strchr(pos, '-');
  if (!dash || dash == pos || dash - pos > 20 || !dash[1] || strlen(dash + 1) > 20) return -1;
  for (const char *c = pos; *c; c++)
    if (c != dash && (*c < '0' || *c > '9')) return -1;
  memcpy(txid, pos, (size_t)(dash - pos));
  txid[dash - pos] = 0;
  strcpy(id, dash + 1);
  return 0;
}

static int pg_journal_del(struct sg_store *base, const char *saga_id, struct sg_error *e) {
  struct params p = {0};
  p_text(&p, saga_id);
  return wr_done(S(base), ST_JOURNAL_DEL, &p, e, "journal_del");
}

/* ---- timers ---- */

static int pg_timer_put(struct sg_store *base, struct sg_timer_row *r, struct sg_error *e) {
  struct pg_store *s = S(base);
  struct params p = {0};
  p_text(&p, r->saga_id);
  p_int(&p, r->due_at);
  p_text(&p, r->kind);
  p_int(&p, r->ref);
  int64_t id = s->next_timer++;
  p_int(&p, id);
  if (wr_exec(s, ST_TIMER_PUT, &p, NULL, e, "timer_put") < 0) return -1;
  r->id = id;
  return 0;
}

/* Deleting an id that is already gone succeeds: a timer may fire and be cancelled in one batch. */
static int pg_timer_del(struct sg_store *base, int64_t id, struct sg_error *e) {
  struct params p = {0};
  p_int(&p, id);
  return wr_done(S(base), ST_TIMER_DEL, &p, e, "timer_del");
}

/* A row of (id, saga_id, due_at, kind, ref); its strings point into the result. */
static struct sg_timer_row timer_from_row(const PGresult *res, int i) {
  struct sg_timer_row r = {
    .id = col_i64(res, i, 0),
    .saga_id = col(res, i, 1),
    .due_at = col_i64(res, i, 2),
    .kind = col(res, i, 3),
    .ref = col_i64(res, i, 4),
  };
  return r;
}

static int timer_iter(struct pg_store *s, int st, const char *arg, sg_timer_cb cb, void *ud, struct sg_error *e) {
  struct params p = {0};
  p_text(&p, arg);
  PGresult *res = rd_exec(s, st, &p, e, "timer_each");
  if (!res) return -1;
  for (int i = 0, n = PQntuples(res); i < n; i++) {
    struct sg_timer_row r = timer_from_row(res, i);
    if (cb(ud, &r)) break;
  }
  PQclear(res);
  return 0;
}

static int pg_timer_each(struct sg_store *base, sg_timer_cb cb, void *ud, struct sg_error *e) {
  return timer_iter(S(base), ST_TIMER_EACH, S(base)->me, cb, ud, e);
}

/* ---- outbox ---- */

static int pg_outbox_put(struct sg_store *base, struct sg_msg *m, struct sg_error *e) {
  struct pg_store *s = S(base);
  struct params p = {0};
  p_text(&p, m->message_id);
  p_text(&p, m->correlation_id);
  const char *exchange;
  char rk[1024];
  sg_msg_row_route(m, &exchange, rk, sizeof rk);
  p_text(&p, exchange);
  p_text(&p, rk);
  p_text(&p, m->kind == SG_MSG_REPLY ? NULL : m->reply_to);
  p_text(&p, m->name);
  p_text(&p, m->saga_id);
  p_text(&p, m->saga_type);
  p_int(&p, m->step);
  p_int(&p, m->attempt);
  p_text(&p, m->status);
  p_text(&p, m->body);
  p_int(&p, m->created_at);
  int64_t id = s->next_outbox++;
  p_int(&p, id);
  p_text(&p, s->me[0] ? s->me : NULL);
  if (wr_exec(s, ST_OUTBOX_PUT, &p, NULL, e, "outbox_put") < 0) return -1;
  m->outbox_id = id;
  return 0;
}

/* Like timer_del, a second delete (a duplicate confirm) is not an error. */
static int pg_outbox_del(struct sg_store *base, int64_t id, struct sg_error *e) {
  struct params p = {0};
  p_int(&p, id);
  return wr_done(S(base), ST_OUTBOX_DEL, &p, e, "outbox_del");
}

/* a row of ST_OUTBOX_EACH; its strings point into the result (and its service into svc) */
static void msg_from_row(const PGresult *res, int i, struct sg_msg *m, char *svc, size_t n) {
  /* sg_msg has non-const members because received messages own theirs; these are borrowed. */
  struct sg_msg r = {
    .outbox_id = col_i64(res, i, 0),
    .message_id = (char *)col(res, i, 1),
    .correlation_id = (char *)col(res, i, 2),
    .saga_id = (char *)col(res, i, 7),
    .saga_type = (char *)col(res, i, 8),
    .step = col_int(res, i, 9),
    .attempt = col_int(res, i, 10),
    .status = (char *)col(res, i, 11),
    .body = (char *)col(res, i, 12),
    .created_at = col_i64(res, i, 13),
  };
  sg_msg_from_row(&r, col(res, i, 3), col(res, i, 4), col(res, i, 6), col(res, i, 5), svc, n);
  *m = r;
}

static int pg_outbox_each(struct sg_store *base, sg_msg_cb cb, void *ud, struct sg_error *e) {
  struct params p = {0};
  p_text(&p, S(base)->me);
  PGresult *res = rd_exec(S(base), ST_OUTBOX_EACH, &p, e, "outbox_each");
  if (!res) return -1;
  for (int i = 0, n = PQntuples(res); i < n; i++) {
    struct sg_msg m;
    char svc[256];
    msg_from_row(res, i, &m, svc, sizeof svc);
    if (cb(ud, &m)) break;
  }
  PQclear(res);
  return 0;
}

/* ---- inbox ---- */

/* ---- schedules ---- */

static int pg_schedule_last(struct sg_store *base, const char *name, int64_t *last, struct sg_error *e) {
  struct params p = {0};
  p_text(&p, name);
  PGresult *r = rd_exec(S(base), ST_SCHED_LAST, &p, e, "schedule_last");
  if (!r) return -1;
  int found = PQntuples(r) > 0;
  if (found) *last = col_i64(r, 0, 0);
  PQclear(r);
  return found;
}

/* its own transaction at once (autocommit), outside the batch: the claim's answer is needed now */
static int pg_schedule_claim(struct sg_store *base, const char *name, int64_t at, const struct sg_saga_row *sr,
                             struct sg_error *e) {
  struct pg_store *s = S(base);
  struct sg_saga_row none = {0};
  const struct sg_saga_row *r = sr ? sr : &none;
  struct params p = {0};
  p_text(&p, name);
  p_int(&p, at);
  p_text(&p, sr ? r->id : NULL);
  p_text(&p, r->type);
  p_text(&p, r->def_hash);
  p_text(&p, sg_status_name(r->status));
  p_int(&p, r->step);
  p_int(&p, r->phase);
  p_int(&p, r->attempt);
  p_text(&p, r->input);
  p_text(&p, r->data);
  p_text(&p, r->error);
  p_text(&p, r->idem_key);
  p_int(&p, r->created_at);
  p_int(&p, r->updated_at);
  p_int(&p, r->deadline);
  p_int(&p, r->version);
  p_int(&p, r->attempt_started_at);
  p_int(&p, r->attempt_base);
  p_text(&p, r->biz_key);
  p_text(&p, r->trace);
  p_text(&p, r->partial);
  p_text(&p, r->parent);
  p_text(&p, r->children);
  p_text(&p, s->me[0] ? s->me : NULL);
  PGresult *res = rd_exec(s, ST_SCHED_CLAIM, &p, e, "schedule_claim");
  if (!res) return -1;
  int claimed = PQntuples(res) > 0 && col_i64(res, 0, 0) > 0;
  int inserted = PQntuples(res) > 0 && col_i64(res, 0, 1) > 0;
  PQclear(res);
  if (claimed && sr && !inserted)
    return sg_errorf(e, SG_E_INTERNAL, "postgres: schedule_claim: %s at %lld claimed without its saga", name, (long long)at);
  return claimed;
}

static int pg_inbox_get(struct sg_store *base, const char *message_id, char **reply_status, char **reply_body,
                        struct sg_error *e) {
  struct params p = {0};
  p_text(&p, message_id);
  if (reply_status) *reply_status = NULL;
  if (reply_body) *reply_body = NULL;
  struct pg_store *s = S(base);
  uintptr_t at = (uintptr_t)sg_map_get(&s->kept_inbox, message_id);
  if (at) { /* handled earlier in this batch (or in a held one) */
    const struct redo *w = &s->redo[at - 1];
    if (reply_status && w->off[1] >= 0) *reply_status = sg_strdup(s->arena.data + w->off[1]);
    if (reply_body && w->off[2] >= 0) *reply_body = sg_strdup(s->arena.data + w->off[2]);
    return 1;
  }
  PGresult *r = rd_exec(S(base), ST_INBOX_GET, &p, e, "inbox_get");
  if (!r) return -1;
  int found = PQntuples(r) > 0;
  if (found) {
    if (reply_status) *reply_status = sg_strdup(col(r, 0, 0));
    if (reply_body) *reply_body = sg_strdup(col(r, 0, 1));
  }
  PQclear(r);
  return found;
}

static int pg_inbox_put(struct sg_store *base, const char *message_id, const char *reply_status,
                        const char *reply_body, struct sg_error *e) {
  struct params p = {0};
  p_text(&p, message_id);
  p_text(&p, reply_status);
  p_text(&p, reply_body);
  p_int(&p, sg_now_ms());
  return wr_done(S(base), ST_INBOX_PUT, &p, e, "inbox_put");
}

static int pg_inbox_prune(struct sg_store *base, int64_t before, int64_t *deleted, struct sg_error *e) {
  struct params p = {0};
  p_int(&p, before);
  int64_t rows = 0;
  if (wr_exec(S(base), ST_INBOX_PRUNE, &p, &rows, e, "inbox_prune") < 0) return -1;
  if (deleted) *deleted = rows;
  return 0;
}

static int pg_saga_prune(struct sg_store *base, int64_t before, int limit, int64_t *deleted, struct sg_error *e) {
  struct params p = {0};
  p_int(&p, before);
  p_int(&p, limit);
  int64_t rows = 0;
  if (wr_exec(S(base), ST_SAGA_PRUNE, &p, &rows, e, "saga_prune") < 0) return -1;
  if (deleted) *deleted = rows;
  return 0;
}

/* ---- signals ---- */

static int pg_signal_put(struct sg_store *base, const struct sg_signal_row *r, struct sg_error *e) {
  struct params p = {0};
  p_text(&p, r->id);
  p_text(&p, r->saga_id);
  p_text(&p, r->name);
  p_text(&p, r->payload);
  p_text(&p, r->idem_key);
  p_int(&p, r->seq);
  p_int(&p, r->received_at);
  p_int(&p, r->delivered_at);
  return wr_done(S(base), ST_SIGNAL_PUT, &p, e, "signal_put");
}

static int pg_signal_done(struct sg_store *base, const char *id, int64_t at, struct sg_error *e) {
  struct params p = {0};
  p_text(&p, id);
  p_int(&p, at);
  return wr_done(S(base), ST_SIGNAL_DONE, &p, e, "signal_done");
}

static int pg_signal_find(struct sg_store *base, const char *saga_id, const char *idem_key, struct sg_error *e) {
  struct params p = {0};
  p_text(&p, saga_id);
  p_text(&p, idem_key);
  PGresult *res = rd_exec(S(base), ST_SIGNAL_FIND, &p, e, "signal_find");
  if (!res) return -1;
  int found = PQntuples(res) > 0;
  PQclear(res);
  return found;
}

static int pg_signal_each(struct sg_store *base, const char *saga_id, sg_signal_cb cb, void *ud, struct sg_error *e) {
  struct params p = {0};
  p_text(&p, saga_id);
  PGresult *res = rd_exec(S(base), ST_SIGNAL_EACH, &p, e, "signal_each");
  if (!res) return -1;
  for (int i = 0; i < PQntuples(res); i++) {
    struct sg_signal_row r = {
      .id = col(res, i, 0), .saga_id = col(res, i, 1), .name = col(res, i, 2), .payload = col(res, i, 3),
      .idem_key = col(res, i, 4), .seq = col_i64(res, i, 5), .received_at = col_i64(res, i, 6),
      .delivered_at = col_i64(res, i, 7),
    };
    if (cb(ud, &r)) break;
  }
  PQclear(res);
  return 0;
}

/* ---- several hosts ---- */

/* A statement outside the engine's transactions (autocommit or its own), with text parameters. */
static PGresult *exec_params(struct pg_store *s, const char *sql, int n, const char *const *v, struct sg_error *e,
                             const char *what) {
  finish_flight(s);
  if (!conn_ok(s) && reconnect(s, 1, e) < 0) return NULL;
  PGresult *r = PQexecParams(s->conn, sql, n, NULL, v, NULL, NULL, 0);
  ExecStatusType st = PQresultStatus(r);
  if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) return r;
  fail_res(s, e, res_passing(s, r) ? SG_E_UNAVAILABLE : SG_E_INTERNAL, r, what);
  PQclear(r);
  return NULL;
}

static int pg_host_register(struct sg_store *base, const char *host_id, int64_t lease_ms, struct sg_error *e) {
  struct pg_store *s = S(base);
  if (s->in_txn) return sg_errorf(e, SG_E_INTERNAL, "postgres: host_register inside a transaction");
  if (!host_id || !*host_id || strlen(host_id) >= sizeof s->me)
    return sg_errorf(e, SG_E_INVALID, "a host id must be 1 to %zu bytes", sizeof s->me - 1);
  int first = !s->me[0];
  char prev[sizeof s->me];
  snprintf(prev, sizeof prev, "%s", s->me);
  snprintf(s->me, sizeof s->me, "%s", host_id);
  char hash[65];
  sg_sha256_hex(host_id, strlen(host_id), hash);
  snprintf(s->channel, sizeof s->channel, "sg_%.16s", hash);
  s->lease_ms = lease_ms;
  if (first || !conn_ok(s)) {
    /* the id's lock (and LISTEN) come with the session; a reconnect takes them again */
    if (!conn_ok(s)) {
      if (reconnect(s, 0, e) < 0) goto fail;
    } else if (take_id(s, e) < 0) {
      goto fail;
    }
  }
  char lease[24], now[24], app[160];
  snprintf(lease, sizeof lease, "%lld", (long long)lease_ms);
  snprintf(now, sizeof now, "%lld", (long long)sg_now_ms());
  char hn[64] = "?";
  gethostname(hn, sizeof hn - 1);
  snprintf(app, sizeof app, "pid %ld on %s", (long)getpid(), hn);
  const char *v[] = { host_id, lease, now, app };
  PGresult *r = exec_params(s,
    "INSERT INTO hosts(host_id, epoch, lease_until, lease_ms, commit_seq, id_block, started_at, info)"
    " VALUES ($1, 1, sg_now() + $2::bigint, $2::bigint, 0, nextval('id_blocks'), $3::bigint, $4)"
    " ON CONFLICT (host_id) DO UPDATE SET epoch = hosts.epoch + 1, lease_until = EXCLUDED.lease_until,"
    " lease_ms = EXCLUDED.lease_ms, id_block = EXCLUDED.id_block, started_at = EXCLUDED.started_at,"
    " info = EXCLUDED.info RETURNING epoch, commit_seq, id_block", 4, v, e, "register the host");
  if (!r) goto fail;
  s->epoch = col_i64(r, 0, 0);
  s->commit_seq = col_i64(r, 0, 1);
  int64_t block = col_i64(r, 0, 2);
  PQclear(r);
  /* a block of 2^32 timer and outbox ids per registration: no other host gives these out */
  s->next_timer = s->next_outbox = (block << 32) + 1;
  s->next_outbox += (int64_t)1 << 31; /* the upper half of the block for outbox rows */
  return 0;
fail:
  if (first) s->me[0] = 0;
  else snprintf(s->me, sizeof s->me, "%s", prev);
  return -1;
}

static int pg_host_release(struct sg_store *base, struct sg_error *e) {
  struct pg_store *s = S(base);
  if (!s->me[0] || !conn_ok(s)) return 0;
  char ep[24];
  snprintf(ep, sizeof ep, "%lld", (long long)s->epoch);
  const char *v[] = { s->me, ep };
  PGresult *r = exec_params(s, "UPDATE hosts SET lease_until = 0 WHERE host_id = $1 AND epoch = $2::bigint", 2, v,
                            e, "release the lease");
  if (!r) return -1;
  PQclear(r);
  return 0;
}

static int pg_journal_each_active(struct sg_store *base, sg_journal_cb cb, void *ud, struct sg_error *e) {
  struct pg_store *s = S(base);
  const char *v[] = { s->me };
  PGresult *j = exec_params(s, "SELECT j.saga_id, j.step, j.phase, j.attempt, j.seq, j.kind, j.done, j.is_error,"
                            " j.result FROM journal j JOIN sagas s ON s.id = j.saga_id AND j.step = s.step"
                            " AND j.phase = s.phase AND j.attempt = s.attempt WHERE s.owner = $1"
                            " AND s.status IN ('running', 'compensating') ORDER BY j.saga_id, j.seq", 1, v, e,
                            "journal_each_active");
  if (!j) return -1;
  journal_rows(j, cb, ud);
  return 0;
}

static int pg_saga_owner(struct sg_store *base, const char *saga_id, char owner[128], int *alive, struct sg_error *e) {
  struct params p = {0};
  p_text(&p, saga_id);
  owner[0] = 0;
  *alive = 0;
  PGresult *r = rd_exec(S(base), ST_SAGA_OWNER, &p, e, "saga_owner");
  if (!r) return -1;
  int found = PQntuples(r) > 0;
  if (found) {
    snprintf(owner, 128, "%s", PQgetisnull(r, 0, 0) ? "" : PQgetvalue(r, 0, 0));
    *alive = PQgetvalue(r, 0, 1)[0] == 't';
  }
  PQclear(r);
  return found;
}

static int pg_mail_put(struct sg_store *base, const char *saga_id, const char *kind, const char *body,
                       struct sg_error *e) {
  struct params p = {0};
  p_text(&p, saga_id);
  p_text(&p, kind);
  p_text(&p, body);
  p_int(&p, sg_now_ms());
  return wr_done(S(base), ST_MAIL_PUT, &p, e, "mail_put");
}

static int pg_mail_done(struct sg_store *base, const int64_t *ids, size_t n, struct sg_error *e) {
  if (!n) return 0;
  struct sg_buf b;
  sg_buf_init(&b);
  sg_buf_adds(&b, "{");
  for (size_t i = 0; i < n; i++) sg_buf_printf(&b, "%s%lld", i ? "," : "", (long long)ids[i]);
  sg_buf_adds(&b, "}");
  struct params d = {0};
  p_text(&d, b.data);
  int rc = wr_done(S(base), ST_MAIL_DEL, &d, e, "mail_done");
  sg_buf_free(&b);
  return rc;
}

static int pg_notify(struct sg_store *base, const char *host_id, const char *payload, struct sg_error *e) {
  struct params p = {0};
  p_text(&p, host_id);
  p_text(&p, payload);
  return wr_done(S(base), ST_NOTIFY, &p, e, "notify");
}

static int pg_note_fd(struct sg_store *base) {
  struct pg_store *s = S(base);
  return conn_ok(s) ? PQsocket(s->conn) : -1;
}

static void pg_notes(struct sg_store *base, int read, void (*cb)(void *ud, const char *payload), void *ud) {
  struct pg_store *s = S(base);
  if (!conn_ok(s)) return;
  if (read) PQconsumeInput(s->conn); /* a failure shows as a lost connection at the next op */
  PGnotify *n;
  while ((n = PQnotifies(s->conn))) {
    cb(ud, n->extra ? n->extra : "");
    PQfreemem(n);
  }
}

/* ---- reads without waiting ----
 *
 * sg_store_read's reads go over up to RD_CONNS connections of their own, in pipeline mode: each read
 * is its statements and a sync point, sent at once without waiting; the results come back in order
 * and read_poll (called by the loop when a socket is ready) hands each finished read to its done.
 * Connections are made without waiting too (PQconnectStartParams/PQconnectPoll), and only as load
 * needs them (rd_pick); reads started meanwhile wait for theirs. They hold no lock and, but for a
 * takeover round, run no transaction: every statement sees the last commit, as the blocking reads
 * outside a transaction do. A connection that is lost sends its reads again, once, on a new one
 * (rd_lost); a connection that cannot be made fails them with SG_E_UNAVAILABLE, and is tried again at
 * most once a second. */
enum { RD_NONE, RD_CONNECTING, RD_READY };

/* A takeover round without waiting (SG_READ_TAKEOVER): one transaction, pipelined, on a reads'
 * connection. TK_FENCE checks that this host's epoch is still the one it registered with (else
 * SG002: it is fenced), without locking its row (the host's own commits renew its lease on that row
 * meanwhile: a round waiting on a lock must not hold them up); TK_CLAIM fences the host whose lease
 * ran out longest ago that still owns something (FOR UPDATE SKIP LOCKED: two hosts never take the same one at once) and claims up to $2
 * of its sagas and all of its outbox, or, with no such host, sagas and outbox rows nobody owns; one
 * row of the dead host's id, how long ago its lease ran out, its lease_until (0: it released it) and
 * the outbox rows moved, then the claimed saga (SAGA_COLS, NULL when none), per claimed saga.
 * TK_TIMERS and TK_JOURNALS read what the claimed sagas need to go on: the rows this transaction
 * changed are those whose xmin is its id. A host fenced while its round was on its way finds out at
 * its next commit; a round whose answer comes after the host reloaded makes it load again (what it
 * took may have committed after the load). */
#define TK_FENCE \
  "SELECT sg_one(count(*), 'host ' || $1 || ' fence') FROM hosts WHERE host_id = $1 AND epoch = $2::bigint"
#define TK_CLAIM \
  "WITH d AS (SELECT h.host_id, sg_now() - h.lease_until AS expired, h.lease_until FROM hosts h" \
  "   WHERE h.host_id <> $1 AND h.lease_until < sg_now()" \
  "   AND (EXISTS (SELECT 1 FROM sagas WHERE owner = h.host_id AND status IN ('running', 'compensating'))" \
  "    OR EXISTS (SELECT 1 FROM outbox WHERE owner = h.host_id))" \
  "   ORDER BY h.lease_until LIMIT 1 FOR UPDATE SKIP LOCKED)," \
  " f AS (UPDATE hosts SET epoch = epoch + 1 WHERE host_id IN (SELECT host_id FROM d) RETURNING 1)," \
  " c AS (UPDATE sagas SET owner = $1, version = version + 1 WHERE id IN (SELECT id FROM sagas" \
  "   WHERE (owner = (SELECT host_id FROM d) OR (owner IS NULL AND NOT EXISTS (SELECT 1 FROM d)))" \
  "   AND status IN ('running', 'compensating') ORDER BY id LIMIT $2::int FOR UPDATE SKIP LOCKED)" \
  "   RETURNING " SAGA_COLS ")," \
  " o AS (UPDATE outbox SET owner = $1 WHERE owner = (SELECT host_id FROM d)" \
  "   OR (owner IS NULL AND NOT EXISTS (SELECT 1 FROM d)) RETURNING 1)" \
  " SELECT (SELECT host_id FROM d), (SELECT expired FROM d), (SELECT lease_until FROM d), (SELECT count(*) FROM o)," \
  " (SELECT count(*) FROM f), c.* FROM (SELECT 1) one LEFT JOIN c ON true"
#define TK_COLS 5 /* the columns before the saga's */
#define TK_TIMERS \
  "SELECT t.id, t.saga_id, t.due_at, t.kind, t.ref FROM timers t JOIN sagas s ON s.id = t.saga_id" \
  " WHERE s.owner = $1 AND s.xmin = pg_current_xact_id()::xid ORDER BY t.due_at, t.id"
#define TK_JOURNALS \
  "SELECT j.saga_id, j.step, j.phase, j.attempt, j.seq, j.kind, j.done, j.is_error, j.result FROM journal j" \
  " JOIN sagas s ON s.id = j.saga_id AND j.step = s.step AND j.phase = s.phase AND j.attempt = s.attempt" \
  " WHERE s.owner = $1 AND s.xmin = pg_current_xact_id()::xid ORDER BY j.saga_id, j.seq"

/* BEGIN, the round's four statements, COMMIT, and the sync point */
static int rd_send_takeover(struct pg_store *s, PGconn *pq, struct sg_read *r) {
  char ep[24], lim[16];
  snprintf(ep, sizeof ep, "%lld", (long long)s->epoch);
  snprintf(lim, sizeof lim, "%d", r->limit > 0 ? r->limit : 100);
  const char *v1[] = { s->me, ep }, *v2[] = { s->me, lim }, *v3[] = { s->me };
  return PQsendQueryParams(pq, "BEGIN", 0, NULL, NULL, NULL, NULL, 0) &&
         PQsendQueryParams(pq, TK_FENCE, 2, NULL, v1, NULL, NULL, 0) &&
         PQsendQueryParams(pq, TK_CLAIM, 2, NULL, v2, NULL, NULL, 0) &&
         PQsendQueryParams(pq, TK_TIMERS, 1, NULL, v3, NULL, NULL, 0) &&
         PQsendQueryParams(pq, TK_JOURNALS, 1, NULL, v3, NULL, NULL, 0) &&
         PQsendQueryParams(pq, "COMMIT", 0, NULL, NULL, NULL, NULL, 0);
}

/* whether a takeover round (SG_READ_TAKEOVER) or a mail read (SG_READ_MAIL) would find anything,
 * without their locks: the host runs them only when there is something */
#define PROBE_SQL \
  "SELECT EXISTS (SELECT 1 FROM hosts h WHERE h.host_id <> $1 AND h.lease_until < sg_now()" \
  "   AND (EXISTS (SELECT 1 FROM sagas WHERE owner = h.host_id AND status IN ('running', 'compensating'))" \
  "    OR EXISTS (SELECT 1 FROM outbox WHERE owner = h.host_id)))" \
  " OR EXISTS (SELECT 1 FROM sagas WHERE owner IS NULL AND status IN ('running', 'compensating'))" \
  " OR EXISTS (SELECT 1 FROM outbox WHERE owner IS NULL)," \
  " EXISTS (SELECT 1 FROM mail m JOIN sagas s ON s.id = m.saga_id WHERE s.owner = $1)"

static void rd_push(struct sg_read **head, struct sg_read **tail, struct sg_read *r) {
  r->next = NULL;
  if (*tail) (*tail)->next = r;
  else *head = r;
  *tail = r;
}

static void rd_connect(struct pg_store *s, struct rdc *c);

static void rd_clear_res(struct sg_read *r) {
  for (int i = 0; i < r->nres; i++) PQclear(r->res[i]);
  r->nres = 0;
}

/* closes the connection: its reads (sent, then waiting), in order, are the caller's */
static struct sg_read *rd_detach(struct rdc *c) {
  struct sg_read *list = c->sent;
  if (c->sent_tail) c->sent_tail->next = c->wait;
  else list = c->wait;
  c->sent = c->sent_tail = c->wait = c->wait_tail = NULL;
  c->n = 0;
  PQfinish(c->pq);
  c->pq = NULL;
  c->state = RD_NONE;
  c->want_write = 0;
  return list;
}

/* closes the connection and ends every read on its way with rc -1 and why */
static void rd_fail_all(struct pg_store *s, struct rdc *c, int code, const char *why) {
  struct sg_read *list = rd_detach(c);
  while (list) { /* a done may start new reads: they queue anew */
    struct sg_read *r = list;
    list = r->next;
    rd_clear_res(r);
    r->rc = -1;
    sg_errorf(&r->err, code, "%s", why);
    r->done(r);
  }
}

static void rd_conn_failed(struct pg_store *s, struct rdc *c, const char *what) {
  char m[200], why[600];
  snprintf(m, sizeof m, "%s", c->pq ? PQerrorMessage(c->pq) : "out of memory");
  trim_nl(m);
  snprintf(why, sizeof why, "postgres: %s %.256s (the reads' connection): %s", what, s->where, m);
  rd_fail_all(s, c, SG_E_UNAVAILABLE, why);
}

/* A connection that worked is lost (a server restart, a network cut): its reads go again, once, on a
 * new connection made at once (a read that was on its way when the server went away is not a failure
 * the caller needs to see if the server is back); those already tried again fail. */
static void rd_lost(struct pg_store *s, struct rdc *c) {
  char m[200], why[600];
  snprintf(m, sizeof m, "%s", c->pq ? PQerrorMessage(c->pq) : "?");
  trim_nl(m);
  snprintf(why, sizeof why, "postgres: lost the connection to %.256s (the reads' connection): %s", s->where, m);
  struct sg_read *list = rd_detach(c);
  struct sg_read *fail = NULL, *fail_tail = NULL;
  while (list) {
    struct sg_read *r = list;
    list = r->next;
    rd_clear_res(r);
    r->failed = 0;
    if (r->tries++ == 0 && r->kind != SG_READ_TAKEOVER) {
      rd_push(&c->wait, &c->wait_tail, r);
      c->n++;
    } else {
      rd_push(&fail, &fail_tail, r);
    }
  }
  if (c->wait) {
    c->last_try = 0;
    rd_connect(s, c);
  }
  while (fail) {
    struct sg_read *r = fail;
    fail = r->next;
    r->rc = -1;
    if (r->kind == SG_READ_TAKEOVER) /* it may have committed: only loading what this host owns tells */
      sg_errorf(&r->err, SG_E_FENCED, "postgres: the answer to a takeover round was lost (%.400s): reloading what"
                " this host owns", why);
    else sg_errorf(&r->err, SG_E_UNAVAILABLE, "%s", why);
    r->done(r);
  }
}

/* the statements of a read, sent (with their sync point): 0, or -1 when the connection failed */
static int rd_send(struct pg_store *s, struct rdc *c, struct sg_read *r) {
  const char *sql[2] = { NULL, NULL };
  struct params p = {0};
  char ev_t[24], ev_i[24]; /* SG_READ_EVENTS: the position's parts (p points at them until the send) */
  char list_sql[1024], lo[40], hi[40]; /* SG_READ_LIST's */
  switch (r->kind) {
  case SG_READ_SAGA:
    p_text(&p, r->a);
    sql[0] = stmt_sql[ST_SAGA_GET];
    if (r->with_hist) sql[1] = stmt_sql[ST_HIST_EACH];
    else if (r->with_owner) sql[1] = stmt_sql[ST_SAGA_OWNER];
    break;
  case SG_READ_IDEM:
    p_text(&p, r->a);
    p_text(&p, r->b);
    sql[0] = stmt_sql[ST_SAGA_FIND_IDEM];
    break;
  case SG_READ_LIST: {
    struct sg_saga_filter f = { .status = r->status, .type = r->a, .after = r->b, .limit = r->limit,
                                .key = r->key, .since = r->since, .until = r->until, .desc = r->desc,
                                .parent = r->parent };
    list_query(&f, list_sql, sizeof list_sql, &p, lo, hi);
    sql[0] = list_sql;
    break;
  }
  case SG_READ_COUNTS:
    if (r->a) p_text(&p, r->a);
    sql[0] = stmt_sql[r->a ? ST_SAGA_COUNTS_TYPE : ST_SAGA_COUNTS];
    break;
  case SG_READ_INBOX:
    p_text(&p, r->a);
    sql[0] = stmt_sql[ST_INBOX_GET];
    break;
  case SG_READ_PROBE:
    p_text(&p, r->a);
    sql[0] = PROBE_SQL;
    break;
  case SG_READ_OUTBOX:
    p_text(&p, s->me);
    sql[0] = stmt_sql[ST_OUTBOX_EACH];
    break;
  case SG_READ_MAIL:
    p_text(&p, s->me);
    sql[0] = stmt_sql[ST_MAIL_READ];
    break;
  case SG_READ_PRUNE:
    p_int(&p, r->before);
    if (!strcmp(r->a, "sagas")) p_int(&p, r->limit);
    sql[0] = stmt_sql[!strcmp(r->a, "inbox") ? ST_INBOX_PRUNE : !strcmp(r->a, "events") ? ST_EVENT_PRUNE : ST_SAGA_PRUNE];
    break;
  case SG_READ_EVENTS:
    if (r->a) {
      event_pos_parse(r->a, ev_t, ev_i); /* checked by pg_read_start */
      p_text(&p, ev_t);
      p_text(&p, ev_i);
      p_int(&p, r->limit > 0 ? r->limit : 16);
      sql[0] = stmt_sql[r->incl ? ST_EVENT_FROM : ST_EVENT_AFTER];
    } else if (r->before > 0) {
      p_int(&p, r->before);
      sql[0] = stmt_sql[ST_EVENT_BEFORE];
    } else {
      sql[0] = stmt_sql[ST_EVENT_END];
    }
    break;
  }
  char *own[MAX_PARAMS] = {0};
  if (s->utf8) params_fix_utf8(&p, own);
  int ok = 1;
  if (r->kind == SG_READ_TAKEOVER) ok = rd_send_takeover(s, c->pq, r);
  for (int i = 0; i < 2 && sql[i] && ok; i++)
    ok = PQsendQueryParams(c->pq, sql[i], i == 0 ? p.n : 1, NULL, p.v, NULL, NULL, 0);
  if (s->utf8) params_free(p.n, own);
  if (!ok || !PQpipelineSync(c->pq)) return -1;
  r->at = sg_now_ms();
  rd_push(&c->sent, &c->sent_tail, r);
  int f = PQflush(c->pq);
  if (f < 0) return -1;
  c->want_write = f == 1;
  return 0;
}

static void rd_ready(struct pg_store *s, struct rdc *c) {
  PQsetNoticeProcessor(c->pq, quiet_notices, NULL);
  if (PQsetnonblocking(c->pq, 1) != 0 || !PQenterPipelineMode(c->pq)) { rd_conn_failed(s, c, "cannot read from"); return; }
  c->state = RD_READY;
  struct sg_read *list = c->wait;
  c->wait = c->wait_tail = NULL;
  while (list) {
    struct sg_read *r = list;
    list = r->next;
    if (rd_send(s, c, r) < 0) {
      rd_push(&c->wait, &c->wait_tail, r); /* failed with the others */
      while (list) { struct sg_read *n = list->next; rd_push(&c->wait, &c->wait_tail, list); list = n; }
      rd_conn_failed(s, c, "lost the connection to");
      return;
    }
  }
}

static void rd_connect_step(struct pg_store *s, struct rdc *c) {
  switch (PQconnectPoll(c->pq)) {
  case PGRES_POLLING_READING: c->poll_want = 1; break;
  case PGRES_POLLING_WRITING: c->poll_want = 2; break;
  case PGRES_POLLING_OK: rd_ready(s, c); break;
  default: rd_conn_failed(s, c, "cannot connect to"); break;
  }
}

static void rd_connect(struct pg_store *s, struct rdc *c) {
  int64_t now = sg_now_ms();
  if (now - c->last_try < 1000) {
    rd_fail_all(s, c, SG_E_UNAVAILABLE, "postgres: the reads' connection is lost; tried again within a second");
    return;
  }
  c->last_try = now;
  char app[96], hn[32] = "?";
  gethostname(hn, sizeof hn - 1);
  snprintf(app, sizeof app, "sagahost pid %ld on %s (reads)", (long)getpid(), hn);
  const char *keys[] = { "connect_timeout", "application_name", "dbname", NULL };
  const char *vals[] = { "5", app, s->url, NULL };
  c->pq = PQconnectStartParams(keys, vals, 1);
  c->serial++;
  if (!c->pq || PQstatus(c->pq) == CONNECTION_BAD) { rd_conn_failed(s, c, "cannot connect to"); return; }
  c->state = RD_CONNECTING;
  c->poll_want = 2; /* as if PQconnectPoll had said PGRES_POLLING_WRITING */
  rd_connect_step(s, c);
}

/* The connection for the next read: an open one with nothing on its way, else an unused one (opened
 * now), else the one with the fewest reads; one whose oldest read has waited over 200 ms (stuck
 * behind a lock?) or that failed to connect within the last second only when there is no other. */
static struct rdc *rd_pick(struct pg_store *s) {
  int64_t now = sg_now_ms();
  struct rdc *best = NULL;
  int64_t best_score = 0;
  for (int i = 0; i < RD_CONNS; i++) {
    struct rdc *c = &s->rd[i];
    int64_t score = 2 * c->n; /* a read on its way counts more than opening a connection */
    if (c->sent && now - c->sent->at > 200) score += 1000000;
    if (c->state == RD_NONE) score += now - c->last_try < 1000 ? 500000 : 1;
    if (!best || score < best_score) { best = c; best_score = score; }
  }
  return best;
}

static void pg_read_start(struct sg_store *base, struct sg_read *r) {
  struct pg_store *s = S(base);
  r->rc = 0;
  r->nres = r->failed = 0;
  char t[24], i[24];
  if (r->kind == SG_READ_EVENTS && r->a && event_pos_parse(r->a, t, i) < 0) {
    r->rc = sg_errorf(&r->err, SG_E_INVALID, "malformed event id '%.60s': expected the id of an event of this"
                      " store (two numbers joined by '-')", r->a);
    r->done(r);
    return;
  }
  if (r->kind == SG_READ_INBOX) {
    uintptr_t at = (uintptr_t)sg_map_get(&s->kept_inbox, r->a);
    if (at) { /* handled in the open batch or the one on its way: not in the database yet */
      const struct redo *w = &s->redo[at - 1];
      if (w->off[1] >= 0) r->status_s = sg_strdup(s->arena.data + w->off[1]);
      if (w->off[2] >= 0) r->body = sg_strdup(s->arena.data + w->off[2]);
      r->rc = 1;
      r->done(r);
      return;
    }
  }
  struct rdc *c = rd_pick(s);
  if (c->state == RD_READY && PQstatus(c->pq) != CONNECTION_OK) rd_lost(s, c); /* gone while idle */
  c->n++;
  if (c->state == RD_READY) {
    if (rd_send(s, c, r) == 0) return;
    rd_push(&c->wait, &c->wait_tail, r); /* the send failed: it goes again with the others */
    rd_lost(s, c);
    return;
  }
  rd_push(&c->wait, &c->wait_tail, r);
  if (c->state == RD_NONE) rd_connect(s, c);
}

static int pg_read_fd(struct sg_store *base, int i, unsigned *serial) {
  struct rdc *c = &S(base)->rd[i];
  *serial = c->serial;
  return c->pq ? PQsocket(c->pq) : -1;
}

static int pg_read_wants(struct sg_store *base, int i) {
  struct rdc *c = &S(base)->rd[i];
  if (c->state == RD_CONNECTING) return c->poll_want;
  if (c->state == RD_READY && c->sent) return 1 | (c->want_write ? 2 : 0);
  return 0;
}

/* a takeover round's answer from its results */
static void rd_finish_takeover(struct sg_read *r) {
  if (!r->failed && (r->nres != 6 || strcmp(PQcmdStatus(r->res[5]), "COMMIT") != 0)) {
    r->failed = 1; /* the transaction did not commit (COMMIT of an aborted one answers ROLLBACK) */
    sg_errorf(&r->err, SG_E_UNAVAILABLE, "postgres: take over: the round did not commit");
  }
  if (r->failed) { r->rc = -1; return; }
  PGresult *m = r->res[2], *t = r->res[3], *j = r->res[4];
  int n = PQntuples(m);
  if (n > 0) {
    snprintf(r->owner, sizeof r->owner, "%s", col(m, 0, 0) ? col(m, 0, 0) : "");
    r->before = col(m, 0, 2) && col_i64(m, 0, 2) == 0 ? -1 : col(m, 0, 1) ? col_i64(m, 0, 1) : 0;
    r->count = col_i64(m, 0, 3);
  }
  for (int i = 0; i < n; i++) {
    if (!col(m, i, TK_COLS)) continue; /* no saga claimed */
    r->rows = sg_xrealloc(r->rows, (r->nrows + 1) * sizeof *r->rows);
    saga_from_row_at(m, i, TK_COLS, &r->rows[r->nrows++], 1);
  }
  if ((r->ntimers = (size_t)PQntuples(t))) r->timers = sg_xcalloc(r->ntimers, sizeof *r->timers);
  for (size_t i = 0; i < r->ntimers; i++) { /* copies: the result is cleared before done */
    struct sg_timer_row *x = &r->timers[i];
    *x = timer_from_row(t, (int)i);
    x->saga_id = sg_strdup(x->saga_id);
    x->kind = sg_strdup(x->kind);
  }
  if ((r->njournals = (size_t)PQntuples(j))) r->journals = sg_xcalloc(r->njournals, sizeof *r->journals);
  for (size_t i = 0; i < r->njournals; i++) {
    struct sg_journal_row *x = &r->journals[i];
    *x = journal_from_row(j, (int)i);
    x->saga_id = sg_strdup(x->saga_id);
    x->kind = sg_strdup(x->kind);
    x->result = sg_strdup(x->result);
  }
  r->rc = r->nrows > 0 || r->owner[0] || r->count > 0;
}

/* a read whose results have all arrived: its answer from them, then done */
static void rd_finish(struct pg_store *s, struct sg_read *r) {
  if (r->kind == SG_READ_TAKEOVER) {
    rd_finish_takeover(r);
    if (r->rc >= 0) s->commits++;
    rd_clear_res(r);
    r->done(r);
    return;
  }
  PGresult *a = r->nres > 0 ? r->res[0] : NULL, *b = r->nres > 1 ? r->res[1] : NULL;
  if (!r->failed && (!a || (r->kind == SG_READ_SAGA && (r->with_hist || r->with_owner) && !b))) {
    r->failed = 1;
    sg_errorf(&r->err, SG_E_INTERNAL, "postgres: a read's results did not arrive");
  }
  if (r->failed) {
    r->rc = -1;
  } else if (r->kind == SG_READ_MAIL) {
    r->rc = 0;
    int n = PQntuples(a);
    if (n > 0) r->mail = sg_xcalloc((size_t)n, sizeof *r->mail);
    for (int i = 0; i < n; i++) {
      r->mail[i].id = col_i64(a, i, 0);
      r->mail[i].saga_id = sg_strdup(PQgetvalue(a, i, 1));
      r->mail[i].kind = sg_strdup(PQgetvalue(a, i, 2));
      r->mail[i].body = sg_strdup(PQgetvalue(a, i, 3));
    }
    r->nmail = (size_t)n;
  } else if (r->kind == SG_READ_OUTBOX) {
    r->rc = 0;
    int n = PQntuples(a);
    if (n > 0) r->msgs = sg_xcalloc((size_t)n, sizeof *r->msgs);
    for (int i = 0; i < n; i++) {
      struct sg_msg m;
      char svc[256];
      msg_from_row(a, i, &m, svc, sizeof svc);
      sg_msg_copy(&r->msgs[i], &m);
    }
    r->nmsgs = (size_t)n;
  } else if (r->kind == SG_READ_PRUNE) {
    r->rc = 0;
    r->count = cmd_rows(a);
  } else if (r->kind == SG_READ_COUNTS) {
    r->rc = 0;
    counts_from(a, r->counts);
  } else if (r->kind == SG_READ_EVENTS) {
    r->rc = 0;
    int n = PQntuples(a);
    if (!r->a) {
      if (n > 0) snprintf(r->pos, sizeof r->pos, "%s-%s", PQgetvalue(a, 0, 0), PQgetvalue(a, 0, 1));
      else snprintf(r->pos, sizeof r->pos, "0-0");
      n = 0;
    } else {
      snprintf(r->pos, sizeof r->pos, "%s", r->a);
    }
    for (int i = 0; i < n; i++) {
      char pos[48];
      snprintf(pos, sizeof pos, "%s-%s", PQgetvalue(a, i, 0), PQgetvalue(a, i, 1));
      sg_read_add_events(r, pos, col_i64(a, i, 2), col_int(a, i, 3), col(a, i, 5), col(a, i, 4));
    }
  } else if (r->kind == SG_READ_PROBE) {
    r->rc = 0;
    r->flags = PQntuples(a) > 0 ? (!strcmp(PQgetvalue(a, 0, 0), "t") ? 1 : 0) | (!strcmp(PQgetvalue(a, 0, 1), "t") ? 2 : 0) : 0;
  } else if (r->kind == SG_READ_INBOX) {
    r->rc = PQntuples(a) > 0;
    if (r->rc) {
      r->status_s = col(a, 0, 0) ? sg_strdup(col(a, 0, 0)) : NULL;
      r->body = col(a, 0, 1) ? sg_strdup(col(a, 0, 1)) : NULL;
    }
  } else {
    int n = PQntuples(a);
    if (n > 0) {
      r->rows = sg_xcalloc((size_t)n, sizeof *r->rows);
      for (int i = 0; i < n; i++) saga_from_row(a, i, &r->rows[i], 1);
      r->nrows = (size_t)n;
    }
    r->rc = r->kind == SG_READ_LIST ? 0 : n > 0;
    if (r->with_owner && b && PQntuples(b) > 0) {
      snprintf(r->owner, sizeof r->owner, "%s", col(b, 0, 0) ? col(b, 0, 0) : "");
      r->owner_alive = !strcmp(PQgetvalue(b, 0, 1), "t");
    }
    for (int i = 0; b && r->with_hist && n > 0 && i < PQntuples(b); i++) {
      struct sg_hist_row h = {
        .id = col_i64(b, i, 0), .saga_id = col(b, i, 1), .step = col_int(b, i, 2), .step_name = col(b, i, 3),
        .phase = col_int(b, i, 4), .attempt = col_int(b, i, 5), .status = col(b, i, 6),
        .started_at = col_i64(b, i, 7), .finished_at = col_i64(b, i, 8), .error = col(b, i, 9),
      };
      sg_read_add_hist(r, &h);
    }
  }
  rd_clear_res(r);
  r->done(r);
}

static void pg_read_poll(struct sg_store *base, int i) {
  struct pg_store *s = S(base);
  struct rdc *c = &s->rd[i];
  if (c->state == RD_CONNECTING) { rd_connect_step(s, c); return; }
  if (c->state != RD_READY) return;
  if (c->want_write) {
    int f = PQflush(c->pq);
    if (f < 0) { rd_lost(s, c); return; }
    c->want_write = f == 1;
  }
  if (!PQconsumeInput(c->pq)) { rd_lost(s, c); return; }
  int nulls = 0;
  while (c->sent && c->state == RD_READY && !PQisBusy(c->pq)) {
    PGresult *res = PQgetResult(c->pq);
    struct sg_read *h = c->sent;
    if (!res) { /* the end of one statement's results */
      if (++nulls > 1) break;
      continue;
    }
    nulls = 0;
    ExecStatusType st = PQresultStatus(res);
    if (st == PGRES_PIPELINE_SYNC) {
      PQclear(res);
      c->sent = h->next;
      if (!c->sent) c->sent_tail = NULL;
      c->n--;
      rd_finish(s, h);
      continue;
    }
    if ((st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK) && !h->failed && h->nres < 6) { h->res[h->nres++] = res; continue; }
    if (!h->failed) {
      h->failed = 1;
      char m[400];
      const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
      res_msg(s, res, m, sizeof m);
      int passing = PQstatus(c->pq) != CONNECTION_OK || st == PGRES_PIPELINE_ABORTED || passing_state(state);
      int fenced = h->kind == SG_READ_TAKEOVER && state && (!strcmp(state, "SG001") || !strcmp(state, "SG002"));
      sg_errorf(&h->err, fenced ? SG_E_FENCED : passing ? SG_E_UNAVAILABLE : SG_E_INTERNAL, "postgres: %s: %s",
                h->kind == SG_READ_TAKEOVER ? "take over" : "read", m);
    }
    PQclear(res);
  }
  if (c->state == RD_READY && PQstatus(c->pq) != CONNECTION_OK) rd_lost(s, c);
}

static void pg_read_cancel(struct sg_store *base) {
  for (int i = 0; i < RD_CONNS; i++) rd_fail_all(S(base), &S(base)->rd[i], SG_E_UNAVAILABLE, "the host is stopping");
}

/* ---- open / close ---- */

static void pg_close(struct sg_store *base) {
  struct pg_store *s = S(base);
  if (!s) return;
  for (int i = 0; i < RD_CONNS; i++) {
    struct rdc *c = &s->rd[i];
    for (struct sg_read *r = c->sent; r; ) { struct sg_read *n = r->next; rd_clear_res(r); sg_read_free(r); r = n; }
    for (struct sg_read *r = c->wait; r; ) { struct sg_read *n = r->next; sg_read_free(r); r = n; }
    PQfinish(c->pq);
  }
  free(s->url);
  PQfinish(s->conn); /* the server rolls back an open transaction and drops the session's lock */
  free(s->redo);
  free(s->fl.qst);
  sg_buf_free(&s->arrays);
  sg_map_free(&s->merged_ids);
  redo_clear(s);
  sg_map_free(&s->kept_inbox);
  sg_buf_free(&s->arena);
  sg_buf_free(&s->evbody);
  free(s);
}

static const struct sg_store_ops pg_ops = {
  .name = "postgres",
  .close = pg_close,
  .begin = pg_begin,
  .commit = pg_commit,
  .rollback = pg_rollback,
  .retry_commit = pg_retry_commit,
  .commit_start = pg_commit_start,
  .commit_poll = pg_commit_poll,
  .def_put = pg_def_put,
  .def_get = pg_def_get,
  .saga_insert = pg_saga_insert,
  .saga_update = pg_saga_update,
  .saga_get = pg_saga_get,
  .saga_find_idem = pg_saga_find_idem,
  .saga_list = pg_saga_list,
  .saga_counts = pg_saga_counts,
  .saga_each_active = pg_saga_each_active,
  .hist_insert = pg_hist_insert,
  .hist_each = pg_hist_each,
  .journal_put = pg_journal_put,
  .journal_each = pg_journal_each,
  .timer_put = pg_timer_put,
  .timer_del = pg_timer_del,
  .timer_each = pg_timer_each,
  .outbox_put = pg_outbox_put,
  .outbox_del = pg_outbox_del,
  .outbox_each = pg_outbox_each,
  .inbox_get = pg_inbox_get,
  .inbox_put = pg_inbox_put,
  .inbox_prune = pg_inbox_prune,
  .schedule_last = pg_schedule_last,
  .schedule_claim = pg_schedule_claim,
  .journal_del = pg_journal_del,
  .event_put = pg_event_put,
  .saga_prune = pg_saga_prune,
  .signal_put = pg_signal_put,
  .signal_done = pg_signal_done,
  .signal_find = pg_signal_find,
  .signal_each = pg_signal_each,
  .host_register = pg_host_register,
  .journal_each_active = pg_journal_each_active,
  .host_release = pg_host_release,
  .saga_owner = pg_saga_owner,
  .mail_put = pg_mail_put,
  .mail_done = pg_mail_done,
  .notify = pg_notify,
  .note_fd = pg_note_fd,
  .notes = pg_notes,
  .read_start = pg_read_start,
  .read_conns = RD_CONNS,
  .read_fd = pg_read_fd,
  .read_wants = pg_read_wants,
  .read_poll = pg_read_poll,
  .read_cancel = pg_read_cancel,
  .commit_count = pg_commit_count,
};

/* Reads one integer from a single-row query (open-time only). */
static int query_int(struct pg_store *s, const char *sql, int64_t *out, struct sg_error *e, const char *what) {
  PGresult *r = NULL;
  if (exec_sql(s, sql, &r, e, what) < 0) return -1;
  if (PQntuples(r) != 1 || PQgetisnull(r, 0, 0)) {
    PQclear(r);
    return sg_errorf(e, SG_E_INTERNAL, "postgres: %s: no value", what);
  }
  *out = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
  PQclear(r);
  return 0;
}

/* Applies the missing migrations, each in a transaction that first takes MIGRATE_LOCK_KEY, so two
 * hosts opening a fresh database at once do not both apply a step (the version is read under it). */
static int migrate(struct pg_store *s, struct sg_error *e) {
  for (;;) {
    char sql[300];
    snprintf(sql, sizeof sql, "BEGIN; SELECT pg_advisory_xact_lock(%lld);"
             " CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL);"
             " SELECT coalesce(max(version), 0) FROM schema_version", MIGRATE_LOCK_KEY);
    int64_t have = 0;
    if (query_int(s, sql, &have, e, "migrate: read the schema version") < 0) goto fail;
    if (have > N_MIGRATIONS) {
      sg_errorf(e, SG_E_INTERNAL, "postgres: database schema version %lld is newer than this host knows (%d):"
                " upgrade sagahost", (long long)have, N_MIGRATIONS);
      goto fail;
    }
    if (have == N_MIGRATIONS) return exec_sql(s, "COMMIT", NULL, e, "migrate: commit");
    char what[64];
    snprintf(what, sizeof what, "migration %lld", (long long)have + 1);
    if (exec_sql(s, migrations[have], NULL, e, what) < 0) goto fail;
    snprintf(sql, sizeof sql, "INSERT INTO schema_version(version, applied_at) VALUES (%lld, %lld); COMMIT",
             (long long)have + 1, (long long)sg_now_ms());
    if (exec_sql(s, sql, NULL, e, what) < 0) goto fail;
  }
fail:
  roll_back_open(s);
  return -1;
}

/* The URL with its password (if any) replaced by ***, for messages. */
void sg_store_pg_redact(const char *url, char *out, size_t n) {
  snprintf(out, n, "%s", url);
  char *scheme = strstr(out, "://");
  if (!scheme) return;
  char *user = scheme + 3, *at = strchr(user, '@'), *slash = strchr(user, '/');
  if (!at || (slash && slash < at)) return;
  char *colon = memchr(user, ':', (size_t)(at - user));
  if (!colon) return;
  char rest[512];
  snprintf(rest, sizeof rest, "%s", at);
  snprintf(colon, n - (size_t)(colon - out), ":***%s", rest);
}

/* Connects to url: 0, or -1 with e filled (SG_E_UNAVAILABLE when the server cannot be reached). */
static int connect_db(struct pg_store *s, const char *url, struct sg_error *e) {
  char app[64], hn[32] = "?";
  gethostname(hn, sizeof hn - 1);
  snprintf(app, sizeof app, "sagahost pid %ld on %s", (long)getpid(), hn);
  /* defaults first: what the URL says overrides them (expand_dbname) */
  const char *keys[] = { "connect_timeout", "application_name", "dbname", NULL };
  const char *vals[] = { "5", app, url, NULL };
  s->conn = PQconnectdbParams(keys, vals, 1);
  char shown[300];
  sg_store_pg_redact(url, shown, sizeof shown);
  if (!s->conn) return sg_errorf(e, SG_E_INTERNAL, "postgres: cannot connect to %s: out of memory", shown);
  if (PQstatus(s->conn) != CONNECTION_OK) {
    char m[300];
    snprintf(m, sizeof m, "%s", PQerrorMessage(s->conn));
    trim_nl(m);
    return sg_errorf(e, SG_E_UNAVAILABLE, "postgres: cannot connect to %s: %s", shown, m);
  }
  const char *host = PQhost(s->conn);
  snprintf(s->where, sizeof s->where, "postgres://%s@%s:%s/%s", PQuser(s->conn),
           host && *host == '/' ? "[socket]" : (host ? host : "?"), PQport(s->conn), PQdb(s->conn));
  return 0;
}

int sg_store_pg_in_use(const char *url, struct sg_error *e) {
  struct pg_store s = {0};
  struct sg_error le = {0};
  int used = 0;
  if (connect_db(&s, url, &le) == 0) {
    PQsetNoticeProcessor(s.conn, quiet_notices, NULL);
    char sql[80], who[300];
    snprintf(sql, sizeof sql, "SELECT pg_try_advisory_lock(%lld)", HOST_LOCK_KEY);
    if (query_bool(&s, sql, &le, "try the database's lock") == 0) {
      lock_holder(&s, 0, HOST_LOCK_KEY, 1, who, sizeof who);
      sg_errorf(e, SG_E_CONFLICT, "database %s is in use by %s (a host holds its shared lock, advisory lock %lld)",
                s.where, who, HOST_LOCK_KEY);
      used = 1;
    }
  }
  PQfinish(s.conn); /* drops the lock if we took it */
  return used;
}

int sg_store_is_pg_url(const char *db) {
  return db && (!strncmp(db, "postgres://", 11) || !strncmp(db, "postgresql://", 13));
}

struct sg_store *sg_store_pg_open(const char *url, struct sg_error *e) {
  struct pg_store *s = sg_xcalloc(1, sizeof *s);
  s->base.ops = &pg_ops;
  sg_buf_init(&s->arena);
  sg_map_init(&s->kept_inbox);
  sg_buf_init(&s->arrays);
  sg_map_init(&s->merged_ids);
  s->url = sg_strdup(url);
  if (connect_db(s, url, e) < 0) goto fail;
  /* before the first write: a refused host must not touch the database (not even to migrate it) */
  if (session_setup(s, e) < 0) goto fail;
  if (migrate(s, e) < 0) goto fail;
  /* the next ids: past every row, and for timers and outbox past every id ever given out */
  if (query_int(s, "SELECT greatest(coalesce((SELECT max(id) FROM timers), 0) + 1,"
                " (SELECT next_timer FROM store_state))", &s->next_timer, e, "read the next timer id") < 0 ||
      query_int(s, "SELECT greatest(coalesce((SELECT max(id) FROM outbox), 0) + 1,"
                " (SELECT next_outbox FROM store_state))", &s->next_outbox, e, "read the next outbox id") < 0 ||
      query_int(s, "SELECT commit_seq FROM store_state", &s->commit_seq, e, "read the last commit") < 0)
    goto fail;
  if (prepare_all(s, e) < 0) goto fail;
  return &s->base;
fail:
  pg_close(&s->base);
  return NULL;
}
