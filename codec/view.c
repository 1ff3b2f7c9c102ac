/*
 * view.c - the directory tree a model shows, and its index-cache encoding
 * (see view.h).
 *
 * Building: entry 0 is the model directory, 1..3 are meta.json, device and
 * globals, then every tree file in walk order, each preceded by the
 * directories of its path that were not made yet.  Directories are found by
 * (parent entry, name) in a hash map, so building is linear in the number
 * of path components.
 *
 * Cache format (msgpack, format version 2), one top-level array:
 *
 *   [ "picklefs-index", 2,
 *     [dev, ino, size, mtime_sec, mtime_nsec],
 *     [ entry, ... ],
 *     [ [index, mtime_sec, mtime_nsec], ... ] ]
 *
 * The last list holds the entries that have a modification time of their
 * own (changed by a commit through the mount), in increasing index order.
 *
 * and each entry an array of 11 fields:
 *
 *   [parent, name (str), kind, size, link, tensor, header (bin),
 *    data_off (int), data_len, needs_model (bool), text (bin)]
 *
 * Fields that do not apply to a kind hold fixed values (link = own index,
 * tensor 0, empty header and text, data_off -1, data_len 0, false), and
 * decoding insists on them, so that one view has exactly one encoding.
 *
 * Decoding trusts nothing: before msgpack-c sees the buffer, a flat scan
 * (no recursion: one counter of pending items) checks that every array and
 * map count and every str/bin/ext length fits in the bytes that remain, so
 * msgpack-c never allocates more than a small multiple of the buffer size.
 * Then every field is type- and range-checked (see decode_entry), the
 * .npy header is parsed and must be exactly the header pf_npy_header
 * writes for it, and sizes must agree with header and data.  Everything
 * kept is copied into the view's arena; the msgpack zone is freed before
 * returning.
 */
#include "view.h"

#include "dtype.h"
#include "hashmap.h"
#include "npy.h"

#include <msgpack.h>
#include <stdlib.h>
#include <string.h>

#define VIEW_MAGIC "picklefs-index"
#define VIEW_MAGIC_LEN (sizeof(VIEW_MAGIC) - 1)
#define VIEW_VERSION 2
#define VIEW_FIELDS 11
#define VIEW_KEY_FIELDS 5
#define VIEW_NAME_MAX 255
#define VIEW_HEADER_MAX 4096   /* > the longest header pf_npy_header writes */
#define NO_ENTRY UINT32_MAX

/* entries 1..3: pf_meta_file_names, in order */
static const pf_ventry_kind text_kinds[4] = {PF_VE_DIR, PF_VE_META, PF_VE_DEVICE, PF_VE_GLOBALS};

/* ------------------------------------------------------------------ entries */

static void view_init(pf_view *v)
{
	v->e = NULL;
	v->n = 0;
	v->cap = 0;
	pf_arena_init(&v->arena);
}

void pf_view_free(pf_view *v)
{
	if (!v)
		return;
	free(v->e);
	pf_arena_free(&v->arena);
	view_init(v);
}

static int view_reserve(pf_view *v, uint32_t want, pf_error *err)
{
	const size_t max = SIZE_MAX / sizeof(pf_ventry);
	uint32_t cap;
	pf_ventry *e;

	if (want <= v->cap)
		return 0;
	if (want >= NO_ENTRY)
		return pf_fail(err, PF_E_LIMIT, 0, "view: too many entries");
	cap = v->cap ? v->cap : 16;
	while (cap < want)
		cap = cap > NO_ENTRY / 2 ? NO_ENTRY - 1 : cap * 2;
	if (cap > max)
		return pf_fail(err, PF_E_NOMEM, 0, "view: out of memory");
	e = realloc(v->e, (size_t)cap * sizeof(*e));
	if (!e)
		return pf_fail(err, PF_E_NOMEM, 0, "view: out of memory");
	v->e = e;
	v->cap = cap;
	return 0;
}

/* "parent/name", or name under entry 0, or "" for entry 0 (arena). */
static const char *make_path(pf_view *v, uint32_t parent, uint32_t self, const char *name,
			     size_t name_len)
{
	const char *pp;
	size_t pl;
	char *s;

	if (self == 0)
		return pf_arena_strndup(&v->arena, "", 0);
	if (parent == 0)
		return pf_arena_strndup(&v->arena, name, name_len);
	pp = v->e[parent].path;
	pl = strlen(pp);
	if (pl > SIZE_MAX - name_len - 2)
		return NULL;
	s = pf_arena_alloc(&v->arena, pl + name_len + 2);
	if (!s)
		return NULL;
	memcpy(s, pp, pl);
	s[pl] = '/';
	memcpy(s + pl + 1, name, name_len);
	s[pl + 1 + name_len] = '\0';
	return s;
}

/* Append an entry with the fixed values of fields that do not apply yet. */
static pf_ventry *view_add(pf_view *v, uint32_t parent, const char *name, size_t name_len,
			   pf_ventry_kind kind, pf_error *err)
{
	pf_ventry *e;
	uint32_t i = v->n;

	if (view_reserve(v, i + 1, err))
		return NULL;
	e = &v->e[i];
	memset(e, 0, sizeof(*e));
	e->parent = parent;
	e->kind = kind;
	e->link = i;
	e->data_off = -1;
	e->name = pf_arena_strndup(&v->arena, name, name_len);
	e->path = e->name ? make_path(v, parent, i, name, name_len) : NULL;
	if (!e->path) {
		pf_fail(err, PF_E_NOMEM, 0, "view: out of memory");
		return NULL;
	}
	v->n = i + 1;
	return e;
}

/* A component a directory may hold: non-empty, no '/' or NUL, not "." or "..". */
static bool name_ok(const char *s, size_t n)
{
	if (n == 0 || n > VIEW_NAME_MAX)
		return false;
	if ((n == 1 && s[0] == '.') || (n == 2 && s[0] == '.' && s[1] == '.'))
		return false;
	return memchr(s, '/', n) == NULL && memchr(s, '\0', n) == NULL;
}

int64_t pf_view_child(const pf_view *v, uint32_t dir, const char *name)
{
	/* Children come after their directory (parent < index), so start there. */
	if (!v || !name || dir >= v->n || v->e[dir].kind != PF_VE_DIR)
		return -1;
	for (uint32_t i = dir + 1; i < v->n; i++)
		if (v->e[i].parent == dir && strcmp(v->e[i].name, name) == 0)
			return i;
	return -1;
}

/* ------------------------------------------------------------------ child index */

/* (parent, name) -> entry, chained through next[] for equal hashes. */
typedef struct child_index {
	pf_hashmap map;
	uint32_t *next;
	uint32_t cap;
} child_index;

static void index_init(child_index *ix)
{
	pf_hashmap_init(&ix->map);
	ix->next = NULL;
	ix->cap = 0;
}

static void index_free(child_index *ix)
{
	pf_hashmap_free(&ix->map);
	free(ix->next);
	index_init(ix);
}

static uint64_t child_key(uint32_t parent, const char *name, size_t n)
{
	return pf_hash_bytes(name, n, (uint64_t)parent + 1);
}

static int64_t index_find(const child_index *ix, const pf_view *v, uint32_t parent,
			  const char *name, size_t n)
{
	uint32_t i;

	if (!pf_hashmap_get(&ix->map, child_key(parent, name, n), &i))
		return -1;
	for (; i != NO_ENTRY; i = ix->next[i]) {
		const pf_ventry *e = &v->e[i];
		if (e->parent == parent && strncmp(e->name, name, n) == 0 && e->name[n] == '\0')
			return i;
	}
	return -1;
}

/* Index entry i (its parent and name are set); the caller checked it is new. */
static int index_add(child_index *ix, const pf_view *v, uint32_t i, pf_error *err)
{
	const pf_ventry *e = &v->e[i];
	uint64_t key = child_key(e->parent, e->name, strlen(e->name));
	uint32_t head;

	if (i >= ix->cap) {
		uint32_t cap = v->cap;
		uint32_t *next = realloc(ix->next, (size_t)cap * sizeof(*next));
		if (!next)
			return pf_fail(err, PF_E_NOMEM, 0, "view: out of memory");
		ix->next = next;
		ix->cap = cap;
	}
	ix->next[i] = pf_hashmap_get(&ix->map, key, &head) ? head : NO_ENTRY;
	if (!pf_hashmap_put(&ix->map, key, i))
		return pf_fail(err, PF_E_NOMEM, 0, "view: out of memory");
	return 0;
}

/* ------------------------------------------------------------------ build */

static int add_text(pf_view *v, uint32_t idx, const char *text, pf_error *err)
{
	const char *name = pf_meta_file_names[idx - 1];
	size_t len = text ? strlen(text) : 0;
	pf_ventry *e = view_add(v, 0, name, strlen(name), text_kinds[idx], err);

	if (!e)
		return -1;
	e->text = pf_arena_strndup(&v->arena, text ? text : "", len);
	if (!e->text)
		return pf_fail(err, PF_E_NOMEM, 0, "view: out of memory");
	e->size = len;
	return 0;
}

static int build_top(const pf_tree *t, pf_view *v, child_index *ix, pf_error *err)
{
	char *meta;
	int rc;

	if (!view_add(v, 0, "", 0, PF_VE_DIR, err))
		return -1;
	meta = pf_tree_meta_text(t);
	if (!meta)
		return pf_fail(err, PF_E_NOMEM, 0, "view: meta.json could not be written");
	rc = add_text(v, 1, meta, err);
	free(meta);
	if (rc || add_text(v, 2, t->device_text, err) || add_text(v, 3, t->globals_text, err))
		return -1;
	for (uint32_t i = 1; i <= 3; i++)
		if (index_add(ix, v, i, err))
			return -1;
	return 0;
}

/* Directory entry for component name[0..n) of dir, made when missing. */
static int64_t dir_of(pf_view *v, child_index *ix, uint32_t dir, const char *name, size_t n,
		      const char *path, pf_error *err)
{
	int64_t got = index_find(ix, v, dir, name, n);

	if (got >= 0) {
		if (v->e[got].kind != PF_VE_DIR)
			return pf_fail(err, PF_E_FORMAT, 0, "view: %s: a component is a file", path);
		return got;
	}
	if (!view_add(v, dir, name, n, PF_VE_DIR, err) || index_add(ix, v, v->n - 1, err))
		return -1;
	return v->n - 1;
}

/* The fields of a first (non-link) tensor entry. */
static int fill_tensor(const pf_model *m, const pf_tensor *ts, pf_view *v, pf_ventry *e,
		       pf_error *err)
{
	size_t hlen;
	char *h;

	if (pf_npy_header(NULL, 0, &hlen, ts->descr, ts->shape, ts->ndim, ts->fortran, err))
		return -1;
	h = pf_arena_alloc(&v->arena, hlen);
	if (!h)
		return pf_fail(err, PF_E_NOMEM, 0, "view: out of memory");
	if (pf_npy_header(h, hlen, &hlen, ts->descr, ts->shape, ts->ndim, ts->fortran, err))
		return -1;
	if (ts->nbytes > UINT64_MAX - hlen)
		return pf_fail(err, PF_E_FORMAT, 0, "view: %s: size overflows", e->path);
	e->header = (const uint8_t *)h;
	e->header_len = (uint32_t)hlen;
	e->data_len = ts->nbytes;
	e->size = hlen + ts->nbytes;
	if (ts->layout == PF_TL_CONTIGUOUS && ts->file_off >= 0) {
		if ((uint64_t)ts->file_off > m->file_len || ts->nbytes > m->file_len - (uint64_t)ts->file_off)
			return pf_fail(err, PF_E_FORMAT, 0, "view: %s: data past the end of the file",
				       e->path);
		e->data_off = ts->file_off;
		e->needs_model = false;
	} else {
		e->data_off = -1;
		e->needs_model = true;
	}
	return 0;
}

/* Entry fi of the tree: its missing directories, then the tensor file. */
static int build_file(const pf_model *m, const pf_tree *t, uint32_t fi, pf_view *v,
		      child_index *ix, uint32_t *file_entry, pf_error *err)
{
	const pf_file *f = &t->files[fi];
	const char *p = f->path, *slash;
	uint32_t dir = 0;
	pf_ventry *e;

	if (f->tensor >= m->n_tensors)
		return pf_fail(err, PF_E_FORMAT, 0, "view: %s: no such tensor", p);
	while ((slash = strchr(p, '/')) != NULL) {
		size_t n = (size_t)(slash - p);
		if (!name_ok(p, n))
			return pf_fail(err, PF_E_FORMAT, 0, "view: %s: bad path component", f->path);
		int64_t d = dir_of(v, ix, dir, p, n, f->path, err);
		if (d < 0)
			return -1;
		dir = (uint32_t)d;
		p = slash + 1;
	}
	if (!name_ok(p, strlen(p)))
		return pf_fail(err, PF_E_FORMAT, 0, "view: %s: bad file name", f->path);
	if (index_find(ix, v, dir, p, strlen(p)) >= 0)
		return pf_fail(err, PF_E_FORMAT, 0, "view: %s: path used twice", f->path);
	e = view_add(v, dir, p, strlen(p), PF_VE_TENSOR, err);
	if (!e || index_add(ix, v, v->n - 1, err))
		return -1;
	file_entry[fi] = v->n - 1;
	e->tensor = f->tensor;
	if (f->link_of < 0)
		return fill_tensor(m, &m->tensors[f->tensor], v, e, err);
	if ((uint32_t)f->link_of >= fi || t->files[f->link_of].tensor != f->tensor)
		return pf_fail(err, PF_E_FORMAT, 0, "view: %s: bad link", f->path);
	const pf_ventry *first = &v->e[v->e[file_entry[f->link_of]].link];
	e->link = first->link;
	e->size = first->size;
	e->header = first->header;
	e->header_len = first->header_len;
	e->data_off = first->data_off;
	e->data_len = first->data_len;
	e->needs_model = first->needs_model;
	return 0;
}

int pf_view_build(const pf_model *m, const pf_tree *t, pf_view *v, pf_error *err)
{
	child_index ix;
	uint32_t *file_entry;
	int rc = 0;

	view_init(v);
	index_init(&ix);
	file_entry = malloc(((size_t)t->n_files + 1) * sizeof(*file_entry));
	if (!file_entry)
		return pf_fail(err, PF_E_NOMEM, 0, "view: out of memory");
	rc = build_top(t, v, &ix, err);
	for (uint32_t i = 0; rc == 0 && i < t->n_files; i++)
		rc = build_file(m, t, i, v, &ix, file_entry, err);
	free(file_entry);
	index_free(&ix);
	if (rc)
		pf_view_free(v);
	return rc;
}

/* ------------------------------------------------------------------ encode */

/* p[0..n) as a bin; a NULL p is an empty bin. */
static int pack_bytes(msgpack_packer *pk, const void *p, size_t n)
{
	if (!p)
		n = 0;
	if (msgpack_pack_bin(pk, n))
		return -1;
	return n ? msgpack_pack_bin_body(pk, p, n) : 0;
}

static int pack_entry(msgpack_packer *pk, const pf_ventry *e)
{
	size_t nl = strlen(e->name);
	int r = 0;

	r |= msgpack_pack_array(pk, VIEW_FIELDS);
	r |= msgpack_pack_uint32(pk, e->parent);
	r |= msgpack_pack_str(pk, nl);
	if (nl)
		r |= msgpack_pack_str_body(pk, e->name, nl);
	r |= msgpack_pack_uint32(pk, (uint32_t)e->kind);
	r |= msgpack_pack_uint64(pk, e->size);
	r |= msgpack_pack_uint32(pk, e->link);
	r |= msgpack_pack_uint32(pk, e->kind == PF_VE_TENSOR ? e->tensor : 0);
	r |= pack_bytes(pk, e->kind == PF_VE_TENSOR ? e->header : NULL,
			e->kind == PF_VE_TENSOR ? e->header_len : 0);
	r |= msgpack_pack_int64(pk, e->data_off);
	r |= msgpack_pack_uint64(pk, e->data_len);
	r |= e->needs_model ? msgpack_pack_true(pk) : msgpack_pack_false(pk);
	bool text = e->kind != PF_VE_DIR && e->kind != PF_VE_TENSOR;
	r |= pack_bytes(pk, text ? e->text : NULL, text ? (size_t)e->size : 0);
	return r ? -1 : 0;
}

static int pack_view(msgpack_packer *pk, const pf_view *v, const pf_view_key *key)
{
	int r = 0;

	r |= msgpack_pack_array(pk, 5);
	r |= msgpack_pack_str_with_body(pk, VIEW_MAGIC, VIEW_MAGIC_LEN);
	r |= msgpack_pack_uint32(pk, VIEW_VERSION);
	r |= msgpack_pack_array(pk, VIEW_KEY_FIELDS);
	r |= msgpack_pack_uint64(pk, key->dev);
	r |= msgpack_pack_uint64(pk, key->ino);
	r |= msgpack_pack_uint64(pk, key->size);
	r |= msgpack_pack_int64(pk, key->mtime_sec);
	r |= msgpack_pack_int64(pk, key->mtime_nsec);
	r |= msgpack_pack_array(pk, v->n);
	for (uint32_t i = 0; r == 0 && i < v->n; i++)
		r |= pack_entry(pk, &v->e[i]);
	uint32_t n_own = 0;
	for (uint32_t i = 0; i < v->n; i++)
		n_own += v->e[i].has_mtime;
	r |= msgpack_pack_array(pk, n_own);
	for (uint32_t i = 0; r == 0 && i < v->n; i++)
		if (v->e[i].has_mtime) {
			r |= msgpack_pack_array(pk, 3);
			r |= msgpack_pack_uint32(pk, i);
			r |= msgpack_pack_int64(pk, v->e[i].mtime_sec);
			r |= msgpack_pack_int64(pk, v->e[i].mtime_nsec);
		}
	return r ? -1 : 0;
}

int pf_view_encode(const pf_view *v, const pf_view_key *key, uint8_t **out, size_t *len,
		   pf_error *err)
{
	msgpack_sbuffer sb;
	msgpack_packer pk;

	*out = NULL;
	*len = 0;
	msgpack_sbuffer_init(&sb);
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	if (pack_view(&pk, v, key) || !sb.data) {
		msgpack_sbuffer_destroy(&sb);
		return pf_fail(err, PF_E_NOMEM, 0, "view: out of memory while encoding");
	}
	*out = (uint8_t *)sb.data;
	*len = sb.size;
	return 0;
}

/* ------------------------------------------------------------------ decode: pre-scan */

static uint64_t be_read(const uint8_t *p, unsigned n)
{
	uint64_t x = 0;
	for (unsigned i = 0; i < n; i++)
		x = (x << 8) | p[i];
	return x;
}

/*
 * One msgpack item header at buf[*pos]: how many bytes follow it inline
 * (*skip) and how many items it opens (*items).  -1 for the unused tag.
 */
static int item_header(const uint8_t *buf, size_t len, size_t *pos, uint64_t *skip,
		       uint64_t *items)
{
	static const uint8_t fixext[5] = {1, 2, 4, 8, 16};
	uint8_t tag = buf[(*pos)++];
	unsigned w = 0;   /* width of a length/count field */
	int what = 0;     /* 1 = length, 2 = array count, 3 = map count */

	*skip = 0;
	*items = 0;
	if (tag <= 0x7f || tag >= 0xe0 || tag == 0xc0 || tag == 0xc2 || tag == 0xc3)
		return 0;
	if (tag <= 0x8f) { *items = 2u * (tag & 0x0f); return 0; }
	if (tag <= 0x9f) { *items = tag & 0x0f; return 0; }
	if (tag <= 0xbf) { *skip = tag & 0x1f; return 0; }
	switch (tag) {
	case 0xc4: case 0xc5: case 0xc6: w = 1u << (tag - 0xc4); what = 1; break;
	case 0xc7: case 0xc8: case 0xc9: w = 1u << (tag - 0xc7); what = 1; *skip = 1; break;
	case 0xca: *skip = 4; return 0;
	case 0xcb: *skip = 8; return 0;
	case 0xcc: case 0xcd: case 0xce: case 0xcf: *skip = 1u << (tag - 0xcc); return 0;
	case 0xd0: case 0xd1: case 0xd2: case 0xd3: *skip = 1u << (tag - 0xd0); return 0;
	case 0xd4: case 0xd5: case 0xd6: case 0xd7: case 0xd8:
		*skip = 1u + fixext[tag - 0xd4];
		return 0;
	case 0xd9: case 0xda: case 0xdb: w = 1u << (tag - 0xd9); what = 1; break;
	case 0xdc: case 0xdd: w = 2u << (tag - 0xdc); what = 2; break;
	case 0xde: case 0xdf: w = 2u << (tag - 0xde); what = 3; break;
	default: return -1; /* 0xc1 */
	}
	if (len - *pos < w)
		return -1;
	uint64_t x = be_read(buf + *pos, w);
	*pos += w;
	if (what == 1)
		*skip += x;
	else
		*items = what == 3 ? 2 * x : x;
	return 0;
}

/*
 * Walk the item headers of exactly one msgpack object filling buf[0..len),
 * without recursion: `pending` counts the items still to read.  Every item
 * takes at least one byte, so pending may never exceed the bytes left.
 */
static int prescan(const uint8_t *buf, size_t len, pf_error *err)
{
	uint64_t pending = 1, skip, items;
	size_t pos = 0;

	while (pending > 0) {
		size_t at = pos;
		if (pos >= len)
			return pf_fail(err, PF_E_FORMAT, pos, "index: truncated");
		pending--;
		if (item_header(buf, len, &pos, &skip, &items))
			return pf_fail(err, PF_E_FORMAT, at, "index: malformed msgpack");
		if (skip > len - pos)
			return pf_fail(err, PF_E_FORMAT, at, "index: value runs past the end");
		pos += (size_t)skip;
		if (items > len - pos || pending > len - pos - items)
			return pf_fail(err, PF_E_FORMAT, at, "index: more items than bytes");
		pending += items;
	}
	if (pos != len)
		return pf_fail(err, PF_E_FORMAT, pos, "index: trailing bytes");
	return 0;
}

/* ------------------------------------------------------------------ decode: fields */

static bool get_u64(const msgpack_object *o, uint64_t *x)
{
	if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
		return false;
	*x = o->via.u64;
	return true;
}

static bool get_u32(const msgpack_object *o, uint32_t *x)
{
	uint64_t u;
	if (!get_u64(o, &u) || u > UINT32_MAX)
		return false;
	*x = (uint32_t)u;
	return true;
}

static bool get_i64(const msgpack_object *o, int64_t *x)
{
	if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
		*x = o->via.i64;
		return *x < 0;
	}
	if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER || o->via.u64 > INT64_MAX)
		return false;
	*x = (int64_t)o->via.u64;
	return true;
}

static bool get_str(const msgpack_object *o, const char **p, size_t *n)
{
	if (o->type != MSGPACK_OBJECT_STR)
		return false;
	*p = o->via.str.ptr;
	*n = o->via.str.size;
	return true;
}

static bool get_bin(const msgpack_object *o, const uint8_t **p, size_t *n)
{
	if (o->type != MSGPACK_OBJECT_BIN)
		return false;
	*p = (const uint8_t *)o->via.bin.ptr;
	*n = o->via.bin.size;
	return true;
}

static const msgpack_object *array_of(const msgpack_object *o, uint32_t want)
{
	if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size != want)
		return NULL;
	return o->via.array.ptr;
}

/* The raw fields of one encoded entry. */
typedef struct raw_entry {
	uint32_t parent, kind, link, tensor;
	const char *name;
	size_t name_len;
	uint64_t size, data_len;
	const uint8_t *header, *text;
	size_t header_len, text_len;
	int64_t data_off;
	bool needs_model;
} raw_entry;

static bool read_entry(const msgpack_object *o, raw_entry *r)
{
	const msgpack_object *f = array_of(o, VIEW_FIELDS);

	if (!f)
		return false;
	if (f[9].type != MSGPACK_OBJECT_BOOLEAN)
		return false;
	r->needs_model = f[9].via.boolean;
	return get_u32(&f[0], &r->parent) && get_str(&f[1], &r->name, &r->name_len) &&
	       get_u32(&f[2], &r->kind) && get_u64(&f[3], &r->size) && get_u32(&f[4], &r->link) &&
	       get_u32(&f[5], &r->tensor) && get_bin(&f[6], &r->header, &r->header_len) &&
	       get_i64(&f[7], &r->data_off) && get_u64(&f[8], &r->data_len) &&
	       get_bin(&f[10], &r->text, &r->text_len);
}

/* ------------------------------------------------------------------ decode: checks */

#define BAD(i, what) pf_fail(err, PF_E_FORMAT, 0, "index: entry %u: %s", (unsigned)(i), what)

/* Where the entry sits: parent, name, and the fixed top entries. */
static int check_place(const pf_view *v, uint32_t i, const raw_entry *r, pf_error *err)
{
	if (r->kind < PF_VE_DIR || r->kind > PF_VE_GLOBALS)
		return BAD(i, "unknown kind");
	if (i == 0) {
		if (r->parent != 0 || r->name_len != 0 || r->kind != PF_VE_DIR)
			return BAD(i, "not the model directory");
		return 0;
	}
	if (r->parent >= i || v->e[r->parent].kind != PF_VE_DIR)
		return BAD(i, "parent is not an earlier directory");
	if (!name_ok(r->name, r->name_len))
		return BAD(i, "bad name");
	if (i <= 3) {
		const char *want = pf_meta_file_names[i - 1];
		if (r->kind != text_kinds[i] || r->parent != 0 || r->name_len != strlen(want) ||
		    memcmp(r->name, want, r->name_len) != 0)
			return BAD(i, "meta.json, device and globals must come first");
	} else if (r->kind != PF_VE_DIR && r->kind != PF_VE_TENSOR) {
		return BAD(i, "a second text file");
	}
	return 0;
}

/* Fields that do not apply to directories and texts hold their fixed values. */
static int check_plain(uint32_t i, const raw_entry *r, pf_error *err)
{
	if (r->link != i || r->tensor != 0 || r->header_len != 0 || r->data_off != -1 ||
	    r->data_len != 0 || r->needs_model)
		return BAD(i, "tensor fields on a non-tensor");
	if (r->kind == PF_VE_DIR ? (r->size != 0 || r->text_len != 0) : r->size != r->text_len)
		return BAD(i, "size does not match");
	return 0;
}

/* Elements of a shape times itemsize, false on overflow. */
static bool npy_bytes(const pf_npy_info *h, unsigned itemsize, uint64_t *out)
{
	uint64_t n = itemsize;
	for (unsigned d = 0; d < h->ndim; d++)
		if (h->shape[d] == 0)
			n = 0;
	for (unsigned d = 0; n && d < h->ndim; d++) {
		uint64_t s = (uint64_t)h->shape[d];
		if (n > UINT64_MAX / s)
			return false;
		n *= s;
	}
	*out = n;
	return true;
}

/* The .npy header: parses, is what pf_npy_header writes, and describes data_len bytes. */
static int check_header(uint32_t i, const raw_entry *r, pf_error *err)
{
	pf_npy_info h;
	pf_error perr = {0};
	char again[VIEW_HEADER_MAX], descr[PF_NPY_DESCR_MAX], dname[64];
	size_t alen;
	unsigned itemsize;
	uint64_t nbytes;

	if (r->header_len == 0 || r->header_len > VIEW_HEADER_MAX ||
	    pf_npy_parse(r->header, r->header_len, &h, &perr) || h.data_off != r->header_len)
		return BAD(i, "bad .npy header");
	if (pf_npy_header(again, sizeof(again), &alen, h.descr, h.shape, h.ndim, h.fortran, &perr) ||
	    alen != r->header_len || memcmp(again, r->header, alen) != 0)
		return BAD(i, "bad .npy header");
	if (!pf_numpy_typestr(h.descr, strlen(h.descr), &itemsize, descr, sizeof(descr), dname,
			      sizeof(dname)) ||
	    !npy_bytes(&h, itemsize, &nbytes) || nbytes != r->data_len)
		return BAD(i, "data length does not match the header");
	return 0;
}

static int check_tensor(const pf_view *v, uint32_t i, const raw_entry *r, const pf_view_key *key,
			pf_error *err)
{
	if (r->text_len != 0)
		return BAD(i, "text on a tensor");
	if (r->link > i || (r->link < i && v->e[r->link].kind != PF_VE_TENSOR))
		return BAD(i, "link is not an earlier tensor");
	if (check_header(i, r, err))
		return -1;
	if (r->data_len > UINT64_MAX - r->header_len || r->size != r->header_len + r->data_len)
		return BAD(i, "size does not match");
	if (r->data_off < -1 || r->needs_model != (r->data_off == -1))
		return BAD(i, "data_off and needs_model disagree");
	if (r->data_off >= 0 &&
	    ((uint64_t)r->data_off > key->size || r->data_len > key->size - (uint64_t)r->data_off))
		return BAD(i, "data past the end of the model file");
	if (r->link < i) {
		const pf_ventry *f = &v->e[r->link];
		if (f->link != r->link || f->tensor != r->tensor || f->size != r->size ||
		    f->header_len != r->header_len ||
		    memcmp(f->header, r->header, r->header_len) != 0 || f->data_off != r->data_off ||
		    f->data_len != r->data_len || f->needs_model != r->needs_model)
			return BAD(i, "link differs from its tensor");
	}
	return 0;
}

/* Check raw entry i and append it to v, copying what it keeps. */
static int decode_entry(pf_view *v, child_index *ix, uint32_t i, const msgpack_object *o,
			const pf_view_key *key, pf_error *err)
{
	raw_entry r;
	pf_ventry *e;

	if (!read_entry(o, &r))
		return BAD(i, "malformed");
	if (check_place(v, i, &r, err))
		return -1;
	if (r.kind == PF_VE_TENSOR ? check_tensor(v, i, &r, key, err) : check_plain(i, &r, err))
		return -1;
	if (i > 0 && index_find(ix, v, r.parent, r.name, r.name_len) >= 0)
		return BAD(i, "duplicate name");
	e = view_add(v, r.parent, r.name, r.name_len, (pf_ventry_kind)r.kind, err);
	if (!e || (i > 0 && index_add(ix, v, i, err)))
		return -1;
	e->size = r.size;
	e->link = r.link;
	e->tensor = r.tensor;
	e->data_off = r.data_off;
	e->data_len = r.data_len;
	e->needs_model = r.needs_model;
	if (r.kind == PF_VE_TENSOR) {
		e->header_len = (uint32_t)r.header_len;
		e->header = r.link < i ? v->e[r.link].header
				       : (const uint8_t *)pf_arena_strndup(&v->arena, r.header, r.header_len);
	} else if (r.kind != PF_VE_DIR) {
		e->text = pf_arena_strndup(&v->arena, r.text, r.text_len);
	}
	if ((r.kind == PF_VE_TENSOR && !e->header) ||
	    (r.kind != PF_VE_TENSOR && r.kind != PF_VE_DIR && !e->text))
		return pf_fail(err, PF_E_NOMEM, 0, "view: out of memory");
	return 0;
}

static int check_key(const msgpack_object *o, const pf_view_key *key, pf_error *err)
{
	const msgpack_object *k = array_of(o, VIEW_KEY_FIELDS);
	uint64_t dev, ino, size;
	int64_t sec, nsec;

	if (!k || !get_u64(&k[0], &dev) || !get_u64(&k[1], &ino) || !get_u64(&k[2], &size) ||
	    !get_i64(&k[3], &sec) || !get_i64(&k[4], &nsec))
		return pf_fail(err, PF_E_FORMAT, 0, "index: malformed key");
	if (dev != key->dev || ino != key->ino || size != key->size || sec != key->mtime_sec ||
	    nsec != key->mtime_nsec)
		return pf_fail(err, PF_E_FORMAT, 0, "index: made for another file or version of it");
	return 0;
}

/* The entries' own modification times: [index, sec, nsec], indices increasing. */
static int decode_mtimes(pf_view *v, const msgpack_object *o, pf_error *err)
{
	if (o->type != MSGPACK_OBJECT_ARRAY)
		return pf_fail(err, PF_E_FORMAT, 0, "index: malformed mtime list");
	int64_t last = -1;
	for (uint32_t k = 0; k < o->via.array.size; k++) {
		const msgpack_object *f = array_of(&o->via.array.ptr[k], 3);
		uint32_t i;
		int64_t sec, nsec;
		if (!f || !get_u32(&f[0], &i) || !get_i64(&f[1], &sec) || !get_i64(&f[2], &nsec) ||
		    (int64_t)i <= last || i >= v->n || nsec < 0 || nsec >= 1000000000)
			return pf_fail(err, PF_E_FORMAT, 0, "index: bad mtime %u", (unsigned)k);
		v->e[i].has_mtime = true;
		v->e[i].mtime_sec = sec;
		v->e[i].mtime_nsec = nsec;
		last = i;
	}
	return 0;
}

static int decode_root(const msgpack_object *root, size_t len, const pf_view_key *key, pf_view *v,
		       pf_error *err)
{
	const msgpack_object *top = array_of(root, 5), *ents;
	const char *magic;
	size_t magic_len;
	uint64_t version;
	uint32_t n;
	child_index ix;
	int rc = 0;

	if (!top || !get_str(&top[0], &magic, &magic_len) || magic_len != VIEW_MAGIC_LEN ||
	    memcmp(magic, VIEW_MAGIC, VIEW_MAGIC_LEN) != 0)
		return pf_fail(err, PF_E_FORMAT, 0, "index: not a picklefs index");
	if (!get_u64(&top[1], &version) || version != VIEW_VERSION)
		return pf_fail(err, PF_E_FORMAT, 0, "index: format version is not %d", VIEW_VERSION);
	if (check_key(&top[2], key, err))
		return -1;
	if (top[3].type != MSGPACK_OBJECT_ARRAY)
		return pf_fail(err, PF_E_FORMAT, 0, "index: malformed entry list");
	n = top[3].via.array.size;
	ents = top[3].via.array.ptr;
	/* every entry takes at least VIEW_FIELDS + 1 bytes */
	if (n < 4 || n > len / (VIEW_FIELDS + 1))
		return pf_fail(err, PF_E_FORMAT, 0, "index: bad entry count %u", (unsigned)n);
	if (view_reserve(v, n, err))
		return -1;
	index_init(&ix);
	for (uint32_t i = 0; rc == 0 && i < n; i++)
		rc = decode_entry(v, &ix, i, &ents[i], key, err);
	index_free(&ix);
	return rc ? rc : decode_mtimes(v, &top[4], err);
}

int pf_view_decode(const uint8_t *buf, size_t len, const pf_view_key *key, pf_view *v,
		   pf_error *err)
{
	msgpack_unpacked up;
	msgpack_unpack_return ret;
	size_t off = 0;
	int rc;

	view_init(v);
	if (!buf || prescan(buf, len, err))
		return pf_fail(err, PF_E_FORMAT, 0, "index: no buffer");
	msgpack_unpacked_init(&up);
	ret = msgpack_unpack_next(&up, (const char *)buf, len, &off);
	if (ret != MSGPACK_UNPACK_SUCCESS || off != len)
		rc = pf_fail(err, ret == MSGPACK_UNPACK_NOMEM_ERROR ? PF_E_NOMEM : PF_E_FORMAT, off,
			     "index: msgpack could not read it");
	else
		rc = decode_root(&up.data, len, key, v, err);
	msgpack_unpacked_destroy(&up);
	if (rc)
		pf_view_free(v);
	return rc;
}
