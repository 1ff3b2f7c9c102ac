#include "rewrite.h"

#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "cursor.h"
#include "zipwrite.h"

void pf_patchset_init(pf_patchset *p)
{
	memset(p, 0, sizeof(*p));
	pf_arena_init(&p->arena);
}

void pf_patchset_free(pf_patchset *p)
{
	free(p->v);
	pf_arena_free(&p->arena);
	memset(p, 0, sizeof(*p));
}

static int add_patch(pf_patchset *ps, uint64_t off, const uint8_t *bytes, uint32_t len, pf_error *err)
{
	if (ps->n == ps->cap) {
		uint32_t cap = ps->cap ? ps->cap * 2 : 16;
		pf_patch *v = realloc(ps->v, cap * sizeof(*v));
		if (!v)
			return pf_fail(err, PF_E_NOMEM, off, "out of memory");
		ps->v = v;
		ps->cap = cap;
	}
	uint8_t *copy = pf_arena_alloc(&ps->arena, len);
	if (!copy)
		return pf_fail(err, PF_E_NOMEM, off, "out of memory");
	memcpy(copy, bytes, len);
	ps->v[ps->n++] = (pf_patch){.off = off, .len = len, .bytes = copy};
	return 0;
}

/* Collects pf_repickle's output in one buffer of the known final size. */
typedef struct out_buf {
	uint8_t *p;
	uint64_t len, cap;
} out_buf;

static int to_buf(void *ctx, const void *p, size_t n)
{
	out_buf *b = ctx;
	if (n > b->cap - b->len)
		return -1;
	memcpy(b->p + b->len, p, n);
	b->len += n;
	return 0;
}

/* One patch per run of bytes that differ between old and new (same length). */
static int diff_patches(pf_patchset *ps, uint64_t base, const uint8_t *old, const uint8_t *new, uint64_t len,
			pf_error *err)
{
	for (uint64_t i = 0; i < len;) {
		if (old[i] == new[i]) {
			i++;
			continue;
		}
		uint64_t j = i;
		while (j < len && old[j] != new[j] && j - i < UINT32_MAX)
			j++;
		if (add_patch(ps, base + i, new + i, (uint32_t)(j - i), err))
			return -1;
		i = j;
	}
	return 0;
}

static void le32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

/* The CRC-32 of a rewritten zip record, wherever the file states it. */
static int patch_record_crc(const pf_model *m, const pf_pickle_span *sp, const uint8_t *data, uint64_t len,
			    pf_patchset *ps, pf_error *err)
{
	const pf_archive *a = &m->archives[sp->archive];
	const pf_segment *zs = &m->segs[a->seg];
	const pf_zip_entry *e = &a->zip.entries[sp->zip_entry];
	uint64_t base = (uint64_t)zs->file_off;
	uint8_t crc[4];
	uLong c = crc32(0L, Z_NULL, 0);
	for (uint64_t off = 0; off < len;) {
		uInt n = len - off > (1u << 30) ? (1u << 30) : (uInt)(len - off);
		c = crc32(c, data + off, n);
		off += n;
	}
	le32(crc, (uint32_t)c);
	/* central directory: crc at +16 of the entry header */
	if (add_patch(ps, base + e->cd_entry_off + 16, crc, 4, err))
		return -1;
	/* data descriptor (flag bit 3): "PK\7\8" crc ... right after the data */
	uint64_t dd = e->data_off + e->csize;
	if ((e->flags & 0x8) && dd + 8 <= zs->len && memcmp(zs->p + dd, "PK\7\10", 4) == 0 &&
	    add_patch(ps, base + dd + 4, crc, 4, err))
		return -1;
	/* a local header that states the crc (no descriptor, or a writer that filled both) */
	if (pf_le(zs->p + e->header_off + 14, 4) != 0 && add_patch(ps, base + e->header_off + 14, crc, 4, err))
		return -1;
	return 0;
}

static int compare_patches(const void *a, const void *b)
{
	const pf_patch *x = a, *y = b;
	return x->off < y->off ? -1 : x->off > y->off;
}

/* Whether archive a lies inside a record of an enclosing zip (whose CRC-32 a patch of
 * a's bytes would then change too: that is left to the re-build). */
static bool inside_zip(const pf_model *m, uint32_t a)
{
	uint32_t seg = m->archives[a].seg;
	for (uint32_t hops = 0; hops <= m->n_segs && seg != 0 && seg < m->n_segs; hops++) {
		if (m->segs[seg].parent == seg)
			break;
		seg = m->segs[seg].parent;
		for (uint32_t b = 0; b < m->n_archives; b++)
			if (b != a && m->archives[b].seg == seg &&
			    (m->archives[b].container == PF_C_TORCH_ZIP || m->archives[b].container == PF_C_TORCHSCRIPT))
				return true;
	}
	return false;
}

static int rewrite_pickle(const pf_model *m, const pf_pickle_span *sp, const pf_device *dev, pf_patchset *ps,
			  pf_error *err)
{
	const pf_segment *s = &m->segs[sp->seg];
	pf_edit_list edits = {0};
	int rc = -1;
	uint8_t *buf = NULL;

	if (pf_device_edits(m, sp->seg, sp->start, sp->end, dev, &edits, err))
		return -1;
	if (edits.n == 0) {
		pf_edit_list_free(&edits);
		return 0;
	}
	uint64_t at = s->file_off >= 0 ? (uint64_t)s->file_off + sp->start : 0;
	if (inside_zip(m, sp->archive)) {
		pf_fail(err, PF_E_UNSUPPORTED, at, "a pickle inside a zip record of an enclosing file");
		goto out;
	}
	if (s->file_off < 0) {
		pf_fail(err, PF_E_UNSUPPORTED, at,
			"a pickle held as decoded text (protocol 0-2 bytes or a deflated record): "
			"rewriting its devices is not supported yet");
		goto out;
	}
	uint64_t len = sp->end - sp->start, out_len;
	if (pf_repickle(s->p + sp->start, len, edits.v, edits.n, NULL, NULL, &out_len, err))
		goto out;
	if (out_len != len) {
		pf_fail(err, PF_E_UNSUPPORTED, at,
			"the new device does not fit in the same number of bytes (%llu -> %llu): "
			"rewriting with a length change is not supported yet",
			(unsigned long long)len, (unsigned long long)out_len);
		goto out;
	}
	out_buf ob = {.p = malloc(len ? len : 1), .cap = len};
	buf = ob.p;
	if (!buf) {
		pf_fail(err, PF_E_NOMEM, at, "out of memory");
		goto out;
	}
	if (pf_repickle(s->p + sp->start, len, edits.v, edits.n, to_buf, &ob, NULL, err) ||
	    diff_patches(ps, at, s->p + sp->start, buf, len, err) ||
	    (sp->zip_entry >= 0 && patch_record_crc(m, sp, buf, len, ps, err)))
		goto out;
	ps->n_edits += edits.n;
	rc = 0;
out:
	free(buf);
	pf_edit_list_free(&edits);
	return rc;
}

/* ---- plans ------------------------------------------------------------------ */

void pf_plan_init(pf_plan *p)
{
	memset(p, 0, sizeof(*p));
	pf_arena_init(&p->arena);
}

void pf_plan_free(pf_plan *p)
{
	free(p->v);
	pf_arena_free(&p->arena);
	memset(p, 0, sizeof(*p));
}

static int plan_add(pf_plan *pl, uint64_t off, uint64_t len, const uint8_t *bytes, pf_error *err)
{
	if (!len)
		return 0;
	pf_piece *last = pl->n ? &pl->v[pl->n - 1] : NULL;
	if (last && !bytes && !last->bytes && last->off + last->len == off) {
		last->len += len;
		pl->size += len;
		return 0;
	}
	if (pl->n == pl->cap) {
		uint32_t cap = pl->cap ? pl->cap * 2 : 16;
		pf_piece *v = realloc(pl->v, cap * sizeof(*v));
		if (!v)
			return pf_fail(err, PF_E_NOMEM, off, "out of memory");
		pl->v = v;
		pl->cap = cap;
	}
	pl->v[pl->n++] = (pf_piece){.off = off, .len = len, .bytes = bytes};
	pl->size += len;
	return 0;
}

/* The same-length patches as a plan: the old file with the patches in place. */
static int plan_of_patches(const pf_model *m, const pf_patchset *ps, pf_plan *out, pf_error *err)
{
	uint64_t pos = 0;
	out->n_edits = ps->n_edits;
	if (!ps->n)
		return 0;
	for (uint32_t i = 0; i < ps->n; i++) {
		const pf_patch *p = &ps->v[i];
		uint8_t *b = pf_arena_alloc(&out->arena, p->len);
		if (!b)
			return pf_fail(err, PF_E_NOMEM, p->off, "out of memory");
		memcpy(b, p->bytes, p->len);
		if (plan_add(out, pos, p->off - pos, NULL, err) || plan_add(out, p->off, p->len, b, err))
			return -1;
		pos = p->off + p->len;
	}
	return plan_add(out, pos, m->file_len - pos, NULL, err);
}

static int rewrite_in_place(const pf_model *m, const pf_device *dev, pf_patchset *out, pf_error *err)
{
	for (uint32_t i = 0; i < m->n_pickles; i++)
		if (rewrite_pickle(m, &m->pickles[i], dev, out, err))
			return -1;
	if (out->n > 1) /* qsort of no array is undefined */
		qsort(out->v, out->n, sizeof(*out->v), compare_patches);
	for (uint32_t i = 1; i < out->n; i++)
		if (out->v[i].off < out->v[i - 1].off + out->v[i - 1].len)
			return pf_fail(err, PF_E_FORMAT, out->v[i].off, "two rewrites touch the same bytes");
	return 0;
}

/* ---- re-building: content as pieces of memory ------------------------------------ */

/* A piece of new content: bytes of the model (file, segments) or of the plan arena. */
typedef struct mpiece {
	const uint8_t *p;
	uint64_t len;
} mpiece;

typedef struct plist {
	mpiece *v;
	uint32_t n, cap;
	uint64_t len;
} plist;

static void pl_free(plist *l)
{
	free(l->v);
	memset(l, 0, sizeof(*l));
}

static int pl_add(plist *l, const uint8_t *p, uint64_t len, pf_error *err)
{
	if (!len)
		return 0;
	/* no merging of adjacent pieces here: two objects may happen to touch
	 * (plan_add merges the file ranges) */
	if (l->n == l->cap) {
		uint32_t cap = l->cap ? l->cap * 2 : 8;
		mpiece *v = cap > l->cap ? realloc(l->v, (size_t)cap * sizeof(*v)) : NULL;
		if (!v)
			return pf_fail(err, PF_E_NOMEM, 0, "out of memory");
		l->v = v;
		l->cap = cap;
	}
	l->v[l->n++] = (mpiece){p, len};
	l->len += len;
	return 0;
}

static int pl_append(plist *l, const plist *src, pf_error *err)
{
	for (uint32_t i = 0; i < src->n; i++)
		if (pl_add(l, src->v[i].p, src->v[i].len, err))
			return -1;
	return 0;
}

static bool within(const uint8_t *base, uint64_t len, const void *p, size_t n)
{
	uintptr_t b = (uintptr_t)base, q = (uintptr_t)p;
	return q >= b && q - b <= len && n <= len - (q - b);
}

/* Bytes that live in a transient buffer: copied into the arena. */
static int pl_add_copy(plist *l, pf_arena *a, const void *p, size_t n, pf_error *err)
{
	uint8_t *b = pf_arena_alloc(a, n);
	if (!b)
		return pf_fail(err, PF_E_NOMEM, 0, "out of memory");
	memcpy(b, p, n);
	return pl_add(l, b, n, err);
}

static uint32_t pl_crc(const plist *l)
{
	uLong c = crc32(0L, Z_NULL, 0);
	for (uint32_t i = 0; i < l->n; i++)
		for (uint64_t off = 0; off < l->v[i].len;) {
			uInt k = l->v[i].len - off > (1u << 30) ? (1u << 30) : (uInt)(l->v[i].len - off);
			c = crc32(c, l->v[i].p + off, k);
			off += k;
		}
	return (uint32_t)c;
}

/* One replacement of [off, off + len) of a segment: by a piece list or by bytes. */
typedef struct repl {
	uint64_t off, len;
	const plist *with;
	const uint8_t *bytes;
	uint64_t blen;
} repl;

static int compare_repl(const void *a, const void *b)
{
	const repl *x = a, *y = b;
	return x->off < y->off ? -1 : x->off > y->off;
}

/* base[0..len) with the replacements applied. */
static int splice(const uint8_t *base, uint64_t len, repl *r, uint32_t n, plist *out, pf_error *err)
{
	uint64_t pos = 0;
	if (n > 1)
		qsort(r, n, sizeof(*r), compare_repl);
	for (uint32_t i = 0; i < n; i++) {
		if (r[i].off < pos || r[i].len > len - r[i].off)
			return pf_fail(err, PF_E_FORMAT, r[i].off, "two rewrites touch the same bytes");
		if (pl_add(out, base + pos, r[i].off - pos, err) ||
		    (r[i].with ? pl_append(out, r[i].with, err) : pl_add(out, r[i].bytes, r[i].blen, err)))
			return -1;
		pos = r[i].off + r[i].len;
	}
	return pl_add(out, base + pos, len - pos, err);
}

/* n bytes of l from byte `from` on, as references to l's pieces. */
static int pl_append_range(plist *out, const plist *l, uint64_t from, uint64_t n, pf_error *err)
{
	for (uint32_t i = 0; i < l->n && n; i++) {
		const mpiece *pc = &l->v[i];
		if (from >= pc->len) {
			from -= pc->len;
			continue;
		}
		uint64_t k = pc->len - from < n ? pc->len - from : n;
		if (pl_add(out, pc->p + from, k, err))
			return -1;
		n -= k;
		from = 0;
	}
	return n ? pf_fail(err, PF_E_FORMAT, 0, "internal: a piece list is too short") : 0;
}

/* Offset in the model file of byte off of pickle span j, for errors (decoded
 * bytes: where the value they were decoded from begins). */
static uint64_t m_span_off(const pf_model *m, uint32_t j, uint64_t off)
{
	uint32_t seg = m->pickles[j].seg;
	uint64_t at = m->pickles[j].start + off;
	for (uint32_t hops = 0; hops <= m->n_segs && seg < m->n_segs; hops++) {
		const pf_segment *s = &m->segs[seg];
		if (s->file_off >= 0)
			return (uint64_t)s->file_off + at;
		if (s->parent == seg)
			break;
		at = s->how == PF_SEG_SLICE ? s->parent_off + at : s->parent_off;
		seg = s->parent;
	}
	return 0;
}

/* ---- re-building: state ----------------------------------------------------------- */

/* A new payload for the bytes / str opcode at op_off of a pickle span. */
typedef struct pay {
	uint32_t span;
	uint64_t op_off;      /* relative to the span's start */
	const plist *content;
} pay;

/* Where new tensor bytes land once the slice chain of their segment is followed. */
enum { AT_SPAN = 0, AT_ARCHIVE, AT_LATIN1 };

/* New contents for [off, off + len) of a pickle span (off relative to its start), of
 * an archive's segment, or of a decoded latin-1 segment; always the same length. */
typedef struct drepl {
	uint8_t at;           /* AT_* */
	uint32_t idx;         /* span, archive or segment index */
	uint64_t off, len;
	const plist *with;    /* len bytes */
	uint64_t covered;     /* AT_SPAN: bytes substituted while the span was re-emitted */
	uint64_t where;       /* file offset for errors */
} drepl;

typedef struct rw {
	const pf_model *m;
	const pf_changes *ch;
	pf_arena *arena;
	pf_error *err;
	plist *anew;          /* per archive: its segment's new content */
	bool *achanged;
	plist *henc;          /* per archive: the payload its host gets (latin-1 text encoded) */
	plist *snew;          /* per pickle span: the new pickle */
	bool *schanged;
	pay *pays;
	uint32_t n_pays, cap_pays;
	uint32_t n_edits;
	plist *dnew;          /* per ch->data item: the tensor's new bytes (or touched storage range) */
	drepl *dr;            /* sorted by (at, idx, off), not overlapping */
	uint32_t n_dr;
	plist *segnew, *segenc; /* per segment: a latin-1 data segment's new bytes, and as text */
} rw;

static int compare_drepl(const void *a, const void *b)
{
	const drepl *x = a, *y = b;
	if (x->at != y->at)
		return x->at < y->at ? -1 : 1;
	if (x->idx != y->idx)
		return x->idx < y->idx ? -1 : 1;
	return x->off < y->off ? -1 : x->off > y->off;
}

/* The replacements of one span / archive / segment: *n of them from the result on. */
static drepl *dr_of(const rw *w, uint8_t at, uint32_t idx, uint32_t *n)
{
	uint32_t lo = 0, hi = w->n_dr;
	while (lo < hi) { /* first entry not below (at, idx) */
		uint32_t mid = lo + (hi - lo) / 2;
		const drepl *d = &w->dr[mid];
		if (d->at < at || (d->at == at && d->idx < idx))
			lo = mid + 1;
		else
			hi = mid;
	}
	uint32_t k = lo;
	while (k < w->n_dr && w->dr[k].at == at && w->dr[k].idx == idx)
		k++;
	*n = k - lo;
	return w->dr + lo;
}

/*
 * Source bytes src[a, a + n) of a span, with its replacements r[0..nr) (sorted,
 * relative to src) substituted where they fall: the pickle around them stays
 * references, and how much of each was substituted is counted.
 */
static int add_src(rw *w, plist *out, const uint8_t *src, drepl *r, uint32_t nr, uint64_t a, uint64_t n)
{
	uint64_t b = a + n;
	uint32_t lo = 0, hi = nr;
	while (lo < hi) { /* the first replacement ending after a */
		uint32_t mid = lo + (hi - lo) / 2;
		if (r[mid].off + r[mid].len <= a)
			lo = mid + 1;
		else
			hi = mid;
	}
	for (uint32_t i = lo; i < nr && r[i].off < b; i++) {
		uint64_t from = r[i].off > a ? r[i].off : a, to = r[i].off + r[i].len < b ? r[i].off + r[i].len : b;
		if (pl_add(out, src + a, from - a, w->err) ||
		    pl_append_range(out, r[i].with, from - r[i].off, to - from, w->err))
			return -1;
		r[i].covered += to - from;
		a = to;
	}
	return pl_add(out, src + a, b - a, w->err);
}

/* pf_repickle's output: unchanged runs stay references (new tensor bytes substituted
 * in them), payload markers expand. */
typedef struct psink {
	rw *w;
	plist *out;
	const uint8_t *src;
	uint64_t src_len;
	uint32_t span;
	drepl *r;
	uint32_t nr;
} psink;

static int psink_fn(void *ctx, const void *p, size_t n)
{
	psink *s = ctx;
	for (uint32_t i = 0; i < s->w->n_pays; i++) {
		const pay *py = &s->w->pays[i];
		if (py->span == s->span && (const void *)py->content == p && py->content->len == n)
			return pl_append(s->out, py->content, s->w->err);
	}
	if (within(s->src, s->src_len, p, n))
		return add_src(s->w, s->out, s->src, s->r, s->nr, (uint64_t)((const uint8_t *)p - s->src), n);
	return pl_add_copy(s->out, s->w->arena, p, n, s->w->err);
}

static int compare_edit(const void *a, const void *b)
{
	const pf_str_edit *x = a, *y = b;
	return x->op_off < y->op_off ? -1 : x->op_off > y->op_off;
}

/* Span j's edits, in order of op_off: the device edits, the caller's, the payloads of
 * changed embedded files and latin-1 data.  Two at one opcode contradict each other. */
static int span_edits(rw *w, uint32_t j, const pf_edit_list *dev, pf_str_edit **out, uint32_t *n)
{
	const pf_changes *ch = w->ch;
	uint32_t k = dev->n;

	*n = dev->n;
	for (uint32_t i = 0; i < ch->n_edits; i++)
		*n += ch->edits[i].span == j;
	for (uint32_t i = 0; i < w->n_pays; i++)
		*n += w->pays[i].span == j;
	if (*n == 0)
		return 0;
	pf_str_edit *all = malloc((size_t)*n * sizeof(*all));
	if (!all)
		return pf_fail(w->err, PF_E_NOMEM, 0, "out of memory");
	if (dev->n)
		memcpy(all, dev->v, (size_t)dev->n * sizeof(*all));
	for (uint32_t i = 0; i < ch->n_edits; i++)
		if (ch->edits[i].span == j)
			all[k++] = ch->edits[i].e;
	for (uint32_t i = 0; i < w->n_pays; i++)
		if (w->pays[i].span == j)
			all[k++] = (pf_str_edit){.op_off = w->pays[i].op_off, .kind = PF_EDIT_PAYLOAD,
						 .new_text = (const char *)w->pays[i].content,
						 .new_len = w->pays[i].content->len};
	if (*n > 1)
		qsort(all, *n, sizeof(*all), compare_edit);
	*out = all;
	for (uint32_t i = 1; i < *n; i++)
		if (all[i].op_off == all[i - 1].op_off)
			return pf_fail(w->err, PF_E_INVALID, m_span_off(w->m, j, all[i].op_off),
				       "two changes of the opcode at %llu of one pickle",
				       (unsigned long long)all[i].op_off);
	return 0;
}

static int rebuild_span(rw *w, uint32_t j)
{
	const pf_model *m = w->m;
	const pf_pickle_span *sp = &m->pickles[j];
	const pf_segment *s = &m->segs[sp->seg];
	pf_edit_list edits = {0};
	pf_str_edit *all = NULL;
	uint32_t n = 0, nd;
	drepl *d = dr_of(w, AT_SPAN, j, &nd);
	int rc = -1;

	if (w->ch->device && pf_device_edits(m, sp->seg, sp->start, sp->end, w->ch->device, &edits, w->err))
		return -1;
	if (span_edits(w, j, &edits, &all, &n))
		goto out;
	if (n == 0 && nd == 0) {
		rc = 0;
		goto out;
	}
	if (s->how == PF_SEG_INFLATE) {
		pf_fail(w->err, PF_E_UNSUPPORTED, m_span_off(m, j, 0),
			"a deflated pickle record: rewriting it is not supported yet");
		goto out;
	}
	const uint8_t *src = s->p + sp->start;
	uint64_t len = sp->end - sp->start;
	psink ps = {.w = w, .out = &w->snew[j], .src = src, .src_len = len, .span = j, .r = d, .nr = nd};
	if (n ? pf_repickle(src, len, all, n, psink_fn, &ps, NULL, w->err) : add_src(w, ps.out, src, d, nd, 0, len))
		goto out;
	for (uint32_t i = 0; i < nd; i++)
		if (d[i].covered != d[i].len) {
			pf_fail(w->err, PF_E_INVALID, d[i].where, "new tensor bytes overlap an edit of their pickle");
			goto out;
		}
	w->schanged[j] = true;
	w->n_edits += edits.n;
	rc = 0;
out:
	free(all);
	pf_edit_list_free(&edits);
	return rc;
}

/* ---- re-building: archives ----------------------------------------------------------- */

/*
 * Reads a changed record's bytes from its piece list (contiguous, increasing) for
 * pf_zip_write, and remembers what it read: when the writer then hands that very
 * buffer to the sink, the sink takes the pieces instead (references to the old file
 * or the caller's memory), so that no tensor bytes are copied into the plan.
 */
typedef struct pl_reader {
	const plist *l;
	uint32_t i;
	uint64_t base;        /* output offset of piece i */
	struct zsink *z;
} pl_reader;

typedef struct zsink {
	rw *w;
	plist *out;
	const uint8_t *src;
	uint64_t src_len;
	const void *last_buf; /* the buffer the last pl_read filled, until the sink takes it */
	size_t last_n;
	const plist *last_l;
	uint64_t last_off;
} zsink;

static int pl_read(void *ctx, uint64_t off, void *buf, size_t n)
{
	pl_reader *r = ctx;
	uint8_t *out = buf;
	r->z->last_buf = buf;
	r->z->last_n = n;
	r->z->last_l = r->l;
	r->z->last_off = off;
	while (n) {
		while (r->i < r->l->n && off >= r->base + r->l->v[r->i].len)
			r->base += r->l->v[r->i++].len;
		if (r->i >= r->l->n || off < r->base)
			return -1;
		const mpiece *pc = &r->l->v[r->i];
		uint64_t in = off - r->base, k = pc->len - in < n ? pc->len - in : n;
		memcpy(out, pc->p + in, (size_t)k);
		out += k;
		off += k;
		n -= (size_t)k;
	}
	return 0;
}

static int zsink_fn(void *ctx, const void *p, size_t n)
{
	zsink *z = ctx;
	if (z->last_buf && p == z->last_buf && n == z->last_n) {
		z->last_buf = NULL;
		return pl_append_range(z->out, z->last_l, z->last_off, n, z->w->err);
	}
	if (within(z->src, z->src_len, p, n))
		return pl_add(z->out, p, n, z->w->err);
	return pl_add_copy(z->out, z->w->arena, p, n, z->w->err);
}

/* A zip whose changed records changed length: the whole zip in torch's layout. */
static int zip_rewrite(rw *w, uint32_t a, plist *const *rec)
{
	const pf_archive *ar = &w->m->archives[a];
	const pf_segment *zs = &w->m->segs[ar->seg];
	uint32_t n = ar->zip.n_entries;
	pf_zw_record *recs = calloc(n ? n : 1, sizeof(*recs));
	pl_reader *rd = calloc(n ? n : 1, sizeof(*rd));
	zsink z = {.w = w, .out = &w->anew[a], .src = zs->p, .src_len = zs->len};
	int rc = -1;

	if (!recs || !rd) {
		pf_fail(w->err, PF_E_NOMEM, 0, "out of memory");
		goto out;
	}
	for (uint32_t i = 0; i < n; i++) {
		const pf_zip_entry *e = &ar->zip.entries[i];
		recs[i].name = e->name;
		if (e->method != 0 || e->csize != e->usize || e->data_off > zs->len || e->usize > zs->len - e->data_off) {
			pf_fail(w->err, PF_E_UNSUPPORTED, i,
				"zip record %s is deflated: re-writing its zip is not supported yet", e->name);
			goto out;
		}
		if (rec[i]) {
			rd[i] = (pl_reader){.l = rec[i], .z = &z};
			recs[i].len = rec[i]->len;
			recs[i].read = pl_read;
			recs[i].read_ctx = &rd[i];
		} else {
			recs[i].len = e->usize;
			recs[i].data = zs->p + e->data_off;
			recs[i].crc_given = true;
			recs[i].crc32 = e->crc32;
		}
	}
	rc = pf_zip_write(recs, n, PF_ZW_ALIGNMENT, zsink_fn, &z, NULL, w->err);
out:
	free(recs);
	free(rd);
	return rc;
}

/* Changed records that kept their length: the zip keeps its layout, CRC-32s patched. */
static int zip_in_place(rw *w, uint32_t a, plist *const *rec)
{
	const pf_archive *ar = &w->m->archives[a];
	const pf_segment *zs = &w->m->segs[ar->seg];
	uint32_t n = ar->zip.n_entries, nr = 0;
	repl *r = calloc((size_t)n * 4 + 1, sizeof(*r));
	int rc = -1;

	if (!r)
		return pf_fail(w->err, PF_E_NOMEM, 0, "out of memory");
	for (uint32_t i = 0; i < n; i++) {
		const pf_zip_entry *e = &ar->zip.entries[i];
		if (!rec[i])
			continue;
		uint8_t *crc = pf_arena_alloc(w->arena, 4);
		if (!crc) {
			pf_fail(w->err, PF_E_NOMEM, 0, "out of memory");
			goto out;
		}
		le32(crc, pl_crc(rec[i]));
		r[nr++] = (repl){.off = e->data_off, .len = e->usize, .with = rec[i]};
		r[nr++] = (repl){.off = e->cd_entry_off + 16, .len = 4, .bytes = crc, .blen = 4};
		uint64_t dd = e->data_off + e->csize;
		if ((e->flags & 0x8) && dd + 8 <= zs->len && memcmp(zs->p + dd, "PK\7\10", 4) == 0)
			r[nr++] = (repl){.off = dd + 4, .len = 4, .bytes = crc, .blen = 4};
		if (pf_le(zs->p + e->header_off + 14, 4) != 0)
			r[nr++] = (repl){.off = e->header_off + 14, .len = 4, .bytes = crc, .blen = 4};
	}
	rc = splice(zs->p, zs->len, r, nr, &w->anew[a], w->err);
out:
	free(r);
	return rc;
}

/* *found: the changed pickle span that is record i of zip archive a, or -1. */
static int record_span(rw *w, uint32_t a, uint32_t i, int64_t *found)
{
	const pf_model *m = w->m;
	*found = -1;
	for (uint32_t j = 0; j < m->n_pickles; j++) {
		const pf_pickle_span *sp = &m->pickles[j];
		if (sp->archive != a || !w->schanged[j] || sp->zip_entry != (int32_t)i)
			continue;
		if (*found >= 0)
			return pf_fail(w->err, PF_E_UNSUPPORTED, 0, "two pickles in one zip record");
		*found = j;
	}
	return 0;
}

/* The first of r[0..n) (sorted by off) that starts at or after off. */
static uint32_t dr_from(const drepl *r, uint32_t n, uint64_t off)
{
	uint32_t lo = 0, hi = n;
	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		if (r[mid].off < off)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

/* Record i's new content (*rec left NULL when it does not change): its re-emitted
 * pickle or the new tensor bytes that fall in it.  *used counts those. */
static int zip_record(rw *w, uint32_t a, uint32_t i, plist *whole, plist **rec, repl *r, uint32_t *used)
{
	const pf_model *m = w->m;
	const pf_segment *zs = &m->segs[m->archives[a].seg];
	const pf_zip_entry *e = &m->archives[a].zip.entries[i];
	uint32_t nd, nr = 0;
	drepl *d = dr_of(w, AT_ARCHIVE, a, &nd);
	int64_t j;

	if (record_span(w, a, i, &j))
		return -1;
	if (e->data_off > zs->len || e->usize > zs->len - e->data_off)
		return pf_fail(w->err, PF_E_FORMAT, e->header_off, "zip record %s outside its zip", e->name);
	if (j >= 0) {
		const pf_pickle_span *sp = &m->pickles[j];
		if (m->segs[sp->seg].p != zs->p + e->data_off)
			return pf_fail(w->err, PF_E_UNSUPPORTED, e->header_off, "a pickle record that is no plain slice");
		r[nr++] = (repl){.off = sp->start, .len = sp->end - sp->start, .with = &w->snew[j]};
	}
	for (uint32_t k = dr_from(d, nd, e->data_off); k < nd && d[k].off < e->data_off + e->usize; k++) {
		if (d[k].len > e->data_off + e->usize - d[k].off)
			return pf_fail(w->err, PF_E_FORMAT, d[k].where, "tensor bytes cross the end of record %s",
				       e->name);
		if (e->method != 0)
			return pf_fail(w->err, PF_E_UNSUPPORTED, d[k].where,
				       "record %s is deflated: rewriting its bytes is not supported yet", e->name);
		r[nr++] = (repl){.off = d[k].off - e->data_off, .len = d[k].len, .with = d[k].with};
		(*used)++;
	}
	if (nr == 0)
		return 0;
	if (splice(zs->p + e->data_off, e->usize, r, nr, whole, w->err))
		return -1;
	*rec = whole;
	return 0;
}

static int rebuild_zip(rw *w, uint32_t a)
{
	const pf_model *m = w->m;
	const pf_archive *ar = &m->archives[a];
	uint32_t n = ar->zip.n_entries, nd, used = 0;
	plist **rec = calloc(n ? n : 1, sizeof(*rec));
	plist *whole = calloc(n ? n : 1, sizeof(*whole));
	drepl *d = dr_of(w, AT_ARCHIVE, a, &nd);
	repl *r = calloc((size_t)nd + 2, sizeof(*r));
	bool same = true;
	int rc = -1;

	if (!rec || !whole || !r) {
		pf_fail(w->err, PF_E_NOMEM, 0, "out of memory");
		goto out;
	}
	for (uint32_t i = 0; i < n; i++) {
		if (zip_record(w, a, i, &whole[i], &rec[i], r, &used))
			goto out;
		same &= !rec[i] || whole[i].len == ar->zip.entries[i].usize;
	}
	if (used != nd) {
		pf_fail(w->err, PF_E_UNSUPPORTED, nd ? d[0].where : 0, "tensor bytes outside the zip's records");
		goto out;
	}
	rc = same ? zip_in_place(w, a, rec) : zip_rewrite(w, a, rec);
out:
	for (uint32_t i = 0; whole && i < n; i++)
		pl_free(&whole[i]);
	free(whole);
	free(rec);
	free(r);
	return rc;
}

/* A legacy file or plain pickle: its pickles' ranges and new tensor bytes replaced. */
static int rebuild_plain(rw *w, uint32_t a)
{
	const pf_model *m = w->m;
	const pf_segment *as = &m->segs[m->archives[a].seg];
	uint32_t nr = 0, nd;
	drepl *d = dr_of(w, AT_ARCHIVE, a, &nd);
	repl *r = calloc((size_t)m->n_pickles + nd + 1, sizeof(*r));
	int rc;

	if (!r)
		return pf_fail(w->err, PF_E_NOMEM, 0, "out of memory");
	for (uint32_t j = 0; j < m->n_pickles; j++) {
		const pf_pickle_span *sp = &m->pickles[j];
		if (sp->archive != a || !w->schanged[j])
			continue;
		if (sp->seg != m->archives[a].seg) {
			free(r);
			return pf_fail(w->err, PF_E_UNSUPPORTED, 0, "a pickle outside its archive's bytes");
		}
		r[nr++] = (repl){.off = sp->start, .len = sp->end - sp->start, .with = &w->snew[j]};
	}
	for (uint32_t k = 0; k < nd; k++)
		r[nr++] = (repl){.off = d[k].off, .len = d[k].len, .with = d[k].with};
	rc = splice(as->p, as->len, r, nr, &w->anew[a], w->err);
	free(r);
	return rc;
}

/* The opcode whose payload is [off, off + len) of p: bytes, or str for latin-1 text. */
static int find_opcode(const uint8_t *p, uint64_t off, uint64_t len, bool text, uint64_t *hdr)
{
	uint8_t c1 = text ? 0x8c : 'C', c4 = text ? 'X' : 'B', c8 = text ? 0x8d : 0x8e;
	if (off >= 2 && len < 256 && p[off - 2] == c1 && p[off - 1] == len)
		*hdr = off - 2;
	else if (off >= 5 && p[off - 5] == c4 && pf_le(p + off - 4, 4) == len)
		*hdr = off - 5;
	else if (off >= 9 && p[off - 9] == c8 && pf_le(p + off - 8, 8) == len)
		*hdr = off - 9;
	else
		return -1;
	return 0;
}

/* Bytes as latin-1 text in UTF-8 (what protocol 0-2 pickles hold for bytes). */
static int latin1_encode(rw *w, const plist *in, plist *out)
{
	uint64_t n = 0;
	for (uint32_t i = 0; i < in->n; i++)
		for (uint64_t k = 0; k < in->v[i].len; k++)
			n += 1 + (in->v[i].p[k] >= 0x80);
	uint8_t *b = pf_arena_alloc(w->arena, n ? n : 1), *q = b;
	if (!b || n > SIZE_MAX)
		return pf_fail(w->err, PF_E_NOMEM, 0, "out of memory");
	for (uint32_t i = 0; i < in->n; i++)
		for (uint64_t k = 0; k < in->v[i].len; k++) {
			uint8_t c = in->v[i].p[k];
			if (c < 0x80) {
				*q++ = c;
			} else {
				*q++ = (uint8_t)(0xC0 | (c >> 6));
				*q++ = (uint8_t)(0x80 | (c & 0x3F));
			}
		}
	return pl_add(out, b, n, w->err);
}

/*
 * Hand the new content of segment seg (an embedded file or a latin-1 data value:
 * the payload of a bytes / str opcode of some pickle) to that pickle, as a payload
 * edit; latin-1 text is encoded into *enc first.
 */
static int attach_segment(rw *w, uint32_t seg, const plist *content, plist *enc, uint64_t at)
{
	const pf_model *m = w->m;
	const pf_segment *s = &m->segs[seg];
	uint64_t hdr;

	if (s->how != PF_SEG_SLICE && s->how != PF_SEG_LATIN1)
		return pf_fail(w->err, PF_E_UNSUPPORTED, at, "an embedded file that is no plain bytes value");
	const pf_segment *ps = &m->segs[s->parent];
	if (s->parent_off > ps->len || s->parent_len > ps->len - s->parent_off ||
	    find_opcode(ps->p, s->parent_off, s->parent_len, s->how == PF_SEG_LATIN1, &hdr))
		return pf_fail(w->err, PF_E_UNSUPPORTED, at,
			       "bytes not held by a binary bytes / str opcode: not supported yet");
	uint32_t j = 0;
	for (; j < m->n_pickles; j++) {
		const pf_pickle_span *sp = &m->pickles[j];
		if (sp->seg == s->parent && sp->start <= hdr && s->parent_off + s->parent_len <= sp->end)
			break;
	}
	if (j == m->n_pickles)
		return pf_fail(w->err, PF_E_UNSUPPORTED, at, "bytes outside any pickle");
	if (s->how == PF_SEG_LATIN1) {
		if (latin1_encode(w, content, enc))
			return -1;
		content = enc;
	}
	if (w->n_pays == w->cap_pays) {
		uint32_t cap = w->cap_pays ? w->cap_pays * 2 : 8;
		pay *v = realloc(w->pays, cap * sizeof(*v));
		if (!v)
			return pf_fail(w->err, PF_E_NOMEM, at, "out of memory");
		w->pays = v;
		w->cap_pays = cap;
	}
	w->pays[w->n_pays++] = (pay){.span = j, .op_off = hdr - m->pickles[j].start, .content = content};
	return 0;
}

static int attach_to_host(rw *w, uint32_t a)
{
	const pf_archive *ar = &w->m->archives[a];
	return attach_segment(w, ar->seg, &w->anew[a], &w->henc[a], pf_model_node_offset(w->m, ar->host));
}

static int rebuild_archive(rw *w, uint32_t a)
{
	const pf_model *m = w->m;
	uint32_t nd;
	dr_of(w, AT_ARCHIVE, a, &nd);
	bool any = nd > 0; /* new tensor bytes in its own segment */
	for (uint32_t j = 0; j < m->n_pickles; j++)
		if (m->pickles[j].archive == a) {
			if (rebuild_span(w, j))
				return -1;
			any |= w->schanged[j];
		}
	if (!any)
		return 0;
	const pf_container c = m->archives[a].container;
	if ((c == PF_C_TORCH_ZIP || c == PF_C_TORCHSCRIPT) ? rebuild_zip(w, a) : rebuild_plain(w, a))
		return -1;
	w->achanged[a] = true;
	return a > 0 ? attach_to_host(w, a) : 0;
}

/* ---- re-building: new tensor contents ------------------------------------------------ */

/* *found: the span of m holding [off, off + len) of segment seg, or -1 for none. */
static int span_holding(rw *w, uint32_t seg, uint64_t off, uint64_t len, uint64_t where, int64_t *found)
{
	const pf_model *m = w->m;
	*found = -1;
	for (uint32_t j = 0; j < m->n_pickles; j++) {
		const pf_pickle_span *sp = &m->pickles[j];
		if (sp->seg != seg || off >= sp->end || off + len <= sp->start)
			continue;
		if (off < sp->start || off + len > sp->end)
			return pf_fail(w->err, PF_E_INVALID, where, "new tensor bytes cross the end of a pickle");
		*found = j;
		return 0;
	}
	return 0;
}

static int64_t archive_of_seg(const pf_model *m, uint32_t seg)
{
	for (uint32_t a = 0; a < m->n_archives; a++)
		if (m->archives[a].seg == seg)
			return a;
	return -1;
}

/*
 * Place new bytes for [off, off + len) of segment seg: follow raw slices outwards
 * (a bytes value in a pickle, a stored record in a zip) to the innermost pickle span
 * or archive that holds them, or to the latin-1 text they were decoded from.  A loop
 * bounded by the number of segments (a slice's parent comes before it).
 */
static int place_bytes(rw *w, uint32_t seg, uint64_t off, uint64_t len, const plist *with, uint64_t where,
		       drepl *out)
{
	const pf_model *m = w->m;
	for (uint32_t hops = 0; hops <= m->n_segs && seg < m->n_segs; hops++) {
		const pf_segment *s = &m->segs[seg];
		if (off > s->len || len > s->len - off)
			return pf_fail(w->err, PF_E_FORMAT, where, "tensor bytes outside their segment");
		int64_t j;
		if (span_holding(w, seg, off, len, where, &j))
			return -1;
		int64_t a = j >= 0 ? -1 : archive_of_seg(m, seg);
		*out = (drepl){.off = off, .len = len, .with = with, .where = where};
		if (j >= 0) {
			out->at = AT_SPAN;
			out->idx = (uint32_t)j;
			out->off = off - m->pickles[j].start;
			return 0;
		}
		if (a >= 0 || s->how == PF_SEG_LATIN1) {
			out->at = a >= 0 ? AT_ARCHIVE : AT_LATIN1;
			out->idx = a >= 0 ? (uint32_t)a : seg;
			return 0;
		}
		if (s->how == PF_SEG_INFLATE)
			return pf_fail(w->err, PF_E_UNSUPPORTED, where,
				       "tensor bytes in a deflated record: rewriting them is not supported yet");
		if (s->how != PF_SEG_SLICE || s->parent == seg)
			break;
		off += s->parent_off;
		seg = s->parent;
	}
	return pf_fail(w->err, PF_E_FORMAT, where, "internal: tensor bytes in no pickle and no archive");
}

/* Hands out the caller's runs in order, across run boundaries. */
typedef struct run_cursor {
	const pf_bytes_run *r;
	uint32_t i;
	uint64_t at;
} run_cursor;

static void run_take(run_cursor *c, uint8_t *dst, uint64_t n)
{
	while (n) {
		uint64_t avail = c->r[c->i].len - c->at, k = avail < n ? avail : n;
		memcpy(dst, c->r[c->i].p + c->at, (size_t)k);
		dst += k;
		n -= k;
		c->at += k;
		if (c->at == c->r[c->i].len) {
			c->i++;
			c->at = 0;
		}
	}
}

/* Next index in logical order: C (last dimension fastest) or Fortran (first fastest). */
static void step_index(const pf_tensor *t, uint64_t *idx)
{
	for (uint32_t k = 0; k < t->ndim; k++) {
		uint32_t i = t->fortran ? k : t->ndim - 1 - k;
		if (++idx[i] < (uint64_t)t->shape[i])
			return;
		idx[i] = 0;
	}
}

/*
 * A strided view's new elements scattered into a copy of the storage bytes it
 * touches, [data_off, data_off + *len) of its segment.  An element that two
 * indices reach (stride 0, overlapping strides) must get one value.
 */
static int scatter(rw *w, const pf_tensor *t, const pf_tensor_data *d, uint8_t **out, uint64_t *len)
{
	const pf_segment *s = &w->m->segs[t->seg];
	uint64_t isz = t->itemsize, last = 0, where = pf_model_node_offset(w->m, t->node);
	for (uint32_t i = 0; i < t->ndim; i++) /* no overflow: the model checked the extent */
		last += (uint64_t)(t->shape[i] - 1) * (uint64_t)t->stride[i];
	*len = (last + 1) * isz;
	if (t->data_off > s->len || *len > s->len - t->data_off)
		return pf_fail(w->err, PF_E_FORMAT, where, "a view reaching past its storage");
	uint8_t *buf = pf_arena_alloc(w->arena, (size_t)*len);
	uint8_t *seen = calloc((size_t)(last / 8 + 1), 1), *tmp = malloc((size_t)isz);
	uint64_t *idx = calloc(t->ndim + 1, sizeof(*idx));
	run_cursor c = {.r = d->runs};
	int rc = -1;

	if (!buf || !seen || !tmp || !idx) {
		pf_fail(w->err, PF_E_NOMEM, where, "out of memory");
		goto out;
	}
	memcpy(buf, s->p + t->data_off, (size_t)*len);
	for (uint64_t e = 0; e < t->numel; e++, step_index(t, idx)) {
		uint64_t pos = 0;
		for (uint32_t i = 0; i < t->ndim; i++)
			pos += idx[i] * (uint64_t)t->stride[i];
		run_take(&c, tmp, isz);
		uint8_t *dst = buf + pos * isz, bit = (uint8_t)(1u << (pos % 8));
		if ((seen[pos / 8] & bit) && memcmp(dst, tmp, (size_t)isz) != 0) {
			pf_fail(w->err, PF_E_INVALID, where,
				"new contents give one element of a view's storage two values");
			goto out;
		}
		memcpy(dst, tmp, (size_t)isz);
		seen[pos / 8] |= bit;
	}
	*out = buf;
	rc = 0;
out:
	free(seen);
	free(tmp);
	free(idx);
	return rc;
}

/* ch->data[k]: its new bytes as a piece list, and where they go. */
static int place_data(rw *w, uint32_t k, drepl *out)
{
	const pf_tensor_data *d = &w->ch->data[k];
	const pf_tensor *t = &w->m->tensors[d->tensor];
	uint64_t where = pf_model_node_offset(w->m, t->node);

	if (t->layout == PF_TL_CONTIGUOUS) {
		for (uint32_t i = 0; i < d->n_runs; i++) /* the caller's memory: referenced, not copied */
			if (pl_add(&w->dnew[k], d->runs[i].p, d->runs[i].len, w->err))
				return -1;
		return place_bytes(w, t->seg, t->data_off, t->nbytes, &w->dnew[k], where, out);
	}
	uint8_t *buf = NULL;
	uint64_t len = 0;
	if (scatter(w, t, d, &buf, &len) || pl_add(&w->dnew[k], buf, len, w->err))
		return -1;
	return place_bytes(w, t->seg, t->data_off, len, &w->dnew[k], where, out);
}

/* Every new tensor content placed; two that share bytes contradict each other. */
static int place_all_data(rw *w)
{
	const pf_changes *ch = w->ch;
	w->dr = calloc((size_t)ch->n_data + 1, sizeof(*w->dr));
	w->dnew = calloc((size_t)ch->n_data + 1, sizeof(*w->dnew));
	if (!w->dr || !w->dnew)
		return pf_fail(w->err, PF_E_NOMEM, 0, "out of memory");
	for (uint32_t k = 0; k < ch->n_data; k++) {
		if (w->m->tensors[ch->data[k].tensor].nbytes == 0)
			continue;
		if (place_data(w, k, &w->dr[w->n_dr]))
			return -1;
		w->n_dr++;
	}
	if (w->n_dr > 1)
		qsort(w->dr, w->n_dr, sizeof(*w->dr), compare_drepl);
	for (uint32_t i = 1; i < w->n_dr; i++) {
		const drepl *p = &w->dr[i - 1], *q = &w->dr[i];
		if (p->at == q->at && p->idx == q->idx && q->off < p->off + p->len)
			return pf_fail(w->err, PF_E_INVALID, q->where, "two new tensor contents for the same bytes");
	}
	return 0;
}

/* Latin-1 data values (protocol 0-2 numpy arrays) with new bytes: each re-encoded
 * as text and handed to its pickle as a payload edit. */
static int attach_latin1_data(rw *w)
{
	const pf_model *m = w->m;
	w->segnew = calloc((size_t)m->n_segs + 1, sizeof(*w->segnew));
	w->segenc = calloc((size_t)m->n_segs + 1, sizeof(*w->segenc));
	if (!w->segnew || !w->segenc)
		return pf_fail(w->err, PF_E_NOMEM, 0, "out of memory");
	for (uint32_t i = 0; i < w->n_dr;) {
		if (w->dr[i].at != AT_LATIN1) {
			i++;
			continue;
		}
		uint32_t seg = w->dr[i].idx, n;
		drepl *d = dr_of(w, AT_LATIN1, seg, &n);
		repl *r = calloc(n, sizeof(*r));
		if (!r)
			return pf_fail(w->err, PF_E_NOMEM, 0, "out of memory");
		for (uint32_t k = 0; k < n; k++)
			r[k] = (repl){.off = d[k].off, .len = d[k].len, .with = d[k].with};
		int rc = splice(m->segs[seg].p, m->segs[seg].len, r, n, &w->segnew[seg], w->err);
		free(r);
		if (rc || attach_segment(w, seg, &w->segnew[seg], &w->segenc[seg], d[0].where))
			return -1;
		i += n;
	}
	return 0;
}

static int plan_of(const pf_model *m, const plist *l, pf_plan *out, pf_error *err)
{
	for (uint32_t i = 0; i < l->n; i++) {
		const mpiece *pc = &l->v[i];
		if (within(m->file, m->file_len, pc->p, (size_t)pc->len)) {
			if (plan_add(out, (uint64_t)(pc->p - m->file), pc->len, NULL, err))
				return -1;
		} else if (plan_add(out, 0, pc->len, pc->p, err)) {
			return -1;
		}
	}
	return 0;
}

static int by_depth(const pf_model *m, uint32_t *order)
{
	uint32_t n = m->n_archives, k = 0, maxd = 0;
	for (uint32_t i = 0; i < n; i++)
		maxd = m->archives[i].depth > maxd ? m->archives[i].depth : maxd;
	for (uint32_t d = maxd + 1; d-- > 0;)
		for (uint32_t i = 0; i < n; i++)
			if (m->archives[i].depth == d)
				order[k++] = i;
	return k == n ? 0 : -1;
}

static void rw_free(rw *w)
{
	const pf_model *m = w->m;
	for (uint32_t i = 0; w->anew && i < m->n_archives; i++)
		pl_free(&w->anew[i]);
	for (uint32_t i = 0; w->henc && i < m->n_archives; i++)
		pl_free(&w->henc[i]);
	for (uint32_t i = 0; w->snew && i < m->n_pickles; i++)
		pl_free(&w->snew[i]);
	for (uint32_t i = 0; w->dnew && i < w->ch->n_data; i++)
		pl_free(&w->dnew[i]);
	for (uint32_t i = 0; w->segnew && i < m->n_segs; i++) {
		pl_free(&w->segnew[i]);
		pl_free(&w->segenc[i]);
	}
	free(w->anew);
	free(w->henc);
	free(w->achanged);
	free(w->snew);
	free(w->schanged);
	free(w->pays);
	free(w->dnew);
	free(w->dr);
	free(w->segnew);
	free(w->segenc);
}

static int rebuild(const pf_model *m, const pf_changes *ch, pf_plan *out, pf_error *err)
{
	uint32_t na = m->n_archives, np = m->n_pickles;
	rw w = {.m = m, .ch = ch, .arena = &out->arena, .err = err};
	uint32_t *order = calloc(na + 1, sizeof(*order));
	int rc = -1;

	w.anew = calloc(na + 1, sizeof(*w.anew));
	w.henc = calloc(na + 1, sizeof(*w.henc));
	w.achanged = calloc(na + 1, sizeof(*w.achanged));
	w.snew = calloc(np + 1, sizeof(*w.snew));
	w.schanged = calloc(np + 1, sizeof(*w.schanged));
	if (!order || !w.anew || !w.henc || !w.achanged || !w.snew || !w.schanged) {
		pf_fail(err, PF_E_NOMEM, 0, "out of memory");
		goto out;
	}
	if (na == 0 || by_depth(m, order)) {
		pf_fail(err, PF_E_FORMAT, 0, "internal: archive depths");
		goto out;
	}
	if (place_all_data(&w) || attach_latin1_data(&w))
		goto out;
	for (uint32_t i = 0; i < na; i++)
		if (rebuild_archive(&w, order[i]))
			goto out;
	if (w.achanged[0] && plan_of(m, &w.anew[0], out, err))
		goto out;
	out->n_edits = w.n_edits;
	rc = 0;
out:
	rw_free(&w);
	free(order);
	return rc;
}

/* ---- the entry points ----------------------------------------------------------------- */

/* What the caller asked for, checked before anything is built. */
static int check_changes(const pf_model *m, const pf_changes *ch, pf_error *err)
{
	for (uint32_t i = 0; i < ch->n_edits; i++)
		if (ch->edits[i].span >= m->n_pickles)
			return pf_fail(err, PF_E_INVALID, 0, "an edit of pickle %u, of %u", ch->edits[i].span,
				       m->n_pickles);
	for (uint32_t k = 0; k < ch->n_data; k++) {
		const pf_tensor_data *d = &ch->data[k];
		if (d->tensor >= m->n_tensors)
			return pf_fail(err, PF_E_INVALID, 0, "new contents for tensor %u, of %u", d->tensor,
				       m->n_tensors);
		const pf_tensor *t = &m->tensors[d->tensor];
		uint64_t sum = 0;
		for (uint32_t i = 0; i < d->n_runs; i++) {
			if ((!d->runs[i].p && d->runs[i].len) || __builtin_add_overflow(sum, d->runs[i].len, &sum))
				return pf_fail(err, PF_E_INVALID, pf_model_node_offset(m, t->node), "a bad run of bytes");
		}
		if (sum != t->nbytes)
			return pf_fail(err, PF_E_INVALID, pf_model_node_offset(m, t->node),
				       "new contents of %llu bytes for a tensor of %llu", (unsigned long long)sum,
				       (unsigned long long)t->nbytes);
	}
	return 0;
}

/* Devices only: the same-length patches when they fit, else the re-build. */
static int rewrite_devices(const pf_model *m, const pf_changes *ch, pf_plan *out, pf_error *err)
{
	pf_patchset ps;
	int rc;

	pf_patchset_init(&ps);
	rc = rewrite_in_place(m, ch->device, &ps, err);
	if (!rc)
		rc = plan_of_patches(m, &ps, out, err);
	pf_patchset_free(&ps);
	if (!rc || !err || err->code != PF_E_UNSUPPORTED)
		return rc;
	/* a length change or a latin-1 blob: re-build from the innermost archive out */
	pf_plan_free(out);
	pf_plan_init(out);
	*err = (pf_error){0};
	return rebuild(m, ch, out, err);
}

int pf_rewrite(const pf_model *m, const pf_changes *ch, pf_plan *out, pf_error *err)
{
	if (!ch)
		return 0;
	if (check_changes(m, ch, err))
		return -1;
	if (ch->n_edits == 0 && ch->n_data == 0)
		return ch->device ? rewrite_devices(m, ch, out, err) : 0;
	return rebuild(m, ch, out, err);
}

int pf_rewrite_device(const pf_model *m, const pf_device *dev, pf_plan *out, pf_error *err)
{
	pf_changes ch = {.device = dev};
	return pf_rewrite(m, &ch, out, err);
}
