/* cli: the client subcommands of the sagahost binary (start, show, list, compensate, retry, resolve,
 * plan). Each is one or a few requests to a running host's HTTP API through libcurl; nothing here
 * touches the store or the engine. Output goes to stdout, errors to stderr; no state outlives a call. */
#ifndef SG_CLI_H
#define SG_CLI_H

#include <stdio.h>

/* argv[0] is the subcommand name. Returns the process exit code: 0 ok, 1 failed (HTTP error, host
 * unreachable, a waited-for saga that did not complete), 2 usage error. */
int sg_cli_client(int argc, char **argv);
/* the client part of the usage text */
void sg_cli_usage(FILE *f);

#endif
