/*
 * zipwrite.c - the zip writer in torch's layout (see zipwrite.h).
 *
 * The layout mirrors miniz's mz_zip_writer_add_mem_ex_v2 and
 * mz_zip_writer_finalize_archive as PyTorchStreamWriter drives them
 * (level 0, "FB" padding as user extra data, MZ_ZIP_FLAG_WRITE_ZIP64).
 */
#include "zipwrite.h"

#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#define U32_MAX_ 0xFFFFFFFFu

#define SIG_LOCAL 0x04034b50u
#define SIG_DESC 0x08074b50u
#define SIG_CENTRAL 0x02014b50u
#define SIG_EOCD64 0x06064b50u
#define SIG_LOC64 0x07064b50u
#define SIG_EOCD 0x06054b50u

#define LOCAL_SIZE 30u
#define CENTRAL_SIZE 46u
#define EOCD64_SIZE 56u
#define LOC64_SIZE 20u
#define EOCD_SIZE 22u

#define FLAG_DESCRIPTOR 0x0008u
#define FLAG_UTF8 0x0800u

/* ------------------------------------------------------------------ layout rules */

static bool big_size(uint64_t len)
{
	return len >= U32_MAX_;
}

static bool big_off(uint64_t off)
{
	return off >= U32_MAX_;
}

static uint16_t rec_flags(const pf_zw_record *r)
{
	/* miniz sets bit 3 (data descriptor) only for a non-empty record */
	return (uint16_t)(FLAG_UTF8 | (r->len ? FLAG_DESCRIPTOR : 0));
}

/* Bytes of the zip64 extra field (header included) for a record of `len`
 * at `off`; 0 when the record is not zip64.  Local and central alike. */
static uint32_t zip64_extra_len(uint64_t len, uint64_t off)
{
	if (!big_size(len) && !big_off(off))
		return 0;
	return 4 + (big_size(len) ? 16 : 0) + (big_off(off) ? 8 : 0);
}

static uint32_t descriptor_len(const pf_zw_record *r, bool zip64)
{
	if (!r->len)
		return 0;
	return zip64 ? 24 : 16;
}

static size_t name_len(const pf_zw_record *r)
{
	return r->name ? strlen(r->name) : 0;
}

static int check_record(const pf_zw_record *r, uint32_t i, pf_error *err)
{
	size_t nl = name_len(r);

	if (nl == 0 || nl > 0xFFFF)
		return pf_fail(err, PF_E_LIMIT, i, "zip record %u: name is %s", i,
			       nl ? "longer than 65535 bytes" : "missing or empty");
	if (r->len && !r->data && !r->read)
		return pf_fail(err, PF_E_FORMAT, i, "zip record %u (%s): no data and no reader", i,
			       r->name);
	return 0;
}

/* Place record i with its local header at `cur`. */
static int place_record(const pf_zw_record *r, uint32_t i, uint64_t cur, uint32_t alignment,
			pf_zw_place *p, pf_error *err)
{
	const uint64_t limit = (uint64_t)1 << 63; /* records end before limit / 2 */
	size_t nl = name_len(r);
	uint32_t z64 = zip64_extra_len(r->len, cur);
	uint64_t start, pad;

	if (cur > limit / 2)
		return pf_fail(err, PF_E_LIMIT, i, "zip record %u: output too large", i);
	start = cur + LOCAL_SIZE + nl + z64 + 4;
	pad = (alignment - start % alignment) % alignment;
	p->header_off = cur;
	p->data_off = start + pad;
	p->zip64 = z64 != 0;
	p->pad = (uint16_t)pad;
	p->extra_len = (uint16_t)(z64 + 4 + pad);
	if (r->len > limit / 2 - p->data_off)
		return pf_fail(err, PF_E_LIMIT, i, "zip record %u: output too large", i);
	p->end_off = p->data_off + r->len + descriptor_len(r, p->zip64);
	return 0;
}

static uint64_t central_entry_len(const pf_zw_record *r, const pf_zw_place *p)
{
	return CENTRAL_SIZE + name_len(r) + zip64_extra_len(r->len, p->header_off);
}

static int plan_into(const pf_zw_record *recs, uint32_t n, uint32_t alignment,
		     pf_zw_place *places, pf_zw_layout *layout, pf_error *err)
{
	uint64_t cur = 0, cd_size = 0;
	pf_zw_place tmp;

	if (n == 0 || n == U32_MAX_)
		return pf_fail(err, PF_E_LIMIT, 0, "zip: %u records (1 to 4294967294 allowed)", n);
	if (alignment == 0 || alignment > PF_ZW_MAX_ALIGNMENT || (alignment & (alignment - 1)))
		return pf_fail(err, PF_E_LIMIT, 0, "zip: alignment %u is not a power of two up to %u",
			       alignment, PF_ZW_MAX_ALIGNMENT);
	for (uint32_t i = 0; i < n; i++) {
		pf_zw_place *p = places ? &places[i] : &tmp;

		if (check_record(&recs[i], i, err) || place_record(&recs[i], i, cur, alignment, p, err))
			return -1;
		cur = p->end_off;
		cd_size += central_entry_len(&recs[i], p);
	}
	layout->cd_off = cur;
	layout->cd_size = cd_size;
	layout->eocd64_off = cur + cd_size;
	layout->size = layout->eocd64_off + EOCD64_SIZE + LOC64_SIZE + EOCD_SIZE;
	return 0;
}

int pf_zip_plan(const pf_zw_record *recs, uint32_t n, uint32_t alignment,
		pf_zw_place *places, pf_zw_layout *layout, pf_error *err)
{
	pf_zw_layout tmp;

	return plan_into(recs, n, alignment, places, layout ? layout : &tmp, err);
}

/* ------------------------------------------------------------------ output */

typedef struct zw_out {
	pf_zw_sink_fn sink;
	void *ctx;
	uint64_t off;  /* bytes handed to the sink so far */
	size_t used;   /* bytes waiting in buf */
	uint8_t buf[4096];
	pf_error *err;
} zw_out;

static int out_flush(zw_out *o)
{
	if (o->used == 0)
		return 0;
	if (o->sink(o->ctx, o->buf, o->used) != 0)
		return pf_fail(o->err, PF_E_TRUNCATED, o->off, "zip: the output sink failed at offset %llu",
			       (unsigned long long)o->off);
	o->off += o->used;
	o->used = 0;
	return 0;
}

/* Buffered: small pieces (headers, names, padding). */
static int out_put(zw_out *o, const void *src, size_t n)
{
	const uint8_t *s = src;

	while (n) {
		size_t k = sizeof(o->buf) - o->used;

		if (k > n)
			k = n;
		memcpy(o->buf + o->used, s, k);
		o->used += k;
		s += k;
		n -= k;
		if (o->used == sizeof(o->buf) && out_flush(o))
			return -1;
	}
	return 0;
}

/* Unbuffered: record data, straight to the sink. */
static int out_direct(zw_out *o, const uint8_t *src, size_t n)
{
	if (out_flush(o))
		return -1;
	if (n && o->sink(o->ctx, src, n) != 0)
		return pf_fail(o->err, PF_E_TRUNCATED, o->off, "zip: the output sink failed at offset %llu",
			       (unsigned long long)o->off);
	o->off += n;
	return 0;
}

static int out_fill(zw_out *o, uint8_t byte, size_t n)
{
	uint8_t tmp[256];

	memset(tmp, byte, sizeof(tmp));
	while (n) {
		size_t k = n < sizeof(tmp) ? n : sizeof(tmp);

		if (out_put(o, tmp, k))
			return -1;
		n -= k;
	}
	return 0;
}

static int out_le(zw_out *o, uint64_t v, unsigned bytes)
{
	uint8_t tmp[8];

	for (unsigned i = 0; i < bytes; i++)
		tmp[i] = (uint8_t)(v >> (8 * i));
	return out_put(o, tmp, bytes);
}

static uint64_t min32(uint64_t v)
{
	return v < U32_MAX_ ? v : U32_MAX_;
}

/* The zip64 extra field.  `csize` differs from len only in the local header
 * (miniz writes 0 there: the compressed size is not known yet). */
static int out_zip64_extra(zw_out *o, uint64_t len, uint64_t csize, uint64_t off)
{
	uint32_t z = zip64_extra_len(len, off);

	if (z == 0)
		return 0;
	if (out_le(o, 0x0001, 2) || out_le(o, z - 4, 2))
		return -1;
	if (big_size(len) && (out_le(o, len, 8) || out_le(o, csize, 8)))
		return -1;
	if (big_off(off) && out_le(o, off, 8))
		return -1;
	return 0;
}

static int out_local_header(zw_out *o, const pf_zw_record *r, const pf_zw_place *p)
{
	size_t nl = name_len(r);

	if (out_le(o, SIG_LOCAL, 4) || out_le(o, 0, 2) || out_le(o, rec_flags(r), 2) ||
	    out_le(o, 0, 2) || out_le(o, 0, 4) || out_le(o, 0, 4) || out_le(o, 0, 4) ||
	    out_le(o, 0, 4) || out_le(o, nl, 2) || out_le(o, p->extra_len, 2) ||
	    out_put(o, r->name, nl) || out_zip64_extra(o, r->len, 0, p->header_off) ||
	    out_put(o, "FB", 2) || out_le(o, p->pad, 2) || out_fill(o, 'Z', p->pad))
		return -1;
	return 0;
}

static uint32_t crc_update(uint32_t crc, const uint8_t *p, size_t n)
{
	while (n) {
		uInt k = n > 0x40000000u ? 0x40000000u : (uInt)n;

		crc = (uint32_t)crc32(crc, p, k);
		p += k;
		n -= k;
	}
	return crc;
}

static int out_data_mem(zw_out *o, const pf_zw_record *r, uint32_t *crc)
{
	const size_t step = (size_t)1 << 30;
	const uint8_t *p = r->data;
	uint64_t left = r->len;

	while (left) {
		size_t k = left > step ? step : (size_t)left;

		if (!r->crc_given)
			*crc = crc_update(*crc, p, k);
		if (out_direct(o, p, k))
			return -1;
		p += k;
		left -= k;
	}
	return 0;
}

static int out_data_read(zw_out *o, const pf_zw_record *r, uint32_t i, uint8_t *buf, uint32_t *crc)
{
	uint64_t done = 0;

	while (done < r->len) {
		size_t k = r->len - done > PF_ZW_CHUNK ? PF_ZW_CHUNK : (size_t)(r->len - done);

		if (r->read(r->read_ctx, done, buf, k) != 0)
			return pf_fail(o->err, PF_E_TRUNCATED, o->off + (o->used),
				       "zip record %u (%s): reading its bytes at %llu failed", i,
				       r->name, (unsigned long long)done);
		if (!r->crc_given)
			*crc = crc_update(*crc, buf, k);
		if (out_direct(o, buf, k))
			return -1;
		done += k;
	}
	return 0;
}

static int out_descriptor(zw_out *o, const pf_zw_record *r, const pf_zw_place *p, uint32_t crc)
{
	unsigned w = p->zip64 ? 8 : 4;

	if (!r->len)
		return 0;
	return out_le(o, SIG_DESC, 4) || out_le(o, crc, 4) || out_le(o, r->len, w) ||
	       out_le(o, r->len, w) ? -1 : 0;
}

static int out_record(zw_out *o, const pf_zw_record *r, uint32_t i, const pf_zw_place *p,
		      uint8_t **buf, uint32_t *crc)
{
	*crc = r->crc_given && r->len ? r->crc32 : (uint32_t)crc32(0, NULL, 0);
	if (out_local_header(o, r, p))
		return -1;
	if (r->len && r->data) {
		if (out_data_mem(o, r, crc))
			return -1;
	} else if (r->len) {
		if (!*buf && !(*buf = malloc(PF_ZW_CHUNK)))
			return pf_fail(o->err, PF_E_NOMEM, i, "zip: out of memory");
		if (out_data_read(o, r, i, *buf, crc))
			return -1;
	}
	return out_descriptor(o, r, p, *crc);
}

static int out_central(zw_out *o, const pf_zw_record *r, const pf_zw_place *p, uint32_t crc)
{
	size_t nl = name_len(r);
	uint32_t ext = nl && r->name[nl - 1] == '/' ? 0x10 : 0;

	if (out_le(o, SIG_CENTRAL, 4) || out_le(o, 0, 2) || out_le(o, 0, 2) ||
	    out_le(o, rec_flags(r), 2) || out_le(o, 0, 2) || out_le(o, 0, 4) || out_le(o, crc, 4) ||
	    out_le(o, min32(r->len), 4) || out_le(o, min32(r->len), 4) || out_le(o, nl, 2) ||
	    out_le(o, zip64_extra_len(r->len, p->header_off), 2) || out_le(o, 0, 2) ||
	    out_le(o, 0, 2) || out_le(o, 0, 2) || out_le(o, ext, 4) ||
	    out_le(o, min32(p->header_off), 4) || out_put(o, r->name, nl) ||
	    out_zip64_extra(o, r->len, r->len, p->header_off))
		return -1;
	return 0;
}

static int out_end(zw_out *o, uint32_t n, const pf_zw_layout *l)
{
	uint64_t n16 = n < 0xFFFF ? n : 0xFFFF;

	if (out_le(o, SIG_EOCD64, 4) || out_le(o, 44, 8) || out_le(o, 0x031E, 2) ||
	    out_le(o, 45, 2) || out_le(o, 0, 4) || out_le(o, 0, 4) || out_le(o, n, 8) ||
	    out_le(o, n, 8) || out_le(o, l->cd_size, 8) || out_le(o, l->cd_off, 8))
		return -1;
	if (out_le(o, SIG_LOC64, 4) || out_le(o, 0, 4) || out_le(o, l->eocd64_off, 8) ||
	    out_le(o, 1, 4))
		return -1;
	if (out_le(o, SIG_EOCD, 4) || out_le(o, 0, 2) || out_le(o, 0, 2) || out_le(o, n16, 2) ||
	    out_le(o, n16, 2) || out_le(o, min32(l->cd_size), 4) || out_le(o, min32(l->cd_off), 4) ||
	    out_le(o, 0, 2))
		return -1;
	return out_flush(o);
}

static int write_all(const pf_zw_record *recs, uint32_t n, const pf_zw_place *places,
		     const pf_zw_layout *l, zw_out *o, uint32_t *crcs)
{
	uint8_t *buf = NULL;
	int rc = 0;

	for (uint32_t i = 0; i < n && rc == 0; i++)
		rc = out_record(o, &recs[i], i, &places[i], &buf, &crcs[i]);
	free(buf);
	for (uint32_t i = 0; i < n && rc == 0; i++)
		rc = out_central(o, &recs[i], &places[i], crcs[i]);
	if (rc == 0)
		rc = out_end(o, n, l);
	if (rc == 0 && o->off != l->size)
		rc = pf_fail(o->err, PF_E_FORMAT, o->off, "zip: wrote %llu bytes, planned %llu",
			     (unsigned long long)o->off, (unsigned long long)l->size);
	return rc;
}

int pf_zip_write(const pf_zw_record *recs, uint32_t n, uint32_t alignment,
		 pf_zw_sink_fn sink, void *ctx, pf_zw_layout *layout, pf_error *err)
{
	pf_zw_layout l;
	pf_zw_place *places;
	uint32_t *crcs;
	zw_out *o;
	int rc = -1;

	if (n == 0 || n == U32_MAX_ || !recs)
		return pf_fail(err, PF_E_LIMIT, 0, "zip: %u records (1 to 4294967294 allowed)", n);
	places = calloc(n, sizeof(*places));
	crcs = calloc(n, sizeof(*crcs));
	o = malloc(sizeof(*o));
	if (!places || !crcs || !o) {
		pf_fail(err, PF_E_NOMEM, 0, "zip: out of memory for %u records", n);
		goto out;
	}
	if (plan_into(recs, n, alignment, places, &l, err))
		goto out;
	o->sink = sink;
	o->ctx = ctx;
	o->off = 0;
	o->used = 0;
	o->err = err;
	rc = write_all(recs, n, places, &l, o, crcs);
	if (rc == 0 && layout)
		*layout = l;
out:
	free(places);
	free(crcs);
	free(o);
	return rc;
}
