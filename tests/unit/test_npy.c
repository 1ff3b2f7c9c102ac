/*
 * test_npy.c - codec/npy.c against the real numpy (Debian python3-numpy).
 *
 * Expected headers come from numpy.lib.format itself, run through
 * /usr/bin/python3 at test time; the test fails (does not skip) when
 * python3 or numpy is missing.
 */
#include <check.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "npy.h"

#define PYTHON "/usr/bin/python3"
#define MAX_CASES 1024

static const char py_script[] =
	"import sys, io, struct\n"
	"import numpy as np\n"
	"import numpy.lib.format as F\n"
	"def shp(s): return tuple(int(x) for x in s.split(',') if x)\n"
	"def hx(b): return b.hex() if b else '-'\n"
	"def dict_hdr(descr, f, shape, version=None):\n"
	"    b = io.BytesIO()\n"
	"    F._write_array_header(b, {'descr': descr, 'fortran_order': f, 'shape': shape}, version)\n"
	"    return b.getvalue()\n"
	"def saved(descr, f, shape):\n"
	"    if len(shape) > 32: return b''\n"
	"    n = 1\n"
	"    for d in shape: n *= d\n"
	"    dt = np.dtype(descr)\n"
	"    if n * dt.itemsize > 1 << 20 or max(shape, default=0) > 1 << 20: return b''\n"
	"    a = np.zeros(shape, dtype=dt, order='F' if f else 'C')\n"
	"    if F.header_data_from_array_1_0(a)['fortran_order'] != f: return b''\n"
	"    if F.header_data_from_array_1_0(a)['descr'] != descr: return b''\n"
	"    b = io.BytesIO(); np.save(b, a); v = b.getvalue()\n"
	"    return v[:len(v) - a.nbytes]\n"
	"def info(h):\n"
	"    b = io.BytesIO(h)\n"
	"    try:\n"
	"        v = F.read_magic(b)\n"
	"        if v == (1, 0): s, f, dt = F.read_array_header_1_0(b)\n"
	"        elif v == (2, 0): s, f, dt = F.read_array_header_2_0(b)\n"
	"        else: s, f, dt = F._read_array_header(b, v)\n"
	"    except Exception:\n"
	"        return '0'\n"
	"    return '1 %d %s' % (int(f), ','.join(str(int(x)) for x in s))\n"
	"mode = sys.argv[1]\n"
	"if mode == 'load':\n"
	"    a = np.load(sys.argv[2]); m = np.load(sys.argv[2], mmap_mode='r')\n"
	"    assert (a == m).all() and a.dtype == m.dtype and a.shape == m.shape\n"
	"    fo = int(a.flags.f_contiguous and not a.flags.c_contiguous)\n"
	"    print(a.dtype.str, ','.join(map(str, a.shape)), fo, a.ravel(order='C').tolist())\n"
	"    sys.exit(0)\n"
	"for ln in open(sys.argv[2]).read().split('\\n'):\n"
	"    if not ln: continue\n"
	"    if mode == 'hdr':\n"
	"        descr, f, s = ln.split(' ')\n"
	"        f = f == '1'; s = shp(s)\n"
	"        print(hx(dict_hdr(descr, f, s)), hx(saved(descr, f, s)),\n"
	"              hx(dict_hdr(descr, f, s, (2, 0))), hx(dict_hdr(descr, f, s, (3, 0))))\n"
	"    elif mode == 'accept':\n"
	"        t = bytes.fromhex(ln)\n"
	"        print(info(F.magic(1, 0) + struct.pack('<H', len(t)) + t))\n"
	"    elif mode == 'check':\n"
	"        print(info(bytes.fromhex(ln)))\n";

typedef struct hcase {
	char descr[PF_NPY_DESCR_MAX];
	bool fortran;
	unsigned ndim;
	int64_t shape[PF_NPY_MAX_DIMS];
} hcase;

/* ------------------------------------------------------------------ helpers */

typedef struct tmpdir {
	char dir[64];
	char script[96];
	char input[96];
} tmpdir;

static void tmp_open(tmpdir *t)
{
	FILE *f;

	snprintf(t->dir, sizeof(t->dir), "/tmp/pf_npy_XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(t->dir));
	snprintf(t->script, sizeof(t->script), "%s/t.py", t->dir);
	snprintf(t->input, sizeof(t->input), "%s/in.txt", t->dir);
	f = fopen(t->script, "w");
	ck_assert_ptr_nonnull(f);
	ck_assert_int_eq(fputs(py_script, f) >= 0, 1);
	ck_assert_int_eq(fclose(f), 0);
}

static void tmp_close(tmpdir *t)
{
	unlink(t->script);
	unlink(t->input);
	rmdir(t->dir);
}

/* Run the script in `mode` on `arg`; returns its stdout (malloc'd), asserts exit 0. */
static char *py_run(const tmpdir *t, const char *mode, const char *arg)
{
	char cmd[512];
	size_t cap = 1 << 16, len = 0, n;
	char *out = malloc(cap);
	FILE *p;

	ck_assert_ptr_nonnull(out);
	snprintf(cmd, sizeof(cmd), "%s %s %s %s", PYTHON, t->script, mode, arg);
	p = popen(cmd, "r");
	ck_assert_msg(p != NULL, "popen: %s", strerror(errno));
	while ((n = fread(out + len, 1, cap - len - 1, p)) > 0) {
		len += n;
		if (cap - len < 2) {
			cap *= 2;
			out = realloc(out, cap);
			ck_assert_ptr_nonnull(out);
		}
	}
	out[len] = '\0';
	ck_assert_msg(pclose(p) == 0, "python3/numpy failed for mode %s", mode);
	return out;
}

static void write_input(const tmpdir *t, const char *text)
{
	FILE *f = fopen(t->input, "w");

	ck_assert_ptr_nonnull(f);
	ck_assert_int_eq(fputs(text, f) >= 0, 1);
	ck_assert_int_eq(fclose(f), 0);
}

static size_t unhex(const char *s, size_t n, uint8_t *out, size_t cap)
{
	ck_assert_uint_eq(n % 2, 0);
	ck_assert_uint_le(n / 2, cap);
	for (size_t i = 0; i < n / 2; i++) {
		unsigned v;

		ck_assert_int_eq(sscanf(s + 2 * i, "%2x", &v), 1);
		out[i] = (uint8_t)v;
	}
	return n / 2;
}

static void hex(const uint8_t *p, size_t n, char *out)
{
	for (size_t i = 0; i < n; i++)
		sprintf(out + 2 * i, "%02x", p[i]);
	out[2 * n] = '\0';
}

static void add(hcase *c, unsigned *n, const char *descr, bool fortran, unsigned ndim,
		const int64_t *shape)
{
	ck_assert_uint_lt(*n, MAX_CASES);
	memset(&c[*n], 0, sizeof(c[*n]));
	snprintf(c[*n].descr, sizeof(c[*n].descr), "%s", descr);
	c[*n].fortran = fortran;
	c[*n].ndim = ndim;
	if (ndim)
		memcpy(c[*n].shape, shape, ndim * sizeof(*shape));
	(*n)++;
}

static uint64_t rng_next(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

static int64_t pow10_i64(unsigned k)
{
	int64_t p = 1;

	while (k--)
		p *= 10;
	return p;
}

/* The header table: hand-picked cases, alignment sweeps and seeded random shapes. */
static unsigned make_cases(hcase *c)
{
	static const char *const descrs[] = {
		"<f4", "|b1", "|V2", "<c16", ">i4", "<U5", "<M8[ns]", "|u1", "<f2", ">f8", "|S10",
	};
	const int64_t big = (int64_t)1 << 40;
	int64_t s[PF_NPY_MAX_DIMS];
	uint64_t seed = 0x9e3779b97f4a7c15ULL;
	unsigned n = 0;

	add(c, &n, "<f4", false, 0, NULL);
	s[0] = 0;
	add(c, &n, "<f8", false, 1, s);
	s[0] = 5;
	add(c, &n, "|b1", false, 1, s);
	add(c, &n, "<f4", true, 1, s);
	s[0] = 2; s[1] = 3;
	add(c, &n, "<f4", false, 2, s);
	add(c, &n, "<f4", true, 2, s);
	add(c, &n, "|V2", false, 2, s);
	add(c, &n, "<c16", true, 2, s);
	s[0] = 3; s[1] = 4; s[2] = 5;
	add(c, &n, ">i4", false, 3, s);
	s[0] = big;
	add(c, &n, "<i8", false, 1, s);
	s[1] = 3;
	add(c, &n, "<i8", true, 2, s);
	add(c, &n, "<i8", false, 2, s);
	s[0] = 0; s[1] = 0; s[2] = 0;
	add(c, &n, "|u1", false, 3, s);
	s[0] = INT64_MAX; s[1] = 1;
	add(c, &n, "<f4", false, 2, s);
	add(c, &n, "<f4", true, 2, s);
	for (unsigned i = 0; i < PF_NPY_MAX_DIMS; i++)
		s[i] = big + i;
	add(c, &n, "<f4", false, 32, s);
	add(c, &n, "<f4", false, PF_NPY_MAX_DIMS, s);
	add(c, &n, ">c8", true, PF_NPY_MAX_DIMS, s);
	for (unsigned i = 0; i < 32; i++)
		s[i] = 1;
	add(c, &n, "|b1", false, 32, s);
	/* every descr with a second dim of 1 to 19 digits, C and Fortran order */
	for (unsigned d = 0; d < sizeof(descrs) / sizeof(descrs[0]); d++) {
		for (unsigned k = 0; k < 19; k++) {
			s[0] = 2;
			s[1] = pow10_i64(k);
			add(c, &n, descrs[d], k % 2 == 1, 2, s);
		}
	}
	/* up to 6 dims of 1 to 19 digits each */
	for (unsigned nd = 2; nd <= 6; nd++) {
		for (unsigned k = 0; k < 19; k++) {
			s[0] = 3;
			for (unsigned i = 1; i < nd; i++)
				s[i] = pow10_i64(k);
			add(c, &n, descrs[(nd + k) % (sizeof(descrs) / sizeof(descrs[0]))],
			    (nd + k) % 2 == 0, nd, s);
		}
	}
	/*
	 * dict lengths one apart over more than 64 values, so every padding
	 * length 1..64 occurs (64: numpy pads a whole block when aligned)
	 */
	for (unsigned extra = 0; extra < 4 * 18; extra++) {
		unsigned left = extra;

		s[0] = 3;
		for (unsigned i = 1; i < 5; i++) {
			unsigned digits = 1 + (left < 18 ? left : 18);

			left -= digits - 1;
			s[i] = pow10_i64(digits - 1);
		}
		add(c, &n, extra % 2 ? "<f4" : "<c16", false, 5, s);
		add(c, &n, extra % 2 ? "|b1" : "<M8[ns]", true, 5, s);
	}
	/* random shapes, seeded */
	for (unsigned r = 0; r < 150; r++) {
		unsigned nd = (unsigned)(rng_next(&seed) % 9);

		for (unsigned i = 0; i < nd; i++) {
			unsigned bits = (unsigned)(rng_next(&seed) % 63);

			s[i] = (int64_t)(rng_next(&seed) & (((uint64_t)1 << bits) - 1));
		}
		add(c, &n, descrs[rng_next(&seed) % (sizeof(descrs) / sizeof(descrs[0]))],
		    rng_next(&seed) % 2, nd, s);
	}
	return n;
}

static void case_line(const hcase *c, char *line, size_t cap)
{
	size_t o = (size_t)snprintf(line, cap, "%s %d ", c->descr, c->fortran ? 1 : 0);

	for (unsigned i = 0; i < c->ndim; i++)
		o += (size_t)snprintf(line + o, cap - o, "%s%lld", i ? "," : "",
				      (long long)c->shape[i]);
	snprintf(line + o, cap - o, "\n");
}

static void check_info(const pf_npy_info *info, const hcase *c, uint64_t data_off)
{
	ck_assert_str_eq(info->descr, c->descr);
	ck_assert_int_eq(info->fortran, c->fortran);
	ck_assert_uint_eq(info->ndim, c->ndim);
	for (unsigned i = 0; i < c->ndim; i++)
		ck_assert_int_eq(info->shape[i], c->shape[i]);
	ck_assert_uint_eq(info->data_off, data_off);
}

static void parse_ok(const uint8_t *buf, size_t len, const hcase *c)
{
	pf_npy_info info;
	pf_error err;

	pf_error_clear(&err);
	ck_assert_msg(pf_npy_parse(buf, len, &info, &err) == 0, "parse failed: %s (at %llu)",
		      err.msg, (unsigned long long)err.offset);
	check_info(&info, c, len);
}

static int parse_code(const void *buf, size_t len)
{
	pf_npy_info info;
	pf_error err;

	pf_error_clear(&err);
	if (pf_npy_parse(buf, len, &info, &err) == 0)
		return PF_OK;
	ck_assert_int_ne(err.code, PF_OK);
	return (int)err.code;
}

/* A 1.0 header around dict text `d` (no padding), into buf; returns its length. */
static size_t wrap_v1(const char *d, size_t dlen, uint8_t *buf)
{
	memcpy(buf, "\x93NUMPY\x01\x00", 8);
	buf[8] = (uint8_t)(dlen & 0xff);
	buf[9] = (uint8_t)(dlen >> 8);
	memcpy(buf + 10, d, dlen);
	return 10 + dlen;
}

static int parse_dict_code(const char *d)
{
	uint8_t buf[20000];

	return parse_code(buf, wrap_v1(d, strlen(d), buf));
}

/* ------------------------------------------------------------------ writer tests */

/* Every table case: our header == numpy's _write_array_header (and np.save's). */
START_TEST(test_header_matches_numpy)
{
	static hcase cases[MAX_CASES];
	unsigned n = make_cases(cases);
	size_t cap = (size_t)n * 300 + 64, o = 0;
	char *input = malloc(cap), *out, *line, *save;
	tmpdir t;

	ck_assert_ptr_nonnull(input);
	for (unsigned i = 0; i < n; i++) {
		case_line(&cases[i], input + o, cap - o);
		o += strlen(input + o);
	}
	tmp_open(&t);
	write_input(&t, input);
	out = py_run(&t, "hdr", t.input);
	line = strtok_r(out, "\n", &save);
	for (unsigned i = 0; i < n; i++) {
		char ours[2048], ours_hex[4200], f1[4200], f2[4200], f3[4200], f4[4200];
		uint8_t theirs[2048];
		size_t len = 0, len2 = 0;
		pf_error err;

		ck_assert_msg(line != NULL, "numpy gave %u lines for %u cases", i, n);
		ck_assert_int_eq(sscanf(line, "%4199s %4199s %4199s %4199s", f1, f2, f3, f4), 4);
		pf_error_clear(&err);
		ck_assert_int_eq(pf_npy_header(NULL, 0, &len, cases[i].descr, cases[i].shape,
					       cases[i].ndim, cases[i].fortran, &err), 0);
		ck_assert_int_eq(pf_npy_header(ours, sizeof(ours), &len2, cases[i].descr,
					       cases[i].shape, cases[i].ndim, cases[i].fortran,
					       &err), 0);
		ck_assert_uint_eq(len, len2);
		ck_assert_uint_eq(len % 64, 0);
		hex((const uint8_t *)ours, len, ours_hex);
		ck_assert_msg(strcmp(ours_hex, f1) == 0, "case %u (%s ndim %u): header differs\n"
			      "ours:  %s\nnumpy: %s", i, cases[i].descr, cases[i].ndim, ours_hex, f1);
		if (strcmp(f2, "-") != 0)
			ck_assert_msg(strcmp(ours_hex, f2) == 0, "case %u: np.save header differs", i);
		/* numpy's own headers, all versions, parse to the case */
		parse_ok(theirs, unhex(f1, strlen(f1), theirs, sizeof(theirs)), &cases[i]);
		parse_ok(theirs, unhex(f3, strlen(f3), theirs, sizeof(theirs)), &cases[i]);
		parse_ok(theirs, unhex(f4, strlen(f4), theirs, sizeof(theirs)), &cases[i]);
		if (strcmp(f2, "-") != 0)
			parse_ok(theirs, unhex(f2, strlen(f2), theirs, sizeof(theirs)), &cases[i]);
		/* and our own round trips */
		parse_ok((const uint8_t *)ours, len, &cases[i]);
		line = strtok_r(NULL, "\n", &save);
	}
	ck_assert_ptr_null(line);
	free(out);
	free(input);
	tmp_close(&t);
}
END_TEST

/*
 * pf_npy_header cannot need 2.0 (PF_NPY_MAX_DIMS and PF_NPY_DESCR_MAX keep
 * the dict far below 64 KiB), so build a 2.0 header by hand with numpy's
 * _wrap_header rule, have numpy read it, and parse it.  (The "hdr" test
 * above also parses numpy's own 2.0 and 3.0 output for every case.)
 */
START_TEST(test_v2_by_hand_numpy_accepts)
{
	char d[2048], v2[2048], line[5000], expect[1024];
	size_t dlen, pad, total, hfield, e;
	hcase c;
	tmpdir t;
	char *out;

	memset(&c, 0, sizeof(c));
	strcpy(c.descr, "<f4");
	c.fortran = true;
	c.ndim = 20;
	dlen = (size_t)sprintf(d, "{'descr': '<f4', 'fortran_order': True, 'shape': (");
	e = (size_t)sprintf(expect, "1 1 ");
	for (unsigned i = 0; i < c.ndim; i++) {
		c.shape[i] = ((int64_t)1 << 40) + i;
		dlen += (size_t)sprintf(d + dlen, "%s%lld", i ? ", " : "", (long long)c.shape[i]);
		e += (size_t)sprintf(expect + e, "%s%lld", i ? "," : "", (long long)c.shape[i]);
	}
	strcpy(expect + e, "\n");
	dlen += (size_t)sprintf(d + dlen, "), }%8s", ""); /* 21 - 13 growth spaces */
	pad = 64 - (12 + dlen + 1) % 64;
	hfield = dlen + pad + 1;
	total = 12 + hfield;
	memcpy(v2, "\x93NUMPY\x02\x00", 8);
	for (unsigned i = 0; i < 4; i++)
		v2[8 + i] = (char)(hfield >> (8 * i));
	memcpy(v2 + 12, d, dlen);
	memset(v2 + 12 + dlen, ' ', pad);
	v2[total - 1] = '\n';
	ck_assert_uint_eq(total % 64, 0);
	parse_ok((const uint8_t *)v2, total, &c);

	tmp_open(&t);
	hex((const uint8_t *)v2, total, line);
	strcat(line, "\n");
	write_input(&t, line);
	out = py_run(&t, "check", t.input);
	ck_assert_str_eq(out, expect);
	free(out);
	tmp_close(&t);
}
END_TEST

static void load_case(const char *descr, const int64_t *shape, unsigned ndim, bool fortran,
		      const void *data, size_t dlen, const char *expect)
{
	char hdr[2048], path[128];
	size_t len;
	pf_error err;
	tmpdir t;
	FILE *f;
	char *out;

	pf_error_clear(&err);
	ck_assert_int_eq(pf_npy_header(hdr, sizeof(hdr), &len, descr, shape, ndim, fortran,
				       &err), 0);
	tmp_open(&t);
	snprintf(path, sizeof(path), "%s/a.npy", t.dir);
	f = fopen(path, "wb");
	ck_assert_ptr_nonnull(f);
	ck_assert_uint_eq(fwrite(hdr, 1, len, f), len);
	if (dlen)
		ck_assert_uint_eq(fwrite(data, 1, dlen, f), dlen);
	ck_assert_int_eq(fclose(f), 0);
	out = py_run(&t, "load", path);
	ck_assert_str_eq(out, expect);
	free(out);
	unlink(path);
	tmp_close(&t);
}

START_TEST(test_numpy_load)
{
	float fl[6] = { 0, 1, 2, 3, 4, 5 };
	int32_t be[3] = { (int32_t)0x01000000, (int32_t)0x02000000, (int32_t)0x03000000 };
	uint8_t bools[4] = { 1, 0, 0, 1 };
	double d = 2.5;
	int64_t s23[2] = { 2, 3 }, s3[1] = { 3 }, s4[1] = { 4 }, s0[1] = { 0 };

	load_case("<f4", s23, 2, false, fl, sizeof(fl), "<f4 2,3 0 [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]\n");
	load_case("<f4", s23, 2, true, fl, sizeof(fl), "<f4 2,3 1 [0.0, 2.0, 4.0, 1.0, 3.0, 5.0]\n");
	load_case(">i4", s3, 1, false, be, sizeof(be), ">i4 3 0 [1, 2, 3]\n");
	load_case("|b1", s4, 1, false, bools, sizeof(bools), "|b1 4 0 [True, False, False, True]\n");
	load_case("<f8", NULL, 0, false, &d, sizeof(d), "<f8  0 [2.5]\n");
	load_case("<f4", s0, 1, false, NULL, 0, "<f4 0 0 []\n");
}
END_TEST

START_TEST(test_header_errors)
{
	int64_t s[PF_NPY_MAX_DIMS + 1] = { 0 };
	char buf[4096];
	size_t len = 12345;
	pf_error err;

	pf_error_clear(&err);
	ck_assert_int_eq(pf_npy_header(buf, sizeof(buf), &len, "<f4", s, PF_NPY_MAX_DIMS + 1,
				       false, &err), -1);
	ck_assert_int_eq(err.code, PF_E_LIMIT);
	s[1] = -1;
	pf_error_clear(&err);
	ck_assert_int_eq(pf_npy_header(buf, sizeof(buf), &len, "<f4", s, 2, false, &err), -1);
	ck_assert_int_eq(err.code, PF_E_LIMIT);
	s[1] = 3;
	pf_error_clear(&err);
	ck_assert_int_eq(pf_npy_header(buf, 64, &len, "<f4", s, 2, false, &err), -1);
	ck_assert_int_eq(err.code, PF_E_FORMAT);
	ck_assert_uint_eq(len, 128); /* "{'descr': '<f4', ...}" + 21 growth spaces > 64 */
	pf_error_clear(&err);
	ck_assert_int_eq(pf_npy_header(buf, 128, &len, "<f4", s, 2, false, &err), 0);
	ck_assert_uint_eq(len, 128);
	pf_error_clear(&err);
	ck_assert_int_eq(pf_npy_header(buf, sizeof(buf), &len, "<f4'", s, 2, false, &err), -1);
	ck_assert_int_eq(err.code, PF_E_FORMAT);
	pf_error_clear(&err);
	ck_assert_int_eq(pf_npy_header(buf, sizeof(buf), &len, "", s, 2, false, &err), -1);
	ck_assert_int_eq(err.code, PF_E_FORMAT);
	pf_error_clear(&err);
	ck_assert_int_eq(pf_npy_header(buf, sizeof(buf), &len,
				       "<VVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVV", s, 2, false, &err), -1);
	ck_assert_int_eq(err.code, PF_E_FORMAT);
	pf_error_clear(&err);
	ck_assert_int_eq(pf_npy_header(buf, sizeof(buf), &len, "<i3", s, 2, false, &err), -1);
	ck_assert_int_eq(err.code, PF_E_FORMAT);
}
END_TEST

/* ------------------------------------------------------------------ parser tests */

/* Unusual but valid spellings: ours must agree with numpy's reader exactly. */
static const char *const dict_variants[] = {
	"{'descr':'<f4','fortran_order':False,'shape':(2,3)}",
	"{'shape': (2, 3), 'fortran_order': True, 'descr': '>i8', }",
	"{'fortran_order': False, 'descr': '|b1', 'shape': ()}",
	"{'fortran_order': False, 'descr': '|b1', 'shape': ( )}",
	"\n  \n{'descr':'<f4','fortran_order':False,'shape':(2,3)}\n",
	"  # c\n{'descr':'<f4','fortran_order':False,'shape':(2,3)}",
	"\\\n{'descr':'<f4','fortran_order':False,'shape':(2,3)}",
	"\r\n{'descr':'<f4','fortran_order':False,'shape':(2,3)}",
	"\t\n \n\t\n{'descr':'<f4','fortran_order':False,'shape':(2,3)}",
	"{'descr':'<f4','fortran_order':False,'shape':(2,3)} \\\n  ",
	"{'descr':'<f4','fortran_order':False,'shape':(2,3)} \\\n\n",
	"{'descr':'<f4','fortran_order':False,'shape':(2,3)} #c",
	"{'descr':'<f4','fortran_order':False,'shape':(2,3)}\r",
	"{'descr':'<f4','fortran_order':False,'shape':(2,3)}\r\n \r\n",
	"{'descr':'<f4','fortran_order':False,'shape':(2,3)}\n  \n",
	"{'descr':'<f4','fortran_order':False,'shape':(2,3)}\n  #c",
	"{'descr':'<f4','fortran_order':False,'shape':(2,3)}\n#c",
	"{'descr':'<f4','fortran_order':False,'shape':(2,3)}\f",
	" \t{'descr':'<f4','fortran_order':False,'shape':(2,3)}",
	"{'descr':'<f4',\f'fortran_order':False,'shape':(2,3)}",
	"{'descr':'<f4',\r'fortran_order':False,'shape':(2,3)}\r",
	"{'descr':'<f4', # c\n'fortran_order':False,'shape':(2,3)} # x",
	"{'descr':'<f4','fortran_order':False,'shape':(2,3),\\\n}",
	"{'descr':'<f4','fortran_order':False,'shape':(2L,3L)}",
	"{'descr':'<f4','fortran_order':False,'shape':(2 L,3)}",
	"{'descr':'<f4','fortran_order':False,'shape':(+2,3)}",
	"{'descr':'<f4','fortran_order':False,'shape':(0x2,1_0,0o7,0b11,0X_f)}",
	"{'descr':'<f4','fortran_order':False,'shape':(00,3)}",
	"{'descr':'<f4','fortran_order':False,'shape':(True,False)}",
	"{'descr':'<f4','fortran_order':False,'shape':(5,)}",
	"{'descr':'<f4','fortran_order':False,'shape':(2,3),'descr':'<i8'}",
	"{\"descr\":\"<f4\",'fortran_order':False,'shape':(2,3)}",
	"{u'descr':'<f4','fortran_order':False,'shape':(2,3)}",
	"{'descr':'f4','fortran_order':False,'shape':(2,3)}",
	"{'descr':'|V0','fortran_order':False,'shape':(2,3)}",
	"{'descr':'<m8[10ms]','fortran_order':False,'shape':(2,3)}",
	"{'descr':'<U0','fortran_order':False,'shape':(2,3)}",
	"{'descr':'S','fortran_order':False,'shape':(2,3)}",
	"{'descr':'|O','fortran_order':False,'shape':(2,3)}",
	"{'descr':'<?','fortran_order':False,'shape':(2,3)}",
	"{'descr':'<f16','fortran_order':False,'shape':(2,3)}",
	/* rejected by both */
	"\n {'descr':'<f4','fortran_order':False,'shape':(2,3)}\n",
	"\n\t{'descr':'<f4','fortran_order':False,'shape':(2,3)}",
	"\r\n {'descr':'<f4','fortran_order':False,'shape':(2,3)}",
	"\r{'descr':'<f4','fortran_order':False,'shape':(2,3)}",
	"#x\r {'descr':'<f4','fortran_order':False,'shape':(2,3)}",
	"\\\n {'descr':'<f4','fortran_order':False,'shape':(2,3)}",
	"{'descr':'<f4','fortran_order':False,'shape':(2,3)}\n  x",
	"{'descr':'<f4','fortran_order':False,'shape':(2,3)} \\\n",
	"{'descr':'<f4','fortran_order':False,'shape':(2,3)}\\",
	"{'descr':'<f4','fortran_order':False,'shape':(2,3)}\r ",
	"{'descr':'<f4','fortran_order':False,'shape':(02,3)}",
	"{'descr':'<f4',\v'fortran_order':False,'shape':(2,3)}",
	"{'descr':'<f4','fortran_order':False,'shape':(2,3,,)}",
	"{'descr':'<f4','fortran_order':False,'shape':(,)}",
	"{'descr':'<f4','fortran_order':False,'shape':(2,3),,}",
	"{'descr':'<f4','fortran_order':False,'shape':(2,3)}x",
	"{'descr':'<f4','fortran_order':False,'shape':(5)}",
	"{'descr':'<f4','fortran_order':False,'shape':[5]}",
	"{'descr':'<f4','fortran_order':False,'shape':(2.0,3)}",
	"{'descr':'<f4','fortran_order':False,'shape':(2j,3)}",
	"{'descr':'<f4','fortran_order':False,'shape':(1__0,3)}",
	"{'descr':'<f4','fortran_order':False,'shape':(10_,3)}",
	"{'descr':'<f4','fortran_order':False,'shape':(0b2,3)}",
	"{'descr':'<f4','fortran_order':False,'shape':(2Lx,3)}",
	"{'descr':'<f4','fortran_order':False,'shape':(2,3),'extra':1}",
	"{'descr':'<f4','fortran_order':False}",
	"{'descr':'<f4','shape':(2,3)}",
	"{'fortran_order':False,'shape':(2,3)}",
	"{'descr':'<f4','fortran_order':0,'shape':(2,3)}",
	"{'descr':'<f4','fortran_order':Truex,'shape':(2,3)}",
	"{'descr':'<f4','fortran_order':false,'shape':(2,3)}",
	"{'descr':'<f3','fortran_order':False,'shape':(2,3)}",
	"{'descr':'<i16','fortran_order':False,'shape':(2,3)}",
	"{'descr':'<M[ns]','fortran_order':False,'shape':(2,3)}",
	"{'descr':'<M8[]','fortran_order':False,'shape':(2,3)}",
	"{'descr':'','fortran_order':False,'shape':(2,3)}",
	"{'descr':'<f4','fortran_order':False 'shape':(2,3)}",
	"{'descr' '<f4','fortran_order':False,'shape':(2,3)}",
	"{'descr':'<f4','fortran_order':False,'shape':(2,3)",
	"{'descr':'<f4,'fortran_order':False,'shape':(2,3)}",
	"{b'descr':'<f4','fortran_order':False,'shape':(2,3)}",
	"{,}",
	"{}",
	"",
	"   ",
	"[]",
	"('descr', '<f4')",
};

START_TEST(test_parse_agrees_with_numpy)
{
	size_t n = sizeof(dict_variants) / sizeof(dict_variants[0]);
	size_t cap = 64, o = 0;
	char *input, *out, *line, *save;
	tmpdir t;

	for (size_t i = 0; i < n; i++)
		cap += 2 * strlen(dict_variants[i]) + 2;
	input = malloc(cap);
	ck_assert_ptr_nonnull(input);
	for (size_t i = 0; i < n; i++) {
		hex((const uint8_t *)dict_variants[i], strlen(dict_variants[i]), input + o);
		o += strlen(input + o);
		/* an empty header is an empty hex line: mark it so the line survives */
		if (dict_variants[i][0] == '\0') {
			strcpy(input + o, "20");
			o += 2;
		}
		input[o++] = '\n';
		input[o] = '\0';
	}
	tmp_open(&t);
	write_input(&t, input);
	out = py_run(&t, "accept", t.input);
	line = strtok_r(out, "\n", &save);
	for (size_t i = 0; i < n; i++) {
		const char *d = dict_variants[i][0] ? dict_variants[i] : " ";
		uint8_t buf[4096];
		size_t len = wrap_v1(d, strlen(d), buf);
		pf_npy_info info;
		pf_error err;
		char mine[2048];
		int rc;

		ck_assert_ptr_nonnull(line);
		pf_error_clear(&err);
		rc = pf_npy_parse(buf, len, &info, &err);
		if (rc == 0) {
			size_t m = (size_t)snprintf(mine, sizeof(mine), "1 %d ", info.fortran ? 1 : 0);

			for (unsigned k = 0; k < info.ndim; k++)
				m += (size_t)snprintf(mine + m, sizeof(mine) - m, "%s%lld",
						      k ? "," : "", (long long)info.shape[k]);
			ck_assert_uint_eq(info.data_off, len);
		} else {
			ck_assert_int_eq(err.code, PF_E_FORMAT);
			strcpy(mine, "0");
		}
		ck_assert_msg(strcmp(mine, line) == 0, "variant %zu %s: ours '%s' numpy '%s' (%s)",
			      i, d, mine, line, err.msg);
		line = strtok_r(NULL, "\n", &save);
	}
	free(out);
	free(input);
	tmp_close(&t);
}
END_TEST

/* Documented strictness: numpy's reader lets these through, we refuse them. */
START_TEST(test_parse_stricter_than_numpy)
{
	ck_assert_int_eq(parse_dict_code("{'descr':'<f4','fortran_order':False,'shape':(-2,3)}"),
			 PF_E_FORMAT);
	ck_assert_int_eq(parse_dict_code("{'descr':'<f4','fortran_order':False,'shape':(-0,)}"),
			 PF_E_FORMAT);
	ck_assert_int_eq(parse_dict_code(
				 "{'descr':'<f4','fortran_order':False,'shape':(9223372036854775808,)}"),
			 PF_E_FORMAT);
	ck_assert_int_eq(parse_dict_code(
				 "{'descr':'<f4','fortran_order':False,'shape':(9223372036854775807,)}"),
			 PF_OK);
	ck_assert_int_eq(parse_dict_code("{'descr':'<f4','fortran_order':False,'shape':((2,3))}"),
			 PF_E_FORMAT);
	ck_assert_int_eq(parse_dict_code("{'descr':'float32','fortran_order':False,'shape':()}"),
			 PF_E_FORMAT);
	ck_assert_int_eq(parse_dict_code("{'descr':'<f\\x34','fortran_order':False,'shape':()}"),
			 PF_E_FORMAT);
	/* form feeds and indented last lines outside the dict (numpy: version-dependent) */
	ck_assert_int_eq(parse_dict_code("\f{'descr':'<f4','fortran_order':False,'shape':()}"),
			 PF_E_FORMAT);
	ck_assert_int_eq(parse_dict_code("{'descr':'<f4','fortran_order':False,'shape':()}\n "),
			 PF_E_FORMAT);
	ck_assert_int_eq(parse_dict_code("{'descr':'<f4','fortran_order':False,'shape':()}\n\f"),
			 PF_E_FORMAT);
}
END_TEST

START_TEST(test_parse_structured_unsupported)
{
	ck_assert_int_eq(parse_dict_code("{'descr':[('a','<f4'),('b',\"|u1\",(2,))],"
					 "'fortran_order':False,'shape':(2,3)}"),
			 PF_E_UNSUPPORTED);
	ck_assert_int_eq(parse_dict_code("{'fortran_order':False,'shape':(2,),"
					 "'descr':[('a]\\'','<f4')], }"),
			 PF_E_UNSUPPORTED);
	ck_assert_int_eq(parse_dict_code("{'descr':('<f4',(2,)),'fortran_order':False,'shape':()}"),
			 PF_E_UNSUPPORTED);
	/* a structured descr followed by a simple one: the last wins, as in Python */
	ck_assert_int_eq(parse_dict_code("{'descr':[('a','<f4')],'fortran_order':False,"
					 "'shape':(),'descr':'<f4'}"),
			 PF_OK);
	ck_assert_int_eq(parse_dict_code("{'descr':[('a','<f4'),'fortran_order':False,'shape':()}"),
			 PF_E_FORMAT);
	ck_assert_int_eq(parse_dict_code("{'descr':[('a','<f4')"), PF_E_FORMAT);
}
END_TEST

START_TEST(test_parse_truncated)
{
	int64_t s[3] = { 7, 8, 9 };
	uint8_t buf[256];
	size_t len;
	pf_error err;
	hcase c;

	pf_error_clear(&err);
	ck_assert_int_eq(pf_npy_header((char *)buf, sizeof(buf), &len, "<f4", s, 3, false, &err), 0);
	for (size_t k = 0; k < len; k++)
		ck_assert_msg(parse_code(buf, k) == PF_E_TRUNCATED, "prefix of %zu bytes", k);
	ck_assert_int_eq(parse_code(NULL, 0), PF_E_TRUNCATED);
	/* data after the header is fine, data_off still the header length */
	memset(&c, 0, sizeof(c));
	strcpy(c.descr, "<f4");
	c.ndim = 3;
	memcpy(c.shape, s, sizeof(s));
	{
		pf_npy_info info;

		pf_error_clear(&err);
		ck_assert_int_eq(pf_npy_parse(buf, sizeof(buf), &info, &err), 0);
		check_info(&info, &c, len);
	}
}
END_TEST

START_TEST(test_parse_malformed)
{
	int64_t s[2] = { 2, 3 };
	uint8_t good[128], b[128];
	size_t len;
	pf_error err;

	pf_error_clear(&err);
	ck_assert_int_eq(pf_npy_header((char *)good, sizeof(good), &len, "<f4", s, 2, false, &err),
			 0);
	/* bad magic, also when only its first bytes are there */
	memcpy(b, good, len);
	b[5] = 'Z';
	ck_assert_int_eq(parse_code(b, len), PF_E_FORMAT);
	ck_assert_int_eq(parse_code(b, 6), PF_E_FORMAT);
	ck_assert_int_eq(parse_code("X", 1), PF_E_FORMAT);
	ck_assert_int_eq(parse_code("PK\x03\x04", 4), PF_E_FORMAT);
	/* versions */
	memcpy(b, good, len);
	b[6] = 4;
	ck_assert_int_eq(parse_code(b, len), PF_E_FORMAT);
	b[6] = 0;
	ck_assert_int_eq(parse_code(b, len), PF_E_FORMAT);
	b[6] = 1;
	b[7] = 1;
	ck_assert_int_eq(parse_code(b, len), PF_E_FORMAT);
	/* header length beyond numpy's 10000-character limit, and 2.0 lengths near 4 GiB */
	memcpy(b, good, len);
	b[8] = 0x11;
	b[9] = 0x27; /* 10001 */
	ck_assert_int_eq(parse_code(b, len), PF_E_FORMAT);
	b[9] = 0x27;
	b[8] = 0x10; /* 10000: allowed, so more bytes are needed */
	ck_assert_int_eq(parse_code(b, len), PF_E_TRUNCATED);
	memcpy(b, "\x93NUMPY\x02\x00\xff\xff\xff\xff", 12);
	ck_assert_int_eq(parse_code(b, 12), PF_E_FORMAT);
	/* header length shorter than the dict */
	memcpy(b, good, len);
	b[8] = 20;
	ck_assert_int_eq(parse_code(b, len), PF_E_FORMAT);
	/* NUL and non-ASCII bytes in the dict */
	memcpy(b, good, len);
	b[len - 2] = '\0';
	ck_assert_int_eq(parse_code(b, len), PF_E_FORMAT);
	b[len - 2] = 0xa0;
	ck_assert_int_eq(parse_code(b, len), PF_E_FORMAT);
	/* 3.0 requires UTF-8: a comment with bad UTF-8 is refused, good UTF-8 passes */
	{
		const char *d3 = "{'descr':'<f4','fortran_order':False,'shape':(2,)} # \xc3\xa9\n";
		const char *d3bad = "{'descr':'<f4','fortran_order':False,'shape':(2,)} # \xc3\n";
		size_t n3 = strlen(d3), n3b = strlen(d3bad);

		memcpy(b, "\x93NUMPY\x03\x00", 8);
		b[8] = (uint8_t)n3;
		b[9] = b[10] = b[11] = 0;
		memcpy(b + 12, d3, n3);
		ck_assert_int_eq(parse_code(b, 12 + n3), PF_OK);
		b[8] = (uint8_t)n3b;
		memcpy(b + 12, d3bad, n3b);
		ck_assert_int_eq(parse_code(b, 12 + n3b), PF_E_FORMAT);
	}
	/* a NUL inside the descr string */
	{
		static const char d[] = "{'descr':'\0f2','fortran_order':False,'shape':(2,)}";
		uint8_t w[128];

		ck_assert_int_eq(parse_code(w, wrap_v1(d, sizeof(d) - 1, w)), PF_E_FORMAT);
		ck_assert_int_eq(parse_code(w, wrap_v1(d, 11, w)), PF_E_FORMAT);
	}
	/* junk, bad dicts */
	ck_assert_int_eq(parse_dict_code("{'descr':'<f4','fortran_order':False,'shape':(2,3)}}"),
			 PF_E_FORMAT);
	ck_assert_int_eq(parse_dict_code("{'descr':'<f4','fortran_order':False,'shape':(2,3)} 0"),
			 PF_E_FORMAT);
	ck_assert_int_eq(parse_dict_code("{'descr':'<f4','fortran_order':False,'shape':(2,-3)}"),
			 PF_E_FORMAT);
	ck_assert_int_eq(parse_dict_code("{'descr':'<f4','fortran_order':False,'shape':(99999999999999999999,)}"),
			 PF_E_FORMAT);
	ck_assert_int_eq(parse_dict_code("{'descr':'<f4','fortran_order':False,'shape':(0x8000000000000000,)}"),
			 PF_E_FORMAT);
	ck_assert_int_eq(parse_dict_code("{'descr':'<f4','fortran_order':False,'shape':(0x7fffffffffffffff,)}"),
			 PF_OK);
	ck_assert_int_eq(parse_dict_code("{'descr':'<f4','fortran_order':False,'shape':(2,3)"),
			 PF_E_FORMAT);
	ck_assert_int_eq(parse_dict_code("{'descr':'<f4','fortran_order':False,'shape':(2,3)\n"),
			 PF_E_FORMAT);
	ck_assert_int_eq(parse_dict_code("{'descr':'<f4\n','fortran_order':False,'shape':(2,3)}"),
			 PF_E_FORMAT);
	ck_assert_int_eq(parse_dict_code("{'descr':'<f4','fortran_order':False,'shape':(2,3"),
			 PF_E_FORMAT);
	ck_assert_int_eq(parse_dict_code("{'descr':'<f4','fortran_order':Fal"), PF_E_FORMAT);
	ck_assert_int_eq(parse_dict_code("{'descr':'<f4"), PF_E_FORMAT);
	ck_assert_int_eq(parse_dict_code("{'descr'"), PF_E_FORMAT);
	ck_assert_int_eq(parse_dict_code("{"), PF_E_FORMAT);
	ck_assert_int_eq(parse_dict_code("{'descr':'<aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa',"
					 "'fortran_order':False,'shape':(2,3)}"),
			 PF_E_FORMAT);
	/* 64 dims are fine, 65 are not */
	{
		char d[1024];
		size_t o = (size_t)sprintf(d, "{'descr':'<f4','fortran_order':False,'shape':(");

		for (int i = 0; i < PF_NPY_MAX_DIMS; i++)
			o += (size_t)sprintf(d + o, "1,");
		strcpy(d + o, ")}");
		ck_assert_int_eq(parse_dict_code(d), PF_OK);
		strcpy(d + o, "1)}");
		ck_assert_int_eq(parse_dict_code(d), PF_E_FORMAT);
	}
	/* a long run of whitespace (bounded by the 10000-byte limit) */
	{
		static char d[10001];

		memset(d, ' ', sizeof(d) - 1);
		memcpy(d, "{'descr':'<f4','fortran_order':False,'shape':()}", 48);
		d[sizeof(d) - 1] = '\0';
		ck_assert_int_eq(parse_dict_code(d), PF_OK);
	}
}
END_TEST

/* Every byte flip of a good header must be parsed or refused, never crash. */
START_TEST(test_parse_mutations)
{
	int64_t s[3] = { 12, 34, 56 };
	uint8_t good[256], b[256];
	size_t len;
	pf_error err;
	uint64_t seed = 42;

	pf_error_clear(&err);
	ck_assert_int_eq(pf_npy_header((char *)good, sizeof(good), &len, "<c16", s, 3, true, &err),
			 0);
	for (unsigned r = 0; r < 20000; r++) {
		unsigned flips = 1 + (unsigned)(rng_next(&seed) % 4);
		int code;

		memcpy(b, good, len);
		for (unsigned k = 0; k < flips; k++)
			b[rng_next(&seed) % len] = (uint8_t)rng_next(&seed);
		code = parse_code(b, len);
		ck_assert(code == PF_OK || code == PF_E_FORMAT || code == PF_E_TRUNCATED ||
			  code == PF_E_UNSUPPORTED);
	}
}
END_TEST

static Suite *npy_suite(void)
{
	Suite *s = suite_create("npy");
	TCase *numpy = tcase_create("numpy");
	TCase *local = tcase_create("local");

	tcase_set_timeout(numpy, 120);
	tcase_add_test(numpy, test_header_matches_numpy);
	tcase_add_test(numpy, test_v2_by_hand_numpy_accepts);
	tcase_add_test(numpy, test_numpy_load);
	tcase_add_test(numpy, test_parse_agrees_with_numpy);
	suite_add_tcase(s, numpy);
	tcase_add_test(local, test_header_errors);
	tcase_add_test(local, test_parse_stricter_than_numpy);
	tcase_add_test(local, test_parse_structured_unsupported);
	tcase_add_test(local, test_parse_truncated);
	tcase_add_test(local, test_parse_malformed);
	tcase_add_test(local, test_parse_mutations);
	suite_add_tcase(s, local);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(npy_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
