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

/* ---- re-building: state ----------------------------------------------------------- */

/* A new payload for the bytes / str opcode at op_off of a pickle span. */
typedef struct pay {
	uint32_t span;
	uint64_t op_off;      /* relative to the span's start */
	const plist *content;
} pay;

typedef struct rw {
	const pf_model *m;
	const pf_device *dev;
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
} rw;

/* pf_repickle's output: unchanged runs stay references, payload markers expand. */
typedef struct psink {
	rw *w;
	plist *out;
	const uint8_t *src;
	uint64_t src_len;
	uint32_t span;
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
		return pl_add(s->out, p, n, s->w->err);
	return pl_add_copy(s->out, s->w->arena, p, n, s->w->err);
}

static int rebuild_span(rw *w, uint32_t j)
{
	const pf_model *m = w->m;
	const pf_pickle_span *sp = &m->pickles[j];
	const pf_segment *s = &m->segs[sp->seg];
	pf_edit_list edits = {0};
	pf_str_edit *all = NULL;
	uint32_t np = 0, n;
	int rc = -1;

	if (pf_device_edits(m, sp->seg, sp->start, sp->end, w->dev, &edits, w->err))
		return -1;
	for (uint32_t i = 0; i < w->n_pays; i++)
		np += w->pays[i].span == j;
	n = edits.n + np;
	if (n == 0) {
		pf_edit_list_free(&edits);
		return 0;
	}
	if (s->how == PF_SEG_INFLATE) {
		pf_fail(w->err, PF_E_UNSUPPORTED, sp->start,
			"a deflated pickle record: rewriting its devices is not supported yet");
		goto out;
	}
	all = malloc((size_t)n * sizeof(*all));
	if (!all) {
		pf_fail(w->err, PF_E_NOMEM, 0, "out of memory");
		goto out;
	}
	memcpy(all, edits.v, (size_t)edits.n * sizeof(*all));
	for (uint32_t i = 0, k = edits.n; i < w->n_pays; i++)
		if (w->pays[i].span == j)
			all[k++] = (pf_str_edit){.op_off = w->pays[i].op_off, .kind = PF_EDIT_PAYLOAD,
						 .new_text = (const char *)w->pays[i].content,
						 .new_len = w->pays[i].content->len};
	psink ps = {.w = w, .out = &w->snew[j], .src = s->p + sp->start, .src_len = sp->end - sp->start, .span = j};
	if (pf_repickle(s->p + sp->start, sp->end - sp->start, all, n, psink_fn, &ps, NULL, w->err))
		goto out;
	w->schanged[j] = true;
	w->n_edits += edits.n;
	rc = 0;
out:
	free(all);
	pf_edit_list_free(&edits);
	return rc;
}

/* ---- re-building: archives ----------------------------------------------------------- */

/* Reads a changed record's bytes from its piece list (contiguous, increasing). */
typedef struct pl_reader {
	const plist *l;
	uint32_t i;
	uint64_t base;    /* output offset of piece i */
} pl_reader;

static int pl_read(void *ctx, uint64_t off, void *buf, size_t n)
{
	pl_reader *r = ctx;
	uint8_t *out = buf;
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

typedef struct zsink {
	rw *w;
	plist *out;
	const uint8_t *src;
	uint64_t src_len;
} zsink;

static int zsink_fn(void *ctx, const void *p, size_t n)
{
	zsink *z = ctx;
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
			rd[i] = (pl_reader){.l = rec[i]};
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
	zsink z = {.w = w, .out = &w->anew[a], .src = zs->p, .src_len = zs->len};
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

static int rebuild_zip(rw *w, uint32_t a)
{
	const pf_model *m = w->m;
	const pf_archive *ar = &m->archives[a];
	uint32_t n = ar->zip.n_entries;
	plist **rec = calloc(n ? n : 1, sizeof(*rec));
	plist *whole = calloc(n ? n : 1, sizeof(*whole));
	bool same = true;
	int rc = -1;

	if (!rec || !whole) {
		pf_fail(w->err, PF_E_NOMEM, 0, "out of memory");
		goto out;
	}
	for (uint32_t j = 0; j < m->n_pickles; j++) {
		const pf_pickle_span *sp = &m->pickles[j];
		if (sp->archive != a || !w->schanged[j])
			continue;
		if (sp->zip_entry < 0 || (uint32_t)sp->zip_entry >= n || rec[sp->zip_entry]) {
			pf_fail(w->err, PF_E_UNSUPPORTED, 0, "a pickle of a zip that is no record of its own");
			goto out;
		}
		const pf_segment *s = &m->segs[sp->seg];
		repl r = {.off = sp->start, .len = sp->end - sp->start, .with = &w->snew[j]};
		if (splice(s->p, s->len, &r, 1, &whole[sp->zip_entry], w->err))
			goto out;
		rec[sp->zip_entry] = &whole[sp->zip_entry];
		same &= whole[sp->zip_entry].len == ar->zip.entries[sp->zip_entry].usize;
	}
	rc = same ? zip_in_place(w, a, rec) : zip_rewrite(w, a, rec);
out:
	for (uint32_t i = 0; whole && i < n; i++)
		pl_free(&whole[i]);
	free(whole);
	free(rec);
	return rc;
}

/* A legacy file or plain pickle: its pickles' ranges replaced. */
static int rebuild_plain(rw *w, uint32_t a)
{
	const pf_model *m = w->m;
	const pf_segment *as = &m->segs[m->archives[a].seg];
	uint32_t nr = 0;
	repl *r = calloc(m->n_pickles + 1, sizeof(*r));
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

/* Hand a changed embedded archive to the pickle that holds it, as a payload edit. */
static int attach_to_host(rw *w, uint32_t a)
{
	const pf_model *m = w->m;
	const pf_segment *s = &m->segs[m->archives[a].seg];
	uint64_t at = pf_model_node_offset(m, m->archives[a].host), hdr;
	const plist *content = &w->anew[a];

	if (s->how != PF_SEG_SLICE && s->how != PF_SEG_LATIN1)
		return pf_fail(w->err, PF_E_UNSUPPORTED, at, "an embedded file that is no plain bytes value");
	const pf_segment *ps = &m->segs[s->parent];
	if (s->parent_off > ps->len || s->parent_len > ps->len - s->parent_off ||
	    find_opcode(ps->p, s->parent_off, s->parent_len, s->how == PF_SEG_LATIN1, &hdr))
		return pf_fail(w->err, PF_E_UNSUPPORTED, at,
			       "an embedded file not held by a binary bytes / str opcode: not supported yet");
	uint32_t j = 0;
	for (; j < m->n_pickles; j++) {
		const pf_pickle_span *sp = &m->pickles[j];
		if (sp->seg == s->parent && sp->start <= hdr && s->parent_off + s->parent_len <= sp->end)
			break;
	}
	if (j == m->n_pickles)
		return pf_fail(w->err, PF_E_UNSUPPORTED, at, "an embedded file outside any pickle");
	if (s->how == PF_SEG_LATIN1) {
		if (latin1_encode(w, content, &w->henc[a]))
			return -1;
		content = &w->henc[a];
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

static int rebuild_archive(rw *w, uint32_t a)
{
	const pf_model *m = w->m;
	bool any = false;
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

static int rebuild(const pf_model *m, const pf_device *dev, pf_plan *out, pf_error *err)
{
	uint32_t na = m->n_archives, np = m->n_pickles;
	rw w = {.m = m, .dev = dev, .arena = &out->arena, .err = err};
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
	for (uint32_t i = 0; i < na; i++)
		if (rebuild_archive(&w, order[i]))
			goto out;
	if (w.achanged[0] && plan_of(m, &w.anew[0], out, err))
		goto out;
	out->n_edits = w.n_edits;
	rc = 0;
out:
	for (uint32_t i = 0; w.anew && i < na; i++)
		pl_free(&w.anew[i]);
	for (uint32_t i = 0; w.henc && i < na; i++)
		pl_free(&w.henc[i]);
	for (uint32_t i = 0; w.snew && i < np; i++)
		pl_free(&w.snew[i]);
	free(w.anew);
	free(w.henc);
	free(w.achanged);
	free(w.snew);
	free(w.schanged);
	free(w.pays);
	free(order);
	return rc;
}

int pf_rewrite_device(const pf_model *m, const pf_device *dev, pf_plan *out, pf_error *err)
{
	pf_patchset ps;
	int rc;

	pf_patchset_init(&ps);
	rc = rewrite_in_place(m, dev, &ps, err);
	if (!rc)
		rc = plan_of_patches(m, &ps, out, err);
	pf_patchset_free(&ps);
	if (!rc || !err || err->code != PF_E_UNSUPPORTED)
		return rc;
	/* a length change or a latin-1 blob: re-build from the innermost archive out */
	pf_plan_free(out);
	pf_plan_init(out);
	*err = (pf_error){0};
	return rebuild(m, dev, out, err);
}
