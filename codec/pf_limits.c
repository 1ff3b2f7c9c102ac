#include "pf_limits.h"

pf_limits pf_limits_default(void)
{
	pf_limits l = {
		.max_opcodes = 10000000ull,
		.max_stack = 100000ull,
		.max_memo = 1000000ull,
		.max_nodes = 20000000ull,
		.max_depth = 1000ull,
		.max_zip_entries = 1000000ull,
		.max_name_len = 4096ull,
		.max_inflate = 1ull << 30,
		.max_inflate_ratio = 100ull,
		.max_embed_depth = 8ull,
		.max_meta = 32ull << 20,
		.max_decoded = 1ull << 30,
	};
	return l;
}
