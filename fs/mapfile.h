/*
 * mapfile.h - a model file mapped read-only into memory.
 *
 * The codec reads from a buffer; this maps the file so that only the pages
 * the codec touches (pickles, zip directories) are ever read from disk.
 * Tensor bytes stay on disk until someone reads them.
 */
#ifndef PF_MAPFILE_H
#define PF_MAPFILE_H

#include <stdint.h>
#include <sys/stat.h>

typedef struct pf_mapfile {
	int fd;
	const uint8_t *data;
	uint64_t len;
	struct stat st;
} pf_mapfile;

/* 0, or -errno. An empty file maps to data == NULL, len == 0. */
int pf_mapfile_open(pf_mapfile *mf, const char *path);
void pf_mapfile_close(pf_mapfile *mf);

#endif
