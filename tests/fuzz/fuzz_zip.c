/*
 * fuzz_zip.c - libFuzzer target for codec/zip.c.
 *
 * Opens the input as a zip; for every entry looks it up by its full name
 * and by its name relative to the archive prefix, and reads its record
 * (stored: a slice of the input; deflated: inflated within the limits).
 * Checks, besides ASan/UBSan/LSan:
 *   - a failure sets a code, a message and an offset <= size;
 *   - entries and records lie inside the input, names are non-empty,
 *     NUL-free, relative, without backslashes or ".." components, and all
 *     start with "<prefix>/";
 *   - pf_zip_find and pf_zip_find_rel return the entry itself (names are
 *     unique);
 *   - a stored record is a slice of the input of exactly usize bytes, an
 *     inflated one has usize bytes.
 * Inflate limits are lowered (16 MiB per record) to keep runs fast.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "zip.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(int ok)
{
	if (!ok)
		abort();
}

static volatile uint8_t sink;

static void touch(const uint8_t *p, uint64_t n)
{
	uint8_t x = 0;
	if (n) /* first and last byte, and a stride through the middle */
		for (uint64_t i = 0; i < n; i += 1 + n / 64)
			x ^= p[i];
	if (n)
		x ^= p[n - 1];
	sink = x;
}

static bool has_dotdot(const char *name)
{
	const char *p = name;
	for (;;) {
		const char *slash = strchr(p, '/');
		size_t len = slash ? (size_t)(slash - p) : strlen(p);
		if (len == 2 && p[0] == '.' && p[1] == '.')
			return true;
		if (!slash)
			return false;
		p = slash + 1;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	pf_limits lim = pf_limits_default();
	pf_arena arena;
	pf_zip z;
	pf_error err = {0};

	lim.max_inflate = 16u << 20;
	lim.max_decoded = 64u << 20;
	pf_arena_init(&arena);
	memset(&z, 0, sizeof(z));
	if (pf_zip_open(&z, data, size, 7, &lim, &arena, &err)) {
		check(err.code != PF_OK && err.msg[0] != '\0');
		check(err.offset >= 7 && err.offset <= 7 + (uint64_t)size);
		pf_zip_free(&z);
		pf_arena_free(&arena);
		return 0;
	}
	check(z.n_entries > 0 && z.prefix != NULL);
	size_t plen = strlen(z.prefix);
	check(z.cd_off <= size && z.cd_size <= size - z.cd_off && z.eocd_off < size);
	for (uint32_t i = 0; i < z.n_entries; i++) {
		const pf_zip_entry *e = &z.entries[i];
		check(e->name && strlen(e->name) == e->name_len && e->name_len > 0);
		check(e->name[0] != '/' && !strchr(e->name, '\\') && !has_dotdot(e->name));
		check(strncmp(e->name, z.prefix, plen) == 0 && e->name[plen] == '/');
		check(e->header_off < e->data_off && e->data_off <= size && e->csize <= size - e->data_off);
		check(e->data_off + e->csize <= z.cd_off);
		check(e->method == 0 || e->method == 8);
		check(pf_zip_find(&z, e->name) == e);
		check(pf_zip_find_rel(&z, e->name + plen + 1) == e);

		const uint8_t *out = NULL;
		uint64_t out_len = 0;
		bool decoded = false;
		pf_error derr = {0};
		if (pf_zip_data(e, data, size, 7, &lim, &arena, &out, &out_len, &decoded, &derr)) {
			check(derr.code != PF_OK && derr.msg[0] != '\0');
			check(derr.offset <= 7 + (uint64_t)size);
			continue;
		}
		check(out_len == e->usize);
		if (!decoded)
			check(e->method == 0 && out == data + e->data_off && out_len == e->csize);
		touch(out, out_len);
	}
	check(pf_zip_find(&z, "") == NULL);
	(void)pf_zip_find_rel(&z, "data.pkl");
	pf_zip_free(&z);
	pf_arena_free(&arena);
	return 0;
}
