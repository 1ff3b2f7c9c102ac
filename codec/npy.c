/*
 * npy.c - write and parse NumPy .npy headers (see npy.h).
 *
 * Writing reproduces numpy 1.24's numpy.lib.format._write_array_header
 * byte for byte: keys in sorted order, repr() of each value, the
 * GROWTH_AXIS_MAX_DIGITS spare spaces after the dict, then spaces and a
 * '\n' up to a multiple of ARRAY_ALIGN (64).  Note that numpy pads a full
 * 64 bytes, never 0, when the unpadded header is already aligned.
 *
 * Parsing accepts the subset of Python literal syntax that
 * ast.literal_eval gives a valid header for, in practice: a dict with the
 * three keys in any order (duplicates: the last wins), whitespace,
 * comments and line continuations between tokens, '...' / "..." strings
 * with an optional u/r prefix, shape ints in decimal, 0x/0o/0b, with
 * underscores and a leading '+', True/False as shape ints (they are ints in
 * Python), and the Python 2 'L' suffix that numpy filters from 1.0/2.0
 * headers.  Not accepted (numpy would): escape sequences and implicit
 * concatenation in strings, parenthesised values such as ((2, 3)), and
 * dtype names such as 'float32' instead of typestrs, form feeds and lone
 * '\r' outside the dict, and a last line of blanks after it (numpy's
 * answer for those differs between 1.0/2.0 and 3.0 headers).  Negative
 * dims and dims above INT64_MAX are rejected although numpy's header reader
 * lets them through (no array can have them).  Headers over numpy's
 * default max_header_size (10000 characters) are rejected, as np.load does
 * without allow_pickle.
 */
#include "npy.h"

#include "utf8.h"

#include <string.h>

#define NPY_MAGIC "\x93NUMPY"
#define NPY_MAGIC_LEN 6
#define NPY_PREFIX_V1 10       /* magic + version + u16 length */
#define NPY_PREFIX_V2 12       /* magic + version + u32 length */
#define NPY_ALIGN 64           /* numpy.lib.format.ARRAY_ALIGN */
#define NPY_GROWTH_DIGITS 21   /* numpy.lib.format.GROWTH_AXIS_MAX_DIGITS */
#define NPY_MAX_HEADER 10000   /* numpy.lib.format._MAX_HEADER_SIZE, in characters */
#define NPY_DICT_MAX 2048      /* bound on the dict text we write, see below */

/*
 * Longest dict we write: the fixed text (53 bytes), a descr of at most
 * PF_NPY_DESCR_MAX - 1 bytes, per dim at most 19 digits and ", ", and the
 * growth spaces.
 */
_Static_assert(53 + PF_NPY_DESCR_MAX + PF_NPY_MAX_DIMS * 21 + NPY_GROWTH_DIGITS < NPY_DICT_MAX,
	       "NPY_DICT_MAX too small");

/* ---------------------------------------------------------------------
 * typestr validation (shared by writer and parser)
 */

static bool is_digit(uint8_t ch)
{
	return ch >= '0' && ch <= '9';
}

static bool is_alpha(uint8_t ch)
{
	return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z');
}

/* A byte that continues a Python identifier (non-ASCII counts: latin-1/utf-8 letters). */
static bool is_ident(uint8_t ch)
{
	return is_alpha(ch) || is_digit(ch) || ch == '_' || ch >= 0x80;
}

/* The type chars numpy accepts without a size, e.g. '<f', '|O', '?'. */
static bool kind_bare_ok(uint8_t k)
{
	return k != 0 && strchr("abcdefghilmpqBDFGHILMOPQSUV?", k) != NULL;
}

/* Does numpy accept kind k with item size n ('<f4', '|S10', '<M8'...)? */
static bool kind_size_ok(uint8_t k, uint64_t n)
{
	switch (k) {
	case 'a': case 'S': case 'U': case 'V':
		return n <= 0x7fffffff;
	case 'b': return n == 1;
	case 'c': return n == 8 || n == 16 || n == 32;
	case 'f': return n == 2 || n == 4 || n == 8 || n == 16;
	case 'i': case 'u': return n == 1 || n == 2 || n == 4 || n == 8;
	case 'm': case 'M': return n == 8;
	case 'O': return n == 4 || n == 8;
	default: return false;
	}
}

/* A datetime unit in brackets: "[ns]", "[10ms]", "[generic]". */
static bool dt_unit_ok(const char *s, size_t n)
{
	static const char *const units[] = {
		"Y", "M", "W", "D", "h", "m", "s", "ms", "us", "ns", "ps", "fs", "as", "generic",
	};
	size_t i = 0;

	if (n < 3 || s[0] != '[' || s[n - 1] != ']')
		return false;
	s++;
	n -= 2;
	while (i < n && is_digit((uint8_t)s[i]))
		i++;
	for (size_t u = 0; u < sizeof(units) / sizeof(units[0]); u++)
		if (strlen(units[u]) == n - i && memcmp(units[u], s + i, n - i) == 0)
			return !(i > 0 && u == sizeof(units) / sizeof(units[0]) - 1);
	return false;
}

/* Is s[0..n) a simple numpy typestr such as "<f4", "|b1", "|V2", "<M8[ns]"? */
static bool typestr_ok(const char *s, size_t n)
{
	size_t i = 0, d;
	uint64_t size = 0;
	uint8_t kind;

	if (n == 0 || n >= PF_NPY_DESCR_MAX)
		return false;
	if (s[0] == '<' || s[0] == '>' || s[0] == '|' || s[0] == '=')
		i++;
	if (i >= n)
		return false;
	kind = (uint8_t)s[i++];
	d = i;
	while (i < n && is_digit((uint8_t)s[i])) {
		if (size > 0xffffffffu)
			return false;
		size = size * 10 + (uint64_t)(s[i] - '0');
		i++;
	}
	if (i == d ? !kind_bare_ok(kind) : !kind_size_ok(kind, size))
		return false;
	if (i == n)
		return true;
	/* only "M8[unit]" / "m8[unit]" may go on */
	return (kind == 'M' || kind == 'm') && i > d && dt_unit_ok(s + i, n - i);
}

/* ---------------------------------------------------------------------
 * writing
 */

typedef struct wbuf {
	char *p;
	size_t cap;
	size_t len;
} wbuf;

static void w_bytes(wbuf *w, const char *s, size_t n)
{
	if (w->len + n <= w->cap)
		memcpy(w->p + w->len, s, n);
	w->len += n;
}

static void w_str(wbuf *w, const char *s)
{
	w_bytes(w, s, strlen(s));
}

/* Decimal digits of v into tmp (at least 20 bytes); returns the count. */
static size_t fmt_u64(uint64_t v, char *tmp)
{
	char rev[20];
	size_t n = 0;

	do {
		rev[n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v != 0);
	for (size_t i = 0; i < n; i++)
		tmp[i] = rev[n - 1 - i];
	return n;
}

/* The repr() of the shape tuple: "()", "(5,)", "(2, 3)". */
static void w_shape(wbuf *w, const int64_t *shape, unsigned ndim)
{
	char tmp[20];

	w_str(w, "(");
	for (unsigned i = 0; i < ndim; i++) {
		if (i > 0)
			w_str(w, ", ");
		w_bytes(w, tmp, fmt_u64((uint64_t)shape[i], tmp));
	}
	w_str(w, ndim == 1 ? ",)" : ")");
}

/* The dict text numpy writes before padding, into dict (NPY_DICT_MAX bytes). */
static size_t build_dict(char *dict, const char *descr, const int64_t *shape, unsigned ndim,
			 bool fortran)
{
	wbuf w = { dict, NPY_DICT_MAX, 0 };
	char tmp[20];

	w_str(&w, "{'descr': '");
	w_str(&w, descr);
	w_str(&w, "', 'fortran_order': ");
	w_str(&w, fortran ? "True" : "False");
	w_str(&w, ", 'shape': ");
	w_shape(&w, shape, ndim);
	w_str(&w, ", }");
	if (ndim > 0) {
		size_t digits = fmt_u64((uint64_t)shape[fortran ? ndim - 1 : 0], tmp);

		for (size_t i = digits; i < NPY_GROWTH_DIGITS; i++)
			w_str(&w, " ");
	}
	return w.len;
}

/* numpy's _wrap_header: padding so that prefix + dict + pad + '\n' is aligned. */
static size_t pad_len(size_t prefix, size_t dict_len)
{
	return NPY_ALIGN - (prefix + dict_len + 1) % NPY_ALIGN;
}

static void put_le(char *p, uint64_t v, unsigned n)
{
	for (unsigned i = 0; i < n; i++)
		p[i] = (char)(uint8_t)(v >> (8 * i));
}

static int check_header_args(const char *descr, const int64_t *shape, unsigned ndim,
			     pf_error *err)
{
	if (ndim > PF_NPY_MAX_DIMS)
		return pf_fail(err, PF_E_LIMIT, 0, "npy: %u dimensions, at most %d", ndim,
			       PF_NPY_MAX_DIMS);
	for (unsigned i = 0; i < ndim; i++)
		if (shape[i] < 0)
			return pf_fail(err, PF_E_LIMIT, 0, "npy: dimension %u is negative", i);
	if (!descr || !typestr_ok(descr, strnlen(descr, PF_NPY_DESCR_MAX)))
		return pf_fail(err, PF_E_FORMAT, 0, "npy: descr is not a simple numpy typestr");
	return 0;
}

int pf_npy_header(char *buf, size_t cap, size_t *out_len, const char *descr,
		  const int64_t *shape, unsigned ndim, bool fortran, pf_error *err)
{
	char dict[NPY_DICT_MAX];
	size_t dict_len, prefix = NPY_PREFIX_V1, total, hfield;

	if (check_header_args(descr, shape, ndim, err))
		return -1;
	dict_len = build_dict(dict, descr, shape, ndim, fortran);
	hfield = dict_len + 1 + pad_len(NPY_PREFIX_V1, dict_len);
	if (hfield > 0xffff) {
		/* unreachable with the limits in npy.h, kept for numpy fidelity */
		prefix = NPY_PREFIX_V2;
		hfield = dict_len + 1 + pad_len(NPY_PREFIX_V2, dict_len);
	}
	total = prefix + hfield;
	if (out_len)
		*out_len = total;
	if (!buf)
		return 0;
	if (cap < total)
		return pf_fail(err, PF_E_FORMAT, 0, "npy: header needs %zu bytes, buffer has %zu",
			       total, cap);
	memcpy(buf, NPY_MAGIC, NPY_MAGIC_LEN);
	buf[6] = prefix == NPY_PREFIX_V1 ? 1 : 2;
	buf[7] = 0;
	put_le(buf + 8, hfield, prefix == NPY_PREFIX_V1 ? 2 : 4);
	memcpy(buf + prefix, dict, dict_len);
	memset(buf + prefix + dict_len, ' ', hfield - dict_len - 1);
	buf[total - 1] = '\n';
	return 0;
}

/* ---------------------------------------------------------------------
 * parsing
 */

typedef struct pcur {
	const uint8_t *p;
	size_t pos;
	size_t end;
	unsigned major;     /* 1, 2 or 3 */
	pf_error *err;
} pcur;

typedef struct pstate {
	pf_npy_info info;
	bool have_descr, have_fortran, have_shape;
	bool structured;
} pstate;

static int peek(const pcur *c)
{
	return c->pos < c->end ? c->p[c->pos] : -1;
}

static int peek_at(const pcur *c, size_t k)
{
	return c->end - c->pos > k ? c->p[c->pos + k] : -1;
}

static int bad(pcur *c, const char *what)
{
	return pf_fail(c->err, PF_E_FORMAT, c->pos, "npy header: %s", what);
}

static void skip_comment(pcur *c)
{
	while (c->pos < c->end && c->p[c->pos] != '\n' && c->p[c->pos] != '\r')
		c->pos++;
}

/* Length of a backslash line continuation at the cursor, 0 if none. */
static size_t continuation_len(const pcur *c)
{
	if (peek(c) != '\\')
		return 0;
	if (peek_at(c, 1) == '\n')
		return 2;
	if (peek_at(c, 1) == '\r')
		return peek_at(c, 2) == '\n' ? 3 : 2;
	return 0;
}

/* Whitespace, comments and line continuations between tokens. */
static void skip_ws(pcur *c)
{
	for (;;) {
		int ch = peek(c);
		size_t k;

		if (ch == ' ' || ch == '\t' || ch == '\f' || ch == '\r' || ch == '\n') {
			c->pos++;
		} else if (ch == '#') {
			skip_comment(c);
		} else if ((k = continuation_len(c)) != 0) {
			c->pos += k;
		} else {
			return;
		}
	}
}

/* Length of a line break at the cursor ("\n", "\r\n", and "\r" when lone_cr). */
static size_t newline_len(const pcur *c, bool lone_cr)
{
	if (peek(c) == '\n')
		return 1;
	if (peek(c) == '\r')
		return peek_at(c, 1) == '\n' ? 2 : (lone_cr ? 1 : 0);
	return 0;
}

static void skip_blanks(pcur *c, bool formfeed)
{
	while (peek(c) == ' ' || peek(c) == '\t' || (formfeed && peek(c) == '\f'))
		c->pos++;
}

/*
 * Text before the '{', where Python's line structure applies: leading
 * spaces and tabs (ast.literal_eval strips them), then blank or comment
 * lines, and the '{' must start its line.  Form feeds and lone '\r' are
 * refused here (numpy's answer for them differs between header versions).
 */
static int skip_leading(pcur *c)
{
	size_t k;

	skip_blanks(c, false);
	while (peek(c) != '{') {
		skip_blanks(c, false);
		if (peek(c) == '#')
			skip_comment(c);
		if ((k = newline_len(c, false)) != 0 || (k = continuation_len(c)) != 0)
			c->pos += k;
		else
			return bad(c, "header is not a dict");
	}
	return 0;
}

/*
 * Text after the '}': blanks, a comment, then blank or comment lines.  A
 * last line of blanks without a line break is refused (Python reads it
 * as an indent; numpy 1.24 lets it through only for 1.0/2.0 headers).
 */
static int skip_trailing(pcur *c)
{
	size_t line = 0, k;
	bool after_break = false;

	for (;;) {
		skip_blanks(c, true);
		if (peek(c) < 0)
			return after_break && c->pos > line ? bad(c, "indented last line") : 0;
		if (peek(c) == '#') {
			skip_comment(c);
			if (peek(c) < 0)
				return 0;
		}
		if ((k = newline_len(c, true)) != 0) {
			c->pos += k;
			after_break = true;
			line = c->pos;
		} else if ((k = continuation_len(c)) != 0) {
			c->pos += k;
			after_break = false;
			if (peek(c) < 0)
				return bad(c, "line continuation at the end");
		} else {
			return bad(c, "junk after the header dict");
		}
	}
}

static int expect(pcur *c, uint8_t ch, const char *what)
{
	skip_ws(c);
	if (peek(c) != ch)
		return bad(c, what);
	c->pos++;
	return 0;
}

/* A '...' or "..." string (u/r prefix allowed, no escapes); sets s/n to its body. */
static int parse_string(pcur *c, const uint8_t **s, size_t *n)
{
	int q = peek(c);

	if (q == 'u' || q == 'U' || q == 'r' || q == 'R') {
		c->pos++;
		q = peek(c);
	}
	if (q != '\'' && q != '"')
		return bad(c, "expected a string");
	c->pos++;
	*s = c->p + c->pos;
	while (c->pos < c->end && c->p[c->pos] != q) {
		uint8_t ch = c->p[c->pos];

		if (ch == '\\')
			return bad(c, "escape sequences in strings are not supported");
		if (ch == '\n' || ch == '\r')
			return bad(c, "unterminated string");
		c->pos++;
	}
	if (c->pos >= c->end)
		return bad(c, "unterminated string");
	*n = (size_t)(c->p + c->pos - *s);
	c->pos++;
	return 0;
}

/* Is the identifier at the cursor exactly `word`? Consumes it if so. */
static bool take_word(pcur *c, const char *word)
{
	size_t n = strlen(word);

	if (c->end - c->pos < n || memcmp(c->p + c->pos, word, n) != 0)
		return false;
	if (c->end - c->pos > n && is_ident(c->p[c->pos + n]))
		return false;
	c->pos += n;
	return true;
}

/* Skip a bracketed value (a structured descr) without recursion. */
static int skip_bracketed(pcur *c)
{
	size_t depth = 0;

	while (c->pos < c->end) {
		uint8_t ch = c->p[c->pos++];

		if (ch == '(' || ch == '[' || ch == '{') {
			depth++;
		} else if (ch == ')' || ch == ']' || ch == '}') {
			if (--depth == 0)
				return 0;
		} else if (ch == '\'' || ch == '"') {
			while (c->pos < c->end && c->p[c->pos] != ch)
				c->pos += c->p[c->pos] == '\\' ? 2 : 1;
			if (c->pos >= c->end)
				break;
			c->pos++;
		}
	}
	c->pos = c->end;
	return bad(c, "unterminated descr");
}

static int parse_descr(pcur *c, pstate *st)
{
	const uint8_t *s;
	size_t n, at;

	skip_ws(c);
	if (peek(c) == '[' || peek(c) == '(') {
		st->structured = true;
		st->have_descr = true;
		return skip_bracketed(c);
	}
	at = c->pos;
	if (parse_string(c, &s, &n))
		return -1;
	if (!typestr_ok((const char *)s, n)) {
		c->pos = at;
		return bad(c, "descr is not a valid numpy typestr");
	}
	memcpy(st->info.descr, s, n);
	st->info.descr[n] = '\0';
	st->structured = false;
	st->have_descr = true;
	return 0;
}

static int parse_bool(pcur *c, pstate *st)
{
	skip_ws(c);
	if (take_word(c, "True"))
		st->info.fortran = true;
	else if (take_word(c, "False"))
		st->info.fortran = false;
	else
		return bad(c, "fortran_order is not True or False");
	st->have_fortran = true;
	return 0;
}

static unsigned digit_value(uint8_t ch)
{
	if (is_digit(ch))
		return (unsigned)(ch - '0');
	if (ch >= 'a' && ch <= 'z')
		return (unsigned)(ch - 'a' + 10);
	if (ch >= 'A' && ch <= 'Z')
		return (unsigned)(ch - 'A' + 10);
	return 99;
}

/* The base of the int literal at the cursor, consuming a 0x/0o/0b prefix. */
static unsigned int_base(pcur *c)
{
	int x = peek_at(c, 1);

	if (peek(c) != '0')
		return 10;
	if (x == 'x' || x == 'X' || x == 'o' || x == 'O' || x == 'b' || x == 'B') {
		c->pos += 2;
		return x == 'x' || x == 'X' ? 16 : x == 'o' || x == 'O' ? 8 : 2;
	}
	return 10;
}

/* Digits with single underscores between them (after a base prefix, one may lead). */
static int int_digits(pcur *c, unsigned base, uint64_t *v)
{
	bool any = false, prev_under = false, lead_under = base != 10;
	bool leading_zero = base == 10 && peek(c) == '0';

	*v = 0;
	for (;;) {
		int ch = peek(c);

		if (ch == '_') {
			if (prev_under || !(any || lead_under))
				break;
			prev_under = true;
		} else if (ch >= 0 && digit_value((uint8_t)ch) < base) {
			unsigned d = digit_value((uint8_t)ch);

			if (leading_zero && d != 0)
				return bad(c, "leading zeros in a decimal integer");
			if (*v > ((uint64_t)INT64_MAX - d) / base)
				return bad(c, "dimension too large");
			*v = *v * base + d;
			any = true;
			prev_under = false;
		} else {
			break;
		}
		c->pos++;
	}
	if (!any || prev_under)
		return bad(c, "malformed integer");
	return 0;
}

/* numpy filters a Python 2 'L' after a number in 1.0/2.0 headers. */
static void skip_long_suffix(pcur *c)
{
	size_t save = c->pos;

	if (c->major > 2)
		return;
	skip_ws(c);
	if (!take_word(c, "L"))
		c->pos = save;
}

/* One shape entry: [+...] (int literal | True | False). */
static int parse_dim(pcur *c, int64_t *dim)
{
	uint64_t v;
	int ch;

	skip_ws(c);
	while (peek(c) == '+') {
		c->pos++;
		skip_ws(c);
	}
	if (peek(c) == '-')
		return bad(c, "negative dimension");
	if (take_word(c, "True") || take_word(c, "False")) {
		/* bool is an int in Python, so numpy takes (True, 3) as (1, 3) */
		*dim = c->p[c->pos - 4] == 'T';
		return 0;
	}
	if (peek(c) < 0 || !is_digit((uint8_t)peek(c)))
		return bad(c, "shape entry is not an integer");
	if (int_digits(c, int_base(c), &v))
		return -1;
	skip_long_suffix(c);
	ch = peek(c);
	if (ch >= 0 && (is_ident((uint8_t)ch) || ch == '.'))
		return bad(c, "shape entry is not an integer");
	*dim = (int64_t)v;
	return 0;
}

static int parse_shape(pcur *c, pstate *st)
{
	bool comma = false;
	unsigned ndim = 0;

	if (expect(c, '(', "shape is not a tuple"))
		return -1;
	skip_ws(c);
	while (peek(c) != ')') {
		if (ndim == PF_NPY_MAX_DIMS)
			return bad(c, "too many dimensions");
		if (parse_dim(c, &st->info.shape[ndim]))
			return -1;
		ndim++;
		skip_ws(c);
		if (peek(c) == ',') {
			c->pos++;
			comma = true;
			skip_ws(c);
		} else if (peek(c) != ')') {
			return bad(c, "expected ',' or ')' in shape");
		}
	}
	if (ndim == 1 && !comma)
		return bad(c, "shape is not a tuple");
	c->pos++;
	st->info.ndim = ndim;
	st->have_shape = true;
	return 0;
}

static int parse_entry(pcur *c, pstate *st)
{
	const uint8_t *k;
	size_t n, at;

	skip_ws(c);
	at = c->pos;
	if (parse_string(c, &k, &n))
		return -1;
	if (expect(c, ':', "expected ':'"))
		return -1;
	if (n == 5 && memcmp(k, "descr", 5) == 0)
		return parse_descr(c, st);
	if (n == 13 && memcmp(k, "fortran_order", 13) == 0)
		return parse_bool(c, st);
	if (n == 5 && memcmp(k, "shape", 5) == 0)
		return parse_shape(c, st);
	c->pos = at;
	return bad(c, "unexpected key");
}

static int parse_dict(pcur *c, pstate *st)
{
	if (skip_leading(c))
		return -1;
	c->pos++;
	for (;;) {
		skip_ws(c);
		if (peek(c) == '}')
			break;
		if (parse_entry(c, st))
			return -1;
		skip_ws(c);
		if (peek(c) == ',')
			c->pos++;
		else if (peek(c) != '}')
			return bad(c, "expected ',' or '}'");
	}
	c->pos++;
	if (skip_trailing(c))
		return -1;
	if (!st->have_descr || !st->have_fortran || !st->have_shape)
		return bad(c, "header lacks one of 'descr', 'fortran_order', 'shape'");
	return 0;
}


/* Check a 3.0 header is UTF-8 of at most NPY_MAX_HEADER characters. */
static int check_utf8(const uint8_t *p, size_t n, size_t base, pf_error *err)
{
	size_t i = 0, chars = 0;

	while (i < n) {
		size_t k = pf_utf8_seq(p + i, n - i);

		if (k == 0)
			return pf_fail(err, PF_E_FORMAT, base + i, "npy header: invalid UTF-8");
		i += k;
		chars++;
	}
	if (chars > NPY_MAX_HEADER)
		return pf_fail(err, PF_E_FORMAT, base, "npy header: longer than %d characters",
			       NPY_MAX_HEADER);
	return 0;
}

/* Magic, version and header length; sets *prefix, *hlen and *major. */
static int parse_prefix(const uint8_t *buf, size_t len, size_t *prefix, uint64_t *hlen,
			unsigned *major, pf_error *err)
{
	size_t m = len < NPY_MAGIC_LEN ? len : NPY_MAGIC_LEN;

	if (m > 0 && memcmp(buf, NPY_MAGIC, m) != 0)
		return pf_fail(err, PF_E_FORMAT, 0, "npy: bad magic");
	if (len < 8)
		return pf_fail(err, PF_E_TRUNCATED, len, "npy: truncated magic");
	if (buf[6] < 1 || buf[6] > 3 || buf[7] != 0)
		return pf_fail(err, PF_E_FORMAT, 6, "npy: unsupported version %u.%u", buf[6],
			       buf[7]);
	*major = buf[6];
	*prefix = *major == 1 ? NPY_PREFIX_V1 : NPY_PREFIX_V2;
	if (len < *prefix)
		return pf_fail(err, PF_E_TRUNCATED, len, "npy: truncated header length");
	*hlen = buf[8] | (uint64_t)buf[9] << 8;
	if (*major > 1)
		*hlen |= (uint64_t)buf[10] << 16 | (uint64_t)buf[11] << 24;
	if (*hlen > (*major == 3 ? 4 * NPY_MAX_HEADER : NPY_MAX_HEADER))
		return pf_fail(err, PF_E_FORMAT, 8, "npy: header longer than %d characters",
			       NPY_MAX_HEADER);
	return 0;
}

int pf_npy_parse(const uint8_t *buf, size_t len, pf_npy_info *out, pf_error *err)
{
	size_t prefix = 0;
	uint64_t hlen = 0;
	unsigned major = 0;
	pstate st;
	pcur c;

	if (!buf)
		len = 0;
	if (parse_prefix(buf, len, &prefix, &hlen, &major, err))
		return -1;
	if (len - prefix < hlen)
		return pf_fail(err, PF_E_TRUNCATED, len, "npy: header needs %llu bytes, have %zu",
			       (unsigned long long)(prefix + hlen), len);
	if (major == 3 && check_utf8(buf + prefix, (size_t)hlen, prefix, err))
		return -1;
	memset(&st, 0, sizeof(st));
	c = (pcur){ buf, prefix, prefix + (size_t)hlen, major, err };
	if (parse_dict(&c, &st))
		return -1;
	if (st.structured)
		return pf_fail(err, PF_E_UNSUPPORTED, prefix, "npy: structured dtypes are not supported");
	st.info.data_off = prefix + hlen;
	*out = st.info;
	return 0;
}
