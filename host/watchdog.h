/* watchdog: makes sure the loop thread looks up from a long run of script code in time.
 *
 * The count hook (script_limits.c) only runs between VM instructions, and only every so many of
 * them; and a run starts without it (a hook costs at every instruction while set). While runs
 * happen, a POSIX timer sends the thread that armed it a signal every TICK; when the current run
 * is within a tick of its deadline or past it, the handler calls the poke function, which asks the
 * hook to run at the next instruction (lua_sethook is safe in a signal handler: lua.c does the same
 * for SIGINT): that is what sets the hook for a long run, and what looks up from a loop of
 * expensive C calls (table.sort of a big table, say) between two of the hook's checks. After a quiet spell without runs the handler stops the timer, and the next
 * run starts it again, so an idle host gets no signals. No thread is started: a second thread
 * would put glibc's malloc on its locked path for the whole process.
 *
 * Ownership: the timer is created by the first sg_watchdog_acquire of the process and deleted by
 * the last sg_watchdog_release. */
#ifndef SG_WATCHDOG_H
#define SG_WATCHDOG_H

#include <stdint.h>

void sg_watchdog_acquire(void (*poke)(void));
void sg_watchdog_release(void);
/* A run started on this thread: poke it from the last tick before the monotonic clock passes
 * deadline_ns on (so the hook the poke sets can act at the deadline itself). */
void sg_watchdog_arm(int64_t deadline_ns);
/* The run ended: no more pokes. */
void sg_watchdog_disarm(void);
/* The timer exists: a run that is armed will be poked past its deadline. */
int sg_watchdog_ready(void);

#endif
