/* walbuf: the SQLite store's VFS, over the default one: a WAL file's writes go down as one write at
 * each sync instead of two per frame (walbuf.c). */
#ifndef SG_WALBUF_H
#define SG_WALBUF_H

#include <sqlite3.h>

/* The name of the walbuf VFS over the current default VFS (made and registered on first use, not as
 * the default), or NULL when it cannot be made: the caller then opens with the default VFS. */
const char *sg_walbuf_vfs(void);

#endif
