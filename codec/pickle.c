/*
 * pickle.c - the symbolic pickle machine (see pickle.h for the contract).
 *
 * The shape follows CPython's Modules/_pickle.c: one load loop that reads
 * an opcode and dispatches to a small op_* function, an object stack whose
 * "fence" is the position of the innermost MARK (popping below it is a
 * stack underflow), a separate mark stack, and a memo.  Nothing here
 * recurses on what the file contains.
 *
 * Where this file departs from CPython it says so; the rule is that a
 * pickle CPython can load (given the right classes) must load here too,
 * and one CPython rejects for its byte structure is rejected here too.
 */
#include "pickle.h"

#include "cursor.h"
#include "pickle_ops.h"
#include "utf8.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HIGHEST_PROTOCOL 5

/* The module an EXT1/EXT2/EXT4 reference is reported under: the real
 * object would come from copyreg's inverted registry, which we never
 * consult, so the code itself becomes the (inert) name. */
#define EXT_MODULE "copyreg._extension_registry"

static const char *op_name(uint8_t op)
{
	static const char *const names[256] = {
		[OP_MARK] = "MARK", [OP_STOP] = "STOP", [OP_POP] = "POP",
		[OP_POP_MARK] = "POP_MARK", [OP_DUP] = "DUP", [OP_FLOAT] = "FLOAT",
		[OP_INT] = "INT", [OP_BININT] = "BININT", [OP_BININT1] = "BININT1",
		[OP_LONG] = "LONG", [OP_BININT2] = "BININT2", [OP_NONE] = "NONE",
		[OP_PERSID] = "PERSID", [OP_BINPERSID] = "BINPERSID",
		[OP_REDUCE] = "REDUCE", [OP_STRING] = "STRING",
		[OP_BINSTRING] = "BINSTRING", [OP_SHORT_BINSTRING] = "SHORT_BINSTRING",
		[OP_UNICODE] = "UNICODE", [OP_BINUNICODE] = "BINUNICODE",
		[OP_APPEND] = "APPEND", [OP_BUILD] = "BUILD", [OP_GLOBAL] = "GLOBAL",
		[OP_DICT] = "DICT", [OP_EMPTY_DICT] = "EMPTY_DICT",
		[OP_APPENDS] = "APPENDS", [OP_GET] = "GET", [OP_BINGET] = "BINGET",
		[OP_INST] = "INST", [OP_LONG_BINGET] = "LONG_BINGET",
		[OP_LIST] = "LIST", [OP_EMPTY_LIST] = "EMPTY_LIST", [OP_OBJ] = "OBJ",
		[OP_PUT] = "PUT", [OP_BINPUT] = "BINPUT",
		[OP_LONG_BINPUT] = "LONG_BINPUT", [OP_SETITEM] = "SETITEM",
		[OP_TUPLE] = "TUPLE", [OP_EMPTY_TUPLE] = "EMPTY_TUPLE",
		[OP_SETITEMS] = "SETITEMS", [OP_BINFLOAT] = "BINFLOAT",
		[OP_PROTO] = "PROTO", [OP_NEWOBJ] = "NEWOBJ", [OP_EXT1] = "EXT1",
		[OP_EXT2] = "EXT2", [OP_EXT4] = "EXT4", [OP_TUPLE1] = "TUPLE1",
		[OP_TUPLE2] = "TUPLE2", [OP_TUPLE3] = "TUPLE3",
		[OP_NEWTRUE] = "NEWTRUE", [OP_NEWFALSE] = "NEWFALSE",
		[OP_LONG1] = "LONG1", [OP_LONG4] = "LONG4",
		[OP_BINBYTES] = "BINBYTES", [OP_SHORT_BINBYTES] = "SHORT_BINBYTES",
		[OP_SHORT_BINUNICODE] = "SHORT_BINUNICODE",
		[OP_BINUNICODE8] = "BINUNICODE8", [OP_BINBYTES8] = "BINBYTES8",
		[OP_EMPTY_SET] = "EMPTY_SET", [OP_ADDITEMS] = "ADDITEMS",
		[OP_FROZENSET] = "FROZENSET", [OP_NEWOBJ_EX] = "NEWOBJ_EX",
		[OP_STACK_GLOBAL] = "STACK_GLOBAL", [OP_MEMOIZE] = "MEMOIZE",
		[OP_FRAME] = "FRAME", [OP_BYTEARRAY8] = "BYTEARRAY8",
		[OP_NEXT_BUFFER] = "NEXT_BUFFER",
		[OP_READONLY_BUFFER] = "READONLY_BUFFER",
	};
	return names[op] ? names[op] : "?";
}

const char *pf_kind_name(int kind)
{
	switch (kind) {
	case PF_K_NONE: return "none";
	case PF_K_BOOL: return "bool";
	case PF_K_INT: return "int";
	case PF_K_BIGINT: return "bigint";
	case PF_K_FLOAT: return "float";
	case PF_K_STR: return "str";
	case PF_K_BYTES: return "bytes";
	case PF_K_LIST: return "list";
	case PF_K_TUPLE: return "tuple";
	case PF_K_DICT: return "dict";
	case PF_K_SET: return "set";
	case PF_K_FROZENSET: return "frozenset";
	case PF_K_GLOBAL: return "global";
	case PF_K_CALL: return "call";
	case PF_K_PERSID: return "persid";
	case PF_K_BUFFER: return "buffer";
	}
	return "invalid";
}

static bool kind_has_seq(int kind)
{
	return kind == PF_K_LIST || kind == PF_K_TUPLE || kind == PF_K_DICT ||
	       kind == PF_K_SET || kind == PF_K_FROZENSET;
}

/* ------------------------------------------------------------------ */
/* Growable arrays.                                                    */

/*
 * Return arr resized to hold at least `need` elements of `elem` bytes,
 * doubling from *cap so that n appends cost O(n); NULL (arr untouched) on
 * overflow or out of memory.  Capacities are capped at max_cap so that
 * callers with 32-bit counters never wrap.
 */
static void *grow_array(void *arr, uint64_t *cap, uint64_t need, size_t elem, uint64_t max_cap)
{
	uint64_t ncap = *cap ? *cap : 8;
	void *p;

	if (need <= *cap)
		return arr;
	if (need > max_cap)
		return NULL;
	while (ncap < need)
		ncap = ncap > max_cap / 2 ? max_cap : ncap * 2;
	if (ncap > SIZE_MAX / elem)
		return NULL;
	p = realloc(arr, (size_t)ncap * elem);
	if (!p)
		return NULL;
	*cap = ncap;
	return p;
}

/* ------------------------------------------------------------------ */
/* The graph.                                                          */

int pf_graph_init(pf_graph *g, const pf_limits *limits, pf_error *err)
{
	memset(g, 0, sizeof(*g));
	g->limits = limits ? *limits : pf_limits_default();
	pf_arena_init(&g->arena);
	g->nodes = calloc(64, sizeof(*g->nodes));
	if (!g->nodes)
		return pf_fail(err, PF_E_NOMEM, 0, "out of memory for graph nodes");
	g->cap_nodes = 64;
	g->n_nodes = 1; /* slot 0 stays unused so that id 0 means "none" */
	return 0;
}

void pf_graph_free(pf_graph *g)
{
	for (uint32_t i = 1; i < g->n_nodes; i++)
		if (kind_has_seq(g->nodes[i].kind))
			free(g->nodes[i].u.seq.v);
	free(g->nodes);
	free(g->globals);
	free(g->gl_hash);
	pf_arena_free(&g->arena);
	memset(g, 0, sizeof(*g));
}

/* pf_graph_add, reporting a failure at err_off (an absolute position). */
static pf_nid graph_add_at(pf_graph *g, pf_kind kind, uint32_t seg, uint64_t off,
			   uint64_t err_off, pf_error *err)
{
	pf_node *n;

	if ((uint64_t)g->n_nodes - 1 >= g->limits.max_nodes) {
		pf_fail(err, PF_E_LIMIT, err_off, "more than max_nodes (%llu) graph nodes",
			(unsigned long long)g->limits.max_nodes);
		return 0;
	}
	if (g->n_nodes == g->cap_nodes) {
		uint64_t cap = g->cap_nodes;
		pf_node *v = grow_array(g->nodes, &cap, (uint64_t)g->n_nodes + 1,
					sizeof(*v), UINT32_MAX);
		if (!v) {
			pf_fail(err, PF_E_NOMEM, err_off, "out of memory for %u graph nodes",
				g->n_nodes + 1);
			return 0;
		}
		g->nodes = v;
		g->cap_nodes = (uint32_t)cap;
	}
	n = &g->nodes[g->n_nodes];
	memset(n, 0, sizeof(*n));
	n->kind = (uint8_t)kind;
	n->seg = seg;
	n->off = off;
	return g->n_nodes++;
}

pf_nid pf_graph_add(pf_graph *g, pf_kind kind, uint32_t seg, uint64_t off, pf_error *err)
{
	return graph_add_at(g, kind, seg, off, off, err);
}

/* Append k items to a sequence node; err_off labels a failure. */
static int seq_extend(pf_graph *g, pf_nid id, const pf_nid *items, uint64_t k,
		      uint64_t err_off, pf_error *err)
{
	pf_node *n = pf_node_at(g, id);
	uint64_t need, cap;
	pf_nid *v;

	if (!n || !kind_has_seq(n->kind))
		return pf_fail(err, PF_E_STACK, err_off, "node %u is not a container", id);
	if (k == 0)
		return 0;
	need = (uint64_t)n->u.seq.n + k;
	cap = n->u.seq.cap;
	v = grow_array(n->u.seq.v, &cap, need, sizeof(*v), UINT32_MAX);
	if (!v)
		return pf_fail(err, need > UINT32_MAX ? PF_E_LIMIT : PF_E_NOMEM, err_off,
			       "cannot grow a %s to %llu items", pf_kind_name(n->kind),
			       (unsigned long long)need);
	memcpy(v + n->u.seq.n, items, (size_t)k * sizeof(*v));
	n->u.seq.v = v;
	n->u.seq.cap = (uint32_t)cap;
	n->u.seq.n = (uint32_t)need;
	return 0;
}

int pf_seq_push(pf_graph *g, pf_nid seq, pf_nid item, pf_error *err)
{
	pf_node *n = pf_node_at(g, seq);
	return seq_extend(g, seq, &item, 1, n ? n->off : 0, err);
}

/* ------------------------------------------------------------------ */
/* Globals: (module, name) pairs, deduplicated by an open-addressing    */
/* table of indices + 1 (0 marks an empty slot).                        */

static uint32_t hash_global(const char *mod, size_t mlen, const char *name, size_t nlen)
{
	uint32_t h = 2166136261u; /* FNV-1a */
	for (size_t i = 0; i < mlen; i++)
		h = (h ^ (uint8_t)mod[i]) * 16777619u;
	h = (h ^ 0xffu) * 16777619u; /* separator: "a.b"+"c" differs from "a"+"b.c" */
	for (size_t i = 0; i < nlen; i++)
		h = (h ^ (uint8_t)name[i]) * 16777619u;
	return h;
}

static bool same_text(const char *cstr, const char *p, size_t n)
{
	return strncmp(cstr, p, n) == 0 && cstr[n] == '\0';
}

/* Slot in gl_hash holding module.name, or the empty slot where it goes. */
static uint32_t global_slot(const pf_graph *g, const char *mod, size_t mlen,
			    const char *name, size_t nlen)
{
	uint32_t mask = g->gl_hash_cap - 1;
	uint32_t i = hash_global(mod, mlen, name, nlen) & mask;

	for (;; i = (i + 1) & mask) {
		uint32_t e = g->gl_hash[i];
		if (e == 0)
			return i;
		const pf_global *gl = &g->globals[e - 1];
		if (same_text(gl->module, mod, mlen) && same_text(gl->name, name, nlen))
			return i;
	}
}

/* Keep the table at most half full so that probes stay short. */
static int grow_global_hash(pf_graph *g)
{
	uint32_t cap = g->gl_hash_cap ? g->gl_hash_cap * 2 : 64;
	uint32_t *old = g->gl_hash;
	uint32_t old_cap = g->gl_hash_cap;

	if (cap <= g->gl_hash_cap) /* 2^31 slots: far beyond max_nodes */
		return -1;
	g->gl_hash = calloc(cap, sizeof(*g->gl_hash));
	if (!g->gl_hash) {
		g->gl_hash = old;
		return -1;
	}
	g->gl_hash_cap = cap;
	for (uint32_t i = 0; i < old_cap; i++) {
		if (!old[i])
			continue;
		const pf_global *gl = &g->globals[old[i] - 1];
		uint32_t s = global_slot(g, gl->module, strlen(gl->module), gl->name,
					 strlen(gl->name));
		g->gl_hash[s] = old[i];
	}
	free(old);
	return 0;
}

/* ------------------------------------------------------------------ */
/* The machine.                                                        */

typedef struct memo_slot {
	uint64_t key;
	pf_nid val; /* 0: empty slot */
} memo_slot;

typedef struct vm {
	pf_graph *g;
	pf_error *err;
	pf_cursor c;
	uint32_t seg;
	uint64_t op_pos;    /* position in buf of the opcode being run */
	uint8_t op;
	int protocol;
	bool binary; /* an opcode of protocol >= 1 was seen */
	uint64_t n_ops;

	pf_nid *stack;
	uint64_t n_stack, cap_stack;
	uint64_t *marks;    /* stack heights at each MARK (pickle.py's metastack) */
	uint64_t n_marks, cap_marks;

	memo_slot *memo;    /* open addressing, linear probing */
	uint64_t memo_len, memo_cap;
} vm;

/* Fail at the current opcode. */
__attribute__((format(printf, 3, 4)))
static int vm_fail(vm *m, pf_code code, const char *fmt, ...)
{
	char msg[PF_ERR_MSG_MAX];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	return pf_fail(m->err, code, m->c.origin + m->op_pos, "%s", msg);
}

static uint64_t abs_pos(const vm *m, uint64_t pos)
{
	return m->c.origin + pos;
}

static pf_nid new_node(vm *m, pf_kind kind)
{
	return graph_add_at(m->g, kind, m->seg, m->op_pos, abs_pos(m, m->op_pos), m->err);
}

static pf_node *node(vm *m, pf_nid id)
{
	return &m->g->nodes[id];
}

/* Copy bytes into the graph's arena, counted against max_decoded. */
static void *arena_take(vm *m, size_t n, uint64_t at)
{
	const pf_limits *l = &m->g->limits;
	void *p;

	if (n > l->max_decoded || m->g->arena.used > l->max_decoded - n) {
		pf_fail(m->err, PF_E_LIMIT, abs_pos(m, at),
			"more than max_decoded (%llu) bytes decoded",
			(unsigned long long)l->max_decoded);
		return NULL;
	}
	p = pf_arena_alloc(&m->g->arena, n);
	if (!p)
		pf_fail(m->err, PF_E_NOMEM, abs_pos(m, at), "out of memory for %zu bytes", n);
	return p;
}

static char *arena_cstr(vm *m, const void *src, size_t n, uint64_t at)
{
	char *s;

	if (n == SIZE_MAX)
		return NULL;
	s = arena_take(m, n + 1, at);
	if (!s)
		return NULL;
	memcpy(s, src, n);
	s[n] = '\0';
	return s;
}

/* ---- stack (CPython's Pdata) ----
 * Helpers with output parameters set them even when they fail, so that
 * gcc's -Wmaybe-uninitialized has nothing to guess about. */

/* Lowest stack height the current opcode may pop to: the innermost MARK. */
static uint64_t fence(const vm *m)
{
	return m->n_marks ? m->marks[m->n_marks - 1] : 0;
}

static int check_depth(vm *m)
{
	if (m->n_stack + m->n_marks >= m->g->limits.max_stack)
		return vm_fail(m, PF_E_LIMIT, "%s: stack deeper than max_stack (%llu)",
			       op_name(m->op), (unsigned long long)m->g->limits.max_stack);
	return 0;
}

static int push(vm *m, pf_nid id)
{
	if (!id || check_depth(m))
		return -1;
	if (m->n_stack == m->cap_stack) {
		pf_nid *s = grow_array(m->stack, &m->cap_stack, m->n_stack + 1,
				       sizeof(*s), UINT64_MAX);
		if (!s)
			return vm_fail(m, PF_E_NOMEM, "out of memory for the stack");
		m->stack = s;
	}
	m->stack[m->n_stack++] = id;
	return 0;
}

static int underflow(vm *m)
{
	return vm_fail(m, PF_E_STACK, "%s: stack underflow", op_name(m->op));
}

/* The stack must hold k items above the innermost MARK. */
static int need_items(vm *m, uint64_t k)
{
	if (m->n_stack - fence(m) < k)
		return underflow(m);
	return 0;
}

static int pop(vm *m, pf_nid *out)
{
	*out = 0;
	if (need_items(m, 1))
		return -1;
	*out = m->stack[--m->n_stack];
	return 0;
}

static int peek(vm *m, pf_nid *out)
{
	*out = 0;
	if (need_items(m, 1))
		return -1;
	*out = m->stack[m->n_stack - 1];
	return 0;
}

/* Pop the innermost MARK; *mark is the stack height it recorded. */
static int pop_mark(vm *m, uint64_t *mark)
{
	*mark = 0;
	if (m->n_marks == 0)
		return vm_fail(m, PF_E_STACK, "%s: could not find MARK", op_name(m->op));
	*mark = m->marks[--m->n_marks];
	return 0;
}

/* ---- memo ---- */

static uint64_t mix64(uint64_t x)
{
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ull;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebull;
	x ^= x >> 31;
	return x;
}

static memo_slot *memo_find(const vm *m, uint64_t key)
{
	uint64_t mask = m->memo_cap - 1;
	uint64_t i = mix64(key) & mask;

	while (m->memo[i].val && m->memo[i].key != key)
		i = (i + 1) & mask;
	return &m->memo[i];
}

static int memo_grow(vm *m)
{
	uint64_t cap = m->memo_cap ? m->memo_cap * 2 : 64;
	memo_slot *old = m->memo;
	uint64_t old_cap = m->memo_cap;

	if (cap > SIZE_MAX / sizeof(memo_slot))
		return vm_fail(m, PF_E_NOMEM, "memo too large");
	m->memo = calloc((size_t)cap, sizeof(memo_slot));
	if (!m->memo) {
		m->memo = old;
		return vm_fail(m, PF_E_NOMEM, "out of memory for the memo");
	}
	m->memo_cap = cap;
	for (uint64_t i = 0; i < old_cap; i++)
		if (old[i].val)
			*memo_find(m, old[i].key) = old[i];
	free(old);
	return 0;
}

/* memo[key] = val; a new key counts against max_memo. */
static int memo_put(vm *m, uint64_t key, pf_nid val)
{
	memo_slot *s;

	if (m->memo_cap) {
		s = memo_find(m, key);
		if (s->val) {
			s->val = val;
			return 0;
		}
	}
	if (m->memo_len >= m->g->limits.max_memo)
		return vm_fail(m, PF_E_LIMIT, "%s: more than max_memo (%llu) memo entries",
			       op_name(m->op), (unsigned long long)m->g->limits.max_memo);
	if ((m->memo_len + 1) * 2 > m->memo_cap && memo_grow(m))
		return -1;
	s = memo_find(m, key);
	s->key = key;
	s->val = val;
	m->memo_len++;
	return 0;
}

static int memo_get(vm *m, uint64_t key, pf_nid *out)
{
	memo_slot *s = m->memo_cap ? memo_find(m, key) : NULL;

	*out = 0;
	if (!s || !s->val)
		return vm_fail(m, PF_E_MEMO, "%s: memo index %llu was never PUT",
			       op_name(m->op), (unsigned long long)key);
	*out = s->val;
	return 0;
}

/* ---- reading arguments ---- */

/*
 * The cursor's getters leave their outputs unset on failure; gcc cannot see
 * that pf_fail() always returns -1, so at -O2 it warns about them
 * (-Wmaybe-uninitialized).  These wrappers set every output first.
 */
static int take(vm *m, uint64_t n, const uint8_t **p)
{
	*p = NULL;
	return pf_cursor_take(&m->c, n, p, m->err);
}

static int read_le(vm *m, unsigned width, uint64_t *v)
{
	const uint8_t *p;

	*v = 0;
	if (take(m, width, &p))
		return -1;
	*v = pf_le(p, width);
	return 0;
}

/* A text argument: the bytes up to '\n'; *at is the position of its first byte. */
static int read_line(vm *m, const uint8_t **p, uint64_t *n, uint64_t *at)
{
	*p = NULL;
	*n = 0;
	*at = m->c.pos;
	return pf_cursor_line(&m->c, p, n, m->err);
}

static int64_t sign_extend32(uint64_t v)
{
	return (int64_t)(int32_t)(uint32_t)v;
}

/* Decimal text with an optional sign.  Returns 0 when it fits in int64
 * (*v set), 1 when it is a valid decimal too big for int64, -1 if junk. */
static int parse_decimal(const uint8_t *p, uint64_t n, int64_t *v)
{
	bool neg = n > 0 && p[0] == '-';
	uint64_t i = (n > 0 && (p[0] == '-' || p[0] == '+')) ? 1 : 0;
	uint64_t limit = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
	uint64_t mag = 0;
	bool big = false;

	if (i == n)
		return -1;
	for (; i < n; i++) {
		if (p[i] < '0' || p[i] > '9')
			return -1;
		unsigned d = p[i] - '0';
		if (big || mag > (limit - d) / 10)
			big = true;
		else
			mag = mag * 10 + d;
	}
	if (big)
		return 1;
	*v = neg ? (int64_t)(0 - mag) : (int64_t)mag;
	return 0;
}

/* Little-endian two's complement p[0..n) as int64, when it fits. */
static bool twos_to_i64(const uint8_t *p, uint64_t n, int64_t *v)
{
	uint64_t low = n ? pf_le(p, (unsigned)(n < 8 ? n : 8)) : 0;
	uint8_t sign = (n && (p[n - 1] & 0x80)) ? 0xff : 0x00;

	/* bytes past the eighth must only repeat the sign (Python never
	 * writes them, but a redundant encoding is still the same value) */
	for (uint64_t i = 8; i < n; i++)
		if (p[i] != sign)
			return false;
	if (n > 8 && ((low >> 63) ? 0xff : 0x00) != sign)
		return false;
	if (n > 0 && n < 8 && sign)
		low |= ~0ull << (8 * n);
	*v = (int64_t)low;
	return true;
}

/* ------------------------------------------------------------------ */
/* Opcodes that push a scalar.                                          */

static int push_new(vm *m, pf_kind kind, pf_nid *out)
{
	pf_nid id = new_node(m, kind);

	if (out)
		*out = 0;
	if (!id || push(m, id))
		return -1;
	if (out)
		*out = id;
	return 0;
}

static int push_int(vm *m, int64_t v)
{
	pf_nid id;
	if (push_new(m, PF_K_INT, &id))
		return -1;
	node(m, id)->u.i = v;
	return 0;
}

static int push_bool(vm *m, bool b)
{
	pf_nid id;
	if (push_new(m, PF_K_BOOL, &id))
		return -1;
	node(m, id)->u.b = b;
	return 0;
}

/* A node whose payload is p[0..n) at position `at` (in the input, or in
 * the arena when `flags` has PF_F_DECODED). */
static pf_nid make_span(vm *m, pf_kind kind, uint16_t flags, const uint8_t *p, uint64_t n,
			uint64_t at)
{
	pf_nid id = new_node(m, kind);

	if (id) {
		pf_node *nd = node(m, id);
		nd->flags = flags;
		nd->u.s.p = p;
		nd->u.s.len = n;
		nd->u.s.off = at;
	}
	return id;
}

static int push_span(vm *m, pf_kind kind, uint16_t flags, const uint8_t *p, uint64_t n,
		     uint64_t at)
{
	return push(m, make_span(m, kind, flags, p, n, at));
}

/* BININT, BININT1, BININT2 */
static int op_binint(vm *m, unsigned width)
{
	uint64_t v;
	if (read_le(m, width, &v))
		return -1;
	return push_int(m, width == 4 ? sign_extend32(v) : (int64_t)v);
}

/* LONG1, LONG4: n bytes of little-endian two's complement */
static int op_long_bin(vm *m, unsigned width)
{
	const uint8_t *p;
	uint64_t n, at;
	int64_t v;

	if (read_le(m, width, &n))
		return -1;
	if (width == 4 && sign_extend32(n) < 0)
		return vm_fail(m, PF_E_FORMAT, "LONG4 has negative byte count %lld",
			       (long long)sign_extend32(n));
	at = m->c.pos;
	if (take(m, n, &p))
		return -1;
	if (twos_to_i64(p, n, &v))
		return push_int(m, v);
	return push_span(m, PF_K_BIGINT, 0, p, n, at);
}

/* INT and LONG: decimal text; INT "01"/"00" are the protocol-0 booleans. */
static int op_text_int(vm *m, bool is_long)
{
	const uint8_t *p;
	uint64_t n, at;
	int64_t v;
	int r;

	if (read_line(m, &p, &n, &at))
		return -1;
	if (!is_long && n == 2 && p[0] == '0' && (p[1] == '0' || p[1] == '1'))
		return push_bool(m, p[1] == '1');
	if (is_long && n > 0 && p[n - 1] == 'L')
		n--; /* Python 2 wrote longs as "123L" */
	r = parse_decimal(p, n, &v);
	if (r < 0)
		return pf_fail(m->err, PF_E_FORMAT, abs_pos(m, at), "%s: argument is not a decimal integer",
			       op_name(m->op));
	if (r == 0)
		return push_int(m, v);
	return push_span(m, PF_K_BIGINT, PF_F_DECIMAL, p, n, at);
}

/* FLOAT: repr() text, converted with strtod on a NUL-terminated copy
 * (on the C stack when short, as every float Python writes is; in the
 * arena otherwise).  strtod also takes hex floats and "nan(...)", which
 * float() rejects, so those are refused first. */
static int op_float(vm *m)
{
	const uint8_t *p;
	uint64_t n, at;
	char local[64], *s, *end;
	pf_nid id;
	double d;

	if (read_line(m, &p, &n, &at))
		return -1;
	if (n == 0 || memchr(p, 'x', n) || memchr(p, 'X', n) || memchr(p, '(', n))
		return pf_fail(m->err, PF_E_FORMAT, abs_pos(m, at), "FLOAT: argument is not a number");
	if (n < sizeof(local)) {
		memcpy(local, p, (size_t)n);
		local[n] = '\0';
		s = local;
	} else {
		s = arena_cstr(m, p, (size_t)n, at);
		if (!s)
			return -1;
	}
	d = strtod(s, &end);
	if (end == s || *end != '\0')
		return pf_fail(m->err, PF_E_FORMAT, abs_pos(m, at), "FLOAT: argument is not a number");
	if (push_new(m, PF_K_FLOAT, &id))
		return -1;
	node(m, id)->u.f = d;
	return 0;
}

static int op_binfloat(vm *m)
{
	const uint8_t *p;
	uint64_t bits = 0;
	pf_nid id;
	double d;

	if (take(m, 8, &p))
		return -1;
	for (int i = 0; i < 8; i++)
		bits = (bits << 8) | p[i]; /* big-endian, unlike every other opcode */
	memcpy(&d, &bits, sizeof(d));
	if (push_new(m, PF_K_FLOAT, &id))
		return -1;
	node(m, id)->u.f = d;
	return 0;
}

/* Length-prefixed payloads: BINSTRING, BINUNICODE*, BINBYTES*, ...
 * The length is checked against the bytes left before anything else. */
static int op_counted(vm *m, pf_kind kind, unsigned width, uint16_t flags)
{
	const uint8_t *p;
	uint64_t n, at;

	if (read_le(m, width, &n))
		return -1;
	if (m->op == OP_BINSTRING && sign_extend32(n) < 0)
		return vm_fail(m, PF_E_FORMAT, "BINSTRING has negative byte count %lld",
			       (long long)sign_extend32(n));
	at = m->c.pos;
	if (take(m, n, &p))
		return -1;
	return push_span(m, kind, flags, p, n, at);
}

static int hex_digit(uint8_t c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/*
 * Python's bytes escapes (PyBytes_DecodeEscape) from in[0..n) into out,
 * which has room for n bytes (no escape grows).  Unknown escapes stay as
 * written, "\<newline>" vanishes.  Returns the length, or -1.
 */
static int64_t unescape_bytes(const uint8_t *in, uint64_t n, uint8_t *out)
{
	static const char simple_from[] = "\\'\"bftnrva";
	static const char simple_to[] = "\\'\"\b\f\t\n\r\v\a";
	uint64_t i = 0, o = 0;

	while (i < n) {
		uint8_t c = in[i++];
		if (c != '\\') {
			out[o++] = c;
			continue;
		}
		if (i == n)
			return -1; /* trailing backslash */
		c = in[i++];
		const char *s = c ? strchr(simple_from, c) : NULL;
		if (s) {
			out[o++] = (uint8_t)simple_to[s - simple_from];
		} else if (c == '\n') {
			/* line continuation: nothing */
		} else if (c >= '0' && c <= '7') {
			unsigned v = c - '0';
			for (int k = 0; k < 2 && i < n && in[i] >= '0' && in[i] <= '7'; k++)
				v = (v << 3) + (in[i++] - '0');
			out[o++] = (uint8_t)v; /* "\777" wraps, as in CPython */
		} else if (c == 'x') {
			if (n - i < 2 || hex_digit(in[i]) < 0 || hex_digit(in[i + 1]) < 0)
				return -1;
			out[o++] = (uint8_t)(hex_digit(in[i]) * 16 + hex_digit(in[i + 1]));
			i += 2;
		} else {
			out[o++] = '\\';
			out[o++] = c;
		}
	}
	return (int64_t)o;
}

/* STRING: a quoted Python 2 repr.  The decoded bytes go to the arena as
 * they are (Python 2 str has no encoding; PF_F_PY2STR says so). */
static int op_string(vm *m)
{
	const uint8_t *p;
	uint64_t n, at;
	uint8_t *out;
	int64_t len;

	if (read_line(m, &p, &n, &at))
		return -1;
	if (n < 2 || p[0] != p[n - 1] || (p[0] != '\'' && p[0] != '"'))
		return pf_fail(m->err, PF_E_FORMAT, abs_pos(m, at),
			       "STRING: argument must be quoted");
	out = arena_take(m, (size_t)n, at);
	if (!out)
		return -1;
	len = unescape_bytes(p + 1, n - 2, out);
	if (len < 0)
		return pf_fail(m->err, PF_E_FORMAT, abs_pos(m, at), "STRING: bad escape");
	return push_span(m, PF_K_STR, PF_F_DECODED | PF_F_PY2STR, out, (uint64_t)len, at);
}

/* UTF-8 of one code point; lone surrogates get their 3-byte form, as
 * Python's "surrogatepass" writes them. */
static uint64_t put_utf8(uint32_t ch, uint8_t *out)
{
	if (ch < 0x80) {
		out[0] = (uint8_t)ch;
		return 1;
	}
	if (ch < 0x800) {
		out[0] = (uint8_t)(0xc0 | (ch >> 6));
		out[1] = (uint8_t)(0x80 | (ch & 0x3f));
		return 2;
	}
	if (ch < 0x10000) {
		out[0] = (uint8_t)(0xe0 | (ch >> 12));
		out[1] = (uint8_t)(0x80 | ((ch >> 6) & 0x3f));
		out[2] = (uint8_t)(0x80 | (ch & 0x3f));
		return 3;
	}
	out[0] = (uint8_t)(0xf0 | (ch >> 18));
	out[1] = (uint8_t)(0x80 | ((ch >> 12) & 0x3f));
	out[2] = (uint8_t)(0x80 | ((ch >> 6) & 0x3f));
	out[3] = (uint8_t)(0x80 | (ch & 0x3f));
	return 4;
}

/*
 * raw-unicode-escape (CPython _PyUnicode_DecodeRawUnicodeEscape) from
 * in[0..n) to UTF-8 in out (room for 2n bytes: a latin-1 byte becomes at
 * most 2, "\uXXXX" (6) at most 3, "\UXXXXXXXX" (10) 4).  Only \u and \U
 * are escapes; a backslash before anything else is kept with that byte.
 * Returns the length, or -1.
 */
static int64_t decode_raw_unicode_escape(const uint8_t *in, uint64_t n, uint8_t *out)
{
	uint64_t i = 0, o = 0;

	while (i < n) {
		uint8_t c = in[i++];
		if (c != '\\' || i == n) {
			o += put_utf8(c, out + o);
			continue;
		}
		c = in[i++];
		if (c != 'u' && c != 'U') {
			out[o++] = '\\';
			o += put_utf8(c, out + o);
			continue;
		}
		unsigned count = c == 'u' ? 4 : 8;
		uint32_t ch = 0;
		if (n - i < count)
			return -1;
		for (unsigned k = 0; k < count; k++) {
			int d = hex_digit(in[i++]);
			if (d < 0)
				return -1;
			ch = (ch << 4) | (uint32_t)d;
		}
		if (ch > 0x10ffff)
			return -1;
		o += put_utf8(ch, out + o);
	}
	return (int64_t)o;
}

/* UNICODE: raw-unicode-escape text, decoded to UTF-8 in the arena. */
static int op_unicode(vm *m)
{
	const uint8_t *p;
	uint64_t n, at;
	uint8_t *out;
	int64_t len;

	if (read_line(m, &p, &n, &at))
		return -1;
	if (n > SIZE_MAX / 2)
		return pf_fail(m->err, PF_E_NOMEM, abs_pos(m, at), "UNICODE: argument too long");
	out = arena_take(m, (size_t)n * 2, at);
	if (!out)
		return -1;
	len = decode_raw_unicode_escape(p, n, out);
	if (len < 0)
		return pf_fail(m->err, PF_E_FORMAT, abs_pos(m, at),
			       "UNICODE: bad \\u or \\U escape");
	return push_span(m, PF_K_STR, PF_F_DECODED, out, (uint64_t)len, at);
}

/* ------------------------------------------------------------------ */
/* Persistent ids, globals, extensions.                                 */

static int push_persid(vm *m, pf_nid pid)
{
	pf_nid id;
	if (push_new(m, PF_K_PERSID, &id))
		return -1;
	node(m, id)->u.persid.pid = pid;
	return 0;
}

/* PERSID: the id is ASCII text, kept as a str node in the input. */
static int op_persid(vm *m)
{
	const uint8_t *p;
	uint64_t n, at;
	pf_nid pid;

	if (read_line(m, &p, &n, &at))
		return -1;
	for (uint64_t i = 0; i < n; i++)
		if (p[i] & 0x80)
			return pf_fail(m->err, PF_E_FORMAT, abs_pos(m, at + i),
				       "PERSID: argument is not ASCII");
	pid = make_span(m, PF_K_STR, 0, p, n, at);
	if (!pid)
		return -1;
	return push_persid(m, pid);
}

static int op_binpersid(vm *m)
{
	pf_nid pid;
	if (pop(m, &pid))
		return -1;
	return push_persid(m, pid);
}

/* A module or attribute name: bounded, UTF-8 and without NUL bytes (Python
 * decodes names as UTF-8 and could not import such a name; we keep names
 * as C strings). */
static int check_name(vm *m, const char *what, const uint8_t *p, uint64_t n, uint64_t at)
{
	if (n > m->g->limits.max_name_len)
		return pf_fail(m->err, PF_E_LIMIT, abs_pos(m, at),
			       "%s: %s of %llu bytes is longer than max_name_len (%llu)",
			       op_name(m->op), what, (unsigned long long)n,
			       (unsigned long long)m->g->limits.max_name_len);
	if (memchr(p, '\0', (size_t)n))
		return pf_fail(m->err, PF_E_FORMAT, abs_pos(m, at), "%s: %s contains NUL",
			       op_name(m->op), what);
	if (!pf_utf8_valid(p, (size_t)n))
		return pf_fail(m->err, PF_E_FORMAT, abs_pos(m, at), "%s: %s is not UTF-8",
			       op_name(m->op), what);
	return 0;
}

/* Index of module.name in g->globals, adding it on first use. */
static int intern_global(vm *m, const char *mod, size_t mlen, const char *name, size_t nlen,
			 uint32_t *index)
{
	pf_graph *g = m->g;
	uint32_t slot;
	pf_global *gl;

	if ((g->n_globals + 1) * 2ull > g->gl_hash_cap && grow_global_hash(g))
		return vm_fail(m, PF_E_NOMEM, "out of memory for the globals index");
	slot = global_slot(g, mod, mlen, name, nlen);
	if (g->gl_hash[slot]) {
		*index = g->gl_hash[slot] - 1;
		g->globals[*index].uses++;
		return 0;
	}
	if (g->n_globals == g->cap_globals) {
		uint64_t cap = g->cap_globals;
		pf_global *v = grow_array(g->globals, &cap, (uint64_t)g->n_globals + 1,
					  sizeof(*v), UINT32_MAX - 1);
		if (!v)
			return vm_fail(m, PF_E_NOMEM, "out of memory for globals");
		g->globals = v;
		g->cap_globals = (uint32_t)cap;
	}
	gl = &g->globals[g->n_globals];
	gl->module = arena_cstr(m, mod, mlen, m->op_pos);
	gl->name = gl->module ? arena_cstr(m, name, nlen, m->op_pos) : NULL;
	if (!gl->name)
		return -1;
	gl->first_off = m->op_pos;
	gl->first_seg = m->seg;
	gl->uses = 1;
	*index = g->n_globals++;
	g->gl_hash[slot] = *index + 1;
	return 0;
}

/* A PF_K_GLOBAL node for module.name (not pushed). */
static pf_nid make_global(vm *m, const char *mod, size_t mlen, const char *name, size_t nlen,
			  pf_nid mod_node, pf_nid name_node)
{
	uint32_t index = 0;
	pf_nid id;

	if (intern_global(m, mod, mlen, name, nlen, &index))
		return 0;
	id = new_node(m, PF_K_GLOBAL);
	if (id) {
		node(m, id)->u.g.index = index;
		node(m, id)->u.g.module = mod_node;
		node(m, id)->u.g.name = name_node;
	}
	return id;
}

/* "module\nname\n", the argument of GLOBAL and INST. */
static pf_nid read_global_lines(vm *m)
{
	const uint8_t *mod, *name;
	uint64_t mlen, nlen, mat, nat;

	if (read_line(m, &mod, &mlen, &mat) || check_name(m, "module", mod, mlen, mat) ||
	    read_line(m, &name, &nlen, &nat) || check_name(m, "name", name, nlen, nat))
		return 0;
	return make_global(m, (const char *)mod, (size_t)mlen, (const char *)name,
			   (size_t)nlen, 0, 0);
}

static int op_global(vm *m)
{
	return push(m, read_global_lines(m));
}

static int check_name_node(vm *m, const char *what, pf_nid id)
{
	pf_node *n = node(m, id);

	if (n->kind != PF_K_STR)
		return vm_fail(m, PF_E_STACK, "STACK_GLOBAL: %s is a %s, not a str", what,
			       pf_kind_name(n->kind));
	return check_name(m, what, n->u.s.p, n->u.s.len, m->op_pos);
}

static int op_stack_global(vm *m)
{
	pf_nid mod, name;
	const pf_node *mn, *nn;

	if (pop(m, &name) || pop(m, &mod) || check_name_node(m, "module", mod) ||
	    check_name_node(m, "name", name))
		return -1;
	/* take the spans out first: make_global may move the node array */
	mn = node(m, mod);
	nn = node(m, name);
	const char *mp = (const char *)mn->u.s.p, *np = (const char *)nn->u.s.p;
	size_t ml = (size_t)mn->u.s.len, nl = (size_t)nn->u.s.len;
	return push(m, make_global(m, mp, ml, np, nl, mod, name));
}

/* EXT1/EXT2/EXT4: a copyreg extension code, shown as EXT_MODULE.<code>. */
static int op_ext(vm *m, unsigned width)
{
	char name[24];
	uint64_t v;
	int64_t code;

	if (read_le(m, width, &v))
		return -1;
	code = width == 4 ? sign_extend32(v) : (int64_t)v;
	if (code <= 0)
		return vm_fail(m, PF_E_FORMAT, "%s: extension code %lld is not positive",
			       op_name(m->op), (long long)code);
	snprintf(name, sizeof(name), "%lld", (long long)code);
	return push(m, make_global(m, EXT_MODULE, strlen(EXT_MODULE), name, strlen(name), 0, 0));
}

/* ------------------------------------------------------------------ */
/* Containers.                                                          */

/* A new container holding items[0..k). */
static pf_nid make_seq(vm *m, pf_kind kind, const pf_nid *items, uint64_t k)
{
	pf_nid id = new_node(m, kind);
	if (id && seq_extend(m->g, id, items, k, abs_pos(m, m->op_pos), m->err))
		return 0;
	return id;
}

static int push_empty(vm *m, pf_kind kind)
{
	return push_new(m, kind, NULL);
}

/* TUPLE1/2/3: the top k items become a tuple. */
static int op_counted_tuple(vm *m, uint64_t k)
{
	pf_nid id;

	if (need_items(m, k))
		return -1;
	id = make_seq(m, PF_K_TUPLE, k ? m->stack + m->n_stack - k : NULL, k);
	if (!id)
		return -1;
	m->n_stack -= k;
	return push(m, id);
}

/* TUPLE, LIST, DICT, FROZENSET: the items since the last MARK. */
static int op_from_mark(vm *m, pf_kind kind)
{
	uint64_t mark, k;
	pf_nid id;

	if (pop_mark(m, &mark))
		return -1;
	k = m->n_stack - mark;
	if (kind == PF_K_DICT && k % 2)
		return vm_fail(m, PF_E_STACK, "DICT: odd number of items");
	/* an empty stack has no array yet: no pointer arithmetic on NULL */
	id = make_seq(m, kind, k ? m->stack + mark : NULL, k);
	if (!id)
		return -1;
	m->n_stack = mark;
	return push(m, id);
}

/* The PF_K_LIST / PF_K_DICT that holds what APPEND / SETITEM did to a
 * call's result, made on first use. */
static pf_nid call_items(vm *m, pf_nid call, bool dict)
{
	pf_nid have = dict ? node(m, call)->u.call.dictitems : node(m, call)->u.call.listitems;
	pf_nid id;

	if (have)
		return have;
	id = new_node(m, dict ? PF_K_DICT : PF_K_LIST);
	if (!id)
		return 0;
	if (dict)
		node(m, call)->u.call.dictitems = id;
	else
		node(m, call)->u.call.listitems = id;
	return id;
}

/*
 * APPEND(S) / SETITEM(S) / ADDITEMS: add items[0..k) to `target`, which
 * must be a container of kind `want` or a call (whose result is unknown,
 * so the items are recorded beside it).  ADDITEMS takes only sets.
 */
static int add_items(vm *m, pf_nid target, pf_kind want, const pf_nid *items, uint64_t k)
{
	int kind = node(m, target)->kind;
	pf_nid into = target;

	if (kind == PF_K_CALL && want != PF_K_SET)
		into = call_items(m, target, want == PF_K_DICT);
	else if (kind != (int)want)
		return vm_fail(m, PF_E_STACK, "%s onto a %s", op_name(m->op), pf_kind_name(kind));
	if (!into)
		return -1;
	return seq_extend(m->g, into, items, k, abs_pos(m, m->op_pos), m->err);
}

/* APPEND, SETITEM: the top `k` items go into the object below them. */
static int op_add_top(vm *m, pf_kind want, uint64_t k)
{
	if (need_items(m, k + 1))
		return -1;
	if (add_items(m, m->stack[m->n_stack - k - 1], want, m->stack + m->n_stack - k, k))
		return -1;
	m->n_stack -= k;
	return 0;
}

/* APPENDS, SETITEMS, ADDITEMS: the items since the last MARK go into the
 * object just below the MARK.  No items is a no-op whatever the target
 * is (CPython returns before looking at it). */
static int op_add_marked(vm *m, pf_kind want)
{
	uint64_t mark, k;

	if (pop_mark(m, &mark))
		return -1;
	if (mark <= fence(m) || mark > m->n_stack)
		return underflow(m);
	k = m->n_stack - mark;
	if (k == 0)
		return 0;
	if (want == PF_K_DICT && k % 2)
		return vm_fail(m, PF_E_STACK, "SETITEMS: odd number of items");
	if (add_items(m, m->stack[mark - 1], want, m->stack + mark, k))
		return -1;
	m->n_stack = mark;
	return 0;
}

/* ------------------------------------------------------------------ */
/* Calls.                                                               */

/* Kinds whose Python value we cannot know, so they may be anything. */
static bool kind_is_opaque(int kind)
{
	return kind == PF_K_CALL || kind == PF_K_PERSID || kind == PF_K_GLOBAL;
}

/* CPython rejects call arguments that are not a tuple (kwargs: a dict)
 * when it runs them; we can only tell for nodes whose value we know. */
static int check_arg_kind(vm *m, pf_nid id, pf_kind want, const char *what)
{
	int kind = node(m, id)->kind;

	if (kind != (int)want && !kind_is_opaque(kind))
		return vm_fail(m, PF_E_STACK, "%s: %s is a %s, not a %s", op_name(m->op), what,
			       pf_kind_name(kind), pf_kind_name(want));
	return 0;
}

static pf_nid make_call(vm *m, pf_call_how how, pf_nid func, pf_nid args, pf_nid kwargs)
{
	pf_nid id = new_node(m, PF_K_CALL);

	if (id) {
		pf_node *n = node(m, id);
		n->how = (uint8_t)how;
		n->u.call.func = func;
		n->u.call.args = args;
		n->u.call.kwargs = kwargs;
	}
	return id;
}

/* REDUCE: func(*args);  NEWOBJ: cls.__new__(cls, *args) */
static int op_reduce(vm *m, pf_call_how how)
{
	pf_nid func, args;

	if (pop(m, &args) || pop(m, &func) || check_arg_kind(m, args, PF_K_TUPLE, "args"))
		return -1;
	return push(m, make_call(m, how, func, args, 0));
}

static int op_newobj_ex(vm *m)
{
	pf_nid cls, args, kwargs;

	if (pop(m, &kwargs) || pop(m, &args) || pop(m, &cls) ||
	    check_arg_kind(m, args, PF_K_TUPLE, "args") ||
	    check_arg_kind(m, kwargs, PF_K_DICT, "kwargs"))
		return -1;
	return push(m, make_call(m, PF_HOW_NEWOBJ_EX, cls, args, kwargs));
}

/* OBJ: MARK cls args... */
static int op_obj(vm *m)
{
	uint64_t mark;
	pf_nid cls, args;

	if (pop_mark(m, &mark))
		return -1;
	if (m->n_stack - mark < 1)
		return underflow(m);
	cls = m->stack[mark];
	args = make_seq(m, PF_K_TUPLE, m->stack + mark + 1, m->n_stack - mark - 1);
	if (!args)
		return -1;
	m->n_stack = mark;
	return push(m, make_call(m, PF_HOW_OBJ, cls, args, 0));
}

/* INST module\nname\n: MARK args... */
static int op_inst(vm *m)
{
	uint64_t mark;
	pf_nid cls, args;

	cls = read_global_lines(m);
	if (!cls || pop_mark(m, &mark))
		return -1;
	args = make_seq(m, PF_K_TUPLE, m->n_stack > mark ? m->stack + mark : NULL, m->n_stack - mark);
	if (!args)
		return -1;
	m->n_stack = mark;
	return push(m, make_call(m, PF_HOW_INST, cls, args, 0));
}

/* BUILD: state goes to the call below it (its __setstate__ / __dict__). */
static int op_build(vm *m)
{
	pf_nid state, target;
	pf_node *t;

	if (need_items(m, 2) || pop(m, &state) || peek(m, &target))
		return -1;
	t = node(m, target);
	if (t->kind != PF_K_CALL)
		return vm_fail(m, PF_E_STACK, "BUILD onto a %s", pf_kind_name(t->kind));
	t->u.call.state = state;
	t->u.call.n_builds++;
	return 0;
}

/* ------------------------------------------------------------------ */
/* Stack, memo and framing opcodes.                                     */

static int op_mark(vm *m)
{
	if (check_depth(m))
		return -1;
	if (m->n_marks == m->cap_marks) {
		uint64_t *v = grow_array(m->marks, &m->cap_marks, m->n_marks + 1,
					 sizeof(*v), UINT64_MAX);
		if (!v)
			return vm_fail(m, PF_E_NOMEM, "out of memory for the mark stack");
		m->marks = v;
	}
	m->marks[m->n_marks++] = m->n_stack;
	return 0;
}

/* POP drops the top item, or the innermost MARK when nothing is above it
 * (CPython keeps pickle.py's single-stack behaviour this way). */
static int op_pop(vm *m)
{
	pf_nid dummy;

	if (m->n_marks && m->marks[m->n_marks - 1] == m->n_stack) {
		m->n_marks--;
		return 0;
	}
	return pop(m, &dummy);
}

static int op_pop_mark(vm *m)
{
	uint64_t mark;

	if (pop_mark(m, &mark))
		return -1;
	m->n_stack = mark;
	return 0;
}

static int op_dup(vm *m)
{
	pf_nid top;

	if (peek(m, &top) || push(m, top))
		return -1;
	return 0;
}

/* PUT (text), BINPUT, LONG_BINPUT: memo[index] = top, no pop. */
static int op_put(vm *m, unsigned width)
{
	uint64_t index;
	pf_nid top;

	if (width) {
		if (read_le(m, width, &index))
			return -1;
	} else {
		const uint8_t *p;
		uint64_t n, at;
		int64_t v;
		if (read_line(m, &p, &n, &at))
			return -1;
		if (parse_decimal(p, n, &v) != 0 || v < 0)
			return pf_fail(m->err, PF_E_FORMAT, abs_pos(m, at),
				       "PUT: argument is not a memo index");
		index = (uint64_t)v;
	}
	if (peek(m, &top) || memo_put(m, index, top))
		return -1;
	return 0;
}

/* GET (text), BINGET, LONG_BINGET */
static int op_get(vm *m, unsigned width)
{
	uint64_t index;
	pf_nid id = 0;

	if (width) {
		if (read_le(m, width, &index))
			return -1;
	} else {
		const uint8_t *p;
		uint64_t n, at;
		int64_t v;
		if (read_line(m, &p, &n, &at))
			return -1;
		if (parse_decimal(p, n, &v) != 0 || v < 0)
			return pf_fail(m->err, PF_E_FORMAT, abs_pos(m, at),
				       "GET: argument is not a memo index");
		index = (uint64_t)v;
	}
	if (memo_get(m, index, &id) || push(m, id))
		return -1;
	return 0;
}

/* MEMOIZE: memo[number of memo entries] = top (CPython's memo_len). */
static int op_memoize(vm *m)
{
	pf_nid top;

	if (peek(m, &top) || memo_put(m, m->memo_len, top))
		return -1;
	return 0;
}

static int op_proto(vm *m)
{
	uint64_t v;

	if (read_le(m, 1, &v))
		return -1;
	if (v > HIGHEST_PROTOCOL)
		return vm_fail(m, PF_E_UNSUPPORTED, "unsupported pickle protocol %llu",
			       (unsigned long long)v);
	m->protocol = (int)v;
	return 0;
}

/* FRAME: only a read-ahead hint, but the frame must fit in the input. */
static int op_frame(vm *m)
{
	uint64_t len;

	if (read_le(m, 8, &len))
		return -1;
	if (len > pf_cursor_left(&m->c))
		return pf_fail(m->err, PF_E_TRUNCATED, abs_pos(m, m->c.pos),
			       "FRAME of %llu bytes, %llu left", (unsigned long long)len,
			       (unsigned long long)pf_cursor_left(&m->c));
	return 0;
}

static int op_readonly_buffer(vm *m)
{
	pf_nid top;

	if (peek(m, &top))
		return -1;
	node(m, top)->flags |= PF_F_READONLY;
	return 0;
}

/* ------------------------------------------------------------------ */
/* The loop.                                                            */

static int dispatch(vm *m)
{
	switch (m->op) {
	case OP_MARK: return op_mark(m);
	case OP_POP: return op_pop(m);
	case OP_POP_MARK: return op_pop_mark(m);
	case OP_DUP: return op_dup(m);

	case OP_NONE: return push_empty(m, PF_K_NONE);
	case OP_NEWTRUE: return push_bool(m, true);
	case OP_NEWFALSE: return push_bool(m, false);
	case OP_INT: return op_text_int(m, false);
	case OP_LONG: return op_text_int(m, true);
	case OP_BININT: return op_binint(m, 4);
	case OP_BININT1: return op_binint(m, 1);
	case OP_BININT2: return op_binint(m, 2);
	case OP_LONG1: return op_long_bin(m, 1);
	case OP_LONG4: return op_long_bin(m, 4);
	case OP_FLOAT: return op_float(m);
	case OP_BINFLOAT: return op_binfloat(m);

	case OP_STRING: return op_string(m);
	case OP_BINSTRING: return op_counted(m, PF_K_STR, 4, PF_F_PY2STR);
	case OP_SHORT_BINSTRING: return op_counted(m, PF_K_STR, 1, PF_F_PY2STR);
	case OP_UNICODE: return op_unicode(m);
	case OP_BINUNICODE: return op_counted(m, PF_K_STR, 4, 0);
	case OP_SHORT_BINUNICODE: return op_counted(m, PF_K_STR, 1, 0);
	case OP_BINUNICODE8: return op_counted(m, PF_K_STR, 8, 0);
	case OP_BINBYTES: return op_counted(m, PF_K_BYTES, 4, 0);
	case OP_SHORT_BINBYTES: return op_counted(m, PF_K_BYTES, 1, 0);
	case OP_BINBYTES8: return op_counted(m, PF_K_BYTES, 8, 0);
	case OP_BYTEARRAY8: return op_counted(m, PF_K_BYTES, 8, PF_F_BYTEARRAY);
	case OP_NEXT_BUFFER: return push_empty(m, PF_K_BUFFER);
	case OP_READONLY_BUFFER: return op_readonly_buffer(m);

	case OP_EMPTY_TUPLE: return push_empty(m, PF_K_TUPLE);
	case OP_EMPTY_LIST: return push_empty(m, PF_K_LIST);
	case OP_EMPTY_DICT: return push_empty(m, PF_K_DICT);
	case OP_EMPTY_SET: return push_empty(m, PF_K_SET);
	case OP_TUPLE1: return op_counted_tuple(m, 1);
	case OP_TUPLE2: return op_counted_tuple(m, 2);
	case OP_TUPLE3: return op_counted_tuple(m, 3);
	case OP_TUPLE: return op_from_mark(m, PF_K_TUPLE);
	case OP_LIST: return op_from_mark(m, PF_K_LIST);
	case OP_DICT: return op_from_mark(m, PF_K_DICT);
	case OP_FROZENSET: return op_from_mark(m, PF_K_FROZENSET);
	case OP_APPEND: return op_add_top(m, PF_K_LIST, 1);
	case OP_SETITEM: return op_add_top(m, PF_K_DICT, 2);
	case OP_APPENDS: return op_add_marked(m, PF_K_LIST);
	case OP_SETITEMS: return op_add_marked(m, PF_K_DICT);
	case OP_ADDITEMS: return op_add_marked(m, PF_K_SET);

	case OP_GLOBAL: return op_global(m);
	case OP_STACK_GLOBAL: return op_stack_global(m);
	case OP_EXT1: return op_ext(m, 1);
	case OP_EXT2: return op_ext(m, 2);
	case OP_EXT4: return op_ext(m, 4);
	case OP_REDUCE: return op_reduce(m, PF_HOW_REDUCE);
	case OP_NEWOBJ: return op_reduce(m, PF_HOW_NEWOBJ);
	case OP_NEWOBJ_EX: return op_newobj_ex(m);
	case OP_OBJ: return op_obj(m);
	case OP_INST: return op_inst(m);
	case OP_BUILD: return op_build(m);
	case OP_PERSID: return op_persid(m);
	case OP_BINPERSID: return op_binpersid(m);

	case OP_PUT: return op_put(m, 0);
	case OP_BINPUT: return op_put(m, 1);
	case OP_LONG_BINPUT: return op_put(m, 4);
	case OP_GET: return op_get(m, 0);
	case OP_BINGET: return op_get(m, 1);
	case OP_LONG_BINGET: return op_get(m, 4);
	case OP_MEMOIZE: return op_memoize(m);

	case OP_PROTO: return op_proto(m);
	case OP_FRAME: return op_frame(m);
	}
	return vm_fail(m, PF_E_OPCODE, "invalid opcode 0x%02x", m->op);
}

/* Run opcodes up to and including STOP. */
static int run_loop(vm *m)
{
	for (;;) {
		if (m->n_ops >= m->g->limits.max_opcodes)
			return pf_fail(m->err, PF_E_LIMIT, abs_pos(m, m->c.pos),
				       "more than max_opcodes (%llu) opcodes",
				       (unsigned long long)m->g->limits.max_opcodes);
		const uint8_t *p;
		m->op_pos = m->c.pos;
		if (take(m, 1, &p))
			return -1;
		m->op = *p;
		m->n_ops++;
		/* without PROTO, any opcode beyond the protocol-0 text set means protocol 1 */
		static const char proto0_ops[] = "(.02FILNPRSVabcdgilpst";
		if (!memchr(proto0_ops, m->op, sizeof(proto0_ops) - 1))
			m->binary = true;
		if (m->op == OP_STOP)
			return 0;
		if (dispatch(m))
			return -1;
	}
}

int pf_pickle_run(pf_graph *g, const uint8_t *buf, uint64_t len, uint64_t start,
		  uint32_t seg, uint64_t origin, pf_pickle_info *info, pf_error *err)
{
	vm m = { .g = g, .err = err, .seg = seg };
	pf_nid root = 0;
	int rc;

	pf_cursor_init(&m.c, buf, len, origin);
	if (start > len)
		return pf_fail(err, PF_E_TRUNCATED, origin + len, "pickle starts past the end");
	m.c.pos = start;
	rc = run_loop(&m);
	if (rc == 0)
		rc = pop(&m, &root); /* STOP returns the top; items below it are ignored */
	if (info) {
		info->root = rc ? 0 : root;
		info->protocol = m.protocol ? m.protocol : m.binary ? 1 : 0;
		info->start = start;
		info->end = rc ? 0 : m.c.pos;
		info->n_opcodes = m.n_ops;
	}
	free(m.stack);
	free(m.marks);
	free(m.memo);
	return rc;
}

/* ------------------------------------------------------------------ */
/* Accessors.                                                           */

const pf_global *pf_node_global(const pf_graph *g, pf_nid id)
{
	pf_node *n = pf_node_at(g, id);

	if (!n || n->kind != PF_K_GLOBAL || n->u.g.index >= g->n_globals)
		return NULL;
	return &g->globals[n->u.g.index];
}

bool pf_is_global(const pf_graph *g, pf_nid id, const char *module, const char *name)
{
	const pf_global *gl = pf_node_global(g, id);
	return gl && strcmp(gl->module, module) == 0 && strcmp(gl->name, name) == 0;
}

bool pf_str_eq(const pf_graph *g, pf_nid id, const char *s)
{
	pf_node *n = pf_node_at(g, id);
	size_t len = strlen(s);

	return n && n->kind == PF_K_STR && n->u.s.len == len &&
	       (len == 0 || memcmp(n->u.s.p, s, len) == 0);
}

pf_nid pf_seq_at(const pf_graph *g, pf_nid id, uint32_t i)
{
	pf_node *n = pf_node_at(g, id);

	if (!n || !kind_has_seq(n->kind) || i >= n->u.seq.n)
		return 0;
	return n->u.seq.v[i];
}

uint32_t pf_seq_len(const pf_graph *g, pf_nid id)
{
	pf_node *n = pf_node_at(g, id);
	return (n && kind_has_seq(n->kind)) ? n->u.seq.n : 0;
}

/* With repeated keys the last one wins, as in the dict Python builds. */
pf_nid pf_dict_get(const pf_graph *g, pf_nid dict, const char *key)
{
	pf_node *n = pf_node_at(g, dict);

	if (!n || n->kind != PF_K_DICT)
		return 0;
	for (uint32_t i = n->u.seq.n / 2; i-- > 0;)
		if (pf_str_eq(g, n->u.seq.v[2 * i], key))
			return n->u.seq.v[2 * i + 1];
	return 0;
}
