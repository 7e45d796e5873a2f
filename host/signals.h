/* signals: named messages sent to one saga (HTTP, CLI, AMQP) and taken by its ctx:wait(name).
 *
 * A signal is stored (table signals) when it arrives, whether or not the saga waits for it yet; the
 * first ctx:wait of its name takes it (signals of one name in arrival order, one per wait), in the
 * batch that journals the wait. A signal with an idempotency key already seen for the saga is not
 * stored again. On a host that does not own the saga (several hosts on PostgreSQL) the signal is
 * stored and the owner woken by mail (owner.c); it takes the signal from the store.
 *
 * Ownership: the engine keeps, per live saga, the signals it knows of (struct sigq, freed with the
 * saga). Strings passed in are borrowed. */
#ifndef SG_SIGNALS_H
#define SG_SIGNALS_H

#include "engine.h"

/* A signal arrives as a command to the service SG_SIGNAL_SERVICE ("saga", reserved for the host) named
 * SG_SIGNAL_COMMAND (store.h: sg_msg_classify); every host consumes that service's messages. */

/* 1 when name is a signal name: 1 to 100 letters, digits, '_' or '-', starting with a letter or '_' */
int sg_signal_name_ok(const char *name);

/* What became of a signal, for cb: "delivered" (a waiting ctx:wait took it), "kept" (stored until a
 * ctx:wait takes it; on a host that does not own the saga, its owner was woken), "duplicate" (its
 * idempotency key was seen for the saga already: nothing was done). cb runs once the signal is
 * durable (the next group commit), or at once with an error: SG_E_INVALID (name, payload not JSON),
 * SG_E_TOOBIG, SG_E_NOTFOUND (no such saga), SG_E_CONFLICT (the saga has finished: e says its status),
 * SG_E_UNAVAILABLE (the store cannot write now, or the commit failed: nothing happened). */
typedef void (*sg_signal_sent_cb)(void *ud, const char *outcome, const struct sg_error *e);

/* Sends signal `name` with payload (JSON text; NULL, "" or "null" mean {}) to saga id. key: the
 * idempotency key or NULL. via: who sent it ("http", "amqp"), for the history. */
void sg_engine_signal(struct sg_engine *en, const char *id, const char *name, const char *payload, const char *key,
                      const char *via, sg_signal_sent_cb cb, void *ud);

#endif
