#include "hashmap.h"

#include <stdlib.h>

#define EMPTY UINT64_MAX

static size_t slot_of(uint64_t key, size_t cap)
{
	/* splitmix64 finaliser: node ids are sequential, so spread them */
	key ^= key >> 30;
	key *= 0xbf58476d1ce4e5b9ull;
	key ^= key >> 27;
	key *= 0x94d049bb133111ebull;
	key ^= key >> 31;
	return (size_t)key & (cap - 1);
}

void pf_hashmap_init(pf_hashmap *m)
{
	m->keys = NULL;
	m->vals = NULL;
	m->cap = 0;
	m->count = 0;
}

void pf_hashmap_free(pf_hashmap *m)
{
	free(m->keys);
	free(m->vals);
	pf_hashmap_init(m);
}

static bool grow(pf_hashmap *m)
{
	size_t cap = m->cap ? m->cap * 2 : 64;
	uint64_t *keys;
	uint32_t *vals;

	if (cap < m->cap || cap > SIZE_MAX / sizeof(uint64_t))
		return false;
	keys = malloc(cap * sizeof(*keys));
	vals = malloc(cap * sizeof(*vals));
	if (!keys || !vals) {
		free(keys);
		free(vals);
		return false;
	}
	for (size_t i = 0; i < cap; i++)
		keys[i] = EMPTY;
	for (size_t i = 0; i < m->cap; i++) {
		if (m->keys[i] == EMPTY)
			continue;
		size_t s = slot_of(m->keys[i], cap);
		while (keys[s] != EMPTY)
			s = (s + 1) & (cap - 1);
		keys[s] = m->keys[i];
		vals[s] = m->vals[i];
	}
	free(m->keys);
	free(m->vals);
	m->keys = keys;
	m->vals = vals;
	m->cap = cap;
	return true;
}

bool pf_hashmap_put(pf_hashmap *m, uint64_t key, uint32_t val)
{
	if (key == EMPTY)
		return false;
	if ((m->count + 1) * 2 > m->cap && !grow(m))
		return false;
	size_t s = slot_of(key, m->cap);
	while (m->keys[s] != EMPTY && m->keys[s] != key)
		s = (s + 1) & (m->cap - 1);
	if (m->keys[s] == EMPTY)
		m->count++;
	m->keys[s] = key;
	m->vals[s] = val;
	return true;
}

bool pf_hashmap_get(const pf_hashmap *m, uint64_t key, uint32_t *val)
{
	if (!m->cap || key == EMPTY)
		return false;
	size_t s = slot_of(key, m->cap);
	while (m->keys[s] != EMPTY) {
		if (m->keys[s] == key) {
			*val = m->vals[s];
			return true;
		}
		s = (s + 1) & (m->cap - 1);
	}
	return false;
}

uint64_t pf_hash_bytes(const void *p, size_t n, uint64_t seed)
{
	const unsigned char *b = p;
	uint64_t h = 0xcbf29ce484222325ull ^ (seed * 0x9e3779b97f4a7c15ull);
	for (size_t i = 0; i < n; i++) {
		h ^= b[i];
		h *= 0x100000001b3ull;
	}
	return h == EMPTY ? 0 : h;
}
