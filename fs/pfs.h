/*
 * pfs.h - the picklefs filesystem: FUSE low-level operations over SOURCE.
 *
 * Thin glue: every model-specific answer comes from the codec through
 * fs/models.c; this module keeps the inode table, mirrors the source tree
 * (other files, folders and symlinks appear as themselves), shows each
 * model file as a directory, and tells the kernel when cached entries or
 * pages went stale.
 */
#ifndef PFS_PFS_H
#define PFS_PFS_H

#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>
#include <stdbool.h>

typedef struct pfs_config {
	const char *source;     /* folder or model file */
	const char *cache_dir;  /* index cache folder, or NULL for none */
	bool ro;                /* -o ro */
	bool foreground;        /* log to stderr instead of syslog */
	int commit_delay_ms;    /* -o commit_delay: debounce of timer commits */
} pfs_config;

typedef struct pfs pfs;

/* Open SOURCE; prints nothing; returns NULL with errno set. */
pfs *pfs_new(const pfs_config *cfg);
void pfs_free(pfs *fs);

/* Tell the filesystem its session (needed to send cache invalidations). */
void pfs_set_session(pfs *fs, struct fuse_session *se);

extern const struct fuse_lowlevel_ops pfs_ops;

#endif
