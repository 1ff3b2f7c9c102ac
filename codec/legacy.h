/*
 * legacy.h - the legacy torch.save container (torch < 1.6, or
 * _use_new_zipfile_serialization=False, and every _load_from_bytes blob).
 *
 * Layout (formats.md §3.1): five pickles - the magic number
 * 0x1950a86a20f9469cfc6c, the protocol version 1001, sys_info, the object,
 * the list of storage keys - then for each key, in that list's order, an
 * int64 little-endian element count followed by the raw bytes.  The
 * element size of each storage comes from its persistent id in the object
 * pickle, so this module only reports where each key's raw section starts;
 * pf_legacy_storage_span() then walks the sections once the sizes are
 * known.
 */
#ifndef PF_LEGACY_H
#define PF_LEGACY_H

#include <stdbool.h>
#include <stdint.h>

#include "error.h"
#include "pickle.h"

/* True when the value a first pickle returned is the legacy magic number. */
bool pf_legacy_is_magic(const pf_graph *g, pf_nid first_root);

typedef struct pf_legacy {
	pf_pickle_info main;   /* the object pickle (P4) */
	pf_nid keys;           /* P5: a PF_K_LIST of str keys */
	uint64_t raw_off;      /* offset in buf where the raw sections begin */
	uint32_t protocol_version; /* P2, 1001 */
} pf_legacy;

/*
 * The first pickle (the magic) has been run and ended at p1_end: run the
 * other four into g.  A file is recognised by its content this way: whoever
 * runs the first pickle of an unknown file learns from its value whether
 * it is a legacy torch.save file or a plain pickle.
 */
int pf_legacy_parse_rest(pf_graph *g, const uint8_t *buf, uint64_t len, uint64_t p1_end,
			 uint32_t seg, uint64_t origin, pf_legacy *out, pf_error *err);

/*
 * Walk the raw sections: for key number i (P5 order), itemsize[i] is the
 * element size its persistent id declares.  Fills data_off[i] (offset in buf
 * of the first data byte) and count[i] (elements).  Fails when a section
 * runs past the end or a count overflows.
 */
int pf_legacy_sections(const uint8_t *buf, uint64_t len, uint64_t origin, uint64_t raw_off,
		       uint32_t n, const unsigned *itemsize, uint64_t *data_off,
		       uint64_t *count, pf_error *err);

#endif
