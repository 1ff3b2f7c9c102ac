/*
 * rewrite.h - `echo DEV > device` as a plan for the new model file.
 *
 * For every object pickle of a parsed model (a zip's data.pkl and
 * constants.pkl, a legacy file's main pickle, a plain pickle, and the same
 * inside every embedded torch.save file and _load_from_bytes blob), the
 * device edits (repickle.h: storage locations, torch.device values,
 * `_device` / `device` attributes) are re-emitted at the SAME byte length
 * (formats.md §10.1), so nothing else in the file moves: no frame, bytes
 * length, zip offset or alignment changes.  A changed zip record also gets
 * its CRC-32 patched in its data descriptor and central-directory entry
 * (and local header, where that holds one).  A pickle inside a zip record of
 * an enclosing file (a torch.save zip held as binary bytes in a protocol-4
 * data.pkl) is left to the re-build below, which patches the CRC-32s of
 * every enclosing record too.
 *
 * When that is not possible -- an edit changes a pickle's length, or the
 * pickle is not a plain range of the file (a protocol 0-2 _load_from_bytes
 * blob held as latin-1 text) -- the file is re-built from the innermost
 * archive outwards (a work list in order of decreasing depth, no recursion):
 *   - a pickle with edits is re-emitted by pf_repickle; a bytes / str value
 *     holding an embedded archive that changed gets a PF_EDIT_PAYLOAD (its
 *     length field, opcode width and enclosing FRAME lengths follow);
 *     a latin-1 blob's new bytes are re-encoded as latin-1-as-UTF-8 text;
 *   - a zip whose changed records keep their length keeps its layout (the
 *     records' CRC-32s are patched); otherwise it is re-written in torch's
 *     layout by pf_zip_write, every other record copied through (stored
 *     records only: a deflated one is PF_E_UNSUPPORTED);
 *   - a legacy file or plain pickle: the pickle's range is replaced.
 * Unchanged ranges of the file (tensor data, unchanged records, the parts
 * of a binary bytes value around an edit) are never copied in memory: they
 * stay references to the old file.  (A latin-1 blob, already decoded in
 * the model, is re-encoded in memory; so is a changed zip record.)
 *
 * The result is a plan: pieces, in order, whose concatenation is the new
 * file; each is either a range of the old file or new bytes.  Not
 * supported (PF_E_UNSUPPORTED, nothing changes): deflated records, a
 * blob held in a protocol-0 text opcode, a blob whose archive is not found
 * at a plain bytes / str opcode.
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

typedef struct pf_piece {
	uint64_t off;          /* copy pieces: offset in the old file */
	uint64_t len;
	const uint8_t *bytes;  /* new bytes (plan arena), or NULL: copy [off, off + len) of the old file */
} pf_piece;

typedef struct pf_plan {
	pf_piece *v;           /* in output order; none empty */
	uint32_t n, cap;
	uint64_t size;         /* the new file's length: sum of the lengths */
	uint32_t n_edits;      /* device values changed */
	pf_arena arena;        /* new bytes */
} pf_plan;

void pf_plan_init(pf_plan *p);
void pf_plan_free(pf_plan *p);

/* The plan that sets every device of m to dev.  An empty plan (n == 0)
 * means nothing to change.  The plan's copy pieces refer to m->file. */
int pf_rewrite_device(const pf_model *m, const pf_device *dev, pf_plan *out, pf_error *err);
/* (the same as pf_rewrite with ch = {.device = dev}) */

/* ---- the general rewrite: every kind of change written through the tree ---- */

/* One edit of one object pickle: e.op_off is relative to m->pickles[span].start. */
typedef struct pf_span_edit {
	uint32_t span;          /* index into m->pickles */
	pf_str_edit e;
} pf_span_edit;

/* A run of memory: the model file's own bytes (m->file ...) or the caller's. */
typedef struct pf_bytes_run {
	const uint8_t *p;
	uint64_t len;
} pf_bytes_run;

/*
 * New contents of one tensor: its logical bytes exactly as its .npy file
 * holds them after the header (C order, or Fortran order when t->fortran),
 * t->nbytes bytes in all, given as runs of memory in order.  A run that lies
 * inside m->file[0..file_len) stays a reference to the old file (no copy).
 */
typedef struct pf_tensor_data {
	uint32_t tensor;        /* index into m->tensors */
	const pf_bytes_run *runs;
	uint32_t n_runs;
} pf_tensor_data;

typedef struct pf_changes {
	const pf_device *device;        /* NULL: devices stay as they are */
	const pf_span_edit *edits;      /* globals renames, scalar values (edits.h) */
	uint32_t n_edits;
	const pf_tensor_data *data;     /* tensors with new contents */
	uint32_t n_data;
} pf_changes;

/*
 * How pf_rewrite places new tensor bytes: the tensor's segment is followed
 * outwards through raw slices (a bytes value in a pickle, a stored record in
 * a zip) to the innermost pickle span or archive that holds it:
 *   - inside a pickle (a numpy array's binary bytes): substituted while the
 *     pickle is copied or re-emitted, the same length; an edit of that pickle
 *     that touches those bytes is PF_E_INVALID;
 *   - in an archive's own bytes (a zip record: its CRC-32s follow; a legacy
 *     raw section): spliced in when the archive is put together, which then
 *     reaches its host pickle as a payload edit, outwards as for devices;
 *   - in bytes decoded from latin-1 text (protocol 0-2): the decoded value
 *     with the new bytes is encoded again and becomes a payload edit of its
 *     str opcode (its length follows the number of bytes >= 0x80);
 *   - in a deflated record: PF_E_UNSUPPORTED.
 * Strided views are scattered into a copy (plan arena) of the storage range
 * they touch, [first element, last element]; elements that two indices reach
 * (stride 0) must get one value, else PF_E_INVALID.  Contiguous contents
 * stay references: runs inside m->file become copy pieces, the caller's runs
 * new-bytes pieces pointing at the caller's memory (also where a zip is
 * re-written in torch's layout); they are read only for CRC-32s (and
 * latin-1 text).  With every edit keeping its length the file keeps its
 * layout: only the changed bytes and CRC-32 fields differ.
 * plan.n_edits counts device values changed, as for pf_rewrite_device.
 *
 * The plan that applies every change of ch to m: devices (as
 * pf_rewrite_device), the given pickle edits, and new tensor contents
 * written into their storages (contiguous tensors as one range; strided
 * views scattered element by element into a copy of the touched part of the
 * storage; bytes held as latin-1 text re-encoded).  Same container,
 * protocol and layout wherever lengths allow; CRC-32s follow.  Memory the
 * changes point to must stay valid as long as the plan.  An empty plan
 * means nothing changes.  PF_E_INVALID for changes that contradict each
 * other (two edits of one opcode, a tensor index out of range, runs whose
 * lengths do not add up to nbytes).
 */
int pf_rewrite(const pf_model *m, const pf_changes *ch, pf_plan *out, pf_error *err);

#endif
