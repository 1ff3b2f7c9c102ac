/*
 * repickle.c - re-emit a pickle with edited str values (see repickle.h).
 *
 * Three walks over the opcode stream, none of them a pickle machine:
 *   1. scan:  check every opcode through STOP and the framing, place the
 *             edits, learn the protocol, whether MEMOIZE is used and which
 *             small memo indices are never touched (padding candidates);
 *   2. plan:  for each edit find its unit (value opcodes + memo writes),
 *             tracking the memo count MEMOIZE would use, and choose its
 *             encoding (same length first);
 *   3. emit:  run twice, first only counting (to learn each FRAME's new
 *             length), then writing to the sink.
 * Global renames and non-str scalar values are "raw" units: their opcode
 * alone, re-encoded into a small buffer during the plan.
 */
#include "repickle.h"

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cursor.h"
#include "hashmap.h"
#include "pickle_ops.h"
#include "utf8.h"

#define NONE64 UINT64_MAX
#define MAXW 3          /* memo writes re-encoded with one unit */
#define MAX_PADS 8
#define MAX_PUT_WIDTH 24
#define RING 32         /* opcodes remembered for looking back from a tuple */
#define USED_BITS 4096  /* memo indices tracked for choosing a padding index */

/* ---- one opcode ------------------------------------------------------------ */

typedef enum argk { A_BAD, A_NONE, A_FIX, A_LINE, A_LINE2, A_LEN1, A_LEN4, A_LEN4S, A_LEN8 } argk;

static argk arg_kind(uint8_t c, unsigned *fix)
{
	*fix = 0;
	switch (c) {
	case '(': case '.': case '0': case '2': case 'N': case 'R': case 'a': case 'b': case 'd':
	case 'l': case 's': case 't': case ')': case '1': case 'Q': case ']': case 'e': case 'o':
	case 'u': case '}': case 0x81: case 0x85: case 0x86: case 0x87: case 0x88: case 0x89:
	case 0x8f: case 0x90: case 0x91: case 0x92: case 0x93: case 0x94: case 0x97: case 0x98:
		return A_NONE;
	case 'K': case 'h': case 'q': case 0x80: case 0x82:
		*fix = 1;
		return A_FIX;
	case 'M': case 0x83:
		*fix = 2;
		return A_FIX;
	case 'J': case 'j': case 'r': case 0x84:
		*fix = 4;
		return A_FIX;
	case 'G': case 0x95:
		*fix = 8;
		return A_FIX;
	case 'F': case 'I': case 'L': case 'P': case 'S': case 'V': case 'g': case 'p':
		return A_LINE;
	case 'c': case 'i':
		return A_LINE2;
	case 'U': case 'C': case 0x8a: case 0x8c:
		return A_LEN1;
	case 'X': case 'B':
		return A_LEN4;
	case 'T': case 0x8b:
		return A_LEN4S;
	case 0x8d: case 0x8e: case 0x96:
		return A_LEN8;
	default:
		return A_BAD;
	}
}

/* Opcodes of protocol 0 (text); everything else says "binary". */
static bool is_text_op(uint8_t c)
{
	return c && strchr("(.02FILNPRSVabcdgilpst", c) != NULL;
}

static bool is_str_op(uint8_t c)
{
	return c == OP_STRING || c == OP_BINSTRING || c == OP_SHORT_BINSTRING || c == OP_UNICODE ||
	       c == OP_BINUNICODE || c == OP_SHORT_BINUNICODE || c == OP_BINUNICODE8;
}

static bool is_py2_str_op(uint8_t c)
{
	return c == OP_STRING || c == OP_BINSTRING || c == OP_SHORT_BINSTRING;
}

static bool is_bytes_op(uint8_t c)
{
	return c == OP_BINBYTES || c == OP_SHORT_BINBYTES || c == OP_BINBYTES8;
}

/* Opcodes whose payload PF_EDIT_PAYLOAD may replace. */
static bool is_payload_op(uint8_t c)
{
	return is_bytes_op(c) || c == OP_BINUNICODE || c == OP_SHORT_BINUNICODE || c == OP_BINUNICODE8;
}

static bool is_tuple_op(uint8_t c)
{
	return c == OP_TUPLE1 || c == OP_TUPLE2 || c == OP_TUPLE3 || c == OP_TUPLE;
}

/* Opcodes PF_EDIT_GLOBAL may rename. */
static bool is_global_op(uint8_t c)
{
	return c == OP_GLOBAL || c == OP_INST || c == OP_STACK_GLOBAL;
}

/* Opcodes that push a scalar PF_EDIT_SCALAR may replace. */
static bool is_scalar_op(uint8_t c)
{
	return is_str_op(c) || (c && strchr("NIJKMLFG", c)) || c == OP_NEWTRUE || c == OP_NEWFALSE ||
	       c == OP_LONG1 || c == OP_LONG4;
}

static bool is_memo_write(uint8_t c)
{
	return c == OP_PUT || c == OP_BINPUT || c == OP_LONG_BINPUT || c == OP_MEMOIZE;
}

static bool is_memo_get(uint8_t c)
{
	return c == OP_GET || c == OP_BINGET || c == OP_LONG_BINGET;
}

/* A value with no side effect other than being pushed. */
static bool is_atom(uint8_t c)
{
	return is_str_op(c) || is_memo_get(c) || (c && strchr("FGIJKLMNBC", c)) || c == 0x88 || c == 0x89 ||
	       c == 0x8a || c == 0x8b || c == 0x8e;
}

typedef struct op {
	uint64_t off, end;
	uint64_t arg;          /* fixed argument (little-endian), or the PUT/GET index */
	uint64_t pay, pay_len; /* payload of length-prefixed and line arguments */
	uint8_t code;
} op;

static int fail_trunc(uint64_t off, pf_error *err)
{
	return pf_fail(err, PF_E_TRUNCATED, off, "pickle truncated inside an opcode");
}

static int line_end(const uint8_t *p, uint64_t len, uint64_t from, uint64_t *nl, pf_error *err)
{
	const uint8_t *q = from < len ? memchr(p + from, '\n', (size_t)(len - from)) : NULL;
	if (!q)
		return pf_fail(err, PF_E_TRUNCATED, from, "line without newline");
	*nl = (uint64_t)(q - p);
	return 0;
}

static int decimal_index(const uint8_t *p, uint64_t n, uint64_t *v)
{
	uint64_t x = 0;
	if (n == 0 || n > 19)
		return -1;
	for (uint64_t i = 0; i < n; i++) {
		if (p[i] < '0' || p[i] > '9')
			return -1;
		x = x * 10 + (uint64_t)(p[i] - '0');
	}
	if (x > UINT32_MAX)
		return -1;
	*v = x;
	return 0;
}

static int decode_len_arg(const uint8_t *p, uint64_t len, argk k, op *o, uint64_t *at, pf_error *err)
{
	unsigned w = k == A_LEN1 ? 1 : k == A_LEN8 ? 8 : 4;
	if (len - *at < w)
		return fail_trunc(o->off, err);
	uint64_t n = pf_le(p + *at, w);
	*at += w;
	if (k == A_LEN4S && n > INT32_MAX)
		return pf_fail(err, PF_E_FORMAT, o->off, "negative length");
	if (len - *at < n)
		return fail_trunc(o->off, err);
	o->pay = *at;
	o->pay_len = n;
	*at += n;
	return 0;
}

/* Decode the opcode at p[off]; off < len is not required (truncation). */
static int op_decode(const uint8_t *p, uint64_t len, uint64_t off, op *o, pf_error *err)
{
	unsigned fix;
	uint64_t at = off + 1, nl = 0;

	memset(o, 0, sizeof(*o));
	o->off = off;
	if (off >= len)
		return pf_fail(err, PF_E_TRUNCATED, off, "pickle ends without STOP");
	o->code = p[off];
	argk k = arg_kind(o->code, &fix);
	switch (k) {
	case A_BAD:
		return pf_fail(err, PF_E_OPCODE, off, "unknown opcode 0x%02x", o->code);
	case A_NONE:
		break;
	case A_FIX:
		if (len - at < fix)
			return fail_trunc(off, err);
		o->arg = pf_le(p + at, fix);
		at += fix;
		break;
	case A_LINE:
	case A_LINE2:
		if (line_end(p, len, at, &nl, err))
			return -1;
		o->pay = at;
		o->pay_len = nl - at;
		at = nl + 1;
		if (k == A_LINE2) {
			if (line_end(p, len, at, &nl, err))
				return -1;
			at = nl + 1;
		}
		break;
	default:
		if (decode_len_arg(p, len, k, o, &at, err))
			return -1;
		break;
	}
	o->end = at;
	if ((o->code == OP_PUT || o->code == OP_GET) && decimal_index(p + o->pay, o->pay_len, &o->arg))
		return pf_fail(err, PF_E_UNSUPPORTED, off, "memo index is not plain decimal");
	return 0;
}

/* ---- state shared by the walks --------------------------------------------- */

typedef struct frame {
	uint64_t hdr;       /* offset of the FRAME opcode */
	uint64_t end;       /* where its content ends in the input (after merges) */
	uint64_t old_len;
	uint64_t new_len;   /* measured by the counting emit */
	uint64_t out_start; /* output offset of its content */
	bool dropped;       /* merged into the frame before it */
} frame;

typedef struct wr {
	uint64_t index;     /* memo slot it fills */
	uint64_t count;     /* filled slots before it (MEMOIZE's index) */
	uint8_t code;       /* as found, then as chosen */
	uint8_t width;      /* PUT: digits as found / chosen */
} wr;

typedef struct plan {
	const pf_str_edit *e;
	uint64_t start, end;   /* input bytes replaced */
	uint8_t mark, tail;    /* MARK first; tuple opcode (0 for a str unit) */
	uint8_t orig_str;      /* string opcode found (0 when none) */
	uint8_t str_code;      /* chosen */
	uint8_t n_w1, n_w;     /* writes [0,n_w1) before the tail, [n_w1,n_w) after */
	wr w[MAXW];
	uint8_t n_pad2, n_pad5, pad_w;
	uint16_t pad_idx[MAX_PADS];   /* indices of the padding writes, in order */
	uint8_t *raw;          /* a raw unit's new bytes (malloc), out_len of them */
	uint64_t out_len;
} plan;

typedef struct rp {
	const uint8_t *p;
	uint64_t len;
	int proto;
	bool memoize;          /* the stream has MEMOIZE: never add memo writes */
	/* memo indices < USED_BITS that the stream never reads or writes: each
	 * padding write takes one of its own (pickletools.dis refuses a memo
	 * key defined twice) */
	uint8_t used[USED_BITS / 8];
	uint32_t free8, free_all; /* how many are left below 256 / USED_BITS */
	frame *frames;
	uint32_t n_frames, cap_frames;
	const pf_str_edit **ord; /* edits sorted by op_off */
	plan *plans;
	uint32_t n;
	pf_error *err;
} rp;

static int cmp_edit(const void *a, const void *b)
{
	const pf_str_edit *x = *(const pf_str_edit *const *)a, *y = *(const pf_str_edit *const *)b;
	return x->op_off < y->op_off ? -1 : x->op_off > y->op_off;
}

static int add_frame(rp *r, const op *o, pf_error *err)
{
	if (r->n_frames == r->cap_frames) {
		uint32_t cap = r->cap_frames ? r->cap_frames * 2 : 16;
		frame *f = cap > r->cap_frames ? realloc(r->frames, (size_t)cap * sizeof(*f)) : NULL;
		if (!f)
			return pf_fail(err, PF_E_NOMEM, o->off, "out of memory");
		r->frames = f;
		r->cap_frames = cap;
	}
	frame *f = &r->frames[r->n_frames++];
	memset(f, 0, sizeof(*f));
	f->hdr = o->off;
	f->old_len = o->arg;
	f->end = o->end + o->arg;
	return 0;
}

/* ---- walk 1: scan ----------------------------------------------------------- */

static bool is_used(const rp *r, uint64_t i)
{
	return i >= USED_BITS || (r->used[i / 8] & (1u << (i % 8)));
}

static void mark_used(rp *r, uint64_t i)
{
	if (i < USED_BITS)
		r->used[i / 8] |= (uint8_t)(1u << (i % 8));
}

/* The smallest free index in [from, USED_BITS), or NONE64. */
static uint64_t first_free(const rp *r, uint64_t from)
{
	for (uint64_t i = from; i < USED_BITS; i++)
		if (!is_used(r, i))
			return i;
	return NONE64;
}

static void count_free(rp *r)
{
	r->free8 = r->free_all = 0;
	for (uint64_t i = 0; i < USED_BITS; i++)
		if (!is_used(r, i)) {
			r->free_all++;
			r->free8 += i < 256;
		}
}

/* Take a free index for a padding write: the smallest (BINPUT, PUT), or
 * for LONG_BINPUT preferably one >= 256 so that BINPUT keeps the small ones.
 * pads_for() has checked that there is one. */
static uint16_t take_free(rp *r, bool high)
{
	uint64_t i = high ? first_free(r, 256) : NONE64;
	if (i == NONE64)
		i = first_free(r, 0);
	mark_used(r, i);
	count_free(r);
	return (uint16_t)i;
}

static int check_edit_at(const pf_str_edit *e, const op *o, pf_error *err)
{
	static const char *const what[] = {"string", "tuple", "bytes or str", "global", "scalar"};
	bool ok;
	switch (e->kind) {
	case PF_EDIT_STR: ok = is_str_op(o->code); break;
	case PF_EDIT_TUPLE1: ok = is_tuple_op(o->code); break;
	case PF_EDIT_PAYLOAD: ok = is_payload_op(o->code); break;
	case PF_EDIT_GLOBAL: ok = is_global_op(o->code); break;
	case PF_EDIT_SCALAR: ok = is_scalar_op(o->code); break;
	default: return pf_fail(err, PF_E_FORMAT, o->off, "unknown edit kind %u", e->kind);
	}
	if (!ok)
		return pf_fail(err, PF_E_FORMAT, o->off, "edit at opcode 0x%02x, which is no %s", o->code, what[e->kind]);
	if (e->new_len && !e->new_text)
		return pf_fail(err, PF_E_FORMAT, o->off, "edit without text");
	return 0;
}

/* Framing as pickle.py's _Unframer wants it; cur is the open frame or -1. */
static int scan_frame(rp *r, const op *o, int64_t *cur, pf_error *err)
{
	if (*cur >= 0 && o->off == r->frames[*cur].end)
		*cur = -1;
	if (*cur >= 0 && o->end > r->frames[*cur].end)
		return pf_fail(err, PF_E_FORMAT, o->off, "frame ends inside an opcode");
	if (o->code != OP_FRAME)
		return 0;
	if (*cur >= 0)
		return pf_fail(err, PF_E_FORMAT, o->off, "FRAME inside a frame");
	if (o->arg > r->len - o->end)
		return pf_fail(err, PF_E_TRUNCATED, o->off, "frame longer than the pickle");
	if (add_frame(r, o, err))
		return -1;
	*cur = (int64_t)r->n_frames - 1;
	return 0;
}

static int scan(rp *r, pf_error *err)
{
	bool binary = false;
	int64_t cur = -1;
	uint32_t k = 0;
	op o;

	memset(r->used, 0, sizeof(r->used));
	r->proto = -1;
	for (uint64_t pos = 0;; pos = o.end) {
		if (op_decode(r->p, r->len, pos, &o, err) || scan_frame(r, &o, &cur, err))
			return -1;
		if (k < r->n && r->ord[k]->op_off < o.off)
			return pf_fail(err, PF_E_FORMAT, r->ord[k]->op_off, "edit offset is not at an opcode");
		if (k < r->n && r->ord[k]->op_off == o.off && check_edit_at(r->ord[k++], &o, err))
			return -1;
		if (k < r->n && r->ord[k]->op_off == o.off)
			return pf_fail(err, PF_E_FORMAT, o.off, "two edits at one opcode");
		binary |= !is_text_op(o.code);
		if (o.code == OP_PROTO && r->proto < 0)
			r->proto = (int)o.arg;
		if (o.code == OP_MEMOIZE)
			r->memoize = true;
		if ((is_memo_write(o.code) || is_memo_get(o.code)) && o.code != OP_MEMOIZE && o.arg < USED_BITS)
			mark_used(r, o.arg);
		if (o.code == OP_STOP)
			break;
	}
	if (o.end != r->len)
		return pf_fail(err, PF_E_FORMAT, o.end, "bytes after STOP");
	if (k < r->n)
		return pf_fail(err, PF_E_FORMAT, r->ord[k]->op_off, "edit offset is not at an opcode");
	if (r->proto < 0)
		r->proto = binary ? 1 : 0;
	/* an index MEMOIZE may fill later is not free either: only pad without MEMOIZE */
	count_free(r);
	return 0;
}

/* ---- choosing an encoding --------------------------------------------------- */

static unsigned digits(uint64_t v)
{
	unsigned d = 1;
	while (v >= 10) {
		v /= 10;
		d++;
	}
	return d;
}

/* Next code point of valid UTF-8 text (pf_utf8_seq checked it). */
static uint32_t utf8_cp(const uint8_t *p, size_t k)
{
	if (k == 1)
		return p[0];
	uint32_t cp = p[0] & (0x7fu >> k);
	for (size_t i = 1; i < k; i++)
		cp = (cp << 6) | (p[i] & 0x3fu);
	return cp;
}

static bool utf8_ok(const char *s, size_t n)
{
	const uint8_t *p = (const uint8_t *)s;
	for (size_t i = 0; i < n;) {
		size_t k = pf_utf8_seq(p + i, n - i);
		if (!k)
			return false;
		i += k;
	}
	return true;
}

static bool ascii_ok(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] >= 0x80)
			return false;
	return true;
}

/* UNICODE (protocol 0): raw-unicode-escape after pickle.py's extra escapes. */
static bool v_escaped(uint32_t cp)
{
	return cp >= 0x100 || cp == '\\' || cp == 0 || cp == '\n' || cp == '\r' || cp == 0x1a;
}

static uint64_t v_len(const char *s, size_t n)
{
	uint64_t t = 0;
	for (size_t i = 0; i < n;) {
		size_t k = pf_utf8_seq((const uint8_t *)s + i, n - i);
		uint32_t cp = utf8_cp((const uint8_t *)s + i, k);
		t += !v_escaped(cp) ? 1 : cp < 0x10000 ? 6 : 10;
		i += k;
	}
	return t;
}

/* STRING (protocol 0, Python 2 str): quoted, escape_decode()-able. */
static unsigned s_char_len(unsigned char c)
{
	return (c == '\\' || c == '\'' || c == '\n') ? 2 : (c < 0x20 || c == 0x7f) ? 4 : 1;
}

static uint64_t s_len(const char *s, size_t n)
{
	uint64_t t = 0;
	for (size_t i = 0; i < n; i++)
		t += s_char_len((unsigned char)s[i]);
	return t;
}

static uint64_t str_len(uint8_t code, const pf_str_edit *e)
{
	switch (code) {
	case OP_SHORT_BINUNICODE: case OP_SHORT_BINSTRING: return 2 + e->new_len;
	case OP_BINUNICODE: case OP_BINSTRING: return 5 + e->new_len;
	case OP_BINUNICODE8: return 9 + e->new_len;
	case OP_UNICODE: return 2 + v_len(e->new_text, e->new_len);
	default: return 4 + s_len(e->new_text, e->new_len);
	}
}

static bool str_allowed(const rp *r, uint8_t c, uint8_t orig, const pf_str_edit *e, bool utf8, bool ascii)
{
	size_t n = e->new_len;
	bool py2 = is_py2_str_op(orig);
	switch (c) {
	case OP_SHORT_BINUNICODE: return r->proto >= 4 && utf8 && n < 256;
	case OP_BINUNICODE: return r->proto >= 1 && utf8 && n <= UINT32_MAX;
	case OP_BINUNICODE8: return r->proto >= 4 && utf8;
	case OP_UNICODE: return (r->proto == 0 || orig == OP_UNICODE) && utf8;
	/* also for a str: the only way to shrink by one byte at protocol 2
	 * (torch's weights_only reader accepts it; pickle.load decodes it) */
	case OP_SHORT_BINSTRING: return ascii && n < 256 && (r->proto >= 1 || orig == c);
	case OP_BINSTRING: return py2 && ascii && n <= INT32_MAX && (r->proto >= 1 || orig == c);
	default: return py2 && ascii && (r->proto == 0 || orig == c);
	}
}

typedef struct wopt {
	uint8_t code, width;
	uint64_t len;
} wopt;

static uint64_t write_len(uint8_t code, unsigned width)
{
	return code == OP_MEMOIZE ? 1 : code == OP_BINPUT ? 2 : code == OP_LONG_BINPUT ? 5 : 2 + (uint64_t)width;
}

/* Encodings of one memo write with the same effect, the original first. */
static unsigned write_options(const rp *r, const wr *w, wopt *o)
{
	unsigned n = 0, d = digits(w->index);
	o[n++] = (wopt){w->code, w->width, write_len(w->code, w->width)};
	if (w->code != OP_MEMOIZE && r->memoize && r->proto >= 4 && w->index == w->count)
		o[n++] = (wopt){OP_MEMOIZE, 0, 1};
	if (w->code != OP_BINPUT && r->proto >= 1 && w->index < 256)
		o[n++] = (wopt){OP_BINPUT, 0, 2};
	if (w->code != OP_LONG_BINPUT && r->proto >= 1)
		o[n++] = (wopt){OP_LONG_BINPUT, 0, 5};
	if (r->proto == 0 || w->code == OP_PUT)
		for (unsigned wd = d; wd <= d + 6; wd++)
			if (w->code != OP_PUT || wd != w->width)
				o[n++] = (wopt){OP_PUT, (uint8_t)wd, 2 + (uint64_t)wd};
	return n;
}

/* Fewest padding memo writes filling `slack` bytes, or -1. */
static int pads_for(const rp *r, uint64_t slack, plan *pl)
{
	pl->n_pad2 = pl->n_pad5 = 0;
	pl->pad_w = 0;
	if (slack == 0)
		return 0;
	if (r->memoize)
		return -1;
	if (r->proto == 0) {
		uint64_t kk = first_free(r, 0);
		if (kk == NONE64 || slack < 2 + digits(kk) || slack > 2 + MAX_PUT_WIDTH)
			return -1;
		pl->pad_w = (uint8_t)(slack - 2);
		return 1;
	}
	for (uint64_t b = 0; b <= MAX_PADS && 5 * b <= slack; b++) {
		uint64_t rest = slack - 5 * b;
		if (rest % 2 || rest / 2 > r->free8 || b + rest / 2 > r->free_all || b + rest / 2 > MAX_PADS)
			continue;
		pl->n_pad5 = (uint8_t)b;
		pl->n_pad2 = (uint8_t)(rest / 2);
		return (int)(b + rest / 2);
	}
	return -1;
}

typedef struct solver {
	const rp *r;
	plan cur, best;
	uint64_t target, fixed;
	int best_pads;      /* -1: no same-length choice yet */
	uint64_t best_total;
	bool have, done;
} solver;

static void evaluate(solver *sv, uint64_t total)
{
	int pads = total <= sv->target ? pads_for(sv->r, sv->target - total, &sv->cur) : -1;
	bool better;
	/* a Python 2 string stands in for a str only to keep the length */
	if (pads < 0 && sv->cur.str_code == OP_SHORT_BINSTRING && !is_py2_str_op(sv->cur.orig_str))
		return;
	if (pads >= 0)
		better = sv->best_pads < 0 || pads < sv->best_pads;
	else
		better = sv->best_pads < 0 && (!sv->have || total < sv->best_total);
	if (!better)
		return;
	sv->best = sv->cur;
	sv->best_pads = pads;
	sv->best_total = total;
	sv->have = true;
	if (pads == 0)
		sv->done = true;
}

static void try_writes(solver *sv, unsigned i, uint64_t acc, const wr *orig)
{
	wopt opts[16];
	if (sv->done)
		return;
	if (i == sv->cur.n_w) {
		evaluate(sv, acc);
		return;
	}
	unsigned n = write_options(sv->r, &orig[i], opts);
	for (unsigned j = 0; j < n && !sv->done; j++) {
		sv->cur.w[i].code = opts[j].code;
		sv->cur.w[i].width = opts[j].width;
		try_writes(sv, i + 1, acc + opts[j].len, orig);
	}
}

static int solve(rp *r, plan *pl, pf_error *err)
{
	static const uint8_t order[] = {OP_SHORT_BINUNICODE, OP_BINUNICODE, OP_BINUNICODE8, OP_SHORT_BINSTRING,
					OP_BINSTRING, OP_UNICODE, OP_STRING};
	const pf_str_edit *e = pl->e;
	bool utf8 = utf8_ok(e->new_text, e->new_len), ascii = ascii_ok(e->new_text, e->new_len);
	uint8_t cand[8];
	unsigned nc = 0;
	wr orig[MAXW];
	solver sv = {.r = r, .cur = *pl, .target = pl->end - pl->start, .best_pads = -1};

	if (is_str_op(pl->orig_str) && str_allowed(r, pl->orig_str, pl->orig_str, e, utf8, ascii))
		cand[nc++] = pl->orig_str;
	for (unsigned i = 0; i < sizeof(order); i++)
		if (order[i] != pl->orig_str && str_allowed(r, order[i], pl->orig_str, e, utf8, ascii))
			cand[nc++] = order[i];
	if (!nc)
		return pf_fail(err, PF_E_FORMAT, pl->start, "no string opcode of protocol %d can hold the new text",
			       r->proto);
	memcpy(orig, pl->w, sizeof(orig));
	sv.fixed = (uint64_t)(pl->mark ? 1 : 0) + (pl->tail ? 1 : 0);
	for (unsigned i = 0; i < nc && !sv.done; i++) {
		sv.cur.str_code = cand[i];
		try_writes(&sv, 0, sv.fixed + str_len(cand[i], e), orig);
	}
	if (sv.best_pads < 0)
		pads_for(r, 0, &sv.best);
	*pl = sv.best;
	unsigned np = 0;
	for (unsigned i = 0; i < pl->n_pad2; i++)
		pl->pad_idx[np++] = take_free(r, false);
	for (unsigned i = 0; i < pl->n_pad5; i++)
		pl->pad_idx[np++] = take_free(r, true);
	if (pl->pad_w)
		pl->pad_idx[np] = take_free(r, false);
	pl->out_len = sv.best_total + 2 * (uint64_t)pl->n_pad2 + 5 * (uint64_t)pl->n_pad5 +
		      (pl->pad_w ? 2 + (uint64_t)pl->pad_w : 0);
	return 0;
}

/* ---- walk 2: plan ------------------------------------------------------------ */

typedef struct rent {
	op o;
	uint64_t count;     /* filled memo slots before the opcode */
	int64_t frame;      /* open frame at the opcode, or -1 */
} rent;

typedef struct memo {
	pf_hashmap filled;
	uint64_t count;
} memo;

static int memo_index(const op *o, const memo *mm, uint64_t *idx)
{
	if (!is_memo_write(o->code))
		return 0;
	*idx = o->code == OP_MEMOIZE ? mm->count : o->arg;
	return 1;
}

static int memo_apply(memo *mm, const op *o, pf_error *err)
{
	uint64_t idx;
	uint32_t v;
	if (!memo_index(o, mm, &idx) || pf_hashmap_get(&mm->filled, idx, &v))
		return 0;
	if (!pf_hashmap_put(&mm->filled, idx, 1))
		return pf_fail(err, PF_E_NOMEM, o->off, "out of memory");
	mm->count++;
	return 0;
}

/* Record a memo write of the unit; false for a PUT too wide to re-emit. */
static bool take_write(plan *pl, const op *o, uint64_t idx, uint64_t count)
{
	if (o->code == OP_PUT && o->pay_len > MAX_PUT_WIDTH)
		return false;
	wr *w = &pl->w[pl->n_w++];
	w->index = idx;
	w->count = count;
	w->code = o->code;
	w->width = (uint8_t)(o->code == OP_PUT ? o->pay_len : 0);
	return true;
}

/*
 * Absorb the memo writes right after `at` into pl (at most MAXW, never across
 * a frame end).  A simulated copy of the memo gives each write its count.
 */
static int absorb_writes(const rp *r, plan *pl, uint64_t at, int64_t fr, const memo *mm, pf_error *err)
{
	uint64_t count = mm->count, seen[MAXW];
	unsigned ns = 0;
	op o;

	pl->end = at;
	while (pl->n_w < MAXW && at < r->len && (fr < 0 || at < r->frames[fr].end)) {
		if (op_decode(r->p, r->len, at, &o, err))
			return -1;
		if (!is_memo_write(o.code))
			break;
		uint64_t idx = o.code == OP_MEMOIZE ? count : o.arg;
		uint32_t v;
		bool filled = pf_hashmap_get(&mm->filled, idx, &v);
		for (unsigned i = 0; i < ns; i++)
			filled |= seen[i] == idx;
		if (!take_write(pl, &o, idx, count))
			break;
		if (!filled) {
			seen[ns++] = idx;
			count++;
		}
		at = pl->end = o.end;
	}
	return 0;
}

/* Items of the tuple built at ring[t]: where they start and their memo writes. */
static int tuple_unit(const rp *r, const rent *ring, uint64_t nring, uint64_t t, plan *pl, pf_error *err)
{
	const op *to = &ring[t % RING].o;
	int arity = to->code == OP_TUPLE1 ? 1 : to->code == OP_TUPLE2 ? 2 : to->code == OP_TUPLE3 ? 3 : -1;
	int atoms = 0;
	uint64_t j = t, nwr = 0, wr_at[RING];
	int wr_newer[RING];

	for (;;) {
		if (j == 0 || t - j + 1 >= RING || t - j + 1 >= nring)
			return pf_fail(err, PF_E_UNSUPPORTED, to->off, "tuple items not found before the tuple");
		j--;
		const op *o = &ring[j % RING].o;
		if (is_memo_write(o->code)) {
			wr_at[nwr] = j;
			wr_newer[nwr++] = atoms;
		} else if (o->code == OP_FRAME) {
			continue;
		} else if (is_atom(o->code)) {
			atoms++;
			if (arity > 0 && atoms == arity)
				break;
		} else if (o->code == OP_MARK && arity < 0) {
			pl->mark = 1;
			break;
		} else {
			return pf_fail(err, PF_E_UNSUPPORTED, o->off, "tuple item is not a plain value");
		}
	}
	pl->start = ring[j % RING].o.off;
	pl->tail = pl->mark ? OP_TUPLE : OP_TUPLE1;
	if (nwr > MAXW)
		return pf_fail(err, PF_E_UNSUPPORTED, to->off, "too many memo writes in a tuple");
	for (uint64_t i = nwr; i-- > 0;) {
		const rent *re = &ring[wr_at[i] % RING];
		if (atoms == 0 || wr_newer[i] != atoms - 1)
			return pf_fail(err, PF_E_UNSUPPORTED, re->o.off, "tuple item other than the first is memoized");
		uint64_t idx = re->o.code == OP_MEMOIZE ? re->count : re->o.arg;
		if (!take_write(pl, &re->o, idx, re->count))
			return pf_fail(err, PF_E_UNSUPPORTED, re->o.off, "memo index too wide");
	}
	pl->n_w1 = pl->n_w;
	for (uint64_t q = j; q < t; q++) {
		uint8_t c = ring[q % RING].o.code;
		if (is_atom(c)) {
			pl->orig_str = is_str_op(c) ? c : 0;
			break;
		}
	}
	return 0;
}

/* Width of the length field of a payload opcode. */
static unsigned payload_width(uint8_t c)
{
	return c == OP_SHORT_BINBYTES || c == OP_SHORT_BINUNICODE ? 1 : c == OP_BINBYTES8 || c == OP_BINUNICODE8 ? 8 : 4;
}

static bool payload_allowed(const rp *r, uint8_t c, uint64_t n)
{
	unsigned w = payload_width(c);
	if (w == 8 || c == OP_SHORT_BINUNICODE)
		return r->proto >= 4 && (w == 8 || n < 256);
	if (w == 1)
		return r->proto >= 3 && n < 256;
	return n <= UINT32_MAX && (r->proto >= 3 || !is_bytes_op(c));
}

/* A PF_EDIT_PAYLOAD unit: the opcode alone (its memo writes stay as they
 * are), kept when it can hold the new length, else the narrowest of its
 * family that can. */
static int solve_payload(const rp *r, plan *pl, const op *o, pf_error *err)
{
	static const uint8_t bytes_order[] = {OP_SHORT_BINBYTES, OP_BINBYTES, OP_BINBYTES8};
	static const uint8_t str_order[] = {OP_SHORT_BINUNICODE, OP_BINUNICODE, OP_BINUNICODE8};
	const uint8_t *order = is_bytes_op(o->code) ? bytes_order : str_order;
	uint64_t n = pl->e->new_len;

	pl->start = o->off;
	pl->end = o->end;
	pl->orig_str = o->code;
	pl->str_code = 0;
	if (payload_allowed(r, o->code, n))
		pl->str_code = o->code;
	for (unsigned i = 0; i < 3 && !pl->str_code; i++)
		if (payload_allowed(r, order[i], n))
			pl->str_code = order[i];
	if (!pl->str_code)
		return pf_fail(err, PF_E_FORMAT, o->off, "no opcode of protocol %d can hold %llu bytes", r->proto,
			       (unsigned long long)n);
	pl->out_len = 1 + payload_width(pl->str_code) + n;
	return 0;
}

/* ---- raw units: global names and scalar values ------------------------------------ */

/* "module\nname": one '\n', both parts non-empty UTF-8 without spaces or controls. */
static int check_global_text(const pf_str_edit *e, uint64_t off, pf_error *err)
{
	const uint8_t *p = (const uint8_t *)e->new_text;
	size_t n = e->new_len, nl = SIZE_MAX;
	for (size_t i = 0; i < n; i++) {
		if (p[i] == '\n' && nl == SIZE_MAX)
			nl = i;
		else if (p[i] <= ' ' || p[i] == 0x7f)
			return pf_fail(err, PF_E_FORMAT, off, "global name with a space, newline or control character");
	}
	if (nl == SIZE_MAX || nl == 0 || nl + 1 == n)
		return pf_fail(err, PF_E_FORMAT, off, "global name is not \"module\\nname\"");
	if (!utf8_ok(e->new_text, n))
		return pf_fail(err, PF_E_FORMAT, off, "global name is not UTF-8");
	return 0;
}

/* GLOBAL / INST with new operands; STACK_GLOBAL becomes POP POP GLOBAL. */
static int solve_global(plan *pl, const op *o, pf_error *err)
{
	const pf_str_edit *e = pl->e;
	size_t pre = o->code == OP_STACK_GLOBAL ? 2 : 0;
	if (check_global_text(e, o->off, err))
		return -1;
	pl->start = o->off;
	pl->end = o->end;
	pl->out_len = pre + 2 + e->new_len;
	pl->raw = malloc((size_t)pl->out_len);
	if (!pl->raw)
		return pf_fail(err, PF_E_NOMEM, o->off, "out of memory");
	memset(pl->raw, OP_POP, pre);
	pl->raw[pre] = o->code == OP_INST ? OP_INST : OP_GLOBAL;
	memcpy(pl->raw + pre + 1, e->new_text, e->new_len);
	pl->raw[pl->out_len - 1] = '\n';
	return 0;
}

/* Decimal text "-?(0|[1-9][0-9]*)", at most PF_INT_DIGITS_MAX digits. */
static bool decimal_ok(const char *s, size_t n)
{
	size_t neg = n && s[0] == '-';
	if (n == neg || n - neg > PF_INT_DIGITS_MAX || (s[neg] == '0' && n - neg > 1) || (neg && s[1] == '0'))
		return false;
	for (size_t i = neg; i < n; i++)
		if (s[i] < '0' || s[i] > '9')
			return false;
	return true;
}

/* The value of checked decimal text when it fits in int64. */
static bool decimal_i64(const char *s, size_t n, int64_t *v)
{
	bool neg = s[0] == '-';
	uint64_t x = 0, lim = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
	for (size_t i = neg; i < n; i++) {
		unsigned d = (unsigned)(s[i] - '0');
		if (x > (lim - d) / 10)
			return false;
		x = x * 10 + d;
	}
	*v = neg ? (int64_t)(0 - x) : (int64_t)x;
	return true;
}

/*
 * pickle's encode_long(): the shortest little-endian two's complement
 * bytes of checked decimal text (none for 0) into out (malloc), *nb bytes.
 * The magnitude is built in 32-bit limbs, nine digits at a time.
 */
static uint8_t *decimal_long(const char *s, size_t n, size_t *nb)
{
	bool neg = s[0] == '-';
	size_t nl = 0, cap = (n + 8) / 9 + 1, m = 0;
	uint32_t *limb = malloc(cap * sizeof(*limb));
	uint8_t *out = malloc(cap * 4 + 2);
	if (!limb || !out) {
		free(limb);
		free(out);
		return NULL;
	}
	for (size_t i = neg; i < n;) {
		size_t take = (n - i) % 9 ? (n - i) % 9 : 9;
		uint64_t mul = 1, carry = 0;
		for (size_t k = 0; k < take; k++, i++) {
			mul *= 10;
			carry = carry * 10 + (uint64_t)(s[i] - '0');
		}
		for (size_t k = 0; k < nl; k++) {
			uint64_t t = (uint64_t)limb[k] * mul + carry;
			limb[k] = (uint32_t)t;
			carry = t >> 32;
		}
		if (carry)
			limb[nl++] = (uint32_t)carry;
	}
	for (size_t k = 0; k < nl; k++)
		for (unsigned b = 0; b < 4; b++)
			out[m++] = (uint8_t)(limb[k] >> (8 * b));
	free(limb);
	while (m && !out[m - 1])
		m--;
	if (neg && m) {
		unsigned carry = 1;
		for (size_t k = 0; k < m; k++) {
			unsigned b = (uint8_t)~out[k] + carry;
			out[k] = (uint8_t)b;
			carry = b >> 8;
		}
		if (!(out[m - 1] & 0x80))
			out[m++] = 0xff;
	} else if (m && (out[m - 1] & 0x80)) {
		out[m++] = 0;
	}
	*nb = m;
	return out;
}

/* Float text that reads back exactly ('.' whatever the locale). */
static size_t float_text(double f, char *buf, size_t cap)
{
	if (isnan(f))
		return (size_t)snprintf(buf, cap, "nan");
	if (isinf(f))
		return (size_t)snprintf(buf, cap, f > 0 ? "inf" : "-inf");
	for (int prec = 15; prec <= 17; prec++) {
		snprintf(buf, cap, "%.*g", prec, f);
		if (strtod(buf, NULL) == f)
			break;
	}
	for (char *c = buf; *c; c++)
		if (*c == ',')
			*c = '.';
	return strlen(buf);
}

typedef struct cand {
	uint8_t code;
	uint64_t len;
} cand;

/* The candidate of the original length, else the (first) shortest. */
static const cand *pick(const cand *c, unsigned n, uint64_t orig_len)
{
	const cand *best = NULL;
	for (unsigned i = 0; i < n; i++)
		if (c[i].len == orig_len)
			return &c[i];
	for (unsigned i = 0; i < n; i++)
		if (!best || c[i].len < best->len)
			best = &c[i];
	return best;
}

static int raw_alloc(plan *pl, uint64_t len, uint64_t off, pf_error *err)
{
	pl->out_len = len;
	pl->raw = malloc((size_t)len);
	return pl->raw ? 0 : pf_fail(err, PF_E_NOMEM, off, "out of memory");
}

/* An int in the stream's protocol: BININT* where they fit, LONG1/LONG4, INT/LONG text. */
static int solve_int(const rp *r, plan *pl, const op *o, pf_error *err)
{
	const char *s = pl->e->new_text;
	size_t n = pl->e->new_len, nb = 0;
	int64_t v = 0;
	bool small, i32;
	cand c[8];
	unsigned nc = 0;

	if (!s || !decimal_ok(s, n))
		return pf_fail(err, PF_E_FORMAT, o->off, "int value is not decimal text of at most %d digits",
			       PF_INT_DIGITS_MAX);
	small = decimal_i64(s, n, &v);
	i32 = small && v >= INT32_MIN && v <= INT32_MAX;
	uint8_t *lb = decimal_long(s, n, &nb);
	if (!lb)
		return pf_fail(err, PF_E_NOMEM, o->off, "out of memory");
	if (r->proto >= 1 && small && v >= 0 && v <= 0xff)
		c[nc++] = (cand){OP_BININT1, 2};
	if (r->proto >= 1 && small && v >= 0 && v <= 0xffff)
		c[nc++] = (cand){OP_BININT2, 3};
	if (r->proto >= 1 && i32)
		c[nc++] = (cand){OP_BININT, 5};
	if (r->proto >= 2) {
		if (nb < 256)
			c[nc++] = (cand){OP_LONG1, 2 + (uint64_t)nb};
		c[nc++] = (cand){OP_LONG4, 5 + (uint64_t)nb};
	} else {
		/* as pickle.py: INT within int32, LONG past it */
		if (i32)
			c[nc++] = (cand){OP_INT, 2 + (uint64_t)n};
		c[nc++] = (cand){OP_LONG, 3 + (uint64_t)n};
	}
	const cand *k = pick(c, nc, o->end - o->off);
	if (raw_alloc(pl, k->len, o->off, err)) {
		free(lb);
		return -1;
	}
	uint8_t *p = pl->raw;
	p[0] = k->code;
	switch (k->code) {
	case OP_BININT1: case OP_BININT2: case OP_BININT:
		for (unsigned i = 0; i + 1 < k->len; i++)
			p[1 + i] = (uint8_t)((uint64_t)v >> (8 * i));
		break;
	case OP_LONG1: case OP_LONG4: {
		unsigned w = k->code == OP_LONG1 ? 1 : 4;
		for (unsigned i = 0; i < w; i++)
			p[1 + i] = (uint8_t)((uint64_t)nb >> (8 * i));
		memcpy(p + 1 + w, lb, nb);
		break;
	}
	default:
		memcpy(p + 1, s, n);
		if (k->code == OP_LONG)
			p[1 + n] = 'L';
		p[k->len - 1] = '\n';
		break;
	}
	free(lb);
	return 0;
}

static int solve_scalar(const rp *r, plan *pl, const op *o, pf_error *err)
{
	const pf_str_edit *e = pl->e;
	char text[48];
	size_t n;

	pl->start = o->off;
	pl->end = o->end;
	switch (e->vtype) {
	case PF_V_NONE:
		if (raw_alloc(pl, 1, o->off, err))
			return -1;
		pl->raw[0] = OP_NONE;
		return 0;
	case PF_V_BOOL:
		if (r->proto >= 2) {
			if (raw_alloc(pl, 1, o->off, err))
				return -1;
			pl->raw[0] = e->b ? OP_NEWTRUE : OP_NEWFALSE;
			return 0;
		}
		if (raw_alloc(pl, 4, o->off, err))
			return -1;
		memcpy(pl->raw, e->b ? "I01\n" : "I00\n", 4);
		return 0;
	case PF_V_INT:
		return solve_int(r, pl, o, err);
	case PF_V_FLOAT:
		if (r->proto >= 1) {
			uint64_t bits;
			memcpy(&bits, &e->f, sizeof(bits));
			if (raw_alloc(pl, 9, o->off, err))
				return -1;
			pl->raw[0] = OP_BINFLOAT;
			for (unsigned i = 0; i < 8; i++)
				pl->raw[1 + i] = (uint8_t)(bits >> (8 * (7 - i)));
			return 0;
		}
		n = float_text(e->f, text, sizeof(text));
		if (raw_alloc(pl, n + 2, o->off, err))
			return -1;
		pl->raw[0] = OP_FLOAT;
		memcpy(pl->raw + 1, text, n);
		pl->raw[n + 1] = '\n';
		return 0;
	default:
		return pf_fail(err, PF_E_FORMAT, o->off, "unknown scalar value type %u", e->vtype);
	}
}

/* Frames the unit [start, end) crosses are merged into the one it starts in. */
static void merge_frames(rp *r, int64_t fs, uint64_t start, uint64_t end)
{
	for (uint32_t i = 0; i < r->n_frames; i++) {
		frame *f = &r->frames[i];
		if (f->hdr > start && f->hdr < end) {
			f->dropped = true;
			if (fs >= 0 && f->end > r->frames[fs].end)
				r->frames[fs].end = f->end;
		}
	}
	if (fs >= 0 && r->frames[fs].end < end)
		r->frames[fs].end = end;
}

typedef struct pstate {
	rent ring[RING];
	uint64_t nring;
	memo mm;
	int64_t cur;        /* open frame */
	uint32_t nf;        /* frames seen */
	uint64_t last_end;  /* end of the last unit */
} pstate;

static int plan_edit(rp *r, pstate *ps, uint32_t k, pf_error *err)
{
	plan *pl = &r->plans[k];
	const rent *me = &ps->ring[(ps->nring - 1) % RING];
	int64_t fs = me->frame;

	memset(pl, 0, sizeof(*pl));
	pl->e = r->ord[k];
	uint8_t kind = pl->e->kind;
	bool str_value = kind == PF_EDIT_SCALAR && pl->e->vtype == PF_V_STR;
	if (kind == PF_EDIT_PAYLOAD || kind == PF_EDIT_GLOBAL || (kind == PF_EDIT_SCALAR && !str_value)) {
		int rc;
		if (me->o.off < ps->last_end)
			return pf_fail(err, PF_E_FORMAT, me->o.off, "edits overlap");
		rc = kind == PF_EDIT_PAYLOAD ? solve_payload(r, pl, &me->o, err)
		     : kind == PF_EDIT_GLOBAL ? solve_global(pl, &me->o, err) : solve_scalar(r, pl, &me->o, err);
		if (rc)
			return -1;
		ps->last_end = pl->end;
		return 0;
	}
	if (str_value && !is_str_op(me->o.code)) {
		/* a str where another scalar was: no memo writes go with it */
		pl->start = me->o.off;
		pl->end = me->o.end;
		if (pl->start < ps->last_end)
			return pf_fail(err, PF_E_FORMAT, pl->start, "edits overlap");
		if (solve(r, pl, err))
			return -1;
		ps->last_end = pl->end;
		return 0;
	}
	if (kind == PF_EDIT_STR || str_value) {
		pl->start = me->o.off;
		pl->orig_str = me->o.code;
	} else {
		if (tuple_unit(r, ps->ring, ps->nring, ps->nring - 1, pl, err))
			return -1;
		for (uint64_t j = ps->nring; j-- > 0 && ps->nring - j <= RING;)
			if (ps->ring[j % RING].o.off == pl->start) {
				fs = ps->ring[j % RING].frame;
				break;
			}
		merge_frames(r, fs, pl->start, me->o.end);
		ps->cur = fs;
	}
	if (pl->start < ps->last_end)
		return pf_fail(err, PF_E_FORMAT, pl->start, "edits overlap");
	/* memo writes after the string / tuple opcode; the walk has applied the opcode itself */
	if (absorb_writes(r, pl, me->o.end, ps->cur, &ps->mm, err) || solve(r, pl, err))
		return -1;
	ps->last_end = pl->end;
	return 0;
}

static int plan_all(rp *r, pf_error *err)
{
	pstate *ps = calloc(1, sizeof(*ps));
	uint32_t k = 0;
	int rc = -1;
	op o;

	if (!ps)
		return pf_fail(err, PF_E_NOMEM, 0, "out of memory");
	pf_hashmap_init(&ps->mm.filled);
	ps->cur = -1;
	for (uint64_t pos = 0; k < r->n; pos = o.end) {
		if (op_decode(r->p, r->len, pos, &o, err))
			goto out;
		if (ps->cur >= 0 && o.off >= r->frames[ps->cur].end)
			ps->cur = -1;
		if (o.code == OP_FRAME && !r->frames[ps->nf++].dropped)
			ps->cur = (int64_t)ps->nf - 1;
		rent *re = &ps->ring[ps->nring++ % RING];
		re->o = o;
		re->count = ps->mm.count;
		re->frame = ps->cur;
		if (r->memoize && memo_apply(&ps->mm, &o, err))
			goto out;
		if (r->ord[k]->op_off == o.off && plan_edit(r, ps, k++, err))
			goto out;
	}
	rc = 0;
out:
	pf_hashmap_free(&ps->mm.filled);
	free(ps);
	return rc;
}

/* ---- walk 3: emit --------------------------------------------------------------- */

typedef struct emitter {
	pf_sink_fn sink;    /* NULL: count only */
	void *ctx;
	uint64_t n;
	uint64_t at;        /* input offset, for errors */
	pf_error *err;
} emitter;

static int put(emitter *w, const void *p, uint64_t n)
{
	if (w->sink && n && w->sink(w->ctx, p, (size_t)n) != 0)
		return pf_fail(w->err, PF_E_NOMEM, w->at, "output sink failed");
	w->n += n;
	return 0;
}

static int put_le(emitter *w, uint8_t code, uint64_t v, unsigned bytes)
{
	uint8_t b[9];
	b[0] = code;
	for (unsigned i = 0; i < bytes; i++)
		b[1 + i] = (uint8_t)(v >> (8 * i));
	return put(w, b, 1 + bytes);
}

static int put_decimal(emitter *w, uint8_t code, uint64_t v, unsigned width)
{
	char b[2 + MAX_PUT_WIDTH + 8];
	unsigned d = digits(v);
	b[0] = (char)code;
	memset(b + 1, '0', width);
	for (unsigned i = 0; i < d; i++, v /= 10)
		b[width - i] = (char)('0' + v % 10);
	b[1 + width] = '\n';
	return put(w, b, 2 + (uint64_t)width);
}

static int put_v_text(emitter *w, const char *s, size_t n)
{
	static const char hex[] = "0123456789abcdef";
	for (size_t i = 0; i < n;) {
		size_t k = pf_utf8_seq((const uint8_t *)s + i, n - i);
		uint32_t cp = utf8_cp((const uint8_t *)s + i, k);
		char b[10];
		unsigned len = 0;
		if (!v_escaped(cp)) {
			b[len++] = (char)cp;
		} else {
			unsigned nd = cp < 0x10000 ? 4 : 8;
			b[len++] = '\\';
			b[len++] = nd == 4 ? 'u' : 'U';
			for (unsigned j = nd; j-- > 0;)
				b[len++] = hex[(cp >> (4 * j)) & 15];
		}
		if (put(w, b, len))
			return -1;
		i += k;
	}
	return 0;
}

static int put_s_text(emitter *w, const char *s, size_t n)
{
	static const char hex[] = "0123456789abcdef";
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		char b[4] = {'\\', (char)c, 0, 0};
		unsigned len = s_char_len(c);
		if (len == 1)
			b[0] = (char)c;
		else if (c == '\n')
			b[1] = 'n';
		else if (len == 4) {
			b[1] = 'x';
			b[2] = hex[c >> 4];
			b[3] = hex[c & 15];
		}
		if (put(w, b, len))
			return -1;
	}
	return 0;
}

static int put_str(emitter *w, uint8_t code, const pf_str_edit *e)
{
	switch (code) {
	case OP_SHORT_BINUNICODE: case OP_SHORT_BINSTRING:
		if (put_le(w, code, e->new_len, 1))
			return -1;
		break;
	case OP_SHORT_BINBYTES:
		if (put_le(w, code, e->new_len, 1))
			return -1;
		break;
	case OP_BINUNICODE: case OP_BINSTRING: case OP_BINBYTES:
		if (put_le(w, code, e->new_len, 4))
			return -1;
		break;
	case OP_BINUNICODE8: case OP_BINBYTES8:
		if (put_le(w, code, e->new_len, 8))
			return -1;
		break;
	case OP_UNICODE:
		return put_le(w, code, 0, 0) || put_v_text(w, e->new_text, e->new_len) || put(w, "\n", 1);
	default:
		return put(w, "S'", 2) || put_s_text(w, e->new_text, e->new_len) || put(w, "'\n", 2);
	}
	return put(w, e->new_text, e->new_len);
}

static int put_write(emitter *w, uint8_t code, uint64_t index, unsigned width)
{
	switch (code) {
	case OP_MEMOIZE: return put_le(w, code, 0, 0);
	case OP_BINPUT: return put_le(w, code, index, 1);
	case OP_LONG_BINPUT: return put_le(w, code, index, 4);
	default: return put_decimal(w, OP_PUT, index, width);
	}
}

static int put_unit(const rp *r, emitter *w, const plan *pl)
{
	uint8_t tail = pl->tail;
	if (pl->raw)
		return put(w, pl->raw, pl->out_len);
	if ((pl->mark && put(w, "(", 1)) || put_str(w, pl->str_code, pl->e))
		return -1;
	unsigned np = 0;
	for (unsigned i = 0; i < pl->n_pad2; i++)
		if (put_write(w, OP_BINPUT, pl->pad_idx[np++], 0))
			return -1;
	for (unsigned i = 0; i < pl->n_pad5; i++)
		if (put_write(w, OP_LONG_BINPUT, pl->pad_idx[np++], 0))
			return -1;
	if (pl->pad_w && put_write(w, OP_PUT, pl->pad_idx[np], pl->pad_w))
		return -1;
	for (unsigned i = 0; i < pl->n_w; i++) {
		if (i == pl->n_w1 && tail && put(w, &tail, 1))
			return -1;
		if (put_write(w, pl->w[i].code, pl->w[i].index, pl->w[i].width))
			return -1;
	}
	if (pl->n_w1 == pl->n_w && tail && put(w, &tail, 1))
		return -1;
	return 0;
}

/* Flush the unchanged input bytes [*run, to). */
static int flush(const rp *r, emitter *w, uint64_t *run, uint64_t to)
{
	int rc = put(w, r->p + *run, to - *run);
	*run = to;
	return rc;
}

static int emit(rp *r, emitter *w, bool real, pf_error *err)
{
	uint64_t pos = 0, run = 0;
	uint32_t k = 0, nf = 0;
	int64_t cur = -1;
	op o;

	while (pos < r->len) {
		w->at = pos;
		if (cur >= 0 && pos == r->frames[cur].end) {
			r->frames[cur].new_len = w->n + (pos - run) - r->frames[cur].out_start;
			cur = -1;
		}
		if (k < r->n && pos == r->plans[k].start) {
			if (flush(r, w, &run, pos) || put_unit(r, w, &r->plans[k]))
				return -1;
			pos = run = r->plans[k++].end;
			continue;
		}
		if (op_decode(r->p, r->len, pos, &o, err))
			return -1;
		if (o.code == OP_FRAME) {
			while (nf < r->n_frames && r->frames[nf].dropped)
				nf++;
			if (nf >= r->n_frames)
				return pf_fail(err, PF_E_FORMAT, pos, "internal: unknown frame");
			frame *f = &r->frames[nf];
			if (real && f->new_len != f->old_len &&
			    (flush(r, w, &run, pos) || put_le(w, OP_FRAME, f->new_len, 8)))
				return -1;
			if (real && f->new_len != f->old_len)
				run = o.end;
			f->out_start = w->n + (o.end - run);
			cur = nf++;
		}
		pos = o.end;
	}
	if (cur >= 0 && pos == r->frames[cur].end)
		r->frames[cur].new_len = w->n + (pos - run) - r->frames[cur].out_start;
	return flush(r, w, &run, pos);
}

int pf_repickle(const uint8_t *pickle, uint64_t len, const pf_str_edit *edits, uint32_t n,
		pf_sink_fn sink, void *ctx, uint64_t *out_len, pf_error *err)
{
	rp r = {.p = pickle, .len = len, .n = n, .err = err};
	emitter counter = {.err = err}, writer = {.sink = sink, .ctx = ctx, .err = err};
	int rc = -1;

	if (!pickle && len)
		return pf_fail(err, PF_E_FORMAT, 0, "no pickle");
	if (n && !edits)
		return pf_fail(err, PF_E_FORMAT, 0, "no edits");
	r.ord = n ? malloc((size_t)n * sizeof(*r.ord)) : NULL;
	r.plans = n ? calloc(n, sizeof(*r.plans)) : NULL;
	if (n && (!r.ord || !r.plans)) {
		pf_fail(err, PF_E_NOMEM, 0, "out of memory");
		goto out;
	}
	for (uint32_t i = 0; i < n; i++)
		r.ord[i] = &edits[i];
	if (n)
		qsort(r.ord, n, sizeof(*r.ord), cmp_edit);
	if (scan(&r, err) || plan_all(&r, err) || emit(&r, &counter, false, err))
		goto out;
	if (sink && emit(&r, &writer, true, err))
		goto out;
	if (sink && writer.n != counter.n) {
		pf_fail(err, PF_E_FORMAT, 0, "internal: output length changed between walks");
		goto out;
	}
	if (out_len)
		*out_len = counter.n;
	rc = 0;
out:
	for (uint32_t i = 0; r.plans && i < n; i++)
		free(r.plans[i].raw);
	free(r.ord);
	free(r.plans);
	free(r.frames);
	return rc;
}

/* ---- device strings ------------------------------------------------------------------ */

int pf_device_parse(const char *s, size_t len, pf_device *dev)
{
	static const char *const types[] = {"cpu", "meta", "cuda", "mps", "xpu"};
	static const bool indexed[] = {false, false, true, true, true};
	pf_device d;

	if (!s)
		return -1;
	if (len && s[len - 1] == '\n')
		len--;
	if (len == 0 || len >= PF_DEVICE_MAX)
		return -1;
	memset(&d, 0, sizeof(d));
	d.index = -1;
	for (unsigned t = 0; t < sizeof(types) / sizeof(types[0]); t++) {
		size_t tl = strlen(types[t]);
		if (len < tl || memcmp(s, types[t], tl) != 0)
			continue;
		if (len > tl) {
			const char *num = s + tl + 1;
			size_t nd = len - tl - 1;
			int v = 0;
			if (!indexed[t] || s[tl] != ':' || nd == 0 || nd > 3 || (nd > 1 && num[0] == '0'))
				return -1;
			for (size_t i = 0; i < nd; i++) {
				if (num[i] < '0' || num[i] > '9')
					return -1;
				v = v * 10 + (num[i] - '0');
			}
			if (v > 127)
				return -1;
			d.index = (int16_t)v;
		}
		memcpy(d.text, s, len);
		d.len = (uint8_t)len;
		d.type_len = (uint8_t)tl;
		if (dev)
			*dev = d;
		return 0;
	}
	return -1;
}

/* ---- the device edits of one pickle ------------------------------------------------------- */

void pf_edit_list_free(pf_edit_list *l)
{
	free(l->v);
	memset(l, 0, sizeof(*l));
}

typedef struct dctx {
	const pf_model *m;
	uint32_t seg;
	uint64_t start, end;
	const pf_device *dev;
	pf_edit_list *l;
} dctx;

static bool in_pickle(const dctx *c, const pf_node *n)
{
	return n && n->seg == c->seg && n->off >= c->start && n->off < c->end;
}

static bool str_is(const pf_node *n, const char *s, size_t len)
{
	return n && n->kind == PF_K_STR && n->u.s.len == len && memcmp(n->u.s.p, s, len) == 0;
}

static int add_edit(dctx *c, const pf_node *n, uint8_t kind, uint8_t why, pf_error *err)
{
	pf_edit_list *l = c->l;
	if (!in_pickle(c, n))
		return 0;
	if (kind == PF_EDIT_STR && str_is(n, c->dev->text, c->dev->len))
		return 0;
	if (l->n == l->cap) {
		uint32_t cap = l->cap ? l->cap * 2 : 16;
		pf_str_edit *v = cap > l->cap ? realloc(l->v, (size_t)cap * sizeof(*v)) : NULL;
		if (!v)
			return pf_fail(err, PF_E_NOMEM, n->off, "out of memory");
		l->v = v;
		l->cap = cap;
	}
	l->v[l->n++] = (pf_str_edit){.op_off = n->off - c->start, .new_text = c->dev->text,
				     .new_len = c->dev->len, .kind = kind, .why = why};
	return 0;
}

static int location_edit(dctx *c, const pf_node *n, pf_error *err)
{
	const pf_graph *g = &c->m->g;
	pf_nid pid = n->u.persid.pid;
	if (pf_kind_of(g, pid) != PF_K_TUPLE || pf_seq_len(g, pid) < 5 || !pf_str_eq(g, pf_seq_at(g, pid, 0), "storage"))
		return 0;
	const pf_node *loc = pf_node_at(g, pf_seq_at(g, pid, 3));
	return loc && loc->kind == PF_K_STR ? add_edit(c, loc, PF_EDIT_STR, PF_WHY_LOCATION, err) : 0;
}

static int torch_device_edit(dctx *c, const pf_node *n, pf_error *err)
{
	const pf_graph *g = &c->m->g;
	if (n->how != PF_HOW_REDUCE || !pf_is_global(g, n->u.call.func, "torch", "device"))
		return 0;
	pf_nid args = n->u.call.args;
	const pf_node *a = pf_node_at(g, args);
	if (!a || a->kind != PF_K_TUPLE)
		return 0;
	const pf_node *type = pf_node_at(g, pf_seq_at(g, args, 0));
	if (pf_seq_len(g, args) == 1 && type && type->kind == PF_K_STR)
		return add_edit(c, type, PF_EDIT_STR, PF_WHY_TORCH_DEVICE, err);
	if (pf_seq_len(g, args) == 2 && type && type->kind == PF_K_STR) {
		/* torch.device('cuda', 0) already is cuda:0: left as it is, so an unchanged
		 * `device` written back changes nothing */
		const pf_node *index = pf_node_at(g, pf_seq_at(g, args, 1));
		if (index && index->kind == PF_K_INT && c->dev->index >= 0 && index->u.i == c->dev->index &&
		    str_is(type, c->dev->text, c->dev->type_len))
			return 0;
		return add_edit(c, a, PF_EDIT_TUPLE1, PF_WHY_TORCH_DEVICE, err);
	}
	return 0;
}

static int attr_edits(dctx *c, const pf_node *n, pf_error *err)
{
	const pf_graph *g = &c->m->g;
	for (uint32_t i = 0; i + 1 < n->u.seq.n; i += 2) {
		const pf_node *k = pf_node_at(g, n->u.seq.v[i]);
		const pf_node *v = pf_node_at(g, n->u.seq.v[i + 1]);
		if (!(str_is(k, "device", 6) || str_is(k, "_device", 7)) || !v || v->kind != PF_K_STR)
			continue;
		if (v->u.s.len == 0 || v->u.s.p[v->u.s.len - 1] == '\n' ||
		    pf_device_parse((const char *)v->u.s.p, (size_t)v->u.s.len, NULL))
			continue;
		if (add_edit(c, v, PF_EDIT_STR, PF_WHY_ATTR, err))
			return -1;
	}
	return 0;
}

static int cmp_list_edit(const void *a, const void *b)
{
	const pf_str_edit *x = a, *y = b;
	if (x->op_off != y->op_off)
		return x->op_off < y->op_off ? -1 : 1;
	return (x->why > y->why) - (x->why < y->why);
}

static void dedupe(pf_edit_list *l)
{
	uint32_t w = 0;
	if (l->n)
		qsort(l->v, l->n, sizeof(*l->v), cmp_list_edit);
	for (uint32_t i = 0; i < l->n; i++)
		if (!w || l->v[w - 1].op_off != l->v[i].op_off)
			l->v[w++] = l->v[i];
	l->n = w;
	l->n_locations = l->n_devices = l->n_attrs = 0;
	for (uint32_t i = 0; i < l->n; i++) {
		l->n_locations += l->v[i].why == PF_WHY_LOCATION;
		l->n_devices += l->v[i].why == PF_WHY_TORCH_DEVICE;
		l->n_attrs += l->v[i].why == PF_WHY_ATTR;
	}
}

int pf_device_edits(const pf_model *m, uint32_t seg, uint64_t start, uint64_t end, const pf_device *dev,
		    pf_edit_list *out, pf_error *err)
{
	dctx c = {.m = m, .seg = seg, .start = start, .end = end, .dev = dev, .l = out};
	const pf_graph *g = &m->g;

	out->n = 0;
	if (!dev || dev->len == 0 || seg >= m->n_segs || start > end || end > m->segs[seg].len)
		return pf_fail(err, PF_E_FORMAT, start, "bad pickle range or device");
	for (pf_nid id = 1; id < g->n_nodes; id++) {
		const pf_node *n = &g->nodes[id];
		int rc = 0;
		if (!in_pickle(&c, n))
			continue;
		if (n->kind == PF_K_PERSID)
			rc = location_edit(&c, n, err);
		else if (n->kind == PF_K_CALL)
			rc = torch_device_edit(&c, n, err);
		else if (n->kind == PF_K_DICT)
			rc = attr_edits(&c, n, err);
		if (rc) {
			pf_edit_list_free(out);
			return -1;
		}
	}
	dedupe(out);
	return 0;
}
