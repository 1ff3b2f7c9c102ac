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
 * Checks (each a PF_E_ZIP error at the offending offset, except where a
 * code is named): EOCD/zip64 consistency (a classic field is the real value
 * or the 0xFFFF/0xFFFFFFFF sentinel, a sentinel needs a zip64 record; the
 * zip64 record ends where its locator starts; one disk only), entry count
 * against the bytes of the central directory and pf_limits.max_zip_entries
 * (PF_E_LIMIT), the entries fill the central directory exactly, every local
 * header and record inside the input and before the central directory,
 * the first local header at offset 0 (nothing may precede "PK\3\4"),
 * records that overlap each other or the central directory, local header
 * name equal to the central one (and its method; its CRC and sizes equal
 * or 0 under flag bit 3), encrypted or patch entries (flag bits 0, 5, 6),
 * methods other than 0 (stored) and 8 (deflate) (PF_E_UNSUPPORTED), stored
 * entries whose two sizes differ, zip64 sentinels without a zip64 extra
 * field, names that are empty, longer than pf_limits.max_name_len
 * (PF_E_LIMIT), absolute, contain a ".." component, a backslash or a NUL,
 * or are not UTF-8, duplicate names, a zip without entries, and entries
 * whose first path component differs from the first entry's (torch
 * requires one shared prefix; the first entry must have one).
 *
 * Not checked: data descriptors (torch.load ignores them; sizes come from
 * the central directory) and the CRC-32 of stored records (torch.load does
 * not check it either, and it would mean reading every tensor on open).
 */
#ifndef PF_ZIP_H
#define PF_ZIP_H

#include <stdbool.h>
#include <stdint.h>

#include "arena.h"
#include "error.h"
#include "pf_limits.h"

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
	uint64_t cd_entry_off; /* its central-directory header, relative to the zip's first byte */
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

/*
 * Only the end records and the central directory: names, sizes and the
 * shared prefix, without reading any local header (so only the file's tail
 * is touched).  Entries' data_off is 0.  For telling whether a zip is a
 * torch.save file (has <prefix>/data.pkl) without parsing it.
 */
int pf_zip_open_directory(pf_zip *z, const uint8_t *buf, uint64_t len, const pf_limits *limits,
			  pf_arena *arena, pf_error *err);

/* Entry named exactly `name`, or NULL. */
const pf_zip_entry *pf_zip_find(const pf_zip *z, const char *name);

/* Entry named "<prefix>/<rel>", or NULL. */
const pf_zip_entry *pf_zip_find_rel(const pf_zip *z, const char *rel);

/*
 * The uncompressed bytes of an entry: for a stored entry a pointer into buf
 * (no copy); for a deflated one a buffer in `arena` (after checking the
 * declared size against the limits) whose size and CRC-32 must match the
 * central directory.  *decoded tells which.  A deflated record is refused
 * with PF_E_LIMIT before anything is allocated when its declared size
 * exceeds max_inflate, csize * max_inflate_ratio (so csize 0 allows only an
 * empty record) or what max_decoded leaves after arena->used; it fails with
 * PF_E_INFLATE when the stream is corrupt, ends early, has bytes after its
 * end, inflates to more or fewer bytes than declared, or the CRC-32
 * differs.  The record is re-checked against [0, len) (PF_E_ZIP).
 */
int pf_zip_data(const pf_zip_entry *e, const uint8_t *buf, uint64_t len, uint64_t origin,
		const pf_limits *limits, pf_arena *arena,
		const uint8_t **out, uint64_t *out_len, bool *decoded, pf_error *err);

#endif
