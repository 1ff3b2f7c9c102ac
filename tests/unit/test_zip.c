/*
 * test_zip.c - unit tests of codec/zip.c.
 *
 * Oracles: Python's zipfile (run at test time on the real corpus and on
 * archives torch writes at test time), and zips built here byte by byte
 * (tb_* below) so that each malformed case differs from a valid baseline
 * in exactly one respect.  Every malformed test first checks that its
 * baseline opens, so a failure to open proves the check, not a builder bug.
 */
#include <check.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#include "testutil.h"
#include "zip.h"

#define PYTHON "/usr/bin/python3"

static char tmp_dir[256];     /* fixtures made by torch at startup */
static char shared_dir[1024]; /* $PF_SHARED */

/* ------------------------------------------------------------------ files, shell */




static void real_path(char *out, size_t n, const char *name)
{
	snprintf(out, n, "%s/corpus/real/%s", shared_dir, name);
}

/* ------------------------------------------------------------------ open helpers */

/* Open, check the invariants of a failure (message set, tables freed),
 * close; returns the error code (PF_OK when it opened). */
static pf_code open_code(const uint8_t *buf, uint64_t len, uint64_t origin, const pf_limits *lim,
			 pf_error *err)
{
	pf_arena arena;
	pf_zip z;
	int rc;

	pf_arena_init(&arena);
	pf_error_clear(err);
	rc = pf_zip_open(&z, buf, len, origin, lim, &arena, err);
	if (rc != 0) {
		ck_assert_int_ne(err->code, PF_OK);
		ck_assert_msg(err->msg[0] != '\0', "error without a message");
		ck_assert_ptr_null(z.entries);
		ck_assert_ptr_null(z.sorted);
	} else {
		ck_assert_int_eq(err->code, PF_OK);
		pf_zip_free(&z);
	}
	pf_arena_free(&arena);
	return rc ? err->code : PF_OK;
}

#define ASSERT_CODE(got, want, err)                                                        \
	ck_assert_msg((got) == (want), "expected %s, got %s: %s", pf_code_name(want),      \
		      pf_code_name(got), (err).msg)

/* ------------------------------------------------------------------ zip builder */

typedef struct tb_buf {
	uint8_t *p;
	size_t n, cap;
} tb_buf;

static void tb_put(tb_buf *b, const void *src, size_t n)
{
	if (b->n + n > b->cap) {
		b->cap = (b->n + n) * 2 + 256;
		b->p = realloc(b->p, b->cap);
		ck_assert_ptr_nonnull(b->p);
	}
	if (n)
		memcpy(b->p + b->n, src, n);
	b->n += n;
}

/* v as n little-endian bytes; n may exceed 8 (zero fill). */
static void tb_le(tb_buf *b, uint64_t v, unsigned n)
{
	uint8_t tmp[16];
	ck_assert_uint_le(n, sizeof(tmp));
	for (unsigned i = 0; i < n; i++)
		tmp[i] = i < 8 ? (uint8_t)(v >> (8 * i)) : 0;
	tb_put(b, tmp, n);
}

/* One record; zero-initialised fields mean "what a torch writer does". */
typedef struct tb_entry {
	const char *name;
	size_t name_len;        /* 0: strlen(name) (for names holding NUL) */
	const char *local_name; /* NULL: same as name */
	uint16_t method;
	uint16_t flags_or;      /* added to torch's 0x0808 */
	const uint8_t *data;    /* the record bytes as they are stored */
	size_t data_len;
	bool crc_set, usize_set, csize_set, off_set, local_method_set;
	uint32_t crc;           /* default: crc32 of data (right for stored) */
	uint64_t usize, csize;  /* default: data_len */
	uint64_t off;           /* central header offset; default: where it was written */
	uint16_t local_method;
	bool zip64;             /* sizes and offset as sentinels + zip64 extra */
	uint32_t local_crc;     /* written in the local header (torch: 0) */
	uint64_t local_csize;   /* likewise, low 32 bits */
	uint16_t disk;          /* central "disk number start" */
	uint16_t local_flags_or; /* added to the local flags only */
	bool dup_zip64_extra;   /* the zip64 extra field twice */
	bool omit_zip64_extra;  /* ... but without the extra field */
	uint64_t header_off, data_off; /* out: where the builder put them */
} tb_entry;

typedef struct tb_opts {
	bool no_zip64;             /* no zip64 EOCD record and locator */
	bool classic_sentinels;    /* 0xFFFF / 0xFFFFFFFF in the classic EOCD */
	int64_t classic_count_delta, z64_count_delta;
	int64_t cd_off_delta;      /* added to the cd offset in both end records */
	int64_t z64_size_delta;    /* added to the zip64 end record's size field */
	size_t junk_before;        /* bytes before the first local header */
	const char *comment;
} tb_opts;

static size_t tb_name_len(const tb_entry *e)
{
	return e->name_len ? e->name_len : strlen(e->name);
}

static void tb_local(tb_buf *b, tb_entry *e)
{
	const char *lname = e->local_name ? e->local_name : e->name;
	size_t lnlen = e->local_name ? strlen(e->local_name) : tb_name_len(e);
	size_t start = b->n + 30 + lnlen + 4, pad = (64 - start % 64) % 64;

	e->header_off = b->n;
	tb_le(b, 0x04034b50u, 4);
	tb_le(b, 0, 2);
	tb_le(b, 0x0808u | e->flags_or | e->local_flags_or, 2);
	tb_le(b, e->local_method_set ? e->local_method : e->method, 2);
	tb_le(b, 0, 4);  /* time, date */
	tb_le(b, e->local_crc, 4); /* torch: 0, the values are in the data descriptor */
	tb_le(b, e->local_csize, 4);
	tb_le(b, 0, 4);
	tb_le(b, lnlen, 2);
	tb_le(b, 4 + pad, 2);
	tb_put(b, lname, lnlen);
	tb_put(b, "FB", 2);
	tb_le(b, pad, 2);
	for (size_t i = 0; i < pad; i++)
		tb_put(b, "Z", 1);
	e->data_off = b->n;
	tb_put(b, e->data, e->data_len);
	tb_le(b, 0x08074b50u, 4);
	tb_le(b, e->crc, 4);
	tb_le(b, (uint32_t)e->csize, 4);
	tb_le(b, (uint32_t)e->usize, 4);
}

static void tb_central(tb_buf *b, const tb_entry *e)
{
	bool z64 = e->zip64;
	uint64_t off = e->off_set ? e->off : e->header_off;
	size_t extra = z64 && !e->omit_zip64_extra ? (4 + 24) * (e->dup_zip64_extra ? 2 : 1) : 0;

	tb_le(b, 0x02014b50u, 4);
	tb_le(b, 0, 4); /* made by, needed */
	tb_le(b, 0x0808u | e->flags_or, 2);
	tb_le(b, e->method, 2);
	tb_le(b, 0, 4);
	tb_le(b, e->crc, 4);
	tb_le(b, z64 ? 0xFFFFFFFFu : e->csize, 4);
	tb_le(b, z64 ? 0xFFFFFFFFu : e->usize, 4);
	tb_le(b, tb_name_len(e), 2);
	tb_le(b, extra, 2);
	tb_le(b, 0, 2); /* comment */
	tb_le(b, e->disk, 2);
	tb_le(b, 0, 2);
	tb_le(b, 0, 4);
	tb_le(b, z64 ? 0xFFFFFFFFu : off, 4);
	tb_put(b, e->name, tb_name_len(e));
	for (size_t done = 0; done < extra; done += 4 + 24) {
		tb_le(b, 1, 2);
		tb_le(b, 24, 2);
		tb_le(b, e->usize, 8);
		tb_le(b, e->csize, 8);
		tb_le(b, off, 8);
	}
}

static void tb_end(tb_buf *b, size_t n, uint64_t cd_off, uint64_t cd_size, const tb_opts *o)
{
	uint64_t z64_off = b->n;
	const char *comment = o->comment ? o->comment : "";

	cd_off += (uint64_t)o->cd_off_delta;
	if (!o->no_zip64) {
		tb_le(b, 0x06064b50u, 4);
		tb_le(b, 44 + (uint64_t)o->z64_size_delta, 8);
		tb_le(b, 0x031E, 2);
		tb_le(b, 45, 2);
		tb_le(b, 0, 8); /* disks */
		tb_le(b, n + (uint64_t)o->z64_count_delta, 8);
		tb_le(b, n + (uint64_t)o->z64_count_delta, 8);
		tb_le(b, cd_size, 8);
		tb_le(b, cd_off, 8);
		tb_le(b, 0x07064b50u, 4);
		tb_le(b, 0, 4);
		tb_le(b, z64_off, 8);
		tb_le(b, 1, 4);
	}
	tb_le(b, 0x06054b50u, 4);
	tb_le(b, 0, 4);
	for (int i = 0; i < 2; i++) /* 0xFFFF entries or more only fit in zip64 */
		tb_le(b, o->classic_sentinels || n >= 0xFFFF ? 0xFFFF : n + (uint64_t)o->classic_count_delta, 2);
	tb_le(b, o->classic_sentinels ? 0xFFFFFFFFu : cd_size, 4);
	tb_le(b, o->classic_sentinels ? 0xFFFFFFFFu : cd_off, 4);
	tb_le(b, strlen(comment), 2);
	tb_put(b, comment, strlen(comment));
}

static uint8_t *tb_build(tb_entry *e, size_t n, const tb_opts *opts, size_t *len)
{
	static const tb_opts none;
	const tb_opts *o = opts ? opts : &none;
	tb_buf b = {NULL, 0, 0};
	uint64_t cd_off;

	for (size_t i = 0; i < o->junk_before; i++)
		tb_put(&b, "J", 1);
	for (size_t i = 0; i < n; i++) {
		if (!e[i].crc_set)
			e[i].crc = (uint32_t)crc32(0, e[i].data, (uInt)e[i].data_len);
		if (!e[i].usize_set)
			e[i].usize = e[i].data_len;
		if (!e[i].csize_set)
			e[i].csize = e[i].data_len;
		tb_local(&b, &e[i]);
	}
	cd_off = b.n;
	for (size_t i = 0; i < n; i++)
		tb_central(&b, &e[i]);
	tb_end(&b, n, cd_off, b.n - cd_off, o);
	*len = b.n;
	return b.p;
}

/* Raw deflate (what zip method 8 stores). */
static uint8_t *raw_deflate(const uint8_t *src, size_t n, size_t *out_len)
{
	z_stream zs;
	uLong bound;
	uint8_t *out;

	memset(&zs, 0, sizeof(zs));
	ck_assert_int_eq(deflateInit2(&zs, 9, Z_DEFLATED, -MAX_WBITS, 8, Z_DEFAULT_STRATEGY), Z_OK);
	bound = deflateBound(&zs, (uLong)n);
	out = malloc(bound);
	ck_assert_ptr_nonnull(out);
	zs.next_in = (Bytef *)(uintptr_t)src;
	zs.avail_in = (uInt)n;
	zs.next_out = out;
	zs.avail_out = (uInt)bound;
	ck_assert_int_eq(deflate(&zs, Z_FINISH), Z_STREAM_END);
	*out_len = zs.total_out;
	deflateEnd(&zs);
	return out;
}

/* A deflated entry holding `plain`; the caller frees e->data. */
static void tb_deflated(tb_entry *e, const char *name, const uint8_t *plain, size_t n)
{
	memset(e, 0, sizeof(*e));
	e->name = name;
	e->method = 8;
	e->data = raw_deflate(plain, n, &e->data_len);
	e->usize = n;
	e->usize_set = true;
	e->crc = (uint32_t)crc32(0, plain, (uInt)n);
	e->crc_set = true;
}

static const uint8_t PICKLE[] = "\x80\x02}q\x00.";
static const uint8_t STORAGE[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};

/* The baseline: what torch.save writes for a one-tensor dict. */
static void base_entries(tb_entry e[3])
{
	memset(e, 0, 3 * sizeof(*e));
	e[0] = (tb_entry){.name = "archive/data.pkl", .data = PICKLE, .data_len = sizeof(PICKLE) - 1};
	e[1] = (tb_entry){.name = "archive/data/0", .data = STORAGE, .data_len = sizeof(STORAGE)};
	e[2] = (tb_entry){.name = "archive/version", .data = (const uint8_t *)"3\n", .data_len = 2};
}

/* Build entries and return the open's error code. */
static pf_code build_open(tb_entry *e, size_t n, const tb_opts *o, const pf_limits *lim, pf_error *err)
{
	size_t len;
	uint8_t *zip = tb_build(e, n, o, &len);
	pf_limits def = pf_limits_default();
	pf_code code = open_code(zip, len, 0, lim ? lim : &def, err);
	free(zip);
	return code;
}

static void expect_build(tb_entry *e, size_t n, const tb_opts *o, pf_code want)
{
	pf_error err;
	pf_code got = build_open(e, n, o, NULL, &err);
	ASSERT_CODE(got, want, err);
}

/* ... and the message names the reason (so that the check under test, not
 * a later one, refused it). */
static void expect_build_msg(tb_entry *e, size_t n, const tb_opts *o, pf_code want, const char *why)
{
	pf_error err;
	pf_code got = build_open(e, n, o, NULL, &err);
	ASSERT_CODE(got, want, err);
	ck_assert_msg(strstr(err.msg, why) != NULL, "message '%s' lacks '%s'", err.msg, why);
}

/* ------------------------------------------------------------------ python oracle */

static const char LIST_PY[] =
	"import sys, zipfile, struct, os\n"
	"zpath, out, start = sys.argv[1], sys.argv[2], int(sys.argv[3])\n"
	"raw = open(zpath, 'rb').read()\n"
	"z = zipfile.ZipFile(zpath)\n"
	"assert z.testzip() is None\n"
	"with open(os.path.join(out, 'listing.txt'), 'w', encoding='utf-8') as L:\n"
	"    for i, info in enumerate(z.infolist()):\n"
	"        h = info.header_offset\n"
	"        nl, el = struct.unpack('<HH', raw[h + 26:h + 30])\n"
	"        L.write('%d %d %d %d %d %d %s\\n' % (info.compress_type, info.compress_size,\n"
	"                info.file_size, info.CRC, h - start, h + 30 + nl + el - start, info.filename))\n"
	"        with open(os.path.join(out, '%d.bin' % i), 'wb') as f:\n"
	"            f.write(z.read(info))\n";

typedef struct expected {
	unsigned method;
	unsigned long long csize, usize, crc, header_off, data_off;
	char name[1024];
} expected;

/* Run zipfile on path; returns the entries it lists (and writes each
 * entry's bytes to <out>/<i>.bin).  `start` is subtracted from offsets. */
static expected *python_listing(const char *path, const char *out, uint64_t start, size_t *n)
{
	char list[1200], line[2048];
	expected *ex = NULL;
	FILE *f;

	ck_assert_int_eq(pf_test_shell("rm -rf '%s' && mkdir -p '%s'", out, out), 0);
	ck_assert_int_eq(pf_test_shell(PYTHON " '%s/list.py' '%s' '%s' %llu", tmp_dir, path, out,
			       (unsigned long long)start), 0);
	snprintf(list, sizeof(list), "%s/listing.txt", out);
	f = fopen(list, "r");
	ck_assert_ptr_nonnull(f);
	*n = 0;
	while (fgets(line, sizeof(line), f)) {
		expected *x;
		int used = 0;
		ex = realloc(ex, (*n + 1) * sizeof(*ex));
		ck_assert_ptr_nonnull(ex);
		x = &ex[*n];
		ck_assert_int_eq(sscanf(line, "%u %llu %llu %llu %llu %llu %n", &x->method, &x->csize,
					&x->usize, &x->crc, &x->header_off, &x->data_off, &used),
				 6);
		line[strcspn(line, "\n")] = '\0';
		snprintf(x->name, sizeof(x->name), "%s", line + used);
		(*n)++;
	}
	fclose(f);
	ck_assert_uint_gt(*n, 0);
	return ex;
}

/* Compare our reading of buf with zipfile's reading of path: names,
 * methods, sizes, CRCs, offsets and every entry's bytes.  Returns the
 * number of deflated entries.  `start` is where buf begins in the file. */
static unsigned compare_with_python(const char *path, const uint8_t *buf, uint64_t len,
				    uint64_t start, const char *tag)
{
	char out[600], bin[700], prefix[1024];
	size_t n;
	expected *ex;
	pf_arena arena;
	pf_zip z;
	pf_error err;
	pf_limits lim = pf_limits_default();
	unsigned deflated = 0;

	snprintf(out, sizeof(out), "%s/py_%s", tmp_dir, tag);
	ex = python_listing(path, out, start, &n);
	pf_arena_init(&arena);
	pf_error_clear(&err);
	ck_assert_msg(pf_zip_open(&z, buf, len, start, &lim, &arena, &err) == 0, "%s: %s", tag, err.msg);
	ck_assert_uint_eq(z.n_entries, n);
	snprintf(prefix, sizeof(prefix), "%s", ex[0].name);
	ck_assert_ptr_nonnull(strchr(prefix, '/'));
	*strchr(prefix, '/') = '\0';
	ck_assert_str_eq(z.prefix, prefix);
	for (size_t i = 0; i < n; i++) {
		const pf_zip_entry *e = &z.entries[i];
		const expected *x = &ex[i];
		const uint8_t *data;
		uint64_t data_len, want_len;
		bool decoded;
		uint8_t *want;

		ck_assert_str_eq(e->name, x->name);
		ck_assert_uint_eq(e->name_len, strlen(x->name));
		ck_assert_uint_eq(e->method, x->method);
		ck_assert_uint_eq(e->csize, x->csize);
		ck_assert_uint_eq(e->usize, x->usize);
		ck_assert_uint_eq(e->crc32, x->crc);
		ck_assert_uint_eq(e->header_off, x->header_off);
		ck_assert_uint_eq(e->data_off, x->data_off);
		/* torch aligns every stored record to 64 bytes (formats.md 1.3) */
		if (e->method == 0)
			ck_assert_msg(e->data_off % 64 == 0, "%s: %s at %llu is not 64-aligned", tag, e->name,
				      (unsigned long long)e->data_off);
		ck_assert_ptr_eq(pf_zip_find(&z, x->name), e);
		ck_assert_ptr_eq(pf_zip_find_rel(&z, x->name + strlen(prefix) + 1), e);

		ck_assert_msg(pf_zip_data(e, buf, len, start, &lim, &arena, &data, &data_len, &decoded, &err) == 0,
			      "%s: %s", e->name, err.msg);
		ck_assert(decoded == (e->method == 8));
		if (!decoded)
			ck_assert_ptr_eq(data, buf + e->data_off); /* stored: no copy */
		deflated += decoded;
		snprintf(bin, sizeof(bin), "%s/%zu.bin", out, i);
		want = pf_test_slurp(bin, &want_len);
		ck_assert_uint_eq(data_len, want_len);
		ck_assert(memcmp(data, want, want_len) == 0);
		free(want);
	}
	ck_assert_ptr_null(pf_zip_find(&z, "no/such/entry"));
	ck_assert_ptr_null(pf_zip_find_rel(&z, "no-such-entry"));
	pf_zip_free(&z);
	pf_arena_free(&arena);
	free(ex);
	return deflated;
}

static unsigned compare_file(const char *path, const char *tag)
{
	uint64_t len;
	uint8_t *buf = pf_test_slurp(path, &len);
	unsigned deflated = compare_with_python(path, buf, len, 0, tag);
	free(buf);
	return deflated;
}

/* ------------------------------------------------------------------ tests: real files */

START_TEST(test_real_zips_match_zipfile)
{
	static const char *names[] = {"zip_cuda_mnist_cnn.pt", "sbi_minisbibm_theta_o_1.pt",
				      "sbi_npse_zip_versiononly.pkl", "sbi_torchsave_posterior_zip.pt"};
	char path[1200];

	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		real_path(path, sizeof(path), names[i]);
		ck_assert_uint_eq(compare_file(path, names[i]), 0);
	}
}
END_TEST

START_TEST(test_real_torchscript_inflates)
{
	char path[1200];
	real_path(path, sizeof(path), "ts_scripted_adder_tiny.pt");
	/* 3 code files + 3 debug pickles are deflated (zipfile says so too) */
	ck_assert_uint_eq(compare_file(path, "ts_real"), 6);
}
END_TEST

START_TEST(test_generated_torch_zips)
{
	char path[400];
	snprintf(path, sizeof(path), "%s/small.pt", tmp_dir);
	ck_assert_uint_eq(compare_file(path, "small"), 0);
	snprintf(path, sizeof(path), "%s/ts.pt", tmp_dir);
	ck_assert_uint_gt(compare_file(path, "ts_gen"), 0);
}
END_TEST

/* A torch.save zip embedded in a plain pickle: the file itself is not a
 * zip (the EOCD is not at its end), the slice is, with absolute offsets. */
START_TEST(test_embedded_zip_slice)
{
	char path[1200], out[600];
	uint64_t len, start, end;
	uint8_t *buf;
	size_t n;
	expected *ex;
	pf_error err;
	pf_limits lim = pf_limits_default();
	const uint8_t *eocd = NULL;

	real_path(path, sizeof(path), "pkl_cuda_skorch_2022_p4.pkl");
	buf = pf_test_slurp(path, &len);
	ASSERT_CODE(open_code(buf, len, 0, &lim, &err), PF_E_ZIP, err);

	/* zipfile says where the zip starts; its EOCD (no comment) ends it */
	snprintf(out, sizeof(out), "%s/py_skorch_probe", tmp_dir);
	ex = python_listing(path, out, 0, &n);
	for (uint64_t p = len - 22 + 1; p-- > 0;)
		if (memcmp(buf + p, "PK\5\6", 4) == 0) {
			eocd = buf + p;
			break;
		}
	ck_assert_ptr_nonnull(eocd);
	start = ex[0].header_off;
	end = (uint64_t)(eocd - buf) + 22;
	ck_assert_uint_lt(end, len);
	ck_assert_uint_eq(compare_with_python(path, buf + start, end - start, start, "skorch"), 0);
	free(ex);
	free(buf);
}
END_TEST

/* ------------------------------------------------------------------ tests: truncation, bit flips */

static void all_prefixes_fail(const char *path)
{
	uint64_t len;
	uint8_t *buf = pf_test_slurp(path, &len);
	pf_limits lim = pf_limits_default();
	pf_error err;

	ASSERT_CODE(open_code(buf, len, 0, &lim, &err), PF_OK, err);
	for (uint64_t n = 0; n < len; n++) {
		/* a fresh copy of exactly n bytes, so ASan sees any read past it */
		uint8_t *cut = malloc(n ? n : 1);
		pf_code code;
		ck_assert_ptr_nonnull(cut);
		memcpy(cut, buf, n);
		code = open_code(cut, n, 0, &lim, &err);
		ck_assert_msg(code == PF_E_ZIP || code == PF_E_TRUNCATED, "%s cut at %llu: %s (%s)", path,
			      (unsigned long long)n, pf_code_name(code), err.msg);
		free(cut);
	}
	free(buf);
}

START_TEST(test_every_truncation_fails)
{
	char path[1200];
	snprintf(path, sizeof(path), "%s/small.pt", tmp_dir);
	all_prefixes_fail(path);
	snprintf(path, sizeof(path), "%s/ts.pt", tmp_dir);
	all_prefixes_fail(path);
	real_path(path, sizeof(path), "ts_scripted_adder_tiny.pt");
	all_prefixes_fail(path);
}
END_TEST

/* Every single-bit flip of a small TorchScript zip (stored and deflated
 * records): no crash, and whatever opens also reads or refuses each record
 * cleanly. */
START_TEST(test_bit_flips)
{
	char path[400];
	uint64_t len;
	uint8_t *buf;
	pf_limits lim = pf_limits_default();
	unsigned opened = 0, refused = 0, bad_data = 0;

	snprintf(path, sizeof(path), "%s/ts.pt", tmp_dir);
	buf = pf_test_slurp(path, &len);
	for (uint64_t i = 0; i < len; i++)
		for (int bit = 0; bit < 8; bit++) {
			pf_arena arena;
			pf_zip z;
			pf_error err;
			buf[i] ^= (uint8_t)(1u << bit);
			pf_arena_init(&arena);
			pf_error_clear(&err);
			if (pf_zip_open(&z, buf, len, 0, &lim, &arena, &err) == 0) {
				opened++;
				for (uint32_t k = 0; k < z.n_entries; k++) {
					const uint8_t *d;
					uint64_t dl;
					bool dec;
					pf_error e2;
					pf_error_clear(&e2);
					if (pf_zip_data(&z.entries[k], buf, len, 0, &lim, &arena, &d, &dl, &dec, &e2) == 0) {
						ck_assert_uint_eq(dl, z.entries[k].usize);
					} else {
						ck_assert_int_ne(e2.code, PF_OK);
						bad_data++;
					}
				}
				pf_zip_free(&z);
			} else {
				refused++;
				ck_assert_int_ne(err.code, PF_OK);
			}
			pf_arena_free(&arena);
			buf[i] ^= (uint8_t)(1u << bit);
		}
	/* flips in stored bytes keep the zip valid, flips in signatures do not,
	 * flips in deflated bytes are caught by inflate or the CRC */
	ck_assert_uint_gt(opened, 0);
	ck_assert_uint_gt(refused, 0);
	ck_assert_uint_gt(bad_data, 0);
	free(buf);
}
END_TEST

START_TEST(test_not_a_zip)
{
	pf_limits lim = pf_limits_default();
	pf_error err;
	uint8_t junk[300];

	ASSERT_CODE(open_code(NULL, 0, 0, &lim, &err), PF_E_ZIP, err);
	memset(junk, 'x', sizeof(junk));
	ASSERT_CODE(open_code(junk, 21, 0, &lim, &err), PF_E_ZIP, err);
	ASSERT_CODE(open_code(junk, sizeof(junk), 0, &lim, &err), PF_E_ZIP, err);
	/* a lone EOCD: a zip without entries has no prefix for torch */
	memset(junk, 0, 22);
	memcpy(junk, "PK\5\6", 4);
	ASSERT_CODE(open_code(junk, 22, 0, &lim, &err), PF_E_ZIP, err);
}
END_TEST

/* ------------------------------------------------------------------ tests: builder baseline */

START_TEST(test_builder_baseline)
{
	tb_entry e[3];
	size_t len;
	uint8_t *zip;
	char path[400];
	pf_arena arena;
	pf_zip z;
	pf_error err;
	pf_limits lim = pf_limits_default();
	tb_opts comment = {.comment = "a comment"}, classic = {.no_zip64 = true};

	base_entries(e);
	zip = tb_build(e, 3, NULL, &len);
	/* zipfile agrees with us on the builder's output */
	snprintf(path, sizeof(path), "%s/base.zip", tmp_dir);
	pf_test_spit(path, zip, len);
	ck_assert_uint_eq(compare_with_python(path, zip, len, 0, "base"), 0);

	pf_arena_init(&arena);
	pf_error_clear(&err);
	ck_assert_int_eq(pf_zip_open(&z, zip, len, 0, &lim, &arena, &err), 0);
	ck_assert(z.zip64);
	ck_assert_str_eq(z.prefix, "archive");
	ck_assert_uint_eq(z.eocd_off, len - 22);
	ck_assert_uint_eq(z.entries[1].data_off, e[1].data_off);
	ck_assert_ptr_eq(pf_zip_find_rel(&z, "data/0"), &z.entries[1]);
	ck_assert_ptr_null(pf_zip_find_rel(&z, "data"));
	ck_assert_ptr_null(pf_zip_find(&z, "archive"));
	ck_assert_ptr_null(pf_zip_find(&z, "archive/data/0/"));
	ck_assert_ptr_null(pf_zip_find(&z, ""));
	{
		/* an entry used with a buffer that does not hold its record */
		const uint8_t *d;
		uint64_t dl;
		bool dec;
		pf_error_clear(&err);
		ck_assert_int_eq(pf_zip_data(&z.entries[1], zip, z.entries[1].data_off + 15, 0, &lim, &arena,
					     &d, &dl, &dec, &err), -1);
		ASSERT_CODE(err.code, PF_E_ZIP, err);
		ck_assert_ptr_null(d);
		pf_error_clear(&err);
		ck_assert_int_eq(pf_zip_data(&z.entries[1], zip, z.entries[1].data_off + 16, 0, &lim, &arena,
					     &d, &dl, &dec, &err), 0);
		ck_assert_ptr_eq(d, zip + z.entries[1].data_off);
		ck_assert_uint_eq(dl, 16);
		ck_assert(memcmp(d, STORAGE, 16) == 0);
	}
	pf_zip_free(&z);
	pf_arena_free(&arena);
	free(zip);

	/* classic-only (no zip64 records) and a trailing comment are fine too */
	base_entries(e);
	expect_build(e, 3, &classic, PF_OK);
	base_entries(e);
	expect_build(e, 3, &comment, PF_OK);
}
END_TEST

START_TEST(test_comment_length_must_match)
{
	tb_entry e[3];
	size_t len;
	uint8_t *zip, *longer;
	pf_limits lim = pf_limits_default();
	pf_error err;
	tb_opts o = {.comment = "abc"};

	base_entries(e);
	zip = tb_build(e, 3, &o, &len);
	ASSERT_CODE(open_code(zip, len, 0, &lim, &err), PF_OK, err);
	/* a byte after the declared comment: no EOCD whose comment reaches the end */
	longer = malloc(len + 1);
	ck_assert_ptr_nonnull(longer);
	memcpy(longer, zip, len);
	longer[len] = 'x';
	ASSERT_CODE(open_code(longer, len + 1, 0, &lim, &err), PF_E_ZIP, err);
	/* a comment shorter than declared */
	ASSERT_CODE(open_code(zip, len - 1, 0, &lim, &err), PF_E_ZIP, err);
	free(longer);
	free(zip);
}
END_TEST

/* Corrupt one byte of a built zip at `at` (from the end when negative). */
static pf_code corrupt_open(const tb_opts *o, long at, uint8_t value, pf_error *err)
{
	tb_entry e[3];
	size_t len;
	uint8_t *zip;
	pf_limits lim = pf_limits_default();
	pf_code code;

	base_entries(e);
	zip = tb_build(e, 3, o, &len);
	zip[at < 0 ? (long)len + at : at] = value;
	code = open_code(zip, len, 0, &lim, err);
	free(zip);
	return code;
}

START_TEST(test_end_records)
{
	tb_opts classic = {.no_zip64 = true};
	pf_error err;

	/* the zip64 record's signature (56 + 20 + 22 bytes from the end) */
	ASSERT_CODE(corrupt_open(NULL, -98, 'X', &err), PF_E_ZIP, err);
	ck_assert_ptr_nonnull(strstr(err.msg, "does not point"));
	/* the locator's offset points elsewhere */
	ASSERT_CODE(corrupt_open(NULL, -22 - 20 + 8, 0x40, &err), PF_E_ZIP, err);
	/* multi-disk: disk number, cd disk, per-disk count (classic-only zip) */
	ASSERT_CODE(corrupt_open(&classic, -22 + 4, 1, &err), PF_E_ZIP, err);
	ck_assert_ptr_nonnull(strstr(err.msg, "multi-disk"));
	ASSERT_CODE(corrupt_open(&classic, -22 + 6, 1, &err), PF_E_ZIP, err);
	ck_assert_ptr_nonnull(strstr(err.msg, "multi-disk"));
	ASSERT_CODE(corrupt_open(&classic, -22 + 8, 2, &err), PF_E_ZIP, err);
	ck_assert_ptr_nonnull(strstr(err.msg, "multi-disk"));
	/* the classic record contradicting the zip64 record */
	ASSERT_CODE(corrupt_open(NULL, -22 + 4, 1, &err), PF_E_ZIP, err);
	ck_assert_ptr_nonnull(strstr(err.msg, "contradicts"));
	/* the zip64 record naming another disk */
	ASSERT_CODE(corrupt_open(NULL, -98 + 16, 1, &err), PF_E_ZIP, err);
	ASSERT_CODE(corrupt_open(NULL, -22 - 20 + 4, 1, &err), PF_E_ZIP, err);
}
END_TEST

/* ------------------------------------------------------------------ tests: malformed records */

START_TEST(test_encrypted_and_patch_flags)
{
	static const uint16_t flags[] = {0x0001, 0x0020, 0x0040};
	for (size_t i = 0; i < 3; i++) {
		tb_entry e[3];
		pf_error err;
		base_entries(e);
		e[1].flags_or = flags[i];
		ASSERT_CODE(build_open(e, 3, NULL, NULL, &err), PF_E_ZIP, err);
		ck_assert_ptr_nonnull(strstr(err.msg, "encrypted"));
		ck_assert_uint_gt(err.offset, e[2].data_off); /* found in the central directory */
		base_entries(e);
		e[1].local_flags_or = flags[i]; /* only the local header says so */
		ASSERT_CODE(build_open(e, 3, NULL, NULL, &err), PF_E_ZIP, err);
		ck_assert_ptr_nonnull(strstr(err.msg, "encrypted"));
		ck_assert_uint_eq(err.offset, e[1].header_off);
	}
}
END_TEST

START_TEST(test_unknown_method)
{
	tb_entry e[3];
	base_entries(e);
	e[1].method = 12; /* bzip2 */
	e[1].local_method_set = true;
	e[1].local_method = 12;
	expect_build(e, 3, NULL, PF_E_UNSUPPORTED);
	base_entries(e);
	e[1].local_method_set = true; /* central says stored, local says deflate */
	e[1].local_method = 8;
	expect_build(e, 3, NULL, PF_E_ZIP);
}
END_TEST

START_TEST(test_local_name_mismatch)
{
	tb_entry e[3];
	pf_error err;
	base_entries(e);
	e[1].local_name = "archive/data/1";
	ASSERT_CODE(build_open(e, 3, NULL, NULL, &err), PF_E_ZIP, err);
	ck_assert_ptr_nonnull(strstr(err.msg, "name"));
	base_entries(e);
	e[1].local_name = "archive/data/00"; /* longer */
	expect_build(e, 3, NULL, PF_E_ZIP);
}
END_TEST

/* Local crc/sizes: 0 (data descriptor) or equal to the central values. */
START_TEST(test_local_values)
{
	tb_entry e[3];
	base_entries(e);
	expect_build(e, 3, NULL, PF_OK); /* computes the crc */
	e[1].crc_set = true;
	e[1].local_crc = e[1].crc;
	e[1].local_csize = e[1].data_len;
	expect_build(e, 3, NULL, PF_OK);
	e[1].local_crc = e[1].crc ^ 0x10;
	expect_build_msg(e, 3, NULL, PF_E_ZIP, "CRC");
	e[1].local_crc = e[1].crc;
	e[1].local_csize = e[1].data_len + 1;
	expect_build_msg(e, 3, NULL, PF_E_ZIP, "sizes");
}
END_TEST

START_TEST(test_duplicate_names)
{
	tb_entry e[3];
	pf_error err;
	base_entries(e);
	e[2].name = "archive/data.pkl";
	ASSERT_CODE(build_open(e, 3, NULL, NULL, &err), PF_E_ZIP, err);
	ck_assert_ptr_nonnull(strstr(err.msg, "duplicate"));
}
END_TEST

START_TEST(test_stored_sizes_differ)
{
	tb_entry e[3];
	base_entries(e);
	e[1].csize_set = true;
	e[1].csize = 15;
	expect_build(e, 3, NULL, PF_E_ZIP);
}
END_TEST

START_TEST(test_overlapping_records)
{
	tb_entry e[3], q[2];
	pf_error err;
	uint8_t quoted[64];
	tb_buf b = {NULL, 0, 0};
	const char *bname = "archive/b";

	/* a record that claims the bytes of the next local header */
	base_entries(e);
	e[0].csize_set = e[0].usize_set = true;
	e[0].csize = e[0].usize = 100;
	ASSERT_CODE(build_open(e, 3, NULL, NULL, &err), PF_E_ZIP, err);
	ck_assert_ptr_nonnull(strstr(err.msg, "overlaps"));

	/* a "quoted" overlap: B's local header lives inside A's data */
	tb_le(&b, 0x04034b50u, 4);
	tb_le(&b, 0, 2);
	tb_le(&b, 0x0808, 2);
	tb_le(&b, 0, 2);
	tb_le(&b, 0, 16);
	tb_le(&b, strlen(bname), 2);
	tb_le(&b, 0, 2);
	tb_put(&b, bname, strlen(bname));
	tb_put(&b, "hello", 5);
	ck_assert_uint_le(b.n, sizeof(quoted));
	memcpy(quoted, b.p, b.n);
	memset(q, 0, sizeof(q));
	q[0] = (tb_entry){.name = "archive/a", .data = quoted, .data_len = b.n};
	q[1] = (tb_entry){.name = bname, .data = (const uint8_t *)"hello", .data_len = 5};
	expect_build(q, 2, NULL, PF_OK); /* the baseline; also tells where A's data is */
	q[1].off_set = true;
	q[1].off = q[0].data_off;
	ASSERT_CODE(build_open(q, 2, NULL, NULL, &err), PF_E_ZIP, err);
	ck_assert_ptr_nonnull(strstr(err.msg, "overlaps"));
	free(b.p);

	/* two central entries for one local header */
	base_entries(e);
	e[2].off_set = true;
	e[2].off = 0;
	expect_build(e, 3, NULL, PF_E_ZIP);
}
END_TEST

START_TEST(test_record_past_eof)
{
	tb_entry e[3];
	tb_opts o = {.cd_off_delta = 1 << 20};

	base_entries(e);
	e[2].csize_set = e[2].usize_set = true;
	e[2].csize = e[2].usize = 1u << 20;
	expect_build(e, 3, NULL, PF_E_ZIP);
	base_entries(e);
	e[2].off_set = true;
	e[2].off = 1u << 30; /* local header offset past the end */
	expect_build(e, 3, NULL, PF_E_ZIP);
	/* the central directory past the end, or not where it is said to be */
	base_entries(e);
	expect_build(e, 3, &o, PF_E_ZIP);
	base_entries(e);
	o.cd_off_delta = -1;
	expect_build(e, 3, &o, PF_E_ZIP);
}
END_TEST

START_TEST(test_offset_size_wrap)
{
	tb_entry e[3];

	base_entries(e);
	e[1].zip64 = true; /* the zip64 form of a normal entry is fine */
	expect_build(e, 3, NULL, PF_OK);
	base_entries(e);
	e[1].zip64 = true;
	e[1].csize_set = e[1].usize_set = true;
	e[1].csize = e[1].usize = UINT64_MAX;
	expect_build(e, 3, NULL, PF_E_ZIP);
	base_entries(e);
	expect_build(e, 3, NULL, PF_OK); /* learn data_off */
	e[1].zip64 = true;
	e[1].csize_set = e[1].usize_set = true;
	e[1].csize = e[1].usize = UINT64_MAX - e[1].data_off + 1; /* data_off + size == 2^64 */
	expect_build(e, 3, NULL, PF_E_ZIP);
	base_entries(e);
	e[1].zip64 = true;
	e[1].off_set = true;
	e[1].off = UINT64_MAX - 10;
	expect_build(e, 3, NULL, PF_E_ZIP);
}
END_TEST

START_TEST(test_zip64_inconsistent)
{
	tb_entry e[3];
	tb_opts o;

	/* sentinels in the classic record, values in zip64: fine */
	base_entries(e);
	o = (tb_opts){.classic_sentinels = true};
	expect_build(e, 3, &o, PF_OK);
	/* sentinels without a zip64 record */
	base_entries(e);
	o = (tb_opts){.classic_sentinels = true, .no_zip64 = true};
	expect_build_msg(e, 3, &o, PF_E_ZIP, "sentinel");
	/* classic count contradicts zip64 */
	base_entries(e);
	o = (tb_opts){.classic_count_delta = -1};
	expect_build_msg(e, 3, &o, PF_E_ZIP, "contradicts");
	/* the zip64 end record must reach its locator exactly */
	base_entries(e);
	o = (tb_opts){.z64_size_delta = 8};
	expect_build_msg(e, 3, &o, PF_E_ZIP, "zip64 end record");
	base_entries(e);
	o = (tb_opts){.z64_size_delta = -8};
	expect_build_msg(e, 3, &o, PF_E_ZIP, "zip64 end record");
	/* entry sentinel without a zip64 extra field */
	base_entries(e);
	e[1].zip64 = true;
	e[1].omit_zip64_extra = true;
	expect_build_msg(e, 3, NULL, PF_E_ZIP, "but no zip64 extra");
	base_entries(e);
	e[1].zip64 = true;
	e[1].dup_zip64_extra = true;
	expect_build_msg(e, 3, NULL, PF_E_ZIP, "two zip64");
	/* another disk */
	base_entries(e);
	e[1].disk = 1;
	expect_build_msg(e, 3, NULL, PF_E_ZIP, "disk");
}
END_TEST

START_TEST(test_wrong_entry_count)
{
	tb_entry e[3];
	tb_opts o;
	pf_error err;
	pf_limits lim = pf_limits_default();

	base_entries(e);
	o = (tb_opts){.z64_count_delta = 1, .classic_count_delta = 1};
	expect_build(e, 3, &o, PF_E_ZIP);
	base_entries(e);
	o = (tb_opts){.z64_count_delta = -1, .classic_count_delta = -1};
	expect_build(e, 3, &o, PF_E_ZIP);
	/* 2^40 entries in a 3-entry central directory: refused before any table */
	base_entries(e);
	o = (tb_opts){.z64_count_delta = (int64_t)1 << 40, .classic_sentinels = true};
	expect_build(e, 3, &o, PF_E_ZIP);
	/* a real count over the limit */
	base_entries(e);
	lim.max_zip_entries = 2;
	ASSERT_CODE(build_open(e, 3, NULL, &lim, &err), PF_E_LIMIT, err);
	ck_assert_ptr_nonnull(strstr(err.msg, "max_zip_entries"));
	base_entries(e);
	lim.max_zip_entries = 3;
	ASSERT_CODE(build_open(e, 3, NULL, &lim, &err), PF_OK, err);
}
END_TEST

/* ------------------------------------------------------------------ tests: names and prefix */

static void expect_name(const char *name, size_t name_len, bool first, pf_code want)
{
	tb_entry e[3];
	pf_error err;
	pf_code got;

	base_entries(e);
	e[first ? 0 : 1].name = name;
	e[first ? 0 : 1].name_len = name_len;
	got = build_open(e, 3, NULL, NULL, &err);
	ck_assert_msg(got == want, "name '%s': expected %s, got %s: %s", name, pf_code_name(want),
		      pf_code_name(got), err.msg);
}

START_TEST(test_bad_names)
{
	char long_name[5000];

	expect_name("../x", 0, true, PF_E_ZIP);
	expect_name("archive/../x", 0, false, PF_E_ZIP);
	expect_name("archive/data/..", 0, false, PF_E_ZIP);
	expect_name("/abs", 0, true, PF_E_ZIP);
	expect_name("/archive/x", 0, false, PF_E_ZIP);
	expect_name("archive/a\\b", 0, false, PF_E_ZIP);
	expect_name("archive/a\0b", 11, false, PF_E_ZIP);
	expect_name("", 0, false, PF_E_ZIP);
	{
		tb_entry e[3];
		base_entries(e);
		e[1].name = "";
		expect_build_msg(e, 3, NULL, PF_E_ZIP, "empty");
		/* all absolute: one shared (empty) prefix, still refused */
		base_entries(e);
		e[0].name = "/archive/data.pkl";
		e[1].name = "/archive/data/0";
		e[2].name = "/archive/version";
		expect_build_msg(e, 3, NULL, PF_E_ZIP, "absolute");
	}
	expect_name("archive/\xff\xfe", 0, false, PF_E_ZIP); /* not UTF-8 */
	expect_name("archive/\xc0\xaf", 0, false, PF_E_ZIP); /* overlong '/' */
	expect_name("archive/\xed\xa0\x80", 0, false, PF_E_ZIP); /* surrogate */
	/* harmless look-alikes are accepted */
	expect_name("archive/a..b", 0, false, PF_OK);
	expect_name("archive/..x", 0, false, PF_OK);
	expect_name("archive/\xc3\xa9t\xc3\xa9", 0, false, PF_OK);
	/* longer than max_name_len (4096) */
	memset(long_name, 'n', sizeof(long_name) - 1);
	long_name[sizeof(long_name) - 1] = '\0';
	memcpy(long_name, "archive/", 8);
	expect_name(long_name, 4097, false, PF_E_LIMIT);
	expect_name(long_name, 4096, false, PF_OK);
}
END_TEST

START_TEST(test_prefix_rules)
{
	tb_entry e[3];
	pf_error err;

	base_entries(e);
	e[0].name = "data.pkl"; /* no folder */
	ASSERT_CODE(build_open(e, 3, NULL, NULL, &err), PF_E_ZIP, err);
	ck_assert_ptr_nonnull(strstr(err.msg, "prefix"));
	base_entries(e);
	e[2].name = "other/version";
	expect_build(e, 3, NULL, PF_E_ZIP);
	base_entries(e);
	e[2].name = "archivex/version"; /* shares the letters, not the folder */
	expect_build(e, 3, NULL, PF_E_ZIP);
	base_entries(e);
	e[2].name = "archive"; /* the prefix itself, no folder */
	expect_build(e, 3, NULL, PF_E_ZIP);
	base_entries(e);
	e[1].name = "version"; /* a later entry without '/' */
	expect_build(e, 3, NULL, PF_E_ZIP);
}
END_TEST

/* Nothing may precede the first local header (torch looks at byte 0). */
START_TEST(test_prefix_data)
{
	tb_entry e[3];
	tb_opts o = {.junk_before = 100};
	base_entries(e);
	expect_build(e, 3, &o, PF_E_ZIP);
}
END_TEST

/* ------------------------------------------------------------------ tests: deflate */

/* Build, open, pf_zip_data of entry `which`; returns its code.  *copy gets
 * the bytes on success, *arena_growth what pf_zip_data took from the arena. */
static pf_code data_code(tb_entry *e, size_t n, size_t which, const pf_limits *lim, pf_error *err,
			 uint8_t **copy, uint64_t *copy_len, uint64_t *arena_growth)
{
	size_t len;
	uint8_t *zip = tb_build(e, n, NULL, &len);
	pf_arena arena;
	pf_zip z;
	const uint8_t *d = NULL;
	uint64_t dl = 0, before;
	bool dec;
	int rc;

	pf_arena_init(&arena);
	pf_error_clear(err);
	ck_assert_msg(pf_zip_open(&z, zip, len, 0, lim, &arena, err) == 0, "open: %s", err->msg);
	before = arena.used;
	rc = pf_zip_data(&z.entries[which], zip, len, 0, lim, &arena, &d, &dl, &dec, err);
	if (arena_growth)
		*arena_growth = arena.used - before;
	if (rc == 0) {
		ck_assert(dec);
		if (copy) {
			*copy = malloc(dl ? dl : 1);
			ck_assert_ptr_nonnull(*copy);
			memcpy(*copy, d, dl);
			*copy_len = dl;
		}
	} else {
		ck_assert_ptr_null(d);
		ck_assert_int_ne(err->code, PF_OK);
		ck_assert_uint_eq(err->offset, z.entries[which].data_off);
	}
	pf_zip_free(&z);
	pf_arena_free(&arena);
	free(zip);
	return rc ? err->code : PF_OK;
}

/* entries: [0] a stored data.pkl, [1] deflated `plain` */
static void deflate_pair(tb_entry e[2], const char *name, const uint8_t *plain, size_t n)
{
	tb_entry tmp[3];
	base_entries(tmp);
	e[0] = tmp[0];
	tb_deflated(&e[1], name, plain, n);
}

START_TEST(test_deflated_record)
{
	static const char text[] = "def forward(self, x):\n    return x + x + x + x + x + x\n";
	const size_t tn = sizeof(text) - 1;
	tb_entry e[2];
	pf_limits lim = pf_limits_default();
	pf_error err;
	uint8_t *out, *padded;
	uint64_t out_len;
	size_t full;

	deflate_pair(e, "archive/code.py", (const uint8_t *)text, tn);
	ASSERT_CODE(data_code(e, 2, 1, &lim, &err, &out, &out_len, NULL), PF_OK, err);
	ck_assert_uint_eq(out_len, tn);
	ck_assert(memcmp(out, text, tn) == 0);
	free(out);

	/* CRC mismatch */
	e[1].crc ^= 1;
	ASSERT_CODE(data_code(e, 2, 1, &lim, &err, NULL, NULL, NULL), PF_E_INFLATE, err);
	ck_assert_ptr_nonnull(strstr(err.msg, "CRC"));
	e[1].crc ^= 1;
	/* declared size one too large / one too small */
	e[1].usize = tn + 1;
	ASSERT_CODE(data_code(e, 2, 1, &lim, &err, NULL, NULL, NULL), PF_E_INFLATE, err);
	e[1].usize = tn - 1;
	ASSERT_CODE(data_code(e, 2, 1, &lim, &err, NULL, NULL, NULL), PF_E_INFLATE, err);
	ck_assert_ptr_nonnull(strstr(err.msg, "more than the declared"));
	e[1].usize = tn;
	/* a cut stream, and bytes after the stream */
	full = e[1].data_len;
	padded = malloc(full + 3);
	ck_assert_ptr_nonnull(padded);
	memcpy(padded, e[1].data, full);
	memcpy(padded + full, "xyz", 3);
	e[1].data_len = full - 3;
	ASSERT_CODE(data_code(e, 2, 1, &lim, &err, NULL, NULL, NULL), PF_E_INFLATE, err);
	free((void *)(uintptr_t)e[1].data);
	e[1].data = padded;
	e[1].data_len = full + 3;
	ASSERT_CODE(data_code(e, 2, 1, &lim, &err, NULL, NULL, NULL), PF_E_INFLATE, err);
	/* garbage instead of deflate (block type 3 does not exist) */
	memset(padded, 0xFF, full + 3);
	ASSERT_CODE(data_code(e, 2, 1, &lim, &err, NULL, NULL, NULL), PF_E_INFLATE, err);
	free(padded);
}
END_TEST

START_TEST(test_empty_deflated_record)
{
	tb_entry e[2];
	pf_limits lim = pf_limits_default();
	pf_error err;
	uint8_t *out;
	uint64_t out_len;

	deflate_pair(e, "archive/empty", (const uint8_t *)"", 0);
	ASSERT_CODE(data_code(e, 2, 1, &lim, &err, &out, &out_len, NULL), PF_OK, err);
	ck_assert_uint_eq(out_len, 0);
	free(out);
	free((void *)(uintptr_t)e[1].data);
	/* csize 0: nothing to inflate; only an empty output may be declared */
	e[1].data = NULL;
	e[1].data_len = 0;
	e[1].usize = 1;
	ASSERT_CODE(data_code(e, 2, 1, &lim, &err, NULL, NULL, NULL), PF_E_LIMIT, err);
	e[1].usize = 0;
	ASSERT_CODE(data_code(e, 2, 1, &lim, &err, NULL, NULL, NULL), PF_E_INFLATE, err);
}
END_TEST

/* torch_dos, scaled: 40 GB declared by a tiny record; refused by the
 * limits before anything is allocated. */
START_TEST(test_declared_bomb)
{
	static const uint8_t zeros[1000];
	tb_entry e[2];
	pf_limits lim = pf_limits_default();
	pf_error err;
	uint64_t growth = 1;

	deflate_pair(e, "archive/bomb", zeros, sizeof(zeros));
	e[1].zip64 = true;
	e[1].usize = 40000000000ull;
	ASSERT_CODE(data_code(e, 2, 1, &lim, &err, NULL, NULL, &growth), PF_E_LIMIT, err);
	ck_assert_uint_eq(growth, 0);
	ck_assert_ptr_nonnull(strstr(err.msg, "max_inflate"));
	/* with max_inflate out of the way the ratio still refuses it */
	lim.max_inflate = UINT64_MAX;
	ASSERT_CODE(data_code(e, 2, 1, &lim, &err, NULL, NULL, &growth), PF_E_LIMIT, err);
	ck_assert_uint_eq(growth, 0);
	ck_assert_ptr_nonnull(strstr(err.msg, "ratio"));
	/* and with the ratio out of the way too, max_decoded */
	lim.max_inflate_ratio = UINT64_MAX;
	ASSERT_CODE(data_code(e, 2, 1, &lim, &err, NULL, NULL, &growth), PF_E_LIMIT, err);
	ck_assert_uint_eq(growth, 0);
	ck_assert_ptr_nonnull(strstr(err.msg, "max_decoded"));
	free((void *)(uintptr_t)e[1].data);
}
END_TEST

/* A real 10 MB-of-zeros record (about 10 KB on disk). */
START_TEST(test_zeros_record_limits)
{
	const size_t n = 10u * 1000u * 1000u;
	uint8_t *zeros = calloc(n, 1), *out;
	tb_entry e[2];
	pf_limits lim = pf_limits_default();
	pf_error err;
	uint64_t out_len, growth;

	ck_assert_ptr_nonnull(zeros);
	deflate_pair(e, "archive/zeros", zeros, n);
	ck_assert_uint_lt(e[1].data_len, n / 100); /* a ratio over 100 */
	/* the default ratio refuses it */
	ASSERT_CODE(data_code(e, 2, 1, &lim, &err, NULL, NULL, &growth), PF_E_LIMIT, err);
	ck_assert_uint_eq(growth, 0);
	ck_assert_ptr_nonnull(strstr(err.msg, "ratio"));
	/* a lowered max_inflate refuses it */
	lim.max_inflate_ratio = 100000;
	lim.max_inflate = 1u << 20;
	ASSERT_CODE(data_code(e, 2, 1, &lim, &err, NULL, NULL, &growth), PF_E_LIMIT, err);
	ck_assert_uint_eq(growth, 0);
	ck_assert_ptr_nonnull(strstr(err.msg, "max_inflate"));
	/* exactly at the limit it inflates */
	lim.max_inflate = n;
	ASSERT_CODE(data_code(e, 2, 1, &lim, &err, &out, &out_len, &growth), PF_OK, err);
	ck_assert_uint_eq(out_len, n);
	ck_assert_uint_eq(growth, n);
	ck_assert(memcmp(out, zeros, n) == 0);
	free(out);
	/* a record longer than declared is caught while inflating */
	e[1].usize = n - 1;
	ASSERT_CODE(data_code(e, 2, 1, &lim, &err, NULL, NULL, NULL), PF_E_INFLATE, err);
	ck_assert_ptr_nonnull(strstr(err.msg, "more than the declared"));
	free((void *)(uintptr_t)e[1].data);
	free(zeros);
}
END_TEST

/* ------------------------------------------------------------------ tests: offsets, scale */

START_TEST(test_error_offsets_include_origin)
{
	tb_entry e[3];
	size_t len;
	uint8_t *zip;
	pf_limits lim = pf_limits_default();
	pf_error err;
	pf_arena arena;
	pf_zip z;
	uint64_t cd;

	base_entries(e);
	zip = tb_build(e, 3, NULL, &len);
	zip[e[1].header_off] = 'X'; /* break the second local header's signature */
	ASSERT_CODE(open_code(zip, len, 1000, &lim, &err), PF_E_ZIP, err);
	ck_assert_uint_eq(err.offset, 1000 + e[1].header_off);
	zip[e[1].header_off] = 'P';

	pf_arena_init(&arena);
	pf_error_clear(&err);
	ck_assert_int_eq(pf_zip_open(&z, zip, len, 0, &lim, &arena, &err), 0);
	cd = z.cd_off;
	pf_zip_free(&z);
	pf_arena_free(&arena);
	zip[cd + 1] = 'Q'; /* the first central signature */
	ASSERT_CODE(open_code(zip, len, 77, &lim, &err), PF_E_ZIP, err);
	ck_assert_uint_eq(err.offset, 77 + cd);
	free(zip);
}
END_TEST

/* 10^5 entries: open and look each one up twice (a linear lookup would
 * make ~10^10 comparisons here). */
START_TEST(test_many_entries)
{
	const size_t n = 100000;
	tb_entry *e = calloc(n, sizeof(*e));
	char *names = malloc(n * 24);
	size_t len;
	uint8_t *zip;
	pf_arena arena;
	pf_zip z;
	pf_error err;
	pf_limits lim = pf_limits_default();
	clock_t t0;
	double secs;

	ck_assert_ptr_nonnull(e);
	ck_assert_ptr_nonnull(names);
	for (size_t i = 0; i < n; i++) {
		snprintf(names + 24 * i, 24, "archive/data/%zu", (i * 7919) % n); /* unsorted */
		e[i].name = names + 24 * i;
		e[i].data = (const uint8_t *)"abcd";
		e[i].data_len = 4;
	}
	zip = tb_build(e, n, NULL, &len);
	pf_arena_init(&arena);
	pf_error_clear(&err);
	t0 = clock();
	ck_assert_msg(pf_zip_open(&z, zip, len, 0, &lim, &arena, &err) == 0, "%s", err.msg);
	ck_assert_uint_eq(z.n_entries, n);
	for (size_t i = 0; i < n; i++) {
		char rel[24];
		ck_assert_ptr_eq(pf_zip_find(&z, names + 24 * i), &z.entries[i]);
		snprintf(rel, sizeof(rel), "data/%zu", i);
		ck_assert_ptr_nonnull(pf_zip_find_rel(&z, rel));
	}
	ck_assert_ptr_null(pf_zip_find_rel(&z, "data/100000"));
	secs = (double)(clock() - t0) / CLOCKS_PER_SEC;
	ck_assert_msg(secs < 10.0, "open + 2*10^5 lookups took %.1f s", secs);
	pf_zip_free(&z);
	pf_arena_free(&arena);
	free(zip);
	free(names);
	free(e);
}
END_TEST

static Suite *zip_suite(void)
{
	Suite *s = suite_create("zip");
	TCase *real = tcase_create("real");
	TCase *bad = tcase_create("malformed");
	TCase *infl = tcase_create("inflate");

	tcase_set_timeout(real, 240);
	tcase_add_test(real, test_real_zips_match_zipfile);
	tcase_add_test(real, test_real_torchscript_inflates);
	tcase_add_test(real, test_generated_torch_zips);
	tcase_add_test(real, test_embedded_zip_slice);
	tcase_add_test(real, test_builder_baseline);
	tcase_add_test(real, test_many_entries);
	suite_add_tcase(s, real);

	tcase_set_timeout(bad, 240);
	tcase_add_test(bad, test_every_truncation_fails);
	tcase_add_test(bad, test_bit_flips);
	tcase_add_test(bad, test_not_a_zip);
	tcase_add_test(bad, test_end_records);
	tcase_add_test(bad, test_comment_length_must_match);
	tcase_add_test(bad, test_encrypted_and_patch_flags);
	tcase_add_test(bad, test_unknown_method);
	tcase_add_test(bad, test_local_name_mismatch);
	tcase_add_test(bad, test_duplicate_names);
	tcase_add_test(bad, test_local_values);
	tcase_add_test(bad, test_stored_sizes_differ);
	tcase_add_test(bad, test_overlapping_records);
	tcase_add_test(bad, test_record_past_eof);
	tcase_add_test(bad, test_offset_size_wrap);
	tcase_add_test(bad, test_zip64_inconsistent);
	tcase_add_test(bad, test_wrong_entry_count);
	tcase_add_test(bad, test_bad_names);
	tcase_add_test(bad, test_prefix_rules);
	tcase_add_test(bad, test_prefix_data);
	tcase_add_test(bad, test_error_offsets_include_origin);
	suite_add_tcase(s, bad);

	tcase_set_timeout(infl, 120);
	tcase_add_test(infl, test_deflated_record);
	tcase_add_test(infl, test_empty_deflated_record);
	tcase_add_test(infl, test_declared_bomb);
	tcase_add_test(infl, test_zeros_record_limits);
	suite_add_tcase(s, infl);
	return s;
}

/* Fixtures written once by the real torch; tests read them from tmp_dir. */
static int make_fixtures(void)
{
	static const char gen[] =
		"import sys, torch\n"
		"d = sys.argv[1]\n"
		"torch.save({'w': torch.arange(6.), 'b': torch.ones(2)}, d + '/small.pt')\n"
		"torch.jit.save(torch.jit.script(torch.nn.Linear(2, 3)), d + '/ts.pt')\n";
	char path[400];
	FILE *f;

	snprintf(path, sizeof(path), "%s/list.py", tmp_dir);
	f = fopen(path, "w");
	if (!f || fputs(LIST_PY, f) < 0 || fclose(f) != 0)
		return -1;
	snprintf(path, sizeof(path), "%s/gen.py", tmp_dir);
	f = fopen(path, "w");
	if (!f || fputs(gen, f) < 0 || fclose(f) != 0)
		return -1;
	char cmd[1000];
	snprintf(cmd, sizeof(cmd), PYTHON " '%s' '%s'", path, tmp_dir);
	return system(cmd) == 0 ? 0 : -1;
}

int main(void)
{
	const char *shared = getenv("PF_SHARED");
	SRunner *sr;
	int failed;
	char cmd[400];

	snprintf(shared_dir, sizeof(shared_dir), "%s", shared ? shared : "../shared");
	snprintf(tmp_dir, sizeof(tmp_dir), "/tmp/pf_test_zip_XXXXXX");
	if (!mkdtemp(tmp_dir) || make_fixtures() != 0) {
		fprintf(stderr, "cannot create the torch fixtures in %s\n", tmp_dir);
		return EXIT_FAILURE;
	}
	sr = srunner_create(zip_suite());
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmp_dir);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", tmp_dir);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
