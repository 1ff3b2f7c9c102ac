/*
 * wcopy.h - a file being written inside a model directory, spooled to disk.
 *
 * A working copy is what a tensor file, `device`, `globals`, `meta.json`
 * or a temporary file in a model directory holds while it is written and
 * until the commit: the bytes written so far over a "base" (the entry's
 * contents before the first write), like a copy-on-write file.
 *
 *   - Written bytes go to an unnamed temporary file (O_TMPFILE in the
 *     model file's folder, so pending data is limited by the disk, never by
 *     RAM, and nothing is left behind by a crash); unwritten bytes below
 *     base_len are read from the base through a callback; anything else
 *     reads as zeros (the spool file is sparse).
 *   - Truncating shortens the base and the written ranges; O_TRUNC makes
 *     a copy with no base at all.
 *   - pfs_wcopy_runs hands out the contents as memory runs (base memory,
 *     or an mmap of the spool file), which is how a commit passes new
 *     tensor data to the codec without copying it.
 *
 * Reference counted: open handles keep the version they read.  Not
 * thread-safe by itself; callers serialise writes (fs->lock).
 */
#ifndef PFS_WCOPY_H
#define PFS_WCOPY_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Read n bytes at off of the base into buf; 0 or -errno. */
typedef int (*pfs_base_read_fn)(void *ctx, uint64_t off, void *buf, size_t n);
/* Memory holding base bytes [off, off + *n), or NULL (then *n is how far the
 * base can give memory at all: 0 means it cannot). */
typedef const uint8_t *(*pfs_base_mem_fn)(void *ctx, uint64_t off, uint64_t *n);

typedef struct pfs_range {
	uint64_t start, end;
} pfs_range;

typedef struct pfs_wcopy {
	atomic_uint refs;
	int fd;                   /* the spool file */
	uint64_t size;            /* current length */
	uint64_t base_len;        /* [0, base_len) not written comes from the base */
	pfs_range *written;       /* sorted, disjoint, non-adjacent */
	uint32_t n_written, cap_written;
	pfs_base_read_fn base_read;
	pfs_base_mem_fn base_mem;
	void *base_ctx;
	void (*base_release)(void *ctx);
	const uint8_t *map;       /* mmap of the spool file for pfs_wcopy_runs */
	size_t map_len;
} pfs_wcopy;

/*
 * A new working copy spooled in directory dirfd, whose first base_len bytes
 * come from the base (base_read may be NULL when base_len is 0).
 * base_release(ctx) is called when the copy is freed.  NULL with errno set.
 */
pfs_wcopy *pfs_wcopy_new(int dirfd, uint64_t base_len, pfs_base_read_fn base_read, pfs_base_mem_fn base_mem,
			 void *ctx, void (*base_release)(void *ctx));
void pfs_wcopy_ref(pfs_wcopy *w);
void pfs_wcopy_unref(pfs_wcopy *w);

/* 0 or -errno. */
int pfs_wcopy_write(pfs_wcopy *w, const void *buf, size_t n, uint64_t off);
int pfs_wcopy_truncate(pfs_wcopy *w, uint64_t size);

/* Bytes read (short only at the end), or -errno. */
ssize_t pfs_wcopy_read(pfs_wcopy *w, void *buf, size_t n, uint64_t off);

/*
 * The contents [off, off + len) as memory runs, in order, through cb (which
 * returns 0 to go on).  Written bytes come from an mmap of the spool file;
 * base bytes from base_mem, or when the base has no memory, copied into the
 * spool file first (so the run is spool memory too).  0 or -errno.
 */
typedef int (*pfs_run_fn)(void *ctx, const uint8_t *p, uint64_t len);
int pfs_wcopy_runs(pfs_wcopy *w, uint64_t off, uint64_t len, pfs_run_fn cb, void *ctx);

#endif
