/*
 * pickle.h - a symbolic pickle machine: protocols 0-5, every opcode.
 *
 * It turns a pickle into an object graph of inert nodes and never imports,
 * calls or executes anything.  GLOBAL / STACK_GLOBAL / INST name a
 * `module.name` pair (a pf_global); REDUCE, NEWOBJ, NEWOBJ_EX, OBJ and INST
 * become PF_K_CALL nodes that record the callable, its arguments and
 * whatever BUILD / APPEND(S) / SETITEM(S) later did to the result.
 *
 * The machine is an explicit loop over opcodes with its own value stack and
 * mark stack (after CPython's _pickle.c load()); it recurses on nothing.
 * The memo is a hash map, so sparse indices (PUT 4294967295) cost one
 * entry.  Every length read from the input is checked against the bytes
 * that are left before anything is allocated; limits come from pf_limits.
 *
 * One graph may hold the nodes of several pickles (a legacy torch.save file
 * is five pickles; embedded files add more).  Each pf_pickle_run() has its
 * own memo and stack; nodes and globals are shared by the graph.
 *
 * Memory: nodes point into the buffer they were read from (strings, bytes,
 * big integers), which must outlive the graph; decoded text (protocol-0
 * STRING/UNICODE) is copied into the graph's arena.
 */
#ifndef PF_PICKLE_H
#define PF_PICKLE_H

#include <stdbool.h>
#include <stdint.h>

#include "arena.h"
#include "error.h"
#include "pf_limits.h"

typedef uint32_t pf_nid; /* index into pf_graph.nodes; 0 means "no node" */

typedef enum pf_kind {
	PF_K_NONE = 1,
	PF_K_BOOL,      /* u.b */
	PF_K_INT,       /* u.i: fits in int64 */
	PF_K_BIGINT,    /* u.s: little-endian two's complement (LONG1/LONG4), or
	                   decimal text when flags & PF_F_DECIMAL (INT/LONG opcodes:
	                   optional sign and digits as written, no trailing 'L');
	                   only values that do not fit in int64 */
	PF_K_FLOAT,     /* u.f */
	PF_K_STR,       /* u.s: UTF-8 text (BINUNICODE*, not validated; UNICODE decoded,
	                   lone surrogates in their 3-byte form), or with PF_F_PY2STR the
	                   bytes of a Python 2 str (BINSTRING/SHORT_BINSTRING as stored,
	                   STRING with its escapes decoded): any bytes, no encoding */
	PF_K_BYTES,     /* u.s: BINBYTES*, SHORT_BINBYTES, BYTEARRAY8 (flags & PF_F_BYTEARRAY) */
	PF_K_LIST,      /* u.seq */
	PF_K_TUPLE,     /* u.seq */
	PF_K_DICT,      /* u.seq: key, value, key, value ... in insertion order */
	PF_K_SET,       /* u.seq */
	PF_K_FROZENSET, /* u.seq */
	PF_K_GLOBAL,    /* u.g; EXT1/EXT2/EXT4 give module "copyreg._extension_registry"
	                   and the decimal extension code as name (never looked up) */
	PF_K_CALL,      /* u.call */
	PF_K_PERSID,    /* u.persid: result of PERSID / BINPERSID */
	PF_K_BUFFER,    /* NEXT_BUFFER: out-of-band data that is not in the file */
} pf_kind;

typedef enum pf_call_how {
	PF_HOW_REDUCE = 0,  /* func(*args) */
	PF_HOW_NEWOBJ,      /* cls.__new__(cls, *args) */
	PF_HOW_NEWOBJ_EX,   /* cls.__new__(cls, *args, **kwargs) */
	PF_HOW_OBJ,         /* OBJ: cls(*args) with cls the first item after MARK */
	PF_HOW_INST,        /* INST module name: cls(*args) */
} pf_call_how;

enum {
	PF_F_BYTEARRAY = 1u << 0, /* PF_K_BYTES from BYTEARRAY8 */
	PF_F_DECODED = 1u << 1,   /* u.s.p points into the arena, not the input:
	                             u.s.off is the offset of the encoded text */
	PF_F_DECIMAL = 1u << 2,   /* PF_K_BIGINT holds decimal ASCII text */
	PF_F_READONLY = 1u << 3,  /* READONLY_BUFFER was applied */
	PF_F_PY2STR = 1u << 4,    /* PF_K_STR from a Python 2 str opcode (S, T, U) */
};

typedef struct pf_seq {
	pf_nid *v;
	uint32_t n, cap;
} pf_seq;

typedef struct pf_node {
	uint8_t kind;     /* pf_kind */
	uint8_t how;      /* pf_call_how, for PF_K_CALL */
	uint16_t flags;   /* PF_F_* */
	uint32_t seg;     /* segment id passed to pf_pickle_run */
	uint64_t off;     /* offset in the segment of the opcode that made the node */
	union {
		bool b;
		int64_t i;
		double f;
		struct {
			const uint8_t *p; /* payload (not NUL-terminated) */
			uint64_t len;     /* payload bytes */
			uint64_t off;     /* offset in the segment of the payload's first byte */
		} s;
		pf_seq seq;
		struct {
			uint32_t index;   /* into pf_graph.globals */
			pf_nid module;    /* STACK_GLOBAL: the str node naming the module; 0 for GLOBAL/INST */
			pf_nid name;      /* STACK_GLOBAL: the str node naming the attribute */
		} g;
		struct {
			pf_nid func;      /* the callable / class (usually a PF_K_GLOBAL) */
			pf_nid args;      /* PF_K_TUPLE (OBJ/INST: a tuple of the marked
			                     items), or an opaque node (CALL, PERSID,
			                     GLOBAL) whose value may be a tuple */
			pf_nid kwargs;    /* NEWOBJ_EX: PF_K_DICT or an opaque node, else 0 */
			pf_nid state;     /* argument of the last BUILD, or 0 */
			pf_nid listitems; /* PF_K_LIST of APPEND(S) made onto the object, or 0 */
			pf_nid dictitems; /* PF_K_DICT of SETITEM(S) made onto the object, or 0 */
			uint32_t n_builds;
		} call;
		struct {
			pf_nid pid;       /* the persistent id object (PERSID: a PF_K_STR) */
		} persid;
	} u;
} pf_node;

typedef struct pf_global {
	const char *module; /* NUL-terminated copies in the arena */
	const char *name;
	uint64_t first_off; /* opcode offset of the first reference */
	uint32_t first_seg;
	uint32_t uses;      /* how many GLOBAL/STACK_GLOBAL/INST opcodes named it */
} pf_global;

typedef struct pf_graph {
	pf_node *nodes;      /* nodes[0] is unused so that 0 can mean "none" */
	uint32_t n_nodes, cap_nodes;
	pf_global *globals;  /* distinct (module, name) pairs in first-use order */
	uint32_t n_globals, cap_globals;
	uint32_t *gl_hash;   /* open-addressing index into globals (private) */
	uint32_t gl_hash_cap;
	pf_limits limits;
	pf_arena arena;
} pf_graph;

typedef struct pf_pickle_info {
	pf_nid root;          /* the value STOP returned */
	int protocol;         /* argument of the PROTO opcode; 0 when there is none */
	uint64_t start;       /* offset of the first opcode (as passed in) */
	uint64_t end;         /* offset one past STOP */
	uint64_t n_opcodes;
} pf_pickle_info;

/* limits NULL means pf_limits_default().  max_nodes and max_decoded (every
 * byte copied into the arena: decoded text, global names) count per graph;
 * the other pickle limits count per pf_pickle_run(). */
int pf_graph_init(pf_graph *g, const pf_limits *limits, pf_error *err);
void pf_graph_free(pf_graph *g);

/*
 * Run one pickle that starts at buf[start] and ends at its STOP opcode.
 * `seg` and `origin` only label the nodes and errors: node offsets are
 * relative to buf, error offsets are origin + position in buf.
 * Bytes after STOP are not read.  Returns 0, or -1 with *err set; on error
 * the nodes already made stay in the graph (they are freed with it).
 * info may be NULL; on error it still gets protocol and n_opcodes (root
 * and end are 0).  Like CPython, STOP returns the top of the stack and
 * ignores items and MARKs left below it.
 */
int pf_pickle_run(pf_graph *g, const uint8_t *buf, uint64_t len, uint64_t start,
		  uint32_t seg, uint64_t origin, pf_pickle_info *info, pf_error *err);

static inline pf_node *pf_node_at(const pf_graph *g, pf_nid id)
{
	return (id && id < g->n_nodes) ? &g->nodes[id] : 0;
}

/* Kind of a node, or 0 for id 0 / out of range. */
static inline int pf_kind_of(const pf_graph *g, pf_nid id)
{
	pf_node *n = pf_node_at(g, id);
	return n ? n->kind : 0;
}

/* The global a PF_K_GLOBAL node names, or NULL for any other node. */
const pf_global *pf_node_global(const pf_graph *g, pf_nid id);

/* True when id is a PF_K_GLOBAL naming exactly module.name. */
bool pf_is_global(const pf_graph *g, pf_nid id, const char *module, const char *name);

/* True when id is a PF_K_STR equal to s. */
bool pf_str_eq(const pf_graph *g, pf_nid id, const char *s);

/* Item i of a LIST/TUPLE/SET/FROZENSET (or raw slot i of a DICT), or 0. */
pf_nid pf_seq_at(const pf_graph *g, pf_nid id, uint32_t i);

/* Number of items (LIST/TUPLE/SET/FROZENSET) or slots (DICT: 2 per item). */
uint32_t pf_seq_len(const pf_graph *g, pf_nid id);

/* Value stored under the str key `key` in a PF_K_DICT, or 0. */
pf_nid pf_dict_get(const pf_graph *g, pf_nid dict, const char *key);

/* Append a new node (zeroed payload) to the graph; 0 on failure with *err set.
 * For modules that add derived nodes (none of them parse). */
pf_nid pf_graph_add(pf_graph *g, pf_kind kind, uint32_t seg, uint64_t off, pf_error *err);

/* Append item to a LIST/TUPLE/DICT/SET/FROZENSET node made with
 * pf_graph_add (u.seq.v is malloc'd and owned by the graph, which frees it). */
int pf_seq_push(pf_graph *g, pf_nid seq, pf_nid item, pf_error *err);

/* Short stable name of a pf_kind ("int", "call", ...); "invalid" otherwise. */
const char *pf_kind_name(int kind);

#endif
