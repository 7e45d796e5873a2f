/* auth: the token table of `--auth FILE` and the constant-time lookup. */
#include "auth.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Shorter tokens are guessable; the file is refused rather than run with one. */
#define SG_AUTH_MIN_TOKEN 16
/* Longer ones are refused too: nobody needs them and they bound what a request can make us hash. */
#define SG_AUTH_MAX_TOKEN 512

struct sg_auth {
  struct sg_auth_entry *v; /* the entries, in file order */
  int n;                   /* entries used */
};

static const char *const sg_role_names[] = {"none", "read", "start", "operate", "admin"};

const char *sg_role_name(enum sg_role r) {
  return r >= SG_ROLE_NONE && r <= SG_ROLE_ADMIN ? sg_role_names[r] : "?";
}

int sg_role_parse(const char *s) {
  for (int r = SG_ROLE_READ; r <= SG_ROLE_ADMIN; r++)
    if (strcmp(s, sg_role_names[r]) == 0) return r;
  return -1;
}

static int sg_auth_name_ok(const char *s) {
  if (!*s || strlen(s) > 64) return 0;
  for (; *s; s++)
    if (!isalnum((unsigned char)*s) && !strchr("._@-", *s)) return 0;
  return 1;
}

/* The fields of one line split on blanks, up to a field starting with '#' (the line is modified);
 * returns how many, at most max+1. */
static int sg_auth_fields(char *line, char **f, int max) {
  int n = 0;
  char *save = NULL;
  for (char *t = strtok_r(line, " \t\r", &save); t; t = strtok_r(NULL, " \t\r", &save)) {
    if (*t == '#') break; /* a comment after the fields (a '#' inside a token is part of it) */
    if (n <= max) f[n] = t;
    n++;
    if (n > max) break;
  }
  return n;
}

struct sg_auth *sg_auth_load(const char *path, struct sg_error *e) {
  char *text = sg_read_file(path, NULL, e);
  if (!text) {
    char why[sizeof e->msg];
    snprintf(why, sizeof why, "%s", e->msg); /* e->msg cannot be both the format's argument and its output */
    sg_errorf(e, SG_E_INVALID, "auth file %s", why);
    return NULL;
  }
  struct sg_auth *a = sg_xcalloc(1, sizeof *a);
  int cap = 0, lineno = 0;
  /* strtok_r would skip empty lines and so miscount them: walk the lines by hand */
  for (char *line = text, *next; line; line = next) {
    lineno++;
    next = strchr(line, '\n');
    if (next) *next++ = 0;
    char *p = line;
    while (*p == ' ' || *p == '\t' || *p == '\r') p++;
    if (!*p || *p == '#') continue;
    char *f[4];
    int n = sg_auth_fields(p, f, 3);
    if (n != 3) {
      sg_errorf(e, SG_E_INVALID, "%s:%d: expected `name role token` (three fields), got %d", path, lineno, n > 3 ? 4 : n);
      goto fail;
    }
    if (!sg_auth_name_ok(f[0])) {
      sg_errorf(e, SG_E_INVALID, "%s:%d: bad name: use 1 to 64 of A-Z a-z 0-9 . _ @ -", path, lineno);
      goto fail;
    }
    int role = sg_role_parse(f[1]);
    if (role < 0) {
      sg_errorf(e, SG_E_INVALID, "%s:%d: unknown role '%.40s' (read, start, operate or admin)", path, lineno, f[1]);
      goto fail;
    }
    size_t tl = strlen(f[2]);
    if (tl < SG_AUTH_MIN_TOKEN || tl > SG_AUTH_MAX_TOKEN) {
      /* the token is not echoed: the error goes to logs */
      sg_errorf(e, SG_E_INVALID, "%s:%d: the token of %s must be %d to %d characters (e.g. `openssl rand -hex 32`)",
                path, lineno, f[0], SG_AUTH_MIN_TOKEN, SG_AUTH_MAX_TOKEN);
      goto fail;
    }
    char digest[65];
    sg_sha256_hex(f[2], tl, digest);
    for (int i = 0; i < a->n; i++)
      if (strcmp(a->v[i].digest, digest) == 0) {
        sg_errorf(e, SG_E_INVALID, "%s:%d: the token of %s is already given to %s: each token names one holder", path,
                  lineno, f[0], a->v[i].name);
        goto fail;
      }
    if (a->n == cap) {
      cap = cap ? cap * 2 : 8;
      a->v = sg_xrealloc(a->v, (size_t)cap * sizeof *a->v);
    }
    struct sg_auth_entry *en = &a->v[a->n++];
    snprintf(en->name, sizeof en->name, "%s", f[0]);
    en->role = (enum sg_role)role;
    memcpy(en->digest, digest, sizeof en->digest);
  }
  if (a->n == 0) {
    sg_errorf(e, SG_E_INVALID, "%s: no tokens (one `name role token` per line): with --auth nobody could use the API", path);
    goto fail;
  }
  /* the file held the tokens in clear: do not leave a copy in freed memory */
  explicit_bzero(text, strlen(text));
  free(text);
  return a;
fail:
  explicit_bzero(text, strlen(text));
  free(text);
  sg_auth_free(a);
  return NULL;
}

void sg_auth_free(struct sg_auth *a) {
  if (!a) return;
  free(a->v);
  free(a);
}

int sg_auth_count(const struct sg_auth *a) { return a ? a->n : 0; }

const struct sg_auth_entry *sg_auth_find(const struct sg_auth *a, const char *token) {
  if (!a || !token) return NULL;
  /* hashing first makes every comparison the same length whatever the client sent */
  char digest[65];
  sg_sha256_hex(token, strlen(token), digest);
  const struct sg_auth_entry *found = NULL;
  for (int i = 0; i < a->n; i++) {
    volatile unsigned char diff = 0;
    for (int k = 0; k < 64; k++) diff |= (unsigned char)(a->v[i].digest[k] ^ digest[k]);
    /* no break: the loop visits every entry whether or not this one matched */
    if (diff == 0) found = &a->v[i];
  }
  return found;
}

int sg_auth_bearer(const char *header, char *out, size_t n) {
  if (!header) return -1;
  while (*header == ' ' || *header == '\t') header++;
  if (strncasecmp(header, "Bearer", 6) != 0 || (header[6] != ' ' && header[6] != '\t')) return -1;
  const char *t = header + 7;
  while (*t == ' ' || *t == '\t') t++;
  size_t len = strlen(t);
  while (len && (t[len - 1] == ' ' || t[len - 1] == '\t')) len--;
  if (!len || len >= n) return -1;
  memcpy(out, t, len);
  out[len] = 0;
  return 0;
}
