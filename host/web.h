/* web: the dashboard's static files (the files of web/), embedded in the binary at build time and served at GET /
 * (index.html) and GET /ui/<file>.
 *
 * cmake/embed_web.cmake turns every file of web/ into a row of sg_web_files (bytes, content type and a
 * strong ETag from their SHA-256), generated into the build tree. Everything here is static and
 * read-only: nothing to free. The files hold no data, so they are served without auth; the page asks
 * the API (with the user's token) for everything it shows. */
#ifndef SG_WEB_H
#define SG_WEB_H

#include <stddef.h>
#include "http.h"

/* One embedded file. */
struct sg_web_file {
  const char *name;         /* its name in web/, e.g. "app.js" */
  const char *content_type; /* e.g. "text/javascript; charset=utf-8" */
  const char *etag;         /* "\"<first 32 hex digits of its SHA-256>\"" (quotes included) */
  const unsigned char *data; /* its bytes (a NUL follows them, not counted in len) */
  size_t len;               /* their number */
};

/* the generated table, ended by a row whose name is NULL */
extern const struct sg_web_file sg_web_files[];

/* the file with that name (no directories: "app.js"), NULL when there is none */
const struct sg_web_file *sg_web_find(const char *name);

/* Answers a GET or HEAD with the file named (404 {"error"} when there is none): 200 with its bytes, or
 * 304 without them when If-None-Match names its ETag; with ETag, Cache-Control: no-cache (browsers
 * revalidate, which costs a 304), a Content-Security-Policy that allows only the host's own scripts,
 * styles and API (default-src 'self') and X-Content-Type-Options: nosniff. */
void sg_web_serve(struct sg_http_req *req, const char *name);

#endif
