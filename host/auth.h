/* auth: who may do what on the HTTP API. Owns the token table read from an `--auth FILE`: one
 * `name role token` per line, `#` comments; only SHA-256 digests of the tokens are kept in memory.
 * Roles are ordered: each includes the ones before it (read < start < operate < admin).
 *
 * Ownership: sg_auth_load returns a table the caller frees with sg_auth_free; the entry that
 * sg_auth_find returns belongs to the table and lives as long as it. */
#ifndef SG_AUTH_H
#define SG_AUTH_H

#include "util.h"

/* What a token may do; a larger value includes every smaller one. */
enum sg_role {
  SG_ROLE_NONE = 0, /* nothing: what a route that is open needs */
  SG_ROLE_READ,     /* every GET route */
  SG_ROLE_START,    /* read, and POST /v1/sagas/{type} */
  SG_ROLE_OPERATE,  /* start, and the operator verbs compensate, retry, resolve */
  SG_ROLE_ADMIN,    /* everything, including verbs added later for administrators only */
};

/* One token of the file. */
struct sg_auth_entry {
  char name[65];    /* who holds it: recorded as the operator in a saga's history */
  enum sg_role role; /* what it may do */
  char digest[65];  /* hex SHA-256 of the token: the token itself is not kept */
};

struct sg_auth;

/* Reads and checks the whole file. A malformed line (not three fields, an unknown role, a name
 * with characters outside [A-Za-z0-9._@-], a token shorter than 16 characters, a token given
 * twice) or a file without any token is -1 with e (SG_E_INVALID) naming file:line. */
struct sg_auth *sg_auth_load(const char *path, struct sg_error *e);
void sg_auth_free(struct sg_auth *a);
int sg_auth_count(const struct sg_auth *a);

/* The entry whose token is `token`, or NULL. Takes the same time whichever entry matches (or none):
 * the digest of token is compared with every entry's without stopping early. */
const struct sg_auth_entry *sg_auth_find(const struct sg_auth *a, const char *token);

/* The token of an Authorization header value "Bearer <token>" (scheme case-insensitive), copied
 * into out; 0 on success, -1 when the header is not a bearer credential or the token is too long. */
int sg_auth_bearer(const char *header, char *out, size_t n);

const char *sg_role_name(enum sg_role r);
/* SG_ROLE_NONE's value 0 is never a valid role name: -1 when unknown */
int sg_role_parse(const char *s);

#endif
