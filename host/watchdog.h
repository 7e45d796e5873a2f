/* watchdog: makes sure the loop thread looks up from a long run of script code in time.
 *
 * The count hook (script.c) only runs between VM instructions, and only every so many of them: a
 * loop of expensive C calls (table.sort of a big table, say) could hold the loop for a long time
 * between two checks. While a run is armed past its deadline, a thread of ours sends the loop thread
 * a signal every millisecond or so, and the handler calls the poke function, which asks the hook to
 * run at the next instruction (lua_sethook is safe in a signal handler: lua.c does the same).
 *
 * Ownership: one thread per process, started by the first sg_watchdog_acquire and joined by the
 * last sg_watchdog_release (so a loadable module never leaves it running when unloaded). */
#ifndef SG_WATCHDOG_H
#define SG_WATCHDOG_H

#include <stdint.h>

void sg_watchdog_acquire(void (*poke)(void));
void sg_watchdog_release(void);
/* A run started on this thread: poke it once the monotonic clock passes deadline_ns. */
void sg_watchdog_arm(int64_t deadline_ns);
/* The run ended: no more pokes. */
void sg_watchdog_disarm(void);

#endif
