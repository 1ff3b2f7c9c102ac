/*
 * edits.h - what a user wrote into a model's `globals` or `meta.json`,
 * turned into pickle edits (pf_span_edit, rewrite.h) for pf_rewrite.
 *
 * Both functions compare the written text with what the mount shows and
 * list one edit per opcode that has to change, every op_off relative to
 * m->pickles[span].start, sorted by (span, op_off).  Unchanged text gives
 * no edits.  Nothing is executed and nothing is written; the edits, their
 * texts and the array itself live in the arena `a` (the caller's, so they
 * outlive the call).  On failure *out is NULL, *n_out 0, and *err says why:
 *
 *   PF_E_INVALID      the text is refused (wrong line count, bad names,
 *                     not JSON, a structural change, a change of something
 *                     that is no value of a pickle): the message names the
 *                     line or the JSON path ("$.root.cfg.lr") of the first
 *                     problem;
 *   PF_E_UNSUPPORTED  the change is sensible but cannot be written (a global
 *                     of a pickle that is not rewritten, a global made by an
 *                     EXT opcode, a value shared with something meta.json
 *                     does not show);
 *   PF_E_LIMIT, PF_E_NOMEM.
 *
 * globals: exactly m->g.n_globals lines (the final '\n' optional; an empty
 * line is an error), line i `module name` with one space.  A line that
 * differs from global i must be a dotted identifier path, a space and an
 * identifier path (dots allowed: qualnames like `Outer.Inner`); ASCII
 * identifiers or UTF-8 letters; no other spaces or control characters;
 * each part at most limits.max_name_len bytes.  Every GLOBAL, INST and
 * STACK_GLOBAL opcode naming global i, in every object pickle of m
 * (embedded archives included), gets a PF_EDIT_GLOBAL.  Two lines may be
 * renamed to the same pair.
 *
 * meta.json: any JSON formatting; parsed with jansson (duplicate keys
 * refused) and compared with t->meta, the document the mount shows, by an
 * explicit stack (depth at most 4 * limits.max_depth + 16).  Objects must
 * keep their keys in order, arrays their lengths, containers stay
 * containers; tensor descriptors, markers ("object", "call", "global",
 * "ref", "bytes", ...), dict keys and the header fields must not change.
 * A scalar that shows a None/bool/int/float/str node (t->scalars) may take
 * any scalar value: null, true/false, a JSON integer, {"int": "<decimal>"}
 * (at most PF_INT_DIGITS_MAX digits), a JSON real, {"float": "nan" |
 * "inf" | "-inf"}, a string.  Types may change (3 and 3.0 differ: a JSON
 * real is a float, an integer an int).  A str that stays a str is a
 * PF_EDIT_STR, anything else a PF_EDIT_SCALAR (repickle.h).  A memoized
 * value is one node: every place meta.json shows it must be written with
 * the same new value, and it may not also be used where meta.json does not
 * show it (a dict key, a storage location, a tensor's arguments, a global's
 * name).
 */
#ifndef PF_EDITS_H
#define PF_EDITS_H

#include <stddef.h>
#include <stdint.h>

#include "arena.h"
#include "error.h"
#include "meta.h"
#include "model.h"
#include "rewrite.h"

int pf_globals_edits(const pf_model *m, const char *text, size_t len, pf_span_edit **out, uint32_t *n_out,
		     pf_arena *a, pf_error *err);

int pf_meta_edits(const pf_model *m, const pf_tree *t, const char *text, size_t len, pf_span_edit **out,
		  uint32_t *n_out, pf_arena *a, pf_error *err);

#endif
