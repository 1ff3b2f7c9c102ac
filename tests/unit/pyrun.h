/*
 * pyrun.h - the unit tests' way to ask the real Python (Debian's
 * /usr/bin/python3 with torch and numpy) for inputs and expected values.
 */
#ifndef PF_TEST_PYRUN_H
#define PF_TEST_PYRUN_H

#include <stddef.h>
#include <stdint.h>

/*
 * Run `code` with /usr/bin/python3, passing `arg` (may be NULL) as
 * sys.argv[1]; the test fails unless it exits 0.  Returns what it wrote to
 * stdout (malloc, NUL-terminated; *len without the NUL).
 */
uint8_t *pf_test_python(const char *code, const char *arg, size_t *len);

#endif
