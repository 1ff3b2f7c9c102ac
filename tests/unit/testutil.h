/*
 * testutil.h - what several unit tests need: the real Python (Debian's
 * /usr/bin/python3 with torch and numpy) for inputs and expected values,
 * whole-file reads and writes, and a shell.  Each fails the test on error.
 */
#ifndef PF_TESTUTIL_H
#define PF_TESTUTIL_H

#include <stddef.h>
#include <stdint.h>

/*
 * Run `code` with /usr/bin/python3, passing `arg` (may be NULL) as
 * sys.argv[1]; the test fails unless it exits 0.  Returns what it wrote to
 * stdout (malloc, NUL-terminated; *len without the NUL).
 */
uint8_t *pf_test_python(const char *code, const char *arg, size_t *len);

/* The whole file at path (malloc, one spare byte); *len its size. */
uint8_t *pf_test_slurp(const char *path, size_t *len);

/* Write buf[0..len) to path, replacing it. */
void pf_test_spit(const char *path, const uint8_t *buf, size_t len);

/* A growing byte buffer (free p when done) and an output sink of the
 * codec's shape (pf_sink_fn) that appends to it: 0, or -1 out of memory. */
typedef struct pf_test_buf {
	uint8_t *p;
	size_t n, cap;
} pf_test_buf;

int pf_test_buf_sink(void *ctx, const void *p, size_t n);

/* system() of a printf-formatted command; returns its status. */
int pf_test_shell(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
