/*
 * test_rewrite.c - codec/rewrite.c: `echo DEV > device` as an output plan
 * (pieces of the old file and new bytes), including the rewrites that
 * change a pickle's length and the protocol 0-2 blobs held as latin-1
 * text.
 *
 * Inputs are made at test time by /usr/bin/python3 (CPython and Debian's
 * torch 1.13) with torch's own serializer, storages labelled cuda:N by a
 * registered location tagger (formats.md §10.4); the new file is put
 * together from the plan here and then loaded by Python on this CPU-only
 * machine: pickle.load / torch.load WITHOUT map_location (which fails on
 * the originals), pickletools.dis, zipfile's CRC check, tensors compared
 * with what was saved.
 */
#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "model.h"
#include "repickle.h"
#include "rewrite.h"
#include "testutil.h"

#define PYTHON "/usr/bin/python3"

static char tmpdir[64];

static void write_file(const char *name, const void *p, size_t n)
{
	char path[128];
	snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
	FILE *f = fopen(path, "wb");
	ck_assert_msg(f != NULL, "%s: %s", path, strerror(errno));
	ck_assert_uint_eq(fwrite(p, 1, n, f), n);
	fclose(f);
}

static uint8_t *read_file(const char *name, size_t *len)
{
	char path[128];
	snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
	FILE *f = fopen(path, "rb");
	ck_assert_msg(f != NULL, "%s: %s", path, strerror(errno));
	ck_assert_int_eq(fseek(f, 0, SEEK_END), 0);
	long n = ftell(f);
	ck_assert_int_ge(n, 0);
	rewind(f);
	uint8_t *b = malloc((size_t)n + 1);
	ck_assert_uint_eq(fread(b, 1, (size_t)n, f), (size_t)n);
	fclose(f);
	*len = (size_t)n;
	return b;
}

/* Run Python code with the temp dir as argv[1]; fails the test when it fails. */
static void python(const char *code)
{
	size_t n;
	free(pf_test_python(code, tmpdir, &n));
}

static void setup(void)
{
	strcpy(tmpdir, "/tmp/pf-test-rewrite-XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static void teardown(void)
{
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpdir);
	ck_assert_int_eq(system(cmd), 0);
}

typedef struct outcome {
	uint64_t old_len, new_len;
	uint64_t copied;   /* bytes taken from the old file */
	uint32_t pieces, n_edits;
} outcome;

/* Rewrite tmpdir/in to dev; the plan is checked and put together as tmpdir/out. */
static outcome rewrite(const char *dev_text)
{
	size_t len;
	uint8_t *file = read_file("in", &len);
	pf_model m;
	pf_error err = {0};
	pf_device dev;
	pf_plan pl;
	outcome o = {.old_len = len};

	ck_assert_int_eq(pf_device_parse(dev_text, strlen(dev_text), &dev), 0);
	ck_assert_msg(pf_model_open(&m, file, len, NULL, &err) == 0, "open: %s", err.msg);
	pf_plan_init(&pl);
	ck_assert_msg(pf_rewrite_device(&m, &dev, &pl, &err) == 0, "rewrite: %s", err.msg);
	ck_assert_uint_gt(pl.n, 0);
	uint8_t *out = malloc(pl.size + 1);
	uint64_t at = 0;
	for (uint32_t i = 0; i < pl.n; i++) {
		const pf_piece *pc = &pl.v[i];
		ck_assert_uint_gt(pc->len, 0);
		if (pc->bytes) {
			memcpy(out + at, pc->bytes, pc->len);
		} else {
			ck_assert_uint_le(pc->off + pc->len, len);
			memcpy(out + at, file + pc->off, pc->len);
			o.copied += pc->len;
		}
		at += pc->len;
	}
	ck_assert_uint_eq(at, pl.size);
	write_file("out", out, pl.size);
	o.new_len = pl.size;
	o.pieces = pl.n;
	o.n_edits = pl.n_edits;
	free(out);
	pf_plan_free(&pl);
	pf_model_free(&m);
	free(file);
	return o;
}

/* Python: save the inputs (stored as tmp/in) and the expected tensors (tmp/want). */
#define PY_SAVE_HEAD \
	"import sys, io, pickle, torch, itertools\n" \
	"d = sys.argv[1]\n" \
	"reg = list(torch.serialization._package_registry)\n" \
	"def untag(): torch.serialization._package_registry[:] = reg\n" \
	"def tagged(loc):\n" \
	"    torch.serialization.register_package(1, lambda obj: loc, lambda obj, l: None)\n" \
	"def zsave(obj, zip=True):\n" \
	"    b = io.BytesIO(); torch.save(obj, b, _use_new_zipfile_serialization=zip); return b.getvalue()\n" \
	"class LFB:\n" \
	"    def __init__(self, blob): self.blob = blob\n" \
	"    def __reduce__(self): return (torch.storage._load_from_bytes, (self.blob,))\n" \
	"torch.manual_seed(0)\n"

/* Python: load tmp/out on the CPU without map_location, compare every tensor with tmp/want. */
#define PY_CHECK_HEAD \
	"import sys, io, pickle, pickletools, zipfile, torch\n" \
	"d = sys.argv[1]\n" \
	"new = open(d + '/out', 'rb').read()\n" \
	"want = torch.load(d + '/want')\n" \
	"def tensors(o):\n" \
	"    out, stack = [], [o]\n" \
	"    while stack:\n" \
	"        x = stack.pop()\n" \
	"        if isinstance(x, torch.Tensor): out.append(x)\n" \
	"        elif isinstance(x, torch.storage.TypedStorage): out.append(torch.tensor([], dtype=x.dtype).set_(x))\n" \
	"        elif isinstance(x, dict): stack.extend(x[k] for k in sorted(x, key=str, reverse=True))\n" \
	"        elif isinstance(x, (list, tuple)): stack.extend(reversed(x))\n" \
	"    return out\n" \
	"def aligned(i, z):\n" \
	"    z.fp.seek(i.header_offset); h = z.fp.read(30)\n" \
	"    return (i.header_offset + 30 + int.from_bytes(h[26:28], 'little') + int.from_bytes(h[28:30], 'little')) % 64 == 0\n" \
	"def same(got):\n" \
	"    a, b = tensors(got), tensors(want)\n" \
	"    assert len(a) == len(b) > 0, (len(a), len(b))\n" \
	"    for x, y in zip(a, b):\n" \
	"        assert x.device.type == 'cpu' and x.dtype == y.dtype and torch.equal(x, y)\n"

/* Rename tmpdir/out to tmpdir/in (for a second rewrite). */
static void out_to_in(void)
{
	char a[128], b[128];
	snprintf(a, sizeof(a), "%s/out", tmpdir);
	snprintf(b, sizeof(b), "%s/in", tmpdir);
	ck_assert_int_eq(rename(a, b), 0);
}

/* (a) protocol 4: a torch.save zip as a bytes value, small (in a frame) and
 * large (>= 64 KiB, outside frames), its data.pkl changing length: first
 * cpu -> cuda:127 (longer), then back to cpu. */
START_TEST(p4_zip_blobs_change_length)
{
	python(PY_SAVE_HEAD
	       "small = {'w': torch.randn(4, 3), 'b': torch.arange(5)}\n"
	       "big = {'w': torch.randn(200, 100), 'v': torch.ones(7, dtype=torch.float64)}\n"
	       "top = {'small': zsave(small), 'big': zsave(big), 'device': 'cpu', 'n': 3}\n"
	       "open(d + '/in', 'wb').write(pickle.dumps(top, protocol=4))\n"
	       "open(d + '/orig', 'wb').write(pickle.dumps(top, protocol=4))\n"
	       "torch.save({'s': small, 'b': big}, d + '/want')\n");
	outcome o = rewrite("cuda:127");
	ck_assert_uint_gt(o.new_len, o.old_len);
	ck_assert_uint_ge(o.n_edits, 3); /* one memoized 'cpu' per zip, and 'device' */
	/* the large tensor's bytes are copied from the old file, not re-made */
	ck_assert_uint_ge(o.copied, 200 * 100 * 4);
	python(PY_CHECK_HEAD
	       "pickletools.dis(new, out=io.StringIO())\n"
	       "top = pickle._loads(new)\n"
	       "assert top['device'] == 'cuda:127' and top['n'] == 3\n"
	       "old = pickle.loads(open(d + '/orig', 'rb').read())\n"
	       "got = {}\n"
	       "for k, w in (('small', 's'), ('big', 'b')):\n"
	       "    z = zipfile.ZipFile(io.BytesIO(top[k])); assert z.testzip() is None\n"
	       "    zo = zipfile.ZipFile(io.BytesIO(old[k]))\n"
	       "    for i in z.infolist():\n"
	       "        assert aligned(i, z)\n"
	       "        assert i.filename.endswith('data.pkl') or z.read(i.filename) == zo.read(i.filename)\n"
	       "    locs = []\n"
	       "    got[w] = torch.load(io.BytesIO(top[k]), map_location=lambda s, l: locs.append(l) or s)\n"
	       "    assert set(locs) == {'cuda:127'}, locs\n"
	       "same(got)\n");
	out_to_in();
	o = rewrite("cpu\n");
	ck_assert_uint_lt(o.new_len, o.old_len);
	python(PY_CHECK_HEAD
	       "pickletools.dis(new, out=io.StringIO())\n"
	       "top = pickle._loads(new)\n"
	       "assert top['device'] == 'cpu' and top['n'] == 3\n"
	       "for k in ('small', 'big'):\n"
	       "    z = zipfile.ZipFile(io.BytesIO(top[k])); assert z.testzip() is None\n"
	       "same({'s': torch.load(io.BytesIO(top['small'])), 'b': torch.load(io.BytesIO(top['big']))})\n");
}
END_TEST

/* (b) protocol 2: _load_from_bytes blobs as latin-1 text (a zip and a legacy file). */
START_TEST(p2_latin1_blobs)
{
	python(PY_SAVE_HEAD
	       "tagged('cuda:0')\n"
	       "a = torch.randn(6, 5); b = torch.arange(300, dtype=torch.int16)\n"
	       "top = {'z': LFB(zsave(a.storage())), 'l': b.storage(), '_device': 'cuda:0'}\n"
	       "open(d + '/in', 'wb').write(pickle.dumps(top, protocol=2))\n"
	       "untag()\n"
	       "torch.save({'l': b, 'z': a.reshape(-1)}, d + '/want')\n");
	outcome o = rewrite("cpu");
	ck_assert_uint_ge(o.n_edits, 3);
	python(PY_CHECK_HEAD
	       "pickletools.dis(new, out=io.StringIO())\n"
	       "top = pickle.loads(new)\n"
	       "assert top['_device'] == 'cpu'\n"
	       "same({'l': top['l'], 'z': top['z']})\n");
}
END_TEST

/* A top-level torch.save zip whose data.pkl changes length: the whole zip
 * re-written in torch's layout, the tensor records copied through. */
START_TEST(top_zip_changes_length)
{
	python(PY_SAVE_HEAD
	       "m = {'w': torch.randn(64, 64), 'b': torch.arange(9), 'dev': torch.device('cuda', 0)}\n"
	       "tagged('cuda:0')\n"
	       "open(d + '/in', 'wb').write(zsave(m))\n"
	       "untag()\n"
	       "torch.save({'w': m['w'], 'b': m['b']}, d + '/want')\n");
	outcome o = rewrite("cuda:127");
	ck_assert_uint_ge(o.copied, 64 * 64 * 4);
	python(PY_CHECK_HEAD
	       "z = zipfile.ZipFile(io.BytesIO(new)); assert z.testzip() is None\n"
	       "zo = zipfile.ZipFile(d + '/in')\n"
	       "for i in z.infolist():\n"
	       "    if i.filename.endswith('/data.pkl'): assert i.file_size != zo.getinfo(i.filename).file_size\n"
	       "    else: assert z.read(i.filename) == zo.read(i.filename)\n"
	       "for i in z.infolist():\n"
	       "    assert aligned(i, z)\n"
	       "locs = []\n"
	       "got = torch.load(io.BytesIO(new), map_location=lambda s, loc: locs.append(loc) or s)\n"
	       "assert locs and set(locs) == {'cuda:127'}, locs\n"
	       "assert got['dev'] == torch.device('cuda:127')\n"
	       "same({'w': got['w'], 'b': got['b']})\n");
}
END_TEST

/* A legacy torch.save file whose main pickle changes length. */
START_TEST(legacy_changes_length)
{
	python(PY_SAVE_HEAD
	       "m = {'w': torch.randn(10, 10), 'device': 'cuda:0'}\n"
	       "tagged('cuda:0')\n"
	       "open(d + '/in', 'wb').write(zsave(m, zip=False))\n"
	       "untag()\n"
	       "torch.save({'w': m['w']}, d + '/want')\n");
	rewrite("cuda:127");
	python(PY_CHECK_HEAD
	       "locs = []\n"
	       "got = torch.load(io.BytesIO(new), map_location=lambda s, loc: locs.append(loc) or s)\n"
	       "assert locs and set(locs) == {'cuda:127'}, locs\n"
	       "assert got['device'] == 'cuda:127'\n"
	       "same({'w': got['w']})\n");
}
END_TEST

/* Nothing to change: an empty plan. */
START_TEST(cpu_file_needs_nothing)
{
	python(PY_SAVE_HEAD
	       "open(d + '/in', 'wb').write(pickle.dumps({'z': zsave(torch.ones(3))}, protocol=4))\n");
	size_t len;
	uint8_t *file = read_file("in", &len);
	pf_model m;
	pf_error err = {0};
	pf_device dev;
	pf_plan pl;
	ck_assert_int_eq(pf_device_parse("cpu", 3, &dev), 0);
	ck_assert_int_eq(pf_model_open(&m, file, len, NULL, &err), 0);
	pf_plan_init(&pl);
	ck_assert_int_eq(pf_rewrite_device(&m, &dev, &pl, &err), 0);
	ck_assert_uint_eq(pl.n, 0);
	pf_plan_free(&pl);
	pf_model_free(&m);
	free(file);
}
END_TEST

typedef struct buf_t {
	uint8_t *p;
	size_t n;
} buf_t;

static int collect(void *ctx, const void *p, size_t n)
{
	buf_t *b = ctx;
	uint8_t *q = realloc(b->p, b->n + n);
	if (!q)
		return -1;
	memcpy(q + b->n, p, n);
	b->p = q;
	b->n += n;
	return 0;
}

/* PF_EDIT_PAYLOAD: width re-chosen, memo writes kept, frame length fixed. */
START_TEST(payload_edit)
{
	/* PROTO 4, FRAME n, SHORT_BINBYTES 3 "abc", MEMOIZE, STOP */
	static const uint8_t p[] = {0x80, 4, 0x95, 7, 0, 0, 0, 0, 0, 0, 0, 'C', 3, 'a', 'b', 'c', 0x94, '.'};
	static uint8_t big[300];
	pf_str_edit e = {.op_off = 11, .kind = PF_EDIT_PAYLOAD, .new_text = (const char *)big, .new_len = sizeof(big)};
	pf_error err = {0};
	uint64_t n = 0;
	ck_assert_msg(pf_repickle(p, sizeof(p), &e, 1, NULL, NULL, &n, &err) == 0, "%s", err.msg);
	/* BINBYTES (5 + 300) instead of SHORT_BINBYTES (2 + 3) */
	ck_assert_uint_eq(n, sizeof(p) + 3 + 297);
	/* the emitted frame says 300 more bytes */
	buf_t b = {0};
	ck_assert_int_eq(pf_repickle(p, sizeof(p), &e, 1, collect, &b, NULL, &err), 0);
	ck_assert_uint_eq(b.n, n);
	ck_assert_uint_eq(b.p[3] | (b.p[4] << 8), 7 + 300);
	ck_assert_uint_eq(b.p[11], 'B');
	ck_assert_uint_eq(b.p[12] | (b.p[13] << 8), 300);
	ck_assert_uint_eq(b.p[n - 2], 0x94); /* MEMOIZE kept */
	free(b.p);
	e.op_off = 13;
	pf_error_clear(&err);
	ck_assert_int_eq(pf_repickle(p, sizeof(p), &e, 1, NULL, NULL, &n, &err), -1);
	/* a str opcode is no bytes opcode: also fine, the str family */
	static const uint8_t q[] = {0x80, 2, 'X', 1, 0, 0, 0, 'a', 'q', 1, '.'};
	e = (pf_str_edit){.op_off = 2, .kind = PF_EDIT_PAYLOAD, .new_text = (const char *)big, .new_len = 2};
	pf_error_clear(&err);
	ck_assert_msg(pf_repickle(q, sizeof(q), &e, 1, NULL, NULL, &n, &err) == 0, "%s", err.msg);
	ck_assert_uint_eq(n, sizeof(q) + 1);
}
END_TEST

static Suite *suite(void)
{
	Suite *s = suite_create("rewrite");
	TCase *t = tcase_create("unit");
	tcase_add_test(t, payload_edit);
	suite_add_tcase(s, t);
	TCase *py = tcase_create("python");
	tcase_add_checked_fixture(py, setup, teardown);
	tcase_set_timeout(py, 240);
	tcase_add_test(py, p4_zip_blobs_change_length);
	tcase_add_test(py, p2_latin1_blobs);
	tcase_add_test(py, top_zip_changes_length);
	tcase_add_test(py, legacy_changes_length);
	tcase_add_test(py, cpu_file_needs_nothing);
	suite_add_tcase(s, py);
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
