/*
 * view.h - one model file as the mount shows it: a small directory tree of
 * tensor files (.npy), meta.json, device and globals.
 *
 * A view is what the filesystem needs to answer lookup, getattr, readdir
 * and most reads without the model: names, sizes, and for each tensor file
 * its .npy header and where its data is.  It is built from a parsed model
 * (pf_view_build) or decoded from the index cache (pf_view_decode), so a
 * remount of an unchanged file parses nothing.  Tensors whose data is not a
 * plain range of the model file (strided views, latin-1 text of protocol
 * 0-2 pickles, inflated records) are marked `needs_model`: the filesystem
 * parses the model to read those, and only those.
 *
 * Entry 0 is the model's directory.  Entries are in walk order; a
 * directory's children follow it in the order they were first named.
 */
#ifndef PF_VIEW_H
#define PF_VIEW_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "arena.h"
#include "error.h"
#include "meta.h"
#include "model.h"

typedef enum pf_ventry_kind {
	PF_VE_DIR = 1,
	PF_VE_TENSOR,   /* a .npy file */
	PF_VE_META,     /* meta.json */
	PF_VE_DEVICE,   /* device */
	PF_VE_GLOBALS,  /* globals */
} pf_ventry_kind;

typedef struct pf_ventry {
	uint32_t parent;        /* index of the directory holding it (entry 0 holds itself) */
	const char *name;       /* one path component, NUL-terminated */
	const char *path;       /* path relative to the model directory ("" for entry 0) */
	pf_ventry_kind kind;
	uint64_t size;          /* st_size: header + data for tensors, text length for texts */
	/* PF_VE_TENSOR */
	uint32_t link;          /* index of the first entry of the same tensor (itself if first) */
	uint32_t tensor;        /* index into pf_model.tensors when built from a model */
	const uint8_t *header;  /* .npy header bytes */
	uint32_t header_len;
	int64_t data_off;       /* file offset of the data when it lies there as-is, else -1 */
	uint64_t data_len;
	bool needs_model;       /* data must be decoded through the model (pf_tensor_read) */
	/* PF_VE_META / DEVICE / GLOBALS */
	const char *text;       /* size bytes */
	/* a modification time of its own (its bytes changed in a commit through
	 * the mount), else the model file's */
	bool has_mtime;
	int64_t mtime_sec, mtime_nsec;
} pf_ventry;

typedef struct pf_view {
	pf_ventry *e;
	uint32_t n, cap;
	pf_arena arena;         /* names, paths, headers, texts */
} pf_view;

/*
 * The view of a parsed model and its tree.  Intermediate directories are
 * made from the '/'-separated tensor paths; meta.json, device and globals
 * come first in the model directory (pf_tree_build reserves those names,
 * so no tensor path can take them).
 */
int pf_view_build(const pf_model *m, const pf_tree *t, pf_view *v, pf_error *err);
void pf_view_free(pf_view *v);

/* Index of the child of directory `dir` named `name`, or -1. Linear; callers index it. */
int64_t pf_view_child(const pf_view *v, uint32_t dir, const char *name);

/*
 * The index cache entry for a view: msgpack-c encoding of the view plus the
 * key it is valid for (device, inode, size, mtime of the model file, and a
 * format version).  pf_view_decode checks the version and the key and
 * rejects anything malformed (foreign, truncated, corrupt) with PF_E_FORMAT;
 * a mismatching key is PF_E_FORMAT too: the cache is only an accelerator.
 */
typedef struct pf_view_key {
	uint64_t dev, ino, size;
	int64_t mtime_sec, mtime_nsec;
} pf_view_key;

int pf_view_encode(const pf_view *v, const pf_view_key *key, uint8_t **out, size_t *len, pf_error *err);
int pf_view_decode(const uint8_t *buf, size_t len, const pf_view_key *key, pf_view *v, pf_error *err);

/*
 * Notes (view.c has the format):
 *  - pf_view_build and pf_view_decode leave *v empty on failure (nothing to
 *    free; pf_view_free is harmless); on success the caller frees it.
 *  - pf_view_encode's *out is malloc'd: release it with free().
 *  - Fields that do not apply to an entry's kind hold fixed values: link =
 *    the entry's own index, tensor 0, header NULL / header_len 0,
 *    data_off -1, data_len 0, needs_model false, text NULL (directories and
 *    tensors); directories have size 0.  Every text is NUL-terminated.
 *  - needs_model is exactly data_off == -1.  A decoded data_off range lies
 *    within key->size bytes.
 *  - A decoded `tensor` is only as good as the cache: check it against
 *    pf_model.n_tensors of the re-parsed model before using it.
 *  - Memory failures are PF_E_NOMEM; everything else decode rejects is
 *    PF_E_FORMAT.
 */

#endif
