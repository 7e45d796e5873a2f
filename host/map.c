/* map: open addressing with tombstones, FNV-1a hashing. */
#include "map.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

static const char TOMBSTONE[1];

static uint64_t hash(const char *s) {
  uint64_t h = 1469598103934665603ULL;
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ULL;
  return h;
}

void sg_map_init(struct sg_map *m) { memset(m, 0, sizeof *m); }
void sg_map_free(struct sg_map *m) { free(m->slots); sg_map_init(m); }

int sg_map_live(const struct sg_map *m, size_t i) {
  return m->slots[i].key && m->slots[i].key != TOMBSTONE;
}

static struct sg_map_slot *find(const struct sg_map *m, const char *key) {
  if (!m->cap) return NULL;
  size_t mask = m->cap - 1;
  for (size_t i = hash(key) & mask;; i = (i + 1) & mask) {
    struct sg_map_slot *s = &m->slots[i];
    if (!s->key) return NULL;
    if (s->key != TOMBSTONE && strcmp(s->key, key) == 0) return s;
  }
}

static void grow(struct sg_map *m) {
  struct sg_map_slot *old = m->slots;
  size_t oldcap = m->cap;
  size_t cap = oldcap ? oldcap : 64;
  while (cap * 3 / 4 <= m->n * 2 + 1) cap *= 2; /* leaves room, drops tombstones */
  m->slots = sg_xcalloc(cap, sizeof *m->slots);
  m->cap = cap;
  m->used = m->n;
  for (size_t i = 0; i < oldcap; i++) {
    if (!old[i].key || old[i].key == TOMBSTONE) continue;
    size_t j = hash(old[i].key) & (cap - 1);
    while (m->slots[j].key) j = (j + 1) & (cap - 1);
    m->slots[j] = old[i];
  }
  free(old);
}

void *sg_map_get(const struct sg_map *m, const char *key) {
  struct sg_map_slot *s = find(m, key);
  return s ? s->val : NULL;
}

void sg_map_put(struct sg_map *m, const char *key, void *val) {
  struct sg_map_slot *s = find(m, key);
  if (s) { s->key = key; s->val = val; return; }
  if ((m->used + 1) * 4 >= m->cap * 3) grow(m);
  size_t mask = m->cap - 1;
  size_t i = hash(key) & mask;
  while (m->slots[i].key && m->slots[i].key != TOMBSTONE) i = (i + 1) & mask;
  if (!m->slots[i].key) m->used++;
  m->slots[i].key = key;
  m->slots[i].val = val;
  m->n++;
}

void *sg_map_del(struct sg_map *m, const char *key) {
  struct sg_map_slot *s = find(m, key);
  if (!s) return NULL;
  void *v = s->val;
  s->key = TOMBSTONE;
  s->val = NULL;
  m->n--;
  return v;
}
