/* schedule: cron schedules declared by scripts (saga.schedule), each fire starting one saga.
 *
 * A schedule's next fire is a timer without a saga in the engine's heap (sg_engine_timer). Each fire
 * time is claimed in the store in the transaction that inserts its saga (sg_engine_fire), so a fire
 * starts at most one saga: across restarts, and across hosts sharing one PostgreSQL database. The
 * last claimed fire time is durable; after downtime the missed fires are caught up by the schedule's
 * policy (one, all, none).
 *
 * Ownership: sg_schedules owns its schedules and their copies of the specs handed to set_file;
 * sg_schedules_free disarms their timers (free it before the engine). */
#ifndef SG_SCHEDULE_H
#define SG_SCHEDULE_H

#include <stdint.h>
#include "engine.h"
#include "util.h"

enum sg_catch_up { SG_CATCH_UP_ONE = 0, SG_CATCH_UP_ALL, SG_CATCH_UP_NONE };

/* One saga.schedule{} of a script file (borrowed: set_file copies it). */
struct sg_schedule_spec {
  const char *name;       /* unique among the loaded files */
  const char *cron;       /* 5-field cron expression (checked by the script loader) */
  const char *saga;       /* the saga type each fire starts */
  const char *input_json; /* the input, or NULL: the script's input function makes it at each fire */
  int catch_up;           /* enum sg_catch_up */
  int local;              /* timezone "local" (the host's), else UTC */
  const char *file;       /* the script file, and the line of the saga.schedule call */
  int line;
};

/* Makes a fire's input with the script's function (input_json NULL): 0 and *json (malloc'd), or -1 e. */
typedef int (*sg_schedule_input_fn)(void *ud, const char *file, const char *name, int64_t fire_at, int missed,
                                    char **json, struct sg_error *e);

struct sg_schedules;
struct sg_schedules *sg_schedules_new(struct sg_engine *en, sg_schedule_input_fn input, void *ud);
void sg_schedules_free(struct sg_schedules *ss);
/* The schedules of file become specs (n = 0: it has none any more, or it was removed). A schedule
 * whose name stays keeps its last fire time; a new one reads it from the store (a first one starts
 * from now). Fires start once sg_schedules_start has been called (after recovery). */
void sg_schedules_set_file(struct sg_schedules *ss, const char *file, const struct sg_schedule_spec *specs, int n);
/* Arms every schedule: the fires missed while the host was down are caught up now. */
void sg_schedules_start(struct sg_schedules *ss);
/* {"schedules":[{name, cron, saga, catch_up, timezone, next_fire, last_fire, file, line, fires, last_saga,
 * last_error}]} by name (malloc'd) */
char *sg_schedules_json(struct sg_schedules *ss);
/* The length of one cron minute in ms: 60000, or SAGAHOST_CRON_MINUTE_MS (a test knob). */
int64_t sg_schedules_minute_ms(void);

#endif
