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

/* ---- pf_rewrite: new tensor contents (and devices, and edits) -------------------------- */

/* A model opened from tmpdir/in, the changes under test, and the plan. */
typedef struct job {
	uint8_t *file;
	size_t len;
	pf_model m;
	pf_plan pl;
	pf_error err;
	pf_device dev;
	pf_bytes_run runs[8][3];
	pf_tensor_data data[8];
	uint8_t *bufs[8];
	uint32_t n_data;
} job;

static void job_open(job *j)
{
	memset(j, 0, sizeof(*j));
	j->file = read_file("in", &j->len);
	ck_assert_msg(pf_model_open(&j->m, j->file, j->len, NULL, &j->err) == 0, "open: %s", j->err.msg);
	pf_plan_init(&j->pl);
}

static void job_close(job *j)
{
	for (uint32_t i = 0; i < j->n_data; i++)
		free(j->bufs[i]);
	pf_plan_free(&j->pl);
	pf_model_free(&j->m);
	free(j->file);
}

/* The one tensor of shape "AxB..." (e.g. "4x3"; "" for a scalar) and, when
 * strided >= 0, of that layout (1 strided, 0 contiguous). */
static uint32_t tensor_by_shape(const pf_model *m, const char *shape, int strided)
{
	uint32_t found = UINT32_MAX;
	for (uint32_t i = 0; i < m->n_tensors; i++) {
		const pf_tensor *t = &m->tensors[i];
		char s[128] = "";
		for (uint32_t k = 0; k < t->ndim; k++)
			snprintf(s + strlen(s), sizeof(s) - strlen(s), "%s%lld", k ? "x" : "", (long long)t->shape[k]);
		if (strcmp(s, shape) != 0 || (strided >= 0 && (t->layout == PF_TL_STRIDED) != strided))
			continue;
		ck_assert_msg(found == UINT32_MAX, "two tensors of shape %s", shape);
		found = i;
	}
	ck_assert_msg(found != UINT32_MAX, "no tensor of shape %s", shape);
	return found;
}

/*
 * New contents for tensor ti from tmpdir/<name> (its logical bytes, as Python
 * wrote them), handed over in three runs of the caller's memory; with
 * from_file, the first `from_file` bytes come from the old file instead (the
 * tensor's own old bytes there: contiguous tensors in the file only).
 */
static void add_data(job *j, uint32_t ti, const char *name, uint64_t from_file)
{
	size_t n;
	uint32_t k = j->n_data++;
	const pf_tensor *t = &j->m.tensors[ti];
	uint8_t *b = read_file(name, &n);
	ck_assert_uint_eq(n, t->nbytes);
	ck_assert_uint_ge(n, from_file + 2);
	j->bufs[k] = b;
	uint64_t cut = from_file + (n - from_file) / 2;
	if (from_file) {
		ck_assert_int_ge(t->file_off, 0);
		j->runs[k][0] = (pf_bytes_run){j->file + t->file_off, from_file};
	} else {
		j->runs[k][0] = (pf_bytes_run){b, 0};
	}
	j->runs[k][1] = (pf_bytes_run){b + from_file, cut - from_file};
	j->runs[k][2] = (pf_bytes_run){b + cut, n - cut};
	j->data[k] = (pf_tensor_data){.tensor = ti, .runs = j->runs[k], .n_runs = 3};
}

/* Whether a new-bytes piece of the plan points into p[0..n) (the caller's memory, not copied). */
static bool plan_refers(const pf_plan *pl, const uint8_t *p, size_t n)
{
	for (uint32_t i = 0; i < pl->n; i++)
		if (pl->v[i].bytes && pl->v[i].bytes >= p && pl->v[i].bytes < p + n)
			return true;
	return false;
}

static outcome plan_to_out(job *j);

/* pf_rewrite with the job's data (and device when dev_text is not NULL): must succeed;
 * the plan is put together as tmpdir/out. */
static outcome job_rewrite(job *j, const char *dev_text)
{
	pf_changes ch = {.data = j->data, .n_data = j->n_data};
	if (dev_text) {
		ck_assert_int_eq(pf_device_parse(dev_text, strlen(dev_text), &j->dev), 0);
		ch.device = &j->dev;
	}
	ck_assert_msg(pf_rewrite(&j->m, &ch, &j->pl, &j->err) == 0, "rewrite: %s", j->err.msg);
	return plan_to_out(j);
}

/* The job's plan put together as tmpdir/out. */
static outcome plan_to_out(job *j)
{
	ck_assert_uint_gt(j->pl.n, 0);
	outcome o = {.old_len = j->len, .new_len = j->pl.size, .pieces = j->pl.n, .n_edits = j->pl.n_edits};
	uint8_t *out = malloc(j->pl.size + 1);
	uint64_t at = 0;
	for (uint32_t i = 0; i < j->pl.n; i++) {
		const pf_piece *pc = &j->pl.v[i];
		ck_assert_uint_gt(pc->len, 0);
		if (pc->bytes) {
			memcpy(out + at, pc->bytes, pc->len);
		} else {
			ck_assert_uint_le(pc->off + pc->len, j->len);
			memcpy(out + at, j->file + pc->off, pc->len);
			o.copied += pc->len;
		}
		at += pc->len;
	}
	ck_assert_uint_eq(at, j->pl.size);
	write_file("out", out, j->pl.size);
	free(out);
	return o;
}

/* pf_rewrite must refuse ch with code. */
static void job_refused(job *j, const pf_changes *ch, pf_code code)
{
	pf_plan pl;
	pf_error err = {0};
	pf_plan_init(&pl);
	ck_assert_int_eq(pf_rewrite(&j->m, ch, &pl, &err), -1);
	ck_assert_msg(err.code == code, "got %s (%s), want %s", pf_code_name(err.code), err.msg, pf_code_name(code));
	pf_plan_free(&pl);
}

/* Python: inputs are made after this (d: the temp dir; put(name, tensor) writes its new bytes). */
#define PY_DATA_HEAD \
	PY_SAVE_HEAD \
	"import numpy as np\n" \
	"def put(name, x, order='C'):\n" \
	"    a = x.numpy() if isinstance(x, torch.Tensor) else x\n" \
	"    open(d + '/' + name, 'wb').write(a.tobytes(order=order))\n"

/* Python: tmp/in (old) and tmp/out (new); where their bytes differ; a zip record's CRC fields. */
#define PY_DIFF_HEAD \
	"import sys, io, pickle, struct, zipfile, zlib, torch\n" \
	"import numpy as np\n" \
	"d = sys.argv[1]\n" \
	"old = open(d + '/in', 'rb').read()\n" \
	"new = open(d + '/out', 'rb').read()\n" \
	"def diffs():\n" \
	"    return [k for k in range(min(len(old), len(new))) if old[k] != new[k]]\n" \
	"def record(buf, pred):\n" \
	"    z = zipfile.ZipFile(io.BytesIO(buf))\n" \
	"    i = [i for i in z.infolist() if pred(i.filename, z.read(i.filename))]\n" \
	"    assert len(i) == 1, i\n" \
	"    i = i[0]; h = i.header_offset\n" \
	"    n, e = struct.unpack('<HH', buf[h + 26:h + 30])\n" \
	"    ds = h + 30 + n + e\n" \
	"    spots = [h + 14] if buf[h + 14:h + 18] != bytes(4) else []\n" \
	"    dd = ds + i.compress_size\n" \
	"    if i.flag_bits & 8 and buf[dd:dd + 4] == b'PK\\x07\\x08': spots.append(dd + 4)\n" \
	"    p = z.start_dir\n" \
	"    while buf[p:p + 4] == b'PK\\x01\\x02':\n" \
	"        n, e, c = struct.unpack('<HHH', buf[p + 28:p + 34])\n" \
	"        if buf[p + 46:p + 46 + n].decode() == i.filename: spots.append(p + 16)\n" \
	"        p += 46 + n + e + c\n" \
	"    return i.filename, ds, i.file_size, spots\n" \
	"def only_in(k, ranges):\n" \
	"    return any(a <= k < a + n for a, n in ranges)\n" \
	"def teq(x, y):\n" \
	"    assert x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y), (x, y)\n"

/* A torch.save zip: one tensor's record gets new bytes in place; only those bytes and
 * the record's CRC fields differ; part of the new bytes are the old file's own. */
START_TEST(zip_data_in_place)
{
	python(PY_DATA_HEAD
	       "m = {'a': torch.randn(3, 4), 'b': torch.arange(10)}\n"
	       "open(d + '/in', 'wb').write(zsave(m))\n"
	       "new = torch.randn(3, 4); new.view(-1)[:2] = m['a'].view(-1)[:2]\n"
	       "put('new_a', new); torch.save({'a': new, 'b': m['b']}, d + '/want')\n");
	job j;
	job_open(&j);
	add_data(&j, tensor_by_shape(&j.m, "3x4", 0), "new_a", 8);
	outcome o = job_rewrite(&j, NULL);
	ck_assert_uint_eq(o.new_len, o.old_len);
	ck_assert_uint_eq(o.n_edits, 0);
	/* the caller's bytes are referenced by the plan, not copied into it */
	ck_assert(plan_refers(&j.pl, j.bufs[0], 48));
	ck_assert_uint_ge(o.copied, o.old_len - 40 - 12);
	job_close(&j);
	python(PY_DIFF_HEAD
	       "want = torch.load(d + '/want'); got = torch.load(io.BytesIO(new))\n"
	       "teq(got['a'], want['a']); teq(got['b'], want['b'])\n"
	       "assert zipfile.ZipFile(io.BytesIO(new)).testzip() is None\n"
	       "a_old = torch.load(io.BytesIO(old))['a'].numpy().tobytes()\n"
	       "name, ds, size, spots = record(old, lambda n, b: b == a_old)\n"
	       "assert record(new, lambda n, b: n == name)[1:] == (ds, size, spots)\n"
	       "ds_ = diffs(); assert ds_\n"
	       "assert all(only_in(k, [(ds, size)] + [(s, 4) for s in spots]) for k in ds_), ds_\n"
	       "crc = struct.pack('<I', zlib.crc32(new[ds:ds + size]))\n"
	       "assert len(spots) >= 2 and all(new[s:s + 4] == crc and old[s:s + 4] != crc for s in spots)\n");
}
END_TEST

/* A legacy torch.save file: the raw bytes of one storage replaced, nothing else. */
START_TEST(legacy_data_in_place)
{
	python(PY_DATA_HEAD
	       "m = {'a': torch.randn(5, 2, dtype=torch.float64), 'b': torch.arange(4, dtype=torch.int16)}\n"
	       "open(d + '/in', 'wb').write(zsave(m, zip=False))\n"
	       "new = torch.randn(5, 2, dtype=torch.float64)\n"
	       "put('new_a', new); torch.save({'a': new, 'b': m['b']}, d + '/want')\n");
	job j;
	job_open(&j);
	add_data(&j, tensor_by_shape(&j.m, "5x2", 0), "new_a", 0);
	outcome o = job_rewrite(&j, NULL);
	ck_assert_uint_eq(o.new_len, o.old_len);
	ck_assert(plan_refers(&j.pl, j.bufs[0], 80));
	job_close(&j);
	python(PY_DIFF_HEAD
	       "want = torch.load(d + '/want'); got = torch.load(io.BytesIO(new))\n"
	       "teq(got['a'], want['a']); teq(got['b'], want['b'])\n"
	       "at = old.find(torch.load(io.BytesIO(old))['a'].numpy().tobytes())\n"
	       "assert at > 0 and all(only_in(k, [(at, 80)]) for k in diffs()) and diffs()\n");
}
END_TEST

/* Where the BINUNICODE of text lies in pickle span j (relative to its start). */
static uint64_t find_str(const pf_model *m, uint32_t j, const char *text)
{
	const pf_pickle_span *sp = &m->pickles[j];
	const uint8_t *p = m->segs[sp->seg].p + sp->start;
	size_t n = strlen(text);
	for (uint64_t i = 0; i + 5 + n <= sp->end - sp->start; i++)
		if (p[i] == 'X' && p[i + 1] == n && !p[i + 2] && !p[i + 3] && !p[i + 4] && !memcmp(p + i + 5, text, n))
			return i;
	ck_abort_msg("%s not found", text);
	return 0;
}

/* Devices and data at once: same length (cuda:0 -> cpu); then with a caller's edit
 * that makes data.pkl longer (the zip re-written) and the big tensor new: its bytes
 * stay references to the caller's memory and the old file. */
START_TEST(zip_device_and_data)
{
	python(PY_DATA_HEAD
	       "m = {'a': torch.randn(5, 4), 'big': torch.randn(200, 100), 'dev': torch.device('cuda', 0),\n"
	       "     'name': 'hello-world'}\n"
	       "tagged('cuda:0'); open(d + '/in', 'wb').write(zsave(m)); untag()\n"
	       "new = torch.randn(5, 4); put('new_a', new)\n"
	       "big = torch.randn(200, 100); put('new_big', big)\n"
	       "torch.save({'a': new, 'big': big, 'olda': m['a'], 'oldbig': m['big']}, d + '/want')\n");
	job j;
	job_open(&j);
	add_data(&j, tensor_by_shape(&j.m, "5x4", 0), "new_a", 0);
	outcome o = job_rewrite(&j, "cpu");
	ck_assert_uint_eq(o.new_len, o.old_len);
	ck_assert_uint_ge(o.n_edits, 2);
	job_close(&j);
	python(PY_DIFF_HEAD
	       "want = torch.load(d + '/want'); got = torch.load(io.BytesIO(new))\n"
	       "assert got['dev'] == torch.device('cpu') and got['a'].device.type == 'cpu'\n"
	       "teq(got['a'], want['a']); teq(got['big'], want['oldbig'])\n"
	       "assert zipfile.ZipFile(io.BytesIO(new)).testzip() is None\n");

	job_open(&j);
	add_data(&j, tensor_by_shape(&j.m, "200x100", 0), "new_big", 4096);
	static char longer[300];
	memset(longer, 'z', sizeof(longer));
	pf_span_edit e = {.span = 0, .e = {.op_off = find_str(&j.m, 0, "hello-world"), .new_text = longer,
					   .new_len = sizeof(longer), .kind = PF_EDIT_STR}};
	pf_changes ch = {.edits = &e, .n_edits = 1, .data = j.data, .n_data = 1, .device = &j.dev};
	ck_assert_int_eq(pf_device_parse("cuda:127", 8, &j.dev), 0);
	ck_assert_msg(pf_rewrite(&j.m, &ch, &j.pl, &j.err) == 0, "%s", j.err.msg);
	uint64_t used = j.pl.arena.used;
	pf_plan_free(&j.pl);
	pf_plan_init(&j.pl);
	o = job_rewrite(&j, NULL); /* without the edit: to compare */
	ck_assert_uint_eq(o.new_len, o.old_len);
	pf_plan_free(&j.pl);
	pf_plan_init(&j.pl);
	ck_assert_msg(pf_rewrite(&j.m, &ch, &j.pl, &j.err) == 0, "%s", j.err.msg);
	ck_assert_uint_eq(j.pl.arena.used, used);
	o = plan_to_out(&j);
	ck_assert_uint_gt(o.new_len, o.old_len + 290);
	/* the new big tensor is the caller's memory and (its first 4 KiB) the old file */
	ck_assert(plan_refers(&j.pl, j.bufs[0], 80000));
	ck_assert_uint_ge(o.copied, 4096 + 20);
	ck_assert_uint_lt(used, 40000);
	job_close(&j);
	python(PY_DIFF_HEAD
	       "want = torch.load(d + '/want')\n"
	       "assert zipfile.ZipFile(io.BytesIO(new)).testzip() is None\n"
	       "locs = []\n"
	       "got = torch.load(io.BytesIO(new), map_location=lambda s, l: locs.append(l) or s)\n"
	       "assert set(locs) == {'cuda:127'} and got['dev'] == torch.device('cuda:127')\n"
	       "assert got['name'] == 'z' * 300\n"
	       "exp = want['big'].clone(); exp.view(-1)[:1024] = want['oldbig'].view(-1)[:1024]\n"
	       "teq(got['big'], exp); teq(got['a'], want['olda'])\n");
}
END_TEST

/* pickle.dump of tensors: protocol 2 keeps each storage as a legacy torch.save file in
 * latin-1 text (re-encoded; its length follows the new bytes), protocol 4 as binary
 * bytes (replaced in place: only the tensor's bytes differ). */
START_TEST(pickled_tensors)
{
	python(PY_DATA_HEAD
	       "m = {'a': torch.randn(4, 4), 'b': torch.arange(5)}\n"
	       "open(d + '/in', 'wb').write(pickle.dumps(m, protocol=2))\n"
	       "new = torch.randn(4, 4) * 1000; put('new_a', new)\n"
	       "torch.save({'a': new, 'b': m['b']}, d + '/want')\n");
	job j;
	job_open(&j);
	add_data(&j, tensor_by_shape(&j.m, "4x4", 0), "new_a", 0);
	job_rewrite(&j, NULL);
	job_close(&j);
	python(PY_DIFF_HEAD
	       "want = torch.load(d + '/want'); got = pickle.loads(new)\n"
	       "teq(got['a'], want['a']); teq(got['b'], want['b'])\n");

	python(PY_DATA_HEAD
	       "m = {'a': torch.randn(4, 4), 'b': torch.arange(5)}\n"
	       "open(d + '/in', 'wb').write(pickle.dumps(m, protocol=4))\n"
	       "new = torch.randn(4, 4); put('new_a', new)\n"
	       "torch.save({'a': new, 'b': m['b'], 'olda': m['a']}, d + '/want')\n");
	job_open(&j);
	add_data(&j, tensor_by_shape(&j.m, "4x4", 0), "new_a", 0);
	outcome o = job_rewrite(&j, NULL);
	ck_assert_uint_eq(o.new_len, o.old_len);
	ck_assert(plan_refers(&j.pl, j.bufs[0], 64));
	job_close(&j);
	python(PY_DIFF_HEAD
	       "want = torch.load(d + '/want'); got = pickle.loads(new)\n"
	       "teq(got['a'], want['a']); teq(got['b'], want['b'])\n"
	       "at = old.find(want['olda'].numpy().tobytes())\n"
	       "assert at > 0 and diffs() and all(only_in(k, [(at, 64)]) for k in diffs())\n");
}
END_TEST

/* A strided view saved with its base: the view's new elements scattered into the
 * shared storage (the base's other elements kept); stride 0 (expand) takes new
 * contents only when the aliased elements agree. */
START_TEST(strided_views)
{
	python(PY_DATA_HEAD
	       "base = torch.randn(4, 6)\n"
	       "m = {'base': base, 'view': base[:, ::2], 'e': torch.arange(3.).expand(5, 3)}\n"
	       "open(d + '/in', 'wb').write(zsave(m))\n"
	       "v = torch.randn(4, 3); put('new_view', v)\n"
	       "put('new_e', torch.tensor([7., 8., 9.]).expand(5, 3).contiguous())\n"
	       "put('bad_e', torch.arange(15.).reshape(5, 3))\n"
	       "put('new_base', torch.randn(4, 6))\n"
	       "exp = base.clone(); exp[:, ::2] = v\n"
	       "torch.save({'base': exp, 'view': v}, d + '/want')\n");
	job j;
	job_open(&j);
	uint32_t view = tensor_by_shape(&j.m, "4x3", 1), e = tensor_by_shape(&j.m, "5x3", 1);
	add_data(&j, view, "new_view", 0);
	add_data(&j, e, "new_e", 0);
	outcome o = job_rewrite(&j, NULL);
	ck_assert_uint_eq(o.new_len, o.old_len);
	/* contradicting values for one element of a stride-0 view */
	free(j.bufs[1]);
	j.n_data = 1;
	add_data(&j, e, "bad_e", 0);
	job_refused(&j, &(pf_changes){.data = &j.data[1], .n_data = 1}, PF_E_INVALID);
	/* the base and its view both given new contents: they share bytes */
	add_data(&j, tensor_by_shape(&j.m, "4x6", 0), "new_base", 0);
	pf_tensor_data both[2] = {j.data[0], j.data[2]};
	job_refused(&j, &(pf_changes){.data = both, .n_data = 2}, PF_E_INVALID);
	job_close(&j);
	python(PY_DIFF_HEAD
	       "want = torch.load(d + '/want'); got = torch.load(io.BytesIO(new))\n"
	       "assert got['view'].stride() == (6, 2) and got['e'].stride() == (0, 1)\n"
	       "teq(got['view'], want['view']); teq(got['base'], want['base'])\n"
	       "teq(got['e'], torch.tensor([7., 8., 9.]).expand(5, 3))\n"
	       "assert zipfile.ZipFile(io.BytesIO(new)).testzip() is None\n");
}
END_TEST

/* numpy arrays in a plain pickle: binary bytes (protocol 4, in place) and latin-1
 * text (protocol 2), C and Fortran order. */
START_TEST(numpy_arrays)
{
	for (int proto = 4; proto >= 2; proto -= 2) {
		char code[2048];
		snprintf(code, sizeof(code),
			 PY_DATA_HEAD
			 "m = {'x': np.arange(12, dtype=np.float32).reshape(3, 4),\n"
			 "     'f': np.asfortranarray(np.arange(10.).reshape(2, 5)), 'i': np.arange(7, dtype=np.int16)}\n"
			 "open(d + '/in', 'wb').write(pickle.dumps(m, protocol=%d))\n"
			 "x = np.linspace(-300, 300, 12, dtype=np.float32).reshape(3, 4); put('new_x', x)\n"
			 "f = np.asfortranarray(np.linspace(5, 900, 10).reshape(2, 5)); put('new_f', f, 'F')\n"
			 "pickle.dump({'x': x, 'f': f, 'i': m['i']}, open(d + '/want', 'wb'))\n",
			 proto);
		python(code);
		job j;
		job_open(&j);
		uint32_t x = tensor_by_shape(&j.m, "3x4", 0), f = tensor_by_shape(&j.m, "2x5", 0);
		ck_assert(j.m.tensors[f].fortran && j.m.tensors[x].storage == -1);
		add_data(&j, x, "new_x", 0);
		add_data(&j, f, "new_f", 0);
		if (proto == 4) {
			/* an edit of the bytes opcode that holds x: it and x's new bytes contradict */
			const pf_segment *xs = &j.m.segs[j.m.tensors[x].seg];
			ck_assert_uint_eq(xs->parent, j.m.pickles[0].seg);
			ck_assert_uint_eq(j.m.segs[xs->parent].p[xs->parent_off - 2], 'C');
			pf_span_edit e = {.span = 0, .e = {.op_off = xs->parent_off - 2 - j.m.pickles[0].start,
							   .new_text = (const char *)j.bufs[1], .new_len = 48,
							   .kind = PF_EDIT_PAYLOAD}};
			job_refused(&j, &(pf_changes){.edits = &e, .n_edits = 1, .data = j.data, .n_data = 1},
				    PF_E_INVALID);
		}
		outcome o = job_rewrite(&j, NULL);
		if (proto == 4)
			ck_assert_uint_eq(o.new_len, o.old_len);
		job_close(&j);
		python(PY_DIFF_HEAD
		       "want = pickle.load(open(d + '/want', 'rb')); got = pickle.loads(new)\n"
		       "for k in want:\n"
		       "    assert got[k].dtype == want[k].dtype and np.array_equal(got[k], want[k]), k\n"
		       "assert got['f'].flags.f_contiguous\n");
	}
}
END_TEST

/* torch.save files inside torch.save files: a protocol-4 data.pkl holding a zip as
 * binary bytes (in place, both CRCs follow: also for `echo cpu > device`), and torch's
 * default protocol 2 (the inner zip is latin-1 text: the outer zip re-written). */
START_TEST(nested_archives)
{
	python(PY_DATA_HEAD
	       "inner = {'w': torch.randn(3, 5)}\n"
	       "tagged('cuda:0')\n"
	       "b = io.BytesIO(); torch.save({'inner': zsave(inner), 'v': torch.randn(2, 2)}, b, pickle_protocol=4)\n"
	       "untag(); open(d + '/in', 'wb').write(b.getvalue())\n"
	       "w = torch.randn(3, 5); put('new_w', w); torch.save({'w': w}, d + '/want')\n");
	outcome o = rewrite("cpu");
	ck_assert_uint_eq(o.new_len, o.old_len);
	python(PY_DIFF_HEAD
	       "top = torch.load(io.BytesIO(new))\n"
	       "assert zipfile.ZipFile(io.BytesIO(new)).testzip() is None\n"
	       "assert zipfile.ZipFile(io.BytesIO(top['inner'])).testzip() is None\n"
	       "assert torch.load(io.BytesIO(top['inner']))['w'].device.type == 'cpu'\n");
	job j;
	job_open(&j);
	add_data(&j, tensor_by_shape(&j.m, "3x5", 0), "new_w", 0);
	o = job_rewrite(&j, "cpu");
	ck_assert_uint_eq(o.new_len, o.old_len);
	job_close(&j);
	python(PY_DIFF_HEAD
	       "want = torch.load(d + '/want'); top = torch.load(io.BytesIO(new))\n"
	       "assert zipfile.ZipFile(io.BytesIO(new)).testzip() is None\n"
	       "assert zipfile.ZipFile(io.BytesIO(top['inner'])).testzip() is None\n"
	       "teq(torch.load(io.BytesIO(top['inner']))['w'], want['w'])\n"
	       "teq(top['v'], torch.load(io.BytesIO(old), map_location='cpu')['v'])\n");

	python(PY_DATA_HEAD
	       "inner = {'w': torch.randn(3, 5)}\n"
	       "m = {'inner': zsave(inner), 'v': torch.randn(2, 2)}\n"
	       "open(d + '/in', 'wb').write(zsave(m))\n"
	       "w = torch.randn(3, 5) * 1e6; put('new_w', w); torch.save({'w': w, 'v': m['v']}, d + '/want')\n");
	job_open(&j);
	add_data(&j, tensor_by_shape(&j.m, "3x5", 0), "new_w", 0);
	job_rewrite(&j, NULL);
	job_close(&j);
	python(PY_DIFF_HEAD
	       "want = torch.load(d + '/want'); top = torch.load(io.BytesIO(new))\n"
	       "assert zipfile.ZipFile(io.BytesIO(new)).testzip() is None\n"
	       "assert zipfile.ZipFile(io.BytesIO(top['inner'])).testzip() is None\n"
	       "teq(torch.load(io.BytesIO(top['inner']))['w'], want['w']); teq(top['v'], want['v'])\n");
}
END_TEST

/* Changes that contradict each other or point nowhere: PF_E_INVALID, nothing planned;
 * a deflated record: PF_E_UNSUPPORTED. */
START_TEST(refused_changes)
{
	python(PY_DATA_HEAD
	       "m = {'a': torch.randn(3, 4), 'device': 'cuda:1'}\n"
	       "tagged('cuda:0'); open(d + '/in', 'wb').write(zsave(m)); untag()\n"
	       "put('new_a', torch.randn(3, 4))\n"
	       "import zipfile\n"
	       "z = zipfile.ZipFile(io.BytesIO(zsave(m)))\n"
	       "with zipfile.ZipFile(d + '/deflated', 'w', zipfile.ZIP_DEFLATED) as o:\n"
	       "    for i in z.infolist(): o.writestr(i.filename, z.read(i.filename))\n");
	job j;
	job_open(&j);
	uint32_t a = tensor_by_shape(&j.m, "3x4", 0);
	add_data(&j, a, "new_a", 0);
	pf_device cpu;
	ck_assert_int_eq(pf_device_parse("cpu", 3, &cpu), 0);
	pf_edit_list dev = {0};
	const pf_pickle_span *sp = &j.m.pickles[0];
	ck_assert_int_eq(pf_device_edits(&j.m, sp->seg, sp->start, sp->end, &cpu, &dev, &j.err), 0);
	ck_assert_uint_ge(dev.n, 2);
	static const char text[] = "cpu";
	pf_span_edit e[2] = {
		{.span = 0, .e = {.op_off = dev.v[1].op_off, .new_text = text, .new_len = 3, .kind = PF_EDIT_STR}},
		{.span = 0, .e = {.op_off = dev.v[1].op_off, .new_text = text, .new_len = 3, .kind = PF_EDIT_STR}},
	};
	/* one edit alone is fine, and so is the same edit in place of the device's */
	pf_plan pl;
	pf_plan_init(&pl);
	ck_assert_msg(pf_rewrite(&j.m, &(pf_changes){.edits = e, .n_edits = 1}, &pl, &j.err) == 0, "%s", j.err.msg);
	ck_assert_uint_eq(pl.size, j.len);
	pf_plan_free(&pl);
	/* two edits of one opcode; an edit where a device edit is */
	job_refused(&j, &(pf_changes){.edits = e, .n_edits = 2}, PF_E_INVALID);
	job_refused(&j, &(pf_changes){.device = &cpu, .edits = e, .n_edits = 1}, PF_E_INVALID);
	/* a pickle or tensor that is not there */
	e[1].span = j.m.n_pickles;
	job_refused(&j, &(pf_changes){.edits = &e[1], .n_edits = 1}, PF_E_INVALID);
	pf_tensor_data td = j.data[0];
	td.tensor = j.m.n_tensors;
	job_refused(&j, &(pf_changes){.data = &td, .n_data = 1}, PF_E_INVALID);
	/* runs that do not add up to the tensor's size; one tensor twice */
	td = j.data[0];
	td.n_runs = 2;
	job_refused(&j, &(pf_changes){.data = &td, .n_data = 1}, PF_E_INVALID);
	pf_tensor_data twice[2] = {j.data[0], j.data[0]};
	job_refused(&j, &(pf_changes){.data = twice, .n_data = 2}, PF_E_INVALID);
	pf_edit_list_free(&dev);
	job_close(&j);

	size_t len;
	uint8_t *file = read_file("deflated", &len);
	pf_model m;
	pf_error err = {0};
	ck_assert_msg(pf_model_open(&m, file, len, NULL, &err) == 0, "%s", err.msg);
	uint8_t nb[48] = {0};
	pf_bytes_run run = {nb, sizeof(nb)};
	pf_tensor_data dd = {.tensor = tensor_by_shape(&m, "3x4", 0), .runs = &run, .n_runs = 1};
	pf_plan_init(&pl);
	ck_assert_int_eq(pf_rewrite(&m, &(pf_changes){.data = &dd, .n_data = 1}, &pl, &err), -1);
	ck_assert_int_eq(err.code, PF_E_UNSUPPORTED);
	pf_plan_free(&pl);
	pf_model_free(&m);
	free(file);
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
	tcase_add_test(py, zip_data_in_place);
	tcase_add_test(py, legacy_data_in_place);
	tcase_add_test(py, zip_device_and_data);
	tcase_add_test(py, pickled_tensors);
	tcase_add_test(py, strided_views);
	tcase_add_test(py, numpy_arrays);
	tcase_add_test(py, nested_archives);
	tcase_add_test(py, refused_changes);
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
