#include "rewrite.h"

#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "cursor.h"

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

int pf_rewrite_device(const pf_model *m, const pf_device *dev, pf_patchset *out, pf_error *err)
{
	for (uint32_t i = 0; i < m->n_pickles; i++)
		if (rewrite_pickle(m, &m->pickles[i], dev, out, err))
			return -1;
	qsort(out->v, out->n, sizeof(*out->v), compare_patches);
	for (uint32_t i = 1; i < out->n; i++)
		if (out->v[i].off < out->v[i - 1].off + out->v[i - 1].len)
			return pf_fail(err, PF_E_FORMAT, out->v[i].off, "two rewrites touch the same bytes");
	return 0;
}
