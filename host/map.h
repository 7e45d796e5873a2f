/* map: a string-keyed hash map (open addressing, linear probing) of borrowed keys to pointers.
 * Keys are not copied: each key must live as long as its entry (the engine keys sagas by their own
 * id buffer). */
#ifndef SG_MAP_H
#define SG_MAP_H
#include <stddef.h>

struct sg_map_slot {
  const char *key; /* NULL = empty; TOMBSTONE = deleted */
  void *val;
};
struct sg_map {
  struct sg_map_slot *slots; /* cap entries, cap a power of two */
  size_t cap;
  size_t n;    /* live entries */
  size_t used; /* live + tombstones (drives growth) */
};
void sg_map_init(struct sg_map *m);
void sg_map_free(struct sg_map *m);
void *sg_map_get(const struct sg_map *m, const char *key);
void sg_map_put(struct sg_map *m, const char *key, void *val); /* replaces */
void *sg_map_del(struct sg_map *m, const char *key);           /* returns the old value */
/* iteration: for (size_t i = 0; i < m->cap; i++) if (sg_map_live(m, i)) ... m->slots[i] */
int sg_map_live(const struct sg_map *m, size_t i);
#endif
