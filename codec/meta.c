#include "meta.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "names.h"
#include "utf8.h"

/* One value waiting to be shown: where its JSON goes and where its files go. */
typedef struct task {
	pf_nid id;
	json_t *parent;        /* array (key == NULL) or object */
	const char *key;       /* object key, NUL-terminated */
	const char *dir;       /* directory the value lives in ("" = model root) */
	const uint8_t *comp;   /* its own path component (unescaped); NULL = hoisted into dir */
	size_t comp_len;
	uint32_t depth;
	bool is_key;           /* a dict key in the [key, value] pair form */
} task;

typedef struct walk {
	const pf_model *m;
	pf_tree *t;
	task *stack;
	size_t n, cap;
	pf_hashmap seen;       /* nid -> index into first_path */
	const char **first_path;
	uint32_t n_first, cap_first;
	pf_hashmap names;      /* hash(dir, name) -> 1: names taken in a directory */
	uint64_t meta_bytes;   /* estimate of the pretty-printed size so far */
	pf_error *err;
} walk;

/* ---- small helpers ----------------------------------------------------- */


/* A JSON string of UTF-8 text; bytes that are not UTF-8 (and NUL) become U+FFFD. */
static json_t *json_text(const uint8_t *s, size_t n)
{
	if (pf_utf8_valid(s, n))
		return json_stringn((const char *)s, n);
	if (n > SIZE_MAX / 3)
		return NULL;
	char *buf = malloc(n * 3 + 1);
	size_t o = 0;
	if (!buf)
		return NULL;
	for (size_t i = 0; i < n;) {
		size_t k = pf_utf8_seq(s + i, n - i);
		if (k && s[i] != 0) {
			memcpy(buf + o, s + i, k);
			o += k;
			i += k;
		} else {
			memcpy(buf + o, "\xef\xbf\xbd", 3);
			o += 3;
			i++;
		}
	}
	json_t *j = json_stringn(buf, o);
	free(buf);
	return j;
}

static char *join_path(walk *w, const char *dir, const char *name)
{
	size_t dl = strlen(dir), nl = strlen(name);
	char *p = pf_arena_alloc(&w->t->arena, dl + nl + 2);
	if (!p)
		return NULL;
	if (dl) {
		memcpy(p, dir, dl);
		p[dl++] = '/';
	}
	memcpy(p + dl, name, nl + 1);
	return p;
}

static uint64_t name_key(const char *dir, const char *name)
{
	uint64_t h = pf_hash_bytes(dir, strlen(dir), 0x5eed);
	return pf_hash_bytes(name, strlen(name), h);
}

/*
 * Claim a unique name in dir for component comp (escaped), with `ext`
 * appended (".npy" or ""); "~2", "~3"... before ext on collision.
 * Returns the full path.
 */
static char *claim_path(walk *w, const char *dir, const uint8_t *comp, size_t len, const char *ext)
{
	char base[PF_NAME_MAX + 1], name[PF_NAME_MAX + 32];
	uint32_t dummy;
	pf_name_escape(comp, len, strlen(ext) + 11, base);
	for (unsigned n = 1;; n++) {
		if (n == 1)
			snprintf(name, sizeof(name), "%s%s", base, ext);
		else
			snprintf(name, sizeof(name), "%s~%u%s", base, n, ext);
		uint64_t k = name_key(dir, name);
		if (pf_hashmap_get(&w->names, k, &dummy))
			continue;
		if (!pf_hashmap_put(&w->names, k, 1))
			return NULL;
		return join_path(w, dir, name);
	}
}

static int push(walk *w, task tk)
{
	if (tk.depth > w->m->limits.max_depth)
		return pf_fail(w->err, PF_E_LIMIT, pf_model_node_offset(w->m, tk.id),
			       "object nesting deeper than max_depth (%llu)",
			       (unsigned long long)w->m->limits.max_depth);
	if (w->n == w->cap) {
		size_t cap = w->cap ? w->cap * 2 : 256;
		task *s = realloc(w->stack, cap * sizeof(*s));
		if (!s)
			return pf_fail(w->err, PF_E_NOMEM, 0, "out of memory");
		w->stack = s;
		w->cap = cap;
	}
	w->stack[w->n++] = tk;
	return 0;
}

/*
 * Count what a value adds to meta.json (its line, indentation, key and
 * text).  A small pickle can reference one long string or one deep chain
 * many times; the budget keeps the output and the memory bounded.
 */
static int charge(walk *w, const task *tk, json_t *v)
{
	w->meta_bytes += 16 + 2 * (uint64_t)tk->depth + (tk->key ? strlen(tk->key) : 0);
	if (json_is_string(v))
		w->meta_bytes += json_string_length(v);
	if (w->meta_bytes > w->m->limits.max_meta)
		return pf_fail(w->err, PF_E_LIMIT, pf_model_node_offset(w->m, tk->id),
			       "meta.json would exceed max_meta (%llu bytes)",
			       (unsigned long long)w->m->limits.max_meta);
	return 0;
}

static int place(walk *w, const task *tk, json_t *v)
{
	if (!v)
		return pf_fail(w->err, PF_E_NOMEM, 0, "out of memory building meta.json");
	if (charge(w, tk, v)) {
		json_decref(v);
		return -1;
	}
	int rc = tk->key ? json_object_set_new(tk->parent, tk->key, v) : json_array_append_new(tk->parent, v);
	return rc ? pf_fail(w->err, PF_E_NOMEM, 0, "out of memory building meta.json") : 0;
}

static int remember(walk *w, pf_nid id, const char *path)
{
	if (w->n_first == w->cap_first) {
		uint32_t cap = w->cap_first ? w->cap_first * 2 : 64;
		const char **p = realloc(w->first_path, cap * sizeof(*p));
		if (!p)
			return pf_fail(w->err, PF_E_NOMEM, 0, "out of memory");
		w->first_path = p;
		w->cap_first = cap;
	}
	w->first_path[w->n_first] = path;
	return pf_hashmap_put(&w->seen, id, w->n_first++) ? 0 : pf_fail(w->err, PF_E_NOMEM, 0, "out of memory");
}

static char *global_name(walk *w, const pf_global *g)
{
	size_t ml = strlen(g->module), nl = strlen(g->name);
	char *s = pf_arena_alloc(&w->t->arena, ml + nl + 2);
	if (!s)
		return NULL;
	memcpy(s, g->module, ml);
	s[ml] = '.';
	memcpy(s + ml + 1, g->name, nl + 1);
	return s;
}

/* Decimal text of a little-endian two's complement integer (LONG1/LONG4). */
static json_t *bigint_json(const uint8_t *p, uint64_t n)
{
	if (n > 4096)
		return json_pack("{s:s,s:I}", "int", "too long to show", "bytes", (json_int_t)n);
	bool neg = n && (p[n - 1] & 0x80);
	uint8_t *mag = malloc(n ? n : 1);
	char *digits = malloc(n * 3 + 3);
	if (!mag || !digits) {
		free(mag);
		free(digits);
		return NULL;
	}
	/* magnitude = two's complement negated when negative */
	unsigned carry = 1;
	for (uint64_t i = 0; i < n; i++) {
		unsigned b = neg ? (uint8_t)~p[i] + carry : p[i];
		mag[i] = (uint8_t)b;
		carry = neg ? b >> 8 : 0;
	}
	size_t nd = 0, len = n;
	while (len && !mag[len - 1])
		len--;
	while (len) {
		unsigned rem = 0;
		for (size_t i = len; i-- > 0;) {
			unsigned cur = (rem << 8) | mag[i];
			mag[i] = (uint8_t)(cur / 10);
			rem = cur % 10;
		}
		digits[nd++] = (char)('0' + rem);
		while (len && !mag[len - 1])
			len--;
	}
	if (!nd)
		digits[nd++] = '0';
	if (neg)
		digits[nd++] = '-';
	for (size_t i = 0; i < nd / 2; i++) {
		char c = digits[i];
		digits[i] = digits[nd - 1 - i];
		digits[nd - 1 - i] = c;
	}
	json_t *j = json_pack("{s:s#}", "int", digits, (int)nd);
	free(mag);
	free(digits);
	return j;
}

/* JSON integers are exact only within +-2^53: larger ones are strings. */
static json_t *int_json(int64_t v)
{
	if (v > (1ll << 53) || v < -(1ll << 53)) {
		char buf[32];
		snprintf(buf, sizeof(buf), "%" PRId64, v);
		return json_pack("{s:s}", "int", buf);
	}
	return json_integer(v);
}

static json_t *float_json(double f)
{
	if (isnan(f))
		return json_pack("{s:s}", "float", "nan");
	if (isinf(f))
		return json_pack("{s:s}", "float", f > 0 ? "inf" : "-inf");
	return json_real(f);
}

static json_t *int_array(const int64_t *v, uint32_t n)
{
	json_t *a = json_array();
	for (uint32_t i = 0; a && i < n; i++)
		if (json_array_append_new(a, json_integer(v[i]))) {
			json_decref(a);
			return NULL;
		}
	return a;
}

/* ---- tensors ----------------------------------------------------------- */

static int add_file(walk *w, const char *path, uint32_t tensor, int32_t link_of)
{
	pf_tree *t = w->t;
	if (t->n_files == t->cap_files) {
		uint32_t cap = t->cap_files ? t->cap_files * 2 : 64;
		pf_file *f = realloc(t->files, cap * sizeof(*f));
		if (!f)
			return pf_fail(w->err, PF_E_NOMEM, 0, "out of memory");
		t->files = f;
		t->cap_files = cap;
	}
	t->files[t->n_files++] = (pf_file){.path = path, .tensor = tensor, .link_of = link_of};
	return 0;
}

static json_t *tensor_json(const pf_tensor *tn, const char *path)
{
	json_t *j = json_pack("{s:s,s:s,s:s,s:o,s:o,s:I,s:o,s:b}", "tensor", path, "kind",
			      tn->dtype == PF_DT_NUMPY ? "numpy" : "torch", "dtype", tn->dtype_name, "shape",
			      int_array(tn->shape, tn->ndim), "stride", int_array(tn->stride, tn->ndim), "offset",
			      (json_int_t)tn->offset, "device", tn->device ? json_string(tn->device) : json_null(),
			      "requires_grad", tn->requires_grad);
	if (j && tn->is_parameter)
		json_object_set_new(j, "parameter", json_true());
	if (j && tn->dtype == PF_DT_NUMPY)
		json_object_set_new(j, "descr", json_string(tn->descr));
	return j;
}

static int show_tensor(walk *w, const task *tk, const pf_tensor *tn)
{
	uint32_t first, index = (uint32_t)(tn - w->m->tensors);
	static const uint8_t root_name[] = "tensor";
	const uint8_t *comp = tk->comp ? tk->comp : root_name;
	size_t len = tk->comp ? tk->comp_len : sizeof(root_name) - 1;
	char *path = claim_path(w, tk->dir, comp, len, ".npy");
	if (!path)
		return pf_fail(w->err, PF_E_NOMEM, 0, "out of memory");

	if (pf_hashmap_get(&w->seen, tn->node, &first)) {
		/* the same tensor again: another name for the same file */
		int32_t link = -1;
		for (uint32_t i = 0; i < w->t->n_files; i++)
			if (w->t->files[i].tensor == index && w->t->files[i].link_of < 0) {
				link = (int32_t)i;
				break;
			}
		if (add_file(w, path, index, link))
			return -1;
		return place(w, tk, json_pack("{s:s,s:s}", "ref", w->first_path[first], "tensor", path));
	}
	if (remember(w, tn->node, path) || add_file(w, path, index, -1))
		return -1;
	return place(w, tk, tensor_json(tn, path));
}

/* ---- containers -------------------------------------------------------- */

static bool is_module_state(const pf_graph *g, pf_nid state)
{
	return pf_kind_of(g, state) == PF_K_DICT && pf_dict_get(g, state, "_parameters") &&
	       pf_dict_get(g, state, "_modules");
}

/* A dict whose values are all tensors (a state_dict): keys split on '.'. */
static bool all_tensor_values(const pf_model *m, pf_nid dict)
{
	uint32_t n = pf_seq_len(&m->g, dict);
	if (n == 0)
		return false;
	for (uint32_t i = 1; i < n; i += 2)
		if (!pf_model_tensor_of(m, pf_seq_at(&m->g, dict, i)))
			return false;
	return true;
}

/* The component a dict key gives its value. */
static size_t key_component(walk *w, pf_nid key, uint32_t item, char *buf, size_t cap, const uint8_t **out)
{
	const pf_node *k = pf_node_at(&w->m->g, key);
	*out = (const uint8_t *)buf;
	switch (k ? k->kind : 0) {
	case PF_K_STR:
		*out = k->u.s.p;
		return (size_t)k->u.s.len;
	case PF_K_INT:
		return (size_t)snprintf(buf, cap, "%" PRId64, k->u.i);
	case PF_K_BOOL:
		return (size_t)snprintf(buf, cap, "%s", k->u.b ? "True" : "False");
	case PF_K_NONE:
		return (size_t)snprintf(buf, cap, "None");
	case PF_K_FLOAT:
		return (size_t)snprintf(buf, cap, "%.17g", k->u.f);
	default:
		return (size_t)snprintf(buf, cap, "#%u", item);
	}
}

static bool str_keys_unique(const pf_graph *g, pf_nid dict)
{
	uint32_t n = pf_seq_len(g, dict);
	pf_hashmap keys;
	bool ok = true;
	pf_hashmap_init(&keys);
	for (uint32_t i = 0; ok && i < n; i += 2) {
		const pf_node *k = pf_node_at(g, pf_seq_at(g, dict, i));
		uint32_t dummy;
		if (!k || k->kind != PF_K_STR || !pf_utf8_valid(k->u.s.p, (size_t)k->u.s.len)) {
			ok = false;
			break;
		}
		uint64_t h = pf_hash_bytes(k->u.s.p, (size_t)k->u.s.len, 1);
		/* a hash match is treated as a duplicate: the pair form is always safe */
		if (pf_hashmap_get(&keys, h, &dummy) || !pf_hashmap_put(&keys, h, 1))
			ok = false;
	}
	pf_hashmap_free(&keys);
	return ok;
}

/*
 * Push the items of a dict node.  JSON goes into `obj` as an object when
 * every key is a distinct str, else into a list of [key, value] pairs.
 * Files go under `dir`.
 */
static int push_dict_items(walk *w, pf_nid dict, json_t *holder, const char *field, const char *dir,
			   uint32_t depth)
{
	const pf_graph *g = &w->m->g;
	uint32_t n = pf_seq_len(g, dict);
	bool as_object = str_keys_unique(g, dict);
	bool split = all_tensor_values(w->m, dict);
	json_t *c = as_object ? json_object() : json_array();
	if (!c || json_object_set_new(holder, field, c))
		return pf_fail(w->err, PF_E_NOMEM, 0, "out of memory");

	/* pushed in reverse so that they are shown in order */
	for (uint32_t i = n; i >= 2; i -= 2) {
		pf_nid key = pf_seq_at(g, dict, i - 2), val = pf_seq_at(g, dict, i - 1);
		uint32_t item = (i - 2) / 2;
		char buf[64];
		const uint8_t *comp;
		size_t len = key_component(w, key, item, buf, sizeof(buf), &comp);
		/* comp may point into buf: keep a stable copy */
		char *stable = pf_arena_strndup(&w->t->arena, comp, len);
		const char *child_dir = dir;
		if (!stable)
			return pf_fail(w->err, PF_E_NOMEM, 0, "out of memory");
		comp = (const uint8_t *)stable;
		if (split) {
			const char *dot;
			while ((dot = memchr(comp, '.', len)) != NULL) {
				char part[PF_NAME_MAX + 1];
				pf_name_escape(comp, (size_t)((const uint8_t *)dot - comp), 0, part);
				child_dir = join_path(w, child_dir, part);
				if (!child_dir)
					return pf_fail(w->err, PF_E_NOMEM, 0, "out of memory");
				len -= (size_t)((const uint8_t *)dot - comp) + 1;
				comp = (const uint8_t *)dot + 1;
			}
		}
		if (as_object) {
			if (push(w, (task){.id = val, .parent = c, .key = stable, .dir = child_dir, .comp = comp,
					   .comp_len = len, .depth = depth}))
				return -1;
		} else {
			json_t *pair = json_array();
			char kcomp[48];
			int kl = snprintf(kcomp, sizeof(kcomp), "#%u-key", item);
			char *kc = pf_arena_strndup(&w->t->arena, kcomp, (size_t)kl);
			if (!pair || !kc || json_array_append_new(c, pair))
				return pf_fail(w->err, PF_E_NOMEM, 0, "out of memory");
			if (push(w, (task){.id = val, .parent = pair, .dir = child_dir, .comp = comp,
					   .comp_len = len, .depth = depth}) ||
			    push(w, (task){.id = key, .parent = pair, .dir = dir, .comp = (const uint8_t *)kc,
					   .comp_len = (size_t)kl, .depth = depth, .is_key = true}))
				return -1;
		}
	}
	return 0;
}

/* Push the items of a sequence node into JSON array `arr`, files under dir/<index>. */
static int push_seq_items(walk *w, pf_nid seq, json_t *arr, const char *dir, uint32_t depth)
{
	const pf_graph *g = &w->m->g;
	for (uint32_t i = pf_seq_len(g, seq); i-- > 0;) {
		char buf[16];
		int len = snprintf(buf, sizeof(buf), "%u", i);
		char *comp = pf_arena_strndup(&w->t->arena, buf, (size_t)len);
		if (!comp)
			return pf_fail(w->err, PF_E_NOMEM, 0, "out of memory");
		/* placeholders keep the order while children are filled in later */
		if (push(w, (task){.id = pf_seq_at(g, seq, i), .parent = arr, .dir = dir,
				   .comp = (const uint8_t *)comp, .comp_len = (size_t)len, .depth = depth}))
			return -1;
	}
	return 0;
}

/* The directory a container's children go in, claimed once. */
static const char *container_dir(walk *w, const task *tk)
{
	if (!tk->comp)
		return tk->dir;
	return claim_path(w, tk->dir, tk->comp, tk->comp_len, "");
}

static int show_call(walk *w, const task *tk, const pf_node *n, const char *dir)
{
	const pf_graph *g = &w->m->g;
	const pf_global *fn = pf_node_global(g, n->u.call.func);
	bool is_object = n->how != PF_HOW_REDUCE;
	json_t *j = json_object();
	if (!j || place(w, tk, j))
		return -1;
	uint32_t depth = tk->depth + 1;

	if (fn) {
		char *name = global_name(w, fn);
		if (!name || json_object_set_new(j, is_object ? "object" : "call", json_string(name)))
			return pf_fail(w->err, PF_E_NOMEM, 0, "out of memory");
	} else if (push(w, (task){.id = n->u.call.func, .parent = j, .key = is_object ? "object" : "call",
				  .dir = dir, .comp = (const uint8_t *)"callable", .comp_len = 8,
				  .depth = depth})) {
		return -1;
	}
	/* JSON fields in pickle order (placeholders, filled as the tasks run);
	 * tasks pushed last-first so that they also run in that order */
	pf_nid state = n->u.call.state;
	const struct { pf_nid present; const char *field; } order[] = {
		{n->u.call.args && (pf_seq_len(g, n->u.call.args) > 0 || !is_object), "args"},
		{n->u.call.kwargs, "kwargs"}, {n->u.call.listitems, "listitems"},
		{n->u.call.dictitems, "dictitems"}, {state, "state"},
	};
	for (size_t i = 0; i < sizeof(order) / sizeof(order[0]); i++)
		if (order[i].present && json_object_set_new(j, order[i].field, json_null()))
			return pf_fail(w->err, PF_E_NOMEM, 0, "out of memory");
	if (state) {
		if (pf_kind_of(g, state) == PF_K_DICT) {
			if (push_dict_items(w, state, j, "state", dir, depth))
				return -1;
			/* nn.Module: parameters, buffers and children live in the module's directory */
			if (is_module_state(g, state)) {
				json_t *st = json_object_get(j, "state");
				for (size_t i = 0; i < w->n; i++) {
					task *c = &w->stack[i];
					if (c->parent == st && c->key &&
					    (!strcmp(c->key, "_parameters") || !strcmp(c->key, "_buffers") ||
					     !strcmp(c->key, "_modules")))
						c->comp = NULL;
				}
			}
		} else if (pf_kind_of(g, state) == PF_K_TUPLE && pf_seq_len(g, state) == 2) {
			/* (dict_state, slot_state): both are attributes */
			if (push(w, (task){.id = state, .parent = j, .key = "state", .dir = dir, .depth = depth}))
				return -1;
		} else if (push(w, (task){.id = state, .parent = j, .key = "state", .dir = dir,
					  .comp = (const uint8_t *)"state", .comp_len = 5, .depth = depth})) {
			return -1;
		}
	}
	if (n->u.call.dictitems && push_dict_items(w, n->u.call.dictitems, j, "dictitems", dir, depth))
		return -1;
	if (n->u.call.listitems) {
		json_t *arr = json_array();
		if (!arr || json_object_set_new(j, "listitems", arr) ||
		    push_seq_items(w, n->u.call.listitems, arr, dir, depth))
			return pf_fail(w->err, PF_E_NOMEM, 0, "out of memory");
	}
	if (n->u.call.kwargs && push(w, (task){.id = n->u.call.kwargs, .parent = j, .key = "kwargs", .dir = dir,
					       .comp = (const uint8_t *)"kwargs", .comp_len = 6, .depth = depth}))
		return -1;
	if (n->u.call.args && (pf_seq_len(g, n->u.call.args) > 0 || !is_object)) {
		json_t *arr = json_array();
		if (!arr || json_object_set_new(j, "args", arr))
			return pf_fail(w->err, PF_E_NOMEM, 0, "out of memory");
		const char *args_dir = join_path(w, dir, "args");
		if (!args_dir || push_seq_items(w, n->u.call.args, arr, args_dir, depth))
			return -1;
	}
	return 0;
}

static json_t *storage_json(const pf_model *m, const pf_storage *st)
{
	return json_pack("{s:s,s:s,s:I,s:s}", "storage", st->key, "dtype", pf_dtype_get(st->dtype)->name,
			 "numel", (json_int_t)st->numel, "device", st->location);
}

static int show_archive(walk *w, const task *tk, const pf_archive *a, const pf_node *n, const char *dir);

/* protocol 0-2 bytes: _codecs.encode(text, 'latin1'), shown by size like bytes */
static bool is_latin1_bytes(const pf_graph *g, const pf_node *n)
{
	return n->kind == PF_K_CALL && n->how == PF_HOW_REDUCE &&
	       (pf_is_global(g, n->u.call.func, "_codecs", "encode") ||
		pf_is_global(g, n->u.call.func, "codecs", "encode")) &&
	       pf_seq_len(g, n->u.call.args) == 2 && pf_str_eq(g, pf_seq_at(g, n->u.call.args, 1), "latin1") &&
	       pf_kind_of(g, pf_seq_at(g, n->u.call.args, 0)) == PF_K_STR;
}

/* Characters of the text = bytes after encoding (UTF-8 continuation bytes do not count). */
static uint64_t latin1_len(const pf_graph *g, const pf_node *n)
{
	const pf_node *s = pf_node_at(g, pf_seq_at(g, n->u.call.args, 0));
	uint64_t chars = 0;
	for (uint64_t i = 0; i < s->u.s.len; i++)
		chars += (s->u.s.p[i] & 0xc0) != 0x80;
	return chars;
}

/* Place a scalar node's JSON and note where it went (t->scalars). */
static int place_scalar(walk *w, const task *tk, json_t *v)
{
	pf_tree *t = w->t;
	if (place(w, tk, v))
		return -1;
	if (tk->is_key)
		return 0;
	if (t->n_scalars == t->cap_scalars) {
		uint32_t cap = t->cap_scalars ? t->cap_scalars * 2 : 64;
		pf_meta_scalar *s = cap > t->cap_scalars ? realloc(t->scalars, cap * sizeof(*s)) : NULL;
		if (!s)
			return pf_fail(w->err, PF_E_NOMEM, 0, "out of memory");
		t->scalars = s;
		t->cap_scalars = cap;
	}
	size_t index = tk->key ? 0 : json_array_size(tk->parent) - 1;
	t->scalars[t->n_scalars++] = (pf_meta_scalar){.parent = tk->parent, .key = tk->key, .index = index,
						       .node = tk->id};
	return 0;
}

/* Show one value. */
static int step(walk *w, const task *tk)
{
	const pf_model *m = w->m;
	const pf_graph *g = &m->g;
	const pf_node *n = pf_node_at(g, tk->id);
	uint32_t first;
	uint32_t depth = tk->depth + 1;

	if (!n)
		return place(w, tk, json_null());
	const pf_tensor *tn = pf_model_tensor_of(m, tk->id);
	if (tn)
		return show_tensor(w, tk, tn);
	bool container = n->kind >= PF_K_LIST && n->kind <= PF_K_FROZENSET;
	container = container || n->kind == PF_K_CALL || n->kind == PF_K_PERSID;
	if ((container || n->kind == PF_K_BYTES) && pf_hashmap_get(&w->seen, tk->id, &first))
		return place(w, tk, json_pack("{s:s}", "ref", w->first_path[first]));

	switch (n->kind) {
	case PF_K_NONE: return place_scalar(w, tk, json_null());
	case PF_K_BOOL: return place_scalar(w, tk, json_boolean(n->u.b));
	case PF_K_INT: return place_scalar(w, tk, int_json(n->u.i));
	case PF_K_FLOAT: return place_scalar(w, tk, float_json(n->u.f));
	case PF_K_BIGINT:
		if (n->flags & PF_F_DECIMAL)
			return place_scalar(w, tk, json_pack("{s:s#}", "int", (const char *)n->u.s.p, (int)n->u.s.len));
		return place_scalar(w, tk, bigint_json(n->u.s.p, n->u.s.len));
	case PF_K_STR: return place_scalar(w, tk, json_text(n->u.s.p, (size_t)n->u.s.len));
	case PF_K_GLOBAL: {
		char *name = global_name(w, pf_node_global(g, tk->id));
		return name ? place(w, tk, json_pack("{s:s}", "global", name)) : pf_fail(w->err, PF_E_NOMEM, 0, "oom");
	}
	case PF_K_BUFFER: return place(w, tk, json_pack("{s:b}", "out_of_band_buffer", 1));
	default: break;
	}

	const pf_archive *a = pf_model_archive_at(m, tk->id);
	uint32_t st;
	if (!a && pf_hashmap_get(&m->node_storage, tk->id, &st))
		return place(w, tk, storage_json(m, &m->storages[st]));
	if (!a && n->kind == PF_K_BYTES)
		return place(w, tk, json_pack("{s:I}", "bytes", (json_int_t)n->u.s.len));
	if (!a && is_latin1_bytes(g, n))
		return place(w, tk, json_pack("{s:I}", "bytes", (json_int_t)latin1_len(g, n)));

	const char *dir = container_dir(w, tk);
	if (!dir || remember(w, tk->id, dir))
		return pf_fail(w->err, PF_E_NOMEM, 0, "out of memory");
	if (a)
		return show_archive(w, tk, a, n, dir);

	json_t *arr;
	switch (n->kind) {
	case PF_K_LIST:
		arr = json_array();
		return place(w, tk, arr) || push_seq_items(w, tk->id, arr, dir, depth);
	case PF_K_TUPLE:
	case PF_K_SET:
	case PF_K_FROZENSET: {
		const char *field = n->kind == PF_K_TUPLE ? "tuple" : n->kind == PF_K_SET ? "set" : "frozenset";
		json_t *j = json_object();
		arr = json_array();
		if (!j || !arr || json_object_set_new(j, field, arr))
			return pf_fail(w->err, PF_E_NOMEM, 0, "out of memory");
		return place(w, tk, j) || push_seq_items(w, tk->id, arr, dir, depth);
	}
	case PF_K_DICT: {
		/* a holder object receives "dict"; a plain JSON object is unwrapped below */
		json_t *holder = json_object();
		if (!holder)
			return pf_fail(w->err, PF_E_NOMEM, 0, "out of memory");
		if (push_dict_items(w, tk->id, holder, "dict", dir, depth)) {
			json_decref(holder);
			return -1;
		}
		json_t *inner = json_object_get(holder, "dict");
		if (json_is_object(inner)) {
			json_incref(inner);
			json_decref(holder);
			return place(w, tk, inner);
		}
		return place(w, tk, holder);
	}
	case PF_K_CALL:
		return show_call(w, tk, n, dir);
	case PF_K_PERSID: {
		json_t *j = json_object();
		if (!j || place(w, tk, j))
			return -1;
		return push(w, (task){.id = n->u.persid.pid, .parent = j, .key = "persistent_id", .dir = dir,
				      .comp = (const uint8_t *)"persistent_id", .comp_len = 13, .depth = depth});
	}
	default:
		return place(w, tk, json_null());
	}
}

static int show_archive(walk *w, const task *tk, const pf_archive *a, const pf_node *n, const char *dir)
{
	json_t *j = json_pack("{s:I,s:{s:s,s:i}}", "bytes", (json_int_t)(n->kind == PF_K_BYTES ? n->u.s.len : 0),
			      "torch_save", "container", pf_container_name(a->container), "protocol", a->protocol);
	if (!j || place(w, tk, j))
		return -1;
	return push(w, (task){.id = a->root, .parent = json_object_get(j, "torch_save"), .key = "root",
			      .dir = dir, .depth = tk->depth + 1});
}

/* ---- device and globals texts ------------------------------------------ */

static int add_count(const char ***names, uint32_t **counts, uint32_t *n, const char *name)
{
	for (uint32_t i = 0; i < *n; i++)
		if (strcmp((*names)[i], name) == 0) {
			(*counts)[i]++;
			return 0;
		}
	const char **nn = realloc(*names, (*n + 1) * sizeof(**names));
	if (!nn)
		return -1;
	*names = nn;
	uint32_t *nc = realloc(*counts, (*n + 1) * sizeof(**counts));
	if (!nc)
		return -1;
	*counts = nc;
	(*names)[*n] = name;
	(*counts)[(*n)++] = 1;
	return 0;
}

/* Distinct locations, most frequent first (ties: first seen first). */
static char *device_text(const pf_model *m, json_t *list)
{
	const char **names = NULL;
	uint32_t *counts = NULL, n = 0;
	char *text = NULL;
	size_t len = 0;
	bool ok = true;

	for (uint32_t i = 0; ok && i < m->n_storages; i++)
		ok = add_count(&names, &counts, &n, m->storages[i].location) == 0;
	for (uint32_t i = 0; ok && i < m->n_tensors; i++)
		if (m->tensors[i].storage < 0 && m->tensors[i].device)
			ok = add_count(&names, &counts, &n, m->tensors[i].device) == 0;
	/* stable selection by count: n is the number of distinct devices, small */
	for (uint32_t i = 0; ok && i < n; i++) {
		uint32_t best = i;
		for (uint32_t k = i + 1; k < n; k++)
			if (counts[k] > counts[best])
				best = k;
		const char *bn = names[best];
		uint32_t bc = counts[best];
		memmove(names + i + 1, names + i, (best - i) * sizeof(*names));
		memmove(counts + i + 1, counts + i, (best - i) * sizeof(*counts));
		names[i] = bn;
		counts[i] = bc;
	}
	for (uint32_t i = 0; i < n; i++)
		len += strlen(names[i]) + 1;
	text = ok ? malloc(len + 1) : NULL;
	if (text) {
		char *p = text;
		for (uint32_t i = 0; i < n; i++) {
			p += sprintf(p, "%s\n", names[i]);
			json_array_append_new(list, json_string(names[i]));
		}
		*p = '\0';
	}
	free(names);
	free(counts);
	return text;
}

static char *globals_text(const pf_graph *g)
{
	size_t len = 1;
	for (uint32_t i = 0; i < g->n_globals; i++)
		len += strlen(g->globals[i].module) + strlen(g->globals[i].name) + 2;
	char *text = malloc(len), *p = text;
	if (!text)
		return NULL;
	*p = '\0';
	for (uint32_t i = 0; i < g->n_globals; i++)
		p += sprintf(p, "%s %s\n", g->globals[i].module, g->globals[i].name);
	return text;
}

/* ---- the tree ---------------------------------------------------------- */

const char *const pf_meta_file_names[PF_META_FILES] = {"meta.json", "device", "globals"};

bool pf_is_meta_file(const char *name)
{
	for (size_t i = 0; i < PF_META_FILES; i++)
		if (strcmp(name, pf_meta_file_names[i]) == 0)
			return true;
	return false;
}

int pf_tree_build(const pf_model *m, pf_tree *t, pf_error *err)
{
	walk w = {.m = m, .t = t, .err = err};
	const pf_archive *top = &m->archives[0];
	int rc = -1;

	memset(t, 0, sizeof(*t));
	pf_arena_init(&t->arena);
	pf_hashmap_init(&w.seen);
	pf_hashmap_init(&w.names);
	json_t *devices = json_array();
	t->meta = json_pack("{s:s,s:i,s:s,s:i,s:o}", "format", "picklefs-meta", "version", 1, "container",
			    pf_container_name(top->container), "protocol", top->protocol, "devices", devices);
	t->device_text = device_text(m, devices);
	t->globals_text = globals_text(&m->g);
	if (!t->meta || !t->device_text || !t->globals_text) {
		pf_fail(err, PF_E_NOMEM, 0, "out of memory");
		goto out;
	}
	/* the model directory's own files: a key with these names gets "~2" */
	for (size_t i = 0; i < PF_META_FILES; i++)
		if (!pf_hashmap_put(&w.names, name_key("", pf_meta_file_names[i]), 1)) {
			pf_fail(err, PF_E_NOMEM, 0, "out of memory");
			goto out;
		}
	/* TorchScript constants (tensors the code uses) come after the object */
	if (top->constants &&
	    push(&w, (task){.id = top->constants, .parent = t->meta, .key = "constants", .dir = "",
			    .comp = (const uint8_t *)"constants", .comp_len = 9}))
		goto out;
	if (push(&w, (task){.id = top->root, .parent = t->meta, .key = "root", .dir = ""}))
		goto out;
	while (w.n > 0) {
		task tk = w.stack[--w.n];
		if (step(&w, &tk))
			goto out;
	}
	rc = 0;
out:
	free(w.stack);
	free(w.first_path);
	pf_hashmap_free(&w.seen);
	pf_hashmap_free(&w.names);
	if (rc)
		pf_tree_free(t);
	return rc;
}

void pf_tree_free(pf_tree *t)
{
	free(t->files);
	free(t->scalars);
	json_decref(t->meta);
	free(t->device_text);
	free(t->globals_text);
	pf_arena_free(&t->arena);
	memset(t, 0, sizeof(*t));
}

char *pf_tree_meta_text(const pf_tree *t)
{
	char *s = json_dumps(t->meta, JSON_INDENT(2) | JSON_ENSURE_ASCII | JSON_REAL_PRECISION(17));
	if (!s)
		return NULL;
	size_t n = strlen(s);
	char *out = realloc(s, n + 2);
	if (!out) {
		free(s);
		return NULL;
	}
	out[n] = '\n';
	out[n + 1] = '\0';
	return out;
}
