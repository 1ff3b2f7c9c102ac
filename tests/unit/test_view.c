/*
 * Unit tests of the mount's view of a model and of its index-cache
 * encoding (codec/view.c).  Model files are made at test time by the real
 * Python pickle, numpy and torch (/usr/bin/python3); the expected .npy
 * files come from numpy.save, never from the code under test.
 */
#include <check.h>
#include <dirent.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "meta.h"
#include "model.h"
#include "npy.h"
#include "view.h"
#include "testutil.h"

/* ------------------------------------------------------------------ helpers */


#define PREAMBLE                                                                           \
	"import sys, io, pickle, torch, numpy as np\nout = sys.stdout.buffer\n"            \
	"def put(b):\n    out.write(len(b).to_bytes(8, 'little')); out.write(b)\n"         \
	"def npy(a):\n    b = io.BytesIO(); np.save(b, a); put(b.getvalue())\n"

/* Item k of a stream of put() records. */
static const uint8_t *record(const uint8_t *buf, size_t len, unsigned k, size_t *n)
{
	size_t pos = 0;
	for (;;) {
		ck_assert_uint_le(pos + 8, len);
		uint64_t l = 0;
		for (int i = 7; i >= 0; i--)
			l = (l << 8) | buf[pos + (size_t)i];
		ck_assert_uint_le(l, len - pos - 8);
		if (k-- == 0) {
			*n = l;
			return buf + pos + 8;
		}
		pos += 8 + l;
	}
}

typedef struct fixture {
	uint8_t *data;
	size_t len;
	pf_model m;
	pf_tree t;
	pf_view v;
	pf_view_key key;
} fixture;

static void build_fixture(fixture *fx)
{
	pf_error err = {0};
	ck_assert_msg(pf_model_open(&fx->m, fx->data, fx->len, NULL, &err) == 0, "model: %s at %llu",
		      err.msg, (unsigned long long)err.offset);
	ck_assert_msg(pf_tree_build(&fx->m, &fx->t, &err) == 0, "tree: %s", err.msg);
	ck_assert_msg(pf_view_build(&fx->m, &fx->t, &fx->v, &err) == 0, "view: %s", err.msg);
	fx->key = (pf_view_key){.dev = 0x803, .ino = 1234567, .size = fx->len,
				.mtime_sec = 1700000000, .mtime_nsec = 123456789};
}

static void open_fixture(fixture *fx, const char *code)
{
	fx->data = pf_test_python(code, NULL, &fx->len);
	build_fixture(fx);
}

static void close_fixture(fixture *fx)
{
	pf_view_free(&fx->v);
	pf_tree_free(&fx->t);
	pf_model_free(&fx->m);
	free(fx->data);
}

/* Entry at a '/'-separated path, found through pf_view_child; -1 if none. */
static int64_t entry_at(const pf_view *v, const char *path)
{
	char comp[512];
	uint32_t dir = 0;
	const char *p = path;
	for (;;) {
		const char *slash = strchr(p, '/');
		size_t n = slash ? (size_t)(slash - p) : strlen(p);
		ck_assert_uint_lt(n, sizeof(comp));
		memcpy(comp, p, n);
		comp[n] = '\0';
		int64_t i = pf_view_child(v, dir, comp);
		if (i < 0 || !slash)
			return i;
		dir = (uint32_t)i;
		p = slash + 1;
	}
}

/* The whole .npy file of a tensor entry: header, then the data (malloc). */
static uint8_t *npy_file(const fixture *fx, const pf_ventry *e)
{
	uint8_t *buf = malloc(e->size ? e->size : 1);
	pf_error err = {0};
	memcpy(buf, e->header, e->header_len);
	if (e->data_off >= 0) {
		ck_assert(!e->needs_model);
		ck_assert_uint_le((uint64_t)e->data_off + e->data_len, fx->len);
		memcpy(buf + e->header_len, fx->data + e->data_off, e->data_len);
	} else {
		ck_assert(e->needs_model);
		ck_assert_uint_lt(e->tensor, fx->m.n_tensors);
		ck_assert_int_eq(pf_tensor_read(&fx->m, &fx->m.tensors[e->tensor], 0, buf + e->header_len,
						e->data_len, &err), 0);
	}
	return buf;
}

/* The entry at path is a tensor whose .npy file is exactly `want`. */
static void assert_npy(const fixture *fx, const char *path, const uint8_t *want, size_t wlen)
{
	int64_t i = entry_at(&fx->v, path);
	ck_assert_msg(i >= 0, "no entry %s", path);
	const pf_ventry *e = &fx->v.e[i];
	ck_assert_int_eq(e->kind, PF_VE_TENSOR);
	ck_assert_uint_eq(e->size, wlen);
	ck_assert_uint_eq(e->size, e->header_len + e->data_len);
	uint8_t *got = npy_file(fx, e);
	ck_assert_msg(memcmp(got, want, e->header_len) == 0, "%s: header differs from numpy's", path);
	ck_assert_msg(memcmp(got, want, wlen) == 0, "%s: data differs from numpy's", path);
	free(got);
}

/* Every field of every entry equal (pointers may differ). */
static void assert_views_equal(const pf_view *a, const pf_view *b)
{
	ck_assert_uint_eq(a->n, b->n);
	for (uint32_t i = 0; i < a->n; i++) {
		const pf_ventry *x = &a->e[i], *y = &b->e[i];
		ck_assert_uint_eq(x->parent, y->parent);
		ck_assert_str_eq(x->name, y->name);
		ck_assert_str_eq(x->path, y->path);
		ck_assert_int_eq(x->kind, y->kind);
		ck_assert_uint_eq(x->size, y->size);
		ck_assert_uint_eq(x->link, y->link);
		ck_assert_int_eq(x->data_off, y->data_off);
		ck_assert_uint_eq(x->data_len, y->data_len);
		ck_assert_int_eq(x->needs_model, y->needs_model);
		ck_assert_int_eq(x->has_mtime, y->has_mtime);
		ck_assert_int_eq(x->mtime_sec, y->mtime_sec);
		ck_assert_int_eq(x->mtime_nsec, y->mtime_nsec);
		if (x->kind == PF_VE_TENSOR) {
			ck_assert_uint_eq(x->tensor, y->tensor);
			ck_assert_uint_eq(x->header_len, y->header_len);
			ck_assert_mem_eq(x->header, y->header, x->header_len);
		} else if (x->kind != PF_VE_DIR) {
			ck_assert_mem_eq(x->text, y->text, x->size);
			ck_assert_int_eq(y->text[y->size], '\0');
		}
	}
}

static uint8_t *encode(const pf_view *v, const pf_view_key *key, size_t *len)
{
	uint8_t *buf;
	pf_error err = {0};
	ck_assert_msg(pf_view_encode(v, key, &buf, len, &err) == 0, "encode: %s", err.msg);
	return buf;
}

/* Decode must fail, with PF_E_FORMAT, leaving an empty view. */
static void assert_rejected(const uint8_t *buf, size_t len, const pf_view_key *key, const char *why)
{
	pf_view v;
	pf_error err = {0};
	ck_assert_msg(pf_view_decode(buf, len, key, &v, &err) != 0, "accepted: %s", why);
	ck_assert_msg(err.code == PF_E_FORMAT, "%s: code %s (%s)", why, pf_code_name(err.code), err.msg);
	ck_assert(err.msg[0] != '\0');
	ck_assert_ptr_null(v.e);
	ck_assert_uint_eq(v.n, 0);
}

/* What a decoded view promises, checked independently of view.c. */
static void assert_view_valid(const pf_view *v, const pf_view_key *key)
{
	pf_error err = {0};
	ck_assert_uint_ge(v->n, 4);
	ck_assert_int_eq(v->e[0].kind, PF_VE_DIR);
	ck_assert_str_eq(v->e[0].name, "");
	ck_assert_str_eq(v->e[0].path, "");
	ck_assert_int_eq(v->e[1].kind, PF_VE_META);
	ck_assert_int_eq(v->e[2].kind, PF_VE_DEVICE);
	ck_assert_int_eq(v->e[3].kind, PF_VE_GLOBALS);
	for (uint32_t i = 1; i < v->n; i++) {
		const pf_ventry *e = &v->e[i];
		ck_assert_uint_lt(e->parent, i);
		ck_assert_int_eq(v->e[e->parent].kind, PF_VE_DIR);
		ck_assert(e->name[0] != '\0' && !strchr(e->name, '/'));
		ck_assert(strcmp(e->name, ".") != 0 && strcmp(e->name, "..") != 0);
		ck_assert_int_eq(pf_view_child(v, e->parent, e->name), i); /* no duplicates */
		char want[4096];
		if (e->parent == 0)
			snprintf(want, sizeof(want), "%s", e->name);
		else
			snprintf(want, sizeof(want), "%s/%s", v->e[e->parent].path, e->name);
		ck_assert_str_eq(e->path, want);
		if (e->kind == PF_VE_TENSOR) {
			pf_npy_info h;
			ck_assert_uint_le(e->link, i);
			ck_assert_int_eq(v->e[e->link].kind, PF_VE_TENSOR);
			ck_assert_int_eq(pf_npy_parse(e->header, e->header_len, &h, &err), 0);
			ck_assert_uint_eq(h.data_off, e->header_len);
			ck_assert_uint_eq(e->size, e->header_len + e->data_len);
			ck_assert_int_eq(e->needs_model, e->data_off < 0);
			if (e->data_off >= 0)
				ck_assert_uint_le((uint64_t)e->data_off + e->data_len, key->size);
		} else if (e->kind != PF_VE_DIR) {
			ck_assert_uint_eq(strlen(e->text) <= e->size, 1);
		}
	}
}

/* Encode, decode with the same key, compare. */
static void assert_round_trip(const pf_view *v, const pf_view_key *key)
{
	size_t len;
	uint8_t *buf = encode(v, key, &len);
	pf_view back;
	pf_error err = {0};
	ck_assert_msg(pf_view_decode(buf, len, key, &back, &err) == 0, "decode: %s", err.msg);
	assert_views_equal(v, &back);
	assert_view_valid(&back, key);
	pf_view_free(&back);
	free(buf);
}

/* ------------------------------------------------------------------ build */

#define STATE_DICT                                                                         \
	"base = torch.arange(12, dtype=torch.float32).reshape(3, 4)\n"                       \
	"w = torch.linspace(-1, 1, 6, dtype=torch.float64)\n"                                 \
	"sd = {'enc.weight': w, 'enc.t': base.t(), 'dec.weight': w,\n"                        \
	"      'bias': torch.arange(5, dtype=torch.int64)}\n"

static void open_state_dict(fixture *fx)
{
	open_fixture(fx, PREAMBLE STATE_DICT "b = io.BytesIO(); torch.save(sd, b); out.write(b.getvalue())\n");
}

/* torch.save of a state_dict: layout, links, headers and data against numpy. */
START_TEST(state_dict_view)
{
	fixture fx;
	open_state_dict(&fx);
	static const struct {
		const char *path;
		pf_ventry_kind kind;
		uint32_t parent;
	} want[] = {
		{"", PF_VE_DIR, 0},           {"meta.json", PF_VE_META, 0},
		{"device", PF_VE_DEVICE, 0},  {"globals", PF_VE_GLOBALS, 0},
		{"enc", PF_VE_DIR, 0},        {"enc/weight.npy", PF_VE_TENSOR, 4},
		{"enc/t.npy", PF_VE_TENSOR, 4}, {"dec", PF_VE_DIR, 0},
		{"dec/weight.npy", PF_VE_TENSOR, 7}, {"bias.npy", PF_VE_TENSOR, 0},
	};
	const pf_view *v = &fx.v;
	ck_assert_uint_eq(v->n, sizeof(want) / sizeof(want[0]));
	for (uint32_t i = 0; i < v->n; i++) {
		ck_assert_str_eq(v->e[i].path, want[i].path);
		ck_assert_int_eq(v->e[i].kind, want[i].kind);
		ck_assert_uint_eq(v->e[i].parent, want[i].parent);
		if (i > 0)
			ck_assert_int_eq(entry_at(v, want[i].path), i);
	}
	ck_assert_str_eq(v->e[5].name, "weight.npy");
	/* the tied weight: one tensor, two entries */
	ck_assert_uint_eq(v->e[5].link, 5);
	ck_assert_uint_eq(v->e[8].link, 5);
	ck_assert_uint_eq(v->e[8].tensor, v->e[5].tensor);
	ck_assert_uint_eq(v->e[6].link, 6);
	/* torch.save zips store records uncompressed: every tensor is a file range */
	for (uint32_t i = 4; i < v->n; i++)
		if (v->e[i].kind == PF_VE_TENSOR)
			ck_assert(!v->e[i].needs_model && v->e[i].data_off >= 0);
	/* texts are the tree's */
	char *meta = pf_tree_meta_text(&fx.t);
	ck_assert_str_eq(v->e[1].text, meta);
	ck_assert_uint_eq(v->e[1].size, strlen(meta));
	free(meta);
	ck_assert_str_eq(v->e[2].text, "cpu\n");
	ck_assert_str_eq(v->e[2].text, fx.t.device_text);
	ck_assert_str_eq(v->e[3].text, fx.t.globals_text);
	ck_assert_uint_eq(v->e[3].size, strlen(fx.t.globals_text));
	ck_assert_int_eq(pf_view_child(v, 0, "nope"), -1);
	ck_assert_int_eq(pf_view_child(v, 5, "x"), -1);   /* not a directory */
	ck_assert_int_eq(pf_view_child(v, 999, "x"), -1); /* no such entry */
	ck_assert_int_eq(pf_view_child(v, 0, ""), -1);    /* entry 0 is not its own child */

	size_t elen, n;
	uint8_t *expect = pf_test_python(PREAMBLE STATE_DICT
				 "npy(w.numpy()); npy(base.t().numpy()); npy(sd['bias'].numpy())\n",
				 NULL, &elen);
	const uint8_t *r = record(expect, elen, 0, &n);
	assert_npy(&fx, "enc/weight.npy", r, n);
	assert_npy(&fx, "dec/weight.npy", r, n);
	r = record(expect, elen, 1, &n);
	assert_npy(&fx, "enc/t.npy", r, n); /* fortran_order: True, storage bytes as they are */
	ck_assert(memmem(r, n, "'fortran_order': True", 21) != NULL);
	r = record(expect, elen, 2, &n);
	assert_npy(&fx, "bias.npy", r, n);
	free(expect);
	assert_round_trip(&fx.v, &fx.key);
	close_fixture(&fx);
}
END_TEST

#define NUMPY_ARRAYS                                                                       \
	"a = np.arange(6, dtype='<i4').reshape(2, 3)\n"                                      \
	"f = np.asfortranarray(np.arange(12, dtype='<f8').reshape(3, 4))\n"                  \
	"u = np.array([200, 1, 2, 255], dtype=np.uint8)\n"                                   \
	"d = {'a': a, 'sub': {'f': f, 'u': u}}\n"

/* numpy arrays pickled at protocol 2 (latin-1 text: decoded) and 4 (raw bytes: direct). */
static void numpy_pickle(int protocol)
{
	fixture fx;
	char code[1024];
	snprintf(code, sizeof(code), PREAMBLE NUMPY_ARRAYS "pickle.dump(d, out, protocol=%d)\n", protocol);
	open_fixture(&fx, code);
	size_t elen, n;
	uint8_t *expect = pf_test_python(PREAMBLE NUMPY_ARRAYS "npy(a); npy(f); npy(u)\n", NULL, &elen);
	static const char *const paths[] = {"a.npy", "sub/f.npy", "sub/u.npy"};
	for (unsigned k = 0; k < 3; k++) {
		const uint8_t *r = record(expect, elen, k, &n);
		assert_npy(&fx, paths[k], r, n);
		const pf_ventry *e = &fx.v.e[entry_at(&fx.v, paths[k])];
		if (protocol <= 2) {
			ck_assert(e->needs_model);
			ck_assert_int_eq(e->data_off, -1);
		} else {
			ck_assert(!e->needs_model);
			ck_assert_int_ge(e->data_off, 0);
		}
	}
	free(expect);
	ck_assert_int_eq(fx.v.e[entry_at(&fx.v, "sub")].kind, PF_VE_DIR);
	assert_round_trip(&fx.v, &fx.key);
	close_fixture(&fx);
}

START_TEST(numpy_protocol2_needs_model)
{
	numpy_pickle(2);
}
END_TEST

START_TEST(numpy_protocol4_direct)
{
	numpy_pickle(4);
}
END_TEST

/* 10^5 tensor files under 10^4 directories: built and round-tripped quickly. */
START_TEST(many_tensors_are_fast)
{
	enum { N = 100000 };
	static const int64_t shape[1] = {4};
	pf_tensor ts;
	pf_model m;
	pf_tree t;
	memset(&ts, 0, sizeof(ts));
	memset(&m, 0, sizeof(m));
	memset(&t, 0, sizeof(t));
	strcpy(ts.descr, "<f4");
	ts.ndim = 1;
	ts.shape = shape;
	ts.nbytes = 16;
	ts.layout = PF_TL_CONTIGUOUS;
	ts.file_off = 128;
	m.tensors = &ts;
	m.n_tensors = 1;
	m.file_len = 4096;
	char *paths = malloc((size_t)N * 32);
	t.files = calloc(N, sizeof(*t.files));
	for (uint32_t i = 0; i < N; i++) {
		char *p = paths + (size_t)i * 32;
		snprintf(p, 32, "m%u/l%u/w%u.npy", i / 1000, i / 10, i % 10);
		t.files[i].path = p;
		t.files[i].tensor = 0;
		t.files[i].link_of = i % 10 == 9 ? (int32_t)(i - 9) : -1;
	}
	t.n_files = N;
	t.meta = json_object();
	t.device_text = "cpu\n";
	t.globals_text = "";

	pf_view v;
	pf_error err = {0};
	clock_t c0 = clock();
	ck_assert_msg(pf_view_build(&m, &t, &v, &err) == 0, "%s", err.msg);
	double secs = (double)(clock() - c0) / CLOCKS_PER_SEC;
	ck_assert_msg(secs < 5.0, "build took %.2fs", secs);
	ck_assert_uint_eq(v.n, 4 + 100 + 10000 + N);
	int64_t i = entry_at(&v, "m99/l9999/w8.npy");
	ck_assert_int_ge(i, 0);
	ck_assert_str_eq(v.e[i].path, "m99/l9999/w8.npy");
	int64_t j = entry_at(&v, "m99/l9999/w9.npy");
	ck_assert_int_eq(v.e[j].link, entry_at(&v, "m99/l9999/w0.npy"));
	ck_assert_int_eq(v.e[entry_at(&v, "m42")].kind, PF_VE_DIR);
	ck_assert_int_eq(v.e[i].data_off, 128);
	pf_view_key key = {1, 2, 4096, 3, 4};
	c0 = clock();
	size_t len;
	uint8_t *buf = encode(&v, &key, &len);
	pf_view back;
	ck_assert_msg(pf_view_decode(buf, len, &key, &back, &err) == 0, "%s", err.msg);
	secs = (double)(clock() - c0) / CLOCKS_PER_SEC;
	ck_assert_msg(secs < 5.0, "round trip took %.2fs", secs);
	assert_views_equal(&v, &back);
	pf_view_free(&back);
	free(buf);
	pf_view_free(&v);
	json_decref(t.meta);
	free(t.files);
	free(paths);
}
END_TEST

/* A path that reuses a tensor file as a directory, or a path twice, is an error. */
START_TEST(conflicting_paths_fail)
{
	static const int64_t shape[1] = {1};
	pf_tensor ts;
	pf_model m;
	pf_tree t;
	pf_file files[2] = {{"a/b.npy", 0, -1}, {"a/b.npy/c.npy", 0, -1}};
	memset(&ts, 0, sizeof(ts));
	memset(&m, 0, sizeof(m));
	memset(&t, 0, sizeof(t));
	strcpy(ts.descr, "<f4");
	ts.ndim = 1;
	ts.shape = shape;
	ts.nbytes = 4;
	ts.file_off = -1;
	ts.layout = PF_TL_STRIDED;
	m.tensors = &ts;
	m.n_tensors = 1;
	t.files = files;
	t.n_files = 2;
	t.meta = json_object();
	pf_view v;
	pf_error err = {0};
	ck_assert_int_ne(pf_view_build(&m, &t, &v, &err), 0);
	ck_assert_ptr_null(v.e);
	files[1].path = "a/b.npy";
	pf_error_clear(&err);
	ck_assert_int_ne(pf_view_build(&m, &t, &v, &err), 0);
	files[1].path = "a/c.npy";
	files[1].tensor = 7; /* no such tensor */
	pf_error_clear(&err);
	ck_assert_int_ne(pf_view_build(&m, &t, &v, &err), 0);
	files[1].tensor = 0;
	pf_error_clear(&err);
	ck_assert_int_eq(pf_view_build(&m, &t, &v, &err), 0);
	ck_assert(v.e[5].needs_model); /* a, b.npy, c.npy after the 4 fixed entries */
	ck_assert_int_eq(v.e[5].data_off, -1);
	pf_view_free(&v);
	json_decref(t.meta);
}
END_TEST

/* ------------------------------------------------------------------ decode rejects */

START_TEST(key_must_match)
{
	fixture fx;
	open_state_dict(&fx);
	size_t len;
	uint8_t *buf = encode(&fx.v, &fx.key, &len);
	for (int f = 0; f < 5; f++) {
		pf_view_key k = fx.key;
		switch (f) {
		case 0: k.dev++; break;
		case 1: k.ino ^= 1u << 20; break;
		case 2: k.size--; break;
		case 3: k.mtime_sec = -k.mtime_sec; break;
		default: k.mtime_nsec++; break;
		}
		assert_rejected(buf, len, &k, "another key");
	}
	free(buf);
	close_fixture(&fx);
}
END_TEST

/* Entries changed by a commit keep their own mtimes through the cache. */
START_TEST(own_mtimes_round_trip)
{
	fixture fx;
	open_state_dict(&fx);
	fx.v.e[1].has_mtime = true;
	fx.v.e[1].mtime_sec = 1764892800;
	fx.v.e[1].mtime_nsec = 123456789;
	fx.v.e[fx.v.n - 1].has_mtime = true;
	fx.v.e[fx.v.n - 1].mtime_sec = -5;
	size_t len;
	uint8_t *buf = encode(&fx.v, &fx.key, &len);
	pf_view back;
	pf_error err = {0};
	ck_assert_msg(pf_view_decode(buf, len, &fx.key, &back, &err) == 0, "%s", err.msg);
	assert_views_equal(&fx.v, &back);
	ck_assert(!back.e[2].has_mtime);
	pf_view_free(&back);
	/* an nsec out of range is corrupt: 123456789 is packed as uint32 0xce 07 5b cd 15 */
	uint8_t *ns = memmem(buf, len, "\xce\x07\x5b\xcd\x15", 5);
	ck_assert_ptr_nonnull(ns);
	memcpy(ns + 1, "\x3b\x9a\xca\x00", 4); /* 1000000000 */
	assert_rejected(buf, len, &fx.key, "nsec out of range");
	free(buf);
	close_fixture(&fx);
}
END_TEST

START_TEST(magic_and_version_checked)
{
	fixture fx;
	open_state_dict(&fx);
	size_t len;
	uint8_t *buf = encode(&fx.v, &fx.key, &len);
	uint8_t *magic = memmem(buf, len, "picklefs-index", 14);
	ck_assert_ptr_nonnull(magic);
	magic[0] = 'P';
	assert_rejected(buf, len, &fx.key, "magic");
	magic[0] = 'p';
	ck_assert_uint_eq(magic[14], 2); /* the version follows the magic */
	magic[14] = 1;
	assert_rejected(buf, len, &fx.key, "version 1");
	magic[14] = 3;
	assert_rejected(buf, len, &fx.key, "version 3");
	magic[14] = 2;
	pf_view v;
	pf_error err = {0};
	ck_assert_int_eq(pf_view_decode(buf, len, &fx.key, &v, &err), 0);
	pf_view_free(&v);
	/* foreign buffers */
	static const uint8_t empty_map[] = {0x80}, junk[] = "not msgpack at all \xc1",
			     huge_array[] = {0xdd, 0xff, 0xff, 0xff, 0xff, 0x00},
			     huge_str[] = {0xdb, 0x7f, 0xff, 0xff, 0xff, 'x'};
	assert_rejected(empty_map, sizeof(empty_map), &fx.key, "empty map");
	assert_rejected(junk, sizeof(junk), &fx.key, "junk");
	assert_rejected(huge_array, sizeof(huge_array), &fx.key, "huge array");
	assert_rejected(huge_str, sizeof(huge_str), &fx.key, "huge str");
	assert_rejected(buf, 0, &fx.key, "empty");
	/* trailing bytes */
	uint8_t *more = malloc(len + 1);
	memcpy(more, buf, len);
	more[len] = 0xc0;
	assert_rejected(more, len + 1, &fx.key, "trailing byte");
	free(more);
	free(buf);
	close_fixture(&fx);
}
END_TEST

START_TEST(every_truncation_rejected)
{
	fixture fx;
	open_state_dict(&fx);
	size_t len;
	uint8_t *buf = encode(&fx.v, &fx.key, &len);
	for (size_t n = 0; n < len; n++) {
		/* an exact-size copy so that ASan sees any read past the end */
		uint8_t *cut = malloc(n ? n : 1);
		memcpy(cut, buf, n);
		assert_rejected(cut, n, &fx.key, "truncated");
		free(cut);
	}
	free(buf);
	close_fixture(&fx);
}
END_TEST

START_TEST(random_bit_flips)
{
	fixture fx;
	open_state_dict(&fx);
	size_t len;
	uint8_t *buf = encode(&fx.v, &fx.key, &len);
	uint8_t *copy = malloc(len);
	unsigned accepted = 0;
	srand(12345);
	for (int k = 0; k < 2000; k++) {
		memcpy(copy, buf, len);
		size_t bit = (size_t)rand() % (len * 8);
		copy[bit / 8] ^= (uint8_t)(1u << (bit % 8));
		if (k % 4 == 3) { /* and sometimes a second one */
			bit = (size_t)rand() % (len * 8);
			copy[bit / 8] ^= (uint8_t)(1u << (bit % 8));
		}
		pf_view v;
		pf_error err = {0};
		if (pf_view_decode(copy, len, &fx.key, &v, &err) != 0) {
			ck_assert_msg(err.code == PF_E_FORMAT, "code %s", pf_code_name(err.code));
			ck_assert_ptr_null(v.e);
			continue;
		}
		accepted++;
		assert_view_valid(&v, &fx.key);
		assert_round_trip(&v, &fx.key);
		pf_view_free(&v);
	}
	/* flips inside meta.json text decode fine; most others must not */
	ck_assert_uint_lt(accepted, 2000);
	free(copy);
	free(buf);
	close_fixture(&fx);
}
END_TEST

/* A copy of a view's entries changed by `mut`, encoded: decode must reject it. */
static void reject_mutation(const fixture *fx, const char *why, void (*mut)(pf_view *c, void *arg),
			    void *arg)
{
	pf_view c = fx->v;
	c.e = malloc(sizeof(*c.e) * fx->v.n);
	memcpy(c.e, fx->v.e, sizeof(*c.e) * fx->v.n);
	mut(&c, arg);
	size_t len;
	uint8_t *buf = encode(&c, &fx->key, &len);
	assert_rejected(buf, len, &fx->key, why);
	free(buf);
	free(c.e);
}

static void m_parent_self(pf_view *c, void *a) { (void)a; c->e[4].parent = 4; }
static void m_parent_later(pf_view *c, void *a) { (void)a; c->e[5].parent = 7; }
static void m_parent_loop(pf_view *c, void *a) { (void)a; c->e[4].parent = 7; c->e[7].parent = 4; }
static void m_parent_file(pf_view *c, void *a) { (void)a; c->e[6].parent = 5; }
static void m_parent_out(pf_view *c, void *a) { (void)a; c->e[6].parent = 1000; }
static void m_name(pf_view *c, void *a) { c->e[6].name = a; }
static void m_dup(pf_view *c, void *a) { (void)a; c->e[6].name = c->e[5].name; }
static void m_dup_dir(pf_view *c, void *a) { (void)a; c->e[7].name = "enc"; }
static void m_root_name(pf_view *c, void *a) { (void)a; c->e[0].name = "x"; }
static void m_root_parent(pf_view *c, void *a) { (void)a; c->e[0].parent = 1; }
static void m_size(pf_view *c, void *a) { (void)a; c->e[5].size++; }
static void m_data_len(pf_view *c, void *a) { (void)a; c->e[6].data_len += 4; c->e[6].size += 4; }
static void m_header(pf_view *c, void *a)
{
	c->e[6].header = a;
	c->e[6].header_len = (uint32_t)strlen(a);
	c->e[6].size = c->e[6].header_len + c->e[6].data_len;
}
static void m_other_header(pf_view *c, void *a) /* 5 int64 (40 bytes), the data holds 48 */
{
	(void)a;
	c->e[6].header = c->e[9].header;
	c->e[6].header_len = c->e[9].header_len;
	c->e[6].size = c->e[6].header_len + c->e[6].data_len;
}
static void m_kind(pf_view *c, void *a) { c->e[6].kind = (pf_ventry_kind)(intptr_t)a; }
static void m_text_kind(pf_view *c, void *a) { (void)a; c->e[1].kind = PF_VE_DEVICE; }
static void m_link_dir(pf_view *c, void *a) { (void)a; c->e[8].link = 7; }
static void m_link_later(pf_view *c, void *a) { (void)a; c->e[5].link = 8; }
static void m_link_other(pf_view *c, void *a) { (void)a; c->e[8].link = 6; }
static void m_link_chain(pf_view *c, void *a) { (void)a; c->e[6].link = 5; c->e[6] = c->e[5]; c->e[6].name = "t.npy"; c->e[8].link = 6; }
static void m_link_differs(pf_view *c, void *a) { (void)a; c->e[8].tensor++; }
static void m_past_end(pf_view *c, void *a) { (void)a; c->e[9].data_off = (int64_t)(c->e[9].data_off + 100000); }
static void m_needs(pf_view *c, void *a) { (void)a; c->e[9].needs_model = true; }
static void m_off(pf_view *c, void *a) { (void)a; c->e[9].data_off = -2; }
static void m_dir_size(pf_view *c, void *a) { (void)a; c->e[4].size = 1; }
static void m_dir_data(pf_view *c, void *a) { (void)a; c->e[4].data_off = 0; }
static void m_too_few(pf_view *c, void *a) { (void)a; c->n = 3; }

START_TEST(crafted_views_rejected)
{
	fixture fx;
	open_state_dict(&fx);
	/* a mutation that changes nothing is accepted (the harness is sound) */
	assert_round_trip(&fx.v, &fx.key);
	reject_mutation(&fx, "parent is itself", m_parent_self, NULL);
	reject_mutation(&fx, "parent comes later", m_parent_later, NULL);
	reject_mutation(&fx, "parent loop", m_parent_loop, NULL);
	reject_mutation(&fx, "parent is a file", m_parent_file, NULL);
	reject_mutation(&fx, "parent out of range", m_parent_out, NULL);
	reject_mutation(&fx, "name with /", m_name, "a/b.npy");
	reject_mutation(&fx, "name .", m_name, ".");
	reject_mutation(&fx, "name ..", m_name, "..");
	reject_mutation(&fx, "empty name", m_name, "");
	reject_mutation(&fx, "duplicate name", m_dup, NULL);
	reject_mutation(&fx, "duplicate directory", m_dup_dir, NULL);
	reject_mutation(&fx, "entry 0 named", m_root_name, NULL);
	reject_mutation(&fx, "entry 0 parent", m_root_parent, NULL);
	reject_mutation(&fx, "size mismatch", m_size, NULL);
	reject_mutation(&fx, "data_len mismatch", m_data_len, NULL);
	reject_mutation(&fx, "bogus header", m_header,
			"\x93NUMPY\x01\x00\x36\x00{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }   \n");
	reject_mutation(&fx, "header of another shape", m_other_header, NULL);
	reject_mutation(&fx, "kind 0", m_kind, (void *)(intptr_t)0);
	reject_mutation(&fx, "kind 6", m_kind, (void *)(intptr_t)6);
	reject_mutation(&fx, "tensor as a text", m_kind, (void *)(intptr_t)PF_VE_META);
	reject_mutation(&fx, "tensor as a dir", m_kind, (void *)(intptr_t)PF_VE_DIR);
	reject_mutation(&fx, "text kinds swapped", m_text_kind, NULL);
	reject_mutation(&fx, "link to a dir", m_link_dir, NULL);
	reject_mutation(&fx, "link forward", m_link_later, NULL);
	reject_mutation(&fx, "link to another tensor", m_link_other, NULL);
	reject_mutation(&fx, "link to a link", m_link_chain, NULL);
	reject_mutation(&fx, "link with other fields", m_link_differs, NULL);
	reject_mutation(&fx, "data past the end", m_past_end, NULL);
	reject_mutation(&fx, "needs_model with data_off", m_needs, NULL);
	reject_mutation(&fx, "data_off -2", m_off, NULL);
	reject_mutation(&fx, "directory with a size", m_dir_size, NULL);
	reject_mutation(&fx, "directory with data", m_dir_data, NULL);
	reject_mutation(&fx, "too few entries", m_too_few, NULL);
	/* the encoder cannot write text on a tensor: patch the last entry's last
	 * field, an empty bin, before the empty list of own mtimes */
	size_t len;
	uint8_t *buf = encode(&fx.v, &fx.key, &len);
	ck_assert_uint_eq(buf[len - 3], 0xc4);
	ck_assert_uint_eq(buf[len - 2], 0x00);
	ck_assert_uint_eq(buf[len - 1], 0x90);
	buf = realloc(buf, len + 1);
	buf[len - 2] = 1;
	buf[len - 1] = 'x';
	buf[len] = 0x90;
	assert_rejected(buf, len + 1, &fx.key, "text on a tensor");
	free(buf);
	close_fixture(&fx);
}
END_TEST

/* ------------------------------------------------------------------ corpus */


/* Every real file builds a view whose file ranges are the tensors' bytes, and round-trips. */
START_TEST(real_corpus)
{
	const char *shared = getenv("PF_SHARED");
	ck_assert_msg(shared != NULL, "PF_SHARED not set");
	char dir[1024];
	snprintf(dir, sizeof(dir), "%s/corpus/real", shared);
	DIR *d = opendir(dir);
	ck_assert_ptr_nonnull(d);
	struct dirent *de;
	unsigned models = 0, tensors = 0, direct = 0;
	while ((de = readdir(d)) != NULL) {
		if (de->d_name[0] == '.' || strcmp(de->d_name, "MANIFEST.md") == 0)
			continue;
		char path[2048];
		snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
		fixture fx;
		fx.data = pf_test_slurp(path, &fx.len);
		if (strcmp(de->d_name, "sbi_npse_zip_versiononly.pkl") == 0) {
			pf_error err = {0};
			ck_assert_int_ne(pf_model_open(&fx.m, fx.data, fx.len, NULL, &err), 0);
			free(fx.data);
			continue;
		}
		build_fixture(&fx);
		models++;
		for (uint32_t i = 0; i < fx.v.n; i++) {
			const pf_ventry *e = &fx.v.e[i];
			if (e->kind != PF_VE_TENSOR || e->link != i)
				continue;
			tensors++;
			const pf_tensor *t = &fx.m.tensors[e->tensor];
			ck_assert_uint_eq(e->data_len, t->nbytes);
			if (e->data_off < 0)
				continue;
			direct++;
			uint8_t *got = malloc(e->data_len ? e->data_len : 1);
			pf_error err = {0};
			ck_assert_int_eq(pf_tensor_read(&fx.m, t, 0, got, e->data_len, &err), 0);
			ck_assert_msg(memcmp(got, fx.data + e->data_off, e->data_len) == 0, "%s: %s", de->d_name,
				      e->path);
			free(got);
		}
		assert_view_valid(&fx.v, &fx.key);
		assert_round_trip(&fx.v, &fx.key);
		close_fixture(&fx);
	}
	closedir(d);
	ck_assert_uint_ge(models, 9);
	ck_assert_uint_ge(tensors, 250);
	ck_assert_uint_gt(direct, 0);
}
END_TEST

static Suite *suite(void)
{
	Suite *s = suite_create("view");
	TCase *tc = tcase_create("core");
	tcase_set_timeout(tc, 240);
	tcase_add_test(tc, state_dict_view);
	tcase_add_test(tc, numpy_protocol2_needs_model);
	tcase_add_test(tc, numpy_protocol4_direct);
	tcase_add_test(tc, many_tensors_are_fast);
	tcase_add_test(tc, conflicting_paths_fail);
	tcase_add_test(tc, key_must_match);
	tcase_add_test(tc, magic_and_version_checked);
	tcase_add_test(tc, own_mtimes_round_trip);
	tcase_add_test(tc, every_truncation_rejected);
	tcase_add_test(tc, random_bit_flips);
	tcase_add_test(tc, crafted_views_rejected);
	tcase_add_test(tc, real_corpus);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(suite());
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
