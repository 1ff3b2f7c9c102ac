/*
 * fuzz_edits.c - libFuzzer target for the write path's codec: untrusted
 * `globals` and meta.json texts turned into pickle edits (codec/edits.c)
 * and applied by pf_rewrite (rewrite.c, repickle.c, zipwrite.c), with new
 * tensor contents and a device change mixed in.
 *
 * The models are four small real files embedded in edit_models.h, made
 * once with torch 1.13 by make_edit_models.py (run it again to change
 * them): a torch.save zip (hyperparameters, a tensor and a strided view of
 * its storage), a protocol-4 pickle (_load_from_bytes blobs held as binary
 * bytes, a strided view, a memoized str, a str also used as a dict key, a
 * numpy array), a protocol-2 pickle (a blob and numpy bytes held as
 * latin-1 text) and a protocol-0 pickle (dict / list scalars, an
 * OrderedDict).
 *
 * Input: byte 0 chooses
 *   bits 0-1  the mode:
 *             0  the rest is a `globals` text: pf_globals_edits;
 *             1  the rest is a meta.json text: pf_meta_edits;
 *             2  the model's own meta.json text (pf_tree_meta_text) with
 *                bytes 1-2 (LE) an offset, byte 3 a count of bytes deleted
 *                there and the rest inserted there, then as 1;
 *             3  the same splice into the model's `globals` text, then as 0;
 *   bits 2-3  the model;
 *   bit 4     also set every device to cuda:1;
 *   bit 5     also write new contents (a fixed pattern, in two runs) into
 *   bits 6-7  the tensor these bits choose (mod the tensor count).
 * The text is passed in a buffer of exactly its length (no NUL after it).
 * When the edits are accepted, pf_rewrite makes a plan; its pieces must be
 * non-empty, copy ranges of the old file, and add up to plan.size.  The
 * plan is materialized and the result must parse with pf_model_open (a
 * rewrite must always produce a readable model; the one exception is a
 * rename of or to a global the codec interprets, torch.* / numpy.* /
 * _codecs ...: `torch FloatStorage` -> `torch DoubleStorage` no longer
 * fits its data), and then:
 *   - meta.json edits: the same tensors with the same bytes (the written
 *     one: the pattern; devices: cuda:1), the same files, and the written
 *     text, compared with the new model's tree, gives no edits (unless the
 *     devices changed, which meta.json shows);
 *   - globals edits: the tree builds or fails cleanly; when every written
 *     line is distinct and the new model has as many globals, the written
 *     text gives no edits for the new model.
 * Besides ASan/UBSan/LSan.  Failed calls must set a code and a message.
 *
 * FUZZ_EDITS_VERBOSE=1 says how far each input got; FUZZ_EDITS_DUMP=DIR
 * keeps each rewritten file and its text for check_edit_dumps.py, which
 * loads them with Python's pickle / torch.load.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edit_models.h"
#include "edits.h"
#include "meta.h"
#include "model.h"
#include "rewrite.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fail_at(const char *what, const pf_error *err)
{
	fprintf(stderr, "fuzz_edits: %s", what);
	if (err)
		fprintf(stderr, " (%s: %s at %llu)", pf_code_name(err->code), err->msg,
			(unsigned long long)err->offset);
	fprintf(stderr, "\n");
	abort();
}

#define CHECK(c) ((c) ? (void)0 : fail_at("check failed: " #c, NULL))

static void check_error(const pf_error *err)
{
	CHECK(err->code != PF_OK && err->msg[0] != '\0');
	CHECK(strcmp(pf_code_name(err->code), "unknown") != 0);
}

static int verbose = -1; /* FUZZ_EDITS_VERBOSE=1: say how far each input got (on stderr) */

static void say(const char *stage, const pf_error *err)
{
	if (verbose < 0)
		verbose = getenv("FUZZ_EDITS_VERBOSE") != NULL;
	if (verbose)
		fprintf(stderr, "fuzz_edits: %s%s%s\n", stage, err ? ": " : "", err ? err->msg : "");
}

/* FUZZ_EDITS_DUMP=DIR: write each rewritten file there as DIR/<n>-<b0>-<model>.out and
 * the text written as DIR/<n>-<b0>-<model>.txt (b0: the first input byte, in hex), for
 * checking the results with Python's pickle / torch.load outside the fuzzer. */
static void dump_one(const char *path, const void *p, size_t n)
{
	FILE *f = fopen(path, "wb");
	if (f) {
		if (n)
			fwrite(p, 1, n, f);
		fclose(f);
	}
}

static void dump(const uint8_t *file, uint64_t len, uint8_t b0, const char *text, size_t tlen)
{
	static unsigned count;
	const char *dir = getenv("FUZZ_EDITS_DUMP");
	const char *model = edit_models[(b0 >> 2 & 3) % N_EDIT_MODELS].name;
	char path[4200];
	if (!dir)
		return;
	snprintf(path, sizeof(path), "%s/%u-%02x-%s.out", dir, count, b0, model);
	dump_one(path, file, (size_t)len);
	snprintf(path, sizeof(path), "%s/%u-%02x-%s.txt", dir, count++, b0, model);
	dump_one(path, text, tlen);
}

static uint8_t pattern[4096];

static void make_pattern(void)
{
	for (size_t i = 0; i < sizeof(pattern); i++)
		pattern[i] = (uint8_t)(i * 37 + 11);
}

/* All of tensor t's logical bytes (malloc), or abort. */
static uint8_t *tensor_bytes(const pf_model *m, const pf_tensor *t)
{
	pf_error err = {0};
	uint8_t *buf = malloc(t->nbytes ? (size_t)t->nbytes : 1);
	CHECK(buf != NULL);
	if (t->nbytes && pf_tensor_read(m, t, 0, buf, t->nbytes, &err))
		fail_at("pf_tensor_read", &err);
	return buf;
}

/* The plan's new file (malloc), after checking its pieces. */
static uint8_t *materialize(const pf_model *m, const pf_plan *pl)
{
	uint64_t sum = 0;
	for (uint32_t i = 0; i < pl->n; i++) {
		const pf_piece *pc = &pl->v[i];
		CHECK(pc->len > 0);
		if (!pc->bytes)
			CHECK(pc->off <= m->file_len && pc->len <= m->file_len - pc->off);
		CHECK(pc->len <= UINT64_MAX - sum);
		sum += pc->len;
	}
	CHECK(sum == pl->size);
	CHECK(sum < (64u << 20));
	uint8_t *out = malloc(sum ? (size_t)sum : 1), *p = out;
	CHECK(out != NULL);
	for (uint32_t i = 0; i < pl->n; i++) {
		const pf_piece *pc = &pl->v[i];
		memcpy(p, pc->bytes ? pc->bytes : m->file + pc->off, (size_t)pc->len);
		p += pc->len;
	}
	return out;
}

/* Every line of a globals text distinct (the final '\n' optional). */
static bool lines_distinct(const char *s, size_t n)
{
	if (n && s[n - 1] == '\n')
		n--;
	for (size_t a = 0; a < n;) {
		const char *ea = memchr(s + a, '\n', n - a);
		size_t la = ea ? (size_t)(ea - (s + a)) : n - a;
		for (size_t b = a + la + 1; b < n + 1 && ea;) {
			const char *eb = memchr(s + b, '\n', n - b);
			size_t lb = eb ? (size_t)(eb - (s + b)) : n - b;
			if (la == lb && memcmp(s + a, s + b, la) == 0)
				return false;
			if (!eb)
				break;
			b += lb + 1;
		}
		if (!ea)
			break;
		a += la + 1;
	}
	return true;
}

typedef struct input {
	bool meta;           /* meta.json, else globals */
	bool device;         /* also set cuda:1 */
	bool data;           /* also new contents for one tensor */
	unsigned which;      /* selects that tensor */
	char *text;          /* malloc, exactly len bytes (no NUL) */
	size_t len;
} input;

/* The text to write: the fuzz bytes, or the model's own text with them spliced in. */
static bool make_text(const pf_tree *t, const uint8_t *data, size_t size, input *in)
{
	uint8_t mode = data[0] & 3;
	const uint8_t *rest = data + 1;
	size_t nrest = size - 1;
	in->meta = mode == 1 || mode == 2;
	in->device = data[0] & 0x10;
	in->data = data[0] & 0x20;
	in->which = data[0] >> 6;
	if (mode < 2) {
		in->len = nrest;
		in->text = malloc(nrest ? nrest : 1);
		CHECK(in->text != NULL);
		if (nrest)
			memcpy(in->text, rest, nrest);
		return true;
	}
	if (nrest < 3)
		return false;
	char *own = mode == 2 ? pf_tree_meta_text(t) : NULL;
	const char *base = mode == 2 ? own : t->globals_text;
	CHECK(base != NULL);
	size_t blen = strlen(base);
	size_t off = (size_t)(rest[0] | rest[1] << 8) % (blen + 1);
	size_t del = rest[2] % (blen - off + 1);
	const uint8_t *ins = rest + 3;
	size_t nins = nrest - 3;
	in->len = blen - del + nins;
	in->text = malloc(in->len ? in->len : 1);
	CHECK(in->text != NULL);
	memcpy(in->text, base, off);
	if (nins)
		memcpy(in->text + off, ins, nins);
	memcpy(in->text + off + nins, base + off + del, blen - off - del);
	free(own);
	return true;
}

/* The re-opened model against the old one, for meta.json edits. */
static void check_meta_result(const pf_model *m, const pf_tree *t, const pf_model *m2, const input *in,
			      int32_t written, const pf_device *dev)
{
	pf_tree t2;
	pf_error err = {0};
	CHECK(m2->n_tensors == m->n_tensors);
	for (uint32_t i = 0; i < m->n_tensors; i++) {
		const pf_tensor *a = &m->tensors[i], *b = &m2->tensors[i];
		CHECK(a->nbytes == b->nbytes && a->ndim == b->ndim && a->dtype == b->dtype);
		if (in->device && b->device)
			CHECK(strcmp(b->device, dev->text) == 0);
		if (!in->device && (a->device || b->device))
			CHECK(a->device && b->device && strcmp(a->device, b->device) == 0);
		uint8_t *nb = tensor_bytes(m2, b);
		if ((int32_t)i == written) {
			CHECK(memcmp(nb, pattern, (size_t)b->nbytes) == 0);
		} else if (written < 0 || a->storage < 0 || a->storage != m->tensors[written].storage) {
			uint8_t *ob = tensor_bytes(m, a);
			CHECK(memcmp(ob, nb, (size_t)a->nbytes) == 0);
			free(ob);
		}
		free(nb);
	}
	if (pf_tree_build(m2, &t2, &err))
		fail_at("the rewritten model's tree does not build", &err);
	CHECK(t2.n_files == t->n_files);
	for (uint32_t i = 0; i < t->n_files; i++)
		CHECK(strcmp(t->files[i].path, t2.files[i].path) == 0);
	if (!in->device) {
		pf_arena a;
		pf_span_edit *v = NULL;
		uint32_t n = 0;
		pf_arena_init(&a);
		if (pf_meta_edits(m2, &t2, in->text, in->len, &v, &n, &a, &err))
			fail_at("the written meta.json is refused for the rewritten model", &err);
		if (n != 0)
			fail_at("the written meta.json still differs from the rewritten model", NULL);
		pf_arena_free(&a);
	}
	pf_tree_free(&t2);
}

/* A module the codec gives a meaning to (model.c, meta.c, dtype.c): renaming
 * one of its globals, or a global to one of its names, may change what the
 * model is (a FloatStorage renamed DoubleStorage no longer fits its data). */
static bool interpreted(const char *mod, size_t n)
{
	static const char *const known[] = {"torch", "numpy", "_codecs", "codecs", "builtins", "__builtin__",
					    "copyreg", "copy_reg"};
	for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++) {
		size_t k = strlen(known[i]);
		if (n >= k && memcmp(mod, known[i], k) == 0 && (n == k || mod[k] == '.'))
			return true;
	}
	return false;
}

/* Whether every line of the accepted globals text that renames a global
 * renames one the codec does not interpret to a name it does not either. */
static bool inert_renames(const pf_model *m, const char *s, size_t n)
{
	if (n && s[n - 1] == '\n')
		n--;
	for (uint32_t i = 0, at = 0; i < m->g.n_globals && at <= n; i++) {
		const char *nl = memchr(s + at, '\n', n - at);
		size_t len = nl ? (size_t)(nl - (s + at)) : n - at;
		const char *sp = memchr(s + at, ' ', len);
		const pf_global *gl = &m->g.globals[i];
		CHECK(sp != NULL);
		size_t ml = (size_t)(sp - (s + at));
		bool same = ml == strlen(gl->module) && memcmp(s + at, gl->module, ml) == 0 &&
			    len - ml - 1 == strlen(gl->name) && memcmp(sp + 1, gl->name, len - ml - 1) == 0;
		if (!same && (interpreted(gl->module, strlen(gl->module)) || interpreted(s + at, ml)))
			return false;
		at += (uint32_t)len + 1;
	}
	return true;
}

/* The re-opened model, for globals edits. */
static void check_globals_result(const pf_model *m, const pf_model *m2, const input *in)
{
	pf_tree t2;
	pf_error err = {0};
	if (pf_tree_build(m2, &t2, &err) == 0)
		pf_tree_free(&t2);
	else
		check_error(&err);
	if (m2->g.n_globals == m->g.n_globals && lines_distinct(in->text, in->len)) {
		pf_arena a;
		pf_span_edit *v = NULL;
		uint32_t n = 0;
		pf_arena_init(&a);
		pf_error_clear(&err);
		if (pf_globals_edits(m2, in->text, in->len, &v, &n, &a, &err))
			fail_at("the written globals are refused for the rewritten model", &err);
		if (n != 0)
			fail_at("the written globals still differ from the rewritten model", NULL);
		pf_arena_free(&a);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	pf_limits lim = pf_limits_default();
	pf_model m, m2;
	pf_tree t;
	pf_error err = {0};
	pf_arena a;
	pf_plan pl;
	input in = {0};
	pf_span_edit *edits = NULL;
	uint32_t n_edits = 0;
	pf_device dev = {0};
	pf_bytes_run runs[2];
	pf_tensor_data td;
	int32_t written = -1;

	if (size < 1)
		return 0;
	if (!pattern[1])
		make_pattern();
	const uint8_t *model = edit_models[(data[0] >> 2 & 3) % N_EDIT_MODELS].p;
	size_t model_len = edit_models[(data[0] >> 2 & 3) % N_EDIT_MODELS].len;
	if (pf_model_open(&m, model, model_len, &lim, &err))
		fail_at("a built-in model does not open", &err);
	if (pf_tree_build(&m, &t, &err))
		fail_at("a built-in model's tree does not build", &err);
	if (!make_text(&t, data, size, &in))
		goto out_tree;

	pf_arena_init(&a);
	int rc = in.meta ? pf_meta_edits(&m, &t, in.text, in.len, &edits, &n_edits, &a, &err)
			 : pf_globals_edits(&m, in.text, in.len, &edits, &n_edits, &a, &err);
	if (rc) {
		say("edits refused", &err);
		check_error(&err);
		CHECK(edits == NULL && n_edits == 0);
		goto out_arena;
	}
	CHECK((edits == NULL) == (n_edits == 0));
	for (uint32_t i = 0; i < n_edits; i++) {
		CHECK(edits[i].span < m.n_pickles);
		CHECK(edits[i].e.op_off < m.pickles[edits[i].span].end - m.pickles[edits[i].span].start);
		if (i)
			CHECK(edits[i - 1].span < edits[i].span ||
			      (edits[i - 1].span == edits[i].span && edits[i - 1].e.op_off < edits[i].e.op_off));
	}

	pf_changes ch = {.edits = edits, .n_edits = n_edits};
	if (in.device) {
		CHECK(pf_device_parse("cuda:1", 6, &dev) == 0);
		ch.device = &dev;
	}
	if (in.data && m.n_tensors) {
		written = (int32_t)(in.which % m.n_tensors);
		const pf_tensor *wt = &m.tensors[written];
		CHECK(wt->nbytes <= sizeof(pattern));
		uint64_t half = wt->nbytes / 2;
		runs[0] = (pf_bytes_run){.p = pattern, .len = half};
		runs[1] = (pf_bytes_run){.p = pattern + half, .len = wt->nbytes - half};
		td = (pf_tensor_data){.tensor = (uint32_t)written, .runs = runs, .n_runs = 2};
		ch.data = &td;
		ch.n_data = 1;
	}
	pf_plan_init(&pl);
	if (pf_rewrite(&m, &ch, &pl, &err)) {
		say("rewrite refused", &err);
		check_error(&err);
		goto out_plan;
	}
	if (pl.n == 0) {
		say("nothing to change", NULL);
		CHECK(pl.size == 0);
		goto out_plan;
	}
	uint8_t *file = materialize(&m, &pl);
	if (pf_model_open(&m2, file, pl.size, &lim, &err)) {
		/* a global the codec interprets may be renamed into a model that no longer holds */
		if (in.meta || inert_renames(&m, in.text, in.len))
			fail_at("the rewritten file does not parse", &err);
		say("renamed into an unreadable model", &err);
		check_error(&err);
		free(file);
		goto out_plan;
	}
	dump(file, pl.size, data[0], in.text, in.len);
	if (in.meta)
		check_meta_result(&m, &t, &m2, &in, written, &dev);
	else
		check_globals_result(&m, &m2, &in);
	say(in.meta ? "meta.json rewritten and checked" : "globals rewritten and checked", NULL);
	pf_model_free(&m2);
	free(file);
out_plan:
	pf_plan_free(&pl);
out_arena:
	pf_arena_free(&a);
out_tree:
	free(in.text);
	pf_tree_free(&t);
	pf_model_free(&m);
	return 0;
}
