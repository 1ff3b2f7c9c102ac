#include "legacy.h"

#include <string.h>

#include "cursor.h"

/* 0x1950a86a20f9469cfc6c as LONG1 little-endian payload. */
static const uint8_t magic_le[10] = {0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19};

bool pf_legacy_is_magic(const pf_graph *g, pf_nid first_root)
{
	const pf_node *n = pf_node_at(g, first_root);
	if (!n || n->kind != PF_K_BIGINT)
		return false;
	if (n->flags & PF_F_DECIMAL) /* protocol 0: LONG as decimal text */
		return n->u.s.len == 24 && memcmp(n->u.s.p, "119547037146038801333356", 24) == 0;
	return n->u.s.len == 10 && memcmp(n->u.s.p, magic_le, 10) == 0;
}

int pf_legacy_parse_rest(pf_graph *g, const uint8_t *buf, uint64_t len, uint64_t p1_end,
			 uint32_t seg, uint64_t origin, pf_legacy *out, pf_error *err)
{
	pf_pickle_info p2, p3, p5;
	const pf_node *n;

	memset(out, 0, sizeof(*out));
	if (pf_pickle_run(g, buf, len, p1_end, seg, origin, &p2, err))
		return -1;
	n = pf_node_at(g, p2.root);
	if (!n || n->kind != PF_K_INT || n->u.i != 1001)
		return pf_fail(err, PF_E_FORMAT, origin + p1_end, "invalid legacy protocol version (expected 1001)");
	out->protocol_version = 1001;
	if (pf_pickle_run(g, buf, len, p2.end, seg, origin, &p3, err) ||
	    pf_pickle_run(g, buf, len, p3.end, seg, origin, &out->main, err) ||
	    pf_pickle_run(g, buf, len, out->main.end, seg, origin, &p5, err))
		return -1;
	if (pf_kind_of(g, p5.root) != PF_K_LIST)
		return pf_fail(err, PF_E_FORMAT, origin + out->main.end, "legacy storage key list is not a list");
	for (uint32_t i = 0; i < pf_seq_len(g, p5.root); i++)
		if (pf_kind_of(g, pf_seq_at(g, p5.root, i)) != PF_K_STR)
			return pf_fail(err, PF_E_FORMAT, origin + out->main.end, "legacy storage key %u is not a str", i);
	out->keys = p5.root;
	out->raw_off = p5.end;
	return 0;
}

int pf_legacy_sections(const uint8_t *buf, uint64_t len, uint64_t origin, uint64_t raw_off,
		       uint32_t n, const unsigned *itemsize, uint64_t *data_off,
		       uint64_t *count, pf_error *err)
{
	pf_cursor c;
	pf_cursor_init(&c, buf, len, origin);
	if (raw_off > len)
		return pf_fail(err, PF_E_TRUNCATED, origin + len, "raw storage sections missing");
	c.pos = raw_off;
	for (uint32_t i = 0; i < n; i++) {
		uint64_t cnt, bytes;
		const uint8_t *p;
		uint64_t at = pf_cursor_abs(&c);
		if (pf_cursor_le(&c, 8, &cnt, err))
			return -1;
		if (cnt > INT64_MAX || __builtin_mul_overflow(cnt, (uint64_t)itemsize[i], &bytes))
			return pf_fail(err, PF_E_FORMAT, at, "storage %u: element count %llu overflows", i,
				       (unsigned long long)cnt);
		data_off[i] = c.pos;
		count[i] = cnt;
		if (pf_cursor_take(&c, bytes, &p, err))
			return -1;
	}
	return 0;
}
