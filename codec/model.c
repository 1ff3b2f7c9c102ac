#include "model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "legacy.h"
#include "table.h"

/* Candidate bytes values are only tried as embedded torch.save files when
 * they begin like one; this keeps ordinary bytes values cheap. */
static const uint8_t legacy_magic_long1[12] = {0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46,
					       0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19};
static const char legacy_magic_text[] = "L119547037146038801333356";

const char *pf_container_name(pf_container c)
{
	switch (c) {
	case PF_C_PICKLE: return "pickle";
	case PF_C_TORCH_ZIP: return "torch-zip";
	case PF_C_TORCH_LEGACY: return "torch-legacy";
	case PF_C_TORCHSCRIPT: return "torchscript";
	}
	return "unknown";
}

/* ---- growable tables -------------------------------------------------- */

#define GROW(m, arr, n, cap, err) pf_table_grow((void **)&(m)->arr, &(m)->cap, (m)->n + 1, sizeof(*(m)->arr), err)

static int put(pf_hashmap *map, uint64_t key, uint32_t val, pf_error *err)
{
	if (!pf_hashmap_put(map, key, val))
		return pf_fail(err, PF_E_NOMEM, 0, "out of memory");
	return 0;
}

/* ---- segments ---------------------------------------------------------- */

static uint64_t seg_origin(const pf_model *m, uint32_t seg)
{
	/* decoded segments report errors at the encoded value's position */
	for (uint32_t hops = 0; hops < 64; hops++) {
		const pf_segment *s = &m->segs[seg];
		if (s->file_off >= 0)
			return (uint64_t)s->file_off;
		if (seg == 0)
			return 0;
		if (s->parent == seg)
			return 0;
		uint64_t o = s->parent_off;
		seg = s->parent;
		if (m->segs[seg].file_off >= 0)
			return (uint64_t)m->segs[seg].file_off + o;
	}
	return 0;
}

static int add_segment(pf_model *m, const pf_segment *s, uint32_t *out, pf_error *err)
{
	if (GROW(m, segs, n_segs, cap_segs, err))
		return -1;
	m->segs[m->n_segs] = *s;
	*out = m->n_segs++;
	return 0;
}

static int add_slice(pf_model *m, uint32_t parent, uint64_t off, uint64_t len, uint32_t *out,
		     pf_error *err)
{
	const pf_segment *p = &m->segs[parent];
	pf_segment s = {
		.p = p->p + off, .len = len, .parent = parent, .parent_off = off,
		.parent_len = len, .how = PF_SEG_SLICE,
		.file_off = p->file_off >= 0 ? p->file_off + (int64_t)off : -1,
	};
	return add_segment(m, &s, out, err);
}

/* ---- bytes values ------------------------------------------------------ */

static bool is_global_in(const pf_graph *g, pf_nid id, const char *const *modules, const char *name)
{
	for (; *modules; modules++)
		if (pf_is_global(g, id, *modules, name))
			return true;
	return false;
}

static const char *const codecs_modules[] = {"_codecs", "codecs", NULL};

/* Decode UTF-8 text whose code points are all < 256 into bytes (latin-1).
 * Returns the decoded length, or -1 when the text is not such text. */
static int64_t latin1_decode(const uint8_t *p, uint64_t n, uint8_t *out)
{
	uint64_t o = 0;
	for (uint64_t i = 0; i < n;) {
		if (p[i] < 0x80) {
			out[o++] = p[i++];
		} else if ((p[i] == 0xc2 || p[i] == 0xc3) && i + 1 < n && (p[i + 1] & 0xc0) == 0x80) {
			out[o++] = (uint8_t)(((p[i] & 0x03) << 6) | (p[i + 1] & 0x3f));
			i += 2;
		} else {
			return -1;
		}
	}
	return (int64_t)o;
}

/*
 * The segment holding the bytes of value `id`: a BYTES node, or a protocol
 * 0-2 `_codecs.encode(text, 'latin1')` call (decoded once, then cached), or
 * `bytes()` / `bytearray(x)`.  Returns 1 with *seg set, 0 when id is not a
 * bytes value, -1 on error.
 */
static int bytes_segment(pf_model *m, pf_nid id, uint32_t *seg, pf_error *err)
{
	pf_graph *g = &m->g;
	const pf_node *n = pf_node_at(g, id);
	uint32_t cached;

	if (!n)
		return 0;
	if (pf_hashmap_get(&m->node_seg, id, &cached)) {
		*seg = cached;
		return 1;
	}
	if (n->kind == PF_K_BYTES) {
		if (n->flags & PF_F_DECODED)
			return 0;
		if (add_slice(m, n->seg, n->u.s.off, n->u.s.len, seg, err))
			return -1;
		return put(&m->node_seg, id, *seg, err) ? -1 : 1;
	}
	if (n->kind != PF_K_CALL || n->how != PF_HOW_REDUCE)
		return 0;
	pf_nid func = n->u.call.func, args = n->u.call.args;
	if (is_global_in(g, func, codecs_modules, "encode") && pf_seq_len(g, args) == 2 &&
	    pf_str_eq(g, pf_seq_at(g, args, 1), "latin1")) {
		const pf_node *t = pf_node_at(g, pf_seq_at(g, args, 0));
		if (!t || t->kind != PF_K_STR)
			return 0;
		if (m->g.arena.used + t->u.s.len > m->limits.max_decoded)
			return pf_fail(err, PF_E_LIMIT, seg_origin(m, t->seg) + t->u.s.off,
				       "decoded bytes exceed max_decoded (%llu)",
				       (unsigned long long)m->limits.max_decoded);
		uint8_t *buf = pf_arena_alloc(&m->g.arena, t->u.s.len);
		if (!buf)
			return pf_fail(err, PF_E_NOMEM, t->u.s.off, "out of memory");
		int64_t len = latin1_decode(t->u.s.p, t->u.s.len, buf);
		if (len < 0)
			return 0;
		pf_segment s = {
			.p = buf, .len = (uint64_t)len, .file_off = -1, .parent = t->seg,
			.parent_off = t->u.s.off, .parent_len = t->u.s.len, .how = PF_SEG_LATIN1,
		};
		if (add_segment(m, &s, seg, err))
			return -1;
		return put(&m->node_seg, id, *seg, err) ? -1 : 1;
	}
	static const char *const builtins[] = {"builtins", "__builtin__", NULL};
	if (is_global_in(g, func, builtins, "bytes") && pf_seq_len(g, args) == 0) {
		pf_segment s = {.p = (const uint8_t *)"", .len = 0, .file_off = -1, .how = PF_SEG_LATIN1};
		if (add_segment(m, &s, seg, err))
			return -1;
		return put(&m->node_seg, id, *seg, err) ? -1 : 1;
	}
	if (is_global_in(g, func, builtins, "bytearray") && pf_seq_len(g, args) == 1) {
		/* bytearray(x) at protocol <= 4: one level down, never further */
		pf_nid inner = pf_seq_at(g, args, 0);
		const pf_node *in = pf_node_at(g, inner);
		if (in && (in->kind == PF_K_BYTES ||
			   (in->kind == PF_K_CALL && is_global_in(g, in->u.call.func, codecs_modules, "encode"))))
			return bytes_segment(m, inner, seg, err);
	}
	return 0;
}

static bool looks_like_torch_file(const uint8_t *p, uint64_t len)
{
	if (len >= 4 && memcmp(p, "PK\3\4", 4) == 0)
		return true;
	if (len >= sizeof(legacy_magic_text) - 1 &&
	    memcmp(p, legacy_magic_text, sizeof(legacy_magic_text) - 1) == 0)
		return true;
	/* PROTO n, optional FRAME (9 bytes), then LONG1 magic */
	uint64_t window = len < 32 ? len : 32;
	return window >= sizeof(legacy_magic_long1) &&
	       memmem(p, (size_t)window, legacy_magic_long1, sizeof(legacy_magic_long1)) != NULL;
}

/* ---- storages ---------------------------------------------------------- */

static uint64_t storage_hash(uint32_t archive, const char *dir, const char *key)
{
	return pf_hash_bytes(key, strlen(key), pf_hash_bytes(dir, strlen(dir) + 1, archive));
}

static bool storage_is(const pf_storage *st, uint32_t archive, const char *dir, const char *key)
{
	return st->archive == archive && strcmp(st->dir, dir) == 0 && strcmp(st->key, key) == 0;
}

/* Storages are shared by (archive, record folder, key): torch loads each key once. */
static int64_t find_storage_key(const pf_model *m, uint32_t archive, const char *dir, const char *key)
{
	uint32_t idx;
	uint64_t h = storage_hash(archive, dir, key);
	if (!pf_hashmap_get(&m->key_storage, h, &idx))
		return -1;
	if (idx < m->n_storages && storage_is(&m->storages[idx], archive, dir, key))
		return idx;
	/* a hash collision (crafted keys): fall back to a scan */
	for (uint32_t i = 0; i < m->n_storages; i++)
		if (storage_is(&m->storages[i], archive, dir, key))
			return i;
	return -1;
}

static const char *arena_str(pf_model *m, const pf_node *s)
{
	return pf_arena_strndup(&m->g.arena, s->u.s.p, (size_t)s->u.s.len);
}

/*
 * A persistent id ('storage', <X>Storage, key, location, numel[, view]).
 * Other persistent ids (legacy whole-module saves use ('module', ...)) are
 * left as inert nodes.
 */
static int register_persid(pf_model *m, uint32_t archive, const char *dir, pf_nid persid, pf_error *err)
{
	pf_graph *g = &m->g;
	const pf_node *pn = pf_node_at(g, persid);
	pf_nid pid = pn->u.persid.pid;
	uint64_t at = seg_origin(m, pn->seg) + pn->off;

	if (pf_kind_of(g, pid) != PF_K_TUPLE || !pf_str_eq(g, pf_seq_at(g, pid, 0), "storage"))
		return 0;
	uint32_t n = pf_seq_len(g, pid);
	if (n < 5)
		return pf_fail(err, PF_E_FORMAT, at, "storage persistent id has %u fields, expected 5 or 6", n);
	const pf_global *type = pf_node_global(g, pf_seq_at(g, pid, 1));
	const pf_node *key = pf_node_at(g, pf_seq_at(g, pid, 2));
	const pf_node *loc = pf_node_at(g, pf_seq_at(g, pid, 3));
	const pf_node *numel = pf_node_at(g, pf_seq_at(g, pid, 4));
	if (!type || !key || key->kind != PF_K_STR || !loc || loc->kind != PF_K_STR || !numel ||
	    numel->kind != PF_K_INT || numel->u.i < 0)
		return pf_fail(err, PF_E_FORMAT, at, "malformed storage persistent id");
	pf_dtype dt = strcmp(type->name, "UntypedStorage") == 0 ? PF_DT_U8 : pf_dtype_from_storage(type->name);
	if (dt == PF_DT_NONE)
		return pf_fail(err, PF_E_FORMAT, at, "unknown storage type %s.%s", type->module, type->name);

	const char *k = arena_str(m, key);
	if (!k)
		return pf_fail(err, PF_E_NOMEM, at, "out of memory");
	int64_t found = find_storage_key(m, archive, dir, k);
	if (found >= 0)
		return put(&m->node_storage, persid, (uint32_t)found, err);

	pf_storage st = {
		.archive = archive, .dir = dir, .key = k, .dtype = dt, .numel = (uint64_t)numel->u.i,
		.location = arena_str(m, loc), .location_node = pf_seq_at(g, pid, 3), .pid = pid,
	};
	if (!st.location ||
	    __builtin_mul_overflow(st.numel, (uint64_t)pf_dtype_get(dt)->itemsize, &st.nbytes))
		return pf_fail(err, PF_E_FORMAT, at, "storage size overflows");
	if (GROW(m, storages, n_storages, cap_storages, err))
		return -1;
	uint32_t idx = m->n_storages++;
	m->storages[idx] = st;
	if (put(&m->key_storage, storage_hash(archive, dir, k), idx, err))
		return -1;
	return put(&m->node_storage, persid, idx, err);
}

static int register_persids(pf_model *m, uint32_t archive, const char *dir, pf_nid lo, pf_nid hi,
			    pf_error *err)
{
	for (pf_nid id = lo; id < hi; id++)
		if (m->g.nodes[id].kind == PF_K_PERSID && register_persid(m, archive, dir, id, err))
			return -1;
	return 0;
}

/* Point every storage of a zip archive at its data/<key> record. */
static int locate_zip_storages(pf_model *m, uint32_t archive, const char *dir, uint32_t first_storage,
			       pf_error *err)
{
	pf_archive *a = &m->archives[archive];
	const pf_segment *seg = &m->segs[a->seg];
	uint64_t origin = seg_origin(m, a->seg);

	for (uint32_t i = first_storage; i < m->n_storages; i++) {
		pf_storage *st = &m->storages[i];
		char rel[512];
		if (st->archive != archive || st->have_data)
			continue;
		if ((size_t)snprintf(rel, sizeof(rel), "%s/%s", dir, st->key) >= sizeof(rel))
			return pf_fail(err, PF_E_LIMIT, origin, "storage key too long");
		const pf_zip_entry *e = pf_zip_find_rel(&a->zip, rel);
		if (!e)
			return pf_fail(err, PF_E_FORMAT, origin + a->zip.cd_off,
				       "storage record %s/%s is missing", a->zip.prefix, rel);
		if (e->usize < st->nbytes)
			return pf_fail(err, PF_E_FORMAT, origin + e->header_off,
				       "record %s holds %llu bytes, its storage needs %llu", e->name,
				       (unsigned long long)e->usize, (unsigned long long)st->nbytes);
		if (e->method == 0) {
			st->seg = a->seg;
			st->off = e->data_off;
		} else {
			const uint8_t *data;
			uint64_t len;
			bool decoded;
			if (pf_zip_data(e, seg->p, seg->len, origin, &m->limits, &m->g.arena, &data, &len,
					&decoded, err))
				return -1;
			pf_segment s = {.p = data, .len = len, .file_off = -1, .parent = a->seg,
					.parent_off = e->data_off, .parent_len = e->csize, .how = PF_SEG_INFLATE};
			if (add_segment(m, &s, &st->seg, err))
				return -1;
			st->off = 0;
		}
		st->have_data = true;
	}
	return 0;
}

/* ---- containers -------------------------------------------------------- */

static int add_pickle_span(pf_model *m, uint32_t archive, uint32_t seg, uint64_t start, uint64_t end,
			   int32_t zip_entry, pf_error *err)
{
	if (GROW(m, pickles, n_pickles, cap_pickles, err))
		return -1;
	m->pickles[m->n_pickles++] = (pf_pickle_span){.archive = archive, .seg = seg, .start = start, .end = end,
						      .zip_entry = zip_entry};
	return 0;
}

/* Run one pickle record of a zip archive (data.pkl, constants.pkl). */
static int run_zip_pickle(pf_model *m, uint32_t archive, const pf_zip_entry *e, pf_pickle_info *info,
			  pf_error *err)
{
	pf_archive *a = &m->archives[archive];
	uint32_t parent = a->seg, seg;
	uint64_t origin = seg_origin(m, parent);
	const uint8_t *data;
	uint64_t len;
	bool decoded;

	if (pf_zip_data(e, m->segs[parent].p, m->segs[parent].len, origin, &m->limits, &m->g.arena, &data,
			&len, &decoded, err))
		return -1;
	if (decoded) {
		pf_segment s = {.p = data, .len = len, .file_off = -1, .parent = parent,
				.parent_off = e->data_off, .parent_len = e->csize, .how = PF_SEG_INFLATE};
		if (add_segment(m, &s, &seg, err))
			return -1;
	} else if (add_slice(m, parent, e->data_off, e->usize, &seg, err)) {
		return -1;
	}
	if (pf_pickle_run(&m->g, data, len, 0, seg, seg_origin(m, seg), info, err))
		return -1;
	return add_pickle_span(m, archive, seg, 0, info->end, (int32_t)(e - a->zip.entries), err);
}

/* A zip without <prefix>/data.pkl: an aborted save, or not torch's at all. */
static int fail_no_data_pkl(const pf_zip *z, uint64_t origin, pf_error *err)
{
	return pf_fail(err, PF_E_FORMAT, origin + z->cd_off, "zip has no %s/data.pkl record: not a torch.save file",
		       z->prefix);
}

static int open_zip_archive(pf_model *m, uint32_t archive, pf_error *err)
{
	pf_archive *a = &m->archives[archive];
	const pf_segment *seg = &m->segs[a->seg];
	uint64_t origin = seg_origin(m, a->seg);
	pf_pickle_info info;

	if (pf_zip_open(&a->zip, seg->p, seg->len, origin, &m->limits, &m->g.arena, err))
		return -1;
	const pf_zip_entry *data_pkl = pf_zip_find_rel(&a->zip, "data.pkl");
	const pf_zip_entry *constants = pf_zip_find_rel(&a->zip, "constants.pkl");
	if (!data_pkl)
		return fail_no_data_pkl(&a->zip, origin, err);
	a->container = constants ? PF_C_TORCHSCRIPT : PF_C_TORCH_ZIP;

	uint32_t first_storage = m->n_storages;
	pf_nid lo = (pf_nid)m->g.n_nodes;
	if (run_zip_pickle(m, archive, data_pkl, &info, err))
		return -1;
	a = &m->archives[archive];
	a->root = info.root;
	a->protocol = info.protocol;
	if (register_persids(m, archive, "data", lo, (pf_nid)m->g.n_nodes, err) ||
	    locate_zip_storages(m, archive, "data", first_storage, err))
		return -1;
	if (constants) {
		/* TorchScript keeps constant tensors in constants/<key> */
		first_storage = m->n_storages;
		lo = (pf_nid)m->g.n_nodes;
		if (run_zip_pickle(m, archive, constants, &info, err) ||
		    register_persids(m, archive, "constants", lo, (pf_nid)m->g.n_nodes, err) ||
		    locate_zip_storages(m, archive, "constants", first_storage, err))
			return -1;
		m->archives[archive].constants = info.root;
	}
	return 0;
}

/* Attach legacy raw sections to the storages the object pickle declared. */
static int locate_legacy_storages(pf_model *m, uint32_t archive, const pf_legacy *lg, pf_error *err)
{
	pf_graph *g = &m->g;
	pf_archive *a = &m->archives[archive];
	const pf_segment *seg = &m->segs[a->seg];
	uint64_t origin = seg_origin(m, a->seg);
	uint32_t n = pf_seq_len(g, lg->keys);
	int rc = -1;

	unsigned *itemsize = calloc(n ? n : 1, sizeof(*itemsize));
	uint64_t *data_off = calloc(n ? n : 1, sizeof(*data_off));
	uint64_t *count = calloc(n ? n : 1, sizeof(*count));
	uint32_t *index = calloc(n ? n : 1, sizeof(*index));
	if (!itemsize || !data_off || !count || !index) {
		pf_fail(err, PF_E_NOMEM, origin, "out of memory");
		goto out;
	}
	for (uint32_t i = 0; i < n; i++) {
		const pf_node *k = pf_node_at(g, pf_seq_at(g, lg->keys, i));
		char *key = pf_arena_strndup(&g->arena, k->u.s.p, (size_t)k->u.s.len);
		int64_t s = key ? find_storage_key(m, archive, "", key) : -1;
		if (s < 0) {
			pf_fail(err, PF_E_FORMAT, origin + k->off, "storage key %u is not used by the object", i);
			goto out;
		}
		index[i] = (uint32_t)s;
		itemsize[i] = pf_dtype_get(m->storages[s].dtype)->itemsize;
	}
	if (pf_legacy_sections(seg->p, seg->len, origin, lg->raw_off, n, itemsize, data_off, count, err))
		goto out;
	for (uint32_t i = 0; i < n; i++) {
		pf_storage *st = &m->storages[index[i]];
		if (count[i] != st->numel) {
			pf_fail(err, PF_E_FORMAT, origin + data_off[i] - 8,
				"storage %s has wrong size: expected %llu elements, got %llu", st->key,
				(unsigned long long)st->numel, (unsigned long long)count[i]);
			goto out;
		}
		st->seg = a->seg;
		st->off = data_off[i];
		st->have_data = true;
	}
	rc = 0;
out:
	free(itemsize);
	free(data_off);
	free(count);
	free(index);
	return rc;
}

/*
 * Old legacy files may declare a storage as a view (view_key, offset, size)
 * of another: its bytes are a slice of that root storage.
 */
static int resolve_legacy_views(pf_model *m, uint32_t archive, uint32_t first_storage, pf_error *err)
{
	pf_graph *g = &m->g;
	for (uint32_t i = first_storage; i < m->n_storages; i++) {
		pf_storage *st = &m->storages[i];
		if (st->archive != archive || pf_seq_len(g, st->pid) < 6)
			continue;
		pf_nid view = pf_seq_at(g, st->pid, 5);
		if (pf_kind_of(g, view) != PF_K_TUPLE)
			continue;
		const pf_node *vk = pf_node_at(g, pf_seq_at(g, view, 0));
		const pf_node *vo = pf_node_at(g, pf_seq_at(g, view, 1));
		const pf_node *vs = pf_node_at(g, pf_seq_at(g, view, 2));
		uint64_t at = pf_node_at(g, view)->off;
		if (!vk || vk->kind != PF_K_STR || !vo || vo->kind != PF_K_INT || !vs || vs->kind != PF_K_INT ||
		    vo->u.i < 0 || vs->u.i < 0)
			return pf_fail(err, PF_E_FORMAT, at, "malformed storage view");
		char *key = pf_arena_strndup(&g->arena, vk->u.s.p, (size_t)vk->u.s.len);
		int64_t root = key ? find_storage_key(m, archive, "", key) : -1;
		if (root < 0 || !m->storages[root].have_data || m->storages[root].dtype != st->dtype)
			return pf_fail(err, PF_E_FORMAT, at, "storage view of an unknown storage");
		unsigned isz = pf_dtype_get(st->dtype)->itemsize;
		uint64_t end;
		if (__builtin_add_overflow((uint64_t)vo->u.i, (uint64_t)vs->u.i, &end) ||
		    end > m->storages[root].numel)
			return pf_fail(err, PF_E_FORMAT, at, "storage view outside its root storage");
		st->seg = m->storages[root].seg;
		st->off = m->storages[root].off + (uint64_t)vo->u.i * isz;
		st->numel = (uint64_t)vs->u.i;
		st->nbytes = st->numel * isz;
		st->have_data = true;
	}
	return 0;
}

static int open_pickle_archive(pf_model *m, uint32_t archive, pf_error *err)
{
	pf_archive *a = &m->archives[archive];
	uint32_t segi = a->seg;
	const pf_segment *seg = &m->segs[segi];
	uint64_t origin = seg_origin(m, segi);
	pf_pickle_info first;

	if (pf_pickle_run(&m->g, seg->p, seg->len, 0, segi, origin, &first, err))
		return -1;
	a = &m->archives[archive];
	if (!pf_legacy_is_magic(&m->g, first.root)) {
		a->container = PF_C_PICKLE;
		a->root = first.root;
		a->protocol = first.protocol;
		if (add_pickle_span(m, archive, segi, 0, first.end, -1, err))
			return -1;
		a = &m->archives[archive];
		return register_persids(m, archive, "", (pf_nid)a->first_node, (pf_nid)m->g.n_nodes, err);
	}

	pf_legacy lg;
	uint32_t first_storage = m->n_storages;
	if (pf_legacy_parse_rest(&m->g, seg->p, seg->len, first.end, segi, origin, &lg, err))
		return -1;
	if (add_pickle_span(m, archive, segi, lg.main.start, lg.main.end, -1, err))
		return -1;
	a = &m->archives[archive];
	a->container = PF_C_TORCH_LEGACY;
	a->root = lg.main.root;
	a->protocol = lg.main.protocol;
	if (register_persids(m, archive, "", (pf_nid)a->first_node, (pf_nid)m->g.n_nodes, err) ||
	    locate_legacy_storages(m, archive, &lg, err) ||
	    resolve_legacy_views(m, archive, first_storage, err))
		return -1;
	for (uint32_t i = first_storage; i < m->n_storages; i++)
		if (m->storages[i].archive == archive && !m->storages[i].have_data)
			return pf_fail(err, PF_E_FORMAT, origin + lg.raw_off,
				       "storage %s has no raw section", m->storages[i].key);
	return 0;
}

static int open_archive(pf_model *m, uint32_t archive, pf_error *err)
{
	const pf_segment *seg = &m->segs[m->archives[archive].seg];
	m->archives[archive].first_node = m->g.n_nodes;
	int rc = (seg->len >= 4 && memcmp(seg->p, "PK\3\4", 4) == 0) ? open_zip_archive(m, archive, err)
								       : open_pickle_archive(m, archive, err);
	m->archives[archive].end_node = m->g.n_nodes;
	return rc;
}

static int push_archive(pf_model *m, uint32_t seg, pf_nid host, uint32_t depth, pf_error *err)
{
	if (GROW(m, archives, n_archives, cap_archives, err))
		return -1;
	pf_archive *a = &m->archives[m->n_archives++];
	memset(a, 0, sizeof(*a));
	a->seg = seg;
	a->host = host;
	a->depth = depth;
	return 0;
}

static bool is_load_from_bytes(const pf_graph *g, const pf_node *n)
{
	return n->kind == PF_K_CALL && n->how == PF_HOW_REDUCE &&
	       pf_is_global(g, n->u.call.func, "torch.storage", "_load_from_bytes") &&
	       pf_seq_len(g, n->u.call.args) == 1;
}

/*
 * Queue what an archive's pickles embed: every _load_from_bytes blob (it
 * must parse), and every other bytes value that begins like a torch.save
 * file (it may: a value that does not parse stays a bytes value).
 */
static int queue_embedded(pf_model *m, uint32_t archive, pf_hashmap *required, pf_error *err)
{
	pf_graph *g = &m->g;
	uint32_t lo = m->archives[archive].first_node, hi = m->archives[archive].end_node;
	uint32_t depth = m->archives[archive].depth + 1;
	pf_hashmap blob_args;
	int rc = -1;

	pf_hashmap_init(&blob_args);
	for (pf_nid id = lo; id < hi; id++) {
		const pf_node *n = &g->nodes[id];
		uint32_t seg;
		if (!is_load_from_bytes(g, n))
			continue;
		pf_nid arg = pf_seq_at(g, n->u.call.args, 0);
		int found = bytes_segment(m, arg, &seg, err);
		if (found < 0)
			goto out;
		if (!found) {
			pf_fail(err, PF_E_FORMAT, seg_origin(m, n->seg) + n->off,
				"_load_from_bytes argument is not a bytes value");
			goto out;
		}
		if (depth > m->limits.max_embed_depth) {
			pf_fail(err, PF_E_LIMIT, seg_origin(m, n->seg) + n->off,
				"torch.save files nested deeper than max_embed_depth (%llu)",
				(unsigned long long)m->limits.max_embed_depth);
			goto out;
		}
		if (put(&blob_args, arg, 1, err) || put(required, m->n_archives, 1, err) ||
		    push_archive(m, seg, id, depth, err))
			goto out;
	}
	for (pf_nid id = lo; id < hi && depth <= m->limits.max_embed_depth; id++) {
		const pf_node *n = &g->nodes[id];
		uint32_t seg, dummy;
		if (n->kind != PF_K_BYTES && n->kind != PF_K_CALL)
			continue;
		if (pf_hashmap_get(&blob_args, id, &dummy) || is_load_from_bytes(g, n))
			continue;
		if (n->kind == PF_K_BYTES && !looks_like_torch_file(n->u.s.p, n->u.s.len))
			continue;
		int found = bytes_segment(m, id, &seg, err);
		if (found < 0)
			goto out;
		if (found && looks_like_torch_file(m->segs[seg].p, m->segs[seg].len) &&
		    push_archive(m, seg, id, depth, err))
			goto out;
	}
	rc = 0;
out:
	pf_hashmap_free(&blob_args);
	return rc;
}

/* A _load_from_bytes blob stands for the one storage its pickle returns. */
static int link_blob_storage(pf_model *m, uint32_t archive, pf_error *err)
{
	const pf_archive *a = &m->archives[archive];
	uint32_t st;
	const pf_node *host = pf_node_at(&m->g, a->host);
	if (!host || !is_load_from_bytes(&m->g, host))
		return 0;
	if (pf_kind_of(&m->g, a->root) != PF_K_PERSID || !pf_hashmap_get(&m->node_storage, a->root, &st))
		return pf_fail(err, PF_E_FORMAT, seg_origin(m, a->seg),
			       "_load_from_bytes blob does not hold a storage");
	return put(&m->node_storage, a->host, st, err);
}

/* ---- tensors ----------------------------------------------------------- */

static bool int_of(const pf_graph *g, pf_nid id, int64_t *v)
{
	const pf_node *n = pf_node_at(g, id);
	if (n && n->kind == PF_K_INT) {
		*v = n->u.i;
		return true;
	}
	if (n && n->kind == PF_K_BOOL) {
		*v = n->u.b;
		return true;
	}
	return false;
}

static bool truthy(const pf_graph *g, pf_nid id)
{
	int64_t v;
	return int_of(g, id, &v) && v != 0;
}

/* A tuple of non-negative ints (shape) or ints (stride) into the arena. */
static int64_t *int_tuple(pf_model *m, pf_nid id, uint32_t *ndim, bool nonneg)
{
	const pf_graph *g = &m->g;
	int k = pf_kind_of(g, id);
	if (k == PF_K_CALL) {
		/* torch.Size((2, 3)) in old files */
		const pf_node *n = pf_node_at(g, id);
		if (!pf_is_global(g, n->u.call.func, "torch", "Size") || pf_seq_len(g, n->u.call.args) != 1)
			return NULL;
		id = pf_seq_at(g, n->u.call.args, 0);
		k = pf_kind_of(g, id);
	}
	if (k != PF_K_TUPLE && k != PF_K_LIST)
		return NULL;
	uint32_t n = pf_seq_len(g, id);
	if (n > 64)
		return NULL;
	int64_t *v = pf_arena_alloc(&m->g.arena, (n ? n : 1) * sizeof(int64_t));
	if (!v)
		return NULL;
	for (uint32_t i = 0; i < n; i++)
		if (!int_of(g, pf_seq_at(g, id, i), &v[i]) || (nonneg && v[i] < 0))
			return NULL;
	*ndim = n;
	return v;
}

static int add_tensor(pf_model *m, pf_nid node, pf_tensor *t, pf_error *err)
{
	if (GROW(m, tensors, n_tensors, cap_tensors, err))
		return -1;
	t->node = node;
	m->tensors[m->n_tensors] = *t;
	return put(&m->node_tensor, node, m->n_tensors++, err);
}

static int alias_tensor(pf_model *m, pf_nid wrapper, pf_nid inner, pf_error *err)
{
	uint32_t idx;
	if (!pf_hashmap_get(&m->node_tensor, inner, &idx))
		return 0;
	m->tensors[idx].node = wrapper;
	return put(&m->node_tensor, wrapper, idx, err);
}

/* Dense in C order (last dim fastest) or, with fortran, in Fortran order. */
static bool is_dense(const pf_tensor *t, bool fortran)
{
	int64_t expect = 1;
	for (uint32_t k = 0; k < t->ndim; k++) {
		uint32_t i = fortran ? k : t->ndim - 1 - k;
		if (t->shape[i] == 1)
			continue;
		if (t->stride[i] != expect)
			return false;
		expect *= t->shape[i];
	}
	return true;
}

/*
 * Shape, stride and offset are checked against the bytes available in
 * `avail` (from data_off on); decides the layout.
 */
static int settle_layout(pf_model *m, pf_tensor *t, uint64_t base_off, uint64_t avail, uint64_t at,
			 pf_error *err)
{
	uint64_t numel = 1, last = 0;
	for (uint32_t i = 0; i < t->ndim; i++) {
		if (__builtin_mul_overflow(numel, (uint64_t)t->shape[i], &numel))
			return pf_fail(err, PF_E_FORMAT, at, "tensor shape overflows");
	}
	t->numel = numel;
	if (__builtin_mul_overflow(numel, (uint64_t)t->itemsize, &t->nbytes))
		return pf_fail(err, PF_E_FORMAT, at, "tensor size overflows");
	if (numel > 0) {
		for (uint32_t i = 0; i < t->ndim; i++) {
			uint64_t span;
			if (t->stride[i] < 0)
				return pf_fail(err, PF_E_FORMAT, at, "negative stride");
			if (__builtin_mul_overflow((uint64_t)(t->shape[i] - 1), (uint64_t)t->stride[i], &span) ||
			    __builtin_add_overflow(last, span, &last))
				return pf_fail(err, PF_E_FORMAT, at, "tensor extent overflows");
		}
		uint64_t end, end_bytes;
		if (__builtin_add_overflow(t->offset, last, &end) || __builtin_add_overflow(end, 1, &end) ||
		    __builtin_mul_overflow(end, (uint64_t)t->itemsize, &end_bytes) || end_bytes > avail)
			return pf_fail(err, PF_E_FORMAT, at, "tensor reaches past the end of its storage");
	}
	t->data_off = base_off + t->offset * t->itemsize;
	t->fortran = false;
	if (numel == 0 || is_dense(t, false))
		t->layout = PF_TL_CONTIGUOUS;
	else if (t->ndim > 1 && is_dense(t, true)) {
		t->layout = PF_TL_CONTIGUOUS;
		t->fortran = true;
	} else
		t->layout = PF_TL_STRIDED;
	const pf_segment *s = &m->segs[t->seg];
	t->file_off = (t->layout == PF_TL_CONTIGUOUS && s->file_off >= 0) ? s->file_off + (int64_t)t->data_off : -1;
	return 0;
}

/*
 * func(*args) where func is one of torch's tensor rebuild functions taking
 * (storage, storage_offset, size, stride, ...).  Returns 1 when a tensor was
 * made, 0 when func is not one of them.
 */
static int rebuild_storage_tensor(pf_model *m, pf_nid node, pf_nid func, pf_nid args, pf_error *err)
{
	pf_graph *g = &m->g;
	const pf_global *gl = pf_node_global(g, func);
	const pf_node *n = pf_node_at(g, node);
	uint64_t at = seg_origin(m, n->seg) + n->off;
	int rg_index, dtype_index = -1;

	if (!gl || strcmp(gl->module, "torch._utils") != 0)
		return 0;
	if (strcmp(gl->name, "_rebuild_tensor_v2") == 0)
		rg_index = 4;
	else if (strcmp(gl->name, "_rebuild_tensor") == 0)
		rg_index = -1;
	else if (strcmp(gl->name, "_rebuild_tensor_v3") == 0)
		rg_index = 4, dtype_index = 6;
	else if (strcmp(gl->name, "_rebuild_qtensor") == 0)
		rg_index = 5;
	else
		return 0;

	uint32_t st_idx;
	pf_nid storage = pf_seq_at(g, args, 0);
	if (pf_seq_len(g, args) < 4 || !pf_hashmap_get(&m->node_storage, storage, &st_idx))
		return pf_fail(err, PF_E_FORMAT, at, "%s without a storage", gl->name);
	const pf_storage *st = &m->storages[st_idx];
	if (!st->have_data)
		return pf_fail(err, PF_E_FORMAT, at, "storage %s has no data", st->key);

	pf_tensor t = {.storage = (int32_t)st_idx, .dtype = st->dtype, .device = st->location, .seg = st->seg};
	if (dtype_index >= 0) {
		const pf_global *dg = pf_node_global(g, pf_seq_at(g, args, (uint32_t)dtype_index));
		t.dtype = dg ? pf_dtype_from_name(dg->name) : PF_DT_NONE;
		if (t.dtype == PF_DT_NONE)
			return pf_fail(err, PF_E_FORMAT, at, "unknown dtype in _rebuild_tensor_v3");
	}
	const pf_dtype_info *di = pf_dtype_get(t.dtype);
	t.itemsize = di->itemsize;
	snprintf(t.dtype_name, sizeof(t.dtype_name), "%s", di->name);
	snprintf(t.descr, sizeof(t.descr), "%s", di->npy_descr);

	int64_t off;
	uint32_t nd_stride = 0;
	if (!int_of(g, pf_seq_at(g, args, 1), &off) || off < 0 ||
	    !(t.shape = int_tuple(m, pf_seq_at(g, args, 2), &t.ndim, true)) ||
	    !(t.stride = int_tuple(m, pf_seq_at(g, args, 3), &nd_stride, false)) || nd_stride != t.ndim)
		return pf_fail(err, PF_E_FORMAT, at, "malformed offset, size or stride in %s", gl->name);
	t.offset = (uint64_t)off;
	t.requires_grad = rg_index >= 0 && truthy(g, pf_seq_at(g, args, (uint32_t)rg_index));
	if (settle_layout(m, &t, st->off, st->nbytes, at, err) || add_tensor(m, node, &t, err))
		return -1;
	return 1;
}

static const char *const numpy_multiarray[] = {"numpy.core.multiarray", "numpy._core.multiarray", NULL};
static const char *const numpy_numeric[] = {"numpy.core.numeric", "numpy._core.numeric", NULL};

/*
 * A numpy dtype node: numpy.dtype(typestr, False, True) with BUILD state
 * (3, endian, ...).  Fills descr / name / itemsize; false for object,
 * structured and other dtypes that are not plain element arrays.
 */
static bool numpy_dtype(const pf_model *m, pf_nid id, pf_tensor *t)
{
	const pf_graph *g = &m->g;
	const pf_node *n = pf_node_at(g, id);
	char ts[40];

	if (!n || n->kind != PF_K_CALL || !pf_is_global(g, n->u.call.func, "numpy", "dtype"))
		return false;
	const pf_node *s = pf_node_at(g, pf_seq_at(g, n->u.call.args, 0));
	if (!s || s->kind != PF_K_STR || s->u.s.len == 0 || s->u.s.len >= sizeof(ts) - 2)
		return false;
	size_t len = 0;
	const pf_node *endian = pf_node_at(g, pf_seq_at(g, n->u.call.state, 1));
	bool has_order = strchr("<>|=", s->u.s.p[0]) != NULL;
	if (!has_order && endian && endian->kind == PF_K_STR && endian->u.s.len == 1)
		ts[len++] = (char)endian->u.s.p[0];
	/* structured dtypes carry names/fields in the state: not element arrays */
	if (pf_seq_len(g, n->u.call.state) >= 5 && pf_kind_of(g, pf_seq_at(g, n->u.call.state, 3)) != PF_K_NONE)
		return false;
	memcpy(ts + len, s->u.s.p, (size_t)s->u.s.len);
	len += (size_t)s->u.s.len;
	ts[len] = '\0';
	return pf_numpy_typestr(ts, len, &t->itemsize, t->descr, sizeof(t->descr), t->dtype_name,
				sizeof(t->dtype_name));
}

static int numpy_tensor(pf_model *m, pf_nid node, pf_tensor *t, pf_nid shape, pf_nid data, bool fortran,
			pf_error *err)
{
	uint32_t seg;
	const pf_node *n = pf_node_at(&m->g, node);
	uint64_t at = seg_origin(m, n->seg) + n->off;
	int found = bytes_segment(m, data, &seg, err);
	if (found <= 0)
		return found; /* object arrays hold a list; out-of-band buffers hold nothing */
	if (!(t->shape = int_tuple(m, shape, &t->ndim, true)))
		return 0;
	int64_t *stride = pf_arena_alloc(&m->g.arena, (t->ndim ? t->ndim : 1) * sizeof(int64_t));
	if (!stride)
		return pf_fail(err, PF_E_NOMEM, at, "out of memory");
	int64_t acc = 1;
	for (uint32_t k = 0; k < t->ndim; k++) {
		uint32_t i = fortran ? k : t->ndim - 1 - k;
		stride[i] = acc;
		if (t->shape[i] && __builtin_mul_overflow(acc, t->shape[i], &acc))
			return 0;
	}
	t->stride = stride;
	t->storage = -1;
	t->dtype = PF_DT_NUMPY;
	t->seg = seg;
	t->device = NULL;
	pf_error local = {0};
	if (settle_layout(m, t, 0, m->segs[seg].len, at, &local))
		return 0; /* numpy itself would refuse it; keep it as an inert object */
	if (t->nbytes != m->segs[seg].len)
		return 0;
	return add_tensor(m, node, t, err) ? -1 : 1;
}

/* _reconstruct(ndarray, (0,), b'b') + BUILD (version, shape, dtype, fortran, data). */
static int numpy_reconstruct(pf_model *m, pf_nid node, pf_error *err)
{
	const pf_graph *g = &m->g;
	const pf_node *n = pf_node_at(g, node);
	if (!is_global_in(g, n->u.call.func, numpy_multiarray, "_reconstruct"))
		return 0;
	pf_nid st = n->u.call.state;
	uint32_t len = pf_seq_len(g, st), base = len == 5 ? 1 : 0;
	if (pf_kind_of(g, st) != PF_K_TUPLE || (len != 4 && len != 5))
		return 0;
	pf_tensor t = {0};
	if (!numpy_dtype(m, pf_seq_at(g, st, base + 1), &t))
		return 0;
	return numpy_tensor(m, node, &t, pf_seq_at(g, st, base), pf_seq_at(g, st, base + 3),
			    truthy(g, pf_seq_at(g, st, base + 2)), err);
}

/* protocol 5: _frombuffer(buffer, dtype, shape, order) */
static int numpy_frombuffer(pf_model *m, pf_nid node, pf_error *err)
{
	const pf_graph *g = &m->g;
	const pf_node *n = pf_node_at(g, node);
	pf_nid args = n->u.call.args;
	if (!is_global_in(g, n->u.call.func, numpy_numeric, "_frombuffer") || pf_seq_len(g, args) != 4)
		return 0;
	pf_tensor t = {0};
	bool f = pf_str_eq(g, pf_seq_at(g, args, 3), "F");
	if (!f && !pf_str_eq(g, pf_seq_at(g, args, 3), "C"))
		return 0;
	if (!numpy_dtype(m, pf_seq_at(g, args, 1), &t))
		return 0;
	return numpy_tensor(m, node, &t, pf_seq_at(g, args, 2), pf_seq_at(g, args, 0), f, err);
}

/* Calls that wrap a tensor made earlier: parameters, subclasses, device tensors. */
static int wrap_tensor(pf_model *m, pf_nid node, pf_error *err)
{
	pf_graph *g = &m->g;
	const pf_node *n = pf_node_at(g, node);
	pf_nid func = n->u.call.func, args = n->u.call.args;
	const pf_global *gl = pf_node_global(g, func);
	uint32_t idx;

	if (!gl)
		return 0;
	bool utils = strcmp(gl->module, "torch._utils") == 0;
	if ((utils && (strcmp(gl->name, "_rebuild_parameter") == 0 ||
		       strcmp(gl->name, "_rebuild_parameter_with_state") == 0)) ||
	    (strcmp(gl->module, "torch.nn.parameter") == 0 && strcmp(gl->name, "Parameter") == 0)) {
		pf_nid inner = pf_seq_at(g, args, 0);
		if (!pf_hashmap_get(&m->node_tensor, inner, &idx))
			return 0;
		m->tensors[idx].is_parameter = true;
		m->tensors[idx].requires_grad = pf_seq_len(g, args) < 2 || truthy(g, pf_seq_at(g, args, 1));
		return alias_tensor(m, node, inner, err) ? -1 : 1;
	}
	if (utils && (strcmp(gl->name, "_rebuild_device_tensor_from_numpy") == 0 ||
		      strcmp(gl->name, "_rebuild_xla_tensor") == 0 ||
		      strcmp(gl->name, "_rebuild_device_tensor_from_cpu_tensor") == 0)) {
		pf_nid inner = pf_seq_at(g, args, 0);
		const pf_node *dev = pf_node_at(g, pf_seq_at(g, args, 2));
		if (!pf_hashmap_get(&m->node_tensor, inner, &idx))
			return 0;
		if (dev && dev->kind == PF_K_STR)
			m->tensors[idx].device = arena_str(m, dev);
		m->tensors[idx].requires_grad = truthy(g, pf_seq_at(g, args, 3));
		return alias_tensor(m, node, inner, err) ? -1 : 1;
	}
	if (strcmp(gl->module, "torch._tensor") == 0 && strcmp(gl->name, "_rebuild_from_type_v2") == 0) {
		/* (func, new_type, args, state): the tensor is func(*args) */
		int made = rebuild_storage_tensor(m, node, pf_seq_at(g, args, 0), pf_seq_at(g, args, 2), err);
		return made;
	}
	return 0;
}

static int find_tensors(pf_model *m, uint32_t archive, pf_error *err)
{
	const pf_archive *a = &m->archives[archive];
	for (pf_nid id = a->first_node; id < a->end_node; id++) {
		const pf_node *n = &m->g.nodes[id];
		int made;
		if (n->kind != PF_K_CALL)
			continue;
		made = rebuild_storage_tensor(m, id, n->u.call.func, n->u.call.args, err);
		if (!made)
			made = wrap_tensor(m, id, err);
		if (!made)
			made = numpy_reconstruct(m, id, err);
		if (!made)
			made = numpy_frombuffer(m, id, err);
		if (made < 0)
			return -1;
	}
	return 0;
}

/* ---- the model --------------------------------------------------------- */

static void model_zero(pf_model *m)
{
	memset(m, 0, sizeof(*m));
	pf_hashmap_init(&m->node_tensor);
	pf_hashmap_init(&m->node_storage);
	pf_hashmap_init(&m->node_archive);
	pf_hashmap_init(&m->node_seg);
	pf_hashmap_init(&m->key_storage);
}

/* Open every archive on the work list: the file first, then what each embeds. */
static int open_archives(pf_model *m, pf_error *err)
{
	pf_hashmap required;
	int rc = -1;

	pf_hashmap_init(&required);
	if (push_archive(m, 0, 0, 0, err) || put(&required, 0, 1, err))
		goto out;
	for (uint32_t i = 0; i < m->n_archives; i++) {
		uint32_t must;
		bool is_required = pf_hashmap_get(&required, i, &must);
		pf_error local = {0};
		uint32_t storages_before = m->n_storages, pickles_before = m->n_pickles;

		if (open_archive(m, i, is_required ? err : &local)) {
			if (is_required)
				goto out;
			/* a bytes value that only looked like a torch.save file:
			 * it stays bytes, and what its parse made is forgotten */
			m->archives[i].container = PF_C_PICKLE;
			m->archives[i].root = 0;
			m->n_storages = storages_before;
			m->n_pickles = pickles_before;
			m->archives[i].end_node = m->archives[i].first_node;
			continue;
		}
		if (link_blob_storage(m, i, err) || queue_embedded(m, i, &required, err))
			goto out;
		if (i > 0 && put(&m->node_archive, m->archives[i].host, i, err))
			goto out;
	}
	rc = 0;
out:
	pf_hashmap_free(&required);
	return rc;
}

int pf_model_sniff(const uint8_t *file, uint64_t len, pf_error *err)
{
	if (len >= 2 && file[0] == 0x80 && file[1] >= 2 && file[1] <= 5)
		return 1;
	/* protocol 0/1 legacy files start with the magic number as LONG text */
	if (len >= sizeof(legacy_magic_text) - 1 &&
	    memcmp(file, legacy_magic_text, sizeof(legacy_magic_text) - 1) == 0)
		return 1;
	/* protocol 0/1 pickles: a container or global opcode first, STOP last */
	if (len >= 2 && strchr("(}])c", file[0]) && file[0] && file[len - 1] == '.')
		return 1;
	if (len < 4 || memcmp(file, "PK\3\4", 4) != 0)
		return 0;
	pf_limits limits = pf_limits_default();
	pf_arena arena;
	pf_zip z;
	int found = 0;
	pf_arena_init(&arena);
	if (pf_zip_open_directory(&z, file, len, &limits, &arena, err) == 0) {
		found = pf_zip_find_rel(&z, "data.pkl") != NULL;
		if (!found)
			fail_no_data_pkl(&z, 0, err);
		pf_zip_free(&z);
	}
	pf_arena_free(&arena);
	return found;
}

int pf_model_open(pf_model *m, const uint8_t *file, uint64_t len, const pf_limits *limits, pf_error *err)
{
	model_zero(m);
	m->file = file;
	m->file_len = len;
	m->limits = limits ? *limits : pf_limits_default();
	if (pf_graph_init(&m->g, &m->limits, err))
		return -1;
	pf_segment whole = {.p = file, .len = len, .file_off = 0, .how = PF_SEG_FILE};
	uint32_t seg0;
	if (add_segment(m, &whole, &seg0, err) || open_archives(m, err))
		goto fail;
	for (uint32_t i = 0; i < m->n_archives; i++)
		if (m->archives[i].end_node > m->archives[i].first_node && find_tensors(m, i, err))
			goto fail;
	return 0;
fail:
	pf_model_free(m);
	return -1;
}

void pf_model_free(pf_model *m)
{
	for (uint32_t i = 0; i < m->n_archives; i++)
		pf_zip_free(&m->archives[i].zip);
	pf_graph_free(&m->g);
	free(m->segs);
	free(m->archives);
	free(m->storages);
	free(m->pickles);
	free(m->tensors);
	pf_hashmap_free(&m->node_tensor);
	pf_hashmap_free(&m->node_storage);
	pf_hashmap_free(&m->node_archive);
	pf_hashmap_free(&m->node_seg);
	pf_hashmap_free(&m->key_storage);
	model_zero(m);
}

uint64_t pf_model_node_offset(const pf_model *m, pf_nid id)
{
	const pf_node *n = pf_node_at(&m->g, id);
	return n ? seg_origin(m, n->seg) + n->off : 0;
}

const pf_tensor *pf_model_tensor_of(const pf_model *m, pf_nid id)
{
	uint32_t idx;
	return pf_hashmap_get(&m->node_tensor, id, &idx) ? &m->tensors[idx] : NULL;
}

const pf_archive *pf_model_archive_at(const pf_model *m, pf_nid id)
{
	uint32_t idx;
	if (!pf_hashmap_get(&m->node_archive, id, &idx) || !m->archives[idx].root)
		return NULL;
	return &m->archives[idx];
}

int pf_tensor_read(const pf_model *m, const pf_tensor *t, uint64_t off, void *buf, uint64_t n, pf_error *err)
{
	const pf_segment *s = &m->segs[t->seg];
	uint8_t *out = buf;
	uint64_t end;

	if (__builtin_add_overflow(off, n, &end) || end > t->nbytes)
		return pf_fail(err, PF_E_FORMAT, 0, "read past the end of the tensor");
	if (n == 0)
		return 0;
	if (t->layout == PF_TL_CONTIGUOUS) {
		memcpy(out, s->p + t->data_off + off, (size_t)n);
		return 0;
	}
	/* strided: walk the elements in C order, starting at the one holding off */
	uint64_t isz = t->itemsize, elem = off / isz, skip = off % isz;
	uint64_t idx[64];
	uint64_t rem = elem;
	for (uint32_t i = t->ndim; i-- > 0;) {
		idx[i] = rem % (uint64_t)t->shape[i];
		rem /= (uint64_t)t->shape[i];
	}
	while (n > 0) {
		uint64_t src = t->offset;
		for (uint32_t i = 0; i < t->ndim; i++)
			src += idx[i] * (uint64_t)t->stride[i];
		const uint8_t *p = s->p + (t->data_off - t->offset * isz) + src * isz + skip;
		uint64_t take = isz - skip < n ? isz - skip : n;
		memcpy(out, p, (size_t)take);
		out += take;
		n -= take;
		skip = 0;
		for (uint32_t i = t->ndim; i-- > 0;) {
			if (++idx[i] < (uint64_t)t->shape[i])
				break;
			idx[i] = 0;
		}
	}
	return 0;
}
