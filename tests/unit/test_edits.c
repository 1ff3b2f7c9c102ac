/*
 * test_edits.c - codec/edits.c: written `globals` and meta.json texts as
 * pickle edits.
 *
 * Inputs are made at test time by the real Python (/usr/bin/python3 with
 * torch 1.13): plain pickles of dicts at protocols 0, 2, 4, a torch.save
 * zip with hyperparameters and a tensor (and one embedding another
 * torch.save zip), and an sbi-shaped posterior built from the stand-in
 * package tests/sbi.  The edited meta.json is written by Python's json
 * module (as an editor would save it).  The edits are applied with
 * pf_repickle to each pickle (no pf_rewrite), the file put back together
 * (zips by Python's zipfile) and loaded by pickle / torch.load, which must
 * see exactly the new values and nothing else changed.  Refusals are
 * checked for their error code and for naming the line / JSON path.
 */
#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "edits.h"
#include "meta.h"
#include "model.h"
#include "repickle.h"
#include "testutil.h"

/* ---- helpers ----------------------------------------------------------------- */

static char tmpdir[64];
static char sbi_dir[1024];

static void setup(void)
{
	strcpy(tmpdir, "/tmp/pf-test-edits-XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(tmpdir));
	static const char mod[] =
		"import collections\n"
		"class A:\n"
		"    def __init__(self, v): self.v = v\n"
		"class B(A): pass\n"
		"class C(A): pass\n"
		"class OD(collections.OrderedDict): pass\n";
	char path[128];
	snprintf(path, sizeof(path), "%s/pfren.py", tmpdir);
	pf_test_spit(path, (const uint8_t *)mod, sizeof(mod) - 1);
	snprintf(path, sizeof(path), "%s/pfren2.py", tmpdir);
	static const char mod2[] = "from pfren import A\nclass D(A): pass\n";
	pf_test_spit(path, (const uint8_t *)mod2, sizeof(mod2) - 1);
}

static void teardown(void)
{
	ck_assert_int_eq(pf_test_shell("rm -rf %s", tmpdir), 0);
}

/* tests/sbi of this source tree: PF_SHARED is <source>/../shared. */
static const char *find_sbi(void)
{
	const char *shared = getenv("PF_SHARED");
	const char *cands[3] = {NULL, "../tests/sbi", "tests/sbi"};
	char probe[1100];
	static char root[1024];
	if (shared && strlen(shared) < sizeof(root)) {
		strcpy(root, shared);
		size_t n = strlen(root);
		if (n > 10 && strcmp(root + n - 10, "/../shared") == 0) {
			root[n - 10] = 0;
			strcat(root, "/tests/sbi");
			cands[0] = root;
		}
	}
	for (unsigned i = 0; i < 3; i++) {
		if (!cands[i])
			continue;
		snprintf(probe, sizeof(probe), "%s/sbi/__init__.py", cands[i]);
		if (access(probe, R_OK) == 0) {
			if (!realpath(cands[i], sbi_dir))
				snprintf(sbi_dir, sizeof(sbi_dir), "%s", cands[i]);
			return sbi_dir;
		}
	}
	ck_abort_msg("tests/sbi not found (PF_SHARED=%s)", shared ? shared : "(unset)");
	return NULL;
}

static void tpath(char *buf, size_t cap, const char *name)
{
	snprintf(buf, cap, "%s/%s", tmpdir, name);
}

static void put_file(const char *name, const void *p, size_t n)
{
	char path[256];
	tpath(path, sizeof(path), name);
	pf_test_spit(path, p, n);
}

static uint8_t *get_file(const char *name, size_t *n)
{
	char path[256];
	tpath(path, sizeof(path), name);
	return pf_test_slurp(path, n);
}

/* Run Python; it must print exactly "ok". */
static void python_ok(const char *code)
{
	size_t n;
	uint8_t *res = pf_test_python(code, tmpdir, &n);
	ck_assert_msg(n == 2 && memcmp(res, "ok", 2) == 0, "python: %.*s", (int)(n > 3000 ? 3000 : n),
		      (const char *)res);
	free(res);
}

/* A model file made by Python, parsed, its tree built. */
typedef struct loaded {
	uint8_t *file;
	size_t len;
	pf_model m;
	pf_tree t;
	pf_arena a;
} loaded;

static void load(loaded *l, const char *make_py)
{
	size_t n;
	pf_error err = {0};
	memset(l, 0, sizeof(*l));
	l->file = pf_test_python(make_py, tmpdir, &n);
	l->len = n;
	ck_assert_msg(pf_model_open(&l->m, l->file, l->len, NULL, &err) == 0, "open: %s", err.msg);
	ck_assert_msg(pf_tree_build(&l->m, &l->t, &err) == 0, "tree: %s", err.msg);
	pf_arena_init(&l->a);
	put_file("in.bin", l->file, l->len);
}

static void unload(loaded *l)
{
	pf_arena_free(&l->a);
	pf_tree_free(&l->t);
	pf_model_free(&l->m);
	free(l->file);
}

typedef pf_test_buf buf;

/* The edits of one span applied by pf_repickle: the pickle's new bytes. */
static buf apply_span(const pf_model *m, uint32_t span, const pf_span_edit *v, uint32_t n)
{
	const pf_pickle_span *sp = &m->pickles[span];
	pf_str_edit *e = calloc(n ? n : 1, sizeof(*e));
	uint32_t k = 0;
	buf out = {0};
	pf_error err = {0};
	for (uint32_t i = 0; i < n; i++)
		if (v[i].span == span)
			e[k++] = v[i].e;
	ck_assert_msg(pf_repickle(m->segs[sp->seg].p + sp->start, sp->end - sp->start, e, k, pf_test_buf_sink, &out, NULL,
				  &err) == 0,
		      "repickle span %u: %s at %llu", span, err.msg, (unsigned long long)err.offset);
	free(e);
	return out;
}

/* A plain pickle file with its (outer) pickle re-emitted: written to out.bin. */
static void apply_plain(const loaded *l, const pf_span_edit *v, uint32_t n)
{
	const pf_pickle_span *sp = &l->m.pickles[0];
	ck_assert_uint_eq(sp->archive, 0);
	ck_assert_uint_eq(l->m.segs[sp->seg].file_off, 0);
	for (uint32_t i = 0; i < n; i++)
		ck_assert_uint_eq(v[i].span, 0);
	buf b = apply_span(&l->m, 0, v, n);
	buf whole = {0};
	ck_assert_int_eq(pf_test_buf_sink(&whole, l->file, sp->start), 0);
	ck_assert_int_eq(pf_test_buf_sink(&whole, b.p, b.n), 0);
	ck_assert_int_eq(pf_test_buf_sink(&whole, l->file + sp->end, l->len - sp->end), 0);
	put_file("out.bin", whole.p, whole.n);
	free(whole.p);
	free(b.p);
}

static int globals_edits(loaded *l, const char *text, pf_span_edit **v, uint32_t *n, pf_error *err)
{
	pf_error_clear(err);
	return pf_globals_edits(&l->m, text, strlen(text), v, n, &l->a, err);
}

static int meta_edits(loaded *l, const char *text, size_t len, pf_span_edit **v, uint32_t *n, pf_error *err)
{
	pf_error_clear(err);
	return pf_meta_edits(&l->m, &l->t, text, len, v, n, &l->a, err);
}

/* Text (lines ending in '\n') with line i (0-based) replaced by `line`. */
static char *text_with_line(const char *t, uint32_t i, const char *line)
{
	char *out = malloc(strlen(t) + strlen(line) + 2);
	ck_assert_ptr_nonnull(out);
	size_t k = 0;
	for (uint32_t j = 0; *t; j++) {
		const char *nl = strchr(t, '\n');
		size_t n = (size_t)(nl - t);
		if (j == i)
			k += (size_t)sprintf(out + k, "%s\n", line);
		else {
			memcpy(out + k, t, n + 1);
			k += n + 1;
		}
		t = nl + 1;
	}
	out[k] = 0;
	return out;
}

static char *globals_with(const loaded *l, uint32_t i, const char *line)
{
	return text_with_line(l->t.globals_text, i, line);
}

static uint32_t global_line(const loaded *l, const char *module, const char *name)
{
	for (uint32_t i = 0; i < l->m.g.n_globals; i++)
		if (!strcmp(l->m.g.globals[i].module, module) && !strcmp(l->m.g.globals[i].name, name))
			return i;
	ck_abort_msg("no global %s %s", module, name);
	return 0;
}

/* meta.json as shown, into meta.json of tmpdir; returns it (malloc). */
static char *shown_meta(const loaded *l)
{
	char *s = pf_tree_meta_text(&l->t);
	ck_assert_ptr_nonnull(s);
	put_file("meta.json", s, strlen(s));
	return s;
}

/* Python edits tmpdir/meta.json with `edit` (a function body over `d`) and saves meta2.json. */
static char *edited_meta(const loaded *l, const char *edit, size_t *len)
{
	char code[8192];
	free(shown_meta(l));
	snprintf(code, sizeof(code),
		 "import sys, json\n"
		 "d = json.load(open(sys.argv[1] + '/meta.json'))\n"
		 "r = d['root']\n"
		 "%s\n"
		 "json.dump(d, open(sys.argv[1] + '/meta2.json', 'w'), indent=4)\n"
		 "print('ok', end='')\n",
		 edit);
	python_ok(code);
	return (char *)get_file("meta2.json", len);
}

/* ---- globals ------------------------------------------------------------------------ */

static const char make_classes[] =
	"import sys, pickle\n"
	"sys.path.insert(0, sys.argv[1]); import pfren\n"
	"s = ''.join(['pf', 'ren'])\n"
	"d = {'a1': pfren.A(1), 'a2': pfren.A(2), 'b': pfren.B(3), 'c': pfren.C(4), 'name': s, 'n': 5}\n"
	"sys.stdout.buffer.write(pickle.dumps(d, protocol=int(open(sys.argv[1] + '/proto').read())))\n";

static void set_proto(int p)
{
	char s[8];
	snprintf(s, sizeof(s), "%d", p);
	put_file("proto", s, strlen(s));
}

START_TEST(globals_unchanged_and_refused)
{
	loaded l;
	pf_span_edit *v;
	uint32_t n;
	pf_error err;
	set_proto(4);
	load(&l, make_classes);
	const char *shown = l.t.globals_text;
	ck_assert_int_eq(globals_edits(&l, shown, &v, &n, &err), 0);
	ck_assert_uint_eq(n, 0);
	char *nofinal = strdup(shown);
	nofinal[strlen(nofinal) - 1] = 0;
	ck_assert_int_eq(globals_edits(&l, nofinal, &v, &n, &err), 0);
	ck_assert_uint_eq(n, 0);
	/* line counts: one fewer, one more, a trailing empty line */
	char *fewer = strdup(shown);
	*strrchr(nofinal, '\n') = 0;
	strcpy(fewer, nofinal);
	ck_assert_int_eq(globals_edits(&l, fewer, &v, &n, &err), -1);
	ck_assert_int_eq(err.code, PF_E_INVALID);
	ck_assert_ptr_nonnull(strstr(err.msg, "lines"));
	char *more = malloc(strlen(shown) + 16);
	ck_assert_ptr_nonnull(more);
	sprintf(more, "%spfren A\n", shown);
	ck_assert_int_eq(globals_edits(&l, more, &v, &n, &err), -1);
	ck_assert_int_eq(err.code, PF_E_INVALID);
	sprintf(more, "%s\n", shown);
	ck_assert_int_eq(globals_edits(&l, more, &v, &n, &err), -1);
	ck_assert_int_eq(err.code, PF_E_INVALID);
	ck_assert_ptr_null(v);
	ck_assert_uint_eq(n, 0);
	/* bad lines */
	static const char *const bad[] = {"pfren", "pfren  A", "pfren A B", "pfren\tA", "pf..ren A", "1pf A",
					  "pfren A.", "pfren .A", ".pfren A", "pfren A\r", "pf-ren A", "pfren A()",
					  " pfren A", "pfren ", " A", "pfren\xc2\xa0" "A", "pfren \xff", "", "pfren 9"};
	uint32_t li = global_line(&l, "pfren", "B");
	for (unsigned i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char *t = globals_with(&l, li, bad[i]);
		ck_assert_msg(globals_edits(&l, t, &v, &n, &err) == -1, "accepted '%s'", bad[i]);
		ck_assert_int_eq(err.code, PF_E_INVALID);
		char want[32];
		snprintf(want, sizeof(want), "line %u", li + 1);
		ck_assert_msg(strstr(err.msg, want) != NULL, "'%s': %s", bad[i], err.msg);
		free(t);
	}
	/* good names: qualnames, underscores, digits, UTF-8 letters */
	static const char *const good[] = {"pfren B.Inner", "_p._q _r", "p1.p2 n3", "mod\xc3\xa9 N\xc3\xa4me"};
	for (unsigned i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		char *t = globals_with(&l, li, good[i]);
		ck_assert_msg(globals_edits(&l, t, &v, &n, &err) == 0, "'%s': %s", good[i], err.msg);
		ck_assert_uint_eq(n, 1);
		ck_assert_int_eq(v[0].e.kind, PF_EDIT_GLOBAL);
		free(t);
	}
	free(fewer);
	free(more);
	free(nofinal);
	unload(&l);
}
END_TEST

static void globals_plain(int proto)
{
	static const char verify[] =
		"import sys, pickle, pickletools, io\n"
		"sys.path.insert(0, sys.argv[1]); import pfren, pfren2\n"
		"old = pickle.loads(open(sys.argv[1] + '/in.bin', 'rb').read())\n"
		"b = open(sys.argv[1] + '/out.bin', 'rb').read()\n"
		"pickletools.dis(b, out=io.StringIO())\n"
		"for d in (pickle.loads(b), pickle._loads(b)):\n"
		"    assert list(d) == list(old)\n"
		"    assert type(d['a1']) is pfren2.D and type(d['a2']) is pfren2.D, d\n"
		"    assert type(d['b']) is pfren.C and type(d['c']) is pfren.C, d\n"
		"    assert [d[k].v for k in ('a1', 'a2', 'b', 'c')] == [1, 2, 3, 4]\n"
		"    assert d['name'] == 'pfren' and d['n'] == 5\n"
		"print('ok', end='')\n";
	loaded l;
	pf_span_edit *v;
	uint32_t n;
	pf_error err;
	set_proto(proto);
	load(&l, make_classes);
	/* A -> pfren2.D (another module), B -> pfren.C: two lines become the same pair */
	char *t0 = globals_with(&l, global_line(&l, "pfren", "A"), "pfren2 D");
	char *t1 = text_with_line(t0, global_line(&l, "pfren", "B"), "pfren C");
	ck_assert_msg(globals_edits(&l, t1, &v, &n, &err) == 0, "%s", err.msg);
	/* protocol 4: each class by one STACK_GLOBAL (later uses are memo GETs) */
	ck_assert_uint_eq(n, 2);
	for (uint32_t i = 0; i < n; i++)
		ck_assert_int_eq(v[i].e.kind, PF_EDIT_GLOBAL);
	apply_plain(&l, v, n);
	python_ok(verify);
	free(t0);
	free(t1);
	unload(&l);
}

START_TEST(globals_plain_p0) { globals_plain(0); }
END_TEST
START_TEST(globals_plain_p2) { globals_plain(2); }
END_TEST
START_TEST(globals_plain_p4) { globals_plain(4); }
END_TEST

/* An OrderedDict in a torch.save zip and in another zip held as bytes in it: two pickles. */
START_TEST(globals_embedded_zip)
{
	static const char make[] =
		"import sys, io, collections, torch\n"
		"inner = {'od': collections.OrderedDict(a=1), 'w': torch.arange(3.)}\n"
		"b = io.BytesIO(); torch.save(inner, b)\n"
		"outer = {'od': collections.OrderedDict(b=2), 'blob': b.getvalue(), 'v': torch.ones(2)}\n"
		"o = io.BytesIO(); torch.save(outer, o); sys.stdout.buffer.write(o.getvalue())\n";
	static const char verify[] =
		"import sys, io, zipfile, torch, collections\n"
		"sys.path.insert(0, sys.argv[1]); import pfren\n"
		"d = sys.argv[1]\n"
		"def swap(z, new):\n"
		"    zi = zipfile.ZipFile(io.BytesIO(z)); out = io.BytesIO()\n"
		"    with zipfile.ZipFile(out, 'w', zipfile.ZIP_STORED) as zo:\n"
		"        for n in zi.namelist(): zo.writestr(n, new if n.endswith('/data.pkl') else zi.read(n))\n"
		"    return out.getvalue()\n"
		"z = open(d + '/in.bin', 'rb').read()\n"
		"outer = torch.load(io.BytesIO(swap(z, open(d + '/span0', 'rb').read())))\n"
		"assert type(outer['od']) is pfren.OD and outer['od'] == {'b': 2}\n"
		"assert torch.equal(outer['v'], torch.ones(2))\n"
		"old_inner = torch.load(io.BytesIO(outer['blob']))\n"
		"assert type(old_inner['od']) is collections.OrderedDict\n"
		"inner = torch.load(io.BytesIO(swap(outer['blob'], open(d + '/span1', 'rb').read())))\n"
		"assert type(inner['od']) is pfren.OD and inner['od'] == {'a': 1}\n"
		"assert torch.equal(inner['w'], torch.arange(3.))\n"
		"print('ok', end='')\n";
	loaded l;
	pf_span_edit *v;
	uint32_t n;
	pf_error err;
	load(&l, make);
	ck_assert_uint_eq(l.m.n_pickles, 2);
	char *t = globals_with(&l, global_line(&l, "collections", "OrderedDict"), "pfren OD");
	ck_assert_msg(globals_edits(&l, t, &v, &n, &err) == 0, "%s", err.msg);
	/* each data.pkl names OrderedDict once (GLOBAL, then BINGET); sorted by span */
	ck_assert_uint_eq(n, 2);
	ck_assert_uint_eq(v[0].span, 0);
	ck_assert_uint_eq(v[1].span, 1);
	ck_assert_uint_ne(l.m.pickles[1].archive, l.m.pickles[0].archive);
	for (uint32_t s = 0; s < 2; s++) {
		buf b = apply_span(&l.m, s, v, n);
		char name[8];
		snprintf(name, sizeof(name), "span%u", s);
		put_file(name, b.p, b.n);
		free(b.p);
	}
	python_ok(verify);
	free(t);
	unload(&l);
}
END_TEST

/* ---- meta.json --------------------------------------------------------------------------- */

static const char make_scalars[] =
	"import sys, pickle\n"
	"s = ''.join(['sha', 'red'])\n"
	"d = {'lr': 0.001, 'epochs': 10, 'name': 'x', 'flag': True, 'none': None, 'big': 2**70, 'neg': -5,\n"
	"     'huge': 2**60, 'nested': {'a': [1, 2.5, 'three']}, 's1': s, 's2': s, 'tup': (1, 'tv'),\n"
	"     'k': {1: 'one', 2: 'two'}, 'keep': [0.1, 'keep', None], 'nan': float('nan')}\n"
	"sys.stdout.buffer.write(pickle.dumps(d, protocol=int(open(sys.argv[1] + '/proto').read())))\n";

START_TEST(meta_unchanged)
{
	loaded l;
	pf_span_edit *v;
	uint32_t n;
	pf_error err;
	set_proto(2);
	load(&l, make_scalars);
	char *s = shown_meta(&l);
	ck_assert_msg(meta_edits(&l, s, strlen(s), &v, &n, &err) == 0, "%s", err.msg);
	ck_assert_uint_eq(n, 0);
	/* compact, and as Python's json saves it */
	char *compact = json_dumps(l.t.meta, JSON_COMPACT | JSON_REAL_PRECISION(17));
	ck_assert_int_eq(meta_edits(&l, compact, strlen(compact), &v, &n, &err), 0);
	ck_assert_uint_eq(n, 0);
	size_t len;
	char *py = edited_meta(&l, "pass", &len);
	ck_assert_msg(meta_edits(&l, py, len, &v, &n, &err) == 0, "%s", err.msg);
	ck_assert_uint_eq(n, 0);
	free(py);
	free(compact);
	free(s);
	unload(&l);
}
END_TEST

static void meta_plain(int proto)
{
	static const char edit[] =
		"r['lr'] = 0.01; r['epochs'] = 20; r['name'] = 'renamed \\u20ac'; r['flag'] = False\n"
		"r['none'] = 3.5; r['big'] = 7; r['neg'] = {'int': '123456789012345678901234567890'}\n"
		"r['huge'] = {'int': '-1180591620717411303424'}\n"
		"r['nested']['a'][1] = None; r['nested']['a'][2] = 'THREE'\n"
		"r['s1'] = r['s2'] = 'both'; r['tup']['tuple'][1] = 'b'; [p for p in r['k']['dict'] if p[0] == 1][0][1] = 'uno'\n"
		"r['nan'] = {'float': '-inf'}\n";
	static const char verify[] =
		"import sys, pickle, pickletools, io\n"
		"old = pickle.loads(open(sys.argv[1] + '/in.bin', 'rb').read())\n"
		"b = open(sys.argv[1] + '/out.bin', 'rb').read()\n"
		"pickletools.dis(b, out=io.StringIO())\n"
		"want = dict(old, lr=0.01, epochs=20, name='renamed \\u20ac', flag=False, none=3.5, big=7,\n"
		"            neg=123456789012345678901234567890, huge=-(2**70), nested={'a': [1, None, 'THREE']},\n"
		"            s1='both', s2='both', tup=(1, 'b'), k={1: 'uno', 2: 'two'}, nan=float('-inf'))\n"
		"for d in (pickle.loads(b), pickle._loads(b)):\n"
		"    assert list(d) == list(want)\n"
		"    for k in want:\n"
		"        assert d[k] == want[k] and type(d[k]) is type(want[k]), (k, d[k], want[k])\n"
		"    assert d['s1'] is d['s2']\n"
		"print('ok', end='')\n";
	loaded l;
	pf_span_edit *v;
	uint32_t n;
	pf_error err;
	size_t len;
	set_proto(proto);
	load(&l, make_scalars);
	char *t = edited_meta(&l, edit, &len);
	ck_assert_msg(meta_edits(&l, t, len, &v, &n, &err) == 0, "p%d: %s", proto, err.msg);
	/* s1/s2 are one memoized str: one edit */
	ck_assert_uint_eq(n, 14);
	uint32_t nstr = 0;
	for (uint32_t i = 0; i < n; i++)
		nstr += v[i].e.kind == PF_EDIT_STR;
	ck_assert_uint_eq(nstr, 5);
	apply_plain(&l, v, n);
	python_ok(verify);
	free(t);
	unload(&l);
}

START_TEST(meta_plain_p0) { meta_plain(0); }
END_TEST
START_TEST(meta_plain_p2) { meta_plain(2); }
END_TEST
START_TEST(meta_plain_p4) { meta_plain(4); }
END_TEST

static const char make_ckpt[] =
	"import sys, io, torch\n"
	"d = {'hparams': {'lr': 0.001, 'epochs': 10, 'name': 'x', 'flag': True, 'none': None},\n"
	"     'weight': torch.arange(4.).reshape(2, 2), 'step': 3}\n"
	"b = io.BytesIO(); torch.save(d, b); sys.stdout.buffer.write(b.getvalue())\n";

START_TEST(meta_torch_zip_hparams)
{
	static const char edit[] =
		"h = r['hparams']\n"
		"h['lr'] = 0.0005; h['epochs'] = 12; h['name'] = 'y'; h['flag'] = False; h['none'] = 'nothing'\n"
		"r['step'] = 4\n";
	static const char verify[] =
		"import sys, io, zipfile, torch\n"
		"d = sys.argv[1]\n"
		"z = open(d + '/in.bin', 'rb').read(); new = open(d + '/span0', 'rb').read()\n"
		"zi = zipfile.ZipFile(io.BytesIO(z)); out = io.BytesIO()\n"
		"with zipfile.ZipFile(out, 'w', zipfile.ZIP_STORED) as zo:\n"
		"    for n in zi.namelist(): zo.writestr(n, new if n.endswith('/data.pkl') else zi.read(n))\n"
		"m = torch.load(io.BytesIO(out.getvalue()))\n"
		"assert list(m) == ['hparams', 'weight', 'step']\n"
		"h = m['hparams']\n"
		"assert h == {'lr': 0.0005, 'epochs': 12, 'name': 'y', 'flag': False, 'none': 'nothing'}, h\n"
		"assert type(h['epochs']) is int and type(h['lr']) is float and h['flag'] is False\n"
		"assert m['step'] == 4\n"
		"assert torch.equal(m['weight'], torch.arange(4.).reshape(2, 2))\n"
		"print('ok', end='')\n";
	loaded l;
	pf_span_edit *v;
	uint32_t n;
	pf_error err;
	size_t len;
	load(&l, make_ckpt);
	char *t = edited_meta(&l, edit, &len);
	ck_assert_msg(meta_edits(&l, t, len, &v, &n, &err) == 0, "%s", err.msg);
	ck_assert_uint_eq(n, 6);
	buf b = apply_span(&l.m, 0, v, n);
	put_file("span0", b.p, b.n);
	python_ok(verify);
	free(b.p);
	free(t);
	unload(&l);
}
END_TEST

/* Structural changes and fixed values are refused, naming the path. */
START_TEST(meta_refused)
{
	static const struct {
		const char *edit, *path;
	} cases[] = {
		{"del r['step']", "$.root"},
		{"r['extra'] = 1", "$.root"},
		{"r['hparams']['LR'] = r['hparams'].pop('lr')", "$.root.hparams"},
		{"h = r['hparams']; r['hparams'] = dict(reversed(list(h.items())))", "$.root.hparams"},
		{"r['hparams']['lr'] = [0.1]", "$.root.hparams.lr"},
		{"r['hparams']['lr'] = {'x': 1}", "$.root.hparams.lr"},
		{"r['hparams']['lr'] = {'int': '12x'}", "$.root.hparams.lr"},
		{"r['hparams']['lr'] = {'float': 'big'}", "$.root.hparams.lr"},
		{"r['weight']['dtype'] = 'float64'", "$.root.weight.dtype"},
		{"r['weight']['shape'][0] = 4", "$.root.weight.shape[0]"},
		{"r['weight']['shape'].append(1)", "$.root.weight.shape"},
		{"r['weight']['requires_grad'] = True", "$.root.weight.requires_grad"},
		{"r['weight'] = 5", "$.root.weight"},
		{"d['container'] = 'pickle'", "$.container"},
		{"d['protocol'] = 4", "$.protocol"},
		{"d['devices'] = ['cuda:0']", "$.devices[0]"},
		{"d['version'] = 1.0", "$.version"},
		{"r['hparams'] = None", "$.root.hparams"},
		/* NUL: meta.json shows it as U+FFFD, so it could not be read back (found by fuzz_edits) */
		{"r['hparams']['lr'] = 'a\\x00b'", "$.root.hparams.lr"},
	};
	loaded l;
	pf_span_edit *v;
	uint32_t n;
	pf_error err;
	size_t len;
	load(&l, make_ckpt);
	for (unsigned i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char *t = edited_meta(&l, cases[i].edit, &len);
		ck_assert_msg(meta_edits(&l, t, len, &v, &n, &err) == -1, "accepted: %s", cases[i].edit);
		ck_assert_msg(err.code == PF_E_INVALID, "%s: %s", cases[i].edit, err.msg);
		char want[128];
		snprintf(want, sizeof(want), "meta.json: %s: ", cases[i].path);
		ck_assert_msg(strstr(err.msg, want) != NULL, "%s: %s (want %s)", cases[i].edit, err.msg, want);
		ck_assert_ptr_null(v);
		ck_assert_uint_eq(n, 0);
		free(t);
	}
	/* not JSON, duplicate keys, empty */
	static const char *const bad[] = {"{", "{\"a\": 1, \"a\": 2}", "", "[1, 2]", "{} x", "null"};
	for (unsigned i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		ck_assert_msg(meta_edits(&l, bad[i], strlen(bad[i]), &v, &n, &err) == -1, "accepted '%s'", bad[i]);
		ck_assert_int_eq(err.code, PF_E_INVALID);
	}
	unload(&l);
}
END_TEST

/* A memoized str shown twice, a str shared with a dict key, a pair-form key. */
START_TEST(meta_shared_values)
{
	static const char make[] =
		"import sys, pickle\n"
		"s = ''.join(['sha', 'red'])\n"
		"k = ''.join(['ke', 'y'])\n"
		"d = {'s1': s, 's2': s, k: 1, 'v': k, 'p': {1: 'one'}}\n"
		"sys.stdout.buffer.write(pickle.dumps(d, protocol=4))\n";
	loaded l;
	pf_span_edit *v;
	uint32_t n;
	pf_error err;
	size_t len;
	load(&l, make);
	char *t = edited_meta(&l, "r['s1'] = 'one place only'", &len);
	ck_assert_int_eq(meta_edits(&l, t, len, &v, &n, &err), -1);
	ck_assert_int_eq(err.code, PF_E_INVALID);
	ck_assert_msg(strstr(err.msg, "$.root.s1") && strstr(err.msg, "shared"), "%s", err.msg);
	free(t);
	t = edited_meta(&l, "r['s1'] = 'a'; r['s2'] = 'b'", &len);
	ck_assert_int_eq(meta_edits(&l, t, len, &v, &n, &err), -1);
	ck_assert_int_eq(err.code, PF_E_INVALID);
	free(t);
	t = edited_meta(&l, "r['s1'] = r['s2'] = 7", &len);
	ck_assert_msg(meta_edits(&l, t, len, &v, &n, &err) == 0, "%s", err.msg);
	ck_assert_uint_eq(n, 1);
	ck_assert_int_eq(v[0].e.kind, PF_EDIT_SCALAR);
	free(t);
	/* 'key' is both a dict key and the value of 'v' */
	t = edited_meta(&l, "r['v'] = 'other'", &len);
	ck_assert_int_eq(meta_edits(&l, t, len, &v, &n, &err), -1);
	ck_assert_msg(err.code == PF_E_UNSUPPORTED && strstr(err.msg, "$.root.v"), "%s", err.msg);
	free(t);
	/* a key of the pair form is fixed; its value is not */
	t = edited_meta(&l, "r['p']['dict'][0][0] = 2", &len);
	ck_assert_int_eq(meta_edits(&l, t, len, &v, &n, &err), -1);
	ck_assert_msg(err.code == PF_E_INVALID && strstr(err.msg, "$.root.p.dict[0][0]"), "%s", err.msg);
	free(t);
	t = edited_meta(&l, "r['p']['dict'][0][1] = 'uno'", &len);
	ck_assert_msg(meta_edits(&l, t, len, &v, &n, &err) == 0, "%s", err.msg);
	ck_assert_uint_eq(n, 1);
	ck_assert_int_eq(v[0].e.kind, PF_EDIT_STR);
	free(t);
	unload(&l);
}
END_TEST

/* An sbi-shaped posterior (tests/sbi), pickled as sbi documents it. */
START_TEST(meta_and_globals_sbi)
{
	char make[2048], verify[4096];
	const char *sbi = find_sbi();
	snprintf(make, sizeof(make),
		 "import sys, pickle, torch\n"
		 "sys.path.insert(0, '%s')\n"
		 "from sbi.inference.posteriors.direct_posterior import DirectPosterior\n"
		 "from sbi.neural_nets.estimators.nflows_flow import NFlowsFlow\n"
		 "from sbi.utils.torchutils import BoxUniform\n"
		 "torch.manual_seed(3)\n"
		 "prior = BoxUniform(low=-2 * torch.ones(3), high=2 * torch.ones(3), device='cpu')\n"
		 "est = NFlowsFlow(theta_dim=3, x_dim=4, hidden=8)\n"
		 "post = DirectPosterior(est, prior, device='cpu', x_shape=torch.Size([1, 4]))\n"
		 "post.set_default_x(torch.randn(1, 4))\n"
		 "sys.stdout.buffer.write(pickle.dumps(post, protocol=4))\n",
		 sbi);
	snprintf(verify, sizeof(verify),
		 "import sys, io, pickle, pickletools, torch\n"
		 "sys.path.insert(0, '%s'); sys.path.insert(0, sys.argv[1])\n"
		 "import pfren\n"
		 "from sbi.utils.torchutils import BoxUniform\n"
		 "class Box(BoxUniform): pass\n"
		 "pfren.Box = Box\n"
		 "old = pickle.loads(open(sys.argv[1] + '/in.bin', 'rb').read())\n"
		 "b = open(sys.argv[1] + '/out.bin', 'rb').read()\n"
		 "pickletools.dis(b, out=io.StringIO())\n"
		 "new = pickle.loads(b)\n"
		 "assert type(new).__name__ == 'DirectPosterior' and type(new.prior) is Box\n"
		 "assert new.max_sampling_batch_size == 123 and new._purpose == 'edited'\n"
		 "assert new.prior.device == 'cpu' and new._device == 'cpu'\n"
		 "assert sorted(vars(new)) == sorted(vars(old))\n"
		 "for k in vars(old):\n"
		 "    if k in ('max_sampling_batch_size', '_purpose', 'prior', 'potential_fn', 'posterior_estimator', '_x'):\n"
		 "        continue\n"
		 "    assert getattr(new, k) == getattr(old, k), k\n"
		 "assert torch.equal(new._x, old._x) and torch.equal(new.prior.low, old.prior.low)\n"
		 "x = torch.zeros(1, 4)\n"
		 "sd_old, sd_new = old.posterior_estimator.state_dict(), new.posterior_estimator.state_dict()\n"
		 "assert sd_old.keys() == sd_new.keys() and all(torch.equal(sd_old[k], sd_new[k]) for k in sd_old)\n"
		 "print('ok', end='')\n",
		 sbi);
	loaded l;
	pf_span_edit *v, *vg;
	uint32_t n, ng;
	pf_error err;
	size_t len;
	load(&l, make);
	ck_assert_uint_gt(l.m.n_pickles, 1); /* the tensors' _load_from_bytes blobs */
	/* the device strings are one memoized 'cpu': changing one place is refused */
	char *t = edited_meta(&l, "r['state']['_device'] = 'cuda:0'", &len);
	ck_assert_int_eq(meta_edits(&l, t, len, &v, &n, &err), -1);
	ck_assert_msg(err.code == PF_E_INVALID && strstr(err.msg, "$.root.state._device"), "%s", err.msg);
	free(t);
	t = edited_meta(&l, "r['state']['max_sampling_batch_size'] = 123; r['state']['_purpose'] = 'edited'", &len);
	ck_assert_msg(meta_edits(&l, t, len, &v, &n, &err) == 0, "%s", err.msg);
	ck_assert_uint_eq(n, 2);
	free(t);
	char *g = globals_with(&l, global_line(&l, "sbi.utils.torchutils", "BoxUniform"), "pfren Box");
	ck_assert_msg(globals_edits(&l, g, &vg, &ng, &err) == 0, "%s", err.msg);
	ck_assert_uint_eq(ng, 1);
	pf_span_edit all[3] = {v[0], v[1], vg[0]};
	apply_plain(&l, all, 3);
	python_ok(verify);
	free(g);
	unload(&l);
}
END_TEST

static Suite *suite(void)
{
	Suite *s = suite_create("edits");
	TCase *py = tcase_create("python");
	tcase_add_checked_fixture(py, setup, teardown);
	tcase_set_timeout(py, 240);
	tcase_add_test(py, globals_unchanged_and_refused);
	tcase_add_test(py, globals_plain_p0);
	tcase_add_test(py, globals_plain_p2);
	tcase_add_test(py, globals_plain_p4);
	tcase_add_test(py, globals_embedded_zip);
	tcase_add_test(py, meta_unchanged);
	tcase_add_test(py, meta_plain_p0);
	tcase_add_test(py, meta_plain_p2);
	tcase_add_test(py, meta_plain_p4);
	tcase_add_test(py, meta_torch_zip_hparams);
	tcase_add_test(py, meta_refused);
	tcase_add_test(py, meta_shared_values);
	tcase_add_test(py, meta_and_globals_sbi);
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
