/*
 * pf_limits.h - the resource limits applied to untrusted model files.
 *
 * Every limit has a documented default (README "Limits"); hitting one is a
 * PF_E_LIMIT error naming the limit, raised before anything large is
 * allocated.  Callers may lower or raise them; 0 is never "unlimited".
 */
#ifndef PF_LIMITS_H
#define PF_LIMITS_H

#include <stdint.h>

typedef struct pf_limits {
	uint64_t max_opcodes;     /* opcodes executed per pickle            (10^7) */
	uint64_t max_stack;       /* pickle stack + mark stack depth        (10^5) */
	uint64_t max_memo;        /* memo entries per pickle                (10^6) */
	uint64_t max_nodes;       /* object-graph nodes per model           (2*10^7) */
	uint64_t max_depth;       /* container nesting when walking a graph (1000) */
	uint64_t max_zip_entries; /* central-directory entries              (10^6) */
	uint64_t max_name_len;    /* zip entry name / GLOBAL name bytes     (4096) */
	uint64_t max_inflate;     /* bytes one deflated record may expand to (1 GiB) */
	uint64_t max_inflate_ratio; /* inflated/compressed size             (100) */
	uint64_t max_embed_depth; /* torch.save files nested in bytes values (8) */
	uint64_t max_meta;        /* estimated bytes of meta.json per model  (32 MiB) */
	uint64_t max_decoded;     /* bytes decoded into memory per model (latin-1
	                             text, inflated records)               (1 GiB) */
} pf_limits;

/* The documented defaults. */
pf_limits pf_limits_default(void);

#endif
