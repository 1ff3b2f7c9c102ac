/*
 * rewrite.h - `echo DEV > device` as byte patches of the model file.
 *
 * For every object pickle of a parsed model (a zip's data.pkl and
 * constants.pkl, a legacy file's main pickle, a plain pickle, and the same
 * inside every embedded torch.save file and _load_from_bytes blob), the
 * device edits (repickle.h: storage locations, torch.device values,
 * `_device` / `device` attributes) are re-emitted at the SAME byte length
 * (formats.md §10.1), so nothing else in the file moves: no frame, bytes
 * length, zip offset or alignment changes.  A changed zip record also gets
 * its CRC-32 patched in its data descriptor and central-directory entry
 * (and local header, where that holds one).
 *
 * The result is a list of patches at absolute file offsets: the new file
 * is the old one with them applied.  Not yet supported (PF_E_UNSUPPORTED,
 * nothing changes): an edit that cannot keep its pickle's length, and a
 * pickle that is not a plain range of the file (protocol 0-2 latin-1 text,
 * deflated records).
 */
#ifndef PF_REWRITE_H
#define PF_REWRITE_H

#include <stdint.h>

#include "arena.h"
#include "error.h"
#include "model.h"
#include "repickle.h"

typedef struct pf_patch {
	uint64_t off;        /* absolute offset in the model file */
	uint32_t len;
	const uint8_t *bytes;
} pf_patch;

typedef struct pf_patchset {
	pf_patch *v;         /* sorted by offset, not overlapping */
	uint32_t n, cap;
	uint32_t n_edits;    /* device values changed */
	pf_arena arena;      /* the patch bytes */
} pf_patchset;

void pf_patchset_init(pf_patchset *p);
void pf_patchset_free(pf_patchset *p);

/* The patches that set every device of m to dev.  An empty set means nothing to change. */
int pf_rewrite_device(const pf_model *m, const pf_device *dev, pf_patchset *out, pf_error *err);

#endif
