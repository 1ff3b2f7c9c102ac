/*
 * zip.h - the zip container as torch.save and torch.jit.save write it.
 *
 * Reads the end of central directory (classic and zip64: EOCD, zip64
 * locator, zip64 EOCD record), the central directory and each entry's
 * local header, and says where each record's bytes are.  Stored records
 * are located by offset in the input (nothing is copied); deflated records
 * (TorchScript code, debug pickles) are inflated with zlib into the arena
 * on request, within pf_limits.max_inflate and max_inflate_ratio.
 *
 * Checks (each a PF_E_ZIP error at the offending offset): EOCD/zip64
 * consistency, entry count against the bytes of the central directory and
 * pf_limits.max_zip_entries, every local header and record inside the
 * input, records that overlap each other or the central directory, local
 * header name equal to the central one, encrypted entries (flag bit 0) and
 * methods other than 0 (stored) and 8 (deflate), names that are empty,
 * longer than pf_limits.max_name_len, absolute, contain "..", a backslash
 * or a NUL, duplicate names, and entries whose first path component
 * differs from the first entry's (torch requires one shared prefix).
 */
#ifndef PF_ZIP_H
#define PF_ZIP_H

#include <stdbool.h>
#include <stdint.h>

#include "arena.h"
#include "error.h"
#include "limits.h"

typedef struct pf_zip_entry {
	const char *name;    /* full name, NUL-terminated, in the arena */
	uint32_t name_len;
	uint16_t flags;      /* general purpose bit flags (central directory) */
	uint16_t method;     /* 0 stored, 8 deflate */
	uint32_t crc32;      /* from the central directory */
	uint64_t csize;      /* compressed size (== usize when stored) */
	uint64_t usize;      /* uncompressed size */
	uint64_t header_off; /* local header, relative to the zip's first byte */
	uint64_t data_off;   /* first record byte, relative to the zip's first byte */
} pf_zip_entry;

typedef struct pf_zip {
	pf_zip_entry *entries; /* central-directory order */
	uint32_t n_entries;
	const char *prefix;    /* text before the first '/' of the first entry ("archive") */
	uint64_t cd_off, cd_size;
	uint64_t eocd_off;     /* classic EOCD record */
	bool zip64;            /* zip64 EOCD record present */
	uint32_t *sorted;      /* private: entry indices sorted by name, for lookup */
} pf_zip;

/*
 * Parse the zip that occupies buf[0..len).  `origin` is added to error
 * offsets (the absolute position of buf[0] in the model file).  Names and
 * tables are allocated in `arena` and with malloc (freed by pf_zip_free).
 */
int pf_zip_open(pf_zip *z, const uint8_t *buf, uint64_t len, uint64_t origin,
		const pf_limits *limits, pf_arena *arena, pf_error *err);
void pf_zip_free(pf_zip *z);

/* Entry named exactly `name`, or NULL. */
const pf_zip_entry *pf_zip_find(const pf_zip *z, const char *name);

/* Entry named "<prefix>/<rel>", or NULL. */
const pf_zip_entry *pf_zip_find_rel(const pf_zip *z, const char *rel);

/*
 * The uncompressed bytes of an entry: for a stored entry a pointer into buf
 * (no copy); for a deflated one a buffer in `arena` (after checking the
 * declared size against the limits) whose size and CRC-32 must match the
 * central directory.  *decoded tells which.
 */
int pf_zip_data(const pf_zip_entry *e, const uint8_t *buf, uint64_t len, uint64_t origin,
		const pf_limits *limits, pf_arena *arena,
		const uint8_t **out, uint64_t *out_len, bool *decoded, pf_error *err);

#endif
