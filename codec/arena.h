/*
 * arena.h - a chunked bump allocator owned by one model.
 *
 * Everything the codec copies out of a file (decoded strings, inflated
 * records, latin-1 decoded blobs) lives in the model's arena and is freed
 * at once with it.  The arena counts what it hands out so that callers can
 * enforce pf_limits.max_decoded before allocating.
 */
#ifndef PF_ARENA_H
#define PF_ARENA_H

#include <stddef.h>
#include <stdint.h>

typedef struct pf_arena_chunk pf_arena_chunk;

typedef struct pf_arena {
	pf_arena_chunk *head;
	uint64_t used;    /* bytes handed out so far */
} pf_arena;

void pf_arena_init(pf_arena *a);
void pf_arena_free(pf_arena *a);

/* n bytes, 16-byte aligned; NULL when out of memory. n may be 0. */
void *pf_arena_alloc(pf_arena *a, size_t n);

/* A copy of p[0..n) followed by a NUL byte (the NUL is not counted in n). */
char *pf_arena_strndup(pf_arena *a, const void *p, size_t n);

#endif
