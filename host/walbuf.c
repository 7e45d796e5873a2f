/* walbuf: a VFS over the default one that gathers the writes of a WAL file and hands them down as one
 * write, at the sync that makes them durable (or sooner: before anything else touches the file).
 *
 * SQLite writes every WAL frame with two calls (its 24-byte header, then the page), so a group
 * commit of ~40 pages made ~85 pwrite system calls before its fsync; they were 7-8 % of the host's
 * CPU in process; now it makes two or three (a run holds at most WALBUF_MAX bytes). Nothing about
 * durability changes: the frames reach the file before the xSync that
 * SQLite counts a commit durable after, and a commit whose frames could not be written fails at that
 * sync (SQLite adds frames to the WAL's index only after it), as it would have failed at the write.
 * A gathered run is written at once when it would grow past WALBUF_MAX, when the next write is not
 * right after it (a WAL restart, a frame rewritten in place), and before a read, a size query, a
 * truncate, a lock change or a close of the file. Every other file (the database, its -shm) passes
 * straight through. */
#include "walbuf.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* SQLite's unix VFS writes at most 0x1ffff bytes per call (it masks the length to 17 bits and
 * reports the rest as a full disk), so a run is handed down before it passes this: a group commit of
 * ~40 pages goes down in two writes instead of ~85 */
#define WALBUF_MAX 0x1f000u

struct wb_vfs {
  sqlite3_vfs vfs;    /* registered under name */
  sqlite3_vfs *base;  /* the default VFS when this one was made (a test's fault injector included) */
  char name[64];
};

struct wb_file {
  sqlite3_file base;  /* pMethods = &wb_methods */
  sqlite3_file *real; /* the base VFS's file, allocated right after this struct */
  int wal;            /* a WAL file: writes are gathered */
  char *buf;
  size_t len, cap;
  sqlite3_int64 off;  /* where buf[0] goes */
};

#define REAL(f) (((struct wb_file *)(f))->real)

/* What is gathered goes to the file. On a failure it is dropped: SQLite writes the frames again. */
static int wb_flush(struct wb_file *f) {
  if (!f->len) return SQLITE_OK;
  size_t n = f->len;
  f->len = 0;
  return f->real->pMethods->xWrite(f->real, f->buf, (int)n, f->off);
}

static int wb_close(sqlite3_file *file) {
  struct wb_file *f = (struct wb_file *)file;
  int rc = wb_flush(f);
  int rc2 = f->real->pMethods->xClose(f->real);
  free(f->buf);
  f->buf = NULL;
  f->cap = 0;
  return rc != SQLITE_OK ? rc : rc2;
}

static int wb_read(sqlite3_file *file, void *out, int n, sqlite3_int64 off) {
  struct wb_file *f = (struct wb_file *)file;
  int rc = wb_flush(f);
  if (rc != SQLITE_OK) return rc;
  return f->real->pMethods->xRead(f->real, out, n, off);
}

static int wb_write(sqlite3_file *file, const void *data, int n, sqlite3_int64 off) {
  struct wb_file *f = (struct wb_file *)file;
  if (!f->wal || n <= 0) return f->real->pMethods->xWrite(f->real, data, n, off);
  if (f->len && (off != f->off + (sqlite3_int64)f->len || f->len + (size_t)n > WALBUF_MAX)) {
    int rc = wb_flush(f);
    if (rc != SQLITE_OK) return rc;
  }
  if ((size_t)n > WALBUF_MAX) return f->real->pMethods->xWrite(f->real, data, n, off); /* not a frame: pages are at most 64 KB */
  if (f->len + (size_t)n > f->cap) {
    size_t cap = WALBUF_MAX; /* one allocation per WAL file, the most a run holds */
    char *p = realloc(f->buf, cap);
    if (!p) { /* no room to gather: write it as it comes */
      int rc = wb_flush(f);
      return rc != SQLITE_OK ? rc : f->real->pMethods->xWrite(f->real, data, n, off);
    }
    f->buf = p;
    f->cap = cap;
  }
  if (!f->len) f->off = off;
  memcpy(f->buf + f->len, data, (size_t)n);
  f->len += (size_t)n;
  return SQLITE_OK;
}

static int wb_truncate(sqlite3_file *file, sqlite3_int64 size) {
  struct wb_file *f = (struct wb_file *)file;
  int rc = wb_flush(f);
  return rc != SQLITE_OK ? rc : f->real->pMethods->xTruncate(f->real, size);
}

static int wb_sync(sqlite3_file *file, int flags) {
  struct wb_file *f = (struct wb_file *)file;
  int rc = wb_flush(f);
  return rc != SQLITE_OK ? rc : f->real->pMethods->xSync(f->real, flags);
}

static int wb_file_size(sqlite3_file *file, sqlite3_int64 *size) {
  struct wb_file *f = (struct wb_file *)file;
  int rc = wb_flush(f);
  return rc != SQLITE_OK ? rc : f->real->pMethods->xFileSize(f->real, size);
}

static int wb_lock(sqlite3_file *file, int level) {
  struct wb_file *f = (struct wb_file *)file;
  int rc = wb_flush(f);
  return rc != SQLITE_OK ? rc : f->real->pMethods->xLock(f->real, level);
}

static int wb_unlock(sqlite3_file *file, int level) {
  struct wb_file *f = (struct wb_file *)file;
  int rc = wb_flush(f);
  int rc2 = f->real->pMethods->xUnlock(f->real, level);
  return rc != SQLITE_OK ? rc : rc2;
}

static int wb_check_lock(sqlite3_file *file, int *out) { return REAL(file)->pMethods->xCheckReservedLock(REAL(file), out); }
static int wb_file_control(sqlite3_file *file, int op, void *arg) { return REAL(file)->pMethods->xFileControl(REAL(file), op, arg); }
static int wb_sector_size(sqlite3_file *file) { return REAL(file)->pMethods->xSectorSize(REAL(file)); }
static int wb_device_chars(sqlite3_file *file) { return REAL(file)->pMethods->xDeviceCharacteristics(REAL(file)); }

static int wb_shm_map(sqlite3_file *file, int pg, int pgsz, int extend, void volatile **pp) {
  const sqlite3_io_methods *m = REAL(file)->pMethods;
  return m->iVersion >= 2 ? m->xShmMap(REAL(file), pg, pgsz, extend, pp) : SQLITE_IOERR_SHMMAP;
}
static int wb_shm_lock(sqlite3_file *file, int offset, int n, int flags) {
  const sqlite3_io_methods *m = REAL(file)->pMethods;
  return m->iVersion >= 2 ? m->xShmLock(REAL(file), offset, n, flags) : SQLITE_IOERR_SHMLOCK;
}
static void wb_shm_barrier(sqlite3_file *file) {
  const sqlite3_io_methods *m = REAL(file)->pMethods;
  if (m->iVersion >= 2) m->xShmBarrier(REAL(file));
}
static int wb_shm_unmap(sqlite3_file *file, int del) {
  const sqlite3_io_methods *m = REAL(file)->pMethods;
  return m->iVersion >= 2 ? m->xShmUnmap(REAL(file), del) : SQLITE_OK;
}
static int wb_fetch(sqlite3_file *file, sqlite3_int64 off, int n, void **pp) {
  const sqlite3_io_methods *m = REAL(file)->pMethods;
  if (m->iVersion >= 3) return m->xFetch(REAL(file), off, n, pp);
  *pp = NULL; /* no memory map: SQLite reads instead */
  return SQLITE_OK;
}
static int wb_unfetch(sqlite3_file *file, sqlite3_int64 off, void *p) {
  const sqlite3_io_methods *m = REAL(file)->pMethods;
  return m->iVersion >= 3 ? m->xUnfetch(REAL(file), off, p) : SQLITE_OK;
}

static const sqlite3_io_methods wb_methods = {
  3, wb_close, wb_read, wb_write, wb_truncate, wb_sync, wb_file_size, wb_lock, wb_unlock, wb_check_lock,
  wb_file_control, wb_sector_size, wb_device_chars, wb_shm_map, wb_shm_lock, wb_shm_barrier, wb_shm_unmap,
  wb_fetch, wb_unfetch,
};

static int wb_open(sqlite3_vfs *vfs, const char *name, sqlite3_file *file, int flags, int *out_flags) {
  struct wb_vfs *v = vfs->pAppData;
  struct wb_file *f = (struct wb_file *)file;
  memset(f, 0, sizeof *f);
  f->real = (sqlite3_file *)(f + 1);
  int rc = v->base->xOpen(v->base, name, f->real, flags, out_flags);
  if (f->real->pMethods) {
    f->base.pMethods = &wb_methods;
    f->wal = (flags & SQLITE_OPEN_WAL) != 0;
  }
  return rc;
}

#define BASE(v) (((struct wb_vfs *)(v)->pAppData)->base)
static int wb_delete(sqlite3_vfs *v, const char *n, int sync) { return BASE(v)->xDelete(BASE(v), n, sync); }
static int wb_access(sqlite3_vfs *v, const char *n, int fl, int *r) { return BASE(v)->xAccess(BASE(v), n, fl, r); }
static int wb_fullpath(sqlite3_vfs *v, const char *n, int no, char *out) { return BASE(v)->xFullPathname(BASE(v), n, no, out); }
static void *wb_dlopen(sqlite3_vfs *v, const char *n) { return BASE(v)->xDlOpen(BASE(v), n); }
static void wb_dlerror(sqlite3_vfs *v, int n, char *m) { BASE(v)->xDlError(BASE(v), n, m); }
static void (*wb_dlsym(sqlite3_vfs *v, void *h, const char *s))(void) { return BASE(v)->xDlSym(BASE(v), h, s); }
static void wb_dlclose(sqlite3_vfs *v, void *h) { BASE(v)->xDlClose(BASE(v), h); }
static int wb_random(sqlite3_vfs *v, int n, char *out) { return BASE(v)->xRandomness(BASE(v), n, out); }
static int wb_sleep(sqlite3_vfs *v, int us) { return BASE(v)->xSleep(BASE(v), us); }
static int wb_time(sqlite3_vfs *v, double *t) { return BASE(v)->xCurrentTime(BASE(v), t); }
static int wb_lasterr(sqlite3_vfs *v, int n, char *m) {
  return BASE(v)->xGetLastError ? BASE(v)->xGetLastError(BASE(v), n, m) : 0;
}
static int wb_time64(sqlite3_vfs *v, sqlite3_int64 *t) {
  if (BASE(v)->iVersion >= 2 && BASE(v)->xCurrentTimeInt64) return BASE(v)->xCurrentTimeInt64(BASE(v), t);
  double d;
  int rc = BASE(v)->xCurrentTime(BASE(v), &d);
  *t = (sqlite3_int64)(d * 86400000.0);
  return rc;
}

/* One walbuf VFS per base it was made over, for the life of the process (a handful at most: the
 * default VFS, and in the tests the fault injectors they register as the default). */
#define WB_MAX 8
static struct wb_vfs *made[WB_MAX];
static int nmade;
static pthread_mutex_t made_lock = PTHREAD_MUTEX_INITIALIZER;

static const char *find_or_make(void) {
  sqlite3_vfs *base = sqlite3_vfs_find(NULL);
  if (!base) return NULL;
  for (int i = 0; i < nmade; i++)
    if (made[i]->base == base || &made[i]->vfs == base) return made[i]->vfs.zName;
  if (nmade == WB_MAX) return NULL;
  struct wb_vfs *v = calloc(1, sizeof *v);
  if (!v) return NULL;
  v->base = base;
  snprintf(v->name, sizeof v->name, "sagahost-walbuf-%d", nmade);
  v->vfs = (sqlite3_vfs){
    .iVersion = 2, .szOsFile = (int)sizeof(struct wb_file) + base->szOsFile, .mxPathname = base->mxPathname,
    .zName = v->name, .pAppData = v, .xOpen = wb_open, .xDelete = wb_delete, .xAccess = wb_access,
    .xFullPathname = wb_fullpath, .xDlOpen = wb_dlopen, .xDlError = wb_dlerror, .xDlSym = wb_dlsym,
    .xDlClose = wb_dlclose, .xRandomness = wb_random, .xSleep = wb_sleep, .xCurrentTime = wb_time,
    .xGetLastError = wb_lasterr, .xCurrentTimeInt64 = wb_time64,
  };
  if (sqlite3_vfs_register(&v->vfs, 0) != SQLITE_OK) { free(v); return NULL; }
  made[nmade++] = v;
  return v->vfs.zName;
}

const char *sg_walbuf_vfs(void) {
  pthread_mutex_lock(&made_lock);
  const char *name = find_or_make();
  pthread_mutex_unlock(&made_lock);
  return name;
}
