/*
 * models.h - the loaded state of one model file in the mount.
 *
 * A pfs_model holds the view of a model file (what its directory shows),
 * the file descriptor its bytes are read from, and - only once a tensor
 * that needs decoding is read - the parsed model.  It is loaded from the
 * index cache when an entry for the same (device, inode, size, mtime)
 * exists, else parsed and the cache entry written.  It is reference
 * counted: open files keep the version they opened, so a model file
 * replaced under the mount is never served as a mix of old and new bytes.
 */
#ifndef PFS_MODELS_H
#define PFS_MODELS_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>

#include "error.h"
#include "hashmap.h"
#include "mapfile.h"
#include "meta.h"
#include "model.h"
#include "view.h"

typedef struct pfs_model {
	atomic_uint refs;
	pf_view_key key;
	struct timespec mtime, ctime;
	int fd;                  /* the model file as it was when loaded */
	pf_view view;
	pf_hashmap children;     /* hash(dir index, name) -> entry index */
	uint32_t *nlink;         /* per entry: how many paths its tensor has */
	bool from_cache;

	pthread_mutex_t lock;    /* guards the lazily parsed model below */
	bool parsed;
	pf_mapfile mf;
	pf_model model;
	pf_tree tree;
	pf_hashmap path_tensor;  /* hash(tensor file path) -> tree file index, once parsed */
} pfs_model;

/* The identity a loaded model is valid for. */
pf_view_key pfs_key_of(const struct stat *st);

/*
 * Load the model file `name` in directory dirfd.  cache_dir may be NULL
 * (no index cache).  On failure returns NULL with *err set (a codec error
 * with its offset, or PF_E_FORMAT for I/O with errno in the message).
 */
pfs_model *pfs_model_load(int dirfd, const char *name, const char *cache_dir, pf_error *err);

void pfs_model_ref(pfs_model *ms);
void pfs_model_unref(pfs_model *ms);

/* Child of directory entry `dir` named `name`, or -1. */
int64_t pfs_model_child(const pfs_model *ms, uint32_t dir, const char *name);

/*
 * Read up to n bytes at off of entry e (a tensor or text file) into buf.
 * Returns bytes read, or -errno.  For plain tensor data callers may instead
 * send the file range themselves (pfs_model_data_range).
 */
ssize_t pfs_model_read(pfs_model *ms, uint32_t e, uint64_t off, void *buf, size_t n);

/*
 * Rewrite the model file so that every device in it is `text` (DESIGN
 * §4.2): the new file is written beside the old one (.NAME.picklefs-XXXXXX),
 * fsynced, renamed over it and the folder fsynced, so at every instant the
 * file is the complete old or the complete new version.  The file must
 * still be the version ms was loaded from.  0 when done (or nothing to
 * change), else -errno: EINVAL for a string that is not a device, ESTALE
 * when the file changed behind the mount, EOPNOTSUPP for a rewrite the
 * codec cannot do yet (*why says which), or the I/O error.
 */
int pfs_model_set_device(pfs_model *ms, int dirfd, const char *rel, const char *text, size_t len, pf_error *why);

/* Map a codec error to an errno: the one place where this happens. */
int pfs_errno_of(const pf_error *err);

#endif
