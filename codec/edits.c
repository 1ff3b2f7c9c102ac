/*
 * edits.c - written `globals` / meta.json texts as pickle edits (see edits.h).
 *
 * globals: the text is split into lines and each changed line checked;
 * then one pass over the graph finds the PF_K_GLOBAL nodes of the renamed
 * globals (one node per GLOBAL / INST / STACK_GLOBAL opcode; memo GETs of a
 * global make no node) and the object pickle each lies in.
 *
 * meta.json: the written document and t->meta are walked side by side with
 * an explicit stack of frames (one per pair of containers being compared;
 * the frames also spell the JSON path for messages).  t->scalars says which
 * positions of t->meta show a scalar node; each such position is noted
 * compactly (node, change or none), every other position must be equal.
 * After the walk the changes are grouped by node (a memoized value is one
 * node shown at several places), checked for consistency and for uses the
 * document does not show, and turned into edits.
 */
#include "edits.h"

#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hashmap.h"
#include "pickle_ops.h"
#include "table.h"
#include "repickle.h"
#include "utf8.h"

#define NONE32 UINT32_MAX

/* ---- the edit list ------------------------------------------------------------ */

typedef struct elist {
	pf_span_edit *v;
	uint32_t n, cap;
} elist;

static int elist_add(elist *l, uint32_t span, const pf_str_edit *e, pf_error *err)
{
	if (l->n == l->cap) {
		uint32_t cap = l->cap ? l->cap * 2 : 16;
		pf_span_edit *v = cap > l->cap ? realloc(l->v, (size_t)cap * sizeof(*v)) : NULL;
		if (!v)
			return pf_fail(err, PF_E_NOMEM, 0, "out of memory");
		l->v = v;
		l->cap = cap;
	}
	l->v[l->n++] = (pf_span_edit){.span = span, .e = *e};
	return 0;
}

static int cmp_span_edit(const void *x, const void *y)
{
	const pf_span_edit *a = x, *b = y;
	if (a->span != b->span)
		return a->span < b->span ? -1 : 1;
	return (a->e.op_off > b->e.op_off) - (a->e.op_off < b->e.op_off);
}

/* Hand the list over, sorted, as an array in the arena; frees l. */
static int elist_finish(elist *l, pf_arena *a, pf_span_edit **out, uint32_t *n_out, pf_error *err)
{
	int rc = 0;
	if (l->n) {
		qsort(l->v, l->n, sizeof(*l->v), cmp_span_edit);
		pf_span_edit *v = pf_arena_alloc(a, (size_t)l->n * sizeof(*v));
		if (v) {
			memcpy(v, l->v, (size_t)l->n * sizeof(*v));
			*out = v;
			*n_out = l->n;
		} else {
			rc = pf_fail(err, PF_E_NOMEM, 0, "out of memory");
		}
	}
	free(l->v);
	memset(l, 0, sizeof(*l));
	return rc;
}

/* ---- where a node's opcode is ---------------------------------------------------- */

/* Index of the object pickle of m that holds node n's opcode, or -1. */
static int64_t span_of(const pf_model *m, const pf_node *n)
{
	for (uint32_t i = 0; i < m->n_pickles; i++) {
		const pf_pickle_span *sp = &m->pickles[i];
		if (sp->seg == n->seg && n->off >= sp->start && n->off < sp->end)
			return i;
	}
	return -1;
}

/* The opcode byte that made node n (0 when out of range). */
static uint8_t op_at(const pf_model *m, const pf_node *n)
{
	if (n->seg >= m->n_segs || n->off >= m->segs[n->seg].len)
		return 0;
	return m->segs[n->seg].p[n->off];
}

/* ---- globals ---------------------------------------------------------------------- */

static bool ascii_alpha(uint8_t c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}

/*
 * A dotted path of identifiers: ASCII letters, '_', digits (not first) or
 * non-ASCII UTF-8 other than C1 controls and U+00A0; no empty component.
 */
static bool ident_path(const uint8_t *p, size_t n)
{
	bool start = true;
	for (size_t i = 0; i < n;) {
		uint8_t c = p[i];
		if (c == '.' && !start) {
			start = true;
			i++;
		} else if (c >= 0x80) {
			size_t k = pf_utf8_seq(p + i, n - i);
			if (!k || (c == 0xc2 && p[i + 1] <= 0xa0))
				return false;
			i += k;
			start = false;
		} else if (ascii_alpha(c) || (!start && c >= '0' && c <= '9')) {
			i++;
			start = false;
		} else {
			return false;
		}
	}
	return !start;
}

static bool line_is(const char *s, size_t n, const pf_global *gl)
{
	size_t ml = strlen(gl->module), nl = strlen(gl->name);
	return n == ml + 1 + nl && memcmp(s, gl->module, ml) == 0 && s[ml] == ' ' && memcmp(s + ml + 1, gl->name, nl) == 0;
}

typedef struct grename {
	const char *text;   /* "module\nname" (arena), NULL: unchanged */
	size_t len;
} grename;

/* Check changed line i (1-based in messages) and note its rename. */
static int parse_line(const pf_model *m, uint32_t i, const char *s, size_t n, uint64_t at, grename *r, pf_arena *a,
		      pf_error *err)
{
	const char *sp = memchr(s, ' ', n);
	for (size_t k = 0; k < n; k++)
		if ((unsigned char)s[k] < 0x20 || s[k] == 0x7f)
			return pf_fail(err, PF_E_INVALID, at + k, "globals line %u: control character 0x%02x", i + 1,
				       (unsigned char)s[k]);
	if (!sp || memchr(sp + 1, ' ', n - (size_t)(sp - s) - 1))
		return pf_fail(err, PF_E_INVALID, at, "globals line %u: not `module name` (one space between)", i + 1);
	size_t ml = (size_t)(sp - s), nl = n - ml - 1;
	if (!ident_path((const uint8_t *)s, ml))
		return pf_fail(err, PF_E_INVALID, at, "globals line %u: '%.*s' is not a dotted module path", i + 1,
			       (int)(ml < 60 ? ml : 60), s);
	if (!ident_path((const uint8_t *)sp + 1, nl))
		return pf_fail(err, PF_E_INVALID, at, "globals line %u: '%.*s' is not a name (identifiers, dots)",
			       i + 1, (int)(nl < 60 ? nl : 60), sp + 1);
	if (ml > m->limits.max_name_len || nl > m->limits.max_name_len)
		return pf_fail(err, PF_E_INVALID, at, "globals line %u: longer than max_name_len (%llu)", i + 1,
			       (unsigned long long)m->limits.max_name_len);
	char *t = pf_arena_strndup(a, s, n);
	if (!t)
		return pf_fail(err, PF_E_NOMEM, at, "out of memory");
	t[ml] = '\n';
	r->text = t;
	r->len = n;
	return 0;
}

/* The renames the text asks for; *any says whether there is one. */
static int parse_globals(const pf_model *m, const char *text, size_t len, grename *r, bool *any, pf_arena *a,
			 pf_error *err)
{
	const pf_graph *g = &m->g;
	uint64_t lines = 0;
	if (len && text[len - 1] == '\n')
		len--;
	if (len) {
		lines = 1;
		for (size_t k = 0; k < len; k++)
			lines += text[k] == '\n';
	}
	if (lines != g->n_globals)
		return pf_fail(err, PF_E_INVALID, 0,
			       "globals: %llu lines written, the model has %u globals (one `module name` per line)",
			       (unsigned long long)lines, g->n_globals);
	*any = false;
	for (size_t i = 0, at = 0; i < g->n_globals; i++) {
		const char *nl = memchr(text + at, '\n', len - at);
		size_t n = nl ? (size_t)(nl - (text + at)) : len - at;
		if (!line_is(text + at, n, &g->globals[i])) {
			if (parse_line(m, (uint32_t)i, text + at, n, at, &r[i], a, err))
				return -1;
			*any = true;
		}
		at += n + 1;
	}
	return 0;
}

int pf_globals_edits(const pf_model *m, const char *text, size_t len, pf_span_edit **out, uint32_t *n_out,
		     pf_arena *a, pf_error *err)
{
	const pf_graph *g = &m->g;
	elist l = {0};
	bool any = false;
	int rc = -1;

	*out = NULL;
	*n_out = 0;
	if (!text && len)
		return pf_fail(err, PF_E_INVALID, 0, "globals: no text");
	if (len > UINT32_MAX)
		return pf_fail(err, PF_E_LIMIT, 0, "globals: text too long");
	grename *r = calloc(g->n_globals ? g->n_globals : 1, sizeof(*r));
	if (!r)
		return pf_fail(err, PF_E_NOMEM, 0, "out of memory");
	if (parse_globals(m, text, len, r, &any, a, err))
		goto out;
	for (pf_nid id = 1; any && id < g->n_nodes; id++) {
		const pf_node *n = &g->nodes[id];
		if (n->kind != PF_K_GLOBAL || n->u.g.index >= g->n_globals || !r[n->u.g.index].text)
			continue;
		uint32_t i = n->u.g.index;
		const pf_global *gl = &g->globals[i];
		int64_t sp = span_of(m, n);
		uint8_t op = op_at(m, n);
		if (sp < 0) {
			pf_fail(err, PF_E_UNSUPPORTED, pf_model_node_offset(m, id),
				"globals line %u (%.60s %.60s): used by a pickle that is not rewritten", i + 1,
				gl->module, gl->name);
			goto out;
		}
		if (op != OP_GLOBAL && op != OP_INST && op != OP_STACK_GLOBAL) {
			pf_fail(err, PF_E_UNSUPPORTED, pf_model_node_offset(m, id),
				"globals line %u (%.60s %.60s): an extension code (EXT1/2/4), which cannot be renamed",
				i + 1, gl->module, gl->name);
			goto out;
		}
		pf_str_edit e = {.op_off = n->off - m->pickles[sp].start, .new_text = r[i].text, .new_len = r[i].len,
				 .kind = PF_EDIT_GLOBAL};
		if (elist_add(&l, (uint32_t)sp, &e, err))
			goto out;
	}
	rc = elist_finish(&l, a, out, n_out, err);
out:
	free(l.v);
	free(r);
	return rc;
}

/* ---- meta.json: scalar values ---------------------------------------------------------- */

/* A scalar as meta.json writes it. */
typedef struct sval {
	uint8_t type;       /* pf_value_type */
	bool b;
	bool big;           /* PF_V_INT beyond int64: neg + digits */
	bool neg;
	int64_t i;          /* PF_V_INT, !big */
	double f;
	const char *s;      /* PF_V_STR text, or the digits of a big int (no sign, no leading zero) */
	size_t n;
} sval;

/* {"int": "[+-]digits"}: into v (int64 when it fits); -1 when malformed. */
static int parse_int_marker(const char *s, size_t n, sval *v)
{
	size_t k = 0;
	uint64_t x = 0;
	bool fits = true;
	v->type = PF_V_INT;
	v->neg = n && s[0] == '-';
	k = n && (s[0] == '-' || s[0] == '+');
	if (k == n)
		return -1;
	for (size_t j = k; j < n; j++)
		if (s[j] < '0' || s[j] > '9')
			return -1;
	while (k + 1 < n && s[k] == '0')
		k++;
	if (n - k > PF_INT_DIGITS_MAX)
		return -1;
	for (size_t j = k; j < n && fits; j++) {
		unsigned d = (unsigned)(s[j] - '0');
		uint64_t lim = v->neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
		fits = x <= (lim - d) / 10;
		x = x * 10 + d;
	}
	if (fits) {
		v->i = v->neg ? (int64_t)(0 - x) : (int64_t)x;
		v->neg = false;
		return 0;
	}
	v->big = true;
	v->s = s + k;
	v->n = n - k;
	return 0;
}

/* 1: j is a scalar (into v); 0: it is not; -1: a malformed marker (*why says how). */
static int to_sval(json_t *j, sval *v, const char **why)
{
	memset(v, 0, sizeof(*v));
	switch (json_typeof(j)) {
	case JSON_NULL: v->type = PF_V_NONE; return 1;
	case JSON_TRUE: v->type = PF_V_BOOL; v->b = true; return 1;
	case JSON_FALSE: v->type = PF_V_BOOL; return 1;
	case JSON_INTEGER: v->type = PF_V_INT; v->i = (int64_t)json_integer_value(j); return 1;
	case JSON_REAL: v->type = PF_V_FLOAT; v->f = json_real_value(j); return 1;
	case JSON_STRING:
		v->type = PF_V_STR;
		v->s = json_string_value(j);
		v->n = json_string_length(j);
		return 1;
	case JSON_OBJECT: break;
	default: return 0;
	}
	json_t *x;
	if (json_object_size(j) != 1)
		return 0;
	if ((x = json_object_get(j, "int")) != NULL) {
		*why = "{\"int\": ...} needs decimal text of at most 4300 digits";
		return json_is_string(x) && parse_int_marker(json_string_value(x), json_string_length(x), v) == 0 ? 1 : -1;
	}
	if ((x = json_object_get(j, "float")) != NULL) {
		const char *s = json_string_value(x);
		*why = "{\"float\": ...} is \"nan\", \"inf\" or \"-inf\"";
		v->type = PF_V_FLOAT;
		if (!s)
			return -1;
		if (!strcmp(s, "nan"))
			v->f = NAN;
		else if (!strcmp(s, "inf") || !strcmp(s, "+inf"))
			v->f = HUGE_VAL;
		else if (!strcmp(s, "-inf"))
			v->f = -HUGE_VAL;
		else
			return -1;
		return 1;
	}
	return 0;
}

static bool sval_eq(const sval *a, const sval *b)
{
	if (a->type != b->type)
		return false;
	switch (a->type) {
	case PF_V_BOOL: return a->b == b->b;
	case PF_V_INT:
		if (a->big != b->big)
			return false;
		return a->big ? a->neg == b->neg && a->n == b->n && memcmp(a->s, b->s, a->n) == 0 : a->i == b->i;
	case PF_V_FLOAT:
		return (isnan(a->f) && isnan(b->f)) || memcmp(&a->f, &b->f, sizeof(a->f)) == 0;
	case PF_V_STR: return a->n == b->n && memcmp(a->s, b->s, a->n) == 0;
	default: return true;
	}
}

/* ---- meta.json: the side-by-side walk -------------------------------------------------- */

/* Two containers being compared and the child now looked at. */
typedef struct frame {
	json_t *a, *b;        /* shown, written (same type, same size, same keys) */
	void *ia, *ib;        /* objects: the next children */
	size_t next, n;       /* arrays: the next index, the length */
	const char *key;      /* the child now compared: its key, or */
	size_t idx;           /*   its index */
} frame;

/* A place of t->meta showing a scalar node, and what was written there. */
typedef struct spot {
	pf_nid node;
	uint32_t change;      /* index into changes, or NONE32: unchanged */
} spot;

typedef struct change {
	pf_nid node;
	sval v;               /* the value written (points into the written document) */
	char *path;           /* where (malloc) */
	uint32_t shown;       /* first change of a node: how many places show it */
} change;

typedef struct mctx {
	const pf_model *m;
	const pf_tree *t;
	const pf_meta_scalar **order; /* t->scalars sorted by (parent, key / index) */
	frame *fr;
	uint32_t n_fr, cap_fr, max_fr;
	spot *spots;
	uint32_t n_spots, cap_spots;
	change *ch;
	uint32_t n_ch, cap_ch;
	pf_error *err;
} mctx;

/* The JSON path of the child now compared, into buf (its tail when long). */
static const char *path_of(const mctx *c, char *buf, size_t cap)
{
	size_t n = 0, full = 1;
	char *tmp;
	for (uint32_t i = 0; i < c->n_fr; i++)
		full += c->fr[i].key ? 1 + strlen(c->fr[i].key) : 22;
	tmp = malloc(full + 2);
	if (!tmp) {
		snprintf(buf, cap, "$");
		return buf;
	}
	tmp[n++] = '$';
	for (uint32_t i = 0; i < c->n_fr; i++) {
		if (c->fr[i].key)
			n += (size_t)sprintf(tmp + n, ".%s", c->fr[i].key);
		else
			n += (size_t)sprintf(tmp + n, "[%zu]", c->fr[i].idx);
	}
	tmp[n] = 0;
	if (n < cap)
		memcpy(buf, tmp, n + 1);
	else
		snprintf(buf, cap, "...%s", tmp + n - (cap - 4));
	free(tmp);
	return buf;
}

#define PATH_SHOWN 96

/* PF_E_INVALID at the child now compared. */
__attribute__((format(printf, 3, 4))) static int refuse(mctx *c, pf_code code, const char *fmt, ...)
{
	char path[PATH_SHOWN], what[PF_ERR_MSG_MAX];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(what, sizeof(what), fmt, ap);
	va_end(ap);
	return pf_fail(c->err, code, 0, "meta.json: %s: %s", path_of(c, path, sizeof(path)), what);
}

static int cmp_scalar_place(const pf_meta_scalar *x, const json_t *parent, const char *key, size_t index)
{
	if ((uintptr_t)x->parent != (uintptr_t)parent)
		return (uintptr_t)x->parent < (uintptr_t)parent ? -1 : 1;
	if (key && x->key)
		return strcmp(x->key, key);
	if (!key != !x->key)
		return x->key ? -1 : 1;
	return (x->index > index) - (x->index < index);
}

static int cmp_order(const void *p, const void *q)
{
	const pf_meta_scalar *x = *(const pf_meta_scalar *const *)p, *y = *(const pf_meta_scalar *const *)q;
	return cmp_scalar_place(x, y->parent, y->key, y->index);
}

/* The scalar node shown at (parent, key / index) of t->meta, or 0. */
static pf_nid shown_node(const mctx *c, const json_t *parent, const char *key, size_t index)
{
	uint32_t lo = 0, hi = c->t->n_scalars;
	if (!parent)
		return 0;
	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		int r = cmp_scalar_place(c->order[mid], parent, key, index);
		if (r == 0)
			return c->order[mid]->node;
		if (r < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return 0;
}

/* Why a fixed value may not change, by what holds it. */
static const char *fixed_why(const json_t *parent)
{
	if (json_is_object(parent) && json_object_get(parent, "tensor"))
		return "a tensor's description cannot be changed";
	if (json_is_object(parent) && (json_object_get(parent, "object") || json_object_get(parent, "call") ||
				       json_object_get(parent, "global")))
		return "this cannot be changed here (classes and functions are renamed in `globals`)";
	return "this is not a value of the pickle and cannot be changed";
}

static int note_spot(mctx *c, pf_nid node, json_t *a, json_t *b)
{
	sval va, vb;
	const char *why = "not a scalar";
	int rb = to_sval(b, &vb, &why);
	if (rb < 0)
		return refuse(c, PF_E_INVALID, "%s", why);
	if (rb == 0)
		return refuse(c, PF_E_INVALID, "a value was replaced by a %s", json_is_array(b) ? "list" : "container");
	/* meta.json shows NUL as U+FFFD (meta.c json_text): a written NUL could never be read back */
	if (vb.type == PF_V_STR && memchr(vb.s, 0, vb.n))
		return refuse(c, PF_E_INVALID, "a string with NUL (\\u0000), which meta.json cannot show");
	to_sval(a, &va, &why);
	if (pf_table_grow((void **)&c->spots, &c->cap_spots, c->n_spots + 1, sizeof(*c->spots), c->err))
		return -1;
	spot *s = &c->spots[c->n_spots++];
	s->node = node;
	s->change = NONE32;
	if (sval_eq(&va, &vb))
		return 0;
	char path[PATH_SHOWN];
	if (pf_table_grow((void **)&c->ch, &c->cap_ch, c->n_ch + 1, sizeof(*c->ch), c->err))
		return -1;
	change *ch = &c->ch[c->n_ch];
	ch->node = node;
	ch->v = vb;
	ch->shown = 0;
	ch->path = strdup(path_of(c, path, sizeof(path)));
	if (!ch->path)
		return pf_fail(c->err, PF_E_NOMEM, 0, "out of memory");
	s->change = c->n_ch++;
	return 0;
}

/* Same keys in the same order; else refuse naming the first difference. */
static int same_keys(mctx *c, json_t *a, json_t *b)
{
	void *ia = json_object_iter(a), *ib = json_object_iter(b);
	for (; ia && ib; ia = json_object_iter_next(a, ia), ib = json_object_iter_next(b, ib)) {
		const char *ka = json_object_iter_key(ia), *kb = json_object_iter_key(ib);
		size_t la = json_object_iter_key_len(ia), lb = json_object_iter_key_len(ib);
		if (la == lb && memcmp(ka, kb, la) == 0)
			continue;
		if (!json_object_getn(b, ka, la))
			return refuse(c, PF_E_INVALID, "key \"%.60s\" was removed or renamed", ka);
		if (!json_object_getn(a, kb, lb))
			return refuse(c, PF_E_INVALID, "key \"%.60s\" was added", kb);
		return refuse(c, PF_E_INVALID, "keys were reordered (\"%.40s\" before \"%.40s\")", kb, ka);
	}
	if (ib)
		return refuse(c, PF_E_INVALID, "key \"%.60s\" was added", json_object_iter_key(ib));
	if (ia)
		return refuse(c, PF_E_INVALID, "key \"%.60s\" was removed", json_object_iter_key(ia));
	return 0;
}

static const char *type_name(const json_t *j)
{
	switch (json_typeof(j)) {
	case JSON_OBJECT: return "object";
	case JSON_ARRAY: return "list";
	case JSON_STRING: return "string";
	case JSON_INTEGER: case JSON_REAL: return "number";
	case JSON_NULL: return "null";
	default: return "bool";
	}
}

/* Compare one pair: note a shown scalar, check a fixed value, or open a frame. */
static int compare(mctx *c, const json_t *parent, const char *key, size_t index, json_t *a, json_t *b)
{
	pf_nid node = shown_node(c, parent, key, index);
	sval va;
	const char *why;
	if (node && to_sval(a, &va, &why) == 1)
		return note_spot(c, node, a, b);
	if (json_typeof(a) != json_typeof(b) &&
	    !(json_is_number(a) && json_is_number(b)) && !(json_is_boolean(a) && json_is_boolean(b)))
		return refuse(c, PF_E_INVALID, "%s replaced by a %s: %s", type_name(a), type_name(b),
			      fixed_why(parent));
	if (!json_is_object(a) && !json_is_array(a))
		return json_equal(a, b) ? 0 : refuse(c, PF_E_INVALID, "%s", fixed_why(parent));
	if (json_is_array(a) && json_array_size(a) != json_array_size(b))
		return refuse(c, PF_E_INVALID, "list of %zu items now has %zu", json_array_size(a), json_array_size(b));
	if (json_is_object(a) && same_keys(c, a, b))
		return -1;
	if (c->n_fr >= c->max_fr)
		return refuse(c, PF_E_LIMIT, "nested deeper than %u", c->max_fr);
	if (pf_table_grow((void **)&c->fr, &c->cap_fr, c->n_fr + 1, sizeof(*c->fr), c->err))
		return -1;
	frame *f = &c->fr[c->n_fr++];
	memset(f, 0, sizeof(*f));
	f->a = a;
	f->b = b;
	if (json_is_object(a)) {
		f->ia = json_object_iter(a);
		f->ib = json_object_iter(b);
	} else {
		f->n = json_array_size(a);
	}
	return 0;
}

static int walk(mctx *c, json_t *a, json_t *b)
{
	if (compare(c, NULL, NULL, 0, a, b))
		return -1;
	while (c->n_fr > 0) {
		frame *f = &c->fr[c->n_fr - 1];
		json_t *ca, *cb, *pa = f->a;
		const char *key = NULL;
		size_t idx = 0;
		if (json_is_object(f->a)) {
			if (!f->ia) {
				c->n_fr--;
				continue;
			}
			key = json_object_iter_key(f->ia);
			ca = json_object_iter_value(f->ia);
			cb = json_object_iter_value(f->ib);
			f->ia = json_object_iter_next(f->a, f->ia);
			f->ib = json_object_iter_next(f->b, f->ib);
		} else {
			if (f->next == f->n) {
				c->n_fr--;
				continue;
			}
			idx = f->next++;
			ca = json_array_get(f->a, idx);
			cb = json_array_get(f->b, idx);
		}
		f->key = key;
		f->idx = idx;
		/* f may move when compare() opens a frame */
		if (compare(c, pa, key, idx, ca, cb))
			return -1;
	}
	return 0;
}

/* ---- meta.json: from changes to edits ------------------------------------------------------ */

/* Every place a changed node is shown holds the same new value; count them. */
static int check_consistent(mctx *c, pf_hashmap *first)
{
	for (uint32_t i = 0; i < c->n_ch; i++) {
		uint32_t k;
		if (!pf_hashmap_get(first, c->ch[i].node, &k) && !pf_hashmap_put(first, c->ch[i].node, i))
			return pf_fail(c->err, PF_E_NOMEM, 0, "out of memory");
	}
	for (uint32_t i = 0; i < c->n_spots; i++) {
		const spot *s = &c->spots[i];
		uint32_t k;
		if (!pf_hashmap_get(first, s->node, &k))
			continue;
		change *f = &c->ch[k];
		f->shown++;
		if (s->change == NONE32 || !sval_eq(&c->ch[s->change].v, &f->v))
			return pf_fail(c->err, PF_E_INVALID, 0,
				       "meta.json: %s: this value is shared (memo) with other places of meta.json; "
				       "write the same new value at every place",
				       f->path);
	}
	return 0;
}

/* How often the graph refers to each changed node (any reference, shown or not). */
static void count_refs(const pf_graph *g, const pf_hashmap *first, uint32_t *refs)
{
	for (pf_nid id = 1; id < g->n_nodes; id++) {
		const pf_node *n = &g->nodes[id];
		const pf_nid *v = NULL;
		pf_nid one[6];
		uint32_t cnt = 0, k;
		switch (n->kind) {
		case PF_K_LIST: case PF_K_TUPLE: case PF_K_DICT: case PF_K_SET: case PF_K_FROZENSET:
			v = n->u.seq.v;
			cnt = n->u.seq.n;
			break;
		case PF_K_CALL:
			one[0] = n->u.call.func, one[1] = n->u.call.args, one[2] = n->u.call.kwargs;
			one[3] = n->u.call.state, one[4] = n->u.call.listitems, one[5] = n->u.call.dictitems;
			v = one;
			cnt = 6;
			break;
		case PF_K_PERSID:
			one[0] = n->u.persid.pid;
			v = one;
			cnt = 1;
			break;
		case PF_K_GLOBAL:
			one[0] = n->u.g.module, one[1] = n->u.g.name;
			v = one;
			cnt = 2;
			break;
		default:
			break;
		}
		for (uint32_t i = 0; i < cnt; i++)
			if (v[i] && pf_hashmap_get(first, v[i], &k))
				refs[k]++;
	}
}

/* Canonical decimal text of an int value (arena). */
static char *int_text(const sval *v, pf_arena *a, size_t *len)
{
	char buf[24];
	if (!v->big) {
		int n = snprintf(buf, sizeof(buf), "%" PRId64, v->i);
		*len = (size_t)n;
		return pf_arena_strndup(a, buf, (size_t)n);
	}
	char *t = pf_arena_alloc(a, v->n + 2);
	if (!t)
		return NULL;
	size_t k = 0;
	if (v->neg && !(v->n == 1 && v->s[0] == '0'))
		t[k++] = '-';
	memcpy(t + k, v->s, v->n);
	*len = k + v->n;
	t[*len] = 0;
	return t;
}

/* The edit that writes change ch at its node's opcode. */
static int make_edit(mctx *c, const change *ch, uint32_t refs, elist *l, pf_arena *a)
{
	const pf_model *m = c->m;
	const pf_node *n = pf_node_at(&m->g, ch->node);
	uint64_t at = pf_model_node_offset(m, ch->node);
	int64_t sp = n ? span_of(m, n) : -1;
	uint8_t op = n ? op_at(m, n) : 0;
	pf_str_edit e = {.kind = PF_EDIT_SCALAR, .vtype = ch->v.type, .b = ch->v.b, .f = ch->v.f};

	if (refs > ch->shown)
		return pf_fail(c->err, PF_E_UNSUPPORTED, at,
			       "meta.json: %s: this value is shared (memo) with a part of the model meta.json does "
			       "not show (a dict key, a tensor, a name)", ch->path);
	if (sp < 0)
		return pf_fail(c->err, PF_E_UNSUPPORTED, at, "meta.json: %s: in a pickle that is not rewritten",
			       ch->path);
	if (!(op && (strchr("NIJKMLFGSTUVX", op) || op == OP_NEWTRUE || op == OP_NEWFALSE || op == OP_LONG1 ||
		     op == OP_LONG4 || op == OP_SHORT_BINUNICODE || op == OP_BINUNICODE8)))
		return pf_fail(c->err, PF_E_UNSUPPORTED, at, "meta.json: %s: not made by a value opcode (0x%02x)",
			       ch->path, op);
	e.op_off = n->off - m->pickles[sp].start;
	if (ch->v.type == PF_V_STR) {
		e.new_text = pf_arena_strndup(a, ch->v.s, ch->v.n);
		e.new_len = ch->v.n;
		if (n->kind == PF_K_STR)
			e.kind = PF_EDIT_STR;
	} else if (ch->v.type == PF_V_INT) {
		e.new_text = int_text(&ch->v, a, &e.new_len);
	}
	if ((ch->v.type == PF_V_STR || ch->v.type == PF_V_INT) && !e.new_text)
		return pf_fail(c->err, PF_E_NOMEM, at, "out of memory");
	return elist_add(l, (uint32_t)sp, &e, c->err);
}

static int build_edits(mctx *c, elist *l, pf_arena *a)
{
	pf_hashmap first;
	uint32_t *refs = NULL;
	int rc = -1;

	pf_hashmap_init(&first);
	if (check_consistent(c, &first))
		goto out;
	refs = calloc(c->n_ch ? c->n_ch : 1, sizeof(*refs));
	if (!refs) {
		pf_fail(c->err, PF_E_NOMEM, 0, "out of memory");
		goto out;
	}
	count_refs(&c->m->g, &first, refs);
	for (uint32_t i = 0; i < c->n_ch; i++) {
		uint32_t k;
		if (pf_hashmap_get(&first, c->ch[i].node, &k) && k == i && make_edit(c, &c->ch[i], refs[i], l, a))
			goto out;
	}
	rc = 0;
out:
	free(refs);
	pf_hashmap_free(&first);
	return rc;
}

int pf_meta_edits(const pf_model *m, const pf_tree *t, const char *text, size_t len, pf_span_edit **out,
		  uint32_t *n_out, pf_arena *a, pf_error *err)
{
	mctx c = {.m = m, .t = t, .err = err};
	elist l = {0};
	json_error_t jerr;
	json_t *doc = NULL;
	int rc = -1;

	*out = NULL;
	*n_out = 0;
	if (!t || !t->meta)
		return pf_fail(err, PF_E_INVALID, 0, "meta.json: no document to compare with");
	if (!text && len)
		return pf_fail(err, PF_E_INVALID, 0, "meta.json: no text");
	if (len / 8 > m->limits.max_meta)
		return pf_fail(err, PF_E_LIMIT, 0, "meta.json: more than 8 x max_meta (%llu) bytes",
			       (unsigned long long)m->limits.max_meta);
	c.max_fr = m->limits.max_depth > (UINT32_MAX - 16) / 4 ? UINT32_MAX : (uint32_t)(4 * m->limits.max_depth + 16);
	doc = json_loadb(text ? text : "", len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &jerr);
	if (!doc)
		return pf_fail(err, PF_E_INVALID, jerr.position > 0 ? (uint64_t)jerr.position : 0,
			       "meta.json: line %d column %d: %.120s", jerr.line, jerr.column, jerr.text);
	if (t->n_scalars) {
		c.order = malloc((size_t)t->n_scalars * sizeof(*c.order));
		if (!c.order) {
			pf_fail(err, PF_E_NOMEM, 0, "out of memory");
			goto out;
		}
		for (uint32_t i = 0; i < t->n_scalars; i++)
			c.order[i] = &t->scalars[i];
		qsort(c.order, t->n_scalars, sizeof(*c.order), cmp_order);
	}
	if (walk(&c, t->meta, doc) || build_edits(&c, &l, a))
		goto out;
	rc = elist_finish(&l, a, out, n_out, err);
out:
	for (uint32_t i = 0; i < c.n_ch; i++)
		free(c.ch[i].path);
	free(c.ch);
	free(c.spots);
	free(c.fr);
	free(c.order);
	free(l.v);
	json_decref(doc);
	return rc;
}
