/*
 * fuzz_escape.c - libFuzzer target for codec/names.c.
 *
 * Input: first byte picks the reserve, the rest is the name.  Checks that
 * pf_name_escape never yields '/', NUL, "." or "..", never more than
 * PF_NAME_MAX - reserve bytes, that unescape(escape(x)) == x when x was
 * not cut, that a cut name ends in "~" + 16 hex digits after whole
 * escapes, and that whatever pf_name_unescape accepts escapes back to
 * itself (it accepts only what pf_name_escape can produce).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "names.h"

#define HASH_LEN 17

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(int ok)
{
	if (!ok)
		abort();
}

static size_t escaped_len(const uint8_t *p, size_t n)
{
	size_t e = n;

	if (n == 0)
		return 1;
	if (n == 1 && p[0] == '.')
		return 3;
	if (n == 2 && p[0] == '.' && p[1] == '.')
		return 6;
	for (size_t i = 0; i < n; i++)
		if (p[i] == '/' || p[i] == '%' || p[i] == '\0')
			e += 2;
	return e;
}

static int is_hex(char c)
{
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
}

static void check_escape(const uint8_t *name, size_t len, size_t reserve)
{
	char out[PF_NAME_MAX + 1];
	uint8_t *back = malloc(PF_NAME_MAX + 1);
	size_t n = pf_name_escape(name, len, reserve, out);

	check(back != NULL);
	check(n >= 1 && n <= PF_NAME_MAX - reserve);
	check(strlen(out) == n);
	check(memchr(out, '/', n) == NULL);
	check(strcmp(out, ".") != 0 && strcmp(out, "..") != 0);
	if (escaped_len(name, len) <= PF_NAME_MAX - reserve) {
		check(pf_name_unescape(out, n, back) == len);
		check(len == 0 || memcmp(back, name, len) == 0);
	} else {
		check(n >= HASH_LEN && out[n - HASH_LEN] == '~');
		for (size_t i = n - HASH_LEN + 1; i < n; i++)
			check(is_hex(out[i]));
		/* the kept part is whole escapes ("." and ".." alone are fine there) */
		out[n - HASH_LEN] = '\0';
		if (n > HASH_LEN && strcmp(out, ".") != 0 && strcmp(out, "..") != 0)
			check(pf_name_unescape(out, n - HASH_LEN, back) != (size_t)-1);
	}
	free(back);
}

/* Whatever unescape accepts is exactly what escape writes for the result. */
static void check_unescape(const uint8_t *data, size_t size)
{
	uint8_t *dec = malloc(size ? size : 1);
	char out[PF_NAME_MAX + 1];
	size_t n;

	check(dec != NULL);
	n = pf_name_unescape((const char *)data, size, dec);
	if (n != (size_t)-1) {
		check(n <= size);
		check(pf_name_escape(dec, n, 0, out) == size);
		check(memcmp(out, data, size) == 0);
	}
	free(dec);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	size_t reserve;

	if (size == 0)
		return 0;
	reserve = data[0] % (PF_NAME_MAX - HASH_LEN);
	check_escape(data + 1, size - 1, reserve);
	check_escape(data + 1, size - 1, 0);
	check_unescape(data + 1, size - 1);
	return 0;
}
