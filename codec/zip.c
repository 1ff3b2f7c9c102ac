/*
 * zip.c - reads the zip container of torch.save / torch.jit.save files.
 *
 * The reader trusts nothing: every offset and size from the end records,
 * the central directory and the local headers is checked against the
 * bytes that are really there before it is used, and every table is
 * sized from a count that was first checked against the bytes it claims
 * to describe.  See zip.h for the list of checks and their error codes.
 *
 * Layout of an open: end records (EOCD, zip64 locator and record) ->
 * central directory entries (names, sizes, zip64 extra) -> shared prefix
 * -> name index (sorted; finds duplicates) -> local headers -> overlaps.
 */
#include "zip.h"

#include <stdbool.h>

#include <stdlib.h>
#include <string.h>

#define ZLIB_CONST /* lets next_in point into the read-only input */
#include <zlib.h>

#include "cursor.h"
#include "utf8.h"

/* Record signatures (little-endian "PK\x.\x."). */
#define SIG_LOCAL 0x04034b50u
#define SIG_CENTRAL 0x02014b50u
#define SIG_EOCD 0x06054b50u
#define SIG_Z64_EOCD 0x06064b50u
#define SIG_Z64_LOCATOR 0x07064b50u

/* Fixed sizes of the records, signature included. */
#define LOCAL_LEN 30u
#define CENTRAL_LEN 46u
#define EOCD_LEN 22u
#define Z64_LOCATOR_LEN 20u
#define Z64_EOCD_LEN 56u       /* up to and including the cd offset */
#define Z64_EOCD_MIN_SIZE 44u  /* its "size of record" field: length minus 12 */
#define MAX_COMMENT 65535u

#define FLAG_ENCRYPTED 0x0001u
#define FLAG_DESCRIPTOR 0x0008u   /* crc/sizes follow the data, local ones may be 0 */
#define FLAG_PATCHED 0x0020u      /* PKWARE patch data: not a plain record */
#define FLAG_STRONG_CRYPTO 0x0040u
#define FLAGS_REFUSED (FLAG_ENCRYPTED | FLAG_PATCHED | FLAG_STRONG_CRYPTO)

/* The most zlib takes or gives per call (uInt). */
#define ZLIB_CHUNK_MAX ((uInt)-1)

#define METHOD_STORED 0u
#define METHOD_DEFLATE 8u

#define EXTRA_ZIP64 0x0001u
#define U16_SENTINEL 0xFFFFu
#define U32_SENTINEL 0xFFFFFFFFu

typedef unsigned long long ull; /* for printf */

/* The input and the context every check needs to report an error. */
typedef struct zip_in {
	const uint8_t *buf;
	uint64_t len;
	uint64_t origin;
	const pf_limits *limits;
	pf_arena *arena;
	pf_error *err;
} zip_in;

/* What the end records say, after classic and zip64 were reconciled. */
typedef struct end_info {
	uint64_t n_entries;
	uint64_t cd_off, cd_size;
	uint64_t cd_limit; /* the central directory must end at or before this */
} end_info;

/* One end-record view: the classic EOCD or the zip64 EOCD record. */
typedef struct end_fields {
	uint64_t disk, cd_disk, n_disk, n_total, cd_size, cd_off;
} end_fields;

static int zip_fail(const zip_in *in, uint64_t pos, const char *what)
{
	return pf_fail(in->err, PF_E_ZIP, in->origin + pos, "%s", what);
}

/* True when [off, off+n) lies inside [0, limit); no overflow possible. */
static int fits(uint64_t off, uint64_t n, uint64_t limit)
{
	return off <= limit && n <= limit - off;
}

/* A cursor over buf[off, off+n) whose errors carry absolute offsets. */
static void sub_cursor(const zip_in *in, pf_cursor *c, uint64_t off, uint64_t n)
{
	pf_cursor_init(c, in->buf + off, n, in->origin + off);
}

/* The next n bytes of c, or a PF_E_ZIP error naming `what` (a record that
 * runs out of its region is a malformed zip, not a short input). */
static int take(const zip_in *in, pf_cursor *c, uint64_t n, const uint8_t **p, const char *what)
{
	if (pf_cursor_left(c) < n)
		return pf_fail(in->err, PF_E_ZIP, pf_cursor_abs(c),
			       "%s needs %llu bytes, %llu left in its region", what, (ull)n,
			       (ull)pf_cursor_left(c));
	return pf_cursor_take(c, n, p, in->err);
}

/* ---------------------------------------------------------------- end records */

/* Scan back from the end for "PK\5\6" whose comment length reaches exactly
 * to the end of the input; the last such record is the real one. */
static int find_eocd(const zip_in *in, uint64_t *eocd_off)
{
	uint64_t last, stop;

	if (in->len < EOCD_LEN)
		return pf_fail(in->err, PF_E_ZIP, in->origin + in->len,
			       "%llu bytes is too short for a zip end record", (ull)in->len);
	last = in->len - EOCD_LEN;
	stop = last > MAX_COMMENT ? last - MAX_COMMENT : 0;
	for (uint64_t p = last + 1; p-- > stop;) {
		const uint8_t *rec = in->buf + p; /* p <= last: 22 bytes are there */
		if (pf_le(rec, 4) == SIG_EOCD && pf_le(rec + 20, 2) == last - p) {
			*eocd_off = p;
			return 0;
		}
	}
	return pf_fail(in->err, PF_E_ZIP, in->origin + in->len,
		       "no end of central directory record (truncated or not a zip)");
}

static int read_classic_eocd(const zip_in *in, uint64_t off, end_fields *f)
{
	pf_cursor c;
	const uint8_t *p;

	sub_cursor(in, &c, off, EOCD_LEN);
	if (take(in, &c, EOCD_LEN, &p, "end of central directory record"))
		return -1;
	f->disk = pf_le(p + 4, 2);
	f->cd_disk = pf_le(p + 6, 2);
	f->n_disk = pf_le(p + 8, 2);
	f->n_total = pf_le(p + 10, 2);
	f->cd_size = pf_le(p + 12, 4);
	f->cd_off = pf_le(p + 16, 4);
	return 0;
}

/* The zip64 locator sits right before the classic EOCD when present. */
static int has_zip64_locator(const zip_in *in, uint64_t eocd_off)
{
	return eocd_off >= Z64_LOCATOR_LEN &&
	       pf_le(in->buf + eocd_off - Z64_LOCATOR_LEN, 4) == SIG_Z64_LOCATOR;
}

/* Follow the locator to the zip64 EOCD record, which every writer puts
 * immediately before the locator; *rec_off receives its offset. */
static int read_zip64_eocd(const zip_in *in, uint64_t eocd_off, end_fields *f, uint64_t *rec_off)
{
	uint64_t loc_off = eocd_off - Z64_LOCATOR_LEN, z_off, rec_size;
	pf_cursor c;
	const uint8_t *p;

	sub_cursor(in, &c, loc_off, Z64_LOCATOR_LEN);
	if (take(in, &c, Z64_LOCATOR_LEN, &p, "zip64 end locator"))
		return -1;
	if (pf_le(p + 4, 4) != 0 || pf_le(p + 16, 4) > 1)
		return zip_fail(in, loc_off, "zip64 locator names another disk (multi-disk zips are not read)");
	z_off = pf_le(p + 8, 8);
	if (z_off > loc_off || loc_off - z_off < Z64_EOCD_LEN)
		return zip_fail(in, loc_off, "zip64 locator points outside the space before it");

	sub_cursor(in, &c, z_off, loc_off - z_off);
	if (take(in, &c, Z64_EOCD_LEN, &p, "zip64 end record"))
		return -1;
	if (pf_le(p, 4) != SIG_Z64_EOCD)
		return zip_fail(in, z_off, "zip64 locator does not point at a zip64 end record");
	rec_size = pf_le(p + 4, 8);
	/* The record must end exactly where the locator starts: nothing hides between. */
	if (rec_size < Z64_EOCD_MIN_SIZE || rec_size != loc_off - z_off - 12)
		return zip_fail(in, z_off, "zip64 end record size does not reach its locator");
	f->disk = pf_le(p + 16, 4);
	f->cd_disk = pf_le(p + 20, 4);
	f->n_disk = pf_le(p + 24, 8);
	f->n_total = pf_le(p + 32, 8);
	f->cd_size = pf_le(p + 40, 8);
	f->cd_off = pf_le(p + 48, 8);
	*rec_off = z_off;
	return 0;
}

/* A classic field is either the real value or the sentinel that defers to
 * zip64; a sentinel without a zip64 record, or a real value the zip64
 * record contradicts, makes the archive ambiguous. */
static int reconcile_field(const zip_in *in, uint64_t eocd_off, const char *name, uint64_t classic,
			   uint64_t sentinel, const end_fields *z64, uint64_t z64_value, uint64_t *out)
{
	if (classic == sentinel) {
		if (!z64)
			return pf_fail(in->err, PF_E_ZIP, in->origin + eocd_off,
				       "end record %s is the zip64 sentinel but there is no zip64 record",
				       name);
		*out = z64_value;
		return 0;
	}
	if (z64 && classic != z64_value)
		return pf_fail(in->err, PF_E_ZIP, in->origin + eocd_off,
			       "end record %s %llu contradicts the zip64 record's %llu", name,
			       (ull)classic, (ull)z64_value);
	*out = classic;
	return 0;
}

static int reconcile_end(const zip_in *in, uint64_t eocd_off, const end_fields *cl,
			 const end_fields *z64, end_fields *out)
{
	const end_fields zero = {0, 0, 0, 0, 0, 0};
	const end_fields *z = z64 ? z64 : &zero;

	return reconcile_field(in, eocd_off, "disk number", cl->disk, U16_SENTINEL, z64, z->disk, &out->disk) ||
	       reconcile_field(in, eocd_off, "central directory disk", cl->cd_disk, U16_SENTINEL, z64,
			       z->cd_disk, &out->cd_disk) ||
	       reconcile_field(in, eocd_off, "entries on this disk", cl->n_disk, U16_SENTINEL, z64,
			       z->n_disk, &out->n_disk) ||
	       reconcile_field(in, eocd_off, "entry count", cl->n_total, U16_SENTINEL, z64, z->n_total,
			       &out->n_total) ||
	       reconcile_field(in, eocd_off, "central directory size", cl->cd_size, U32_SENTINEL, z64,
			       z->cd_size, &out->cd_size) ||
	       reconcile_field(in, eocd_off, "central directory offset", cl->cd_off, U32_SENTINEL, z64,
			       z->cd_off, &out->cd_off)
		       ? -1
		       : 0;
}

/* Fills z->eocd_off, z->zip64, z->cd_off, z->cd_size and *end. */
static int read_end(const zip_in *in, pf_zip *z, end_info *end)
{
	end_fields classic, z64, f;
	uint64_t z64_off = 0;

	if (find_eocd(in, &z->eocd_off) || read_classic_eocd(in, z->eocd_off, &classic))
		return -1;
	z->zip64 = has_zip64_locator(in, z->eocd_off);
	if (z->zip64 && read_zip64_eocd(in, z->eocd_off, &z64, &z64_off))
		return -1;
	if (reconcile_end(in, z->eocd_off, &classic, z->zip64 ? &z64 : NULL, &f))
		return -1;
	if (f.disk != 0 || f.cd_disk != 0 || f.n_disk != f.n_total)
		return zip_fail(in, z->eocd_off, "multi-disk zip (disk numbers or per-disk count differ)");

	end->n_entries = f.n_total;
	end->cd_off = f.cd_off;
	end->cd_size = f.cd_size;
	end->cd_limit = z->zip64 ? z64_off : z->eocd_off;
	if (!fits(end->cd_off, end->cd_size, end->cd_limit))
		return pf_fail(in->err, PF_E_ZIP, in->origin + z->eocd_off,
			       "central directory (%llu bytes at %llu) runs past the end records",
			       (ull)end->cd_size, (ull)end->cd_off);
	z->cd_off = end->cd_off;
	z->cd_size = end->cd_size;
	return 0;
}

/* The count decides the size of the tables: check it against the bytes of
 * the central directory (46 bytes per entry at least) and the limit first. */
static int check_entry_count(const zip_in *in, const pf_zip *z, const end_info *end)
{
	if (end->n_entries == 0)
		return zip_fail(in, z->eocd_off, "zip has no entries (torch needs a <prefix>/ entry)");
	if (end->n_entries > end->cd_size / CENTRAL_LEN)
		return pf_fail(in->err, PF_E_ZIP, in->origin + z->eocd_off,
			       "end record declares %llu entries but the central directory has room for %llu",
			       (ull)end->n_entries, (ull)(end->cd_size / CENTRAL_LEN));
	if (end->n_entries > in->limits->max_zip_entries || end->n_entries > UINT32_MAX)
		return pf_fail(in->err, PF_E_LIMIT, in->origin + z->eocd_off,
			       "%llu zip entries exceed max_zip_entries (%llu)", (ull)end->n_entries,
			       (ull)in->limits->max_zip_entries);
	return 0;
}

/* ---------------------------------------------------------------- names */

/* A ".." path component anywhere (a plain ".." inside a component, as in
 * "a..b", is harmless and allowed). */
static int has_dotdot_component(const uint8_t *s, uint32_t n)
{
	uint32_t start = 0;
	for (uint32_t i = 0; i <= n; i++) {
		if (i == n || s[i] == '/') {
			if (i - start == 2 && s[start] == '.' && s[start + 1] == '.')
				return 1;
			start = i + 1;
		}
	}
	return 0;
}

/* Names become lookup keys and may end up in paths and JSON: refuse
 * anything that could escape a directory or is not text. */
static int check_name(const zip_in *in, uint64_t pos, const uint8_t *s, uint32_t n)
{
	const char *why = NULL;

	if (n == 0)
		why = "empty entry name";
	else if (n > in->limits->max_name_len)
		return pf_fail(in->err, PF_E_LIMIT, in->origin + pos,
			       "entry name of %u bytes exceeds max_name_len (%llu)", n,
			       (ull)in->limits->max_name_len);
	else if (s[0] == '/')
		why = "absolute entry name";
	else if (memchr(s, '\0', n))
		why = "entry name contains a NUL byte";
	else if (memchr(s, '\\', n))
		why = "entry name contains a backslash";
	else if (has_dotdot_component(s, n))
		why = "entry name contains a \"..\" component";
	else if (!pf_utf8_valid(s, n))
		why = "entry name is not valid UTF-8";
	return why ? zip_fail(in, pos, why) : 0;
}

/* ---------------------------------------------------------------- central directory */

/* The raw 32-bit fields of a central entry that zip64 may replace. */
typedef struct central_raw {
	uint64_t usize, csize, header_off, disk;
} central_raw;

/* Find the zip64 extended-information field (id 0x0001) among the extra
 * fields; *data stays NULL when there is none. */
static int find_zip64_extra(const zip_in *in, const uint8_t *extra, uint64_t extra_len, uint64_t pos,
			    const uint8_t **data, uint64_t *data_len)
{
	pf_cursor c;
	const uint8_t *hdr, *body;

	pf_cursor_init(&c, extra, extra_len, in->origin + pos);
	*data = NULL;
	*data_len = 0;
	while (pf_cursor_left(&c) > 0) {
		uint64_t id, size;
		if (take(in, &c, 4, &hdr, "extra field header"))
			return -1;
		id = pf_le(hdr, 2);
		size = pf_le(hdr + 2, 2);
		if (take(in, &c, size, &body, "extra field"))
			return -1;
		if (id != EXTRA_ZIP64)
			continue;
		if (*data)
			return zip_fail(in, pos, "two zip64 extra fields in one entry");
		*data = body;
		*data_len = size;
	}
	return 0;
}

/* Replace each sentinel by the next 64-bit (disk: 32-bit) value of the
 * zip64 field, in the fixed order usize, csize, header offset, disk. */
static int apply_zip64_extra(const zip_in *in, uint64_t pos, const uint8_t *extra, uint64_t extra_len,
			     central_raw *r)
{
	const uint8_t *data, *p;
	uint64_t data_len;
	pf_cursor c;
	const char *what = "zip64 extra field (too short for the sentinels it must resolve)";

	int need = r->usize == U32_SENTINEL || r->csize == U32_SENTINEL ||
		   r->header_off == U32_SENTINEL || r->disk == U16_SENTINEL;
	if (!need)
		return 0;
	if (find_zip64_extra(in, extra, extra_len, pos, &data, &data_len))
		return -1;
	if (!data)
		return zip_fail(in, pos, "entry has a zip64 sentinel but no zip64 extra field");
	pf_cursor_init(&c, data, data_len, in->origin + pos);
	if (r->usize == U32_SENTINEL) {
		if (take(in, &c, 8, &p, what))
			return -1;
		r->usize = pf_le(p, 8);
	}
	if (r->csize == U32_SENTINEL) {
		if (take(in, &c, 8, &p, what))
			return -1;
		r->csize = pf_le(p, 8);
	}
	if (r->header_off == U32_SENTINEL) {
		if (take(in, &c, 8, &p, what))
			return -1;
		r->header_off = pf_le(p, 8);
	}
	if (r->disk == U16_SENTINEL) {
		if (take(in, &c, 4, &p, what))
			return -1;
		r->disk = pf_le(p, 4);
	}
	return 0;
}

/* Flags and method: refuse what we could only read wrongly. */
static int check_flags_method(const zip_in *in, uint64_t pos, const pf_zip_entry *e)
{
	if (e->flags & FLAGS_REFUSED)
		return pf_fail(in->err, PF_E_ZIP, in->origin + pos,
			       "entry %s is encrypted or patch data (flags 0x%04x)", e->name, e->flags);
	if (e->method != METHOD_STORED && e->method != METHOD_DEFLATE)
		return pf_fail(in->err, PF_E_UNSUPPORTED, in->origin + pos,
			       "entry %s uses compression method %u (only stored and deflate are read)",
			       e->name, e->method);
	if (e->method == METHOD_STORED && e->csize != e->usize)
		return pf_fail(in->err, PF_E_ZIP, in->origin + pos,
			       "stored entry %s has compressed size %llu but size %llu", e->name,
			       (ull)e->csize, (ull)e->usize);
	return 0;
}

/* One central directory entry at the cursor; *pos receives its offset
 * relative to the zip (for later error messages). */
static int read_central_entry(const zip_in *in, pf_cursor *c, uint64_t cd_off, pf_zip_entry *e,
			      uint64_t *pos)
{
	const uint8_t *h, *name, *extra, *comment;
	uint32_t name_len;
	uint64_t extra_len, comment_len;
	central_raw r;

	*pos = cd_off + c->pos;
	if (take(in, c, CENTRAL_LEN, &h, "central directory entry"))
		return -1;
	if (pf_le(h, 4) != SIG_CENTRAL)
		return zip_fail(in, *pos, "bad central directory entry signature");
	e->flags = (uint16_t)pf_le(h + 8, 2);
	e->method = (uint16_t)pf_le(h + 10, 2);
	e->crc32 = (uint32_t)pf_le(h + 16, 4);
	r.csize = pf_le(h + 20, 4);
	r.usize = pf_le(h + 24, 4);
	name_len = (uint32_t)pf_le(h + 28, 2);
	extra_len = pf_le(h + 30, 2);
	comment_len = pf_le(h + 32, 2);
	r.disk = pf_le(h + 34, 2);
	r.header_off = pf_le(h + 42, 4);
	if (take(in, c, name_len, &name, "entry name") || take(in, c, extra_len, &extra, "extra fields") ||
	    take(in, c, comment_len, &comment, "entry comment"))
		return -1;
	if (check_name(in, *pos, name, name_len) || apply_zip64_extra(in, *pos, extra, extra_len, &r))
		return -1;
	if (r.disk != 0)
		return zip_fail(in, *pos, "entry lives on another disk");
	e->name = pf_arena_strndup(in->arena, name, name_len);
	if (!e->name)
		return pf_fail(in->err, PF_E_NOMEM, in->origin + *pos, "out of memory for an entry name");
	e->name_len = name_len;
	e->csize = r.csize;
	e->usize = r.usize;
	e->header_off = r.header_off;
	return check_flags_method(in, *pos, e);
}

/* All entries; the entries must fill the central directory exactly, so a
 * count that is too small is caught as well as one that is too large. */
static int read_central_directory(const zip_in *in, pf_zip *z, const end_info *end, uint64_t *pos)
{
	pf_cursor c;

	sub_cursor(in, &c, end->cd_off, end->cd_size);
	for (uint32_t i = 0; i < z->n_entries; i++)
		if (read_central_entry(in, &c, end->cd_off, &z->entries[i], &pos[i]))
			return -1;
		else
			z->entries[i].cd_entry_off = pos[i];
	if (pf_cursor_left(&c) != 0)
		return pf_fail(in->err, PF_E_ZIP, pf_cursor_abs(&c),
			       "%llu bytes left in the central directory after the %u declared entries",
			       (ull)pf_cursor_left(&c), z->n_entries);
	return 0;
}

/* ---------------------------------------------------------------- prefix and index */

/* torch takes the prefix from the first entry and requires it of all. */
static int check_prefix(const zip_in *in, pf_zip *z, const uint64_t *pos)
{
	const pf_zip_entry *first = &z->entries[0];
	const char *slash = memchr(first->name, '/', first->name_len);
	size_t plen;

	if (!slash)
		return pf_fail(in->err, PF_E_ZIP, in->origin + pos[0],
			       "first entry %s has no <prefix>/ folder", first->name);
	plen = (size_t)(slash - first->name);
	z->prefix = pf_arena_strndup(in->arena, first->name, plen);
	if (!z->prefix)
		return pf_fail(in->err, PF_E_NOMEM, in->origin + pos[0], "out of memory for the prefix");
	for (uint32_t i = 1; i < z->n_entries; i++) {
		const pf_zip_entry *e = &z->entries[i];
		if (e->name_len <= plen || memcmp(e->name, z->prefix, plen) != 0 || e->name[plen] != '/')
			return pf_fail(in->err, PF_E_ZIP, in->origin + pos[i],
				       "entry %s is outside the archive prefix %s/", e->name, z->prefix);
	}
	return 0;
}

typedef struct name_key {
	const char *name;
	uint32_t index;
} name_key;

static int compare_name_keys(const void *a, const void *b)
{
	const name_key *x = a, *y = b;
	int c = strcmp(x->name, y->name); /* names hold no NUL: strcmp sees them whole */
	if (c)
		return c;
	return x->index < y->index ? -1 : x->index > y->index;
}

/* z->sorted: indices in strcmp order of names; equal neighbours are
 * duplicates (the later central entry is reported). */
static int build_index(const zip_in *in, pf_zip *z, const uint64_t *pos)
{
	name_key *keys = malloc((size_t)z->n_entries * sizeof(*keys));
	int rc = 0;

	z->sorted = malloc((size_t)z->n_entries * sizeof(*z->sorted));
	if (!keys || !z->sorted) {
		free(keys);
		return pf_fail(in->err, PF_E_NOMEM, in->origin + z->cd_off, "out of memory for the name index");
	}
	for (uint32_t i = 0; i < z->n_entries; i++)
		keys[i] = (name_key){z->entries[i].name, i};
	qsort(keys, z->n_entries, sizeof(*keys), compare_name_keys);
	for (uint32_t i = 0; i < z->n_entries; i++) {
		z->sorted[i] = keys[i].index;
		if (i > 0 && strcmp(keys[i - 1].name, keys[i].name) == 0) {
			rc = pf_fail(in->err, PF_E_ZIP, in->origin + pos[keys[i].index],
				     "duplicate entry name %s", keys[i].name);
			break;
		}
	}
	free(keys);
	return rc;
}

/* ---------------------------------------------------------------- local headers */

/* With the data-descriptor flag writers leave local crc/sizes 0 (torch) or
 * copy them; without it they must equal the central values (a size may be
 * the zip64 sentinel, resolved by a local extra we do not need). */
static int local_value_ok(uint64_t local, uint64_t central, int descriptor, int may_be_sentinel)
{
	if (local == central)
		return 1;
	if (descriptor && local == 0)
		return 1;
	return may_be_sentinel && local == U32_SENTINEL;
}

static int check_local_fields(const zip_in *in, const pf_zip_entry *e, const uint8_t *h)
{
	uint64_t flags = pf_le(h + 6, 2);
	int descriptor = (flags & FLAG_DESCRIPTOR) != 0;
	const char *why = NULL;

	if (pf_le(h, 4) != SIG_LOCAL)
		why = "bad local header signature";
	else if (flags & FLAGS_REFUSED)
		why = "local header says encrypted or patch data";
	else if (pf_le(h + 8, 2) != e->method)
		why = "local header method differs from the central directory";
	else if (!local_value_ok(pf_le(h + 14, 4), e->crc32, descriptor, 0))
		why = "local header CRC-32 differs from the central directory";
	else if (!local_value_ok(pf_le(h + 18, 4), e->csize, descriptor, 1) ||
		 !local_value_ok(pf_le(h + 22, 4), e->usize, descriptor, 1))
		why = "local header sizes differ from the central directory";
	if (why)
		return pf_fail(in->err, PF_E_ZIP, in->origin + e->header_off, "%s: %s", e->name, why);
	return 0;
}

/* The local header must lie before the central directory, name the same
 * record, and leave room for csize record bytes before the directory. */
static int check_local(const zip_in *in, pf_zip_entry *e, uint64_t cd_off)
{
	pf_cursor c;
	const uint8_t *h, *name, *extra;
	uint64_t name_len, extra_len;

	if (!fits(e->header_off, LOCAL_LEN, cd_off))
		return pf_fail(in->err, PF_E_ZIP, in->origin + cd_off,
			       "local header of %s at %llu is not before the central directory", e->name,
			       (ull)e->header_off);
	sub_cursor(in, &c, e->header_off, cd_off - e->header_off);
	if (take(in, &c, LOCAL_LEN, &h, "local header") || check_local_fields(in, e, h))
		return -1;
	name_len = pf_le(h + 26, 2);
	extra_len = pf_le(h + 28, 2);
	if (take(in, &c, name_len, &name, "local name") || take(in, &c, extra_len, &extra, "local extra"))
		return -1;
	if (name_len != e->name_len || memcmp(name, e->name, name_len) != 0)
		return pf_fail(in->err, PF_E_ZIP, in->origin + e->header_off,
			       "local header name differs from central name %s", e->name);
	e->data_off = e->header_off + LOCAL_LEN + name_len + extra_len;
	if (!fits(e->data_off, e->csize, cd_off))
		return pf_fail(in->err, PF_E_ZIP, in->origin + e->data_off,
			       "record %s (%llu bytes) runs into the central directory or past the end",
			       e->name, (ull)e->csize);
	return 0;
}

typedef struct span {
	uint64_t start, end;
	uint32_t index;
} span;

static int compare_spans(const void *a, const void *b)
{
	const span *x = a, *y = b;
	if (x->start != y->start)
		return x->start < y->start ? -1 : 1;
	return x->index < y->index ? -1 : x->index > y->index;
}

/* Records [local header, end of data) sorted by offset must not overlap
 * ("quoted" overlaps make zip bombs and ambiguous rewrites), and the first
 * starts at 0: torch tells a zip by its first 4 bytes, so nothing may
 * precede it (prefix data, polyglots, a spanning marker). */
static int check_overlaps(const zip_in *in, const pf_zip *z)
{
	span *s = malloc((size_t)z->n_entries * sizeof(*s));
	int rc = 0;

	if (!s)
		return pf_fail(in->err, PF_E_NOMEM, in->origin + z->cd_off, "out of memory for the overlap check");
	for (uint32_t i = 0; i < z->n_entries; i++) {
		const pf_zip_entry *e = &z->entries[i];
		s[i] = (span){e->header_off, e->data_off + e->csize, i}; /* no overflow: checked < cd_off */
	}
	qsort(s, z->n_entries, sizeof(*s), compare_spans);
	if (s[0].start != 0)
		rc = pf_fail(in->err, PF_E_ZIP, in->origin,
			     "%llu bytes before the first local header", (ull)s[0].start);
	for (uint32_t i = 1; i < z->n_entries && rc == 0; i++)
		if (s[i].start < s[i - 1].end)
			rc = pf_fail(in->err, PF_E_ZIP, in->origin + s[i].start,
				     "record %s overlaps record %s",
				     z->entries[s[i].index].name, z->entries[s[i - 1].index].name);
	free(s);
	return rc;
}

/* ---------------------------------------------------------------- open / free */

static int open_entries(const zip_in *in, pf_zip *z, const end_info *end, bool locals)
{
	uint64_t *pos;
	int rc = 0;

	z->n_entries = (uint32_t)end->n_entries; /* checked <= UINT32_MAX */
	z->entries = calloc(z->n_entries, sizeof(*z->entries));
	pos = malloc((size_t)z->n_entries * sizeof(*pos));
	if (!z->entries || !pos) {
		free(pos);
		return pf_fail(in->err, PF_E_NOMEM, in->origin + end->cd_off,
			       "out of memory for %u zip entries", z->n_entries);
	}
	if (read_central_directory(in, z, end, pos) || check_prefix(in, z, pos) || build_index(in, z, pos))
		rc = -1;
	for (uint32_t i = 0; i < z->n_entries && rc == 0 && locals; i++)
		rc = check_local(in, &z->entries[i], end->cd_off);
	if (rc == 0 && locals)
		rc = check_overlaps(in, z);
	free(pos);
	return rc;
}

static int open_zip(pf_zip *z, const uint8_t *buf, uint64_t len, uint64_t origin, const pf_limits *limits,
		    pf_arena *arena, pf_error *err, bool locals)
{
	zip_in in = {buf, len, origin, limits, arena, err};
	end_info end = {0, 0, 0, 0};

	memset(z, 0, sizeof(*z));
	if (read_end(&in, z, &end) || check_entry_count(&in, z, &end) || open_entries(&in, z, &end, locals)) {
		pf_zip_free(z);
		return -1;
	}
	return 0;
}

int pf_zip_open(pf_zip *z, const uint8_t *buf, uint64_t len, uint64_t origin,
		const pf_limits *limits, pf_arena *arena, pf_error *err)
{
	return open_zip(z, buf, len, origin, limits, arena, err, true);
}

int pf_zip_open_directory(pf_zip *z, const uint8_t *buf, uint64_t len, const pf_limits *limits,
			  pf_arena *arena, pf_error *err)
{
	return open_zip(z, buf, len, 0, limits, arena, err, false);
}

void pf_zip_free(pf_zip *z)
{
	if (!z)
		return;
	free(z->entries);
	free(z->sorted);
	memset(z, 0, sizeof(*z));
}

/* ---------------------------------------------------------------- lookup */

typedef int (*name_cmp)(const void *key, const char *name);

static int compare_full(const void *key, const char *name)
{
	return strcmp((const char *)key, name);
}

typedef struct rel_key {
	const char *prefix, *rel;
} rel_key;

/* strcmp of "<prefix>/<rel>" against name, without building the string. */
static int compare_rel(const void *key, const char *name)
{
	const rel_key *k = key;
	const char *p = k->prefix;

	for (; *p; p++, name++)
		if (*p != *name)
			return (unsigned char)*p < (unsigned char)*name ? -1 : 1;
	if (*name != '/')
		return (unsigned char)'/' < (unsigned char)*name ? -1 : 1;
	return strcmp(k->rel, name + 1);
}

static const pf_zip_entry *search(const pf_zip *z, name_cmp cmp, const void *key)
{
	uint32_t lo = 0, hi;

	if (!z || !z->sorted)
		return NULL;
	hi = z->n_entries;
	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		const pf_zip_entry *e = &z->entries[z->sorted[mid]];
		int c = cmp(key, e->name);
		if (c == 0)
			return e;
		if (c < 0)
			hi = mid;
		else
			lo = mid + 1;
	}
	return NULL;
}

const pf_zip_entry *pf_zip_find(const pf_zip *z, const char *name)
{
	return name ? search(z, compare_full, name) : NULL;
}

const pf_zip_entry *pf_zip_find_rel(const pf_zip *z, const char *rel)
{
	rel_key k;

	if (!z || !z->prefix || !rel)
		return NULL;
	k.prefix = z->prefix;
	k.rel = rel;
	return search(z, compare_rel, &k);
}

/* ---------------------------------------------------------------- data */

/* Refuse a deflated record before allocating if its declared size breaks
 * a limit; csize 0 allows only an empty output (ratio times zero). */
static int check_inflate_limits(const pf_zip_entry *e, uint64_t at, const pf_limits *limits,
				const pf_arena *arena, pf_error *err)
{
	uint64_t ratio = limits->max_inflate_ratio;

	if (e->usize > limits->max_inflate)
		return pf_fail(err, PF_E_LIMIT, at, "%s declares %llu bytes, over max_inflate (%llu)",
			       e->name, (ull)e->usize, (ull)limits->max_inflate);
	if (e->csize <= UINT64_MAX / (ratio ? ratio : 1) && e->usize > e->csize * ratio)
		return pf_fail(err, PF_E_LIMIT, at,
			       "%s declares %llu bytes from %llu, over max_inflate_ratio (%llu)", e->name,
			       (ull)e->usize, (ull)e->csize, (ull)ratio);
	if (arena->used > limits->max_decoded || e->usize > limits->max_decoded - arena->used)
		return pf_fail(err, PF_E_LIMIT, at, "%s: %llu more decoded bytes exceed max_decoded (%llu)",
			       e->name, (ull)e->usize, (ull)limits->max_decoded);
	if (e->usize > SIZE_MAX)
		return pf_fail(err, PF_E_LIMIT, at, "%s is too large for this machine", e->name);
	return 0;
}

static void feed_input(z_stream *zs, uint64_t *in_left)
{
	uInt chunk;
	if (zs->avail_in != 0 || *in_left == 0)
		return;
	chunk = *in_left > ZLIB_CHUNK_MAX ? ZLIB_CHUNK_MAX : (uInt)*in_left;
	zs->avail_in = chunk;
	*in_left -= chunk;
}

/* Give zlib the next piece of dst; once dst is full, a 1-byte spill
 * buffer: any byte landing there means the record is longer than declared. */
static void feed_output(z_stream *zs, uint64_t *out_left, uint8_t *spill, int *spilling)
{
	uInt chunk;
	if (zs->avail_out != 0)
		return;
	if (*out_left == 0) {
		zs->next_out = spill;
		zs->avail_out = 1;
		*spilling = 1;
		return;
	}
	chunk = *out_left > ZLIB_CHUNK_MAX ? ZLIB_CHUNK_MAX : (uInt)*out_left;
	zs->avail_out = chunk;
	*out_left -= chunk;
}

static int inflate_error(z_stream *zs, int rc, uint64_t at, const char *name, pf_error *err)
{
	if (rc == Z_MEM_ERROR)
		return pf_fail(err, PF_E_NOMEM, at, "out of memory inflating %s", name);
	if (rc == Z_BUF_ERROR)
		return pf_fail(err, PF_E_INFLATE, at, "deflate stream of %s ends early", name);
	return pf_fail(err, PF_E_INFLATE, at, "corrupt deflate stream in %s: %s", name,
		       zs->msg ? zs->msg : "error");
}

/* Raw-inflate src[0..csize) into dst[0..usize): the stream must end
 * exactly at the end of both. */
static int inflate_exact(const pf_zip_entry *e, const uint8_t *src, uint8_t *dst, uint64_t at,
			 pf_error *err)
{
	z_stream zs;
	uint64_t in_left = e->csize, out_left = e->usize, produced;
	uint8_t spill;
	int spilling = 0, rc;

	memset(&zs, 0, sizeof(zs));
	rc = inflateInit2(&zs, -MAX_WBITS);
	if (rc != Z_OK)
		return inflate_error(&zs, rc, at, e->name, err);
	zs.next_in = src;
	zs.next_out = dst;
	for (;;) {
		feed_input(&zs, &in_left);
		feed_output(&zs, &out_left, &spill, &spilling);
		rc = inflate(&zs, Z_NO_FLUSH);
		if (spilling && zs.avail_out == 0) {
			inflateEnd(&zs);
			return pf_fail(err, PF_E_INFLATE, at, "%s inflates to more than the declared %llu bytes",
				       e->name, (ull)e->usize);
		}
		if (rc == Z_STREAM_END)
			break;
		if (rc != Z_OK) {
			inflate_error(&zs, rc, at, e->name, err);
			inflateEnd(&zs);
			return -1;
		}
	}
	produced = spilling ? e->usize : e->usize - out_left - zs.avail_out;
	in_left += zs.avail_in;
	inflateEnd(&zs);
	if (produced != e->usize)
		return pf_fail(err, PF_E_INFLATE, at, "%s inflates to %llu bytes, declared %llu", e->name,
			       (ull)produced, (ull)e->usize);
	if (in_left != 0)
		return pf_fail(err, PF_E_INFLATE, at, "%s has %llu bytes after its deflate stream", e->name,
			       (ull)in_left);
	return 0;
}

static int inflate_entry(const pf_zip_entry *e, const uint8_t *src, uint64_t at, const pf_limits *limits,
			 pf_arena *arena, uint8_t **out, pf_error *err)
{
	uint8_t *dst;
	uLong crc;

	if (check_inflate_limits(e, at, limits, arena, err))
		return -1;
	dst = pf_arena_alloc(arena, (size_t)e->usize);
	if (!dst)
		return pf_fail(err, PF_E_NOMEM, at, "out of memory for %llu inflated bytes of %s",
			       (ull)e->usize, e->name);
	if (inflate_exact(e, src, dst, at, err))
		return -1;
	crc = crc32_z(0L, dst, (z_size_t)e->usize);
	if (crc != e->crc32)
		return pf_fail(err, PF_E_INFLATE, at, "%s: CRC-32 %08lx, central directory says %08lx", e->name,
			       (unsigned long)crc, (unsigned long)e->crc32);
	*out = dst;
	return 0;
}

int pf_zip_data(const pf_zip_entry *e, const uint8_t *buf, uint64_t len, uint64_t origin,
		const pf_limits *limits, pf_arena *arena,
		const uint8_t **out, uint64_t *out_len, bool *decoded, pf_error *err)
{
	uint64_t at = origin + e->data_off;
	uint8_t *inflated = NULL;

	*out = NULL;
	*out_len = 0;
	*decoded = false;
	/* Re-checked here: the entry may be used with another buffer than it was opened on. */
	if (!fits(e->data_off, e->csize, len))
		return pf_fail(err, PF_E_ZIP, at, "record %s lies outside the input", e->name);
	if (e->method == METHOD_STORED) {
		if (e->csize != e->usize)
			return pf_fail(err, PF_E_ZIP, at, "stored record %s has two sizes", e->name);
		*out = buf + e->data_off;
		*out_len = e->usize;
		return 0;
	}
	if (e->method != METHOD_DEFLATE)
		return pf_fail(err, PF_E_UNSUPPORTED, at, "%s uses compression method %u", e->name, e->method);
	if (inflate_entry(e, buf + e->data_off, at, limits, arena, &inflated, err))
		return -1;
	*out = inflated;
	*out_len = e->usize;
	*decoded = true;
	return 0;
}
