/*
 * hashmap.h - an open-addressing map from uint64 keys to uint32 values.
 *
 * Used to index nodes, storages and archives by id or by hashed name.  The
 * table grows by doubling with overflow checks; a key of UINT64_MAX is
 * reserved as "empty".
 */
#ifndef PF_HASHMAP_H
#define PF_HASHMAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct pf_hashmap {
	uint64_t *keys;
	uint32_t *vals;
	size_t cap;   /* power of two, or 0 */
	size_t count;
} pf_hashmap;

void pf_hashmap_init(pf_hashmap *m);
void pf_hashmap_free(pf_hashmap *m);

/* Insert or overwrite; false when out of memory. */
bool pf_hashmap_put(pf_hashmap *m, uint64_t key, uint32_t val);

/* true and *val set when key is present. */
bool pf_hashmap_get(const pf_hashmap *m, uint64_t key, uint32_t *val);

/* 64-bit FNV-1a of a byte string, mixed with a seed (e.g. an archive index). */
uint64_t pf_hash_bytes(const void *p, size_t n, uint64_t seed);

#endif
