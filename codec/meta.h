/*
 * meta.h - what the mount shows for a model: tensor file paths, meta.json,
 * and the texts of the `device` and `globals` files.
 *
 * pf_tree_build() walks the object graph from the root depth first, in
 * pickle order, with an explicit stack (no recursion), and builds at once:
 *
 *  - the tensor files, named by DESIGN §3.1: dict keys (str as is, int in
 *    decimal, True/False/None, floats as repr, other keys "#<i>" by item
 *    position), object attributes from the BUILD state, list/tuple indices,
 *    nn.Module _parameters/_buffers/_modules hoisted into the module's own
 *    directory, keys of a dict whose values are all tensors split on '.'
 *    (so a state_dict and the pickled module agree), each component
 *    escaped by pf_name_escape, collisions suffixed "~2", "~3"... in walk
 *    order, and a tensor reached again given another path (a hard link);
 *  - meta.json (schema in the README), built with jansson: a shared
 *    container reached again is {"ref": "<path of first use>"}, so the
 *    output is linear in the graph even for a "billion laughs" pickle;
 *  - `device`: the distinct storage locations, most frequent first;
 *  - `globals`: every referenced module/name pair, first-use order;
 *  - t->scalars: where each scalar node is shown in meta (for edits.c).
 *
 * Nesting deeper than pf_limits.max_depth is a PF_E_LIMIT error.
 */
#ifndef PF_META_H
#define PF_META_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "arena.h"
#include "error.h"
#include "model.h"

typedef struct pf_file {
	const char *path;   /* "net/0/weight.npy", relative, '/'-separated */
	uint32_t tensor;    /* index into pf_model.tensors */
	int32_t link_of;    /* index of the first file of the same tensor, or -1 */
} pf_file;

/*
 * A scalar of the graph (None, bool, int, float, str node) as meta.json
 * shows it: where in t->meta it is and which node it is.  Dict keys are
 * not listed (in the {"dict": [[key, value], ...]} form a key is fixed).
 * A memoized scalar shown at several places is listed once per place.
 */
typedef struct pf_meta_scalar {
	const json_t *parent; /* the object or array of t->meta holding the value */
	const char *key;      /* its key in an object parent (NUL-terminated), NULL in an array */
	size_t index;         /* its index in an array parent */
	pf_nid node;
} pf_meta_scalar;

typedef struct pf_tree {
	pf_file *files;     /* walk order */
	uint32_t n_files, cap_files;
	pf_meta_scalar *scalars; /* every scalar node shown in meta, walk order (edits.h) */
	uint32_t n_scalars, cap_scalars;
	json_t *meta;       /* the meta.json document */
	char *device_text;  /* "cuda:0\ncpu\n" (malloc) */
	char *globals_text; /* "torch._utils _rebuild_tensor_v2\n..." (malloc) */
	pf_arena arena;     /* paths */
} pf_tree;

/* The model directory's own files, in the order the view lists them: meta.json, device,
 * globals.  pf_tree_build gives a dict key with one of these names a "~2" suffix. */
#define PF_META_FILES 3
extern const char *const pf_meta_file_names[PF_META_FILES];

/* Is name one of pf_meta_file_names? */
bool pf_is_meta_file(const char *name);

int pf_tree_build(const pf_model *m, pf_tree *t, pf_error *err);
void pf_tree_free(pf_tree *t);

/* meta.json as the mount shows it: pretty-printed, ends in '\n' (malloc). */
char *pf_tree_meta_text(const pf_tree *t);

#endif
