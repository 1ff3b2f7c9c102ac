/*
 * names.c - safe file names for keys and attributes (see names.h).
 *
 * The input is walked in units: a valid UTF-8 sequence (strict: no
 * overlongs, surrogates or code points above U+10FFFF), or else a single
 * byte.  Each unit is written as is, except '/', '%' and NUL, which become
 * %2F, %25 and %00.  A long name keeps the longest run of whole units that
 * fits before the "~" + 16 lower-case hex digits of the FNV-1a-64 hash of
 * the whole unescaped name, so a cut never splits an escape or a
 * character, and valid UTF-8 stays valid UTF-8.
 */
#include "names.h"

#include "utf8.h"

#include <stdbool.h>
#include <string.h>

#define NAME_HASH_LEN 17 /* "~" + 16 hex digits */
#define FNV64_OFFSET 0xcbf29ce484222325ULL
#define FNV64_PRIME 0x100000001b3ULL

static uint64_t fnv1a64(const uint8_t *p, size_t n)
{
	uint64_t h = FNV64_OFFSET;

	for (size_t i = 0; i < n; i++) {
		h ^= p[i];
		h *= FNV64_PRIME;
	}
	return h;
}

static bool needs_escape(uint8_t b)
{
	return b == '/' || b == '%' || b == '\0';
}

/* Length of the valid UTF-8 sequence at p[0..n), or 1 for a byte that starts none. */
static size_t unit_len(const uint8_t *p, size_t n)
{
	size_t len = pf_utf8_seq(p, n);
	return len ? len : 1;
}

/* Bytes the escaped form of in[0..len) takes. */
static size_t escaped_len(const uint8_t *in, size_t len)
{
	size_t n = len;

	for (size_t i = 0; i < len; i++)
		if (needs_escape(in[i]))
			n += 2;
	return n;
}

static void put_hex2(char *out, uint8_t b)
{
	static const char hex[] = "0123456789ABCDEF";

	out[0] = hex[b >> 4];
	out[1] = hex[b & 15];
}

/*
 * Escape whole units of in[0..len) into out while they fit in room bytes;
 * returns the bytes written.
 */
static size_t escape_units(const uint8_t *in, size_t len, size_t room, char *out)
{
	size_t i = 0, o = 0;

	while (i < len) {
		size_t k = unit_len(in + i, len - i);
		size_t w = (k == 1 && needs_escape(in[i])) ? 3 : k;

		if (o + w > room)
			break;
		if (w == 3 && k == 1) {
			out[o] = '%';
			put_hex2(out + o + 1, in[i]);
		} else {
			memcpy(out + o, in + i, k);
		}
		o += w;
		i += k;
	}
	return o;
}

static size_t put_hash(const uint8_t *in, size_t len, char *out)
{
	static const char hex[] = "0123456789abcdef";
	uint64_t h = fnv1a64(in, len);

	out[0] = '~';
	for (int i = 0; i < 16; i++)
		out[1 + i] = hex[(h >> (60 - 4 * i)) & 15];
	return NAME_HASH_LEN;
}

static size_t put_literal(char *out, const char *s)
{
	size_t n = strlen(s);

	memcpy(out, s, n + 1);
	return n;
}

size_t pf_name_escape(const uint8_t *in, size_t len, size_t reserve, char *out)
{
	size_t room, o;

	if (reserve > PF_NAME_MAX - NAME_HASH_LEN - 1)
		reserve = PF_NAME_MAX - NAME_HASH_LEN - 1;
	room = PF_NAME_MAX - reserve;
	if (len == 0)
		return put_literal(out, "%");
	if (len == 1 && in[0] == '.')
		return put_literal(out, "%2E");
	if (len == 2 && in[0] == '.' && in[1] == '.')
		return put_literal(out, "%2E%2E");
	if (escaped_len(in, len) <= room) {
		o = escape_units(in, len, room, out);
	} else {
		o = escape_units(in, len, room - NAME_HASH_LEN, out);
		o += put_hash(in, len, out + o);
	}
	out[o] = '\0';
	return o;
}

static int hex_value(char ch)
{
	if (ch >= '0' && ch <= '9')
		return ch - '0';
	if (ch >= 'A' && ch <= 'F')
		return ch - 'A' + 10;
	return -1;
}

/* Decode the %XX at in[0..3) if pf_name_escape writes it inside a name; -1 if not. */
static int decode_escape(const char *in, size_t left)
{
	int hi, lo, b;

	if (left < 3)
		return -1;
	hi = hex_value(in[1]);
	lo = hex_value(in[2]);
	if (hi < 0 || lo < 0)
		return -1;
	b = hi * 16 + lo;
	return needs_escape((uint8_t)b) ? b : -1;
}

size_t pf_name_unescape(const char *in, size_t len, uint8_t *out)
{
	size_t i = 0, o = 0;

	if (len == 0 || len > PF_NAME_MAX)
		return (size_t)-1;
	if (len == 1 && in[0] == '%')
		return 0;
	if (len == 3 && memcmp(in, "%2E", 3) == 0) {
		out[0] = '.';
		return 1;
	}
	if (len == 6 && memcmp(in, "%2E%2E", 6) == 0) {
		memcpy(out, "..", 2);
		return 2;
	}
	while (i < len) {
		if (in[i] == '%') {
			int b = decode_escape(in + i, len - i);

			if (b < 0)
				return (size_t)-1;
			out[o++] = (uint8_t)b;
			i += 3;
		} else if (in[i] == '/' || in[i] == '\0') {
			return (size_t)-1;
		} else {
			out[o++] = (uint8_t)in[i++];
		}
	}
	if ((o == 1 && out[0] == '.') || (o == 2 && out[0] == '.' && out[1] == '.'))
		return (size_t)-1;
	return o;
}
