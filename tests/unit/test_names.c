/*
 * test_names.c - codec/names.c: DESIGN §3.1 escaping, the long-name cut,
 * and pf_name_unescape.
 */
#include <check.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "names.h"

#define HASH_LEN 17

/* Reference FNV-1a-64, independent of the module's. */
static uint64_t ref_fnv(const uint8_t *p, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ULL;

	for (size_t i = 0; i < n; i++)
		h = (h ^ p[i]) * 0x100000001b3ULL;
	return h;
}

static void ref_suffix(const uint8_t *p, size_t n, char *out)
{
	snprintf(out, 18, "~%016llx", (unsigned long long)ref_fnv(p, n));
}

/* Reference escape without any cut (out needs 3 * n + 8 bytes). */
static size_t ref_escape(const uint8_t *p, size_t n, char *out)
{
	size_t o = 0;

	if (n == 0)
		return (size_t)sprintf(out, "%%");
	if (n == 1 && p[0] == '.')
		return (size_t)sprintf(out, "%%2E");
	if (n == 2 && p[0] == '.' && p[1] == '.')
		return (size_t)sprintf(out, "%%2E%%2E");
	for (size_t i = 0; i < n; i++) {
		if (p[i] == '/' || p[i] == '%' || p[i] == '\0')
			o += (size_t)sprintf(out + o, "%%%02X", p[i]);
		else
			out[o++] = (char)p[i];
	}
	out[o] = '\0';
	return o;
}

static bool valid_utf8(const uint8_t *p, size_t n)
{
	size_t i = 0;

	while (i < n) {
		uint8_t b = p[i];
		size_t len;
		uint32_t cp;

		if (b < 0x80) {
			i++;
			continue;
		}
		if (b >= 0xc2 && b <= 0xdf) {
			len = 2;
			cp = b & 0x1f;
		} else if (b >= 0xe0 && b <= 0xef) {
			len = 3;
			cp = b & 0x0f;
		} else if (b >= 0xf0 && b <= 0xf4) {
			len = 4;
			cp = b & 0x07;
		} else {
			return false;
		}
		if (n - i < len)
			return false;
		for (size_t k = 1; k < len; k++) {
			if ((p[i + k] & 0xc0) != 0x80)
				return false;
			cp = cp << 6 | (p[i + k] & 0x3f);
		}
		if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
		    (cp >= 0xd800 && cp <= 0xdfff))
			return false;
		i += len;
	}
	return true;
}

/* The invariants of every pf_name_escape result. */
static size_t escape_checked(const uint8_t *in, size_t len, size_t reserve, char *out)
{
	size_t n;

	memset(out, 'X', PF_NAME_MAX + 1);
	n = pf_name_escape(in, len, reserve, out);
	ck_assert_uint_ge(n, 1);
	ck_assert_uint_le(n, PF_NAME_MAX - reserve);
	ck_assert_uint_eq(strlen(out), n);
	ck_assert_ptr_null(memchr(out, '/', n));
	ck_assert_str_ne(out, ".");
	ck_assert_str_ne(out, "..");
	return n;
}

static void check_escape(const char *in, size_t len, const char *expect)
{
	char out[PF_NAME_MAX + 1];
	uint8_t back[PF_NAME_MAX + 1];
	size_t n = escape_checked((const uint8_t *)in, len, 0, out);

	ck_assert_str_eq(out, expect);
	ck_assert_uint_eq(n, strlen(expect));
	ck_assert_uint_eq(pf_name_unescape(out, n, back), len);
	ck_assert(len == 0 || memcmp(back, in, len) == 0);
}

START_TEST(test_table)
{
	check_escape("weight", 6, "weight");
	check_escape("/", 1, "%2F");
	check_escape("a/b/c", 5, "a%2Fb%2Fc");
	check_escape("%", 1, "%25");
	check_escape("100%", 4, "100%25");
	check_escape("%2F", 3, "%252F");
	check_escape("a\0b", 3, "a%00b");
	check_escape("\0", 1, "%00");
	check_escape("", 0, "%");
	check_escape(".", 1, "%2E");
	check_escape("..", 2, "%2E%2E");
	check_escape("...", 3, "...");
	check_escape(".a", 2, ".a");
	check_escape("a.", 2, "a.");
	check_escape("./", 2, ".%2F");
	check_escape("~2", 2, "~2");
	check_escape("caf\xc3\xa9", 5, "caf\xc3\xa9");
	check_escape("\xff\xfe", 2, "\xff\xfe");
	check_escape("\n\t ", 3, "\n\t ");
}
END_TEST

START_TEST(test_fnv_reference)
{
	/* published FNV-1a-64 vectors, to trust the reference used below */
	ck_assert_uint_eq(ref_fnv((const uint8_t *)"", 0), 0xcbf29ce484222325ULL);
	ck_assert_uint_eq(ref_fnv((const uint8_t *)"a", 1), 0xaf63dc4c8601ec8cULL);
	ck_assert_uint_eq(ref_fnv((const uint8_t *)"foobar", 6), 0x85944171f73967e8ULL);
}
END_TEST

START_TEST(test_long_ascii)
{
	uint8_t in[600];
	char out[PF_NAME_MAX + 1], expect[PF_NAME_MAX + 1];
	size_t n;

	memset(in, 'a', sizeof(in));
	/* 255 fits, 256 is cut */
	n = escape_checked(in, 255, 0, out);
	ck_assert_uint_eq(n, 255);
	ck_assert_ptr_null(strchr(out, '~'));
	n = escape_checked(in, 256, 0, out);
	ck_assert_uint_eq(n, 255);
	memset(expect, 'a', 238);
	ref_suffix(in, 256, expect + 238);
	ck_assert_str_eq(out, expect);
	/* 300 bytes */
	n = escape_checked(in, 300, 0, out);
	ck_assert_uint_eq(n, 255);
	ref_suffix(in, 300, expect + 238);
	ck_assert_str_eq(out, expect);
	/* the hash covers the whole name: 300 and 301 'a' differ */
	{
		char out2[PF_NAME_MAX + 1];

		escape_checked(in, 301, 0, out2);
		ck_assert_str_ne(out, out2);
		ck_assert_int_eq(memcmp(out, out2, 238), 0);
	}
}
END_TEST

START_TEST(test_reserve)
{
	uint8_t in[400];
	char out[PF_NAME_MAX + 1];

	memset(in, 'b', sizeof(in));
	/* reserve 4 (".npy"): 251 fits, 252 is cut to 251 */
	ck_assert_uint_eq(escape_checked(in, 251, 4, out), 251);
	ck_assert_ptr_null(strchr(out, '~'));
	ck_assert_uint_eq(escape_checked(in, 252, 4, out), 251);
	ck_assert_ptr_nonnull(strchr(out, '~'));
	ck_assert_uint_eq(strlen(strchr(out, '~')), HASH_LEN);
	/* reserve for ".npy" plus a "~NNN" collision suffix */
	ck_assert_uint_eq(escape_checked(in, 400, 8, out), 247);
	/* the largest reserve allowed leaves 1 byte of name before the hash */
	ck_assert_uint_eq(escape_checked(in, 400, PF_NAME_MAX - HASH_LEN - 1, out), HASH_LEN + 1);
	ck_assert_int_eq(out[0], 'b');
	ck_assert_int_eq(out[1], '~');
	/* ... and a name whose first character does not fit keeps only the hash */
	in[0] = '/';
	ck_assert_uint_eq(escape_checked(in, 400, PF_NAME_MAX - HASH_LEN - 1, out), HASH_LEN);
	ck_assert_int_eq(out[0], '~');
	/* short names ignore the reserve */
	ck_assert_uint_eq(escape_checked((const uint8_t *)"x", 1, 200, out), 1);
	ck_assert_uint_eq(escape_checked((const uint8_t *)"..", 2, 200, out), 6);
}
END_TEST

/* Escaping that grows the name past the limit is cut too, never inside %XX. */
START_TEST(test_cut_at_escape)
{
	for (size_t reserve = 0; reserve < 8; reserve++) {
		for (size_t k = 225; k < 260; k++) {
			uint8_t in[300];
			char out[PF_NAME_MAX + 1], full[1000], *tilde;
			uint8_t back[PF_NAME_MAX + 1];
			size_t n, flen, plen;

			memset(in, 'c', k);
			memset(in + k, '/', 20);
			in[k + 3] = '%';
			in[k + 5] = '\0';
			n = escape_checked(in, k + 20, reserve, out);
			flen = ref_escape(in, k + 20, full);
			ck_assert_uint_gt(flen, PF_NAME_MAX - reserve);
			tilde = strrchr(out, '~');
			ck_assert_ptr_nonnull(tilde);
			plen = (size_t)(tilde - out);
			ck_assert_uint_eq(n, plen + HASH_LEN);
			/* the kept part is a prefix of the full escape, of whole escapes */
			ck_assert_int_eq(memcmp(out, full, plen), 0);
			ck_assert_uint_ne(pf_name_unescape(out, plen, back), (size_t)-1);
			/* and the longest such prefix: the next unit would not fit */
			{
				size_t next = full[plen] == '%' ? 3 : 1;

				ck_assert_uint_gt(plen + next, PF_NAME_MAX - reserve - HASH_LEN);
			}
		}
	}
}
END_TEST

static void check_utf8_cut(const uint8_t *in, size_t len, size_t reserve)
{
	char out[PF_NAME_MAX + 1], expect_sfx[HASH_LEN + 1];
	size_t n = escape_checked(in, len, reserve, out);
	size_t plen = n - HASH_LEN;

	ck_assert_uint_gt(len, PF_NAME_MAX - reserve);
	ref_suffix(in, len, expect_sfx);
	ck_assert_str_eq(out + plen, expect_sfx);
	ck_assert_int_eq(memcmp(out, in, plen), 0);
	/* the cut is at a character boundary: next byte is not a continuation */
	ck_assert_int_ne(in[plen] & 0xc0, 0x80);
	ck_assert(valid_utf8((const uint8_t *)out, n));
	/* and as late as possible: the next character would not have fit */
	ck_assert_uint_gt(plen + 4, PF_NAME_MAX - reserve - HASH_LEN);
}

START_TEST(test_long_utf8)
{
	static const char *const chars[] = {
		"\xc3\xa9",         /* é, 2 bytes */
		"\xe2\x82\xac",     /* €, 3 bytes */
		"\xf0\x9f\x98\x80", /* 😀, 4 bytes */
	};

	for (size_t c = 0; c < 3; c++) {
		size_t cl = strlen(chars[c]);

		for (size_t shift = 0; shift < 4; shift++) {
			for (size_t reserve = 0; reserve < 6; reserve++) {
				uint8_t in[320];
				size_t len = 0;

				for (size_t i = 0; i < shift; i++)
					in[len++] = 'x';
				while (len + cl <= 300) {
					memcpy(in + len, chars[c], cl);
					len += cl;
				}
				check_utf8_cut(in, len, reserve);
			}
		}
	}
	/* mixed widths */
	{
		uint8_t in[400];
		size_t len = 0;

		for (size_t i = 0; len + 4 <= sizeof(in); i++) {
			const char *ch = chars[i % 3];

			memcpy(in + len, ch, strlen(ch));
			len += strlen(ch);
		}
		for (size_t reserve = 0; reserve < 12; reserve++)
			check_utf8_cut(in, len, reserve);
	}
}
END_TEST

START_TEST(test_long_invalid_utf8)
{
	uint8_t in[300];
	char out[PF_NAME_MAX + 1];

	/* bytes that start no valid sequence are units of their own */
	memset(in, 0xe2, sizeof(in));
	ck_assert_uint_eq(escape_checked(in, sizeof(in), 0, out), PF_NAME_MAX);
	memset(in, 0x80, sizeof(in));
	ck_assert_uint_eq(escape_checked(in, sizeof(in), 0, out), PF_NAME_MAX);
	/* a truncated 4-byte sequence at the cut point */
	memset(in, 'z', sizeof(in));
	memcpy(in + 236, "\xf0\x9f\x98", 3);
	ck_assert_uint_eq(escape_checked(in, sizeof(in), 0, out), PF_NAME_MAX);
	ck_assert_int_eq(memcmp(out, in, 238), 0);
	/* a valid one there is not split */
	memcpy(in + 236, "\xf0\x9f\x98\x80", 4);
	ck_assert_uint_eq(escape_checked(in, sizeof(in), 0, out), 236 + HASH_LEN);
}
END_TEST

START_TEST(test_long_names_sharing_prefix)
{
	uint8_t a[400], b[400];
	char oa[PF_NAME_MAX + 1], ob[PF_NAME_MAX + 1];

	for (size_t i = 0; i < sizeof(a); i++)
		a[i] = (uint8_t)('A' + i % 26);
	memcpy(b, a, sizeof(b));
	b[300] = '!';
	escape_checked(a, 400, 0, oa);
	escape_checked(b, 400, 0, ob);
	ck_assert_str_ne(oa, ob);
	ck_assert_int_eq(memcmp(oa, ob, 238), 0);
	/* same first 255 bytes, different lengths */
	escape_checked(a, 256, 0, oa);
	escape_checked(a, 257, 0, ob);
	ck_assert_str_ne(oa, ob);
}
END_TEST

static uint64_t rng_next(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

static uint8_t random_byte(uint64_t *seed)
{
	static const uint8_t special[] = { '/', '%', '\0', '.', '~', '2', 'F', 0xc3, 0xa9, 0x80 };
	uint64_t r = rng_next(seed);

	return r % 3 == 0 ? special[(r >> 8) % sizeof(special)] : (uint8_t)(r >> 16);
}

START_TEST(test_random_round_trip)
{
	uint64_t seed = 0x1234567887654321ULL;
	unsigned cut = 0, whole = 0;

	for (unsigned r = 0; r < 5000; r++) {
		uint8_t in[700], back[PF_NAME_MAX + 1];
		char out[PF_NAME_MAX + 1], full[3 * 700 + 8];
		size_t len = (size_t)(rng_next(&seed) % (r % 4 == 0 ? 600 : 90));
		size_t reserve = (size_t)(rng_next(&seed) % (PF_NAME_MAX - HASH_LEN));
		size_t n, flen;

		if (r % 2)
			reserve %= 10;
		for (size_t i = 0; i < len; i++)
			in[i] = random_byte(&seed);
		n = escape_checked(in, len, reserve, out);
		flen = ref_escape(in, len, full);
		if (flen <= PF_NAME_MAX - reserve) {
			whole++;
			ck_assert_str_eq(out, full);
			ck_assert_uint_eq(pf_name_unescape(out, n, back), len);
			ck_assert(len == 0 || memcmp(back, in, len) == 0);
		} else {
			char sfx[HASH_LEN + 1];

			cut++;
			ck_assert_uint_ge(n, HASH_LEN);
			ref_suffix(in, len, sfx);
			ck_assert_str_eq(out + n - HASH_LEN, sfx);
			ck_assert_int_eq(memcmp(out, full, n - HASH_LEN), 0);
		}
	}
	ck_assert_uint_gt(cut, 500);
	ck_assert_uint_gt(whole, 2000);
}
END_TEST

static size_t unesc(const char *s, size_t len)
{
	uint8_t out[PF_NAME_MAX + 8];

	return pf_name_unescape(s, len, out);
}

START_TEST(test_unescape)
{
	uint8_t out[PF_NAME_MAX + 1];
	char big[PF_NAME_MAX + 2];

	ck_assert_uint_eq(pf_name_unescape("%", 1, out), 0);
	ck_assert_uint_eq(pf_name_unescape("%2E", 3, out), 1);
	ck_assert_int_eq(out[0], '.');
	ck_assert_uint_eq(pf_name_unescape("%2E%2E", 6, out), 2);
	ck_assert_int_eq(memcmp(out, "..", 2), 0);
	ck_assert_uint_eq(pf_name_unescape("a%2Fb%25%00", 11, out), 5);
	ck_assert_int_eq(memcmp(out, "a/b%\0", 5), 0);
	ck_assert_uint_eq(pf_name_unescape("...", 3, out), 3);
	/* malformed, or not something pf_name_escape writes */
	ck_assert_uint_eq(unesc("", 0), (size_t)-1);
	ck_assert_uint_eq(unesc("%%", 2), (size_t)-1);
	ck_assert_uint_eq(unesc("%2", 2), (size_t)-1);
	ck_assert_uint_eq(unesc("a%2", 3), (size_t)-1);
	ck_assert_uint_eq(unesc("a%", 2), (size_t)-1);
	ck_assert_uint_eq(unesc("%2f", 3), (size_t)-1);
	ck_assert_uint_eq(unesc("%ZZ", 3), (size_t)-1);
	ck_assert_uint_eq(unesc("%41", 3), (size_t)-1);
	ck_assert_uint_eq(unesc("%2Ea", 4), (size_t)-1);
	ck_assert_uint_eq(unesc("a%2E", 4), (size_t)-1);
	ck_assert_uint_eq(unesc("%2E%2E%2E", 9), (size_t)-1);
	ck_assert_uint_eq(unesc("a/b", 3), (size_t)-1);
	ck_assert_uint_eq(unesc("a\0b", 3), (size_t)-1);
	ck_assert_uint_eq(unesc(".", 1), (size_t)-1);
	ck_assert_uint_eq(unesc("..", 2), (size_t)-1);
	ck_assert_uint_eq(unesc("%-1", 3), (size_t)-1);
	memset(big, 'q', sizeof(big));
	ck_assert_uint_eq(unesc(big, PF_NAME_MAX), PF_NAME_MAX);
	ck_assert_uint_eq(unesc(big, PF_NAME_MAX + 1), (size_t)-1);
}
END_TEST

static Suite *names_suite(void)
{
	Suite *s = suite_create("names");
	TCase *tc = tcase_create("core");

	tcase_add_test(tc, test_table);
	tcase_add_test(tc, test_fnv_reference);
	tcase_add_test(tc, test_long_ascii);
	tcase_add_test(tc, test_reserve);
	tcase_add_test(tc, test_cut_at_escape);
	tcase_add_test(tc, test_long_utf8);
	tcase_add_test(tc, test_long_invalid_utf8);
	tcase_add_test(tc, test_long_names_sharing_prefix);
	tcase_add_test(tc, test_random_round_trip);
	tcase_add_test(tc, test_unescape);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(names_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
