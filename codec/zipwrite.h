/*
 * zipwrite.h - write a zip exactly as torch.save (PyTorchStreamWriter on
 * its patched miniz, MZ_ZIP_FLAG_WRITE_ZIP64) lays it out, for
 * re-serializing a model file after an edit (formats.md §1.3, §1.4, §10.2).
 *
 * Given the records in order, the output is, byte for byte, what torch
 * writes for the same names and contents (checked against torch 1.13 files,
 * zip64 included):
 *
 *   per record, in the order given:
 *     local header: "PK\3\4", version needed 0, flags 0x0808 (0x0800 for an
 *       empty record), method 0 (stored), DOS time/date 0, CRC-32 and both
 *       sizes 0, name length, extra length;
 *     the name;
 *     when the record is zip64 (len >= 0xFFFFFFFF or its local header at
 *       offset >= 0xFFFFFFFF): a zip64 extra field (id 0x0001) holding
 *       u64 len and u64 0 (miniz writes the compressed size before it knows
 *       it) when len >= 0xFFFFFFFF, then u64 header offset when that offset
 *       >= 0xFFFFFFFF;
 *     the "FB" extra field: id 0x4246, u16 pad, pad bytes 'Z', with pad the
 *       least that puts the first data byte on a multiple of `alignment`;
 *     the data;
 *     unless the record is empty, a data descriptor "PK\7\8", CRC-32, then
 *       csize and usize (both len) as u32, or as u64 when the record is
 *       zip64 (24 bytes instead of 16);
 *   the central directory, one entry per record in the same order: made-by
 *     0, needed 0, the local flags, method 0, time/date 0, CRC-32, sizes and
 *     local header offset (0xFFFFFFFF where the value is >= 0xFFFFFFFF), no
 *     comment, disk 0, internal attributes 0, external attributes 0 (0x10,
 *     the DOS directory bit, for a name ending in '/'), the name, and for a
 *     zip64 record a zip64 extra field with u64 usize and u64 csize when
 *     len >= 0xFFFFFFFF and u64 header offset when that is >= 0xFFFFFFFF;
 *   always a zip64 end of central directory record (size 44, made-by
 *     0x031E, needed 45, disks 0, entry counts, CD size, CD offset) and its
 *     locator (disk 0, offset of the zip64 record, 1 disk);
 *   the classic end record: disks 0, entry counts min(n, 0xFFFF), CD size
 *     and offset min(value, 0xFFFFFFFF), no comment.
 *
 * Offsets are relative to the first byte written (the zip starts at the
 * sink's offset 0; torch requires nothing before "PK\3\4").
 *
 * The caller is responsible for the names: one shared "<prefix>/" for a
 * file torch should load (formats.md §1.2), no duplicates (pf_zip_open
 * refuses both), the original record order when re-serializing.  The writer
 * only refuses what it cannot encode (see pf_zip_plan).
 *
 * No global state, no printing; errors through pf_error (error.h).
 */
#ifndef PF_ZIPWRITE_H
#define PF_ZIPWRITE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"

/* The alignment torch uses for every record (2.7+: `.storage_alignment`). */
#define PF_ZW_ALIGNMENT 64u

/* Largest alignment accepted: a power of two from 1 to this. */
#define PF_ZW_MAX_ALIGNMENT 32768u

/*
 * Fill buf with the n bytes of the record at [off, off + n).  Called in
 * increasing, contiguous order of off, n <= PF_ZW_CHUNK.  Returns 0 on
 * success, anything else on failure (keep errno or the reason in ctx).
 */
typedef int (*pf_zw_read_fn)(void *ctx, uint64_t off, void *buf, size_t n);

/*
 * Take the next n bytes of the zip (n > 0).  Returns 0 when all n bytes
 * were taken, anything else on failure (keep errno or the reason in ctx).
 */
typedef int (*pf_zw_sink_fn)(void *ctx, const void *buf, size_t n);

/* Size of the buffer handed to a pf_zw_read_fn. */
#define PF_ZW_CHUNK ((size_t)1 << 20)

typedef struct pf_zw_record {
	const char *name;    /* full name incl. prefix, NUL-terminated, 1..0xFFFF bytes */
	uint64_t len;        /* record size in bytes */
	const uint8_t *data; /* the len bytes; or NULL to get them from `read` */
	pf_zw_read_fn read;  /* used when data is NULL and len > 0 */
	void *read_ctx;
	/* When true, crc32 is written as the record's CRC-32 and the data is
	 * not checksummed (for bytes copied unchanged from a zip whose central
	 * directory gave it).  Otherwise the writer computes it with zlib.  An
	 * empty record's CRC-32 is always 0. */
	bool crc_given;
	uint32_t crc32;
} pf_zw_record;

/* Where one record lands. */
typedef struct pf_zw_place {
	uint64_t header_off; /* its local header */
	uint64_t data_off;   /* first data byte: a multiple of the alignment */
	uint64_t end_off;    /* after its data descriptor: the next local header */
	uint16_t extra_len;  /* local extra field length (zip64 extra + "FB" + pad) */
	uint16_t pad;        /* number of 'Z' bytes */
	bool zip64;          /* zip64 extra fields and a 24-byte descriptor */
} pf_zw_place;

/* The whole file. */
typedef struct pf_zw_layout {
	uint64_t cd_off, cd_size; /* central directory */
	uint64_t eocd64_off;      /* zip64 end record; locator at +56, classic EOCD at +76 */
	uint64_t size;            /* total bytes written */
} pf_zw_layout;

/*
 * The layout of the zip pf_zip_write would write for these records, without
 * touching any data (only name and len are read): the place of every record
 * (`places`: n entries, or NULL) and the totals.  Fails (PF_E_LIMIT) when n
 * is 0 or above 0xFFFFFFFE, alignment is not a power of two in
 * [1, PF_ZW_MAX_ALIGNMENT], a name is NULL, empty or longer than 0xFFFF
 * bytes, or a record would end past 2^62 bytes; (PF_E_FORMAT) when a non-empty
 * record has neither data nor read.  The error offset is the record index.
 */
int pf_zip_plan(const pf_zw_record *recs, uint32_t n, uint32_t alignment,
		pf_zw_place *places, pf_zw_layout *layout, pf_error *err);

/*
 * Write the zip to `sink`, exactly pf_zip_plan's layout.size bytes (the
 * layout is returned in *layout when it is not NULL).  Data comes from
 * `data` or, in PF_ZW_CHUNK pieces, from `read`; each record's CRC-32 is
 * computed as its bytes pass (unless crc_given).  Besides pf_zip_plan's
 * errors: PF_E_TRUNCATED when a read or the sink fails (offset: the output
 * offset of the failing bytes; the callback's own reason stays in its ctx),
 * PF_E_NOMEM.  After a failure the sink has received a prefix of the zip
 * and should be discarded.
 */
int pf_zip_write(const pf_zw_record *recs, uint32_t n, uint32_t alignment,
		 pf_zw_sink_fn sink, void *ctx, pf_zw_layout *layout, pf_error *err);

#endif
