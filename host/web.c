/* web: serving the embedded dashboard files (web.h); the table itself is generated. */
#include "web.h"

#include <stdio.h>
#include <string.h>

const struct sg_web_file *sg_web_find(const char *name) {
  if (!name || !*name) return NULL;
  for (const struct sg_web_file *f = sg_web_files; f->name; f++)
    if (!strcmp(f->name, name)) return f;
  return NULL;
}

/* 1 when an If-None-Match header lists etag (or is "*"): a comma-separated list of entity tags,
 * compared weakly as RFC 9110 13.1.2 says for GET (a W/ prefix does not matter) */
static int etag_matches(const char *inm, const char *etag) {
  size_t n = strlen(etag);
  const char *p = inm;
  while (*p) {
    while (*p == ' ' || *p == '\t' || *p == ',') p++;
    if (*p == '*') return 1;
    if (!strncmp(p, "W/", 2)) p += 2;
    if (!strncmp(p, etag, n) && (p[n] == 0 || p[n] == ',' || p[n] == ' ' || p[n] == '\t')) return 1;
    while (*p && *p != ',') p++;
  }
  return 0;
}

/* The page's scripts, styles, icon and API calls are its own host's; nothing inline, nothing from
 * elsewhere, and it is not framed (the operator buttons could be clickjacked). */
#define CSP "default-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

void sg_web_serve(struct sg_http_req *req, const char *name) {
  const struct sg_web_file *f = sg_web_find(name);
  if (!f) {
    char msg[300];
    snprintf(msg, sizeof msg, "no dashboard file '%.200s'", name);
    sg_http_reply_error(req, 404, msg);
    return;
  }
  /* one array per file would do too, but the ETag is per file and these are few */
  const char *hdrs[] = {
    "ETag", f->etag,
    "Cache-Control", "no-cache",
    "Content-Security-Policy", CSP,
    "X-Content-Type-Options", "nosniff",
    "Referrer-Policy", "no-referrer",
    NULL,
  };
  const char *inm = sg_http_header(req, "If-None-Match");
  if (inm && etag_matches(inm, f->etag)) sg_http_reply_static(req, 304, f->content_type, NULL, 0, hdrs);
  else sg_http_reply_static(req, 200, f->content_type, f->data, f->len, hdrs);
}
