/* watchdog: makes sure the loop thread looks up from a long run of script code in time.
 *
 * The count hook (script.c) only runs between VM instructions, and only every so many of them: a
 * loop of expensive C calls (table.sort of a big table, say) could hold the loop for a long time
 * between two checks. While runs happen, a POSIX timer sends the thread that armed it a signal
 * every TICK; when the current run is past its deadline, the handler calls the poke function, which
 * asks the hook to run at the next instruction (lua_sethook is safe in a signal handler: lua.c does
 * the same for SIGINT). After a quiet spell without runs the handler stops the timer, and the next
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
/* A run started on this thread: poke it once the monotonic clock passes deadline_ns. */
void sg_watchdog_arm(int64_t deadline_ns);
/* The run ended: no more pokes. */
void sg_watchdog_disarm(void);

#endif
