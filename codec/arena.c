#include "arena.h"

#include <stdlib.h>
#include <string.h>

/* Small requests share 64 KiB chunks; large ones get a chunk of their own so
 * that a big inflated record does not waste a half-used chunk. */
#define CHUNK_SIZE (64u * 1024u)

struct pf_arena_chunk {
	pf_arena_chunk *next;
	size_t size, used;
	_Alignas(16) unsigned char data[];
};

void pf_arena_init(pf_arena *a)
{
	a->head = NULL;
	a->used = 0;
}

void pf_arena_free(pf_arena *a)
{
	pf_arena_chunk *c = a->head;
	while (c) {
		pf_arena_chunk *next = c->next;
		free(c);
		c = next;
	}
	a->head = NULL;
	a->used = 0;
}

static pf_arena_chunk *new_chunk(size_t size)
{
	pf_arena_chunk *c;
	if (size > SIZE_MAX - sizeof(*c))
		return NULL;
	c = malloc(sizeof(*c) + size);
	if (!c)
		return NULL;
	c->size = size;
	c->used = 0;
	return c;
}

void *pf_arena_alloc(pf_arena *a, size_t n)
{
	size_t need = (n + 15u) & ~(size_t)15u;
	pf_arena_chunk *c = a->head;

	if (need < n)
		return NULL;
	if (!c || c->size - c->used < need) {
		if (need > CHUNK_SIZE / 4) {
			/* big: own chunk, linked behind the head so the head keeps serving small ones */
			pf_arena_chunk *big = new_chunk(need);
			if (!big)
				return NULL;
			big->used = need;
			if (c) {
				big->next = c->next;
				c->next = big;
			} else {
				big->next = NULL;
				a->head = big;
			}
			a->used += n;
			return big->data;
		}
		c = new_chunk(CHUNK_SIZE);
		if (!c)
			return NULL;
		c->next = a->head;
		a->head = c;
	}
	void *p = c->data + c->used;
	c->used += need;
	a->used += n;
	return p;
}

char *pf_arena_strndup(pf_arena *a, const void *p, size_t n)
{
	char *s;
	if (n == SIZE_MAX)
		return NULL;
	s = pf_arena_alloc(a, n + 1);
	if (!s)
		return NULL;
	if (n)
		memcpy(s, p, n);
	s[n] = '\0';
	return s;
}
