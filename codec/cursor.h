/*
 * cursor.h - an overflow-safe reader over a byte buffer (after sshfs's buf
 * helpers and CPython's _Unpickler_Read).
 *
 * A cursor never reads outside [base, base+len).  Every getter checks the
 * bytes that are left first and fails with PF_E_TRUNCATED at the current
 * offset otherwise.  `origin` is added to every reported offset, so a
 * cursor over an embedded slice reports absolute file positions.
 */
#ifndef PF_CURSOR_H
#define PF_CURSOR_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "error.h"

typedef struct pf_cursor {
	const uint8_t *base;
	uint64_t len;
	uint64_t pos;
	uint64_t origin; /* absolute offset of base[0], for error messages */
} pf_cursor;

static inline void pf_cursor_init(pf_cursor *c, const uint8_t *base, uint64_t len, uint64_t origin)
{
	c->base = base;
	c->len = len;
	c->pos = 0;
	c->origin = origin;
}

static inline uint64_t pf_cursor_left(const pf_cursor *c)
{
	return c->len - c->pos;
}

static inline uint64_t pf_cursor_abs(const pf_cursor *c)
{
	return c->origin + c->pos;
}

/* Point *out at the next n bytes and step over them. */
static inline int pf_cursor_take(pf_cursor *c, uint64_t n, const uint8_t **out, pf_error *err)
{
	if (n > pf_cursor_left(c))
		return pf_fail(err, PF_E_TRUNCATED, pf_cursor_abs(c),
			       "need %llu bytes, %llu left", (unsigned long long)n,
			       (unsigned long long)pf_cursor_left(c));
	*out = c->base + c->pos;
	c->pos += n;
	return 0;
}

static inline int pf_cursor_u8(pf_cursor *c, uint8_t *v, pf_error *err)
{
	const uint8_t *p = NULL;
	if (pf_cursor_take(c, 1, &p, err))
		return -1;
	*v = p[0];
	return 0;
}

static inline uint64_t pf_le(const uint8_t *p, unsigned n)
{
	uint64_t v = 0;
	for (unsigned i = n; i-- > 0;)
		v = (v << 8) | p[i];
	return v;
}

static inline int pf_cursor_le(pf_cursor *c, unsigned n, uint64_t *v, pf_error *err)
{
	const uint8_t *p = NULL;
	if (pf_cursor_take(c, n, &p, err))
		return -1;
	*v = pf_le(p, n);
	return 0;
}

/* Bytes up to (not including) the next '\n'; steps over the newline. */
static inline int pf_cursor_line(pf_cursor *c, const uint8_t **out, uint64_t *n, pf_error *err)
{
	const uint8_t *start = c->base + c->pos;
	const uint8_t *nl = memchr(start, '\n', (size_t)pf_cursor_left(c));
	if (!nl)
		return pf_fail(err, PF_E_TRUNCATED, pf_cursor_abs(c), "line without newline");
	*out = start;
	*n = (uint64_t)(nl - start);
	c->pos += *n + 1;
	return 0;
}

#endif
