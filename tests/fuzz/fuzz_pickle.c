/*
 * fuzz_pickle.c - libFuzzer target for codec/pickle.c (the symbolic pickle machine).
 *
 * Runs up to five pickles back to back from the input into one graph (the
 * way a legacy torch.save file is read: each starts where the previous
 * STOP ended), then walks every node.  Besides ASan/UBSan/LSan it checks:
 *   - a failure sets a code, a non-empty message and an offset <= size;
 *   - a success ends inside the input (start < end <= size) with a root
 *     node of a valid kind;
 *   - every node's children are node ids of the graph, and every payload
 *     that points into the input lies inside it (its bytes are read, so
 *     ASan sees any pointer past the buffer).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "pickle.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(int ok)
{
	if (!ok)
		abort();
}

static volatile uint8_t sink;

static void touch(const uint8_t *p, uint64_t n)
{
	uint8_t x = 0;
	for (uint64_t i = 0; i < n; i++)
		x ^= p[i];
	sink = x;
}

static int has_seq(int kind)
{
	return kind == PF_K_LIST || kind == PF_K_TUPLE || kind == PF_K_DICT || kind == PF_K_SET ||
	       kind == PF_K_FROZENSET;
}

static void check_graph(const pf_graph *g, const uint8_t *data, size_t size)
{
	for (uint32_t id = 1; id < g->n_nodes; id++) {
		const pf_node *n = &g->nodes[id];
		check(n->kind >= PF_K_NONE && n->kind <= PF_K_BUFFER);
		check(strcmp(pf_kind_name(n->kind), "invalid") != 0);
		check(n->off < size || (size == 0 && n->off == 0));
		switch (n->kind) {
		case PF_K_BIGINT:
		case PF_K_STR:
		case PF_K_BYTES:
			if (!(n->flags & PF_F_DECODED)) {
				check(n->u.s.len == 0 ||
				      (n->u.s.p >= data && n->u.s.len <= size &&
				       n->u.s.p + n->u.s.len <= data + size));
				check(n->u.s.off <= size && n->u.s.len <= size - n->u.s.off);
			}
			touch(n->u.s.p, n->u.s.len);
			break;
		case PF_K_GLOBAL: {
			const pf_global *gl = pf_node_global(g, id);
			check(gl != NULL && gl->module && gl->name);
			touch((const uint8_t *)gl->module, strlen(gl->module));
			touch((const uint8_t *)gl->name, strlen(gl->name));
			break;
		}
		case PF_K_CALL:
			check(n->u.call.func < g->n_nodes && n->u.call.args < g->n_nodes &&
			      n->u.call.kwargs < g->n_nodes && n->u.call.state < g->n_nodes &&
			      n->u.call.listitems < g->n_nodes && n->u.call.dictitems < g->n_nodes);
			break;
		case PF_K_PERSID:
			check(n->u.persid.pid < g->n_nodes);
			break;
		default:
			if (has_seq(n->kind)) {
				uint32_t len = pf_seq_len(g, id);
				check(len == n->u.seq.n && n->u.seq.n <= n->u.seq.cap);
				for (uint32_t i = 0; i < len; i++) {
					pf_nid c = pf_seq_at(g, id, i);
					check(c > 0 && c < g->n_nodes);
				}
				if (n->kind == PF_K_DICT)
					(void)pf_dict_get(g, id, "key");
			}
		}
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	pf_limits lim = pf_limits_default();
	pf_graph g;
	pf_error err = {0};
	uint64_t start = 0;

	if (pf_graph_init(&g, &lim, &err))
		return 0;
	for (int i = 0; i < 5 && start < size; i++) {
		pf_pickle_info info;
		pf_error_clear(&err);
		if (pf_pickle_run(&g, data, size, start, 0, 1000, &info, &err)) {
			check(err.code != PF_OK && err.msg[0] != '\0');
			check(err.offset >= 1000 && err.offset <= 1000 + (uint64_t)size);
			check(strcmp(pf_code_name(err.code), "unknown") != 0);
			break;
		}
		check(err.code == PF_OK);
		check(info.start == start && info.end > start && info.end <= size);
		check(info.root > 0 && info.root < g.n_nodes);
		check(pf_kind_of(&g, info.root) != 0);
		check(info.protocol >= 0 && info.protocol <= 5);
		start = info.end;
	}
	check_graph(&g, data, size);
	pf_graph_free(&g);
	return 0;
}
