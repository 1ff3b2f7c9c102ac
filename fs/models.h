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
#include "rewrite.h"
#include "view.h"
#include "wcopy.h"

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

/* ---- writing ------------------------------------------------------------ */

/*
 * A working copy (wcopy.h) of entry `entry` whose base is its current
 * contents (or nothing when empty), spooled in the folder of the model file
 * rel in dirfd.  NULL with errno set.
 */
pfs_wcopy *pfs_model_wcopy(pfs_model *ms, uint32_t entry, int dirfd, const char *rel, bool empty);

/* A working copy whose base is another one (written while that one is committed). */
pfs_wcopy *pfs_wcopy_fork(pfs_wcopy *old, int dirfd, const char *rel);

/* New contents for one entry of ms. */
typedef struct pfs_change {
	uint32_t entry;
	pfs_wcopy *wc;
} pfs_change;

/* The codec's form of a set of changes, and what it points to. */
typedef struct pfs_changes_set {
	pf_changes ch;
	pf_device dev;
	pf_span_edit *edits;
	uint32_t n_edits, cap_edits;
	pf_tensor_data *data;
	uint32_t n_data, cap_data;
	pf_bytes_run *runs;
	uint32_t n_runs, cap_runs;
	char **texts;
	uint32_t n_texts, cap_texts;
	pf_arena arena;
} pfs_changes_set;

void pfs_changes_init(pfs_changes_set *cs);
void pfs_changes_free(pfs_changes_set *cs);

/* Turn written contents into codec changes (parses the model if needed). 0 or -errno. */
int pfs_model_changes(pfs_model *ms, const pfs_change *c, uint32_t n, pfs_changes_set *cs, pf_error *why);

/*
 * Is what was written to entry acceptable (DESIGN §4)?  A tensor file: a
 * .npy with the same dtype, shape and order, and exactly the data; device:
 * one device string; globals and meta.json: what pf_globals_edits /
 * pf_meta_edits accept.  0, or -EINVAL with *why saying why.
 */
int pfs_model_check(pfs_model *ms, uint32_t entry, pfs_wcopy *wc, pf_error *why);

/*
 * Commit changes to the model file rel in dirfd (DESIGN §4.3): the new file
 * is written beside the old one (.NAME.picklefs-XXXXXX), fsynced, renamed
 * over it and the folder fsynced, so at every instant the file is the
 * complete old or the complete new version.  The file must still be the
 * version ms was loaded from.  0 when done (or nothing to change), else
 * -errno: EINVAL for refused contents, ESTALE when the file changed behind
 * the mount, EOPNOTSUPP for a rewrite the codec cannot do (*why says
 * which), or the I/O error (ENOSPC, EIO, ...).
 */
int pfs_model_commit(pfs_model *ms, int dirfd, const char *rel, const pfs_change *c, uint32_t n, pf_error *why);

/* (Re)write the index cache entry of ms (after setting entries' own mtimes). */
void pfs_model_store_cache(const pfs_model *ms, const char *dir);

/* Map a codec error to an errno: the one place where this happens. */
int pfs_errno_of(const pf_error *err);

#endif
