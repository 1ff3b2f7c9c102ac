/*
 * error.h - how every codec function reports failure.
 *
 * Contract: a function that can fail takes a `pf_error *` as its last
 * argument and returns 0 on success or -1 on failure.  On failure it has
 * filled the error with a code, a one-line message (no trailing newline)
 * and the byte offset in the input where the problem was found.  The
 * first failure wins: pf_fail() never overwrites an error already set, so
 * callers can propagate with a plain `return -1`.
 *
 * Offsets are absolute positions in the model file whenever the failing
 * bytes lie in it directly; for bytes that were decoded first (latin-1
 * text, inflated records) the offset is that of the enclosing value.
 */
#ifndef PF_ERROR_H
#define PF_ERROR_H

#include <stdint.h>

typedef enum pf_code {
	PF_OK = 0,
	PF_E_TRUNCATED,   /* input ends inside a value */
	PF_E_OPCODE,      /* unknown or misplaced pickle opcode */
	PF_E_STACK,       /* stack underflow, missing MARK, wrong operand kind */
	PF_E_MEMO,        /* GET of a memo index that was never PUT */
	PF_E_LIMIT,       /* a documented limit (pf_limits) was hit */
	PF_E_NOMEM,       /* allocation failed */
	PF_E_ZIP,         /* malformed zip container */
	PF_E_FORMAT,      /* well-formed bytes, but not a model we understand */
	PF_E_INFLATE,     /* a deflated record did not inflate */
	PF_E_UNSUPPORTED, /* valid input using a feature we do not read */
	PF_E_INVALID,     /* a change written through the tree that is refused (EINVAL) */
} pf_code;

#define PF_ERR_MSG_MAX 200

typedef struct pf_error {
	pf_code code;
	uint64_t offset;
	char msg[PF_ERR_MSG_MAX];
} pf_error;

/* Set *err (unless it already holds an error) and return -1. */
int pf_fail(pf_error *err, pf_code code, uint64_t offset, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

/* Reset to "no error". */
void pf_error_clear(pf_error *err);

/* Short stable name of a code, e.g. "truncated", "limit". */
const char *pf_code_name(pf_code code);

#endif
