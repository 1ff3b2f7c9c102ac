/*
 * test_repickle.c - codec/repickle.c: the str re-emitter, the device edits
 * of a parsed model and pf_device_parse.
 *
 * Oracles are CPython 3.11 and torch 1.13 (/usr/bin/python3), run at test
 * time: torch.save / pickle.dump make the inputs, and the rewritten bytes
 * are loaded back with pickle.loads, the strict pure-Python unpickler
 * (pickle._loads: exact frames), pickletools.dis (memo and stack checks)
 * and torch.load.  Hand-written pickles cover every string opcode kind,
 * in and out of frames, and each expected output is spelled out byte for
 * byte (formats.md §10.1), then also loaded by Python.
 */
#include <check.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "model.h"
#include "repickle.h"
#include "testutil.h"

#define PYTHON "/usr/bin/python3"

/* ---- helpers ----------------------------------------------------------- */

typedef pf_test_buf buf;

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


static void setup(void)
{
	strcpy(tmpdir, "/tmp/pf-test-repickle-XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(tmpdir));
	static const char mod[] =
		"class Holder:\n"
		"    def __init__(self, dev):\n"
		"        self._device = dev\n"
		"        self.device = dev\n"
		"        self.other = 'gpu0'\n";
	write_file("pfdevmod.py", mod, sizeof(mod) - 1);
}

static void teardown(void)
{
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpdir);
	ck_assert_int_eq(system(cmd), 0);
}

static int rewrite(const uint8_t *in, size_t len, const pf_str_edit *e, uint32_t n, buf *out, pf_error *err)
{
	uint64_t measured = 0, olen = 0;
	memset(out, 0, sizeof(*out));
	pf_error_clear(err);
	if (pf_repickle(in, len, e, n, NULL, NULL, &measured, err))
		return -1;
	int rc = pf_repickle(in, len, e, n, pf_test_buf_sink, out, &olen, err);
	ck_assert_int_eq(rc, 0);
	ck_assert_uint_eq(olen, out->n);
	ck_assert_uint_eq(measured, out->n);
	return 0;
}

/* Python: frame check, pickletools.dis, both unpicklers. */
#define PY_CHECK_FRAMES \
	"import sys, io, pickle, pickletools\n" \
	"sys.path.insert(0, sys.argv[1])\n" \
	"def check(b):\n" \
	"    ops = list(pickletools.genops(b))\n" \
	"    starts = set(p for _, _, p in ops) | {len(b)}\n" \
	"    frames = [(p, p + 9 + a) for o, a, p in ops if o.name == 'FRAME']\n" \
	"    for s, e in frames:\n" \
	"        assert e in starts, ('frame end not at an opcode', s, e)\n" \
	"        assert not any(s < s2 < e for s2, _ in frames), ('nested frame', s)\n" \
	"    pickletools.dis(b, out=io.StringIO())\n" \
	"    a, c = pickle.loads(b), pickle._loads(b)\n" \
	"    return a, c, len(frames)\n"

/* ---- pf_device_parse ------------------------------------------------------ */

START_TEST(device_parse)
{
	static const char *good[] = {"cpu", "cuda", "cuda:0", "cuda:7", "cuda:10", "cuda:127", "mps", "mps:0",
				     "xpu", "xpu:3", "meta", "cpu\n", "cuda:1\n", "meta\n"};
	static const char *bad[] = {"", "\n", "cuda:", "cuda:-1", "gpu", "cpu:0", "meta:0", "cuda:01",
				    "cuda:128", "cuda:1000", "CPU", " cpu", "cpu ", "cpu\n\n", "cpu\r\n",
				    "cuda0", "cuda:1x", "cudaa", "mps:", "xpu:+1", "cuda:0:0",
				    "cpucpucpucpucpucpu", "hpu:0"};
	pf_device d;
	for (unsigned i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		ck_assert_msg(pf_device_parse(good[i], strlen(good[i]), &d) == 0, "rejected '%s'", good[i]);
		size_t l = strlen(good[i]) - (good[i][strlen(good[i]) - 1] == '\n');
		ck_assert_uint_eq(d.len, l);
		ck_assert(memcmp(d.text, good[i], l) == 0 && d.text[l] == 0);
	}
	for (unsigned i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		ck_assert_msg(pf_device_parse(bad[i], strlen(bad[i]), &d) != 0, "accepted '%s'", bad[i]);
	ck_assert_int_eq(pf_device_parse("cuda:12", 7, &d), 0);
	ck_assert_int_eq(d.index, 12);
	ck_assert_int_eq(d.type_len, 4);
	ck_assert_int_eq(pf_device_parse("mps", 3, &d), 0);
	ck_assert_int_eq(d.index, -1);
	ck_assert_int_eq(pf_device_parse("cpu\0", 4, NULL), -1);
	ck_assert_int_eq(pf_device_parse(NULL, 0, NULL), -1);
}
END_TEST

/* ---- hand-written cases ------------------------------------------------------ */

#define S(x) (const uint8_t *)(x), sizeof(x) - 1

typedef struct hcase {
	const char *name;
	const uint8_t *in;
	size_t in_len;
	uint64_t off;
	uint8_t kind;
	const char *text;
	const uint8_t *want;
	size_t want_len;
	const char *value;  /* Python expression of the value the output holds */
} hcase;

#define F8(n) "\x95" n "\0\0\0\0\0\0\0"

static const hcase cases[] = {
	/* BINUNICODE, protocol 2: same length by LONG_BINPUT, and a longer string */
	{"X same", S("\x80\x02X\x06\0\0\0cuda:0q\x01."), 2, PF_EDIT_STR, "cpu",
	 S("\x80\x02X\x03\0\0\0cpur\x01\0\0\0."), "'cpu'"},
	{"X grow", S("\x80\x02X\x03\0\0\0cpuq\x01."), 2, PF_EDIT_STR, "cuda:10",
	 S("\x80\x02X\x07\0\0\0cuda:10q\x01."), "'cuda:10'"},
	/* 14 -> 10 bytes: two padding BINPUTs to indices never used (no MEMOIZE in the stream) */
	{"X pads", S("\x80\x02X\x07\0\0\0cuda:10q\x01."), 2, PF_EDIT_STR, "cpu",
	 S("\x80\x02X\x03\0\0\0cpuq\x00q\x02q\x01."), "'cpu'"},
	/* SHORT_BINUNICODE inside a frame: BINUNICODE + the same MEMOIZE */
	{"8C same framed", S("\x80\x04" F8("\x0a") "\x8c\x06" "cuda:0\x94."), 11, PF_EDIT_STR, "cpu",
	 S("\x80\x04" F8("\x0a") "X\x03\0\0\0cpu\x94."), "'cpu'"},
	{"8C grow framed", S("\x80\x04" F8("\x07") "\x8c\x03" "cpu\x94."), 11, PF_EDIT_STR, "cuda:10",
	 S("\x80\x04" F8("\x0b") "\x8c\x07" "cuda:10\x94."), "'cuda:10'"},
	{"8C same unframed", S("\x80\x04\x8c\x06" "cuda:0\x94."), 2, PF_EDIT_STR, "cpu",
	 S("\x80\x04X\x03\0\0\0cpu\x94."), "'cpu'"},
	/* after a frame has ended: the frame keeps its length */
	{"8C grow after frame", S("\x80\x04" F8("\x03") "]\x94(\x8c\x03" "cpu\x94" "e."), 14, PF_EDIT_STR, "cuda:10",
	 S("\x80\x04" F8("\x03") "]\x94(\x8c\x07" "cuda:10\x94" "e."), "['cuda:10']"},
	/* BINUNICODE8: MEMOIZE -> BINPUT 0 (the slot MEMOIZE fills) */
	{"8D same", S("\x80\x04" F8("\x11") "\x8d\x06\0\0\0\0\0\0\0cuda:0\x94."), 11, PF_EDIT_STR, "mps:0",
	 S("\x80\x04" F8("\x11") "\x8d\x05\0\0\0\0\0\0\0mps:0q\x00."), "'mps:0'"},
	{"8D shrink", S("\x80\x04" F8("\x11") "\x8d\x06\0\0\0\0\0\0\0cuda:0\x94."), 11, PF_EDIT_STR, "cpu",
	 S("\x80\x04" F8("\x07") "\x8c\x03" "cpu\x94."), "'cpu'"},
	/* protocol 0 text: PUT with leading zeros keeps the length */
	{"V same", S("Vcuda:0\np0\n."), 0, PF_EDIT_STR, "cpu", S("Vcpu\np0000\n."), "'cpu'"},
	{"V grow", S("Vcpu\np0\n."), 0, PF_EDIT_STR, "cuda:10", S("Vcuda:10\np0\n."), "'cuda:10'"},
	{"V pad", S("(Vcuda:0\nl."), 1, PF_EDIT_STR, "cpu", S("(Vcpu\np0\nl."), "['cpu']"},
	{"V escapes", S("Vcpu\np0\n."), 0, PF_EDIT_STR, "a\\b\nc\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80",
	 S("Va\\u005cb\\u000ac\xe9\\u20ac\\U0001f600\np0\n."), "'a\\\\b\\nc\\xe9\\u20ac\\U0001f600'"},
	{"S same", S("S'cuda:0'\np0\n."), 0, PF_EDIT_STR, "cpu", S("S'cpu'\np0000\n."), "'cpu'"},
	{"S grow", S("S'cpu'\np0\n."), 0, PF_EDIT_STR, "cuda:10", S("Vcuda:10\np0\n."), "'cuda:10'"},
	{"S escapes", S("S'cuda:0abcde'\np0\n."), 0, PF_EDIT_STR, "a'b\\c\x01",
	 S("S'a\\'b\\\\c\\x01'\np0\n."), "'a\\'b\\\\c\\x01'"},
	/* Python 2 binary strings (protocol 1, no PROTO) */
	{"U same", S("U\x06" "cuda:0q\x00."), 0, PF_EDIT_STR, "cpu", S("U\x03" "cpur\x00\x00\x00\x00."), "'cpu'"},
	{"U grow", S("U\x03" "cpuq\x00."), 0, PF_EDIT_STR, "cuda:10", S("U\x07" "cuda:10q\x00."), "'cuda:10'"},
	{"T same", S("T\x06\0\0\0cuda:0q\x00."), 0, PF_EDIT_STR, "cpu", S("T\x03\0\0\0cpur\0\0\0\0."), "'cpu'"},
	{"T grow", S("T\x03\0\0\0cpuq\x00."), 0, PF_EDIT_STR, "cuda:10", S("U\x07" "cuda:10q\x00."), "'cuda:10'"},
	/* memo: a later BINGET of the edited string gets the new text */
	{"memo BINPUT", S("\x80\x02]q\x00(X\x06\0\0\0cuda:0q\x01h\x01" "e."), 6, PF_EDIT_STR, "cpu",
	 S("\x80\x02]q\x00(X\x03\0\0\0cpur\x01\0\0\0h\x01" "e."), "['cpu', 'cpu']"},
	{"memo pads", S("\x80\x02]q\x00(X\x07\0\0\0cuda:10q\x01h\x01" "e."), 6, PF_EDIT_STR, "cpu",
	 S("\x80\x02]q\x00(X\x03\0\0\0cpuq\x02q\x03q\x01h\x01" "e."), "['cpu', 'cpu']"},
	{"memo MEMOIZE", S("\x80\x04]\x94(\x8c\x06" "cuda:0\x94h\x01" "e."), 5, PF_EDIT_STR, "cpu",
	 S("\x80\x04]\x94(X\x03\0\0\0cpu\x94h\x01" "e."), "['cpu', 'cpu']"},
	{"memo MEMOIZE grow", S("\x80\x04" F8("\x0d") "]\x94(\x8c\x03" "cpu\x94h\x01" "e."), 14, PF_EDIT_STR,
	 "cuda:10", S("\x80\x04" F8("\x11") "]\x94(\x8c\x07" "cuda:10\x94h\x01" "e."), "['cuda:10', 'cuda:10']"},
	/* torch.device('cuda', 0) -> torch.device('cpu') */
	{"device p2", S("\x80\x02" "ctorch\ndevice\nq\x00X\x04\0\0\0cudaq\x01K\x00\x86q\x02Rq\x03."), 31,
	 PF_EDIT_TUPLE1, "cpu", S("\x80\x02" "ctorch\ndevice\nq\x00X\x03\0\0\0cpuq\x01\x85r\x02\0\0\0Rq\x03."),
	 "torch.device('cpu')"},
	{"device p4", S("\x80\x04" F8("\x21") "\x8c\x05torch\x94\x8c\x06" "device\x94\x93\x94\x8c\x04" "cuda\x94K\x00"
			"\x86\x94R\x94."), 39, PF_EDIT_TUPLE1, "cpu",
	 S("\x80\x04" F8("\x21") "\x8c\x05torch\x94\x8c\x06" "device\x94\x93\x94X\x03\0\0\0cpu\x94\x85\x94R\x94."),
	 "torch.device('cpu')"},
	{"device p4 index", S("\x80\x04" F8("\x21") "\x8c\x05torch\x94\x8c\x06" "device\x94\x93\x94\x8c\x04" "cuda\x94"
			      "K\x00\x86\x94R\x94."), 39, PF_EDIT_TUPLE1, "cuda:1",
	 S("\x80\x04" F8("\x21") "\x8c\x05torch\x94\x8c\x06" "device\x94\x93\x94\x8c\x06" "cuda:1\x94\x85\x94R\x94."),
	 "torch.device('cuda:1')"},
	{"device p4 grow", S("\x80\x04" F8("\x21") "\x8c\x05torch\x94\x8c\x06" "device\x94\x93\x94\x8c\x04" "cuda\x94"
			     "K\x00\x86\x94R\x94."), 39, PF_EDIT_TUPLE1, "cuda:10",
	 S("\x80\x04" F8("\x22") "\x8c\x05torch\x94\x8c\x06" "device\x94\x93\x94\x8c\x07" "cuda:10\x94\x85\x94R\x94."),
	 "torch.device('cuda:10')"},
	/* the tuple's items straddle two frames: the frames merge */
	{"device across frames", S("\x80\x04" F8("\x1a") "\x8c\x05torch\x94\x8c\x06" "device\x94\x93\x94\x8c\x04"
				   "cuda\x94" F8("\x07") "K\x00\x86\x94R\x94."), 48, PF_EDIT_TUPLE1, "cpu",
	 S("\x80\x04" F8("\x2a") "\x8c\x05torch\x94\x8c\x06" "device\x94\x93\x94\x8d\x03\0\0\0\0\0\0\0cpuq\x03"
	   "\x85r\x04\0\0\0R\x94."), "torch.device('cpu')"},
	/* protocol 1: MARK ... TUPLE */
	{"device mark", S("ctorch\ndevice\nq\x00(X\x04\0\0\0cudaq\x01K\x00tq\x02Rq\x03."), 30, PF_EDIT_TUPLE1,
	 "cpu", S("ctorch\ndevice\nq\x00(X\x03\0\0\0cpuq\x01tr\x02\0\0\0Rq\x03."), "torch.device('cpu')"},
};

#define NCASES (sizeof(cases) / sizeof(cases[0]))

static void hex_dump(char *o, size_t cap, const uint8_t *p, size_t n)
{
	size_t k = 0;
	for (size_t i = 0; i < n && k + 4 < cap; i++)
		k += (size_t)snprintf(o + k, cap - k, "%02x", p[i]);
	o[k] = 0;
}

START_TEST(hand_cases)
{
	/* a Python script that checks every output: value, frames, memo */
	size_t cap = 1 << 16, k = 0;
	char *code = malloc(cap);
	k += (size_t)snprintf(code + k, cap - k, "%s", PY_CHECK_FRAMES "import torch\nbad = []\n");
	for (unsigned i = 0; i < NCASES; i++) {
		const hcase *c = &cases[i];
		pf_str_edit e = {.op_off = c->off, .new_text = c->text, .new_len = strlen(c->text), .kind = c->kind};
		buf out;
		pf_error err;
		char got[512], want[512];
		ck_assert_msg(rewrite(c->in, c->in_len, &e, 1, &out, &err) == 0, "%s: %s at %llu", c->name, err.msg,
			      (unsigned long long)err.offset);
		hex_dump(got, sizeof(got), out.p, out.n);
		hex_dump(want, sizeof(want), c->want, c->want_len);
		ck_assert_msg(out.n == c->want_len && memcmp(out.p, c->want, out.n) == 0, "%s:\n got  %s\n want %s",
			      c->name, got, want);
		/* same length whenever the expected output says so */
		k += (size_t)snprintf(code + k, cap - k,
				      "a, c, nf = check(bytes.fromhex('%s'))\n"
				      "if not (a == c == %s): bad.append(('%s', a, c))\n",
				      got, c->value, c->name);
		free(out.p);
	}
	k += (size_t)snprintf(code + k, cap - k, "print(repr(bad) if bad else 'ok', end='')\n");
	ck_assert_uint_lt(k, cap - 1);
	size_t n;
	uint8_t *res = pf_test_python(code, tmpdir, &n);
	ck_assert_msg(n == 2 && memcmp(res, "ok", 2) == 0, "python: %.*s", (int)n, (const char *)res);
	free(res);
	free(code);
}
END_TEST

START_TEST(no_edits_identity)
{
	for (unsigned i = 0; i < NCASES; i++) {
		buf out;
		pf_error err;
		ck_assert_int_eq(rewrite(cases[i].in, cases[i].in_len, NULL, 0, &out, &err), 0);
		ck_assert_uint_eq(out.n, cases[i].in_len);
		ck_assert(memcmp(out.p, cases[i].in, out.n) == 0);
		free(out.p);
	}
}
END_TEST

/* ---- malformed input and bad edits ---------------------------------------------- */

static int try_one(const uint8_t *in, size_t len, const pf_str_edit *e, uint32_t n, pf_error *err)
{
	buf out;
	int rc = rewrite(in, len, e, n, &out, err);
	free(out.p);
	if (rc)
		ck_assert_int_ne(err->code, PF_OK);
	return rc;
}

START_TEST(truncations_fail)
{
	for (unsigned i = 0; i < NCASES; i++) {
		const hcase *c = &cases[i];
		pf_str_edit e = {.op_off = c->off, .new_text = c->text, .new_len = strlen(c->text), .kind = c->kind};
		for (size_t l = 0; l < c->in_len; l++) {
			uint8_t *cut = malloc(l ? l : 1);
			memcpy(cut, c->in, l);
			pf_error err;
			ck_assert_msg(try_one(cut, l, &e, 1, &err) != 0, "%s: prefix %zu accepted", c->name, l);
			ck_assert_msg(try_one(cut, l, NULL, 0, &err) != 0, "%s: prefix %zu accepted", c->name, l);
			free(cut);
		}
	}
}
END_TEST

START_TEST(mutations_never_crash)
{
	static const uint8_t vals[] = {0x00, 0xff, '.', 0x95, 'q', 'r', 0x94, '\n', 0x85, 0x86, 't', '(', 0x8d};
	unsigned ok = 0, failed = 0;
	for (unsigned i = 0; i < NCASES; i++) {
		const hcase *c = &cases[i];
		pf_str_edit e = {.op_off = c->off, .new_text = c->text, .new_len = strlen(c->text), .kind = c->kind};
		uint8_t *m = malloc(c->in_len);
		for (size_t pos = 0; pos < c->in_len; pos++)
			for (unsigned v = 0; v <= sizeof(vals); v++) {
				memcpy(m, c->in, c->in_len);
				m[pos] = v < sizeof(vals) ? vals[v] : (uint8_t)(m[pos] ^ 1);
				pf_error err;
				if (try_one(m, c->in_len, &e, 1, &err))
					failed++;
				else
					ok++;
			}
		free(m);
	}
	ck_assert_uint_gt(failed, 0);
	ck_assert_uint_gt(ok, 0);
}
END_TEST

START_TEST(bad_edits)
{
	static const uint8_t p2[] = "\x80\x02" "ctorch\ndevice\nq\x00X\x04\0\0\0cudaq\x01K\x00\x86q\x02Rq\x03.";
	size_t n = sizeof(p2) - 1;
	pf_error err;
	pf_str_edit e = {.op_off = 25, .new_text = "cpu", .new_len = 3, .kind = PF_EDIT_STR};
	/* not at an opcode / not a string / not a tuple */
	e.op_off = 22;
	ck_assert_int_ne(try_one(p2, n, &e, 1, &err), 0);
	ck_assert_int_eq(err.code, PF_E_FORMAT);
	e.op_off = 16;
	ck_assert_int_ne(try_one(p2, n, &e, 1, &err), 0);
	ck_assert_int_eq(err.code, PF_E_FORMAT);
	e.op_off = 18;
	e.kind = PF_EDIT_TUPLE1;
	ck_assert_int_ne(try_one(p2, n, &e, 1, &err), 0);
	e.op_off = 1000;
	ck_assert_int_ne(try_one(p2, n, &e, 1, &err), 0);
	e.kind = 7;
	e.op_off = 18;
	ck_assert_int_ne(try_one(p2, n, &e, 1, &err), 0);
	/* two edits at one opcode; overlapping edits */
	pf_str_edit two[2] = {{.op_off = 18, .new_text = "cpu", .new_len = 3},
			      {.op_off = 18, .new_text = "cpu", .new_len = 3}};
	ck_assert_int_ne(try_one(p2, n, two, 2, &err), 0);
	two[1] = (pf_str_edit){.op_off = 31, .new_text = "cpu", .new_len = 3, .kind = PF_EDIT_TUPLE1};
	ck_assert_int_ne(try_one(p2, n, two, 2, &err), 0);
	ck_assert_int_eq(err.code, PF_E_FORMAT);
	/* text that is not UTF-8 */
	e = (pf_str_edit){.op_off = 18, .new_text = "\xff", .new_len = 1};
	ck_assert_int_ne(try_one(p2, n, &e, 1, &err), 0);
	/* a memoized second tuple item */
	static const uint8_t t2[] = "\x80\x02X\x01\0\0\0aq\x00X\x01\0\0\0bq\x01\x86.";
	e = (pf_str_edit){.op_off = 18, .new_text = "cpu", .new_len = 3, .kind = PF_EDIT_TUPLE1};
	ck_assert_int_ne(try_one(t2, sizeof(t2) - 1, &e, 1, &err), 0);
	ck_assert_int_eq(err.code, PF_E_UNSUPPORTED);
	/* bytes after STOP; a frame too long; a frame ending inside an opcode; nested frames */
	static const uint8_t after[] = "\x80\x02N.N";
	ck_assert_int_ne(try_one(after, sizeof(after) - 1, NULL, 0, &err), 0);
	static const uint8_t longf[] = "\x80\x04" F8("\x09") "N.";
	ck_assert_int_ne(try_one(longf, sizeof(longf) - 1, NULL, 0, &err), 0);
	static const uint8_t midf[] = "\x80\x04" F8("\x02") "\x8c\x01" "a.";
	ck_assert_int_ne(try_one(midf, sizeof(midf) - 1, NULL, 0, &err), 0);
	ck_assert_int_eq(err.code, PF_E_FORMAT);
	static const uint8_t nest[] = "\x80\x04" F8("\x0b") F8("\x01") "N.";
	ck_assert_int_ne(try_one(nest, sizeof(nest) - 1, NULL, 0, &err), 0);
	/* and the good edit works, measuring only */
	e = (pf_str_edit){.op_off = 18, .new_text = "cpu", .new_len = 3};
	pf_error_clear(&err);
	ck_assert_int_eq(pf_repickle(p2, n, &e, 1, NULL, NULL, NULL, &err), 0);
}
END_TEST

static int failing_sink(void *ctx, const void *p, size_t n)
{
	(void)ctx;
	(void)p;
	(void)n;
	return -1;
}

START_TEST(sink_failure)
{
	static const uint8_t p2[] = "\x80\x02X\x06\0\0\0cuda:0q\x01.";
	pf_str_edit e = {.op_off = 2, .new_text = "cpu", .new_len = 3};
	pf_error err = {0};
	ck_assert_int_eq(pf_repickle(p2, sizeof(p2) - 1, &e, 1, failing_sink, NULL, NULL, &err), -1);
	ck_assert_int_eq(err.code, PF_E_NOMEM);
}
END_TEST

/* ---- real files: torch.save zip (protocol 2) -------------------------------------- */

START_TEST(torch_zip_locations)
{
	static const char save[] =
		"import sys, io, itertools, torch\n"
		"tags = itertools.cycle(['cuda:0', 'cuda:10', 'mps', 'meta', 'cuda:1'])\n"
		"torch.serialization.register_package(1, lambda obj: next(tags), lambda obj, loc: None)\n"
		"a = torch.arange(12.).reshape(3, 4)\n"
		"m = {'a': a, 'v': a[1], 'b': torch.ones(3, dtype=torch.int64), 'c': torch.zeros(2, dtype=torch.float16),\n"
		"     'd': torch.tensor([True, False]), 'e': torch.arange(5, dtype=torch.int32),\n"
		"     'p': torch.nn.Parameter(torch.ones(2, 2))}\n"
		"b = io.BytesIO(); torch.save(m, b); sys.stdout.buffer.write(b.getvalue())\n";
	static const char verify[] = PY_CHECK_FRAMES
		"import zipfile, torch\n"
		"d = sys.argv[1]\n"
		"z = open(d + '/in0', 'rb').read(); new = open(d + '/in1', 'rb').read()\n"
		"zi = zipfile.ZipFile(io.BytesIO(z))\n"
		"names = zi.namelist()\n"
		"pkl = [n for n in names if n.endswith('/data.pkl')][0]\n"
		"old = zi.read(pkl)\n"
		"assert len(new) == len(old)\n"
		"def locs_of(b):\n"
		"    locs = []\n"
		"    class U(pickle.Unpickler):\n"
		"        def find_class(self, mod, name):\n"
		"            if mod.startswith('torch'): return lambda *a: ('T', name, a)\n"
		"            return super().find_class(mod, name)\n"
		"        def persistent_load(self, pid):\n"
		"            locs.append(pid[3]); return pid[2]\n"
		"    U(io.BytesIO(b)).load()\n"
		"    return locs\n"
		"lo, ln = locs_of(old), locs_of(new)\n"
		"assert len(lo) == len(ln) == 7 and set(lo) == {'cuda:0', 'cuda:10', 'mps', 'meta', 'cuda:1'}, lo\n"
		"assert all(l == 'cpu' for l in ln), ln\n"
		"pickletools.dis(new, out=io.StringIO())\n"
		"out = io.BytesIO()\n"
		"with zipfile.ZipFile(out, 'w', zipfile.ZIP_STORED) as zo:\n"
		"    for n in names: zo.writestr(n, new if n == pkl else zi.read(n))\n"
		"a = torch.load(io.BytesIO(z), map_location='cpu')\n"
		"b = torch.load(io.BytesIO(out.getvalue()))\n"
		"assert a.keys() == b.keys()\n"
		"for k in a: assert torch.equal(a[k], b[k]) and b[k].device.type == 'cpu', k\n"
		"assert isinstance(b['p'], torch.nn.Parameter)\n"
		"print('ok', end='')\n";
	size_t zlen, n;
	uint8_t *zip = pf_test_python(save, tmpdir, &zlen);
	pf_model m;
	pf_error err = {0};
	ck_assert_msg(pf_model_open(&m, zip, zlen, NULL, &err) == 0, "%s", err.msg);
	uint32_t seg = 0;
	for (pf_nid id = 1; id < m.g.n_nodes; id++)
		if (m.g.nodes[id].kind == PF_K_PERSID)
			seg = m.g.nodes[id].seg;
	ck_assert_uint_ne(seg, 0);
	const pf_segment *s = &m.segs[seg];
	pf_device dev;
	ck_assert_int_eq(pf_device_parse("cpu\n", 4, &dev), 0);
	pf_edit_list l = {0};
	ck_assert_msg(pf_device_edits(&m, seg, 0, s->len, &dev, &l, &err) == 0, "%s", err.msg);
	/* 'mps', 'meta', ... are constants: memoized once, referenced by BINGET after */
	ck_assert_uint_ge(l.n, 5);
	ck_assert_uint_eq(l.n, l.n_locations);
	ck_assert_uint_eq(l.n_devices + l.n_attrs, 0);
	buf out;
	ck_assert_msg(rewrite(s->p, s->len, l.v, l.n, &out, &err) == 0, "%s at %llu", err.msg,
		      (unsigned long long)err.offset);
	ck_assert_uint_eq(out.n, s->len);
	write_file("in0", zip, zlen);
	write_file("in1", out.p, out.n);
	uint8_t *res = pf_test_python(verify, tmpdir, &n);
	ck_assert_msg(n == 2 && memcmp(res, "ok", 2) == 0, "python: %.*s", (int)n, (const char *)res);
	/* the codec's own pickle machine reads 'cpu' in every persistent id */
	pf_graph g;
	pf_pickle_info info;
	unsigned npid = 0;
	ck_assert_int_eq(pf_graph_init(&g, NULL, &err), 0);
	ck_assert_int_eq(pf_pickle_run(&g, out.p, out.n, 0, 0, 0, &info, &err), 0);
	for (pf_nid id = 1; id < g.n_nodes; id++)
		if (g.nodes[id].kind == PF_K_PERSID) {
			npid++;
			ck_assert(pf_str_eq(&g, pf_seq_at(&g, g.nodes[id].u.persid.pid, 3), "cpu"));
		}
	ck_assert_uint_eq(npid, 7);
	pf_graph_free(&g);
	free(res);
	free(out.p);
	pf_edit_list_free(&l);
	pf_model_free(&m);
	free(zip);
}
END_TEST

/* ---- real files: pickle.dump protocol 4 / 5 --------------------------------------------- */

/* size: -1 output shorter, 1 longer, 0 not checked */
static void plain_pickle(int proto, const char *devtext, uint32_t want_devices, uint32_t want_attrs, int size)
{
	char save[2048], verify[4096];
	snprintf(save, sizeof(save),
		 "import sys, pickle, torch\n"
		 "sys.path.insert(0, sys.argv[1]); import pfdevmod\n"
		 "H = pfdevmod.Holder\n"
		 "d = {}\n"
		 "d['pad'] = ['s%%d' %% i for i in range(20000)]\n"
		 "d['d0'] = torch.device('cuda', 0); d['d1'] = torch.device('cuda:1')\n"
		 "d['dcpu'] = torch.device('cpu'); d['dcuda'] = torch.device('cuda')\n"
		 "d['h'] = H('cuda:0'); d['h2'] = H('mps:0')\n"
		 "d['cfg'] = {'device': 'cuda:3', 'name': ''.join(['cuda', ':0']), 'n': 'cuda:0x'}\n"
		 "d['big'] = b'x' * 70000\n"
		 "d['late'] = torch.device('cuda', 2); d['h3'] = H('xpu:1')\n"
		 "d['pad2'] = [str(i) for i in range(30000)]\n"
		 "d['h4'] = H('cuda:10')\n"
		 "sys.stdout.buffer.write(pickle.dumps(d, protocol=%d))\n",
		 proto);
	snprintf(verify, sizeof(verify), PY_CHECK_FRAMES
		 "import torch\n"
		 "new = open(sys.argv[1] + '/in0', 'rb').read()\n"
		 "DEV = '%.*s'\n"
		 "a, c, nf = check(new)\n"
		 "assert nf >= 3, nf\n"
		 "want = torch.device(DEV)\n"
		 "for d in (a, c):\n"
		 "    for k in ('d0', 'd1', 'dcpu', 'dcuda', 'late'): assert d[k] == want, (k, d[k])\n"
		 "    for k in ('h', 'h2', 'h3', 'h4'):\n"
		 "        assert d[k]._device == DEV and d[k].device == DEV and d[k].other == 'gpu0', k\n"
		 "    assert d['cfg'] == {'device': DEV, 'name': 'cuda:0', 'n': 'cuda:0x'}, d['cfg']\n"
		 "    assert d['big'] == b'x' * 70000\n"
		 "    assert d['pad'] == ['s%%d' %% i for i in range(20000)]\n"
		 "    assert d['pad2'] == [str(i) for i in range(30000)]\n"
		 "print('ok', end='')\n",
		 (int)strcspn(devtext, "\n"), devtext);
	size_t len, n;
	uint8_t *pk = pf_test_python(save, tmpdir, &len);
	pf_model m;
	pf_error err = {0};
	ck_assert_msg(pf_model_open(&m, pk, len, NULL, &err) == 0, "%s", err.msg);
	pf_device dev;
	ck_assert_int_eq(pf_device_parse(devtext, strlen(devtext), &dev), 0);
	pf_edit_list l = {0};
	ck_assert_msg(pf_device_edits(&m, 0, 0, len, &dev, &l, &err) == 0, "%s", err.msg);
	ck_assert_uint_eq(l.n_devices, want_devices);
	ck_assert_uint_eq(l.n_attrs, want_attrs);
	ck_assert_uint_eq(l.n_locations, 0);
	buf out;
	ck_assert_msg(rewrite(pk, len, l.v, l.n, &out, &err) == 0, "%s at %llu", err.msg,
		      (unsigned long long)err.offset);
	if (size < 0)
		ck_assert_uint_lt(out.n, len);
	if (size > 0)
		ck_assert_uint_gt(out.n, len);
	write_file("in0", out.p, out.n);
	uint8_t *res = pf_test_python(verify, tmpdir, &n);
	ck_assert_msg(n == 2 && memcmp(res, "ok", 2) == 0, "python: %.*s", (int)n, (const char *)res);
	free(res);
	free(out.p);
	pf_edit_list_free(&l);
	pf_model_free(&m);
	free(pk);
}

/* devices: d0 d1 dcuda late (dcpu already 'cpu'); attrs: h (one shared str), h2, h3, h4, cfg.
 * ('cuda',) and 'mps:0' after memo index 255 cannot keep their length: frames are fixed. */
START_TEST(plain_p4_cpu) { plain_pickle(4, "cpu", 4, 5, -1); }
END_TEST
START_TEST(plain_p5_cpu) { plain_pickle(5, "cpu", 4, 5, -1); }
END_TEST
START_TEST(plain_p4_grow) { plain_pickle(4, "cuda:127\n", 5, 5, 1); }
END_TEST
START_TEST(plain_p5_meta) { plain_pickle(5, "meta", 5, 5, 0); }
END_TEST

/* A small protocol-4 pickle whose every device edit keeps its length. */
START_TEST(plain_p4_same_length)
{
	static const char save[] =
		"import sys, pickle, torch\n"
		"sys.path.insert(0, sys.argv[1]); import pfdevmod\n"
		"d = {'a': torch.device('cuda', 0), 'b': torch.device('cuda:1'), 'h': pfdevmod.Holder('cuda:0'),\n"
		"     'x': [torch.device('cuda', 3)] * 3, 'c': {'_device': 'cuda:1'}}\n"
		"sys.stdout.buffer.write(pickle.dumps(d, protocol=4))\n";
	static const char verify[] = PY_CHECK_FRAMES
		"import torch\n"
		"new = open(sys.argv[1] + '/in0', 'rb').read()\n"
		"a, c, nf = check(new)\n"
		"assert nf == 1\n"
		"for d in (a, c):\n"
		"    cpu = torch.device('cpu')\n"
		"    assert d['a'] == d['b'] == cpu and d['x'] == [cpu] * 3\n"
		"    assert d['h']._device == d['h'].device == 'cpu' and d['c'] == {'_device': 'cpu'}\n"
		"print('ok', end='')\n";
	size_t len, n;
	uint8_t *pk = pf_test_python(save, tmpdir, &len);
	pf_model m;
	pf_error err = {0};
	ck_assert_msg(pf_model_open(&m, pk, len, NULL, &err) == 0, "%s", err.msg);
	pf_device dev;
	ck_assert_int_eq(pf_device_parse("cpu", 3, &dev), 0);
	pf_edit_list l = {0};
	ck_assert_int_eq(pf_device_edits(&m, 0, 0, len, &dev, &l, &err), 0);
	ck_assert_uint_eq(l.n_devices, 3);
	ck_assert_uint_eq(l.n_attrs, 2);
	buf out;
	ck_assert_msg(rewrite(pk, len, l.v, l.n, &out, &err) == 0, "%s", err.msg);
	ck_assert_uint_eq(out.n, len);
	write_file("in0", out.p, out.n);
	uint8_t *res = pf_test_python(verify, tmpdir, &n);
	ck_assert_msg(n == 2 && memcmp(res, "ok", 2) == 0, "python: %.*s", (int)n, (const char *)res);
	/* every truncation of a real pickle fails cleanly */
	for (size_t cut = 0; cut < len; cut++) {
		pf_error e2;
		ck_assert_int_ne(try_one(pk, cut, l.v, l.n, &e2), 0);
	}
	free(res);
	free(out.p);
	pf_edit_list_free(&l);
	pf_model_free(&m);
	free(pk);
}
END_TEST

START_TEST(device_edits_bad_range)
{
	static const uint8_t p[] = "\x80\x02X\x06\0\0\0cuda:0q\x01.";
	pf_model m;
	pf_error err = {0};
	ck_assert_int_eq(pf_model_open(&m, p, sizeof(p) - 1, NULL, &err), 0);
	pf_device dev;
	pf_edit_list l = {0};
	ck_assert_int_eq(pf_device_parse("cpu", 3, &dev), 0);
	ck_assert_int_eq(pf_device_edits(&m, 0, 0, sizeof(p), &dev, &l, &err), -1);
	pf_error_clear(&err);
	ck_assert_int_eq(pf_device_edits(&m, 99, 0, 1, &dev, &l, &err), -1);
	pf_error_clear(&err);
	/* a bare str is no attribute: nothing to edit */
	ck_assert_int_eq(pf_device_edits(&m, 0, 0, sizeof(p) - 1, &dev, &l, &err), 0);
	ck_assert_uint_eq(l.n, 0);
	pf_edit_list_free(&l);
	pf_model_free(&m);
}
END_TEST

/* ---- global renames and scalar values: hand-written cases --------------------- */

#define EG(o, t) {.op_off = (o), .new_text = (t), .new_len = sizeof(t) - 1, .kind = PF_EDIT_GLOBAL}
#define EI(o, t) {.op_off = (o), .new_text = (t), .new_len = sizeof(t) - 1, .kind = PF_EDIT_SCALAR, .vtype = PF_V_INT}
#define ES(o, t) {.op_off = (o), .new_text = (t), .new_len = sizeof(t) - 1, .kind = PF_EDIT_SCALAR, .vtype = PF_V_STR}
#define EF(o, x) {.op_off = (o), .kind = PF_EDIT_SCALAR, .vtype = PF_V_FLOAT, .f = (x)}
#define EB(o, x) {.op_off = (o), .kind = PF_EDIT_SCALAR, .vtype = PF_V_BOOL, .b = (x)}
#define EN(o) {.op_off = (o), .kind = PF_EDIT_SCALAR, .vtype = PF_V_NONE}

typedef struct vcase {
	const char *name;
	const uint8_t *in;
	size_t in_len;
	pf_str_edit e;
	const uint8_t *want;
	size_t want_len;
	const char *value;  /* Python expression of the value the output holds */
} vcase;

/* two STACK_GLOBALs share the memoized 'builtins' (BINGET 0): only the first is renamed */
#define SG_PAIR(fr, g1) "\x80\x04" F8(fr) "\x8c\x08" "builtins\x94\x8c\x03" "set\x94" g1 "\x94)\x85\x94R\x94h\x00\x8c\x04" \
	"list\x94\x93\x94)\x85\x94R\x94\x86\x94."

static const vcase vcases[] = {
	{"GLOBAL p2", S("\x80\x02" "c__builtin__\nset\nq\x00]q\x01\x85q\x02Rq\x03."), EG(2, "builtins\nfrozenset"),
	 S("\x80\x02" "cbuiltins\nfrozenset\nq\x00]q\x01\x85q\x02Rq\x03."), "frozenset()"},
	{"STACK_GLOBAL p4 framed", S(SG_PAIR("\x2b", "\x93")), EG(28, "builtins\nfrozenset"),
	 S(SG_PAIR("\x40", "00cbuiltins\nfrozenset\n")), "(frozenset(), [])"},
	{"STACK_GLOBAL second", S(SG_PAIR("\x2b", "\x93")), EG(44, "builtins\ntuple"),
	 S("\x80\x04" F8("\x3c") "\x8c\x08" "builtins\x94\x8c\x03" "set\x94\x93\x94)\x85\x94R\x94h\x00\x8c\x04"
	   "list\x94" "00cbuiltins\ntuple\n\x94)\x85\x94R\x94\x86\x94."), "(set(), ())"},
	{"INST p0", S("(S'ab'\np0\ni__builtin__\nlist\np1\n."), EG(10, "builtins\ntuple"),
	 S("(S'ab'\np0\nibuiltins\ntuple\np1\n."), "('a', 'b')"},
	{"None->int p2", S("\x80\x02N."), EI(2, "5"), S("\x80\x02K\x05."), "5"},
	{"int grow LONG1", S("\x80\x02K\x05."), EI(2, "1000000000000000000000000000000"),
	 S("\x80\x02\x8a\x0d\x00\x00\x00@\xea\xedtF\xd0\x9c,\x9f\x0c."), "10**30"},
	{"BININT same length", S("\x80\x02J\xa0\x86\x01\x00."), EI(2, "7"), S("\x80\x02J\x07\x00\x00\x00."), "7"},
	{"negative", S("\x80\x02K\x05."), EI(2, "-1"), S("\x80\x02\x8a\x01\xff."), "-1"},
	{"big negative", S("\x80\x02N."), EI(2, "-1180591620717411303424"),
	 S("\x80\x02\x8a\x09\0\0\0\0\0\0\0\0\xc0."), "-(2**70)"},
	{"LONG1 -> K", S("\x80\x02\x8a\x09\0\0\0\0\0\0\0\0@."), EI(2, "3"), S("\x80\x02K\x03."), "3"},
	{"LONG1 -> LONG1 same", S("\x80\x02\x8a\x02\xff\x7f."), EI(2, "-32768"), S("\x80\x02\x8a\x02\x00\x80."),
	 "-32768"},
	{"bool p2", S("\x80\x02\x88."), EB(2, false), S("\x80\x02\x89."), "False"},
	{"bool p0", S("I01\n."), EB(0, false), S("I00\n."), "False"},
	{"int p0", S("I5\n."), EI(0, "123"), S("I123\n."), "123"},
	{"long p0", S("I5\n."), EI(0, "1099511627776"), S("L1099511627776L\n."), "2**40"},
	{"LONG text -> small p0", S("L12345678901234567890L\n."), EI(0, "-5"), S("I-5\n."), "-5"},
	{"bool -> int p0", S("(I01\nl."), EI(1, "1"), S("(L1L\nl."), "[1]"},
	{"float p0", S("F0.5\n."), EF(0, 0.001), S("F0.001\n."), "0.001"},
	{"float p0 round trip", S("F0.5\n."), EF(0, 0.1 + 0.2), S("F0.30000000000000004\n."), "0.1 + 0.2"},
	{"float inf p0", S("F0.5\n."), EF(0, -HUGE_VAL), S("F-inf\n."), "float('-inf')"},
	{"float p2 same", S("\x80\x02G\x3f\xe0\0\0\0\0\0\0."), EF(2, 0.25), S("\x80\x02G\x3f\xd0\0\0\0\0\0\0."), "0.25"},
	{"int->float p1", S("]q\x00(K\x01K\x02" "e."), EF(6, 2.5), S("]q\x00(K\x01G\x40\x04\0\0\0\0\0\0" "e."),
	 "[1, 2.5]"},
	{"None p1", S("]q\x00(K\x01K\x02" "e."), EN(4), S("]q\x00(NK\x02" "e."), "[None, 2]"},
	{"bool p1", S("]q\x00(K\x01K\x02" "e."), EB(4, true), S("]q\x00(I01\nK\x02" "e."), "[True, 2]"},
	{"str->int keeps memo", S("\x80\x02X\x03\0\0\0abcq\x00h\x00\x86."), EI(2, "7"), S("\x80\x02K\x07q\x00h\x00\x86."),
	 "(7, 7)"},
	{"str->None MEMOIZE", S("\x80\x04\x8c\x03" "abc\x94h\x00\x86\x94."), EN(2), S("\x80\x04N\x94h\x00\x86\x94."),
	 "(None, None)"},
	{"int->str p4", S("\x80\x04K\x05."), ES(2, "hello"), S("\x80\x04\x8c\x05hello."), "'hello'"},
	{"int->str p0", S("I5\n."), ES(0, "hi"), S("Vhi\n."), "'hi'"},
	{"str->str p4", S("\x80\x04\x8c\x06" "cuda:0\x94."), ES(2, "cpu"), S("\x80\x04X\x03\0\0\0cpu\x94."), "'cpu'"},
	{"framed grow", S("\x80\x04" F8("\x09") "]\x94(K\x01K\x02" "e."), EI(16, "100000000000000000000"),
	 S("\x80\x04" F8("\x12") "]\x94(K\x01\x8a\x09\x00\x00\x10" "c-^\xc7k\x05" "e."), "[1, 10**20]"},
	{"framed shrink", S("\x80\x04" F8("\x10") "]\x94(K\x01G\x40\x04\0\0\0\0\0\0" "e."), EN(16),
	 S("\x80\x04" F8("\x08") "]\x94(K\x01N" "e."), "[1, None]"},
};

#define NVCASES (sizeof(vcases) / sizeof(vcases[0]))

START_TEST(value_hand_cases)
{
	size_t cap = 1 << 16, k = 0;
	char *code = malloc(cap);
	k += (size_t)snprintf(code + k, cap - k, "%s", PY_CHECK_FRAMES "bad = []\n");
	for (unsigned i = 0; i < NVCASES; i++) {
		const vcase *c = &vcases[i];
		buf out;
		pf_error err;
		char got[512], want[512];
		ck_assert_msg(rewrite(c->in, c->in_len, &c->e, 1, &out, &err) == 0, "%s: %s at %llu", c->name, err.msg,
			      (unsigned long long)err.offset);
		hex_dump(got, sizeof(got), out.p, out.n);
		hex_dump(want, sizeof(want), c->want, c->want_len);
		ck_assert_msg(out.n == c->want_len && memcmp(out.p, c->want, out.n) == 0, "%s:\n got  %s\n want %s",
			      c->name, got, want);
		k += (size_t)snprintf(code + k, cap - k,
				      "a, c, nf = check(bytes.fromhex('%s'))\n"
				      "w = %s\n"
				      "if not (a == c == w and type(a) is type(c) is type(w)): bad.append(('%s', a, c))\n",
				      got, c->value, c->name);
		free(out.p);
		/* every prefix of the input fails cleanly */
		for (size_t l = 0; l < c->in_len; l++) {
			pf_error e2;
			ck_assert_msg(try_one(c->in, l, &c->e, 1, &e2) != 0, "%s: prefix %zu accepted", c->name, l);
		}
	}
	k += (size_t)snprintf(code + k, cap - k, "print(repr(bad) if bad else 'ok', end='')\n");
	ck_assert_uint_lt(k, cap - 1);
	size_t n;
	uint8_t *res = pf_test_python(code, tmpdir, &n);
	ck_assert_msg(n == 2 && memcmp(res, "ok", 2) == 0, "python: %.*s", (int)n, (const char *)res);
	free(res);
	free(code);
}
END_TEST

START_TEST(value_bad_edits)
{
	static const uint8_t p2[] = "\x80\x02" "c__builtin__\nset\nq\x00]q\x01\x85q\x02Rq\x03.";
	static const uint8_t p1[] = "]q\x00(K\x01K\x02" "e.";
	static const char *const bad_names[] = {"builtins", "builtins\n", "\nset", "a b\nset", "a\nb\nc", "a\tb\nc",
						"a\nb c", "\xff\nset", "a\x7f\nb", ""};
	pf_error err;
	/* a global rename of something else, a scalar at a global */
	pf_str_edit e = EG(20, "builtins\nset");
	ck_assert_int_ne(try_one(p2, sizeof(p2) - 1, &e, 1, &err), 0);
	ck_assert_int_eq(err.code, PF_E_FORMAT);
	e = (pf_str_edit)EI(2, "1");
	ck_assert_int_ne(try_one(p2, sizeof(p2) - 1, &e, 1, &err), 0);
	ck_assert_int_eq(err.code, PF_E_FORMAT);
	for (unsigned i = 0; i < sizeof(bad_names) / sizeof(bad_names[0]); i++) {
		e = (pf_str_edit){.op_off = 2, .new_text = bad_names[i], .new_len = strlen(bad_names[i]),
				  .kind = PF_EDIT_GLOBAL};
		ck_assert_msg(try_one(p2, sizeof(p2) - 1, &e, 1, &err) != 0, "accepted '%s'", bad_names[i]);
		ck_assert_int_eq(err.code, PF_E_FORMAT);
	}
	/* ints that are not canonical decimal text; an unknown value type */
	static const char *const bad_ints[] = {"", "-", "01", "-0", "+1", "1a", " 1", "1.0", "--1", "-01"};
	for (unsigned i = 0; i < sizeof(bad_ints) / sizeof(bad_ints[0]); i++) {
		e = (pf_str_edit){.op_off = 4, .new_text = bad_ints[i], .new_len = strlen(bad_ints[i]),
				  .kind = PF_EDIT_SCALAR, .vtype = PF_V_INT};
		ck_assert_msg(try_one(p1, sizeof(p1) - 1, &e, 1, &err) != 0, "accepted '%s'", bad_ints[i]);
		ck_assert_int_eq(err.code, PF_E_FORMAT);
	}
	char *digits = malloc(PF_INT_DIGITS_MAX + 2);
	memset(digits, '9', PF_INT_DIGITS_MAX + 1);
	e = (pf_str_edit){.op_off = 4, .new_text = digits, .new_len = PF_INT_DIGITS_MAX + 1, .kind = PF_EDIT_SCALAR,
			  .vtype = PF_V_INT};
	ck_assert_int_ne(try_one(p1, sizeof(p1) - 1, &e, 1, &err), 0);
	e.new_len = PF_INT_DIGITS_MAX;
	ck_assert_int_eq(try_one(p1, sizeof(p1) - 1, &e, 1, &err), 0);
	free(digits);
	e = (pf_str_edit){.op_off = 4, .kind = PF_EDIT_SCALAR};
	ck_assert_int_ne(try_one(p1, sizeof(p1) - 1, &e, 1, &err), 0);
	ck_assert_int_eq(err.code, PF_E_FORMAT);
	/* a scalar at MARK, a str that is not UTF-8, overlapping with a tuple edit */
	e = (pf_str_edit)EN(3);
	ck_assert_int_ne(try_one(p1, sizeof(p1) - 1, &e, 1, &err), 0);
	e = (pf_str_edit)ES(4, "\xc3");
	ck_assert_int_ne(try_one(p1, sizeof(p1) - 1, &e, 1, &err), 0);
	static const uint8_t dev[] = "\x80\x02" "ctorch\ndevice\nq\x00X\x04\0\0\0cudaq\x01K\x00\x86q\x02Rq\x03.";
	pf_str_edit two[2] = {EI(29, "1"), {.op_off = 31, .new_text = "cpu", .new_len = 3, .kind = PF_EDIT_TUPLE1}};
	ck_assert_int_ne(try_one(dev, sizeof(dev) - 1, two, 2, &err), 0);
	ck_assert_int_eq(err.code, PF_E_FORMAT);
	/* several edits of one stream at once */
	pf_str_edit many[3] = {EN(4), EF(6, 1.5), EG(2, "builtins\nfrozenset")};
	ck_assert_int_eq(try_one(p1, sizeof(p1) - 1, many, 2, &err), 0);
	ck_assert_int_eq(try_one(p2, sizeof(p2) - 1, many + 2, 1, &err), 0);
}
END_TEST

/* ---- real pickles: scalar values and global renames ------------------------------------ */

static const pf_node *dict_val(const pf_model *m, const char *key)
{
	const pf_node *n = pf_node_at(&m->g, pf_dict_get(&m->g, m->archives[0].root, key));
	ck_assert_msg(n != NULL, "no '%s'", key);
	return n;
}

static void real_values(int proto)
{
	static const char mod[] =
		"class A:\n"
		"    def __init__(self, v): self.v = v\n"
		"class B(A): pass\n";
	static const char mod2[] = "from pfscal import A as _A\nclass C(_A): pass\n";
	char save[1024], verify[4096];
	snprintf(save, sizeof(save),
		 "import sys, pickle\n"
		 "sys.path.insert(0, sys.argv[1]); import pfscal\n"
		 "s = ''.join(['sha', 'red'])\n"
		 "d = {'n': 7, 'big': 2**70, 'neg': -3, 'f': 0.5, 't': True, 'z': None, 's1': s, 's2': s,\n"
		 "     'lst': [1, 2.5, s], 'a1': pfscal.A(1), 'a2': pfscal.A(2), 'b': pfscal.B(3),\n"
		 "     'keep': {'x': 1.25, 'y': 'why', 'z': [None, False]},\n"
		 "     'pad': ['p%%05d' %% i for i in range(9000)], 'last': 99}\n"
		 "sys.stdout.buffer.write(pickle.dumps(d, protocol=%d))\n",
		 proto);
	snprintf(verify, sizeof(verify), PY_CHECK_FRAMES
		 "import pfscal, pfscal2\n"
		 "new = open(sys.argv[1] + '/in1', 'rb').read()\n"
		 "old = pickle.loads(open(sys.argv[1] + '/in0', 'rb').read())\n"
		 "a, c, nf = check(new)\n"
		 "assert nf >= %d, nf\n"
		 "for d in (a, c):\n"
		 "    want = dict(old, n=123456, big=5, neg=-(2**80), f=0.001, t=False, z='now a str', s1=42, s2=42,\n"
		 "                lst=[1, 2.5, 42], last=-1.5)\n"
		 "    assert d.keys() == want.keys() and list(d) == list(want)\n"
		 "    for k in want:\n"
		 "        if k in ('a1', 'a2', 'b'): continue\n"
		 "        assert d[k] == want[k] and type(d[k]) is type(want[k]), (k, d[k], want[k])\n"
		 "    assert type(d['a1']) is pfscal2.C and d['a1'].v == 1, d['a1']\n"
		 "    assert d['a2'] is not d['a1'] and type(d['a2']) is pfscal2.C and d['a2'].v == 2\n"
		 "    assert type(d['b']) is pfscal.B and d['b'].v == 3\n"
		 "    assert d['s1'] is d['s2']\n"
		 "print('ok', end='')\n",
		 proto >= 4 ? 2 : 0);
	write_file("pfscal.py", mod, sizeof(mod) - 1);
	write_file("pfscal2.py", mod2, sizeof(mod2) - 1);
	size_t len, n;
	uint8_t *pk = pf_test_python(save, tmpdir, &len);
	pf_model m;
	pf_error err = {0};
	ck_assert_msg(pf_model_open(&m, pk, len, NULL, &err) == 0, "%s", err.msg);
	ck_assert_uint_eq(m.n_pickles, 1);
	pf_str_edit e[16];
	unsigned ne = 0;
	e[ne++] = (pf_str_edit)EI(dict_val(&m, "n")->off, "123456");
	e[ne++] = (pf_str_edit)EI(dict_val(&m, "big")->off, "5");
	e[ne++] = (pf_str_edit)EI(dict_val(&m, "neg")->off, "-1208925819614629174706176");
	e[ne++] = (pf_str_edit)EF(dict_val(&m, "f")->off, 0.001);
	e[ne++] = (pf_str_edit)EB(dict_val(&m, "t")->off, false);
	e[ne++] = (pf_str_edit)ES(dict_val(&m, "z")->off, "now a str");
	e[ne++] = (pf_str_edit)EI(dict_val(&m, "s1")->off, "42");
	e[ne++] = (pf_str_edit)EF(dict_val(&m, "last")->off, -1.5);
	ck_assert_uint_eq(dict_val(&m, "s1")->off, dict_val(&m, "s2")->off);
	/* every opcode naming pfscal.A */
	unsigned ng = 0;
	for (pf_nid id = 1; id < m.g.n_nodes; id++)
		if (pf_is_global(&m.g, id, "pfscal", "A")) {
			e[ne++] = (pf_str_edit)EG(m.g.nodes[id].off, "pfscal2\nC");
			ng++;
		}
	ck_assert_uint_eq(ng, 1);
	buf out;
	ck_assert_msg(rewrite(pk, len, e, ne, &out, &err) == 0, "%s at %llu", err.msg, (unsigned long long)err.offset);
	write_file("in0", pk, len);
	write_file("in1", out.p, out.n);
	uint8_t *res = pf_test_python(verify, tmpdir, &n);
	ck_assert_msg(n == 2 && memcmp(res, "ok", 2) == 0, "python p%d: %.*s", proto, (int)n, (const char *)res);
	/* and the codec reads the new values back */
	pf_model m2;
	ck_assert_msg(pf_model_open(&m2, out.p, out.n, NULL, &err) == 0, "%s", err.msg);
	ck_assert_int_eq(dict_val(&m2, "n")->kind, PF_K_INT);
	ck_assert_int_eq(dict_val(&m2, "n")->u.i, 123456);
	ck_assert_int_eq(dict_val(&m2, "t")->kind, PF_K_BOOL);
	ck_assert(pf_str_eq(&m2.g, pf_dict_get(&m2.g, m2.archives[0].root, "z"), "now a str"));
	pf_model_free(&m2);
	free(res);
	free(out.p);
	pf_model_free(&m);
	free(pk);
}

START_TEST(real_values_p0) { real_values(0); }
END_TEST
START_TEST(real_values_p2) { real_values(2); }
END_TEST
START_TEST(real_values_p4) { real_values(4); }
END_TEST
START_TEST(real_values_p5) { real_values(5); }
END_TEST

static Suite *suite(void)
{
	Suite *s = suite_create("repickle");
	TCase *t = tcase_create("unit");
	tcase_add_test(t, device_parse);
	tcase_add_test(t, no_edits_identity);
	tcase_add_test(t, truncations_fail);
	tcase_add_test(t, mutations_never_crash);
	tcase_add_test(t, bad_edits);
	tcase_add_test(t, sink_failure);
	tcase_add_test(t, device_edits_bad_range);
	tcase_add_test(t, value_bad_edits);
	suite_add_tcase(s, t);
	TCase *py = tcase_create("python");
	tcase_add_checked_fixture(py, setup, teardown);
	tcase_set_timeout(py, 240);
	tcase_add_test(py, hand_cases);
	tcase_add_test(py, torch_zip_locations);
	tcase_add_test(py, plain_p4_cpu);
	tcase_add_test(py, plain_p5_cpu);
	tcase_add_test(py, plain_p4_grow);
	tcase_add_test(py, plain_p5_meta);
	tcase_add_test(py, plain_p4_same_length);
	tcase_add_test(py, value_hand_cases);
	tcase_add_test(py, real_values_p0);
	tcase_add_test(py, real_values_p2);
	tcase_add_test(py, real_values_p4);
	tcase_add_test(py, real_values_p5);
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
