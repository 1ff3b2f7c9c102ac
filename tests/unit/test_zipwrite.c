/*
 * test_zipwrite.c - unit tests of codec/zipwrite.c.
 *
 * Oracles: files torch.save (Debian python3-torch 1.13) writes at test time
 * (re-writing their records must give the same bytes), Python's zipfile
 * (testzip) and torch.load on rewritten files, libtorch's
 * PyTorchStreamReader through tests/tools/torch-zip-check (where it was
 * built), pf_zip_open, and for zip64 the bytes of a real 4 GiB torch.save
 * file (its headers and tail, recorded once below; the test writes only a
 * sparse skeleton, never 4 GiB).
 */
#include <check.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "testutil.h"
#include "arena.h"
#include "pf_limits.h"
#include "zip.h"
#include "zipwrite.h"

#define PYTHON "/usr/bin/python3"

static char tmp_dir[256];
static char helper[1024]; /* torch-zip-check, or "" when it was not built */

/* ------------------------------------------------------------------ files, shell */




static void fixture(char *out, size_t n, const char *name)
{
	snprintf(out, n, "%s/%s", tmp_dir, name);
}

static uint64_t rd_le(const uint8_t *p, unsigned n)
{
	uint64_t v = 0;
	for (unsigned i = 0; i < n; i++)
		v |= (uint64_t)p[i] << (8 * i);
	return v;
}

/* ------------------------------------------------------------------ sinks */

typedef struct mem_sink {
	uint8_t *p;
	size_t n, cap;
	size_t fail_after; /* 0: never fail */
} mem_sink;

static int mem_write(void *ctx, const void *buf, size_t n)
{
	mem_sink *s = ctx;

	ck_assert_uint_gt(n, 0);
	if (s->fail_after && s->n + n > s->fail_after)
		return -1;
	if (s->n + n > s->cap) {
		s->cap = (s->n + n) * 2;
		s->p = realloc(s->p, s->cap);
		ck_assert_ptr_nonnull(s->p);
	}
	memcpy(s->p + s->n, buf, n);
	s->n += n;
	return 0;
}

/* A record source over a memory block, through the read callback. */
typedef struct mem_src {
	const uint8_t *p;
	uint64_t len, next; /* next: the offset the writer must ask for next */
} mem_src;

static int mem_read(void *ctx, uint64_t off, void *buf, size_t n)
{
	mem_src *s = ctx;

	ck_assert_uint_eq(off, s->next);
	ck_assert_uint_le(n, PF_ZW_CHUNK);
	ck_assert_uint_le(off + n, s->len);
	memcpy(buf, s->p + off, n);
	s->next += n;
	return 0;
}

/* ------------------------------------------------------------------ zip helpers */

typedef struct opened {
	pf_arena arena;
	pf_zip z;
} opened;

static void open_ok(opened *o, const uint8_t *buf, uint64_t len)
{
	pf_limits lim = pf_limits_default();
	pf_error err;

	pf_arena_init(&o->arena);
	pf_error_clear(&err);
	ck_assert_msg(pf_zip_open(&o->z, buf, len, 0, &lim, &o->arena, &err) == 0,
		      "pf_zip_open refused the output: %s at %llu", err.msg,
		      (unsigned long long)err.offset);
}

static void close_z(opened *o)
{
	pf_zip_free(&o->z);
	pf_arena_free(&o->arena);
}

/* One record per entry of a stored zip, data pointing into buf. */
static pf_zw_record *records_of(const pf_zip *z, const uint8_t *buf)
{
	pf_zw_record *r = calloc(z->n_entries, sizeof(*r));

	ck_assert_ptr_nonnull(r);
	for (uint32_t i = 0; i < z->n_entries; i++) {
		ck_assert_uint_eq(z->entries[i].method, 0);
		r[i].name = z->entries[i].name;
		r[i].len = z->entries[i].usize;
		r[i].data = buf + z->entries[i].data_off;
	}
	return r;
}

static void write_ok(const pf_zw_record *r, uint32_t n, uint32_t alignment, mem_sink *s)
{
	pf_error err;
	pf_zw_layout l;

	memset(s, 0, sizeof(*s));
	pf_error_clear(&err);
	ck_assert_msg(pf_zip_write(r, n, alignment, mem_write, s, &l, &err) == 0, "write: %s",
		      err.msg);
	ck_assert_uint_eq(l.size, s->n);
}

/* The output holds the records' bytes, 64-aligned, with the right CRCs,
 * and the plan said where. */
static void check_output(const pf_zw_record *r, uint32_t n, uint32_t alignment, const mem_sink *s)
{
	pf_zw_place *pl = calloc(n, sizeof(*pl));
	pf_zw_layout l;
	pf_error err;
	opened o;

	ck_assert_ptr_nonnull(pl);
	pf_error_clear(&err);
	ck_assert_int_eq(pf_zip_plan(r, n, alignment, pl, &l, &err), 0);
	ck_assert_uint_eq(l.size, s->n);
	open_ok(&o, s->p, s->n);
	ck_assert_uint_eq(o.z.n_entries, n);
	ck_assert(o.z.zip64);
	ck_assert_uint_eq(o.z.cd_off, l.cd_off);
	ck_assert_uint_eq(o.z.cd_size, l.cd_size);
	for (uint32_t i = 0; i < n; i++) {
		const pf_zip_entry *e = &o.z.entries[i];

		ck_assert_str_eq(e->name, r[i].name);
		ck_assert_uint_eq(e->usize, r[i].len);
		ck_assert_uint_eq(e->data_off % alignment, 0);
		ck_assert_uint_eq(e->data_off, pl[i].data_off);
		ck_assert_uint_eq(e->header_off, pl[i].header_off);
		ck_assert(memcmp(s->p + e->data_off, r[i].data, r[i].len) == 0);
		ck_assert_uint_eq(e->crc32, (uint32_t)crc32(0, r[i].data, (uInt)r[i].len));
		if (r[i].len) /* the descriptor carries the same CRC and sizes */
			ck_assert_uint_eq(rd_le(s->p + e->data_off + r[i].len + 4, 4), e->crc32);
		ck_assert_uint_eq(i + 1 < n ? pl[i + 1].header_off : l.cd_off, pl[i].end_off);
	}
	close_z(&o);
	free(pl);
}

/* Queue one check.py triple (run in one Python process per test). */
static void append_check(char *args, size_t size, const char *orig, const char *new_path,
			 const char *mode)
{
	size_t used = strlen(args);
	int n = snprintf(args + used, size - used, " '%s' '%s' %s", orig, new_path, mode);

	ck_assert(n > 0 && (size_t)n < size - used);
}

/* libtorch's reader lists exactly our records, with 64-aligned offsets equal
 * to ours, sizes and CRC-32s of the bytes it read equal to ours. */
static void check_with_libtorch(const char *path, const uint8_t *buf, uint64_t len)
{
	char out[600], line[1200], name[1024];
	unsigned long long size, off;
	unsigned long crc;
	uint32_t seen = 0;
	opened o;
	FILE *f;

	if (!helper[0])
		return;
	snprintf(out, sizeof(out), "%s.lt", path);
	ck_assert_msg(pf_test_shell("'%s' '%s' > '%s'", helper, path, out) == 0,
		      "torch-zip-check failed on %s", path);
	open_ok(&o, buf, len);
	f = fopen(out, "r");
	ck_assert_ptr_nonnull(f);
	while (fgets(line, sizeof(line), f)) {
		const pf_zip_entry *e;

		ck_assert_int_eq(sscanf(line, "%1023s %llu %lx %llu", name, &size, &crc, &off), 4);
		e = pf_zip_find_rel(&o.z, name);
		ck_assert_msg(e != NULL, "libtorch lists %s, we did not write it", name);
		ck_assert_uint_eq(size, e->usize);
		ck_assert_uint_eq(crc, e->crc32);
		ck_assert_uint_eq(off, e->data_off);
		ck_assert_uint_eq(off % 64, 0);
		seen++;
	}
	fclose(f);
	ck_assert_uint_eq(seen, o.z.n_entries);
	close_z(&o);
}

/* ------------------------------------------------------------------ 1: byte-identical */

static const char *const FIXTURES[] = {"sd.pt", "odd.pt", "w.pt", "long.pt"};

static void roundtrip(const char *name)
{
	char path[400];
	uint64_t len;
	uint8_t *buf;
	pf_zw_record *r;
	mem_src *src;
	mem_sink s;
	opened o;

	fixture(path, sizeof(path), name);
	buf = pf_test_slurp(path, &len);
	open_ok(&o, buf, len);
	r = records_of(&o.z, buf);

	/* from memory, CRCs computed */
	write_ok(r, o.z.n_entries, 64, &s);
	ck_assert_msg(s.n == len && memcmp(s.p, buf, len) == 0, "%s: output differs from torch's",
		      name);
	check_output(r, o.z.n_entries, 64, &s);
	free(s.p);

	/* through the read callback, CRCs from the old central directory */
	src = calloc(o.z.n_entries, sizeof(*src));
	ck_assert_ptr_nonnull(src);
	for (uint32_t i = 0; i < o.z.n_entries; i++) {
		src[i].p = r[i].data;
		src[i].len = r[i].len;
		r[i].data = NULL;
		r[i].read = mem_read;
		r[i].read_ctx = &src[i];
		r[i].crc_given = true;
		r[i].crc32 = o.z.entries[i].crc32;
	}
	write_ok(r, o.z.n_entries, 64, &s);
	ck_assert_msg(s.n == len && memcmp(s.p, buf, len) == 0,
		      "%s: output through read callbacks differs", name);
	for (uint32_t i = 0; i < o.z.n_entries; i++)
		ck_assert_uint_eq(src[i].next, src[i].len);
	free(s.p);
	free(src);
	free(r);
	close_z(&o);
	free(buf);
}

START_TEST(test_identical_to_torch)
{
	roundtrip(FIXTURES[_i]);
}
END_TEST

/* The fixtures hold what the layout rules are about. */
START_TEST(test_fixture_coverage)
{
	char path[400];
	uint64_t len;
	uint8_t *buf;
	opened o;
	bool empty = false, late_key = false;

	fixture(path, sizeof(path), "odd.pt");
	buf = pf_test_slurp(path, &len);
	open_ok(&o, buf, len);
	for (uint32_t i = 0; i < o.z.n_entries; i++) {
		empty |= o.z.entries[i].usize == 0;
		late_key |= strcmp(o.z.entries[i].name, "odd/data/10") == 0;
		if (o.z.entries[i].usize == 0) /* miniz: no bit 3, no descriptor */
			ck_assert_uint_eq(o.z.entries[i].flags, 0x0800);
		else
			ck_assert_uint_eq(o.z.entries[i].flags, 0x0808);
	}
	ck_assert(empty && late_key);
	ck_assert_str_eq(o.z.entries[o.z.n_entries - 1].name, "odd/version");
	close_z(&o);
	free(buf);
}
END_TEST

/* ------------------------------------------------------------------ 2: edits */

START_TEST(test_same_length_edit)
{
	char path[400], out[400];
	uint64_t len;
	uint8_t *buf, *edit;
	pf_zw_record *r;
	const pf_zip_entry *e0;
	uint32_t k = UINT32_MAX, newcrc;
	uint64_t cd_crc_off = 0, cd = 0;
	mem_sink s;
	opened o;

	fixture(path, sizeof(path), "w.pt");
	buf = pf_test_slurp(path, &len);
	open_ok(&o, buf, len);
	r = records_of(&o.z, buf);
	for (uint32_t i = 0; i < o.z.n_entries; i++)
		if (strcmp(r[i].name, "w/data/0") == 0)
			k = i;
	ck_assert_uint_ne(k, UINT32_MAX);
	e0 = &o.z.entries[k];
	ck_assert_uint_eq(e0->usize, 24); /* torch.arange(6.) */
	edit = malloc(24);
	for (int i = 0; i < 6; i++) {
		float v = 10.0f + (float)i;
		memcpy(edit + 4 * i, &v, 4); /* the test host is little-endian, like torch's file */
	}
	r[k].data = edit;
	newcrc = (uint32_t)crc32(0, edit, 24);
	write_ok(r, o.z.n_entries, 64, &s);
	ck_assert_uint_eq(s.n, len);
	check_output(r, o.z.n_entries, 64, &s);

	/* where record k's CRC sits in the central directory */
	cd = o.z.cd_off;
	for (uint32_t i = 0; i < o.z.n_entries; i++) {
		if (i == k)
			cd_crc_off = cd + 16;
		cd += 46 + rd_le(buf + cd + 28, 2) + rd_le(buf + cd + 30, 2) + rd_le(buf + cd + 32, 2);
	}
	for (uint64_t i = 0; i < len; i++) {
		bool in_data = i >= e0->data_off && i < e0->data_off + 24;
		bool in_desc_crc = i >= e0->data_off + 28 && i < e0->data_off + 32;
		bool in_cd_crc = i >= cd_crc_off && i < cd_crc_off + 4;

		if (!in_data && !in_desc_crc && !in_cd_crc)
			ck_assert_msg(s.p[i] == buf[i], "byte %llu changed", (unsigned long long)i);
	}
	ck_assert_uint_eq(rd_le(s.p + e0->data_off + 28, 4), newcrc);
	ck_assert_uint_eq(rd_le(s.p + cd_crc_off, 4), newcrc);
	ck_assert_uint_ne(newcrc, e0->crc32);

	fixture(out, sizeof(out), "w-edit.pt");
	pf_test_spit(out, s.p, s.n);
	ck_assert_int_eq(pf_test_shell(PYTHON " '%s/check.py' '%s' '%s' w-edit", tmp_dir, path, out), 0);
	check_with_libtorch(out, s.p, s.n);
	free(s.p);
	free(edit);
	free(r);
	close_z(&o);
	free(buf);
}
END_TEST

/* data.pkl grows by `grow` bytes of no-ops (NONE, POP) after PROTO 2:
 * every later record moves, stays aligned, and torch loads the same values. */
static void grow_pickle(const char *name, unsigned grow, char *args, size_t args_size)
{
	char path[400], out[400], prefix_pkl[300];
	uint64_t len;
	uint8_t *buf, *pkl;
	pf_zw_record *r;
	mem_sink s;
	opened o;
	uint32_t k = UINT32_MAX;

	fixture(path, sizeof(path), name);
	buf = pf_test_slurp(path, &len);
	open_ok(&o, buf, len);
	r = records_of(&o.z, buf);
	snprintf(prefix_pkl, sizeof(prefix_pkl), "%s/data.pkl", o.z.prefix);
	for (uint32_t i = 0; i < o.z.n_entries; i++)
		if (strcmp(r[i].name, prefix_pkl) == 0)
			k = i;
	ck_assert_uint_ne(k, UINT32_MAX);
	ck_assert_uint_eq(r[k].data[0], 0x80);
	ck_assert_uint_eq(r[k].data[1], 2);
	ck_assert_uint_eq(grow % 2, 0);
	pkl = malloc(r[k].len + grow);
	memcpy(pkl, r[k].data, 2);
	for (unsigned i = 0; i < grow; i += 2)
		memcpy(pkl + 2 + i, "N0", 2);
	memcpy(pkl + 2 + grow, r[k].data + 2, r[k].len - 2);
	r[k].data = pkl;
	r[k].len += grow;
	write_ok(r, o.z.n_entries, 64, &s);
	check_output(r, o.z.n_entries, 64, &s);

	snprintf(out, sizeof(out), "%s/grown-%u-%s", tmp_dir, grow, name);
	pf_test_spit(out, s.p, s.n);
	append_check(args, args_size, path, out, "same");
	check_with_libtorch(out, s.p, s.n);
	free(s.p);
	free(pkl);
	free(r);
	close_z(&o);
	free(buf);
}

START_TEST(test_pickle_length_change)
{
	static const unsigned grows[] = {2, 62, 64, 74, 200};
	static char args[16384];

	args[0] = '\0';
	for (size_t f = 0; f < sizeof(FIXTURES) / sizeof(FIXTURES[0]); f++)
		for (size_t g = 0; g < sizeof(grows) / sizeof(grows[0]); g++)
			grow_pickle(FIXTURES[f], grows[g], args, sizeof(args));
	ck_assert_int_eq(pf_test_shell(PYTHON " '%s/check.py'%s", tmp_dir, args), 0);
}
END_TEST

/* Another alignment: every record on a 4096 boundary; still a zip torch and
 * zipfile read. */
START_TEST(test_other_alignment)
{
	static const uint32_t aligns[] = {1, 2, 4096, PF_ZW_MAX_ALIGNMENT};
	static char args[8192];
	char path[400], out[400];
	uint64_t len;
	uint8_t *buf;
	pf_zw_record *r;
	mem_sink s;
	opened o;

	fixture(path, sizeof(path), "odd.pt");
	buf = pf_test_slurp(path, &len);
	open_ok(&o, buf, len);
	r = records_of(&o.z, buf);
	args[0] = '\0';
	for (size_t a = 0; a < sizeof(aligns) / sizeof(aligns[0]); a++) {
		write_ok(r, o.z.n_entries, aligns[a], &s);
		check_output(r, o.z.n_entries, aligns[a], &s);
		snprintf(out, sizeof(out), "%s/align-%u.pt", tmp_dir, aligns[a]);
		pf_test_spit(out, s.p, s.n);
		append_check(args, sizeof(args), path, out, "same");
		free(s.p);
	}
	ck_assert_int_eq(pf_test_shell(PYTHON " '%s/check.py'%s", tmp_dir, args), 0);
	free(r);
	close_z(&o);
	free(buf);
}
END_TEST

/* ------------------------------------------------------------------ 4: zip64 */

/*
 * torch 1.13 writing {'a': torch.zeros(2**32, dtype=torch.uint8) with
 * a[0] = 1, 'b': torch.arange(5.)} to big.pt: its first 0x1C0 bytes (the
 * data.pkl record and data/0's local header) and everything after data/0's
 * 4 GiB of data (its descriptor, data/1 and version at offsets >= 4 GiB,
 * the central directory and the end records).  4294968395 bytes in all.
 */
static const uint8_t BIG_HEAD[448] = {
	0x50, 0x4b, 0x03, 0x04, 0x00, 0x00, 0x08, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
	0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0c, 0x00, 0x16, 0x00, 0x62, 0x69,
	0x67, 0x2f, 0x64, 0x61, 0x74, 0x61, 0x2e, 0x70, 0x6b, 0x6c, 0x46, 0x42, 0x12, 0x00, 0x5a, 0x5a,
	0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a,
	0x80, 0x02, 0x7d, 0x71, 0x00, 0x28, 0x58, 0x01, 0x00, 0x00, 0x00, 0x61, 0x71, 0x01, 0x63, 0x74,
	0x6f, 0x72, 0x63, 0x68, 0x2e, 0x5f, 0x75, 0x74, 0x69, 0x6c, 0x73, 0x0a, 0x5f, 0x72, 0x65, 0x62,
	0x75, 0x69, 0x6c, 0x64, 0x5f, 0x74, 0x65, 0x6e, 0x73, 0x6f, 0x72, 0x5f, 0x76, 0x32, 0x0a, 0x71,
	0x02, 0x28, 0x28, 0x58, 0x07, 0x00, 0x00, 0x00, 0x73, 0x74, 0x6f, 0x72, 0x61, 0x67, 0x65, 0x71,
	0x03, 0x63, 0x74, 0x6f, 0x72, 0x63, 0x68, 0x0a, 0x42, 0x79, 0x74, 0x65, 0x53, 0x74, 0x6f, 0x72,
	0x61, 0x67, 0x65, 0x0a, 0x71, 0x04, 0x58, 0x01, 0x00, 0x00, 0x00, 0x30, 0x71, 0x05, 0x58, 0x03,
	0x00, 0x00, 0x00, 0x63, 0x70, 0x75, 0x71, 0x06, 0x8a, 0x05, 0x00, 0x00, 0x00, 0x00, 0x01, 0x74,
	0x71, 0x07, 0x51, 0x4b, 0x00, 0x8a, 0x05, 0x00, 0x00, 0x00, 0x00, 0x01, 0x85, 0x71, 0x08, 0x4b,
	0x01, 0x85, 0x71, 0x09, 0x89, 0x63, 0x63, 0x6f, 0x6c, 0x6c, 0x65, 0x63, 0x74, 0x69, 0x6f, 0x6e,
	0x73, 0x0a, 0x4f, 0x72, 0x64, 0x65, 0x72, 0x65, 0x64, 0x44, 0x69, 0x63, 0x74, 0x0a, 0x71, 0x0a,
	0x29, 0x52, 0x71, 0x0b, 0x74, 0x71, 0x0c, 0x52, 0x71, 0x0d, 0x58, 0x01, 0x00, 0x00, 0x00, 0x62,
	0x71, 0x0e, 0x68, 0x02, 0x28, 0x28, 0x68, 0x03, 0x63, 0x74, 0x6f, 0x72, 0x63, 0x68, 0x0a, 0x46,
	0x6c, 0x6f, 0x61, 0x74, 0x53, 0x74, 0x6f, 0x72, 0x61, 0x67, 0x65, 0x0a, 0x71, 0x0f, 0x58, 0x01,
	0x00, 0x00, 0x00, 0x31, 0x71, 0x10, 0x68, 0x06, 0x4b, 0x05, 0x74, 0x71, 0x11, 0x51, 0x4b, 0x00,
	0x4b, 0x05, 0x85, 0x71, 0x12, 0x4b, 0x01, 0x85, 0x71, 0x13, 0x89, 0x68, 0x0a, 0x29, 0x52, 0x71,
	0x14, 0x74, 0x71, 0x15, 0x52, 0x71, 0x16, 0x75, 0x2e, 0x50, 0x4b, 0x07, 0x08, 0x73, 0x4f, 0xba,
	0x4b, 0xf9, 0x00, 0x00, 0x00, 0xf9, 0x00, 0x00, 0x00, 0x50, 0x4b, 0x03, 0x04, 0x00, 0x00, 0x08,
	0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
	0x00, 0x00, 0x00, 0x0a, 0x00, 0x4f, 0x00, 0x62, 0x69, 0x67, 0x2f, 0x64, 0x61, 0x74, 0x61, 0x2f,
	0x30, 0x01, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
	0x00, 0x00, 0x00, 0x00, 0x00, 0x46, 0x42, 0x37, 0x00, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a,
	0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a,
	0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a,
	0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a,
};
static const uint8_t BIG_TAIL[651] = {
	0x50, 0x4b, 0x07, 0x08, 0x1b, 0xdf, 0x05, 0xa5, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00,
	0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x50, 0x4b, 0x03, 0x04, 0x00, 0x00, 0x08, 0x08,
	0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
	0x00, 0x00, 0x0a, 0x00, 0x40, 0x00, 0x62, 0x69, 0x67, 0x2f, 0x64, 0x61, 0x74, 0x61, 0x2f, 0x31,
	0x01, 0x00, 0x08, 0x00, 0xd8, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x46, 0x42, 0x30, 0x00,
	0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a,
	0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a,
	0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a,
	0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x00, 0x40, 0x00, 0x00, 0x40, 0x40,
	0x00, 0x00, 0x80, 0x40, 0x50, 0x4b, 0x07, 0x08, 0x8c, 0xc4, 0xc9, 0x68, 0x14, 0x00, 0x00, 0x00,
	0x00, 0x00, 0x00, 0x00, 0x14, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x50, 0x4b, 0x03, 0x04,
	0x00, 0x00, 0x08, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
	0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0b, 0x00, 0x2b, 0x00, 0x62, 0x69, 0x67, 0x2f, 0x76, 0x65,
	0x72, 0x73, 0x69, 0x6f, 0x6e, 0x01, 0x00, 0x08, 0x00, 0x6c, 0x02, 0x00, 0x00, 0x01, 0x00, 0x00,
	0x00, 0x46, 0x42, 0x1b, 0x00, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a,
	0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a,
	0x33, 0x0a, 0x50, 0x4b, 0x07, 0x08, 0xd1, 0x9e, 0x67, 0x55, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00,
	0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x50, 0x4b, 0x01, 0x02, 0x00, 0x00,
	0x00, 0x00, 0x08, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x73, 0x4f, 0xba, 0x4b, 0xf9, 0x00,
	0x00, 0x00, 0xf9, 0x00, 0x00, 0x00, 0x0c, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
	0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x62, 0x69, 0x67, 0x2f, 0x64, 0x61, 0x74, 0x61,
	0x2e, 0x70, 0x6b, 0x6c, 0x50, 0x4b, 0x01, 0x02, 0x00, 0x00, 0x00, 0x00, 0x08, 0x08, 0x00, 0x00,
	0x00, 0x00, 0x00, 0x00, 0x1b, 0xdf, 0x05, 0xa5, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
	0x0a, 0x00, 0x14, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x49, 0x01,
	0x00, 0x00, 0x62, 0x69, 0x67, 0x2f, 0x64, 0x61, 0x74, 0x61, 0x2f, 0x30, 0x01, 0x00, 0x10, 0x00,
	0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00,
	0x50, 0x4b, 0x01, 0x02, 0x00, 0x00, 0x00, 0x00, 0x08, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
	0x8c, 0xc4, 0xc9, 0x68, 0x14, 0x00, 0x00, 0x00, 0x14, 0x00, 0x00, 0x00, 0x0a, 0x00, 0x0c, 0x00,
	0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0x62, 0x69,
	0x67, 0x2f, 0x64, 0x61, 0x74, 0x61, 0x2f, 0x31, 0x01, 0x00, 0x08, 0x00, 0xd8, 0x01, 0x00, 0x00,
	0x01, 0x00, 0x00, 0x00, 0x50, 0x4b, 0x01, 0x02, 0x00, 0x00, 0x00, 0x00, 0x08, 0x08, 0x00, 0x00,
	0x00, 0x00, 0x00, 0x00, 0xd1, 0x9e, 0x67, 0x55, 0x02, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00,
	0x0b, 0x00, 0x0c, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff,
	0xff, 0xff, 0x62, 0x69, 0x67, 0x2f, 0x76, 0x65, 0x72, 0x73, 0x69, 0x6f, 0x6e, 0x01, 0x00, 0x08,
	0x00, 0x6c, 0x02, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x50, 0x4b, 0x06, 0x06, 0x2c, 0x00, 0x00,
	0x00, 0x00, 0x00, 0x00, 0x00, 0x1e, 0x03, 0x2d, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
	0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
	0x00, 0x0f, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xda, 0x02, 0x00, 0x00, 0x01, 0x00, 0x00,
	0x00, 0x50, 0x4b, 0x06, 0x07, 0x00, 0x00, 0x00, 0x00, 0xe9, 0x03, 0x00, 0x00, 0x01, 0x00, 0x00,
	0x00, 0x01, 0x00, 0x00, 0x00, 0x50, 0x4b, 0x05, 0x06, 0x00, 0x00, 0x00, 0x00, 0x04, 0x00, 0x04,
	0x00, 0x0f, 0x01, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0x00, 0x00,
};

#define BIG_LEN 0x100000000ull
#define BIG_TOTAL 4294968395ull
#define BIG_CRC 0xa505df1bu

/* Keeps the bytes before and after one range (the big record's data). */
typedef struct skel_sink {
	uint64_t skip_from, skip_to; /* [from, to) is only counted */
	uint64_t pos;
	uint8_t head[1024], tail[1024];
	size_t head_n, tail_n;
} skel_sink;

static int skel_write(void *ctx, const void *buf, size_t n)
{
	skel_sink *s = ctx;
	const uint8_t *p = buf;

	for (size_t i = 0; i < n;) {
		uint64_t at = s->pos + i;

		if (at < s->skip_from) {
			ck_assert_uint_lt(s->head_n, sizeof(s->head));
			s->head[s->head_n++] = p[i++];
		} else if (at >= s->skip_to) {
			ck_assert_uint_lt(s->tail_n, sizeof(s->tail));
			s->tail[s->tail_n++] = p[i++];
		} else {
			uint64_t k = s->skip_to - at;
			i += k < n - i ? (size_t)k : n - i;
		}
	}
	s->pos += n;
	return 0;
}

/* The 4 GiB record's bytes: left as they are (the sink does not keep them). */
typedef struct big_src {
	uint64_t next;
	unsigned calls;
} big_src;

static int big_read(void *ctx, uint64_t off, void *buf, size_t n)
{
	big_src *s = ctx;

	(void)buf;
	ck_assert_uint_eq(off, s->next);
	ck_assert_uint_le(n, PF_ZW_CHUNK);
	s->next += n;
	s->calls++;
	return 0;
}

static void big_records(pf_zw_record r[4], big_src *src)
{
	memset(r, 0, 4 * sizeof(*r));
	r[0].name = "big/data.pkl";
	r[0].data = BIG_HEAD + 64;
	r[0].len = 249;
	r[1].name = "big/data/0";
	r[1].len = BIG_LEN;
	r[1].read = big_read;
	r[1].read_ctx = src;
	r[1].crc_given = true;
	r[1].crc32 = BIG_CRC;
	r[2].name = "big/data/1";
	r[2].data = BIG_TAIL + 0x80; /* torch.arange(5.) */
	r[2].len = 20;
	r[3].name = "big/version";
	r[3].data = (const uint8_t *)"3\n";
	r[3].len = 2;
}

START_TEST(test_zip64_like_torch)
{
	pf_zw_record r[4];
	pf_zw_place pl[4];
	pf_zw_layout l;
	big_src src = {0, 0};
	skel_sink *s = calloc(1, sizeof(*s));
	pf_error err;
	const uint8_t *h, *x;

	big_records(r, &src);
	pf_error_clear(&err);
	ck_assert_int_eq(pf_zip_plan(r, 4, 64, pl, &l, &err), 0);
	ck_assert_uint_eq(l.size, BIG_TOTAL);
	ck_assert(!pl[0].zip64 && pl[1].zip64 && pl[2].zip64 && pl[3].zip64);
	ck_assert_uint_eq(pl[1].header_off, 0x149);
	ck_assert_uint_eq(pl[1].data_off, 0x1C0);
	ck_assert_uint_eq(pl[2].header_off, 0x1C0 + BIG_LEN + 24);
	s->skip_from = pl[1].data_off;
	s->skip_to = pl[1].data_off + BIG_LEN;
	ck_assert_int_eq(pf_zip_write(r, 4, 64, skel_write, s, &l, &err), 0);
	ck_assert_uint_eq(s->pos, BIG_TOTAL);
	ck_assert_uint_eq(src.next, BIG_LEN);
	ck_assert_uint_eq(src.calls, BIG_LEN / PF_ZW_CHUNK);

	/* byte for byte what torch wrote */
	ck_assert_uint_eq(s->head_n, sizeof(BIG_HEAD));
	ck_assert_uint_eq(s->tail_n, sizeof(BIG_TAIL));
	ck_assert(memcmp(s->head, BIG_HEAD, sizeof(BIG_HEAD)) == 0);
	ck_assert(memcmp(s->tail, BIG_TAIL, sizeof(BIG_TAIL)) == 0);

	/* and the rules of formats.md §1.3/§1.4, spelled out: data/0 (size
	 * >= 4 GiB): zip64 extra (usize, csize 0) before "FB" ... */
	h = s->head + 0x149;
	ck_assert_uint_eq(rd_le(h + 28, 2), 4 + 16 + 4 + pl[1].pad);
	x = h + 30 + strlen(r[1].name);
	ck_assert_uint_eq(rd_le(x, 2), 1);
	ck_assert_uint_eq(rd_le(x + 2, 2), 16);
	ck_assert_uint_eq(rd_le(x + 4, 8), BIG_LEN);
	ck_assert_uint_eq(rd_le(x + 12, 8), 0);
	ck_assert(memcmp(x + 20, "FB", 2) == 0);
	/* ... a 24-byte descriptor ... */
	x = s->tail;
	ck_assert_uint_eq(rd_le(x, 4), 0x08074b50u);
	ck_assert_uint_eq(rd_le(x + 4, 4), BIG_CRC);
	ck_assert_uint_eq(rd_le(x + 8, 8), BIG_LEN);
	ck_assert_uint_eq(rd_le(x + 16, 8), BIG_LEN);
	ck_assert_uint_eq(rd_le(x + 24, 4), 0x04034b50u);
	/* ... data/1 (header at >= 4 GiB): zip64 extra with the offset only */
	x = s->tail + 24 + 30 + strlen(r[2].name);
	ck_assert_uint_eq(rd_le(x, 2), 1);
	ck_assert_uint_eq(rd_le(x + 2, 2), 8);
	ck_assert_uint_eq(rd_le(x + 4, 8), pl[2].header_off);
	ck_assert(memcmp(x + 12, "FB", 2) == 0);
	ck_assert_uint_eq(pl[2].data_off % 64, 0);
	/* its descriptor has 8-byte sizes too */
	x = s->tail + (pl[2].data_off + 20 - (pl[1].data_off + BIG_LEN));
	ck_assert_uint_eq(rd_le(x, 4), 0x08074b50u);
	ck_assert_uint_eq(rd_le(x + 8, 8), 20);
	ck_assert_uint_eq(rd_le(x + 16, 8), 20);
	/* classic EOCD: the CD offset does not fit */
	x = s->tail + s->tail_n - 22;
	ck_assert_uint_eq(rd_le(x, 4), 0x06054b50u);
	ck_assert_uint_eq(rd_le(x + 10, 2), 4);
	ck_assert_uint_eq(rd_le(x + 12, 4), l.cd_size);
	ck_assert_uint_eq(rd_le(x + 16, 4), 0xFFFFFFFFu);
	free(s);
}
END_TEST

/* The skeleton as a sparse file: pf_zip_open and Python's zipfile read it
 * (zipfile checks the CRC-32 of the records after the big one). */
START_TEST(test_zip64_readers_accept)
{
	pf_zw_record r[4];
	pf_zw_place pl[4];
	pf_zw_layout l;
	big_src src = {0, 0};
	skel_sink *s = calloc(1, sizeof(*s));
	pf_error err;
	char path[400];
	uint8_t *map;
	opened o;
	int fd;

	big_records(r, &src);
	pf_error_clear(&err);
	ck_assert_int_eq(pf_zip_plan(r, 4, 64, pl, &l, &err), 0);
	s->skip_from = pl[1].data_off;
	s->skip_to = pl[1].data_off + BIG_LEN;
	ck_assert_int_eq(pf_zip_write(r, 4, 64, skel_write, s, &l, &err), 0);

	fixture(path, sizeof(path), "big-sparse.pt");
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(ftruncate(fd, (off_t)l.size), 0);
	ck_assert_int_eq(pwrite(fd, s->head, s->head_n, 0), (ssize_t)s->head_n);
	ck_assert_int_eq(pwrite(fd, s->tail, s->tail_n, (off_t)s->skip_to), (ssize_t)s->tail_n);
	map = mmap(NULL, l.size, PROT_READ, MAP_SHARED, fd, 0);
	ck_assert(map != MAP_FAILED);
	open_ok(&o, map, l.size);
	ck_assert(o.z.zip64);
	ck_assert_uint_eq(o.z.n_entries, 4);
	for (int i = 0; i < 4; i++) {
		ck_assert_str_eq(o.z.entries[i].name, r[i].name);
		ck_assert_uint_eq(o.z.entries[i].usize, r[i].len);
		ck_assert_uint_eq(o.z.entries[i].header_off, pl[i].header_off);
		ck_assert_uint_eq(o.z.entries[i].data_off, pl[i].data_off);
	}
	ck_assert_uint_eq(o.z.entries[1].crc32, BIG_CRC);
	close_z(&o);
	munmap(map, l.size);
	close(fd);
	ck_assert_int_eq(pf_test_shell(PYTHON " '%s/check.py' - '%s' list64", tmp_dir, path), 0);
	unlink(path);
	free(s);
}
END_TEST

/* The zip64 decision at the 0xFFFFFFFF boundaries, from the plan alone. */
START_TEST(test_zip64_decisions)
{
	static const uint64_t lens[] = {0xFFFFFFFEull, 0xFFFFFFFFull, 5, 0};
	pf_zw_record r[4];
	pf_zw_place pl[4];
	pf_zw_layout l;
	pf_error err;
	big_src src = {0, 0};

	memset(r, 0, sizeof(r));
	for (int i = 0; i < 4; i++) {
		static const char *const names[] = {"p/a", "p/b", "p/c", "p/d"};
		r[i].name = names[i];
		r[i].len = lens[i];
		r[i].read = big_read;
		r[i].read_ctx = &src;
	}
	pf_error_clear(&err);
	ck_assert_int_eq(pf_zip_plan(r, 4, 64, pl, &l, &err), 0);
	for (int i = 0; i < 4; i++) {
		uint64_t cur = pl[i].header_off;
		bool bs = lens[i] >= 0xFFFFFFFFull, bo = cur >= 0xFFFFFFFFull;
		uint64_t start = cur + 30 + 3 + 4 + (bs || bo ? 4 : 0) + (bs ? 16 : 0) + (bo ? 8 : 0);
		uint64_t pad = (64 - start % 64) % 64;

		ck_assert_int_eq(pl[i].zip64, bs || bo);
		ck_assert_uint_eq(pl[i].pad, pad);
		ck_assert_uint_eq(pl[i].data_off, start + pad);
		ck_assert_uint_eq(pl[i].end_off,
				  pl[i].data_off + lens[i] + (lens[i] ? (bs || bo ? 24 : 16) : 0));
	}
	ck_assert(!pl[0].zip64);                 /* 0xFFFFFFFE bytes at 0 */
	ck_assert(pl[1].zip64);                  /* 0xFFFFFFFF bytes, after 4 GiB - 1 */
	ck_assert(pl[2].zip64 && pl[3].zip64);   /* small, but after 4 GiB */
	ck_assert_uint_eq(pl[3].end_off, pl[3].data_off); /* empty: no descriptor */
	ck_assert_uint_eq(l.cd_off, pl[3].end_off);
	ck_assert_uint_eq(pl[1].extra_len, 4 + 16 + 8 + 4 + pl[1].pad); /* size and offset */
	/* CD: 46 + name + zip64 extra (none, size and offset, offset, offset) */
	ck_assert_uint_eq(l.cd_size, 4 * (46 + 3) + 0 + 28 + 12 + 12);
	ck_assert_uint_eq(l.size, l.cd_off + l.cd_size + 56 + 20 + 22);
}
END_TEST

/* ------------------------------------------------------------------ errors */

static int fail_read(void *ctx, uint64_t off, void *buf, size_t n)
{
	(void)ctx;
	(void)buf;
	(void)n;
	return off >= PF_ZW_CHUNK ? -1 : 0;
}

START_TEST(test_errors)
{
	static const uint8_t bytes[100];
	pf_zw_record r[2];
	pf_zw_layout l;
	pf_error err;
	mem_sink s;
	char longname[70000];

	memset(r, 0, sizeof(r));
	r[0].name = "p/data.pkl";
	r[0].data = bytes;
	r[0].len = sizeof(bytes);
	r[1].name = "p/version";
	r[1].data = (const uint8_t *)"3\n";
	r[1].len = 2;

	static const uint32_t bad_align[] = {0, 3, 48, 65536};
	for (size_t i = 0; i < sizeof(bad_align) / sizeof(bad_align[0]); i++) {
		pf_error_clear(&err);
		ck_assert_int_eq(pf_zip_plan(r, 2, bad_align[i], NULL, &l, &err), -1);
		ck_assert_int_eq(err.code, PF_E_LIMIT);
	}
	pf_error_clear(&err);
	ck_assert_int_eq(pf_zip_plan(r, 0, 64, NULL, &l, &err), -1);
	ck_assert_int_eq(err.code, PF_E_LIMIT);

	r[1].name = "";
	pf_error_clear(&err);
	ck_assert_int_eq(pf_zip_plan(r, 2, 64, NULL, &l, &err), -1);
	ck_assert_int_eq(err.code, PF_E_LIMIT);
	ck_assert_uint_eq(err.offset, 1);
	memset(longname, 'n', sizeof(longname) - 1);
	longname[sizeof(longname) - 1] = '\0';
	r[1].name = longname;
	pf_error_clear(&err);
	ck_assert_int_eq(pf_zip_plan(r, 2, 64, NULL, &l, &err), -1);
	ck_assert_int_eq(err.code, PF_E_LIMIT);
	longname[0xFFFF] = '\0'; /* the longest name that fits */
	pf_error_clear(&err);
	ck_assert_int_eq(pf_zip_plan(r, 2, 64, NULL, &l, &err), 0);
	r[1].name = "p/version";

	r[1].data = NULL;
	pf_error_clear(&err);
	ck_assert_int_eq(pf_zip_plan(r, 2, 64, NULL, &l, &err), -1);
	ck_assert_int_eq(err.code, PF_E_FORMAT);
	r[1].len = 0; /* an empty record needs no source */
	pf_error_clear(&err);
	ck_assert_int_eq(pf_zip_plan(r, 2, 64, NULL, &l, &err), 0);
	r[1].data = (const uint8_t *)"3\n";
	r[1].len = 2;

	/* the sink fails part way: -1, PF_E_TRUNCATED at the output offset */
	pf_error_clear(&err);
	ck_assert_int_eq(pf_zip_plan(r, 2, 64, NULL, &l, &err), 0);
	for (size_t cut = 1; cut < l.size; cut += 7) {
		memset(&s, 0, sizeof(s));
		s.fail_after = cut;
		pf_error_clear(&err);
		ck_assert_int_eq(pf_zip_write(r, 2, 64, mem_write, &s, NULL, &err), -1);
		ck_assert_int_eq(err.code, PF_E_TRUNCATED);
		ck_assert_uint_le(err.offset, cut);
		ck_assert_uint_le(s.n, cut);
		free(s.p);
	}

	/* a read callback fails in its second chunk */
	r[0].data = NULL;
	r[0].read = fail_read;
	r[0].len = 3 * PF_ZW_CHUNK;
	memset(&s, 0, sizeof(s));
	pf_error_clear(&err);
	ck_assert_int_eq(pf_zip_write(r, 2, 64, mem_write, &s, NULL, &err), -1);
	ck_assert_int_eq(err.code, PF_E_TRUNCATED);
	ck_assert_uint_eq(err.offset, 64 + PF_ZW_CHUNK);
	ck_assert_ptr_nonnull(strstr(err.msg, "p/data.pkl"));
	free(s.p);
}
END_TEST

/* ------------------------------------------------------------------ main */

static Suite *zipwrite_suite(void)
{
	Suite *s = suite_create("zipwrite");
	TCase *torch = tcase_create("torch");
	TCase *z64 = tcase_create("zip64");
	TCase *bad = tcase_create("errors");

	tcase_set_timeout(torch, 280);
	tcase_add_loop_test(torch, test_identical_to_torch, 0,
			    (int)(sizeof(FIXTURES) / sizeof(FIXTURES[0])));
	tcase_add_test(torch, test_fixture_coverage);
	tcase_add_test(torch, test_same_length_edit);
	tcase_add_test(torch, test_pickle_length_change);
	tcase_add_test(torch, test_other_alignment);
	suite_add_tcase(s, torch);

	tcase_set_timeout(z64, 120);
	tcase_add_test(z64, test_zip64_like_torch);
	tcase_add_test(z64, test_zip64_readers_accept);
	tcase_add_test(z64, test_zip64_decisions);
	suite_add_tcase(s, z64);

	tcase_add_test(bad, test_errors);
	suite_add_tcase(s, bad);
	return s;
}

static const char GEN_PY[] =
	"import os, sys, torch\n"
	"d = sys.argv[1]\n"
	"torch.manual_seed(0)\n"
	"torch.save(torch.nn.Linear(3, 2).state_dict(), d + '/sd.pt')\n"
	"base = torch.arange(30, dtype=torch.float64)\n"
	"odd = {'u8': torch.arange(7, dtype=torch.uint8), 'f64': torch.randn(13, dtype=torch.float64),\n"
	"       'i16': torch.ones(3, 5, dtype=torch.int16), 'empty': torch.empty(0),\n"
	"       'half': torch.tensor([1.5], dtype=torch.float16), 'view': base[3:17:2], 'base': base,\n"
	"       'bool': torch.tensor([True, False, True]), 'i64': torch.arange(-5, 6),\n"
	"       'c64': torch.randn(3, dtype=torch.complex64), 'bf16': torch.randn(5).to(torch.bfloat16),\n"
	"       'i8': torch.arange(-3, 2, dtype=torch.int8), 'scalar': torch.tensor(3.25)}\n"
	"torch.save(odd, d + '/odd.pt')\n"
	"torch.save({'w': torch.arange(6.), 'b': torch.ones(2)}, d + '/w.pt')\n"
	"long = d + '/' + 'm' * 90 + '.pt'\n"
	"torch.save({'x': torch.arange(3, dtype=torch.int32)}, long)\n"
	"os.rename(long, d + '/long.pt')\n";

/* check.py (ORIG NEW MODE)...: for each triple, zipfile's testzip finds
 * nothing and torch.load gives the expected values (MODE same: those of
 * ORIG; w-edit: w.pt with w = 10..15; list64: the zip64 skeleton lists). */
static const char CHECK_PY[] =
	"import sys, zipfile, torch\n"
	"def same(x, y):\n"
	"    assert type(x) is type(y), (type(x), type(y))\n"
	"    if isinstance(x, torch.Tensor):\n"
	"        assert x.dtype == y.dtype and x.shape == y.shape and x.stride() == y.stride()\n"
	"        assert x.storage_offset() == y.storage_offset()\n"
	"        assert torch.equal(x, y), (x, y)\n"
	"    elif isinstance(x, dict):\n"
	"        assert list(x) == list(y)\n"
	"        for k in x:\n"
	"            same(x[k], y[k])\n"
	"    else:\n"
	"        assert x == y\n"
	"def st(t):\n"
	"    return t.untyped_storage() if hasattr(t, 'untyped_storage') else t.storage()\n"
	"def check(orig, new, mode):\n"
	"    if mode == 'list64':\n"
	"        z = zipfile.ZipFile(new)\n"
	"        got = [(i.filename, i.file_size) for i in z.infolist()]\n"
	"        assert got == [('big/data.pkl', 249), ('big/data/0', 2**32), ('big/data/1', 20),\n"
	"                       ('big/version', 2)], got\n"
	"        assert z.read('big/version') == b'3\\n'\n"
	"        assert len(z.read('big/data/1')) == 20\n"
	"        assert z.read('big/data.pkl')[:2] == b'\\x80\\x02'\n"
	"        return\n"
	"    with zipfile.ZipFile(new) as z:\n"
	"        bad = z.testzip()\n"
	"        assert bad is None, (new, bad)\n"
	"    a = torch.load(orig)\n"
	"    b = torch.load(new)\n"
	"    if mode == 'same':\n"
	"        same(a, b)\n"
	"        if 'view' in b:\n"
	"            assert st(b['view']).data_ptr() == st(b['base']).data_ptr()\n"
	"    elif mode == 'w-edit':\n"
	"        assert b['w'].tolist() == [10., 11., 12., 13., 14., 15.], b['w']\n"
	"        same(a['b'], b['b'])\n"
	"    else:\n"
	"        sys.exit('unknown mode ' + mode)\n"
	"args = sys.argv[1:]\n"
	"assert args and len(args) % 3 == 0\n"
	"for k in range(0, len(args), 3):\n"
	"    check(*args[k:k + 3])\n";

static int write_text(const char *name, const char *text)
{
	char path[400];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", tmp_dir, name);
	f = fopen(path, "w");
	if (!f || fputs(text, f) < 0 || fclose(f) != 0)
		return -1;
	return 0;
}

static int make_fixtures(void)
{
	char cmd[1000];

	if (write_text("gen.py", GEN_PY) || write_text("check.py", CHECK_PY))
		return -1;
	snprintf(cmd, sizeof(cmd), PYTHON " '%s/gen.py' '%s'", tmp_dir, tmp_dir);
	return system(cmd) == 0 ? 0 : -1;
}

static void find_helper(void)
{
	const char *build = getenv("PF_BUILD");

	snprintf(helper, sizeof(helper), "%s/tests/torch-zip-check", build ? build : ".");
	if (access(helper, X_OK) != 0) {
		fprintf(stderr, "test_zipwrite: %s not built (no libtorch-dev or no C++ compiler): "
				"files are checked with zipfile and torch.load only\n", helper);
		helper[0] = '\0';
	}
}

int main(void)
{
	SRunner *sr;
	int failed;
	char cmd[400];

	snprintf(tmp_dir, sizeof(tmp_dir), "/tmp/pf_test_zipwrite_XXXXXX");
	if (!mkdtemp(tmp_dir) || make_fixtures() != 0) {
		fprintf(stderr, "cannot create the torch fixtures in %s\n", tmp_dir);
		return EXIT_FAILURE;
	}
	find_helper();
	sr = srunner_create(zipwrite_suite());
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmp_dir);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", tmp_dir);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
