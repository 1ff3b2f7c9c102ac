/*
 * mapfile.h - a model file made addressable as one read-only buffer.
 *
 * The codec reads from a buffer, but of a model file it reads only the
 * metadata: pickles, zip directories and local headers, the first bytes of
 * embedded blobs; never the tensor bytes.  A plain mmap of the file would
 * charge every page-cache folio those reads touch to the process (on
 * current kernels a fault maps a whole large folio, about 2 MiB), so that
 * "reading the headers" of a 2 GiB checkpoint shows up as 2 GiB of RSS.
 *
 * So the buffer is an empty anonymous mapping whose pages are filled on
 * first touch, 4 KiB at a time, by a pager thread with pread() through
 * userfaultfd(2).  Memory then follows what the codec really reads.
 * Where userfaultfd is not available (no permission, old kernel) the file
 * is mapped directly, with MADV_RANDOM so that a cold cache is not read
 * ahead; pf_mapfile.paged says which.
 */
#ifndef PF_MAPFILE_H
#define PF_MAPFILE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>

typedef struct pf_mapfile {
	int fd;
	const uint8_t *data;
	uint64_t len;
	struct stat st;
	bool paged;          /* pages come from the pager thread */
	int uffd;            /* userfaultfd, -1 when mapped directly */
	int stop_fd;         /* eventfd that tells the pager to exit */
	size_t map_len;      /* len rounded up to whole pages */
	pthread_t pager;
	atomic_int io_error; /* errno of a failed pread by the pager, 0 if none */
} pf_mapfile;

/* 0, or -errno. An empty file maps to data == NULL, len == 0. */
int pf_mapfile_open(pf_mapfile *mf, const char *path);

/* The same for a file already open (fd is duplicated; the caller keeps its own). */
int pf_mapfile_open_fd(pf_mapfile *mf, int fd);

/* Map an open file directly (no pager thread): for a quick look at a few pages. */
int pf_mapfile_open_direct(pf_mapfile *mf, int fd);

/* 0, or -errno when a page could not be read (its bytes were given as zeros). */
int pf_mapfile_error(pf_mapfile *mf);

void pf_mapfile_close(pf_mapfile *mf);

#endif
