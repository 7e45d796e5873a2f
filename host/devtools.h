/* devtools: the commands for saga authors that need no host: `sagahost test` (the user's specs under
 * busted with the testing kit on the path), `sagahost new saga NAME` (a saga and its spec from a template)
 * and `sagahost types DIR` (LuaLS annotations). What they write out is embedded in the binary. */
#ifndef SG_DEVTOOLS_H
#define SG_DEVTOOLS_H

#include <stdio.h>

/* argv[0] is the command ("test", "new", "types"); each returns the process exit status */
int sg_dev_test(int argc, char **argv);
int sg_dev_new(int argc, char **argv);
int sg_dev_types(int argc, char **argv);
void sg_dev_usage(FILE *f);

#endif
