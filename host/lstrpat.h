/* lstrpat: Lua 5.4 patterns with bounded work: string.find, string.match, string.gmatch and
 * string.gsub for the host's Lua states.
 *
 * Why: the count hook and the CPU budget only see Lua VM instructions. Stock lstrlib does all of
 * its matching inside one C call, where a backtracking pattern ("a*a*a*...b" on a long subject)
 * runs for minutes with no instruction counted. These versions behave exactly like Lua 5.4's
 * (results, result types, errors) but give every call (and every call of a gmatch iterator) a
 * budget of matcher steps proportional to the subject's length, and raise a Lua error at the
 * calling script line when it is spent. Plain finds and patterns that are literal text use glibc's
 * memmem (two-way: linear), so they never hit the budget.
 *
 * Owns: the four functions above and the process-wide budget parameters. */
#ifndef SG_LSTRPAT_H
#define SG_LSTRPAT_H

#include <lua.h>

/* Budget of one call = SG_PAT_BASE_STEPS + SG_PAT_STEPS_PER_BYTE * subject length. A step is one
 * attempted single-character match, one entry into the matcher, one backtrack position, one byte
 * scanned by %b or compared by a back-reference, one gsub replacement or replacement escape.
 * 1e6 steps take ~3-15 ms; linear patterns use well under 16 steps per byte. */
#define SG_PAT_BASE_STEPS 1000000L
#define SG_PAT_STEPS_PER_BYTE 64L

/* Sets the budget parameters for every state of the process (meant for tests; not thread-safe:
 * call it while no state is matching). A negative value restores that parameter's default. */
void sg_strpat_set_limits(long base, long per_byte);

/* Replaces find, match, gmatch and gsub in L's string library table: the table string methods
 * resolve to (the string metatable's __index), and the global `string` if that is another table.
 * Call it after luaL_openlibs and before anything copies those functions elsewhere.
 * Returns 0, or -1 when L has neither (no string library opened). */
int sg_strpat_install(lua_State *L);

#endif
